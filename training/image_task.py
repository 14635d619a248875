"""``--task image-classification``: the image dataset, an image processor, the ViT and its Trainer, and a few
test images classified through the saved model's pipeline."""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import transformers
from transformers import AutoImageProcessor, AutoModelForImageClassification

from scratchformers import ScratchViTConfig, make_image_processor
from scratchformers.data import load_image_dataset
from scratchformers.metrics import accuracy_compute_metrics

from augmentation import RandomAffine
from output_dir import resolve_resume
from task_setup import Job, build_model, select_samples, trainer_datasets
from trainer import ScratchTrainer

logger = logging.getLogger(__name__)

# Architecture presets (``--model_size``); ``--config_overrides "d_model=128,num_layers=2"`` edits any field.
VIT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=28, patch_size=7, d_model=64, num_layers=2, num_heads=4, ffn_dim=128),
    # A convolutional stem (28 -> 14 -> 7 -> 4: 16 tokens, as many as 7x7 patches give), no dropout, mean pooling:
    # what won on MNIST-5k and Fashion-MNIST in the 15-minute budget (training/RECIPES.md); 4x4 patches cost three
    # times as much per step for no more accuracy per minute.
    "small": dict(image_size=28, patch_size=8, patch_embedding="convolutional", d_model=128, num_layers=4, num_heads=4,
                  ffn_dim=256, dropout=0.0, pooling="mean"),
    # ViT-B/16.
    "base": dict(image_size=224, patch_size=16, d_model=768, num_layers=12, num_heads=12, ffn_dim=3072),
}


def build_vit(model_args, labels: list[str], num_channels: int, resume_from: Optional[str]):
    id2label = {i: name for i, name in enumerate(labels)}
    label2id = {name: i for i, name in id2label.items()}

    def new_config() -> ScratchViTConfig:
        return ScratchViTConfig(**VIT_PRESETS[model_args.model_size], num_channels=num_channels,
                                num_labels=len(labels), id2label=id2label, label2id=label2id)

    return build_model(AutoModelForImageClassification, model_args, resume_from, new_config, num_labels=len(labels),
                       id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True)


def prepare_image_classification(model_args, data_args, training_args, last_checkpoint) -> Job:
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

    augment = RandomAffine(data_args.random_rotation, data_args.random_translate, data_args.random_scale,
                           data_args.random_shear, data_args.random_hflip)
    if not augments(data_args.augmentation, training_args, len(raw["train"])):
        augment = RandomAffine()

    def train_transform(batch: dict) -> dict:
        processed_batch = transform(batch)
        processed_batch["pixel_values"] = augment(processed_batch["pixel_values"])
        return processed_batch

    processed = {split: ds.with_transform(train_transform if split == "train" else transform)
                 for split, ds in raw.items()}

    def collate_fn(examples: list[dict]) -> dict:
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "labels": torch.tensor([example["labels"] for example in examples]),
        }

    trainer = ScratchTrainer(
        model=model,
        args=training_args,
        **trainer_datasets(processed, training_args),
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


# "auto" augments runs that show each training image at least this often (training/RECIPES.md: it won 96.0 % vs
# 95.0 % on MNIST-5k at 48 epochs, and cost 9 points at step 1000 on Fashion-MNIST, 1.2 epochs into a 4.6-epoch run).
AUGMENT_FROM_EPOCHS = 10


def augments(choice: str, training_args, train_size: int) -> bool:
    """Whether the training images get the random affine: ``--augmentation auto`` does when the run sees each of
    them at least ``AUGMENT_FROM_EPOCHS`` times (few images, many epochs: augmentation is what keeps the model from
    learning them by heart; with many images and few epochs it only slows learning down)."""
    if choice != "auto":
        return choice == "always"
    if training_args.max_steps > 0:
        batch = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                 * training_args.world_size)
        epochs = training_args.max_steps * batch / max(train_size, 1)
    else:
        epochs = training_args.num_train_epochs
    logger.info(f"--augmentation auto: {epochs:.1f} epochs -> {'' if epochs >= AUGMENT_FROM_EPOCHS else 'no '}"
                f"random affine (from {AUGMENT_FROM_EPOCHS} epochs)")
    return epochs >= AUGMENT_FROM_EPOCHS


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
