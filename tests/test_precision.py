"""precision.py: native bf16 is detected from /proc/cpuinfo flags (and the SCRATCHFORMERS_BF16 override), and bf16
autocast is used only for a float32 model on CPU."""

from __future__ import annotations

import pytest
import torch

import scratchformers as sf
from conftest import tiny_transformer_config
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


def test_autocast_only_when_asked_and_only_for_a_float32_model(monkeypatch):
    model = torch.nn.Linear(4, 4)
    for text in (AMX, AVX512_BF16, AVX2_ONLY):
        fake_cpuinfo(monkeypatch, text)
        assert not precision.use_bf16_autocast(model) and not precision.use_bf16_autocast(model, enabled=False)
        with precision.bf16_autocast(model):  # the model's own dtype, whatever the CPU
            assert not torch.is_autocast_enabled("cpu") and model(torch.ones(1, 4)).dtype == torch.float32
        assert precision.use_bf16_autocast(model, enabled=True)  # asked: also where bf16 is emulated
        with precision.bf16_autocast(model, True):
            assert torch.is_autocast_enabled("cpu") and model(torch.ones(1, 4)).dtype == torch.bfloat16
    assert not precision.use_bf16_autocast(torch.nn.Linear(4, 4).to(torch.bfloat16), enabled=True)
    assert not precision.use_bf16_autocast(torch.nn.ReLU(), enabled=True)  # no parameters to look at
    assert not precision.use_bf16_autocast(torch.nn.Linear(4, 4, device="meta"), enabled=True)


# ----------------------------------------------------------------------------------------------------------------
# The automatic choice for training: GPU support, CPU flags, measurement
# ----------------------------------------------------------------------------------------------------------------
def fake_gpu(monkeypatch, present: bool, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)


@pytest.mark.parametrize("present, bf16, chosen", [(True, True, True), (True, False, False), (False, True, False)])
def test_gpus_train_in_bf16_where_they_support_it(monkeypatch, present, bf16, chosen):
    fake_cpuinfo(monkeypatch, AVX2_ONLY)
    fake_gpu(monkeypatch, present, bf16)
    assert precision.gpu_supports_bf16() is chosen
    choice, reason = precision.automatic_bf16("cuda")
    assert choice is chosen and "torch.cuda.is_bf16_supported()" in reason


@pytest.mark.parametrize("text, device, choice", [
    (AVX2_ONLY, "cpu", False),  # emulated: slower, no need to measure
    (None, "cpu", False),
    (AVX512_BF16, "cpu", None),  # the flags do not say: measure
    (AMX, "cpu", None),
    (AMX, "mps", False),  # other accelerators: transformers' default unless asked
])
def test_cpus_measure_only_where_they_have_bf16_instructions(monkeypatch, text, device, choice):
    fake_cpuinfo(monkeypatch, text)
    fake_gpu(monkeypatch, True, True)
    got, reason = precision.automatic_bf16(device)
    assert got is choice
    assert ("measuring" in reason) is (choice is None)


@pytest.mark.parametrize("value, choice", [("1", True), ("0", False)])
def test_the_environment_chooses_without_measuring(monkeypatch, value, choice):
    fake_cpuinfo(monkeypatch, AVX512_BF16)
    fake_gpu(monkeypatch, True, not choice)
    monkeypatch.setenv(precision.ENV_OVERRIDE, value)
    for device in ("cpu", "cuda"):
        assert precision.automatic_bf16(device) == (choice, f"SCRATCHFORMERS_BF16={value}")


def fake_timings(monkeypatch, fp32: float, bf16: float) -> list[bool]:
    """``time_training_pass`` answers ``fp32`` / ``bf16`` seconds (the first pass of each 100x: the warm-up); the
    precisions it was called with, in order, are returned."""
    calls: list[bool] = []

    def fake(model, batch, use_bf16, clock=None):
        calls.append(use_bf16)
        seconds = bf16 if use_bf16 else fp32
        return seconds * 100 if calls.count(use_bf16) == 1 else seconds

    monkeypatch.setattr(precision, "time_training_pass", fake)
    return calls


@pytest.mark.parametrize("fp32, bf16, prefers", [(0.30, 0.50, False), (0.30, 0.18, True), (0.30, 0.28, False)],
                         ids=["bf16-slower", "bf16-faster", "within-the-margin"])
def test_the_measurement_takes_bf16_only_when_clearly_faster(monkeypatch, fp32, bf16, prefers):
    calls = fake_timings(monkeypatch, fp32, bf16)
    probe = precision.measure_bf16_speedup(torch.nn.Linear(2, 2), {}, passes=3, warmup=1)
    assert calls == [False, True] * 4  # alternating, so that a neighbour's load falls on both
    assert (probe.fp32_seconds, probe.bf16_seconds) == (fp32, bf16)  # the warm-up passes do not count
    assert probe.speedup == pytest.approx(fp32 / bf16) and probe.prefers_bf16() is prefers
    assert f"fp32 {fp32:.3f} s, bf16 {bf16:.3f} s" in probe.describe() and "needs x1.15" in probe.describe()
    calls.clear()
    precision.measure_bf16_speedup(torch.nn.Linear(2, 2), {}, passes=3, warmup=1, budget_seconds=0)
    assert calls == [False, True] * 2  # out of time: one timed pass of each after the warm-up
    with pytest.raises(ValueError, match="passes=0"):
        precision.measure_bf16_speedup(torch.nn.Linear(2, 2), {}, passes=0)


def test_the_measurement_leaves_the_model_and_the_random_generators_as_they_were():
    import random

    import numpy

    def seed() -> None:
        torch.manual_seed(1), random.seed(1), numpy.random.seed(1)

    def draws() -> tuple:
        return torch.rand(3).tolist(), random.random(), numpy.random.rand()

    model = sf.ScratchTransformerForConditionalGeneration(tiny_transformer_config(dropout=0.3)).eval()
    batch = {"input_ids": torch.randint(3, 40, (2, 7)), "labels": torch.randint(3, 40, (2, 5))}
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    seed()
    expected = draws()
    seed()
    probe = precision.measure_bf16_speedup(model, batch, passes=1, warmup=1)  # training mode: dropout draws
    assert draws() == expected
    assert probe.fp32_seconds > 0 and probe.bf16_seconds > 0
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters()) and not model.training


def test_the_benchmark_uses_the_package_detection():
    import ast
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decode.py").read_text()
    imported = {(node.module, alias.name) for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert ("scratchformers.precision", "native_bf16_cpu") in imported and "/proc/cpuinfo\")" not in source


# ----------------------------------------------------------------------------------------------------------------
# The training script's use of it (training/precision_choice.py): measured before the Trainer reads the flag
# ----------------------------------------------------------------------------------------------------------------
def load_precision_choice():
    import sys
    from pathlib import Path

    training = str(Path(__file__).resolve().parents[1] / "training")
    if training not in sys.path:
        sys.path.insert(0, training)
    import precision_choice

    return precision_choice


def waiting_args(choice=None, do_train=True):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", use_cpu=True, per_device_train_batch_size=4, report_to="none",
                             do_train=do_train)
    args.automatic_precision = (choice, "reason")
    return args


def tiny_training_data():
    rows = [{"input_ids": list(range(3, 3 + n)), "labels": list(range(4, 4 + n))} for n in (3, 5, 6, 4, 7, 2, 5, 6)]

    def collate(examples):
        width = max(len(example["input_ids"]) for example in examples)
        padded = {key: [example[key] + [0 if key == "input_ids" else -100] * (width - len(example[key]))
                        for example in examples] for key in ("input_ids", "labels")}
        return {key: torch.tensor(value) for key, value in padded.items()}

    return rows, collate


@pytest.mark.parametrize("fp32, bf16, chosen", [(0.30, 0.50, False), (0.30, 0.20, True)],
                         ids=["bf16-slower", "bf16-faster"])
def test_the_run_trains_in_what_measured_faster_and_says_so(monkeypatch, caplog, fp32, bf16, chosen):
    import logging

    choice = load_precision_choice()
    fake_timings(monkeypatch, fp32, bf16)
    batches = []
    monkeypatch.setattr(choice, "measure_bf16_speedup",
                        lambda model, batch: batches.append(batch) or precision.measure_bf16_speedup(model, batch))
    args = waiting_args()
    rows, collate = tiny_training_data()
    with caplog.at_level(logging.INFO, logger=choice.logger.name):
        choice.settle_precision(torch.nn.Linear(2, 2), args, rows, collate)
    assert args.bf16 is chosen and args.mixed_precision == ("bf16" if chosen else "no")
    assert args.automatic_precision[0] is chosen
    assert batches[0]["input_ids"].shape == (4, 7)  # the run's batch size, examples from across the set
    message = caplog.records[-1].getMessage()
    assert message.startswith("bf16: " if chosen else "fp32: ") and f"fp32 {fp32:.3f} s, bf16 {bf16:.3f} s" in message


def test_with_batches_grouped_by_length_the_measured_batch_has_the_middle_lengths():
    choice = load_precision_choice()
    rows, collate = tiny_training_data()  # lengths 3, 5, 6, 4, 7, 2, 5, 6
    assert choice.probe_batch(rows, collate, 4)["input_ids"].shape == (4, 7)  # rows 0, 2, 4, 6: padded to 7
    grouped = choice.probe_batch(rows, collate, 4, by_length=True)  # sorted 2 3 4 5 5 6 6 7: the middle four
    assert grouped["input_ids"].shape == (4, 6) and (grouped["input_ids"] != 0).sum(-1).tolist() == [4, 5, 5, 6]
    assert choice.probe_batch(rows, collate, 20, by_length=True)["input_ids"].shape == (8, 7)  # a small set: all


def test_a_given_precision_or_a_run_without_training_measures_nothing(monkeypatch):
    choice = load_precision_choice()
    calls = fake_timings(monkeypatch, 0.3, 0.1)
    rows, collate = tiny_training_data()
    for args in (waiting_args(choice=False), waiting_args(choice=True)):
        before = args.bf16
        choice.settle_precision(torch.nn.Linear(2, 2), args, rows, collate)
        assert args.bf16 is before
    given = waiting_args()
    del given.automatic_precision  # --bf16 / --fp16 given
    choice.settle_precision(torch.nn.Linear(2, 2), given, rows, collate)
    evaluation_only = waiting_args(do_train=False)
    choice.settle_precision(torch.nn.Linear(2, 2), evaluation_only, rows, collate)
    assert evaluation_only.bf16 is False and evaluation_only.automatic_precision[0] is False
    assert calls == []


def test_the_run_measures_only_without_precision_flags(monkeypatch):
    choice = load_precision_choice()
    fake_cpuinfo(monkeypatch, AVX512_BF16)
    assert choice.automatic_precision("cpu", set())[0] is None
    assert choice.automatic_precision("cpu", {"bf16"}) is None and choice.automatic_precision("cpu", {"fp16"}) is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch --mixed_precision bf16
    assert choice.automatic_precision("cpu", set()) is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert choice.automatic_precision("cpu", set())[0] is None
    assert choice.processes_agree(True) is True and choice.processes_agree(False) is False  # one process
