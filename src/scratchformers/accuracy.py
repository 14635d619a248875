"""Accuracy as an ``evaluate`` metric module that loads offline (``evaluate.load("accuracy")`` needs the hub).

Loaded by absolute path through ``scratchformers.metrics.load_metric("accuracy")``; self-contained on purpose.
"""

import datasets
import evaluate

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their reference label (0-1)."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted class ids.
    references: list of true class ids.
    normalize: return the fraction (True, default) or the count of correct predictions.
Returns:
    accuracy
Examples:
    >>> scratchformers.metrics.load_metric("accuracy").compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize: bool = True) -> dict:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        if not normalize:
            return {"accuracy": float(correct)}
        return {"accuracy": correct / len(predictions) if predictions else 0.0}
