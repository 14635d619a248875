"""CPU weight layouts for decoding: each linear layer's weight laid out once per ``generate`` call for the kernel
that reads it, and the products that read those copies.

Nothing here changes what a layer computes; it changes the order in which a kernel reads the weight:

- ``linear_product(linears, rows, activation)``: the product of one or several plain ``nn.Linear`` layers that
  read the same input (their outputs side by side), with ``activation`` applied inside oneDNN's pass where it can.
  On the CPU the weight is packed by oneDNN into its blocked layout for products of ``rows`` rows, or, where oneDNN
  measured slower (small float32 weights on a CPU without AVX-512, ``SMALL_WEIGHT``), copied transposed for MKL's
  ``addmm``. Under CPU bf16 autocast the copy is bf16 and the input is cast as autocast would cast it. int8 layers
  (``Int8Linear``) read side by side are prepacked together; one int8 layer alone runs from the prepacked weight it
  keeps for its own forward (its weights are frozen buffers; it remakes that copy when they are replaced).
- ``WeightLayouts``: the copies of one ``generate`` call. This is the one weight-copy cache of fast decoding and its
  one staleness rule: a copy lives for the call that made it. The weights cannot change inside a call; between calls
  an optimizer may change them without a trace (fused AdamW writes parameters without bumping their version).
- ``EncoderLinears``: a ``TorchFunctionMode`` under which the encoder's ``F.linear`` calls on plain layers run
  through oneDNN reading the weights as stored (once per call, a whole source per product, no copy).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers.activations import GELUActivation, SiLUActivation

from .precision import cpu_flags
from .quantization import Int8Linear
from .rewrites import runs_as_written

_SILU_FORWARD = SiLUActivation.forward

#: float32 weights of at most this many entries run from a transposed copy through MKL where the CPU has no AVX-512,
#: larger ones packed by oneDNN: measured per product on an AMD EPYC with AVX2 (Zen 3; benchmarks/README.md),
#: 16 and 64 rows, oneDNN 1.2-1.7x faster on the feed-forward and vocabulary products of d_model 512 and on the
#: vocabulary product of d_model 256, MKL 1.3-1.5x faster on the 256 x 256 ones. On an AMD EPYC with AVX-512
#: (Zen 5) oneDNN was as fast on those and 1.5-3.5x faster on the others (MKL takes its AVX2 code there): every
#: weight is packed by oneDNN where the CPU has AVX-512.
SMALL_WEIGHT = 256 * 256

#: The activations that oneDNN applies to a product's output in the same pass: module type -> oneDNN's name and
#: algorithm. transformers' GELU counts only when it is torch's exact (erf) GELU.
_ONEDNN_ACTIVATIONS = {nn.ReLU: ("relu", ""), nn.SiLU: ("swish", ""), SiLUActivation: ("swish", ""),
                       GELUActivation: ("gelu", "none")}


@functools.cache
def has_avx512() -> bool:
    """Whether this CPU has AVX-512 (read once from the CPU flags)."""
    return "avx512f" in cpu_flags()


def packs_with_onednn(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is laid out for oneDNN (else transposed, for MKL's ``addmm``)."""
    if weight.device.type != "cpu" or not (torch.backends.mkldnn.is_available()
                                           and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if weight.dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return weight.dtype == torch.float32 and (weight.numel() > SMALL_WEIGHT or has_avx512())


def autocast_dtype(weight: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast computes a linear layer in on ``weight``'s device, or None outside autocast."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def is_plain_linear_call(module: nn.Module, hidden: torch.Tensor, autocast: bool = False) -> bool:
    """Whether calling ``module`` on ``hidden`` is nothing but ``F.linear`` with its own weight, without gradients:
    a plain ``nn.Linear`` (no subclass, no replaced ``forward``, no hooks: accelerate's offloading, a user's
    forward hook), weight of ``hidden``'s dtype and device, outside torch.compile, and outside autocast unless
    ``autocast`` (the caller casts as autocast would)."""
    weight = getattr(module, "weight", None)
    return (type(module) is nn.Linear and isinstance(weight, torch.Tensor) and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and (autocast or not torch.is_autocast_enabled(hidden.device.type))
            and runs_as_written(module) and weight.dtype == hidden.dtype and weight.device == hidden.device
            and weight.device.type != "meta")


def _onednn_activation(activation: Optional[nn.Module]) -> Optional[tuple[str, str]]:
    fused = _ONEDNN_ACTIVATIONS.get(type(activation))
    if fused is None or not runs_as_written(activation):
        return None
    if type(activation) is GELUActivation and getattr(activation, "act", None) is not nn.functional.gelu:
        return None
    if type(activation) is SiLUActivation and SiLUActivation.forward is not _SILU_FORWARD:
        return None  # a kernel from the Hub took its place
    return fused


def linear_product(linears: list[nn.Module], rows: Optional[int] = None, activation: Optional[nn.Module] = None
                   ) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The product of plain ``nn.Linear`` layers that read the same input, as a function of ``[N, in]`` inputs:
    their outputs side by side (``[N, sum of outs]``, split by the caller), ``activation`` (a module) applied to the
    result, inside oneDNN's pass where it can. The weights are copied into the kernel's layout (packed for ``rows``
    rows, or read as stored with ``rows=None``; see the module docstring). None where a layer is not plain, or the
    layers differ in dtype, device or having a bias: the caller then calls the modules."""
    if all(type(linear) is Int8Linear for linear in linears):
        return _int8_product(linears, activation)
    weights = [getattr(linear, "weight", None) for linear in linears]
    if not all(isinstance(w, torch.Tensor) and is_plain_linear_call(l, w.new_empty(0), autocast=True)
               for l, w in zip(linears, weights)):
        return None
    if len({(w.dtype, w.device, l.bias is None) for l, w in zip(linears, weights)}) != 1:
        return None
    cast = autocast_dtype(weights[0])
    if cast is not None and not (cast == torch.bfloat16 and weights[0].dtype == torch.float32
                                 and weights[0].device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return None
    weight = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach()
    bias = None if linears[0].bias is None else torch.cat([l.bias.detach() for l in linears])
    if cast is not None:
        weight, bias = weight.to(cast), None if bias is None else bias.to(cast)
    fused = _onednn_activation(activation) if activation is not None else None
    if packs_with_onednn(weight):
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
    if len(layers) == 1:  # the layer's own prepacked weight, which its forward uses (int8 weights are frozen)
        packed = layers[0].packed_weight()
    else:
        bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
        packed = Int8Linear.prepack(torch.cat([layer.weight for layer in layers]),
                                    torch.cat([layer.weight_scale for layer in layers]), bias)
    product = Int8Linear.packed_product(packed)
    return product if activation is None else (lambda x: activation(product(x)))


class WeightLayouts:
    """The weight copies of one ``generate`` call, made on first use: ``product(linears, rows, activation)`` is
    ``linear_product``'s, kept for the rest of the call. Make one per call and drop it at its end."""

    def __init__(self):
        self._products: dict[tuple, tuple] = {}  # key -> (the modules, kept alive so ids stay theirs; the product)

    def product(self, linears: list[nn.Module], rows: Optional[int] = None, activation: Optional[nn.Module] = None
                ) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        key = (tuple(id(linear) for linear in linears), rows, id(activation))
        if key not in self._products:
            self._products[key] = ((linears, activation), linear_product(linears, rows, activation))
        return self._products[key][1]

    def call(self, linear: nn.Module, rows: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``linear`` as a function: its laid-out product, or the module itself where it cannot be laid out."""
        return self.product([linear], rows) or linear


class EncoderLinears(TorchFunctionMode):
    """Inside this mode, ``F.linear`` on the weight and bias of one of ``module``'s plain ``nn.Linear`` layers runs
    through oneDNN reading the weight as stored (``linear_product(rows=None)``: on an AMD EPYC 2x ``F.linear``'s MKL
    at the encoder's 384 rows); everything else runs as it would. Module hooks still run: only the product of a
    plain layer changes, and only without gradients, for inputs of the weight's dtype or under autocast."""

    def __init__(self, module: nn.Module, layouts: WeightLayouts):
        super().__init__()
        self.products: dict[int, tuple] = {}  # id(weight) -> (weight, bias, product)
        for layer in module.modules():
            if type(layer) is nn.Linear and (product := layouts.product([layer])) is not None:
                self.products[id(layer.weight)] = (layer.weight, layer.bias, product)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is nn.functional.linear and len(args) >= 2 and not torch.is_grad_enabled():
            entry = self.products.get(id(args[1]))
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            x = args[0]
            if (entry is not None and entry[0] is args[1] and entry[1] is bias and x.dim() >= 1
                    and (x.dtype == args[1].dtype or autocast_dtype(args[1]) is not None)):
                return entry[2](x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)
        return func(*args, **kwargs)


__all__ = ["SMALL_WEIGHT", "EncoderLinears", "WeightLayouts", "has_avx512", "linear_product"]
