"""Evaluation metrics that work offline: sacrebleu BLEU, chrF and accuracy as ``evaluate`` modules.

``evaluate.load("sacrebleu")`` downloads its script from the hub. The package ships drop-in twins of the hub's
``sacrebleu``, ``chrf`` and ``accuracy`` metrics (same arguments, same outputs), plus ``bleu_chrf`` (both scores in
one call), as self-contained module files; ``load(name)`` loads one by name and ``metric_path(name)`` gives the
path for ``evaluate.load`` in a process without this package. ``Trainer`` gets a ``compute_metrics`` from
``translation_compute_metrics`` / ``accuracy_compute_metrics``.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np

# Metric name (as on the hub, where there is a hub twin) -> module file next to this one.
METRIC_MODULES = {
    "sacrebleu": "sacrebleu_metric.py",
    "chrf": "chrf_metric.py",
    "accuracy": "accuracy.py",
    "bleu_chrf": "bleu_chrf.py",
}
_HUB_NAMESPACE = "evaluate-metric/"


def metric_path(name: str) -> str:
    """Absolute path of a shipped metric module (what ``evaluate.load`` is given)."""
    name = name[len(_HUB_NAMESPACE):] if name.startswith(_HUB_NAMESPACE) else name
    if name not in METRIC_MODULES:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(METRIC_MODULES)}.")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), METRIC_MODULES[name])


def load(name: str, config_name: Optional[str] = None, **kwargs):
    """``evaluate.load`` of a shipped metric by name ("sacrebleu", "chrf", "accuracy", "bleu_chrf"), offline.

    A drop-in for ``evaluate.load(name)`` of the hub metrics (``"evaluate-metric/sacrebleu"`` works too). Kept in
    memory by default (``keep_in_memory=True``) so that parallel processes have no cache files to clash on.
    """
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(metric_path(name), config_name, **kwargs)


load_metric = load  # the older name


def sacrebleu_tokenizer(target_lang: Optional[str]) -> str:
    """sacrebleu's tokenizer for a target language: "zh" for Chinese, "13a" (the WMT standard) otherwise."""
    return "zh" if (target_lang or "").lower().split("-")[0].split("_")[0] == "zh" else "13a"


def compute_translation_metrics(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], target_lang: Optional[str] = None
) -> dict[str, float]:
    """Corpus BLEU and chrF (0-100) of detokenised predictions against references, through the evaluate modules."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    result = bleu_chrf_scores(list(predictions), list(references), tokenize=sacrebleu_tokenizer(target_lang))
    return {"bleu": result["bleu"], "chrf": result["chrf"]}


def bleu_chrf_scores(
    predictions: list[str],
    references: list,
    tokenize: str = "13a",
    lowercase: bool = False,
    modules: Optional[tuple] = None,
) -> dict:
    """BLEU and chrF through the ``sacrebleu`` and ``chrf`` modules (the ``bleu_chrf`` metric's outputs).

    ``modules``: already loaded ``(sacrebleu, chrf)`` modules, to reuse them across calls.
    """
    sacrebleu, chrf = modules or (load("sacrebleu"), load("chrf"))
    inputs = dict(predictions=predictions, references=references, lowercase=lowercase)
    bleu = sacrebleu.compute(**inputs, tokenize=tokenize)
    return {
        "bleu": bleu["score"],
        "chrf": chrf.compute(**inputs)["score"],
        "precisions": bleu["precisions"],
        "brevity_penalty": bleu["bp"],
        "sys_len": bleu["sys_len"],
        "ref_len": bleu["ref_len"],
    }


def _ids_to_text(tokenizer, ids: np.ndarray) -> list[str]:
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)  # Trainer pads predictions and labels with -100
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def translation_compute_metrics(tokenizer, target_lang: Optional[str] = None) -> Callable:
    """A ``compute_metrics`` for ``Seq2SeqTrainer(predict_with_generate=True)``: bleu, chrf and gen_len."""
    modules, tokenize = (load("sacrebleu"), load("chrf")), sacrebleu_tokenizer(target_lang)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions, labels = np.asarray(predictions), np.asarray(labels)
        decoded_predictions = _ids_to_text(tokenizer, predictions)
        decoded_labels = _ids_to_text(tokenizer, labels)
        result = bleu_chrf_scores(decoded_predictions, decoded_labels, tokenize=tokenize, modules=modules)
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
    metric = load("accuracy")

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        predictions = np.argmax(np.asarray(logits), axis=-1)
        references = np.asarray(eval_prediction.label_ids).tolist()
        return metric.compute(predictions=predictions.tolist(), references=references)

    return compute_metrics


__all__ = [
    "METRIC_MODULES",
    "accuracy_compute_metrics",
    "bleu_chrf_scores",
    "compute_translation_metrics",
    "load",
    "load_metric",
    "metric_path",
    "sacrebleu_tokenizer",
    "translation_compute_metrics",
]
