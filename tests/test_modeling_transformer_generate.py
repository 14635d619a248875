"""Every decoding parameter of ``generate()`` works on our model and has the effect it promises.

The models are tiny: random weights, or a few dozen training steps on "reverse the source", which leaves them
uncertain enough that beam search, sampling and the logits processors have something to change. The notes'
comparison closes the file: exhaustive search over all outputs of a 6-token model is the oracle for beam search.
"""

from __future__ import annotations

import collections

import pytest
import torch
from transformers.generation.utils import GenerateBeamEncoderDecoderOutput, GenerateEncoderDecoderOutput

from scratchformers.compat import cache_of

from _generation_utils import (
    BOS,
    EOS,
    PAD,
    generated_tokens,
    log_prob_sums,
    make_model,
    make_sources,
    model,
    sources,
    train_reverser,
)

MAX_NEW = 10


@pytest.fixture(scope="module")
def chatty():
    """A random model that never wants to stop (EOS logit -30): every output runs to the length limit."""
    return make_model(seed=1, init_std=0.5, eos_bias=-30.0)


@pytest.fixture(scope="module")
def terse():
    """A random model that always wants to stop at once (EOS logit +30)."""
    return make_model(seed=2, init_std=0.5, eos_bias=30.0)


def greedy(model, sources, **kwargs):
    return model.generate(**sources, max_new_tokens=MAX_NEW, **kwargs)


def all_generated(sequences) -> list[list[int]]:
    return [generated_tokens(row) for row in sequences]


# --------------------------------------------------------------------------------------------------------------
# Greedy
# --------------------------------------------------------------------------------------------------------------
def test_greedy_takes_the_argmax_of_independent_forward_passes(model, sources):
    out = greedy(model, sources)
    for i in range(sources["input_ids"].shape[0]):
        src = {k: v[i : i + 1] for k, v in sources.items()}
        decoded = [BOS]
        with torch.no_grad():
            while len(decoded) <= MAX_NEW and decoded[-1] != EOS:
                logits = model(**src, decoder_input_ids=torch.tensor([decoded]), use_cache=False).logits
                decoded.append(int(logits[0, -1].argmax()))
        expected = decoded + [PAD] * (out.shape[1] - len(decoded))  # finished rows are padded with pad_token_id
        assert out[i].tolist() == expected


# --------------------------------------------------------------------------------------------------------------
# Beam search: num_beams, length_penalty, early_stopping
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, 2.0])
def test_beam_scores_are_log_prob_sums_over_length_to_the_alpha(model, sources, alpha):
    out = model.generate(
        **sources, max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=4, length_penalty=alpha,
        return_dict_in_generate=True, output_scores=True,
    )
    sums, lengths = log_prob_sums(model, sources, out.sequences)
    expected = sums / lengths.double() ** alpha
    torch.testing.assert_close(out.sequences_scores.double(), expected, atol=1e-4, rtol=0)
    per_source = out.sequences_scores.view(-1, 4)
    assert torch.all(per_source[:, :-1] >= per_source[:, 1:]), "hypotheses come best first"
    assert all(len(set(map(tuple, rows.tolist()))) == 4 for rows in out.sequences.view(-1, 4, out.sequences.shape[1]))


def test_beam_search_finds_more_likely_outputs_than_greedy(model, sources):
    greedy_out = greedy(model, sources)
    beam_out = model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=6, length_penalty=0.0)
    greedy_sums, _ = log_prob_sums(model, sources, greedy_out)
    beam_sums, _ = log_prob_sums(model, sources, beam_out)
    assert torch.all(beam_sums >= greedy_sums - 1e-6)
    assert torch.any(beam_sums > greedy_sums + 1e-3), "this model is uncertain enough for beams to matter"


def test_length_penalty_larger_alpha_never_prefers_shorter_outputs(model, sources):
    # early_stopping="never" makes the running beams, and the set of finished candidates, independent of alpha;
    # the winner is argmax sum/L^alpha over that set, whose length can only grow with alpha (sums are negative).
    lengths = []
    for alpha in (-2.0, 0.0, 1.0, 4.0):
        out = model.generate(
            **sources, max_new_tokens=MAX_NEW, num_beams=4, length_penalty=alpha, early_stopping="never"
        )
        lengths.append([len(t) for t in all_generated(out)])
    for shorter_alpha, longer_alpha in zip(lengths, lengths[1:]):
        assert all(a <= b for a, b in zip(shorter_alpha, longer_alpha))
    assert sum(lengths[-1]) > sum(lengths[0])


def test_early_stopping_trades_search_steps_for_score(model, sources):
    steps, best = {}, {}
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        for early_stopping in (True, False, "never"):
            calls.clear()
            out = model.generate(
                **sources, max_new_tokens=MAX_NEW, num_beams=4, early_stopping=early_stopping, length_penalty=1.0,
                return_dict_in_generate=True, output_scores=True,
            )
            steps[early_stopping], best[early_stopping] = len(calls), out.sequences_scores
    finally:
        handle.remove()
    # True stops once num_beams hypotheses are finished, False when the heuristic says no beam can improve,
    # "never" only when no beam can improve at any length: each searches a superset of the one before.
    assert steps[True] < steps[False] < steps["never"]
    assert torch.all(best[True] <= best[False] + 1e-6) and torch.all(best[False] <= best["never"] + 1e-6)


# --------------------------------------------------------------------------------------------------------------
# Sampling: do_sample, top_k, top_p, temperature; beam-sample
# --------------------------------------------------------------------------------------------------------------
def sample(model, sources, seed, **kwargs):
    torch.manual_seed(seed)
    return model.generate(**sources, max_new_tokens=MAX_NEW, do_sample=True, **kwargs)


def test_sampling_is_reproducible_with_a_seed_and_varies_without(model, sources):
    first = sample(model, sources, seed=0, top_k=0)
    assert torch.equal(first, sample(model, sources, seed=0, top_k=0))
    others = [sample(model, sources, seed=s, top_k=0) for s in (1, 2)]
    assert not any(other.shape == first.shape and torch.equal(other, first) for other in others)


@pytest.mark.parametrize("settings", [{"top_k": 1}, {"temperature": 1e-4}, {"top_p": 1e-6}, {"top_k": 0, "top_p": 1e-6}])
def test_degenerate_sampling_is_greedy(model, sources, settings):
    assert torch.equal(sample(model, sources, seed=3, **settings), greedy(model, sources))


def _sampled_steps(out):
    """(step, row) pairs where a token was actually chosen, i.e. the row had not finished yet."""
    for t, _ in enumerate(out.scores):
        for row in range(out.sequences.shape[0]):
            if EOS not in out.sequences[row, 1 : t + 1].tolist():
                yield t, row


def test_top_k_draws_only_among_the_k_most_likely(model, sources):
    out = sample(model, sources, seed=0, top_k=3, return_dict_in_generate=True, output_scores=True, output_logits=True)
    for t, row in _sampled_steps(out):
        kept = torch.isfinite(out.scores[t][row])
        assert int(kept.sum()) == 3
        assert set(kept.nonzero()[:, 0].tolist()) == set(out.logits[t][row].topk(3).indices.tolist())
        assert bool(kept[out.sequences[row, t + 1]])


def test_top_p_draws_only_from_the_nucleus(model, sources):
    top_p = 0.6
    out = sample(model, sources, seed=0, top_k=0, top_p=top_p, return_dict_in_generate=True, output_scores=True,
                 output_logits=True)
    for t, row in _sampled_steps(out):
        probs, order = out.logits[t][row].softmax(-1).sort(descending=True)
        mass_before = probs.cumsum(0) - probs
        nucleus = set(order[mass_before < top_p].tolist())  # the smallest most-likely set with mass >= top_p
        assert set(torch.isfinite(out.scores[t][row]).nonzero()[:, 0].tolist()) == nucleus
        assert int(out.sequences[row, t + 1]) in nucleus


def test_temperature_divides_the_logits(model, sources):
    out = sample(model, sources, seed=0, top_k=0, temperature=0.7, return_dict_in_generate=True,
                 output_scores=True, output_logits=True)
    for processed, raw in zip(out.scores, out.logits):
        torch.testing.assert_close(processed, raw / 0.7)


def test_beam_sample_is_seeded_random_beam_search(model, sources):
    kwargs = dict(num_beams=3, num_return_sequences=3, temperature=1.5, top_k=0, return_dict_in_generate=True,
                  output_scores=True)
    first = sample(model, sources, seed=0, **kwargs)
    again = sample(model, sources, seed=0, **kwargs)
    assert torch.equal(first.sequences, again.sequences)
    others = [sample(model, sources, seed=s, **kwargs).sequences for s in (1, 2)]
    assert not any(o.shape == first.sequences.shape and torch.equal(o, first.sequences) for o in others)
    beam = model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=3, num_return_sequences=3)
    assert not (beam.shape == first.sequences.shape and torch.equal(beam, first.sequences))
    # Scores are still sums of the (processed) token log-probabilities along each beam, divided by L^alpha.
    steps = model.compute_transition_scores(first.sequences, first.scores, first.beam_indices)
    lengths = torch.tensor([len(t) for t in all_generated(first.sequences)])
    torch.testing.assert_close(first.sequences_scores, steps.sum(-1) / lengths.float(), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# Logits processors: repetition_penalty, no_repeat_ngram_size, EOS bias, suppression, bad words
# --------------------------------------------------------------------------------------------------------------
def repeats(sequences) -> int:
    return sum(len(t) - len(set(t)) for t in all_generated(sequences))


def test_repetition_penalty_rescales_seen_tokens_and_reduces_repeats(model, sources):
    penalty = 3.0
    out = greedy(model, sources, repetition_penalty=penalty, return_dict_in_generate=True, output_scores=True,
                 output_logits=True)
    for t, (processed, raw) in enumerate(zip(out.scores, out.logits)):
        expected = raw.clone()
        for row in range(raw.shape[0]):
            seen = out.sequences[row, : t + 1].unique()
            expected[row, seen] = torch.where(raw[row, seen] < 0, raw[row, seen] * penalty, raw[row, seen] / penalty)
        torch.testing.assert_close(processed, expected)
    assert repeats(greedy(model, sources)) > 0
    assert repeats(out.sequences) < repeats(greedy(model, sources))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_no_repeat_ngram_size_leaves_no_repeated_ngram(model, sources, num_beams):
    def bigrams(tokens):
        return [tuple(tokens[i : i + 2]) for i in range(len(tokens) - 1)]

    baseline = model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=num_beams)
    assert any(len(set(bigrams(t))) < len(bigrams(t)) for t in all_generated(baseline))
    out = model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=num_beams, no_repeat_ngram_size=2)
    for row in out:
        grams = bigrams([BOS] + generated_tokens(row))
        assert len(set(grams)) == len(grams)


def test_min_new_tokens_and_min_length_delay_eos_exactly(terse, sources):
    assert all(t == [EOS] for t in all_generated(terse.generate(**sources, max_new_tokens=MAX_NEW)))
    for num_beams in (1, 3):
        out = terse.generate(**sources, max_new_tokens=MAX_NEW, min_new_tokens=4, num_beams=num_beams)
        assert out.shape == (4, 1 + 4 + 1) and torch.all(out[:, -1] == EOS) and not torch.any(out[:, :-1] == EOS)
        # min_length counts the decoder prompt: EOS may come once the sequence is min_length long.
        out = terse.generate(**sources, max_new_tokens=MAX_NEW, min_length=6, num_beams=num_beams)
        assert out.shape == (4, 6 + 1) and torch.all(out[:, -1] == EOS) and not torch.any(out[:, :-1] == EOS)


@pytest.mark.parametrize("settings", [{}, {"num_beams": 3}, {"do_sample": True}])
def test_max_new_tokens_and_max_length_bound_the_output_exactly(chatty, sources, settings):
    assert chatty.generate(**sources, max_new_tokens=7, **settings).shape == (4, 1 + 7)
    assert chatty.generate(**sources, max_length=5, **settings).shape == (4, 5)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_sequence_bias_on_eos_controls_stopping(model, sources, num_beams):
    baseline = all_generated(model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=num_beams))
    assert any(t[-1] == EOS and len(t) < MAX_NEW for t in baseline)
    never = model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=num_beams, sequence_bias={(EOS,): -100.0})
    assert never.shape == (4, 1 + MAX_NEW) and not torch.any(never == EOS)
    at_once = model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=num_beams, sequence_bias={(EOS,): 100.0})
    assert at_once.tolist() == [[BOS, EOS]] * 4


def test_suppress_tokens_and_begin_suppress_tokens(model, sources):
    baseline = greedy(model, sources)
    frequent = collections.Counter(t for row in all_generated(baseline) for t in row if t != EOS).most_common(1)[0][0]
    out = greedy(model, sources, suppress_tokens=[frequent], return_dict_in_generate=True, output_scores=True)
    assert frequent not in {t for row in all_generated(out.sequences) for t in row}
    assert all(torch.all(s[:, frequent] == float("-inf")) for s in out.scores)

    first = int(baseline[0, 1])
    out = greedy(model, sources, begin_suppress_tokens=[first], return_dict_in_generate=True, output_scores=True)
    assert torch.all(out.sequences[:, 1] != first)
    assert torch.all(out.scores[0][:, first] == float("-inf")) and torch.all(torch.isfinite(out.scores[1][:, first]))
    assert first in {t for row in all_generated(out.sequences) for t in row[1:]}, "only the first step is suppressed"


@pytest.mark.parametrize("num_beams", [1, 3])
def test_bad_words_ids_never_appear(model, sources, num_beams):
    baseline = all_generated(model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=num_beams))
    counts = collections.Counter(t for row in baseline for t in row if t != EOS)
    banned_token = counts.most_common(1)[0][0]
    pairs = collections.Counter(
        tuple(row[i : i + 2]) for row in baseline for i in range(len(row) - 1) if banned_token not in row[i : i + 2]
    )
    banned_pair = list(pairs.most_common(1)[0][0])
    out = all_generated(
        model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=num_beams, bad_words_ids=[[banned_token], banned_pair])
    )
    assert out != baseline
    for row in out:
        assert banned_token not in row
        assert all(row[i : i + 2] != banned_pair for i in range(len(row) - 1))


# --------------------------------------------------------------------------------------------------------------
# Outputs: num_return_sequences, return_dict_in_generate + output_scores, use_cache
# --------------------------------------------------------------------------------------------------------------
def test_num_return_sequences(model, sources):
    three = model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=3,
                           return_dict_in_generate=True, output_scores=True)
    four = model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=4,
                          return_dict_in_generate=True, output_scores=True)
    assert three.sequences.shape[0] == 12 and four.sequences.shape[0] == 16
    torch.testing.assert_close(three.sequences_scores, four.sequences_scores.view(4, 4)[:, :3].reshape(-1))
    best_three = [all_generated(four.sequences)[i] for i in range(16) if i % 4 < 3]
    assert all_generated(three.sequences) == best_three
    sampled = sample(model, sources, seed=0, num_return_sequences=3, top_k=0)
    assert sampled.shape[0] == 12
    assert any(len(set(map(tuple, all_generated(sampled[i : i + 3])))) > 1 for i in range(0, 12, 3))


def test_return_dict_with_scores_greedy(model, sources):
    out = greedy(model, sources, return_dict_in_generate=True, output_scores=True)
    assert isinstance(out, GenerateEncoderDecoderOutput)
    assert len(out.scores) == out.sequences.shape[1] - 1
    for scores in out.scores:
        assert scores.shape == (4, model.config.vocab_size)
    for t, row in _sampled_steps(out):
        assert int(out.scores[t][row].argmax()) == int(out.sequences[row, t + 1])


def test_return_dict_with_scores_beam(model, sources):
    out = model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=3, num_return_sequences=2,
                         return_dict_in_generate=True, output_scores=True)
    assert isinstance(out, GenerateBeamEncoderDecoderOutput)
    assert out.sequences_scores.shape == (8,) and out.beam_indices.shape[0] == 8
    assert len(out.scores) >= out.sequences.shape[1] - 1 and out.scores[0].shape == (4 * 3, model.config.vocab_size)
    steps = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    lengths = torch.tensor([len(t) for t in all_generated(out.sequences)])
    torch.testing.assert_close(out.sequences_scores, steps.sum(-1) / lengths.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "settings",
    [{}, {"num_beams": 4, "num_return_sequences": 2}, {"num_beams": 3, "length_penalty": 2.0, "early_stopping": True}],
)
def test_use_cache_true_and_false_give_identical_sequences(model, sources, settings):
    kwargs = dict(max_new_tokens=MAX_NEW, return_dict_in_generate=True, output_scores=True, **settings)
    cached = model.generate(**sources, use_cache=True, **kwargs)
    uncached = model.generate(**sources, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    if "num_beams" in settings:
        torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-5, rtol=0)


def test_use_cache_true_and_false_sample_identically(model, sources):
    assert torch.equal(sample(model, sources, seed=0, use_cache=True), sample(model, sources, seed=0, use_cache=False))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "settings", [{}, {"num_beams": 3}, {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 2.0},
                 {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0}]
)
def test_static_cache_gives_the_sequences_of_the_dynamic_cache(model, sources, settings, attn_implementation):
    """cache_implementation="static" pre-allocates the decoder cache and passes 4-D masks over all its slots."""
    original, model.config._attn_implementation = model.config._attn_implementation, attn_implementation
    try:
        dynamic = model.generate(**sources, max_new_tokens=MAX_NEW, **settings)
        static = model.generate(**sources, max_new_tokens=MAX_NEW, cache_implementation="static", **settings)
    finally:
        model.config._attn_implementation = original
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize(
    "settings", [{}, {"num_beams": 3}, {"do_sample": True}, {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0}]
)
def test_generate_feeds_the_cache_back_to_the_model(model, sources, settings):
    """Each step after the first gets one new token and a cache holding every earlier one, under the cache name
    of the installed transformers. (transformers 5.24 renamed it; a model that read the old name decoded each
    step from its last token alone.)"""
    seen = []

    def record(module, args, kwargs):
        cache = cache_of(kwargs)
        seen.append((kwargs["decoder_input_ids"].shape[1], 0 if cache is None else cache.get_seq_length()))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = model.generate(**sources, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, **settings)
    finally:
        handle.remove()
    assert len(seen) == out.shape[1] - 1 == MAX_NEW
    assert seen == [(1, step) for step in range(MAX_NEW)]


# --------------------------------------------------------------------------------------------------------------
# The notes' comparison: exhaustive search is the oracle
# --------------------------------------------------------------------------------------------------------------
ORACLE_VOCAB, ORACLE_NEW = 6, 4


@pytest.fixture(scope="module")
def oracle_model():
    return train_reverser(make_model(seed=0, vocab_size=ORACLE_VOCAB, d_model=16, init_std=0.5), steps=40)


def exhaustive_search(model, input_ids: torch.Tensor, max_new_tokens: int) -> list[tuple[list[int], float]]:
    """Every output the decoder can produce with its summed log-probability.

    An output ends with EOS or stops at ``max_new_tokens`` tokens, exactly the hypotheses HF beam search scores:
    its length L counts the generated tokens, EOS included, decoder start excluded.
    """
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=input_ids).last_hidden_state
        finished, live = [], [([BOS], 0.0)]
        for step in range(1, max_new_tokens + 1):
            decoder_input_ids = torch.tensor([prefix for prefix, _ in live])
            logits = model(
                encoder_outputs=(encoded.expand(len(live), -1, -1),), decoder_input_ids=decoder_input_ids,
                use_cache=False,
            ).logits
            log_probs = torch.log_softmax(logits[:, -1].double(), -1)
            next_live = []
            for i, (prefix, total) in enumerate(live):
                for token in range(logits.shape[-1]):
                    entry = (prefix + [token], total + float(log_probs[i, token]))
                    (finished if token == EOS or step == max_new_tokens else next_live).append(entry)
            live = next_live
    return [(prefix[1:], total) for prefix, total in finished]


def normalised(total: float, length: int, alpha: float) -> float:
    return total / length**alpha


def test_wide_beam_finds_the_exhaustive_optimum_and_greedy_never_beats_it(oracle_model):
    # num_beams >= every candidate of the last step (live prefixes x vocabulary): nothing is ever pruned.
    wide = ORACLE_VOCAB * (ORACLE_VOCAB - 1) ** (ORACLE_NEW - 1)
    sources = make_sources(batch=3, length=3, vocab_size=ORACLE_VOCAB, seed=1)
    greedy_strictly_worse = 0
    best_lengths = collections.defaultdict(list)
    for i in range(3):
        input_ids = sources["input_ids"][i : i + 1, : int(sources["attention_mask"][i].sum())]
        outputs = exhaustive_search(oracle_model, input_ids, ORACLE_NEW)
        assert len(outputs) == sum((ORACLE_VOCAB - 1) ** k for k in range(ORACLE_NEW - 1)) + (ORACLE_VOCAB - 1) ** (
            ORACLE_NEW - 1
        ) * ORACLE_VOCAB
        greedy_tokens = generated_tokens(oracle_model.generate(input_ids, max_new_tokens=ORACLE_NEW)[0])
        greedy_total = dict((tuple(t), s) for t, s in outputs)[tuple(greedy_tokens)]
        for alpha in (-1.0, 0.0, 0.5, 1.0, 2.0):
            best_tokens, best_total = max(outputs, key=lambda o: normalised(o[1], len(o[0]), alpha))
            best_score = normalised(best_total, len(best_tokens), alpha)
            beam = oracle_model.generate(
                input_ids, max_new_tokens=ORACLE_NEW, num_beams=wide, length_penalty=alpha, early_stopping="never",
                return_dict_in_generate=True, output_scores=True,
            )
            assert generated_tokens(beam.sequences[0]) == best_tokens
            assert abs(float(beam.sequences_scores[0]) - best_score) < 1e-4
            narrow = oracle_model.generate(
                input_ids, max_new_tokens=ORACLE_NEW, num_beams=2, length_penalty=alpha,
                return_dict_in_generate=True, output_scores=True,
            )
            assert float(narrow.sequences_scores[0]) <= best_score + 1e-4
            greedy_score = normalised(greedy_total, len(greedy_tokens), alpha)
            assert greedy_score <= float(beam.sequences_scores[0]) + 1e-4
            greedy_strictly_worse += greedy_score < best_score - 1e-3
            best_lengths[i].append(len(best_tokens))
    assert greedy_strictly_worse > 0, "the oracle model is uncertain enough for greedy to miss the optimum"
    for lengths in best_lengths.values():
        assert lengths == sorted(lengths), "a larger alpha never prefers a shorter output"
