"""`export ct2`: a CTranslate2 model that computes what ours computes (log-probabilities, greedy and beam search
translations), the configurations it refuses, its output directory rules and the CLI subcommand."""

from __future__ import annotations

import functools
import json
import sys

import ctranslate2
import pytest
import torch
from transformers import AutoTokenizer, BertConfig

import scratchformers as sf
from scratchformers.cli import main
from scratchformers.export_ct2 import check_exportable, export_ct2
from translation_fixtures import SOURCES, corpus, make_translation_model, save_translation_model

MAX_NEW_TOKENS = 16
EOS = 2
INPUTS = SOURCES + ["the old dog sang", "le chat rouge a dormi", "a", "the big big red cat ran home", "dog"]
PAIRS = [("the red cat sat", "le chat rouge a dormi"), (SOURCES[2], SOURCES[2]), ("a big dog ran home", "the dog")]

VARIANTS = {
    "post-sinusoidal-relu-tied": {},
    "pre-learned-gelu-untied-output_bias": dict(norm_position="pre", position_embedding="learned",
                                                activation_function="gelu", tie_word_embeddings=False,
                                                output_bias=True),
    "post-learned-silu-untied-start_eos": dict(position_embedding="learned", activation_function="silu",
                                               tie_word_embeddings=False, decoder_start_token_id=EOS),
    "pre-sinusoidal-unscaled-no_qkv_bias-output_bias": dict(norm_position="pre", scale_embedding=False,
                                                            attention_bias=False, output_bias=True,
                                                            layer_norm_eps=1e-3, init_std=0.5),
    "rmsnorm-pre-rotary-swiglu-gqa": dict(norm_type="rmsnorm", norm_position="pre", position_embedding="rotary",
                                          activation_function="swiglu", num_key_value_heads=2),
    "rmsnorm-post-geglu-heads_2_8": dict(norm_type="rmsnorm", activation_function="geglu",
                                         encoder_attention_heads=2, decoder_attention_heads=8),
}


@functools.lru_cache(maxsize=None)
def trained_model(variant: str) -> tuple[sf.ScratchTransformerForConditionalGeneration, object]:
    """A tiny model of ``variant`` trained for a few steps to copy its input, so that translations look trained
    (varied, most ending with </s>) rather than one token repeated. Norm scales and biases are first moved away
    from their initial ones and zeros, so that a norm or bias mapped wrongly changes the results."""
    model, tokenizer = make_translation_model(**{"init_std": 0.05, **VARIANTS[variant]})
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    texts = corpus()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(80):
        batch = [texts[i] for i in torch.randint(len(texts), (16,), generator=generator).tolist()]
        encoded = tokenizer(batch, text_target=batch, return_tensors="pt", padding=True)
        encoded["labels"][encoded["labels"] == tokenizer.pad_token_id] = -100
        loss = model(**encoded).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer


def exported(variant: str, directory: str) -> ctranslate2.Translator:
    model, tokenizer = trained_model(variant)
    export_ct2(model, directory, tokenizer=tokenizer)
    return ctranslate2.Translator(directory, device="cpu", intra_threads=1)


def tokens(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)


def ours(model, tokenizer, texts: list[str], **generate_kwargs) -> list[list[int]]:
    """Our translations of ``texts`` (one padded batch): the generated ids after the start token, up to </s>."""
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        rows = model.generate(**encoded, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, **generate_kwargs).tolist()
    return [row[1:][: row[1:].index(EOS)] if EOS in row[1:] else row[1:] for row in rows]


def theirs(translator, tokenizer, texts: list[str], **translate_kwargs) -> list[list[int]]:
    """CTranslate2's translations of ``texts``: the best hypothesis' ids, without a final </s>."""
    results = translator.translate_batch([tokens(tokenizer, text) for text in texts], min_decoding_length=0,
                                         max_decoding_length=MAX_NEW_TOKENS, **translate_kwargs)
    hypotheses = [tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]
    return [ids[:-1] if ids and ids[-1] == EOS else ids for ids in hypotheses]


# ----------------------------------------------------------------------------------------------------------------
# Same computation, same translations
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_log_probabilities_equal_ours(variant, tmp_path):
    """Teacher-forced log-probabilities of every target token (and </s>) agree to float rounding."""
    model, tokenizer = trained_model(variant)
    translator = exported(variant, str(tmp_path))
    for source, target in PAIRS:
        encoded = tokenizer(source, text_target=target, return_tensors="pt")
        with torch.no_grad():
            logits = model(**encoded).logits[0]
        expected = torch.log_softmax(logits, -1).gather(-1, encoded["labels"][0][:, None]).squeeze(-1)
        target_tokens = tokenizer.convert_ids_to_tokens(encoded["labels"][0][:-1])  # CTranslate2 adds the </s>
        (result,) = translator.score_batch([tokens(tokenizer, source)], [target_tokens])
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_and_beam_translations_equal_ours(variant, tmp_path):
    model, tokenizer = trained_model(variant)
    translator = exported(variant, str(tmp_path))
    greedy = ours(model, tokenizer, INPUTS, num_beams=1)
    assert theirs(translator, tokenizer, INPUTS, beam_size=1) == greedy
    # The model decodes like a trained one: not one translation for every input, most end with </s>.
    assert len(set(map(tuple, greedy))) > len(INPUTS) // 2
    assert sum(len(ids) < MAX_NEW_TOKENS for ids in greedy) > len(INPUTS) // 2
    # Beam search, in the two settings where the libraries' searches coincide (see export_ct2's docstring).
    assert theirs(translator, tokenizer, INPUTS, beam_size=4, length_penalty=0.0) == \
        ours(model, tokenizer, INPUTS, num_beams=4, length_penalty=0.0)
    assert theirs(translator, tokenizer, INPUTS, beam_size=3, length_penalty=0.6, return_end_token=True) == \
        ours(model, tokenizer, INPUTS, num_beams=3, length_penalty=0.6, early_stopping=True)


def test_special_tokens_and_vocabulary(tmp_path):
    model, tokenizer = trained_model("post-learned-silu-untied-start_eos")
    exported("post-learned-silu-untied-start_eos", str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["decoder_start_token"] == "</s>" and config["eos_token"] == "</s>"
    assert config["unk_token"] == "<unk>" and config["layer_norm_epsilon"] == model.config.layer_norm_eps
    vocabulary = json.loads((tmp_path / "shared_vocabulary.json").read_text())
    assert vocabulary == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    # The tokenizer is saved with the model: the directory serves on its own.
    assert AutoTokenizer.from_pretrained(tmp_path)("the red cat").input_ids == tokenizer("the red cat").input_ids


def test_vocabulary_padded_past_the_tokenizer(tmp_path):
    """Embedding rows the tokenizer has no token for get placeholder tokens, so the sizes agree."""
    _, tokenizer = make_translation_model()
    model, _ = make_translation_model(vocab_size=len(tokenizer) + 3)
    export_ct2(model, tmp_path, tokenizer=tokenizer)
    vocabulary = json.loads((tmp_path / "shared_vocabulary.json").read_text())
    assert len(vocabulary) == len(tokenizer) + 3 and len(set(vocabulary)) == len(vocabulary)
    assert vocabulary[-3:] == [f"<unused_{i}>" for i in range(len(tokenizer), len(tokenizer) + 3)]
    translator = ctranslate2.Translator(str(tmp_path), device="cpu", intra_threads=1)
    assert theirs(translator, tokenizer, SOURCES, beam_size=1) == ours(model, tokenizer, SOURCES)


def test_from_a_directory_equals_from_the_model(tmp_path):
    model_dir = save_translation_model(tmp_path / "model")
    export_ct2(model_dir, tmp_path / "from_dir")
    model, tokenizer = make_translation_model()
    export_ct2(model, tmp_path / "from_model", tokenizer=tokenizer)
    for name in ("model.bin", "config.json", "shared_vocabulary.json"):
        assert (tmp_path / "from_dir" / name).read_bytes() == (tmp_path / "from_model" / name).read_bytes()
    # A model loaded from its directory finds its tokenizer there.
    loaded = sf.ScratchTransformerForConditionalGeneration.from_pretrained(model_dir)
    export_ct2(loaded, tmp_path / "loaded")
    assert (tmp_path / "loaded" / "model.bin").read_bytes() == (tmp_path / "from_dir" / "model.bin").read_bytes()


def test_int8_quantization_leaves_the_model_alone(tmp_path):
    model, tokenizer = trained_model("post-sinusoidal-relu-tied")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    export_ct2(model, tmp_path / "int8", tokenizer=tokenizer, quantization="int8")
    # CTranslate2 quantizes the arrays it is given in place: the export hands it copies.
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    export_ct2(model, tmp_path / "fp32", tokenizer=tokenizer)
    assert (tmp_path / "int8" / "model.bin").stat().st_size < 0.6 * (tmp_path / "fp32" / "model.bin").stat().st_size
    translator = ctranslate2.Translator(str(tmp_path / "int8"), device="cpu", compute_type="int8", intra_threads=1)
    translations = theirs(translator, tokenizer, INPUTS, beam_size=1)
    assert len(translations) == len(INPUTS) and all(len(ids) <= MAX_NEW_TOKENS for ids in translations)
    with pytest.raises(ValueError, match="quantization='int4' is not a CTranslate2 weight type; supported: int8"):
        export_ct2(model, tmp_path / "int4", tokenizer=tokenizer, quantization="int4")


# ----------------------------------------------------------------------------------------------------------------
# Refused
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    (dict(attention_scoring="additive", attn_implementation="eager"),
     "attention_scoring='additive' is not an attention CTranslate2 computes; supported: 'scaled_dot'."),
    (dict(qk_norm=True, norm_type="rmsnorm"), "qk_norm=True (per-head query/key norms) is not computed as ours by "
                                              "CTranslate2's encoder-decoder Transformer; supported: False."),
    (dict(eos_token_id=[2, 3]), "eos_token_id=[2, 3] is not one token, and a CTranslate2 model has one end token; "
                                "supported: a single token id."),
    (dict(decoder_start_token_id=None), "decoder_start_token_id=None leaves the decoder without a start token; "
                                        "supported: a token id (usually bos)."),
], ids=["additive", "qk_norm", "two_eos", "no_start"])
def test_what_ctranslate2_cannot_compute_is_refused(overrides, message, tmp_path):
    model, tokenizer = make_translation_model(**overrides)
    with pytest.raises(ValueError) as error:
        export_ct2(model, tmp_path / "out", tokenizer=tokenizer)
    assert str(error.value) == f"Cannot export to CTranslate2: {message}"
    assert not (tmp_path / "out").exists()


def test_config_edited_after_construction_is_checked():
    """A config that skipped validation (edited in place) is still refused by name."""
    config = sf.ScratchTransformerConfig(vocab_size=300, d_model=32, encoder_layers=1, decoder_layers=1,
                                         encoder_attention_heads=4, decoder_attention_heads=4, ffn_dim=64)
    config.activation_function = "tanh"
    with pytest.raises(ValueError, match="activation_function='tanh' has no CTranslate2 counterpart; supported: 're"):
        check_exportable(config)


def test_other_models_and_directories_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        export_ct2(tmp_path, tmp_path / "out")
    BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(ValueError, match="holds a bert model, not a scratchformers translation model"):
        export_ct2(tmp_path / "bert", tmp_path / "out")
    vit = sf.ScratchViTForImageClassification(sf.ScratchViTConfig(image_size=16, patch_size=8, d_model=16,
                                                                  num_layers=1, num_heads=2, ffn_dim=16))
    with pytest.raises(ValueError, match="only scratchformers translation models export"):
        export_ct2(vit, tmp_path / "out")
    model, _ = make_translation_model()
    with pytest.raises(ValueError, match="needs its tokenizer: pass tokenizer="):
        export_ct2(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_without_ctranslate2_says_how_to_install_it(tmp_path, monkeypatch):
    for name in ("ctranslate2", "ctranslate2.converters", "ctranslate2.specs"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    model, tokenizer = make_translation_model()
    with pytest.raises(ImportError, match=r"needs the ctranslate2 package, which is not installed: pip install "
                                          r"'scratchformers\[ct2\]'"):
        export_ct2(model, tmp_path / "out", tokenizer=tokenizer)


# ----------------------------------------------------------------------------------------------------------------
# The output directory: never overwritten without overwrite=True
# ----------------------------------------------------------------------------------------------------------------
def test_a_non_empty_directory_is_refused_without_overwrite(tmp_path):
    model, tokenizer = make_translation_model()
    out = tmp_path / "out"
    out.mkdir()
    export_ct2(model, out, tokenizer=tokenizer)  # an empty directory is fine
    first = (out / "model.bin").read_bytes()
    (out / "notes.txt").write_text("mine")
    other, _ = make_translation_model(norm_position="pre")
    with pytest.raises(FileExistsError, match="is not empty: choose another directory, or pass overwrite=True"):
        export_ct2(other, out, tokenizer=tokenizer)
    assert (out / "model.bin").read_bytes() == first
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        export_ct2(other, tmp_path / "file", tokenizer=tokenizer)


def test_overwrite_replaces_the_model_and_keeps_other_files(tmp_path):
    model, tokenizer = make_translation_model()
    out = tmp_path / "out"
    export_ct2(model, out, tokenizer=tokenizer)
    (out / "notes.txt").write_text("mine")
    (out / "source_vocabulary.json").write_text("[]")  # an older export's file that CTranslate2 would read
    other, _ = make_translation_model(norm_position="pre")
    export_ct2(other, out, tokenizer=tokenizer, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "source_vocabulary.json").exists()
    export_ct2(other, tmp_path / "fresh", tokenizer=tokenizer)
    assert (out / "model.bin").read_bytes() == (tmp_path / "fresh" / "model.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "out"]  # no staging directory left behind
    # A refused export, even with overwrite, leaves the directory as it was.
    bad, _ = make_translation_model(qk_norm=True, norm_type="rmsnorm")
    with pytest.raises(ValueError, match="qk_norm"):
        export_ct2(bad, out, tokenizer=tokenizer, overwrite=True)
    assert (out / "model.bin").read_bytes() == (tmp_path / "fresh" / "model.bin").read_bytes()


# ----------------------------------------------------------------------------------------------------------------
# `scratchformers export ct2`
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_translation_model(tmp_path_factory.mktemp("export") / "translator")


def run_main(args: list, capsys) -> tuple[int, str, str]:
    status = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_error_line(err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scratchformers: error: "), err
    assert fragment in lines[0], lines[0]


def test_cli_exports_what_the_function_exports(model_dir, tmp_path, capsys):
    status, out, err = run_main(["export", "ct2", model_dir, tmp_path / "cli"], capsys)
    assert (status, err) == (0, "")
    assert out == f"{tmp_path / 'cli'}: wrote a CTranslate2 model (float32)\n"
    export_ct2(model_dir, tmp_path / "api")
    for name in ("model.bin", "config.json", "shared_vocabulary.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes()
    model = sf.ScratchTransformerForConditionalGeneration.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    translator = ctranslate2.Translator(str(tmp_path / "cli"), device="cpu", intra_threads=1)
    assert theirs(translator, tokenizer, SOURCES, beam_size=1) == ours(model, tokenizer, SOURCES)

    status, out, err = run_main(["export", "ct2", model_dir, tmp_path / "cli", "--quantization", "int8"], capsys)
    assert status == 2 and out == ""
    assert_one_error_line(err, f"'{tmp_path / 'cli'}' is not empty: choose another directory, or pass overwrite=True "
                               "(--overwrite)")
    status, out, err = run_main(["export", "ct2", model_dir, tmp_path / "cli", "--quantization", "int8",
                                 "--overwrite"], capsys)
    assert (status, err) == (0, "") and out.endswith("(int8)\n")
    assert (tmp_path / "cli" / "model.bin").stat().st_size < (tmp_path / "api" / "model.bin").stat().st_size


def test_cli_errors_are_one_line(model_dir, tmp_path, capsys, monkeypatch):
    BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    unsupported = save_translation_model(tmp_path / "qk_norm", qk_norm=True, norm_type="rmsnorm")
    cases = [
        (["export", "ct2", tmp_path / "missing", tmp_path / "o"], "does not exist"),
        (["export", "ct2", tmp_path / "bert", tmp_path / "o"], "holds a bert model, not a scratchformers translation "
                                                                "model"),
        (["export", "ct2", unsupported, tmp_path / "o"], "Cannot export to CTranslate2: qk_norm=True"),
        (["export", "ct2", model_dir, tmp_path / "o", "--quantization", "int3"], "quantization='int3' is not a "
                                                                                 "CTranslate2 weight type"),
    ]
    for args, fragment in cases:
        status, out, err = run_main(args, capsys)
        assert status == 2 and out == "", args
        assert_one_error_line(err, fragment)
    assert not (tmp_path / "o").exists()
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    status, out, err = run_main(["export", "ct2", model_dir, tmp_path / "o"], capsys)
    assert status == 2
    assert_one_error_line(err, "needs the ctranslate2 package, which is not installed: pip install "
                               "'scratchformers[ct2]'")
