"""The decoder-only Transformer language model (GPT), composed of the same pieces as the encoder-decoder.

Token embedding + positions -> N layers (causal self-attention with a KV cache, feed-forward; each wrapped in add &
norm) -> a final norm (pre-norm) -> the output projection, tied to the embedding. A layer is the encoder-decoder's
self-attention layer made causal (a decoder layer without cross-attention); embedding, stack and final norm are
``modeling_transformer.ScratchTransformerStack``'s. The skeleton follows transformers' GPT-2 / Llama:
Layer -> PreTrainedModel -> Model (AutoModel) -> ForCausalLM (AutoModelForCausalLM).

Left padding works as in GPT-2: ``attention_mask`` hides the pads and ``generate`` passes ``position_ids`` counted
from each row's first token, so a padded prompt continues as it would alone.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .compat import accepts_cache_alias, cache_field, cache_of
from .configuration_causal_lm import ScratchTransformerLMConfig
from .generation import ScratchGenerationMixin
from .layers import MultiHeadAttention, build_attention_mask
from .modeling_base import model_cross_entropy
from .modeling_transformer import ScratchTransformerEncoderLayer, ScratchTransformerPreTrainedModel, ScratchTransformerStack


class ScratchTransformerLMLayer(ScratchTransformerEncoderLayer):
    """Causal self-attention (with a KV cache) and feed-forward, each wrapped in add & norm: the decoder layer of the
    encoder-decoder without its cross-attention."""

    def __init__(self, config: ScratchTransformerLMConfig, layer_idx: int):
        super().__init__(config, layer_idx, num_heads=config.num_attention_heads, is_causal=True)


class ScratchTransformerLMPreTrainedModel(ScratchTransformerPreTrainedModel):
    config_class = ScratchTransformerLMConfig
    config: ScratchTransformerLMConfig
    _no_split_modules = ["ScratchTransformerLMLayer"]
    _remote_auto_map = {
        "AutoConfig": "configuration_causal_lm.ScratchTransformerLMConfig",
        "AutoModel": "modeling_causal_lm.ScratchTransformerLMModel",
        "AutoModelForCausalLM": "modeling_causal_lm.ScratchTransformerForCausalLM",
    }
    _remote_pipelines = {}  # pipeline("text-generation") is transformers' own


class ScratchTransformerLMModel(ScratchTransformerLMPreTrainedModel, ScratchTransformerStack):
    """The bare decoder-only stack (AutoModel): embedding, ``num_hidden_layers`` causal layers, final norm; returns
    the last hidden states and the KV cache."""

    _can_record_outputs = {
        "hidden_states": ScratchTransformerLMLayer,
        "attentions": OutputRecorder(MultiHeadAttention, index=1, layer_name="self_attn"),
    }

    def __init__(self, config: ScratchTransformerLMConfig):
        embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        super().__init__(config, embed_tokens, ScratchTransformerLMLayer, config.num_hidden_layers,
                         config.num_attention_heads)

    @accepts_cache_alias
    @capture_outputs
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``attention_mask`` ``[B, past + T]`` (1: token, 0: padding) covers the cached tokens and the new ones;
        ``position_ids`` ``[B, T]`` default to ``past ... past + T - 1``. ``cache`` (``past_key_values`` before
        transformers 5.24) holds the keys and values of the tokens already seen; it is created when ``use_cache``."""
        cache = self.cache_to_fill(cache, use_cache, lambda: DynamicCache(config=self.config))
        past_length = cache.get_seq_length() if cache is not None else 0

        hidden = self.embeddings(input_ids, inputs_embeds, past_length, position_ids)
        length = hidden.shape[1]
        if attention_mask is None and past_length == 0:
            mask = None  # a plain causal mask: every kernel applies it itself (module.is_causal)
        else:
            mask = build_attention_mask(attention_mask, length, past_length + length, causal=True, past_length=past_length)
        position_embeddings = self.rotary_positions(hidden, past_length, position_ids)
        for layer in self.layers:
            hidden = layer(hidden, mask, bool(output_attentions), position_embeddings, cache=cache)
        return BaseModelOutputWithPast(last_hidden_state=self.final_norm(hidden), **cache_field(cache))


class ScratchTransformerForCausalLM(ScratchTransformerLMPreTrainedModel, ScratchGenerationMixin):
    """The decoder-only stack with the output projection to the vocabulary (AutoModelForCausalLM): next-token
    logits, the language-modelling loss, and ``generate``."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.embed_tokens.weight"}

    def __init__(self, config: ScratchTransformerLMConfig):
        super().__init__(config)
        self.model = ScratchTransformerLMModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_decoder(self, *args, **kwargs) -> ScratchTransformerLMModel:
        return self.model

    @accepts_cache_alias
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Next-token logits; with ``labels`` also the cross-entropy of predicting token ``t + 1`` from tokens
        ``<= t``. As in GPT-2 the labels are shifted inside, so ``labels=input_ids`` is the language-modelling loss
        (-100: ignored, e.g. padding). With labels (training) no cache is built or returned."""
        if labels is not None:
            use_cache = False
            tokens = input_ids if input_ids is not None else inputs_embeds
            if tokens is not None and labels.shape != tokens.shape[:2]:
                raise ValueError(
                    f"labels have shape {tuple(labels.shape)} but the inputs {tuple(tokens.shape[:2])}; pass one label "
                    "per input token (labels=input_ids, -100 where no loss is wanted): the model shifts them itself."
                )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep and labels is None:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)  # the fast path's head runs in fast_decoding.FastDecoder
        loss = None
        if labels is not None:
            loss = model_cross_entropy(logits[:, :-1], labels[:, 1:], self.config, self.training)
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **cache_field(cache_of(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()


__all__ = ["ScratchTransformerLMPreTrainedModel", "ScratchTransformerLMModel", "ScratchTransformerForCausalLM"]
