"""bf16 on CPU only where the CPU computes it natively.

On CPUs with AMX-BF16 (Intel Xeon Sapphire Rapids and later) or AVX512-BF16, bf16 matrix products run in hardware:
decoding and training are faster than in fp32. Elsewhere (e.g. AMD EPYC without AVX512, older Intel) PyTorch
emulates bf16 with fp32 arithmetic plus conversions, which is slower than plain fp32. So the training script
(``training/run.py``) and our pipelines choose bf16 automatically only when ``native_bf16_cpu()`` is true.

``native_bf16_cpu()`` reads the ``flags`` line of Linux's ``/proc/cpuinfo`` (``amx_bf16`` or ``avx512_bf16``); it
is False on other systems or when the file cannot be read. The environment variable ``SCRATCHFORMERS_BF16``
overrides the detection: ``1`` (or ``true``/``yes``/``on``) counts the CPU as native, ``0`` (``false``/``no``/``off``)
as not; any other value, or none, means detect.

This module imports nothing from its package: saved checkpoints carry a copy of it next to the pipeline modules.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
ENV_OVERRIDE = "SCRATCHFORMERS_BF16"
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
    """Whether this CPU computes bf16 natively (``amx_bf16`` or ``avx512_bf16``), unless ``SCRATCHFORMERS_BF16``
    says otherwise."""
    override = bf16_override()
    return bool(native_bf16_flags()) if override is None else override


def native_bf16_reason() -> str:
    """Why ``native_bf16_cpu()`` answers as it does, for logs: ``"amx_bf16"``, ``"SCRATCHFORMERS_BF16=1"``, ..."""
    override = bf16_override()
    if override is not None:
        return f"{ENV_OVERRIDE}={os.environ[ENV_OVERRIDE]}"
    return ", ".join(native_bf16_flags()) or f"none of {', '.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo"


def use_bf16_autocast(model: torch.nn.Module, enabled: Optional[bool] = None) -> bool:
    """Whether to run ``model`` under bf16 autocast: only a float32 model on CPU, and then by default (``enabled``
    None) iff ``native_bf16_cpu()``; ``enabled=False`` never, ``enabled=True`` even where bf16 is emulated."""
    if enabled is False:
        return False
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        return False
    return True if enabled else native_bf16_cpu()


def bf16_autocast(model: torch.nn.Module, enabled: Optional[bool] = None):
    """``torch.autocast("cpu", dtype=torch.bfloat16)`` where ``use_bf16_autocast(model, enabled)``, else a context
    that changes nothing."""
    if use_bf16_autocast(model, enabled):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["NATIVE_BF16_FLAGS", "bf16_autocast", "cpu_flags", "native_bf16_cpu", "native_bf16_reason",
           "use_bf16_autocast"]
