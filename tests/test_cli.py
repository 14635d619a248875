"""The ``scratchformers`` command: translate (arguments and stdin), classify, and one-line errors with status 2."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
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


def damaged_copy(source: Path, target: Path, edit) -> Path:
    """A copy of the checkpoint ``source`` whose ``model.safetensors`` holds ``edit(tensors)``."""
    shutil.copytree(source, target)
    tensors = load_file(target / "model.safetensors")
    save_file(edit(dict(tensors)), target / "model.safetensors", metadata={"format": "pt"})
    return target


def without(*names: str):
    """An edit for ``damaged_copy``: leave out the tensors ``names``."""
    return lambda tensors: {name: tensor for name, tensor in tensors.items() if name not in names}


def with_tensor(name: str, tensor: torch.Tensor):
    """An edit for ``damaged_copy``: add or replace the tensor ``name``."""
    return lambda tensors: {**tensors, name: tensor}


def assert_one_error_line(err: str, fragment: str) -> None:
    """``err`` is one ``scratchformers: error:`` line (no traceback, warning or load report) holding ``fragment``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scratchformers: error: "), err
    assert fragment in lines[0], lines[0]


def save_image(path: Path, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(path)
    return path


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


def test_module_missing_tensor_is_one_line_on_stderr(model_dir, tmp_path):
    """The real process: no load report, warning or traceback besides the error (it used to translate, status 0)."""
    damaged = damaged_copy(model_dir, tmp_path / "damaged", without("model.decoder.layers.0.ffn.fc1.bias"))
    result = run_python("-m scratchformers translate", tmp_path, args=(str(damaged), "hello"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"scratchformers: error: the weights in '{damaged}' do not match its config.json (1 tensor missing: "
        "model.decoder.layers.0.ffn.fc1.bias): re-save the model with save_pretrained, or use the config.json it was "
        "saved with"
    ]


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


def test_correctly_saved_models_load_silently(model_dir, vit_dir, tmp_path, capsys):
    """The loading report is empty for good checkpoints: the output projection and the encoder/decoder embeddings,
    tied to the shared embedding and saved once, are not missing."""
    assert "lm_head.weight" not in load_file(model_dir / "model.safetensors")
    status, out, err = run_main(["translate", model_dir, "the red cat sat", "--max_new_tokens", "3"], capsys)
    assert (status, err) == (0, "") and out.count("\n") == 1
    status, out, err = run_main(["classify", vit_dir, save_image(tmp_path / "a.png")], capsys)
    assert (status, err) == (0, "") and out.startswith(f"{tmp_path / 'a.png'}\t")


FC1_BIAS = "model.decoder.layers.0.ffn.fc1.bias"
LAYER_1 = "model.decoder.layers.1."


@pytest.mark.parametrize("case", ["missing", "many_missing", "unexpected", "wrong_shape"])
def test_translate_weights_that_do_not_match_the_config(case, model_dir, tmp_path, capsys):
    """Missing, unexpected or wrong-shape tensors are an error (not a translation with random weights, nor a
    "look at the above report" with the report hidden)."""
    layer_1 = sorted(name for name in load_file(model_dir / "model.safetensors") if name.startswith(LAYER_1))
    edit, problem = {
        "missing": (without(FC1_BIAS), f"1 tensor missing: {FC1_BIAS}"),
        "many_missing": (without(*layer_1), f"{len(layer_1)} tensors missing: {', '.join(layer_1[:3])}, ...)"),
        "unexpected": (with_tensor("model.extra.weight", torch.zeros(2)), "1 unexpected tensor: model.extra.weight"),
        "wrong_shape": (with_tensor(FC1_BIAS, torch.zeros(63)),
                        f"1 tensor of the wrong shape: {FC1_BIAS} (63,) instead of (64,)"),
    }[case]
    damaged = damaged_copy(model_dir, tmp_path / "damaged", edit)
    status, out, err = run_main(["translate", damaged, "the red cat sat"], capsys)
    assert status == 2 and out == ""
    assert_one_error_line(err, f"the weights in '{damaged}' do not match its config.json ({problem}")
    assert err.rstrip().endswith("): re-save the model with save_pretrained, or use the config.json it was saved with")


def test_translate_weights_without_the_shared_embedding(model_dir, tmp_path, capsys):
    """transformers leaves a missing tensor that others are tied to out of its report (and on the meta device)."""
    damaged = damaged_copy(model_dir, tmp_path / "damaged", without("model.shared.weight"))
    status, out, err = run_main(["translate", damaged, "the red cat sat"], capsys)
    assert status == 2 and out == ""
    assert_one_error_line(err, f"could not load the model in '{damaged}': The weights in {damaged} lack "
                               "model.shared.weight: the checkpoint is incomplete")


@pytest.mark.parametrize("content,error", [(b"not a pickle" * 10, "UnpicklingError"), (b"", "EOFError"),
                                           ("truncated", "RuntimeError: PytorchStreamReader failed reading zip")],
                         ids=["garbage", "empty", "truncated"])
def test_translate_corrupt_pytorch_checkpoint(content, error, model_dir, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged)
    (damaged / "model.safetensors").unlink()
    if content == "truncated":
        torch.save(load_file(model_dir / "model.safetensors"), damaged / "pytorch_model.bin")
        content = (damaged / "pytorch_model.bin").read_bytes()[:1000]
    (damaged / "pytorch_model.bin").write_bytes(content)
    status, out, err = run_main(["translate", damaged, "hello"], capsys)
    assert status == 2 and out == ""
    assert_one_error_line(err, f"the weights in '{damaged}' are corrupt or not a PyTorch checkpoint ({error}")
    assert "save the model again with save_pretrained" in err


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])  # how Python reads stdin depends on the locale
def test_translate_stdin_that_is_not_utf8(errors, model_dir, capsys, monkeypatch):
    stdin = io.TextIOWrapper(io.BytesIO(b"the red cat sat\ncaf\xe9 au lait\n"), encoding="utf-8", errors=errors)
    monkeypatch.setattr("sys.stdin", stdin)
    status, out, err = run_main(["translate", model_dir, "--max_new_tokens", "3"], capsys)
    assert status == 2
    where = " on line 2" if errors == "surrogateescape" else ""
    assert_one_error_line(err, f"stdin is not UTF-8 text (byte 0xe9{where}): convert it to UTF-8 first, e.g. with "
                               "`iconv -f latin1 -t utf-8`")
    assert out.count("\n") == (1 if errors == "surrogateescape" else 0)  # line 1 was translated before line 2 came


def test_translate_text_argument_that_is_not_utf8(model_dir, capsys):
    status, out, err = run_main(["translate", model_dir, "hello", "caf\udce9"], capsys)  # argv's b"caf\xe9"
    assert status == 2 and out == ""
    assert_one_error_line(err, "TEXT argument 2 is not UTF-8 text (byte 0xe9): convert it to UTF-8 first")


@pytest.mark.parametrize("command", ["translate", "classify"])
@pytest.mark.parametrize("device,cuda_gpus,message", [
    ("bogus", 0, "--device bogus is not a device (cpu, cuda, cuda:N, mps)"),
    ("0", 0, "--device 0 is not a device (cpu, cuda, cuda:N, mps)"),
    ("cuda", 0, "--device cuda: no CUDA GPU is available; use --device cpu"),
    ("cuda:1", 0, "--device cuda:1: no CUDA GPU is available; use --device cpu"),
    ("cuda:3", 1, "--device cuda:3: this machine has 1 CUDA GPU(s), cuda:0 to cuda:0"),
    ("mps", 0, "--device mps: no MPS (Apple GPU) is available; use --device cpu"),
], ids=["bogus", "0", "cuda", "cuda:1", "cuda:3-of-1", "mps"])
def test_unavailable_device_is_one_line(command, device, cuda_gpus, message, model_dir, vit_dir, tmp_path, capsys,
                                        monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    inputs = {"translate": [model_dir, "hello"], "classify": [vit_dir, save_image(tmp_path / "a.png")]}[command]
    status, out, err = run_main([command, *inputs, "--device", device], capsys)
    assert status == 2 and out == ""
    assert_one_error_line(err, message)


def test_translate_device_failures_are_one_line(model_dir, capsys, monkeypatch):
    """Out of memory while translating, or a broken GPU when the model moves there: one line, not a traceback."""
    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setattr(sf.TranslationPipeline, "__call__", out_of_memory)
    status, out, err = run_main(["translate", model_dir, "hello", "--device", "cpu"], capsys)
    assert status == 2 and out == ""
    assert_one_error_line(err, "out of memory on cpu while translating 1 sentence(s): use a smaller --batch_size")

    def broken_gpu(self, *args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore details")

    monkeypatch.setattr(sf.TranslationPipeline, "__init__", broken_gpu)
    status, out, err = run_main(["translate", model_dir, "hello", "--device", "cpu"], capsys)
    assert status == 2 and out == ""
    assert_one_error_line(err, "could not put the model on cpu: CUDA error: no kernel image is available for "
                               "execution on the device; try --device cpu")


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


def test_classify_reports_unreadable_images_and_goes_on(vit_dir, tmp_path, capsys):
    """A damaged image is one line on stderr; the images after it are still classified; the status is 2."""
    good = [save_image(tmp_path / "first.png", 0), save_image(tmp_path / "last.png", 1)]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:2000])
    (tmp_path / "notes.png").write_text("not an image")
    status, out, err = run_main(["classify", vit_dir, good[0], truncated, tmp_path / "notes.png", good[1]], capsys)
    assert status == 2
    assert [line.split("\t")[0] for line in out.strip().split("\n")] == [str(good[0]), str(good[1])]
    assert err.strip().splitlines() == [
        f"scratchformers: error: '{truncated}' is a damaged or truncated image (image file is truncated): skipped it; "
        "save or copy it again",
        f"scratchformers: error: '{tmp_path / 'notes.png'}' is not an image file this program can read: skipped it",
    ]


@pytest.mark.parametrize("case", ["missing", "wrong_shape"])
def test_classify_weights_that_do_not_match_the_config(case, vit_dir, tmp_path, capsys):
    edit, problem = {
        "missing": (without("vit.layer_norm.weight"), "1 tensor missing: vit.layer_norm.weight"),
        "wrong_shape": (lambda tensors: {**tensors, "classifier.weight": torch.zeros(4, 32),
                                         "classifier.bias": torch.zeros(4)},
                        "2 tensors of the wrong shape: classifier.bias (4,) instead of (3,), classifier.weight "
                        "(4, 32) instead of (3, 32)"),
    }[case]
    damaged = damaged_copy(vit_dir, tmp_path / "damaged", edit)
    status, out, err = run_main(["classify", damaged, save_image(tmp_path / "a.png")], capsys)
    assert status == 2 and out == ""
    assert_one_error_line(err, f"the weights in '{damaged}' do not match its config.json ({problem}): re-save the "
                               "model with save_pretrained")


# ----------------------------------------------------------------------------------------------------------------
# Precision: the model's dtype, bf16 autocast only with --bf16
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", [[], ["--bf16"]], ids=["default", "bf16"])
def test_translate_and_classify_use_bf16_only_with_the_flag(flag, model_dir, vit_dir, tmp_path, capsys, monkeypatch,
                                                            cpu_flags):
    from scratchformers import pipeline_image_classification, pipeline_translation, precision

    asked = []

    def recording(model, enabled=None):
        asked.append(precision.use_bf16_autocast(model, enabled))
        return precision.bf16_autocast(model, enabled)

    for module in (pipeline_translation, pipeline_image_classification):
        monkeypatch.setattr(module, "bf16_autocast", recording)
    cpu_flags("avx512_bf16")  # bf16 instructions do not turn it on
    image = save_image(tmp_path / "image.png")
    assert run_main(["translate", model_dir, SOURCES[0], "--max_new_tokens", "4", *flag], capsys)[0] == 0
    assert run_main(["classify", vit_dir, image, *flag], capsys)[0] == 0
    assert asked == [bool(flag)] * 2
