"""The Vision Transformer of the notes, written from scratch, living natively in transformers 5.

image [B, C, H, W] -> non-overlapping P x P patches, each linearly embedded (PatchEmbedding) -> prepend a learned
[CLS] token -> add learned position embeddings -> N pre-norm encoder layers (multi-head self-attention and MLP,
each in add & norm, with stochastic depth) -> final norm -> pool ([CLS] or mean of the patches) -> linear classifier.

The encoder layer is built from the same blocks as the seq2seq Transformer (``layers.py``); its forward pass writes
them out with exact rewrites that save work (same logits, same gradients): the key bias, which softmax ignores, is
left out at inference; the value bias is moved into the output bias; each sublayer's last linear layer accumulates
into the residual; and a classifier's last layer computes the [CLS] token alone, without every token's keys and
values (``ScratchViTSelfAttention.cls_heads``). Module names follow Hugging Face's ViT
(``vit.embeddings.patch_embeddings.projection``, ``classifier`` ...) so the weight port in ``convert_vit.py`` is a
renaming.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import IMAGE_PROCESSOR_NAME

from .configuration_vit import ScratchViTConfig
from .image_processing_vit import make_image_processor
from .layers import AddNorm, FeedForward, MultiHeadAttention, init_weights, make_norm
from .remote_code import CheckedLoadingMixin, RemoteCodeMixin


class PatchEmbedding(nn.Module):
    """Cut the image into P x P patches and project each to d_model: a Conv2d with kernel = stride = P.

    The convolution is exactly "flatten every patch and apply one shared Linear(C·P·P -> d_model)", computed
    without materialising the patches. Output: ``[B, (H/P)·(W/P), d_model]`` in row-major patch order.
    """

    def __init__(self, config: ScratchViTConfig):
        super().__init__()
        self.num_channels = config.num_channels
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(config.num_channels, config.d_model, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must have shape [batch, channels, height, width], got {tuple(pixel_values.shape)}."
            )
        channels, height, width = pixel_values.shape[1:]
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values have {channels} channels but the model expects num_channels={self.num_channels}; "
                "preprocess the images with the model's image processor (it converts to the right channel count)."
            )
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(f"The image ({height}x{width}) is smaller than one patch ({self.patch_size}x{self.patch_size}).")
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class ScratchViTEmbeddings(nn.Module):
    """Patch embeddings, the learned [CLS] token in front, plus learned position embeddings; then dropout."""

    def __init__(self, config: ScratchViTConfig):
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.patch_embeddings = PatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.d_model))
        self.dropout = nn.Dropout(config.dropout)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a ``height`` x ``width`` image: the trained patch grid resized bicubically.

        The [CLS] position is kept as is; the (image_size/P)² grid of patch positions is treated as a d_model-channel
        image and resized to (height/P, width/P), as in DINO and Hugging Face's ViT.
        """
        grid_height, grid_width = height // self.patch_size, width // self.patch_size
        trained_grid = self.image_size // self.patch_size
        if grid_height == trained_grid and grid_width == trained_grid:
            return self.position_embeddings
        cls_position = self.position_embeddings[:, :1]
        patch_positions = self.position_embeddings[:, 1:]
        dim = patch_positions.shape[-1]
        patch_positions = patch_positions.reshape(1, trained_grid, trained_grid, dim).permute(0, 3, 1, 2)
        patch_positions = nn.functional.interpolate(
            patch_positions.float(), size=(grid_height, grid_width), mode="bicubic", align_corners=False
        ).to(cls_position.dtype)
        patch_positions = patch_positions.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, dim)
        return torch.cat([cls_position, patch_positions], dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if not interpolate_pos_encoding and (height != self.image_size or width != self.image_size):
            raise ValueError(
                f"Input image size ({height}x{width}) doesn't match the model ({self.image_size}x{self.image_size}). "
                "Resize the images (the model's image processor does), or pass interpolate_pos_encoding=True to "
                "resize the position embeddings instead."
            )
        patches = self.patch_embeddings(pixel_values)
        cls_tokens = self.cls_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls_tokens, patches], dim=1)
        if interpolate_pos_encoding:
            tokens = tokens + self.interpolate_pos_encoding(height, width)
        else:
            tokens = tokens + self.position_embeddings
        return self.dropout(tokens)


class ScratchViTSelfAttention(MultiHeadAttention):
    """``layers.MultiHeadAttention`` (same parameters) with ``heads``: the attention before the output projection,
    so that the layer can fold that projection into its residual add (``AddNorm.add_linear``); for the [CLS] query alone
    without the keys and values of every token (``cls_heads``); and without two bias terms that cannot change the
    result:

    - the key bias adds ``q · b_k`` to every score of a query's row, and softmax ignores a constant shift of a row.
      It is left out when no gradients are computed (in training ``b_k`` keeps its gradient, which is zero);
    - the value bias: each row of attention weights sums to 1, so ``Σ_j p_ij (v_j + b_v) = Σ_j p_ij v_j + b_v``,
      and ``b_v`` reaches the output as ``W_o b_v``: it is added to the output bias instead of to every value (not
      under active attention dropout, whose weights no longer sum to 1).
    """

    def heads(
        self, hidden_states: torch.Tensor, cls_only: bool = False, output_attentions: bool = False
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(concatenated heads ``[B, Tq, d]``, the output projection's effective bias, weights or None) of every
        token or, with ``cls_only``, of the [CLS] query alone attending to every token (``cls_heads``)."""
        if cls_only and not output_attentions:
            return self.cls_heads(hidden_states), self.out_proj.bias, None
        queries = hidden_states[:, :1] if cls_only else hidden_states
        query = self._split_heads(self.q_proj(queries))
        key_bias = self.k_proj.bias if torch.is_grad_enabled() else None
        key = self._split_heads(nn.functional.linear(hidden_states, self.k_proj.weight, key_bias))
        value_bias, out_bias = self.v_proj.bias, self.out_proj.bias
        if value_bias is not None and out_bias is not None and not (self.training and self.dropout > 0):
            value_bias, out_bias = None, torch.addmv(out_bias, self.out_proj.weight, value_bias)
        value = self._split_heads(nn.functional.linear(hidden_states, self.v_proj.weight, value_bias))

        output, weights = self.attend_heads(query, key, value, None, output_attentions)
        return output.reshape(queries.shape[0], queries.shape[1], self.embed_dim), out_bias, weights

    def cls_heads(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The heads ``[B, 1, d]`` of the [CLS] query attending to every token, without the keys and values of every
        token (two ``[B·T, d] x [d, d]`` products): per head, with ``x_j`` the tokens' inputs,

            score_j = q · (W_k x_j + b_k) = (W_kᵀ q) · x_j + q · b_k
            output  = Σ_j p_j (W_v x_j + b_v) = W_v (Σ_j p_j x_j) + b_v

        so the query is taken back to the input space once, and the weighted mean of the inputs forward once.
        (``q · b_k`` is the same for every key, so it changes nothing; it is kept so that ``b_k`` gets its gradient.)
        """
        batch, _, dim = hidden_states.shape
        heads, head_dim = self.num_heads, self.head_dim
        # Products batched over the heads: [H, B, D] x [H, D, d] (a broadcast over B would expand W in backward).
        query = (self.q_proj(hidden_states[:, 0]) * self.scaling).view(batch, heads, head_dim).transpose(0, 1)
        query_in_input_space = torch.bmm(query, self.k_proj.weight.view(heads, head_dim, dim)).transpose(0, 1)
        scores = torch.bmm(query_in_input_space, hidden_states.transpose(1, 2))  # [B, H, T]
        if self.k_proj.bias is not None:
            scores = scores + (query * self.k_proj.bias.view(heads, 1, head_dim)).sum(-1).T[..., None]
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
        weights = nn.functional.dropout(weights, p=self.dropout, training=self.training)
        mean_input = torch.bmm(weights, hidden_states).transpose(0, 1)  # [H, B, d]
        output = torch.bmm(mean_input, self.v_proj.weight.view(heads, head_dim, dim).transpose(1, 2))  # [H, B, D]
        if self.v_proj.bias is not None:
            output = output + self.v_proj.bias.view(heads, 1, head_dim)
        return output.transpose(0, 1).reshape(batch, 1, dim)


class ScratchViTLayer(GradientCheckpointingLayer):
    """Self-attention sublayer and MLP sublayer, each wrapped in add & norm (pre-norm by default) + stochastic depth."""

    def __init__(self, config: ScratchViTConfig, layer_idx: int, drop_path: float = 0.0):
        super().__init__()
        d = config.d_model

        def add_norm() -> AddNorm:
            return AddNorm(d, config.norm_type, config.norm_position, config.dropout, config.layer_norm_eps, drop_path)

        self.self_attn = ScratchViTSelfAttention(
            config, d, config.num_heads, config.attention_dropout, bias=config.qkv_bias,
            is_causal=False, layer_idx=layer_idx, out_bias=True,
        )
        self.self_attn_add_norm = add_norm()
        self.ffn = FeedForward(d, config.ffn_dim, config.activation)
        self.ffn_add_norm = add_norm()

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, cls_only: bool = False
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """New states of all tokens or, with ``cls_only``, of the [CLS] token alone (``[B, 1, d]``): its query still
        attends to every token, but the attention output, the add & norms and the MLP run on one token.

        The same computation as ``reference_forward``, written out to let each sublayer's last linear layer
        accumulate into the residual (``AddNorm.add_linear``). That rewrite reads the projections' weights, so it
        runs only while every projection is a plain ``nn.Linear``: a wrapped or replaced one (peft LoRA adapters,
        ``torch.ao`` dynamic int8, ...) must be called as a module, which ``reference_forward`` does."""
        if not self.has_plain_projections():
            return self.reference_forward(hidden_states, output_attentions, cls_only)
        x = hidden_states
        heads, out_bias, attn_weights = self.self_attn.heads(
            self.self_attn_add_norm.sublayer_input(x), cls_only, output_attentions
        )
        residual = x[:, :1] if cls_only else x
        x = self.self_attn_add_norm.add_linear(residual, heads, self.self_attn.out_proj.weight, out_bias)
        hidden = self.ffn.hidden(self.ffn_add_norm.sublayer_input(x))
        x = self.ffn_add_norm.add_linear(x, hidden, self.ffn.fc2.weight, self.ffn.fc2.bias)
        return x, attn_weights

    def has_plain_projections(self) -> bool:
        attention = self.self_attn
        projections = (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj, self.ffn.fc1, self.ffn.fc2)
        return all(type(projection) is nn.Linear for projection in projections)

    def reference_forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, cls_only: bool = False
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The layer as the notes write it: ``x = add_norm(x, attention(x))``, then ``x = add_norm(x, ffn(x))``,
        each block called as a module (with ``cls_only`` the [CLS] query alone attends to every token)."""
        x = hidden_states
        normed = self.self_attn_add_norm.sublayer_input(x)
        queries, residual = (normed[:, :1], x[:, :1]) if cls_only else (normed, x)
        attn_out, attn_weights = self.self_attn(
            queries, key_value_states=normed if cls_only else None, output_attentions=output_attentions
        )
        x = self.self_attn_add_norm(residual, attn_out)
        x = self.ffn_add_norm(x, self.ffn(self.ffn_add_norm.sublayer_input(x)))
        return x, attn_weights


class ScratchViTPreTrainedModel(CheckedLoadingMixin, RemoteCodeMixin, PreTrainedModel):
    config_class = ScratchViTConfig
    config: ScratchViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScratchViTEmbeddings", "ScratchViTLayer"]
    _supports_sdpa = True
    # forward(**kwargs) would make the Trainer treat the loss as a sum over processes and rescale it under DDP.
    accepts_loss_kwargs = False
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_compile_fullgraph = False
    _remote_auto_map = {
        "AutoConfig": "configuration_vit.ScratchViTConfig",
        "AutoModel": "modeling_vit.ScratchViTModel",
        "AutoModelForImageClassification": "modeling_vit.ScratchViTForImageClassification",
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Linear layers and norms as in ``layers.init_weights``; patch projection, [CLS] and positions likewise."""
        std = self.config.init_std
        init_weights(module, std)
        if isinstance(module, PatchEmbedding):
            nn.init.trunc_normal_(module.projection.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(module.projection.bias)
        elif isinstance(module, ScratchViTEmbeddings):
            nn.init.trunc_normal_(module.cls_token, std=std, a=-2 * std, b=2 * std)
            nn.init.trunc_normal_(module.position_embeddings, std=std, a=-2 * std, b=2 * std)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual and, unless the directory already has one, the default image processor
        (``make_image_processor(config)``), so that every checkpoint works with ``AutoImageProcessor`` and
        ``pipeline("image-classification")``. A processor saved later (e.g. by ``Trainer``) replaces it."""
        processor_file = os.path.join(save_directory, IMAGE_PROCESSOR_NAME)
        if self.should_save_on_this_rank(kwargs.get("is_main_process", True)) and not os.path.isfile(processor_file):
            make_image_processor(self.config).save_pretrained(save_directory)
        return super().save_pretrained(save_directory, *args, **kwargs)


class ScratchViTModel(ScratchViTPreTrainedModel):
    """The bare ViT (AutoModel): all token states and the pooled image representation."""

    def __init__(self, config: ScratchViTConfig):
        super().__init__(config)
        self.embeddings = ScratchViTEmbeddings(config)
        # Stochastic depth grows linearly with depth, from 0 at the first layer to drop_path_rate at the last.
        drop_paths = torch.linspace(0, config.drop_path_rate, config.num_layers).tolist()
        self.layers = nn.ModuleList(ScratchViTLayer(config, i, drop_paths[i]) for i in range(config.num_layers))
        self.layer_norm = make_norm(config.norm_type, config.d_model, config.layer_norm_eps) if config.norm_position == "pre" else None
        self.post_init()

    def get_input_embeddings(self) -> PatchEmbedding:
        return self.embeddings.patch_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.patch_embeddings = value

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """One vector per image: the [CLS] token's state, or the mean of the patch tokens' states."""
        if self.config.pooling == "mean":
            return hidden_states[:, 1:].mean(dim=1)
        return hidden_states[:, 0]

    def forward(
        self,
        pixel_values: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """``last_hidden_state`` (after the final norm), ``pooler_output``; per-layer ``hidden_states`` (embeddings
        + one per layer, before the final norm, as in Hugging Face's ViT) and ``attentions`` when asked.

        ``pooled_only=True`` says that only ``pooler_output`` will be read (a classifier's case). With [CLS] pooling
        the last layer then computes the [CLS] token alone and ``last_hidden_state`` holds only that token: the
        same pooled vector for a fraction of the last layer's work. Ignored when hidden states or attentions are
        returned, and with mean pooling (which reads every token)."""
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values (images as a [batch, channels, height, width] tensor).")
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        # Pipelines and processors produce float32 pixels; run them in the model's dtype (bf16, fp16 ...).
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)

        hidden = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        all_hidden = (hidden,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        cls_only = pooled_only and self.config.pooling == "cls" and not (output_hidden_states or output_attentions)
        for i, layer in enumerate(self.layers):
            hidden, weights = layer(hidden, output_attentions, cls_only=cls_only and i == len(self.layers) - 1)
            if output_hidden_states:
                all_hidden += (hidden,)
            if output_attentions:
                all_attn += (weights,)
        if self.layer_norm is not None:
            hidden = self.layer_norm(hidden)

        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden, pooler_output=self.pool(hidden), hidden_states=all_hidden, attentions=all_attn
        )
        return output if return_dict is not False else output.to_tuple()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: ScratchViTConfig) -> torch.Tensor:
    """The loss Hugging Face's classifiers use, chosen by ``config.problem_type`` (inferred and stored if unset):

    - ``regression`` (num_labels == 1, or set explicitly): mean squared error;
    - ``single_label_classification`` (integer labels): cross-entropy, label-smoothed by ``config.label_smoothing``,
      ignoring label -100;
    - ``multi_label_classification`` (float multi-hot labels): binary cross-entropy with logits.
    """
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif num_labels > 1 and labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    logits = logits.float()
    if config.problem_type == "regression":
        if num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return nn.functional.mse_loss(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return nn.functional.cross_entropy(
            logits.view(-1, num_labels), labels.view(-1), ignore_index=-100, label_smoothing=config.label_smoothing
        )
    return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class ScratchViTForImageClassification(ScratchViTPreTrainedModel):
    """ViT with a linear classifier on the pooled representation (AutoModelForImageClassification)."""

    def __init__(self, config: ScratchViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ScratchViTModel(config)
        self.classifier = nn.Linear(config.d_model, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def get_input_embeddings(self) -> PatchEmbedding:
        return self.vit.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.vit.set_input_embeddings(value)

    def forward(
        self,
        pixel_values: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        """Logits ``[B, num_labels]``; with ``labels`` also the loss (see ``classification_loss``)."""
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            pooled_only=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict is not False else output.to_tuple()


__all__ = [
    "PatchEmbedding",
    "ScratchViTPreTrainedModel",
    "ScratchViTModel",
    "ScratchViTForImageClassification",
    "classification_loss",
]
