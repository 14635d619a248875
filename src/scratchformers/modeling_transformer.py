"""The encoder-decoder Transformer of the notes, written from scratch, living natively in transformers 5.

Embedding (× √d_model) + positional encoding -> N encoder layers -> N decoder layers (causal self-attention,
cross-attention) -> output projection. The skeleton follows transformers' own seq2seq models:
Attention (layers.py) -> EncoderLayer / DecoderLayer -> Encoder / Decoder -> PreTrainedModel -> Model -> LM head.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .compat import accepts_cache_alias, cache_field, cache_of
from .configuration_transformer import ScratchTransformerConfig
from .generation import ScratchGenerationMixin
from .layers import (
    AddNorm,
    MultiHeadAttention,
    RotaryPositionalEncoding,
    build_attention_mask,
    check_positions,
    make_feed_forward,
    make_norm,
    make_positional_encoding,
    resolve_attention_function,
)
from .input_checks import check_token_inputs
from .modeling_base import ScratchPreTrainedModel, model_cross_entropy


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder sees ``<start> y_1 ... y_{n-1}`` and predicts ``y_1 ... y_n``.

    Ignored label positions (-100) become ``pad_token_id``, so the config must have one.
    """
    if pad_token_id is None or decoder_start_token_id is None:
        raise ValueError(
            f"Deriving decoder_input_ids from labels needs pad_token_id (got {pad_token_id!r}; it replaces the -100 "
            f"of ignored positions) and decoder_start_token_id (got {decoder_start_token_id!r}). Set them in the "
            "config (e.g. config.pad_token_id = tokenizer.pad_token_id), or pass decoder_input_ids yourself."
        )
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def check_rows_per_source(
    decoder_rows: int, encoder_hidden_states: torch.Tensor, encoder_attention_mask: Optional[torch.Tensor]
) -> None:
    """One decoder row per encoder row (``generate`` repeats the encoder output once per beam)."""
    sources = encoder_hidden_states.shape[0]
    if decoder_rows != sources:
        raise ValueError(
            f"The decoder has {decoder_rows} rows but the encoder output has {sources}; pass one decoder row per "
            "source (repeat the encoder output, e.g. encoder_hidden_states.repeat_interleave(k, 0), for k rows each)."
        )
    if encoder_attention_mask is not None and encoder_attention_mask.shape[0] != sources:
        raise ValueError(
            f"The encoder attention mask has {encoder_attention_mask.shape[0]} rows but the encoder output has "
            f"{sources}; pass the attention mask the encoder was run with."
        )


def check_label_rows(
    labels: torch.Tensor, source: Optional[torch.Tensor], decoder_inputs: Optional[torch.Tensor]
) -> None:
    """With labels (a loss) every decoder row is an example of its own: one row per source.

    ``source``: input_ids, inputs_embeds or the encoder output; ``decoder_inputs``: decoder_input_ids or embeds.
    """
    rows = labels.shape[0]
    sources = rows if source is None else source.shape[0]  # no source at all: the encoder reports it
    decoder_rows = rows if decoder_inputs is None else decoder_inputs.shape[0]
    if sources != rows or decoder_rows != rows:
        raise ValueError(
            f"labels have {rows} rows, the source {sources} and the decoder inputs {decoder_rows}; with labels "
            "pass one row of labels (and of decoder_input_ids) per source: the batch size of input_ids."
        )


def make_attention(config: ScratchTransformerConfig, num_heads: int, layer_idx: int, **kwargs) -> MultiHeadAttention:
    """One of the model's attentions (encoder, decoder self- or cross-attention) with the config's choices."""
    return MultiHeadAttention(
        config, config.d_model, num_heads, config.attention_dropout, config.attention_bias,
        scoring=config.attention_scoring, layer_idx=layer_idx, num_key_value_heads=config.num_key_value_heads,
        qk_norm=config.qk_norm, **kwargs,
    )


class ScratchTransformerEncoderLayer(GradientCheckpointingLayer):
    """Self-attention sublayer and feed-forward sublayer, each wrapped in add & norm. With ``is_causal`` and a KV
    ``cache`` it is the layer of a decoder-only model (``modeling_causal_lm``): a decoder layer without
    cross-attention."""

    def __init__(self, config: ScratchTransformerConfig, layer_idx: int, num_heads: Optional[int] = None,
                 is_causal: bool = False):
        super().__init__()
        d = config.d_model
        heads = num_heads or config.encoder_attention_heads
        self.self_attn = make_attention(config, heads, layer_idx, is_causal=is_causal)
        self.self_attn_add_norm = AddNorm(d, config.norm_type, config.norm_position, config.dropout, config.layer_norm_eps)
        self.ffn = make_feed_forward(d, config.ffn_dim, config.activation_function, config.activation_dropout)
        self.ffn_add_norm = AddNorm(d, config.norm_type, config.norm_position, config.dropout, config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        output_attentions: bool = False,
        position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        cache: Optional[Cache] = None,
    ) -> torch.Tensor:
        def self_attention(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, attention_mask=attention_mask, cache=cache, output_attentions=output_attentions,
                                  position_embeddings=position_embeddings)[0]

        x = self.self_attn_add_norm(hidden_states, self_attention)
        return self.ffn_add_norm(x, self.ffn)


class ScratchTransformerDecoderLayer(GradientCheckpointingLayer):
    """Causal self-attention, cross-attention to the encoder output, feed-forward; each with add & norm."""

    def __init__(self, config: ScratchTransformerConfig, layer_idx: int):
        super().__init__()
        d = config.d_model
        heads = config.decoder_attention_heads

        def add_norm() -> AddNorm:
            return AddNorm(d, config.norm_type, config.norm_position, config.dropout, config.layer_norm_eps)

        self.self_attn = make_attention(config, heads, layer_idx, is_causal=True)
        self.self_attn_add_norm = add_norm()
        self.cross_attn = make_attention(config, heads, layer_idx, is_causal=False, is_cross_attention=True)
        self.cross_attn_add_norm = add_norm()
        self.ffn = make_feed_forward(d, config.ffn_dim, config.activation_function, config.activation_dropout)
        self.ffn_add_norm = add_norm()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: Optional[torch.Tensor],
        cache: Optional[EncoderDecoderCache] = None,
        output_attentions: bool = False,
        position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        def self_attention(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, attention_mask=attention_mask, cache=cache, output_attentions=output_attentions,
                                  position_embeddings=position_embeddings)[0]

        def cross_attention(h: torch.Tensor) -> torch.Tensor:
            return self.cross_attn(h, key_value_states=encoder_hidden_states, attention_mask=encoder_attention_mask,
                                   cache=cache, output_attentions=output_attentions)[0]

        x = self.self_attn_add_norm(hidden_states, self_attention)
        x = self.cross_attn_add_norm(x, cross_attention)
        return self.ffn_add_norm(x, self.ffn)


class ScratchTransformerPreTrainedModel(ScratchPreTrainedModel):
    config_class = ScratchTransformerConfig
    config: ScratchTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["ScratchTransformerEncoderLayer", "ScratchTransformerDecoderLayer"]
    _remote_auto_map = {
        "AutoConfig": "configuration_transformer.ScratchTransformerConfig",
        "AutoModel": "modeling_transformer.ScratchTransformerModel",
        "AutoModelForSeq2SeqLM": "modeling_transformer.ScratchTransformerForConditionalGeneration",
    }
    _remote_pipelines = {"translation": {"impl": "pipeline_translation.TranslationPipeline", "pt": ["AutoModelForSeq2SeqLM"]}}

    def __init__(self, config: ScratchTransformerConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        # Fail at construction, not at the first forward, when additive scoring meets a fused kernel.
        resolve_attention_function(config._attn_implementation, config.attention_scoring)


class ScratchTransformerEmbedding(nn.Module):
    """Token embedding × √d_model (when ``scale_embedding``) + positional encoding (none for rotary positions,
    which act inside self-attention), then dropout."""

    def __init__(self, config: ScratchTransformerConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0
        self.num_positions = config.max_position_embeddings
        self.embed_positions = make_positional_encoding(
            config.position_embedding, config.max_position_embeddings, config.d_model
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: Optional[torch.Tensor], inputs_embeds: Optional[torch.Tensor], past_length: int = 0,
                position_ids: Optional[torch.Tensor] = None):
        """Embed the tokens at positions ``past_length ...``, or at ``position_ids`` (left-padded rows of a
        decoder-only model count positions from their first token)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            vocab = self.embed_tokens.num_embeddings
            # A data-dependent check (a host sync): torch.compile leaves it out rather than break the graph.
            checked = input_ids.numel() and not torch.compiler.is_compiling()
            if checked and bool(((input_ids < 0) | (input_ids >= vocab)).any()):  # one sync, not two
                raise ValueError(
                    f"input_ids contain token ids outside [0, {vocab}); the tokenizer does not match this model's "
                    f"vocab_size={vocab}."
                )
            inputs_embeds = self.embed_tokens(input_ids)
        length = inputs_embeds.shape[1]
        if position_ids is None:
            check_positions(past_length + length, self.num_positions)
            position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)
        elif position_ids.numel() and not torch.compiler.is_compiling():  # a host sync, as the vocabulary check
            check_positions(int(position_ids.max()) + 1, self.num_positions)
        hidden = inputs_embeds * self.embed_scale
        if self.embed_positions is not None:
            hidden = hidden + self.embed_positions(position_ids).to(inputs_embeds.dtype)
        return self.dropout(hidden)


class ScratchTransformerStack(ScratchTransformerPreTrainedModel):
    """What encoder and decoder share: embedding, a stack of layers, and a final norm when pre-norm.

    Pre-norm leaves the residual stream un-normalised after the last layer, so one more norm closes the stack.
    """

    def __init__(self, config: ScratchTransformerConfig, embed_tokens: nn.Embedding, layer_class: type, num_layers: int,
                 num_heads: int):
        super().__init__(config)
        self.embeddings = ScratchTransformerEmbedding(config, embed_tokens)
        rotary = config.position_embedding == "rotary"
        self.rotary = RotaryPositionalEncoding(config.d_model // num_heads) if rotary else None
        self.layers = nn.ModuleList(layer_class(config, i) for i in range(num_layers))
        self.layer_norm = (
            make_norm(config.norm_type, config.d_model, config.layer_norm_eps) if config.norm_position == "pre" else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.embed_tokens = value

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.layer_norm is None else self.layer_norm(hidden)

    def cache_to_fill(self, cache: Optional[Cache], use_cache: Optional[bool], new_cache: Callable[[], Cache],
                      ) -> Optional[Cache]:
        """The KV cache a decoder's forward reads and extends: ``cache``, or ``new_cache()`` when none is given; None
        without ``use_cache`` (default: ``config.use_cache``) and while training with gradient checkpointing."""
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if not use_cache or (self.training and any(layer.gradient_checkpointing for layer in self.layers)):
            return None
        return new_cache() if cache is None else cache

    def rotary_positions(self, hidden: torch.Tensor, past_length: int = 0, position_ids: Optional[torch.Tensor] = None,
                         ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(cos, sin) of the rotary angles of the positions of ``hidden``'s tokens, or None without rotary: positions
        ``past_length ...`` (``[T, D]``), or ``position_ids [B, T]`` (``[B, 1, T, D]``, one row per sequence)."""
        if self.rotary is None:
            return None
        if position_ids is None:
            return self.rotary(torch.arange(past_length, past_length + hidden.shape[1], device=hidden.device))
        cos, sin = self.rotary(position_ids.reshape(-1))
        return tuple(x.view(-1, 1, position_ids.shape[-1], x.shape[-1]) for x in (cos, sin))


class ScratchTransformerEncoder(ScratchTransformerStack):
    """Embedding followed by ``encoder_layers`` self-attention layers. Per-layer hidden states and attention
    weights, when asked for, are recorded from the layers and attention modules (``capture_outputs``)."""

    _can_record_outputs = {
        "hidden_states": ScratchTransformerEncoderLayer,
        "attentions": OutputRecorder(MultiHeadAttention, index=1, layer_name="self_attn"),
    }

    def __init__(self, config: ScratchTransformerConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens, ScratchTransformerEncoderLayer, config.encoder_layers,
                         config.encoder_attention_heads)

    @capture_outputs
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> BaseModelOutput:
        hidden = self.embeddings(input_ids, inputs_embeds)
        length = hidden.shape[1]
        mask = build_attention_mask(attention_mask, length, length, causal=False)
        position_embeddings = self.rotary_positions(hidden)
        for layer in self.layers:
            hidden = layer(hidden, mask, bool(output_attentions), position_embeddings)
        return BaseModelOutput(last_hidden_state=self.final_norm(hidden))


class ScratchTransformerDecoder(ScratchTransformerStack):
    """Embedding followed by ``decoder_layers`` causal self-attention + cross-attention layers."""

    _can_record_outputs = {
        "hidden_states": ScratchTransformerDecoderLayer,
        "attentions": OutputRecorder(MultiHeadAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(MultiHeadAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: ScratchTransformerConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens, ScratchTransformerDecoderLayer, config.decoder_layers,
                         config.decoder_attention_heads)

    @accepts_cache_alias
    @capture_outputs
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        if encoder_hidden_states is None:
            raise ValueError("The decoder needs encoder_hidden_states (run the encoder first).")
        cache = self.cache_to_fill(cache, use_cache, lambda: EncoderDecoderCache(DynamicCache(config=self.config),
                                                                                 DynamicCache(config=self.config)))
        past_length = cache.get_seq_length() if cache is not None else 0

        hidden = self.embeddings(input_ids, inputs_embeds, past_length)
        length = hidden.shape[1]
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[-1] == length and past_length:
            attention_mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], past_length), attention_mask], -1)
        if attention_mask is None and past_length == 0:
            self_mask = None  # a plain causal mask: every kernel applies it itself (module.is_causal)
        else:
            self_mask = build_attention_mask(attention_mask, length, past_length + length, causal=True,
                                             past_length=past_length)
        check_rows_per_source(hidden.shape[0], encoder_hidden_states, encoder_attention_mask)
        cross_mask = build_attention_mask(encoder_attention_mask, length, encoder_hidden_states.shape[1], causal=False)
        position_embeddings = self.rotary_positions(hidden, past_length)
        for layer in self.layers:
            hidden = layer(hidden, self_mask, encoder_hidden_states, cross_mask, cache, bool(output_attentions),
                           position_embeddings)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=self.final_norm(hidden), **cache_field(cache))


class ScratchTransformerModel(ScratchTransformerPreTrainedModel):
    """The bare encoder-decoder (AutoModel): returns the decoder's last hidden states.

    Source and target share one token embedding (a joint subword vocabulary, as in the paper).
    """

    _tied_weights_keys = {
        "encoder.embeddings.embed_tokens.weight": "shared.weight",
        "decoder.embeddings.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: ScratchTransformerConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.encoder = ScratchTransformerEncoder(config, self.shared)
        self.decoder = ScratchTransformerDecoder(config, self.shared)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.set_input_embeddings(value)
        self.decoder.set_input_embeddings(value)

    def get_encoder(self, *args, **kwargs) -> ScratchTransformerEncoder:
        return self.encoder

    def get_decoder(self, *args, **kwargs) -> ScratchTransformerDecoder:
        return self.decoder

    @accepts_cache_alias
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        decoder_input_ids: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
        encoder_outputs: Optional[tuple | BaseModelOutput] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        decoder_inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "Pass decoder_input_ids (or labels to ScratchTransformerForConditionalGeneration, which derives them)."
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            **cache_field(cache_of(decoder_outputs)),
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()


class ScratchTransformerForConditionalGeneration(ScratchTransformerPreTrainedModel, ScratchGenerationMixin):
    """Encoder-decoder with the output projection to the vocabulary (AutoModelForSeq2SeqLM); ``generate`` works."""

    _tied_weights_keys = {
        "lm_head.weight": "model.shared.weight",
        "model.encoder.embeddings.embed_tokens.weight": "model.shared.weight",
        "model.decoder.embeddings.embed_tokens.weight": "model.shared.weight",
    }

    def __init__(self, config: ScratchTransformerConfig):
        super().__init__(config)
        self.model = ScratchTransformerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.output_bias)
        self.post_init()

    def get_encoder(self, *args, **kwargs) -> ScratchTransformerEncoder:
        return self.model.encoder

    def get_decoder(self, *args, **kwargs) -> ScratchTransformerDecoder:
        return self.model.decoder

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @accepts_cache_alias
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        decoder_input_ids: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
        encoder_outputs: Optional[tuple | BaseModelOutput] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        decoder_inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """Logits over the vocabulary; with ``labels`` also the (label-smoothed) cross-entropy ignoring -100.

        ``cache`` (``past_key_values`` before transformers 5.24) holds the decoder's keys and values of the steps
        already decoded. With ``labels`` (training) no cache is built or returned, as in Marian.
        """
        check_token_inputs(input_ids, labels, self.config.vocab_size)  # 1-D, empty, labels outside the vocabulary
        if labels is not None:
            use_cache = False
            source = input_ids if input_ids is not None else inputs_embeds
            if source is None and encoder_outputs is not None:
                source = encoder_outputs[0]  # the encoder's last hidden state
            decoder = decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds
            check_label_rows(labels, source, decoder)
            if decoder is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = model_cross_entropy(logits, labels, self.config, self.training)
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **cache_field(cache_of(outputs)),
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return output if return_dict is not False else output.to_tuple()


__all__ = [
    "ScratchTransformerPreTrainedModel",
    "ScratchTransformerModel",
    "ScratchTransformerForConditionalGeneration",
    "shift_tokens_right",
]
