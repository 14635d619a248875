"""Agreement with an independent implementation: a random MarianMTModel ported into our code."""

import pytest
import torch
from transformers import MarianConfig, MarianMTModel

from scratchformers.convert import marian_config_to_scratch, marian_to_scratch


def make_marian(attn_implementation: str = "eager") -> MarianMTModel:
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=59, eos_token_id=0, decoder_start_token_id=59, activation_function="swish",
        scale_embedding=True, dropout=0.0,
    )
    model = MarianMTModel._from_config(config, attn_implementation=attn_implementation).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.5)  # exercised so that the output bias is really carried over
    return model


def marian_batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 59, (3, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = 59
    input_ids[:, -1][attention_mask[:, -1] == 1] = 0
    return input_ids, attention_mask


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_logits_match_marian_on_a_padded_batch(attn_implementation):
    marian = make_marian(attn_implementation)
    ours = marian_to_scratch(marian)
    ours.set_attn_implementation(attn_implementation)
    input_ids, attention_mask = marian_batch()
    decoder_input_ids = torch.randint(1, 59, (3, 7), generator=torch.Generator().manual_seed(2))
    expected = marian(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    actual = ours(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_generate_matches_marian(num_beams):
    marian = make_marian()
    ours = marian_to_scratch(marian)
    input_ids, attention_mask = marian_batch()
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=12, num_beams=num_beams, do_sample=False)
    assert torch.equal(ours.generate(input_ids, **kwargs), marian.generate(input_ids, **kwargs))


def test_port_carries_architecture_and_generation_settings():
    marian = make_marian()
    marian.generation_config.num_beams = 3
    ours = marian_to_scratch(marian)
    assert ours.config.activation_function == "silu" and ours.config.position_embedding == "learned"
    assert ours.config.pad_token_id == 59 and ours.config.decoder_start_token_id == 59
    assert ours.generation_config.num_beams == 3
    assert ours.lm_head.weight is ours.model.shared.weight


def test_unportable_marian_is_refused():
    config = MarianConfig(vocab_size=60, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=128)
    with pytest.raises(ValueError, match="encoder_ffn_dim=64 != decoder_ffn_dim=128"):
        marian_config_to_scratch(config)
