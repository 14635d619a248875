"""int8 weights for CPU inference that survive ``save_pretrained`` / ``from_pretrained``.

``quantize_int8(model)`` replaces each ``nn.Linear`` by an ``Int8Linear``: the weight stored as int8 with one float32
scale per output row (symmetric, per channel), the activations quantized at every call (dynamic quantization, the
scheme of ``torch.ao.quantization.quantize_dynamic`` and of CTranslate2's int8). It sets
``config.quantization = "int8"``; ``save_pretrained`` then writes the int8 tensors (a quarter of the float32 size),
and ``from_pretrained`` / ``pipeline(...)`` build the same layers from the config before loading them, so a saved
int8 model loads as int8 with no extra argument.

A language-model head tied to the input embeddings gets its own int8 copy of their matrix (the embedding lookup keeps
the float32 table), and the config records the two as untied. The int8 weights are frozen (gradients reach the
inputs, not the weights): train the float32 model, then quantize it.

This module imports nothing from its package: saved checkpoints carry a copy of it next to the modeling code.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


class Int8Linear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` stored as int8 rows times a float32 scale per row; ``x`` is quantized to uint8
    per call and the product runs in the CPU's int8 kernels (fbgemm / oneDNN through ``torch.ops.quantized``)."""

    #: One activation scale for the whole input: a row's output depends on the other rows of the batch.
    batch_dependent = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self._packed: Optional[tuple] = None  # (version key, packed weight) for the kernels, built on first use

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8Linear":
        """Round ``linear``'s weight to int8, row by row: scale = max |w| / 127.5, as torch.ao's per-channel
        symmetric observer computes it (so the layer equals ``quantize_dynamic`` with ``per_channel_dynamic_qconfig``)."""
        weight = linear.weight.detach().float().cpu()
        scale = (weight.abs().amax(dim=1) / 127.5).clamp(min=torch.finfo(torch.float32).eps)
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.weight.copy_(torch.round(weight * (1 / scale)[:, None]).clamp(-128, 127))  # torch's rounding: by 1/scale
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer

    def packed_weight(self):
        """The weight in the layout of the int8 kernels, rebuilt whenever the stored tensors change (a load)."""
        key = tuple((t.data_ptr(), t._version) for t in (self.weight, self.weight_scale, self.bias) if t is not None)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, self.prepack(self.weight, self.weight_scale, self.bias))
        return self._packed[1]

    @staticmethod
    def prepack(weight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor]):
        """int8 rows and their scales (and the float bias) in the layout of the int8 kernels."""
        zero_points = torch.zeros(len(weight), dtype=torch.long)
        quantized = torch._make_per_channel_quantized_tensor(weight, weight_scale.double(), zero_points, 0)
        return torch.ops.quantized.linear_prepack(quantized, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError(f"Int8Linear runs on the CPU only, got an input on {x.device}: load the float32 model "
                               "for other devices (int8 here is CPU dynamic quantization).")
        if torch.is_grad_enabled() and x.requires_grad:
            return Int8LinearFunction.apply(x, self)
        return self.product(x)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """The int8 kernel's ``x Wᵀ + b``, activations in 7 bits (``reduce_range=True``, as torch.ao's dynamic Linear)."""
        return self.packed_product(self.packed_weight())(x)

    @staticmethod
    def packed_product(packed) -> Callable[[torch.Tensor], torch.Tensor]:
        """The product of a ``prepack``ed weight, as a function of the input."""
        return lambda x: torch.ops.quantized.linear_dynamic(x.float(), packed, True).to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 matrix that the int8 weight stands for: int8 rows times their scales."""
        return self.weight.float() * self.weight_scale[:, None]

    def __getstate__(self):  # copies and pickles rebuild the packed weight
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class Int8LinearFunction(torch.autograd.Function):
    """The int8 product with a gradient for its input (the weights are frozen): ``dL/dx = dL/dy · W`` with the
    dequantized ``W``, so that gradients still reach the layers below (saliency maps, adapters trained on top)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: Int8Linear) -> torch.Tensor:
        ctx.layer = layer
        return layer.product(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return (grad_output.float() @ ctx.layer.dequantized_weight()).to(grad_output.dtype), None


def replace_linears(model: nn.Module, convert: bool) -> None:
    """Swap every ``nn.Linear`` of ``model`` for an ``Int8Linear``: quantized from its weight when ``convert``,
    else an empty one of the same shape (weights to come from a checkpoint)."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear]
    for parent, name, linear in swaps:
        if convert:
            layer = Int8Linear.from_float(linear)
        else:
            layer = Int8Linear(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
        setattr(parent, name, layer)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantize ``model``'s linear layers to int8 in place (see the module docstring) and record it in its
    config, so that ``save_pretrained`` / ``from_pretrained`` keep it int8. Returns the model, in eval mode."""
    if getattr(model.config, "quantization", None) == "int8":
        raise ValueError("The model is already int8.")
    if next((p for p in model.parameters() if p.device.type != "cpu"), None) is not None:
        raise ValueError("quantize_int8 is CPU dynamic quantization: move the model to the CPU first (model.cpu()).")
    # A tied LM head gets its own int8 copy of the embedding table, which the lookup keeps reading in float32;
    # untied in the config, so that saving writes both and loading does not tie the int8 copy back to the table.
    if getattr(model.config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        model.config.tie_word_embeddings = False
    replace_linears(model, convert=True)
    model.config.quantization = "int8"
    return model.eval()


__all__ = ["Int8Linear", "quantize_int8"]
