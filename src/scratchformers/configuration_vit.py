"""Configuration of the from-scratch Vision Transformer ("An Image is Worth 16x16 Words", Dosovitskiy et al. 2021)."""

from __future__ import annotations

from typing import Optional

from transformers import PreTrainedConfig

from .config_checks import (
    FORWARD_IMPLEMENTATIONS,
    QUANTIZATIONS,
    ACTIVATIONS,
    NORM_POSITIONS,
    NORM_TYPES,
    check_choice,
    check_heads,
    check_positive,
    check_key_value_heads,
    check_positive_number,
    check_probability,
    check_rotary,
)
from .remote_code import ModelTypeCheckMixin, register_model_type

POOLINGS = ("cls", "mean")
PATCH_EMBEDDINGS = ("linear", "convolutional")
VIT_POSITION_EMBEDDINGS = ("learned", "rotary")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


class ScratchViTConfig(ModelTypeCheckMixin, PreTrainedConfig):
    """Every architectural choice of the ViT is a field; the defaults are ViT-B/16 at 224x224 pixels.

    Args:
        image_size: side of the (square) input image in pixels; must be divisible by ``patch_size`` (linear patches).
        patch_size: side of the square patches that become tokens ((image_size / patch_size)² of them).
        patch_embedding: how a patch becomes a token: "linear" (paper: one shared linear map of its pixels) or
            "convolutional" (the stem of "Early Convolutions Help Transformers See Better", Xiao et al. 2021:
            log2(patch_size) 3x3 stride-2 convolutions, each with batch norm and ReLU, doubling the channels from
            ``stem_channels``, then a 1x1 convolution to d_model). patch_size must then be a power of 2; the image
            is padded at the edges, so the token grid is ceil(image_size / patch_size) on a side.
        stem_channels: output channels of the convolutional stem's first convolution; None: as in the paper, so
            that the last 3x3 convolution has d_model channels (d_model / 2^(log2(patch_size) - 1)).
        num_channels: channels of the input image (3 for RGB, 1 for grayscale).
        d_model: width of every residual stream (ViT's "hidden size").
        num_layers: number of stacked encoder layers.
        num_heads: heads per multi-head attention (must divide d_model).
        ffn_dim: hidden width of the MLP (4 · d_model in the paper).
        activation_function: "gelu" (paper), "relu", "silu", or the gated "swiglu" / "geglu" (the seq2seq and
            causal-LM configs' name; ``activation``, this config's earlier spelling, is still read).
        dropout: dropout on embeddings and sublayer outputs; attention_dropout on attention weights.
        drop_path_rate: stochastic depth; layer ``i`` drops its residual branches with probability
            ``drop_path_rate · i / (num_layers - 1)`` (linearly increasing, as in DeiT / timm).
        pooling: "cls" (the [CLS] token's final state, paper) or "mean" (average of the patch tokens).
        norm_type: "layernorm" (paper) or "rmsnorm"; norm_position: "pre" (paper) or "post".
        qkv_bias: biases in the query/key/value projections (the output projection always has one).
        position_embedding: "learned" (paper: a table added to the tokens) or "rotary" (RoFormer, over the token
            index inside self-attention).
        num_key_value_heads: grouped-query attention (must divide num_heads); None: one per query head.
        qk_norm: normalise queries and keys per head (``norm_type``) before scoring.
        layer_norm_eps: 1e-12 like Hugging Face's ``ViTConfig``, so that ported google/vit checkpoints compute
            exactly the same function (timm and the original JAX code use 1e-6; the difference is negligible).
        label_smoothing: ε of label-smoothed cross-entropy for single-label classification.
        forward_implementation: "reference" (default) runs the layers of ``layers.py`` as composed in the notes;
            "fast" runs their exact rewrites (``rewrites.py``: same outputs and gradients, less work).
        quantization: None (float weights) or "int8": every linear layer holds int8 weights
            (``quantization.quantize_int8``, CPU inference); set by that function, read when loading a saved model.
        init_std: standard deviation of the (truncated) normal initialisation.
        num_labels / id2label / label2id / problem_type: the usual classification fields of ``PreTrainedConfig``.
    """

    model_type = "scratch_vit"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_layers",
        "intermediate_size": "ffn_dim",
        "activation": "activation_function",  # the earlier spelling: old config.json files and keyword arguments
    }

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        patch_embedding: str = "linear",
        stem_channels: Optional[int] = None,
        num_channels: int = 3,
        d_model: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        ffn_dim: int = 3072,
        activation_function: str = "gelu",
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        pooling: str = "cls",
        norm_type: str = "layernorm",
        norm_position: str = "pre",
        qkv_bias: bool = True,
        position_embedding: str = "learned",
        num_key_value_heads: Optional[int] = None,
        qk_norm: bool = False,
        layer_norm_eps: float = 1e-12,
        label_smoothing: float = 0.0,
        init_std: float = 0.02,
        forward_implementation: str = "reference",
        quantization: Optional[str] = None,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.patch_embedding = patch_embedding
        self.stem_channels = stem_channels
        self.num_channels = num_channels
        self.d_model = d_model
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.activation_function = activation_function
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.drop_path_rate = drop_path_rate
        self.pooling = pooling
        self.norm_type = norm_type
        self.norm_position = norm_position
        self.qkv_bias = qkv_bias
        self.position_embedding = position_embedding
        self.num_key_value_heads = num_key_value_heads
        self.qk_norm = qk_norm
        self.layer_norm_eps = layer_norm_eps
        self.label_smoothing = label_smoothing
        self.init_std = init_std
        self.forward_implementation = forward_implementation
        self.quantization = quantization
        super().__init__(**kwargs)
        self.validate_architecture()

    @property
    def num_patches(self) -> int:
        """Number of patch tokens of an ``image_size`` image (the [CLS] token comes on top)."""
        return self.grid_size(self.image_size) ** 2

    def stem_widths(self) -> list[int]:
        """Output channels of the convolutional stem's 3x3 convolutions, one per halving of the resolution."""
        convolutions = self.patch_size.bit_length() - 1
        first = self.stem_channels or max(1, self.d_model // 2 ** (convolutions - 1))
        return [first * 2**i for i in range(convolutions)]

    def grid_size(self, pixels: int) -> int:
        """Patches along a side of ``pixels`` pixels: whole patches only for linear patches; the convolutional
        stem pads, so a partial patch at the edge counts."""
        if self.patch_embedding == "convolutional":
            return -(-pixels // self.patch_size)
        return pixels // self.patch_size

    def validate_architecture(self) -> None:
        """Raise ``ValueError`` naming the field and the allowed values for any invalid setting."""
        for name in ("image_size", "patch_size", "num_channels", "d_model", "num_layers", "num_heads", "ffn_dim"):
            check_positive(name, getattr(self, name))
        if self.stem_channels is not None:
            check_positive("stem_channels", self.stem_channels)
        check_choice("patch_embedding", self.patch_embedding, PATCH_EMBEDDINGS)
        if self.patch_embedding == "convolutional":
            if self.patch_size < 2 or self.patch_size & (self.patch_size - 1):
                raise ValueError(
                    f"patch_embedding='convolutional' needs a power of 2 as patch_size (each stride-2 convolution "
                    f"halves the resolution), got patch_size={self.patch_size}; e.g. 8 for 28x28 images."
                )
        elif self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by patch_size={self.patch_size} "
                "(the image is cut into whole patches)."
            )
        check_heads("d_model", self.d_model, "num_heads", self.num_heads)
        check_choice("position_embedding", self.position_embedding, VIT_POSITION_EMBEDDINGS)
        check_key_value_heads(self.num_key_value_heads, num_heads=self.num_heads)
        check_rotary(self.position_embedding, self.d_model, num_heads=self.num_heads)
        check_choice("activation_function", self.activation_function, ACTIVATIONS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("norm_type", self.norm_type, NORM_TYPES)
        check_choice("forward_implementation", self.forward_implementation, FORWARD_IMPLEMENTATIONS)
        check_choice("quantization", self.quantization, QUANTIZATIONS)
        check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        for name in ("dropout", "attention_dropout", "drop_path_rate", "label_smoothing"):
            check_probability(name, getattr(self, name))
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias must be True or False, got {self.qkv_bias!r}.")
        for name in ("layer_norm_eps", "init_std"):  # eps <= 0: NaN from 1/sqrt(var + eps) in the norms
            check_positive_number(name, getattr(self, name))
        check_choice("problem_type", self.problem_type, PROBLEM_TYPES)
        if self.num_labels < 1:  # a classifier with no outputs: every loss and prediction fails deep in torch
            raise ValueError(f"num_labels must be at least 1 (one output per class; 1 for regression), got "
                             f"{self.num_labels}: pass num_labels or id2label with the classes.")


register_model_type(ScratchViTConfig)

__all__ = ["ScratchViTConfig", "POOLINGS"]
