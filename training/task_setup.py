"""What the tasks' ``prepare`` functions share: the ``Job`` they return, the sample limits, and the checks of
the flags that shape a new model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from transformers import AutoConfig, Trainer

logger = logging.getLogger(__name__)


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


def refuse_image_augmentation(data_args, task: str) -> None:
    """The ``--random_*`` flags augment training images: a text task refuses them rather than ignore them."""
    augmentation = [f"--random_{name}" for name in ("rotation", "translate", "scale", "shear")
                    if getattr(data_args, f"random_{name}")]
    if augmentation:
        raise ValueError(f"{', '.join(augmentation)} augment training images; --task {task} has none.")


def select_samples(raw, data_args):
    """Cut the splits to ``--max_train_samples``, ``--max_eval_samples`` and ``--max_predict_samples``."""
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples or data_args.max_eval_samples,
    }
    for split, limit in limits.items():
        if limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].select(range(limit))
    return raw


def trainer_datasets(processed: dict, training_args) -> dict[str, Any]:
    """The Trainer's ``train_dataset`` and ``eval_dataset``: each only when the run trains, or evaluates (during
    training or at the end)."""
    evaluates = training_args.do_eval or training_args.eval_strategy != "no"
    return dict(train_dataset=processed["train"] if training_args.do_train else None,
                eval_dataset=processed["validation"] if evaluates else None)


def build_model(auto_class, model_args, resume_from: Optional[str], new_config: Callable[[], Any], **pretrained_kwargs):
    """The model of a run: ``--model_name_or_path``'s (with ``pretrained_kwargs``); when resuming, a new model of the
    checkpoint's architecture, whatever the preset flags say now (the Trainer loads its weights); else
    ``new_config()`` (the preset) edited by ``--config_overrides``. With ``--attn_implementation`` and
    ``--forward_implementation``."""
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    check_architecture_flags(model_args, resume_from)
    if model_args.model_name_or_path:
        model = auto_class.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir,
                                           **pretrained_kwargs, **kwargs)
    else:
        config = (AutoConfig.from_pretrained(resume_from) if resume_from
                  else apply_config_overrides(new_config(), model_args.config_overrides))
        model = auto_class.from_config(config, **kwargs)
    model.config.forward_implementation = model_args.forward_implementation
    return model


def apply_config_overrides(config, overrides: Optional[str]):
    """``"d_model=128,dropout=0.2"`` -> typed config fields, then the config's own validation."""
    if not overrides:
        return config
    logger.info(f"Overriding config: {overrides}")
    # transformers types each value after the field's current one, which says nothing for a field that is None
    # (num_key_value_heads, stem_channels ...): those take an int, a float or true/false, else the text itself.
    typed, unset = [], {}
    for pair in overrides.split(","):
        key, _, value = pair.partition("=")
        if getattr(config, key.strip(), 0) is None:
            unset[key.strip()] = parse_unset_value(value.strip())
        else:
            typed.append(pair)
    try:
        if typed:
            config.update_from_string(",".join(typed))
    except ValueError as error:
        raise ValueError(f"--config_overrides {overrides!r}: {error}") from error
    for key, value in unset.items():
        setattr(config, key, value)
    if hasattr(config, "validate_architecture"):
        config.validate_architecture()
    return config


def parse_unset_value(text: str):
    """An override's value for a field without a type to go by: int, float, true/false, none, or the text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def check_architecture_flags(model_args, resume_from: Optional[str]) -> None:
    """Presets and overrides shape new models only; a resumed run keeps its checkpoint's architecture."""
    if model_args.config_overrides and model_args.model_name_or_path:
        raise ValueError("--config_overrides applies to new models only, not with --model_name_or_path.")
    if resume_from:
        logger.info(f"Resuming: the architecture is the one of {resume_from} (--model_size/--config_overrides unused).")
