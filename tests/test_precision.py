"""precision.py: native bf16 is detected from /proc/cpuinfo flags (and the SCRATCHFORMERS_BF16 override), and bf16
autocast is used only for a float32 model on CPU."""

from __future__ import annotations

import pytest
import torch

from scratchformers import precision

AMX = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8\n\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
AVX2_ONLY = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n"


def fake_cpuinfo(monkeypatch, text):
    monkeypatch.delenv(precision.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(precision, "read_cpuinfo", lambda: text)


@pytest.mark.parametrize("text, native, reason", [
    (AMX, True, "amx_bf16"),
    (AVX512_BF16, True, "avx512_bf16"),
    (AVX2_ONLY, False, "none of amx_bf16, avx512_bf16 in /proc/cpuinfo"),
    (None, False, "none of amx_bf16, avx512_bf16 in /proc/cpuinfo"),  # unreadable, or not Linux
    ("", False, "none of amx_bf16, avx512_bf16 in /proc/cpuinfo"),
])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, text, native, reason):
    fake_cpuinfo(monkeypatch, text)
    assert precision.native_bf16_cpu() is native
    assert precision.native_bf16_reason() == reason


def test_an_unreadable_cpuinfo_means_no_native_bf16(monkeypatch):
    monkeypatch.delenv(precision.ENV_OVERRIDE, raising=False)

    def unreadable(*args, **kwargs):
        raise PermissionError("/proc/cpuinfo")

    monkeypatch.setattr(precision, "open", unreadable, raising=False)  # the module's open() only
    assert precision.read_cpuinfo() is None and precision.native_bf16_cpu() is False


@pytest.mark.parametrize("value, text, native", [
    ("1", AVX2_ONLY, True), ("true", None, True), ("0", AMX, False), ("off", AVX512_BF16, False),
    ("", AMX, True), ("maybe", AVX2_ONLY, False),  # empty or unknown values: detect
])
def test_the_environment_overrides_the_detection_both_ways(monkeypatch, value, text, native):
    fake_cpuinfo(monkeypatch, text)
    monkeypatch.setenv(precision.ENV_OVERRIDE, value)
    assert precision.native_bf16_cpu() is native
    if value in ("1", "0"):
        assert precision.native_bf16_reason() == f"SCRATCHFORMERS_BF16={value}"


def test_autocast_only_for_a_float32_model_on_cpu(monkeypatch):
    model = torch.nn.Linear(4, 4)
    fake_cpuinfo(monkeypatch, AMX)
    assert precision.use_bf16_autocast(model) and not precision.use_bf16_autocast(model, enabled=False)
    assert not precision.use_bf16_autocast(torch.nn.Linear(4, 4).to(torch.bfloat16))
    assert not precision.use_bf16_autocast(torch.nn.ReLU())  # no parameters to look at
    with precision.bf16_autocast(model):
        assert torch.is_autocast_enabled("cpu") and model(torch.ones(1, 4)).dtype == torch.bfloat16
    fake_cpuinfo(monkeypatch, AVX2_ONLY)
    assert not precision.use_bf16_autocast(model) and precision.use_bf16_autocast(model, enabled=True)
    with precision.bf16_autocast(model):
        assert not torch.is_autocast_enabled("cpu") and model(torch.ones(1, 4)).dtype == torch.float32


def test_the_benchmark_uses_the_package_detection():
    import ast
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decode.py").read_text()
    imported = {(node.module, alias.name) for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert ("scratchformers.precision", "native_bf16_cpu") in imported and "/proc/cpuinfo\")" not in source
