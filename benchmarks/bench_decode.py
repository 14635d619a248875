"""Decoding speed: ours (fp32, int8, bf16, compiled) against MarianMTModel and CTranslate2, on the same weights.

    python benchmarks/bench_decode.py --size tiny --threads 1 --clock cpu      # d_model 256, 3+3 layers
    python benchmarks/bench_decode.py --size base --threads 1 --clock cpu      # d_model 512, 6+6 layers
    python benchmarks/bench_decode.py --size tiny --compile --profile
    python benchmarks/bench_decode.py --size base --device cuda   # on a GPU: fp32, bf16, Marian (int8: CPU only)

The models are ``bench_seq2seq.build_models``: a random MarianMTModel and ``marian_to_scratch`` of it (same
weights). CTranslate2's models are ``export_ct2`` of ours (float32, and ``quantization="int8"``), given a word-level
tokenizer whose token ``i`` is id ``i`` (the models have no real one: CTranslate2 reads token strings, so the
source ids are passed as the strings the export wrote to ``shared_vocabulary.json``). Engines, each decoding one
batch of ``--batch`` random sources of ``--src-len`` tokens to exactly ``--new-tokens`` new tokens per sequence
(``min_new_tokens == max_new_tokens`` for ``generate``, ``min_decoding_length == max_decoding_length`` for
``translate_batch``; ``generation_config.forced_eos_token_id``, which MarianConfig sets to 0 and CTranslate2 has no
counterpart of, is cleared for both torch models), greedy and beam-4:

- ``ours_fp32``: ``generate`` with ``config.forward_implementation`` = ``--forward-implementation`` (``fast``, the
  default: the loops of ``decoding.py`` over ``fast_decoding.FastDecoder``; ``reference``: over the model's forward);
- ``ours_int8``: ``scratchformers.quantize_int8(copy)`` (per-channel int8 weights, activations quantized per call;
  saved and loaded as int8); ``hf_int8``: the same scheme by ``torch.ao.quantization.quantize_dynamic`` with
  ``per_channel_dynamic_qconfig`` (Int8Linear equals it); every linear layer, the LM head included, in both;
- ``ours_bf16``: ``generate`` under ``torch.autocast("cpu", dtype=torch.bfloat16)``, where ``/proc/cpuinfo`` lists
  ``amx_bf16`` or ``avx512_bf16`` (elsewhere bf16 is emulated and skipped, unless ``--bf16`` forces it);
- ``ours_compiled`` (``--compile``): transformers' static cache with the decoding step compiled by ``generate``
  (``cache_implementation="static"`` and a ``compile_config``, enabled on the CPU); a failure is reported, not raised;
- ``hf_fp32``: ``MarianMTModel.generate``;
- ``ct2_fp32`` / ``ct2_int8``: ``ctranslate2.Translator(device="cpu", intra_threads=--threads, inter_threads=1)``,
  ``translate_batch(beam_size=1 | 4, return_scores=False)``; skipped (keys null) without ``ctranslate2``.

All engines run in one process, in alternating rounds (``_common.alternate``) after warm-up; throughput = new
tokens per second (``batch × new_tokens`` per call, encoder included); each ratio is the median of its per-round
ratios (ours / theirs). The JSON also checks the work is equal (every engine emitted ``batch × new_tokens``
tokens) and reports the share of each engine's greedy / beam tokens equal to ours in fp32 (reported, not
asserted): HF's are expected identical; CTranslate2's fp32 nearly so (a near-tie of random weights may break the
other way in float rounding; beam search normalises lengths differently, see ``export_ct2``, but every hypothesis
here has the same length); int8 and bf16 change the scores. Random weights tend to repeat one token, so this
agreement is a weak check of the export; tests/test_export_ct2.py is the strong one.

The last line of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_common_arguments, add_seq2seq_arguments, alternate, check_device, loadavg, print_report, profile_table,
)
from bench_seq2seq import EOS, PAD, SIZES, build_models, generate_fn, make_batch  # noqa: E402

from scratchformers.precision import native_bf16_cpu, native_bf16_reason  # noqa: E402
from scratchformers.modeling_base import ScratchPreTrainedModel  # noqa: E402
from scratchformers.quantization import quantize_int8  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Timing order of the engines within an even round (odd rounds run it backwards).
ENGINES = ("ours_fp32", "hf_fp32", "ct2_fp32", "ours_int8", "hf_int8", "ct2_int8", "ours_bf16", "ours_compiled")
# JSON key suffix -> (numerator, denominator): "{part}{suffix}" = median per-round ratio of new tokens/s.
RATIOS = {
    "_vs_hf": ("ours_fp32", "hf_fp32"),
    "_vs_ct2_fp32": ("ours_fp32", "ct2_fp32"),
    "_int8_vs_ct2_int8": ("ours_int8", "ct2_int8"),
    "_int8_vs_hf_int8": ("ours_int8", "hf_int8"),
    "_int8_vs_fp32": ("ours_int8", "ours_fp32"),
    "_bf16_vs_fp32": ("ours_bf16", "ours_fp32"),
    "_bf16_vs_ct2_fp32": ("ours_bf16", "ct2_fp32"),
    "_compiled_vs_fp32": ("ours_compiled", "ours_fp32"),
    "_compiled_vs_ct2_fp32": ("ours_compiled", "ct2_fp32"),
}
UNK = 1  # the benchmark tokenizer's <unk> (an ordinary row of the random models)


def cpu_model() -> str:
    """``lscpu``'s "Model name" (``platform``'s guess where there is no lscpu)."""
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                                 env={**os.environ, "LC_ALL": "C"}).stdout
        for line in listing.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 of a copy: ours by the README's ``quantize_int8``; another model (Marian) by torch.ao with the
    same per-channel scheme."""
    if isinstance(model, ScratchPreTrainedModel):
        return quantize_int8(copy.deepcopy(model))
    spec = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


def compiled(model: nn.Module) -> nn.Module:
    """A copy that decodes the way transformers offers for speed: a static cache and its decoding step compiled by
    ``generate`` itself (``cache_implementation="static"``, ``compile_config``; compiled at the first call)."""
    from transformers import CompileConfig

    model = copy.deepcopy(model)
    compile_config = CompileConfig(fullgraph=False, dynamic=False)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only, unless this is set
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = compile_config
    return model


def bf16_skip_reason(args) -> str | None:
    """Why the bf16 engine does not run here (None: it runs): only where bf16 is native, unless ``--bf16``."""
    if torch.device(getattr(args, "device", "cpu")).type == "cuda":
        return None if torch.cuda.is_bf16_supported() or args.bf16 else "this GPU has no bf16"
    if native_bf16_cpu() or args.bf16:
        return None
    return f"no native bf16 ({native_bf16_reason()}): bf16 would be emulated; --bf16 runs it anyway"


def torch_engines(ours, hf, args, skipped: dict) -> dict:
    """name -> (model, autocast dtype) of the engines that run on torch."""
    engines = {"ours_fp32": (ours, None), "hf_fp32": (hf, None)}
    if next(ours.parameters()).device.type == "cpu":
        engines.update(ours_int8=(int8(ours), None), hf_int8=(int8(hf), None))
    else:  # quantize_int8 (and torch.ao's dynamic int8) compute on the CPU only
        reason = "dynamic int8 runs on the CPU only (quantize_int8 refuses a GPU model)"
        skipped["ours_int8"] = skipped["hf_int8"] = reason
    reason = bf16_skip_reason(args)
    if reason is None:
        engines["ours_bf16"] = (ours, torch.bfloat16)
    else:
        skipped["ours_bf16"] = reason
    if args.compile:
        engines["ours_compiled"] = (compiled(ours), None)
    else:
        skipped["ours_compiled"] = "not asked for (--compile)"
    return engines


def word_level_tokenizer(vocab_size: int):
    """A tokenizer whose token ``i`` is id ``i`` (``<pad>``, ``<unk>``, ``</s>`` at the models' ids, ``t{i}``
    otherwise): what ``export_ct2`` needs to name the vocabulary of a model trained without one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {PAD: "<pad>", UNK: "<unk>", EOS: "</s>"}
    backend = Tokenizer(models.WordLevel({specials.get(i, f"t{i}"): i for i in range(vocab_size)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def ct2_translators(ours, threads: int, skipped: dict, tokenizer=None,
                    device: str = "cpu") -> tuple[dict, list[str] | None, str | None]:
    """``{"ct2_fp32": Translator, "ct2_int8": Translator}`` of ``export_ct2(ours, tokenizer=tokenizer)`` (default:
    ``word_level_tokenizer``), the exported vocabulary (token string of each id) and ctranslate2's version; nothing
    (and the reason in ``skipped``) without ctranslate2."""
    try:
        import ctranslate2
    except ImportError as error:
        for name in ("ct2_fp32", "ct2_int8"):
            skipped[name] = f"ctranslate2 is not installed ({error}): pip install 'scratchformers[bench]'"
        return {}, None, None
    if device != "cpu" and not ctranslate2.get_cuda_device_count():
        for name in ("ct2_fp32", "ct2_int8"):
            skipped[name] = f"this ctranslate2 {ctranslate2.__version__} sees no CUDA device"
        return {}, None, None
    from scratchformers.export_ct2 import export_ct2

    tokenizer = tokenizer or word_level_tokenizer(ours.config.vocab_size)
    translators = {}
    with tempfile.TemporaryDirectory(prefix="bench_decode_ct2_") as workdir:
        for name, quantization in (("ct2_fp32", None), ("ct2_int8", "int8")):
            directory = export_ct2(ours, Path(workdir) / name, quantization=quantization, tokenizer=tokenizer)
            translators[name] = ctranslate2.Translator(
                str(directory), device=device, compute_type=quantization or "float32", intra_threads=threads,
                inter_threads=1)
        vocabulary = json.loads((directory / "shared_vocabulary.json").read_text())
    return translators, vocabulary, ctranslate2.__version__


def translate_fn(translator, source_tokens: list[list[str]], new_tokens: int, num_beams: int):
    def run():
        return translator.translate_batch(source_tokens, beam_size=num_beams, min_decoding_length=new_tokens,
                                          max_decoding_length=new_tokens, return_scores=False)

    return run


def new_token_ids(output, index: dict[str, int] | None) -> list[list[int]]:
    """The new tokens of each sequence: ``generate``'s ids after the start token, or CTranslate2's best hypothesis
    mapped back to ids through the exported vocabulary."""
    if isinstance(output, torch.Tensor):
        return output[:, 1:].tolist()
    return [[index[token] for token in result.hypotheses[0]] for result in output]


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions where two engines' new tokens are equal."""
    pairs = [(x, y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)]
    total = max(sum(map(len, a)), sum(map(len, b)), 1)
    return round(sum(x == y for x, y in pairs) / total, 4)


def warm_up(runs: dict, calls: int, failed: dict, part: str) -> tuple[dict, dict]:
    """Call each run ``calls`` times; returns each one's last output and the seconds its calls took. A run that
    raises is dropped from ``runs`` and its error goes into ``failed`` (e.g. a torch.compile failure)."""
    outputs, seconds = {}, {}
    for name in list(runs):
        start = time.perf_counter()
        try:
            for _ in range(calls):
                outputs[name] = runs[name]()
        except Exception as error:  # noqa: BLE001 (reported in the JSON instead of ending the benchmark)
            failed[f"{part}:{name}"] = f"{type(error).__name__}: {error}"[:500]
            del runs[name]
        seconds[name] = time.perf_counter() - start
    return outputs, seconds


def decode_part(part: str, num_beams: int, engines: dict, translators: dict, source_tokens, index, batch, args,
                failed: dict) -> dict:
    """Warm up, time and check every engine on one search (greedy or beam-4); the part's JSON fields."""
    runs = {name: generate_fn(model, batch, args.new_tokens, num_beams, dtype)
            for name, (model, dtype) in engines.items()}
    runs.update({name: translate_fn(t, source_tokens, args.new_tokens, num_beams) for name, t in translators.items()})
    runs = {name: runs[name] for name in ENGINES if name in runs}
    outputs, warmup_seconds = warm_up(runs, args.warmup, failed, part)
    ratios = {f"{part}{suffix}": pair for suffix, pair in RATIOS.items() if set(pair) <= set(runs)}
    work = args.batch * args.new_tokens
    timing = alternate(runs, work, args.gen_calls, args.rounds, args.clock, ratios=ratios)
    ids = {name: new_token_ids(output, index) for name, output in outputs.items()}
    emitted = {name: sum(map(len, rows)) for name, rows in ids.items()}
    fields = {f"{part}{suffix}": round(timing[key], 3) if (key := f"{part}{suffix}") in timing else None
              for suffix in RATIOS}
    fields.update({
        f"{part}_new_tokens_per_s": {name: round(timing[name], 1) for name in runs},
        f"{part}_rounds": timing["rounds"],
        f"{part}_new_tokens_emitted": emitted,
        f"{part}_equal_work": all(len(rows) == args.batch and all(len(row) == args.new_tokens for row in rows)
                                  for rows in ids.values()),
        f"{part}_outputs_match_hf": ids.get("ours_fp32") == ids.get("hf_fp32") if "hf_fp32" in ids else None,
        f"{part}_int8_outputs_match_hf_int8": ids["ours_int8"] == ids["hf_int8"]
        if {"ours_int8", "hf_int8"} <= set(ids) else None,
        f"{part}_agreement_with_ours_fp32": {name: agreement(rows, ids["ours_fp32"]) for name, rows in ids.items()
                                             if name != "ours_fp32" and "ours_fp32" in ids},
    })
    if "ours_compiled" in outputs:  # its warm-up calls, compilation included
        fields[f"{part}_compile_seconds"] = round(warmup_seconds["ours_compiled"], 1)
    return fields


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_seq2seq_arguments(parser, SIZES, batch=16, src_len=24)
    add_common_arguments(parser, rounds=5)
    parser.add_argument("--gen-calls", type=int, default=1, help="decoding calls per round and engine")
    parser.add_argument("--skip", default="", help="comma list of searches to skip: greedy,beam4")
    parser.set_defaults(warmup=1)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.src_len, args.new_tokens, args.vocab = "smoke", 2, 6, 4, 64
        args.rounds, args.warmup = 1, 1
    args.tgt_len, args.padded = args.new_tokens, False  # make_batch's labels: unused here
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    skip = set(filter(None, args.skip.split(",")))

    import transformers

    device = check_device(args.device)
    ours, hf = build_models(args.size, args.vocab, args.seed)
    ours.config.forward_implementation = args.forward_implementation
    for model in (ours, hf):  # MarianConfig forces token 0 as the last one; CTranslate2 forces none
        model.generation_config.forced_eos_token_id = None
    batch = make_batch(args, torch.Generator().manual_seed(args.seed))
    if device.type != "cpu":
        ours, hf, batch = ours.to(device), hf.to(device), tuple(t.to(device) for t in batch)
    skipped: dict = {}
    failed: dict = {}
    engines = torch_engines(ours, hf, args, skipped)
    translators, vocabulary, ct2_version = ct2_translators(ours, threads, skipped, device=device.type)
    index = {token: i for i, token in enumerate(vocabulary)} if vocabulary else None
    source_tokens = [[vocabulary[i] for i in row] for row in batch[0].tolist()] if vocabulary else None

    load_before = loadavg()
    report: dict = {"size": args.size, "batch": args.batch, "src_len": args.src_len, "new_tokens": args.new_tokens,
                    "vocab": args.vocab, "threads": threads, "cpu": cpu_model()}
    for part, beams in (("greedy", 1), ("beam4", 4)):
        if part not in skip:
            report.update(decode_part(part, beams, engines, translators, source_tokens, index, batch, args, failed))
    if args.profile:
        for name in ("ours_fp32", "ours_int8"):
            if name not in engines:
                continue
            model, dtype = engines[name]
            run = generate_fn(model, batch, args.new_tokens, 1, dtype)
            print(profile_table(run, f"greedy decode ({args.new_tokens} new tokens), {name}, "
                                     f"{args.forward_implementation}, {args.size}", row_limit=12))

    report["skipped"] = skipped
    report["failed"] = failed
    report["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "ctranslate2": ct2_version}
    return print_report(report, args, load_before)


if __name__ == "__main__":
    main()
