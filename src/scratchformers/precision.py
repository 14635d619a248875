"""bf16 where it is faster: asked for by the caller, supported by the GPU, or measured on the CPU.

Pipelines compute in the model's dtype unless the caller passes ``autocast_bf16=True`` (``bf16_autocast``): the
same saved model then translates the same on every machine.

Training (``training/run.py``) chooses with ``automatic_bf16(device_type)``:

- on a GPU, bf16 where ``torch.cuda.is_bf16_supported()``;
- on a CPU without ``amx_bf16`` / ``avx512_bf16`` in ``/proc/cpuinfo``, fp32: PyTorch emulates bf16 with fp32
  arithmetic plus conversions there, slower than fp32;
- on a CPU with one of those flags, the flags do not say which is faster (an Intel Xeon with AVX512-BF16 but no
  AMX trained at 0.62x of fp32 in bf16, an AMD Zen 5 at 1.70x): ``measure_bf16_speedup`` times a few forward /
  backward passes of the model itself in both precisions, and bf16 is chosen only when it is at least
  ``MIN_BF16_SPEEDUP`` times faster. The measurement runs on a copy of the model and restores the random number
  generators, so training is the same whether it ran or not.

The environment variable ``SCRATCHFORMERS_BF16`` overrides the choice: ``1`` (or ``true``/``yes``/``on``) bf16,
``0`` (``false``/``no``/``off``) fp32, without measuring; any other value, or none, means choose as above.
``native_bf16_cpu()`` (the flags, with that override) remains for the benchmarks.

This module imports nothing from its package: saved checkpoints carry a copy of it next to the pipeline modules.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
ENV_OVERRIDE = "SCRATCHFORMERS_BF16"
# bf16 must beat fp32 by this factor to be chosen: below it, the timing's noise (a shared CPU) could be the reason.
MIN_BF16_SPEEDUP = 1.15
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def read_cpuinfo() -> Optional[str]:
    """The text of ``/proc/cpuinfo``, or None where there is none or it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (the first ``flags`` line of ``/proc/cpuinfo``); empty when unknown."""
    text = read_cpuinfo() or ""
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16_flags() -> list[str]:
    """Which of ``NATIVE_BF16_FLAGS`` this CPU has (sorted; empty when none or unknown). Ignores the override."""
    return sorted(set(NATIVE_BF16_FLAGS) & cpu_flags())


def bf16_override() -> Optional[bool]:
    """``SCRATCHFORMERS_BF16`` as a bool, or None when it is unset or not one of the documented values."""
    value = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    return True if value in _TRUE else False if value in _FALSE else None


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 instructions (``amx_bf16`` or ``avx512_bf16``), unless ``SCRATCHFORMERS_BF16``
    says otherwise. Having them does not make bf16 faster than fp32: ``automatic_bf16`` measures."""
    override = bf16_override()
    return bool(native_bf16_flags()) if override is None else override


def native_bf16_reason() -> str:
    """Why ``native_bf16_cpu()`` answers as it does, for logs: ``"amx_bf16"``, ``"SCRATCHFORMERS_BF16=1"``, ..."""
    override = bf16_override()
    if override is not None:
        return f"{ENV_OVERRIDE}={os.environ[ENV_OVERRIDE]}"
    return ", ".join(native_bf16_flags()) or f"none of {', '.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo"


def gpu_supports_bf16() -> bool:
    """Whether a CUDA GPU is there and computes bf16 (``torch.cuda.is_bf16_supported()``: Ampere and later)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def automatic_bf16(device_type: str) -> tuple[Optional[bool], str]:
    """What training on ``device_type`` ("cpu", "cuda", ...) should use when no precision flag was given, and why:
    ``(True, reason)`` bf16, ``(False, reason)`` fp32, ``(None, reason)``: measure (``measure_bf16_speedup``)."""
    override = bf16_override()
    if override is not None:
        return override, f"{ENV_OVERRIDE}={os.environ[ENV_OVERRIDE]}"
    if device_type == "cuda":
        if gpu_supports_bf16():
            return True, "this GPU supports bf16 (torch.cuda.is_bf16_supported())"
        return False, "this GPU does not support bf16 (torch.cuda.is_bf16_supported() is False)"
    if device_type != "cpu":
        return False, f"no automatic bf16 on {device_type} (pass --bf16 True to ask for it)"
    flags = native_bf16_flags()
    if not flags:
        return False, f"this CPU has no native bf16 ({native_bf16_reason()}): bf16 would be emulated, slower"
    return None, f"this CPU has {', '.join(flags)}, which does not say whether bf16 is faster: measuring"


# ----------------------------------------------------------------------------------------------------------------
# Measuring: a few forward/backward passes in fp32 and in bf16 autocast
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bf16Probe:
    """Seconds per forward/backward pass of one batch, the best of the timed passes in each precision."""

    fp32_seconds: float
    bf16_seconds: float

    @property
    def speedup(self) -> float:
        """How many times faster bf16 is than fp32 (below 1: slower)."""
        return self.fp32_seconds / self.bf16_seconds

    def prefers_bf16(self, margin: float = MIN_BF16_SPEEDUP) -> bool:
        """bf16 only when it is at least ``margin`` times faster."""
        return self.speedup >= margin

    def describe(self, margin: float = MIN_BF16_SPEEDUP) -> str:
        """``"fp32 0.310 s, bf16 0.500 s per forward/backward: bf16 x0.62 of fp32 (bf16 needs x1.15)"``."""
        return (f"fp32 {self.fp32_seconds:.3f} s, bf16 {self.bf16_seconds:.3f} s per forward/backward: bf16 "
                f"x{self.speedup:.2f} of fp32 (bf16 needs x{margin:.2f})")


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's (if loaded) and torch's random number generators (CPU and CUDA) on exit."""
    numpy = sys.modules.get("numpy")  # only if something loaded it: nothing else can have drawn from it
    states = (random.getstate(), numpy.random.get_state() if numpy else None, torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        if numpy:
            numpy.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def _forward_backward(model: torch.nn.Module, batch: Mapping[str, Any], bf16: bool) -> None:
    """One training pass without an optimizer step: the loss's gradients, then dropped."""
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def time_training_pass(model: torch.nn.Module, batch: Mapping[str, Any], bf16: bool,
                       clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one forward/backward pass of ``model`` on ``batch`` (which holds ``labels``)."""
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    _forward_backward(model, batch, bf16)
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def measure_bf16_speedup(model: torch.nn.Module, batch: Mapping[str, Any], passes: int = 5, warmup: int = 1,
                         clock: Callable[[], float] = time.perf_counter,
                         budget_seconds: Optional[float] = 5.0) -> Bf16Probe:
    """Time ``passes`` forward/backward passes of ``model`` on ``batch`` in fp32 and in bf16 autocast, alternating
    (so that a neighbour's load falls on both), after ``warmup`` untimed passes of each; the best pass counts.
    Fewer passes once ``budget_seconds`` (wall time, warm-up included) are spent, never fewer than one of each.
    ``clock``: wall time by default (what training takes); ``time.process_time`` for benchmarks on a shared CPU.

    ``model`` itself is left as it was: a deep copy is timed (no optimizer step, its gradients dropped), and the
    random number generators (dropout draws) are restored, so a run trains the same whether it measured or not."""
    if passes < 1:
        raise ValueError(f"measure_bf16_speedup: passes={passes}; time at least one pass.")
    times: dict[bool, list[float]] = {False: [], True: []}
    with preserved_rng():
        probe_model = copy.deepcopy(model).train()
        start = time.perf_counter()
        for index in range(warmup + passes):
            for bf16 in (False, True):
                seconds = time_training_pass(probe_model, batch, bf16, clock)
                if index >= warmup:
                    times[bf16].append(seconds)
            if index >= warmup and budget_seconds is not None and time.perf_counter() - start > budget_seconds:
                break
        del probe_model
    return Bf16Probe(fp32_seconds=min(times[False]), bf16_seconds=min(times[True]))


# ----------------------------------------------------------------------------------------------------------------
# Pipelines: bf16 autocast when asked
# ----------------------------------------------------------------------------------------------------------------
def use_bf16_autocast(model: torch.nn.Module, enabled: Optional[bool] = None) -> bool:
    """Whether to run ``model`` under bf16 autocast: only when asked (``enabled=True``), and then for a float32
    model on a CPU (native or emulated bf16) or on a GPU that supports bf16. ``None`` / ``False``: never, the model
    computes in its own dtype."""
    if not enabled:
        return False
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.dtype != torch.float32:
        return False
    return parameter.device.type == "cpu" or (parameter.device.type == "cuda" and gpu_supports_bf16())


def bf16_autocast(model: torch.nn.Module, enabled: Optional[bool] = None):
    """``torch.autocast(<the model's device>, dtype=torch.bfloat16)`` where ``use_bf16_autocast(model, enabled)``,
    else a context that changes nothing."""
    if use_bf16_autocast(model, enabled):
        return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["MIN_BF16_SPEEDUP", "NATIVE_BF16_FLAGS", "Bf16Probe", "automatic_bf16", "bf16_autocast", "cpu_flags",
           "gpu_supports_bf16", "measure_bf16_speedup", "native_bf16_cpu", "native_bf16_reason", "preserved_rng",
           "use_bf16_autocast"]
