"""Exact speed rewrites of the reference layers, chosen with ``config.forward_implementation = "fast"``.

Each rewrite computes the same function as the reference it is named after (same outputs, same gradients, up to
float rounding) with less work; ``tests/test_rewrites.py`` holds each against its reference. They are off by
default: the reference composition of ``layers.py`` is the model, so a learner's edit of a layer, a peft adapter
or a quantization wrapper always takes effect. Rewrites that read a module's weights run only while that module
is a plain ``nn.Linear``, and fall back to the reference otherwise.

| rewrite                      | replaces                                    | saves                                          |
|------------------------------|---------------------------------------------|------------------------------------------------|
| `shared_source_rows`         | the kernel call of the decoder's cross-attention | beams / samples keep one copy of their source |
| `add_linear`                 | `AddNorm.forward` around a final linear     | one pass over the residual stream              |
| `vit_attention_heads`        | `MultiHeadAttention` steps 1-2 in the ViT   | the key bias at inference, the value bias      |
| `cls_attention_heads`        | the last ViT layer's attention for [CLS]    | every token's keys and values                  |
| `vit_layer_forward`          | `ScratchViTLayer.forward` (where `vit_layer_applies`) | the three above together             |
| `softmax_cross_entropy`      | `layers.cross_entropy`                      | the [N, V] tensors of torch's backward         |
| `output_projection`          | the LM head's ``nn.Linear`` while decoding  | a transposed read of the [V, d] weight per step |
| `exact_logits_processors`    | transformers' min-length logits processors  | a [V] mask and a [rows, V] ``where`` per step  |
| `GrowingKeyValueLayer`       | the decoder's self-attention ``DynamicLayer`` | re-copying every past key/value at each step |
| `packed_linear`, `fused_linear` | a plain ``nn.Linear`` (or several on one input) in fast decoding | reading the weight transposed; one product instead of three |
| `FastLinears`                | the encoder's ``F.linear`` calls while generating | MKL's AVX2 code on AMD CPUs (oneDNN: 2x) |

Greedy and beam search have their own written-out decoder step under the same switch: ``fast_decoding.py``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Callable, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers.activations import GELUActivation, SiLUActivation
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor

from .layers import AddNorm, DropPath, MultiHeadAttention
from .precision import cpu_flags
from .quantization import Int8Linear

_SILU_FORWARD = SiLUActivation.forward


def is_fast(config) -> bool:
    return getattr(config, "forward_implementation", "reference") == "fast"


# --------------------------------------------------------------------------------------------------------------
# Beams share their source's encoder output
# --------------------------------------------------------------------------------------------------------------
def fold_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``[B·k, H, T, X] -> [B, H, k·T, X]``: each group of ``k = rows`` consecutive rows becomes one row whose
    positions are those of its members, one after the other."""
    batch_rows, heads, length, dim = x.shape
    return x.view(batch_rows // rows, rows, heads, length, dim).transpose(1, 2).reshape(-1, heads, rows * length, dim)


def unfold_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """The inverse of ``fold_rows``: ``[B, H, k·T, X] -> [B·k, H, T, X]``."""
    batch, heads, length, dim = x.shape
    return x.view(batch, heads, rows, length // rows, dim).transpose(1, 2).reshape(-1, heads, length // rows, dim)


def shared_source_rows(attention: Callable) -> Callable:
    """The attention kernel ``attention``, for queries of ``B·k`` rows and keys/values of ``B`` rows: rows
    ``b·k ... b·k + k - 1`` attend to row ``b`` (the beams or samples of one source, see
    ``ScratchTransformerForConditionalGeneration._expand_inputs_for_generation``).

    The reference repeats the encoder output ``k`` times; here the ``k`` query rows become extra query positions
    of their source's row, so cross-attention projects, caches and reads one copy of the keys and values instead
    of ``k``. Identical otherwise (every query position attends independently)."""

    def shared(module, query, key, value, attention_mask, **kwargs):
        rows = query.shape[0] // key.shape[0]
        if rows == 1 or not is_fast(module.config):
            return attention(module, query, key, value, attention_mask, **kwargs)
        batch_rows, _, length, _ = query.shape
        output, weights = attention(module, fold_rows(query, rows), key, value, attention_mask, **kwargs)
        # output is [B, k·T, H, D], i.e. already [B·k, T, H, D] in memory.
        output = output.reshape(batch_rows, length, *output.shape[2:])
        return output, (unfold_rows(weights, rows) if weights is not None else None)

    return shared


# --------------------------------------------------------------------------------------------------------------
# Residual add fused with the sublayer's last linear layer
# --------------------------------------------------------------------------------------------------------------
def add_linear(
    add_norm: AddNorm, x: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """``add_norm(x, lambda _: inputs @ weightᵀ + bias)`` for a sublayer ending in a linear layer whose input is
    ``inputs`` (computed from ``add_norm.norm(x)`` in pre-norm, from ``x`` in post-norm), with fewer passes.

    ``x + linear(inputs)`` writes the bias into a fresh output, accumulates the product on top, then reads that
    output and ``x`` again for the add. When nothing acts between the two (no active dropout or stochastic
    depth), the bias rides along with ``x`` (one pass) and the product accumulates into that sum in place
    (``addmm_``). Under autocast the reference runs: autocast does not cast the operands of an in-place product.
    """
    acting = add_norm.training and (add_norm.dropout.p > 0 or isinstance(add_norm.drop_path, DropPath))
    if acting or torch.is_autocast_enabled(x.device.type):
        branch = add_norm.drop_path(add_norm.dropout(nn.functional.linear(inputs, weight, bias)))
        return x + branch if add_norm.pre_norm else add_norm.norm(x + branch)
    dim = x.shape[-1]
    out = x.reshape(-1, dim) + bias if bias is not None else x.reshape(-1, dim).clone()
    out.addmm_(inputs.reshape(-1, inputs.shape[-1]), weight.t())
    out = out.view(x.shape)
    return out if add_norm.pre_norm else add_norm.norm(out)


# --------------------------------------------------------------------------------------------------------------
# The ViT layer
# --------------------------------------------------------------------------------------------------------------
def vit_attention_heads(
    attention: MultiHeadAttention, hidden_states: torch.Tensor, cls_only: bool = False
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(concatenated heads ``[B, Tq, d]`` before W_o, W_o's effective bias) of every token or, with ``cls_only``,
    of the [CLS] query alone, without two bias terms that cannot change the result:

    - the key bias adds ``q · b_k`` to every score of a query's row, and softmax ignores a constant shift of a row.
      It is left out when no gradients are computed (in training ``b_k`` keeps its gradient, which is zero);
    - the value bias: each row of attention weights sums to 1, so ``Σ_j p_ij (v_j + b_v) = Σ_j p_ij v_j + b_v``,
      and ``b_v`` reaches the output as ``W_o b_v``: it is added to the output bias instead of to every value (not
      under active attention dropout, whose weights no longer sum to 1).
    """
    if cls_only:
        return cls_attention_heads(attention, hidden_states), attention.out_proj.bias
    query = attention.split_heads(attention.q_proj(hidden_states))
    key_bias = attention.k_proj.bias if torch.is_grad_enabled() else None
    key = attention.split_heads(nn.functional.linear(hidden_states, attention.k_proj.weight, key_bias))
    value_bias, out_bias = attention.v_proj.bias, attention.out_proj.bias
    if value_bias is not None and out_bias is not None and not (attention.training and attention.dropout > 0):
        value_bias, out_bias = None, torch.addmv(out_bias, attention.out_proj.weight, value_bias)
    value = attention.split_heads(nn.functional.linear(hidden_states, attention.v_proj.weight, value_bias))
    heads, _ = attention.attend(query, key, value, None)
    return heads.reshape(*hidden_states.shape[:2], attention.embed_dim), out_bias


def cls_attention_heads(attention: MultiHeadAttention, hidden_states: torch.Tensor) -> torch.Tensor:
    """The heads ``[B, 1, d]`` of the [CLS] query attending to every token, without the keys and values of every
    token (two ``[B·T, d] x [d, d]`` products): per head, with ``x_j`` the tokens' inputs,

        score_j = q · (W_k x_j + b_k) = (W_kᵀ q) · x_j + q · b_k
        output  = Σ_j p_j (W_v x_j + b_v) = W_v (Σ_j p_j x_j) + b_v

    so the query is taken back to the input space once, and the weighted mean of the inputs forward once.
    (``q · b_k`` is the same for every key, so it changes nothing; it is kept so that ``b_k`` gets its gradient.)
    """
    batch, _, dim = hidden_states.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    # Products batched over the heads: [H, B, D] x [H, D, d] (a broadcast over B would expand W in backward).
    query = (attention.q_proj(hidden_states[:, 0]) * attention.scaling).view(batch, heads, head_dim).transpose(0, 1)
    query_in_input_space = torch.bmm(query, attention.k_proj.weight.view(heads, head_dim, dim)).transpose(0, 1)
    scores = torch.bmm(query_in_input_space, hidden_states.transpose(1, 2))  # [B, H, T]
    if attention.k_proj.bias is not None:
        scores = scores + (query * attention.k_proj.bias.view(heads, 1, head_dim)).sum(-1).T[..., None]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    weights = nn.functional.dropout(weights, p=attention.dropout, training=attention.training)
    mean_input = torch.bmm(weights, hidden_states).transpose(0, 1)  # [H, B, d]
    output = torch.bmm(mean_input, attention.v_proj.weight.view(heads, head_dim, dim).transpose(1, 2))  # [H, B, D]
    if attention.v_proj.bias is not None:
        output = output + attention.v_proj.bias.view(heads, 1, head_dim)
    return output.transpose(0, 1).reshape(batch, 1, dim)


def vit_layer_applies(layer: nn.Module) -> bool:
    """Whether ``vit_layer_forward`` computes this ViT layer: pre-norm, the paper's attention (no rotary
    positions, qk-norm or grouped key/value heads), and every projection a plain ``nn.Linear`` (the rewrite reads
    their weights; a wrapped or replaced one — peft LoRA, ``torch.ao`` dynamic int8 — must be called as a module)."""
    attention, config = layer.self_attn, layer.config
    if not layer.self_attn_add_norm.pre_norm or config.position_embedding == "rotary" or attention.q_norm is not None:
        return False
    if attention.num_key_value_heads != attention.num_heads:
        return False
    projections = (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj, layer.ffn.fc1, layer.ffn.fc2)
    return all(type(projection) is nn.Linear for projection in projections)


def vit_layer_forward(layer: nn.Module, hidden_states: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
    """``ScratchViTLayer.forward`` rewritten: ``vit_attention_heads``, then each sublayer's last linear layer
    accumulated into the residual (``add_linear``); with ``cls_only`` the new state of the [CLS] token alone
    (``[B, 1, d]``), whose query still attends to every token. Pre-norm layers only (the ViT's)."""
    attention_add_norm, ffn_add_norm = layer.self_attn_add_norm, layer.ffn_add_norm
    x = hidden_states
    heads, out_bias = vit_attention_heads(layer.self_attn, attention_add_norm.norm(x), cls_only)
    x = add_linear(attention_add_norm, x[:, :1] if cls_only else x, heads, layer.self_attn.out_proj.weight, out_bias)
    hidden = layer.ffn.hidden(ffn_add_norm.norm(x))
    return add_linear(ffn_add_norm, x, hidden, layer.ffn.fc2.weight, layer.ffn.fc2.bias)


# --------------------------------------------------------------------------------------------------------------
# The training loss
# --------------------------------------------------------------------------------------------------------------
class SoftmaxCrossEntropy(torch.autograd.Function):
    """``layers.cross_entropy`` of logits ``[N, V]`` against labels ``[N]`` with its backward written out.

    Per kept row, with ``lse = log Σ_v exp(z_v)``:

        loss = (1 − ε) · (lse − z_y)  +  ε · (lse − mean_v z_v)        (ε = label smoothing)
        ∂loss/∂z = softmax(z) − target,   target = (1 − ε) · onehot(y) + ε / V

    averaged over the kept rows (ignored rows get zero gradient). Keeps only the logits and one ``lse`` per row
    for the backward pass and writes the gradient in one buffer; autograd through ``log_softmax`` also keeps the
    ``[N, V]`` log-probabilities and builds two more ``[N, V]`` tensors in backward, which with a large vocabulary
    are the peak of a whole training step.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, smoothing: float) -> torch.Tensor:
        keep = labels != ignore_index
        targets = labels.masked_fill(~keep, 0)
        lse = torch.logsumexp(logits, dim=-1)
        row_loss = lse - logits.gather(-1, targets[:, None]).squeeze(-1)
        if smoothing:
            row_loss = (1.0 - smoothing) * row_loss + smoothing * (lse - logits.mean(dim=-1))
        count = keep.sum()
        ctx.save_for_backward(logits, lse, targets, keep, count)
        ctx.smoothing = smoothing
        return (row_loss * keep).sum() / count  # NaN when every label is ignored, like torch

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, lse, targets, keep, count = ctx.saved_tensors
        smoothing = ctx.smoothing
        grad = torch.sub(logits, lse[:, None]).exp_()  # softmax(z)
        if smoothing:
            grad.sub_(smoothing / logits.shape[-1])
        grad.scatter_add_(-1, targets[:, None], torch.full_like(lse[:, None], smoothing - 1.0))
        grad.mul_((grad_loss / count * keep).to(grad.dtype)[:, None])
        return grad, None, None, None


def softmax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, label_smoothing: float = 0.0
) -> torch.Tensor:
    """``layers.cross_entropy`` through ``SoftmaxCrossEntropy``: same value and gradient, less memory."""
    logits = logits.float().reshape(-1, logits.shape[-1])
    return SoftmaxCrossEntropy.apply(logits, labels.to(logits.device).reshape(-1), ignore_index, float(label_smoothing))


# --------------------------------------------------------------------------------------------------------------
# Decoding: the output projection and the logits processors of every step
# --------------------------------------------------------------------------------------------------------------
_DECODING = threading.local()  # .layouts: the weight copies kept during one generate call (decoding_weight_layouts)


@contextlib.contextmanager
def decoding_weight_layouts():
    """For the duration of one ``generate`` call, keep the weight copies that the decoding rewrites lay out
    (``output_projection``), and drop them at its end. The weights cannot change inside a call; between calls an
    optimizer may change them without a trace (fused AdamW writes the parameters without bumping their version),
    so no copy outlives the call. Yields the ``{module: (key, copy)}`` of this thread's outermost call."""
    outer = getattr(_DECODING, "layouts", None)
    if outer is not None:
        yield outer
        return
    _DECODING.layouts = {}
    try:
        yield _DECODING.layouts
    finally:
        _DECODING.layouts = None


def output_projection(lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``lm_head(hidden)`` while decoding, through a copy of the ``[V, d]`` weight kept transposed (``[d, V]``,
    contiguous): the product then reads the weight in its storage order, where ``F.linear`` reads it transposed.
    With a small batch of rows (a decoding step: one position per beam) and a large vocabulary this is the largest
    product of the step. Same kernel family, same sums (the tests hold it equal to the reference).

    The copy lives for one ``generate`` call (``decoding_weight_layouts``) and is remade if the weight's storage or
    version changes inside it. Outside a call, with gradients, under autocast, and for anything but a plain
    ``nn.Linear`` (a peft or quantized head must be called as a module) the reference runs."""
    layouts = getattr(_DECODING, "layouts", None)
    if layouts is None or not _plain_linear_call(lm_head, hidden):
        return lm_head(hidden)
    weight = lm_head.weight
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, tuple(weight.shape))
    cached = layouts.get(lm_head)
    if cached is None or cached[0] != key:
        cached = layouts[lm_head] = (key, weight.detach().t().contiguous())
    transposed = cached[1]
    rows = hidden.reshape(-1, hidden.shape[-1])
    bias = lm_head.bias
    logits = torch.mm(rows, transposed) if bias is None else torch.addmm(bias, rows, transposed)
    return logits.view(*hidden.shape[:-1], transposed.shape[-1])


def runs_as_written(module: nn.Module) -> bool:
    """Whether calling ``module`` runs its class's ``forward`` and nothing else: no ``forward`` replaced on the
    instance, no hooks of its own, no accelerate hook, no global module hooks. A rewrite may then compute what
    that ``forward`` computes without calling it."""
    return ("forward" not in vars(module) and not hasattr(module, "_hf_hook")
            and not (module._forward_hooks or module._forward_pre_hooks)
            and not (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks))


def _plain_linear_call(module: nn.Module, hidden: torch.Tensor, autocast: bool = False) -> bool:
    """Whether calling ``module`` on ``hidden`` is nothing but ``F.linear`` with its own weight, without gradients:
    a plain ``nn.Linear`` (no subclass, no replaced ``forward``, no hooks: accelerate's offloading, a user's
    forward hook), weight of ``hidden``'s dtype and device, outside torch.compile, and outside autocast unless
    ``autocast`` (the caller casts as autocast would)."""
    weight = getattr(module, "weight", None)
    return (type(module) is nn.Linear and isinstance(weight, torch.Tensor) and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and (autocast or not torch.is_autocast_enabled(hidden.device.type))
            and runs_as_written(module) and weight.dtype == hidden.dtype and weight.device == hidden.device and weight.device.type != "meta")


#: float32 weights of at most this many entries run from a transposed copy through MKL where the CPU has no AVX-512,
#: larger ones packed by oneDNN: measured per product on an AMD EPYC with AVX2 (Zen 3; benchmarks/README.md),
#: 16 and 64 rows, oneDNN 1.2-1.7x faster on the feed-forward and vocabulary products of d_model 512 and on the
#: vocabulary product of d_model 256, MKL 1.3-1.5x faster on the 256 x 256 ones. On an AMD EPYC with AVX-512
#: (Zen 5) oneDNN was as fast on those and 1.5-3.5x faster on the others (MKL takes its AVX2 code there): every
#: weight is packed by oneDNN where the CPU has AVX-512.
SMALL_WEIGHT = 256 * 256


@functools.cache
def _has_avx512() -> bool:
    return "avx512f" in cpu_flags()


def _packs_with_onednn(weight: torch.Tensor) -> bool:
    """Whether ``packed_linear`` lays ``weight`` out for oneDNN (else transposed, for MKL's ``addmm``)."""
    if weight.device.type != "cpu" or not (torch.backends.mkldnn.is_available()
                                           and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if weight.dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return weight.dtype == torch.float32 and (weight.numel() > SMALL_WEIGHT or _has_avx512())


def _autocast_dtype(weight: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast computes a linear layer in on ``weight``'s device, or None outside autocast."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def packed_linear(linear: nn.Module, rows: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``linear`` as a function of ``[N, in]`` inputs, from its weight laid out for the product.

    A plain ``nn.Linear`` (``_plain_linear_call``) runs through oneDNN (on the CPU; see ``SMALL_WEIGHT``), its
    weight packed into oneDNN's blocked layout for products of ``rows`` rows, or, with ``rows=None``, read as
    stored (no copy: for a weight used once per call, where the reorder costs more than it saves; measured on the
    AMD EPYC with AVX-512, oneDNN reads a stored weight as fast as a packed one at 384 rows, and packing paid at 16
    and 64 rows only over many steps). Otherwise it runs from a transposed copy that ``addmm`` reads in storage
    order (as ``output_projection`` does). Under CPU bf16 autocast (where oneDNN computes bf16) the
    copy is bf16 and the input is cast to it, as autocast casts ``F.linear``'s arguments, so the product is
    autocast's. The copy is made here, for one generation: no copy outlives the weights it was made from. Anything
    else (peft, int8, hooks, other autocast, gradients) is called as the module it is."""
    product = fused_linear([linear], rows)
    return linear if product is None else product


#: The activations that oneDNN applies to a product's output in the same pass (``fused_linear``): module type ->
#: oneDNN's name and algorithm. transformers' GELU counts only when it is torch's exact (erf) GELU.
_ONEDNN_ACTIVATIONS = {nn.ReLU: ("relu", ""), nn.SiLU: ("swish", ""), SiLUActivation: ("swish", ""),
                       GELUActivation: ("gelu", "none")}


def _onednn_activation(activation: Optional[nn.Module]) -> Optional[tuple[str, str]]:
    fused = _ONEDNN_ACTIVATIONS.get(type(activation))
    if fused is None or not runs_as_written(activation):
        return None
    if type(activation) is GELUActivation and getattr(activation, "act", None) is not nn.functional.gelu:
        return None
    if type(activation) is SiLUActivation and SiLUActivation.forward is not _SILU_FORWARD:
        return None  # a kernel from the Hub took its place
    return fused


def fused_linear(linears: list[nn.Module], rows: Optional[int], activation: Optional[nn.Module] = None
                 ) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """One product for plain ``nn.Linear`` layers that read the same input: their outputs side by side (``[rows,
    sum of outs]``, split by the caller), as ``packed_linear`` lays out one layer, with ``activation`` (a module)
    applied to the result, inside oneDNN's pass where it can. None where a layer is not plain, or the layers
    differ in dtype, device or having a bias."""
    if all(type(linear) is Int8Linear for linear in linears):
        return _int8_product(linears, activation)
    weights = [getattr(linear, "weight", None) for linear in linears]
    if not all(isinstance(w, torch.Tensor) and _plain_linear_call(l, w.new_empty(0), autocast=True)
               for l, w in zip(linears, weights)):
        return None
    if len({(w.dtype, w.device, l.bias is None) for l, w in zip(linears, weights)}) != 1:
        return None
    cast = _autocast_dtype(weights[0])
    if cast is not None and not (cast == torch.bfloat16 and weights[0].dtype == torch.float32
                                 and weights[0].device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return None
    weight = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach()
    bias = None if linears[0].bias is None else torch.cat([l.bias.detach() for l in linears])
    if cast is not None:
        weight, bias = weight.to(cast), None if bias is None else bias.to(cast)
    fused = _onednn_activation(activation) if activation is not None else None
    if _packs_with_onednn(weight):
        layout = weight if rows is None else torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        attr, algorithm = fused or ("none", "")
        product = lambda x: torch.ops.mkldnn._linear_pointwise(x, layout, bias, attr, [], algorithm)  # noqa: E731
    else:
        fused, layout = None, weight.t().contiguous()
        product = (lambda x: torch.mm(x, layout)) if bias is None else (lambda x: torch.addmm(bias, x, layout))
    if activation is not None and fused is None:
        product = (lambda product: lambda x: activation(product(x)))(product)
    return product if cast is None else (lambda x: product(x.to(cast)))


def _int8_product(layers: list[Int8Linear], activation: Optional[nn.Module]) -> Optional[Callable]:
    """``Int8Linear`` layers (without hooks, without gradients) side by side as one int8 product: the input is
    quantized once for all, with the scale each layer would give it alone (the same input), so each output is the
    layer's own. None where a layer has hooks or a replaced ``forward``, or they differ in having a bias."""
    if torch.is_grad_enabled() or len({layer.bias is None for layer in layers}) != 1 or not all(
            layer.weight.device.type == "cpu" and runs_as_written(layer) for layer in layers):
        return None
    if len(layers) == 1:
        packed = layers[0].packed_weight()
    else:
        bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
        packed = Int8Linear.prepack(torch.cat([layer.weight for layer in layers]),
                                    torch.cat([layer.weight_scale for layer in layers]), bias)
    product = Int8Linear.packed_product(packed)
    return product if activation is None else (lambda x: activation(product(x)))


class FastLinears(TorchFunctionMode):
    """Inside this mode, ``F.linear`` on the weight and bias of one of ``module``'s plain ``nn.Linear`` layers runs
    through ``packed_linear(layer)`` (oneDNN reading the weight as stored: on this AMD EPYC 2x ``F.linear``'s MKL
    at the encoder's 384 rows); everything else runs as it would. The encoder runs so while generating (once per
    call, a whole source per product). Module hooks still run: only the product of a plain layer changes, and
    only without gradients, for inputs of the weight's dtype or under autocast."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.products: dict[int, tuple] = {}  # id(weight) -> (weight, bias, product)
        for layer in module.modules():
            if type(layer) is nn.Linear and (product := packed_linear(layer)) is not layer:
                self.products[id(layer.weight)] = (layer.weight, layer.bias, product)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is nn.functional.linear and len(args) >= 2 and not torch.is_grad_enabled():
            entry = self.products.get(id(args[1]))
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            x = args[0]
            if (entry is not None and entry[0] is args[1] and entry[1] is bias and x.dim() >= 1
                    and (x.dtype == args[1].dtype or _autocast_dtype(args[1]) is not None)):
                return entry[2](x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)
        return func(*args, **kwargs)


def fast_linears_while_generating(module: nn.Module, config):
    """``FastLinears(module)`` inside a ``generate`` call of a fast model (``decoding_weight_layouts``), without
    gradients and outside torch.compile; elsewhere a context that changes nothing."""
    if (is_fast(config) and getattr(_DECODING, "layouts", None) is not None and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()):
        return FastLinears(module)
    return contextlib.nullcontext()


def _mask_eos_(scores: torch.Tensor, eos_token_id: torch.Tensor) -> torch.Tensor:
    """``scores`` with the EOS columns set to -inf in place: ``torch.where(isin(arange(V), eos), -inf, scores)``
    without the copy (ids outside ``[0, V)`` match no column, as with ``isin``)."""
    vocab = scores.shape[-1]
    eos = eos_token_id.to(scores.device).reshape(-1)
    eos = eos[(eos >= 0) & (eos < vocab)]
    return scores.index_fill_(-1, eos, -math.inf)


class ExactMinLengthLogitsProcessor(MinLengthLogitsProcessor):
    """``MinLengthLogitsProcessor`` that masks the EOS columns in a copy of the scores, instead of building a
    vocabulary-sized mask (``arange`` + ``isin``) and a ``where`` over every score at every step."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return self.apply_(input_ids, scores.clone())

    def apply_(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """The same, in place: for a decoding loop that owns ``scores`` (``fast_decoding``)."""
        if input_ids.shape[-1] < self.min_length:
            _mask_eos_(scores, self.eos_token_id)
        return scores


class ExactMinNewTokensLengthLogitsProcessor(MinNewTokensLengthLogitsProcessor):
    """``MinNewTokensLengthLogitsProcessor`` computed as ``ExactMinLengthLogitsProcessor`` is."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return self.apply_(input_ids, scores.clone())

    def apply_(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """The same, in place: for a decoding loop that owns ``scores`` (``fast_decoding``)."""
        if input_ids.shape[-1] - self.prompt_length_to_skip < self.min_new_tokens:
            _mask_eos_(scores, self.eos_token_id)
        return scores


def process_owned_scores(processors, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
    """``processors(input_ids, scores)`` for a caller that owns ``scores`` (and keeps no other reference to it):
    the processors that can (``apply_``) work in place, the others as usual, in their order."""
    for processor in processors:
        apply_ = getattr(processor, "apply_", None)
        scores = apply_(input_ids, scores) if apply_ is not None else processor(input_ids, scores)
    return scores


EXACT_LOGITS_PROCESSORS = {
    MinLengthLogitsProcessor: ExactMinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor: ExactMinNewTokensLengthLogitsProcessor,
}


def exact_logits_processors(processors):
    """``processors`` (a ``LogitsProcessorList``, changed in place and returned) with each processor of exactly one
    of the types of ``EXACT_LOGITS_PROCESSORS`` replaced by its rewrite, holding the same settings. Subclasses and
    any other processor (the user's own included) are left as they are."""
    for index, processor in enumerate(processors):
        rewrite = EXACT_LOGITS_PROCESSORS.get(type(processor))
        if rewrite is not None:
            replacement = rewrite.__new__(rewrite)
            replacement.__dict__.update(processor.__dict__)
            processors[index] = replacement
    return processors


# --------------------------------------------------------------------------------------------------------------
# Decoding: a self-attention cache that appends in place
# --------------------------------------------------------------------------------------------------------------
def _is_filled_prefix(past: torch.Tensor, buffer: Optional[torch.Tensor], filled: int) -> bool:
    """Whether ``past`` is exactly the first ``filled`` positions of ``buffer`` (the view this layer made last)."""
    return (buffer is not None and past.dim() == 4 and past.data_ptr() == buffer.data_ptr()
            and past.stride() == buffer.stride() and past.shape[-2] == filled
            and past.shape[:2] == buffer.shape[:2] and past.shape[-1] == buffer.shape[-1]
            and past.dtype == buffer.dtype and past.device == buffer.device)


def _append(past: torch.Tensor, buffer: Optional[torch.Tensor], filled: int, new: torch.Tensor):
    """``torch.cat([past, new], -2)`` as a view of a buffer with room for later steps: (view, buffer, filled)."""
    length = past.shape[-2] if past.dim() == 4 else 0
    total = length + new.shape[-2]
    fits = (_is_filled_prefix(past, buffer, filled) and total <= buffer.shape[-2] and new.dtype == buffer.dtype
            and new.shape[:2] == buffer.shape[:2] and new.shape[-1] == buffer.shape[-1])
    if not fits:  # first step, or the keys were replaced (reordered elsewhere, cropped, offloaded ...): a new buffer
        batch, heads, _, dim = new.shape
        if length and (past.shape[:2] != new.shape[:2] or past.shape[-1] != dim or past.dtype != new.dtype
                       or past.device != new.device):
            return torch.cat([past, new], dim=-2), None, 0  # let torch report (or do) what the reference does
        buffer = new.new_empty(batch, heads, max(2 * total, 16), dim)
        if length:
            buffer[:, :, :length].copy_(past)
    buffer[:, :, length:total].copy_(new)
    return buffer[:, :, :total], buffer, total


class GrowingKeyValueLayer(DynamicLayer):
    """``DynamicLayer`` (transformers' default cache layer) whose ``keys`` and ``values`` are views of buffers with
    room for later steps: a step writes its keys and values after the past ones, where ``DynamicLayer.update``
    concatenates (copies every past key and value of the layer at every step). The buffers double when full.

    ``keys`` / ``values`` are what the reference holds (``[B, H, T, D]``, the same numbers), views instead of
    contiguous tensors. Beam reordering writes the selected rows into a fresh buffer (the reference's
    ``index_select``, same cost). Anything else that replaces ``keys`` or ``values`` (``crop``,
    ``batch_select_indices``, offloading, a user's assignment) is noticed at the next update, which then copies them
    into a new buffer, as the reference's concatenation would; positions past the filled ones are never visible.
    (One difference: the reference's ``keys`` of an earlier step is a tensor of its own, here a view of the buffer,
    so writing into it in place would reach the cache.)"""

    _layer_type = None  # not registered as transformers' layer of any attention type

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        key_buffer, value_buffer, filled = self.__dict__.get("_growing", (None, None, 0))
        self.keys, key_buffer, key_filled = _append(self.keys, key_buffer, filled, key_states)
        self.values, value_buffer, value_filled = _append(self.values, value_buffer, filled, value_states)
        same = key_buffer is not None and value_buffer is not None and key_filled == value_filled
        self.__dict__["_growing"] = (key_buffer, value_buffer, key_filled) if same else (None, None, 0)
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        key_buffer, value_buffer, filled = self.__dict__.get("_growing", (None, None, 0))
        if self.get_seq_length() == 0 or not (_is_filled_prefix(self.keys, key_buffer, filled)
                                               and _is_filled_prefix(self.values, value_buffer, filled)):
            self.__dict__["_growing"] = (None, None, 0)
            return super().reorder_cache(beam_idx)
        if beam_idx.numel() != key_buffer.shape[0]:
            self.__dict__["_growing"] = (None, None, 0)
            return super().reorder_cache(beam_idx)
        beam_idx = beam_idx.to(self.keys.device)
        new_keys, new_values = torch.empty_like(key_buffer), torch.empty_like(value_buffer)
        self.keys = torch.index_select(self.keys, 0, beam_idx, out=new_keys[:, :, :filled])
        self.values = torch.index_select(self.values, 0, beam_idx, out=new_values[:, :, :filled])
        self.__dict__["_growing"] = (new_keys, new_values, filled)

    def reset(self) -> None:
        self.__dict__.pop("_growing", None)
        super().reset()


def grow_self_attention_cache(cache) -> None:
    """Make the self-attention layers of an ``EncoderDecoderCache`` append in place (``GrowingKeyValueLayer``):
    its ``DynamicLayer``s (exactly that type: sliding-window, static, quantized or offloaded layers are left alone)
    and the layers it will create."""
    self_cache = getattr(cache, "self_attention_cache", None)
    if self_cache is None or getattr(self_cache, "offloading", False):
        return
    for layer in self_cache.layers:
        if type(layer) is DynamicLayer:
            layer.__class__ = GrowingKeyValueLayer
    if getattr(self_cache, "layer_class_to_replicate", None) is DynamicLayer:
        self_cache.layer_class_to_replicate = GrowingKeyValueLayer
