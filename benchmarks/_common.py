"""Shared helpers of the benchmarks: alternating timing, peak tensor memory, profiler tables, the machine.

Timing. Both models run in one process, in alternating rounds (ours first in even rounds, Hugging Face's first in
odd ones), after warm-up. Every round gives one throughput per model and one ratio ours / HF; we report the median
throughputs and the median of the per-round ratios. Pairing the two models within a round cancels most of the drift
of a shared, noisy machine.

Memory. On CPU there is no allocator with peak statistics (``torch.cuda.max_memory_allocated`` has no CPU twin),
and the process RSS is a poor measure: glibc keeps freed blocks, and the peak RSS (``VmHWM``) of one process
cannot be attributed to one of two alternating models. ``PeakTensorMemory`` counts what the model itself holds:
the bytes of every live tensor storage (parameters, buffers, gradients, optimizer states, activations saved for
backward, temporaries) it sees in torch's dispatcher, freed when the storage dies, and records the maximum. That is
what ``torch.cuda.max_memory_allocated`` reports on a GPU, minus the caching allocator's rounding. Views share one
storage and are counted once. On a GPU (``--device cuda``) the benchmarks also report the CUDA caching allocator's
own peak (``cuda_peak_memory``): the most memory a step held above what was allocated when it began.

Devices. ``--device`` (default ``cpu``) places both models and their inputs; ``--autocast bf16`` runs the timed parts
under bf16 autocast on that device (how one trains on a GPU). CUDA work is asynchronous: every timed call is
followed by ``torch.cuda.synchronize`` (``synchronize``), so a throughput counts finished work.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def machine(clock: str = "wall", device: str = "cpu") -> str:
    """A one-line description of where the numbers were taken (and the GPU's name where ``device`` is one)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = f"gpu: {torch.cuda.get_device_name(torch.device(device))}, " if torch.device(device).type == "cuda" else ""
    return (
        f"{gpu}cpu: {model}, {torch.get_num_threads()} threads, torch {torch.__version__}, {clock} clock, "
        f"load {load:.1f} on {os.cpu_count()} cores"
    )


def loadavg() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def synchronize() -> None:
    """Wait for the GPU's queued work (nothing on a CPU-only run): a timer read after it counts finished work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], object], calls: int, clock: str = "wall") -> float:
    """Seconds per call of ``fn``. ``clock="cpu"`` counts the process's CPU time (all its threads) instead of wall
    time: on a machine shared with other jobs it leaves out the time the process waits for a core."""
    now = CLOCKS[clock]
    synchronize()
    start = now()
    for _ in range(calls):
        fn()
    synchronize()
    return (now() - start) / calls


def alternate(
    workloads: dict[str, Callable[[], object]], work_per_call: float, calls: int, rounds: int, clock: str = "wall",
    ratios: dict[str, tuple[str, str]] | None = None,
) -> dict:
    """Time ``{"ours": fn, "hf": fn}`` (or any named workloads) in alternating rounds (in order in even rounds, in
    reverse order in odd ones); throughput = ``work_per_call`` / seconds per call.

    Returns the median throughput of each workload, every round's values (``"rounds"``) and, for each
    ``key: (numerator, denominator)`` of ``ratios`` (default ``{"ratio": ("ours", "hf")}``), the median per-round
    ratio under ``key``.
    """
    names = list(workloads)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            per_round[name].append(work_per_call / seconds_per_call(workloads[name], calls, clock))
    result: dict = {name: statistics.median(values) for name, values in per_round.items()}
    for key, (numerator, denominator) in ({"ratio": ("ours", "hf")} if ratios is None else ratios).items():
        result[key] = statistics.median(a / b for a, b in zip(per_round[numerator], per_round[denominator]))
    result["rounds"] = {name: [round(v, 2) for v in values] for name, values in per_round.items()}
    return result


def add_common_arguments(parser, rounds: int) -> None:
    """The options every speed benchmark shares: timing rounds and clock, threads, seed, the extra reports."""
    parser.add_argument("--rounds", type=int, default=rounds, help="alternating rounds (median taken)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also: bf16 autocast vs fp32 throughput of each model")
    parser.add_argument("--compile", action="store_true", help="also: torch.compile graph breaks and speed-up")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time (robust on a shared machine with --threads 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forward-implementation", choices=["reference", "fast"], default="fast",
                        help="ours: the reference composition of layers.py, or its exact rewrites (rewrites.py)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for the test suite")
    parser.add_argument("--device", default="cpu", help="where both models run: cpu, cuda, cuda:1 ...")
    parser.add_argument("--autocast", choices=["none", "bf16"], default="none",
                        help="bf16: the timed parts under bf16 autocast on --device (how one trains on a GPU)")


def check_device(device: str) -> torch.device:
    """``--device`` as a torch device; a one-line error where it is no device or not on this machine."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise SystemExit(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: this machine has no CUDA GPU (torch {torch.__version__}); "
                         "use --device cpu")
    if parsed.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {device}: the benchmarks run on cpu or cuda")
    return parsed


def autocast_dtype(args) -> torch.dtype | None:
    """The dtype of ``--autocast`` (None: fp32)."""
    return torch.bfloat16 if getattr(args, "autocast", "none") == "bf16" else None


def add_seq2seq_arguments(parser, sizes, batch: int, src_len: int) -> None:
    """The shape of a translation benchmark's batch: model size, batch, source length, new tokens, vocabulary."""
    parser.add_argument("--size", choices=list(sizes), default="tiny")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--src-len", type=int, default=src_len)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=8000)


def print_report(report: dict, args, load_before: float) -> dict:
    """Add the run's setting (forward implementation, load average before and after, machine) to ``report`` and
    print it as the one-line JSON object the benchmarks end with."""
    report["forward_implementation"] = args.forward_implementation
    report["load_avg"] = [load_before, loadavg()]
    report["device"] = machine(args.clock, getattr(args, "device", "cpu"))
    print(json.dumps(report))
    return report


def measure(
    workloads: dict[str, Callable[[], object]], work_per_call: float, calls: int, args, warmup: int | None = None,
    memory: bool = True,
) -> dict:
    """Warm each workload up (``args.warmup`` calls unless ``warmup``), time them in alternating rounds
    (``alternate``) and, with ``memory``, take each one's peak tensor memory.

    Returns ``alternate``'s dict plus ``"outputs"`` (each workload's last warm-up result) and ``"memory"`` (bytes).
    """
    outputs = {}
    for name, fn in workloads.items():
        for _ in range(args.warmup if warmup is None else warmup):
            outputs[name] = fn()
    result = alternate(workloads, work_per_call, calls, args.rounds, args.clock)
    result["outputs"] = outputs
    if memory:
        result["memory"] = {name: peak_memory(fn) for name, fn in workloads.items()}
        if torch.device(getattr(args, "device", "cpu")).type == "cuda":
            result["cuda_memory"] = {name: cuda_peak_memory(fn) for name, fn in workloads.items()}
    return result


def report_fields(part: str, unit: str, result: dict, digits: int = 1, memory_ratio_key: str | None = None) -> dict:
    """The JSON fields of one measured part: ``{part}_{unit}_per_s``, ``{part}_rounds``, ``{part}_ratio``,
    ``{part}_peak_mib`` and, under ``memory_ratio_key``, the peak memory ratio ours / HF."""
    fields = {
        f"{part}_{unit}_per_s": {name: round(result[name], digits) for name in ("ours", "hf")},
        f"{part}_rounds": result["rounds"],
        f"{part}_ratio": round(result["ratio"], 3),
        f"{part}_peak_mib": {name: mib(value) for name, value in result["memory"].items()},
    }
    if memory_ratio_key:
        fields[memory_ratio_key] = round(result["memory"]["ours"] / result["memory"]["hf"], 3)
    if "cuda_memory" in result:
        fields[f"{part}_cuda_peak_mib"] = {name: mib(value) for name, value in result["cuda_memory"].items()}
        fields[f"{part}_cuda_peak_ratio"] = round(result["cuda_memory"]["ours"] / result["cuda_memory"]["hf"], 3)
    return fields


def graph_break_fields(part: str, explanation) -> dict:
    """``torch._dynamo.explain``'s verdict as JSON fields: the number of graph breaks and the first reasons."""
    return {f"{part}_graph_breaks": explanation.graph_break_count,
            f"{part}_break_reasons": [str(b.reason)[:200] for b in explanation.break_reasons][:5]}


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storages while active (see the module docstring).

    Every tensor an operator reads or writes is registered once, with a weak reference whose callback subtracts
    its bytes when the storage is freed. Tensors that exist before the block (parameters, optimizer states) are
    counted from their first use inside it.
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, weakref.ref] = {}

    def _register(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or functional wrappers
            return
        key = storage._cdata
        if key in self._live:
            return
        size = storage.nbytes()

        def release(_ref, key=key, size=size):
            if self._live.pop(key, None) is not None:
                self.current -= size

        self._live[key] = weakref.ref(storage, release)
        self.current += size
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for value in tree_leaves((args, kwargs or {})):
            if isinstance(value, torch.Tensor):
                self._register(value)
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self._register(value)
        return out


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes of live tensors during ``fn()`` (``PeakTensorMemory``; counts tensors on any device)."""
    with PeakTensorMemory() as tracker:
        fn()
    return tracker.peak


def cuda_peak_memory(fn: Callable[[], object]) -> int:
    """The CUDA caching allocator's peak during ``fn()`` above the bytes allocated when it began (activations,
    gradients, temporaries; the parameters and optimizer states that already exist are left out)."""
    synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    synchronize()
    return torch.cuda.max_memory_allocated() - before


def profile_table(fn: Callable[[], object], title: str, row_limit: int = 15) -> str:
    """Where the time of one call of ``fn`` goes (after one call to warm up): a markdown table of the operators with
    the most self CPU time, grouped by input shapes, with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:row_limit]
    gemm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"))
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    lines = [f"**{title}** (self CPU total {total / 1e3:.0f} ms; matrix products {100 * gemm / total:.1f} %, "
             f"sdpa kernels {100 * attention / total:.1f} %)", "", "| operator | input shapes | calls | self ms | share |",
             "|---|---|---:|---:|---:|"]
    for e in rows:
        shapes = str([s for s in e.input_shapes if s])[:60]
        lines.append(f"| {e.key} | {shapes} | {e.count} | {e.self_cpu_time_total / 1e3:.1f} | "
                     f"{100 * e.self_cpu_time_total / total:.1f}% |")
    return "\n".join(lines) + "\n"


def mib(nbytes: float) -> float:
    return round(nbytes / 2**20, 2)
