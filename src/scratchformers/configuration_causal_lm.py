"""Configuration of the from-scratch decoder-only Transformer language model (GPT)."""

from __future__ import annotations

from typing import Optional

from transformers import PreTrainedConfig

from .config_checks import check_transformer
from .remote_code import ModelTypeCheckMixin, register_model_type


class ScratchTransformerLMConfig(ModelTypeCheckMixin, PreTrainedConfig):
    """A decoder-only Transformer: the decoder stack of ``ScratchTransformerConfig`` without cross-attention.

    The fields are those of ``ScratchTransformerConfig`` (same names, same choices, same checks) with one stack:
    ``num_hidden_layers`` layers of ``num_attention_heads`` heads. The defaults are GPT-2 small's architecture
    (pre-norm LayerNorm with a final norm, learned positions, tanh-GELU ``"gelu_new"``, tied output projection,
    no embedding scaling); ``convert.gpt2_to_scratch`` ports GPT-2's weights into it.

    Args:
        vocab_size, d_model, ffn_dim, max_position_embeddings: as in ``ScratchTransformerConfig``.
        num_hidden_layers: number of stacked layers; num_attention_heads: heads per self-attention.
        activation_function, dropout, attention_dropout, activation_dropout, position_embedding, scale_embedding,
        norm_type, norm_position, layer_norm_eps, attention_scoring, attention_bias, num_key_value_heads, qk_norm,
        tie_word_embeddings, label_smoothing, init_std, forward_implementation, quantization: as in
        ``ScratchTransformerConfig``.
        pad_token_id, bos_token_id, eos_token_id: special tokens (GPT-2 has no pad token: ``None``).
    """

    model_type = "scratch_transformer_lm"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the KV cache's name from transformers 5.24 on, and before
    attribute_map = {"hidden_size": "d_model", "intermediate_size": "ffn_dim"}

    def __init__(
        self,
        vocab_size: int = 50257,
        d_model: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        ffn_dim: int = 3072,
        activation_function: str = "gelu_new",
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        max_position_embeddings: int = 1024,
        position_embedding: str = "learned",
        scale_embedding: bool = False,
        norm_type: str = "layernorm",
        norm_position: str = "pre",
        layer_norm_eps: float = 1e-5,
        attention_scoring: str = "scaled_dot",
        attention_bias: bool = True,
        num_key_value_heads: Optional[int] = None,
        qk_norm: bool = False,
        tie_word_embeddings: bool = True,
        label_smoothing: float = 0.0,
        init_std: float = 0.02,
        forward_implementation: str = "reference",
        quantization: Optional[str] = None,
        pad_token_id: Optional[int] = None,
        bos_token_id: Optional[int] = 50256,
        eos_token_id: Optional[int] = 50256,
        use_cache: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.ffn_dim = ffn_dim
        self.activation_function = activation_function
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.max_position_embeddings = max_position_embeddings
        self.position_embedding = position_embedding
        self.scale_embedding = scale_embedding
        self.norm_type = norm_type
        self.norm_position = norm_position
        self.layer_norm_eps = layer_norm_eps
        self.attention_scoring = attention_scoring
        self.attention_bias = attention_bias
        self.num_key_value_heads = num_key_value_heads
        self.qk_norm = qk_norm
        self.tie_word_embeddings = tie_word_embeddings
        self.label_smoothing = label_smoothing
        self.init_std = init_std
        self.forward_implementation = forward_implementation
        self.quantization = quantization
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.use_cache = use_cache
        super().__init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Raise ``ValueError`` naming the field and the allowed values for any invalid setting."""
        check_transformer(self, layers=("num_hidden_layers",), heads=("num_attention_heads",),
                          token_ids=("pad_token_id", "bos_token_id", "eos_token_id"))


register_model_type(ScratchTransformerLMConfig)

__all__ = ["ScratchTransformerLMConfig"]
