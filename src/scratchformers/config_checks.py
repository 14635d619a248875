"""The choices every architectural config field allows, and the checks that name a bad value and the fix.

Torch-free, so that reading a configuration imports neither torch nor transformers' modeling code.
"""

from __future__ import annotations

# Gated variants (GLU, Shazeer 2020) name the activation of their gate. "gelu_new": GPT-2's tanh approximation.
GATED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}
ACTIVATIONS = ("relu", "gelu", "silu", "gelu_new", *GATED_ACTIVATIONS)
NORM_TYPES = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("post", "pre")
ATTENTION_SCORINGS = ("scaled_dot", "additive")
POSITION_EMBEDDINGS = ("sinusoidal", "learned", "rotary")
# "reference": the layers of layers.py composed as the notes write them; "fast": the exact rewrites of rewrites.py.
FORWARD_IMPLEMENTATIONS = ("reference", "fast")
QUANTIZATIONS = (None, "int8")  # quantization.py: int8 linear layers, saved and loaded as such


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}.")


def check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_probability(name: str, value) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}.")


def check_positive_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}.")


def check_heads(dim_name: str, dim: int, heads_name: str, heads: int) -> None:
    if dim % heads != 0:
        raise ValueError(f"{dim_name}={dim} must be divisible by {heads_name}={heads} (each head gets {dim_name}/heads dims).")


def check_key_value_heads(num_key_value_heads, **heads: int) -> None:
    """Grouped-query attention: every query head count must be a multiple of ``num_key_value_heads``."""
    if num_key_value_heads is None:
        return
    check_positive("num_key_value_heads", num_key_value_heads)
    for name, count in heads.items():
        if count % num_key_value_heads:
            raise ValueError(f"{name}={count} must be a multiple of num_key_value_heads={num_key_value_heads} (each "
                             "key/value head serves a group of query heads); None gives every query head its own.")


def check_rotary(position_embedding: str, d_model: int, **heads: int) -> None:
    """Rotary positions rotate pairs of features: every head needs an even width."""
    if position_embedding != "rotary":
        return
    for name, count in heads.items():
        if (d_model // count) % 2:
            raise ValueError(f"position_embedding='rotary' needs an even head width, got d_model={d_model} / "
                             f"{name}={count} = {d_model // count}.")


def check_transformer(config, layers: tuple[str, ...], heads: tuple[str, ...], token_ids: tuple[str, ...]) -> None:
    """The checks of every Transformer config (encoder-decoder and decoder-only): ``layers`` and ``heads`` name its
    layer-count and head-count fields, ``token_ids`` its special-token fields. Raises ``ValueError`` naming the field
    and the allowed values."""
    for name in ("vocab_size", "d_model", *layers, *heads, "ffn_dim", "max_position_embeddings"):
        check_positive(name, getattr(config, name))
    for name in heads:
        check_heads("d_model", config.d_model, name, getattr(config, name))
    head_counts = {name: getattr(config, name) for name in heads}
    check_key_value_heads(config.num_key_value_heads, **head_counts)
    check_rotary(config.position_embedding, config.d_model, **head_counts)
    check_choice("activation_function", config.activation_function, ACTIVATIONS)
    check_choice("position_embedding", config.position_embedding, POSITION_EMBEDDINGS)
    check_choice("norm_type", config.norm_type, NORM_TYPES)
    check_choice("forward_implementation", config.forward_implementation, FORWARD_IMPLEMENTATIONS)
    check_choice("quantization", config.quantization, QUANTIZATIONS)
    check_choice("norm_position", config.norm_position, NORM_POSITIONS)
    check_choice("attention_scoring", config.attention_scoring, ATTENTION_SCORINGS)
    for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
        check_probability(name, getattr(config, name))
    if config.position_embedding == "sinusoidal" and config.d_model % 2:
        raise ValueError(f"position_embedding='sinusoidal' needs an even d_model, got d_model={config.d_model}.")
    for name in ("layer_norm_eps", "init_std"):  # eps <= 0: NaN from 1/sqrt(var + eps) in the norms
        check_positive_number(name, getattr(config, name))
    for name in token_ids:
        value = getattr(config, name)
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < config.vocab_size):
                raise ValueError(f"{name}={value!r} must be token ids in [0, vocab_size={config.vocab_size}).")
