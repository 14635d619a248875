"""Ours against Hugging Face's ViTForImageClassification at identical dimensions: training, inference, memory.

    python benchmarks/bench_vit.py --size small     # 32x32 images, patch 4 (64 patches + [CLS]), d 192, 6 layers
    python benchmarks/bench_vit.py --size ti        # 224x224 images, patch 16 (196 + [CLS]), ViT-Ti: d 192, 12 layers
    python benchmarks/bench_vit.py --size ti --compile --bf16 --profile
    python benchmarks/bench_vit.py --size base --device cuda --autocast bf16   # ViT-B/16, on a GPU

Both models have the same weights: ours is ``vit_to_scratch`` of the Hugging Face model (same width, depth, heads,
MLP, activation, qkv bias, labels; sdpa attention). Same seed and batch of random images.

- training images/s: one forward + backward + AdamW step on ``--batch`` images with integer labels;
- inference images/s: one forward pass (``torch.inference_mode``) on the same batch;
- peak memory: the largest amount of live tensor memory during one training step (see
  ``_common.PeakTensorMemory``), and during inference.

The last line of the output is one JSON object; ratios are ours / Hugging Face (memory: lower is better).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_common_arguments, alternate, autocast_dtype, check_device, graph_break_fields, loadavg, machine, measure,
    profile_table, report_fields,
)

SIZES = {
    "smoke": dict(image=16, patch=8, d_model=32, layers=1, heads=2, ffn=64, labels=10, batch=2),
    "small": dict(image=32, patch=4, d_model=192, layers=6, heads=3, ffn=768, labels=10, batch=64),
    "ti": dict(image=224, patch=16, d_model=192, layers=12, heads=3, ffn=768, labels=1000, batch=16),
    "base": dict(image=224, patch=16, d_model=768, layers=12, heads=12, ffn=3072, labels=1000, batch=64),  # ViT-B/16
}


def build_models(size: str, seed: int):
    from transformers import ViTConfig, ViTForImageClassification

    from scratchformers.convert_vit import vit_to_scratch

    dims = SIZES[size]
    config = ViTConfig(
        image_size=dims["image"], patch_size=dims["patch"], num_channels=3, hidden_size=dims["d_model"],
        num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"], intermediate_size=dims["ffn"],
        num_labels=dims["labels"], hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        qkv_bias=True,
    )
    torch.manual_seed(seed)
    hf = ViTForImageClassification._from_config(config, attn_implementation="sdpa")
    ours = vit_to_scratch(hf, attn_implementation="sdpa")
    return ours, hf


def train_step_fn(model, pixels, labels, autocast_dtype=None, compiled=None):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = model if compiled is None else compiled

    def step():
        with torch.autocast(pixels.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = forward(pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def inference_fn(model, pixels, autocast_dtype=None, compiled=None):
    model.eval()
    forward = model if compiled is None else compiled

    @torch.inference_mode()
    def run():
        with torch.autocast(pixels.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return forward(pixel_values=pixels).logits

    return run


def compile_report(model, pixels, labels, args) -> dict:
    """Graph breaks of our ViT (torch._dynamo.explain) and the speed-up of torch.compile, training and inference."""
    import torch._dynamo

    report = {}
    model.train()
    explanation = torch._dynamo.explain(model)(pixel_values=pixels, labels=labels)
    report.update(graph_break_fields("train", explanation))
    model.eval()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(pixel_values=pixels)
    report.update(graph_break_fields("forward", explanation))
    torch._dynamo.reset()

    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model)
    start = time.perf_counter()
    compiled_step = train_step_fn(compiled_model, pixels, labels, compiled=compiled)
    for _ in range(2):
        compiled_step()
    report["train_compile_seconds"] = round(time.perf_counter() - start, 1)
    eager_step = train_step_fn(model, pixels, labels)
    eager_step()
    n = pixels.shape[0]
    report["train_speedup"] = round(
        alternate({"ours": compiled_step, "hf": eager_step}, n, args.train_steps, args.rounds, args.clock)["ratio"], 3
    )
    start = time.perf_counter()
    compiled_run = inference_fn(compiled_model, pixels, compiled=compiled)
    compiled_run()
    compiled_run()
    report["forward_compile_seconds"] = round(time.perf_counter() - start, 1)
    eager_run = inference_fn(model, pixels)
    report["forward_speedup"] = round(
        alternate({"ours": compiled_run, "hf": eager_run}, n, args.infer_calls, args.rounds, args.clock)["ratio"], 3
    )
    torch._dynamo.reset()
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--batch", type=int, default=0, help="images per batch (0: the size's default)")
    add_common_arguments(parser, rounds=7)
    parser.add_argument("--train-steps", type=int, default=1, help="training steps per round and model")
    parser.add_argument("--infer-calls", type=int, default=2, help="forward calls per round and model")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.rounds, args.warmup, args.infer_calls = "smoke", 1, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    dims = SIZES[args.size]
    batch = args.batch or dims["batch"]
    device = check_device(args.device)

    ours, hf = build_models(args.size, args.seed)
    ours, hf = ours.to(device), hf.to(device)
    ours.config.forward_implementation = args.forward_implementation
    generator = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(batch, 3, dims["image"], dims["image"], generator=generator).to(device)
    labels = torch.randint(0, dims["labels"], (batch,), generator=generator).to(device)
    load_before = loadavg()
    report: dict = {"size": args.size, "batch": batch, "image_size": dims["image"], "patch_size": dims["patch"],
                    "autocast": args.autocast,
                    "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in (("ours", ours), ("hf", hf))}}
    with torch.inference_mode():
        report["logits_max_abs_diff"] = float((ours(pixels).logits - hf(pixels).logits).abs().max())

    models = {"ours": copy.deepcopy(ours), "hf": copy.deepcopy(hf)}
    steps = {name: train_step_fn(m, pixels, labels, autocast_dtype(args)) for name, m in models.items()}
    report.update(report_fields("train", "images", measure(steps, batch, args.train_steps, args), digits=2,
                                memory_ratio_key="memory_ratio"))
    if args.profile:
        for name, step in steps.items():
            print(profile_table(step, f"training step, {name}, {args.size}"))
    del models, steps

    runs = {name: inference_fn(model, pixels, autocast_dtype(args)) for name, model in (("ours", ours), ("hf", hf))}
    report.update(report_fields("inference", "images", measure(runs, batch, args.infer_calls, args), digits=2,
                                memory_ratio_key="inference_memory_ratio"))
    if args.profile:
        for name, run in runs.items():
            print(profile_table(run, f"inference, {name}, {args.size}"))

    if args.bf16:
        # bf16 autocast against fp32, for each model: ratio = bf16 throughput / fp32 throughput.
        bf16 = {}
        for name, model in (("ours", ours), ("hf", hf)):
            steps = {"ours": train_step_fn(copy.deepcopy(model), pixels, labels, torch.bfloat16),
                     "hf": train_step_fn(copy.deepcopy(model), pixels, labels)}
            train = measure(steps, batch, args.train_steps, args, warmup=1, memory=False)
            bf16[f"{name}_train_bf16_over_fp32"] = round(train["ratio"], 3)
            runs = {"ours": inference_fn(model, pixels, torch.bfloat16), "hf": inference_fn(model, pixels)}
            inference = measure(runs, batch, args.infer_calls, args, warmup=1, memory=False)
            bf16[f"{name}_inference_bf16_over_fp32"] = round(inference["ratio"], 3)
        with torch.inference_mode():
            fp32_logits = ours(pixels).logits
            with torch.autocast(pixels.device.type, dtype=torch.bfloat16):
                bf16_logits = ours(pixels).logits.float()
        bf16["ours_bf16_vs_fp32_logits_max_abs_diff"] = round(float((bf16_logits - fp32_logits).abs().max()), 4)
        report["bf16"] = bf16
    if args.compile:
        report["compile"] = compile_report(copy.deepcopy(ours), pixels, labels, args)

    report["forward_implementation"] = args.forward_implementation
    report["load_avg"] = [load_before, loadavg()]
    report["device"] = machine(args.clock, args.device)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
