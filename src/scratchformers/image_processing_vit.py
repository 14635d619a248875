"""The image processor saved with every ScratchViT checkpoint: Pillow + NumPy only (no torchvision).

It is transformers' ``ViTImageProcessorPil`` (resize to ``image_size``, rescale to [0, 1], normalise with mean/std)
plus what a from-scratch ViT needs to read images in any common format right, with nothing clipped or dropped:

- Inputs: PIL images of mode 1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, I;16, I and F; paths, URLs and base64
  strings, opened in their own mode (transformers' ``load_image`` would make them 8-bit RGB); numpy arrays and
  torch tensors H x W, H x W x C, C x H x W (C = 1, 3 or 4) and batches N x H x W x C / N x C x H x W, each image
  of a batch giving its own ``pixel_values`` row.
- Scale (with the default ``rescale_factor`` 1/255, i.e. "by type"): integer images are scaled by their type's full
  range: 8-bit (uint8, and PIL modes 1, L, P, RGB, ...) by 255, uint16 and PIL I;16 by 65535, PIL mode I (32-bit)
  by its bit depth where the file records it (TIFF BitsPerSample: 32 bits -> 2**31 - 1) and else by 65535 (older
  Pillow versions open 16-bit PNGs as mode I; Pillow 13 reopens them as I;16 and cannot write mode I as PNG),
  int32 arrays as mode I (65535); boolean images are 0 / 1. Float images (PIL mode F, float arrays and tensors)
  are taken as already in [0, 1]. Values outside their range and NaNs raise a ValueError rather than being clipped
  (a 0-255 float image would otherwise saturate), as do integer types with no image convention (int8, int16,
  int64, uint32, ...) rather than being guessed. A custom ``rescale_factor`` (or ``do_rescale=False``) declares the
  scale yourself: values then pass unchanged (as float32) and are multiplied by it, whatever their type.
- Channels: images are converted to the model's ``num_channels`` (1 = grayscale, 3 = RGB). 8-bit images go through
  Pillow's own ``convert("L")`` / ``convert("RGB")`` (ITU-R 601 luma; transparency composited onto white, as
  transformers' ``convert_to_rgb`` does), PIL images and uint8 arrays alike; 16-bit and float images are converted
  with the same formulas in float32, and resized as float32 Pillow images, so their precision survives (Pillow's
  8-bit conversions saturate mode I;16 and turn [0, 1] floats black).
- Empty images (a 0-size dimension) raise a ValueError naming the shape.

``reads_every_image_mode`` tells an image-classification pipeline that knows it to hand images over unconverted.

This module imports nothing from the package, so ``save_pretrained`` can copy it next to the weights for
``trust_remote_code=True`` loading.
"""

from __future__ import annotations

import base64
import math
import os
from io import BytesIO
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers import ViTImageProcessorPil
from transformers.image_utils import ChannelDimension, PILImageResampling, load_image
from transformers.processing_utils import ImagesKwargs
from transformers.utils import is_torch_tensor

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's convert("L")
PIL_MODES = {1: "L", 3: "RGB"}
ARRAY_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels of a uint8 array -> the Pillow mode it is converted in
EIGHT_BIT = 1 / 255  # the default rescale_factor: with it, every image is scaled by its own type's full range


class ScratchViTImageProcessorKwargs(ImagesKwargs, total=False):
    """num_channels (`int`): channels of the model input; images are converted to it (1 = grayscale, 3 = RGB)."""

    num_channels: int


def open_image(source: str, timeout: float | None = None) -> PIL.Image.Image:
    """A path, URL or base64 string opened as transformers' ``load_image`` opens it (EXIF orientation applied) but
    in its own mode: ``load_image`` converts to 8-bit RGB, which saturates 16-bit images, blackens float ones and
    drops transparency (the transparent pixels turn black instead of white)."""
    if source.startswith(("http://", "https://")):
        from huggingface_hub.utils import httpx  # what load_image uses

        data: Any = BytesIO(httpx.get(source, timeout=timeout, follow_redirects=True).content)
    elif os.path.isfile(source):
        data = source
    else:
        try:  # base64, possibly as a data URI
            encoded = source.split(",", 1)[1] if source.startswith("data:image/") else source
            data = BytesIO(base64.b64decode(encoded, validate=True))
            PIL.Image.open(data).verify()
            data.seek(0)
        except Exception:
            return load_image(source, timeout=timeout)  # raises transformers' own error for a bad source
    return exif_upright(PIL.Image.open(data))


def exif_upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """The image turned upright by its EXIF orientation, as ``load_image`` does; the image itself when it is already
    (``exif_transpose`` would return a plain copy, dropping a TIFF's recorded bit depth)."""
    return image if image.getexif().get(0x0112, 1) == 1 else PIL.ImageOps.exif_transpose(image)


def _flatten_alpha(image: PIL.Image.Image) -> PIL.Image.Image:
    """Composite a transparent image onto white (as transformers' ``convert_to_rgb`` does); others unchanged."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        white = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, image).convert("RGB")
    return image


def _is_high_precision(image: PIL.Image.Image) -> bool:
    """PIL modes with more than 8 bits per pixel (I;16*, I, F), which Pillow's L/RGB conversions would saturate."""
    return image.mode in ("I", "F") or image.mode.startswith("I;")


def _pil_full_range(image: PIL.Image.Image) -> float | None:
    """The value of white for a high-precision PIL image: None (float, already in [0, 1]) for mode F, 65535 for
    I;16, and for mode I its recorded bit depth (TIFF BitsPerSample) or else 65535 (16-bit PNGs as Pillow < 10
    and other readers open them)."""
    if image.mode == "F":
        return None
    if image.mode == "I":
        bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample: an int or one per sample
        bits = bits[0] if isinstance(bits, tuple) and bits else bits
        if isinstance(bits, int) and bits > 0:
            return float(min(2**bits - 1, 2**31 - 1))  # mode I holds signed 32-bit integers
    return 65535.0


def _integer_full_range(dtype: np.dtype) -> float:
    """The value of white for an integer array other than uint8; a ValueError for integer types that have no image
    convention, rather than a guess."""
    if dtype == np.uint16 or dtype == np.int32:  # int32: what np.asarray gives for a PIL mode I image
        return 65535.0
    raise ValueError(
        f"Cannot tell the scale of an image of dtype {dtype}: pass uint8 (0-255), uint16 (0-65535) or int32 "
        f"(16-bit data, like PIL mode I) integers or floats in [0, 1], or set rescale_factor to your scale."
    )


def _shape_of(image: Any) -> tuple[int, ...] | None:
    """(height, width) of a PIL image, the shape of an array or tensor, None for anything else (paths, ...)."""
    if isinstance(image, PIL.Image.Image):
        return (image.height, image.width)
    if hasattr(image, "shape") and hasattr(image, "ndim"):
        return tuple(int(size) for size in image.shape)
    return None


def check_not_empty(images: Any) -> None:
    """A ValueError naming the shape of an empty image (or batch, or list): transformers would resize it to a
    made-up image, or fail on the missing first one."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("Got an empty list of images: pass at least one image.")
        for image in images:
            check_not_empty(image)
        return
    shape = _shape_of(images)
    if shape is not None and 0 in shape:
        what = "PIL image of (height, width)" if isinstance(images, PIL.Image.Image) else "image of shape"
        raise ValueError(f"Got an empty {what} {shape}: every dimension of an image must be at least 1.")


def check_channels(image: Any) -> None:
    """A ValueError for an image array whose channels are not 1, 3 or 4 (gray, RGB, RGBA) on the first or the last
    axis; transformers would say "Unable to infer channel dimension format"."""
    shape = None if isinstance(image, PIL.Image.Image) else _shape_of(image)
    if shape is None or len(shape) not in (3, 4):
        return
    first, last = shape[-3], shape[-1]
    if first not in (1, 3, 4) and last not in (1, 3, 4):
        raise ValueError(
            f"Got an image array of shape {shape}: neither its first nor its last axis holds 1, 3 or 4 channels (gray, "
            "RGB, RGBA; C x H x W or H x W x C). Pick or convert its channels first, e.g. array[..., :3]."
        )


def _to_numpy(image: Any) -> Any:
    """A torch tensor as a numpy array (detached, on the CPU, bfloat16 as float32); anything else unchanged."""
    if not is_torch_tensor(image):
        return image
    image = image.detach().cpu()
    if str(image.dtype) == "torch.bfloat16":
        image = image.float()  # numpy has no bfloat16
    return image.numpy()


def _scaled(
    image: np.ndarray, full_range: float | None, by_type: bool, do_rescale: bool, rescale_factor: float
) -> tuple[np.ndarray, float]:
    """A high-precision image (any dtype but uint8) as float32 plus the value of white in it.

    By type (the default rescale_factor), it goes onto the 8-bit scale [0, 255] that the rescale step maps to
    [0, 1]: integers times 255 / full range, floats (which must lie in [0, 1]) times 255; values out of range are
    a ValueError, not clipped. Otherwise the caller declared the scale: the values pass unchanged.
    """
    if not by_type:
        white = 1 / rescale_factor if do_rescale else (1.0 if full_range is None else full_range)
        return image.astype(np.float32), float(white)
    values = image.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    top = 1.0 if full_range is None else full_range
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high > top:
        kind = "a float image" if full_range is None else f"a {image.dtype} image"
        raise ValueError(
            f"The image's values span [{low:g}, {high:g}], outside [0, {top:g}] for {kind}; nothing is clipped: "
            f"bring it into that range (e.g. divide 0-255 floats by 255) or set rescale_factor to its scale."
        )
    return (values * 255 / top).astype(np.float32), 255.0  # in this order, white is exactly 255


def _match_channels(image: np.ndarray, num_channels: int, white: float = 255.0) -> np.ndarray:
    """Convert a channels-first array ``[C, H, W]`` to ``num_channels`` channels (gray <-> RGB, alpha onto white).

    uint8 arrays go through Pillow's own conversions (so an array and the same PIL image give the same pixels);
    float32 ones use the same formulas in float, with ``white`` the value of white (full opacity for alpha).
    """
    channels = image.shape[0]
    if channels == num_channels:
        return image
    if image.dtype == np.uint8 and channels in ARRAY_MODES and num_channels in PIL_MODES:
        last = np.moveaxis(image, 0, -1)
        pil = PIL.Image.fromarray(np.ascontiguousarray(last[..., 0] if channels == 1 else last))
        converted = np.asarray(_flatten_alpha(pil).convert(PIL_MODES[num_channels]))
        return np.moveaxis(np.atleast_3d(converted), -1, 0)
    if channels == 4 and num_channels in (1, 3):  # RGBA: composite onto white first
        alpha = image[3:4] / np.float32(white)
        image = (alpha * image[:3] + (1 - alpha) * np.float32(white)).astype(np.float32)
        channels = 3
    if channels == num_channels:
        return image
    if channels == 1 and num_channels == 3:
        return np.repeat(image, 3, axis=0)
    if channels == 3 and num_channels == 1:
        return np.tensordot(np.asarray(LUMA_WEIGHTS, dtype=np.float32), image.astype(np.float32), axes=1)[None]
    raise ValueError(f"Cannot convert an image with {channels} channels to the model's num_channels={num_channels}.")


def _with_channel_axis(images: Any) -> Any:
    """Give 2-D (H x W grayscale) arrays a leading channel axis; transformers would read them as a list of rows."""
    if isinstance(images, (list, tuple)):
        return [_with_channel_axis(image) for image in images]
    if hasattr(images, "ndim") and not isinstance(images, PIL.Image.Image) and images.ndim == 2:
        return images[None]
    return images


class ScratchViTImageProcessorPil(ViTImageProcessorPil):
    """``ViTImageProcessorPil`` that reads 8-bit, 16-bit and float images at full precision and converts every image
    to the model's ``num_channels`` (the rules are in the module docstring)."""

    valid_kwargs = ScratchViTImageProcessorKwargs
    num_channels = 3
    do_convert_rgb = False  # replaced by the more general ``num_channels`` conversion below
    reads_every_image_mode = True  # tells the image-classification pipeline to hand over images unconverted

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> Any:
        """transformers' flattening into a list of images, after checking for empty images and odd dimensions."""
        check_not_empty(images)
        shape = None if isinstance(images, (list, tuple)) else _shape_of(images)
        if shape is not None and not isinstance(images, PIL.Image.Image) and len(shape) not in (2, 3, 4):
            raise ValueError(
                f"{type(self).__name__} expects an image array of 2 or 3 dimensions (H x W, H x W x C, C x H x W) "
                f"or a batch of 4 (N x H x W x C, N x C x H x W); got shape {shape}."
            )
        for image in images if isinstance(images, (list, tuple)) else [images]:
            check_channels(image)
        try:
            return super()._prepare_images_structure(_with_channel_axis(images), expected_ndims=expected_ndims)
        except TypeError as error:  # raised by transformers for anything that is not an image, path or URL
            raise TypeError(
                f"{type(self).__name__} expects an image: a PIL.Image, a numpy array or torch tensor "
                f"(H x W, H x W x C or C x H x W), a file path or URL, or a list of those; got {type(images).__name__}."
            ) from error

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """Paths, URLs and base64 strings opened in their own mode (``open_image``), not as 8-bit RGB."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(source) for source in image_url_or_urls]
        if isinstance(image_url_or_urls, str):
            return open_image(image_url_or_urls)
        return super().fetch_images(image_url_or_urls)

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        num_channels: int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        **kwargs,
    ) -> np.ndarray:
        """One raw image -> a channels-first array with ``num_channels`` channels: uint8 for 8-bit images (exactly
        what transformers makes of them), float32 for the others: on the same 0-255 scale by type (the default
        rescale_factor), else their values as they are."""
        num_channels = num_channels or self.num_channels
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self.rescale_factor if rescale_factor is None else rescale_factor
        by_type = bool(do_rescale) and math.isclose(rescale_factor, EIGHT_BIT)
        image = _to_numpy(image)
        check_not_empty(image)

        full_range: float | None = None  # white of a higher-precision image; None: a float image, white = 1
        transparent = None  # the pixels of a 16-bit grayscale PNG's transparent gray value (its tRNS chunk)
        if isinstance(image, PIL.Image.Image):
            if _is_high_precision(image):
                full_range, gray = _pil_full_range(image), image.info.get("transparency")
                image = np.asarray(image)
                transparent = image == gray if isinstance(gray, int) and full_range is not None else None
            elif num_channels in PIL_MODES:
                image = _flatten_alpha(image).convert(PIL_MODES[num_channels])
        elif isinstance(image, np.ndarray) and image.dtype == np.bool_:
            image = image.astype(np.uint8) * 255  # as Pillow's convert("L") of a mode-1 image
        elif isinstance(image, np.ndarray) and image.dtype != np.uint8 and np.issubdtype(image.dtype, np.integer):
            full_range = _integer_full_range(image.dtype) if by_type else float(np.iinfo(image.dtype).max)
        image = super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format, **kwargs)

        white = 255.0
        if image.dtype != np.uint8:
            image, white = _scaled(image, full_range, by_type, bool(do_rescale), rescale_factor)
            if transparent is not None:  # a 16-bit grayscale PNG's transparent gray: composited onto white
                image[:, transparent] = white
        return _match_channels(image, num_channels, white)

    def resize(
        self,
        image: np.ndarray,
        size: Any,
        resample: PILImageResampling | None = None,
        reducing_gap: int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """uint8 images as transformers resizes them; float32 ones channel by channel as Pillow mode-F images, as
        transformers' resize would go through 8 bits and lose 16-bit and float precision."""
        if image.dtype == np.uint8:
            return super().resize(image, size, resample=resample, reducing_gap=reducing_gap, **kwargs)
        # the output size transformers computes (fixed size, shortest edge, ...) for an image of this size
        probe = np.zeros((1, *image.shape[1:]), dtype=np.uint8)
        height, width = super().resize(probe, size, resample=resample, reducing_gap=reducing_gap, **kwargs).shape[1:]
        resample = resample if isinstance(resample, int) else PILImageResampling.BILINEAR
        channels = [
            np.asarray(PIL.Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)).resize(
                (width, height), resample=resample, reducing_gap=reducing_gap
            ))
            for channel in image
        ]
        return np.stack(channels).astype(np.float32, copy=False)


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


__all__ = ["ScratchViTImageProcessorPil", "check_channels", "check_not_empty", "exif_upright", "make_image_processor", "open_image"]
