"""What a user does with Hugging Face's example scripts (``run_translation.py``, ``run_image_classification.py``),
on a saved scratchformers checkpoint, in a fresh interpreter that cannot import scratchformers.

The two scripts below are our own short versions of those examples: HfArgumentParser dataclasses, stock Auto
classes with ``trust_remote_code``, a ``datasets.Dataset``, ``DataCollatorForSeq2Seq`` + ``Seq2SeqTrainer``
(``predict_with_generate``) or ``Trainer``, evaluate metrics loaded by path (our offline twins of the hub's
``sacrebleu`` / ``accuracy``, read as the hub ones are: ``result["score"]``), ``trainer.save_model``, then the
saved directory reloaded with the Auto classes. Nothing in them knows which model they train.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from scratchformers.metrics import metric_path
from translation_fixtures import run_python, save_translation_model
from vit_fixtures import tiny_vit

TRANSLATION_SCRIPT = '''
"""Fine-tune a sequence-to-sequence model for translation, then reload the saved model and translate."""

import json
import os
from dataclasses import dataclass, field

import evaluate
import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Path or hub id of the pretrained model and tokenizer."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the modelling code of the checkpoint."})


@dataclass
class DataTrainingArguments:
    source_lang: str = field(default="en")
    target_lang: str = field(default="fr")
    metric: str = field(default="sacrebleu", metadata={"help": "evaluate.load name or path of the BLEU metric."})
    max_source_length: int = field(default=16)
    max_target_length: int = field(default=16)
    num_beams: int = field(default=1)
    source_prefix: str = field(default="")


def make_dataset(source_lang, target_lang):
    """A few generated sentence pairs, in the layout of the hub's translation datasets."""
    adjectives = [("red", "rouge"), ("big", "grand"), ("small", "petit"), ("old", "vieux")]
    nouns = [("cat", "chat"), ("dog", "chien"), ("bird", "oiseau")]
    pairs = [
        {source_lang: f"the {a} {n} sat", target_lang: f"le {m} {b} a dormi"}
        for a, b in adjectives
        for n, m in nouns
    ]
    return Dataset.from_dict({"translation": pairs}).train_test_split(test_size=4, seed=0)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    set_seed(training_args.seed)

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
    )
    model = AutoModelForSeq2SeqLM.from_pretrained(
        model_args.model_name_or_path, config=config, trust_remote_code=model_args.trust_remote_code
    )
    if model.config.decoder_start_token_id is None:
        raise ValueError("Make sure that `config.decoder_start_token_id` is correctly defined")

    raw_datasets = make_dataset(data_args.source_lang, data_args.target_lang)
    prefix = data_args.source_prefix

    def preprocess_function(examples):
        inputs = [prefix + ex[data_args.source_lang] for ex in examples["translation"]]
        targets = [ex[data_args.target_lang] for ex in examples["translation"]]
        model_inputs = tokenizer(inputs, max_length=data_args.max_source_length, truncation=True)
        labels = tokenizer(text_target=targets, max_length=data_args.max_target_length, truncation=True)
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    train_dataset = raw_datasets["train"].map(preprocess_function, batched=True, remove_columns=["translation"])
    eval_dataset = raw_datasets["test"].map(preprocess_function, batched=True, remove_columns=["translation"])
    data_collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    metric = evaluate.load(data_args.metric)
    metric_results = []

    def postprocess_text(preds, labels):
        return [pred.strip() for pred in preds], [[label.strip()] for label in labels]

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        if isinstance(preds, tuple):
            preds = preds[0]
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
        decoded_preds = tokenizer.batch_decode(preds, skip_special_tokens=True)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        decoded_labels = tokenizer.batch_decode(labels, skip_special_tokens=True)
        decoded_preds, decoded_labels = postprocess_text(decoded_preds, decoded_labels)
        result = metric.compute(predictions=decoded_preds, references=decoded_labels)
        metric_results.append({"result": result, "predictions": decoded_preds, "references": decoded_labels})
        result = {"bleu": result["score"]}
        result["gen_len"] = np.mean([np.count_nonzero(pred != tokenizer.pad_token_id) for pred in preds])
        return {k: round(float(v), 4) for k, v in result.items()}

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
    )
    train_result = trainer.train()
    trainer.save_model()
    trainer.save_metrics("train", train_result.metrics)
    max_length, num_beams = data_args.max_target_length, data_args.num_beams
    trainer.save_metrics("eval", trainer.evaluate(max_length=max_length, num_beams=num_beams))
    predict_results = trainer.predict(eval_dataset, metric_key_prefix="predict", max_length=max_length)
    trainer.save_metrics("predict", predict_results.metrics)
    predictions = np.where(predict_results.predictions != -100, predict_results.predictions, tokenizer.pad_token_id)
    predictions = [p.strip() for p in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
    with open(os.path.join(training_args.output_dir, "generated_predictions.txt"), "w") as writer:
        writer.write("\\n".join(predictions))

    # Later: translate with the saved model.
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(training_args.output_dir, trust_remote_code=True).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(training_args.output_dir, trust_remote_code=True)
    sources = [prefix + ex[data_args.source_lang] for ex in raw_datasets["test"]["translation"]]
    batch = reloaded_tokenizer(sources, padding=True, return_tensors="pt")
    trained = trainer.model.eval()
    with torch.no_grad():
        reloaded_ids = reloaded.generate(**batch, max_length=max_length, num_beams=num_beams)
        trained_ids = trained.generate(**batch.to(trained.device), max_length=max_length, num_beams=num_beams)
        targets = [ex[data_args.target_lang] for ex in raw_datasets["test"]["translation"]]
        labels = reloaded_tokenizer(text_target=targets, padding=True, return_tensors="pt")["input_ids"]
        logits_gap = (reloaded(**batch, labels=labels).logits - trained(**batch, labels=labels).logits).abs().max()
    report = {
        "last_metric": metric_results[-1],
        "predictions": predictions,
        "reloaded_class": type(reloaded).__module__ + "." + type(reloaded).__name__,
        "reloaded_translations": reloaded_tokenizer.batch_decode(reloaded_ids, skip_special_tokens=True),
        "trained_translations": tokenizer.batch_decode(trained_ids, skip_special_tokens=True),
        "same_ids": torch.equal(reloaded_ids.cpu(), trained_ids.cpu()),
        "logits_gap": float(logits_gap),
    }
    with open(os.path.join(training_args.output_dir, "reload_report.json"), "w") as writer:
        json.dump(report, writer)


if __name__ == "__main__":
    main()
'''

IMAGE_CLASSIFICATION_SCRIPT = '''
"""Fine-tune an image classifier on a new label set, then reload the saved model and classify."""

import json
import os
import random
from dataclasses import dataclass, field

import evaluate
import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    pipeline,
    set_seed,
)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Path or hub id of the pretrained model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the modelling code of the checkpoint."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={"help": "Replace a head of another size."})


@dataclass
class DataTrainingArguments:
    metric: str = field(default="accuracy", metadata={"help": "evaluate.load name or path of the metric."})
    num_examples: int = field(default=16)


def make_dataset(num_examples):
    """Generated images of two classes, reddish and bluish noise of odd sizes, with named labels."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(num_examples):
        label = i % 2
        pixels = rng.integers(0, 100, (36 + i % 5, 44, 3))
        pixels[..., 0 if label == 0 else 2] += 150
        images.append(Image.fromarray(pixels.astype(np.uint8)))
        labels.append(label)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["red", "blue"])})
    return Dataset.from_dict({"image": images, "label": labels}, features=features).train_test_split(
        test_size=0.25, seed=0, stratify_by_column="label"
    )


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    set_seed(training_args.seed)

    dataset = make_dataset(data_args.num_examples)
    labels = dataset["train"].features["label"].names
    label2id = {label: i for i, label in enumerate(labels)}
    id2label = {i: label for i, label in enumerate(labels)}

    metric = evaluate.load(data_args.metric)

    def compute_metrics(p):
        return metric.compute(predictions=np.argmax(p.predictions, axis=1), references=p.label_ids)

    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        num_labels=len(labels),
        label2id=label2id,
        id2label=id2label,
        finetuning_task="image-classification",
        trust_remote_code=model_args.trust_remote_code,
    )
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        trust_remote_code=model_args.trust_remote_code,
    )
    image_processor = AutoImageProcessor.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
    )

    def train_transforms(example_batch):
        images = [image.convert("RGB") for image in example_batch["image"]]
        images = [image.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < 0.5 else image for image in images]
        example_batch["pixel_values"] = list(image_processor(images, return_tensors="pt")["pixel_values"])
        return example_batch

    def val_transforms(example_batch):
        images = [image.convert("RGB") for image in example_batch["image"]]
        example_batch["pixel_values"] = list(image_processor(images, return_tensors="pt")["pixel_values"])
        return example_batch

    def collate_fn(examples):
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        labels = torch.tensor([example["label"] for example in examples])
        return {"pixel_values": pixel_values, "labels": labels}

    dataset["train"].set_transform(train_transforms)
    dataset["test"].set_transform(val_transforms)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["test"],
        compute_metrics=compute_metrics,
        processing_class=image_processor,
        data_collator=collate_fn,
    )
    train_result = trainer.train()
    trainer.save_model()
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_metrics("eval", trainer.evaluate())
    predict_results = trainer.predict(dataset["test"], metric_key_prefix="predict")
    trainer.save_metrics("predict", predict_results.metrics)

    # Later: classify with the saved model.
    reloaded = AutoModelForImageClassification.from_pretrained(training_args.output_dir, trust_remote_code=True)
    reloaded_processor = AutoImageProcessor.from_pretrained(training_args.output_dir, trust_remote_code=True)
    images = [example["image"] for example in dataset["test"].with_format(None)]
    inputs = reloaded_processor([image.convert("RGB") for image in images], return_tensors="pt")
    trained = trainer.model.eval()
    with torch.no_grad():
        reloaded_logits = reloaded.eval()(**inputs).logits
        trained_logits = trained(**inputs.to(trained.device)).logits.cpu()
    classify = pipeline("image-classification", model=training_args.output_dir, trust_remote_code=True)
    report = {
        "predictions": np.argmax(predict_results.predictions, axis=1).tolist(),
        "label_ids": predict_results.label_ids.tolist(),
        "reloaded_class": type(reloaded).__module__ + "." + type(reloaded).__name__,
        "id2label": reloaded.config.id2label,
        "reloaded_labels": [reloaded.config.id2label[i] for i in reloaded_logits.argmax(-1).tolist()],
        "pipeline_labels": [result[0]["label"] for result in classify(images)],
        "logits_gap": float((reloaded_logits - trained_logits).abs().max()),
        "trained_logits": trained_logits.tolist(),
    }
    with open(os.path.join(training_args.output_dir, "reload_report.json"), "w") as writer:
        json.dump(report, writer)


if __name__ == "__main__":
    main()
'''

COMMON_ARGUMENTS = (
    "--output_dir", "out", "--max_steps", "4", "--learning_rate", "1e-3", "--per_device_train_batch_size", "4",
    "--per_device_eval_batch_size", "4", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
    "--disable_tqdm", "true", "--seed", "0", "--trust_remote_code",
)


def run_script(script: str, tmp_path: Path, *args: str) -> dict:
    """Run an example script where scratchformers cannot be imported; return the saved directory's reports."""
    result = run_python(script, tmp_path, without_package=True, args=(*COMMON_ARGUMENTS, *args))
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "out"
    reports = {name: json.loads((out / f"{name}_results.json").read_text()) for name in ("train", "eval", "predict")}
    return {**reports, "reload": json.loads((out / "reload_report.json").read_text()), "out": out}


@pytest.mark.parametrize("script", [TRANSLATION_SCRIPT, IMAGE_CLASSIFICATION_SCRIPT])
def test_example_scripts_know_nothing_of_the_model(script):
    assert "scratch" not in script.lower()
    assert "trust_remote_code=model_args.trust_remote_code" in script  # the user opts in, as in HF's scripts


@pytest.mark.slow
def test_run_translation_style_script_on_a_saved_checkpoint(tmp_path):
    save_translation_model(tmp_path / "model")
    reports = run_script(
        TRANSLATION_SCRIPT, tmp_path, "--model_name_or_path", "model", "--metric", metric_path("sacrebleu"),
        "--predict_with_generate", "--generation_max_length", "16",
    )
    assert reports["train"]["train_loss"] > 0 and reports["train"]["epoch"] > 0
    for split in ("eval", "predict"):
        assert 0 <= reports[split][f"{split}_bleu"] <= 100 and reports[split][f"{split}_gen_len"] > 0
    reload = reports["reload"]
    # The metric the script loaded by path answered as the hub's sacrebleu does, with sacrebleu's values.
    last = reload["last_metric"]
    assert list(last["result"]) == ["score", "counts", "totals", "precisions", "bp", "sys_len", "ref_len"]
    expected = BLEU().corpus_score(last["predictions"], [[refs[0] for refs in last["references"]]])
    assert last["result"] == {key: getattr(expected, key) for key in last["result"]}  # JSON keeps floats exact
    assert last["result"]["sys_len"] > 0 and last["result"]["ref_len"] > 0
    assert reports["predict"]["predict_bleu"] == pytest.approx(round(expected.score, 4))
    assert last["predictions"] == reload["predictions"]
    assert (reports["out"] / "generated_predictions.txt").read_text().split("\n") == reload["predictions"]
    # The saved directory is self-contained: reloaded from remote code, it translates as the trained model did.
    assert not reload["reloaded_class"].startswith("scratchformers")
    saved = {p.name for p in reports["out"].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= saved
    assert reload["same_ids"] and reload["reloaded_translations"] == reload["trained_translations"]
    assert reload["logits_gap"] < 1e-5


@pytest.mark.slow
def test_run_image_classification_style_script_on_a_saved_checkpoint(tmp_path):
    tiny_vit().save_pretrained(tmp_path / "model")  # writes the image processor too
    reports = run_script(
        IMAGE_CLASSIFICATION_SCRIPT, tmp_path, "--model_name_or_path", "model", "--metric", metric_path("accuracy"),
        "--ignore_mismatched_sizes", "--remove_unused_columns", "false",
    )
    assert reports["train"]["train_loss"] > 0
    reload = reports["reload"]
    predictions, label_ids = np.array(reload["predictions"]), np.array(reload["label_ids"])
    assert len(label_ids) == 4 and sorted(label_ids.tolist()) == [0, 0, 1, 1]
    assert reports["predict"]["predict_accuracy"] == pytest.approx(float(np.mean(predictions == label_ids)))
    assert 0 <= reports["eval"]["eval_accuracy"] <= 1
    # The new label set replaced the checkpoint's three labels, and survives the save.
    assert reload["id2label"] == {"0": "red", "1": "blue"} and len(reload["trained_logits"][0]) == 2
    assert not reload["reloaded_class"].startswith("scratchformers")
    saved = {p.name for p in reports["out"].iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_vit.py"} <= saved
    assert reload["logits_gap"] < 1e-5
    trained_labels = [reload["id2label"][str(i)] for i in np.argmax(reload["trained_logits"], axis=-1)]
    assert reload["reloaded_labels"] == trained_labels == reload["pipeline_labels"]
