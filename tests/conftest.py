"""Shared fixtures: tiny configs so that every test runs in seconds on 2 CPU cores."""

from __future__ import annotations

import logging
import os
import subprocess

import pytest
import torch

import scratchformers as sf
from translation_fixtures import run_python

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Test processes share the CPU with each other: training runs they start wait passively (training/run.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests compare exact float32 results: no automatic bf16 on CPUs with AMX / AVX512-BF16 (tests that test it clear this).
os.environ.setdefault("SCRATCHFORMERS_BF16", "0")
torch.set_num_threads(1)


class _DeprecationLogs(logging.Handler):
    """Collects the deprecation messages transformers logs (``logger.warning_once``) rather than warns."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecated" in message.lower():
            self.messages.append(message)


@pytest.fixture(autouse=True)
def fail_on_transformers_deprecation_logs():
    """transformers logs some deprecations (e.g. ``past_key_values`` renamed to ``cache`` in 5.24) instead of
    warning: a test whose code triggers one fails, so the next rename shows up here and not as garbage output."""
    handler = _DeprecationLogs()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, f"transformers logged a deprecation: {handler.messages}"


def enable_activation_checkpointing(model) -> None:
    """``activation_checkpointing_enable`` (transformers >= 5.23; before, it was ``gradient_checkpointing_enable``,
    now a deprecated alias)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def tiny_transformer_config(**overrides) -> sf.ScratchTransformerConfig:
    values = dict(
        vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, ffn_dim=64, dropout=0.0, max_position_embeddings=64,
    )
    values.update(overrides)
    return sf.ScratchTransformerConfig(**values)


@pytest.fixture
def tiny_config() -> sf.ScratchTransformerConfig:
    return tiny_transformer_config()


@pytest.fixture
def padded_batch() -> dict[str, torch.Tensor]:
    """Three sources of lengths 9, 6 and 3, right-padded with pad id 0."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, 40, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    decoder_input_ids = torch.randint(4, 40, (3, 5), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids}


def run_without_package(code: str, tmp_path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that cannot import scratchformers (as on a machine without it)."""
    result = run_python(code, tmp_path, without_package=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture
def cpu_flags(monkeypatch):
    """``cpu_flags("amx_bf16")``: the detection reads a /proc/cpuinfo with these flags (and no override)."""
    from scratchformers import precision

    def fake(*flags: str) -> None:
        monkeypatch.delenv("SCRATCHFORMERS_BF16", raising=False)
        monkeypatch.setattr(precision, "read_cpuinfo", lambda: f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {' '.join(flags)}\n")

    return fake
