"""fast_decoding: every decoding mode over ``FastDecoder`` gives the reference stepper's tokens, for every
architecture variant the step covers and the generate arguments it honours; what it does not cover falls back to the
reference. Also cpu_weight_layout (the weight copies the step reads) and decoding.py's native behaviour: ordinary
tensors out, a replaced ``forward`` honoured, the engine's hooks in the mixin, not in the model class."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

import scratchformers as sf
from scratchformers import cpu_weight_layout, fast_decoding
from scratchformers.compat import cache_of
from scratchformers.cpu_weight_layout import EncoderLinears, WeightLayouts, linear_product
from scratchformers.fast_decoding import FastDecoder, unsupported_reason
from scratchformers.modeling_transformer import ScratchTransformerDecoder

from _generation_utils import EOS, make_model, train_reverser
from conftest import tiny_transformer_config


def sources(seed: int = 0, batch: int = 3, length: int = 7, vocab: int = 40):
    """Right-padded sources of lengths ``length``, ``length - 2``, ..."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (batch, length), generator=generator)
    lengths = torch.tensor([max(1, length - 2 * i) for i in range(batch)])
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask}


class StepCounter:
    """Counts ``FastDecoder.step`` calls (is the fast path taken?)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = FastDecoder.step

        def counted(decoder, tokens, **kwargs):
            self.calls += 1
            return original(decoder, tokens, **kwargs)

        monkeypatch.setattr(FastDecoder, "step", counted)


def both(model, **kwargs):
    """``generate(**kwargs)`` with the reference and with the fast setting (on copies of ``model``)."""
    outputs = []
    for implementation in ("reference", "fast"):
        twin = copy.deepcopy(model)
        twin.config.forward_implementation = implementation
        torch.manual_seed(0)
        outputs.append(twin.generate(**kwargs))
    return outputs


def tiny(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_transformer_config(init_std=0.3, **overrides)
    return sf.ScratchTransformerForConditionalGeneration(config).eval()


VARIANTS = {
    "paper (post-norm, sinusoidal, relu)": {},
    "pre-norm, rmsnorm, learned positions, gelu": dict(norm_position="pre", norm_type="rmsnorm",
                                                       position_embedding="learned", activation_function="gelu"),
    "rotary, swiglu, qk-norm": dict(position_embedding="rotary", activation_function="swiglu", qk_norm=True),
    "grouped-query attention, untied": dict(num_key_value_heads=2, tie_word_embeddings=False),
    "sdpa": dict(attn_implementation="sdpa"),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_beams", [1, 4])
def test_fast_decoding_gives_the_reference_tokens_for_every_variant(variant, num_beams, monkeypatch):
    model = tiny(**VARIANTS[variant])
    counter = StepCounter(monkeypatch)
    reference, fast = both(model, **sources(), num_beams=num_beams, max_new_tokens=12, min_new_tokens=3)
    assert torch.equal(reference, fast)
    assert counter.calls > 0  # the fast path ran


@pytest.mark.parametrize("arguments", [
    dict(num_beams=4, length_penalty=0.6, early_stopping=True, num_return_sequences=2),
    dict(num_beams=3, length_penalty=2.0, early_stopping="never"),
    dict(num_beams=1, repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(num_beams=2, sequence_bias={(5,): 3.0, (6, 7): -2.0}),
    dict(num_beams=1, decoder_input_ids=torch.tensor([[0, 5], [0, 6], [0, 7]])),  # a two-token decoder prompt
], ids=["beam-options", "never-stop-early", "penalties", "sequence-bias", "decoder-prompt"])
def test_fast_decoding_honours_generate_arguments_on_a_half_trained_model(arguments, monkeypatch):
    model = train_reverser(make_model(layers=2, vocab_size=16, d_model=32, init_std=0.1), steps=60)
    inputs = sources(seed=1, vocab=16)
    counter = StepCounter(monkeypatch)
    reference, fast = both(model, **inputs, max_new_tokens=10, **arguments)
    assert counter.calls > 0
    assert torch.equal(reference, fast)
    assert (fast == EOS).any()  # sequences end at different lengths: the EOS and padding logic matter


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft reads it
def test_peft_and_int8_layers_run_as_modules_inside_the_fast_step(monkeypatch):
    peft = pytest.importorskip("peft")
    model = tiny()
    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, target_modules=["q_proj", "fc1"],
                                                                    init_lora_weights=False)).eval()
    int8 = sf.quantize_int8(copy.deepcopy(model))
    counter = StepCounter(monkeypatch)
    for candidate in (lora, int8):
        inner = candidate.get_base_model() if hasattr(candidate, "get_base_model") else candidate
        outputs = []
        for implementation in ("reference", "fast"):
            inner.config.forward_implementation = implementation
            outputs.append(candidate.generate(**sources(), num_beams=2, max_new_tokens=8))
        assert torch.equal(*outputs)
    assert counter.calls > 0


def test_every_mode_runs_over_the_fast_step(monkeypatch):
    model = tiny(forward_implementation="fast")
    counter = StepCounter(monkeypatch)
    inputs = sources()
    for kwargs in (dict(do_sample=True), dict(num_beams=2, do_sample=True),
                   dict(num_beams=2, return_dict_in_generate=True, output_scores=True),
                   dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0),
                   dict(num_beams=2, force_words_ids=[[5]])):
        counter.calls = 0
        model.generate(**inputs, max_new_tokens=4, **kwargs)
        assert counter.calls > 0, kwargs


def test_settings_the_step_does_not_cover_fall_back_to_the_reference(monkeypatch):
    model = tiny(forward_implementation="fast")
    counter = StepCounter(monkeypatch)
    model.generate(**sources(), max_new_tokens=4, return_dict_in_generate=True, output_attentions=True)
    assert counter.calls == 0
    config = model.generation_config
    kwargs = {"encoder_outputs": (torch.zeros(1),)}
    assert unsupported_reason(model, config, kwargs) is None
    attentions = config.__class__(return_dict_in_generate=True, output_attentions=True)
    assert "attentions" in unsupported_reason(model, attentions, kwargs)
    model.train()
    assert "training" in unsupported_reason(model, config, kwargs)
    model.eval()
    handle = model.get_decoder().layers[0].register_forward_hook(lambda *args: None)  # e.g. a user's probe
    assert "hooks" in unsupported_reason(model, config, kwargs)
    handle.remove()
    model.config.forward_implementation = "reference"
    assert "forward_implementation" in unsupported_reason(model, config, {})


def test_greedy_fast_decoding_streams_every_token():
    class Collect:
        def __init__(self):
            self.tokens, self.ended = [], False

        def put(self, value):
            self.tokens.append(value.tolist())

        def end(self):
            self.ended = True

    model = tiny(forward_implementation="fast")
    streamer = Collect()
    inputs = sources(batch=1)
    output = model.generate(**inputs, max_new_tokens=6, streamer=streamer)
    assert streamer.ended and [t for step in streamer.tokens[1:] for t in step] == output[0, 1:].tolist()


def test_logits_processors_see_every_step_of_the_fast_path():
    seen = []

    class Record(LogitsProcessor):
        def __call__(self, input_ids, scores):
            seen.append(input_ids.shape)
            return scores

    model = tiny(forward_implementation="fast")
    output = model.generate(**sources(), max_new_tokens=5, min_new_tokens=5, logits_processor=LogitsProcessorList([Record()]))
    assert seen == [torch.Size([3, n]) for n in range(1, output.shape[1])]


@pytest.mark.parametrize("rows", [5, None], ids=["packed", "as stored"])
@pytest.mark.parametrize("avx512", [False, True], ids=["no AVX-512", "AVX-512"])
@pytest.mark.parametrize("shape", [(24, 40), (300, 260)], ids=["small", "large"])
def test_linear_product_equals_the_module_and_copies_live_for_one_call(shape, avx512, rows, monkeypatch):
    monkeypatch.setattr(cpu_weight_layout, "has_avx512", lambda: avx512)  # both layouts, on any CPU
    linear = nn.Linear(*shape)
    x = torch.randn(5, shape[0])
    with torch.no_grad():
        layouts = WeightLayouts()  # one generate call's copies
        torch.testing.assert_close(layouts.call(linear, rows)(x), linear(x), rtol=1e-5, atol=1e-5)
        assert layouts.call(linear, rows) is layouts.call(linear, rows)  # made once per call
        linear.weight.mul_(2.0)  # an optimizer step between two calls: the next call's copy follows
        torch.testing.assert_close(WeightLayouts().call(linear, rows)(x), linear(x), rtol=1e-5, atol=1e-5)
    assert linear_product([linear], rows) is None  # with gradients enabled: the module itself


def test_linear_product_under_bf16_autocast_computes_what_autocast_computes():
    linear = nn.Linear(64, 300)
    x = torch.randn(5, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        product, expected = linear_product([linear], rows=5), linear(x)
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # no oneDNN bf16 on this CPU: the module itself
            assert product is None
            return
        output = product(x)
    assert output.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(output, expected, rtol=1e-2, atol=1e-2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        assert linear_product([linear], rows=5) is None  # only bf16 autocast is laid out


def test_encoder_linears_mode_runs_plain_layers_through_onednn_and_leaves_the_rest(monkeypatch):
    encoder = tiny().get_encoder()
    inputs = sources()
    hooked = encoder.layers[0].ffn.fc1
    hooked.register_forward_hook(lambda module, args, output: output * 0.5)  # a user's hook still takes effect
    calls = []
    with torch.no_grad():
        expected = encoder(**inputs).last_hidden_state
        mode = EncoderLinears(encoder, WeightLayouts())
        for weight, bias, product in mode.products.values():  # count the packed products that run
            mode.products[id(weight)] = (weight, bias, lambda x, product=product: calls.append(1) or product(x))
        with mode:
            packed = encoder(**inputs).last_hidden_state
    linears = [m for m in encoder.modules() if type(m) is nn.Linear]
    assert len(mode.products) == len(linears) - 1  # all but the hooked one
    assert len(calls) == len(linears) - 1
    torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-5)


def test_fast_generate_runs_the_encoder_through_encoder_linears(monkeypatch):
    modes = []
    original = EncoderLinears.__init__
    monkeypatch.setattr(EncoderLinears, "__init__", lambda self, *a: modes.append(self) or original(self, *a))
    model = tiny()
    reference, fast = both(model, **sources(), max_new_tokens=6)
    assert torch.equal(reference, fast)
    assert len(modes) == 1 and modes[0].products  # once, in the fast model's generate only
    with torch.no_grad():
        model.config.forward_implementation = "fast"
        model.get_encoder()(**sources())  # outside generate: the reference products
    assert len(modes) == 1


def test_fast_decoding_under_bf16_autocast_gives_the_reference_tokens(monkeypatch):
    model = train_reverser(make_model(layers=2, vocab_size=16, d_model=32, init_std=0.1), steps=60)
    counter = StepCounter(monkeypatch)
    for num_beams in (1, 3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference, fast = both(model, **sources(seed=1, vocab=16), max_new_tokens=10, num_beams=num_beams)
        assert torch.equal(reference, fast)
    assert counter.calls > 0


def test_fast_decoding_module_is_shipped_with_saved_models(tmp_path):
    model = tiny(forward_implementation="fast")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "fast_decoding.py").is_file()
    assert fast_decoding.__name__ == "scratchformers.fast_decoding"


@pytest.mark.parametrize("arguments", [dict(num_beams=1), dict(num_beams=3), dict(num_beams=3, early_stopping=True),
                                       dict(num_beams=3, num_return_sequences=3, length_penalty=0.0)],
                         ids=["greedy", "beam", "beam-early-stopping", "beam-all-returned"])
def test_rows_whose_search_is_over_leave_the_batch_without_changing_the_output(arguments, monkeypatch):
    model = train_reverser(make_model(layers=2, vocab_size=16, d_model=32, init_std=0.1), steps=80)
    inputs = sources(seed=2, batch=5, length=9, vocab=16)  # lengths 9, 7, 5, 3, 1: the outputs end apart
    kept = []
    original = FastDecoder.keep

    def keep(decoder, rows):
        original(decoder, rows)
        kept.append(sorted(set((decoder.computed // decoder.rows_per_source).tolist())))  # the sources computed

    monkeypatch.setattr(FastDecoder, "keep", keep)
    reference, fast = both(model, **inputs, max_new_tokens=20, **arguments)
    assert kept and len(kept[-1]) < 5  # some sources were dropped before the end
    assert all(set(later) < set(earlier) for earlier, later in zip(kept, kept[1:]))
    assert torch.equal(reference, fast)


def test_rows_stay_in_the_batch_where_they_depend_on_each_other():
    """int8's activations share one scale per product: dropping rows would change the others' outputs."""
    model = train_reverser(make_model(layers=2, vocab_size=16, d_model=32, init_std=0.1), steps=80)
    int8 = sf.quantize_int8(model)
    inputs = sources(seed=2, batch=5, length=9, vocab=16)
    outputs = []
    for implementation in ("reference", "fast"):
        int8.config.forward_implementation = implementation
        outputs.append(int8.generate(**inputs, num_beams=3, max_new_tokens=20))
    assert torch.equal(*outputs)


def test_fast_decoding_of_a_bf16_model_gives_the_reference_tokens(monkeypatch):
    model = train_reverser(make_model(layers=2, vocab_size=16, d_model=32, init_std=0.1), steps=60).to(torch.bfloat16)
    counter = StepCounter(monkeypatch)
    for num_beams in (1, 3):
        reference, fast = both(model, **sources(seed=1, vocab=16), max_new_tokens=10, num_beams=num_beams)
        assert torch.equal(reference, fast)
    assert counter.calls > 0


def tiny_lm(seed: int = 0, **overrides) -> sf.ScratchTransformerForCausalLM:
    torch.manual_seed(seed)
    config = sf.ScratchTransformerLMConfig(
        vocab_size=40, d_model=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, dropout=0.0,
        attention_dropout=0.0, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        init_std=0.3, **overrides)
    return sf.ScratchTransformerForCausalLM(config).eval()


LM_VARIANTS = {
    "gpt2 (pre-norm, learned positions, gelu)": dict(),
    "rotary, swiglu, rmsnorm, qk-norm, gqa": dict(position_embedding="rotary", activation_function="swiglu",
                                                   norm_type="rmsnorm", qk_norm=True, num_key_value_heads=2),
}


@pytest.mark.parametrize("variant", LM_VARIANTS)
@pytest.mark.parametrize("mode", [dict(), dict(num_beams=3), dict(do_sample=True, top_k=5, num_return_sequences=2)],
                         ids=["greedy", "beam", "sampling"])
def test_a_decoder_only_model_decodes_fast_to_the_reference_tokens_on_left_padding(variant, mode, monkeypatch):
    """The same FastDecoder serves a stack without cross-attention: padded keys masked, positions from the mask."""
    model = tiny_lm(**LM_VARIANTS[variant])
    input_ids = torch.randint(3, 40, (3, 8), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0
    attention_mask[2, :6] = 0
    counter = StepCounter(monkeypatch)
    reference, fast = both(model, input_ids=input_ids.masked_fill(attention_mask == 0, 0),
                           attention_mask=attention_mask, max_new_tokens=8, min_new_tokens=8, **mode)
    assert counter.calls > 0
    assert torch.equal(reference, fast)


def left_padded_prompts(lengths: tuple[int, ...] = (9, 5, 1, 7), width: int = 9) -> dict[str, torch.Tensor]:
    """Prompts of ``lengths`` tokens, left-padded to ``width``."""
    input_ids = torch.randint(3, 40, (len(lengths), width), generator=torch.Generator().manual_seed(1))
    attention_mask = (torch.arange(width)[None] >= width - torch.tensor(lengths)[:, None]).long()
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask}


LM_SEARCHES = {
    "greedy": dict(num_beams=1, do_sample=False),
    "beam4": dict(num_beams=4, do_sample=False),
    "sampling": dict(do_sample=True, top_k=8, num_return_sequences=2),
}


@pytest.mark.parametrize("lengths", [(9, 5, 1, 7), (9, 9, 9, 9)], ids=["left-padded", "unpadded"])
@pytest.mark.parametrize("variant", LM_VARIANTS)
@pytest.mark.parametrize("search", LM_SEARCHES.values(), ids=LM_SEARCHES)
def test_the_prompt_pass_gives_the_reference_tokens_logits_and_cache(variant, search, lengths):
    """The whole prompt in one pass (prompts of different lengths, left-padded): the same tokens, the same logits at
    every step (the first from the prompt pass), and the same keys and values at every real position of the
    returned cache."""
    model, prompts = tiny_lm(**LM_VARIANTS[variant]), left_padded_prompts(lengths)
    kwargs = dict(**prompts, max_new_tokens=6, min_new_tokens=6, **search)
    reference, fast = decode(model, "reference", **kwargs), decode(model, "fast", **kwargs)
    assert torch.equal(fast.sequences, reference.sequences)
    torch.testing.assert_close(torch.stack(fast.logits), torch.stack(reference.logits), atol=1e-5, rtol=0)
    fast_cache, reference_cache = cache_of(fast), cache_of(reference)
    mask = prompts["attention_mask"]
    mask = mask.repeat_interleave(fast_cache.layers[0].keys.shape[0] // len(mask), 0)  # beams, returned sequences
    generated = fast_cache.layers[0].keys.shape[2] - mask.shape[1]  # the last token is never fed
    real = torch.cat([mask, mask.new_ones(mask.shape[0], generated)], dim=1).bool()
    for fast_layer, reference_layer in zip(fast_cache.layers, reference_cache.layers, strict=True):
        for name in ("keys", "values"):
            torch.testing.assert_close(getattr(fast_layer, name).transpose(1, 2)[real],
                                       getattr(reference_layer, name).transpose(1, 2)[real], atol=1e-5, rtol=0)


def test_the_prompt_is_one_pass_of_the_fast_step(monkeypatch):
    """A 9-token prompt and 6 new tokens: 6 passes of ``FastDecoder``, the first over the whole prompt, each later one
    over the token chosen last; the seq2seq decoder's first pass is its start token."""
    widths = []
    original = FastDecoder._step

    def counted(decoder, tokens):
        widths.append(tokens.shape[1])
        return original(decoder, tokens)

    monkeypatch.setattr(FastDecoder, "_step", counted)
    model = tiny_lm(forward_implementation="fast")
    for search in LM_SEARCHES.values():
        widths.clear()
        model.generate(**left_padded_prompts(), max_new_tokens=6, min_new_tokens=6, **search)
        assert widths == [9, 1, 1, 1, 1, 1]
    widths.clear()
    tiny(forward_implementation="fast").generate(**sources(), max_new_tokens=4, min_new_tokens=4)
    assert widths == [1, 1, 1, 1]


# --------------------------------------------------------------------------------------------------------------
# Every search on a padded batch: sequences, scores, raw logits and the returned cache
# --------------------------------------------------------------------------------------------------------------
def decode(model, implementation: str, seed: int = 0, **kwargs):
    twin = copy.deepcopy(model)
    twin.config.forward_implementation = implementation
    torch.manual_seed(seed)
    return twin.generate(return_dict_in_generate=True, output_scores=True, output_logits=True, **kwargs)


SEARCHES = {
    "greedy": dict(num_beams=1, do_sample=False),
    "beam4": dict(num_beams=4, do_sample=False),
    "beam4-3-returned": dict(num_beams=4, do_sample=False, num_return_sequences=3, length_penalty=0.7),
    "sampling": dict(do_sample=True, top_k=8, temperature=0.9, num_return_sequences=2),
    "beam-sampling": dict(num_beams=3, do_sample=True, top_k=8),
    "diverse-groups": dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=False),
    "constrained": dict(num_beams=4, force_words_ids=[[7, 8]], do_sample=False),
}


@pytest.mark.parametrize("min_new_tokens", [None, 5])
@pytest.mark.parametrize("search", SEARCHES.values(), ids=SEARCHES)
def test_fast_generate_equals_the_reference(search, min_new_tokens, monkeypatch):
    """Every search, on a padded batch, with and without the min-length processors the fast loop runs in place: the
    same sequences, scores and raw logits, over the fast step."""
    counter = StepCounter(monkeypatch)
    kwargs = dict(**sources(), max_new_tokens=7, min_new_tokens=min_new_tokens, eos_token_id=2, **search)
    reference, fast = decode(tiny(), "reference", **kwargs), decode(tiny(), "fast", **kwargs)
    assert counter.calls > 0
    assert torch.equal(fast.sequences, reference.sequences)
    torch.testing.assert_close(torch.stack(fast.scores), torch.stack(reference.scores), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(fast.logits), torch.stack(reference.logits), atol=1e-5, rtol=0)
    if "sequences_scores" in fast:
        torch.testing.assert_close(fast.sequences_scores, reference.sequences_scores, atol=1e-5, rtol=0)


def test_fast_generate_with_a_custom_logits_processor_equals_the_reference():
    class BanOddTokens(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores.index_fill(-1, torch.arange(1, scores.shape[-1], 2), -float("inf"))

    kwargs = dict(**sources(), max_new_tokens=6, min_new_tokens=3, num_beams=4,
                  logits_processor=LogitsProcessorList([BanOddTokens()]))
    reference, fast = decode(tiny(), "reference", **kwargs), decode(tiny(), "fast", **kwargs)
    assert torch.equal(fast.sequences, reference.sequences)
    assert (fast.sequences[:, 1:] % 2 == 0).all()


@pytest.mark.parametrize("num_beams", [1, 4])
def test_a_users_next_step_from_the_cache_of_fast_generate_equals_the_reference(num_beams):
    """The returned cache continues decoding: one more step from the fast step's cache (``FastDecoder.to_cache``)
    gives the logits and cache length of one more step from the reference's (beams: after every reordering)."""
    model, inputs = tiny(), sources()
    kwargs = dict(**inputs, max_new_tokens=4, num_beams=num_beams, num_return_sequences=num_beams)
    states = model.get_encoder()(**inputs).last_hidden_state.repeat_interleave(num_beams, 0)
    steps = {}
    for implementation in ("reference", "fast"):
        out = decode(model, implementation, **kwargs)
        with torch.no_grad():
            step = model(encoder_outputs=(states,), attention_mask=inputs["attention_mask"].repeat_interleave(num_beams, 0),
                         decoder_input_ids=out.sequences[:, -1:], cache=cache_of(out))
        steps[implementation] = (out.sequences, step.logits, cache_of(step).get_seq_length())
    assert torch.equal(steps["fast"][0], steps["reference"][0])
    torch.testing.assert_close(steps["fast"][1], steps["reference"][1], atol=1e-5, rtol=0)
    assert steps["fast"][2] == steps["reference"][2]


def test_decoding_copies_do_not_outlive_generate_across_fused_optimizer_steps():
    """fused AdamW writes the parameters without bumping their version: a copy kept across calls would be stale."""
    model = tiny(forward_implementation="fast")
    x, labels = torch.randint(3, 16, (4, 6)), torch.randint(3, 16, (4, 5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    model.generate(input_ids=x, max_new_tokens=5, num_beams=2)
    model.generate(input_ids=x, max_new_tokens=5, do_sample=True)
    for _ in range(3):
        model.train()
        model(input_ids=x, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    for kwargs in (dict(num_beams=2), dict(num_beams=1), dict(do_sample=True, top_k=4)):
        reference, fast = both(model, input_ids=x, max_new_tokens=5, **kwargs)
        assert torch.equal(fast, reference)
