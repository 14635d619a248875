"""What the Transformer's and the ViT's ``PreTrainedModel`` classes share: checked loading, self-contained
checkpoints, the capabilities transformers reads, the initialisation, and the one loss both models train with."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from .layers import cross_entropy as reference_cross_entropy, init_weights
from .rewrites import cross_entropy as fast_cross_entropy, is_fast
from .quantization import replace_linears
from .remote_code import CheckedLoadingMixin, RemoteCodeMixin


class ScratchPreTrainedModel(CheckedLoadingMixin, RemoteCodeMixin, PreTrainedModel):
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_compile_fullgraph = False
    # forward(**kwargs) would make the Trainer treat the loss as a sum over processes and rescale it under DDP.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module, self.config.init_std)

    def post_init(self) -> None:
        """transformers' post_init; first, for an int8 config (a saved ``quantize_int8`` model), the int8 linear
        layers that its checkpoint holds, so that ``from_pretrained`` and pipelines load it as it was saved."""
        if getattr(self.config, "quantization", None) == "int8":
            replace_linears(self, convert=False)
        super().post_init()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """The loss of both models: cross-entropy ignoring label -100, label-smoothed by ``config.label_smoothing``
    (``layers.cross_entropy``, or its rewrite with ``forward_implementation="fast"``)."""
    loss = fast_cross_entropy if is_fast(config) else reference_cross_entropy
    return loss(logits, labels, ignore_index=-100, label_smoothing=config.label_smoothing)
