"""ScratchTransformerLMModel / ForCausalLM: outputs, the shifted loss, causality, the KV cache, left padding."""

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from scratchformers.compat import cache_of
from scratchformers.configuration_causal_lm import ScratchTransformerLMConfig
from scratchformers.modeling_causal_lm import ScratchTransformerForCausalLM, ScratchTransformerLMModel

PAD, BOS, EOS = 0, 1, 2
VARIANTS = {
    "gpt2": {},
    "post-norm, sinusoidal": dict(norm_position="post", position_embedding="sinusoidal", activation_function="relu"),
    "rotary, swiglu, rmsnorm, qk-norm, gqa": dict(position_embedding="rotary", activation_function="swiglu",
                                                   norm_type="rmsnorm", qk_norm=True, num_key_value_heads=2),
}


def tiny_lm_config(**overrides) -> ScratchTransformerLMConfig:
    values = dict(vocab_size=40, d_model=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, dropout=0.0,
                  attention_dropout=0.0, max_position_embeddings=64, pad_token_id=PAD, bos_token_id=BOS,
                  eos_token_id=EOS, init_std=0.3)
    values.update(overrides)
    return ScratchTransformerLMConfig(**values)


def make_lm(attn_implementation: str = "eager", **overrides) -> ScratchTransformerForCausalLM:
    torch.manual_seed(0)
    return ScratchTransformerForCausalLM._from_config(tiny_lm_config(**overrides),
                                                      attn_implementation=attn_implementation).eval()


def left_padded_batch() -> dict[str, torch.Tensor]:
    """Three prompts of lengths 8, 5 and 2, left-padded with pad id 0 (as GPT-2 is batched for generation)."""
    input_ids = torch.randint(3, 40, (3, 8), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0
    attention_mask[2, :6] = 0
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, PAD), "attention_mask": attention_mask}


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row counts positions from its first token, as ``generate`` passes them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def test_outputs_are_hugging_face_outputs_and_the_head_is_tied():
    model = make_lm()
    batch = left_padded_batch()
    out = model(**batch)
    assert isinstance(out, CausalLMOutputWithPast) and out.logits.shape == (3, 8, 40)
    base = model.model(**batch)
    assert isinstance(model.model, ScratchTransformerLMModel) and isinstance(base, BaseModelOutputWithPast)
    torch.testing.assert_close(out.logits, model.lm_head(base.last_hidden_state))
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert cache_of(out).get_seq_length() == 8
    assert not model.config.is_encoder_decoder


def test_loss_is_the_next_token_cross_entropy_with_labels_shifted_inside():
    model = make_lm()
    input_ids = left_padded_batch()["input_ids"]
    labels = input_ids.masked_fill(input_ids == PAD, -100)
    out = model(input_ids=input_ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 40), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert cache_of(out) is None  # training builds no cache


def test_label_smoothing_acts_in_train_mode_only():
    model = make_lm(label_smoothing=0.1)
    input_ids = left_padded_batch()["input_ids"]
    plain = torch.nn.functional.cross_entropy(model(input_ids).logits[:, :-1].reshape(-1, 40), input_ids[:, 1:].reshape(-1))
    torch.testing.assert_close(model(input_ids, labels=input_ids).loss, plain)
    assert not torch.allclose(model.train()(input_ids, labels=input_ids).loss, plain)


def test_a_token_never_sees_the_tokens_after_it():
    model = make_lm()
    input_ids = left_padded_batch()["input_ids"][:1]
    changed = input_ids.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 40
    before, after = model(input_ids).logits, model(changed).logits
    torch.testing.assert_close(before[:, :5], after[:, :5], atol=1e-6, rtol=0)
    assert (before[:, 5:] - after[:, 5:]).abs().max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_a_left_padded_row_computes_what_the_prompt_computes_alone(variant, attn_implementation):
    model = make_lm(attn_implementation, **VARIANTS[variant])
    batch = left_padded_batch()
    logits = model(**batch, position_ids=positions(batch["attention_mask"])).logits
    for row in range(3):
        tokens = batch["input_ids"][row][batch["attention_mask"][row] == 1][None]
        alone = model(tokens).logits[0]
        torch.testing.assert_close(logits[row, -tokens.shape[1]:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_token_by_token_forward_equals_the_full_forward(variant):
    model = make_lm(**VARIANTS[variant])
    batch = left_padded_batch()
    mask, ids = batch["attention_mask"], batch["input_ids"]
    full = model(**batch, position_ids=positions(mask)).logits
    out = model(input_ids=ids[:, :4], attention_mask=mask[:, :4], position_ids=positions(mask)[:, :4])
    steps = [out.logits]
    for t in range(4, 8):
        out = model(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=positions(mask)[:, t:t + 1],
                    cache=cache_of(out))
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1)[mask == 1], full[mask == 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_continues_a_left_padded_prompt_as_it_continues_it_alone(variant):
    model = make_lm(**VARIANTS[variant])
    batch = left_padded_batch()
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=PAD)
    together = model.generate(**batch, **settings)
    for row in range(3):
        tokens = batch["input_ids"][row][batch["attention_mask"][row] == 1][None]
        alone = model.generate(tokens, **settings)
        assert together[row, 8:].tolist() == alone[0, tokens.shape[1]:].tolist()
    assert torch.equal(model.generate(**batch, use_cache=False, **settings), together)


def test_output_hidden_states_and_attentions():
    model = make_lm()
    batch = left_padded_batch()
    out = model(**batch, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    weights = out.attentions[0]
    assert weights.shape == (3, 4, 8, 8)
    tokens = batch["attention_mask"][:, None, :, None]  # the queries of real tokens (a pad's own output is unused)
    assert torch.all(weights.triu(1) * tokens == 0)  # causal: nothing above the diagonal
    assert torch.all(weights[1, :, 3:, :3] == 0)  # the left pads of row 1 get no weight from its tokens


def test_return_dict_false_gives_a_tuple():
    model = make_lm()
    batch = left_padded_batch()
    logits, cache = model(**batch, return_dict=False)
    torch.testing.assert_close(logits, model(**batch).logits)
    assert cache.get_seq_length() == 8


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_attention_heads=5), "d_model=32 must be divisible by num_attention_heads=5"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
        (dict(activation_function="tanh"), "activation_function='tanh' is not supported"),
        (dict(num_key_value_heads=3), "num_attention_heads=4 must be a multiple of num_key_value_heads=3"),
        (dict(eos_token_id=40), r"eos_token_id=40 must be token ids in \[0, vocab_size=40\)"),
    ],
)
def test_invalid_config_values_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_lm_config(**overrides)


def test_labels_of_another_shape_are_refused_with_the_fix():
    model = make_lm()
    input_ids = left_padded_batch()["input_ids"]
    with pytest.raises(ValueError, match=r"labels have shape \(3, 7\).*labels=input_ids"):
        model(input_ids, labels=input_ids[:, 1:])


def test_a_prompt_longer_than_the_position_table_is_refused():
    model = make_lm(max_position_embeddings=8)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=8"):
        model(torch.full((1, 9), 5))
