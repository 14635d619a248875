"""The choices every architectural config field allows, and the checks that name a bad value and the fix.

Torch-free, so that reading a configuration imports neither torch nor transformers' modeling code.
"""

from __future__ import annotations

# Gated variants (GLU, Shazeer 2020) name the activation of their gate.
GATED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}
ACTIVATIONS = ("relu", "gelu", "silu", *GATED_ACTIVATIONS)
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
