"""The precision of a run given neither ``--bf16`` nor ``--fp16``.

``parse_args`` (``run.py``) calls ``automatic_precision``: bf16 on a GPU that supports it, fp32 on a CPU without
bf16 instructions, and on a CPU with them (``amx_bf16`` / ``avx512_bf16``) fp32 until measured. The Trainer
subclasses (``trainer.py``) call ``settle_precision`` before transformers' Trainer reads the precision (its
accelerator is built once): it times a few forward/backward passes of the run's model on one batch of the run's
batch size in fp32 and in bf16 autocast (``precision.measure_bf16_speedup``), takes bf16 only when it is at least
``precision.MIN_BF16_SPEEDUP`` times faster, and logs both figures and the choice. The measurement leaves the
model's weights and the random number generators as they were: the run trains the same as one given the chosen
flag (same seed, same initial weights, same data order).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Optional

import torch

from scratchformers.precision import (automatic_bf16, measure_bf16_speedup, native_bf16_cpu, native_bf16_reason,
                                      preserved_rng)

logger = logging.getLogger(__name__)

# The TrainingArguments attribute holding an automatic choice, ``(bf16 or None: to measure, reason)``; absent
# when --bf16 / --fp16 (or accelerate's --mixed_precision) chose.
ATTRIBUTE = "automatic_precision"
# With batches grouped by length, the measured batch is the middle-length one of this many batches' worth of examples.
LENGTH_SAMPLE = 8


def automatic_precision(device_type: str, explicit: set[str]) -> Optional[tuple[Optional[bool], str]]:
    """The choice for a run on ``device_type`` whose given flags are ``explicit`` (names without dashes), or None
    when the user chose: ``--bf16`` / ``--fp16``, or ``accelerate launch --mixed_precision bf16|fp16``."""
    if explicit & {"bf16", "fp16"} or os.environ.get("ACCELERATE_MIXED_PRECISION", "no") not in ("no", ""):
        return None
    return automatic_bf16(device_type)


def log_precision(training_args) -> None:
    """Say which precision the run starts with and why (the measurement, if any, logs its own result later);
    warn when bf16 was asked for on a CPU that emulates it."""
    if training_args.fp16:
        return
    automatic = getattr(training_args, ATTRIBUTE, None)
    if automatic is not None:
        choice, reason = automatic
        precision = "fp32 or bf16, whichever trains faster" if choice is None else "bf16" if choice else "fp32"
        logger.info(f"{precision}: {reason}")
    elif not training_args.use_cpu:
        return
    elif training_args.bf16 and not native_bf16_cpu():
        logger.warning(f"bf16 on a CPU without native bf16 ({native_bf16_reason()}): it is emulated, and slower than "
                       "fp32 (drop --bf16 to train in fp32)")
    else:
        logger.info(f"{'bf16' if training_args.bf16 else 'fp32'}: --bf16 {training_args.bf16} was given (not measured)")


def probe_batch(train_dataset, data_collator: Callable[[list], dict], batch_size: int,
                by_length: bool = False) -> dict[str, Any]:
    """One batch of ``batch_size`` training examples, as the run's collator makes it: examples spread evenly over
    the set, or with ``by_length`` (``--train_sampling_strategy group_by_length``, whose batches hold examples of
    similar lengths) the examples of middle length among ``LENGTH_SAMPLE`` times as many spread evenly."""
    size = len(train_dataset)
    count = min(batch_size, size)
    if not by_length:
        return data_collator([train_dataset[index * size // count] for index in range(count)])
    candidates = min(size, LENGTH_SAMPLE * count)
    examples = sorted((train_dataset[index * size // candidates] for index in range(candidates)),
                      key=lambda example: len(example["input_ids"]))
    middle = (candidates - count) // 2
    return data_collator(examples[middle : middle + count])


def processes_agree(choice: bool) -> bool:
    """bf16 only if every process of a distributed run measured it faster (one precision for all of them)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return choice
    vote = torch.tensor([int(choice)])
    torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MIN)
    return bool(vote.item())


def settle_precision(model: torch.nn.Module, training_args, train_dataset, data_collator) -> None:
    """Where ``training_args`` waits for a measurement: measure, then set ``bf16`` / ``mixed_precision`` (before the
    Trainer builds its accelerator). Runs that do not train stay in fp32 without measuring."""
    automatic = getattr(training_args, ATTRIBUTE, None)
    if automatic is None or automatic[0] is not None:
        return
    if not training_args.do_train or train_dataset is None or model is None:
        setattr(training_args, ATTRIBUTE, (False, "no training to measure: fp32"))
        return
    with preserved_rng():  # the image task's augmentation draws random numbers
        by_length = getattr(training_args, "train_sampling_strategy", None) == "group_by_length"
        batch = probe_batch(train_dataset, data_collator, training_args.per_device_train_batch_size, by_length)
    device = next(model.parameters()).device
    batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    start = time.perf_counter()
    probe = measure_bf16_speedup(model, batch)
    choice = processes_agree(probe.prefers_bf16())
    shape = "x".join(str(dim) for dim in next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape)
    reason = f"measured on this model, batch {shape}: {probe.describe()}; {time.perf_counter() - start:.1f} s"
    setattr(training_args, ATTRIBUTE, (choice, reason))
    training_args.bf16 = choice
    training_args.mixed_precision = "bf16" if choice else "no"
    logger.info(f"{'bf16' if choice else 'fp32'}: {reason}")
