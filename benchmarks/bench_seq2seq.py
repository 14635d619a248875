"""Ours against Hugging Face's MarianMTModel at identical dimensions: training, generation, peak memory.

    python benchmarks/bench_seq2seq.py --size tiny          # d_model 256, 3+3 layers
    python benchmarks/bench_seq2seq.py --size base          # d_model 512, 6+6 layers
    python benchmarks/bench_seq2seq.py --size tiny --bf16 --compile --profile
    python benchmarks/bench_seq2seq.py --size base --device cuda --autocast bf16 --batch 128   # on a GPU

Both models have the same weights: ours is ``marian_to_scratch`` of the Marian model (same d_model, layers, heads,
ffn, vocabulary, activation, dropout; learned copy of Marian's position table). Same seed and batch: ``--batch``
random sources of ``--src-len`` tokens -> ``--tgt-len`` target tokens (``--padded``: source lengths drawn from
[src_len/2, src_len] and target positions past a drawn length set to -100).

- training tokens/s: (source + target tokens) per forward + backward + AdamW step;
- generation new-tokens/s: ``batch × new_tokens`` per ``generate`` call (encoder included), greedy and beam-4,
  ``min_new_tokens == max_new_tokens`` so both models emit the same number of tokens;
- peak memory: the largest amount of live tensor memory during one training step (parameters, gradients, AdamW
  states, saved activations, temporaries; see ``_common.PeakTensorMemory``);
- forward share: the part of a ``generate`` call's CPU time spent inside the model; the rest is transformers'
  generation loop, the same code for both models.

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

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIZES = {
    "smoke": dict(d_model=32, layers=1, heads=2, ffn=64),  # for the test suite: seconds, not meaningful
    "tiny": dict(d_model=256, layers=3, heads=4, ffn=1024),
    "base": dict(d_model=512, layers=6, heads=8, ffn=2048),
}
PAD, EOS, START = 0, 2, 0


def build_models(size: str, vocab: int, seed: int):
    """A random MarianMTModel and its port into our code: identical architecture and weights."""
    from transformers import MarianConfig, MarianMTModel

    from scratchformers.convert import marian_to_scratch

    dims = SIZES[size]
    config = MarianConfig(
        vocab_size=vocab, d_model=dims["d_model"], encoder_layers=dims["layers"], decoder_layers=dims["layers"],
        encoder_attention_heads=dims["heads"], decoder_attention_heads=dims["heads"],
        encoder_ffn_dim=dims["ffn"], decoder_ffn_dim=dims["ffn"], max_position_embeddings=512,
        activation_function="swish", dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
        scale_embedding=True, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=START,
    )
    torch.manual_seed(seed)
    hf = MarianMTModel._from_config(config, attn_implementation="sdpa")
    ours = marian_to_scratch(hf)
    ours.set_attn_implementation("sdpa")
    # Marian's position tables and final_logits_bias are fixed (not trained); the port carries them over as
    # parameters. Freeze them so that both models train exactly the same parameters.
    for module in (ours.model.encoder, ours.model.decoder):
        module.embeddings.embed_positions.weight.requires_grad_(False)
    ours.lm_head.bias.requires_grad_(False)
    return ours, hf


def make_batch(args, generator):
    input_ids = torch.randint(4, args.vocab, (args.batch, args.src_len), generator=generator)
    labels = torch.randint(4, args.vocab, (args.batch, args.tgt_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if args.padded:
        src_lengths = torch.randint(args.src_len // 2, args.src_len + 1, (args.batch,), generator=generator)
        tgt_lengths = torch.randint(args.tgt_len // 2, args.tgt_len + 1, (args.batch,), generator=generator)
        src_lengths[0], tgt_lengths[0] = args.src_len, args.tgt_len
        attention_mask = (torch.arange(args.src_len)[None] < src_lengths[:, None]).long()
        input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
        labels = labels.masked_fill(torch.arange(args.tgt_len)[None] >= tgt_lengths[:, None], -100)
    return input_ids, attention_mask, labels


def train_step_fn(model, batch, autocast_dtype=None, compiled=None):
    """One forward + backward + AdamW step; returns the closure (optimizer created here, states at first step)."""
    input_ids, attention_mask, labels = batch
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = model if compiled is None else compiled

    def step():
        with torch.autocast(input_ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def generate_fn(model, batch, new_tokens: int, num_beams: int, autocast_dtype=None):
    input_ids, attention_mask, _ = batch
    model.eval()

    @torch.inference_mode()
    def run():
        with torch.autocast(input_ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model.generate(
                input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                num_beams=num_beams, do_sample=False,
            )

    return run


def tokens_per_step(batch) -> int:
    """Training throughput counts source and target tokens."""
    return batch[0].numel() + batch[2].numel()


def forward_share(model, run) -> float:
    """Share of one ``generate`` call's CPU time spent inside the model (encoder + every decoding step's forward);
    the rest is transformers' generation loop (logits processors, search bookkeeping, cache reordering)."""
    inside, depth, started = [0.0], [0], [0.0]

    def enter(*_):
        if depth[0] == 0:
            started[0] = time.process_time()
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1
        if depth[0] == 0:
            inside[0] += time.process_time() - started[0]

    modules = (model, model.get_encoder())
    hooks = [h for m in modules for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    start = time.process_time()
    run()
    total = time.process_time() - start
    for hook in hooks:
        hook.remove()
    return round(inside[0] / total, 3)


def measure_generation(models, batch, args, num_beams):
    runs = {name: generate_fn(m, batch, args.new_tokens, num_beams, autocast_dtype(args)) for name, m in models.items()}
    result = measure(runs, batch[0].shape[0] * args.new_tokens, args.gen_calls, args, warmup=1)
    result["outputs_match"] = bool(torch.equal(result["outputs"]["ours"], result["outputs"]["hf"]))
    result["forward_share"] = {name: forward_share(models[name], run) for name, run in runs.items()}
    return result


def compile_report(model, batch, args) -> dict:
    """Graph breaks of our model (torch._dynamo.explain) and the speed-up of torch.compile, training and forward."""
    import torch._dynamo

    input_ids, attention_mask, labels = batch
    report = {}
    model.train()
    explanation = torch._dynamo.explain(model)(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    report.update(graph_break_fields("train", explanation))
    model.eval()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    report.update(graph_break_fields("forward", explanation))
    torch._dynamo.reset()

    eager_model, compiled_model = model, copy.deepcopy(model)
    compiled = torch.compile(compiled_model)
    start = time.perf_counter()
    compiled_step = train_step_fn(compiled_model, batch, compiled=compiled)
    for _ in range(2):
        compiled_step()
    report["train_compile_seconds"] = round(time.perf_counter() - start, 1)
    eager_step = train_step_fn(eager_model, batch)
    eager_step()
    tokens = tokens_per_step(batch)
    # "ours" = compiled, "hf" = eager here: the ratio is the compile speed-up.
    timing = alternate({"ours": compiled_step, "hf": eager_step}, tokens, args.train_steps, args.rounds, args.clock)
    report["train_speedup"] = round(timing["ratio"], 3)

    compiled_model.eval()
    eager_model.eval()

    def forward(m):
        @torch.no_grad()
        def run():
            return m(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits

        return run

    start = time.perf_counter()
    forward(compiled)()
    forward(compiled)()
    report["forward_compile_seconds"] = round(time.perf_counter() - start, 1)
    timing = alternate({"ours": forward(compiled), "hf": forward(eager_model)}, tokens, args.train_steps * 3, args.rounds, args.clock)
    report["forward_speedup"] = round(timing["ratio"], 3)
    torch._dynamo.reset()
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--tgt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--padded", action="store_true", help="variable source/target lengths (padding, -100)")
    add_common_arguments(parser, rounds=5)
    parser.add_argument("--train-steps", type=int, default=3, help="training steps per round and model")
    parser.add_argument("--gen-calls", type=int, default=1, help="generate calls per round and model")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: train,greedy,beam4")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.src_len, args.tgt_len, args.new_tokens, args.vocab = "smoke", 2, 6, 6, 3, 64
        args.rounds, args.warmup, args.train_steps = 1, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    device = check_device(args.device)

    ours, hf = build_models(args.size, args.vocab, args.seed)
    ours, hf = ours.to(device), hf.to(device)
    ours.config.forward_implementation = args.forward_implementation
    batch = tuple(t.to(device) for t in make_batch(args, torch.Generator().manual_seed(args.seed)))
    load_before = loadavg()
    report: dict = {"size": args.size, "batch": args.batch, "src_len": args.src_len, "tgt_len": args.tgt_len,
                    "new_tokens": args.new_tokens, "vocab": args.vocab, "padded": args.padded,
                    "autocast": args.autocast}
    parameters = {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in (("ours", ours), ("hf", hf))}
    report["parameters"] = parameters

    if "train" not in skip:
        models = {"ours": copy.deepcopy(ours), "hf": copy.deepcopy(hf)}
        steps = {name: train_step_fn(m, batch, autocast_dtype(args))  # AdamW states exist after warm-up
                 for name, m in models.items()}
        report.update(report_fields("train", "tokens", measure(steps, tokens_per_step(batch), args.train_steps, args),
                                    memory_ratio_key="memory_ratio"))
        if args.profile:
            for name, step in steps.items():
                print(profile_table(step, f"training step, {name}, {args.size}"))
        del models, steps
    for part, beams in (("greedy", 1), ("beam4", 4)):
        if part in skip:
            continue
        gen = measure_generation({"ours": ours, "hf": hf}, batch, args, beams)
        report.update(report_fields(part, "new_tokens", gen))
        report[f"{part}_outputs_match"] = gen["outputs_match"]
        report[f"{part}_forward_share"] = gen["forward_share"]
        if args.profile:
            for name, model in (("ours", ours), ("hf", hf)):
                run = generate_fn(model, batch, args.new_tokens, beams)
                print(profile_table(run, f"generate {part}, {name}, {args.size}"))

    if args.bf16:
        # bf16 autocast against fp32, for each model: ratio = bf16 throughput / fp32 throughput.
        bf16 = {}
        for name, model in (("ours", ours), ("hf", hf)):
            steps = {"ours": train_step_fn(copy.deepcopy(model), batch, torch.bfloat16),
                     "hf": train_step_fn(copy.deepcopy(model), batch)}
            train = measure(steps, tokens_per_step(batch), args.train_steps, args, warmup=1, memory=False)
            bf16[f"{name}_train_bf16_over_fp32"] = round(train["ratio"], 3)
            runs = {"ours": generate_fn(model, batch, args.new_tokens, 1, torch.bfloat16),
                    "hf": generate_fn(model, batch, args.new_tokens, 1)}
            greedy = measure(runs, batch[0].shape[0] * args.new_tokens, args.gen_calls, args, warmup=1, memory=False)
            bf16[f"{name}_greedy_bf16_over_fp32"] = round(greedy["ratio"], 3)
        bf16["ours_loss_bf16"] = round(float(train_step_fn(copy.deepcopy(ours), batch, torch.bfloat16)()), 4)
        bf16["ours_loss_fp32"] = round(float(train_step_fn(copy.deepcopy(ours), batch)()), 4)
        report["bf16"] = bf16
    if args.compile:
        report["compile"] = compile_report(copy.deepcopy(ours), batch, args)

    report["forward_implementation"] = args.forward_implementation
    report["load_avg"] = [load_before, loadavg()]
    report["device"] = machine(args.clock, args.device)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
