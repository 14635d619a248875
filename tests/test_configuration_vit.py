"""ScratchViTConfig: ViT-B/16 defaults, validation that names the field, save/load through AutoConfig."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

import scratchformers as sf


def test_defaults_are_vit_base_patch16_224():
    config = sf.ScratchViTConfig()
    assert (config.image_size, config.patch_size, config.num_channels) == (224, 16, 3)
    assert (config.d_model, config.num_layers, config.num_heads, config.ffn_dim) == (768, 12, 12, 3072)
    assert (config.activation_function, config.norm_type, config.norm_position, config.pooling) == ("gelu", "layernorm", "pre", "cls")
    assert config.layer_norm_eps == 1e-12 and config.qkv_bias is True
    assert config.num_patches == 196
    # transformers' generic names read our fields (Trainer, accelerate and pipelines use them)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"image_size": 30, "patch_size": 16}, "image_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"num_channels": 0}, "num_channels"),
        ({"d_model": 100, "num_heads": 12}, "num_heads"),
        ({"num_layers": -1}, "num_layers"),
        ({"ffn_dim": 1.5}, "ffn_dim"),
        ({"activation_function": "tanh"}, "activation_function"),
        ({"pooling": "max"}, "pooling"),
        ({"norm_type": "batchnorm"}, "norm_type"),
        ({"norm_position": "middle"}, "norm_position"),
        ({"dropout": 1.0}, "dropout"),
        ({"attention_dropout": -0.1}, "attention_dropout"),
        ({"drop_path_rate": 2}, "drop_path_rate"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"qkv_bias": "yes"}, "qkv_bias"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"layer_norm_eps": -1e-6}, "layer_norm_eps must be a number > 0, got -1e-06"),
        ({"init_std": -1}, "init_std"),
        ({"problem_type": "ranking"}, "problem_type"),
        ({"patch_embedding": "conv"}, "patch_embedding"),
        ({"patch_embedding": "convolutional", "image_size": 28, "patch_size": 7}, "needs a power of 2 as patch_size"),
        ({"patch_embedding": "convolutional", "stem_channels": 0}, "stem_channels"),
    ],
)
def test_invalid_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        sf.ScratchViTConfig(**overrides)


def test_labels_and_roundtrip_through_autoconfig(tmp_path):
    config = sf.ScratchViTConfig(
        image_size=32, patch_size=4, num_channels=1, d_model=48, num_layers=3, num_heads=6, ffn_dim=96,
        pooling="mean", norm_position="post", drop_path_rate=0.1, label_smoothing=0.1,
        id2label={0: "zero", 1: "one", 2: "two"}, label2id={"zero": 0, "one": 1, "two": 2},
    )
    assert config.num_labels == 3 and config.num_patches == 64
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is sf.ScratchViTConfig
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.id2label == {0: "zero", 1: "one", 2: "two"}


def test_a_config_of_another_model_type_is_refused(tmp_path):
    sf.ScratchTransformerConfig(vocab_size=40, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="scratch_transformer"):
        sf.ScratchViTConfig.from_pretrained(tmp_path)


def test_activation_is_spelled_as_in_the_seq2seq_config_and_the_old_spelling_still_loads(tmp_path):
    """`activation_function`, as ScratchTransformerConfig / ScratchTransformerLMConfig (and Marian) spell it; configs
    saved with this config's earlier field `activation` and code passing `activation=` keep working."""
    assert sf.ScratchViTConfig(activation="silu").activation_function == "silu"
    saved = sf.ScratchViTConfig(activation_function="relu").to_dict()
    assert saved["activation_function"] == "relu" and "activation" not in saved
    saved["activation"] = saved.pop("activation_function")
    assert sf.ScratchViTConfig.from_dict(saved).activation_function == "relu"
    with pytest.raises(ValueError, match="activation_function='tanh'"):
        sf.ScratchViTConfig(activation="tanh")
