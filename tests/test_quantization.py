"""Dynamic int8 on both trained models agrees with fp32: ``torch.ao.quantization.quantize_dynamic`` after loading,
and ours (``scratchformers.quantize_int8``), which saves and loads as int8."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import scratchformers as sf

from safetensors import safe_open
from transformers import AutoModelForImageClassification, AutoModelForSeq2SeqLM, pipeline

from conftest import run_without_package, tiny_transformer_config
from scratchformers.quantization import Int8Linear
from translation_fixtures import make_translation_model
from test_modeling_transformer_learning import LENGTH, VOCAB, copy_batch, train_to_copy
from vit_fixtures import pixels, random_image, tiny_vit


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



@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_torch_ao_per_channel_dynamic_quantization(bias):
    """The same int8 weights and the same outputs as torch.ao's per-channel dynamic Linear, for 2-D and 3-D inputs."""
    reference_config = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
    for seed in range(5):
        torch.manual_seed(seed)
        linear = nn.Linear(96, 40, bias=bias)
        ours = Int8Linear.from_float(linear)
        theirs = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), reference_config, dtype=torch.qint8)[0]
        assert torch.equal(ours.weight, theirs.weight().int_repr())
        assert torch.equal(ours.weight_scale, theirs.weight().q_per_channel_scales().float())
        for x in (torch.randn(7, 96), torch.randn(2, 5, 96)):
            with torch.no_grad():
                assert torch.equal(ours(x), theirs(x))
        assert (ours.dequantized_weight() - linear.weight).abs().max() <= ours.weight_scale.max() / 2 + 1e-7


def test_int8_linear_passes_gradients_to_its_input_only():
    torch.manual_seed(0)
    layer = Int8Linear.from_float(nn.Linear(16, 8))
    x = torch.randn(3, 16, requires_grad=True)
    direction = torch.randn(3, 8)
    (layer(x) * direction).sum().backward()
    torch.testing.assert_close(x.grad, direction @ layer.dequantized_weight())
    assert list(layer.parameters()) == []  # frozen: weights, scales and bias are buffers


def int8_tensors(directory) -> dict[str, torch.dtype]:
    with safe_open(str(directory / "model.safetensors"), "pt") as weights:
        return {name: weights.get_slice(name).get_dtype() for name in weights.keys()}


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_a_saved_int8_translation_model_loads_as_int8_and_decodes_the_same(tmp_path, tie_word_embeddings):
    model, tokenizer = make_translation_model(tie_word_embeddings=tie_word_embeddings)
    fp32_size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    sources = tokenizer(["the red cat sat", "le chien grand a dormi"], return_tensors="pt", padding=True)
    int8 = sf.quantize_int8(copy.deepcopy(model))
    assert not any(isinstance(m, nn.Linear) for m in int8.modules())
    # A tied LM head becomes an int8 copy of the table; the lookup keeps the float table.
    assert isinstance(int8.lm_head, Int8Linear) and not int8.config.tie_word_embeddings
    torch.testing.assert_close(int8.lm_head.dequantized_weight(), model.lm_head.weight, atol=0.01, rtol=0)
    assert torch.equal(int8.model.shared.weight, model.model.shared.weight)
    expected = {search: int8.generate(**sources, max_new_tokens=8, **dict(search)) for search in ((), (("num_beams", 3),))}

    int8.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    dtypes = int8_tensors(tmp_path)
    assert dtypes["model.encoder.layers.0.self_attn.q_proj.weight"] == "I8"
    assert dtypes["model.encoder.layers.0.self_attn.q_proj.weight_scale"] == "F32"
    assert (tmp_path / "model.safetensors").stat().st_size < 0.6 * fp32_size
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert loaded.config.quantization == "int8"
    assert sum(isinstance(m, Int8Linear) for m in loaded.modules()) == sum(isinstance(m, Int8Linear) for m in int8.modules())
    assert torch.equal(loaded.model.shared.weight, model.model.shared.weight) and not loaded.config.tie_word_embeddings
    for search, output in expected.items():
        assert torch.equal(loaded.generate(**sources, max_new_tokens=8, **dict(search)), output)
    # Alone, not in a padded batch: the activations' int8 scale is taken over the whole input of a call.
    alone = int8.generate(**tokenizer(["the red cat sat"], return_tensors="pt"), max_new_tokens=8)
    translator = pipeline("translation", model=str(tmp_path), trust_remote_code=True)
    assert translator("the red cat sat", max_new_tokens=8, num_beams=1)[0]["translation_text"] == tokenizer.decode(
        alone[0], skip_special_tokens=True)


def test_a_saved_int8_vit_classifies_like_before_saving_also_as_remote_code(tmp_path):
    int8 = sf.quantize_int8(tiny_vit())
    with torch.no_grad():
        expected = int8(pixels()).logits
    int8.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(pixels()).logits, expected)
    classifier = pipeline("image-classification", model=str(tmp_path), trust_remote_code=True)
    assert len(classifier(random_image(32, 32), top_k=3)) == 3
    # A machine without the package reads the saved code, which builds the same int8 layers.
    result = run_without_package(
        f"import torch\nfrom transformers import AutoModelForImageClassification\n"
        f"m = AutoModelForImageClassification.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
        f"print(type(m.vit.layers[0].self_attn.q_proj).__name__)\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "Int8Linear"


def test_int8_refusals_name_the_problem():
    int8 = sf.quantize_int8(tiny_vit())
    with pytest.raises(ValueError, match="already int8"):
        sf.quantize_int8(int8)
    with pytest.raises(ValueError, match="quantization='int4' is not supported"):
        sf.ScratchViTConfig(quantization="int4")
    from scratchformers.export_ct2 import check_exportable
    with pytest.raises(ValueError, match="quantization='int8'.*export the float32 model"):
        check_exportable(sf.ScratchTransformerConfig(quantization="int8"))
