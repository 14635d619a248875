"""Tiny ViT configs and images shared by the ViT tests (seconds on 2 CPU cores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import scratchformers as sf

LABELS = {0: "cat", 1: "dog", 2: "eel"}


def tiny_vit_config(**overrides) -> sf.ScratchViTConfig:
    """32x32 images, 8x8 patches (16 tokens + [CLS]), 2 layers of width 32, three named labels."""
    values = dict(
        image_size=32, patch_size=8, num_channels=3, d_model=32, num_layers=2, num_heads=4, ffn_dim=64,
        id2label=LABELS, label2id={name: i for i, name in LABELS.items()},
    )
    values.update(overrides)
    return sf.ScratchViTConfig(**values)


def tiny_vit(seed: int = 0, attn_implementation: str = "eager", **overrides) -> sf.ScratchViTForImageClassification:
    torch.manual_seed(seed)
    config = tiny_vit_config(**overrides)
    return sf.ScratchViTForImageClassification._from_config(config, attn_implementation=attn_implementation).eval()


def pixels(batch: int = 2, channels: int = 3, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def random_image(height: int = 40, width: int = 52, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A random PIL image of the given mode ("RGB", "L", "RGBA", "P", ...) and an odd size by default."""
    channels = {"L": 1, "RGBA": 4}.get(mode, 3)
    shape = (height, width) if channels == 1 else (height, width, channels)
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    image = Image.fromarray(array)
    return image if image.mode == mode else image.convert(mode)


def randomized_biases(model):
    """The init sets biases and norm shifts to 0; randomise them so that the bias rewrites are actually tested."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.add_(0.5 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module", params=[3, 1], ids=["rgb_model", "grayscale_model"])
def saved_vit(request, tmp_path_factory):
    """A tiny ViT for ``num_channels`` 3 or 1, saved (with its default image processor) to a directory."""
    path = tmp_path_factory.mktemp(f"vit{request.param}")
    model = tiny_vit(num_channels=request.param)
    model.save_pretrained(path)
    return model, path


def input_kinds(tmp_path):
    """Every input kind a user may pass, at odd sizes."""
    random_image(41, 29).save(tmp_path / "photo.png")
    random_image(30, 30, mode="RGBA").save(tmp_path / "transparent.png")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 65536, (27, 44), dtype=np.uint16)).save(tmp_path / "sixteen_bit.png")
    return {
        "pil_16_bit": Image.fromarray(rng.integers(0, 65536, (35, 22), dtype=np.uint16)),
        "pil_float": Image.fromarray(rng.random((23, 38), dtype=np.float32)),
        "pil_cmyk": random_image(33, 20).convert("CMYK"),
        "pil_gray_alpha": random_image(26, 31).convert("LA"),
        "pil_1_bit": random_image(29, 33).convert("1"),
        "png_16_bit_path": str(tmp_path / "sixteen_bit.png"),
        "numpy_uint16": rng.integers(0, 65536, (24, 37, 3), dtype=np.uint16),
        "numpy_float": rng.random((3, 21, 34)),
        "torch_float": torch.rand(22, 36, 3, generator=torch.Generator().manual_seed(0)),
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
