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

This file is the script: its arguments, the ``TASKS`` table and ``main``. Its sibling modules do one job each:
``translation_task.py`` and ``image_task.py`` (data, model and trainer of one task), ``task_setup.py`` (what they
share), ``trainer.py`` (train / save / evaluate), ``output_dir.py`` (the output directory and its checkpoints) and
``model_card.py`` (the ``README.md`` card).
"""

from __future__ import annotations

import os
import time


def cpu_is_idle(samples: int = 5, interval: float = 0.04) -> bool:
    """Whether no other process is running on the CPU now: Linux's ``procs_running`` (which counts this process)
    stays at 1 for most of a fifth of a second. Elsewhere, or if it cannot be read, the CPU counts as shared."""
    counts = []
    try:
        for _ in range(samples):
            with open("/proc/stat") as stat:
                counts += [int(line.split()[1]) for line in stat if line.startswith("procs_running")]
            time.sleep(interval)
    except (OSError, ValueError, IndexError):
        return False
    return len(counts) == samples and sorted(counts)[samples // 2] <= 1


# OpenMP threads that spin while they wait (libgomp's default) make a 2-core CPU train 1.3-1.7x faster when it is
# ours alone, and 10x slower when another process competes for it (measured in training/RECIPES.md); waiting
# passively is safe on a shared CPU. Chosen before torch loads OpenMP; a user's OMP_WAIT_POLICY wins.
if "OMP_WAIT_POLICY" not in os.environ and not cpu_is_idle():
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _launcher_process() -> tuple[dict[str, str], list[str]]:
    """The parent process's environment and command line (Linux ``/proc``; empty where they cannot be read)."""
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as handle:
            items = [item.decode(errors="replace").partition("=") for item in handle.read().split(b"\0") if item]
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as handle:
            command = [arg.decode(errors="replace") for arg in handle.read().split(b"\0") if arg]
    except OSError:
        return {}, []
    return {key: value for key, _, value in items}, command


def threads_for_a_lone_accelerate_process(
    environ: dict[str, str], launcher_environ: dict[str, str], launcher_command: list[str],
) -> Optional[int]:
    """How many threads to use instead of the one ``accelerate launch`` gave: its default for a process it was not
    told runs on the CPU (no ``--cpu``) is ``OMP_NUM_THREADS=1``, meant for processes that feed a GPU each. A lone
    CPU process then uses one core of several (the default translation run: 0.47 s a step instead of 0.29 s on 2
    cores). ``None`` (keep one) when that is not what happened: several processes, ``--cpu`` (accelerate then picks
    the threads itself), or a thread count that the user set (``OMP_NUM_THREADS`` in the launcher's environment, or
    ``--num_cpu_threads_per_process`` on its command line)."""
    if environ.get("ACCELERATE_USE_CPU") != "False" or environ.get("OMP_NUM_THREADS") != "1":
        return None
    if environ.get("WORLD_SIZE", "1") != "1" or "OMP_NUM_THREADS" in launcher_environ:
        return None
    if any(arg.startswith("--num_cpu_threads_per_process") for arg in launcher_command):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if cores > 1 else None


LONE_PROCESS_THREADS = threads_for_a_lone_accelerate_process(os.environ, *_launcher_process())
if LONE_PROCESS_THREADS:  # before torch loads OpenMP
    os.environ["OMP_NUM_THREADS"] = str(LONE_PROCESS_THREADS)

import argparse
import datetime
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import datasets
import torch
import transformers
from transformers import AutoConfig, HfArgumentParser, Seq2SeqTrainingArguments, TrainingArguments, set_seed

from scratchformers.data import EMBEDDED_DATASETS, DatasetError
from scratchformers.input_checks import damaged_json_file

# The sibling modules import from this folder: on sys.path already when run as a script, not when loaded by path.
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from image_task import prepare_image_classification
from lm_task import prepare_text_generation
from model_card import CARD_TEMPLATE
from output_dir import OutputDirLock, check_output_dir, hold_output_dir, same_directory, skip_finished_training
from pictures import draw_pictures
from precision_choice import ATTRIBUTE as AUTOMATIC_PRECISION, automatic_precision, log_precision
from output_dir import CHECKPOINT_NAME, checkpoint_problem  # noqa: F401  (tests reach them as run.<name>)
from task_setup import Job
from trainer import SaveError, ScratchSeq2SeqTrainer, train_evaluate_save  # noqa: F401  (tests reach it as run.<name>)
from translation_task import prepare_translation

logger = logging.getLogger(__name__)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # 'name' or 'owner/name'


@dataclass(frozen=True)
class Task:
    """What the script does differently per ``--task`` (the model card's differences: ``model_card.CARD_TASKS``)."""

    training_args_class: type[TrainingArguments]
    prepare: Callable[..., Job]  # (model_args, data_args, training_args, last_checkpoint) -> Job; bad input raises
    model_type: str  # the config's model_type: what --model_name_or_path and --output_dir must hold
    model_kind: str  # how error messages name that model
    required_config_keys: tuple[str, ...]  # the saved config.json needs them for trust_remote_code loading


TASKS: dict[str, Task] = {
    "translation": Task(
        training_args_class=Seq2SeqTrainingArguments, prepare=prepare_translation,
        model_type="scratch_transformer", model_kind="translation model",
        required_config_keys=("auto_map", "custom_pipelines"),
    ),
    "image-classification": Task(
        training_args_class=TrainingArguments, prepare=prepare_image_classification,
        model_type="scratch_vit", model_kind="ViT", required_config_keys=("auto_map",),
    ),
    "text-generation": Task(
        training_args_class=TrainingArguments, prepare=prepare_text_generation,
        model_type="scratch_transformer_lm", model_kind="language model", required_config_keys=("auto_map",),
    ),
}


def _has_accelerator() -> bool:
    """A GPU, XPU or Apple GPU to train on (else the defaults train on CPU)."""
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
LM_STEPS = 1200  # the default text-generation run: about 10 minutes on a 2-core CPU alone (training/RECIPES.md)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "translation": dict(
        COMMON_DEFAULTS, output_dir="outputs/translation", max_steps=2500, eval_steps=500, save_steps=500,
        logging_steps=50, per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=2e-3,
        lr_scheduler_type="inverse_sqrt", label_smoothing_factor=0.1, metric_for_best_model="bleu",
        predict_with_generate=True, generation_num_beams=1, train_sampling_strategy="group_by_length",
    ),
    "image-classification": dict(
        COMMON_DEFAULTS, output_dir="outputs/image-classification", max_steps=6500, eval_steps=1300, save_steps=1300,
        logging_steps=50, per_device_train_batch_size=64, per_device_eval_batch_size=128, learning_rate=2e-3,
        metric_for_best_model="accuracy", remove_unused_columns=False, label_smoothing_factor=0.1,
        random_rotation=10.0, random_translate=0.1, random_scale=0.1,
    ),
    # The recipe: training/RECIPES.md (text generation); prediction_loss_only: evaluation keeps no [N, T, V] logits.
    "text-generation": dict(
        COMMON_DEFAULTS, output_dir="outputs/text-generation", max_steps=LM_STEPS, eval_steps=LM_STEPS // 4,
        save_steps=LM_STEPS // 4, logging_steps=50, per_device_train_batch_size=32, per_device_eval_batch_size=32,
        learning_rate=2e-3, weight_decay=0.1, label_smoothing_factor=0.0, metric_for_best_model="perplexity",
        greater_is_better=False, prediction_loss_only=True, vocab_size=4000,
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
    average_last_checkpoints: int = field(
        default=0,
        metadata={"help": "Make the final model the average of the weights of the last k checkpoints (fairseq / "
                  "OpenNMT checkpoint averaging); keeps them (--save_total_limit at least k) instead of the best."},
    )
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
                  "Default: embedded:bible (translation; English text for text-generation), embedded:mnist-5k (images)."},
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "The dataset's configuration."})
    source_lang: Optional[str] = field(default=None, metadata={"help": "Source language id (e.g. en)."})
    target_lang: Optional[str] = field(default=None, metadata={"help": "Target language id (e.g. de)."})
    train_file: Optional[str] = field(
        default=None, metadata={"help": "jsonl/json/csv/tsv with source/target columns, or an image folder; "
                                "text-generation: .txt, or jsonl/json/csv/tsv with a --text_column."}
    )
    validation_file: Optional[str] = field(default=None, metadata={"help": "Like --train_file, for validation."})
    test_file: Optional[str] = field(default=None, metadata={"help": "Like --train_file, for the final test."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Column holding the labels."})
    text_column: str = field(default="text", metadata={"help": "Text generation: the column holding the text."})
    block_size: int = field(
        default=128, metadata={"help": "Text generation: tokens per training block (the text is packed into blocks)."}
    )
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
    augmentation: str = field(
        default="auto",
        metadata={"help": "Images: random affine of the training images (--random_* bounds): 'always', 'never', or "
                  "'auto' = when the run sees each training image at least 10 times.",
                  "choices": ["auto", "always", "never"]},
    )
    random_rotation: float = field(
        default=0.0, metadata={"help": "Images: rotate each training image by up to this many degrees (0: off)."}
    )
    random_translate: float = field(
        default=0.0, metadata={"help": "Images: shift each training image by up to this fraction of its size."}
    )
    random_scale: float = field(
        default=0.0, metadata={"help": "Images: zoom each training image by a factor in [1 - s, 1 + s]."}
    )
    random_shear: float = field(
        default=0.0, metadata={"help": "Images: shear each training image by up to this many degrees."}
    )
    random_hflip: float = field(
        default=0.0, metadata={"help": "Images: mirror each training image left-right with this probability (garments"
                               ", photos; not digits or text)."}
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


def parse_args(argv: Optional[list[str]] = None):
    """Model, data, training and legacy arguments; the task picks its training-arguments class (``TASKS``)."""
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
        peek.add_argument("--average_last_checkpoints", type=int, default=0)
        peeked = peek.parse_known_args(argv)[0]
        task = peeked.task
        given_timeout, given_cpu, averaged = peeked.ddp_timeout, peeked.use_cpu, peeked.average_last_checkpoints
    if json_file:
        given_timeout, given_cpu = given.get("ddp_timeout"), given.get("use_cpu")
        averaged = int(given.get("average_last_checkpoints") or 0)
    if task not in TASKS:
        argparse.ArgumentParser(prog="run.py").error(
            f"unknown --task {task!r}; choose one of: {', '.join(TASKS)}"
        )
    use_cpu = TASK_DEFAULTS[task]["use_cpu"] if given_cpu is None else str(given_cpu).lower() in ("true", "1", "yes")
    if use_cpu:
        start_cpu_process_group(given_timeout or TASK_DEFAULTS[task]["ddp_timeout"])
    parser = OneLineErrorParser(
        (ModelArguments, DataTrainingArguments, TASKS[task].training_args_class, LegacyTrainingArguments)
    )
    defaults = dict(TASK_DEFAULTS[task])
    explicit = set(given) if given else {arg.split("=")[0].lstrip("-") for arg in argv if arg.startswith("--")}
    if "num_train_epochs" in explicit and "max_steps" not in explicit:
        defaults["max_steps"] = -1  # the user asked for epochs: our step budget must not override them
    if averaged > 1:  # the final model is the average of the last checkpoints: keep them, not the best one
        defaults["save_total_limit"] = max(defaults["save_total_limit"], averaged)
        if "load_best_model_at_end" not in explicit:
            defaults["load_best_model_at_end"] = False
    # No --bf16 / --fp16: bf16 on a GPU that supports it; on a CPU, fp32 unless bf16 measures faster on the model
    # (precision_choice.py: the Trainer subclasses measure before the Trainer reads the flag).
    automatic = automatic_precision("cpu" if use_cpu else "cuda" if torch.cuda.is_available() else "accelerator",
                                    explicit)
    if automatic is not None:
        defaults["bf16"] = bool(automatic[0])

    def parse(defaults: dict[str, Any]):
        if json_file:
            unknown = sorted(set(given) - {action.dest for action in parser._actions})
            if unknown:
                parser.error(f"unknown key {unknown[0]!r} in {json_file}" + parser.suggestion(unknown[0]))
            return parser.parse_dict({**defaults, **given})
        parser.set_defaults(**defaults)
        *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if rest:
            flag = next((arg for arg in rest if arg.startswith("-")), rest[0]).split("=")[0]
            what = "argument" if flag.startswith("-") else "value (is the flag before it missing?)"
            parser.error(f"unknown {what} {flag}" + parser.suggestion(flag))
        return parsed

    if "load_best_model_at_end" not in explicit and not can_load_best_model(parse({**defaults, "load_best_model_at_end": False})[2]):
        defaults["load_best_model_at_end"] = False  # our default gives way to the save/eval schedule the user chose
    model_args, data_args, training_args, legacy_args = parse(defaults)
    if legacy_args.warmup_ratio is not None:
        training_args.warmup_steps = legacy_args.warmup_ratio
    if automatic is not None:
        setattr(training_args, AUTOMATIC_PRECISION, automatic)
    return model_args, data_args, training_args, legacy_args


class OneLineErrorParser(HfArgumentParser):
    """``HfArgumentParser`` whose usage errors are one line (argparse would print the usage of some 200 flags
    first) and exit with status 2, like every command line tool."""

    def error(self, message: str):
        self.exit(2, f"run.py: error: {message} (--help lists the flags)\n")

    def suggestion(self, flag: str) -> str:
        """``"; did you mean --num_train_epochs?"`` for a near miss of a known flag, else ``""``."""
        import difflib

        known = [option for action in self._actions for option in action.option_strings if option.startswith("--")]
        close = difflib.get_close_matches("--" + flag.lstrip("-"), known, n=1)
        return f"; did you mean {close[0]}?" if close else ""


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


def check_model_source(model_args, task: str) -> None:
    """``--model_name_or_path`` must hold a model of the task's type; checked before its tokenizer or processor
    is looked for (a ViT has no tokenizer, which would otherwise be the error)."""
    source = model_args.model_name_or_path
    if not source:
        return
    if not os.path.isdir(source) and (os.path.exists(source) or not HUB_ID.fullmatch(source)):
        raise ValueError(f"--model_name_or_path {source}: no such directory or hub id (a directory saved by this "
                         "script or save_pretrained, or a hub id such as 'owner/name').")
    if problem := damaged_json_file(source):
        raise ValueError(f"--model_name_or_path {source}: {problem}.")
    try:
        model_type = AutoConfig.from_pretrained(source, cache_dir=model_args.cache_dir,
                                                trust_remote_code=False).model_type
    except (OSError, ValueError) as error:
        if os.path.isdir(source) and (Path(source) / "config.json").is_file():
            saved = json.loads((Path(source) / "config.json").read_text()).get("model_type")
            raise ValueError(f"--model_name_or_path {source} holds a {saved!r} model (config.json model_type), "
                             "which neither scratchformers nor transformers knows: this script trains "
                             "scratchformers models.") from error
        found = "" if os.path.exists(source) else "no such directory or hub id: "
        raise ValueError(f"--model_name_or_path {source}: {found}{str(error).strip().splitlines()[0]}") from error
    expected = TASKS[task]
    if model_type != expected.model_type:
        raise ValueError(f"--model_name_or_path {model_args.model_name_or_path} is a {model_type!r} model, not a "
                         f"scratchformers {expected.model_kind} ({expected.model_type!r}) for --task {task}.")


def check_saved_files(model_args, last_checkpoint: Optional[str]) -> None:
    """The JSON files of the model, tokenizer, processor and checkpoint this run reads parse: a damaged one is named
    (with the fix) instead of transformers' bare ``Unterminated string starting at: line 444 column 7``."""
    for flag, directory in (("--tokenizer_name", model_args.tokenizer_name),
                            ("--image_processor_name", model_args.image_processor_name),
                            ("--model_name_or_path", model_args.model_name_or_path),
                            ("the checkpoint to resume from", last_checkpoint)):
        problem = damaged_json_file(directory)
        if problem:
            raise ValueError(f"{flag} {directory}: {problem}.")


def check_averaging(model_args, training_args) -> None:
    """``--average_last_checkpoints k`` needs the last k checkpoints kept, and no other choice of final model."""
    k = model_args.average_last_checkpoints
    if k <= 1 or not training_args.do_train:
        return
    limit = training_args.save_total_limit
    problem = (
        "--save_strategy no writes no checkpoints" if training_args.save_strategy.value == "no"
        else f"--save_total_limit {limit} keeps fewer" if limit is not None and limit < k
        else "--load_best_model_at_end True chooses the best checkpoint instead" if training_args.load_best_model_at_end
        else "FSDP shards the weights being averaged" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
        else None
    )
    if problem:
        raise ValueError(f"--average_last_checkpoints {k} averages the last {k} checkpoints, but {problem}.")


def check_step_budget(training_args) -> None:
    """``--max_steps 0`` with training: refused before anything is loaded."""
    if training_args.do_train and training_args.max_steps == 0:
        raise ValueError("--max_steps 0 trains nothing (the Trainer would still take a step): pass a positive "
                         "--max_steps, or --do_train False with --model_name_or_path to only evaluate.")


def setup_logging(training_args) -> None:
    """Log like the Hugging Face example scripts: to stdout, the main process at info, the others at warning."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()  # the Trainer's "Total train batch size" etc. are info
    log_level = training_args.get_process_log_level()
    # This script's loggers: this file's and its sibling modules' (each named after its file).
    for name in {__name__, *(path.stem for path in HERE.glob("*.py") if path.stem != "run")}:
        logging.getLogger(name).setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.process_index} of {training_args.world_size}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed training: {training_args.parallel_mode.value == 'distributed'}, "
        f"16-bits training: {training_args.fp16 or training_args.bf16}"
    )


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
    pictures = draw_pictures(trainer, data_args.task, raw["test"]) if trainer.is_world_process_zero() else []
    trainer.card_context = dict(
        model=trainer.model, model_args=model_args, data_args=data_args, training_args=training_args,
        results=results, samples=samples, num_train=len(raw["train"]), world_size=training_args.world_size,
        pictures=pictures,
    )
    trainer.create_model_card()
    if trainer.is_world_process_zero():
        config = json.loads((Path(training_args.output_dir) / "config.json").read_text())
        for key in TASKS[data_args.task].required_config_keys:
            if not config.get(key):
                logger.warning(f"{training_args.output_dir}/config.json has no {key}: remote-code loading may fail.")
        print(f"\nSaved to {os.path.abspath(training_args.output_dir)} (model card: README.md)")
    if training_args.push_to_hub:
        trainer.push_to_hub()


def main(argv: Optional[list[str]] = None) -> dict:
    """One run: check the input, prepare the task's job, train / evaluate / save, then report and write the card."""
    model_args, data_args, training_args, legacy_args = parse_args(argv)
    setup_logging(training_args)
    log_precision(training_args)
    logger.info(f"Training/evaluation parameters {training_args}")
    if LONE_PROCESS_THREADS:
        logger.info(f"accelerate launch gave this lone CPU process 1 thread (its default without --cpu): using all "
                    f"{LONE_PROCESS_THREADS} cores (--num_cpu_threads_per_process N or OMP_NUM_THREADS=N chooses)")
    logger.info(f"OpenMP threads wait {'passively' if os.environ.get('OMP_WAIT_POLICY') == 'PASSIVE' else 'actively'}"
                f" ({torch.get_num_threads()} threads; set OMP_WAIT_POLICY to choose)")
    lock = OutputDirLock(training_args.output_dir)  # nothing held yet
    try:
        if not CARD_TEMPLATE.is_file():
            raise FileNotFoundError(f"The model-card template {CARD_TEMPLATE} is missing.")
        if not (training_args.do_train or model_args.model_name_or_path):
            raise ValueError("Nothing to evaluate: pass --do_train True, or --model_name_or_path of a trained model.")
        check_step_budget(training_args)
        check_averaging(model_args, training_args)
        check_model_source(model_args, data_args.task)
        task = TASKS[data_args.task]
        lock = hold_output_dir(training_args.output_dir, training_args.process_index)  # before reading it
        last_checkpoint = check_output_dir(
            training_args, legacy_args, data_args.task, task.model_type, model_args.model_name_or_path
        )
        last_checkpoint = skip_finished_training(model_args, training_args, last_checkpoint)
        check_saved_files(model_args, last_checkpoint)
        set_seed(training_args.seed)
        job = task.prepare(model_args, data_args, training_args, last_checkpoint)
    except (DatasetError, ValueError, OSError, ImportError) as error:
        # Bad input: a clear message before anything was trained or written.
        lock.release()
        raise SystemExit(f"error: {error}") from error

    try:
        results = train_evaluate_save(job, training_args, model_args)
        model_dir = training_args.output_dir if holds_the_model(training_args, model_args) else model_args.model_name_or_path
        samples = job.report(results, model_dir) if job.trainer.is_world_process_zero() else []
        finish(job.trainer, model_args, data_args, training_args, results, samples, job.raw)
    except SaveError as error:
        raise SystemExit(f"error: {error}") from error
    finally:
        lock.release()
    return results


if __name__ == "__main__":
    main()
