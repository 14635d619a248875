"""BLEU and chrF (sacrebleu) as an ``evaluate`` metric module that loads offline.

``evaluate.load("sacrebleu")`` fetches its script from the hub; this module ships inside the package and is
loaded by absolute path (``scratchformers.metrics.load_metric("bleu_chrf")``). It is self-contained (no relative
imports) because ``evaluate`` copies it into its module cache before importing it.
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU, CHRF

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    pages = "392--395",
}
"""

_DESCRIPTION = """\
Corpus-level BLEU and chrF computed with sacrebleu (default tokenizer 13a; "zh" for Chinese targets).
Scores are on a 0-100 scale, as sacrebleu prints them.
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
    >>> metric = scratchformers.metrics.load_metric("bleu_chrf")
    >>> metric.compute(predictions=["the cat sat on the mat"], references=[["the cat sat on the mat"]])["bleu"]
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BleuChrf(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
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
        if references and isinstance(references[0], str):
            references = [[ref] for ref in references]
        counts = {len(refs) for refs in references}
        if len(counts) > 1:
            raise ValueError("Every prediction needs the same number of references.")
        # sacrebleu wants one stream per reference position: [[ref1 of each sentence], [ref2 of each sentence], ...]
        streams = [list(stream) for stream in zip(*references)] if references else [[]]
        bleu = BLEU(tokenize=tokenize, lowercase=lowercase).corpus_score(predictions, streams)
        chrf = CHRF(lowercase=lowercase).corpus_score(predictions, streams)
        return {
            "bleu": float(bleu.score),
            "chrf": float(chrf.score),
            "precisions": [float(p) for p in bleu.precisions],
            "brevity_penalty": float(bleu.bp),
            "sys_len": int(bleu.sys_len),
            "ref_len": int(bleu.ref_len),
        }
