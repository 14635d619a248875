"""SacreBLEU as an offline ``evaluate`` metric: a drop-in replacement of the hub's ``evaluate.load("sacrebleu")``.

Same arguments and the same outputs (``score``, ``counts``, ``totals``, ``precisions``, ``bp``, ``sys_len``,
``ref_len``) as the hub module, computed by sacrebleu's ``BLEU``; but it ships inside the package, so
``evaluate.load(scratchformers.metrics.metric_path("sacrebleu"))`` (or ``scratchformers.metrics.load("sacrebleu")``)
works without the network. Self-contained (no relative imports): ``evaluate`` copies the file into its module cache
before importing it, and a process without scratchformers can load it by path.
"""

from typing import Optional

import datasets
import evaluate
from sacrebleu.metrics import BLEU

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
Corpus-level BLEU of detokenised predictions against one or more references, computed by sacrebleu (reproducible,
WMT-comparable scores on a 0-100 scale). The offline twin of the hub's "sacrebleu" metric.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the translations to score (detokenised text).
    references (`list` of `list` of `str`, or `list` of `str`): the references of each prediction; every
        prediction needs the same number of references.
    smooth_method (`str`): "exp" (default), "floor", "add-k" or "none".
    smooth_value (`float`): the value of "floor" (default 0.1) or "add-k" (default 1) smoothing.
    force (`bool`): score input that looks tokenised without a warning. Default False.
    lowercase (`bool`): case-insensitive BLEU. Default False.
    tokenize (`str`): sacrebleu tokenizer ("13a", "zh", "intl", "char", "none", ...). Default None: "13a".
    use_effective_order (`bool`): leave out n-gram orders without matches (for sentence-level BLEU). Default False.
Returns:
    score (`float`): BLEU, 0-100.
    counts (`list` of `int`): matching 1- to 4-grams.
    totals (`list` of `int`): 1- to 4-grams in the predictions.
    precisions (`list` of `float`): n-gram precisions, 0-100.
    bp (`float`): brevity penalty.
    sys_len (`int`): length of the predictions, in tokens.
    ref_len (`int`): effective length of the references, in tokens.
Examples:
    >>> sacrebleu = evaluate.load(scratchformers.metrics.metric_path("sacrebleu"))
    >>> results = sacrebleu.compute(predictions=["hello there general kenobi"],
    ...                             references=[["hello there general kenobi", "hello there !"]])
    >>> list(results)
    ['score', 'counts', 'totals', 'precisions', 'bp', 'sys_len', 'ref_len']
    >>> round(results["score"], 1)
    100.0
"""


def _reference_streams(references) -> list[list[str]]:
    """sacrebleu's layout, one stream per reference position, from one reference (list) per prediction."""
    references = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    if len({len(refs) for refs in references}) > 1:
        raise ValueError("Sacrebleu requires the same number of references for each prediction.")
    return [list(stream) for stream in zip(*references)] if references else [[]]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Sacrebleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            homepage="https://github.com/mjpost/sacreBLEU",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/mjpost/sacreBLEU"],
            reference_urls=["https://github.com/mjpost/sacreBLEU", "https://en.wikipedia.org/wiki/BLEU"],
        )

    def _compute(
        self,
        predictions,
        references,
        smooth_method: str = "exp",
        smooth_value: Optional[float] = None,
        force: bool = False,
        lowercase: bool = False,
        tokenize: Optional[str] = None,
        use_effective_order: bool = False,
    ) -> dict:
        bleu = BLEU(
            lowercase=lowercase,
            force=force,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            effective_order=use_effective_order,
        )
        output = bleu.corpus_score(list(predictions), _reference_streams(references))
        return {
            "score": float(output.score),
            "counts": [int(count) for count in output.counts],
            "totals": [int(total) for total in output.totals],
            "precisions": [float(precision) for precision in output.precisions],
            "bp": float(output.bp),
            "sys_len": int(output.sys_len),
            "ref_len": int(output.ref_len),
        }
