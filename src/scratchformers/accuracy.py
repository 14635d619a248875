"""Accuracy as an offline ``evaluate`` metric: a drop-in replacement of the hub's ``evaluate.load("accuracy")``.

Same arguments (``normalize``, ``sample_weight``, the "multilabel" config) and output (``accuracy``) as the hub
module, whose values are scikit-learn's ``accuracy_score``; computed here with numpy, so the package needs no
scikit-learn. Loaded by absolute path (``scratchformers.metrics.load("accuracy")``); self-contained on purpose, as
``evaluate`` copies the file into its module cache before importing it.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Accuracy: the proportion of correct predictions among all the cases, (TP + TN) / (TP + TN + FP + FN). With the
"multilabel" config a prediction is correct when its whole label set equals the reference's (subset accuracy).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels (with "multilabel": a list of 0/1 indicators per case).
    references (`list` of `int`): true labels (same layout).
    normalize (`bool`): return the fraction (True, default) or the (weighted) count of correct predictions.
    sample_weight (`list` of `float`): weight of each case. Default None: all 1.
Returns:
    accuracy (`float`): 0-1, or the (weighted) number of correct predictions when `normalize` is False.
Examples:
    >>> accuracy = evaluate.load(scratchformers.metrics.metric_path("accuracy"))
    >>> accuracy.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0])
    {'accuracy': 0.5}
    >>> accuracy.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0], normalize=False)
    {'accuracy': 3.0}
    >>> accuracy.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0],
    ...                  sample_weight=[0.5, 2, 0.7, 0.5, 9, 0.4])
    {'accuracy': 0.8778625954198473}
"""

_CITATION = """\
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        label = datasets.Value("int64")
        multilabel = self.config_name == "multilabel"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(label), "references": datasets.Sequence(label)}
                if multilabel
                else {"predictions": label, "references": label}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize: bool = True, sample_weight=None) -> dict:
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions of shape {predictions.shape} but references of shape {references.shape}.")
        correct = predictions == references
        if correct.ndim > 1:  # multilabel: the whole row must match
            correct = correct.all(axis=tuple(range(1, correct.ndim)))
        correct = correct.astype(np.float64)
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if not normalize:
            return {"accuracy": float(correct.sum() if weights is None else correct @ weights)}
        if correct.size == 0:
            return {"accuracy": 0.0}
        return {"accuracy": float(np.average(correct, weights=weights))}
