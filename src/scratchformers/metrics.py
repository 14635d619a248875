"""Evaluation metrics that work offline: BLEU / chrF (sacrebleu) for translation, accuracy for images.

The metrics are ``evaluate`` modules shipped in this package (``bleu_chrf.py``, ``accuracy.py``) and loaded by
absolute path, because ``evaluate.load("sacrebleu")`` downloads its script from the hub. ``Trainer`` gets a
``compute_metrics`` from ``translation_compute_metrics`` / ``accuracy_compute_metrics``.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np

METRIC_MODULES = {"bleu_chrf": "bleu_chrf.py", "accuracy": "accuracy.py"}


def metric_path(name: str) -> str:
    """Absolute path of a shipped metric module (what ``evaluate.load`` is given)."""
    if name not in METRIC_MODULES:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(METRIC_MODULES)}.")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), METRIC_MODULES[name])


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of a shipped metric ("bleu_chrf" or "accuracy"), in memory (no cache files to clash on)."""
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(metric_path(name), **kwargs)


def sacrebleu_tokenizer(target_lang: Optional[str]) -> str:
    """sacrebleu's tokenizer for a target language: "zh" for Chinese, "13a" (the WMT standard) otherwise."""
    return "zh" if (target_lang or "").lower().split("-")[0].split("_")[0] == "zh" else "13a"


def compute_translation_metrics(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], target_lang: Optional[str] = None
) -> dict[str, float]:
    """Corpus BLEU and chrF (0-100) of detokenised predictions against references, through the evaluate module."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    result = load_metric("bleu_chrf").compute(
        predictions=list(predictions), references=list(references), tokenize=sacrebleu_tokenizer(target_lang)
    )
    return {"bleu": result["bleu"], "chrf": result["chrf"]}


def _ids_to_text(tokenizer, ids: np.ndarray) -> list[str]:
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)  # Trainer pads predictions and labels with -100
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def translation_compute_metrics(tokenizer, target_lang: Optional[str] = None) -> Callable:
    """A ``compute_metrics`` for ``Seq2SeqTrainer(predict_with_generate=True)``: bleu, chrf and gen_len."""
    metric = load_metric("bleu_chrf")
    tokenize = sacrebleu_tokenizer(target_lang)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions, labels = np.asarray(predictions), np.asarray(labels)
        decoded_predictions = _ids_to_text(tokenizer, predictions)
        decoded_labels = _ids_to_text(tokenizer, labels)
        result = metric.compute(predictions=decoded_predictions, references=decoded_labels, tokenize=tokenize)
        special = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}
        lengths = [sum(1 for t in row if t >= 0 and t not in special) for row in predictions]
        return {
            "bleu": round(result["bleu"], 4),
            "chrf": round(result["chrf"], 4),
            "gen_len": round(float(np.mean(lengths)) if lengths else 0.0, 4),
        }

    return compute_metrics


def accuracy_compute_metrics() -> Callable:
    """A ``compute_metrics`` for image classification: accuracy of the arg-max logits."""
    metric = load_metric("accuracy")

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        predictions = np.argmax(np.asarray(logits), axis=-1)
        return metric.compute(predictions=predictions.tolist(), references=np.asarray(eval_prediction.label_ids).tolist())

    return compute_metrics


__all__ = [
    "METRIC_MODULES",
    "accuracy_compute_metrics",
    "compute_translation_metrics",
    "load_metric",
    "metric_path",
    "sacrebleu_tokenizer",
    "translation_compute_metrics",
]
