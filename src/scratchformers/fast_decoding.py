"""Fast decoding: the decoder's step written out, one of the two steppers of ``decoding.py``.

An exact, opt-in twin of the reference step (``config.forward_implementation = "fast"``): ``FastDecoder`` has the
stepper interface of ``decoding.ModelStepper`` (``step``, ``reorder``, ``keep``) and computes the same logits as
the model's ``forward`` with its cache, up to float rounding. The loops of ``decoding.py`` / ``generation.py``
drive either one, so every decoding mode (greedy, sampling, beam search, beam sampling, diverse and constrained
beams, scores) runs over it unchanged. Where the step does not cover the model or the arguments
(``unsupported_reason``), the loops get the reference stepper instead.

What the written-out step saves, per generated token:

- the prompt's steps: the first step feeds the whole prompt in one pass (each position attends to itself and the
  earlier ones, causal mask within the prompt), filling the cache for every prompt position; every later step
  feeds one token;
- the module tree's bookkeeping: the output recorders, ``ModelOutput``s, transformers' ``Cache`` objects,
  ``prepare_inputs_for_generation`` and the masks rebuilt at every step;
- growing the self-attention cache: keys and values go into buffers of the final length, allocated once;
- the cross-attention keys and values: ``generate`` hands the encoder output repeated once per beam (or per
  returned sequence); the step keeps one copy per source and lets the source's rows read it as extra query
  positions;
- finished rows: ``keep(rows)`` drops the sources none of whose rows is still needed, unless a layer's rows
  depend on each other (int8);
- the weight layout: every linear layer of the step runs from a copy laid out for the product
  (``cpu_weight_layout.WeightLayouts``, one per ``generate`` call), the query, key and value projections as one
  product, the feed-forward activation inside the first product's pass.

The reference modules still do the arithmetic they own: the token embedding and positions, the norms, qk-norm,
rotary positions, a gated or replaced activation, a peft adapter (called as modules); ``AddNorm`` is written out
for the stock module only (its dropout and drop-path are the identity in eval mode).

The step serves decoder-only stacks too (layers without ``cross_attn``): left padding through the
``attention_mask`` (padded keys masked, each row's positions counted from its first real token, as GPT-2's
``position_ids = attention_mask.cumsum(-1) - 1``). See ``decoding.py`` for what a model family must expose.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from .compat import cache_of
from .cpu_weight_layout import WeightLayouts
from .layers import AddNorm, FeedForward, MultiHeadAttention, apply_rotary, repeat_key_value_heads
from .rewrites import is_fast, runs_as_written


def unsupported_reason(model, generation_config, model_kwargs: dict) -> Optional[str]:
    """Why ``FastDecoder`` cannot stand in for ``model``'s forward here, or None when it can."""
    config = model.config
    if not is_fast(config):
        return "forward_implementation is not 'fast'"
    if model.training:
        return "the model is in training mode (dropout)"
    if generation_config.return_dict_in_generate and (generation_config.output_attentions
                                                      or generation_config.output_hidden_states):
        return "attentions or hidden states asked for (they come from the reference's modules)"
    if model_kwargs.get("decoder_attention_mask") is not None or model_kwargs.get("decoder_inputs_embeds") is not None:
        return "a decoder_attention_mask or decoder_inputs_embeds"
    if not config.is_encoder_decoder and model_kwargs.get("inputs_embeds") is not None:
        return "inputs_embeds"
    cache = cache_of(model_kwargs)
    if cache is not None and (cache.get_seq_length() > 0 or not isinstance(cache, (DynamicCache, EncoderDecoderCache))):
        return "a cache that already holds decoded steps, or a static / offloaded one"
    if config.attention_scoring != "scaled_dot":
        return f"attention_scoring={config.attention_scoring!r}"
    mask = model_kwargs.get("attention_mask")
    if not config.is_encoder_decoder and mask is not None and not _is_left_padding(mask):
        return "an attention_mask that is not left padding"
    if config.is_encoder_decoder and model_kwargs.get("encoder_outputs") is None:
        return "no encoder outputs"
    decoder = model.get_decoder()
    if any(hasattr(module, "_hf_hook") for module in decoder.modules()):
        return "accelerate hooks (device_map / offloading) on the decoder"
    for layer in decoder.layers:
        attentions = [layer.self_attn] + ([layer.cross_attn] if hasattr(layer, "cross_attn") else [])
        if any(type(attention) is not MultiHeadAttention for attention in attentions):
            return "a replaced attention module"
        if not isinstance(layer.ffn, FeedForward) or "forward" in vars(layer.ffn):
            return "a replaced feed-forward module"
    # The step calls the embeddings, norms and linear layers as modules, but not these: their hooks, or a forward
    # replaced on the instance (a wrapper, torch.compile), would not run.
    bypassed = [model, decoder, *decoder.layers, *(m for layer in decoder.layers for m in (
        layer.self_attn, getattr(layer, "cross_attn", layer.self_attn), layer.ffn))]
    if not all(runs_as_written(module) for module in bypassed):
        return "a replaced forward, or forward hooks, on the model, its decoder or their layers"
    return None


def _is_left_padding(mask: torch.Tensor) -> bool:
    """Whether every row of ``mask`` is zeros then ones (left padding, or none)."""
    return mask.dim() == 2 and bool((mask[:, 1:] >= mask[:, :-1]).all())


def rows_per_source(encoder_hidden_states: torch.Tensor, encoder_attention_mask: Optional[torch.Tensor],
                    expand_size: int) -> int:
    """``expand_size`` when ``generate`` repeated each source's encoder output (and mask) that many times on
    consecutive rows (beams, returned sequences), checked; else 1 (every row its own source)."""
    rows = encoder_hidden_states.shape[0]
    if expand_size <= 1 or rows % expand_size:
        return 1
    first = encoder_hidden_states[::expand_size].repeat_interleave(expand_size, 0)
    if not torch.equal(first, encoder_hidden_states):
        return 1
    if encoder_attention_mask is not None:
        if not torch.equal(encoder_attention_mask[::expand_size].repeat_interleave(expand_size, 0),
                           encoder_attention_mask):
            return 1
    return expand_size


class FastDecoder:
    """The decoder and LM head for the tokens not fed yet (the prompt, then one per step), over buffers sized for
    the whole generation.

    ``encoder_hidden_states`` / ``encoder_attention_mask``: as ``generate`` hands them (one row per decoder row);
    the rows of a source share one copy (``rows_per_source``). ``attention_mask``: a decoder-only model's prompt
    mask (left padding). ``layouts``: the weight copies of this ``generate`` call.
    """

    def __init__(self, model, rows: int, max_length: int, encoder_hidden_states: Optional[torch.Tensor] = None,
                 encoder_attention_mask: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 expand_size: int = 1, layouts: Optional[WeightLayouts] = None):
        self.model = model
        self.outputs = None  # the stepper interface's last model output: the step builds none
        self.decoder = decoder = model.get_decoder()
        self.layers = decoder.layers
        self.rows, self.length = rows, 0
        self.layouts = layouts if layouts is not None else WeightLayouts()
        attention = self.layers[0].self_attn
        self.heads, self.head_dim, self.kv_heads = attention.num_heads, attention.head_dim, attention.num_key_value_heads
        self.qkv_widths = [self.heads * self.head_dim] + [self.kv_heads * self.head_dim] * 2
        # Allocated at the first step, in the dtype of its keys (bf16 under bf16 autocast, as the reference's cache).
        self.cache_shape = (len(self.layers), rows, self.kv_heads, max_length, self.head_dim)
        self.keys: Optional[torch.Tensor] = None
        self.values: Optional[torch.Tensor] = None
        self.spare = None  # beam search: the buffers that ``reorder`` gathers into
        self.encoder_hidden_states, self.encoder_attention_mask = encoder_hidden_states, encoder_attention_mask
        self.rows_per_source, self.cross, self.cross_mask = 1, None, None
        if encoder_hidden_states is not None:
            self.rows_per_source = k = rows_per_source(encoder_hidden_states, encoder_attention_mask, expand_size)
            sources = encoder_hidden_states[::k]
            self.cross = [self._source_keys_values(layer.cross_attn, sources) for layer in self.layers]
            if encoder_attention_mask is not None:  # [sources, 1, 1, S]: 0 where a key may be attended
                self.cross_mask = _additive(encoder_attention_mask[::k][:, None, None, :], sources.dtype)
        self.device = device = next(model.parameters()).device
        self.dtype = dtype = (encoder_hidden_states.dtype if encoder_hidden_states is not None
                              else decoder.embeddings.embed_tokens.weight.dtype)
        # Decoder-only left padding: padded keys masked, positions counted from each row's first real token.
        self.key_mask, self.offsets = None, None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.new_ones(rows, max_length)
            mask[:, : attention_mask.shape[1]] = attention_mask
            self.key_mask = _additive(mask[:, None, None, :], dtype)  # [rows, 1, 1, max_length]
            self.offsets = (attention_mask == 0).sum(-1)  # left pads per row
        embeddings = decoder.embeddings
        positions = torch.arange(max_length - 1, device=device)  # the last token is never fed back
        self.positions = None if embeddings.embed_positions is None else embeddings.embed_positions(positions).to(dtype)
        self.rotary = None if decoder.rotary is None else decoder.rotary(positions)
        # Rows may leave the batch unless a layer's rows depend on each other (``Int8Linear``: one activation scale).
        self.drops_rows = not any(getattr(module, "batch_dependent", False) for module in model.modules())
        self.computed: Optional[torch.Tensor] = None  # the rows still computed (None: all), see ``keep``
        self.place_of: Optional[torch.Tensor] = None  # row -> its place among the computed rows
        self.plan = [self._plan_layer(i, layer) for i, layer in enumerate(self.layers)]
        self.lm_head = self.layouts.call(model.get_output_embeddings(), rows)
        # This pass: its number of new tokens per row, their positions (``_step``) and its attention mask.
        self.new, self.at, self.mask = 1, None, None

    # ----------------------------------------------------------------------------------------------------------
    # The stepper interface
    # ----------------------------------------------------------------------------------------------------------
    def step(self, input_ids: torch.Tensor, log_softmax: bool = False) -> torch.Tensor:
        """The next token's logits ``[rows, vocab]`` (float32) after ``input_ids`` ``[rows, length]``, feeding the
        tokens not fed yet in one pass (the whole prompt at the first call); with ``log_softmax`` their
        log-probabilities (computed for the computed rows only). Rows left out by ``keep`` get zeros."""
        logits = self._step(self._computed_rows(input_ids[:, self.length :]))
        if log_softmax:
            logits = nn.functional.log_softmax(logits, dim=-1)
        if self.computed is None:
            return logits
        return logits.new_zeros(self.rows, logits.shape[-1]).index_copy_(0, self.computed, logits)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row ``i`` continues row ``rows[i]`` (beam search kept its hypothesis): make the cache follow. The filled
        part is gathered into a second pair of buffers, which then take the first pair's place."""
        if self.keys is None:
            return
        if self.computed is not None:  # a kept row's beams are rows of the same source: kept ones
            rows = self.place_of[rows[self.computed]]
        if self.spare is None:
            self.spare = (torch.empty_like(self.keys), torch.empty_like(self.values))
        n = self.length
        keys, values = self.spare
        torch.index_select(self.keys[:, :, :, :n], 1, rows, out=keys[:, :, :, :n])
        torch.index_select(self.values[:, :, :, :n], 1, rows, out=values[:, :, :, :n])
        self.spare = (self.keys, self.values)
        self.keys, self.values = keys, values
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, rows)
            self.offsets = self.offsets.index_select(0, rows)

    def keep(self, rows: torch.Tensor) -> None:
        """From now on compute only ``rows`` (and the other rows of their sources): the loop never reads the
        others' logits again (``step`` gives them zeros), as CTranslate2 drops finished sentences from its batch.
        The buffers shrink to the kept rows. Nothing changes where rows depend on each other (``drops_rows``)."""
        if not self.drops_rows:
            return
        k = self.rows_per_source
        sources = torch.unique(rows // k)
        rows = (sources[:, None] * k + torch.arange(k, device=sources.device)).reshape(-1)
        if self.computed is not None and len(rows) == len(self.computed):
            return
        places = rows if self.place_of is None else self.place_of[rows]
        if self.keys is not None:
            self.keys, self.values = self.keys.index_select(1, places), self.values.index_select(1, places)
        self.cache_shape = (self.cache_shape[0], len(rows), *self.cache_shape[2:])
        self.spare = None
        if self.cross is not None:
            source_places = places[::k] // k
            self.cross = [(keys_t.index_select(0, source_places), values.index_select(0, source_places))
                          for keys_t, values in self.cross]
            if self.cross_mask is not None:
                self.cross_mask = self.cross_mask.index_select(0, source_places)
        if self.key_mask is not None:
            self.key_mask, self.offsets = self.key_mask.index_select(0, places), self.offsets.index_select(0, places)
        self.place_of = torch.full((self.rows,), -1, dtype=torch.long, device=rows.device)
        self.place_of[rows] = torch.arange(len(rows), device=rows.device)
        self.computed = rows

    def to_cache(self) -> EncoderDecoderCache | DynamicCache:
        """The reference's cache for the steps fed so far (``return_dict_in_generate`` returns it): transformers'
        cache classes holding this decoder's keys and values, row for row."""
        self_cache = DynamicCache()
        n = self.length
        for i in range(len(self.layers)):
            self_cache.update(self.keys[i, :, :, :n].clone(), self.values[i, :, :, :n].clone(), i)
        if self.encoder_hidden_states is None:
            return self_cache
        cross_cache = DynamicCache()
        states = self.encoder_hidden_states
        for i, layer in enumerate(self.layers):
            key, value = self._projected_source(layer.cross_attn, states)
            cross_cache.update(key, value, i)
        cache = EncoderDecoderCache(self_cache, cross_cache)
        for i in range(len(self.layers)):
            cache.is_updated[i] = True
        return cache

    # ----------------------------------------------------------------------------------------------------------
    # The step, planned once per generation
    # ----------------------------------------------------------------------------------------------------------
    def _computed_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.computed is None else tokens[self.computed]

    def _plan_layer(self, i: int, layer: nn.Module) -> list[Callable]:
        """The sublayers of layer ``i`` as functions ``x -> x`` of the step (residual and norm included)."""
        plan = [_add_norm(layer.self_attn_add_norm, self._self_attention_of(i, layer.self_attn))]
        if hasattr(layer, "cross_attn"):
            plan.append(_add_norm(layer.cross_attn_add_norm, self._cross_attention_of(i, layer.cross_attn)))
        plan.append(_add_norm(layer.ffn_add_norm, self._feed_forward_of(layer.ffn)))
        return plan

    def _projections(self, attention: MultiHeadAttention) -> Callable:
        """``x -> (query, key, value)`` rows: one product for the three where they can be laid out together."""
        qkv = self.layouts.product([attention.q_proj, attention.k_proj, attention.v_proj], self.rows)
        if qkv is not None:
            return lambda x: qkv(x).split(self.qkv_widths, dim=-1)
        linears = [self.layouts.call(linear, self.rows) for linear in (attention.q_proj, attention.k_proj,
                                                                       attention.v_proj)]
        return lambda x: [linear(x) for linear in linears]

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """``[N·T, h·D]`` rows (``T`` new tokens per row) -> ``[N, h, T, D]``."""
        return x.view(-1, self.new, heads, self.head_dim).transpose(1, 2)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        if self.rotary is None:
            return x
        cos, sin = self.rotary
        if self.offsets is None:  # [T, D] positions shared by every row
            return apply_rotary(x, cos[self.at], sin[self.at])
        return apply_rotary(x, cos[self.at][:, None], sin[self.at][:, None])  # [N, 1, T, D]

    def _self_attention_of(self, i: int, attention: MultiHeadAttention) -> Callable:
        """Causal self-attention of this pass's tokens to themselves and the earlier ones (cached)."""
        projections, out_proj = self._projections(attention), self.layouts.call(attention.out_proj, self.rows)
        groups = self.heads // self.kv_heads

        def self_attention(x: torch.Tensor) -> torch.Tensor:
            query, key, value = projections(x)
            query = self._split(query, self.heads)  # [N, h, T, D]
            key, value = self._split(key, self.kv_heads), self._split(value, self.kv_heads)
            if attention.q_norm is not None:
                query, key = attention.q_norm(query), attention.k_norm(key)
            query, key = self._rotate(query), self._rotate(key)
            end = self.length + self.new
            if self.keys is None:
                self.keys, self.values = key.new_empty(self.cache_shape), value.new_empty(self.cache_shape)
            self.keys[i, :, :, self.length : end] = key
            self.values[i, :, :, self.length : end] = value
            keys = repeat_key_value_heads(self.keys[i, :, :, :end], groups)
            values = repeat_key_value_heads(self.values[i, :, :, :end], groups)
            scores = torch.matmul(query, keys.transpose(-1, -2)) * attention.scaling
            if self.mask is not None:
                scores = scores + self.mask
            heads = torch.matmul(torch.softmax(scores, dim=-1), values)  # [N, h, T, D]
            return out_proj(heads.transpose(1, 2).reshape(x.shape[0], -1))

        return self_attention

    def _projected_source(self, attention: MultiHeadAttention, source: torch.Tensor):
        """The cross-attention keys and values of ``source`` ``[n, S, d]``, as the reference caches them."""
        rows = source.reshape(-1, source.shape[-1])  # once per source: the weights as stored
        key, value = self.layouts.call(attention.k_proj)(rows), self.layouts.call(attention.v_proj)(rows)
        key = key.view(*source.shape[:2], self.kv_heads, self.head_dim).transpose(1, 2)
        value = value.view(*source.shape[:2], self.kv_heads, self.head_dim).transpose(1, 2)
        if attention.k_norm is not None:
            key = attention.k_norm(key)
        return key, value

    def _source_keys_values(self, attention: MultiHeadAttention, source: torch.Tensor):
        key, value = self._projected_source(attention, source)
        groups = self.heads // self.kv_heads
        # Kept as the products read them: keys transposed ([sources, h, D, S]), both contiguous.
        key, value = repeat_key_value_heads(key, groups), repeat_key_value_heads(value, groups)
        return key.transpose(-1, -2).contiguous(), value.contiguous()

    def _cross_attention_of(self, i: int, attention: MultiHeadAttention) -> Callable:
        """Attention to the source: the ``k`` rows of a source (``T`` tokens each) are that source's ``k·T`` query
        positions."""
        q_proj, out_proj = self.layouts.call(attention.q_proj, self.rows), self.layouts.call(attention.out_proj, self.rows)

        def cross_attention(x: torch.Tensor) -> torch.Tensor:
            key_t, value = self.cross[i]  # [sources, h, D, S], [sources, h, S, D]
            query = q_proj(x).view(value.shape[0], -1, self.heads, self.head_dim).transpose(1, 2)
            if attention.q_norm is not None:
                query = attention.q_norm(query)
            scores = torch.matmul(query, key_t) * attention.scaling
            if self.cross_mask is not None:
                scores = scores + self.cross_mask
            heads = torch.matmul(torch.softmax(scores, dim=-1), value)  # [sources, h, k·T, D]
            return out_proj(heads.transpose(1, 2).reshape(x.shape[0], -1))

        return cross_attention

    def _feed_forward_of(self, ffn: FeedForward) -> Callable:
        # The plain network's activation (dropout is the identity in eval mode) runs inside fc1's product.
        plain = type(ffn) is FeedForward and "activate" not in vars(ffn) and runs_as_written(ffn.activation)
        hidden = self.layouts.product([ffn.fc1], self.rows, ffn.activation) if plain else None
        if hidden is None:
            fc1 = self.layouts.call(ffn.fc1, self.rows)
            hidden = lambda x: ffn.activate(fc1(x))  # noqa: E731
        fc2 = self.layouts.call(ffn.fc2, self.rows)
        return lambda x: fc2(hidden(x))

    def _attention_mask(self) -> Optional[torch.Tensor]:
        """This pass's additive self-attention mask over the keys fed so far (broadcast to the scores
        ``[N, h, T, length + T]``), or None:
        padded keys (left padding), and, where the pass feeds several tokens, each token's later ones. Set with
        ``masked_fill``, not added, so that a padding query that may attend nothing stays finite."""
        end = self.length + self.new
        mask = None if self.key_mask is None else self.key_mask[..., :end]
        if self.new == 1:
            return mask
        later = torch.ones(self.new, end, dtype=torch.bool, device=self.device).triu(self.length + 1)
        if mask is None:
            return _additive(~later, self.dtype)
        return mask.masked_fill(later, torch.finfo(mask.dtype).min)

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One pass over ``tokens`` ``[N, T]`` (the ``T`` tokens after the ``length`` fed): fills their keys and
        values, returns the logits after the last one."""
        self.new = tokens.shape[1]
        if self.offsets is None:  # positions length ... length + T - 1, shared by every row
            self.at = slice(self.length, self.length + self.new)
        else:  # [N, T]: counted from each row's first real token; padding at 0, as the reference's position_ids
            positions = torch.arange(self.length, self.length + self.new, device=tokens.device)
            self.at = (positions - self.offsets[:, None]).clamp(min=0)
        self.mask = self._attention_mask()
        embeddings = self.decoder.embeddings
        x = embeddings.embed_tokens(tokens) * embeddings.embed_scale
        if self.positions is not None:
            x = x + self.positions[self.at]
        x = x.reshape(-1, x.shape[-1])  # [N·T, d]: every sublayer but attention works row by row
        for sublayers in self.plan:
            for sublayer in sublayers:
                x = sublayer(x)
        if self.new > 1:
            x = x.view(-1, self.new, x.shape[-1])[:, -1]
        self.length += self.new
        return self.lm_head(self.decoder.final_norm(x)).float()


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 0/1 mask as additive scores: 0 where a key may be attended, the dtype's lowest value where not (finite, so
    that a padding query that may attend nothing stays finite, as in the reference, instead of spreading NaN)."""
    return torch.zeros(mask.shape, device=mask.device, dtype=dtype).masked_fill(mask == 0, torch.finfo(dtype).min)


def _add_norm(add_norm: AddNorm, sublayer: Callable) -> Callable:
    """``x -> add_norm(x, sublayer)``; written out for a stock ``AddNorm``, whose dropout and drop-path are the
    identity in eval mode."""
    if type(add_norm) is not AddNorm or not runs_as_written(add_norm):
        return lambda x: add_norm(x, sublayer)
    norm = add_norm.norm
    if add_norm.pre_norm:
        return lambda x: x + sublayer(norm(x))
    return lambda x: norm(x + sublayer(x))


__all__ = ["FastDecoder", "rows_per_source", "unsupported_reason"]
