"""The saved image processor and pipeline("image-classification"): PIL images, paths, arrays, grayscale, RGBA,
odd sizes, 1-channel models, and clear errors for inputs that are not images. Pillow only (no torchvision)."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, pipeline
from transformers.image_utils import load_image

import scratchformers as sf

from vit_fixtures import LABELS, random_image, tiny_vit


@pytest.fixture(scope="module", params=[3, 1], ids=["rgb_model", "grayscale_model"])
def saved_vit(request, tmp_path_factory):
    """A tiny ViT for ``num_channels`` 3 or 1, saved (with its default image processor) to a directory."""
    path = tmp_path_factory.mktemp(f"vit{request.param}")
    model = tiny_vit(num_channels=request.param)
    model.save_pretrained(path)
    return model, path


def inputs(tmp_path):
    """Every input kind a user may pass, at odd sizes."""
    random_image(41, 29).save(tmp_path / "photo.png")
    random_image(30, 30, mode="RGBA").save(tmp_path / "transparent.png")
    rng = np.random.default_rng(1)
    return {
        "pil_rgb": random_image(37, 53),
        "pil_grayscale": random_image(33, 47, mode="L"),
        "pil_rgba": random_image(31, 35, mode="RGBA"),
        "pil_palette": random_image(39, 21, mode="P"),
        "png_path": str(tmp_path / "photo.png"),
        "rgba_png_path": str(tmp_path / "transparent.png"),
        "numpy_hwc": rng.integers(0, 256, (45, 27, 3), dtype=np.uint8),
        "numpy_rgba": rng.integers(0, 256, (25, 26, 4), dtype=np.uint8),
        "numpy_2d_grayscale": rng.integers(0, 256, (19, 64), dtype=np.uint8),
        "numpy_chw": rng.integers(0, 256, (3, 20, 35), dtype=np.uint8),
        "tiny_7x5": random_image(7, 5),
    }


def test_the_processor_loads_without_torchvision_and_converts_channels(saved_vit):
    model, path = saved_vit
    processor = AutoImageProcessor.from_pretrained(path)
    assert type(processor) is sf.ScratchViTImageProcessorPil and processor.backend == "pil"
    assert processor.num_channels == model.config.num_channels


def test_every_input_kind_gives_pixel_values_of_the_model_shape(saved_vit, tmp_path):
    model, path = saved_vit
    processor = AutoImageProcessor.from_pretrained(path)
    channels = model.config.num_channels
    for name, image in inputs(tmp_path).items():
        pixel_values = processor(image, return_tensors="pt").pixel_values
        assert pixel_values.shape == (1, channels, 32, 32), name
        assert pixel_values.min() >= -1 and pixel_values.max() <= 1, name


def test_the_pipeline_classifies_every_input_kind(saved_vit, tmp_path):
    model, path = saved_vit
    classify = pipeline("image-classification", model=str(path))
    for name, image in inputs(tmp_path).items():
        result = classify(image, top_k=3)
        assert sorted(r["label"] for r in result) == sorted(LABELS.values()), name
        assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5), name
        # the pipeline opens paths and PIL images with transformers' load_image (which drops alpha), arrays as they are
        opened = image if isinstance(image, np.ndarray) else load_image(image)
        with torch.no_grad():
            pixel_values = classify.image_processor(opened, return_tensors="pt").pixel_values
            probabilities = model(pixel_values).logits.softmax(-1)[0]
        assert result[0]["label"] == LABELS[int(probabilities.argmax())], name
        assert result[0]["score"] == pytest.approx(float(probabilities.max()), abs=1e-5), name
    batch = classify([inputs(tmp_path)["pil_rgb"], inputs(tmp_path)["numpy_2d_grayscale"]])
    assert len(batch) == 2


def test_grayscale_and_color_are_converted_like_pillow():
    gray_processor = sf.make_image_processor(tiny_vit(num_channels=1).config)
    color_processor = sf.make_image_processor(tiny_vit(num_channels=3).config)
    rgb = random_image(32, 32)
    gray = rgb.convert("L")

    def pixels(processor, image):
        return processor(image, return_tensors="pt").pixel_values

    # a grayscale array, a grayscale PIL image and an RGB image (through the ITU-R 601 luma) agree
    torch.testing.assert_close(pixels(gray_processor, np.asarray(gray)), pixels(gray_processor, gray))
    torch.testing.assert_close(pixels(gray_processor, np.asarray(rgb)), pixels(gray_processor, gray), atol=2 / 255 * 2, rtol=0)
    torch.testing.assert_close(pixels(gray_processor, rgb), pixels(gray_processor, gray))
    # grayscale into an RGB model: the same value in the three channels
    expanded = pixels(color_processor, gray)
    torch.testing.assert_close(expanded[:, 0], expanded[:, 2])
    # transparency is composited onto white, for PIL images and arrays alike
    rgba = random_image(32, 32, mode="RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    composited = Image.alpha_composite(white, rgba).convert("RGB")
    torch.testing.assert_close(pixels(color_processor, rgba), pixels(color_processor, composited))
    torch.testing.assert_close(pixels(color_processor, np.asarray(rgba)), pixels(color_processor, composited), atol=2 / 255 * 2, rtol=0)


def test_loading_the_pipeline_asks_no_question(saved_vit, monkeypatch):
    """transformers would prompt "Do you wish to run the custom code?" for a video processor it guesses."""

    def no_prompt(*args, **kwargs):
        raise AssertionError(f"pipeline() prompted: {args}")

    monkeypatch.setattr(builtins, "input", no_prompt)
    _, path = saved_vit
    classify = pipeline("image-classification", model=str(path))
    assert type(classify.image_processor) is sf.ScratchViTImageProcessorPil


def test_inputs_that_are_not_images_give_clear_errors(saved_vit, tmp_path):
    _, path = saved_vit
    classify = pipeline("image-classification", model=str(path))
    with pytest.raises(TypeError, match="Incorrect format used for image"):
        classify(42)
    with pytest.raises(ValueError, match="valid path to an image file"):
        classify(str(tmp_path / "missing.png"))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(Exception, match="cannot identify image file"):
        classify(str(tmp_path / "notes.txt"))
    processor = classify.image_processor
    for not_an_image in (None, 42, {"pixels": 1}):
        with pytest.raises(TypeError, match="expects an image: a PIL.Image, a numpy array"):
            processor(not_an_image)
    with pytest.raises(ValueError, match="channel dimension"):
        processor(np.zeros((5, 20, 20), dtype=np.uint8))
