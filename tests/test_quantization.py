"""Dynamic int8 (``torch.ao.quantization.quantize_dynamic``) on both trained models agrees with fp32."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import scratchformers as sf

from conftest import tiny_transformer_config
from test_modeling_transformer_learning import LENGTH, VOCAB, copy_batch, train_to_copy
from vit_fixtures import tiny_vit


def quantize(model: nn.Module) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def quantized_linears(model: nn.Module) -> int:
    return sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())


@pytest.mark.slow
def test_int8_seq2seq_translates_like_fp32():
    """A model trained on the copy task (near-zero loss) decodes the same tokens in int8, greedy and beam."""
    torch.manual_seed(0)
    config = tiny_transformer_config(vocab_size=VOCAB, encoder_layers=1, decoder_layers=1, d_model=64, ffn_dim=128,
                                     encoder_attention_heads=2, decoder_attention_heads=2)
    model = train_to_copy(sf.ScratchTransformerForConditionalGeneration(config), 300)
    test = copy_batch(torch.Generator().manual_seed(123), batch=16)
    int8 = quantize(model)
    assert quantized_linears(int8) == sum(isinstance(m, nn.Linear) for m in model.modules())
    for search in ({}, {"num_beams": 3}):
        fp32_out = model.generate(test["input_ids"], max_new_tokens=LENGTH + 1, **search)
        assert (fp32_out[:, 1:] == test["labels"]).float().mean() > 0.9  # trained
        assert torch.equal(int8.generate(test["input_ids"], max_new_tokens=LENGTH + 1, **search), fp32_out)


def bright_band_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise with one bright vertical band (left, middle or right third of the image): the band is the label."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (count,), generator=generator)
    images = 0.3 * torch.randn(count, 3, 32, 32, generator=generator)
    for i, label in enumerate(labels.tolist()):
        images[i, :, :, 11 * label : 11 * label + 10] += 1.5
    return images, labels


def test_int8_vit_classifies_like_fp32():
    model = tiny_vit().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(60):
        images, labels = bright_band_images(32, seed=step)
        loss = model(images, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    images, labels = bright_band_images(64, seed=1000)
    int8 = quantize(model)
    assert quantized_linears(int8) == sum(isinstance(m, nn.Linear) for m in model.modules())
    with torch.no_grad():
        fp32_logits, int8_logits = model(images).logits, int8(images).logits
    assert (fp32_logits.argmax(-1) == labels).float().mean() > 0.9  # trained
    assert torch.equal(int8_logits.argmax(-1), fp32_logits.argmax(-1))
    torch.testing.assert_close(int8_logits, fp32_logits, atol=0.1 * fp32_logits.abs().max().item(), rtol=0)
