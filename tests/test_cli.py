"""The ``scratchformers`` command: translate (arguments and stdin), classify, and one-line errors with status 2."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig

import scratchformers as sf
from scratchformers.cli import main, one_line
from translation_fixtures import SOURCES, run_python, save_translation_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_translation_model(tmp_path_factory.mktemp("cli") / "translator")


@pytest.fixture(scope="module")
def translator(model_dir):
    model = sf.ScratchTransformerForConditionalGeneration.from_pretrained(model_dir)
    from transformers import AutoTokenizer

    return sf.TranslationPipeline(model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), device="cpu")


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    labels = {0: "cat", 1: "dog", 2: "bird"}
    config = sf.ScratchViTConfig(image_size=32, patch_size=8, d_model=32, num_layers=1, num_heads=4, ffn_dim=64,
                                 id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("cli") / "vit"
    sf.ScratchViTForImageClassification(config).save_pretrained(directory)
    sf.make_image_processor(config).save_pretrained(directory)
    return directory


def run_main(args: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ----------------------------------------------------------------------------------------------------------------
# Through `python -m scratchformers` in a subprocess
# ----------------------------------------------------------------------------------------------------------------
def test_module_translates_stdin_lines(model_dir, translator, tmp_path):
    lines = [SOURCES[0], "", SOURCES[1], SOURCES[2]]
    result = run_python("-m scratchformers translate", tmp_path, stdin="\n".join(lines) + "\n",
                        args=(str(model_dir), "--max_new_tokens", "6", "--batch_size", "3"))
    assert result.returncode == 0, result.stderr[-3000:]
    expected = [one_line(record["translation_text"]) for record in translator(lines, max_new_tokens=6)]
    assert result.stdout.split("\n")[:-1] == expected
    assert expected[1] == ""


def test_module_missing_directory_is_a_one_line_error(tmp_path):
    result = run_python("-m scratchformers translate", tmp_path, args=(str(tmp_path / "nowhere"), "hello"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"scratchformers: error: model directory '{tmp_path / 'nowhere'}' does not exist"
    ]
    assert result.stdout == ""


# ----------------------------------------------------------------------------------------------------------------
# translate, in process
# ----------------------------------------------------------------------------------------------------------------
def test_translate_text_arguments(model_dir, translator, capsys):
    status, out, _ = run_main(["translate", model_dir, *SOURCES[:2], "--max_new_tokens", "6"], capsys)
    assert status == 0
    assert out.split("\n")[:-1] == [one_line(r["translation_text"]) for r in translator(SOURCES[:2], max_new_tokens=6)]


def test_translate_beams_and_candidates_share_a_line(model_dir, translator, capsys):
    args = ["translate", model_dir, *SOURCES[:2], "--num_beams", "3", "--num_return_sequences", "2",
            "--max_new_tokens", "6"]
    status, out, _ = run_main(args, capsys)
    assert status == 0
    expected = translator(SOURCES[:2], num_beams=3, num_return_sequences=2, max_new_tokens=6)
    assert out.split("\n")[:-1] == ["\t".join(one_line(r["translation_text"]) for r in records) for records in expected]


def test_translate_reads_stdin_when_no_text(model_dir, translator, capsys, monkeypatch):
    status, out, _ = run_main(["translate", model_dir, "--max_new_tokens", "5"], capsys,
                              stdin=f"{SOURCES[2]}\r\n{SOURCES[0]}", monkeypatch=monkeypatch)
    assert status == 0
    expected = translator([SOURCES[2], SOURCES[0]], max_new_tokens=5)
    assert out.split("\n")[:-1] == [one_line(r["translation_text"]) for r in expected]


def test_line_breaks_inside_a_translation_are_printed_as_spaces():
    assert one_line("a\nb\r\nc\td\u2028e") == "a b  c d e"


@pytest.mark.parametrize("case", ["missing", "file", "no_config", "other_model", "vit"])
def test_translate_errors_exit_2_with_one_line(case, tmp_path, vit_dir, capsys):
    target = {"missing": tmp_path / "missing", "file": tmp_path / "file.txt", "no_config": tmp_path,
              "other_model": tmp_path / "bert", "vit": vit_dir}[case]
    (tmp_path / "file.txt").write_text("not a model")
    BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    message = {"missing": "does not exist", "file": "is a file, not a model directory", "no_config": "no config.json",
               "other_model": "holds a bert model, which does not translate",
               "vit": "holds a scratch_vit model, which does not translate"}[case]
    status, out, err = run_main(["translate", target, "hello"], capsys)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("scratchformers: error: ") and message in err


def test_translate_without_tokenizer_and_bad_options(tmp_path, capsys):
    save_translation_model(tmp_path / "full")
    sf.ScratchTransformerForConditionalGeneration.from_pretrained(tmp_path / "full").save_pretrained(tmp_path / "bare")
    status, _, err = run_main(["translate", tmp_path / "bare", "hello"], capsys)
    assert status == 2 and "tokenizer" in err and len(err.strip().splitlines()) == 1
    status, _, err = run_main(["translate", tmp_path / "full", "hi", "--num_return_sequences", "2"], capsys)
    assert status == 2 and "--num_beams" in err
    status, _, err = run_main(["translate", tmp_path / "full", "hi", "--max_new_tokens", "500"], capsys)
    assert status == 2 and "max_position_embeddings" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------------------------
# classify, in process
# ----------------------------------------------------------------------------------------------------------------
def test_classify_prints_label_and_score(vit_dir, tmp_path, capsys):
    images = []
    for i, size in enumerate([(40, 52), (32, 32)]):
        images.append(tmp_path / f"image{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(images[-1])
    status, out, err = run_main(["classify", vit_dir, *images, "--top_k", "2"], capsys)
    assert status == 0, err
    rows = [line.split("\t") for line in out.strip().split("\n")]
    assert [row[0] for row in rows] == [str(images[0])] * 2 + [str(images[1])] * 2
    assert all(row[1] in {"cat", "dog", "bird"} and 0.0 <= float(row[2]) <= 1.0 for row in rows)
    assert float(rows[0][2]) >= float(rows[1][2])


def test_classify_errors_exit_2(vit_dir, model_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    cases = [
        (["classify", model_dir, tmp_path / "notes.txt"], "holds a scratch_transformer model, which does not classify"),
        (["classify", tmp_path / "missing", tmp_path / "notes.txt"], "does not exist"),
        (["classify", vit_dir, tmp_path / "missing.png"], "image"),
        (["classify", vit_dir, tmp_path / "notes.txt"], "is not an image file"),
    ]
    for args, message in cases:
        status, out, err = run_main(args, capsys)
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
