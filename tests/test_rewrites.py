"""rewrites.py: each exact speed rewrite against the reference it replaces — outputs and gradients, in training
and evaluation, with and without autocast — and the switch (``config.forward_implementation``) that selects them."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import scratchformers as sf
from scratchformers import layers, rewrites
from scratchformers.layers import AddNorm

from conftest import tiny_transformer_config
from vit_fixtures import pixels, randomized_biases, tiny_vit


def make_model(attn_implementation: str = "sdpa", **overrides) -> sf.ScratchTransformerForConditionalGeneration:
    torch.manual_seed(0)
    return sf.ScratchTransformerForConditionalGeneration._from_config(
        tiny_transformer_config(**overrides), attn_implementation=attn_implementation
    ).eval()


@contextlib.contextmanager
def forward_implementation(model, value: str):
    """Run ``model`` with ``config.forward_implementation = value`` (the modules read it at every forward)."""
    before = model.config.forward_implementation
    model.config.forward_implementation = value
    try:
        yield model
    finally:
        model.config.forward_implementation = before


def test_the_reference_is_the_default():
    assert make_model().config.forward_implementation == "reference"
    assert tiny_vit().config.forward_implementation == "reference"
    with pytest.raises(ValueError, match="forward_implementation='faster' is not supported; allowed values: "
                                         "'reference', 'fast'"):
        tiny_vit(forward_implementation="faster")


# --------------------------------------------------------------------------------------------------------------
# cross_entropy
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_rewrite_equals_the_reference_and_torch(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 3:] = -100
    upstream = 3.0
    results = {}
    for name, loss in (("rewrite", rewrites.softmax_cross_entropy), ("reference", layers.cross_entropy)):
        value = loss(logits, labels, label_smoothing=smoothing)
        results[name] = (value, *torch.autograd.grad(upstream * value, logits))
    torch_loss = nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), label_smoothing=smoothing)
    torch.testing.assert_close(results["reference"][0], torch_loss)
    torch.testing.assert_close(results["rewrite"][0], results["reference"][0])
    torch.testing.assert_close(results["rewrite"][1], results["reference"][1])
    assert torch.all(results["rewrite"][1][0, 3:] == 0)  # ignored positions get no gradient
    for loss in (rewrites.softmax_cross_entropy, layers.cross_entropy):
        assert torch.isnan(loss(logits, torch.full((2, 5), -100)))  # nothing to average, like torch


def test_cross_entropy_rewrite_under_bf16_autocast():
    logits = torch.randn(4, 9, generator=torch.Generator().manual_seed(1)).bfloat16().requires_grad_()
    labels = torch.tensor([1, 2, -100, 8])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = rewrites.softmax_cross_entropy(logits, labels, label_smoothing=0.1)
        reference = layers.cross_entropy(logits, labels, label_smoothing=0.1)
    assert ours.dtype == reference.dtype == torch.float32
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(*(torch.autograd.grad(loss, logits)[0] for loss in (ours, reference)))


# --------------------------------------------------------------------------------------------------------------
# add_linear
# --------------------------------------------------------------------------------------------------------------
def linear_sublayer(inputs, weight, bias):
    return lambda _: nn.functional.linear(inputs, weight, bias)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_add_linear_equals_add_norm_of_the_linear_layer_with_the_same_gradients(norm_position):
    add_norm = AddNorm(6, "layernorm", norm_position, dropout=0.1, eps=1e-5).eval()
    generator = torch.Generator().manual_seed(0)
    residual, inputs = torch.randn(2, 5, 6, generator=generator), torch.randn(2, 5, 4, generator=generator)
    weight, bias = torch.randn(6, 4, generator=generator), torch.randn(6, generator=generator)
    leaves = [t.requires_grad_() for t in (residual, inputs, weight, bias)]
    out = rewrites.add_linear(add_norm, residual, inputs, weight, bias)
    expected = add_norm(residual, linear_sublayer(inputs, weight, bias))
    torch.testing.assert_close(out, expected)
    upstream = torch.randn(2, 5, 6, generator=generator)
    for ours, reference in zip(torch.autograd.grad(out, leaves, upstream), torch.autograd.grad(expected, leaves, upstream)):
        torch.testing.assert_close(ours, reference)
    first = (residual[:, :1], inputs[:, :1])  # a strided slice (the ViT's [CLS]-only layer), no bias
    torch.testing.assert_close(rewrites.add_linear(add_norm, *first, weight, None),
                               add_norm(first[0], linear_sublayer(first[1], weight, None)))
    add_norm.train()  # active dropout acts between the linear layer and the add: the plain path, same masks
    torch.manual_seed(1)
    trained = rewrites.add_linear(add_norm, residual, inputs, weight, bias)
    torch.manual_seed(1)
    torch.testing.assert_close(trained, add_norm(residual, linear_sublayer(inputs, weight, bias)))


def test_add_linear_runs_under_bf16_autocast_like_the_reference():
    """autocast casts the operands of F.linear but not of an in-place addmm_: the rewrite must match."""
    add_norm = AddNorm(6, "layernorm", "pre", dropout=0.0, eps=1e-5).eval()
    generator = torch.Generator().manual_seed(0)
    residual, inputs = torch.randn(2, 5, 6, generator=generator), torch.randn(2, 5, 4, generator=generator)
    weight, bias = torch.randn(6, 4, generator=generator), torch.randn(6, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rewrites.add_linear(add_norm, residual, inputs, weight, bias)
        expected = add_norm(residual, linear_sublayer(inputs, weight, bias))
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("implementation", ["reference", "fast"])
@pytest.mark.parametrize("rows, mask_rows, message", [
    (6, 3, r"The decoder has 6 rows but the encoder output has 3; pass one decoder row per source \(repeat the "
           r"encoder output, e\.g\. encoder_hidden_states\.repeat_interleave\(k, 0\), for k rows each\)\."),
    (3, 6, r"The encoder attention mask has 6 rows but the encoder output has 3; pass the attention mask the encoder "
           r"was run with\."),
], ids=["decoder-rows", "mask-rows"])
def test_rows_that_do_not_fit_the_encoder_output_are_refused(padded_batch, implementation, rows, mask_rows, message):
    """One decoder row per source in both settings (fast decoding shares a source's copy itself, not the model)."""
    model = make_model()
    mask = padded_batch["attention_mask"]
    encoder_outputs = model.get_encoder()(input_ids=padded_batch["input_ids"], attention_mask=mask)
    decoder_input_ids = torch.randint(4, 40, (rows, 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), forward_implementation(model, implementation):
        with pytest.raises(ValueError, match=f"^{message}$"):
            model(encoder_outputs=encoder_outputs, attention_mask=mask.repeat_interleave(mask_rows // 3, 0),
                  decoder_input_ids=decoder_input_ids)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_the_seq2seq_model_trains_the_same_with_the_rewrites(padded_batch, autocast):
    model = make_model(label_smoothing=0.1, dropout=0.0).train()
    labels = padded_batch["decoder_input_ids"]
    results = {}
    for implementation in ("reference", "fast"):
        with forward_implementation(model, implementation), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            loss = model(input_ids=padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"],
                         labels=labels).loss
        results[implementation] = (loss, torch.autograd.grad(loss, list(model.parameters())))
    torch.testing.assert_close(results["fast"][0], results["reference"][0])
    for name, a, b in zip((n for n, _ in model.named_parameters()), results["fast"][1], results["reference"][1]):
        torch.testing.assert_close(a, b, msg=name)


# --------------------------------------------------------------------------------------------------------------
# The ViT layer
# --------------------------------------------------------------------------------------------------------------
def layer_pair(model, index: int = 0):
    """(fast, reference) forward of one ViT layer of ``model``."""
    layer = model.vit.layers[index]

    def run(implementation, x, **kwargs):
        with forward_implementation(model, implementation):
            return layer(x, **kwargs)

    return layer, run


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", [{}, {"qkv_bias": False}])
def test_vit_layer_rewrite_equals_the_reference_in_inference_and_training(attn_implementation, variant):
    """The key bias (left out without gradients), the value bias (moved into the output bias), the residual adds
    (accumulated by the last linear layers) and the [CLS]-only attention: same outputs, same gradients."""
    model = randomized_biases(tiny_vit(attn_implementation=attn_implementation, **variant))
    layer, run = layer_pair(model)
    x = torch.randn(3, 17, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = run("reference", x)
        torch.testing.assert_close(run("fast", x), reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(run("fast", x, cls_only=True), reference[:, :1], atol=1e-5, rtol=0)
    layer.train()
    params = list(layer.parameters())
    for cls_only, length in ((False, 17), (True, 1)):
        upstream = torch.randn(3, length, 32, generator=torch.Generator().manual_seed(2))
        ours = torch.autograd.grad(run("fast", x, cls_only=cls_only), params, upstream)
        theirs = torch.autograd.grad(run("reference", x)[:, :length], params, upstream)
        for (name, _), a, b in zip(layer.named_parameters(), ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"{name}, cls_only={cls_only}")  # b_k: both ~0


def test_vit_layer_rewrite_with_active_dropout_and_stochastic_depth_draws_the_same_masks():
    """With attention dropout the weights no longer sum to 1 (the value bias stays in the values), and with
    sublayer dropout or drop path something sits between the last linear layer and the residual add."""
    model = randomized_biases(tiny_vit(num_layers=2, attention_dropout=0.2, dropout=0.1, drop_path_rate=0.5)).train()
    _, run = layer_pair(model, 1)
    x = torch.randn(4, 17, 32, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    ours = run("fast", x)
    torch.manual_seed(0)
    torch.testing.assert_close(ours, run("reference", x))


def test_post_norm_vit_and_attention_weights_use_the_reference():
    """The rewrite is written for pre-norm and computes no weights: those cases run the reference."""
    for model, kwargs in ((randomized_biases(tiny_vit(norm_position="post")), {}),
                          (randomized_biases(tiny_vit()), {"output_attentions": True})):
        with torch.no_grad():
            reference = model(pixels(batch=2), **kwargs)
            with forward_implementation(model, "fast"):
                fast = model(pixels(batch=2), **kwargs)
        torch.testing.assert_close(fast.logits, reference.logits, atol=1e-5, rtol=0)
        for a, b in zip(fast.attentions or (), reference.attentions or ()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_a_wrapped_projection_takes_effect_with_the_rewrites_on():
    """The rewrites read weights; a projection that is not a plain nn.Linear (a LoRA adapter, a quantized
    layer ...) must be called as a module, so the layer runs the reference and the wrapper acts."""
    model = randomized_biases(tiny_vit())

    class Doubled(nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            return 2 * self.linear(x)

    with torch.no_grad():
        before = model(pixels()).logits
        for layer in model.vit.layers:
            layer.ffn.fc2 = Doubled(layer.ffn.fc2)
        reference = model(pixels()).logits
        with forward_implementation(model, "fast"):
            fast = model(pixels()).logits
    assert not torch.allclose(reference, before)
    torch.testing.assert_close(fast, reference)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_the_vit_classifier_trains_and_predicts_the_same_with_the_rewrites(autocast):
    model = randomized_biases(tiny_vit(label_smoothing=0.1, attn_implementation="sdpa"))
    labels = torch.tensor([0, 2, 1])
    tolerance = dict(atol=2e-2, rtol=2e-2) if autocast else dict(atol=1e-5, rtol=1e-4)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        results = {}
        for implementation in ("reference", "fast"):
            with forward_implementation(model, implementation), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                out = model(pixels(batch=3), labels=labels)
            results[implementation] = (out.logits, out.loss, torch.autograd.grad(out.loss, list(model.parameters())))
        torch.testing.assert_close(results["fast"][0], results["reference"][0], **tolerance)
        torch.testing.assert_close(results["fast"][1], results["reference"][1], **tolerance)
        for name, a, b in zip((n for n, _ in model.named_parameters()), results["fast"][2], results["reference"][2]):
            torch.testing.assert_close(a, b, msg=f"{mode}: {name}", **tolerance)


def test_the_classifier_runs_the_last_layer_for_cls_alone_with_the_rewrites():
    model = tiny_vit(attn_implementation="sdpa")
    x = pixels(batch=3)
    with torch.no_grad():
        full = model.vit(x)
        assert model.vit(x, pooled_only=True).last_hidden_state.shape[1] == 17  # the reference computes every token
        with forward_implementation(model, "fast"):
            short = model.vit(x, pooled_only=True)
            logits = model(x).logits
    assert short.last_hidden_state.shape[1] == 1
    torch.testing.assert_close(short.pooler_output, full.pooler_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, model.classifier(full.pooler_output), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# Decoding: the exact logits processors (fast generate against the reference: test_fast_decoding.py)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eos", [[2], [2, 7, 2], [2, 99, -1]], ids=["one", "several", "outside-the-vocabulary"])
@pytest.mark.parametrize("length", [3, 6], ids=["too-short", "long-enough"])
def test_exact_min_length_processors_equal_transformers(eos, length):
    from transformers.generation.logits_process import MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor

    scores = torch.randn(4, 11, generator=torch.Generator().manual_seed(0))
    input_ids = torch.zeros(4, length, dtype=torch.long)
    references = [MinLengthLogitsProcessor(5, eos), MinNewTokensLengthLogitsProcessor(1, 4, eos)]
    exact = rewrites.exact_logits_processors(list(references))
    assert [type(p) for p in exact] == [rewrites.ExactMinLengthLogitsProcessor,
                                        rewrites.ExactMinNewTokensLengthLogitsProcessor]
    for ours, reference in zip(exact, references):
        expected = reference(input_ids, scores)
        out = ours(input_ids, scores)
        assert torch.equal(out, expected) and out is not scores
        owned = scores.clone()  # a caller that owns its scores (fast_decoding): masked in place, same values
        in_place = rewrites.process_owned_scores([ours], input_ids, owned)
        assert in_place is owned and torch.equal(in_place, expected)
    assert torch.equal(scores, torch.randn(4, 11, generator=torch.Generator().manual_seed(0)))  # input untouched


def test_exact_logits_processors_leave_other_processors_alone():
    from transformers.generation.logits_process import MinLengthLogitsProcessor, TemperatureLogitsWarper

    class MyMinLength(MinLengthLogitsProcessor):
        pass

    mine, temperature = MyMinLength(3, [2]), TemperatureLogitsWarper(0.5)
    assert rewrites.exact_logits_processors([mine, temperature]) == [mine, temperature]
