"""Save, load, share: safetensors + Auto classes after import, and trust_remote_code without the package."""

import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, BertConfig

import scratchformers as sf
from scratchformers.cli import main
from scratchformers.compat import CACHE_NAME

from _generation_utils import make_model
from conftest import run_without_package, tiny_transformer_config

# The last commit whose saved model code read only `past_key_values` (before transformers 5.24 renamed it `cache`).
PREVIOUS_RELEASE = "07c67ff"


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = sf.ScratchTransformerForConditionalGeneration(tiny_transformer_config()).eval()
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def test_save_pretrained_writes_safetensors_config_and_generation_config(saved):
    _, directory = saved
    files = set(os.listdir(directory))
    assert {"model.safetensors", "config.json", "generation_config.json"} <= files
    assert {"configuration_transformer.py", "modeling_transformer.py", "layers.py"} <= files
    config = json.load(open(directory / "config.json"))
    assert config["model_type"] == "scratch_transformer"
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_transformer.ScratchTransformerForConditionalGeneration"
    assert config["auto_map"]["AutoModel"] == "modeling_transformer.ScratchTransformerModel"
    assert json.load(open(directory / "generation_config.json"))["decoder_start_token_id"] == 1


def test_auto_classes_load_after_import(saved, padded_batch):
    model, directory = saved
    assert isinstance(AutoConfig.from_pretrained(directory), sf.ScratchTransformerConfig)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(directory).eval()
    assert type(loaded) is sf.ScratchTransformerForConditionalGeneration
    torch.testing.assert_close(loaded(**padded_batch).logits, model(**padded_batch).logits, atol=0, rtol=0)


def test_remote_code_in_a_process_without_the_package(saved, padded_batch, tmp_path):
    model, directory = saved
    torch.save(padded_batch, tmp_path / "batch.pt")
    run_without_package(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForSeq2SeqLM
        batch = torch.load({str(tmp_path / 'batch.pt')!r})
        model = AutoModelForSeq2SeqLM.from_pretrained({str(directory)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        bare = AutoModel.from_pretrained({str(directory)!r}, trust_remote_code=True)
        assert type(bare).__name__ == "ScratchTransformerModel"
        with torch.no_grad():
            logits = model(**batch).logits
        greedy = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=8)
        beam = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=8, num_beams=3)
        torch.save({{"logits": logits, "greedy": greedy, "beam": beam}}, {str(tmp_path / 'out.pt')!r})
        """,
        tmp_path,
    )
    remote = torch.load(tmp_path / "out.pt")
    inputs = dict(attention_mask=padded_batch["attention_mask"], max_new_tokens=8)
    with torch.no_grad():
        torch.testing.assert_close(remote["logits"], model(**padded_batch).logits, atol=0, rtol=0)
    assert torch.equal(remote["greedy"], model.generate(padded_batch["input_ids"], **inputs))
    assert torch.equal(remote["beam"], model.generate(padded_batch["input_ids"], num_beams=3, **inputs))


def test_missing_weights_give_a_clear_error(saved):
    _, directory = saved
    os.remove(directory / "model.safetensors")
    with pytest.raises(OSError, match="no file named model.safetensors"):
        AutoModelForSeq2SeqLM.from_pretrained(directory)


@pytest.mark.parametrize("auto_class", [AutoModelForSeq2SeqLM, AutoModel])
def test_weights_without_the_shared_embedding_are_refused(saved, auto_class):
    """transformers counts a tied weight as loaded when its partner is, so a checkpoint lacking the shared embedding
    itself loaded without a report and left the embeddings on the meta device."""
    _, directory = saved
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.shared.weight"]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(OSError, match=r"lack .*shared\.weight.*: the checkpoint is incomplete"):
        auto_class.from_pretrained(directory)


def _kernelized_modules(model) -> list[str]:
    """Modules whose forward is no longer their class's: what hub kernels would have replaced."""
    return [name for name, module in model.named_modules()
            if "forward" in vars(module) or getattr(module, "_kernel_funcs", None)]


def _hub_kernels_available() -> bool:
    from transformers.utils import is_kernels_available

    return is_kernels_available()


def test_loading_leaves_hub_kernels_off(saved):
    """transformers 5.25 kernelizes loaded models by default (our FeedForward's GELU/SiLU are kernel-replaceable on
    CUDA); our models load as saved, on every admitted release."""
    model, directory = saved
    for auto_class in (AutoModelForSeq2SeqLM, AutoModel):
        loaded = auto_class.from_pretrained(directory)
        assert loaded.use_kernels is False
        assert _kernelized_modules(loaded) == []


@pytest.mark.skipif(not _hub_kernels_available(), reason="no compatible `kernels` for this transformers release")
def test_hub_kernels_asked_for_change_nothing_on_the_cpu(saved, padded_batch, monkeypatch):
    """Offline on the CPU, `use_kernels=True` replaces nothing (the hub's GELU/SiLU kernels are CUDA/ROCm/XPU only)
    and reaches no network: same logits, the fast path's tokens unchanged."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, directory = saved
    reference = AutoModelForSeq2SeqLM.from_pretrained(directory, use_kernels=False)
    kernelized = AutoModelForSeq2SeqLM.from_pretrained(directory, use_kernels=True)
    assert kernelized.use_kernels is True and _kernelized_modules(kernelized) == []
    torch.testing.assert_close(kernelized(**padded_batch).logits, reference(**padded_batch).logits, atol=0, rtol=0)
    for implementation in ("reference", "fast"):
        reference.config.forward_implementation = kernelized.config.forward_implementation = implementation
        inputs = {"input_ids": padded_batch["input_ids"], "attention_mask": padded_batch["attention_mask"]}
        assert torch.equal(kernelized.generate(**inputs, num_beams=2, max_new_tokens=6),
                           reference.generate(**inputs, num_beams=2, max_new_tokens=6))


@pytest.mark.skipif(not _hub_kernels_available(), reason="no compatible `kernels` for this transformers release")
def test_incomplete_checkpoint_is_refused_before_kernelize(saved):
    """With kernels asked for, `kernelize` would meet the missing embedding first ('Unsupported device type meta')."""
    _, directory = saved
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.shared.weight"]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(OSError, match=r"lack .*shared\.weight.*: the checkpoint is incomplete"):
        AutoModelForSeq2SeqLM.from_pretrained(directory, use_kernels=True)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_weights_give_a_clear_error(saved, damage):
    _, directory = saved
    path = directory / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"not a safetensors file" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(OSError, match="weights in .* are corrupt or incomplete"):
        AutoModelForSeq2SeqLM.from_pretrained(directory)


def test_checkpoint_of_another_model_type_is_refused(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type='bert'"):
        sf.ScratchTransformerForConditionalGeneration.from_pretrained(tmp_path)


@pytest.fixture
def previous_release_checkpoint(tmp_path):
    """A checkpoint as the previous release saved it: today's weights and config, that release's model code."""
    repository = Path(__file__).resolve().parents[1]
    model = make_model(seed=0, init_std=0.5)
    directory = tmp_path / "previous"
    model.save_pretrained(directory)
    listing = subprocess.run(["git", "-C", str(repository), "ls-tree", "--name-only", PREVIOUS_RELEASE,
                              "src/scratchformers/"], capture_output=True, text=True)
    if listing.returncode:
        pytest.skip(f"needs the repository's git history (the code of {PREVIOUS_RELEASE}): {listing.stderr}")
    released = {Path(path).name for path in listing.stdout.split()}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".py") and name not in released:  # modules added since (compat.py, rewrites.py ...)
            os.remove(directory / name)
        elif name.endswith(".py"):
            old = subprocess.run(["git", "-C", str(repository), "show", f"{PREVIOUS_RELEASE}:src/scratchformers/{name}"],
                                 capture_output=True, text=True)
            if old.returncode:
                pytest.skip(f"needs the repository's git history (the code of {PREVIOUS_RELEASE}): {old.stderr}")
            (directory / name).write_text(old.stdout)
    return model, directory


def test_a_previous_release_checkpoint_loads_generates_and_upgrades(previous_release_checkpoint, tmp_path):
    model, directory = previous_release_checkpoint
    source = torch.tensor([[5, 6, 7, 8, 9, 10]])
    decode = dict(max_new_tokens=8, min_new_tokens=8)
    expected = model.generate(source, use_cache=False, **decode).tolist()

    with pytest.warns(UserWarning, match="predates transformers 5.24.*scratchformers upgrade"):
        loaded = AutoModelForSeq2SeqLM.from_pretrained(directory).eval()
    assert type(loaded) is sf.ScratchTransformerForConditionalGeneration  # the installed package's code
    assert loaded.generate(source, **decode).tolist() == expected

    remote = f"""
        import torch
        from transformers import AutoModelForSeq2SeqLM
        model = AutoModelForSeq2SeqLM.from_pretrained({str(directory)!r}, trust_remote_code=True).eval()
        print(model.generate(torch.tensor({source.tolist()}), max_new_tokens=8, min_new_tokens=8).tolist())
        """
    before = eval(run_without_package(remote, tmp_path).stdout)
    if CACHE_NAME == "cache":
        assert before != expected  # the old code never sees the renamed cache: each step decodes its last token alone
    else:
        assert before == expected

    assert main(["upgrade", str(directory)]) == 0
    assert (directory / "compat.py").is_file()
    assert eval(run_without_package(remote, tmp_path).stdout) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoModelForSeq2SeqLM.from_pretrained(directory)


def test_tokenizer_next_to_a_remote_code_model_loads_without_asking_again(tmp_path):
    """After AutoModel...(dir, trust_remote_code=True), AutoTokenizer.from_pretrained(dir) reads config.json again:
    the model type is known by then, so it does not ask "Do you wish to run the custom code?"."""
    from translation_fixtures import save_translation_model

    directory = save_translation_model(tmp_path / "model")
    result = run_without_package(
        f"""
        import builtins
        asked = []
        builtins.input = lambda *args: asked.append(args) or "n"
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        AutoModelForSeq2SeqLM.from_pretrained({str(directory)!r}, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained({str(directory)!r})
        print(len(asked), len(tokenizer))
        """,
        tmp_path,
    )
    asked, vocab = result.stdout.split()
    assert asked == "0" and int(vocab) > 0


def test_the_later_papers_variants_load_with_trust_remote_code_where_the_package_is_absent(padded_batch, tmp_path):
    """Rotary positions, SwiGLU, qk-norm and grouped-query attention together, in both models: the saved code
    computes what the package computes (greedy with the cache, and the ViT's logits)."""
    from vit_fixtures import pixels, tiny_vit

    torch.manual_seed(0)
    variants = dict(position_embedding="rotary", qk_norm=True, num_key_value_heads=2)
    seq2seq = sf.ScratchTransformerForConditionalGeneration(
        tiny_transformer_config(activation_function="swiglu", **variants)).eval()
    vit = tiny_vit(activation_function="swiglu", **variants)
    seq2seq.save_pretrained(tmp_path / "seq2seq")
    vit.save_pretrained(tmp_path / "vit")
    torch.save({"batch": padded_batch, "pixels": pixels()}, tmp_path / "inputs.pt")
    run_without_package(f"""
        import torch
        from transformers import AutoModelForImageClassification, AutoModelForSeq2SeqLM
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        batch = inputs["batch"]
        seq2seq = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path / 'seq2seq')!r}, trust_remote_code=True).eval()
        vit = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'vit')!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            out = {{"tokens": seq2seq.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                                               max_new_tokens=6), "logits": vit(inputs["pixels"]).logits}}
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """, tmp_path)
    remote = torch.load(tmp_path / "out.pt")
    expected = seq2seq.generate(padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"], max_new_tokens=6)
    assert torch.equal(remote["tokens"], expected)
    with torch.no_grad():
        torch.testing.assert_close(remote["logits"], vit(pixels()).logits, atol=1e-6, rtol=0)


def test_package_modules_import_their_siblings_as_from_x_import():
    """A checkpoint carries the modules its code names in ``from .x import ...``; transformers 5.21 does not see
    ``from . import x``, so a saved checkpoint would lack ``x.py`` there."""
    import re

    package = Path(sf.__file__).parent
    offenders = [f"{path.name}:{number}" for path in sorted(package.glob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.match(r"\s*from \.+ import ", line)]
    assert offenders == []
