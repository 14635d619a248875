"""transformers' "image-classification" pipeline, without the two ways it loses images.

For models whose image processor reads every image mode (``reads_every_image_mode``, as ScratchViT's does); other
models get transformers' pipeline unchanged.

- A 4-D array or tensor (N x H x W x C or N x C x H x W) is a batch: one prediction per image. transformers runs it
  as a single input and returns the first image's prediction only. An empty image or batch is a ValueError.
- Paths, URLs and PIL images reach the processor in their own mode. transformers' ``load_image`` converts them to
  8-bit RGB first, which saturates 16-bit images, blackens float ones and drops transparency.

- The model computes in its own dtype, so a saved model classifies the same on every machine. ``autocast_bf16=True``
  (at construction or per call) runs a float32 model under ``torch.autocast(<device>, dtype=torch.bfloat16)`` on a
  CPU or a GPU that supports bf16 (``precision.py``; faster on some CPUs, slower on others).

``scratchformers`` registers it for the task, so ``pipeline("image-classification", model=...)`` returns it.
"""

from __future__ import annotations

from typing import Any

import PIL.Image
from transformers.image_utils import load_image
from transformers.pipelines.image_classification import ImageClassificationPipeline as _ImageClassificationPipeline

from .image_processing_vit import check_not_empty, exif_upright, open_image
from .input_checks import check_weights_finite
from .precision import bf16_autocast


class ImageClassificationPipeline(_ImageClassificationPipeline):
    """``transformers.ImageClassificationPipeline`` that classifies each image of a 4-D batch, hands images to
    a ``reads_every_image_mode`` processor unconverted and runs in bf16 when asked (see the module docstring).

    Pipeline parameter, besides transformers' ones: ``autocast_bf16``: ``True``: the model's forward runs under bf16
    autocast (a float32 model on a CPU, or on a GPU that supports bf16); ``None`` (default) or ``False``: in the
    model's own dtype. Only for ``reads_every_image_mode`` processors (ours).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if getattr(self.image_processor, "reads_every_image_mode", False):
            check_weights_finite(self.model)  # NaN weights: refused now, not one confident label for every image

    def _sanitize_parameters(self, autocast_bf16: bool | None = None, **kwargs: Any):
        """transformers' parameters, and ``autocast_bf16`` for ``_forward``."""
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if autocast_bf16 is not None:
            forward_params = {**forward_params, "autocast_bf16": autocast_bf16}
        return preprocess_params, forward_params, postprocess_params

    def _forward(self, model_inputs: Any, autocast_bf16: bool | None = None) -> Any:
        """The model's forward; under bf16 autocast where ``autocast_bf16`` says (see the class docstring)."""
        if not getattr(self.image_processor, "reads_every_image_mode", False):
            return super()._forward(model_inputs)  # other models: transformers' pipeline, unchanged
        with bf16_autocast(self.model, autocast_bf16):
            return super()._forward(model_inputs)

    def __call__(self, inputs: Any = None, **kwargs: Any) -> Any:
        """As transformers' ``__call__``; a 4-D array or tensor is a list of images (one result each)."""
        if not getattr(self.image_processor, "reads_every_image_mode", False):
            return super().__call__(inputs, **kwargs)  # other models: transformers' pipeline, unchanged
        if "images" in kwargs:
            inputs = kwargs.pop("images")
        check_not_empty(inputs)  # a batch of no images would give no prediction, silently
        if getattr(inputs, "ndim", None) == 4 and not isinstance(inputs, PIL.Image.Image):
            inputs = list(inputs)  # a batch: one prediction per image, as for a list
        return super().__call__(inputs, **kwargs)

    def preprocess(self, image: Any, timeout: float | None = None) -> Any:
        """transformers' preprocessing, except that a ``reads_every_image_mode`` processor gets paths (opened) and
        PIL images (turned upright by EXIF, as ``load_image`` does) in their own mode, not as 8-bit RGB."""
        if not getattr(self.image_processor, "reads_every_image_mode", False):
            return super().preprocess(image, timeout=timeout)
        if isinstance(image, str):
            image = open_image(image, timeout=timeout)
        elif isinstance(image, PIL.Image.Image):
            image = exif_upright(image)
        elif not hasattr(image, "ndim"):  # not an array or tensor either
            load_image(image, timeout=timeout)  # raises transformers' TypeError
        return self.image_processor(images=image, return_tensors="pt").to(self.dtype)


__all__ = ["ImageClassificationPipeline"]
