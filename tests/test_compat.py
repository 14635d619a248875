"""compat: the cache name of the installed transformers, the deprecated alias, and a cache under a name we ignore."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from packaging import version
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from scratchformers.compat import CACHE_NAME, cache_of

from test_modeling_transformer import make_model

NEW_NAME = version.parse(transformers.__version__) >= version.parse("5.24.0")


def step_inputs(padded_batch) -> dict:
    return dict(input_ids=padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"],
                decoder_input_ids=padded_batch["decoder_input_ids"][:, :1], use_cache=True)


def test_cache_name_is_the_installed_releases():
    assert CACHE_NAME == ("cache" if NEW_NAME else "past_key_values")
    assert CACHE_NAME in transformers.modeling_outputs.Seq2SeqLMOutput.__dataclass_fields__


def test_outputs_carry_the_cache_under_the_installed_name(padded_batch):
    out = make_model()(**step_inputs(padded_batch))
    assert isinstance(cache_of(out), EncoderDecoderCache) and cache_of(out).get_seq_length() == 1
    assert getattr(out, CACHE_NAME) is cache_of(out)


@torch.no_grad()
def test_past_key_values_is_still_accepted_with_transformers_own_deprecation(padded_batch):
    model = make_model()
    first = step_inputs(padded_batch)
    second = first | {"decoder_input_ids": padded_batch["decoder_input_ids"][:, 1:2]}
    expected = model(**second, cache=cache_of(model(**first))).logits
    old_name_cache = cache_of(model(**first))
    if NEW_NAME:
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated.*Use `cache` instead"):
            old = model(**second, past_key_values=old_name_cache).logits
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            old = model(**second, past_key_values=old_name_cache).logits
    assert old_name_cache.get_seq_length() == 2
    torch.testing.assert_close(old, expected, atol=0, rtol=0)


def test_a_cache_under_a_name_the_model_does_not_read_is_refused(padded_batch):
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with pytest.raises(TypeError, match="received a KV cache as 'kv_states'.*constraints.txt"):
        make_model()(**step_inputs(padded_batch), kv_states=cache)


def test_no_cache_is_built_when_training_with_labels(padded_batch):
    model = make_model()
    labels = padded_batch["decoder_input_ids"]
    assert cache_of(model(input_ids=padded_batch["input_ids"], labels=labels)) is None
    assert cache_of(model(input_ids=padded_batch["input_ids"], labels=labels, use_cache=True)) is None
