"""train_tokenizer: a joint byte-level BPE tokenizer that round-trips every script exactly."""

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from scratchformers import train_tokenizer
from scratchformers.tokenization import check_tokenizer_matches

from conftest import tiny_transformer_config

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux, n'est-ce pas ?",
    "敏捷的棕色狐狸跳过了懒狗。",
    "I ❤️ pizza 🍕 and 🤗 transformers!",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(SENTENCES * 10, vocab_size=400)


@pytest.mark.parametrize("text", SENTENCES + ["  two  spaces  and a tab\t", "Ünïcödé straße", ""])
def test_decode_encode_is_the_identity(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id not in ids


def test_special_token_ids_match_the_config_defaults(tokenizer):
    config = tiny_transformer_config(vocab_size=len(tokenizer))
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert (config.pad_token_id, config.decoder_start_token_id, config.eos_token_id) == (0, 1, 2)
    check_tokenizer_matches(tokenizer, config)


def test_text_target_gives_labels(tokenizer):
    batch = tokenizer(SENTENCES[:2], text_target=SENTENCES[1:3])
    assert len(batch["labels"]) == 2
    assert batch["labels"][0] == tokenizer(SENTENCES[1]).input_ids
    assert batch["input_ids"][0] == tokenizer(SENTENCES[0]).input_ids


def test_save_and_auto_tokenizer_round_trip(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in SENTENCES:
        assert loaded(text).input_ids == tokenizer(text).input_ids
        assert loaded.decode(loaded(text).input_ids, skip_special_tokens=True) == text


def test_mismatched_tokenizer_and_model_are_refused(tokenizer):
    with pytest.raises(ValueError, match=f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is 40"):
        check_tokenizer_matches(tokenizer, tiny_transformer_config())
    with pytest.raises(ValueError, match="pad_token_id=0 differs from the model config's pad_token_id=5"):
        check_tokenizer_matches(tokenizer, tiny_transformer_config(vocab_size=len(tokenizer), pad_token_id=5))


def test_too_small_vocabulary_is_refused():
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_tokenizer(SENTENCES, vocab_size=100)
