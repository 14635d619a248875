"""The saved image processor (and the pipeline's use of it): PIL images of every common mode (8-bit, 16-bit,
32-bit integer and float, alpha, palette, CMYK, 1-bit), paths, numpy arrays and torch tensors of every layout and
4-D batches, odd sizes, 1-channel models; the pixel values that reach the model, checked against numpy; and clear
errors for inputs that are not images, are empty or are out of their range. Pillow only (no torchvision)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoImageProcessor, pipeline

import scratchformers as sf

from vit_fixtures import LABELS, input_kinds, random_image, saved_vit, tiny_vit  # noqa: F401 (saved_vit: a fixture)


def test_the_processor_loads_without_torchvision_and_converts_channels(saved_vit):
    model, path = saved_vit
    processor = AutoImageProcessor.from_pretrained(path)
    assert type(processor) is sf.ScratchViTImageProcessorPil and processor.backend == "pil"
    assert processor.num_channels == model.config.num_channels


def test_every_input_kind_gives_pixel_values_of_the_model_shape(saved_vit, tmp_path):
    model, path = saved_vit
    processor = AutoImageProcessor.from_pretrained(path)
    channels = model.config.num_channels
    for name, image in input_kinds(tmp_path).items():
        pixel_values = processor(image, return_tensors="pt").pixel_values
        assert pixel_values.shape == (1, channels, 32, 32), name
        assert pixel_values.min() >= -1 and pixel_values.max() <= 1, name


def test_grayscale_and_color_are_converted_like_pillow():
    gray_processor = sf.make_image_processor(tiny_vit(num_channels=1).config)
    color_processor = sf.make_image_processor(tiny_vit(num_channels=3).config)
    rgb = random_image(32, 32)
    gray = rgb.convert("L")

    def pixels(processor, image):
        return processor(image, return_tensors="pt").pixel_values

    # a grayscale array, a grayscale PIL image and an RGB image or array (through Pillow's ITU-R 601 luma) agree exactly
    exactly = dict(atol=0, rtol=0)
    torch.testing.assert_close(pixels(gray_processor, np.asarray(gray)), pixels(gray_processor, gray))
    torch.testing.assert_close(pixels(gray_processor, np.asarray(rgb)), pixels(gray_processor, gray), **exactly)
    torch.testing.assert_close(pixels(gray_processor, rgb), pixels(gray_processor, gray))
    # grayscale into an RGB model: the same value in the three channels
    expanded = pixels(color_processor, gray)
    torch.testing.assert_close(expanded[:, 0], expanded[:, 2])
    # transparency is composited onto white, for PIL images and arrays alike
    rgba = random_image(32, 32, mode="RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    composited = Image.alpha_composite(white, rgba).convert("RGB")
    torch.testing.assert_close(pixels(color_processor, rgba), pixels(color_processor, composited))
    torch.testing.assert_close(
        pixels(color_processor, np.asarray(rgba)), pixels(color_processor, composited), **exactly
    )
    torch.testing.assert_close(pixels(gray_processor, np.asarray(rgba)), pixels(gray_processor, rgba), **exactly)


def _text_file(tmp_path) -> str:
    (tmp_path / "notes.txt").write_text("not an image")
    return str(tmp_path / "notes.txt")


def _expects_an_image(got: str) -> str:
    return (r"^ScratchViTImageProcessorPil expects an image: a PIL\.Image, a numpy array or torch tensor \(H x W, "
            r"H x W x C or C x H x W\), a file path or URL, or a list of those; got " + got + r"\.$")


NOT_IMAGES = {  # name -> (call given the pipeline and tmp_path, error type, message); the pipeline's are transformers'
    "pipeline_given_an_int": (lambda classify, tmp: classify(42), TypeError, "Incorrect format used for image"),
    "pipeline_given_a_missing_path": (
        lambda classify, tmp: classify(str(tmp / "missing.png")), ValueError,
        r"valid path to an image file.*Got .*missing\.png",
    ),
    "pipeline_given_a_text_file": (
        lambda classify, tmp: classify(_text_file(tmp)), UnidentifiedImageError,
        r"^cannot identify image file '.*notes\.txt'$",
    ),
    "processor_given_None": (lambda classify, tmp: classify.image_processor(None), TypeError,
                             _expects_an_image("NoneType")),
    "processor_given_an_int": (lambda classify, tmp: classify.image_processor(42), TypeError, _expects_an_image("int")),
    "processor_given_a_dict": (lambda classify, tmp: classify.image_processor({"pixels": 1}), TypeError,
                               _expects_an_image("dict")),
    "processor_given_five_channels": (
        lambda classify, tmp: classify.image_processor(np.zeros((5, 20, 20), dtype=np.uint8)), ValueError,
        r"shape \(5, 20, 20\): neither its first nor its last axis holds 1, 3 or 4 channels",
    ),
}


@pytest.mark.parametrize("call, error, message", NOT_IMAGES.values(), ids=NOT_IMAGES)
def test_inputs_that_are_not_images_give_clear_errors(saved_vit, tmp_path, call, error, message):
    _, path = saved_vit
    classify = pipeline("image-classification", model=str(path))
    with pytest.raises(error, match=message):
        call(classify, tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# The pixel values that reach the model, for every format, against an independent numpy computation
# ---------------------------------------------------------------------------------------------------------------

LEVEL = 1 / 255  # one 8-bit level, in [0, 1]
SIZE = 32  # the tiny ViT's image_size: images of this size are not resized, so numpy can tell their exact pixels
EIGHT_BIT_ATOL = 1.5 * LEVEL  # Pillow's 8-bit conversions round (fixed-point luma, alpha compositing, CMYK)
HIGH_PRECISION_ATOL = 1e-5  # far below one 8-bit level: a 16-bit or float image must not go through 8 bits


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of [..., 3] intensities, the weights of Pillow's convert("L")."""
    return rgb @ np.array([0.299, 0.587, 0.114])


def onto_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """[0, 1] intensities (H x W or H x W x 3) composited onto white by [0, 1] alpha (H x W)."""
    alpha = alpha[..., None] if color.ndim == 3 else alpha
    return color * alpha + (1 - alpha)


def expected_pixel_values(intensity: np.ndarray, channels: int) -> torch.Tensor:
    """[0, 1] intensities (H x W gray or H x W x 3 RGB) -> the [C, H, W] pixel values of a model with ``channels``
    channels under make_image_processor (gray repeated or RGB through the luma; mean = std = 0.5)."""
    if intensity.ndim == 2:
        planes = np.repeat(intensity[None], channels, axis=0)
    else:
        planes = luma(intensity)[None] if channels == 1 else np.moveaxis(intensity, -1, 0)
    return torch.as_tensor((planes - 0.5) / 0.5, dtype=torch.float32)


def formats(tmp_path) -> dict[str, tuple[object, np.ndarray, float]]:
    """name -> (image as a user passes it, its [0, 1] intensities computed with numpy, tolerance), SIZE x SIZE."""
    rng = np.random.default_rng(7)
    shape = (SIZE, SIZE)
    gray8, rgb8, alpha8 = (rng.integers(0, 256, s, dtype=np.uint8) for s in (shape, (*shape, 3), shape))
    gray16, rgb16, alpha16 = (rng.integers(0, 65536, s, dtype=np.uint16) for s in (shape, (*shape, 3), shape))
    gray_float, rgb_float, alpha_float = rng.random(shape), rng.random((*shape, 3)), rng.random(shape)
    bits = rng.random(shape) < 0.5
    int32 = rng.integers(0, 2**31, shape, dtype=np.int32)
    cmyk = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    palette = random_image(SIZE, SIZE, mode="P", seed=3)
    palette_rgb = np.asarray(palette.getpalette(), dtype=float).reshape(-1, 3)[np.asarray(palette)] / 255

    # files: a 16-bit grayscale PNG (Pillow reopens it as I;16), a 32-bit integer TIFF (mode I, BitsPerSample 32)
    # and a 32-bit float TIFF (mode F)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    Image.fromarray(int32).save(tmp_path / "int32.tif")
    Image.fromarray(gray_float.astype(np.float32)).save(tmp_path / "float32.tif")
    transparent16 = gray16.copy()
    transparent16[:4] = 1234  # a 16-bit PNG's transparent gray value (tRNS chunk): composited onto white
    Image.fromarray(transparent16).save(tmp_path / "transparent16.png", transparency=1234)
    with_transparency = np.where(transparent16 == 1234, 1.0, transparent16 / 65535)

    eight, high = EIGHT_BIT_ATOL, HIGH_PRECISION_ATOL
    rgb8_01, gray8_01, alpha8_01 = rgb8 / 255, gray8 / 255, alpha8 / 255
    return {
        # 8-bit PIL modes, as Pillow's conversions give them
        "pil_L": (Image.fromarray(gray8), gray8_01, eight),
        "pil_RGB": (Image.fromarray(rgb8), rgb8_01, eight),
        "pil_RGBA": (Image.fromarray(np.dstack([rgb8, alpha8])), onto_white(rgb8_01, alpha8_01), eight),
        "pil_LA": (Image.fromarray(np.dstack([gray8, alpha8])), onto_white(gray8_01, alpha8_01), eight),
        "pil_P": (palette, palette_rgb, eight),
        "pil_CMYK": (
            Image.frombytes("CMYK", (SIZE, SIZE), cmyk.tobytes()),
            (1 - cmyk[..., :3] / 255) * (1 - cmyk[..., 3:] / 255),
            eight,
        ),
        "pil_1": (Image.fromarray(bits), bits.astype(float), eight),
        # 8-bit arrays and tensors of every layout
        "numpy_HxW_uint8": (gray8, gray8_01, eight),
        "numpy_HxWx3_uint8": (rgb8, rgb8_01, eight),
        "numpy_CxHxW_uint8": (np.moveaxis(rgb8, -1, 0).copy(), rgb8_01, eight),
        "numpy_HxWx4_uint8": (np.dstack([rgb8, alpha8]), onto_white(rgb8_01, alpha8_01), eight),
        "numpy_HxW_bool": (bits, bits.astype(float), eight),
        "torch_HxWx3_uint8": (torch.from_numpy(rgb8), rgb8_01, eight),
        # 16-bit: PIL I;16, 16-bit PNG files, uint16 arrays and tensors (65535 is white)
        "pil_I;16": (Image.fromarray(gray16), gray16 / 65535, high),
        "png_16_bit_path": (str(tmp_path / "gray16.png"), gray16 / 65535, high),
        "png_16_bit_transparent": (Image.open(tmp_path / "transparent16.png"), with_transparency, high),
        "pil_I_16_bit_data": (Image.fromarray(gray16.astype(np.int32)), gray16 / 65535, high),
        "numpy_HxW_uint16": (gray16, gray16 / 65535, high),
        "numpy_HxWx3_uint16": (rgb16, rgb16 / 65535, high),
        "numpy_CxHxW_uint16": (np.moveaxis(rgb16, -1, 0).copy(), rgb16 / 65535, high),
        "numpy_HxWx4_uint16": (np.dstack([rgb16, alpha16]), onto_white(rgb16 / 65535, alpha16 / 65535), high),
        "numpy_HxW_int32": (gray16.astype(np.int32), gray16 / 65535, high),
        "torch_HxW_uint16": (torch.from_numpy(gray16), gray16 / 65535, high),
        # 32-bit integers with a recorded bit depth: a TIFF of mode I (2**31 - 1 is white)
        "tiff_32_bit_path": (str(tmp_path / "int32.tif"), int32 / (2**31 - 1), high),
        # floats, taken as [0, 1]
        "pil_F": (Image.fromarray(gray_float.astype(np.float32)), gray_float, high),
        "tiff_float_path": (str(tmp_path / "float32.tif"), gray_float, high),
        "numpy_HxW_float32": (gray_float.astype(np.float32), gray_float, high),
        "numpy_HxWx3_float64": (rgb_float, rgb_float, high),
        "numpy_CxHxW_float16": (
            np.moveaxis(rgb_float, -1, 0).astype(np.float16), rgb_float.astype(np.float16).astype(float), high
        ),
        "numpy_HxWx4_float32": (np.dstack([rgb_float, alpha_float]), onto_white(rgb_float, alpha_float), high),
        "torch_CxHxW_float32": (torch.from_numpy(np.moveaxis(rgb_float, -1, 0).copy()).float(), rgb_float, high),
        "torch_CxHxW_bfloat16": (
            torch.from_numpy(np.moveaxis(rgb_float, -1, 0).copy()).bfloat16(),
            np.moveaxis(torch.from_numpy(np.moveaxis(rgb_float, -1, 0).copy()).bfloat16().double().numpy(), 0, -1),
            high,
        ),
    }


@pytest.mark.parametrize("channels", [1, 3], ids=["grayscale_model", "rgb_model"])
def test_every_format_reaches_the_model_with_the_pixel_values_numpy_computes(channels, tmp_path):
    processor = sf.make_image_processor(tiny_vit(num_channels=channels).config)
    failures = []
    for name, (image, intensity, atol) in formats(tmp_path).items():
        pixel_values = processor(image, return_tensors="pt").pixel_values
        assert pixel_values.shape == (1, channels, SIZE, SIZE), name
        error = float((pixel_values[0] - expected_pixel_values(intensity, channels)).abs().max())
        if not error <= 2 * atol:  # pixel values span [-1, 1]: twice the [0, 1] tolerance
            failures.append(f"{name}: max error {error:.3g} (tolerance {2 * atol:.3g})")
    assert not failures, "\n".join(failures)


def test_16_bit_and_float_images_keep_their_precision_through_resizing():
    """A horizontal ramp of 64 columns downscaled to 32: away from the borders, a symmetric filter gives back the ramp
    at each output pixel's centre (input column 2j + 0.5), far more precisely than one 8-bit level."""
    processor = sf.make_image_processor(tiny_vit(num_channels=1).config)
    step = 1000
    ramp16 = np.tile(np.arange(64, dtype=np.uint16) * step, (64, 1))
    centres = (2 * np.arange(SIZE) + 0.5)[1:-1]
    cases = {
        "numpy_uint16": (ramp16, centres * step / 65535),
        "pil_I;16": (Image.fromarray(ramp16), centres * step / 65535),
        "numpy_float32": (ramp16.astype(np.float32) / 65535, centres * step / 65535),
        "pil_F": (Image.fromarray(ramp16.astype(np.float32) / 65535), centres * step / 65535),
    }
    for name, (image, intensity) in cases.items():
        pixel_values = processor(image, return_tensors="pt").pixel_values[0, 0].double()
        assert pixel_values.shape == (SIZE, SIZE), name
        interior = pixel_values[:, 1:-1]
        torch.testing.assert_close(interior, torch.as_tensor(2 * intensity - 1).expand_as(interior), atol=1e-4,
                                   rtol=0, msg=name)


FLOATS = np.random.default_rng(0).random((SIZE, SIZE, 3))
NOT_CLIPPED = (r", outside \[0, {top}\] for a {dtype} image; nothing is clipped: bring it into that range \(e\.g\. "
               r"divide 0-255 floats by 255\) or set rescale_factor to its scale\.$")
FLOAT_NOT_CLIPPED = NOT_CLIPPED.format(top=1, dtype="float")
NO_SCALE = (r"^Cannot tell the scale of an image of dtype {dtype}: pass uint8 \(0-255\), uint16 \(0-65535\) or int32 "
            r"\(16-bit data, like PIL mode I\) integers or floats in \[0, 1\], or set rescale_factor to your scale\.$")
OUT_OF_RANGE = {  # name -> (image, error message: the values' span, the range of the dtype)
    "0-255_floats": (FLOATS * 255, r"^The image's values span \[0\.04845\d*, 254\.887\d*\]" + FLOAT_NOT_CLIPPED),
    "negative_floats": (FLOATS - 0.5, r"^The image's values span \[-0\.49981\d*, 0\.49955\d*\]" + FLOAT_NOT_CLIPPED),
    "NaN": (np.where(FLOATS < 0.1, np.nan, FLOATS), FLOAT_NOT_CLIPPED),
    "PIL_F_above_1": (Image.fromarray((FLOATS[..., 0] * 2).astype(np.float32)),
                      r"^The image's values span \[0\.00038\d*, 1\.9978\d*\]" + FLOAT_NOT_CLIPPED),
    "torch_floats_above_1": (torch.from_numpy(FLOATS * 3),
                             r"^The image's values span \[0\.00057\d*, 2\.9986\d*\]" + FLOAT_NOT_CLIPPED),
    "int32_above_65535": (np.full((SIZE, SIZE), 70000, dtype=np.int32),
                          r"^The image's values span \[70000, 70000\]" + NOT_CLIPPED.format(top=65535, dtype="int32")),
    # no image convention: an error, not a guess
    **{f"dtype_{np.dtype(dtype)}": (np.zeros((SIZE, SIZE, 3), dtype=dtype), NO_SCALE.format(dtype=np.dtype(dtype)))
       for dtype in (np.int64, np.int16, np.uint32)},
}


@pytest.mark.parametrize("image, message", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE)
def test_values_out_of_their_range_are_errors_not_clipped(image, message):
    processor = sf.make_image_processor(tiny_vit(num_channels=3).config)
    with pytest.raises(ValueError, match=message):
        processor(image)


def test_a_custom_rescale_factor_or_no_rescaling_declares_the_scale():
    """With a custom rescale_factor (or do_rescale=False) the caller states the scale: values pass unchanged."""
    config = tiny_vit(num_channels=1).config
    rng = np.random.default_rng(0)
    twelve_bit = rng.integers(0, 4096, (SIZE, SIZE), dtype=np.uint16)
    sixteenths = rng.integers(0, 17, (SIZE, SIZE)).astype(np.float32)  # like scikit-learn's digits, 0..16
    floats = rng.random((SIZE, SIZE)).astype(np.float32)
    cases = [
        (dict(rescale_factor=1 / 4095), twelve_bit, twelve_bit / 4095),
        (dict(rescale_factor=1 / 16), sixteenths, sixteenths / 16),
        (dict(rescale_factor=1 / 16), np.int64(4) * sixteenths.astype(np.int64), sixteenths / 4),
        (dict(do_rescale=False), floats, floats),  # transformers' convention for floats already in [0, 1]
    ]
    for overrides, image, intensity in cases:
        pixel_values = sf.make_image_processor(config, **overrides)(image, return_tensors="pt").pixel_values
        torch.testing.assert_close(pixel_values[0], expected_pixel_values(intensity, 1), atol=1e-5, rtol=0,
                                   msg=str(overrides))


def test_each_image_of_a_batch_gets_its_own_row():
    rng = np.random.default_rng(2)
    rgb16 = rng.integers(0, 65536, (2, SIZE, SIZE, 3), dtype=np.uint16)
    rgb8 = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    gray_float = rng.random((2, SIZE, SIZE, 1))
    batches = {  # name -> (batch, [0, 1] intensities of each image)
        "numpy_NxHxWxC_uint8": (rgb8, rgb8 / 255),
        "numpy_NxCxHxW_uint16": (np.moveaxis(rgb16, -1, 1).copy(), rgb16 / 65535),
        "numpy_NxHxWx1_float": (gray_float, gray_float[..., 0]),
        "torch_NxCxHxW_float": (torch.from_numpy(np.moveaxis(gray_float, -1, 1).copy()), gray_float[..., 0]),
        "list_of_16_bit_and_float": ([Image.fromarray(rgb16[0, ..., 0]), gray_float[1]], [rgb16[0, ..., 0] / 65535,
                                                                                           gray_float[1, ..., 0]]),
    }
    for channels in (1, 3):
        processor = sf.make_image_processor(tiny_vit(num_channels=channels).config)
        for name, (batch, intensities) in batches.items():
            pixel_values = processor(batch, return_tensors="pt").pixel_values
            assert pixel_values.shape == (2, channels, SIZE, SIZE), name
            for row, intensity in zip(pixel_values, intensities):
                torch.testing.assert_close(row, expected_pixel_values(np.asarray(intensity), channels),
                                           atol=3 * LEVEL if "uint8" in name else 2e-5, rtol=0, msg=name)


def test_the_pipeline_gives_the_model_16_bit_float_and_transparent_files_at_full_precision(saved_vit, tmp_path):
    """transformers' pipeline opens paths and PIL images as 8-bit RGB: 16-bit images saturate, float ones go black and
    transparent pixels black instead of white. Here the model gets the pixel values numpy computes."""
    model, path = saved_vit
    channels = model.config.num_channels
    classify = pipeline("image-classification", model=str(path))
    rng = np.random.default_rng(4)
    gray16, gray_float = rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16), rng.random((SIZE, SIZE))
    rgba = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    Image.fromarray(gray_float.astype(np.float32)).save(tmp_path / "float.tif")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    cases = {  # name -> (input, [0, 1] intensities, tolerance)
        "png_16_bit_path": (str(tmp_path / "gray16.png"), gray16 / 65535, HIGH_PRECISION_ATOL),
        "pil_I;16": (Image.fromarray(gray16), gray16 / 65535, HIGH_PRECISION_ATOL),
        "tiff_float_path": (str(tmp_path / "float.tif"), gray_float, HIGH_PRECISION_ATOL),
        "pil_F": (Image.open(tmp_path / "float.tif"), gray_float, HIGH_PRECISION_ATOL),
        "rgba_png_path": (str(tmp_path / "rgba.png"), onto_white(rgba[..., :3] / 255, rgba[..., 3] / 255),
                          EIGHT_BIT_ATOL),
    }
    for name, (image, intensity, atol) in cases.items():
        pixel_values = classify.image_processor(image, return_tensors="pt").pixel_values
        error = float((pixel_values[0] - expected_pixel_values(intensity, channels)).abs().max())
        assert error <= 2 * atol, f"{name}: max error {error:.3g}"
        with torch.no_grad():
            probabilities = model(pixel_values).logits.softmax(-1)[0]
        scores = {r["label"]: r["score"] for r in classify(image, top_k=3)}
        for index, label in LABELS.items():  # the pipeline gives the model exactly these pixel values
            assert scores[label] == pytest.approx(float(probabilities[index]), abs=1e-6), name


EMPTIES = {  # name -> (empty image, what the error names: the array's shape, or the PIL image's (height, width))
    "numpy_0x0": (np.zeros((0, 0), dtype=np.uint8), "image of shape (0, 0)"),
    "numpy_32x0x3": (np.zeros((32, 0, 3), dtype=np.uint8), "image of shape (32, 0, 3)"),
    "numpy_batch_of_no_images": (np.zeros((0, 32, 32, 3), dtype=np.uint8), "image of shape (0, 32, 32, 3)"),
    "torch_3x0x5": (torch.zeros(3, 0, 5), "image of shape (3, 0, 5)"),
    "pil_0x0": (Image.new("RGB", (0, 0)), "PIL image of (height, width) (0, 0)"),
    "pil_7x0": (Image.new("L", (0, 7)), "PIL image of (height, width) (7, 0)"),
}


@pytest.mark.parametrize("empty, named", EMPTIES.values(), ids=EMPTIES)
def test_empty_images_are_a_clear_error_naming_the_shape(saved_vit, empty, named):
    _, path = saved_vit
    classify = pipeline("image-classification", model=str(path))
    message = rf"^Got an empty {re.escape(named)}: every dimension of an image must be at least 1\.$"
    for run in (classify.image_processor, classify):
        with pytest.raises(ValueError, match=message):
            run(empty)
    with pytest.raises(ValueError, match=message):  # in a batch, after a good image
        classify.image_processor([np.zeros((SIZE, SIZE), dtype=np.uint8), empty])
