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

# The Vision Transformer, and the Pillow-only image processor every ViT checkpoint is saved with.
from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402
from transformers.models.auto.video_processing_auto import AutoVideoProcessor  # noqa: E402 (top-level one needs torchvision)

from .configuration_vit import ScratchViTConfig  # noqa: E402
from .convert_vit import vit_to_scratch  # noqa: E402
from .image_processing_vit import ScratchViTImageProcessorPil, make_image_processor  # noqa: E402
from .modeling_vit import ScratchViTForImageClassification, ScratchViTModel, ScratchViTPreTrainedModel  # noqa: E402

AutoConfig.register("scratch_vit", ScratchViTConfig, exist_ok=True)
AutoModel.register(ScratchViTConfig, ScratchViTModel, exist_ok=True)
AutoModelForImageClassification.register(ScratchViTConfig, ScratchViTForImageClassification, exist_ok=True)
AutoImageProcessor.register(ScratchViTConfig, image_processor_classes={"pil": ScratchViTImageProcessorPil}, exist_ok=True)
# No video processor: without this entry pipeline() derives one from the image processor's auto_map and prompts
# "Do you wish to run the custom code?" although the package is imported.
AutoVideoProcessor.register(ScratchViTConfig, video_processor_classes={}, exist_ok=True)
ScratchViTConfig.register_for_auto_class()
ScratchViTModel.register_for_auto_class("AutoModel")
ScratchViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
ScratchViTImageProcessorPil.register_for_auto_class("AutoImageProcessor")

# The translation pipeline that transformers 5 removed. transformers rejects the removed task name before it looks at
# the registry, so the name is taken off its removed list. Saved checkpoints declare the pipeline themselves
# (custom_pipelines), and load it with pipeline("translation", model=dir, trust_remote_code=True).
from transformers.pipelines import PIPELINE_REGISTRY, REMOVED_TASKS  # noqa: E402

from .pipeline_translation import TranslationPipeline  # noqa: E402
from .visualization import plot_attention, plot_vit_attention  # noqa: E402

REMOVED_TASKS.pop("translation", None)
PIPELINE_REGISTRY.register_pipeline("translation", pipeline_class=TranslationPipeline, pt_model=AutoModelForSeq2SeqLM)

__all__ = [
    "ScratchViTConfig",
    "ScratchViTModel",
    "ScratchViTForImageClassification",
    "ScratchViTPreTrainedModel",
    "ScratchViTImageProcessorPil",
    "make_image_processor",
    "vit_to_scratch",
    "TranslationPipeline",
    "plot_attention",
    "plot_vit_attention",
    "train_tokenizer",
    "ScratchTransformerConfig",
    "ScratchTransformerModel",
    "ScratchTransformerForConditionalGeneration",
    "ScratchTransformerPreTrainedModel",
]
