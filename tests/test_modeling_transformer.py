"""ScratchTransformerModel / ForConditionalGeneration: outputs, attention kernels, masks, cache, loss."""

import pytest
import torch
from transformers import AutoModel, AutoModelForSeq2SeqLM
from transformers.modeling_outputs import Seq2SeqLMOutput, Seq2SeqModelOutput

import scratchformers as sf
from scratchformers.compat import cache_of
from scratchformers.modeling_transformer import shift_tokens_right

from conftest import enable_activation_checkpointing, tiny_transformer_config


def make_model(**overrides) -> sf.ScratchTransformerForConditionalGeneration:
    torch.manual_seed(0)
    return sf.ScratchTransformerForConditionalGeneration(tiny_transformer_config(**overrides)).eval()


def test_outputs_are_hugging_face_model_outputs(padded_batch):
    model = make_model()
    out = model(**padded_batch)
    assert isinstance(out, Seq2SeqLMOutput) and out.logits.shape == (3, 5, 40)
    base = out_base = model.model(**padded_batch)
    assert isinstance(base, Seq2SeqModelOutput) and out_base.last_hidden_state.shape == (3, 5, 32)
    assert out.encoder_last_hidden_state.shape == (3, 9, 32)
    # The LM output is the bare model's output composed with the head, and the encoder output is the encoder's.
    torch.testing.assert_close(out.logits, model.lm_head(out_base.last_hidden_state))
    encoder = model.get_encoder()(input_ids=padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"])
    torch.testing.assert_close(out.encoder_last_hidden_state, encoder.last_hidden_state)
    torch.testing.assert_close(out_base.encoder_last_hidden_state, encoder.last_hidden_state)


def test_eager_and_sdpa_agree(tmp_path, padded_batch):
    make_model(norm_position="pre").save_pretrained(tmp_path)
    eager = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    torch.testing.assert_close(eager(**padded_batch).logits, sdpa(**padded_batch).logits, atol=1e-5, rtol=0)
    no_padding = {k: v[:1] for k, v in padded_batch.items()}
    torch.testing.assert_close(eager(**no_padding).logits, sdpa(**no_padding).logits, atol=1e-5, rtol=0)


def test_additive_scoring_runs_eager_and_refuses_sdpa(padded_batch):
    config = tiny_transformer_config(attention_scoring="additive")
    with pytest.raises(ValueError, match="additive.*eager"):
        sf.ScratchTransformerForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    model = sf.ScratchTransformerForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    seen = []
    attention = model.model.encoder.layers[0].self_attn
    attention.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0]), with_kwargs=True)
    out = model(**padded_batch, output_attentions=True)
    assert torch.isfinite(out.logits).all()
    # The first encoder layer's weights, written out: w_v[h] . tanh(W_q x_i + W_k x_j) per head, softmax over the
    # source's own tokens only (sources of lengths 9, 6, 3).
    (x,) = seen
    q = attention.q_proj(x).view(3, 9, 4, 8)
    k = attention.k_proj(x).view(3, 9, 4, 8)
    for b, length in enumerate((9, 6, 3)):
        for h in range(4):
            scores = torch.stack([torch.stack([attention.additive_v[h] @ torch.tanh(q[b, i, h] + k[b, j, h])
                                               for j in range(length)]) for i in range(9)])
            torch.testing.assert_close(out.encoder_attentions[0][b, h, :, :length], torch.softmax(scores, -1))
            assert torch.all(out.encoder_attentions[0][b, h, :, length:] == 0)
    # Padding changes nothing: each source alone gives the padded batch's logits.
    for b, length in enumerate((9, 6, 3)):
        alone = model(input_ids=padded_batch["input_ids"][b : b + 1, :length],
                      decoder_input_ids=padded_batch["decoder_input_ids"][b : b + 1]).logits
        torch.testing.assert_close(out.logits[b : b + 1], alone, atol=1e-5, rtol=0)


def test_output_attentions_are_masked_probabilities(padded_batch):
    model = make_model()  # sdpa by default: asking for weights switches those calls to the eager kernel
    out = model(**padded_batch, output_attentions=True)
    assert len(out.encoder_attentions) == 2 and out.encoder_attentions[0].shape == (3, 4, 9, 9)
    assert out.decoder_attentions[0].shape == (3, 4, 5, 5) and out.cross_attentions[0].shape == (3, 4, 5, 9)
    for weights in out.encoder_attentions + out.decoder_attentions + out.cross_attentions:
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert torch.all(out.cross_attentions[1][2, :, :, 3:] == 0)  # padding of the 3-token source
    assert torch.all(out.encoder_attentions[0][1, :, :, 6:] == 0)
    assert torch.all(out.decoder_attentions[0].triu(1) == 0)  # causal


def test_output_hidden_states_counts(padded_batch):
    out = make_model()(**padded_batch, output_hidden_states=True)
    assert len(out.encoder_hidden_states) == 3 and len(out.decoder_hidden_states) == 3
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)


def test_training_loss_is_label_smoothed_cross_entropy_ignoring_minus_100(padded_batch):
    model = make_model(label_smoothing=0.1).train()  # dropout 0: train mode changes the loss only
    labels = padded_batch["decoder_input_ids"].clone()
    labels[0, 3:] = -100
    out = model(input_ids=padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"], labels=labels)
    decoder_input_ids = shift_tokens_right(labels, 0, model.config.decoder_start_token_id)
    assert decoder_input_ids[0, 0] == 1 and decoder_input_ids[0, 4] == 0  # start token, -100 became pad
    logits = model(input_ids=padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids).logits
    log_probs = torch.log_softmax(logits, -1)
    keep = labels != -100
    nll = -log_probs[keep].gather(-1, labels[keep][:, None]).squeeze(-1)
    smooth = -log_probs[keep].mean(-1)
    expected = (0.9 * nll + 0.1 * smooth).mean()
    torch.testing.assert_close(out.loss, expected)


def test_gradient_checkpointing_gives_the_same_gradients(padded_batch):
    labels = padded_batch["decoder_input_ids"]
    inputs = {"input_ids": padded_batch["input_ids"], "attention_mask": padded_batch["attention_mask"], "labels": labels}
    grads = []
    for checkpointing in (False, True):
        model = make_model().train()
        if checkpointing:
            enable_activation_checkpointing(model)
            assert all(layer.gradient_checkpointing for layer in model.model.encoder.layers)
        model(**inputs).loss.backward()
        grads.append(model.model.encoder.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_padded_batch_equals_each_sequence_alone(padded_batch):
    model = make_model()
    batched = model(**padded_batch).logits
    for i, length in enumerate((9, 6, 3)):
        alone = model(input_ids=padded_batch["input_ids"][i : i + 1, :length],
                      decoder_input_ids=padded_batch["decoder_input_ids"][i : i + 1]).logits
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)


def test_padded_decoder_inputs_equal_unpadded(padded_batch):
    model = make_model()
    dec = padded_batch["decoder_input_ids"]
    dec_mask = torch.ones_like(dec)
    dec_mask[0, 3:] = 0
    padded = model(**padded_batch, decoder_attention_mask=dec_mask).logits
    alone = model(input_ids=padded_batch["input_ids"][:1], decoder_input_ids=dec[:1, :3]).logits
    torch.testing.assert_close(padded[:1, :3], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_cached_step_by_step_decoding_equals_full_forward(padded_batch, attn_implementation):
    model = sf.ScratchTransformerForConditionalGeneration._from_config(
        tiny_transformer_config(), attn_implementation=attn_implementation
    ).eval()
    full = model(**padded_batch).logits
    encoder_outputs = model.get_encoder()(input_ids=padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"])
    cache, steps = None, []
    for t in range(padded_batch["decoder_input_ids"].shape[1]):
        out = model(encoder_outputs=encoder_outputs, attention_mask=padded_batch["attention_mask"],
                    decoder_input_ids=padded_batch["decoder_input_ids"][:, t : t + 1], cache=cache, use_cache=True)
        cache = cache_of(out)
        steps.append(out.logits)
    assert cache.get_seq_length() == 5 and all(cache.is_updated.values())
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


OUT_OF_VOCABULARY = (r"input_ids contain token ids outside \[0, 40\); the tokenizer does not match this model's "
                     r"vocab_size=40\.")
TOO_LONG = (r"Sequence of length 65 exceeds max_position_embeddings=64; truncate the input "
            r"\(tokenizer\(\.\.\., truncation=True, max_length=\.\.\.\)\) or use a model with a larger "
            r"max_position_embeddings\.")
BAD_INPUTS = {  # name -> (call on the model, exact error message)
    "token_id_past_the_vocabulary": (
        lambda model: model(input_ids=torch.tensor([[5, 99]]), decoder_input_ids=torch.tensor([[1]])), OUT_OF_VOCABULARY
    ),
    "negative_token_id": (
        lambda model: model(input_ids=torch.tensor([[5, -1]]), decoder_input_ids=torch.tensor([[1]])), OUT_OF_VOCABULARY
    ),
    "source_past_the_position_table": (
        lambda model: model(input_ids=torch.ones(1, 65, dtype=torch.long), decoder_input_ids=torch.tensor([[1]])),
        TOO_LONG,
    ),
    "decoder_inputs_past_the_position_table": (
        lambda model: model(input_ids=torch.ones(1, 3, dtype=torch.long),
                            decoder_input_ids=torch.ones(1, 65, dtype=torch.long)),
        TOO_LONG,
    ),
    "bare_model_without_decoder_inputs": (
        lambda model: model.model(input_ids=torch.tensor([[5, 6]])),
        r"Pass decoder_input_ids \(or labels to ScratchTransformerForConditionalGeneration, which derives them\)\.",
    ),
}


@pytest.mark.parametrize("call, message", BAD_INPUTS.values(), ids=BAD_INPUTS)
def test_bad_inputs_give_clear_errors(call, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        call(make_model())


def test_auto_model_is_the_bare_encoder_decoder(tmp_path, padded_batch):
    model = make_model()
    model.save_pretrained(tmp_path)
    bare = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(bare, sf.ScratchTransformerModel)
    torch.testing.assert_close(bare(**padded_batch).last_hidden_state, model.model(**padded_batch).last_hidden_state)


@pytest.mark.parametrize("tie", [True, False])
def test_tied_and_untied_output_embeddings_round_trip(tmp_path, padded_batch, tie):
    model = make_model(tie_word_embeddings=tie)
    assert (model.lm_head.weight is model.model.shared.weight) == tie
    assert model.model.encoder.get_input_embeddings() is model.model.shared
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert (loaded.lm_head.weight is loaded.model.shared.weight) == tie
    torch.testing.assert_close(loaded(**padded_batch).logits, model(**padded_batch).logits)


def test_torch_compile_traces_the_model_without_graph_breaks(padded_batch):
    import torch._dynamo

    model = make_model(encoder_layers=1, decoder_layers=1).train()
    labels = padded_batch["decoder_input_ids"]
    inputs = {"input_ids": padded_batch["input_ids"], "attention_mask": padded_batch["attention_mask"], "labels": labels}
    explanation = torch._dynamo.explain(model)(**inputs)
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_return_dict_false_gives_tuples_in_hugging_face_order(padded_batch):
    model = make_model()
    labels = padded_batch["decoder_input_ids"]
    with torch.no_grad():
        loss, logits, *rest = model(input_ids=padded_batch["input_ids"], labels=labels, return_dict=False)
        expected = model(input_ids=padded_batch["input_ids"], labels=labels)
        assert torch.equal(loss, expected.loss) and torch.equal(logits, expected.logits)
        assert len(rest) == 1 and torch.equal(rest[0], expected.encoder_last_hidden_state)  # no cache with labels
        as_tuple = model(**padded_batch, use_cache=True, return_dict=False)
        as_dict = model(**padded_batch, use_cache=True)
        assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple()) == 3  # logits, cache, encoder
        assert torch.equal(as_tuple[0], as_dict.logits) and torch.equal(as_tuple[2], as_dict.encoder_last_hidden_state)
        base = model.model(**padded_batch, return_dict=False)
        assert isinstance(base, tuple) and torch.equal(base[0], model.model(**padded_batch).last_hidden_state)
        encoder = model.get_encoder()(input_ids=padded_batch["input_ids"], return_dict=False)
        assert isinstance(encoder, tuple) and len(encoder) == 1


# ----------------------------------------------------------------------------------------------------------------
# Mistakes that used to pass silently or fail late, far from their cause
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("search", [dict(), dict(num_beams=2)], ids=["greedy", "beam"])
def test_generate_past_the_position_table_fails_before_decoding(padded_batch, search):
    """max_new_tokens beyond max_position_embeddings is refused before the first decoder step (it used to fail at
    step 9, output lost, blaming the input); the exact limit still generates."""
    model = make_model(max_position_embeddings=8)
    steps = []
    model.get_decoder().register_forward_pre_hook(lambda *_: steps.append(1))
    inputs = {"input_ids": padded_batch["input_ids"][:, :6], "attention_mask": padded_batch["attention_mask"][:, :6]}
    message = (r"max_length=10 \(the decoder prompt's 1 token\(s\) \+ max_new_tokens\) needs 9 decoder positions, "
               r"more than the decoder's position table has \(max_position_embeddings=8\); pass max_new_tokens <= 8")
    for lengths in (dict(max_new_tokens=9), dict(max_length=10)):
        with pytest.raises(ValueError, match=message):
            model.generate(**inputs, **lengths, **search)
    assert steps == []
    out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, **search)
    assert out.shape == (3, 9)  # start token + 8: the decoder embedded positions 0 ... 7


LABEL_ROWS_FIX = (r"; with labels pass one row of labels \(and of decoder_input_ids\) per source: the batch size of "
                  r"input_ids\.")
LABEL_ROW_MISTAKES = {  # name -> (call given the model, the 2 sources, labels of 2 rows, and 4 rows; exact message)
    "labels_of_4_rows_for_2_sources": (
        lambda model, source, labels, doubled: model(input_ids=source, labels=doubled),
        "labels have 4 rows, the source 2 and the decoder inputs 4" + LABEL_ROWS_FIX,  # decoder inputs: shifted labels
    ),
    "decoder_inputs_of_4_rows_for_2_labels": (
        lambda model, source, labels, doubled: model(input_ids=source, decoder_input_ids=doubled, labels=labels),
        "labels have 2 rows, the source 2 and the decoder inputs 4" + LABEL_ROWS_FIX,
    ),
    "labels_of_4_rows_for_2_encoder_outputs": (
        lambda model, source, labels, doubled: model(encoder_outputs=model.get_encoder()(input_ids=source),
                                                     labels=doubled),
        "labels have 4 rows, the source 2 and the decoder inputs 4" + LABEL_ROWS_FIX,
    ),
}


@pytest.mark.parametrize("call, message", LABEL_ROW_MISTAKES.values(), ids=LABEL_ROW_MISTAKES)
def test_labels_need_one_row_per_source(padded_batch, call, message):
    """k decoder rows per source are generation's beams; with labels (a loss) they are a batch mistake."""
    source, labels = padded_batch["input_ids"][:2], padded_batch["decoder_input_ids"][:2]
    with pytest.raises(ValueError, match=f"^{message}$"):
        call(make_model(), source, labels, torch.cat([labels, labels]))


def test_one_row_of_labels_per_source_is_taken_and_k_rows_per_source_are_refused(padded_batch):
    model = make_model()
    source, labels = padded_batch["input_ids"][:2], padded_batch["decoder_input_ids"][:2]
    loss = model(input_ids=source, labels=labels).loss
    shifted = shift_tokens_right(labels, model.config.pad_token_id, model.config.decoder_start_token_id)
    logits = model(input_ids=source, decoder_input_ids=shifted).logits
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()))
    # k decoder rows per source: the model takes one row per source in both settings (fast decoding shares a
    # source's encoder output itself, fast_decoding.FastDecoder), and names the fix
    for implementation in ("reference", "fast"):
        model.config.forward_implementation = implementation
        with pytest.raises(ValueError, match="pass one decoder row per source .repeat the encoder output"):
            model(encoder_outputs=model.get_encoder()(input_ids=source), decoder_input_ids=torch.cat([labels, labels]))


@pytest.mark.parametrize("entry", ["forward", "generate", "cross_attention_to_a_given_encoder_output"])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_a_source_row_that_masks_every_token_is_refused(padded_batch, attn_implementation, entry):
    """Eager and sdpa used to give such a row different outputs (softmax over no key); now both name the row."""
    model = sf.ScratchTransformerForConditionalGeneration._from_config(
        tiny_transformer_config(), attn_implementation=attn_implementation
    ).eval()
    source, decoder_input_ids = padded_batch["input_ids"], padded_batch["decoder_input_ids"]
    mask = padded_batch["attention_mask"].clone()
    mask[2] = 0
    message = ("^attention_mask row 2 masks every source token, so that row has nothing to attend to. Give every "
               r"source at least one token \(an empty text still gets its EOS token from the tokenizer\), or leave "
               "that row out of the batch.$")
    calls = {
        "forward": lambda: model(input_ids=source, attention_mask=mask, decoder_input_ids=decoder_input_ids),
        "generate": lambda: model.generate(input_ids=source, attention_mask=mask, max_new_tokens=3),
        "cross_attention_to_a_given_encoder_output": lambda: model(
            encoder_outputs=model.get_encoder()(input_ids=source, attention_mask=padded_batch["attention_mask"]),
            attention_mask=mask, decoder_input_ids=decoder_input_ids,
        ),
    }
    with pytest.raises(ValueError, match=message):
        calls[entry]()


def test_labels_without_pad_token_id_name_the_fix(padded_batch):
    model = make_model(pad_token_id=None)
    message = r"needs pad_token_id \(got None; it replaces the -100 of ignored positions\).*config.pad_token_id"
    with pytest.raises(ValueError, match=message):
        model(input_ids=padded_batch["input_ids"], labels=padded_batch["decoder_input_ids"])
    with pytest.raises(ValueError, match="needs pad_token_id"):
        shift_tokens_right(padded_batch["decoder_input_ids"], None, 1)
    # Decoder inputs given: no shift, no pad id needed.
    out = model(input_ids=padded_batch["input_ids"], decoder_input_ids=padded_batch["decoder_input_ids"],
                labels=padded_batch["decoder_input_ids"])
    assert torch.isfinite(out.loss)
    expected = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), padded_batch["decoder_input_ids"].flatten())
    torch.testing.assert_close(out.loss, expected)


# ----------------------------------------------------------------------------------------------------------------
# Later papers' variants, each one config value
# ----------------------------------------------------------------------------------------------------------------
VARIANTS = {
    "rotary": dict(position_embedding="rotary"),
    "swiglu": dict(activation_function="swiglu"),
    "geglu": dict(activation_function="geglu"),
    "qk_norm": dict(qk_norm=True),
    "gqa": dict(num_key_value_heads=2),
    "all": dict(position_embedding="rotary", activation_function="swiglu", qk_norm=True, num_key_value_heads=1,
                norm_position="pre"),
}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS)
def test_variants_agree_across_kernels_and_decode_the_same_with_the_cache(variant, padded_batch):
    models = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        models[implementation] = sf.ScratchTransformerForConditionalGeneration._from_config(
            tiny_transformer_config(**variant), attn_implementation=implementation
        ).eval()
    with torch.no_grad():
        logits = {name: model(**padded_batch).logits for name, model in models.items()}
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=1e-5)
    inputs = dict(input_ids=padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"], max_new_tokens=6)
    for search in (dict(), dict(num_beams=3)):
        cached = models["sdpa"].generate(**inputs, **search)
        assert torch.equal(cached, models["sdpa"].generate(**inputs, **search, use_cache=False)), search
        assert torch.equal(cached, models["eager"].generate(**inputs, **search)), search
    if "num_key_value_heads" in variant:  # the cache holds the key/value heads only
        cache = cache_of(models["sdpa"](**padded_batch, use_cache=True))
        assert cache.self_attention_cache.layers[0].keys.shape[1] == variant["num_key_value_heads"]
