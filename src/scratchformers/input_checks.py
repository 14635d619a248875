"""Checks of what users hand the models, each failing with one line that names the problem and the fix.

- ``damaged_json_file``: a checkpoint's JSON files (config, tokenizer, processor) parse, else which one is damaged;
  transformers would report ``Unterminated string starting at: line 444 column 7`` without naming the file.
- ``check_weights_finite`` / ``check_vocabulary_fits``: at load time in the pipelines (and so the command line), a
  model whose weights hold NaN or inf (it generates ``[1, 0, 0, ...]`` silently) and a tokenizer whose vocabulary
  does not fit the model (a 270-token tokenizer on a 400-token model translates to ``''``).
- ``check_token_inputs``: the model's forward inputs (1-D ``input_ids``, a batch of no rows, labels outside the
  vocabulary), which torch reports from deep inside the model (``index 900 is out of bounds``) or, on a GPU, as a
  device-side assert.

Imports nothing from its package (it travels with saved checkpoints) and torch only where it is called.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

# The JSON files save_pretrained writes next to a model (and its tokenizer or image processor).
SAVED_JSON_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "preprocessor_config.json", "trainer_state.json",
)
IGNORE_INDEX = -100  # label positions left out of the loss


def damaged_json_file(directory: str) -> Optional[str]:
    """Why a JSON file saved in ``directory`` cannot be read (naming the file and the fix), or None when they all
    parse (or ``directory`` is not a local directory: a hub id is checked by the hub's own download)."""
    if not directory or not os.path.isdir(directory):
        return None
    for name in SAVED_JSON_FILES:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                json.load(handle)
        except (ValueError, OSError) as error:  # JSONDecodeError, UnicodeDecodeError, a read error
            return (f"{path} is damaged ({type(error).__name__}: {error}): copy it again from where the model came "
                    "from, or save the model (and its tokenizer or processor) again with save_pretrained")
    return None


def check_saved_json_files(directory: str) -> None:
    """A ``ValueError`` naming a damaged JSON file of ``directory`` (see ``damaged_json_file``)."""
    problem = damaged_json_file(directory)
    if problem:
        raise ValueError(problem)


def check_weights_finite(model: Any, shown: int = 3) -> None:
    """A ``ValueError`` naming the parameters (and buffers) of ``model`` that hold NaN or infinite values."""
    bad = [name for name, tensor in (*model.named_parameters(), *model.named_buffers())
           if tensor.is_floating_point() and not tensor.is_meta and not bool(tensor.isfinite().all())]
    if bad:
        listed = ", ".join(bad[:shown]) + (", ..." if len(bad) > shown else "")
        raise ValueError(
            f"The model's weights hold NaN or infinite values ({len(bad)} tensor{'s' if len(bad) > 1 else ''}: "
            f"{listed}), so every output would be meaningless: training diverged before it was saved. Load an "
            "earlier checkpoint, or train again (a lower learning rate, or fp32 instead of fp16)."
        )


def padded_sizes(size: int) -> set[int]:
    """``size`` and ``size`` rounded up to a multiple of 8 ... 128: embedding tables padded for speed (T5 keeps
    32,100 tokens in a 32,128-row table)."""
    return {size} | {-(-size // multiple) * multiple for multiple in (8, 16, 32, 64, 128)}


def check_vocabulary_fits(tokenizer: Any, config: Any) -> None:
    """A ``ValueError`` naming both sizes when ``tokenizer`` is not the model's: it has more tokens than the model
    has rows (its ids would index past the table), or so many fewer that they cannot be the same vocabulary."""
    vocab_size = getattr(config, "vocab_size", None)
    if tokenizer is None or not isinstance(vocab_size, int):
        return
    tokens = len(tokenizer)
    if vocab_size not in padded_sizes(tokens):
        raise ValueError(
            f"The tokenizer has {tokens} tokens but the model's vocabulary has {vocab_size} (config.vocab_size): "
            "they were not trained together, and the model would read and write the wrong tokens. Load the tokenizer "
            "saved with the model (the same directory)."
        )


def check_token_inputs(input_ids: Any, labels: Any, vocab_size: int) -> None:
    """A ``ValueError`` for token inputs a model cannot run on: ``input_ids`` that are not a 2-D batch with at least
    one row, labels outside ``[0, vocab_size)`` (other than -100, left out of the loss)."""
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be a 2-D batch [batch, length], got shape {tuple(input_ids.shape)}: for one sequence"
                " use input_ids[None] (or tokenizer(..., return_tensors='pt'), which gives a batch of one)."
            )
        if input_ids.shape[0] == 0:
            raise ValueError(f"input_ids is a batch of no rows (shape {tuple(input_ids.shape)}): pass at least one.")
    import torch

    # A data-dependent check (a host sync): torch.compile leaves it out rather than break the graph.
    if labels is not None and not labels.is_floating_point() and not torch.compiler.is_compiling():
        outside = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size))
        if bool(outside.any()):  # one device sync; the values are read only to report them
            raise ValueError(
                f"labels hold token ids outside the vocabulary [0, {vocab_size}) (e.g. {int(labels[outside][0])}; "
                "-100 marks positions left out of the loss): tokenize the targets with the model's own tokenizer."
            )


__all__ = ["check_saved_json_files", "check_token_inputs", "check_vocabulary_fits", "check_weights_finite",
           "damaged_json_file"]
