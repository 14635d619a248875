"""ScratchViTModel / ScratchViTForImageClassification: outputs, attention backends, training features, losses,
save / load through the Auto classes, and loading with trust_remote_code where the package is absent."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

import scratchformers as sf
from scratchformers.layers import DropPath

from conftest import enable_activation_checkpointing, run_without_package
from vit_fixtures import pixels, random_image, randomized_biases, tiny_vit, tiny_vit_config


def test_output_types_and_shapes():
    model = tiny_vit()
    with torch.no_grad():
        out = model(pixels(batch=2))
        base = model.vit(pixels(batch=2))
    assert isinstance(out, ImageClassifierOutput) and isinstance(base, BaseModelOutputWithPooling)
    assert out.logits.shape == (2, 3) and out.loss is None
    assert base.last_hidden_state.shape == (2, 1 + 16, 32)  # [CLS] + (32/8)² patches
    assert base.pooler_output.shape == (2, 32)
    torch.testing.assert_close(base.pooler_output, base.last_hidden_state[:, 0])  # [CLS] pooling
    torch.testing.assert_close(out.logits, model.classifier(base.pooler_output))  # the head on the pooled vector
    assert out.hidden_states is None and out.attentions is None
    with torch.no_grad():
        as_tuple = model(pixels(batch=2), return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_mean_pooling_averages_the_patch_tokens():
    model = tiny_vit(pooling="mean")
    with torch.no_grad():
        base = model.vit(pixels())
        logits = model(pixels()).logits
    torch.testing.assert_close(base.pooler_output, base.last_hidden_state[:, 1:].mean(dim=1))
    torch.testing.assert_close(logits, model.classifier(base.pooler_output))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_eager_and_sdpa_agree(pooling):
    eager = tiny_vit(attn_implementation="eager", pooling=pooling)
    sdpa = tiny_vit(attn_implementation="sdpa", pooling=pooling)
    sdpa.load_state_dict(eager.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        a, b = eager.vit(pixels(batch=3)), sdpa.vit(pixels(batch=3))
        torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(eager(pixels(batch=3)).logits, sdpa(pixels(batch=3)).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_output_attentions_are_distributions(attn_implementation):
    model = tiny_vit(attn_implementation=attn_implementation)
    with torch.no_grad():
        out = model(pixels(batch=2), output_attentions=True)
        plain = model(pixels(batch=2))
    assert len(out.attentions) == 2
    for weights in out.attentions:
        assert weights.shape == (2, 4, 17, 17)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 17))
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=0)  # asking for weights changes nothing


def test_hidden_states_are_embeddings_plus_one_per_layer():
    model = tiny_vit(num_layers=3)
    with torch.no_grad():
        out = model.vit(pixels(), output_hidden_states=True)
        embeddings = model.vit.embeddings(pixels())
    assert len(out.hidden_states) == 3 + 1
    torch.testing.assert_close(out.hidden_states[0], embeddings)
    # like Hugging Face's ViT: per-layer states come before the final norm, last_hidden_state after it
    torch.testing.assert_close(out.last_hidden_state, model.vit.layer_norm(out.hidden_states[-1]))


@pytest.mark.parametrize(
    "variant",
    [{}, {"norm_position": "post"}, {"norm_type": "rmsnorm"}, {"qkv_bias": False}, {"activation_function": "relu", "pooling": "mean"},
     {"patch_embedding": "convolutional"}],
)
def test_variants_train(variant):
    model = tiny_vit(**variant).train()
    labels = torch.tensor([0, 2])
    out = model(pixels(), labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, labels))
    # The classifier's gradient written out: d(mean cross-entropy)/dW = (softmax - one-hot)ᵀ · pooled / batch.
    with torch.no_grad():
        pooled = model.vit(pixels()).pooler_output
        error = (out.logits.softmax(-1) - nn.functional.one_hot(labels, 3)) / 2
    torch.testing.assert_close(model.classifier.weight.grad, error.T @ pooled)
    torch.testing.assert_close(model.classifier.bias.grad, error.sum(0))
    attention = model.vit.layers[0].self_attn
    assert (attention.q_proj.bias is None) == (variant.get("qkv_bias") is False)
    assert attention.out_proj.bias is not None  # ViT keeps the output projection's bias
    assert (model.vit.layer_norm is None) == (variant.get("norm_position") == "post")


def test_gradient_checkpointing_gives_the_same_gradients():
    reference = tiny_vit().train()
    checkpointed = tiny_vit().train()
    checkpointed.load_state_dict(reference.state_dict())
    enable_activation_checkpointing(checkpointed)
    assert all(layer.gradient_checkpointing for layer in checkpointed.vit.layers)
    labels = torch.tensor([1, 2])
    reference(pixels(), labels=labels).loss.backward()
    checkpointed(pixels(), labels=labels).loss.backward()
    for (name, p), q in zip(reference.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_stochastic_depth_grows_with_depth_and_only_acts_in_training():
    model = tiny_vit(num_layers=3, drop_path_rate=0.5)
    rates = [layer.ffn_add_norm.drop_path for layer in model.vit.layers]
    assert isinstance(rates[0], nn.Identity)  # the first layer is never dropped
    assert [r.p for r in rates[1:]] == [0.25, 0.5]
    assert all(isinstance(r, DropPath) for r in rates[1:])
    x = pixels(batch=8)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model(x).logits)
        model.train()
        torch.manual_seed(0)
        first = model(x).logits
        second = model(x).logits
    assert not torch.allclose(first, second)


def test_interpolate_pos_encoding_runs_on_other_sizes():
    model = tiny_vit()
    with torch.no_grad():
        native = model(pixels()).logits
        same = model(pixels(), interpolate_pos_encoding=True).logits
        bigger = model.vit(pixels(height=48, width=40), interpolate_pos_encoding=True)
    torch.testing.assert_close(native, same)  # at the trained size nothing is resized
    assert bigger.last_hidden_state.shape == (2, 1 + 6 * 5, 32)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(pixels(height=48, width=40))


def test_interpolated_position_embeddings_are_a_bicubic_resize():
    embeddings = tiny_vit().vit.embeddings
    table = embeddings.position_embeddings.detach()
    resized = embeddings.interpolate_pos_encoding(64, 48).detach()
    assert resized.shape == (1, 1 + 8 * 6, 32)
    torch.testing.assert_close(resized[:, 0], table[:, 0])  # [CLS] keeps its position vector
    grid = table[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = nn.functional.interpolate(grid, size=(8, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resized[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 48, 32))


WRONG_INPUTS = {  # name -> (call on the model, exact error message)
    "one_channel_for_a_three_channel_model": (
        lambda model: model(pixels(channels=1)),
        r"pixel_values have 1 channels but the model expects num_channels=3; preprocess the images with the model's "
        r"image processor \(it converts to the right channel count\)\.",
    ),
    "no_batch_axis": (
        lambda model: model(torch.randn(3, 32, 32)),
        r"pixel_values must have shape \[batch, channels, height, width\], got \(3, 32, 32\)\.",
    ),
    "no_pixel_values": (
        lambda model: model(),
        r"You have to specify pixel_values \(images as a \[batch, channels, height, width\] tensor\)\.",
    ),
    "smaller_than_one_patch": (
        lambda model: model(pixels(height=4, width=4), interpolate_pos_encoding=True),
        r"The image \(4x4\) is smaller than one patch \(8x8\)\.",
    ),
}


@pytest.mark.parametrize("call, message", WRONG_INPUTS.values(), ids=WRONG_INPUTS)
def test_wrong_inputs_give_clear_errors(call, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        call(tiny_vit())


def test_single_label_training_loss_is_label_smoothed_cross_entropy():
    model = tiny_vit(label_smoothing=0.1).train()  # no dropout: train mode changes the loss only
    labels = torch.tensor([2, -100, 0])
    out = model(pixels(batch=3), labels=labels)
    expected = nn.functional.cross_entropy(out.logits, labels, label_smoothing=0.1, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    assert model.config.problem_type == "single_label_classification"


def test_one_label_means_regression_with_mean_squared_error():
    model = tiny_vit(num_labels=1, id2label=None, label2id=None)
    labels = torch.tensor([0.5, -1.0, 2.0])
    out = model(pixels(batch=3), labels=labels)
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, ((out.logits[:, 0] - labels) ** 2).mean())
    assert model.config.problem_type == "regression"


def test_float_multi_hot_labels_mean_multi_label_binary_cross_entropy():
    model = tiny_vit()
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    out = model(pixels(batch=2), labels=labels)
    probabilities = torch.sigmoid(out.logits)
    expected = -(labels * probabilities.log() + (1 - labels) * (1 - probabilities).log()).mean()
    torch.testing.assert_close(out.loss, expected)
    assert model.config.problem_type == "multi_label_classification"


def test_explicit_regression_on_several_outputs():
    model = tiny_vit(problem_type="regression")
    labels = torch.randn(2, 3)
    out = model(pixels(batch=2), labels=labels)
    torch.testing.assert_close(out.loss, ((out.logits - labels) ** 2).mean())


def test_bfloat16_model_takes_float32_pixels():
    model = tiny_vit().to(torch.bfloat16)
    reference = tiny_vit()
    with torch.no_grad():
        logits = model(pixels()).logits
        pooled = model.vit(pixels()).pooler_output
        # float32 pixels are cast to the model's dtype: exactly what bfloat16 pixels give
        assert torch.equal(logits, model(pixels().to(torch.bfloat16)).logits)
        expected_pooled, expected = reference.vit(pixels()).pooler_output, reference(pixels()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    # and the same model as float32 up to bfloat16 rounding (pooled vectors of size ~3, logits of size ~0.07)
    torch.testing.assert_close(pooled.float(), expected_pooled, atol=0.05, rtol=0.02)
    torch.testing.assert_close(logits.float(), expected, atol=5e-3, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_bf16_autocast_trains_and_classifies_like_float32(attn_implementation):
    """Under torch.autocast the layer's fused paths (addmm_ into the residual, [CLS]-only attention) must still run:
    a training step gives gradients, and inference logits stay close to float32's."""
    model = tiny_vit(attn_implementation=attn_implementation)
    images, labels = pixels(), torch.tensor([1, 2])
    with torch.inference_mode():
        expected = model(images).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images).logits
    torch.testing.assert_close(logits.float(), expected, atol=0.05, rtol=0.05)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(images, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.classifier.parameters())
    reference = tiny_vit(attn_implementation=attn_implementation).train()  # the same weights, in float32
    expected_loss = reference(images, labels=labels).loss
    expected_loss.backward()
    torch.testing.assert_close(loss, expected_loss, atol=0.01, rtol=0)
    for name, parameter in model.classifier.named_parameters():  # gradients of size ~1
        torch.testing.assert_close(parameter.grad, getattr(reference.classifier, name).grad, atol=0.02, rtol=0.02,
                                   msg=name)


def test_save_and_load_through_the_auto_classes(tmp_path):
    model = tiny_vit(pooling="mean")
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert {"configuration_vit.py", "modeling_vit.py", "image_processing_vit.py", "layers.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_vit.ScratchViTForImageClassification"

    assert type(AutoConfig.from_pretrained(tmp_path)) is sf.ScratchViTConfig
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    bare = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is sf.ScratchViTForImageClassification and type(bare) is sf.ScratchViTModel
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
    with torch.no_grad():  # loaded models default to sdpa, ours here runs eager: equal up to kernel rounding
        torch.testing.assert_close(loaded(pixels()).logits, model(pixels()).logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(bare(pixels()).pooler_output, model.vit(pixels()).pooler_output, atol=1e-6, rtol=0)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is sf.ScratchViTImageProcessorPil
    assert processor.size.height == processor.size.width == 32


def test_save_keeps_an_image_processor_that_is_already_there(tmp_path):
    model = tiny_vit()
    sf.make_image_processor(model.config, image_mean=[0.25] * 3).save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    assert list(AutoImageProcessor.from_pretrained(tmp_path).image_mean) == [0.25] * 3


def test_trust_remote_code_in_a_process_without_the_package(tmp_path):
    model = tiny_vit(num_layers=2)
    model.save_pretrained(tmp_path / "vit")
    random_image(37, 45).save(tmp_path / "image.png")
    torch.save(pixels(), tmp_path / "pixels.pt")
    with torch.no_grad():
        logits = model(pixels()).logits
    expected_pipeline = pipeline("image-classification", model=str(tmp_path / "vit"))(str(tmp_path / "image.png"))

    result = run_without_package(
        """
        import json, torch
        from transformers import AutoModelForImageClassification, pipeline
        model = AutoModelForImageClassification.from_pretrained("vit", trust_remote_code=True).eval()
        assert "scratchformers" not in type(model).__module__
        with torch.no_grad():
            logits = model(torch.load("pixels.pt")).logits
        classify = pipeline("image-classification", model="vit", trust_remote_code=True)
        print(json.dumps({"logits": logits.tolist(), "pipeline": classify("image.png")}))
        """,
        tmp_path,
    )
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(remote["logits"]), logits, atol=1e-6, rtol=0)
    assert [r["label"] for r in remote["pipeline"]] == [r["label"] for r in expected_pipeline]
    for ours, theirs in zip(expected_pipeline, remote["pipeline"]):
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-6)


def test_training_gradients_match_hugging_face():
    """A ported Hugging Face ViT (random biases) in training mode: same loss and the same gradient for every weight."""
    from transformers import ViTConfig, ViTForImageClassification

    from scratchformers.convert_vit import _vit_key_map

    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=96, num_labels=5,
    )
    torch.manual_seed(0)
    hf = randomized_biases(ViTForImageClassification._from_config(config, attn_implementation="sdpa"))
    ours = sf.vit_to_scratch(hf).train()
    hf.train()
    labels = torch.tensor([0, 3, 1])
    hf_loss = hf(pixels(batch=3), labels=labels).loss
    our_loss = ours(pixels(batch=3), labels=labels).loss
    torch.testing.assert_close(our_loss, hf_loss, atol=1e-6, rtol=0)
    hf_loss.backward()
    our_loss.backward()
    theirs = dict(hf.named_parameters())
    for name, parameter in ours.named_parameters():
        expected = theirs[_vit_key_map(ours.config)[name]].grad
        # the key bias has a zero gradient (softmax ignores it); both sides hold rounding noise (~1e-11)
        torch.testing.assert_close(parameter.grad, expected, atol=1e-6, rtol=1e-4, msg=name)


def test_set_input_embeddings_replaces_the_patch_embedding():
    model = tiny_vit()
    replacement = sf.modeling_vit.PatchEmbedding(model.config)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement and model.vit.embeddings.patch_embeddings is replacement
    with torch.no_grad():
        replacement.projection.weight.zero_()
        replacement.projection.bias.zero_()
        assert torch.equal(model(pixels()).logits, model(torch.zeros_like(pixels())).logits)  # the new one is used


VARIANTS = {
    "rotary": dict(position_embedding="rotary"),
    "swiglu": dict(activation_function="swiglu"),
    "geglu": dict(activation_function="geglu"),
    "qk_norm": dict(qk_norm=True),
    "gqa": dict(num_key_value_heads=2),
    "convolutional_stem": dict(patch_embedding="convolutional", stem_channels=4),
}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS)
def test_variants_agree_across_kernels_and_with_the_rewrites_switch(variant):
    """Each variant: eager and sdpa agree; forward_implementation="fast" gives the same logits (the rewrites
    run where they apply and the reference elsewhere); hidden states and attentions are recorded."""
    with torch.no_grad():
        eager = tiny_vit(attn_implementation="eager", **variant)
        sdpa = tiny_vit(attn_implementation="sdpa", **variant)
        reference = sdpa(pixels(batch=2)).logits
        torch.testing.assert_close(eager(pixels(batch=2)).logits, reference, atol=1e-5, rtol=1e-5)
        sdpa.config.forward_implementation = "fast"
        torch.testing.assert_close(sdpa(pixels(batch=2)).logits, reference, atol=1e-5, rtol=1e-5)
        out = eager(pixels(batch=2), output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == len(out.hidden_states) - 1 == 2 and out.attentions[0].shape == (2, 4, 17, 17)
    if variant.get("position_embedding") == "rotary":
        assert eager.vit.embeddings.position_embeddings is None  # no table: positions act inside attention


def test_the_convolutional_stem_is_strided_convolutions_batch_norm_and_relu_then_a_1x1_projection():
    """Xiao et al.'s stem, computed with torch.nn.functional from the model's own weights: 28x28 pixels, three
    stride-2 convolutions (28 -> 14 -> 7 -> 4, the edge padded) and channels 8, 16, 32; 16 tokens, like 7x7 patches."""
    model = tiny_vit(image_size=28, num_channels=1, patch_embedding="convolutional", stem_channels=8).train()
    stem = model.vit.embeddings.patch_embeddings
    assert model.config.stem_widths() == [8, 16, 32] and model.config.num_patches == 16
    images = pixels(batch=3, channels=1, height=28, width=28)
    x = images
    for convolution, norm, _ in stem.convolutions:
        x = nn.functional.conv2d(x, convolution.weight, stride=2, padding=1)
        mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        x = ((x - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None, None] + norm.bias[:, None, None]).relu()
    x = nn.functional.conv2d(x, stem.projection.weight, stem.projection.bias)
    assert x.shape == (3, 32, 4, 4)
    torch.testing.assert_close(stem(images), x.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    # He initialisation of the 3x3 convolutions (fan out = 9 · channels), batch norms start as the identity.
    first = stem.convolutions[0][0].weight
    assert abs(first.std().item() - (2 / (9 * 8)) ** 0.5) < 0.03
    assert all(torch.equal(norm.weight, torch.ones_like(norm.weight)) for _, norm, _ in stem.convolutions)


def test_a_convolutional_stem_saves_and_loads_its_batch_norm_statistics(tmp_path):
    model = tiny_vit(patch_embedding="convolutional", pooling="mean").train()
    model(pixels(batch=4))  # updates the running statistics
    model.eval()
    expected = model(pixels()).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    norm = loaded.vit.embeddings.patch_embeddings.convolutions[0][1]
    assert int(norm.num_batches_tracked) == 1 and not torch.equal(norm.running_var, torch.ones_like(norm.running_var))
    torch.testing.assert_close(loaded(pixels()).logits, expected)
    # Another size: the token grid is ceil(size / patch), the positions are resized to it.
    assert loaded(pixels(height=44, width=36), interpolate_pos_encoding=True).logits.shape == (2, 3)
