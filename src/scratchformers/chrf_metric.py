"""chrF / chrF++ as an offline ``evaluate`` metric: a drop-in replacement of the hub's ``evaluate.load("chrf")``.

Same arguments and the same outputs (``score``, ``char_order``, ``word_order``, ``beta``) as the hub module,
computed by sacrebleu's ``CHRF``; it ships inside the package, so it loads without the network
(``scratchformers.metrics.load("chrf")``). Self-contained (no relative imports) because ``evaluate`` copies the
file into its module cache before importing it.
"""

import datasets
import evaluate
from sacrebleu.metrics import CHRF

_CITATION = """\
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    pages = "392--395",
}
@inproceedings{popovic-2017-chrf,
    title = "chr{F}++: words helping character n-grams",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Second Conference on Machine Translation",
    year = "2017",
    pages = "612--618",
}
"""

_DESCRIPTION = """\
chrF: the F-score of character n-gram matches between predictions and references (chrF++ adds word n-grams),
computed by sacrebleu on a 0-100 scale. The offline twin of the hub's "chrf" metric.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the predicted sentences.
    references (`list` of `list` of `str`, or `list` of `str`): the references of each prediction; every
        prediction needs the same number of references.
    char_order (`int`): character n-gram order. Default 6.
    word_order (`int`): word n-gram order; 2 gives chrF++. Default 0.
    beta (`int`): weight of recall relative to precision. Default 2.
    lowercase (`bool`): case-insensitive chrF. Default False.
    whitespace (`bool`): keep whitespace in the character n-grams. Default False.
    eps_smoothing (`bool`): epsilon smoothing as chrF++.py, NLTK and Moses do; else the effective order of
        sacreBLEU < 2.0. Default False.
Returns:
    score (`float`): chrF (chrF++), 0-100.
    char_order (`int`), word_order (`int`), beta (`int`): the settings it was computed with.
Examples:
    >>> chrf = evaluate.load(scratchformers.metrics.metric_path("chrf"))
    >>> chrf.compute(predictions=["the cat sat"], references=[["the cat sat"]])
    {'score': 100.0, 'char_order': 6, 'word_order': 0, 'beta': 2}
"""


def _reference_streams(references) -> list[list[str]]:
    """sacrebleu's layout, one stream per reference position, from one reference (list) per prediction."""
    references = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    if len({len(refs) for refs in references}) > 1:
        raise ValueError("ChrF requires the same number of references for each prediction.")
    return [list(stream) for stream in zip(*references)] if references else [[]]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ChrF(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            homepage="https://github.com/mjpost/sacreBLEU#chrf--chrf",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/mjpost/sacreBLEU#chrf--chrf"],
            reference_urls=["https://github.com/m-popovic/chrF"],
        )

    def _compute(
        self,
        predictions,
        references,
        char_order: int = CHRF.CHAR_ORDER,
        word_order: int = CHRF.WORD_ORDER,
        beta: int = CHRF.BETA,
        lowercase: bool = False,
        whitespace: bool = False,
        eps_smoothing: bool = False,
    ) -> dict:
        chrf = CHRF(
            char_order=char_order,
            word_order=word_order,
            beta=beta,
            lowercase=lowercase,
            whitespace=whitespace,
            eps_smoothing=eps_smoothing,
        )
        output = chrf.corpus_score(list(predictions), _reference_streams(references))
        return {
            "score": float(output.score),
            "char_order": int(output.char_order),
            "word_order": int(output.word_order),
            "beta": int(output.beta),
        }
