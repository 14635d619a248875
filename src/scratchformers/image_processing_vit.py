"""The image processor saved with every ScratchViT checkpoint: Pillow + NumPy only (no torchvision).

It is transformers' ``ViTImageProcessorPil`` (resize to ``image_size``, rescale to [0, 1], normalise with mean/std)
plus one thing a from-scratch ViT needs: images are brought to the model's ``num_channels`` whatever they arrive as
(grayscale, RGB, RGBA or palette PIL images, H x W / H x W x C / C x H x W arrays). Alpha is composited onto white,
RGB -> grayscale uses the ITU-R 601 luma weights (the same as Pillow's ``convert("L")``).

This module imports nothing from the package, so ``save_pretrained`` can copy it next to the weights for
``trust_remote_code=True`` loading.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
from transformers import ViTImageProcessorPil
from transformers.image_utils import ChannelDimension
from transformers.processing_utils import ImagesKwargs

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
PIL_MODES = {1: "L", 3: "RGB"}


class ScratchViTImageProcessorKwargs(ImagesKwargs, total=False):
    """num_channels (`int`): channels of the model input; images are converted to it (1 = grayscale, 3 = RGB)."""

    num_channels: int


def _flatten_alpha(image: PIL.Image.Image) -> PIL.Image.Image:
    """Composite a transparent image onto white (as transformers' ``convert_to_rgb`` does); others unchanged."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        white = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, image).convert("RGB")
    return image


def _match_channels(image: np.ndarray, num_channels: int) -> np.ndarray:
    """Convert a channels-first array ``[C, H, W]`` to ``num_channels`` channels (gray <-> RGB, drop alpha)."""
    integer = np.issubdtype(image.dtype, np.integer)
    if image.shape[0] == 4 and num_channels in (1, 3):  # RGBA: composite onto white first
        white = 255.0 if integer else 1.0
        alpha = image[3:4].astype(np.float32) / white
        rgb = alpha * image[:3] + (1.0 - alpha) * white
        image = (np.round(rgb) if integer else rgb).astype(image.dtype)
    channels = image.shape[0]
    if channels == num_channels:
        return image
    if channels == 1 and num_channels == 3:
        return np.repeat(image, 3, axis=0)
    if channels == 3 and num_channels == 1:
        gray = np.tensordot(np.asarray(LUMA_WEIGHTS, dtype=np.float32), image.astype(np.float32), axes=1)[None]
        return (np.round(gray) if integer else gray).astype(image.dtype)
    raise ValueError(f"Cannot convert an image with {channels} channels to the model's num_channels={num_channels}.")


def _with_channel_axis(images: Any) -> Any:
    """Give 2-D (H x W grayscale) arrays a leading channel axis; transformers would read them as a list of rows."""
    if isinstance(images, (list, tuple)):
        return [_with_channel_axis(image) for image in images]
    if hasattr(images, "ndim") and not isinstance(images, PIL.Image.Image) and images.ndim == 2:
        return images[None]
    return images


class ScratchViTImageProcessorPil(ViTImageProcessorPil):
    """``ViTImageProcessorPil`` that also converts every image to the model's ``num_channels``."""

    valid_kwargs = ScratchViTImageProcessorKwargs
    num_channels = 3
    do_convert_rgb = False  # replaced by the more general ``num_channels`` conversion below

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> Any:
        try:
            return super()._prepare_images_structure(_with_channel_axis(images), expected_ndims=expected_ndims)
        except TypeError as error:  # raised by transformers for anything that is not an image, path or URL
            raise TypeError(
                f"{type(self).__name__} expects an image: a PIL.Image, a numpy array or torch tensor "
                f"(H x W, H x W x C or C x H x W), a file path or URL, or a list of those; got {type(images).__name__}."
            ) from error

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        num_channels: int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """One raw image -> a channels-first array with ``num_channels`` channels."""
        num_channels = num_channels or self.num_channels
        if isinstance(image, PIL.Image.Image) and num_channels in PIL_MODES:
            image = _flatten_alpha(image).convert(PIL_MODES[num_channels])
        image = super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format, **kwargs)
        return _match_channels(image, num_channels)


def make_image_processor(config, **overrides) -> ScratchViTImageProcessorPil:
    """The default processor of a ``ScratchViTConfig``: resize to ``image_size``, scale to [-1, 1] (mean = std = 0.5,
    as for google/vit checkpoints), ``num_channels`` channels. ``overrides`` are processor fields (image_mean, ...)."""
    channels = config.num_channels
    settings = {
        "size": {"height": config.image_size, "width": config.image_size},
        "num_channels": channels,
        "image_mean": [0.5] * channels,
        "image_std": [0.5] * channels,
    }
    return ScratchViTImageProcessorPil(**{**settings, **overrides})


__all__ = ["ScratchViTImageProcessorPil", "make_image_processor"]
