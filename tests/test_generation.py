"""Diverse (group) and constrained beam search, offline (``scratchformers.generation``).

transformers 5 moved both out of core to Hub repositories; ours run offline, as ``custom_generate`` callables and
automatically when ``generate`` gets ``num_beam_groups > 1`` / ``force_words_ids`` / ``constraints``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import GenerationConfig, GenerationMixin

from _generation_utils import (
    EOS,
    contains,
    generated_tokens,
    log_prob_sums,
    model,
    no_warnings,
    sources,
)
from scratchformers.generation import (
    DisjunctiveConstraint,
    PhrasalConstraint,
    constrained_beam_search,
    diverse_beam_search,
)

MAX_NEW = 10


def beams(model, sources, **kwargs):
    kwargs.setdefault("max_new_tokens", MAX_NEW)
    return model.generate(**sources, return_dict_in_generate=True, output_scores=True, **kwargs)


def hypotheses(out, per_source: int) -> list[list[list[int]]]:
    """Generated tokens of every returned sequence, grouped by source."""
    rows = [generated_tokens(row) for row in out.sequences]
    return [rows[i : i + per_source] for i in range(0, len(rows), per_source)]


# --------------------------------------------------------------------------------------------------------------
# With one group and no constraints: exactly core beam search
# --------------------------------------------------------------------------------------------------------------
def transformers_beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config,
                             synced_gpus=False, streamer=None, **model_kwargs):
    """transformers' own beam loop (``GenerationMixin._beam_search``), which our mixin replaces, as a
    ``custom_generate`` callable: the independent oracle."""
    return GenerationMixin._beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config,
                                        synced_gpus, **model_kwargs)


SETTINGS = [
    dict(num_beams=4),
    dict(num_beams=4, num_return_sequences=3, length_penalty=2.0),
    dict(num_beams=3, num_return_sequences=3, early_stopping=True, length_penalty=0.0),
    dict(num_beams=2, early_stopping="never", length_penalty=-1.0),
    dict(num_beams=4, num_return_sequences=2, repetition_penalty=1.8, min_new_tokens=3),
    dict(num_beams=3, no_repeat_ngram_size=2, sequence_bias={(EOS,): -1.5}, use_cache=False),
]


@pytest.mark.parametrize("function", [diverse_beam_search, constrained_beam_search])
@pytest.mark.parametrize("settings", SETTINGS)
def test_one_group_and_no_constraints_is_exactly_core_beam_search(model, sources, function, settings):
    core = beams(model, sources, custom_generate=transformers_beam_search, **settings)
    ours = beams(model, sources, custom_generate=function, **settings)
    assert torch.equal(ours.sequences, core.sequences)
    assert torch.equal(ours.sequences_scores, core.sequences_scores)
    assert torch.equal(ours.beam_indices, core.beam_indices) and ours.beam_indices.dtype == core.beam_indices.dtype
    assert len(ours.scores) == len(core.scores) and all(torch.equal(a, b) for a, b in zip(ours.scores, core.scores))


# --------------------------------------------------------------------------------------------------------------
# Diverse beam search
# --------------------------------------------------------------------------------------------------------------
def distinct_bigrams(rows: list[list[int]]) -> int:
    return len({tuple(row[i : i + 2]) for row in rows for i in range(len(row) - 1)})


def mean_hamming(rows: list[list[int]]) -> float:
    width = max(map(len, rows))
    padded = [row + [-1] * (width - len(row)) for row in rows]
    pairs = list(itertools.combinations(padded, 2))
    return sum(sum(x != y for x, y in zip(a, b)) for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("num_beam_groups", [2, 4])
def test_groups_differ_and_are_more_diverse_than_plain_beam_search(model, sources, num_beam_groups):
    plain = hypotheses(beams(model, sources, num_beams=4, num_return_sequences=4), 4)
    out = beams(model, sources, num_beams=4, num_return_sequences=4, num_beam_groups=num_beam_groups,
                diversity_penalty=5.0)
    diverse = hypotheses(out, 4)
    group_size = 4 // num_beam_groups
    # The first step of every hypothesis continues the first beam of its group: beam_indices tell the group.
    groups = ((out.beam_indices[:, 0] % 4) // group_size).view(4, 4).tolist()
    for source in range(4):
        assert sorted(groups[source]) == sorted(list(range(num_beam_groups)) * group_size)
        for (a, group_a), (b, group_b) in itertools.combinations(zip(diverse[source], groups[source]), 2):
            if group_a != group_b:
                assert a != b and a[0] != b[0], "groups pay for choosing the tokens of earlier groups"
        assert distinct_bigrams(diverse[source]) >= distinct_bigrams(plain[source])
    assert sum(map(distinct_bigrams, diverse)) > sum(map(distinct_bigrams, plain))
    assert sum(map(mean_hamming, diverse)) > sum(map(mean_hamming, plain))


def test_diverse_scores_include_the_diversity_penalty(model, sources):
    out = beams(model, sources, num_beams=4, num_return_sequences=4, num_beam_groups=2, diversity_penalty=2.0,
                length_penalty=1.0)
    steps = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    lengths = torch.tensor([len(generated_tokens(row)) for row in out.sequences])
    torch.testing.assert_close(out.sequences_scores, steps.sum(-1) / lengths.float(), atol=1e-4, rtol=0)
    sums, _ = log_prob_sums(model, sources, out.sequences)
    penalties = sums / lengths.double() - out.sequences_scores.double()
    assert torch.all(penalties > -1e-4) and torch.any(penalties > 0.1), "later groups pay, nobody gains"
    per_source = out.sequences_scores.view(4, 4)
    assert torch.all(per_source[:, :-1] >= per_source[:, 1:]), "hypotheses of all groups, best first"


def test_without_diversity_penalty_every_group_runs_the_same_search(model, sources):
    with pytest.warns(UserWarning, match="diversity_penalty"):
        grouped = beams(model, sources, num_beams=4, num_return_sequences=4, num_beam_groups=2, diversity_penalty=0.0)
    single = beams(model, sources, num_beams=2, num_return_sequences=2)
    for pair, four in zip(hypotheses(single, 2), hypotheses(grouped, 4)):
        assert sorted(four) == sorted(pair * 2)
    torch.testing.assert_close(grouped.sequences_scores.view(4, 2, 2)[:, :, 0], single.sequences_scores.view(4, 2))


# --------------------------------------------------------------------------------------------------------------
# Constrained beam search
# --------------------------------------------------------------------------------------------------------------
PHRASE, ALTERNATIVES = [3, 10], [[11], [8, 13]]


def satisfies(tokens: list[int], phrase=PHRASE, alternatives=ALTERNATIVES) -> bool:
    return contains(tokens, phrase) and any(contains(tokens, a) for a in alternatives)


@pytest.mark.parametrize("num_beams", [4, 6])
def test_every_returned_sequence_contains_every_constraint(model, sources, num_beams):
    plain = hypotheses(beams(model, sources, num_beams=num_beams, num_return_sequences=num_beams), num_beams)
    assert not any(satisfies(h) for per_source in plain for h in per_source), "the constraints change the output"
    with no_warnings():
        out = beams(model, sources, num_beams=num_beams, num_return_sequences=num_beams,
                    force_words_ids=[PHRASE, ALTERNATIVES])
    for per_source in hypotheses(out, num_beams):
        assert len(set(map(tuple, per_source))) == num_beams
        assert all(satisfies(h) for h in per_source), per_source
    # Constraints decide which hypotheses are searched, not how they are scored.
    sums, lengths = log_prob_sums(model, sources, out.sequences)
    torch.testing.assert_close(out.sequences_scores.double(), sums / lengths.double(), atol=1e-4, rtol=0)
    assert torch.all(out.sequences_scores.view(4, num_beams).diff(dim=1) <= 0)


def test_constraint_objects_and_multi_token_alternatives(model, sources):
    # Forbidding the one-token alternative leaves the two-token one: the disjunction must still be met.
    out = beams(model, sources, num_beams=4, num_return_sequences=4, bad_words_ids=[[11]],
                constraints=[PhrasalConstraint([5, 9, 7]), DisjunctiveConstraint(ALTERNATIVES)])
    for per_source in hypotheses(out, 4):
        for h in per_source:
            assert contains(h, [5, 9, 7]) and contains(h, [8, 13]) and 11 not in h


def test_constrained_search_honours_lengths_and_logits_processors(model, sources):
    out = model.generate(**sources, max_new_tokens=8, num_beams=4, force_words_ids=[PHRASE],
                         sequence_bias={(EOS,): -100.0}, suppress_tokens=[6])
    assert out.shape == (4, 1 + 8) and not torch.any(out == EOS) and not torch.any(out == 6)
    assert all(contains(generated_tokens(row), PHRASE) for row in out)
    out = model.generate(**sources, max_new_tokens=MAX_NEW, num_beams=4, force_words_ids=[PHRASE], min_new_tokens=7,
                         repetition_penalty=1.5)
    for row in out:
        tokens = generated_tokens(row)
        assert contains(tokens, PHRASE) and len(tokens) >= 8 and EOS not in tokens[:7]


def test_unreachable_constraints_warn_and_return_the_best_found(model, sources):
    with pytest.warns(UserWarning, match="could not satisfy"):
        out = model.generate(**sources, max_new_tokens=3, num_beams=3, force_words_ids=[[3, 4, 5, 7, 8]])
    assert out.shape[0] == 4 and out.shape[1] <= 4


# --------------------------------------------------------------------------------------------------------------
# Batches and num_return_sequences: a batch gives what each source gives alone
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [dict(num_beam_groups=3, diversity_penalty=2.0), dict(force_words_ids=[PHRASE, ALTERNATIVES])],
    ids=["diverse", "constrained"],
)
def test_batched_equals_one_source_at_a_time(model, sources, settings):
    batched = beams(model, sources, num_beams=6, num_return_sequences=3, **settings)
    assert batched.sequences.shape[0] == 4 * 3 and batched.sequences_scores.shape == (12,)
    for i in range(4):
        alone_sources = {k: v[i : i + 1, : int(sources["attention_mask"][i].sum())] for k, v in sources.items()}
        alone = beams(model, alone_sources, num_beams=6, num_return_sequences=3, **settings)
        assert hypotheses(alone, 3)[0] == hypotheses(batched, 3)[i]
        torch.testing.assert_close(alone.sequences_scores, batched.sequences_scores[3 * i : 3 * i + 3], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# Routing: transformers-4 code runs unchanged, offline, without warnings
# --------------------------------------------------------------------------------------------------------------
def test_core_transformers_refuses_these_modes_offline(model, sources):
    with pytest.raises(ValueError, match="trust_remote_code"):
        GenerationMixin.generate(model, **sources, num_beams=4, num_beam_groups=2, diversity_penalty=1.0)
    with pytest.raises(ValueError, match="trust_remote_code"):
        GenerationMixin.generate(model, **sources, num_beams=4, force_words_ids=[PHRASE])


@pytest.mark.parametrize(
    "settings, function",
    [
        (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0), diverse_beam_search),
        (dict(num_beams=4, force_words_ids=[PHRASE, ALTERNATIVES]), constrained_beam_search),
        (dict(num_beams=4, constraints=[PhrasalConstraint(PHRASE), DisjunctiveConstraint(ALTERNATIVES)]),
         constrained_beam_search),
    ],
    ids=["groups", "force_words_ids", "constraints"],
)
def test_generate_routes_by_itself(model, sources, settings, function):
    kwargs = dict(max_new_tokens=MAX_NEW, num_return_sequences=2)
    expected = model.generate(**sources, custom_generate=function, **kwargs, **settings)
    with no_warnings():
        as_arguments = model.generate(**sources, **kwargs, **settings)
        as_config = model.generate(**sources, generation_config=GenerationConfig(**kwargs, **settings))
    assert torch.equal(as_arguments, expected) and torch.equal(as_config, expected)


def test_model_generation_config_routes_and_round_trips(model, sources, tmp_path):
    original = model.generation_config
    try:
        model.generation_config = GenerationConfig.from_dict(
            {**original.to_dict(), "num_beams": 4, "max_new_tokens": MAX_NEW, "constraints": [PhrasalConstraint(PHRASE)]}
        )
        model.generation_config.save_pretrained(tmp_path)  # constraints are lists of ids: they save as JSON
        model.generation_config = GenerationConfig.from_pretrained(tmp_path)
        assert model.generation_config.constraints == [PHRASE]
        with no_warnings():
            out = model.generate(**sources)
        assert all(contains(generated_tokens(row), PHRASE) for row in out)
        model.generation_config.constraints = None
        model.generation_config.num_beam_groups, model.generation_config.diversity_penalty = 2, 1.0
        with no_warnings():
            routed = model.generate(**sources)
        assert torch.equal(routed, model.generate(**sources, custom_generate=diverse_beam_search))
    finally:
        model.generation_config = original


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(num_beams=4, num_beam_groups=3, diversity_penalty=1.0), "multiple of num_beam_groups"),
        (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=True), "do_sample"),
        (dict(num_beams=4, force_words_ids=[[]]), "non-empty"),
        (dict(num_beams=4, force_words_ids=[[3, -1]]), "non-negative"),
        (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, force_words_ids=[[3]]), "num_beam_groups"),
        # Before: ZeroDivisionError / a negative tensor dimension / IndexError from inside the search.
        (dict(num_beams=0), r"num_beams=0: it must be a whole number >= 1"),
        (dict(num_beams=-2), r"num_beams=-2: it must be a whole number >= 1"),
        (dict(generation_config=GenerationConfig(num_beams=0)), r"num_beams=0"),
        (dict(num_beams=4, force_words_ids=[[3, 900]]), r"token ids \[900\] outside the model's vocabulary of \d+"),
        (dict(num_beams=4, force_words_ids=[[[3], [900, 901]]]), r"token ids \[900, 901\] outside"),
    ],
)
def test_invalid_arguments_raise_clear_errors(model, sources, settings, message):
    with pytest.raises(ValueError, match=message):
        model.generate(**sources, max_new_tokens=4, **settings)


def test_saved_checkpoint_runs_both_offline_without_the_package(model, sources, tmp_path):
    from conftest import run_without_package

    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "generation.py").exists()
    torch.save(sources, tmp_path / "sources.pt")
    settings = [dict(num_beams=4, num_beam_groups=2, diversity_penalty=2.0), dict(num_beams=4, force_words_ids=[PHRASE])]
    expected = [model.generate(**sources, max_new_tokens=MAX_NEW, **s) for s in settings]
    torch.save(expected, tmp_path / "expected.pt")
    run_without_package(
        f"""
        import torch
        from transformers import AutoModelForSeq2SeqLM
        model = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        sources = torch.load({str(tmp_path / "sources.pt")!r})
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        for settings, want in zip({settings!r}, expected):
            got = model.generate(**sources, max_new_tokens={MAX_NEW}, **settings)
            assert torch.equal(got, want), (settings, got, want)
        """,
        tmp_path,
    )
