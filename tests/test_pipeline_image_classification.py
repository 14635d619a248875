"""pipeline("image-classification") on a saved ViT: every input kind handed to the processor unconverted, one
prediction per image of a batch, and no prompt to run custom code."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from transformers import pipeline

import scratchformers as sf

from vit_fixtures import LABELS, input_kinds, saved_vit  # noqa: F401 (saved_vit: a fixture)


def test_the_pipeline_classifies_every_input_kind(saved_vit, tmp_path):
    model, path = saved_vit
    classify = pipeline("image-classification", model=str(path))
    for name, image in input_kinds(tmp_path).items():
        result = classify(image, top_k=3)
        assert sorted(r["label"] for r in result) == sorted(LABELS.values()), name
        assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5), name
        # the pipeline hands every input to the processor unconverted (transformers' load_image would make 8-bit RGB)
        with torch.no_grad():
            pixel_values = classify.image_processor(image, return_tensors="pt").pixel_values
            probabilities = model(pixel_values).logits.softmax(-1)[0]
        assert result[0]["label"] == LABELS[int(probabilities.argmax())], name
        assert result[0]["score"] == pytest.approx(float(probabilities.max()), abs=1e-5), name
    batch = classify([input_kinds(tmp_path)["pil_rgb"], input_kinds(tmp_path)["numpy_2d_grayscale"]])
    assert len(batch) == 2


def test_loading_the_pipeline_asks_no_question(saved_vit, monkeypatch):
    """transformers would prompt "Do you wish to run the custom code?" for a video processor it guesses."""

    def no_prompt(*args, **kwargs):
        raise AssertionError(f"pipeline() prompted: {args}")

    monkeypatch.setattr(builtins, "input", no_prompt)
    _, path = saved_vit
    classify = pipeline("image-classification", model=str(path))
    assert type(classify.image_processor) is sf.ScratchViTImageProcessorPil


def test_the_pipeline_gives_one_prediction_per_image_of_a_4d_batch(saved_vit):
    model, path = saved_vit
    classify = pipeline("image-classification", model=str(path))
    rng = np.random.default_rng(3)
    for batch in (
        rng.integers(0, 256, (2, 29, 41, 3), dtype=np.uint8),
        rng.integers(0, 65536, (2, 3, 20, 20), dtype=np.uint16),
        torch.rand(2, 1, 30, 30, generator=torch.Generator().manual_seed(0)),
    ):
        results = classify(batch, top_k=3)
        assert len(results) == 2, type(batch)
        for image, result in zip(batch, results):
            with torch.no_grad():
                pixel_values = classify.image_processor(image, return_tensors="pt").pixel_values
                probabilities = model(pixel_values).logits.softmax(-1)[0]
            scores = {r["label"]: r["score"] for r in result}
            for index, label in LABELS.items():
                assert scores[label] == pytest.approx(float(probabilities[index]), abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Precision: the model's dtype on every CPU, bf16 autocast only when asked
# ----------------------------------------------------------------------------------------------------------------
def forward_precisions(classify, *args, **kwargs) -> tuple[set, list]:
    """(autocast on, logits dtype) of every forward of the pipeline's model during ``classify(*args, **kwargs)``,
    and its result."""
    seen = set()
    handle = classify.model.register_forward_hook(
        lambda module, inputs, output: seen.add((torch.is_autocast_enabled("cpu"), output.logits.dtype)))
    try:
        result = classify(*args, **kwargs)
    finally:
        handle.remove()
    return seen, result


@pytest.mark.parametrize("flags", [[], ["avx512f", "avx512_bf16"], ["amx_bf16"]], ids=["none", "avx512", "amx"])
def test_classification_runs_in_the_models_dtype_on_any_cpu(saved_vit, cpu_flags, flags):
    model, path = saved_vit
    classify = pipeline("image-classification", model=str(path))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cpu_flags(*flags)  # no SCRATCHFORMERS_BF16 either
    seen, batched = forward_precisions(classify, images, top_k=3)
    assert seen == {(False, torch.float32)}
    with torch.no_grad():
        probabilities = model(classify.image_processor(list(images), return_tensors="pt").pixel_values).logits.softmax(-1)
    for image, probability, result in zip(images, probabilities, batched):
        assert {r["label"]: r["score"] for r in result} == pytest.approx(
            {label: float(probability[i]) for i, label in LABELS.items()}, abs=1e-6)  # the model's softmax
        assert forward_precisions(classify, image, top_k=3)[1] == result  # one image at a time: the same


def test_autocast_bf16_true_asks_for_bf16_at_construction_or_call(saved_vit, cpu_flags):
    _, path = saved_vit
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    cpu_flags()  # also where bf16 is emulated: the caller asked
    classify = pipeline("image-classification", model=str(path))
    seen, bf16 = forward_precisions(classify, image, top_k=3, autocast_bf16=True)
    assert seen == {(True, torch.bfloat16)} and sum(r["score"] for r in bf16) == pytest.approx(1.0, abs=1e-3)
    asked = pipeline("image-classification", model=str(path), autocast_bf16=True)
    assert forward_precisions(asked, image)[0] == {(True, torch.bfloat16)}
    assert forward_precisions(asked, image, autocast_bf16=False)[0] == {(False, torch.float32)}
