#!/usr/bin/env python
"""Train scratchformers' encoder-decoder Transformer (translation) or ViT (image classification) with the Trainer.

    python training/run.py                                   # en->de on the embedded Bible corpus, small preset
    python training/run.py --task image-classification       # ViT on 5,000 embedded MNIST digits
    accelerate launch training/run.py --model_size base ...  # any accelerate setup: DDP, multi-node, FSDP, bf16

Arguments follow the Hugging Face example scripts (``run_translation.py``, ``run_image_classification.py``):
model, data and ``Seq2SeqTrainingArguments`` / ``TrainingArguments`` flags, or one ``.json`` file holding them.
The output directory gets the weights, config (with ``auto_map`` and ``custom_pipelines``), generation config,
tokenizer or image processor, ``all/train/eval/test_results.json`` and a ``README.md`` model card rendered from
``hub_card.md``; ``pipeline(task, model=output_dir, trust_remote_code=True)`` then works anywhere.
"""

from __future__ import annotations

import os

# On a CPU shared with other processes, OpenMP threads that spin while they wait slow training down several times;
# waiting passively costs next to nothing otherwise. Must be set before torch loads OpenMP; a user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import hashlib
import json
import logging
import platform
import shutil
import sys
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import datasets
import numpy as np
import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainingArguments,
    set_seed,
)

import scratchformers
from scratchformers import ScratchTransformerConfig, ScratchViTConfig, make_image_processor, train_tokenizer
from scratchformers.data import DatasetError, dataset_license, load_image_dataset, load_translation_dataset, EMBEDDED_DATASETS
from scratchformers.metrics import accuracy_compute_metrics, translation_compute_metrics
from scratchformers.tokenization import check_tokenizer_matches

logger = logging.getLogger(__name__)

TASKS = ("translation", "image-classification")
MODEL_TYPES = {"translation": "scratch_transformer", "image-classification": "scratch_vit"}
CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "hub_card.md"

# Architecture presets (``--model_size``); ``--config_overrides "d_model=128,encoder_layers=2"`` edits any field.
# Weights start at std d_model^-0.5 (the paper's embedding init): after the × √d_model embedding scale, tokens weigh
# as much as the sinusoidal positions. With transformers' usual 0.02 the positions drown the tokens in small models
# and the Bible run needs about twice the steps to start translating.
TRANSLATION_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, ffn_dim=128, norm_position="pre", dropout=0.1, init_std=0.125),
    # Sized for a 2-core CPU: the default run learns the Bible corpus's en->de in about ten minutes.
    "small": dict(d_model=128, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                  decoder_attention_heads=4, ffn_dim=512, norm_position="pre", dropout=0.1, init_std=0.088),
    # The paper's base model.
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, ffn_dim=2048, norm_position="post", dropout=0.1, init_std=0.044),
}
VIT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=28, patch_size=7, d_model=64, num_layers=2, num_heads=4, ffn_dim=128),
    "small": dict(image_size=28, patch_size=4, d_model=128, num_layers=4, num_heads=4, ffn_dim=256, dropout=0.1),
    # ViT-B/16.
    "base": dict(image_size=224, patch_size=16, d_model=768, num_layers=12, num_heads=12, ffn_dim=3072),
}


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or (
        torch.backends.mps.is_available()
    )


# Defaults of the runs without arguments; any flag given on the command line wins.
# use_cpu on machines without an accelerator: only then does `accelerate launch --multi_gpu --num_processes N` give
# N processes of gloo DDP on CPU (otherwise each process trains alone).
COMMON_DEFAULTS: dict[str, Any] = dict(
    do_train=True, do_eval=True, do_predict=True, eval_strategy="steps", save_strategy="steps",
    save_total_limit=2, load_best_model_at_end=True, greater_is_better=True, lr_scheduler_type="cosine",
    warmup_steps=0.05, weight_decay=0.01, report_to="none", disable_tqdm=False, seed=42,
    dataloader_pin_memory=torch.cuda.is_available(), use_cpu=not _has_accelerator(),
    ddp_timeout=600,  # seconds a process waits for the others (transformers: 1800) before the run fails
)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "translation": dict(
        COMMON_DEFAULTS, output_dir="outputs/translation", max_steps=1500, eval_steps=500, save_steps=500,
        logging_steps=50, per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=2e-3,
        lr_scheduler_type="inverse_sqrt", label_smoothing_factor=0.1, metric_for_best_model="bleu",
        predict_with_generate=True, generation_num_beams=1, train_sampling_strategy="group_by_length",
    ),
    "image-classification": dict(
        COMMON_DEFAULTS, output_dir="outputs/image-classification", max_steps=1000, eval_steps=250, save_steps=250,
        logging_steps=50, per_device_train_batch_size=64, per_device_eval_batch_size=128, learning_rate=2e-3,
        metric_for_best_model="accuracy", remove_unused_columns=False,
    ),
}


@dataclass
class ModelArguments:
    """Which model to train: a preset from scratch, or a saved model to continue from."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "A saved scratchformers model (directory or hub id) to continue training."}
    )
    model_size: str = field(
        default="small", metadata={"help": "Architecture preset when training from scratch.",
                                   "choices": ["tiny", "small", "base"]}
    )
    config_overrides: Optional[str] = field(
        default=None, metadata={"help": "Comma-separated config edits from scratch, e.g. 'd_model=128,dropout=0.2'."}
    )
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "A saved tokenizer; by default one is trained on the training split."}
    )
    vocab_size: int = field(default=6000, metadata={"help": "Vocabulary size of the tokenizer trained here."})
    image_processor_name: Optional[str] = field(default=None, metadata={"help": "A saved image processor."})
    attn_implementation: Optional[str] = field(
        default=None, metadata={"help": "Attention kernel: 'sdpa' (default) or 'eager' (needed for additive scoring)."}
    )
    forward_implementation: str = field(
        default="fast",
        metadata={"help": "'fast': the exact speed rewrites of rewrites.py (same results, less work); 'reference': "
                  "the layers of layers.py as composed in the notes (the models' own default).",
                  "choices": ["fast", "reference"]},
    )
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Cache directory for datasets and hub files."})
    save_evaluated_model: bool = field(
        default=False,
        metadata={"help": "With --do_train False: also save the evaluated model (weights, config, tokenizer or "
                  "processor, model card) into --output_dir; by default such a run writes only its results files."},
    )


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on."""

    task: str = field(default="translation", metadata={"help": "What to train.", "choices": list(TASKS)})
    dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "An embedded corpus (" + ", ".join(sorted(EMBEDDED_DATASETS)) + ") or a hub dataset id. "
                  "Default: embedded:bible (translation), embedded:mnist-5k (images)."},
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "The dataset's configuration."})
    source_lang: Optional[str] = field(default=None, metadata={"help": "Source language id (e.g. en)."})
    target_lang: Optional[str] = field(default=None, metadata={"help": "Target language id (e.g. de)."})
    train_file: Optional[str] = field(
        default=None, metadata={"help": "jsonl/json/csv/tsv with source/target columns, or an image folder."}
    )
    validation_file: Optional[str] = field(default=None, metadata={"help": "Like --train_file, for validation."})
    test_file: Optional[str] = field(default=None, metadata={"help": "Like --train_file, for the final test."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Column holding the labels."})
    max_source_length: int = field(default=128, metadata={"help": "Source tokens kept per example (truncation)."})
    max_target_length: int = field(default=128, metadata={"help": "Target tokens kept per example (truncation)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use at most this many training examples."})
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Use at most this many validation (and test) examples."}
    )
    max_predict_samples: Optional[int] = field(
        default=None, metadata={"help": "Use at most this many test examples (default: --max_eval_samples)."}
    )
    num_beams: Optional[int] = field(
        default=None,
        metadata={"help": "Beams for the final validation/test evaluation and the saved generation config (default 4)"
                  "; evaluations during training use --generation_num_beams (default 1, greedy: fast)."},
    )
    num_samples: int = field(default=3, metadata={"help": "Test examples shown through the pipeline at the end."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for tokenization."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the cached tokenized datasets."})


@dataclass
class LegacyTrainingArguments:
    """Flags of the transformers 4 example scripts that transformers 5 removed from ``TrainingArguments``."""

    warmup_ratio: Optional[float] = field(
        default=None, metadata={"help": "Linear warmup over this fraction of the steps (sets --warmup_steps)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh in a non-empty --output_dir instead of resuming or refusing."}
    )


# --------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None):
    """Model, data, training and legacy arguments; the task picks Seq2SeqTrainingArguments or TrainingArguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    json_file = argv[0] if len(argv) == 1 and argv[0].endswith(".json") else None
    if json_file:
        with open(json_file) as handle:
            given = json.load(handle)
        task = given.get("task", "translation")
    else:
        given = None
        peek = argparse.ArgumentParser(add_help=False)
        peek.add_argument("--task", default="translation")
        peek.add_argument("--ddp_timeout", type=int, default=None)
        peek.add_argument("--use_cpu", default=None)
        peeked = peek.parse_known_args(argv)[0]
        task = peeked.task
        given_timeout, given_cpu = peeked.ddp_timeout, peeked.use_cpu
    if json_file:
        given_timeout, given_cpu = given.get("ddp_timeout"), given.get("use_cpu")
    if task not in TASKS:
        argparse.ArgumentParser(prog="run.py").error(
            f"unknown --task {task!r}; choose one of: {', '.join(TASKS)}"
        )
    training_class = Seq2SeqTrainingArguments if task == "translation" else TrainingArguments
    use_cpu = TASK_DEFAULTS[task]["use_cpu"] if given_cpu is None else str(given_cpu).lower() in ("true", "1", "yes")
    if use_cpu:
        start_cpu_process_group(given_timeout or TASK_DEFAULTS[task]["ddp_timeout"])
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, training_class, LegacyTrainingArguments))
    defaults = dict(TASK_DEFAULTS[task])
    explicit = set(given) if given else {arg.split("=")[0].lstrip("-") for arg in argv if arg.startswith("--")}
    if "num_train_epochs" in explicit and "max_steps" not in explicit:
        defaults["max_steps"] = -1  # the user asked for epochs: our step budget must not override them

    def parse(defaults: dict[str, Any]):
        if json_file:
            return parser.parse_dict({**defaults, **given})
        parser.set_defaults(**defaults)
        return parser.parse_args_into_dataclasses(args=argv)

    if "load_best_model_at_end" not in explicit and not can_load_best_model(parse({**defaults, "load_best_model_at_end": False})[2]):
        defaults["load_best_model_at_end"] = False  # our default gives way to the save/eval schedule the user chose
    model_args, data_args, training_args, legacy_args = parse(defaults)
    if legacy_args.warmup_ratio is not None:
        training_args.warmup_steps = legacy_args.warmup_ratio
    return model_args, data_args, training_args, legacy_args


def start_cpu_process_group(timeout_seconds: int) -> None:
    """Start gloo DDP with ``--ddp_timeout``, which transformers passes on for accelerators only: on CPU it used
    torch's 30 minutes, so a stopped worker hung the others that long. A collective that waits longer than this
    raises in the waiting processes, and the launcher then ends the run. Does nothing outside a distributed launch.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_seconds))


def can_load_best_model(training_args) -> bool:
    """Whether the save and eval schedules allow ``load_best_model_at_end`` (the Trainer's own rule): saving the
    best checkpoint, or the same strategy (not "no") with, for "steps", every save on an evaluation step."""
    strategy = training_args.save_strategy.value
    if strategy == "best":
        return training_args.eval_strategy.value != "no"
    if strategy == "no" or strategy != training_args.eval_strategy.value:
        return False
    return strategy != "steps" or training_args.save_steps % training_args.eval_steps == 0


def apply_config_overrides(config, overrides: Optional[str]):
    """``"d_model=128,dropout=0.2"`` -> typed config fields, then the config's own validation."""
    if not overrides:
        return config
    logger.info(f"Overriding config: {overrides}")
    try:
        config.update_from_string(overrides)
    except ValueError as error:
        raise ValueError(f"--config_overrides {overrides!r}: {error}") from error
    if hasattr(config, "validate_architecture"):
        config.validate_architecture()
    return config


def check_output_dir(training_args, legacy_args, task: str, model_source: Optional[str]) -> Optional[str]:
    """Refuse an output_dir holding another kind of model; return the checkpoint to resume from, if any."""
    output_dir = training_args.output_dir
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return None
    expected = MODEL_TYPES[task]
    configs = [Path(output_dir) / "config.json", *sorted(Path(output_dir).glob("checkpoint-*/config.json"))]
    for config_file in configs:
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (OSError, ValueError):
            continue  # absent, or half-written by an interrupted save: not another model
        if model_type != expected and not legacy_args.overwrite_output_dir:
            raise ValueError(
                f"--output_dir {output_dir} holds a {model_type!r} model ({config_file}), not a {expected!r} one for "
                f"--task {task}. Choose another --output_dir (or pass --overwrite_output_dir to replace it)."
            )
    if not training_args.do_train:
        check_evaluation_output_dir(output_dir, model_source, legacy_args.overwrite_output_dir, training_args)
        return None
    if legacy_args.overwrite_output_dir:
        with training_args.main_process_first(desc="removing the previous run", local=False):
            if training_args.process_index == 0:
                remove_previous_run(output_dir)
        return None
    entries = sorted(p.name for p in Path(output_dir).iterdir())
    run_entries = [name for name in entries if name.startswith("checkpoint-") or name == "runs"]
    if not run_entries and not (Path(output_dir) / "config.json").is_file():
        raise ValueError(
            f"--output_dir {output_dir} is not empty and holds no run of this script ({', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}). Choose a new or empty --output_dir, or pass "
            "--overwrite_output_dir to train there (the files a run writes are then replaced, the others kept)."
        )
    if training_args.resume_from_checkpoint:
        return None
    with training_args.main_process_first(desc="checking the checkpoints", local=False):
        last_checkpoint = last_usable_checkpoint(output_dir, rename_incomplete=training_args.process_index == 0)
    if last_checkpoint is None and (Path(output_dir) / "config.json").exists():
        raise ValueError(
            f"--output_dir {output_dir} already holds a trained model and no checkpoint to resume from. Use another "
            "--output_dir, or --overwrite_output_dir to train a new model over it."
        )
    if last_checkpoint is not None:
        logger.info(
            f"Checkpoint detected, resuming training from {last_checkpoint}. To start afresh, change --output_dir "
            "or pass --overwrite_output_dir."
        )
    return last_checkpoint


def check_evaluation_output_dir(output_dir: str, model_source: Optional[str], overwrite: bool, training_args) -> None:
    """An evaluation-only run writes results files: into the evaluated model's own directory, an empty one, or,
    with --overwrite_output_dir, one whose earlier run is removed first; never over another run's files."""
    if same_directory(model_source, output_dir):
        return
    earlier = sorted(path.name for path in Path(output_dir).iterdir()
                     if path.name in RUN_FILES or CHECKPOINT_NAME.fullmatch(path.name))
    if earlier and not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} already holds {', '.join(earlier[:4])}{', ...' if len(earlier) > 4 else ''}, "
            f"which evaluating {model_source} there would overwrite or mix with. Choose a new or empty --output_dir "
            "(or pass --overwrite_output_dir to remove that earlier run first)."
        )
    if earlier:
        with training_args.main_process_first(desc="removing the previous run", local=False):
            if training_args.process_index == 0:
                remove_previous_run(output_dir)


# What a run writes into its output_dir besides the checkpoints and the package's module files.
RUN_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
    "training_args.bin", "trainer_state.json", "all_results.json", "train_results.json", "eval_results.json",
    "test_results.json", "README.md",
)


def remove_previous_run(output_dir: str) -> None:
    """--overwrite_output_dir: remove what an earlier run (of either task) wrote, so that no file of the old model
    stays beside the new one; files this script never writes are kept."""
    module_files = {path.name for path in Path(scratchformers.__file__).parent.glob("*.py")}
    for path in Path(output_dir).iterdir():
        if path.is_dir() and (path.name.startswith("checkpoint-") or path.name == "runs"):
            shutil.rmtree(path)
        elif path.is_file() and (path.name in RUN_FILES or path.name in module_files
                                 or re.fullmatch(r"model-\d+-of-\d+\.safetensors", path.name)):
            path.unlink()
    logger.info(f"--overwrite_output_dir: removed the previous run's files from {output_dir}")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_problem(checkpoint: Path) -> Optional[str]:
    """Why ``checkpoint`` cannot be resumed from, or None. The Trainer writes ``trainer_state.json`` after the
    weights, optimizer, scheduler and RNG states, so a checkpoint interrupted while it was written lacks it or
    holds a truncated one."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "it has no trainer_state.json"
    except (OSError, ValueError):
        return "its trainer_state.json is truncated"
    match = CHECKPOINT_NAME.fullmatch(checkpoint.name)
    if match and state.get("global_step") != int(match.group(1)):
        return f"its trainer_state.json is for step {state.get('global_step')}"
    if not any((checkpoint / name).is_file() for name in WEIGHT_FILES):
        return "it has no weights"
    return None


def last_usable_checkpoint(output_dir: str, rename_incomplete: bool) -> Optional[str]:
    """The newest completely written ``checkpoint-N`` of ``output_dir``.

    Newer ones that an interruption left half-written are skipped with a warning and (by the main process)
    renamed ``checkpoint-N.incomplete``, so that neither a later run nor the Trainer's checkpoint rotation takes
    them for checkpoints."""
    checkpoints = [p for p in Path(output_dir).iterdir() if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name)]
    for checkpoint in sorted(checkpoints, key=lambda p: int(CHECKPOINT_NAME.fullmatch(p.name).group(1)), reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint)
        aside = checkpoint.with_name(checkpoint.name + ".incomplete")
        logger.warning(
            f"Skipping {checkpoint}: {problem}, so it was interrupted while being saved. It is renamed {aside.name} "
            "(delete it when you like); resuming from the previous checkpoint."
        )
        if rename_incomplete:
            suffix = 1
            while aside.exists():
                aside, suffix = checkpoint.with_name(f"{checkpoint.name}.incomplete{suffix}"), suffix + 1
            checkpoint.rename(aside)
    return None


def finished_training(checkpoint: str, training_args) -> Optional[dict]:
    """The checkpoint's trainer state if it already reached the run's last step (``--max_steps``, or the step
    count of the run that wrote it), else None."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    last_step = training_args.max_steps if training_args.max_steps > 0 else state.get("max_steps", 0)
    return state if 0 < last_step <= state["global_step"] else None


def skip_finished_training(model_args, training_args, last_checkpoint: Optional[str]) -> Optional[str]:
    """Running the same command again on a run whose training is done: evaluate, never train past its last step.

    Finished and saved (``train_results.json`` is written after the final model): the saved model is evaluated
    and tested again, its files untouched. Training ended but the final save was interrupted: the final model
    (the best checkpoint with ``load_best_model_at_end``, else the last one) is saved from its checkpoint.
    Returns the checkpoint still to resume from (None when training is skipped)."""
    if not (training_args.do_train and last_checkpoint):
        return last_checkpoint
    state = finished_training(last_checkpoint, training_args)
    if state is None:
        return last_checkpoint
    output_dir = training_args.output_dir
    if (Path(output_dir) / "train_results.json").is_file():
        print(f"{output_dir} already finished training (step {state['global_step']}): evaluating its saved model "
              "again, without training. Pass --overwrite_output_dir to train a new model there.")
        model_args.model_name_or_path = output_dir
    else:
        best = state.get("best_model_checkpoint")
        source = best if training_args.load_best_model_at_end and best and os.path.isdir(best) else last_checkpoint
        print(f"Training in {output_dir} ended at step {state['global_step']} but the final model was not saved: "
              f"saving it from {source}, then evaluating.")
        model_args.model_name_or_path = source
        model_args.save_evaluated_model = True
    model_args.config_overrides = None  # the architecture is the saved one
    training_args.do_train = False
    return None


def check_model_source(model_args, task: str) -> None:
    """``--model_name_or_path`` must hold a model of the task's type; checked before its tokenizer or processor
    is looked for (a ViT has no tokenizer, which would otherwise be the error)."""
    if not model_args.model_name_or_path:
        return
    model_type = AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir).model_type
    if model_type != MODEL_TYPES[task]:
        kind = {"translation": "translation model", "image-classification": "ViT"}[task]
        raise ValueError(f"--model_name_or_path {model_args.model_name_or_path} is a {model_type!r} model, not a "
                         f"scratchformers {kind} ({MODEL_TYPES[task]!r}) for --task {task}.")


def check_step_budget(training_args) -> None:
    if training_args.do_train and training_args.max_steps == 0:
        raise ValueError("--max_steps 0 trains nothing (the Trainer would still take a step): pass a positive "
                         "--max_steps, or --do_train False with --model_name_or_path to only evaluate.")


def setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()  # the Trainer's "Total train batch size" etc. are info
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.process_index} of {training_args.world_size}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed training: {training_args.parallel_mode.value == 'distributed'}, "
        f"16-bits training: {training_args.fp16 or training_args.bf16}"
    )


# --------------------------------------------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------------------------------------------
def check_architecture_flags(model_args, resume_from: Optional[str]) -> None:
    """Presets and overrides shape new models only; a resumed run keeps its checkpoint's architecture."""
    if model_args.config_overrides and model_args.model_name_or_path:
        raise ValueError("--config_overrides applies to new models only, not with --model_name_or_path.")
    if resume_from:
        logger.info(f"Resuming: the architecture is the one of {resume_from} (--model_size/--config_overrides unused).")


def get_tokenizer(model_args, data_args, train_dataset, resume_from: Optional[str]):
    """The checkpoint's tokenizer when resuming, a given one, or a new BPE trained on the training split."""
    source = resume_from or model_args.tokenizer_name or model_args.model_name_or_path
    if source:
        logger.info(f"Loading the tokenizer from {source}")
        return AutoTokenizer.from_pretrained(source, cache_dir=model_args.cache_dir)
    logger.info(f"Training a {model_args.vocab_size}-token BPE tokenizer on {len(train_dataset)} training pairs")
    texts = (text for column in ("source", "target") for text in train_dataset[column])
    tokenizer = train_tokenizer(
        texts, vocab_size=model_args.vocab_size,
        model_max_length=max(data_args.max_source_length, data_args.max_target_length),
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every process trains the same tokenizer (BPE training is deterministic); make sure of it.
        digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
        digests = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError("The processes trained different tokenizers; pass --tokenizer_name.")
    return tokenizer


def build_translation_model(model_args, data_args, tokenizer, resume_from: Optional[str]):
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    check_architecture_flags(model_args, resume_from)
    if model_args.model_name_or_path:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir,
                                                      **kwargs)
    else:
        if resume_from:  # the architecture of the checkpoint, whatever the preset flags say now
            config = AutoConfig.from_pretrained(resume_from)
        else:
            config = ScratchTransformerConfig(
                **TRANSLATION_PRESETS[model_args.model_size],
                vocab_size=len(tokenizer),
                max_position_embeddings=max(512, data_args.max_source_length, data_args.max_target_length),
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.bos_token_id,
            )
            config = apply_config_overrides(config, model_args.config_overrides)
        model = AutoModelForSeq2SeqLM.from_config(config, **kwargs)
    check_tokenizer_matches(tokenizer, model.config)
    model.config.forward_implementation = model_args.forward_implementation
    return model


def prepare_translation(model_args, data_args, training_args, last_checkpoint) -> "Job":
    """Data, tokenizer, model and trainer for translation; every bad input raises here, before training."""
    with training_args.main_process_first(desc="loading the dataset"):
        raw, source_lang, target_lang = load_translation_dataset(
            data_args.dataset_name, data_args.dataset_config_name, data_args.source_lang, data_args.target_lang,
            data_args.train_file, data_args.validation_file, data_args.test_file, cache_dir=model_args.cache_dir,
        )
    data_args.source_lang, data_args.target_lang = source_lang, target_lang
    raw = select_samples(raw, data_args)
    resume_from = resolve_resume(training_args, last_checkpoint)
    tokenizer = get_tokenizer(model_args, data_args, raw["train"], resume_from)
    model = build_translation_model(model_args, data_args, tokenizer, resume_from)
    if data_args.num_beams:
        num_beams = data_args.num_beams
    elif model_args.model_name_or_path:
        num_beams = model.generation_config.num_beams or 1
    else:
        num_beams = 4
    model.generation_config.num_beams = num_beams
    model.generation_config.max_length = data_args.max_target_length
    if training_args.generation_num_beams is None:
        training_args.generation_num_beams = num_beams
    final_generation = {"num_beams": num_beams}
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_target_length
    logger.info(f"Model: {model.num_parameters():,} parameters, vocabulary {model.config.vocab_size}")

    def preprocess(batch: dict) -> dict:
        inputs = tokenizer(batch["source"], max_length=data_args.max_source_length, truncation=True)
        labels = tokenizer(text_target=batch["target"], max_length=data_args.max_target_length, truncation=True)
        inputs["labels"] = labels["input_ids"]
        return inputs

    with training_args.main_process_first(desc="tokenizing"):
        tokenized = {
            split: ds.map(
                preprocess, batched=True, num_proc=data_args.preprocessing_num_workers,
                remove_columns=ds.column_names, load_from_cache_file=not data_args.overwrite_cache,
                desc=f"Tokenizing {split}",
            )
            for split, ds in raw.items()
        }

    data_collator = DataCollatorForSeq2Seq(
        tokenizer, model=model, label_pad_token_id=-100,
        pad_to_multiple_of=8 if (training_args.fp16 or training_args.bf16) else None,
    )
    trainer = ScratchSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"] if training_args.do_train else None,
        eval_dataset=tokenized["validation"] if (training_args.do_eval or training_args.eval_strategy != "no") else None,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=translation_compute_metrics(tokenizer, target_lang)
        if training_args.predict_with_generate else None,
    )

    def report(results: dict, model_dir: str) -> list[dict]:
        samples = translation_samples(model_dir, raw["test"], data_args.num_samples)
        if results.get("test_bleu") is not None:
            pair = f"{source_lang}->{target_lang}, " if source_lang and target_lang else ""
            print(f"Held-out test ({pair}{len(raw['test'])} pairs): "
                  f"BLEU {results['test_bleu']:.2f}, chrF {results['test_chrf']:.2f}")
        if results.get("eval_bleu") is not None:
            print(f"Validation ({len(raw['validation'])} pairs): BLEU {results['eval_bleu']:.2f}, "
                  f"chrF {results['eval_chrf']:.2f}")
        return samples

    # The Trainer turns the KV cache off for training (args.use_cache); the saved model generates with it.
    return Job(trainer, raw, tokenized, resume_from, report, saved_config={"use_cache": True},
               final_eval_kwargs=final_generation)


def translation_samples(model_dir: str, test_dataset, count: int) -> list[dict]:
    """Translate a few test sentences through ``pipeline("translation", model=model_dir)`` and print them."""
    if count <= 0 or len(test_dataset) == 0:
        return []
    examples = test_dataset.select(range(min(count, len(test_dataset))))
    translator = transformers.pipeline("translation", model=model_dir, trust_remote_code=True)
    outputs = translator(list(examples["source"]))
    samples = []
    print(f"\nSample translations (pipeline('translation', model='{model_dir}', trust_remote_code=True)):")
    for example, output in zip(examples, outputs):
        hypothesis = output["translation_text"]
        samples.append({"source": example["source"], "reference": example["target"], "prediction": hypothesis})
        print(f"  source:    {example['source']}\n  reference: {example['target']}\n  model:     {hypothesis}\n")
    return samples


# --------------------------------------------------------------------------------------------------------------
# Image classification
# --------------------------------------------------------------------------------------------------------------
def build_vit(model_args, labels: list[str], num_channels: int, resume_from: Optional[str]):
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    id2label = {i: name for i, name in enumerate(labels)}
    label2id = {name: i for i, name in id2label.items()}
    check_architecture_flags(model_args, resume_from)
    if model_args.model_name_or_path:
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path, num_labels=len(labels), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=True, cache_dir=model_args.cache_dir, **kwargs,
        )
    else:
        if resume_from:
            config = AutoConfig.from_pretrained(resume_from)
        else:
            config = ScratchViTConfig(
                **VIT_PRESETS[model_args.model_size], num_channels=num_channels, num_labels=len(labels),
                id2label=id2label, label2id=label2id,
            )
            config = apply_config_overrides(config, model_args.config_overrides)
        model = AutoModelForImageClassification.from_config(config, **kwargs)
    model.config.forward_implementation = model_args.forward_implementation
    return model


def prepare_image_classification(model_args, data_args, training_args, last_checkpoint) -> "Job":
    """Data, image processor, model and trainer for images; every bad input raises here, before training."""
    with training_args.main_process_first(desc="loading the dataset"):
        raw = load_image_dataset(
            data_args.dataset_name, data_args.dataset_config_name, data_args.train_file, data_args.validation_file,
            data_args.test_file, image_column=data_args.image_column, label_column=data_args.label_column,
            cache_dir=model_args.cache_dir,
        )
    raw = select_samples(raw, data_args)
    labels = raw["train"].features["label"].names
    mode = raw["train"][0]["image"].mode  # grayscale at any bit depth, with or without alpha: one channel
    num_channels = 1 if mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;") else 3
    resume_from = resolve_resume(training_args, last_checkpoint)
    model = build_vit(model_args, labels, num_channels, resume_from)
    processor_source = resume_from or model_args.image_processor_name or model_args.model_name_or_path
    if processor_source:
        image_processor = AutoImageProcessor.from_pretrained(processor_source, cache_dir=model_args.cache_dir)
    else:
        image_processor = make_image_processor(model.config)
    logger.info(f"Model: {model.num_parameters():,} parameters, {len(labels)} classes")

    if training_args.remove_unused_columns:
        logger.warning("--remove_unused_columns is forced to False: images are turned into pixel_values on the fly.")
        training_args.remove_unused_columns = False

    def transform(batch: dict) -> dict:
        pixel_values = image_processor(batch["image"], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": batch["label"]}

    processed = {split: ds.with_transform(transform) for split, ds in raw.items()}

    def collate_fn(examples: list[dict]) -> dict:
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "labels": torch.tensor([example["labels"] for example in examples]),
        }

    trainer = ScratchTrainer(
        model=model,
        args=training_args,
        train_dataset=processed["train"] if training_args.do_train else None,
        eval_dataset=processed["validation"] if (training_args.do_eval or training_args.eval_strategy != "no") else None,
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=accuracy_compute_metrics(),
    )

    def report(results: dict, model_dir: str) -> list[dict]:
        samples = image_samples(model_dir, raw["test"], data_args.num_samples)
        if results.get("test_accuracy") is not None:
            print(f"Held-out test ({len(raw['test'])} images): accuracy {results['test_accuracy']:.4f}")
        if results.get("eval_accuracy") is not None:
            print(f"Validation ({len(raw['validation'])} images): accuracy {results['eval_accuracy']:.4f}")
        return samples

    return Job(trainer, raw, processed, resume_from, report)


def image_samples(model_dir: str, test_dataset, count: int) -> list[dict]:
    """Classify a few test images through ``pipeline("image-classification", model=model_dir)`` and print them."""
    if count <= 0 or len(test_dataset) == 0:
        return []
    names = test_dataset.features["label"].names
    examples = test_dataset.select(range(min(count, len(test_dataset))))
    classifier = transformers.pipeline("image-classification", model=model_dir, trust_remote_code=True)
    outputs = classifier(list(examples["image"]), top_k=1)
    print(f"\nSample predictions (pipeline('image-classification', model='{model_dir}')):")
    samples = []
    for i, (example, output) in enumerate(zip(examples, outputs)):
        best = output[0]
        truth = names[example["label"]]
        samples.append({"label": truth, "prediction": best["label"], "score": float(best["score"])})
        print(f"  test image {i}: true {truth!r} -> predicted {best['label']!r} (score {best['score']:.3f})")
    return samples


# --------------------------------------------------------------------------------------------------------------
# Shared: sample selection, train / evaluate / save, model card
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """Everything prepared for one run: nothing has been trained or written yet."""

    trainer: Trainer
    raw: Any  # DatasetDict of the untokenized data
    processed: dict  # split -> tokenized / transformed dataset
    resume_from: Optional[str]
    report: Callable[[dict, str], list[dict]]  # rank 0, after saving: the saved model's samples, printed results
    saved_config: dict = field(default_factory=dict)  # config fields the Trainer changes for training, restored on save
    final_eval_kwargs: dict = field(default_factory=dict)  # e.g. beam search for the final evaluation and test


def resolve_resume(training_args, last_checkpoint: Optional[str]) -> Optional[str]:
    """--resume_from_checkpoint PATH, or True (the last checkpoint in output_dir), or the auto-detected one."""
    resume_from = training_args.resume_from_checkpoint or last_checkpoint
    if isinstance(resume_from, str) and resume_from.lower() in ("true", "false"):
        resume_from = resume_from.lower() == "true"
    if resume_from is True:
        output_dir = training_args.output_dir
        resume_from = last_usable_checkpoint(output_dir, training_args.process_index == 0) if os.path.isdir(output_dir) else None
        if resume_from is None:
            raise ValueError(f"--resume_from_checkpoint True but {training_args.output_dir} holds no usable checkpoint.")
    if resume_from and not os.path.isdir(resume_from):
        raise ValueError(f"--resume_from_checkpoint {resume_from} is not a directory.")
    if resume_from and (problem := checkpoint_problem(Path(resume_from))):
        raise ValueError(f"--resume_from_checkpoint {resume_from} cannot be resumed from: {problem}. Pass an "
                         "earlier checkpoint (or the run's --output_dir alone, which picks the last complete one).")
    return resume_from or None


def select_samples(raw, data_args):
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples or data_args.max_eval_samples,
    }
    for split, limit in limits.items():
        if limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].select(range(limit))
    return raw


class ScratchTrainerMixin:
    """The model computes the loss (with ``--label_smoothing_factor``); ``create_model_card`` (also called by
    ``push_to_hub``) writes our card, rendered from ``hub_card.md``."""

    card_context: Optional[dict] = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # One loss: the model's own, the function a reader finds in the model code. --label_smoothing_factor is
        # carried into its config; the Trainer's label smoother would pop the labels and compute a second loss.
        self.model.config.label_smoothing = self.args.label_smoothing_factor
        self.label_smoother = None

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
        for key, value in job.saved_config.items():
            setattr(trainer.model.config, key, value)
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


def same_directory(a: Optional[str], b: str) -> bool:
    return bool(a) and os.path.isdir(a) and os.path.isdir(b) and os.path.samefile(a, b)


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


def holds_the_model(training_args, model_args) -> bool:
    """Whether the run leaves the model in output_dir (evaluation-only runs leave it where it was, unless asked)."""
    return (training_args.do_train or model_args.save_evaluated_model
            or same_directory(model_args.model_name_or_path, training_args.output_dir))


def finish(trainer, model_args, data_args, training_args, results: dict, samples: list[dict], raw) -> None:
    """Write the model card (rank 0) and check that the saved config can be used with trust_remote_code."""
    if not holds_the_model(training_args, model_args):
        if trainer.is_world_process_zero():
            print(f"\nResults written to {os.path.abspath(training_args.output_dir)}; the model stays in "
                  f"{model_args.model_name_or_path} (--save_evaluated_model True saves a copy with a model card).")
        return
    trainer.card_context = dict(
        model=trainer.model, model_args=model_args, data_args=data_args, training_args=training_args,
        results=results, samples=samples, num_train=len(raw["train"]), world_size=training_args.world_size,
    )
    trainer.create_model_card()
    if trainer.is_world_process_zero():
        config = json.loads((Path(training_args.output_dir) / "config.json").read_text())
        for key in ("auto_map", "custom_pipelines") if data_args.task == "translation" else ("auto_map",):
            if not config.get(key):
                logger.warning(f"{training_args.output_dir}/config.json has no {key}: remote-code loading may fail.")
        print(f"\nSaved to {os.path.abspath(training_args.output_dir)} (model card: README.md)")
    if training_args.push_to_hub:
        trainer.push_to_hub()


@dataclass(frozen=True)
class CardTask:
    """What the model card of one ``--task`` says differently; ``render_model_card`` fills in the rest alike.

    The strings are ``str.format`` templates over the fields that ``render_model_card`` collects: ``model``,
    ``config``, ``data_args``, ``model_id``, ``dataset``, ``parameters``, ``src``, ``tgt``, ``example``, ``labels``
    and ``image_mode``."""

    task_name: str  # model-index task name
    default_dataset: str  # the embedded corpus of a run without --dataset_name / --train_file
    summary: str
    metrics: dict[str, tuple[str, str]]  # metric id -> (display name, format in the results table)
    architecture: tuple[tuple[str, str], ...]  # (row, value) pairs, as hyperparameters
    usage: str  # a snippet that runs as written
    samples_title: str
    sample_columns: tuple[tuple[str, str], ...]  # (header, value formatted over one sample dict)
    language: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # besides the task and the shared ones
    hyperparameters: tuple[tuple[str, str], ...] = ()  # after the shared ones


CARD_TASKS: dict[str, CardTask] = {
    "translation": CardTask(
        task_name="Translation {src}-{tgt}",
        default_dataset="embedded:bible",
        summary="A from-scratch encoder-decoder Transformer (\"Attention Is All You Need\") translating "
                "{src} -> {tgt}, trained on `{dataset}`.",
        metrics={"bleu": ("BLEU", ".2f"), "chrf": ("chrF", ".2f")},
        architecture=(
            ("architecture", "encoder-decoder Transformer (ScratchTransformerForConditionalGeneration)"),
            ("parameters", "{parameters:,}"), ("d_model", "{config.d_model}"),
            ("encoder / decoder layers", "{config.encoder_layers} / {config.decoder_layers}"),
            ("attention heads", "{config.encoder_attention_heads}"), ("feed-forward dim", "{config.ffn_dim}"),
            ("vocabulary (joint byte-level BPE)", "{config.vocab_size}"),
            ("positional encoding", "{config.position_embedding}"),
            ("norm", "{config.norm_type}, {config.norm_position}-norm"),
            ("attention scoring", "{config.attention_scoring}"), ("activation", "{config.activation_function}"),
            ("tied embeddings", "{config.tie_word_embeddings}"),
        ),
        usage="""from transformers import pipeline

translator = pipeline("translation", model={model_id!r}, trust_remote_code=True)
print(translator({example!r}))

# or with the Auto classes
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained({model_id!r})
model = AutoModelForSeq2SeqLM.from_pretrained({model_id!r}, trust_remote_code=True)
inputs = tokenizer([{example!r}], return_tensors="pt")
outputs = model.generate(**inputs, num_beams={model.generation_config.num_beams}, max_new_tokens=64)
print(tokenizer.batch_decode(outputs, skip_special_tokens=True))""",
        samples_title="Sample translations (test set)",
        sample_columns=(("source", "{source}"), ("reference", "{reference}"), ("model", "{prediction}")),
        language=("{src}", "{tgt}"),
        hyperparameters=(
            ("max source / target tokens", "{data_args.max_source_length} / {data_args.max_target_length}"),
            ("beams (evaluation)", "{model.generation_config.num_beams}"),
        ),
    ),
    "image-classification": CardTask(
        task_name="Image Classification",
        default_dataset="embedded:mnist-5k",
        summary="A from-scratch Vision Transformer classifying {config.num_labels} classes, trained on `{dataset}`.",
        metrics={"accuracy": ("Accuracy", ".4f")},
        architecture=(
            ("architecture", "Vision Transformer (ScratchViTForImageClassification)"),
            ("parameters", "{parameters:,}"),
            ("image size / patch size / channels", "{config.image_size} / {config.patch_size} / {config.num_channels}"),
            ("d_model", "{config.d_model}"), ("layers", "{config.num_layers}"),
            ("attention heads", "{config.num_heads}"), ("feed-forward dim", "{config.ffn_dim}"),
            ("pooling", "{config.pooling}"), ("norm", "{config.norm_type}, {config.norm_position}-norm"),
            ("labels", "{labels}"),
        ),
        usage="""from PIL import Image
from transformers import pipeline

classifier = pipeline("image-classification", model={model_id!r}, trust_remote_code=True)
image = Image.new("{image_mode}", ({config.image_size}, {config.image_size}))  # or Image.open("your_image.png")
print(classifier(image))""",
        samples_title="Sample predictions (test set)",
        sample_columns=(("true label", "{label}"), ("predicted", "{prediction}"), ("score", "{score:.3f}")),
        tags=("vision",),
    ),
}


def _table(rows: list[tuple[str, Any]]) -> str:
    plain = [(key, getattr(value, "value", value)) for key, value in rows]  # enums (SchedulerType ...) by value
    return "\n".join(f"| {key} | {value} |" for key, value in plain)


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_model_card(model, model_args, data_args, training_args, results, samples, num_train,
                      world_size) -> ModelCard:
    """Fill ``hub_card.md`` from the ``CARD_TASKS`` entry of the run's task: ``huggingface_hub`` writes the YAML
    metadata (a model-index of the measured results); the body holds the tables, samples and a usage snippet."""
    task, config = CARD_TASKS[data_args.task], model.config
    output_dir = os.path.abspath(training_args.output_dir)
    model_name = os.path.basename(output_dir.rstrip("/"))
    dataset_name = data_args.dataset_name or (
        os.path.basename(data_args.train_file.rstrip("/")) if data_args.train_file else task.default_dataset
    )
    fields = dict(
        model=model, config=config, data_args=data_args, model_id=training_args.hub_model_id or output_dir,
        dataset=dataset_name, parameters=model.num_parameters(),
        src=data_args.source_lang or "source", tgt=data_args.target_lang or "target",
        example=next(iter(samples), {}).get("source", "In the beginning God created the heavens and the earth."),
        labels=", ".join(str(config.id2label[i]) for i in range(config.num_labels)),
        image_mode="L" if getattr(config, "num_channels", None) == 1 else "RGB",  # a translation config has none
    )

    def fill(rows: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
        return [(key, value.format(**fields)) for key, value in rows]

    split_names = {"test": "test", "eval": "validation"}
    measured = [(prefix, metric, results[f"{prefix}_{metric}"]) for prefix in split_names for metric in task.metrics
                if f"{prefix}_{metric}" in results]
    data_license = dataset_license(dataset_name)
    card_data = ModelCardData(
        license=data_license if data_license and data_license.startswith("cc-by-sa") else "apache-2.0",
        language=[language.format(**fields) for language in task.language] or None, library_name="transformers",
        pipeline_tag=data_args.task, tags=[data_args.task, *task.tags, "scratchformers", "custom_code", "from-scratch"],
        datasets=[dataset_name], metrics=list(task.metrics), model_name=model_name,
        eval_results=[  # a list even when empty: the card always has a model-index
            EvalResult(task_type=data_args.task, task_name=task.task_name.format(**fields), dataset_type=dataset_name,
                       dataset_name=dataset_name, dataset_config=data_args.dataset_config_name,
                       dataset_split=split_names[prefix], metric_type=metric, metric_name=task.metrics[metric][0],
                       metric_value=round(float(value), 4))
            for prefix, metric, value in measured
        ],
    )

    total_batch = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                   * max(1, world_size))
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
    hyperparameters = [
        ("training examples", num_train),
        ("steps", results.get("train_steps", training_args.max_steps if training_args.max_steps > 0 else "-")),
        ("epochs", f"{results['epoch']:.2f}" if "epoch" in results else training_args.num_train_epochs),
        ("learning rate", training_args.learning_rate), ("scheduler", training_args.lr_scheduler_type),
        ("warmup", training_args.warmup_steps), ("optimizer", training_args.optim),
        ("weight decay", training_args.weight_decay), ("label smoothing", training_args.label_smoothing_factor),
        ("batch size per device", training_args.per_device_train_batch_size),
        ("gradient accumulation", training_args.gradient_accumulation_steps),
        ("processes", max(1, world_size)), ("total batch size", total_batch), ("precision", precision),
        ("seed", training_args.seed), *fill(task.hyperparameters),
    ]
    if "train_runtime" in results:
        hyperparameters.append(("training time", f"{results['train_runtime']:.0f} s"))
    corpus = EMBEDDED_DATASETS.get(dataset_name)
    description = (f"`{dataset_name}`: {corpus.description}. Data license: {corpus.license}." if corpus
                   else f"`{dataset_name}`" + (f" (config `{data_args.dataset_config_name}`)" if data_args.dataset_config_name else "") + ".")
    description += f" {num_train:,} training examples were used."
    samples_table = "\n".join([
        f"## {task.samples_title}", "", "| " + " | ".join(header for header, _ in task.sample_columns) + " |",
        "|---" * len(task.sample_columns) + "|",
        *("| " + " | ".join(_escape(value.format(**sample)) for _, value in task.sample_columns) + " |"
          for sample in samples),
    ]) if samples else ""
    result_rows = [f"| {split_names[prefix]} | {task.metrics[metric][0]} | {value:{task.metrics[metric][1]}} |"
                   for prefix, metric, value in measured]
    versions = "\n".join(f"- {name} {version}" for name, version in (
        ("scratchformers", getattr(scratchformers, "__version__", "0.1.0")), ("transformers", transformers.__version__),
        ("torch", torch.__version__), ("datasets", datasets.__version__), ("python", platform.python_version()),
    ))
    return ModelCard.from_template(  # local Jinja rendering: nothing is fetched or pushed
        card_data, template_path=str(CARD_TEMPLATE),
        model_name=model_name,
        summary=task.summary.format(**fields),
        architecture_rows=_table(fill(task.architecture)),
        dataset_description=description,
        hyperparameter_rows=_table(hyperparameters),
        result_rows="\n".join(result_rows) or "| - | - | - |",
        samples=samples_table,
        usage=task.usage.format(**fields),
        framework_versions=versions,
    )


def main(argv: Optional[list[str]] = None) -> dict:
    model_args, data_args, training_args, legacy_args = parse_args(argv)
    setup_logging(training_args)
    logger.info(f"Training/evaluation parameters {training_args}")
    try:
        if not CARD_TEMPLATE.is_file():
            raise FileNotFoundError(f"The model-card template {CARD_TEMPLATE} is missing.")
        if not (training_args.do_train or model_args.model_name_or_path):
            raise ValueError("Nothing to evaluate: pass --do_train True, or --model_name_or_path of a trained model.")
        check_step_budget(training_args)
        check_model_source(model_args, data_args.task)
        last_checkpoint = skip_finished_training(
            model_args, training_args,
            check_output_dir(training_args, legacy_args, data_args.task, model_args.model_name_or_path),
        )
        set_seed(training_args.seed)
        prepare = prepare_translation if data_args.task == "translation" else prepare_image_classification
        job = prepare(model_args, data_args, training_args, last_checkpoint)
    except (DatasetError, ValueError, OSError, ImportError) as error:
        # Bad input: a clear message before anything was trained or written.
        raise SystemExit(f"error: {error}") from error

    results = train_evaluate_save(job, training_args, model_args)
    model_dir = training_args.output_dir if holds_the_model(training_args, model_args) else model_args.model_name_or_path
    samples = job.report(results, model_dir) if job.trainer.is_world_process_zero() else []
    finish(job.trainer, model_args, data_args, training_args, results, samples, job.raw)
    return results


if __name__ == "__main__":
    main()
