"""BLEU and chrF together as one offline ``evaluate`` metric (``scratchformers.metrics.load("bleu_chrf")``).

Kept for code that reads ``bleu`` / ``chrf`` from one ``compute``. It computes nothing itself: BLEU comes from the
package's ``sacrebleu`` module and chrF from its ``chrf`` module (the drop-in twins of the hub metrics), so each
score has one implementation. Imports only absolutely (``evaluate`` copies the file into its module cache).
"""

import datasets
import evaluate

_DESCRIPTION = """\
Corpus-level BLEU and chrF computed with sacrebleu (default tokenizer 13a; "zh" for Chinese targets), on a 0-100
scale: the package's "sacrebleu" and "chrf" metrics in one call.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of hypothesis strings.
    references: list of reference strings, or list of lists of reference strings (the same number for every
        prediction).
    tokenize: sacrebleu tokenizer for BLEU ("13a", "zh", "intl", "char", "none", ...). Default "13a".
    lowercase: lowercase before scoring. Default False.
Returns:
    bleu, chrf, and BLEU's details: precisions (1-4 gram), brevity_penalty, sys_len, ref_len.
Examples:
    >>> metric = scratchformers.metrics.load("bleu_chrf")
    >>> metric.compute(predictions=["the cat sat on the mat"], references=[["the cat sat on the mat"]])["bleu"]
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BleuChrf(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="See the citations of the package's sacrebleu and chrf metrics.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, tokenize: str = "13a", lowercase: bool = False) -> dict:
        from scratchformers.metrics import bleu_chrf_scores, load  # absolute: this file runs from evaluate's cache

        if not hasattr(self, "_modules"):
            self._modules = (load("sacrebleu"), load("chrf"))
        return bleu_chrf_scores(predictions, references, tokenize=tokenize, lowercase=lowercase, modules=self._modules)
