"""vit_to_scratch: a random Hugging Face ViTForImageClassification, ported, computes the same function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTModel, pipeline

import scratchformers as sf

from vit_fixtures import pixels, random_image


def make_hf_vit(attn_implementation: str = "eager", **overrides) -> ViTForImageClassification:
    values = dict(
        image_size=32, patch_size=8, num_channels=3, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=96, num_labels=5, layer_norm_eps=1e-12,
    )
    values.update(overrides)
    torch.manual_seed(0)
    model = ViTForImageClassification._from_config(ViTConfig(**values), attn_implementation=attn_implementation)
    with torch.no_grad():  # HF initialises biases and norms to 0 / 1: randomise them so that every weight is tested
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_logits_and_hidden_states_match_hugging_face(attn_implementation, qkv_bias):
    hf = make_hf_vit(attn_implementation, qkv_bias=qkv_bias)
    ours = sf.vit_to_scratch(hf)
    assert type(ours) is sf.ScratchViTForImageClassification and not ours.training
    assert ours.config._attn_implementation == attn_implementation
    x = pixels(batch=3)
    with torch.no_grad():
        theirs_out = hf(x, output_hidden_states=True)
        ours_out = ours(x, output_hidden_states=True)
    torch.testing.assert_close(ours_out.logits, theirs_out.logits, atol=1e-4, rtol=0)
    assert len(ours_out.hidden_states) == len(theirs_out.hidden_states) == 4
    for a, b in zip(ours_out.hidden_states, theirs_out.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_interpolated_position_embeddings_match_hugging_face(attn_implementation):
    hf = make_hf_vit(attn_implementation)
    ours = sf.vit_to_scratch(hf)
    x = pixels(batch=2, height=48, width=40)
    with torch.no_grad():
        expected = hf(x, interpolate_pos_encoding=True).logits
        torch.testing.assert_close(ours(x, interpolate_pos_encoding=True).logits, expected, atol=1e-4, rtol=0)


def test_config_and_labels_are_carried_over():
    hf = make_hf_vit(num_channels=1, num_labels=2, id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1}, hidden_act="relu")
    ours = sf.vit_to_scratch(hf, attn_implementation="sdpa")
    config = ours.config
    assert (config.image_size, config.patch_size, config.num_channels) == (32, 8, 1)
    assert (config.d_model, config.num_layers, config.num_heads, config.ffn_dim) == (48, 3, 4, 96)
    assert (config.activation_function, config.norm_position, config.pooling) == ("relu", "pre", "cls")
    assert config.id2label == {0: "a", 1: "b"} and config._attn_implementation == "sdpa"
    x = pixels(channels=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-4, rtol=0)


def test_a_ported_model_saves_and_serves_with_the_google_vit_preprocessing(tmp_path):
    hf = make_hf_vit()
    sf.vit_to_scratch(hf).save_pretrained(tmp_path)
    classify = pipeline("image-classification", model=str(tmp_path))
    image = random_image(50, 41)
    # google/vit preprocessing: RGB, bilinear resize to image_size, then (x / 255 - 0.5) / 0.5
    resized = torch.tensor(np.asarray(image.resize((32, 32), resample=Image.BILINEAR)), dtype=torch.float32)
    x = ((resized.permute(2, 0, 1) / 255 - 0.5) / 0.5)[None]
    with torch.no_grad():
        probabilities = hf(x).logits.softmax(-1)[0]
    top = classify(image, top_k=1)[0]
    assert top["label"] == hf.config.id2label[int(probabilities.argmax())]
    assert top["score"] == pytest.approx(float(probabilities.max()), abs=1e-4)


UNSUPPORTED = {  # name -> (make the Hugging Face model, error type, exact message)
    "bare_vit_model_without_a_classifier": (
        lambda: ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)),
        TypeError, r"vit_to_scratch expects a transformers ViTForImageClassification, got ViTModel\.",
    ),
    "non_square_image_size": (
        lambda: make_hf_vit(image_size=(32, 48)),
        ValueError, r"Only square image_size can be ported, got image_size=\(32, 48\)\.",
    ),
    "activation_without_a_counterpart": (
        lambda: make_hf_vit(hidden_act="quick_gelu"),
        ValueError,
        r"ViT activation 'quick_gelu' has no counterpart here \(allowed: \('relu', 'gelu', 'silu', 'gelu_new'\)\)\.",
    ),
}


@pytest.mark.parametrize("make_model, error, message", UNSUPPORTED.values(), ids=UNSUPPORTED)
def test_unsupported_models_are_refused_clearly(make_model, error, message):
    hf = make_model()
    with pytest.raises(error, match=f"^{message}$"):
        sf.vit_to_scratch(hf)
