"""Decoding speed of this checkout against an earlier commit, side by side in one process (the A/B of a refactor).

    python benchmarks/bench_decode_ab.py --against 60d240b --size tiny --rounds 9
    python benchmarks/bench_decode_ab.py --against 60d240b --size base --rounds 9
    python benchmarks/bench_decode_ab.py --against 60d240b --size base --rounds 11 --int8 --parts greedy,beam4

The earlier commit's ``src/scratchformers`` is extracted (``git archive``) into a temporary folder as the package
``scratchformers_then`` with an empty ``__init__`` (its modules import each other with single-dot relative imports;
nothing is registered twice). Both ports of one random ``MarianMTModel`` (``bench_seq2seq.build_models``: same
weights) decode the same batch with ``forward_implementation="fast"``, in alternating rounds after a warm-up, one
thread, CPU clock; each ratio is the median of the per-round ratios (``then / now`` seconds: above 1 = this checkout
is faster). Parts: greedy, beam-4, and sampling (top-p 0.9, temperature 0.8, repetition penalty 1.2, one seed),
where this checkout's reference decoding (``forward_implementation="reference"``) is timed too. The JSON also says
whether the two commits emitted the same tokens. The last line of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_seq2seq import build_models  # noqa: E402

import scratchformers  # noqa: E402

PARTS = {"greedy": dict(num_beams=1), "beam4": dict(num_beams=4),
         "sample": dict(do_sample=True, top_p=0.9, temperature=0.8, repetition_penalty=1.2)}


def import_then(rev: str, folder: str):
    """The package of commit ``rev`` as ``scratchformers_then`` (its convert and quantization modules)."""
    archive = Path(folder) / "then.tar"
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    subprocess.run(["git", "archive", "-o", str(archive), rev, "src/scratchformers"], check=True, cwd=root)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    package = Path(folder) / "scratchformers_then"
    (Path(folder) / "src" / "scratchformers").rename(package)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, folder)
    import scratchformers_then.convert as convert
    import scratchformers_then.quantization as quantization
    return convert, quantization


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--size", default="tiny", choices=["smoke", "tiny", "base"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parts", default="greedy,beam4,sample")
    parser.add_argument("--int8", action="store_true", help="both models quantize_int8'ed (sampling skipped)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    vocab = 64 if args.size == "smoke" else 8000
    with tempfile.TemporaryDirectory() as folder:
        convert, quantization = import_then(args.against, folder)
        now, hf = build_models(args.size, vocab, 0)
        then = convert.marian_to_scratch(hf)
        then.set_attn_implementation("sdpa")
        if args.int8:
            now, then = scratchformers.quantize_int8(copy.deepcopy(now)), quantization.quantize_int8(copy.deepcopy(then))
        for model in (now, then):
            model.config.forward_implementation = "fast"
            model.eval()
        reference = copy.deepcopy(now)
        reference.config.forward_implementation = "reference"
        input_ids = torch.randint(4, vocab, (args.batch, args.src_len), generator=torch.Generator().manual_seed(1))

        def run(model, kwargs):
            torch.manual_seed(0)
            with torch.no_grad():
                return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), min_new_tokens=args.new_tokens,
                                      max_new_tokens=args.new_tokens, **kwargs)

        result = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "against": args.against,
                  "size": args.size, "batch": args.batch, "new_tokens": args.new_tokens, "threads": args.threads,
                  "int8": args.int8, "rounds": args.rounds}
        for part in args.parts.split(","):
            if part == "sample" and args.int8:
                continue
            engines = {"now": now, "then": then, **({"now_reference": reference} if part == "sample" else {})}
            outputs = {name: run(model, PARTS[part]) for name, model in engines.items()}  # warm-up
            result[f"{part}_same_tokens"] = all(torch.equal(o, outputs["now"]) for o in outputs.values())
            seconds = {name: [] for name in engines}
            for r in range(args.rounds):
                for name in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
                    start = time.process_time()
                    run(engines[name], PARTS[part])
                    seconds[name].append(time.process_time() - start)
            result[f"{part}_now_s"] = round(statistics.median(seconds["now"]), 3)
            result[f"{part}_now_vs_then"] = round(statistics.median(t / n for n, t in zip(seconds["now"], seconds["then"])), 3)
            if part == "sample":
                result["sample_fast_vs_reference"] = round(
                    statistics.median(r / n for n, r in zip(seconds["now"], seconds["now_reference"])), 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
