"""int8 on a trained model: held-out BLEU and speed of ours (fp32, dynamic int8) against CTranslate2 (fp32, int8).

    python training/run.py                                           # trains outputs/translation (the default)
    python benchmarks/bench_int8.py --model outputs/translation --threads 1 --clock cpu

``bench_decode`` times random weights; this one asks what int8 costs in translation quality, on the sentences a
trained model was held out from. The engines, all from the one saved model:

- ``ours_fp32``: ``AutoModelForSeq2SeqLM.from_pretrained(--model)`` with ``config.forward_implementation`` =
  ``--forward-implementation``; ``ours_int8``: the README's ``scratchformers.quantize_int8`` of it;
- ``ours_bf16``: the fp32 model's ``generate`` under ``torch.autocast("cpu", dtype=torch.bfloat16)``, what the
  translation pipeline runs with ``autocast_bf16=True``; timed on a CPU with bf16 instructions
  (``precision.native_bf16_cpu``), elsewhere skipped, unless ``--bf16`` forces it;
- ``ct2_fp32`` / ``ct2_int8``: ``scratchformers.export_ct2`` of it (``quantization=None`` / ``"int8"``), run by
  ``ctranslate2.Translator(device="cpu", intra_threads=--threads)``; skipped (keys null) without ``ctranslate2``.

Each engine translates the first ``--samples`` test pairs of ``--dataset_name`` (the split training held out) in
batches of ``--batch``, with the model's generation config (beam size, ``max_length``; ``--num-beams`` overrides
the beam size), in alternating rounds; speed = source sentences per second, each ratio the median of its per-round
ratios (ours / theirs). BLEU and chrF are sacreBLEU's, of the detokenised translations against the references.

The last line of the output is one JSON object: ``int8_bleu_minus_fp32`` (the issue's quality bound: within 0.5),
``bf16_bleu_minus_fp32``, ``bf16_vs_fp32``,
``int8_vs_ct2_int8`` and ``fp32_vs_ct2_fp32`` (ours / theirs, sentences/s), every engine's ``bleu`` / ``chrf`` /
``sentences_per_s``, and ``cpu``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_common_arguments, alternate, loadavg, print_report  # noqa: E402
from bench_decode import ENGINES, bf16_skip_reason, cpu_model, ct2_translators, int8  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RATIOS = {"fp32_vs_ct2_fp32": ("ours_fp32", "ct2_fp32"), "int8_vs_ct2_int8": ("ours_int8", "ct2_int8"),
          "int8_vs_fp32": ("ours_int8", "ours_fp32"), "ct2_int8_vs_ct2_fp32": ("ct2_int8", "ct2_fp32"),
          "bf16_vs_fp32": ("ours_bf16", "ours_fp32"), "bf16_vs_ct2_fp32": ("ours_bf16", "ct2_fp32")}


def smoke_model(directory: Path, sentences: list[str]) -> Path:
    """A random tiny model and a tokenizer trained on ``sentences``, saved to ``directory`` (for ``--smoke``)."""
    import scratchformers as sf

    tokenizer = sf.train_tokenizer(sentences, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    config = sf.ScratchTransformerConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                                         encoder_attention_heads=2, decoder_attention_heads=2, ffn_dim=64)
    model = sf.ScratchTransformerForConditionalGeneration(config)
    model.generation_config.update(num_beams=2, max_length=8)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def batches(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def torch_translate_fn(model, tokenizer, sources: list[str], batch: int, num_beams: int, max_length: int,
                       bf16: bool = False):
    """All of ``sources``, translated in batches by ``model.generate`` (under bf16 autocast if ``bf16``): the
    decoded strings."""
    encoded = [tokenizer(chunk, return_tensors="pt", padding=True, truncation=True) for chunk in batches(sources, batch)]

    @torch.inference_mode()
    def run() -> list[str]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = [model.generate(**inputs, num_beams=num_beams, max_length=max_length, do_sample=False)
                       for inputs in encoded]
        return [text for rows in outputs for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]

    return run


def ct2_translate_fn(translator, tokenizer, sources: list[str], batch: int, num_beams: int, max_length: int):
    """All of ``sources``, translated in batches by a CTranslate2 ``Translator``: the decoded strings."""
    tokens = [tokenizer.convert_ids_to_tokens(tokenizer(text, truncation=True).input_ids) for text in sources]

    def run() -> list[str]:
        # generate's max_length counts the decoder's start token, CTranslate2's max_decoding_length does not
        results = [result for chunk in batches(tokens, batch)
                   for result in translator.translate_batch(chunk, beam_size=num_beams,
                                                            max_decoding_length=max_length - 1, return_scores=False)]
        ids = [tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]
        return tokenizer.batch_decode(ids, skip_special_tokens=True)

    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained scratchformers translation model (training/run.py's output_dir)")
    parser.add_argument("--dataset_name", default="embedded:bible", help="whose test split to translate")
    parser.add_argument("--samples", type=int, default=285, help="first N test pairs (285: all of embedded:bible's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-beams", type=int, default=0, help="0: the model's generation_config.num_beams")
    add_common_arguments(parser, rounds=3)
    parser.set_defaults(warmup=1)
    args = parser.parse_args(argv)
    if not (args.model or args.smoke):
        parser.error("--model DIR is required (a trained translation model: python training/run.py writes "
                     "outputs/translation)")
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import scratchformers.metrics
    from scratchformers.data import load_translation_dataset

    test = load_translation_dataset(args.dataset_name)[0]["test"]
    workdir = tempfile.TemporaryDirectory(prefix="bench_int8_smoke_")
    if args.smoke:
        args.samples, args.batch, args.rounds = 4, 2, 1
        args.model = str(smoke_model(Path(workdir.name) / "model", test["source"][:8] + test["target"][:8]))
    test = test.select(range(min(args.samples, len(test))))
    sources, references = list(test["source"]), list(test["target"])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model).eval()
    model.config.forward_implementation = args.forward_implementation
    num_beams = args.num_beams or model.generation_config.num_beams or 1
    max_length = model.generation_config.max_length

    skipped: dict = {}
    runs = {name: torch_translate_fn(engine, tokenizer, sources, args.batch, num_beams, max_length)
            for name, engine in (("ours_fp32", model), ("ours_int8", int8(model)))}
    reason = bf16_skip_reason(args)
    if reason is None:
        runs["ours_bf16"] = torch_translate_fn(model, tokenizer, sources, args.batch, num_beams, max_length, bf16=True)
    else:
        skipped["ours_bf16"] = reason
    translators, _, ct2_version = ct2_translators(model, torch.get_num_threads(), skipped, tokenizer=tokenizer)
    for name, translator in translators.items():
        runs[name] = ct2_translate_fn(translator, tokenizer, sources, args.batch, num_beams, max_length)
    runs = {name: runs[name] for name in ENGINES if name in runs}

    translations = {name: run() for name, run in runs.items()}  # the warm-up, and the texts scored
    for _ in range(args.warmup - 1):
        for run in runs.values():
            run()
    load_before = loadavg()
    ratios = {key: pair for key, pair in RATIOS.items() if set(pair) <= set(runs)}
    timing = alternate(runs, len(sources), 1, args.rounds, args.clock, ratios=ratios)
    bleu, chrf = scratchformers.metrics.load("sacrebleu"), scratchformers.metrics.load("chrf")
    per_sentence = [[reference] for reference in references]
    scores = {name: {"bleu": round(bleu.compute(predictions=texts, references=per_sentence)["score"], 2),
                     "chrf": round(chrf.compute(predictions=texts, references=per_sentence)["score"], 2)}
              for name, texts in translations.items()}

    report: dict = {"model": args.model, "samples": len(sources), "batch": args.batch, "num_beams": num_beams,
                    "threads": torch.get_num_threads(), "cpu": cpu_model()}
    report.update({key: round(timing[key], 3) if key in timing else None for key in RATIOS})
    report["int8_bleu_minus_fp32"] = round(scores["ours_int8"]["bleu"] - scores["ours_fp32"]["bleu"], 2)
    report["bf16_bleu_minus_fp32"] = (round(scores["ours_bf16"]["bleu"] - scores["ours_fp32"]["bleu"], 2)
                                      if "ours_bf16" in scores else None)
    report["ct2_int8_bleu_minus_fp32"] = (round(scores["ct2_int8"]["bleu"] - scores["ours_fp32"]["bleu"], 2)
                                          if "ct2_int8" in scores else None)
    report["engines"] = {name: {**scores[name], "sentences_per_s": round(timing[name], 2)} for name in runs}
    report["same_translations_as_ours_fp32"] = {name: sum(a == b for a, b in zip(texts, translations["ours_fp32"]))
                                                for name, texts in translations.items() if name != "ours_fp32"}
    report["rounds"] = timing["rounds"]
    report["skipped"] = skipped
    report["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "ctranslate2": ct2_version}
    workdir.cleanup()
    return print_report(report, args, load_before)


if __name__ == "__main__":
    main()
