"""--task text-generation: the text loaders (embedded Bible, .txt / jsonl / csv files), the packing into blocks
(``data.group_texts``, as Hugging Face's run_clm.py), the count-based baselines, and a tiny run of the script."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from scratchformers.data import DatasetError, group_texts, load_text_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))

from lm_task import BigramBaseline  # noqa: E402

PARAGRAPHS = [f"Paragraph {i} says the {word} sat on the mat.\nIt has two lines." for i, word in
              enumerate(["cat", "dog", "bird", "lamb", "king", "horse"] * 4)]


# --------------------------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------------------------
def test_group_texts_concatenates_drops_the_remainder_and_copies_labels():
    examples = {"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]], "attention_mask": [[1, 1, 1], [1, 1], [1, 1, 1, 1]]}
    blocks = group_texts(examples, block_size=4)
    assert blocks["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # 9 does not fill a block
    assert blocks["attention_mask"] == [[1] * 4] * 2
    assert blocks["labels"] == blocks["input_ids"] and blocks["labels"][0] is not blocks["input_ids"][0]
    assert group_texts({"input_ids": [[1, 2]]}, block_size=3) == {"input_ids": [], "labels": []}
    with pytest.raises(ValueError, match="--block_size 1: a block needs at least 2 tokens"):
        group_texts(examples, block_size=1)


# --------------------------------------------------------------------------------------------------------------
# Text loaders
# --------------------------------------------------------------------------------------------------------------
def test_embedded_bible_text_is_english_in_reading_order_with_whole_books_held_out():
    pytest.importorskip("sqlite3")
    from scratchformers.data import BIBLE_TEST_BOOKS, BIBLE_VALIDATION_BOOKS

    text = load_text_dataset()
    assert text["train"][0]["id"] == "1:1:1" and text["train"][0]["text"].startswith("In the beginning")
    books = {split: {int(row.split(":")[0]) for row in text[split]["id"]} for split in text}
    assert books["validation"] == set(BIBLE_VALIDATION_BOOKS) and books["test"] == set(BIBLE_TEST_BOOKS)
    assert not books["train"] & (books["validation"] | books["test"])
    ids = text["test"]["id"][:3]
    assert ids == ["29:1:1", "29:1:2", "29:1:3"]  # reading order, not shuffled
    assert "`" not in "".join(text["test"]["text"])
    german = load_text_dataset("embedded:bible", "de")
    assert german["test"][0]["id"] == "29:1:1" and german["test"][0]["text"] != text["test"][0]["text"]


@pytest.mark.parametrize("name, config, message", [
    ("embedded:bible", "xx", "embedded:bible has no language 'xx' \\(--dataset_config_name\\); available: en, fr, de, es"),
    ("embedded:mnist-5k", None, "embedded:mnist-5k holds no running text; for text-generation use embedded:bible"),
])
def test_bad_embedded_text_names_are_explained(name, config, message):
    with pytest.raises(DatasetError, match=message):
        load_text_dataset(name, config)


def test_txt_files_give_one_row_per_paragraph_and_missing_splits_are_carved(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(PARAGRAPHS) + "\n")
    text = load_text_dataset(train_file=str(path), cache_dir=str(tmp_path / "cache"))
    rows = [*text["train"]["text"], *text["validation"]["text"], *text["test"]["text"]]
    assert sorted(row.strip() for row in rows) == sorted(PARAGRAPHS)  # line breaks within a paragraph are kept
    assert len(text["validation"]) == len(text["test"]) == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_jsonl_and_csv_need_a_text_column(tmp_path, suffix):
    path = tmp_path / f"train{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"body": p, "n": i}) + "\n" for i, p in enumerate(PARAGRAPHS)))
    else:
        path.write_text("n,body\n" + "".join(f'{i},"{p}"\n' for i, p in enumerate(PARAGRAPHS)))
    with pytest.raises(DatasetError, match=r"The train data has columns \['.*'\]; expected a 'text' column "
                                           r"\(or pass --text_column\)"):
        load_text_dataset(train_file=str(path), cache_dir=str(tmp_path / "cache"))
    text = load_text_dataset(train_file=str(path), validation_file=str(path), test_file=str(path),
                             cache_dir=str(tmp_path / "cache"), text_column="body")
    assert text["test"].column_names == ["text"] and text["test"]["text"] == PARAGRAPHS


def test_local_text_needs_a_train_file_and_not_a_dataset_too(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("some text\n")
    with pytest.raises(DatasetError, match="Local data needs --train_file"):
        load_text_dataset(validation_file=str(path))
    with pytest.raises(DatasetError, match="either --dataset_name or --train_file"):
        load_text_dataset("embedded:bible", train_file=str(path))


# --------------------------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------------------------
def test_bigram_baseline_matches_hand_computed_probabilities():
    train = [[0, 1, 2, 1], [1, 2, 1, 2]]  # predicted tokens: 1 2 1 | 2 1 2 ; pairs (0,1) (1,2) (2,1) (1,2) (2,1) (1,2)
    baseline = BigramBaseline(train, vocab_size=4)
    assert baseline.total == 6
    assert baseline.unigram(1) == pytest.approx((3 + 1) / (6 + 4)) and baseline.unigram(3) == pytest.approx(1 / 10)
    assert baseline.bigram(1, 2, interpolation=0.5) == pytest.approx(0.5 * 3 / 3 + 0.5 * 4 / 10)
    assert baseline.bigram(3, 2, interpolation=0.5) == pytest.approx(0.5 * 4 / 10)  # unseen context: unigram share
    held_out = [[1, 2, 3]]
    expected = math.exp(-(math.log(0.5 + 0.5 * 0.4) + math.log(0.5 * 0 + 0.5 * 0.1)) / 2)
    assert baseline.perplexity(held_out, "bigram", 0.5) == pytest.approx(expected)
    assert baseline.perplexity(held_out, "unigram") == pytest.approx(math.exp(-(math.log(0.4) + math.log(0.1)) / 2))


def test_bigram_interpolation_is_chosen_on_validation_and_beats_unigram_on_patterned_text():
    train = [[1, 2, 3, 1, 2, 3, 1, 2]] * 5
    baseline = BigramBaseline(train, vocab_size=6)
    results = baseline.results([[3, 1, 2, 3]], [[2, 3, 1, 2]])
    assert results["bigram_interpolation"] == max(BigramBaseline.LAMBDAS)  # the pattern is all bigram
    assert results["test_bigram_perplexity"] < 1.5 < results["test_unigram_perplexity"]
    assert set(results) == {"bigram_interpolation", "eval_unigram_perplexity", "eval_bigram_perplexity",
                            "test_unigram_perplexity", "test_bigram_perplexity"}


# --------------------------------------------------------------------------------------------------------------
# The script, tiny
# --------------------------------------------------------------------------------------------------------------
def lm_args(train_file, output_dir, cache_dir, *extra: str) -> list[str]:
    return [
        "--task", "text-generation", "--train_file", str(train_file), "--output_dir", str(output_dir),
        "--cache_dir", str(cache_dir), "--model_size", "tiny", "--vocab_size", "300", "--block_size", "16",
        "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--disable_tqdm", "True",
        "--num_samples", "2", "--bf16", "False", *extra,
    ]


def test_text_generation_run_reports_perplexity_beside_the_baselines_and_samples(tmp_path, capsys):
    import run

    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(PARAGRAPHS * 3) + "\n")
    out = tmp_path / "lm"
    results = run.main(lm_args(path, out, tmp_path / "cache"))
    # Perplexity is exp of the plain held-out NLL (the Trainer's eval_loss), beside the baselines on the same blocks.
    for prefix in ("eval", "test"):
        assert results[f"{prefix}_perplexity"] == pytest.approx(math.exp(results[f"{prefix}_loss"]), rel=1e-6)
        assert results[f"{prefix}_bigram_perplexity"] > 1 and results[f"{prefix}_unigram_perplexity"] > 1
    saved = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training_curves.png",
            "baseline_results.json", "test_results.json"} <= saved
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "scratch_transformer_lm" and config["auto_map"]
    assert json.loads((out / "all_results.json").read_text())["test_bigram_perplexity"] == pytest.approx(
        results["test_bigram_perplexity"])
    card = (out / "README.md").read_text()
    assert "bigram baseline perplexity" in card and "Sample continuations of test passages" in card
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "baselines on the same tokens: bigram" in printed
    assert printed.count("  prompt:    ") == 2
    from transformers import AutoModelForCausalLM, pipeline
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.use_cache and model.generation_config.do_sample
    # The pipeline encodes a prompt with the tokenizer's defaults: no </s> after it (it would start a new text).
    generator = pipeline("text-generation", model=str(out), trust_remote_code=True)
    prompt_ids = generator.preprocess("Paragraph 1 says")["input_ids"][0].tolist()
    assert prompt_ids == generator.tokenizer("Paragraph 1 says", add_special_tokens=False)["input_ids"]
    assert generator.tokenizer.eos_token_id not in prompt_ids


@pytest.mark.parametrize("extra, message", [
    (("--block_size", "1"), "--block_size 1: a block needs at least 2 tokens"),
    (("--block_size", "4096"), "fewer than --block_size 4096 tokens"),
    (("--random_rotation", "5"), "--random_rotation augment training images; --task text-generation has none"),
])
def test_text_generation_bad_input_is_one_line(tmp_path, extra, message):
    import run

    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(PARAGRAPHS) + "\n")
    with pytest.raises(SystemExit, match=message):
        run.main(lm_args(path, tmp_path / "lm", tmp_path / "cache", *extra))
