"""Exact speed rewrites of the reference layers, chosen with ``config.forward_implementation = "fast"``.

Each rewrite computes the same function as the reference it is named after (same outputs, same gradients, up to
float rounding) with less work; ``tests/test_rewrites.py`` holds each against its reference. They are off by
default: the reference composition of ``layers.py`` is the model, so a learner's edit of a layer, a peft adapter
or a quantization wrapper always takes effect. Rewrites that read a module's weights run only while that module
is a plain ``nn.Linear``, and fall back to the reference otherwise.

| rewrite                      | replaces                                    | saves                                          |
|------------------------------|---------------------------------------------|------------------------------------------------|
| `add_linear`                 | `AddNorm.forward` around a final linear     | one pass over the residual stream              |
| `vit_attention_heads`        | `MultiHeadAttention` steps 1-2 in the ViT   | the key bias at inference, the value bias      |
| `cls_attention_heads`        | the last ViT layer's attention for [CLS]    | every token's keys and values                  |
| `vit_layer_forward`          | `ScratchViTLayer.forward` (where `vit_layer_applies`) | the three above together             |
| `softmax_cross_entropy`      | `layers.cross_entropy`                      | the [N, V] tensors of torch's backward         |
| `exact_logits_processors`    | transformers' min-length logits processors  | a [V] mask and a [rows, V] ``where`` per step  |

The decoder's step under the same switch is ``fast_decoding.FastDecoder`` (a stepper of ``decoding.py``); the CPU
weight layouts it reads are ``cpu_weight_layout.py`` (no arithmetic of its own).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from transformers.generation.logits_process import MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor

from .layers import AddNorm, DropPath, MultiHeadAttention


def is_fast(config) -> bool:
    return getattr(config, "forward_implementation", "reference") == "fast"


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
# Decoding: what a rewrite may skip, and the logits processors of every step
# --------------------------------------------------------------------------------------------------------------
def runs_as_written(module: nn.Module) -> bool:
    """Whether calling ``module`` runs its class's ``forward`` and nothing else: no ``forward`` replaced on the
    instance, no hooks of its own, no accelerate hook, no global module hooks. A rewrite may then compute what
    that ``forward`` computes without calling it. (transformers' output-capturing hooks, left on the modules after
    a call with ``output_attentions`` / ``output_hidden_states``, do nothing outside such a call: they do not
    count.)"""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return ("forward" not in vars(module) and not hasattr(module, "_hf_hook")
            and all(_is_idle_output_capturing_hook(hook) for hook in hooks)
            and not (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks))


def _is_idle_output_capturing_hook(hook) -> bool:
    """transformers' ``output_capturing_hook``: it records outputs only inside a capturing model call."""
    return (getattr(hook, "__module__", None) == "transformers.utils.output_capturing"
            and getattr(hook, "__name__", None) == "output_capturing_hook")


def _mask_eos_(scores: torch.Tensor, processor) -> torch.Tensor:
    """``scores`` with the EOS columns of ``processor.eos_token_id`` set to -inf in place: ``torch.where(isin(
    arange(V), eos), -inf, scores)`` without the copy (ids outside ``[0, V)`` match no column, as with ``isin``).
    The columns are found once per processor, vocabulary and device: selecting them is a host sync on a GPU."""
    vocab, eos_token_id = scores.shape[-1], processor.eos_token_id
    cached = processor.__dict__.get("_eos_columns")
    if cached is None or cached[0] is not eos_token_id or cached[1] != (vocab, scores.device):
        eos = eos_token_id.to(scores.device).reshape(-1)
        cached = processor._eos_columns = (eos_token_id, (vocab, scores.device), eos[(eos >= 0) & (eos < vocab)])
    return scores.index_fill_(-1, cached[2], -math.inf)


class ExactMinLengthLogitsProcessor(MinLengthLogitsProcessor):
    """``MinLengthLogitsProcessor`` that masks the EOS columns in a copy of the scores, instead of building a
    vocabulary-sized mask (``arange`` + ``isin``) and a ``where`` over every score at every step."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return self.apply_(input_ids, scores.clone())

    def apply_(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """The same, in place: for a decoding loop that owns ``scores`` (``fast_decoding``)."""
        if input_ids.shape[-1] < self.min_length:
            _mask_eos_(scores, self)
        return scores


class ExactMinNewTokensLengthLogitsProcessor(MinNewTokensLengthLogitsProcessor):
    """``MinNewTokensLengthLogitsProcessor`` computed as ``ExactMinLengthLogitsProcessor`` is."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return self.apply_(input_ids, scores.clone())

    def apply_(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """The same, in place: for a decoding loop that owns ``scores`` (``fast_decoding``)."""
        if input_ids.shape[-1] - self.prompt_length_to_skip < self.min_new_tokens:
            _mask_eos_(scores, self)
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
