"""Agreement with independent implementations: a random MarianMTModel and a random GPT2LMHeadModel ported into
our code (logits, and every generate() mode with the reference and the fast decoding)."""

import pytest
import torch
from transformers import MarianConfig, MarianMTModel

from scratchformers.convert import gpt2_config_to_scratch, gpt2_to_scratch, marian_config_to_scratch, marian_to_scratch

from test_fast_decoding import StepCounter


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


# --------------------------------------------------------------------------------------------------------------
# GPT-2 -> ScratchTransformerForCausalLM
# --------------------------------------------------------------------------------------------------------------
GPT2_EOS = 98


def make_gpt2(attn_implementation: str = "eager"):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=GPT2_EOS, eos_token_id=GPT2_EOS,
                        initializer_range=0.2)  # peaked distributions: generate's choices are clear-cut
    return GPT2LMHeadModel._from_config(config, attn_implementation=attn_implementation).eval()


def gpt2_batch():
    """Three prompts of lengths 9, 6 and 3, left-padded with the EOS token (GPT-2 has no pad token)."""
    input_ids = torch.randint(0, GPT2_EOS, (3, 9), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0
    attention_mask[2, :6] = 0
    return input_ids.masked_fill(attention_mask == 0, GPT2_EOS), attention_mask


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_logits_match_gpt2_on_a_left_padded_batch(attn_implementation):
    gpt2 = make_gpt2(attn_implementation)
    ours = gpt2_to_scratch(gpt2)
    ours.set_attn_implementation(attn_implementation)
    input_ids, attention_mask = gpt2_batch()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    expected, actual = gpt2(**kwargs).logits, ours(**kwargs).logits
    torch.testing.assert_close(actual[attention_mask == 1], expected[attention_mask == 1], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours(input_ids[:1]).logits, gpt2(input_ids[:1]).logits, atol=1e-4, rtol=0)
    assert ours(input_ids, labels=input_ids).loss.item() == pytest.approx(gpt2(input_ids, labels=input_ids).loss.item(), abs=1e-5)


# The generate() chapter: every parameter, on converted weights, against GPT-2 itself (sampling with the same seed).
GENERATE_SETTINGS = {
    "greedy": dict(do_sample=False),
    "repetition_penalty": dict(repetition_penalty=1.5),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
    "eos_bias_and_min_length": dict(sequence_bias={(GPT2_EOS,): 4.0}, min_new_tokens=4),
    "min_max_length": dict(min_length=12, max_length=15, sequence_bias={(GPT2_EOS,): 4.0}),
    "beam_length_penalty": dict(num_beams=3, length_penalty=0.7, sequence_bias={(GPT2_EOS,): 2.0}),
    "beam_return_sequences": dict(num_beams=4, num_return_sequences=2, early_stopping=True),
    "sampling": dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.8),
    "sampling_return_sequences": dict(do_sample=True, top_p=0.7, num_return_sequences=3),
    "beam_sampling": dict(do_sample=True, num_beams=3, temperature=1.5),
}


@pytest.mark.parametrize("forward_implementation", ["reference", "fast"])
@pytest.mark.parametrize("settings", GENERATE_SETTINGS.values(), ids=GENERATE_SETTINGS.keys())
def test_generate_matches_gpt2(settings, forward_implementation, monkeypatch):
    gpt2 = make_gpt2()
    ours = gpt2_to_scratch(gpt2)
    ours.config.forward_implementation = forward_implementation
    counter = StepCounter(monkeypatch)
    input_ids, attention_mask = gpt2_batch()
    kwargs = dict(attention_mask=attention_mask, pad_token_id=GPT2_EOS, **{"max_new_tokens": 10, **settings})
    torch.manual_seed(7)
    expected = gpt2.generate(input_ids, **kwargs)
    torch.manual_seed(7)
    assert torch.equal(ours.generate(input_ids, **kwargs), expected)
    assert (counter.calls > 0) == (forward_implementation == "fast")  # the fast path ran: FastDecoder's steps


def test_gpt2_port_carries_the_architecture():
    ours = gpt2_to_scratch(make_gpt2())
    config = ours.config
    assert (config.activation_function, config.position_embedding, config.norm_position) == ("gelu_new", "learned", "pre")
    assert config.ffn_dim == 128 and not config.scale_embedding and config.pad_token_id is None
    assert ours.lm_head.weight is ours.model.embeddings.embed_tokens.weight


def test_unportable_gpt2_is_refused():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True cannot be ported"):
        gpt2_config_to_scratch(GPT2Config(n_embd=32, n_layer=1, n_head=4, scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="activation 'quick_gelu' has no counterpart"):
        gpt2_config_to_scratch(GPT2Config(n_embd=32, n_layer=1, n_head=4, activation_function="quick_gelu"))
