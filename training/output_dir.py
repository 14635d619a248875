"""What ``--output_dir`` holds: one live run at a time (``hold_output_dir``), refuse another model's or a foreign
directory, find the checkpoint to resume from (setting aside half-written ones), and notice a run whose training
already finished."""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here, runs are not protected from each other
    fcntl = None

logger = logging.getLogger(__name__)

# What a run writes into its output_dir besides the checkpoints and the package's module files.
RUN_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
    "training_args.bin", "trainer_state.json", "all_results.json", "train_results.json", "eval_results.json",
    "test_results.json", "README.md",
)
# A checkpoint holds one of these (whole or sharded weights).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
# Held (flock) by the run that writes into output_dir; says which run that is. Removed when the run ends. The "_"
# keeps it out of the Trainer's pushes to the hub (they skip "_*"), which happen while it is held.
LOCK_FILE = "_scratchformers-run.lock"


class OutputDirLock:
    """The claim of one run on its ``--output_dir``: an exclusive ``flock`` on ``LOCK_FILE``, which the kernel drops
    when the process ends in any way (a ``kill -9`` leaves no stale lock, only a file the next run takes over); the
    file's text names the holder for the refusal message. ``release`` removes the file, and the directory too if
    this run created it and left it empty (a run refused for bad input writes nothing)."""

    def __init__(self, output_dir: str, handle=None, created: bool = False):
        self.output_dir, self.handle, self.created = output_dir, handle, created

    def release(self) -> None:
        if self.handle is None:
            return
        try:
            os.unlink(Path(self.output_dir) / LOCK_FILE)  # while still held: no other run can hold this file now
        except OSError:
            pass
        self.handle.close()
        self.handle = None
        if self.created:
            try:
                os.rmdir(self.output_dir)  # only if empty
            except OSError:
                pass


def not_writable(output_dir: str, error: OSError) -> ValueError:
    """The error of an output_dir this run cannot write into (read-only file system, permissions)."""
    reason = error.strerror or type(error).__name__
    return ValueError(f"--output_dir {output_dir} is not writable ({reason}): nothing was trained. Make it writable, "
                      "or choose another --output_dir.")


def lock_holder(text: str) -> str:
    """``"pid 123 on host h, started 2026-..."`` from a lock file's text (what is known of it)."""
    try:
        holder = json.loads(text)
    except ValueError:
        return "a run that did not say which"
    command = str(holder.get("command") or "")
    command = command if len(command) <= 120 else command[:117] + "..."
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}" + (
        f": {command}" if command else "")


def hold_output_dir(output_dir: str, process_index: int = 0) -> OutputDirLock:
    """Claim ``output_dir`` for this run before anything is read or written there (the main process only).

    A directory that cannot be written is refused now, not at the first save; one held by a live run (this
    machine or another sharing the file system) is refused with a line naming that run; a lock file left by a
    run that died (``kill -9``, power loss) is taken over with a warning."""
    if process_index != 0:
        return OutputDirLock(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir {output_dir} is a file, not a directory: choose another --output_dir.")
    created = not os.path.exists(output_dir)
    path = Path(output_dir) / LOCK_FILE
    try:
        os.makedirs(output_dir, exist_ok=True)
        handle = open(path, "a+")
        fd, name = tempfile.mkstemp(dir=output_dir, prefix=".write-check-")  # writable, not just the lock file
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        raise not_writable(output_dir, error) from error
    lock = OutputDirLock(output_dir, handle, created)
    if fcntl is None:
        logger.warning(f"Cannot lock {output_dir} on this system: nothing stops a second run from writing there.")
        return lock
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.seek(0)
        holder = lock_holder(handle.read())
        handle.close()
        if error.errno not in (errno.EAGAIN, errno.EACCES):
            logger.warning(f"Cannot lock {output_dir} ({error.strerror}): nothing stops a second run from writing there.")
            return OutputDirLock(output_dir)
        raise ValueError(f"--output_dir {output_dir} is in use by another run ({holder}). Wait for it to end (or "
                         "stop it), or choose another --output_dir.") from None
    if not path.is_file() or os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
        handle.close()  # the holder removed the file between our open and our lock: claim the new one
        return hold_output_dir(output_dir, process_index)
    handle.seek(0)
    earlier = handle.read()
    if earlier.strip():
        logger.warning(f"Taking over {output_dir}: its lock was left by {lock_holder(earlier)}, which is no longer "
                       "running.")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": datetime.datetime.now().isoformat(timespec="seconds"),
                             "command": " ".join(sys.argv)}))
    handle.flush()
    return lock


def check_output_dir(training_args, legacy_args, task: str, expected: str,
                     model_source: Optional[str]) -> Optional[str]:
    """Refuse an output_dir holding another kind of model than ``expected`` (the task's ``model_type``); return the
    checkpoint to resume from, if any."""
    output_dir = training_args.output_dir
    if not os.path.isdir(output_dir) or not set(os.listdir(output_dir)) - {LOCK_FILE}:
        return None
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
    entries = sorted(p.name for p in Path(output_dir).iterdir() if p.name != LOCK_FILE)
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


def remove_previous_run(output_dir: str) -> None:
    """--overwrite_output_dir: remove what an earlier run (of either task) wrote, so that no file of the old model
    stays beside the new one; files this script never writes are kept."""
    import scratchformers  # here, not at the top: processes that only take the lock need nothing else

    module_files = {path.name for path in Path(scratchformers.__file__).parent.glob("*.py")}
    for path in Path(output_dir).iterdir():
        if path.is_dir() and (path.name.startswith("checkpoint-") or path.name == "runs"):
            shutil.rmtree(path)
        elif path.is_file() and (path.name in RUN_FILES or path.name in module_files
                                 or re.fullmatch(r"model-\d+-of-\d+\.safetensors", path.name)):
            path.unlink()
    logger.info(f"--overwrite_output_dir: removed the previous run's files from {output_dir}")


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


def same_directory(a: Optional[str], b: str) -> bool:
    """Whether ``a`` and ``b`` are one existing directory (by any path)."""
    return bool(a) and os.path.isdir(a) and os.path.isdir(b) and os.path.samefile(a, b)
