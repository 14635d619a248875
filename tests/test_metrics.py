"""scratchformers.metrics: evaluate modules shipped in the package (offline), BLEU/chrF and accuracy."""

from __future__ import annotations

import os

import evaluate
import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF
from transformers import EvalPrediction

from scratchformers import train_tokenizer
from scratchformers.metrics import (
    accuracy_compute_metrics,
    compute_translation_metrics,
    load_metric,
    metric_path,
    sacrebleu_tokenizer,
    translation_compute_metrics,
)

HYPOTHESES = ["the cat sat on the mat today", "a dog barked at the old postman", "it rained all day long"]
REFERENCES = ["the cat sat on the mat today", "the dog barked at the postman", "it was raining the whole day"]


def test_metric_modules_ship_in_the_package_and_load_by_path():
    for name in ("bleu_chrf", "accuracy"):
        path = metric_path(name)
        assert os.path.isabs(path) and os.path.isfile(path)
        assert isinstance(load_metric(name), evaluate.EvaluationModule)
    with pytest.raises(ValueError, match="Unknown metric 'rouge'"):
        metric_path("rouge")


def test_bleu_chrf_equal_sacrebleu():
    result = load_metric("bleu_chrf").compute(predictions=HYPOTHESES, references=[[r] for r in REFERENCES])
    assert result["bleu"] == pytest.approx(BLEU().corpus_score(HYPOTHESES, [REFERENCES]).score)
    assert result["chrf"] == pytest.approx(CHRF().corpus_score(HYPOTHESES, [REFERENCES]).score)
    assert 0 < result["bleu"] < 100 and len(result["precisions"]) == 4
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


def test_accuracy_module():
    metric = load_metric("accuracy")
    assert metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 0, 2]) == {"accuracy": 0.75}
    assert metric.compute(predictions=[0, 1], references=[0, 0], normalize=False) == {"accuracy": 1.0}


def test_translation_compute_metrics_decodes_minus_100_padding():
    tokenizer = train_tokenizer(REFERENCES * 20, vocab_size=300)
    pad = -100

    def encode(texts):
        ids = [tokenizer(t)["input_ids"] for t in texts]
        width = max(map(len, ids)) + 2
        return np.array([row + [pad] * (width - len(row)) for row in ids])

    compute = translation_compute_metrics(tokenizer, target_lang="en")
    perfect = compute(EvalPrediction(predictions=encode(REFERENCES), label_ids=encode(REFERENCES)))
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    expected_len = np.mean([len(tokenizer(t)["input_ids"]) - 1 for t in REFERENCES])  # minus </s>
    assert perfect["gen_len"] == pytest.approx(expected_len, abs=1e-3)
    partial = compute(EvalPrediction(predictions=encode(HYPOTHESES), label_ids=encode(REFERENCES)))
    assert partial["bleu"] == pytest.approx(compute_translation_metrics(HYPOTHESES, REFERENCES)["bleu"], abs=1e-3)


def test_accuracy_compute_metrics_takes_argmax():
    logits = np.array([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    result = accuracy_compute_metrics()(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0])))
    assert result == {"accuracy": pytest.approx(2 / 3)}
