"""Helpers shared by the generation tests: tiny models, padded sources and independent scoring by forward passes."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import pytest
import torch

import scratchformers as sf

PAD, BOS, EOS = 0, 1, 2


def make_model(
    seed: int = 0,
    vocab_size: int = 16,
    d_model: int = 32,
    layers: int = 1,
    init_std: float = 0.5,
    eos_bias: float = 0.0,
    max_positions: int = 48,
) -> sf.ScratchTransformerForConditionalGeneration:
    """A random tiny model; a large ``init_std`` gives peaked, "opinionated" distributions, ``eos_bias`` sets how
    readily it stops (a bias on the EOS logit of the output projection)."""
    torch.manual_seed(seed)
    config = sf.ScratchTransformerConfig(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=2, decoder_attention_heads=2, ffn_dim=2 * d_model, dropout=0.0,
        max_position_embeddings=max_positions, init_std=init_std, output_bias=True,
    )
    model = sf.ScratchTransformerForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[EOS] = eos_bias
    return model


def train_reverser(model, steps: int, seed: int = 0, batch: int = 32, lr: float = 3e-3):
    """Train ``steps`` Adam steps on "output the source reversed, then EOS". A few dozen steps give a half-trained
    model: varied outputs that end at sensible lengths, with enough uncertainty that beam search beats greedy."""
    generator = torch.Generator().manual_seed(seed)
    vocab_size = model.config.vocab_size
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        lengths = torch.randint(2, 8, (batch,), generator=generator)
        attention_mask = (torch.arange(8)[None, :] < lengths[:, None]).long()
        input_ids = torch.randint(3, vocab_size, (batch, 8), generator=generator) * attention_mask
        labels = torch.full((batch, 9), -100)
        for i, n in enumerate(lengths.tolist()):
            labels[i, :n] = input_ids[i, :n].flip(0)
            labels[i, n] = EOS
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def make_sources(batch: int = 4, length: int = 7, vocab_size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded random sources (row i loses i tokens to padding)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for i in range(1, batch):
        attention_mask[i, length - min(i, length - 1) :] = 0
    input_ids[attention_mask == 0] = PAD
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def generated_tokens(sequence: torch.Tensor) -> list[int]:
    """The generated tokens of one output row (decoder start dropped), up to and including the first EOS."""
    tokens = sequence[1:].tolist()
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


def log_prob_sums(model, sources: dict[str, torch.Tensor], sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent scoring: teacher-forced forward passes give, per output row, the summed log-probability of its
    generated tokens (up to the first EOS) and their number L. Rows of one source are consecutive."""
    repeat = sequences.shape[0] // sources["input_ids"].shape[0]
    input_ids = sources["input_ids"].repeat_interleave(repeat, 0)
    attention_mask = sources["attention_mask"].repeat_interleave(repeat, 0)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=sequences[:, :-1]).logits
    token_log_probs = torch.log_softmax(logits.double(), -1).gather(-1, sequences[:, 1:, None])[..., 0]
    lengths = torch.tensor([len(generated_tokens(row)) for row in sequences])
    keep = torch.arange(sequences.shape[1] - 1)[None, :] < lengths[:, None]
    return (token_log_probs * keep).sum(-1), lengths


def contains(tokens: list[int], phrase: list[int]) -> bool:
    return any(tokens[i : i + len(phrase)] == list(phrase) for i in range(len(tokens) - len(phrase) + 1))


@contextmanager
def no_warnings():
    """Fail on any Python warning or any transformers log record at WARNING or above inside the block."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in records]
    assert not messages, messages


# Fixtures shared by test_modeling_transformer_generate.py and test_generation.py (imported there by name).
@pytest.fixture(scope="module")
def model() -> sf.ScratchTransformerForConditionalGeneration:
    """Half-trained reverser (vocabulary 16): varied outputs of varied lengths, often repeating tokens, uncertain
    enough that beams, sampling, groups and constraints have choices to make."""
    return train_reverser(make_model(seed=0, init_std=0.1), steps=60)


@pytest.fixture(scope="module")
def sources() -> dict[str, torch.Tensor]:
    return make_sources(batch=4, length=7)
