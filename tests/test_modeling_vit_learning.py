"""A real learning signal: a tiny ViT learns scikit-learn's bundled 8x8 handwritten digits (1,797 images, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import scratchformers as sf


VARIANTS = {
    "paper": {},
    "rotary": dict(position_embedding="rotary"),
    "swiglu": dict(activation_function="swiglu"),
    "qk_norm": dict(qk_norm=True),
    "gqa": dict(num_key_value_heads=1),
}


@pytest.mark.parametrize(
    "variant", [pytest.param(v, id=k, marks=() if k == "paper" else pytest.mark.slow) for k, v in VARIANTS.items()]
)
def test_tiny_vit_learns_8x8_digits(variant):
    digits = load_digits()  # images: float 0..16, grayscale, 8x8
    config = sf.ScratchViTConfig(
        image_size=8, patch_size=4, num_channels=1, d_model=32, num_layers=2, num_heads=4, ffn_dim=64,
        id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)}, **variant,
    )
    # The model's own image processor turns the 2-D arrays into [N, 1, 8, 8] pixels in [-1, 1].
    processor = sf.make_image_processor(config, rescale_factor=1 / 16)
    pixel_values = processor(list(digits.images.astype(np.float32)), return_tensors="pt").pixel_values
    labels = torch.as_tensor(digits.target)
    order = torch.as_tensor(np.random.default_rng(0).permutation(len(labels)))
    train, test = order[: int(0.8 * len(order))], order[int(0.8 * len(order)) :]

    torch.manual_seed(0)
    model = sf.ScratchViTForImageClassification(config).train()
    epochs, batch_size, lr = 12, 64, 5e-3
    steps = epochs * -(-len(train) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        shuffled = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(shuffled), batch_size):
            batch = shuffled[start : start + batch_size]
            loss = model(pixel_values[batch], labels=labels[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()

    model.eval()
    with torch.no_grad():
        accuracy = (model(pixel_values[test]).logits.argmax(-1) == labels[test]).float().mean().item()
    assert accuracy > 0.90, f"test accuracy {accuracy:.3f} (chance is 0.10)"
