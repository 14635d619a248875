"""Configuration of the from-scratch encoder-decoder Transformer ("Attention Is All You Need")."""

from __future__ import annotations

from typing import Optional

from transformers import PreTrainedConfig

from .config_checks import check_transformer
from .remote_code import ModelTypeCheckMixin, register_model_type


class ScratchTransformerConfig(ModelTypeCheckMixin, PreTrainedConfig):
    """Every architectural choice of the notes is a field; the defaults are the paper's base model.

    Args:
        vocab_size: size of the joint source/target vocabulary.
        d_model: width of every residual stream.
        encoder_layers / decoder_layers: number of stacked layers.
        encoder_attention_heads / decoder_attention_heads: heads per multi-head attention (must divide d_model).
        ffn_dim: hidden width of the position-wise feed-forward network.
        activation_function: "relu" (paper), "gelu" or "silu".
        dropout: dropout on sublayer outputs and embeddings; attention_dropout on attention weights;
            activation_dropout inside the feed-forward network.
        max_position_embeddings: longest sequence the position table covers.
        position_embedding: "sinusoidal" (fixed, paper), "learned", or "rotary" (RoFormer: rotates queries and keys
            of self-attention by their position instead of adding a table to the embeddings).
        scale_embedding: multiply token embeddings by √d_model before adding positions (paper).
        norm_type: "layernorm" or "rmsnorm"; norm_position: "post" (paper) or "pre".
        layer_norm_eps: the ε added to the variance in every norm (> 0).
        attention_scoring: "scaled_dot" (paper) or "additive" (Bahdanau; eager attention only).
        attention_bias: biases in the q/k/v/out projections.
        num_key_value_heads: grouped-query attention: key/value heads shared by groups of query heads (must divide
            both head counts); None (default): one per query head, the paper's multi-head attention.
        qk_norm: normalise queries and keys per head (``norm_type``) before scoring.
        output_bias: a bias on the output projection (carried over from Marian's ``final_logits_bias``).
        tie_word_embeddings: one shared matrix for source embedding, target embedding and output projection.
        label_smoothing: ε of label-smoothed cross-entropy (paper: 0.1).
        forward_implementation: "reference" (default) runs the layers of ``layers.py`` as composed in the notes;
            "fast" runs their exact rewrites (``rewrites.py``: same outputs and gradients, less work).
        quantization: None (float weights) or "int8": every linear layer holds int8 weights
            (``quantization.quantize_int8``, CPU inference); set by that function, read when loading a saved model.
        init_std: standard deviation of the normal initialisation.
    """

    model_type = "scratch_transformer"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the KV cache's name from transformers 5.24 on, and before
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    def __init__(
        self,
        vocab_size: int = 8000,
        d_model: int = 512,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        encoder_attention_heads: int = 8,
        decoder_attention_heads: int = 8,
        ffn_dim: int = 2048,
        activation_function: str = "relu",
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        max_position_embeddings: int = 512,
        position_embedding: str = "sinusoidal",
        scale_embedding: bool = True,
        norm_type: str = "layernorm",
        norm_position: str = "post",
        layer_norm_eps: float = 1e-5,
        attention_scoring: str = "scaled_dot",
        attention_bias: bool = True,
        num_key_value_heads: Optional[int] = None,
        qk_norm: bool = False,
        output_bias: bool = False,
        tie_word_embeddings: bool = True,
        label_smoothing: float = 0.0,
        init_std: float = 0.02,
        forward_implementation: str = "reference",
        quantization: Optional[str] = None,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        decoder_start_token_id: int = 1,
        use_cache: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.decoder_attention_heads = decoder_attention_heads
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
        self.output_bias = output_bias
        self.tie_word_embeddings = tie_word_embeddings
        self.label_smoothing = label_smoothing
        self.init_std = init_std
        self.forward_implementation = forward_implementation
        self.quantization = quantization
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.decoder_start_token_id = decoder_start_token_id
        self.use_cache = use_cache
        kwargs.setdefault("is_encoder_decoder", True)
        super().__init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Raise ``ValueError`` naming the field and the allowed values for any invalid setting."""
        check_transformer(self, layers=("encoder_layers", "decoder_layers"),
                          heads=("encoder_attention_heads", "decoder_attention_heads"),
                          token_ids=("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"))


register_model_type(ScratchTransformerConfig)

__all__ = ["ScratchTransformerConfig"]
