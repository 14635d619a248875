"""Decoder-only LM speed: ours (reference and fast decoding) against GPT2LMHeadModel, on the same weights.

    python benchmarks/bench_causal_lm.py --size tiny --threads 2        # d_model 256, 4 layers, vocab 8000
    python benchmarks/bench_causal_lm.py --size gpt2 --threads 2        # GPT-2 small's shape (124M parameters)

The models: a random ``GPT2LMHeadModel`` (sdpa attention, dropout off) and ``convert.gpt2_to_scratch`` of it (same
weights: the tests hold its logits within 1e-4 and its tokens equal). The batch: ``--batch`` random prompts of up
to ``--prompt-len`` tokens, left-padded (the first full, the others of random lengths from half up), as
``pipeline("text-generation")`` batches them. Each engine generates exactly ``--new-tokens`` new tokens per row
(``min_new_tokens == max_new_tokens``), greedy and beam-4:

- ``ours_fast``: ``generate`` with ``forward_implementation="fast"`` (the engine's ``FastDecoder`` steps);
- ``ours_reference``: ``generate`` with the reference composition of ``layers.py`` (the model's forward);
- ``hf``: ``GPT2LMHeadModel.generate``.

One process, alternating rounds after warm-up (``_common.alternate``); throughput = new tokens per second; each
ratio is the median of its per-round ratios. ``*_outputs_match_hf`` reports whether our tokens equal GPT-2's.
The last line of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_common_arguments, alternate, loadavg, print_report  # noqa: E402

SIZES = {
    "smoke": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100),
    "tiny": dict(n_embd=256, n_layer=4, n_head=4, vocab_size=8000),
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257),
}


def build_models(size: str, seed: int):
    """A random GPT-2 of ``size`` and our port of it, both in eval mode with sdpa attention."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from scratchformers.convert import gpt2_to_scratch

    dims = SIZES[size]
    config = GPT2Config(n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=dims["vocab_size"] - 1, eos_token_id=dims["vocab_size"] - 1, **dims)
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").eval()
    ours = gpt2_to_scratch(hf)
    ours.set_attn_implementation("sdpa")
    return ours, hf


def left_padded_prompts(args, vocab_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(0, vocab_size - 1, (args.batch, args.prompt_len), generator=generator)
    lengths = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (args.batch,), generator=generator)
    lengths[0] = args.prompt_len
    attention_mask = (torch.arange(args.prompt_len)[None] >= args.prompt_len - lengths[:, None]).long()
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, vocab_size - 1), "attention_mask": attention_mask}


def generate_fn(model, prompts: dict, new_tokens: int, num_beams: int, forward_implementation: str | None = None):
    """One ``generate`` call of exactly ``new_tokens`` new tokens per row (our models: with that implementation)."""
    if forward_implementation is not None:
        model.config.forward_implementation = forward_implementation

    @torch.inference_mode()
    def run():
        if forward_implementation is not None:
            model.config.forward_implementation = forward_implementation  # the two settings share one model
        return model.generate(**prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=num_beams,
                              do_sample=False, pad_token_id=model.config.eos_token_id)

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, rounds=5)
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.rounds, args.warmup, args.batch, args.prompt_len, args.new_tokens = "smoke", 1, 1, 2, 6, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = loadavg()
    ours, hf = build_models(args.size, args.seed)
    prompts = left_padded_prompts(args, SIZES[args.size]["vocab_size"], torch.Generator().manual_seed(args.seed))
    report: dict = {"size": args.size, "batch": args.batch, "prompt_len": args.prompt_len,
                    "new_tokens": args.new_tokens, "threads": torch.get_num_threads()}
    ratios = {"fast_vs_hf": ("ours_fast", "hf"), "reference_vs_hf": ("ours_reference", "hf"),
              "fast_vs_reference": ("ours_fast", "ours_reference")}
    for name, num_beams in (("greedy", 1), ("beam4", 4)):
        workloads = {
            "ours_fast": generate_fn(ours, prompts, args.new_tokens, num_beams, "fast"),
            "ours_reference": generate_fn(ours, prompts, args.new_tokens, num_beams, "reference"),
            "hf": generate_fn(hf, prompts, args.new_tokens, num_beams),
        }
        outputs = {}
        for workload, fn in workloads.items():
            for _ in range(args.warmup):
                outputs[workload] = fn()
        result = alternate(workloads, args.batch * args.new_tokens, 1, args.rounds, args.clock, ratios)
        report[f"{name}_tokens_per_s"] = {workload: round(result[workload], 1) for workload in workloads}
        report.update({f"{name}_{key}": round(result[key], 3) for key in ratios})
        report[f"{name}_rounds"] = result["rounds"]
        report[f"{name}_outputs_match_hf"] = all(torch.equal(outputs[w], outputs["hf"]) for w in ("ours_fast", "ours_reference"))
    return print_report(report, args, load_before)


if __name__ == "__main__":
    main()
