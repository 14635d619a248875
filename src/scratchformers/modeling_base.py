"""What the Transformer's and the ViT's ``PreTrainedModel`` classes share: checked loading, self-contained
checkpoints, the capabilities transformers reads, the initialisation, and the one loss every model returns."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from .layers import cross_entropy, init_weights
from .rewrites import is_fast, softmax_cross_entropy
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


def model_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, config, training: bool) -> torch.Tensor:
    """The ``loss`` every model returns: cross-entropy ignoring label -100 (``layers.cross_entropy``, or its exact
    rewrite ``rewrites.softmax_cross_entropy`` with ``forward_implementation="fast"``).

    Label smoothing (``config.label_smoothing``) is a regulariser of training, like dropout, so it acts only when
    ``training`` (the module's train mode). In eval mode the loss is the plain negative log-likelihood, as a native
    Hugging Face model returns it: the Trainer's ``eval_loss`` and ``exp(loss)`` are the held-out NLL and the
    perplexity whatever smoothing the model was trained with. (fairseq returns both a smoothed ``loss`` and an
    ``nll_loss``; an extra output field would not reach ``eval_loss``, which the Trainer reads from ``loss``.)
    """
    loss = softmax_cross_entropy if is_fast(config) else cross_entropy
    return loss(logits, labels, ignore_index=-100, label_smoothing=config.label_smoothing if training else 0.0)
