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

from .tokenization import train_tokenizer

AutoConfig.register("scratch_transformer", ScratchTransformerConfig, exist_ok=True)
AutoModel.register(ScratchTransformerConfig, ScratchTransformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(ScratchTransformerConfig, ScratchTransformerForConditionalGeneration, exist_ok=True)
# Saved checkpoints carry our code, so they also load with trust_remote_code=True where this package is absent.
ScratchTransformerConfig.register_for_auto_class()
ScratchTransformerModel.register_for_auto_class("AutoModel")
ScratchTransformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

# The translation pipeline that transformers 5 removed. transformers rejects the removed task name before it looks at
# the registry, so the name is taken off its removed list. Saved checkpoints declare the pipeline themselves
# (custom_pipelines), and load it with pipeline("translation", model=dir, trust_remote_code=True).
from transformers.pipelines import PIPELINE_REGISTRY, REMOVED_TASKS  # noqa: E402

from .pipeline_translation import TranslationPipeline  # noqa: E402
from .visualization import plot_attention, plot_vit_attention  # noqa: E402

REMOVED_TASKS.pop("translation", None)
PIPELINE_REGISTRY.register_pipeline("translation", pipeline_class=TranslationPipeline, pt_model=AutoModelForSeq2SeqLM)

__all__ = [
    "TranslationPipeline",
    "plot_attention",
    "plot_vit_attention",
    "train_tokenizer",
    "ScratchTransformerConfig",
    "ScratchTransformerModel",
    "ScratchTransformerForConditionalGeneration",
    "ScratchTransformerPreTrainedModel",
]
