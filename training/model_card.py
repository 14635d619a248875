"""The ``README.md`` model card of a saved model, rendered from ``hub_card.md``: what each task's card says
differently (``CARD_TASKS``) and the shared rendering."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import datasets
import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

import scratchformers
from scratchformers.data import EMBEDDED_DATASETS, dataset_license

CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "hub_card.md"


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
            ("patch embedding", "{config.patch_embedding}"),
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
                      world_size, pictures: Sequence[tuple[str, str]] = ()) -> ModelCard:
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
        pictures="\n\n".join(f"![{caption}]({name})" for name, caption in pictures),
        usage=task.usage.format(**fields),
        framework_versions=versions,
    )
