"""Weight port from Hugging Face's ``ViTForImageClassification`` into ``ScratchViTForImageClassification``.

Pretrained google/vit checkpoints thus run in our code, and a ported random model is an independent check of our
implementation: it must give the same logits (to 1e-4 in fp32).
"""

from __future__ import annotations

from typing import Optional

import torch

from .configuration_vit import ScratchViTConfig
from .config_checks import ACTIVATIONS, GATED_ACTIVATIONS
from .modeling_vit import ScratchViTForImageClassification


def _square(name: str, value) -> int:
    """HF allows (height, width) pairs for image_size / patch_size; ours are squares."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"Only square {name} can be ported, got {name}={tuple(value)}.")
        value = value[0]
    return int(value)


def vit_config_to_scratch(vit_config) -> ScratchViTConfig:
    """Translate a ``ViTConfig`` into the equivalent ``ScratchViTConfig`` (pre-norm LayerNorm, [CLS] pooling)."""
    plain = tuple(name for name in ACTIVATIONS if name not in GATED_ACTIVATIONS)  # HF's ViT has no gated MLP
    if vit_config.hidden_act not in plain:
        raise ValueError(f"ViT activation {vit_config.hidden_act!r} has no counterpart here (allowed: {plain}).")
    head_dim = getattr(vit_config, "head_dim", None)
    if head_dim is not None and head_dim * vit_config.num_attention_heads != vit_config.hidden_size:
        raise ValueError(f"head_dim={head_dim} × num_attention_heads must equal hidden_size={vit_config.hidden_size}.")
    return ScratchViTConfig(
        image_size=_square("image_size", vit_config.image_size),
        patch_size=_square("patch_size", vit_config.patch_size),
        num_channels=vit_config.num_channels,
        d_model=vit_config.hidden_size,
        num_layers=vit_config.num_hidden_layers,
        num_heads=vit_config.num_attention_heads,
        ffn_dim=vit_config.intermediate_size,
        activation_function=vit_config.hidden_act,
        dropout=vit_config.hidden_dropout_prob,
        attention_dropout=vit_config.attention_probs_dropout_prob,
        drop_path_rate=0.0,
        pooling="cls",
        norm_type="layernorm",
        norm_position="pre",
        qkv_bias=vit_config.qkv_bias,
        layer_norm_eps=vit_config.layer_norm_eps,
        init_std=vit_config.initializer_range,
        id2label=dict(vit_config.id2label),
        label2id=dict(vit_config.label2id),
        problem_type=vit_config.problem_type,
    )


def _vit_key_map(config: ScratchViTConfig) -> dict[str, str]:
    """Our parameter name -> the name in Hugging Face's ViTForImageClassification (transformers 5 layout)."""
    mapping = {
        name: name
        for name in (
            "vit.embeddings.cls_token",
            "vit.embeddings.position_embeddings",
            "vit.embeddings.patch_embeddings.projection.weight",
            "vit.embeddings.patch_embeddings.projection.bias",
            "classifier.weight",
            "classifier.bias",
        )
    }
    mapping["vit.layer_norm.weight"] = "vit.layernorm.weight"
    mapping["vit.layer_norm.bias"] = "vit.layernorm.bias"
    sublayers = {
        "self_attn.q_proj": "attention.q_proj",
        "self_attn.k_proj": "attention.k_proj",
        "self_attn.v_proj": "attention.v_proj",
        "self_attn.out_proj": "attention.o_proj",
        "self_attn_add_norm.norm": "layernorm_before",
        "ffn.fc1": "mlp.fc1",
        "ffn.fc2": "mlp.fc2",
        "ffn_add_norm.norm": "layernorm_after",
    }
    for i in range(config.num_layers):
        for ours, theirs in sublayers.items():
            for param in ("weight", "bias"):
                mapping[f"vit.layers.{i}.{ours}.{param}"] = f"vit.layers.{i}.{theirs}.{param}"
    return mapping


@torch.no_grad()
def vit_to_scratch(vit_model, attn_implementation: Optional[str] = None) -> ScratchViTForImageClassification:
    """Port a Hugging Face ``ViTForImageClassification`` (e.g. google/vit-base-patch16-224) into our model.

    ``attn_implementation`` defaults to the source model's ("eager" or "sdpa"). The result is in eval mode and in
    the source model's dtype. Pair it with ``make_image_processor(model.config)``, which reproduces google/vit's
    preprocessing (resize, mean = std = 0.5); ``save_pretrained`` writes it automatically.
    """
    if type(vit_model).__name__ != "ViTForImageClassification":
        raise TypeError(
            f"vit_to_scratch expects a transformers ViTForImageClassification, got {type(vit_model).__name__}."
        )
    config = vit_config_to_scratch(vit_model.config)
    attn_implementation = attn_implementation or vit_model.config._attn_implementation
    if attn_implementation not in ("eager", "sdpa"):
        attn_implementation = "sdpa"
    config._attn_implementation = attn_implementation
    model = ScratchViTForImageClassification(config)
    theirs = vit_model.state_dict()
    ours = model.state_dict()
    # Optional parameters (q/k/v biases, the classifier) exist on both sides or on neither.
    mapping = {our: their for our, their in _vit_key_map(config).items() if our in ours}
    unmapped = sorted(set(ours) - set(mapping))
    unused = sorted(set(theirs) - set(mapping.values()))
    if unmapped or unused:
        raise ValueError(f"Cannot port this ViT: our {unmapped[:5]} have no source, their {unused[:5]} no target.")
    for our_name, their_name in mapping.items():
        source = theirs[their_name]
        if source.shape != ours[our_name].shape:
            raise ValueError(f"{their_name} has shape {tuple(source.shape)}, ours {tuple(ours[our_name].shape)}.")
        ours[our_name].copy_(source)
    return model.to(vit_model.dtype).eval()


__all__ = ["vit_to_scratch", "vit_config_to_scratch"]
