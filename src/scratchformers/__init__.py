"""scratchformers: a from-scratch Transformer and ViT that behave like native Hugging Face models.

Importing the package registers the models with the Auto* classes, so that after ``import scratchformers``
``AutoConfig`` / ``AutoModel`` / ``AutoModelForSeq2SeqLM`` ``.from_pretrained(dir)`` load our checkpoints.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_transformer import ScratchTransformerConfig
from .modeling_transformer import (
    ScratchTransformerForConditionalGeneration,
    ScratchTransformerModel,
    ScratchTransformerPreTrainedModel,
)

AutoConfig.register("scratch_transformer", ScratchTransformerConfig, exist_ok=True)
AutoModel.register(ScratchTransformerConfig, ScratchTransformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(ScratchTransformerConfig, ScratchTransformerForConditionalGeneration, exist_ok=True)

__all__ = [
    "ScratchTransformerConfig",
    "ScratchTransformerModel",
    "ScratchTransformerForConditionalGeneration",
    "ScratchTransformerPreTrainedModel",
]
