"""Tiny ViT configs and images shared by the ViT tests (seconds on 2 CPU cores)."""

from __future__ import annotations

import numpy as np
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
