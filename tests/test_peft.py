"""peft LoRA on every model: an adapter on any projection changes the output, trains, and survives merging."""

from __future__ import annotations

import copy

import pytest
import torch

peft = pytest.importorskip("peft", reason="pip install -e '.[peft]'")

from test_modeling_causal_lm import make_lm  # noqa: E402
from test_modeling_transformer import make_model  # noqa: E402
from vit_fixtures import pixels, tiny_vit  # noqa: E402

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def seq2seq_case():
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(4, 40, (2, 7), generator=generator),
              "labels": torch.randint(4, 40, (2, 5), generator=generator)}
    return make_model(init_std=0.3), inputs, "logits"  # peaked attention, so that q/k adapters matter


def causal_lm_case():
    input_ids = torch.randint(3, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    return make_lm(), {"input_ids": input_ids, "labels": input_ids}, "logits"


def vit_case():
    return tiny_vit(init_std=0.3).eval(), {"pixel_values": pixels(), "labels": torch.tensor([1, 2])}, "logits"


# peft 0.21 itself reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning since 5.23).
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("case", [seq2seq_case, causal_lm_case, vit_case], ids=["seq2seq", "causal_lm", "vit"])
@pytest.mark.parametrize("target", PROJECTIONS)
def test_lora_adapter_changes_the_output_trains_and_merges(case, target):
    base, inputs, key = case()
    with torch.no_grad():
        reference = base(**inputs)[key]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=[target], init_lora_weights=False)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    adapters = [(name, p) for name, p in model.named_parameters() if "lora_" in name]
    assert adapters and all(p.requires_grad for _, p in adapters)
    assert not any(p.requires_grad for name, p in model.named_parameters() if "lora_" not in name)

    model.eval()
    with torch.no_grad():
        adapted = model(**inputs)[key]
    assert (adapted - reference).abs().max() > 1e-3, f"the {target} adapters do not change the output"

    model.train()
    model(**inputs).loss.backward()
    for name, p in adapters:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"
    optimizer = torch.optim.SGD([p for _, p in adapters], lr=0.1)
    optimizer.step()
    model.eval()
    with torch.no_grad():
        trained = model(**inputs)[key]
        merged = model.merge_and_unload()(**inputs)[key]
    assert (trained - adapted).abs().max() > 1e-4, f"a step on the {target} adapters changes nothing"
    torch.testing.assert_close(merged, trained, atol=1e-5, rtol=1e-4)
