"""benchmarks/gpu_check.py on the CPU: its smoke mode runs every part but the training launches (tests/test_training.py
runs those) and fills a table without failures; the pieces it is built of (the training command per device, the
FLOP counts behind the MFU, the trimmed corpus, the benchmarks' --device) do what they say."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import sys

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, BENCHMARKS)
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(BENCHMARKS, "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_mode_fills_the_table_without_failures(gpu_check, tmp_path, capsys):
    table = gpu_check.main(["--device", "cpu", "--smoke", "--skip", "training", "--out", str(tmp_path)])
    results = {row["row"]: row["result"] for row in table.rows}
    assert not [row for row, result in results.items() if result.startswith("fail")], results
    for fragment in ("fp32 forward/backward seq2seq (fast)", "bf16 autocast vs fp32 ViT", "eager vs sdpa seq2seq",
                     "generate beam-4 (fast)", "generate sampling", "translation pipeline", "image-classification "
                     "pipeline", "quantize_int8", "saved on cpu, loaded on cpu", "train tokens/s seq2seq",
                     "train images/s ViT", "peak memory of a training step", "decode greedy", "decode beam-4"):
        assert any(fragment in row for row in results), fragment
    assert results["training"] == "missing: skipped (--skip)"
    assert results["host syncs per new token (greedy)"].startswith("missing: needs a CUDA device")
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["rows"] == table.rows and "bench_decode" in saved["reports"]
    printed = capsys.readouterr().out
    assert printed.rstrip().splitlines()[-1] == (tmp_path / "gpu_check.md").read_text().rstrip().splitlines()[-1]


def test_a_part_that_raises_becomes_a_failed_row(gpu_check):
    table = gpu_check.Table()

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    table.run("decoding", broken)
    table.add("after", "1", "pass")
    assert table.rows[0] == {"row": "decoding", "value": "raised",
                             "result": "fail: RuntimeError: CUDA error: an illegal memory access"}
    assert table.rows[1]["row"] == "after"


def test_unknown_parts_are_refused(gpu_check):
    with pytest.raises(SystemExit):
        gpu_check.main(["--skip", "trainig"])


def test_training_command_per_device(gpu_check, tmp_path):
    cpu = gpu_check.training_command("translation", tmp_path, torch.device("cpu"), smoke=True)
    assert cpu[1:3] == ["-m", "accelerate.commands.launch"] and "--cpu" in cpu
    assert cpu[cpu.index("--mixed_precision") + 1] == "no" and cpu[cpu.index("--bf16") + 1] == "False"
    assert cpu[cpu.index("--max_steps") + 1] == "2" and cpu[cpu.index("--model_size") + 1] == "tiny"
    gpu = gpu_check.training_command("translation", tmp_path, torch.device("cuda"), smoke=False)
    assert "--cpu" not in gpu and "--model_size" not in gpu  # the default preset
    assert gpu[gpu.index("--mixed_precision") + 1] == "bf16" and gpu[gpu.index("--bf16") + 1] == "True"
    assert gpu[gpu.index("--max_steps") + 1] == "300"
    chosen = gpu_check.training_command("image-classification", tmp_path, torch.device("cuda"), False, "default")
    assert "--bf16" not in chosen and chosen[chosen.index("--mixed_precision") + 1] == "no"  # the script decides
    assert chosen[chosen.index("--task") + 1] == "image-classification"


def test_flop_counts(gpu_check):
    # ViT-B/16 at 224 px: 17.6 G multiply-adds per image forward (the ViT paper's "GFLOPs"), i.e. 35 GFLOP
    assert gpu_check.vit_train_flops("base", 1) / 3 == pytest.approx(35.2e9, rel=0.02)
    one = gpu_check.seq2seq_train_flops("base", 1, 32, 32, 8000)
    assert gpu_check.seq2seq_train_flops("base", 4, 32, 32, 8000) == pytest.approx(4 * one)
    # at short lengths the count is 6 x (matrix parameters) x tokens: encoder 12 d^2 per layer, decoder 16 d^2
    d, layers = 512, 6
    matrix_params = layers * (12 * d * d) + layers * (16 * d * d) + d * 8000
    assert one == pytest.approx(6 * matrix_params * 32, rel=0.15)
    assert gpu_check.mfu(1e12, 1.0, None) == "n/a" and gpu_check.mfu(1e12, 1.0, 1000.0) == "0.1 %"
    assert gpu_check.peak_tflops(torch.device("cpu")) is None


def test_trim_bible_keeps_two_editions(gpu_check, tmp_path):
    source = tmp_path / "bible.db"
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
                   "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL)")
        db.executemany("INSERT INTO bible VALUES (?, ?, 1, 1, ?, ?)",
                       [(i, edition, i, f"verse {i}") for i, edition in enumerate("4el4el")])
    rows = gpu_check.trim_bible(source, tmp_path / "trimmed" / "bible.db")
    assert rows == 4
    with sqlite3.connect(tmp_path / "trimmed" / "bible.db") as db:
        assert sorted({row[0] for row in db.execute("SELECT bbName FROM bible")}) == ["4", "e"]


def test_benchmarks_refuse_a_missing_device_in_one_line(gpu_check):
    from _common import check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit, match="is not a device"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA GPU.*use --device cpu"):
            check_device("cuda")


def test_bench_decode_engines_per_device(gpu_check, monkeypatch):
    """On a GPU the dynamic int8 engines are skipped with the reason (they compute on the CPU only), and bf16 runs
    where the GPU has it; on the CPU both are built. (A model on the meta device stands in for a GPU model.)"""
    import argparse

    import bench_decode
    import bench_seq2seq

    ours, hf = bench_seq2seq.build_models("smoke", 64, 0)
    skipped: dict = {}
    on_cpu = bench_decode.torch_engines(ours, hf, argparse.Namespace(device="cpu", bf16=True, compile=False), skipped)
    assert {"ours_fp32", "hf_fp32", "ours_int8", "hf_int8", "ours_bf16"} <= set(on_cpu)
    skipped = {}
    gpu_args = argparse.Namespace(device="cuda", bf16=False, compile=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    elsewhere = bench_decode.torch_engines(ours.to("meta"), hf.to("meta"), gpu_args, skipped)
    assert set(elsewhere) == {"ours_fp32", "hf_fp32", "ours_bf16"}
    assert "CPU only" in skipped["ours_int8"] and "CPU only" in skipped["hf_int8"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert bench_decode.bf16_skip_reason(gpu_args) == "this GPU has no bf16"
