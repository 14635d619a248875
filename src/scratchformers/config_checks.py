"""The choices every architectural config field allows, and the checks that name a bad value and the fix.

Torch-free, so that reading a configuration imports neither torch nor transformers' modeling code.
"""

from __future__ import annotations

ACTIVATIONS = ("relu", "gelu", "silu")
NORM_TYPES = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("post", "pre")
ATTENTION_SCORINGS = ("scaled_dot", "additive")
POSITION_EMBEDDINGS = ("sinusoidal", "learned")
# "reference": the layers of layers.py composed as the notes write them; "fast": the exact rewrites of rewrites.py.
FORWARD_IMPLEMENTATIONS = ("reference", "fast")


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
