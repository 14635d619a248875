"""The Trainer side of a run: the Trainer subclasses (the model's own loss, our model card) and the
train / save / evaluate / test sequence that writes the Hugging Face results files."""

from __future__ import annotations

import errno
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from safetensors.torch import load_file
from transformers import Seq2SeqTrainer, Trainer

from model_card import render_model_card
from output_dir import CHECKPOINT_NAME, checkpoint_problem, same_directory
from precision_choice import settle_precision
from task_setup import Job

logger = logging.getLogger(__name__)

# How torch's zip writer words a write that the disk cut short (``unexpected pos 291904 vs 291796``).
SHORT_WRITE_WORDS = ("No space left on device", "unexpected pos", "file write failed")


class SaveError(Exception):
    """A save that failed for a reason the user can fix (a full disk); the message says what is intact and how to
    go on. ``run.py`` prints it as one line."""


def out_of_space(error: BaseException) -> bool:
    """Whether ``error`` is a write that a full disk (or quota) stopped: ``OSError(ENOSPC)`` from Python and
    safetensors, or torch's ``RuntimeError`` from its zip writer."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, RuntimeError) and any(words in str(error) for words in SHORT_WRITE_WORDS)


def last_complete_checkpoint(output_dir: str, besides: str = "") -> Optional[str]:
    """The newest checkpoint of ``output_dir`` that a run can resume from (not ``besides``), or None."""
    checkpoints = [path for path in Path(output_dir).iterdir() if CHECKPOINT_NAME.fullmatch(path.name)
                   and path.name != besides and checkpoint_problem(path) is None]
    newest = max(checkpoints, key=lambda path: int(CHECKPOINT_NAME.fullmatch(path.name).group(1)), default=None)
    return None if newest is None else str(newest)


@contextmanager
def disk_full_explained(output_dir: str, what: str, checkpoint: str = "") -> Iterator[None]:
    """Turn a full disk while saving ``what`` into a ``SaveError`` that says so, names the checkpoint left intact
    and how to resume, instead of ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos``."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        if not out_of_space(error):
            raise
        intact = last_complete_checkpoint(output_dir, besides=checkpoint)
        then = f"it goes on from {intact}, which is intact" if intact else "no checkpoint is complete: it starts over"
        raise SaveError(f"no space left on device while saving {what} in {output_dir}. Free some space (a lower "
                        f"--save_total_limit keeps fewer checkpoints), then run the same command again: {then}."
                        ) from error


class ScratchTrainerMixin:
    """The model computes the loss (with ``--label_smoothing_factor``); ``create_model_card`` (also called by
    ``push_to_hub``) writes our card, rendered from ``hub_card.md``."""

    card_context: Optional[dict] = None

    def __init__(self, *args, **kwargs):
        # A run without --bf16/--fp16 on a CPU with bf16 instructions measures which precision trains faster before
        # transformers' Trainer reads it (its accelerator is built once): precision_choice.py.
        settle_precision(kwargs.get("model"), kwargs.get("args"), kwargs.get("train_dataset"),
                         kwargs.get("data_collator"))
        super().__init__(*args, **kwargs)
        # One loss: the model's own, the function a reader finds in the model code. --label_smoothing_factor is
        # carried into its config; the Trainer's label smoother would pop the labels and compute a second loss.
        self.model.config.label_smoothing = self.args.label_smoothing_factor
        self.label_smoother = None

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint save; a full disk is a ``SaveError`` that says how to resume."""
        name = f"checkpoint-{self.state.global_step}"
        with disk_full_explained(self.args.output_dir, name, checkpoint=name):
            super()._save_checkpoint(model, trial)

    def create_model_card(self, *args, **kwargs) -> None:
        if self.card_context is None or not self.is_world_process_zero():
            return
        render_model_card(**self.card_context).save(Path(self.args.output_dir) / "README.md")


class ScratchSeq2SeqTrainer(ScratchTrainerMixin, Seq2SeqTrainer):
    pass


class ScratchTrainer(ScratchTrainerMixin, Trainer):
    pass


def train_evaluate_save(job: Job, training_args, model_args) -> dict:
    """Train (resuming if asked), save the final model, evaluate on validation and test; HF-style results files.

    An evaluation-only run saves the model only when asked (``--save_evaluated_model``)."""
    trainer, datasets_, resume_from = job.trainer, job.processed, job.resume_from
    results: dict[str, Any] = {}
    if training_args.do_train:
        start = time.time()
        # Read before training: checkpoint rotation may delete the checkpoint the run resumed from.
        resumed_state = json.loads((Path(resume_from) / "trainer_state.json").read_text()) if resume_from else None
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        if model_args.average_last_checkpoints > 1:
            average_last_checkpoints(trainer.model, training_args.output_dir, model_args.average_last_checkpoints)
        for key, value in job.saved_config.items():
            setattr(trainer.model.config, key, value)
        with disk_full_explained(training_args.output_dir, "the final model"):
            trainer.save_model()  # weights, config (auto_map, custom_pipelines), generation config, tokenizer/processor
        metrics = dict(train_result.metrics)
        metrics["train_samples"] = len(datasets_["train"])
        metrics["train_steps"] = trainer.state.global_step
        if resumed_state:
            metrics["train_resumed_from_step"] = resumed_state["global_step"]
            metrics["train_loss"] = whole_run_loss(resumed_state, metrics["train_loss"], trainer.state.global_step)
        metrics["train_wall_seconds"] = round(time.time() - start, 1)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate(eval_dataset=datasets_["validation"], metric_key_prefix="eval", **job.final_eval_kwargs)
        metrics["eval_samples"] = len(datasets_["validation"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    if training_args.do_predict:
        prediction = trainer.predict(datasets_["test"], metric_key_prefix="test", **job.final_eval_kwargs)
        metrics = dict(prediction.metrics)
        metrics["test_samples"] = len(datasets_["test"])
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        results.update(metrics)
    if not training_args.do_train and same_directory(model_args.model_name_or_path, training_args.output_dir):
        train_results = Path(training_args.output_dir) / "train_results.json"
        if train_results.is_file():  # a finished run evaluated again: its training figures
            results.update(json.loads(train_results.read_text()))
    elif not training_args.do_train and model_args.save_evaluated_model:
        for key, value in job.saved_config.items():
            setattr(trainer.model.config, key, value)
        trainer.save_model()
    return results


def average_last_checkpoints(model, output_dir: str, count: int) -> list[str]:
    """Set ``model``'s weights to the mean of those of the last ``count`` complete checkpoints (by step), the
    fairseq / OpenNMT averaging of the end of training; returns the checkpoints averaged."""
    checkpoints = sorted((path for path in Path(output_dir).iterdir()
                          if CHECKPOINT_NAME.fullmatch(path.name) and checkpoint_problem(path) is None),
                         key=lambda path: int(CHECKPOINT_NAME.fullmatch(path.name).group(1)))[-count:]
    if len(checkpoints) < count:
        logger.warning(f"--average_last_checkpoints {count}: only {len(checkpoints)} checkpoints to average.")
    states = [load_file(path / "model.safetensors") for path in checkpoints]
    averaged = {name: sum(state[name].double() for state in states).div(len(states)).to(tensor.dtype)
                for name, tensor in states[0].items()}
    unexpected = model.load_state_dict(averaged, strict=False).unexpected_keys  # tied weights are saved once
    if unexpected:
        raise ValueError(f"The checkpoints hold tensors the model does not have: {unexpected[:3]}.")
    logger.info(f"The final model is the average of {', '.join(path.name for path in checkpoints)}.")
    return [str(path) for path in checkpoints]


def whole_run_loss(state: dict, resumed_loss: float, global_step: int) -> float:
    """The mean training loss over every step of a resumed run: the Trainer's ``train_loss`` covers the steps
    after the resume only; the steps before come from the checkpoint's logged losses (exact when
    ``logging_steps`` divides the resume step, else their logged mean stands in for the unlogged tail)."""
    resumed_at = state["global_step"]
    total, covered = 0.0, 0  # summed loss over the logged steps, and the last logged step
    for entry in state.get("log_history", []):
        if "loss" in entry and entry["step"] <= resumed_at:
            total, covered = total + entry["loss"] * (entry["step"] - covered), entry["step"]
    if not covered or global_step <= resumed_at:
        return resumed_loss
    return (total / covered * resumed_at + resumed_loss * (global_step - resumed_at)) / global_step
