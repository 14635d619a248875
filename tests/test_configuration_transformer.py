"""ScratchTransformerConfig: defaults are the paper's base model; invalid values fail at construction."""

import pytest
from transformers import AutoConfig

import scratchformers as sf


def test_defaults_are_the_paper_base_model():
    config = sf.ScratchTransformerConfig()
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.ffn_dim) == (512, 6, 6, 2048)
    assert (config.encoder_attention_heads, config.activation_function, config.norm_position) == (8, "relu", "post")
    assert config.position_embedding == "sinusoidal" and config.scale_embedding and config.is_encoder_decoder
    assert config.hidden_size == 512 and config.num_attention_heads == 8


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"d_model": 30, "encoder_attention_heads": 4}, "d_model=30 must be divisible by encoder_attention_heads=4"),
        ({"norm_type": "batchnorm"}, "norm_type='batchnorm' is not supported; allowed values: 'layernorm', 'rmsnorm'"),
        ({"norm_position": "middle"}, "norm_position='middle'.*'post', 'pre'"),
        ({"attention_scoring": "cosine"}, "attention_scoring='cosine'.*'scaled_dot', 'additive'"),
        ({"activation_function": "tanh"}, "activation_function='tanh'.*'relu', 'gelu', 'silu'"),
        ({"position_embedding": "rope"}, "position_embedding='rope'"),
        ({"dropout": -0.1}, r"dropout must be a probability in \[0, 1\)"),
        ({"label_smoothing": 1.5}, "label_smoothing must be a probability"),
        ({"encoder_layers": 0}, "encoder_layers must be a positive integer"),
        ({"vocab_size": 10, "eos_token_id": 12}, r"eos_token_id=12 must be token ids in \[0, vocab_size=10\)"),
        ({"d_model": 33, "encoder_attention_heads": 1, "decoder_attention_heads": 1}, "even d_model"),
        ({"layer_norm_eps": -1}, "layer_norm_eps must be a number > 0, got -1"),  # NaN logits before
        ({"layer_norm_eps": 0.0}, "layer_norm_eps must be a number > 0, got 0.0"),
        ({"init_std": 0}, "init_std must be a number > 0, got 0"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        sf.ScratchTransformerConfig(**overrides)


def test_round_trip_through_auto_config(tmp_path, tiny_config):
    tiny_config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, sf.ScratchTransformerConfig)
    ignore = {"_name_or_path"}
    assert {k: v for k, v in loaded.to_dict().items() if k not in ignore} == {
        k: v for k, v in tiny_config.to_dict().items() if k not in ignore
    }
    assert loaded.is_encoder_decoder


def test_config_of_another_model_type_is_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type='bert', but ScratchTransformerConfig expects 'scratch_transformer'"):
        sf.ScratchTransformerConfig.from_pretrained(tmp_path)
