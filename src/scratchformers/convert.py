"""Weight ports from Hugging Face models into ours, so pretrained checkpoints run in our code.

They double as an independent check of our implementation: a ported random model must give the same logits.
"""

from __future__ import annotations

import copy

import torch

from .config_checks import ACTIVATIONS
from .configuration_causal_lm import ScratchTransformerLMConfig
from .configuration_transformer import ScratchTransformerConfig
from .convert_vit import vit_config_to_scratch, vit_to_scratch  # the ViT port lives in its own module
from .modeling_causal_lm import ScratchTransformerForCausalLM
from .modeling_transformer import ScratchTransformerForConditionalGeneration

_MARIAN_ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu"}


def marian_config_to_scratch(marian_config) -> ScratchTransformerConfig:
    """Translate a ``MarianConfig`` into the equivalent ``ScratchTransformerConfig`` (post-norm, learned positions)."""
    if not getattr(marian_config, "share_encoder_decoder_embeddings", True):
        raise ValueError("Only Marian models with share_encoder_decoder_embeddings=True can be ported (one joint vocabulary).")
    if marian_config.encoder_ffn_dim != marian_config.decoder_ffn_dim:
        raise ValueError(
            f"encoder_ffn_dim={marian_config.encoder_ffn_dim} != decoder_ffn_dim={marian_config.decoder_ffn_dim}; "
            "our config has a single ffn_dim."
        )
    activation = _MARIAN_ACTIVATIONS.get(marian_config.activation_function)
    if activation is None:
        raise ValueError(f"Marian activation {marian_config.activation_function!r} has no counterpart here.")
    eos = marian_config.eos_token_id
    return ScratchTransformerConfig(
        vocab_size=marian_config.vocab_size,
        d_model=marian_config.d_model,
        encoder_layers=marian_config.encoder_layers,
        decoder_layers=marian_config.decoder_layers,
        encoder_attention_heads=marian_config.encoder_attention_heads,
        decoder_attention_heads=marian_config.decoder_attention_heads,
        ffn_dim=marian_config.encoder_ffn_dim,
        activation_function=activation,
        dropout=marian_config.dropout,
        attention_dropout=marian_config.attention_dropout,
        activation_dropout=marian_config.activation_dropout,
        max_position_embeddings=marian_config.max_position_embeddings,
        position_embedding="learned",  # Marian's sin|cos table has another layout: carry it over as data
        scale_embedding=marian_config.scale_embedding,
        norm_type="layernorm",
        norm_position="post",
        layer_norm_eps=1e-5,
        attention_scoring="scaled_dot",
        attention_bias=True,
        output_bias=True,
        tie_word_embeddings=True,
        init_std=marian_config.init_std,
        pad_token_id=marian_config.pad_token_id,
        bos_token_id=None,  # Marian has no BOS: the decoder starts from pad
        eos_token_id=eos,
        decoder_start_token_id=marian_config.decoder_start_token_id,
    )


def _marian_key_map(config: ScratchTransformerConfig) -> dict[str, str]:
    """Our parameter name -> Marian's parameter name."""
    mapping = {
        "model.shared.weight": "model.shared.weight",
        "model.encoder.embeddings.embed_positions.weight": "model.encoder.embed_positions.weight",
        "model.decoder.embeddings.embed_positions.weight": "model.decoder.embed_positions.weight",
        "lm_head.bias": "final_logits_bias",
    }
    sublayers = {
        "self_attn": "self_attn",
        "self_attn_add_norm.norm": "self_attn_layer_norm",
        "ffn.fc1": "fc1",
        "ffn.fc2": "fc2",
        "ffn_add_norm.norm": "final_layer_norm",
    }
    decoder_sublayers = {**sublayers, "cross_attn": "encoder_attn", "cross_attn_add_norm.norm": "encoder_attn_layer_norm"}
    for stack, count, names in (("encoder", config.encoder_layers, sublayers), ("decoder", config.decoder_layers, decoder_sublayers)):
        for i in range(count):
            for ours, theirs in names.items():
                projections = ("q_proj", "k_proj", "v_proj", "out_proj") if ours.endswith("attn") else ("",)
                for proj in projections:
                    suffix = f".{proj}" if proj else ""
                    for param in ("weight", "bias"):
                        mapping[f"model.{stack}.layers.{i}.{ours}{suffix}.{param}"] = (
                            f"model.{stack}.layers.{i}.{theirs}{suffix}.{param}"
                        )
    return mapping


@torch.no_grad()
def marian_to_scratch(marian_model) -> ScratchTransformerForConditionalGeneration:
    """Port a Hugging Face ``MarianMTModel`` (e.g. an opus-mt checkpoint) into ``ScratchTransformerForConditionalGeneration``.

    Config and weights are translated; Marian's positional table is carried into a learned position table and its
    ``final_logits_bias`` into the output bias. The generation config (beams, max length, bad words) is kept.
    """
    config = marian_config_to_scratch(marian_model.config)
    model = ScratchTransformerForConditionalGeneration(config)
    theirs = marian_model.state_dict()
    ours = model.state_dict()
    for our_name, their_name in _marian_key_map(config).items():
        source = theirs[their_name]
        if our_name == "lm_head.bias":
            source = source.reshape(-1)
        ours[our_name].copy_(source)
    model.generation_config = copy.deepcopy(marian_model.generation_config)
    return model.to(marian_model.dtype).eval()


def gpt2_config_to_scratch(gpt2_config) -> ScratchTransformerLMConfig:
    """Translate a ``GPT2Config`` into the equivalent ``ScratchTransformerLMConfig``: pre-norm LayerNorm with a final
    norm, learned positions, GPT-2's activation (``"gelu_new"``, the tanh approximation), tied output projection."""
    refused = {"scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": True, "add_cross_attention": True}
    for name, value in refused.items():
        if getattr(gpt2_config, name, not value) == value:
            raise ValueError(f"GPT-2 models with {name}={value} cannot be ported: our attention has no counterpart.")
    if gpt2_config.activation_function not in ACTIVATIONS:
        raise ValueError(
            f"GPT-2 activation {gpt2_config.activation_function!r} has no counterpart here; allowed: "
            f"{', '.join(map(repr, ACTIVATIONS))}."
        )
    return ScratchTransformerLMConfig(
        vocab_size=gpt2_config.vocab_size,
        d_model=gpt2_config.n_embd,
        num_hidden_layers=gpt2_config.n_layer,
        num_attention_heads=gpt2_config.n_head,
        ffn_dim=gpt2_config.n_inner or 4 * gpt2_config.n_embd,
        activation_function=gpt2_config.activation_function,
        dropout=gpt2_config.resid_pdrop,  # GPT-2's embedding dropout (embd_pdrop) shares our one dropout
        attention_dropout=gpt2_config.attn_pdrop,
        activation_dropout=0.0,
        max_position_embeddings=gpt2_config.n_positions,
        position_embedding="learned",
        scale_embedding=False,
        norm_type="layernorm",
        norm_position="pre",
        layer_norm_eps=gpt2_config.layer_norm_epsilon,
        attention_bias=True,
        tie_word_embeddings=getattr(gpt2_config, "tie_word_embeddings", True),
        init_std=gpt2_config.initializer_range,
        pad_token_id=gpt2_config.pad_token_id,
        bos_token_id=gpt2_config.bos_token_id,
        eos_token_id=gpt2_config.eos_token_id,
    )


def _gpt2_state_dict(gpt2_model, config: ScratchTransformerLMConfig) -> dict[str, torch.Tensor]:
    """GPT-2's weights under our names. GPT-2's ``Conv1D`` stores ``[in, out]``: transposed into ``nn.Linear``'s
    ``[out, in]``; its fused query/key/value projection ``c_attn`` is split into ``q_proj``, ``k_proj``, ``v_proj``."""
    theirs = gpt2_model.state_dict()
    ours = {
        "model.embeddings.embed_tokens.weight": theirs["transformer.wte.weight"],
        "model.embeddings.embed_positions.weight": theirs["transformer.wpe.weight"],
        "model.layer_norm.weight": theirs["transformer.ln_f.weight"],
        "model.layer_norm.bias": theirs["transformer.ln_f.bias"],
        "lm_head.weight": theirs["lm_head.weight"],
    }
    for i in range(config.num_hidden_layers):
        block, layer = f"transformer.h.{i}", f"model.layers.{i}"
        weights = theirs[f"{block}.attn.c_attn.weight"].t().chunk(3, dim=0)
        biases = theirs[f"{block}.attn.c_attn.bias"].chunk(3, dim=0)
        for name, weight, bias in zip(("q_proj", "k_proj", "v_proj"), weights, biases):
            ours[f"{layer}.self_attn.{name}.weight"], ours[f"{layer}.self_attn.{name}.bias"] = weight, bias
        for ours_name, theirs_name in (("self_attn.out_proj", "attn.c_proj"), ("ffn.fc1", "mlp.c_fc"),
                                       ("ffn.fc2", "mlp.c_proj")):
            ours[f"{layer}.{ours_name}.weight"] = theirs[f"{block}.{theirs_name}.weight"].t()
            ours[f"{layer}.{ours_name}.bias"] = theirs[f"{block}.{theirs_name}.bias"]
        for ours_name, theirs_name in (("self_attn_add_norm.norm", "ln_1"), ("ffn_add_norm.norm", "ln_2")):
            for param in ("weight", "bias"):
                ours[f"{layer}.{ours_name}.{param}"] = theirs[f"{block}.{theirs_name}.{param}"]
    return ours


@torch.no_grad()
def gpt2_to_scratch(gpt2_model) -> ScratchTransformerForCausalLM:
    """Port a Hugging Face ``GPT2LMHeadModel`` into ``ScratchTransformerForCausalLM`` (config, weights and
    generation config): the same logits, and the same tokens from ``generate``."""
    config = gpt2_config_to_scratch(gpt2_model.config)
    model = ScratchTransformerForCausalLM(config)
    ours = model.state_dict()
    for name, tensor in _gpt2_state_dict(gpt2_model, config).items():
        ours[name].copy_(tensor)
    model.generation_config = copy.deepcopy(gpt2_model.generation_config)
    return model.to(gpt2_model.dtype).eval()


__all__ = [
    "marian_to_scratch", "marian_config_to_scratch", "vit_to_scratch", "vit_config_to_scratch", "gpt2_to_scratch",
    "gpt2_config_to_scratch",
]
