"""TranslationPipeline: transformers 4 return shapes, generate pass-through, truncation, empty input, and loading
from a saved checkpoint in a process that cannot import scratchformers."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import pipeline

import scratchformers as sf
from translation_fixtures import SOURCES, make_translation_model, run_python, save_translation_model


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return make_translation_model()


@pytest.fixture(scope="module")
def translator(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    return pipeline("translation", model=model, tokenizer=tokenizer, device="cpu")


def generate_ids(model, tokenizer, text: str, **kwargs) -> list[int]:
    """What model.generate returns for ``text``, without the decoder start token and the padding after EOS."""
    encoded = tokenizer(text, return_tensors="pt")
    ids = model.generate(**encoded, **kwargs)[0, 1:].tolist()
    return [i for i in ids if i != tokenizer.pad_token_id]


def pipeline_ids(translator, text: str, **kwargs) -> list[int]:
    ids = translator(text, return_tensors=True, **kwargs)[0]["translation_token_ids"][1:].tolist()
    return [i for i in ids if i != translator.tokenizer.pad_token_id]


# ----------------------------------------------------------------------------------------------------------------
# Registration and return shapes (those of transformers 4)
# ----------------------------------------------------------------------------------------------------------------
def test_translation_task_is_registered(translator):
    assert isinstance(translator, sf.TranslationPipeline)


@pytest.mark.parametrize("task, languages", [("translation_en_to_de", ("en", "de")), ("translation_fr_to_es", ("fr", "es"))])
def test_translation_xx_to_yy_task_names_set_the_languages(model_and_tokenizer, translator, task, languages):
    model, tokenizer = model_and_tokenizer
    aliased = pipeline(task, model=model, tokenizer=tokenizer, device="cpu")
    assert isinstance(aliased, sf.TranslationPipeline) and (aliased.src_lang, aliased.tgt_lang) == languages
    assert aliased(SOURCES) == translator(SOURCES)
    assert (translator.src_lang, translator.tgt_lang) == (None, None)
    overridden = pipeline(task, model=model, tokenizer=tokenizer, device="cpu", tgt_lang="it")
    assert (overridden.src_lang, overridden.tgt_lang) == (languages[0], "it")


def test_unknown_tasks_are_still_refused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(KeyError, match="Unknown task translation_en_de"):
        pipeline("translation_en_de", model=model, tokenizer=tokenizer)


def test_string_gives_a_list_with_one_dict(translator):
    result = translator(SOURCES[0], max_new_tokens=5)
    assert isinstance(result, list) and len(result) == 1
    assert set(result[0]) == {"translation_text"} and isinstance(result[0]["translation_text"], str)


def test_list_gives_one_dict_per_input(translator):
    result = translator(SOURCES, max_new_tokens=5)
    assert [type(r) for r in result] == [dict] * len(SOURCES)
    assert result == [translator(text, max_new_tokens=5)[0] for text in SOURCES]
    assert translator(tuple(SOURCES), max_new_tokens=5) == result
    assert translator([]) == []


def test_num_return_sequences_shapes(translator):
    single = translator(SOURCES[0], max_new_tokens=5, num_beams=3, num_return_sequences=2)
    assert len(single) == 2 and all(set(r) == {"translation_text"} for r in single)
    several = translator(SOURCES[:2], max_new_tokens=5, num_beams=3, num_return_sequences=2)
    assert [len(candidates) for candidates in several] == [2, 2]
    assert several[0] == single


def test_batch_size_gives_the_same_translations(translator):
    one_by_one = translator(SOURCES, max_new_tokens=8, return_tensors=True)
    batched = translator(SOURCES, max_new_tokens=8, return_tensors=True, batch_size=3)
    for a, b in zip(one_by_one, batched):
        a, b = a["translation_token_ids"], b["translation_token_ids"]
        assert b[: len(a)].tolist() == a.tolist() and (b[len(a):] == 0).all()  # b may carry padding after EOS


# ----------------------------------------------------------------------------------------------------------------
# Generation keyword arguments reach model.generate
# ----------------------------------------------------------------------------------------------------------------
def test_greedy_and_beam_equal_model_generate(model_and_tokenizer, translator):
    model, tokenizer = model_and_tokenizer
    differs = False
    for text in SOURCES:
        greedy = pipeline_ids(translator, text, max_new_tokens=8)
        beam = pipeline_ids(translator, text, max_new_tokens=8, num_beams=4)
        assert greedy == generate_ids(model, tokenizer, text, max_new_tokens=8)
        assert beam == generate_ids(model, tokenizer, text, max_new_tokens=8, num_beams=4)
        differs |= greedy != beam
    assert differs, "num_beams did not reach generate: beam search returned greedy's output for every input"
    text = translator(SOURCES[0], max_new_tokens=8, num_beams=4)[0]["translation_text"]
    assert text == tokenizer.decode(generate_ids(model, tokenizer, SOURCES[0], max_new_tokens=8, num_beams=4),
                                    skip_special_tokens=True)


def test_sampling_kwargs_pass_through(model_and_tokenizer, translator):
    model, tokenizer = model_and_tokenizer
    kwargs = dict(do_sample=True, top_p=0.9, top_k=20, temperature=1.5, max_new_tokens=8)
    torch.manual_seed(1)
    sampled = pipeline_ids(translator, SOURCES[1], **kwargs)
    torch.manual_seed(1)
    assert sampled == generate_ids(model, tokenizer, SOURCES[1], **kwargs)


def test_generate_kwargs_at_construction_and_call_override(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    beam = pipeline("translation", model=model, tokenizer=tokenizer, device="cpu", num_beams=4, max_new_tokens=8)
    for text in SOURCES:
        assert pipeline_ids(beam, text) == generate_ids(model, tokenizer, text, num_beams=4, max_new_tokens=8)
        assert pipeline_ids(beam, text, num_beams=1) == generate_ids(model, tokenizer, text, max_new_tokens=8)


def test_default_length_limit_is_the_position_table(model_and_tokenizer, translator):
    """Not generate()'s global 20 tokens: without a length setting the decoder may fill its position table."""
    model, tokenizer = model_and_tokenizer
    limit = model.config.max_position_embeddings
    for text in SOURCES:
        assert pipeline_ids(translator, text) == generate_ids(model, tokenizer, text, max_length=limit)


# ----------------------------------------------------------------------------------------------------------------
# Over-long and empty inputs
# ----------------------------------------------------------------------------------------------------------------
def test_long_input_is_truncated_with_a_warning(model_and_tokenizer, translator):
    model, tokenizer = model_and_tokenizer
    limit = model.config.max_position_embeddings
    long_text = " ".join(SOURCES * 4)
    assert len(tokenizer(long_text)["input_ids"]) > limit
    with pytest.warns(UserWarning, match=f"truncated to {limit} tokens"):
        ids = pipeline_ids(translator, long_text, max_new_tokens=6)
    truncated = tokenizer(long_text, truncation=True, max_length=limit, return_tensors="pt")
    assert truncated["input_ids"].shape[1] == limit and truncated["input_ids"][0, -1] == tokenizer.eos_token_id
    expected = model.generate(**truncated, max_new_tokens=6)[0, 1:].tolist()
    assert ids == [i for i in expected if i != tokenizer.pad_token_id]


def test_truncation_false_gives_the_model_error(translator):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        translator(" ".join(SOURCES * 4), truncation=False, max_new_tokens=3)


def test_empty_string_gives_empty_translation(translator):
    assert translator("") == [{"translation_text": ""}]
    assert translator("   ", max_new_tokens=4) == [{"translation_text": ""}]
    mixed = translator([SOURCES[0], "", SOURCES[1]], max_new_tokens=5, batch_size=2)
    assert mixed[1] == {"translation_text": ""}
    assert [mixed[0], mixed[2]] == translator([SOURCES[0], SOURCES[1]], max_new_tokens=5)


# ----------------------------------------------------------------------------------------------------------------
# Saved checkpoints carry the pipeline
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_translation_model(tmp_path_factory.mktemp("translation") / "model")


def test_saved_checkpoint_declares_the_pipeline_like_pipeline_save_pretrained(model_dir, translator, tmp_path):
    """model.save_pretrained writes the same custom_pipelines entry and code files as the pipeline's own save."""
    translator.save_pretrained(tmp_path / "from_pipeline")
    ours = json.loads((model_dir / "config.json").read_text())
    theirs = json.loads((tmp_path / "from_pipeline" / "config.json").read_text())
    assert ours["custom_pipelines"] == theirs["custom_pipelines"] == {
        "translation": {"impl": "pipeline_translation.TranslationPipeline", "pt": ["AutoModelForSeq2SeqLM"]}
    }
    code_files = {p.name for p in model_dir.glob("*.py")}
    assert code_files == {p.name for p in (tmp_path / "from_pipeline").glob("*.py")}
    assert "pipeline_translation.py" in code_files and "modeling_transformer.py" in code_files


def test_models_without_remote_pipelines_write_none(tmp_path):
    """The mechanism is opt-in per model class: the ViT declares no pipeline and its checkpoint carries none."""
    config = sf.ScratchViTConfig(image_size=16, patch_size=8, d_model=16, num_layers=1, num_heads=2, ffn_dim=32)
    sf.ScratchViTModel(config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "custom_pipelines" not in saved and saved["auto_map"]["AutoModel"] == "modeling_vit.ScratchViTModel"
    assert not (tmp_path / "pipeline_translation.py").exists()


def test_push_to_hub_sends_the_pipeline_code(model_and_tokenizer, tmp_path, monkeypatch):
    """transformers uploads only the files its own save writes, so the mixin pushes after copying the code."""
    model, _ = model_and_tokenizer
    pushes = []

    def fake_push(repo_id, **kwargs):
        pushes.append((repo_id, kwargs, sorted(path.name for path in (tmp_path / "repo").iterdir())))

    monkeypatch.setattr(model, "push_to_hub", fake_push)
    model.save_pretrained(tmp_path / "repo", push_to_hub=True, commit_message="first", token="secret")
    assert len(pushes) == 1
    repo_id, kwargs, files = pushes[0]
    assert repo_id == "repo" and kwargs == {"commit_message": "first", "token": "secret"}
    assert {"pipeline_translation.py", "config.json", "model.safetensors"} <= set(files)


def test_in_process_loading_from_directory(model_dir):
    """With the package imported, the directory's pipeline loads with trust_remote_code=True (transformers asks
    for it for every pipeline a checkpoint declares) and translates like the registered class."""
    remote = pipeline("translation", model=str(model_dir), trust_remote_code=True, device="cpu")
    model = sf.ScratchTransformerForConditionalGeneration.from_pretrained(model_dir)
    local = sf.TranslationPipeline(model=model, tokenizer=remote.tokenizer, device="cpu")
    assert remote(SOURCES, max_new_tokens=6) == local(SOURCES, max_new_tokens=6)
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline("translation", model=str(model_dir))


FRESH_PROCESS = """
    import json, os
    from transformers import pipeline
    try:
        import scratchformers
        raise SystemExit("scratchformers must not be importable here")
    except ImportError:
        pass
    model_dir, sources = {model_dir!r}, {sources!r}
    by_task = pipeline("translation", model=model_dir, trust_remote_code=True, device="cpu")
    by_config = pipeline(model=model_dir, trust_remote_code=True, device="cpu")
    assert type(by_task).__module__.startswith("transformers_modules"), type(by_task).__module__
    assert type(by_config).__name__ == "TranslationPipeline" and by_config.task == "translation"
    by_task.model.save_pretrained("resaved")  # a remotely loaded model still writes a complete checkpoint
    print(json.dumps({{
        "task": [by_task(sources, max_new_tokens=6), by_task(sources[0], num_beams=3, max_new_tokens=6)],
        "config": [by_config(sources, max_new_tokens=6), by_config(sources[0], num_beams=3, max_new_tokens=6)],
        "resaved": sorted(os.listdir("resaved")),
    }}))
"""


def test_fresh_process_without_the_package(model_dir, tmp_path):
    result = run_python(FRESH_PROCESS.format(model_dir=str(model_dir), sources=SOURCES), tmp_path,
                        without_package=True)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])

    model = sf.ScratchTransformerForConditionalGeneration.from_pretrained(model_dir)
    local = sf.TranslationPipeline(model=model, tokenizer=pipeline_tokenizer(model_dir), device="cpu")
    expected = [local(SOURCES, max_new_tokens=6), local(SOURCES[0], num_beams=3, max_new_tokens=6)]
    assert outputs["task"] == expected
    assert outputs["config"] == expected
    assert {"pipeline_translation.py", "config.json", "model.safetensors"} <= set(outputs["resaved"])


def pipeline_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_diverse_and_constrained_beam_search_run_through_the_pipeline(model_and_tokenizer, translator):
    model, tokenizer = model_and_tokenizer
    diverse = dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, max_new_tokens=6)
    assert pipeline_ids(translator, SOURCES[0], **diverse) == generate_ids(model, tokenizer, SOURCES[0], **diverse)
    forced = tokenizer(" dog", add_special_tokens=False).input_ids
    ids = pipeline_ids(translator, SOURCES[0], num_beams=3, force_words_ids=[forced], max_new_tokens=8)
    assert any(ids[i : i + len(forced)] == forced for i in range(len(ids)))


# ----------------------------------------------------------------------------------------------------------------
# Precision: the model's dtype on every CPU, bf16 autocast only when asked
# ----------------------------------------------------------------------------------------------------------------
def forward_precisions(model, run) -> set[tuple[bool, torch.dtype]]:
    """(autocast on, logits dtype) of every forward of ``model`` while ``run()`` runs."""
    seen = set()
    handle = model.register_forward_hook(
        lambda module, args, output: seen.add((torch.is_autocast_enabled("cpu"), output.logits.dtype)))
    try:
        run()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("flags", [[], ["avx512_bf16"], ["amx_bf16", "amx_tile"]], ids=["none", "avx512", "amx"])
def test_generation_runs_in_the_models_dtype_on_any_cpu(model_and_tokenizer, translator, cpu_flags, flags):
    model, tokenizer = model_and_tokenizer
    cpu_flags(*flags)  # no SCRATCHFORMERS_BF16 either
    assert forward_precisions(model, lambda: translator(SOURCES[0], max_new_tokens=4)) == {(False, torch.float32)}
    one_by_one = [pipeline_ids(translator, text, max_new_tokens=8) for text in SOURCES]
    batched = translator(SOURCES, max_new_tokens=8, return_tensors=True, batch_size=len(SOURCES))
    assert [[i for i in row["translation_token_ids"][1:].tolist() if i != tokenizer.pad_token_id]
            for row in batched] == one_by_one
    assert one_by_one[0] == generate_ids(model, tokenizer, SOURCES[0], max_new_tokens=8)


def test_autocast_bf16_true_asks_for_bf16_at_construction_or_call(model_and_tokenizer, translator, cpu_flags):
    model, tokenizer = model_and_tokenizer
    cpu_flags()  # also where bf16 is emulated: the caller asked
    assert forward_precisions(model, lambda: translator(SOURCES[0], max_new_tokens=4, autocast_bf16=True)) == {
        (True, torch.bfloat16)}
    bf16 = pipeline("translation", model=model, tokenizer=tokenizer, device="cpu", autocast_bf16=True)
    assert forward_precisions(model, lambda: bf16(SOURCES[0], max_new_tokens=4)) == {(True, torch.bfloat16)}
    assert forward_precisions(model, lambda: bf16(SOURCES[0], max_new_tokens=4, autocast_bf16=False)) == {
        (False, torch.float32)}  # a call's value wins over the construction's
    assert not torch.is_autocast_enabled("cpu")  # only inside generate
