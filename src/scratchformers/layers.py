"""The building blocks of the notes, each in one named place, shared by the Transformer and the ViT.

| note                                  | here                                                   |
|---------------------------------------|--------------------------------------------------------|
| masked softmax, padding / causal mask | `build_attention_mask`, `masked_softmax`               |
| scaled dot-product attention (÷√d)    | `dot_product_attention` (eager) or the sdpa kernel     |
| additive attention (tanh scoring)     | `additive_attention`                                   |
| multi-head attention                  | `MultiHeadAttention`                                   |
| grouped-query attention (GQA)         | `MultiHeadAttention(num_key_value_heads=...)`, `repeat_key_value_heads` |
| qk-norm                               | `MultiHeadAttention(qk_norm=True)`: `q_norm`, `k_norm` |
| positional encoding                   | `SinusoidalPositionalEncoding`, `LearnedPositionalEncoding` |
| rotary position embedding (RoFormer)  | `RotaryPositionalEncoding`, `apply_rotary`             |
| position-wise feed-forward network    | `FeedForward`; gated (GLU, SwiGLU, GeGLU): `GatedFeedForward` |
| add & norm, post-norm vs pre-norm     | `AddNorm`, `make_norm`                                 |
| stochastic depth (ViT)                | `DropPath`                                             |
| (label-smoothed) cross-entropy loss   | `cross_entropy`                                        |

The models are these pieces composed (``config.forward_implementation="reference"``, the default); the exact
speed rewrites of some of them live in ``rewrites.py`` (``"fast"``).

Masks are boolean everywhere: ``True`` means "may attend". They are turned into scores with the dtype's most
negative finite value, never a magic constant such as -1e6 that overflows in fp16.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .config_checks import GATED_ACTIVATIONS, NORM_TYPES, check_choice


# --------------------------------------------------------------------------------------------------------------
# Masks and the masked softmax
# --------------------------------------------------------------------------------------------------------------
def build_attention_mask(
    attention_mask: Optional[torch.Tensor],
    query_length: int,
    key_length: int,
    causal: bool,
    past_length: int = 0,
) -> Optional[torch.Tensor]:
    """Combine a padding mask and a causal ("sequence") mask into one boolean mask ``[B or 1, 1, Tq, Tk]``.

    ``attention_mask`` is the usual ``[B, Tk]`` tensor of 1 (token) / 0 (padding) over the keys, or a complete
    ``[B, 1, Tq, Tk]`` mask, which is returned as a boolean mask. Query ``i`` sits
    at absolute position ``past_length + i`` and, when ``causal``, may only see keys at positions ``<= `` its own.
    Returns ``None`` when nothing is masked, so that sdpa can take its fastest path.
    """
    mask = None
    if attention_mask is not None and attention_mask.dim() == 4:
        # A ready [B, 1, Tq, Tk] mask, padding and causality included: transformers builds one over every slot of a
        # compilable (static) cache. Boolean (True = attend) or additive (0 = attend).
        if attention_mask.shape[-2] != query_length:
            raise ValueError(
                f"A 4-D attention_mask must have shape [batch, 1, {query_length} queries, keys], got "
                f"{tuple(attention_mask.shape)}."
            )
        return attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                f"attention_mask must have shape [batch, sequence_length], got {tuple(attention_mask.shape)}."
            )
        if attention_mask.shape[-1] != key_length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions but there are {key_length} keys; "
                "pass a mask for the whole sequence (past + new tokens)."
            )
        # "Is anything masked?" depends on the data (a host sync); under torch.compile the mask is always kept, so
        # that the graph does not break here.
        if torch.compiler.is_compiling() or not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]
            if not causal:
                check_every_row_attends(attention_mask)
    if causal and query_length > 1:
        device = attention_mask.device if attention_mask is not None else None
        query_pos = torch.arange(past_length, past_length + query_length, device=device)[:, None]
        key_pos = torch.arange(key_length, device=device)[None, :]
        causal_mask = (key_pos <= query_pos)[None, None]
        mask = causal_mask if mask is None else mask & causal_mask
    return mask


def check_every_row_attends(attention_mask: torch.Tensor) -> None:
    """Refuse a padding mask with a row of zeros: its queries would have no key to attend to.

    Softmax over nothing is undefined, and the kernels disagree on it (eager averages every value, torch's sdpa
    returns zeros on CPU, some GPU kernels have returned NaN): the row's output would depend on the kernel.
    Left out under torch.compile (a host sync).
    """
    if torch.compiler.is_compiling():
        return
    empty = (attention_mask == 0).all(-1).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"attention_mask row {empty[0]} masks every source token, so that row has nothing to attend to. "
            "Give every source at least one token (an empty text still gets its EOS token from the tokenizer), "
            "or leave that row out of the batch."
        )


def masked_softmax(scores: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Softmax over the last axis in which masked-out keys (``mask == False``) get exactly zero weight.

    Computed in float32 for stability and cast back to the scores' dtype.
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)


# --------------------------------------------------------------------------------------------------------------
# Attention scoring functions. Signature of transformers' attention interface:
#   fn(module, query, key, value, attention_mask, scaling, dropout, **kwargs) -> (output [B,T,H,D], weights)
# with query/key/value [B, H, T, D].
# --------------------------------------------------------------------------------------------------------------
def attention_from_scores(
    module: nn.Module, scores: torch.Tensor, mask: Optional[torch.Tensor], value: torch.Tensor, dropout: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """What every scoring function shares: masked softmax over the scores, dropout, weighted sum of the values.

    Without a mask, a causal module (``module.is_causal``) still sees only the keys up to each query, as the
    fused kernels do (the queries are the last of the keys' positions)."""
    queries, keys = scores.shape[-2:]
    if mask is None and getattr(module, "is_causal", False) and queries > 1:
        mask = build_attention_mask(None, queries, keys, causal=True, past_length=keys - queries).to(scores.device)
    weights = masked_softmax(scores, mask)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def dot_product_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, softmax(Q Kᵀ / √d) V, written out (the "eager" implementation)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    return attention_from_scores(module, scores, attention_mask, value, dropout)


def additive_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive (Bahdanau) attention: score(q, k) = w_vᵀ tanh(W_q q + W_k k), per head.

    W_q and W_k are the module's query/key projections; w_v is ``module.additive_v`` ``[H, D]``. Memory grows as
    B·H·Tq·Tk·D, which is why this scoring exists for teaching and small models only.
    """
    features = torch.tanh(query.unsqueeze(-2) + key.unsqueeze(-3))  # [B, H, Tq, Tk, D]
    scores = torch.einsum("bhqkd,hd->bhqk", features, module.additive_v.to(features.dtype))
    return attention_from_scores(module, scores, attention_mask, value, dropout)


def resolve_attention_function(attn_implementation: Optional[str], scoring: str) -> Callable:
    """Pick the attention kernel for a scoring function and the config's ``attn_implementation``.

    Additive scoring only exists as eager code: asking for it together with sdpa raises a ``ValueError`` (no
    silent fallback), because no fused kernel computes tanh scores.
    """
    if scoring == "additive":
        if attn_implementation not in (None, "eager"):
            raise ValueError(
                f"attention_scoring='additive' only runs with attn_implementation='eager', got "
                f"{attn_implementation!r}. Load with attn_implementation='eager' or use attention_scoring='scaled_dot'."
            )
        return additive_attention
    if attn_implementation in (None, "eager"):
        return dot_product_attention
    return ALL_ATTENTION_FUNCTIONS.get_interface(attn_implementation, dot_product_attention)


def repeat_key_value_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped-query attention: ``[B, h, T, D] -> [B, h·groups, T, D]``, each key/value head repeated for the
    ``groups`` query heads it serves (heads ``g·groups ... g·groups + groups - 1`` share head ``g``)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention in the notes' three steps: project the queries, keys and values and split each into h
    heads; attend in every head; merge the heads and project with W_o.

    Used as encoder self-attention, causal decoder self-attention (``is_causal=True``) and cross-attention
    (``is_cross_attention=True``: keys/values come from the encoder and are cached once per generation).
    """

    def __init__(
        self,
        config,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        is_causal: bool = False,
        is_cross_attention: bool = False,
        scoring: str = "scaled_dot",
        layer_idx: Optional[int] = None,
        out_bias: Optional[bool] = None,
        num_key_value_heads: Optional[int] = None,
        qk_norm: bool = False,
    ):
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        # Grouped-query attention: each key/value head serves num_heads / num_key_value_heads query heads.
        self.num_key_value_heads = num_key_value_heads or num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.is_causal = is_causal  # the kernels read this; False for encoder and cross attention
        self.is_cross_attention = is_cross_attention
        self.scoring = scoring
        self.kernel_wrapper: Optional[Callable[[Callable], Callable]] = None  # how a model may change the kernel call
        self.layer_idx = layer_idx
        key_value_dim = self.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, key_value_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, key_value_dim, bias=bias)
        # ``out_bias`` defaults to ``bias``; ViT keeps the output bias even without q/k/v biases (``qkv_bias=False``).
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias if out_bias is None else out_bias)
        if scoring == "additive":
            self.additive_v = nn.Parameter(torch.empty(num_heads, self.head_dim))
            nn.init.normal_(self.additive_v, std=self.head_dim**-0.5)
        # qk-norm: queries and keys normalised per head before scoring, which bounds the logits of the softmax.
        self.q_norm = make_norm(config.norm_type, self.head_dim, config.layer_norm_eps) if qk_norm else None
        self.k_norm = make_norm(config.norm_type, self.head_dim, config.layer_norm_eps) if qk_norm else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cache=None,
        output_attentions: bool = False,
        position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Attend from ``hidden_states`` to itself or to ``key_value_states``; returns (output, weights or None).

        ``cache`` is a transformers ``Cache`` (self-attention) or ``EncoderDecoderCache`` (decoder);
        ``position_embeddings`` the (cos, sin) of rotary positions (self-attention only).
        """
        query, key, value = self.project_and_split(hidden_states, key_value_states, cache, position_embeddings)
        heads, weights = self.attend(query, key, value, attention_mask, output_attentions)
        return self.merge_and_project(heads), weights

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, h·D] -> [B, h, T, D]`` (h: query heads, or key/value heads)."""
        batch, length, width = x.shape
        return x.view(batch, length, width // self.head_dim, self.head_dim).transpose(1, 2)

    def project_and_split(
        self,
        hidden_states: torch.Tensor,
        key_value_states: Optional[torch.Tensor] = None,
        cache=None,
        position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 1: queries from ``hidden_states``, keys and values from ``key_value_states`` (or ``hidden_states``),
        each split into heads (then qk-normed and rotated, for those variants). With a cache, self-attention
        appends this step's keys and values to the earlier steps'; cross-attention computes the encoder's once and
        reads them back afterwards."""
        query = self.split_heads(self.q_proj(hidden_states))
        if self.q_norm is not None:
            query = self.q_norm(query)
        if position_embeddings is not None:
            query = apply_rotary(query, *position_embeddings)
        layer_cache = cache
        if cache is not None and hasattr(cache, "self_attention_cache"):
            layer_cache = cache.cross_attention_cache if self.is_cross_attention else cache.self_attention_cache
        if self.is_cross_attention and cache is not None and cache.is_updated.get(self.layer_idx):
            return query, layer_cache.layers[self.layer_idx].keys, layer_cache.layers[self.layer_idx].values
        source = hidden_states if key_value_states is None else key_value_states
        key = self.split_heads(self.k_proj(source))
        value = self.split_heads(self.v_proj(source))
        if self.k_norm is not None:
            key = self.k_norm(key)
        if position_embeddings is not None:
            key = apply_rotary(key, *position_embeddings)
        if cache is not None:
            key, value = layer_cache.update(key, value, self.layer_idx)
            if self.is_cross_attention:
                cache.is_updated[self.layer_idx] = True
        return query, key, value

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Step 2: every head's attention, ``[B, H, T, D]`` inputs -> (``[B, T, H, D]`` output, weights or None)."""
        key, value = (repeat_key_value_heads(x, self.num_heads // self.num_key_value_heads) for x in (key, value))
        output, weights = self.attention_function(output_attentions)(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=self.dropout if self.training else 0.0
        )
        return output, (weights if output_attentions else None)

    def merge_and_project(self, heads: torch.Tensor) -> torch.Tensor:
        """Step 3: concatenate the heads ``[B, T, H, D] -> [B, T, d]`` and project with W_o."""
        return self.out_proj(heads.reshape(*heads.shape[:2], self.embed_dim))

    def attention_function(self, output_attentions: bool = False) -> Callable:
        """The one place the kernel is chosen: the config's ``attn_implementation`` for this scoring, eager when the
        weights are asked for (fused kernels do not return them), passed through ``kernel_wrapper`` if a model set
        one (none of the package's models does)."""
        implementation = self.config._attn_implementation
        if output_attentions and self.scoring == "scaled_dot":
            implementation = "eager"
        function = resolve_attention_function(implementation, self.scoring)
        return function if self.kernel_wrapper is None else self.kernel_wrapper(function)


# --------------------------------------------------------------------------------------------------------------
# Positional encoding
# --------------------------------------------------------------------------------------------------------------
def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The notes' fixed table: P[i, 2j] = sin(i / 10000^(2j/d)), P[i, 2j+1] = cos(i / 10000^(2j/d))."""
    positions = torch.arange(num_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(positions * inv_freq)
    table[:, 1::2] = torch.cos(positions * inv_freq[: dim // 2])
    return table


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sin/cos position encoding (not trained, not saved: it is rebuilt from the config)."""

    def __init__(self, num_positions: int, dim: int):
        super().__init__()
        self.num_positions = num_positions
        self.register_buffer("table", sinusoidal_table(num_positions, dim), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids]


class LearnedPositionalEncoding(nn.Module):
    """A trained position table, one vector per absolute position."""

    def __init__(self, num_positions: int, dim: int):
        super().__init__()
        self.num_positions = num_positions
        self.weight = nn.Parameter(torch.zeros(num_positions, dim))

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.weight[position_ids]


def make_positional_encoding(kind: str, num_positions: int, dim: int) -> Optional[nn.Module]:
    """The table added to the token embeddings; None for rotary positions, which act inside attention."""
    if kind == "rotary":
        return None
    return {"sinusoidal": SinusoidalPositionalEncoding, "learned": LearnedPositionalEncoding}[kind](num_positions, dim)


class RotaryPositionalEncoding(nn.Module):
    """RoFormer's rotary position embedding: the (cos, sin) of angle ``position · θ_i``, ``θ_i = 10000^(-2i/D)``,
    for each pair ``(i, i + D/2)`` of a head's D features. ``apply_rotary`` turns every pair of a query or key by
    its angle, so a score ``q · k`` depends on the two positions only through their difference. Nothing is
    learned or stored: the angles are computed from the positions."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.base = base

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.base ** (-torch.arange(0, self.head_dim, 2, device=position_ids.device).float() / self.head_dim)
        angles = position_ids.float()[:, None] * inv_freq[None, :]  # [T, D/2]
        angles = torch.cat([angles, angles], dim=-1)  # [T, D]: pair (i, i + D/2) shares angle i
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each feature pair ``(x_i, x_{i+D/2})`` of ``x [B, H, T, D]`` by its angle:
    ``(x_i cos − x_{i+D/2} sin, x_{i+D/2} cos + x_i sin)``."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)


def check_positions(length: int, num_positions: int) -> None:
    """Raise a clear error instead of an index error deep inside torch when a sequence is too long."""
    if length > num_positions:
        raise ValueError(
            f"Sequence of length {length} exceeds max_position_embeddings={num_positions}; truncate the input "
            "(tokenizer(..., truncation=True, max_length=...)) or use a model with a larger max_position_embeddings."
        )


# --------------------------------------------------------------------------------------------------------------
# Feed-forward, norms, add & norm, stochastic depth
# --------------------------------------------------------------------------------------------------------------
class FeedForward(nn.Module):
    """Position-wise feed-forward network: Linear(d -> ffn) -> activation -> dropout -> Linear(ffn -> d)."""

    def __init__(self, dim: int, hidden_dim: int, activation: str, activation_dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.activation = ACT2FN[activation]
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The ``ffn``-wide activations that ``fc2`` projects back."""
        return self.activate(self.fc1(x))

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """From ``fc1``'s output to the activations: the nonlinearity, then dropout."""
        return self.activation_dropout(self.activation(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))


class GatedFeedForward(FeedForward):
    """A gated linear unit as the feed-forward network (Shazeer 2020): ``fc1`` gives a gate and a value, each
    ``ffn`` wide, and ``fc2`` projects ``activation(gate) ⊙ value``. SwiGLU gates with SiLU, GeGLU with GELU."""

    def __init__(self, dim: int, hidden_dim: int, activation: str, activation_dropout: float = 0.0, bias: bool = True):
        super().__init__(dim, hidden_dim, GATED_ACTIVATIONS[activation], activation_dropout, bias)
        self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=bias)

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        gate, value = h.chunk(2, dim=-1)
        return self.activation_dropout(self.activation(gate) * value)


def make_feed_forward(dim: int, hidden_dim: int, activation: str, activation_dropout: float = 0.0,
                      bias: bool = True) -> FeedForward:
    """``FeedForward``, or ``GatedFeedForward`` for the gated activations (``swiglu``, ``geglu``)."""
    feed_forward = GatedFeedForward if activation in GATED_ACTIVATIONS else FeedForward
    return feed_forward(dim, hidden_dim, activation, activation_dropout, bias)


def make_norm(norm_type: str, dim: int, eps: float) -> nn.Module:
    """LayerNorm (centre and scale, with bias) or RMSNorm (scale only); any other ``norm_type`` is refused (a config
    edited after construction is not validated again)."""
    check_choice("norm_type", norm_type, NORM_TYPES)
    if norm_type == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    return nn.RMSNorm(dim, eps=eps)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample with probability ``p`` while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class AddNorm(nn.Module):
    """The notes' "add & norm" around one sublayer, in either placement:

    post-norm (the paper):  x = Norm(x + Dropout(Sublayer(x)))
    pre-norm:               x = x + Dropout(Sublayer(Norm(x)))

    Called as ``x = add_norm(x, sublayer)``, the sublayer a module or function of one tensor; with ``drop_path``
    the whole branch is also dropped per sample (stochastic depth).
    """

    def __init__(self, dim: int, norm_type: str, norm_position: str, dropout: float, eps: float, drop_path: float = 0.0):
        super().__init__()
        self.pre_norm = norm_position == "pre"
        self.norm = make_norm(norm_type, dim, eps)
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.pre_norm:
            return x + self.drop_path(self.dropout(sublayer(self.norm(x))))
        return self.norm(x + self.drop_path(self.dropout(sublayer(x))))


# --------------------------------------------------------------------------------------------------------------
# The training loss
# --------------------------------------------------------------------------------------------------------------
def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean label-smoothed cross-entropy of ``logits`` (last axis: the classes) against ``labels``, in float32.

    Per position with a label y (``ignore_index`` positions are left out), with ε the label smoothing:
    ``loss = −(1 − ε) · log p_y − ε · mean_v log p_v``, the cross-entropy against the target
    ``(1 − ε) · onehot(y) + ε / V``. NaN when every label is ignored, like torch.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])
    labels = labels.to(logits.device).reshape(-1)
    keep = labels != ignore_index
    nll = -log_probs.gather(-1, labels.masked_fill(~keep, 0)[:, None]).squeeze(-1)
    loss = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=-1) if label_smoothing else nll
    return (loss * keep).sum() / keep.sum()


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for linear and embedding weights, zeros for biases, ones for norm scales."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, LearnedPositionalEncoding):
        nn.init.normal_(module.weight, std=std)
    elif isinstance(module, SinusoidalPositionalEncoding):
        module.table.copy_(sinusoidal_table(module.num_positions, module.table.shape[-1]))
    elif isinstance(module, MultiHeadAttention) and module.scoring == "additive":
        nn.init.normal_(module.additive_v, std=module.head_dim**-0.5)

