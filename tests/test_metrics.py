"""scratchformers.metrics: offline evaluate modules shipped in the package, drop-in twins of the hub's sacrebleu, chrf
and accuracy metrics (same arguments, same outputs, the values of sacrebleu / scikit-learn), plus bleu_chrf."""

from __future__ import annotations

import ast
import os

import evaluate
import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF
from transformers import EvalPrediction

from scratchformers import train_tokenizer
from scratchformers.metrics import (
    METRIC_MODULES,
    accuracy_compute_metrics,
    bleu_chrf_scores,
    compute_translation_metrics,
    load,
    load_metric,
    metric_path,
    sacrebleu_tokenizer,
    translation_compute_metrics,
)

HYPOTHESES = ["the cat sat on the mat today", "a dog barked at the old postman", "it rained all day long"]
REFERENCES = ["the cat sat on the mat today", "the dog barked at the postman", "it was raining the whole day"]
SECOND_REFERENCES = ["The cat was on the mat today", "A dog barked at an old postman", "It rained all day"]
CHINESE_HYPOTHESES = ["我是一个学生。", "今天天气很好。"]
CHINESE_REFERENCES = ["我是一个老师。", "今天的天气很好。"]

# The outputs the hub modules document (in their order).
HUB_KEYS = {
    "sacrebleu": ["score", "counts", "totals", "precisions", "bp", "sys_len", "ref_len"],
    "chrf": ["score", "char_order", "word_order", "beta"],
    "accuracy": ["accuracy"],
}


def streams(references: list[list[str]]) -> list[list[str]]:
    """sacrebleu's layout (one stream per reference position) of per-prediction reference lists."""
    return [list(stream) for stream in zip(*references)]


# --------------------------------------------------------------------------------------------------------------
# Loading: by name, by path, the hub's namespaced name; unknown names
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METRIC_MODULES))
def test_metric_modules_ship_in_the_package_and_load_by_name_and_path(name):
    path = metric_path(name)
    assert os.path.isabs(path) and os.path.isfile(path)
    assert isinstance(load(name), evaluate.Metric)
    assert isinstance(evaluate.load(path, keep_in_memory=True), evaluate.Metric)
    assert isinstance(load_metric(name), evaluate.Metric)  # the older name


def test_hub_names_and_namespaced_names_load_the_twins():
    assert load("sacrebleu").name == "sacrebleu" and load("evaluate-metric/sacrebleu").name == "sacrebleu"
    assert load("chrf").name == "chr_f" and load("accuracy").name == "accuracy"  # the hub modules' names
    assert load("accuracy", "multilabel").config_name == "multilabel"


@pytest.mark.parametrize("bad", [metric_path, load])
def test_unknown_metric_names_list_the_available_ones(bad):
    with pytest.raises(ValueError, match=r"Unknown metric 'rouge'; available: sacrebleu, chrf, accuracy, bleu_chrf\."):
        bad("rouge")


@pytest.mark.parametrize("name", ["sacrebleu", "chrf", "accuracy"])
def test_drop_in_modules_are_self_contained(name):
    """evaluate copies the file alone into its cache, and a process without this package loads it by path: only
    absolute imports of the libraries a hub module needs."""
    tree = ast.parse(open(metric_path(name), encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in {name}"
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
    assert imported <= {"datasets", "evaluate", "sacrebleu", "numpy", "typing"}


# --------------------------------------------------------------------------------------------------------------
# sacrebleu: the hub's outputs, sacrebleu's values
# --------------------------------------------------------------------------------------------------------------

BLEU_CASES = {
    "defaults": ({}, {}),
    "lowercase": (dict(lowercase=True), dict(lowercase=True)),
    "floor": (dict(smooth_method="floor", smooth_value=0.2), dict(smooth_method="floor", smooth_value=0.2)),
    "add-k": (dict(smooth_method="add-k"), dict(smooth_method="add-k")),
    "none": (dict(smooth_method="none"), dict(smooth_method="none")),
    "effective order": (dict(use_effective_order=True), dict(effective_order=True)),
    "char tokenizer, force": (dict(tokenize="char", force=True), dict(tokenize="char", force=True)),
    "intl tokenizer": (dict(tokenize="intl"), dict(tokenize="intl")),
}


@pytest.mark.parametrize("references", ["one", "two"])
@pytest.mark.parametrize("case", list(BLEU_CASES))
def test_sacrebleu_equals_sacrebleu_bleu(case, references):
    arguments, bleu_arguments = BLEU_CASES[case]
    refs = [[r] for r in REFERENCES] if references == "one" else [list(r) for r in zip(REFERENCES, SECOND_REFERENCES)]
    result = load("sacrebleu").compute(predictions=HYPOTHESES, references=refs, **arguments)
    expected = BLEU(**bleu_arguments).corpus_score(HYPOTHESES, streams(refs))
    assert list(result) == HUB_KEYS["sacrebleu"]
    assert result == {key: getattr(expected, key) for key in HUB_KEYS["sacrebleu"]}
    assert 0 < result["score"] < 100


def test_sacrebleu_chinese_tokenizer_and_plain_string_references():
    metric = load("sacrebleu")
    result = metric.compute(predictions=CHINESE_HYPOTHESES, references=CHINESE_REFERENCES, tokenize="zh")
    assert result["score"] == BLEU(tokenize="zh").corpus_score(CHINESE_HYPOTHESES, [CHINESE_REFERENCES]).score > 0
    # Without the zh tokenizer an unsegmented sentence is one token, so nothing matches.
    assert metric.compute(predictions=CHINESE_HYPOTHESES, references=CHINESE_REFERENCES)["score"] == 0
    with pytest.raises(ValueError, match="same number of references"):
        metric.compute(predictions=["a b", "c d"], references=[["a b"], ["c d", "c e"]])


def test_sacrebleu_hub_documented_example():
    predictions = ["hello there general kenobi", "on our way to ankh morpork"]
    references = [["hello there general kenobi", "hello there !"], ["goodbye ankh morpork", "ankh morpork"]]
    assert round(load("sacrebleu").compute(predictions=predictions, references=references)["score"], 1) == 39.8


# --------------------------------------------------------------------------------------------------------------
# chrf: the hub's outputs, sacrebleu's values
# --------------------------------------------------------------------------------------------------------------

CHRF_CASES = {
    "defaults": {},
    "chrF++": dict(word_order=2),
    "chrF++ lowercase": dict(word_order=2, lowercase=True),
    "orders and beta": dict(char_order=4, beta=1),
    "whitespace": dict(whitespace=True),
    "eps smoothing": dict(eps_smoothing=True, word_order=2),
}


@pytest.mark.parametrize("references", ["one", "two"])
@pytest.mark.parametrize("case", list(CHRF_CASES))
def test_chrf_equals_sacrebleu_chrf(case, references):
    arguments = CHRF_CASES[case]
    refs = [[r] for r in REFERENCES] if references == "one" else [list(r) for r in zip(REFERENCES, SECOND_REFERENCES)]
    result = load("chrf").compute(predictions=HYPOTHESES, references=refs, **arguments)
    expected = CHRF(**arguments).corpus_score(HYPOTHESES, streams(refs))
    assert list(result) == HUB_KEYS["chrf"]
    assert result == {key: getattr(expected, key) for key in HUB_KEYS["chrf"]}
    assert result["word_order"] == arguments.get("word_order", 0)


def test_chrf_hub_documented_examples():
    predictions = [
        "The relationship between cats and dogs is not exactly friendly.",
        "a good bookshop is just a genteel black hole that knows how to read.",
    ]
    references = [
        ["The relationship between dogs and cats is not exactly friendly."],
        ["A good bookshop is just a genteel Black Hole that knows how to read."],
    ]
    chrf = load("chrf")
    assert chrf.compute(predictions=predictions, references=references) == {
        "score": pytest.approx(84.64214891738334), "char_order": 6, "word_order": 0, "beta": 2
    }
    assert chrf.compute(predictions=predictions, references=references, word_order=2)["score"] == pytest.approx(
        82.87263732906315
    )
    lowercase = chrf.compute(predictions=predictions, references=references, word_order=2, lowercase=True)
    assert lowercase["score"] == pytest.approx(92.12853119829202)
    chinese = chrf.compute(predictions=CHINESE_HYPOTHESES, references=CHINESE_REFERENCES)  # plain-string references
    assert chinese["score"] == CHRF().corpus_score(CHINESE_HYPOTHESES, [CHINESE_REFERENCES]).score


# --------------------------------------------------------------------------------------------------------------
# accuracy: the hub's outputs, scikit-learn's values (scikit-learn is a test dependency only)
# --------------------------------------------------------------------------------------------------------------

LABEL_PREDICTIONS, LABEL_REFERENCES = [0, 1, 1, 2, 1, 0], [0, 1, 2, 0, 1, 2]
WEIGHTS = [0.5, 2, 0.7, 0.5, 9, 0.4]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("sample_weight", [None, WEIGHTS])
def test_accuracy_equals_sklearn(normalize, sample_weight):
    accuracy_score = pytest.importorskip("sklearn.metrics").accuracy_score
    result = load("accuracy").compute(
        predictions=LABEL_PREDICTIONS, references=LABEL_REFERENCES, normalize=normalize, sample_weight=sample_weight
    )
    assert list(result) == HUB_KEYS["accuracy"] and isinstance(result["accuracy"], float)
    expected = accuracy_score(LABEL_REFERENCES, LABEL_PREDICTIONS, normalize=normalize, sample_weight=sample_weight)
    assert result["accuracy"] == pytest.approx(float(expected), rel=1e-12)


def test_accuracy_hub_documented_examples_and_multilabel():
    metric = load("accuracy")
    assert metric.compute(predictions=LABEL_PREDICTIONS, references=LABEL_REFERENCES) == {"accuracy": 0.5}
    assert metric.compute(predictions=LABEL_PREDICTIONS, references=LABEL_REFERENCES, normalize=False) == {
        "accuracy": 3.0
    }
    weighted = metric.compute(predictions=LABEL_PREDICTIONS, references=LABEL_REFERENCES, sample_weight=WEIGHTS)
    assert weighted["accuracy"] == pytest.approx(0.8778625954198473)
    accuracy_score = pytest.importorskip("sklearn.metrics").accuracy_score
    predictions, references = [[0, 1, 1], [1, 0, 1], [0, 0, 0]], [[0, 1, 1], [1, 1, 1], [0, 0, 0]]
    multilabel = load("accuracy", "multilabel")
    for normalize in (True, False):
        result = multilabel.compute(predictions=predictions, references=references, normalize=normalize)
        expected = accuracy_score(np.array(references), np.array(predictions), normalize=normalize)
        assert result == {"accuracy": pytest.approx(float(expected))}


# --------------------------------------------------------------------------------------------------------------
# bleu_chrf and the Trainer compute_metrics built on the modules
# --------------------------------------------------------------------------------------------------------------


def test_bleu_chrf_equal_sacrebleu():
    result = load_metric("bleu_chrf").compute(predictions=HYPOTHESES, references=[[r] for r in REFERENCES])
    bleu = BLEU().corpus_score(HYPOTHESES, [REFERENCES])
    assert result == {
        "bleu": bleu.score,
        "chrf": CHRF().corpus_score(HYPOTHESES, [REFERENCES]).score,
        "precisions": bleu.precisions,
        "brevity_penalty": bleu.bp,
        "sys_len": bleu.sys_len,
        "ref_len": bleu.ref_len,
    }
    assert 0 < result["bleu"] < 100 and len(result["precisions"]) == 4
    lowercase = load("bleu_chrf").compute(predictions=HYPOTHESES, references=SECOND_REFERENCES, lowercase=True)
    assert lowercase == bleu_chrf_scores(HYPOTHESES, SECOND_REFERENCES, lowercase=True)
    assert lowercase["chrf"] == CHRF(lowercase=True).corpus_score(HYPOTHESES, [SECOND_REFERENCES]).score
    # Single-string references are accepted too, and identical text scores 100.
    perfect = compute_translation_metrics(REFERENCES, REFERENCES)
    assert perfect == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}


def test_multiple_references_and_chinese_tokenization():
    metric = load_metric("bleu_chrf")
    refs = [[r, h] for r, h in zip(REFERENCES, HYPOTHESES)]
    assert metric.compute(predictions=HYPOTHESES, references=refs)["bleu"] == pytest.approx(100.0)
    assert sacrebleu_tokenizer("zh") == "zh" and sacrebleu_tokenizer("zh-CN") == "zh"
    assert sacrebleu_tokenizer("de") == "13a" and sacrebleu_tokenizer(None) == "13a"
    zh = compute_translation_metrics(["我是一个学生。"], ["我是一个老师。"], target_lang="zh")
    assert zh["bleu"] > 0  # without the zh tokenizer an unsegmented sentence is one token and scores 0
    assert compute_translation_metrics(["我是一个学生。"], ["我是一个老师。"], target_lang="en")["bleu"] == 0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_translation_metrics(["a", "b"], ["a"])


def test_translation_compute_metrics_decodes_minus_100_padding():
    tokenizer = train_tokenizer(REFERENCES * 20, vocab_size=300)
    pad = -100

    def encode(texts):
        ids = [tokenizer(t)["input_ids"] for t in texts]
        width = max(map(len, ids)) + 2
        return np.array([row + [pad] * (width - len(row)) for row in ids])

    compute = translation_compute_metrics(tokenizer, target_lang="en")
    perfect = compute(EvalPrediction(predictions=encode(REFERENCES), label_ids=encode(REFERENCES)))
    assert list(perfect) == ["bleu", "chrf", "gen_len"]
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    expected_len = np.mean([len(tokenizer(t)["input_ids"]) - 1 for t in REFERENCES])  # minus </s>
    assert perfect["gen_len"] == pytest.approx(expected_len, abs=1e-3)
    partial = compute(EvalPrediction(predictions=encode(HYPOTHESES), label_ids=encode(REFERENCES)))
    assert partial["bleu"] == pytest.approx(compute_translation_metrics(HYPOTHESES, REFERENCES)["bleu"], abs=1e-3)
    assert partial["chrf"] == pytest.approx(CHRF().corpus_score(HYPOTHESES, [REFERENCES]).score, abs=1e-3)


def test_accuracy_compute_metrics_takes_argmax():
    logits = np.array([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    result = accuracy_compute_metrics()(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0])))
    assert result == {"accuracy": pytest.approx(2 / 3)}
