"""The Vision Transformer of the notes, written from scratch, living natively in transformers 5.

image [B, C, H, W] -> non-overlapping P x P patches, each linearly embedded (PatchEmbedding; or a convolutional
stem, ConvolutionalStem, with ``patch_embedding="convolutional"``) -> prepend a learned
[CLS] token -> add learned position embeddings -> N pre-norm encoder layers (multi-head self-attention and MLP,
each in add & norm, with stochastic depth) -> final norm -> pool ([CLS] or mean of the patches) -> linear classifier.

The encoder layer is composed of the same blocks as the seq2seq Transformer (``layers.py``). With
``config.forward_implementation="fast"`` it runs their exact rewrites instead (``rewrites.vit_layer_forward``: the
key bias left out at inference, the value bias moved into the output bias, each sublayer's last linear layer
accumulated into the residual, and a classifier's last layer computing the [CLS] token alone). Module names follow
Hugging Face's ViT
(``vit.embeddings.patch_embeddings.projection``, ``classifier`` ...) so the weight port in ``convert_vit.py`` is a
renaming.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import IMAGE_PROCESSOR_NAME
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_vit import ScratchViTConfig
from .image_processing_vit import make_image_processor
from .layers import AddNorm, MultiHeadAttention, RotaryPositionalEncoding, make_feed_forward, make_norm
from .modeling_base import ScratchPreTrainedModel, model_cross_entropy
from .rewrites import is_fast, vit_layer_applies, vit_layer_forward


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

    def check_pixels(self, pixel_values: torch.Tensor) -> None:
        """Refuse what is not an image batch of the model's channel count, at least one patch in size."""
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

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixel_values)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class ConvolutionalStem(PatchEmbedding):
    """Xiao et al. 2021's replacement of the patch projection: log2(P) 3x3 stride-2 convolutions (each followed by
    batch norm and ReLU, channels doubling from ``stem_channels``), then a 1x1 convolution to d_model.

    Each convolution halves the resolution (padding 1: ceil(H / 2)), so after log2(P) of them one position of the
    feature map is one token, as for a P x P patch; but each token now sees overlapping neighbourhoods through
    small filters, the locality that a linear patch projection leaves the transformer to learn. Output:
    ``[B, ceil(H/P)·ceil(W/P), d_model]`` in row-major order, like ``PatchEmbedding``.
    """

    def __init__(self, config: ScratchViTConfig):
        nn.Module.__init__(self)
        self.num_channels = config.num_channels
        self.patch_size = config.patch_size
        widths = [config.num_channels] + config.stem_widths()
        self.convolutions = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
                          nn.BatchNorm2d(c_out), nn.ReLU())
            for c_in, c_out in zip(widths, widths[1:])
        ))
        self.projection = nn.Conv2d(widths[-1], config.d_model, kernel_size=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixel_values)
        return self.projection(self.convolutions(pixel_values)).flatten(2).transpose(1, 2)


class ScratchViTEmbeddings(nn.Module):
    """Patch embeddings, the learned [CLS] token in front, plus learned position embeddings; then dropout."""

    def __init__(self, config: ScratchViTConfig):
        super().__init__()
        self.image_size = config.image_size
        self.grid_size = config.grid_size
        self.patch_embeddings = ConvolutionalStem(config) if config.patch_embedding == "convolutional" else PatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.position_embeddings = None  # rotary positions act inside self-attention instead
        if config.position_embedding == "learned":
            self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.d_model))
        self.dropout = nn.Dropout(config.dropout)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a ``height`` x ``width`` image: the trained patch grid resized bicubically.

        The [CLS] position is kept as is; the (image_size/P)² grid of patch positions is treated as a d_model-channel
        image and resized to (height/P, width/P), as in DINO and Hugging Face's ViT.
        """
        grid_height, grid_width = self.grid_size(height), self.grid_size(width)
        trained_grid = self.grid_size(self.image_size)
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
        if self.position_embeddings is not None:  # (the trained table itself at the trained size)
            tokens = tokens + self.interpolate_pos_encoding(height, width)
        return self.dropout(tokens)


class ScratchViTLayer(GradientCheckpointingLayer):
    """Self-attention sublayer and MLP sublayer, each wrapped in add & norm (pre-norm by default) + stochastic depth."""

    def __init__(self, config: ScratchViTConfig, layer_idx: int, drop_path: float = 0.0):
        super().__init__()
        self.config = config
        d = config.d_model

        def add_norm() -> AddNorm:
            return AddNorm(d, config.norm_type, config.norm_position, config.dropout, config.layer_norm_eps, drop_path)

        self.self_attn = MultiHeadAttention(
            config, d, config.num_heads, config.attention_dropout, bias=config.qkv_bias, is_causal=False,
            layer_idx=layer_idx, out_bias=True, num_key_value_heads=config.num_key_value_heads, qk_norm=config.qk_norm,
        )
        self.self_attn_add_norm = add_norm()
        self.ffn = make_feed_forward(d, config.ffn_dim, config.activation_function)
        self.ffn_add_norm = add_norm()

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_attentions: bool = False,
        cls_only: bool = False,
        position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """``x = add_norm(x, attention)``, then ``x = add_norm(x, ffn)``.

        With ``forward_implementation="fast"`` its exact rewrite runs instead where it applies
        (``rewrites.vit_layer_applies``), which with ``cls_only`` computes the [CLS] token alone."""
        if is_fast(self.config) and not output_attentions and vit_layer_applies(self):
            return vit_layer_forward(self, hidden_states, cls_only)

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, output_attentions=output_attentions, position_embeddings=position_embeddings)[0]

        x = self.self_attn_add_norm(hidden_states, self_attention)
        return self.ffn_add_norm(x, self.ffn)


class ScratchViTPreTrainedModel(ScratchPreTrainedModel):
    config_class = ScratchViTConfig
    config: ScratchViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ScratchViTEmbeddings", "ScratchViTLayer"]
    _remote_auto_map = {
        "AutoConfig": "configuration_vit.ScratchViTConfig",
        "AutoModel": "modeling_vit.ScratchViTModel",
        "AutoModelForImageClassification": "modeling_vit.ScratchViTForImageClassification",
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Linear layers and norms as in ``layers.init_weights``; [CLS] and positions truncated normal(init_std);
        the convolutional stem's 3x3 convolutions He-normal (they feed ReLUs), its batch norms the identity.

        The patch projection (a Conv2d) keeps torch's own initialisation, uniform with a bound of 1/sqrt(C·P·P):
        transformers initialises only modules that hold parameters themselves, so an init written for
        ``PatchEmbedding`` (whose weights belong to its Conv2d) never ran, and the published defaults were
        trained with torch's. Everything of the embeddings is therefore set here, where the parameters are."""
        std = self.config.init_std
        super()._init_weights(module)
        if isinstance(module, ScratchViTEmbeddings):
            nn.init.trunc_normal_(module.cls_token, std=std, a=-2 * std, b=2 * std)
            if module.position_embeddings is not None:
                nn.init.trunc_normal_(module.position_embeddings, std=std, a=-2 * std, b=2 * std)
            if isinstance(module.patch_embeddings, ConvolutionalStem):
                for convolution, norm, _ in module.patch_embeddings.convolutions:
                    nn.init.kaiming_normal_(convolution.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.ones_(norm.weight)
                    nn.init.zeros_(norm.bias)

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

    _can_record_outputs = {"hidden_states": ScratchViTLayer, "attentions": OutputRecorder(MultiHeadAttention, index=1)}

    def __init__(self, config: ScratchViTConfig):
        super().__init__(config)
        self.embeddings = ScratchViTEmbeddings(config)
        rotary = config.position_embedding == "rotary"
        self.rotary = RotaryPositionalEncoding(config.d_model // config.num_heads) if rotary else None
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

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """``last_hidden_state`` (after the final norm), ``pooler_output``; per-layer ``hidden_states`` (embeddings
        + one per layer, before the final norm, as in Hugging Face's ViT) and ``attentions`` when asked (recorded
        by ``capture_outputs`` from the layers and attention modules).

        ``pooled_only=True`` says that only ``pooler_output`` will be read (a classifier's case). With
        ``forward_implementation="fast"`` and [CLS] pooling the last layer then computes the [CLS] token alone and
        ``last_hidden_state`` holds only that token: the same pooled vector for a fraction of the last layer's
        work. Ignored when hidden states or attentions are returned, and with mean pooling."""
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values (images as a [batch, channels, height, width] tensor).")
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        # Pipelines and processors produce float32 pixels; run them in the model's dtype (bf16, fp16 ...).
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)

        hidden = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        cls_only = (pooled_only and is_fast(self.config) and self.config.pooling == "cls"
                    and not (output_hidden_states or output_attentions))
        position_embeddings = None
        if self.rotary is not None:  # RoFormer's rotation by token index: [CLS] 0, the patches 1 ... N row by row
            position_embeddings = self.rotary(torch.arange(hidden.shape[1], device=hidden.device))
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, output_attentions, cls_only and i == len(self.layers) - 1, position_embeddings)
        if self.layer_norm is not None:
            hidden = self.layer_norm(hidden)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=self.pool(hidden))


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, config: ScratchViTConfig, training: bool = False
) -> torch.Tensor:
    """The loss Hugging Face's classifiers use, chosen by ``config.problem_type`` (inferred and stored if unset):

    - ``regression`` (num_labels == 1, or set explicitly): mean squared error;
    - ``single_label_classification`` (integer labels): cross-entropy ignoring label -100, label-smoothed by
      ``config.label_smoothing`` while ``training`` only (``modeling_base.model_cross_entropy``, the seq2seq
      model's loss too);
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
        return model_cross_entropy(logits.view(-1, num_labels), labels.view(-1), config, training)
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
        config = self.config
        output_attentions = bool(output_attentions if output_attentions is not None else config.output_attentions)
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None else config.output_hidden_states)
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            pooled_only=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = classification_loss(logits, labels, self.config, self.training) if labels is not None else None
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
