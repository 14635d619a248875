"""ScratchTransformerLMModel / ForCausalLM: outputs, the shifted loss, causality, the KV cache, left padding."""

import copy
import json

import pytest
import torch
from tokenizers import processors
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, pipeline
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

import scratchformers as sf
from scratchformers.compat import cache_of
from scratchformers.generation import constrained_beam_search, diverse_beam_search
from scratchformers.configuration_causal_lm import ScratchTransformerLMConfig
from scratchformers.modeling_causal_lm import ScratchTransformerForCausalLM, ScratchTransformerLMModel
from scratchformers.quantization import Int8Linear

from _generation_utils import contains
from conftest import enable_activation_checkpointing, run_without_package
from test_fast_decoding import StepCounter
from test_generation import transformers_beam_search
from translation_fixtures import corpus

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


def test_torch_compile_traces_the_training_step_without_graph_breaks():
    import torch._dynamo

    model = make_lm(num_hidden_layers=1).train()
    batch = left_padded_batch()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    explanation = torch._dynamo.explain(model)(**batch, labels=labels)
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons


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


BAD_INPUTS = {
    "token_past_the_vocabulary": (dict(input_ids=torch.tensor([[5, 40]])), r"input_ids contain token ids outside \[0, 40\)"),
    "prompt_past_the_position_table": (dict(input_ids=torch.full((1, 65), 5)), "exceeds max_position_embeddings=64"),
    "positions_past_the_table": (dict(input_ids=torch.tensor([[5, 6]]), position_ids=torch.tensor([[0, 64]])),
                                 "exceeds max_position_embeddings=64"),
    "mask_of_another_length": (dict(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.tensor([[1, 1]])),
                               "attention_mask covers 2 positions but there are 3 keys"),
    "ids_and_embeddings": (dict(input_ids=torch.tensor([[5]]), inputs_embeds=torch.zeros(1, 1, 32)),
                           "Pass exactly one of input_ids or inputs_embeds"),
}


@pytest.mark.parametrize("inputs, message", BAD_INPUTS.values(), ids=BAD_INPUTS)
def test_bad_inputs_give_clear_errors(inputs, message):
    with pytest.raises(ValueError, match=message):
        make_lm()(**inputs)


@pytest.mark.parametrize("search", [dict(), dict(num_beams=3)], ids=["greedy", "beam"])
def test_generate_past_the_position_table_fails_before_decoding(search):
    model = make_lm()
    batch = left_padded_batch()
    with pytest.raises(ValueError, match=r"max_length=68 .* pass max_new_tokens <= 57\."):
        model.generate(**batch, max_new_tokens=60, pad_token_id=PAD, **search)
    out = model.generate(**batch, max_new_tokens=57, min_new_tokens=57, pad_token_id=PAD, **search)
    assert out.shape[1] == 8 + 57  # the last token needs no position of its own


def test_gradient_checkpointing_gives_the_same_gradients():
    input_ids = left_padded_batch()["input_ids"]
    grads = []
    for checkpointing in (False, True):
        model = make_lm().train()
        if checkpointing:
            enable_activation_checkpointing(model)
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        model(input_ids, labels=input_ids).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_a_static_cache_generates_what_the_dynamic_cache_generates(attn_implementation):
    model = make_lm(attn_implementation)
    batch = left_padded_batch()
    settings = dict(max_new_tokens=6, min_new_tokens=6, pad_token_id=PAD)
    expected = model.generate(**batch, **settings)
    assert torch.equal(model.generate(**batch, cache_implementation="static", **settings), expected)


def test_generate_from_inputs_embeds_continues_as_from_input_ids():
    model = make_lm()
    batch = left_padded_batch()
    settings = dict(max_new_tokens=5, min_new_tokens=5, pad_token_id=PAD)
    from_ids = model.generate(**batch, **settings)[:, 8:]
    embeds = model.get_input_embeddings()(batch["input_ids"])
    assert torch.equal(model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"], **settings), from_ids)


@pytest.mark.parametrize("tie", [True, False])
def test_tied_and_untied_heads_round_trip(tmp_path, tie):
    model = make_lm(tie_word_embeddings=tie)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tie
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert (loaded.lm_head.weight is loaded.get_input_embeddings().weight) == tie
    input_ids = left_padded_batch()["input_ids"]
    torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# generate(): the modes beyond transformers' core (GPT-2 parity of the others: test_convert.py)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("function", [diverse_beam_search, constrained_beam_search])
def test_one_group_and_no_constraints_is_core_beam_search_on_left_padded_prompts(function):
    model = make_lm()
    batch = left_padded_batch()
    settings = dict(num_beams=4, num_return_sequences=2, length_penalty=0.5, max_new_tokens=6, pad_token_id=PAD,
                    return_dict_in_generate=True, output_scores=True)
    core = model.generate(**batch, custom_generate=transformers_beam_search, **settings)
    ours = model.generate(**batch, custom_generate=function, **settings)
    assert torch.equal(ours.sequences, core.sequences)
    torch.testing.assert_close(ours.sequences_scores, core.sequences_scores)


def test_constrained_beams_contain_the_phrase_and_diverse_groups_start_differently():
    model = make_lm()
    batch = left_padded_batch()
    settings = dict(num_beams=4, num_return_sequences=4, max_new_tokens=6, pad_token_id=PAD)
    plain = model.generate(**batch, **settings)[:, 8:].tolist()
    assert not all(contains(row, [7, 8]) for row in plain)
    constrained = model.generate(**batch, force_words_ids=[[7, 8]], **settings)[:, 8:].tolist()
    assert all(contains(row, [7, 8]) for row in constrained)
    diverse = model.generate(**batch, num_beam_groups=2, diversity_penalty=5.0, **settings)[:, 8]
    plain_first = torch.tensor(plain)[:, 0]
    for row in range(3):
        firsts = set(diverse[4 * row:4 * row + 4].tolist())
        assert len(firsts) >= 2 and len(firsts) >= len(set(plain_first[4 * row:4 * row + 4].tolist()))



@pytest.mark.parametrize("mode", [dict(force_words_ids=[[7, 8]]), dict(num_beam_groups=2, diversity_penalty=5.0)],
                         ids=["constrained", "diverse"])
def test_diverse_and_constrained_beams_decode_fast_to_the_reference_tokens(mode, monkeypatch):
    batch = left_padded_batch()
    settings = dict(num_beams=4, num_return_sequences=4, max_new_tokens=6, pad_token_id=PAD, **mode)
    reference = make_lm().generate(**batch, **settings)
    counter = StepCounter(monkeypatch)
    assert torch.equal(make_lm(forward_implementation="fast").generate(**batch, **settings), reference)
    assert counter.calls > 0  # through FastDecoder


# --------------------------------------------------------------------------------------------------------------
# Saved, shared, served: Auto classes, remote code, the stock text-generation pipeline, int8
# --------------------------------------------------------------------------------------------------------------
PROMPTS = ["the red cat", "a big dog ran home"]


def save_lm(directory, **overrides):
    """A tiny LM and a byte-level BPE tokenizer that adds no EOS to a prompt (as GPT-2's), saved together."""
    tokenizer = sf.train_tokenizer(corpus(), vocab_size=300, min_frequency=1)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    model = make_lm(vocab_size=len(tokenizer), **overrides)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def test_a_saved_lm_loads_with_the_auto_classes(tmp_path):
    model, _ = save_lm(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "scratch_transformer_lm"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_causal_lm.ScratchTransformerForCausalLM"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ScratchTransformerLMConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(loaded) is ScratchTransformerForCausalLM
    batch = left_padded_batch()
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)
    assert type(AutoModel.from_pretrained(tmp_path)) is ScratchTransformerLMModel


def test_the_stock_text_generation_pipeline_continues_prompts_as_generate_does(tmp_path):
    model, tokenizer = save_lm(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    settings = dict(max_new_tokens=8, do_sample=False)
    expected = [tokenizer.decode(model.generate(**tokenizer(p, return_tensors="pt"), **settings)[0]) for p in PROMPTS]
    assert [generator(p, **settings)[0]["generated_text"] for p in PROMPTS] == expected
    batched = generator(PROMPTS, batch_size=2, **settings)  # padded together
    assert [out[0]["generated_text"] for out in batched] == expected


def test_remote_code_in_a_process_without_the_package(tmp_path):
    model, tokenizer = save_lm(tmp_path / "lm", position_embedding="rotary", activation_function="swiglu",
                               qk_norm=True, num_key_value_heads=2)
    batch = left_padded_batch()
    torch.save(batch, tmp_path / "batch.pt")
    directory = str(tmp_path / "lm")
    run_without_package(f"""
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, pipeline
        batch = torch.load({str(tmp_path / 'batch.pt')!r})
        model = AutoModelForCausalLM.from_pretrained({directory!r}, trust_remote_code=True,
                                                     attn_implementation="eager").eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(AutoModel.from_pretrained({directory!r}, trust_remote_code=True)).__name__ == "ScratchTransformerLMModel"
        settings = dict(max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
        with torch.no_grad():
            out = {{"logits": model(**batch).logits, "greedy": model.generate(**batch, **settings),
                    "beam": model.generate(**batch, num_beams=3, **settings)}}
        generator = pipeline("text-generation", model={directory!r}, trust_remote_code=True)
        out["text"] = generator({PROMPTS[0]!r}, max_new_tokens=8, do_sample=False)[0]["generated_text"]
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """, tmp_path)
    remote = torch.load(tmp_path / "out.pt")
    settings = dict(max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    with torch.no_grad():
        torch.testing.assert_close(remote["logits"], model(**batch).logits, atol=0, rtol=0)
    assert torch.equal(remote["greedy"], model.generate(**batch, **settings))
    assert torch.equal(remote["beam"], model.generate(**batch, num_beams=3, **settings))
    prompt = tokenizer(PROMPTS[0], return_tensors="pt")
    assert remote["text"] == tokenizer.decode(model.generate(**prompt, max_new_tokens=8, do_sample=False)[0])


def test_a_saved_int8_lm_loads_as_int8_and_generates_the_same(tmp_path):
    model, tokenizer = save_lm(tmp_path / "fp32")
    int8 = sf.quantize_int8(copy.deepcopy(model))
    assert not any(isinstance(m, nn.Linear) for m in int8.modules())
    assert isinstance(int8.lm_head, Int8Linear) and not int8.config.tie_word_embeddings
    torch.testing.assert_close(int8.lm_head.dequantized_weight(), model.lm_head.weight, atol=0.02, rtol=0)
    prompt = tokenizer(PROMPTS[1], return_tensors="pt")
    with torch.no_grad():
        fp32_logits = model(**prompt).logits
        torch.testing.assert_close(int8(**prompt).logits, fp32_logits, atol=0.1 * fp32_logits.abs().max().item(), rtol=0)
    expected = {search: int8.generate(**prompt, max_new_tokens=8, **dict(search)) for search in ((), (("num_beams", 3),))}
    int8.save_pretrained(tmp_path / "int8")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "int8")
    assert loaded.config.quantization == "int8" and isinstance(loaded.model.layers[0].ffn.fc1, Int8Linear)
    for search, output in expected.items():
        assert torch.equal(loaded.generate(**prompt, max_new_tokens=8, **dict(search)), output)
