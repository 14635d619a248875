"""decoding.py, the engine: the reference stepper's loops give transformers' own loops' outputs; fast ``generate``
behaves natively (ordinary tensors, a replaced ``forward`` honoured); fast sampling never calls the reference decoder
and draws the reference's tokens; the model class defines no generation hook (they live in the mixin)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GenerationMixin

import scratchformers as sf
from scratchformers.fast_decoding import FastDecoder
from scratchformers.modeling_transformer import ScratchTransformerDecoder

from _generation_utils import make_model, make_sources, train_reverser

MAX_NEW = 8


@pytest.fixture(scope="module")
def model():
    return train_reverser(make_model(layers=2, vocab_size=16, d_model=32, init_std=0.1), steps=60)


@pytest.fixture(scope="module")
def sources():
    return make_sources(batch=4, length=7)  # right-padded


def transformers_loop(model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                      streamer=None, **model_kwargs):
    """transformers' own ``_sample`` / ``_beam_search`` (which the mixin replaces), as a ``custom_generate``."""
    if generation_config.num_beams > 1:
        return GenerationMixin._beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config,
                                            synced_gpus, **model_kwargs)
    return GenerationMixin._sample(model, input_ids, logits_processor, stopping_criteria, generation_config,
                                   synced_gpus, streamer, **model_kwargs)


def generate(model, implementation: str, seed: int = 0, **kwargs):
    twin = copy.deepcopy(model)
    twin.config.forward_implementation = implementation
    torch.manual_seed(seed)
    return twin.generate(max_new_tokens=MAX_NEW, **kwargs)


def _sorts_sampled_beams() -> bool:
    """Whether this transformers orders beam sampling's drawn candidates by score (5.24 and later)."""
    import inspect

    return "topk_log_probs.sort(" in inspect.getsource(GenerationMixin._get_top_k_continuations)


MODES = {
    "greedy": dict(),
    "sampling": dict(do_sample=True, top_k=0, temperature=1.3, num_return_sequences=2),
    "beam": dict(num_beams=3, num_return_sequences=2, length_penalty=0.7),
    "beam-sampling": dict(num_beams=3, do_sample=True, top_k=0),
}


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES)
def test_the_reference_stepper_gives_what_transformers_own_loops_give(model, sources, mode):
    if mode.get("do_sample") and mode.get("num_beams", 1) > 1 and not _sorts_sampled_beams():
        pytest.skip("before 5.24 transformers kept sampled beam candidates in draw order; ours sorts them by score as "
                    "5.24 and later do")
    kwargs = dict(**sources, **mode, return_dict_in_generate=True, output_scores=True)
    ours = generate(model, "reference", **kwargs)
    theirs = generate(model, "reference", custom_generate=transformers_loop, **kwargs)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert len(ours.scores) == len(theirs.scores)
    assert all(torch.equal(a, b) for a, b in zip(ours.scores, theirs.scores))
    if "sequences_scores" in theirs:
        assert torch.equal(ours.sequences_scores, theirs.sequences_scores)


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES)
def test_fast_equals_the_reference_on_a_padded_batch(model, sources, mode):
    kwargs = dict(**sources, **mode, return_dict_in_generate=True, output_scores=True)
    reference, fast = generate(model, "reference", **kwargs), generate(model, "fast", **kwargs)
    assert torch.equal(fast.sequences, reference.sequences)
    torch.testing.assert_close(torch.stack(fast.scores), torch.stack(reference.scores), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", [MODES["greedy"], MODES["beam"], MODES["sampling"]], ids=["greedy", "beam", "sampling"])
def test_fast_generate_returns_ordinary_tensors(model, sources, mode):
    """Editable in place, and usable as the decoder inputs of a training step with gradients (back-translation)."""
    fast = copy.deepcopy(model)
    fast.config.forward_implementation = "fast"
    out = fast.generate(**sources, max_new_tokens=MAX_NEW, **mode)
    assert not out.is_inference()
    out[out == fast.config.eos_token_id] = fast.config.pad_token_id  # in place
    fast.train()
    rows = out.shape[0] // sources["input_ids"].shape[0]
    loss = fast(input_ids=sources["input_ids"].repeat_interleave(rows, 0),
                attention_mask=sources["attention_mask"].repeat_interleave(rows, 0),
                decoder_input_ids=out[:, :-1], labels=out[:, 1:]).loss
    loss.backward()
    assert fast.lm_head.weight.grad is not None and torch.isfinite(loss)


def test_a_forward_replaced_on_the_instance_runs_and_the_fast_step_stands_aside(model, sources, monkeypatch):
    steps = []
    original_step = FastDecoder.step
    monkeypatch.setattr(FastDecoder, "step", lambda self, *a, **k: steps.append(1) or original_step(self, *a, **k))
    fast = copy.deepcopy(model)
    fast.config.forward_implementation = "fast"
    calls = []
    forward = fast.forward

    def wrapped(*args, **kwargs):  # e.g. torch.compile(model.forward), or a user's instrumentation
        calls.append(1)
        return forward(*args, **kwargs)

    fast.forward = wrapped
    out = fast.generate(**sources, max_new_tokens=MAX_NEW, num_beams=2)
    assert calls and not steps
    assert torch.equal(out, generate(model, "reference", **sources, num_beams=2))


def test_fast_sampling_never_calls_the_reference_decoder_and_draws_its_tokens(model, sources, monkeypatch):
    decoder_calls = []
    original = ScratchTransformerDecoder.forward
    monkeypatch.setattr(ScratchTransformerDecoder, "forward",
                        lambda self, *a, **k: decoder_calls.append(1) or original(self, *a, **k))
    kwargs = dict(**sources, do_sample=True, top_p=0.8, temperature=0.7, repetition_penalty=1.3,
                  num_return_sequences=3)
    fast = generate(model, "fast", seed=3, **kwargs)
    assert decoder_calls == []
    reference = generate(model, "reference", seed=3, **kwargs)
    assert decoder_calls  # the counter counts
    assert torch.equal(fast, reference)


def test_the_model_class_defines_no_generation_hook():
    """The engine's hooks live in ``generation.ScratchGenerationMixin``; the model classes read like Marian."""
    hooks = ("_sample", "_beam_search", "_expand_inputs_for_generation", "_get_logits_processor", "_reorder_cache")
    classes = [sf.ScratchTransformerForConditionalGeneration]
    if hasattr(sf, "ScratchTransformerForCausalLM"):
        classes.append(sf.ScratchTransformerForCausalLM)
    for cls in classes:
        assert isinstance(cls.__mro__, tuple) and issubclass(cls, sf.generation.ScratchGenerationMixin)
        assert not [name for name in hooks if name in vars(cls)], cls
