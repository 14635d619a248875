"""Export a trained translation model to CTranslate2, for serving.

CTranslate2 (https://opennmt.net/CTranslate2) is an inference engine for Transformer models: fast CPU and GPU
decoding, int8 / float16 weights, batching, and no PyTorch at serving time. This module describes a
``ScratchTransformerForConditionalGeneration`` in CTranslate2's own model description
(``ctranslate2.specs.TransformerSpec``), weight by weight, and writes it with CTranslate2's ``Converter``, so the
exported model computes what ours computes: in float32 the same log-probabilities (to float rounding) and the
same translations.

Mapped exactly: post- or pre-norm; LayerNorm or RMSNorm with our ε; sinusoidal or learned position tables, written
out as CTranslate2's position encodings (row ``i`` = position ``i`` from 0, in both stacks, so neither the table's
sin/cos layout nor its offset depends on CTranslate2's defaults); rotary positions (RoFormer, half-split pairs,
base 10000, self-attention only, as ours); relu / gelu / silu and the gated swiglu / geglu feed-forward networks;
grouped-query attention; q/k/v/out biases or none; tied or untied output projection, with or without its bias;
the √d_model embedding scale or none; different head counts in encoder and decoder. Refused with a ``ValueError``
naming the config field, its value and what is supported: additive attention and qk-norm, which CTranslate2's
encoder-decoder Transformer does not compute as we do.

Decoding, where the two libraries' defaults differ (checked by tests/test_export_ct2.py):

- CTranslate2's ``translate_batch`` forbids an empty translation (``min_decoding_length=1``); ``generate`` allows
  it: pass ``min_decoding_length=0``. ``max_decoding_length=N`` is ``max_new_tokens=N``; with a position table,
  ``N`` (and the source length) must stay within ``max_position_embeddings``, as for ``generate``: CTranslate2
  raises "No position encodings are defined for positions >= ..." when decoding reaches it.
- Greedy search (``beam_size=1`` / ``num_beams=1``) gives the same tokens.
- Beam search: CTranslate2 divides a finished hypothesis' log-probability by ``length ** length_penalty`` without
  the ``</s>`` and stops after ``beam_size`` finished hypotheses; transformers counts the ``</s>`` and, by default
  (``early_stopping=False``), goes on while a running beam might still win. They agree exactly with
  ``length_penalty=0`` on both sides, or for any ``length_penalty`` with ``generate(..., early_stopping=True)`` and
  ``translate_batch(..., return_end_token=True)`` (the ``</s>`` then ends the hypothesis: drop it). With both
  defaults (length penalty 1) most, not all, translations agree.

Generation settings (beam size, length limits, banned tokens) are not part of a CTranslate2 model: pass them to
``translate_batch``.

    scratchformers export ct2 MODEL_DIR OUT_DIR [--quantization int8] [--overwrite]

Needs ``pip install 'scratchformers[ct2]'``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .configuration_transformer import ScratchTransformerConfig
from .modeling_transformer import ScratchTransformerForConditionalGeneration

INSTALL_HINT = "pip install 'scratchformers[ct2]'"

# Our activation -> (CTranslate2's Activation member, gated feed-forward). ACT2FN["gelu"] is the exact (erf) GELU.
ACTIVATIONS = {
    "relu": ("RELU", False), "gelu": ("GELU", False), "silu": ("SWISH", False),
    "swiglu": ("SWISH", True), "geglu": ("GELU", True),
}
# The files of a CTranslate2 model directory that CTranslate2 reads: an earlier export's ones that this export does
# not write again are removed on overwrite (CTranslate2 would read a stale vocabulary).
CT2_FILES = ("model.bin", "config.json", "vmap.txt", *(
    f"{side}_vocabulary{suffix}" for side in ("shared", "source", "target") for suffix in (".json", ".txt")
))


def import_ctranslate2() -> Any:
    """The ``ctranslate2`` module, or an ``ImportError`` that says how to install it."""
    try:
        import ctranslate2
        import ctranslate2.converters  # noqa: F401  (Converter, used by ``converter``)
        import ctranslate2.specs  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"Exporting to CTranslate2 needs the ctranslate2 package, which is not installed: {INSTALL_HINT}"
        ) from error
    return ctranslate2


def check_quantization(quantization: Optional[str]) -> None:
    """Refuse a weight type CTranslate2 does not know (``None``: float32, as trained)."""
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    if quantization is not None and quantization not in ACCEPTED_MODEL_TYPES:
        raise ValueError(f"quantization={quantization!r} is not a CTranslate2 weight type; supported: "
                         f"{', '.join(ACCEPTED_MODEL_TYPES)} (or none: float32)")


# --------------------------------------------------------------------------------------------------------------
# What can be exported
# --------------------------------------------------------------------------------------------------------------
def check_exportable(config: ScratchTransformerConfig) -> None:
    """Raise ``ValueError`` naming the first config field whose value CTranslate2 cannot compute as we do."""

    def refuse(field: str, why: str, supported: str) -> None:
        raise ValueError(
            f"Cannot export to CTranslate2: {field}={getattr(config, field)!r} {why}; supported: {supported}."
        )

    if getattr(config, "quantization", None) is not None:
        refuse("quantization", "(our int8 layers) is not a float model CTranslate2 can read", "None: export the "
               "float32 model and let CTranslate2 quantize it (--quantization int8)")
    if config.attention_scoring != "scaled_dot":
        refuse("attention_scoring", "is not an attention CTranslate2 computes", "'scaled_dot'")
    if config.qk_norm:
        refuse("qk_norm", "(per-head query/key norms) is not computed as ours by CTranslate2's encoder-decoder "
               "Transformer", "False")
    if config.activation_function not in ACTIVATIONS:
        refuse("activation_function", "has no CTranslate2 counterpart", ", ".join(map(repr, ACTIVATIONS)))
    if config.norm_type not in ("layernorm", "rmsnorm"):
        refuse("norm_type", "is not a norm CTranslate2 computes", "'layernorm', 'rmsnorm'")
    if config.norm_position not in ("pre", "post"):
        refuse("norm_position", "is not a norm placement CTranslate2 computes", "'pre', 'post'")
    if config.position_embedding not in ("sinusoidal", "learned", "rotary"):
        refuse("position_embedding", "has no CTranslate2 counterpart", "'sinusoidal', 'learned', 'rotary'")
    if config.decoder_start_token_id is None:
        refuse("decoder_start_token_id", "leaves the decoder without a start token", "a token id (usually bos)")
    if len(token_ids(config.eos_token_id)) != 1:
        refuse("eos_token_id", "is not one token, and a CTranslate2 model has one end token", "a single token id")


def token_ids(value: Any) -> list[int]:
    """A config's token id field (an id, a list of ids or None) as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


# --------------------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------------------
def vocabulary(tokenizer: Any, vocab_size: int) -> list[str]:
    """The token strings of ids ``0 .. vocab_size - 1``: CTranslate2 reads and writes tokens, not ids.

    Ids past the tokenizer (an embedding padded beyond it) get placeholder strings no text tokenizes to.
    """
    if len(tokenizer) > vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}: use "
                         "the tokenizer saved with this model.")
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    taken = {token for token in tokens if token is not None}
    for index, token in enumerate(tokens):
        if token is None:
            placeholder = f"<unused_{index}>"
            while placeholder in taken:
                placeholder = f"<{placeholder}>"
            tokens[index] = placeholder
            taken.add(placeholder)
    if len(taken) != vocab_size:
        seen: set[str] = set()
        duplicates = []
        for token in tokens:
            if token in seen:
                duplicates.append(token)
            seen.add(token)
        raise ValueError(f"The tokenizer gives several ids the same token string ({duplicates[:3]}): CTranslate2 "
                         "reads tokens as strings, so every id needs its own.")
    return tokens


# --------------------------------------------------------------------------------------------------------------
# The model spec, weight by weight
# --------------------------------------------------------------------------------------------------------------
def tensor(value: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy, detached. A copy, not a view: CTranslate2's int8 quantization scales the arrays it is
    given in place, which would otherwise change the model's own weights."""
    return value.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()


def set_linear(spec: Any, linears: list[torch.nn.Linear]) -> None:
    """One CTranslate2 linear from one or more of ours stacked along the output axis (q|k|v, or k|v)."""
    spec.weight = torch.cat([tensor(linear.weight) for linear in linears])
    if any(linear.bias is not None for linear in linears):
        spec.bias = torch.cat([tensor(linear.bias) if linear.bias is not None else torch.zeros(linear.out_features)
                               for linear in linears])


def set_norm(spec: Any, norm: torch.nn.Module) -> None:
    spec.gamma = tensor(norm.weight)
    if hasattr(spec, "beta"):  # LayerNorm; RMSNorm has no shift
        spec.beta = tensor(norm.bias)


def set_attention(spec: Any, attention: torch.nn.Module, add_norm: torch.nn.Module) -> None:
    """Self-attention: ``linear[0]`` = q|k|v; cross-attention: ``linear[0]`` = q, ``linear[1]`` = k|v; the last
    linear is the output projection. Our add & norm's norm is the attention spec's ``layer_norm``: CTranslate2
    applies it before (pre-norm) or after the residual sum (post-norm), as ours does."""
    if attention.is_cross_attention:
        set_linear(spec.linear[0], [attention.q_proj])
        set_linear(spec.linear[1], [attention.k_proj, attention.v_proj])
    else:
        set_linear(spec.linear[0], [attention.q_proj, attention.k_proj, attention.v_proj])
    set_linear(spec.linear[-1], [attention.out_proj])
    set_norm(spec.layer_norm, add_norm.norm)


def set_feed_forward(spec: Any, layer: torch.nn.Module) -> None:
    """``linear_0`` = fc1 and ``linear_1`` = fc2; a gated network's fc1 holds gate|value, which CTranslate2 keeps
    apart as ``linear_0`` (the gate, through the activation) and ``linear_0_noact`` (the value)."""
    fc1 = layer.ffn.fc1
    if hasattr(spec, "linear_0_noact"):
        for part, half in zip((spec.linear_0, spec.linear_0_noact), range(2)):
            part.weight = tensor(fc1.weight.chunk(2)[half])
            if fc1.bias is not None:
                part.bias = tensor(fc1.bias.chunk(2)[half])
    else:
        set_linear(spec.linear_0, [fc1])
    set_linear(spec.linear_1, [layer.ffn.fc2])
    set_norm(spec.layer_norm, layer.ffn_add_norm.norm)


def set_stack(spec: Any, stack: torch.nn.Module, embedding_spec: Any) -> None:
    """Token embedding, its scale, the position table (none for rotary positions) and the final norm (pre-norm)."""
    embeddings = stack.embeddings
    embedding_spec.weight = tensor(embeddings.embed_tokens.weight)
    spec.scale_embeddings = float(embeddings.embed_scale)
    positions = embeddings.embed_positions
    if positions is not None:
        spec.position_encodings.encodings = tensor(positions.table if hasattr(positions, "table") else positions.weight)
    if stack.layer_norm is not None:
        set_norm(spec.layer_norm, stack.layer_norm)


def build_spec(model: ScratchTransformerForConditionalGeneration, tokenizer: Any) -> Any:
    """CTranslate2's ``TransformerSpec`` of ``model``: its weights, vocabulary (``tokenizer``'s tokens in id order)
    and special tokens (the decoder start token, ``</s>``, ``<unk>``)."""
    import_ctranslate2()
    from ctranslate2.specs import common_spec, transformer_spec

    config = model.config
    check_exportable(config)
    activation, gated = ACTIVATIONS[config.activation_function]
    options: dict[str, Any] = dict(
        pre_norm=config.norm_position == "pre",
        activation=getattr(common_spec.Activation, activation),
        ffn_glu=gated,
        rms_norm=config.norm_type == "rmsnorm",
        num_heads_kv=config.num_key_value_heads,
    )
    if config.position_embedding == "rotary":  # ours: pairs (i, i + D/2) of every head, base 10000
        options.update(rotary_dim=0, rotary_interleave=False, rotary_base=10000.0)
    spec = transformer_spec.TransformerSpec(
        transformer_spec.TransformerEncoderSpec(config.encoder_layers, config.encoder_attention_heads, **options),
        transformer_spec.TransformerDecoderSpec(config.decoder_layers, config.decoder_attention_heads, **options),
    )
    encoder, decoder = model.get_encoder(), model.get_decoder()
    set_stack(spec.encoder, encoder, spec.encoder.embeddings[0])
    for layer_spec, layer in zip(spec.encoder.layer, encoder.layers):
        set_attention(layer_spec.self_attention, layer.self_attn, layer.self_attn_add_norm)
        set_feed_forward(layer_spec.ffn, layer)
    set_stack(spec.decoder, decoder, spec.decoder.embeddings)
    for layer_spec, layer in zip(spec.decoder.layer, decoder.layers):
        set_attention(layer_spec.self_attention, layer.self_attn, layer.self_attn_add_norm)
        set_attention(layer_spec.attention, layer.cross_attn, layer.cross_attn_add_norm)
        set_feed_forward(layer_spec.ffn, layer)
    set_linear(spec.decoder.projection, [model.lm_head])

    tokens = vocabulary(tokenizer, config.vocab_size)
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    # generate() ends at the generation config's eos, which defaults to the model config's.
    generation = getattr(model, "generation_config", None)
    eos = token_ids(getattr(generation, "eos_token_id", None)) or token_ids(config.eos_token_id)
    if len(eos) != 1:
        raise ValueError(f"Cannot export to CTranslate2: generation_config.eos_token_id={generation.eos_token_id!r} "
                         "is not one token, and a CTranslate2 model has one end token; supported: a single token id.")
    start = tokens[config.decoder_start_token_id]
    spec.config.decoder_start_token = start
    spec.config.eos_token = tokens[eos[0]]
    spec.config.bos_token = tokens[config.bos_token_id] if config.bos_token_id is not None else start
    unk = getattr(tokenizer, "unk_token", None)
    spec.config.unk_token = unk if unk in tokens else spec.config.eos_token  # must be in the vocabulary
    spec.config.layer_norm_epsilon = float(config.layer_norm_eps)
    return spec


def converter(model: ScratchTransformerForConditionalGeneration, tokenizer: Any) -> Any:
    """A ``ctranslate2.converters.Converter`` of ``model``: its ``convert(out_dir, quantization=...)`` validates the
    spec, quantizes the weights if asked, and writes ``model.bin``, ``config.json`` and the vocabulary."""
    from ctranslate2.converters import Converter

    class ScratchTransformerConverter(Converter):
        def _load(self) -> Any:
            return build_spec(model, tokenizer)

    return ScratchTransformerConverter()


# --------------------------------------------------------------------------------------------------------------
# Loading and writing
# --------------------------------------------------------------------------------------------------------------
def load_translation_model(
    model_dir: Union[str, os.PathLike],
) -> tuple[ScratchTransformerForConditionalGeneration, Any]:
    """The model and tokenizer saved in ``model_dir``; ``ValueError`` (``FileNotFoundError`` for no model at all)
    when it is not a scratchformers translation model, CTranslate2 cannot run it, or its weights do not load."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"'{model_dir}' is not a model directory: it has no config.json (save the model "
                                "with save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"'{model_dir}' does not hold a scratchformers translation model: {error}") from error
    if not isinstance(config, ScratchTransformerConfig):
        raise ValueError(f"'{model_dir}' holds a {config.model_type} model, not a scratchformers translation model "
                         f"({ScratchTransformerConfig.model_type}): only those export to CTranslate2")
    check_exportable(config)  # before the weights are loaded
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"no usable tokenizer in '{model_dir}' (save it next to the model): {error}") from error
    model, info = ScratchTransformerForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    problems = [f"{kind.replace('_', ' ')}: {', '.join(map(str, info[kind]))}"
                for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)]
    if problems:
        raise ValueError(f"the weights in '{model_dir}' do not match its config.json ({'; '.join(problems)})")
    return model.eval(), tokenizer


def check_out_dir(out_dir: Union[str, os.PathLike], overwrite: bool) -> Path:
    """``out_dir`` as a path; ``FileExistsError`` for a file, or a non-empty directory without ``overwrite``."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"'{out_dir}' is a file, not a directory to write the CTranslate2 model into")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"'{out_dir}' is not empty: choose another directory, or pass overwrite=True "
                              "(--overwrite) to replace the CTranslate2 model in it")
    return path


def export_ct2(
    model_dir_or_model: Union[str, os.PathLike, ScratchTransformerForConditionalGeneration],
    out_dir: Union[str, os.PathLike],
    *,
    quantization: Optional[str] = None,
    overwrite: bool = False,
    tokenizer: Any = None,
) -> Path:
    """Write a CTranslate2 model directory that translates like ``model_dir_or_model``; returns its path.

    Args:
        model_dir_or_model: a directory saved with ``save_pretrained`` (model and tokenizer), or a
            ``ScratchTransformerForConditionalGeneration`` (with ``tokenizer``, or loaded from a directory that
            holds its tokenizer).
        out_dir: where to write ``model.bin``, ``config.json``, ``shared_vocabulary.json`` (the tokenizer's tokens
            in id order) and the tokenizer's files, so that the directory serves on its own.
        quantization: CTranslate2's weight type, e.g. ``"int8"``, ``"int8_float16"``, ``"float16"``; ``None`` keeps
            float32, which translates exactly as ours.
        overwrite: allow a non-empty ``out_dir``: the files this export writes replace theirs, an earlier export's
            CTranslate2 files go, other files stay. Without it a non-empty ``out_dir`` is refused.
        tokenizer: the model's tokenizer (default: the one saved with the model).

    Raises ``ValueError`` for a model CTranslate2 cannot run as ours (naming the config field) or that is not a
    scratchformers translation model, ``FileExistsError`` for a non-empty ``out_dir``, ``ImportError`` without
    ctranslate2. A failed export leaves ``out_dir`` as it was.
    """
    import_ctranslate2()
    check_quantization(quantization)
    path = check_out_dir(out_dir, overwrite)
    if isinstance(model_dir_or_model, ScratchTransformerForConditionalGeneration):
        model = model_dir_or_model
        check_exportable(model.config)
        if tokenizer is None:
            source = Path(getattr(model, "name_or_path", "") or "")
            if not (str(source) and (source / "tokenizer_config.json").is_file()):
                raise ValueError("export_ct2 of a model object needs its tokenizer: pass tokenizer=...")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source)
    elif isinstance(model_dir_or_model, (str, os.PathLike)):
        model, saved_tokenizer = load_translation_model(model_dir_or_model)
        tokenizer = saved_tokenizer if tokenizer is None else tokenizer
    else:
        raise ValueError(f"export_ct2 takes a model directory or a ScratchTransformerForConditionalGeneration, got a "
                         f"{type(model_dir_or_model).__name__}: only scratchformers translation models export to "
                         "CTranslate2")

    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside out_dir, then moved in: an export that fails on the way leaves out_dir untouched.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.export-") as staging:
        written = Path(staging) / "ct2"
        converter(model, tokenizer).convert(str(written), quantization=quantization)
        tokenizer.save_pretrained(written)
        path.mkdir(exist_ok=True)
        for name in CT2_FILES:
            if (path / name).is_file() and not (written / name).exists():
                (path / name).unlink()
        for item in written.iterdir():
            target = path / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    return path


__all__ = ["export_ct2", "build_spec", "check_exportable", "converter", "vocabulary", "INSTALL_HINT"]
