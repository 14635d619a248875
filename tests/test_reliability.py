"""Nothing lost, nothing silent: one live run per output_dir, a full disk or a read-only directory named before
work is lost, damaged or mismatched files named at load time, and bad input as one line (training/run.py, the
``scratchformers`` command, the pipelines, the models' inputs)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import scratchformers as sf
from scratchformers.cli import main as cli_main
from test_training import RUN_PY, run, tiny_args, tiny_files  # noqa: F401  (tiny_files: a fixture)
from output_dir import LOCK_FILE, checkpoint_problem  # training/, on sys.path once run.py is loaded  # noqa: E402
from translation_fixtures import make_translation_model, run_python, save_translation_model

ROOT = Path(__file__).resolve().parents[1]
# Few steps, no evaluation: what these tests need of a run is that it trains and saves.
QUICK = ("--do_eval", "False", "--do_predict", "False", "--eval_strategy", "no", "--load_best_model_at_end", "False",
         "--num_samples", "0")


def script_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def run_script(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """training/run.py in its own process (not asserting success)."""
    return subprocess.run([sys.executable, str(RUN_PY), *map(str, args)], cwd=tmp_path, env=script_env(tmp_path),
                          capture_output=True, text=True, timeout=600)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line or "Traceback" in line]


def hold_in_other_process(output_dir: Path, tmp_path: Path) -> subprocess.Popen:
    """Another live process holding ``output_dir`` through ``output_dir.hold_output_dir`` (as run.py does)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'training')!r}); from output_dir import hold_output_dir; "
            f"lock = hold_output_dir({str(output_dir)!r}); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=script_env(tmp_path),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def files_of(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------------------
# One live run per output_dir
# --------------------------------------------------------------------------------------------------------------
def test_a_second_run_on_a_held_output_dir_is_refused_and_a_dead_runs_lock_taken_over(tiny_files, tmp_path, caplog):
    out = tmp_path / "out"
    holder = hold_in_other_process(out, tmp_path)
    try:
        before = files_of(out)
        with pytest.raises(SystemExit, match=rf"--output_dir {out} is in use by another run \(pid {holder.pid} on "
                                             rf"host .*, started .*\)\. Wait for it to end"):
            run.main(tiny_args(tiny_files, out, tmp_path / "c", *QUICK, "--max_steps", "2"))
        assert files_of(out) == before  # nothing read, renamed or written
    finally:
        holder.kill()  # kill -9: the kernel drops the lock; the lock file stays behind
        holder.wait()
    assert (out / LOCK_FILE).is_file()
    run.main(tiny_args(tiny_files, out, tmp_path / "c", *QUICK, "--max_steps", "2"))
    assert f"its lock was left by pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert (out / "model.safetensors").is_file() and not (out / LOCK_FILE).exists()  # released at the end


def test_the_lock_is_released_and_a_refused_run_leaves_no_directory(tiny_files, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="columns"):  # bad data: refused after the lock was taken
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"en": "a", "fr": "b"}\n' * 10)
        run.main(tiny_args({**tiny_files, "train": str(bad)}, out, tmp_path / "c"))
    assert not out.exists()
    holder = hold_in_other_process(out, tmp_path)  # and nothing of that run holds it any more
    holder.kill()
    holder.wait()


@pytest.mark.slow
def test_two_real_runs_on_one_output_dir(tiny_files, tmp_path):
    """A second `run.py` on the output_dir of a live one is refused with one line naming it and leaves the first
    run's model intact; a run killed with -9 leaves a lock that the same command takes over, resuming."""
    out = tmp_path / "out"
    # Long enough to still be training while the second run starts (some 10 s of imports) and is refused.
    args = [str(RUN_PY), *tiny_args(tiny_files, out, tmp_path / "c", *QUICK, "--max_steps", "600", "--save_steps", "100",
                                     "--save_total_limit", "2")]
    first = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=script_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / LOCK_FILE).is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended before it took the output_dir"
        second = subprocess.run([sys.executable, *args], cwd=tmp_path, env=script_env(tmp_path), capture_output=True,
                                text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second was refused: give it more steps"
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"error: --output_dir {out} is in use by another run (pid {first.pid} on host ")
        assert first.wait(timeout=600) == 0
    finally:
        if first.poll() is None:
            first.kill()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 600 and not (out / LOCK_FILE).exists()
    final, last = load_file(out / "model.safetensors"), load_file(out / "checkpoint-600" / "model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)

    killed = tmp_path / "killed"
    args = [str(RUN_PY), *tiny_args(tiny_files, killed, tmp_path / "c", *QUICK, "--max_steps", "40",
                                    "--save_steps", "10")]
    victim = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=script_env(tmp_path),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Killed once checkpoint-10 is complete: a kill while it is being written would (rightly) start the run over.
    while checkpoint_problem(killed / "checkpoint-10") and victim.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert (killed / LOCK_FILE).is_file()
    again = subprocess.run([sys.executable, *args], cwd=tmp_path, env=script_env(tmp_path), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"its lock was left by pid {victim.pid}" in again.stdout + again.stderr
    assert json.loads((killed / "train_results.json").read_text())["train_resumed_from_step"] >= 10


# --------------------------------------------------------------------------------------------------------------
# A read-only output_dir, a full disk
# --------------------------------------------------------------------------------------------------------------
@contextmanager
def read_only_directory(path: Path):
    """``path`` as an existing directory that cannot be written: by its permissions, or (as root, whom permissions
    do not stop) as a read-only tmpfs mount; skips the test where neither is possible."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot make a read-only directory here (root, and mounting is not allowed)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_output_dir_is_refused_before_training(tiny_files, tmp_path):
    """The real script: refused in one line before any data is read or step trained (it trained 10 steps, then
    failed with `OSError: [Errno 30] Read-only file system` at the first save)."""
    with read_only_directory(tmp_path / "out") as out:
        result = run_script(tiny_args(tiny_files, out, tmp_path / "c", *QUICK, "--max_steps", "2"), tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --output_dir {out} is not writable (") and "nothing was trained" in last
        assert "Running training" not in result.stdout + result.stderr


def no_space(*args, **kwargs):
    """torch.save on a full disk, as torch's zip writer reports it."""
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 291904 vs 291796")


def test_a_full_disk_during_a_checkpoint_says_so_and_the_same_command_resumes(tiny_files, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = tiny_args(tiny_files, out, tmp_path / "c", *QUICK, "--max_steps", "4", "--save_steps", "2")
    saves = []
    real_save = torch.save

    def fills_the_disk_on_the_second_checkpoint(obj, f, *rest, **kwargs):
        saves.append(str(f))
        if "checkpoint-4" in str(f):
            no_space()
        return real_save(obj, f, *rest, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk_on_the_second_checkpoint)
    with pytest.raises(SystemExit) as refused:
        run.main(args)
    message = str(refused.value)
    assert message.startswith(f"error: no space left on device while saving checkpoint-4 in {out}.")
    assert f"then run the same command again: it goes on from {out / 'checkpoint-2'}, which is intact." in message
    assert not (out / LOCK_FILE).exists()
    monkeypatch.setattr(torch, "save", real_save)
    run.main(args)  # the disk has room again
    assert json.loads((out / "train_results.json").read_text())["train_resumed_from_step"] == 2


def test_a_full_disk_before_any_complete_checkpoint_says_the_run_starts_over(tmp_path):
    from trainer import SaveError, disk_full_explained  # training/, on sys.path once run.py is loaded

    (tmp_path / "checkpoint-2").mkdir()  # half-written: no trainer_state.json
    with pytest.raises(SaveError, match=f"while saving the final model in {tmp_path}.*: no checkpoint is complete: "
                                        "it starts over"):
        with disk_full_explained(str(tmp_path), "the final model"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="Permission denied"):  # other errors pass unchanged
        with disk_full_explained(str(tmp_path), "the final model"):
            raise OSError(errno.EACCES, "Permission denied")


def test_a_full_disk_is_told_apart_from_other_save_errors():
    from trainer import out_of_space  # training/, on sys.path once run.py is loaded

    assert out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert out_of_space(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 291904 vs 291796"))
    assert not out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not out_of_space(RuntimeError("CUDA out of memory"))


# --------------------------------------------------------------------------------------------------------------
# run.py's arguments and inputs: one line, exit status 2 for usage
# --------------------------------------------------------------------------------------------------------------
def test_an_unknown_flag_is_one_line_with_status_2(tmp_path):
    """The real script (it printed `ValueError: Some specified arguments are not used by the HfArgumentParser`)."""
    result = run_script(["--max_steps", "3", "--foo", "7"], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["run.py: error: unknown argument --foo (--help lists the flags)"]


@pytest.mark.parametrize("argv, message", [
    (["--lerning_rate", "3e-4"], "unknown argument --lerning_rate; did you mean --learning_rate?"),
    (["--max_steps", "3", "7"], "unknown value (is the flag before it missing?) 7"),
    (["--max_steps", "many"], "argument --max_steps/--max-steps: invalid int value: 'many'"),
])
def test_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (other tests' logging)
    assert errors == [f"run.py: error: {message} (--help lists the flags)"]


def test_an_unknown_key_in_a_json_arguments_file_is_one_line(tmp_path, capsys):
    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"max_steps": 3, "learning_rat": 1e-3}))
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args([str(arguments)])
    assert exit_info.value.code == 2
    assert f"unknown key 'learning_rat' in {arguments}; did you mean --learning_rate?" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["./no/such/model", "/no/such/model", "no-such-owner/no-such-model"])
def test_a_model_that_does_not_exist_is_named(source, tiny_files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match=f"--model_name_or_path {source}: no such directory or hub id"):
        run.main(tiny_args(tiny_files, tmp_path / "out", tmp_path / "c", "--model_name_or_path", source))
    assert not (tmp_path / "out").exists()


def test_a_model_of_an_unknown_type_is_named_without_trust_remote_code(tiny_files, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "my_model", "auto_map": {"AutoConfig": "x.Y"}}))
    with pytest.raises(SystemExit) as refused:
        run.main(tiny_args(tiny_files, tmp_path / "out", tmp_path / "c", "--model_name_or_path", str(model)))
    assert "holds a 'my_model' model (config.json model_type), which neither scratchformers nor transformers knows" \
        in str(refused.value) and "trust_remote_code" not in str(refused.value)


def damage(path: Path) -> Path:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # cut off mid-file, as an interrupted copy leaves it
    return path


def test_a_damaged_tokenizer_json_is_named_by_the_script(tmp_path):
    """The real script, evaluating a saved model (it said `error: Unterminated string starting at: line 444 ...`)."""
    model = save_translation_model(tmp_path / "model")
    tokenizer_file = damage(model / "tokenizer.json")
    result = run_script(["--do_train", "False", "--model_name_or_path", model, "--output_dir", tmp_path / "out"],
                        tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --model_name_or_path {model}: {tokenizer_file} is damaged (JSONDecodeError: ")
    assert "save the model (and its tokenizer or processor) again with save_pretrained" in last


def test_a_damaged_tokenizer_json_in_the_checkpoint_to_resume_from_is_named(tiny_files, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(tiny_files, out, tmp_path / "c", *QUICK, "--max_steps", "2", "--save_steps", "1")
    run.main(args)
    for name in ("train_results.json", "model.safetensors", "checkpoint-2"):  # as if stopped after step 1
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    damaged = damage(out / "checkpoint-1" / "tokenizer.json")
    with pytest.raises(SystemExit, match=f"the checkpoint to resume from {out / 'checkpoint-1'}: {damaged} is damaged"):
        run.main(args)


def test_an_image_folder_with_an_empty_class_is_named(tmp_path):
    from scratchformers.data import DatasetError, load_image_dataset

    for label in ("cat", "dog", "bird"):
        (tmp_path / "train" / label).mkdir(parents=True)
    for index in range(4):
        Image.new("L", (8, 8), index * 40).save(tmp_path / "train" / "cat" / f"{index}.png")
    with pytest.raises(DatasetError, match=r"has empty class folders \['bird', 'dog'\]: put that class's images in "
                                           "them, or remove them"):
        load_image_dataset(train_file=str(tmp_path / "train"))


# --------------------------------------------------------------------------------------------------------------
# The `scratchformers` command and the pipelines: what they load is checked, images read as the pipeline reads them
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> Path:
    labels = {0: "cat", 1: "dog", 2: "bird"}
    config = sf.ScratchViTConfig(image_size=16, patch_size=8, d_model=32, num_layers=1, num_heads=4, ffn_dim=64,
                                 num_channels=1, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("reliability") / "vit"
    sf.ScratchViTForImageClassification(config).save_pretrained(directory)
    sf.make_image_processor(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def translator_dir(tmp_path_factory) -> Path:
    return save_translation_model(tmp_path_factory.mktemp("reliability") / "translator")


def cli(args: list, capsys) -> tuple[int, str, str]:
    status = cli_main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scratchformers: error: "), err
    return lines[0]


def test_classify_reads_16_bit_images_as_the_pipeline_does(vit_dir, tmp_path):
    """The real command: a 16-bit gray value of 40000 stays 40000 / 65535 (it became 255, white, before the
    processor, so the file was classified as a white image)."""
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(gray16)
    white = tmp_path / "white.png"
    Image.new("L", (16, 16), 255).save(white)
    result = run_python("-m scratchformers classify", tmp_path, args=(str(vit_dir), str(gray16), str(white), "--top_k",
                                                                       "3"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    printed = {path: {label: score for image, label, score in rows if image == str(path)} for path in (gray16, white)}
    classifier = sf.ImageClassificationPipeline(model=sf.ScratchViTForImageClassification.from_pretrained(vit_dir),
                                                image_processor=sf.ScratchViTImageProcessorPil.from_pretrained(vit_dir))
    expected = {p["label"]: f"{p['score']:.4f}" for p in classifier(str(gray16), top_k=3)}
    assert printed[gray16] == expected and printed[gray16] != printed[white]


def test_classify_given_a_folder_says_so(vit_dir, tmp_path, capsys):
    status, _, err = cli(["classify", vit_dir, tmp_path], capsys)
    assert status == 2
    assert one_error_line(err) == (f"scratchformers: error: '{tmp_path}' is a folder, not an image file: pass the "
                                   f"images in it, e.g. {tmp_path / '*.png'}")


def test_classify_names_the_pixel_limit_and_lifts_it_when_asked(vit_dir, tmp_path, capsys, monkeypatch):
    """A huge image was called "damaged or truncated" (Pillow refuses over twice its MAX_IMAGE_PIXELS)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    big = tmp_path / "big.png"
    Image.new("L", (20, 20), 7).save(big)  # 400 pixels, over twice the limit
    status, out, err = cli(["classify", vit_dir, big], capsys)
    assert status == 2 and out == ""
    line = one_error_line(err)
    assert "is larger than Pillow reads by default" in line and "pass --max_image_pixels 0 (no limit)" in line
    status, out, err = cli(["classify", vit_dir, big, "--max_image_pixels", "0"], capsys)
    assert status == 0 and out.startswith(f"{big}\t"), err


def with_nan(directory: Path, target: Path, name: str) -> Path:
    shutil.copytree(directory, target)
    tensors = load_file(target / "model.safetensors")
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_nan_weights_are_refused_at_load_time(translator_dir, vit_dir, tmp_path, capsys):
    """They generated `[[1, 0, 0, 0, 0, 0]]` and printed a confident label, silently."""
    from transformers import pipeline

    broken = with_nan(translator_dir, tmp_path / "nan", "model.decoder.layers.0.ffn.fc1.weight")
    status, out, err = cli(["translate", broken, "the red cat"], capsys)
    assert status == 2 and out == ""
    assert one_error_line(err).startswith(
        f"scratchformers: error: '{broken}': The model's weights hold NaN or infinite values (1 tensor: "
        "model.decoder.layers.0.ffn.fc1.weight)")
    with pytest.raises(ValueError, match="weights hold NaN or infinite values"):
        pipeline("translation", model=str(broken), trust_remote_code=True)
    broken_vit = with_nan(vit_dir, tmp_path / "nan_vit", "classifier.weight")
    Image.new("L", (16, 16)).save(tmp_path / "x.png")
    status, out, err = cli(["classify", broken_vit, tmp_path / "x.png"], capsys)
    assert status == 2 and "(1 tensor: classifier.weight)" in one_error_line(err)


def test_a_tokenizer_that_does_not_fit_the_model_is_refused_naming_both_sizes(tmp_path, capsys):
    """A tokenizer of 270-odd tokens for a 400-token model translated everything to ''."""
    from transformers import AutoTokenizer, pipeline

    model, tokenizer = make_translation_model(vocab_size=400)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    status, out, err = cli(["translate", tmp_path / "model", "the red cat"], capsys)
    assert status == 2 and out == ""
    assert f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary has 400" in one_error_line(err)
    with pytest.raises(ValueError, match=f"has {len(tokenizer)} tokens but the model's vocabulary has 400"):
        pipeline("translation", model=str(tmp_path / "model"), trust_remote_code=True)
    padded, _ = make_translation_model(vocab_size=-(-len(tokenizer) // 64) * 64)  # a table padded for speed: fine
    sf.TranslationPipeline(model=padded, tokenizer=AutoTokenizer.from_pretrained(tmp_path / "model"))


def test_a_damaged_tokenizer_json_is_named_by_the_command_and_the_pipeline(translator_dir, tmp_path, capsys):
    """The pipeline raised a bare `JSONDecodeError: Unterminated string ...` from transformers' tokenizer loading."""
    from transformers import AutoModelForSeq2SeqLM, pipeline

    damaged = tmp_path / "damaged"
    shutil.copytree(translator_dir, damaged)
    damage(damaged / "tokenizer.json")
    status, _, err = cli(["translate", damaged, "the red cat"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert line.startswith(f"scratchformers: error: {damaged / 'tokenizer.json'} is damaged (JSONDecodeError: ")
    assert line.endswith("save the model (and its tokenizer or processor) again with save_pretrained")
    with pytest.raises(ValueError, match=f"{damaged / 'tokenizer.json'} is damaged"):
        pipeline("translation", model=str(damaged), trust_remote_code=True)
    with pytest.raises(ValueError, match=f"{damaged / 'tokenizer.json'} is damaged"):
        AutoModelForSeq2SeqLM.from_pretrained(damaged)  # a damaged directory, whichever file is used


def test_a_model_type_nobody_knows_is_named_without_asking_about_custom_code(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "my_model",
                                                   "auto_map": {"AutoConfig": "configuration_my.MyConfig"}}))
    status, _, err = cli(["translate", model, "hello"], capsys)
    assert status == 2
    assert one_error_line(err) == (
        f"scratchformers: error: '{model}' holds a 'my_model' model (config.json model_type), which neither "
        "scratchformers nor transformers knows: use a model saved by scratchformers (or a transformers one)")


# --------------------------------------------------------------------------------------------------------------
# Inputs of the image pipeline and the ViT config
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("images, message", [
    ([], "Got an empty list of images: pass at least one image."),
    (np.zeros((16, 16, 2), np.uint8), r"shape \(16, 16, 2\): neither its first nor its last axis holds 1, 3 or 4"),
    (np.zeros((5, 16, 16), np.float32), r"shape \(5, 16, 16\): neither its first nor its last axis holds 1, 3 or 4"),
    (np.zeros((2, 16, 16, 5), np.uint8), r"shape \(16, 16, 5\): neither"),
])
def test_the_image_pipeline_names_inputs_that_are_not_images(images, message, vit_dir):
    classifier = sf.ImageClassificationPipeline(model=sf.ScratchViTForImageClassification.from_pretrained(vit_dir),
                                                image_processor=sf.ScratchViTImageProcessorPil.from_pretrained(vit_dir))
    with pytest.raises(ValueError, match=message):
        classifier(images)


def test_a_vit_without_labels_is_refused():
    with pytest.raises(ValueError, match="num_labels must be at least 1 .* got 0"):
        sf.ScratchViTConfig(num_labels=0)


# --------------------------------------------------------------------------------------------------------------
# The translation model's inputs
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inputs, message", [
    (dict(input_ids=torch.tensor([3, 4, 5]), labels=torch.tensor([[3, 4]])),
     r"input_ids must be a 2-D batch \[batch, length\], got shape \(3,\): for one sequence use input_ids\[None\]"),
    (dict(input_ids=torch.zeros(0, 4, dtype=torch.long)), r"input_ids is a batch of no rows \(shape \(0, 4\)\)"),
    (dict(input_ids=torch.tensor([[3, 4, 5]]), labels=torch.tensor([[3, 45, -100]])),
     r"labels hold token ids outside the vocabulary \[0, 40\) \(e.g. 45; -100 marks positions left out"),
], ids=["one_dimensional", "no_rows", "labels_outside_the_vocabulary"])
def test_the_translation_model_names_inputs_it_cannot_run_on(inputs, message):
    """They failed deep in torch: `labels have 1 rows, the source 3`, `cannot reshape tensor of 0 elements`,
    `index 45 is out of bounds` (on a GPU, a device-side assert)."""
    from conftest import tiny_transformer_config

    model = sf.ScratchTransformerForConditionalGeneration(tiny_transformer_config())
    with pytest.raises(ValueError, match=message):
        model(**inputs)
    model(input_ids=torch.tensor([[3, 4, 5]]), labels=torch.tensor([[3, 39, -100]]))  # -100 and the last id: fine


def test_ctrl_c_while_the_command_starts_exits_130_without_a_traceback(translator_dir, tmp_path):
    """Ctrl-C during the seconds of importing torch and transformers printed a 29-63 line traceback. (On a machine
    that imports faster, it lands while the command waits for stdin: status 130 and silence too.)"""
    command = [sys.executable, "-m", "scratchformers", "translate", str(translator_dir)]
    started = subprocess.Popen(command, cwd=tmp_path, env=script_env(tmp_path), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # inside the imports (they take seconds here)
    started.send_signal(signal.SIGINT)
    out, err = started.communicate(timeout=120)
    assert started.returncode == 130 and err == "" and out == "", err[-2000:]
