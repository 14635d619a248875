"""A tiny translation model + tokenizer, saved as a checkpoint, shared by the pipeline, plot and CLI tests."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import scratchformers as sf

SOURCES = ["the red cat sat", "a big dog ran home", "the small bird sang on the old tree"]


def corpus() -> list[str]:
    """A few generated sentences (source and target side) to train a byte-level BPE tokenizer on."""
    adjectives, nouns, verbs = ["red", "big", "small", "old"], ["cat", "dog", "bird", "tree"], ["sat", "ran", "sang"]
    english = [f"the {a} {n} {v}" for a, n, v in itertools.product(adjectives, nouns, verbs)]
    french = [f"le {n} {a} a {v}" for a, n, v in itertools.product(["rouge", "grand"], ["chat", "chien"], ["dormi"])]
    return english + french + SOURCES


def make_translation_model(**overrides) -> tuple[sf.ScratchTransformerForConditionalGeneration, object]:
    """A randomly initialised 2-layer, d_model 32 model (fixed seed) and a tokenizer that matches it.

    ``init_std=0.2`` (not 0.02) so that different sources get different (if meaningless) translations.
    """
    tokenizer = sf.train_tokenizer(corpus(), vocab_size=300, min_frequency=1)
    values = dict(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, ffn_dim=64, dropout=0.0, max_position_embeddings=24, init_std=0.2,
    )
    values.update(overrides)
    torch.manual_seed(0)
    model = sf.ScratchTransformerForConditionalGeneration(sf.ScratchTransformerConfig(**values)).eval()
    return model, tokenizer


def save_translation_model(directory: Path, **overrides) -> Path:
    model, tokenizer = make_translation_model(**overrides)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_python(code: str, cwd: Path, without_package: bool = False, args: tuple[str, ...] = (), stdin: str = ""):
    """Run ``code`` (or ``-m`` module when ``code`` starts with ``-m``) in a fresh interpreter.

    ``without_package``: the interpreter cannot import scratchformers (``-P``, cwd outside the repository,
    ``sys.modules['scratchformers'] = None``, an empty ``HF_HOME``), as on a machine where it is not installed.
    """
    env = {**os.environ, "HF_HOME": str(cwd / "hf_home"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if without_package:
        code = "import sys\nsys.modules['scratchformers'] = None\n" + textwrap.dedent(code)
    command = [sys.executable, "-P", "-c", code] if not code.startswith("-m") else [sys.executable, *code.split()]
    return subprocess.run([*command, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=300)
