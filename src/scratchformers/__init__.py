"""scratchformers: a from-scratch Transformer and ViT that behave like native Hugging Face models.

Importing the package registers everything with transformers:
- the models with the Auto* classes, so ``AutoConfig`` / ``AutoModel`` / ``AutoModelForSeq2SeqLM`` /
  ``AutoModelForCausalLM`` / ``AutoModelForImageClassification`` / ``AutoImageProcessor``
  ``.from_pretrained(dir)`` load our checkpoints;
- ``register_for_auto_class``, so every saved checkpoint carries our code and also loads with
  ``trust_remote_code=True`` where this package is not installed;
- the ``"translation"`` pipeline that transformers 5 removed.
"""

from .cli import exit_quietly_on_interrupt_while_starting

exit_quietly_on_interrupt_while_starting()  # the `scratchformers` command: Ctrl-C while importing, no traceback

from transformers import (  # noqa: E402
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
)
from transformers.models.auto.video_processing_auto import AutoVideoProcessor  # the top-level one needs torchvision
from transformers.pipelines import PIPELINE_REGISTRY, REMOVED_TASKS

from .configuration_causal_lm import ScratchTransformerLMConfig
from .configuration_transformer import ScratchTransformerConfig
from .configuration_vit import ScratchViTConfig
from .convert import gpt2_to_scratch, marian_to_scratch, vit_to_scratch
from .generation import DisjunctiveConstraint, PhrasalConstraint, constrained_beam_search, diverse_beam_search
from .image_processing_vit import ScratchViTImageProcessorPil, make_image_processor
from .modeling_causal_lm import (
    ScratchTransformerForCausalLM,
    ScratchTransformerLMModel,
    ScratchTransformerLMPreTrainedModel,
)
from .modeling_transformer import (
    ScratchTransformerForConditionalGeneration,
    ScratchTransformerModel,
    ScratchTransformerPreTrainedModel,
)
from .modeling_vit import ScratchViTForImageClassification, ScratchViTModel, ScratchViTPreTrainedModel
from .pipeline_image_classification import ImageClassificationPipeline
from .pipeline_translation import TranslationPipeline, translation_languages
from .quantization import Int8Linear, quantize_int8
from .tokenization import train_tokenizer
from .visualization import plot_attention, plot_beam_search, plot_vit_attention

# The encoder-decoder Transformer.
AutoConfig.register("scratch_transformer", ScratchTransformerConfig, exist_ok=True)
AutoModel.register(ScratchTransformerConfig, ScratchTransformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(ScratchTransformerConfig, ScratchTransformerForConditionalGeneration, exist_ok=True)
ScratchTransformerConfig.register_for_auto_class()
ScratchTransformerModel.register_for_auto_class("AutoModel")
ScratchTransformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

# The decoder-only language model (GPT); pipeline("text-generation") is transformers' own.
AutoConfig.register("scratch_transformer_lm", ScratchTransformerLMConfig, exist_ok=True)
AutoModel.register(ScratchTransformerLMConfig, ScratchTransformerLMModel, exist_ok=True)
AutoModelForCausalLM.register(ScratchTransformerLMConfig, ScratchTransformerForCausalLM, exist_ok=True)
ScratchTransformerLMConfig.register_for_auto_class()
ScratchTransformerLMModel.register_for_auto_class("AutoModel")
ScratchTransformerForCausalLM.register_for_auto_class("AutoModelForCausalLM")

# The Vision Transformer, and the Pillow-only image processor every ViT checkpoint is saved with.
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

# The translation pipeline. transformers 5 rejects the removed task name before it looks at the registry, so the
# name is taken off its removed list. Saved checkpoints declare the pipeline themselves (custom_pipelines) and load
# it with pipeline("translation", model=dir, trust_remote_code=True).
REMOVED_TASKS.pop("translation", None)
PIPELINE_REGISTRY.register_pipeline("translation", pipeline_class=TranslationPipeline, pt_model=AutoModelForSeq2SeqLM)


def _check_task(task: str, _registry_check_task=PIPELINE_REGISTRY.check_task):
    """The registry's task lookup, also for the names ``translation_XX_to_YY`` that transformers 4 accepted; the
    pipeline reads the languages off its task name."""
    languages = translation_languages(task)
    if languages is not None:
        name, implementation, _ = _registry_check_task("translation")
        return name, implementation, languages
    return _registry_check_task(task)


PIPELINE_REGISTRY.check_task = _check_task

# The image-classification pipeline, for our processor: 4-D batches and 16-bit / float images read right (other
# models' processors get transformers' pipeline unchanged). Assigned, not re-registered: that would log a warning.
PIPELINE_REGISTRY.supported_tasks["image-classification"]["impl"] = ImageClassificationPipeline

__all__ = [
    "ScratchTransformerConfig",
    "ScratchTransformerModel",
    "ScratchTransformerForConditionalGeneration",
    "ScratchTransformerPreTrainedModel",
    "ScratchTransformerLMConfig",
    "ScratchTransformerLMModel",
    "ScratchTransformerForCausalLM",
    "ScratchTransformerLMPreTrainedModel",
    "ScratchViTConfig",
    "ScratchViTModel",
    "ScratchViTForImageClassification",
    "ScratchViTPreTrainedModel",
    "ScratchViTImageProcessorPil",
    "make_image_processor",
    "train_tokenizer",
    "TranslationPipeline",
    "ImageClassificationPipeline",
    "diverse_beam_search",
    "constrained_beam_search",
    "PhrasalConstraint",
    "DisjunctiveConstraint",
    "marian_to_scratch",
    "gpt2_to_scratch",
    "vit_to_scratch",
    "plot_attention",
    "plot_beam_search",
    "plot_vit_attention",
    "quantize_int8",
    "Int8Linear",
]
