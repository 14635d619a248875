"""Fast decoding: the decoder's one-token step written out, behind the ordinary ``generate``.

An exact, opt-in twin of the reference decoding (``config.forward_implementation = "fast"``, like the rewrites of
``rewrites.py``). ``model.generate`` with the fast setting runs greedy search and beam search through
``FastDecoder`` instead of the model's ``forward``; everything else about ``generate`` (the logits processors,
stopping criteria, length penalty, ``num_return_sequences``, the pipeline) is unchanged, and every other decoding
mode, or a model the step does not cover (``unsupported_reason``), falls back to the reference.

What the written-out step saves, per generated token:

- the module tree's bookkeeping: the output recorders, ``ModelOutput``s, transformers' ``Cache`` objects,
  ``prepare_inputs_for_generation`` and the masks rebuilt at every step;
- growing the self-attention cache: keys and values go into buffers of the final length, allocated once;
- the cross-attention keys and values: projected once per source, read by all of its beams (as
  ``rewrites.shared_source_rows`` does);
- finished rows: a row whose search is over leaves the batch (``FastDecoder.keep_sources``), unless a layer's rows
  depend on each other (int8);
- the weight layout: each plain ``nn.Linear`` runs from a copy of its weight laid out for the product
  (``rewrites.packed_linear``: packed by oneDNN, or transposed for MKL where that measured faster; bf16 under bf16
  autocast), once per generation; the query, key and value projections as one product, the feed-forward
  activation inside the first product's pass (``rewrites.fused_linear``; int8 layers likewise).

The reference modules still do the arithmetic they own: the token embedding and positions, the norms, qk-norm,
rotary positions, a gated or replaced activation, a peft adapter (called as modules); ``AddNorm`` is written out
for the stock module only (its dropout and drop-path are the identity in eval mode). The outputs are those of the
reference up to float rounding (``tests/test_fast_decoding.py`` holds the tokens equal).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .compat import cache_of
from .generation import _BeamSearch
from .layers import AddNorm, FeedForward, MultiHeadAttention, apply_rotary, repeat_key_value_heads
from .rewrites import fused_linear, is_fast, packed_linear, process_owned_scores, runs_as_written

def unsupported_reason(model, generation_config, model_kwargs: dict, rows: Optional[int] = None) -> Optional[str]:
    """Why ``FastDecoder`` cannot stand in for ``model``'s decoder here, or None when it can (``rows``: the
    decoder rows of ``generate``'s prepared ``input_ids``)."""
    config = model.config
    if not is_fast(config):
        return "forward_implementation is not 'fast'"
    if model.training:
        return "the model is in training mode (dropout)"
    if generation_config.return_dict_in_generate:
        return "return_dict_in_generate (scores, attentions and hidden states come from the reference)"
    if model_kwargs.get("decoder_attention_mask") is not None or model_kwargs.get("decoder_inputs_embeds") is not None:
        return "a decoder_attention_mask or decoder_inputs_embeds"
    cache = cache_of(model_kwargs)
    if cache is not None and cache.get_seq_length() > 0:
        return "a cache that already holds decoded steps"
    if config.attention_scoring != "scaled_dot":
        return f"attention_scoring={config.attention_scoring!r}"
    encoder_outputs = model_kwargs.get("encoder_outputs")
    if encoder_outputs is None:
        return "no encoder outputs"
    if rows is not None and rows % encoder_outputs[0].shape[0]:
        return "decoder rows that are not a multiple of the encoder rows"  # the reference names the mismatch
    decoder = model.get_decoder()
    if any(hasattr(module, "_hf_hook") for module in decoder.modules()):
        return "accelerate hooks (device_map / offloading) on the decoder"
    for layer in decoder.layers:
        if any(type(attention) is not MultiHeadAttention for attention in (layer.self_attn, layer.cross_attn)):
            return "a replaced attention module"
        if not isinstance(layer.ffn, FeedForward) or "forward" in layer.ffn.__dict__:
            return "a replaced feed-forward module"
    # The step calls the embeddings, norms and linear layers as modules, but not these: their hooks would not run.
    bypassed = [model, decoder, *decoder.layers, *(m for layer in decoder.layers for m in (layer.self_attn,
                layer.cross_attn, layer.ffn))]
    if any(m._forward_hooks or m._forward_pre_hooks for m in bypassed) or nn.modules.module._global_forward_hooks \
            or nn.modules.module._global_forward_pre_hooks:
        return "forward hooks on the model, its decoder or their layers"
    return None


class FastDecoder:
    """The decoder and LM head for one token per row, over buffers sized for the whole generation.

    ``rows`` decoder rows (batch × beams) attend to the encoder output of ``rows // k`` sources: rows
    ``b·k ... b·k + k - 1`` belong to source ``b`` (``_expand_inputs_for_generation`` with the fast setting keeps
    one encoder row per source; with ``k = 1`` each row has its own).
    """

    def __init__(self, model, encoder_hidden_states: torch.Tensor, encoder_attention_mask: Optional[torch.Tensor],
                 rows: int, max_length: int):
        self.model = model
        self.decoder = decoder = model.get_decoder()
        self.layers = decoder.layers
        self.rows, self.length = rows, 0
        sources, source_len, _ = encoder_hidden_states.shape
        self.rows_per_source = rows // sources
        attention = self.layers[0].self_attn
        self.heads, self.head_dim = attention.num_heads, attention.head_dim
        self.kv_heads = attention.num_key_value_heads
        self.qkv_widths = [self.heads * self.head_dim] + [self.kv_heads * self.head_dim] * 2
        self.linear: dict[nn.Module, Optional[Callable]] = {}  # module -> what computes it (``fused_linear``)
        device, dtype = encoder_hidden_states.device, encoder_hidden_states.dtype
        # Allocated at the first step, in the dtype of its keys (bf16 under bf16 autocast, as the reference's cache).
        self.cache_shape = (len(self.layers), rows, self.kv_heads, max_length, self.head_dim)
        self.keys: Optional[torch.Tensor] = None
        self.values: Optional[torch.Tensor] = None
        self.spare = None  # beam search: the buffers that ``reorder`` gathers into
        self.cross = [self._source_keys_values(layer.cross_attn, encoder_hidden_states) for layer in self.layers]
        self.cross_mask = None
        if encoder_attention_mask is not None:  # [sources, 1, 1, S]: 0 where a key may be attended, else -inf
            blocked = encoder_attention_mask[:, None, None, :] == 0
            self.cross_mask = torch.zeros(blocked.shape, device=device, dtype=dtype).masked_fill(blocked, float("-inf"))
        embeddings = decoder.embeddings
        positions = torch.arange(max_length - 1, device=device)  # the last token is never fed back
        self.positions = None if embeddings.embed_positions is None else embeddings.embed_positions(positions).to(dtype)
        self.rotary = None if decoder.rotary is None else decoder.rotary(positions)
        # Rows may leave the batch unless a layer's rows depend on each other (``Int8Linear``: one activation scale).
        self.drops_rows = not any(getattr(module, "batch_dependent", False) for module in model.modules())
        self.computed: Optional[torch.Tensor] = None  # the rows still computed (None: all), see ``keep_sources``
        self.place_of: Optional[torch.Tensor] = None  # row -> its place among the computed rows

    def keep_sources(self, sources: torch.Tensor) -> None:
        """From now on compute only the rows of ``sources``: the search is done with the others, whose logits it
        never reads again (``step`` gives them zeros), as CTranslate2 drops finished sentences from its batch. The
        buffers shrink to the kept rows. Nothing changes where rows depend on each other (``drops_rows``)."""
        if not self.drops_rows:
            return
        k = self.rows_per_source
        rows = (sources[:, None] * k + torch.arange(k, device=sources.device)).reshape(-1)
        places = rows if self.place_of is None else self.place_of[rows]
        source_places = places[::k] // k
        if self.keys is not None:
            self.keys, self.values = self.keys.index_select(1, places), self.values.index_select(1, places)
        self.cache_shape = (self.cache_shape[0], len(rows), *self.cache_shape[2:])
        self.spare = None
        self.cross = [(keys_t.index_select(0, source_places), values.index_select(0, source_places))
                      for keys_t, values in self.cross]
        if self.cross_mask is not None:
            self.cross_mask = self.cross_mask.index_select(0, source_places)
        self.place_of = torch.full((self.rows,), -1, dtype=torch.long, device=rows.device)
        self.place_of[rows] = torch.arange(len(rows), device=rows.device)
        self.computed = rows

    def _call(self, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A linear layer of the step, through ``rewrites.packed_linear`` (made on first use)."""
        return (self._fused(linear, [linear]) or linear)(x)

    def _fused(self, key, linears: list[nn.Module], activation: Optional[nn.Module] = None) -> Optional[Callable]:
        """``rewrites.fused_linear`` of ``linears`` for the step's rows (made on first use, kept under ``key``;
        None where they cannot be laid out or fused)."""
        if key not in self.linear:
            self.linear[key] = fused_linear(linears, self.rows, activation)
        return self.linear[key]

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """``[N, T·h·D]`` rows -> ``[N, h, T, D]``."""
        return x.view(x.shape[0], -1, heads, self.head_dim).transpose(1, 2)

    def _source_keys_values(self, attention: MultiHeadAttention, source: torch.Tensor):
        rows = source.reshape(-1, source.shape[-1])  # once per source: the weights as stored
        key, value = packed_linear(attention.k_proj)(rows), packed_linear(attention.v_proj)(rows)
        key = key.view(*source.shape[:2], self.kv_heads, self.head_dim).transpose(1, 2)
        value = value.view(*source.shape[:2], self.kv_heads, self.head_dim).transpose(1, 2)
        if attention.k_norm is not None:
            key = attention.k_norm(key)
        groups = self.heads // self.kv_heads
        # Kept as the products read them: keys transposed ([sources, h, D, S]), both contiguous.
        key, value = repeat_key_value_heads(key, groups), repeat_key_value_heads(value, groups)
        return key.transpose(-1, -2).contiguous(), value.contiguous()

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        if self.rotary is None:
            return x
        cos, sin = self.rotary
        return apply_rotary(x, cos[self.length : self.length + 1], sin[self.length : self.length + 1])

    def _self_attention(self, i: int, attention: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
        """Causal self-attention of this step's token to itself and the earlier ones (cached)."""
        qkv = self._fused(attention, [attention.q_proj, attention.k_proj, attention.v_proj])
        if qkv is not None:  # one product for the three
            query, key, value = qkv(x).split(self.qkv_widths, dim=-1)
        else:
            query, key, value = (self._call(linear, x) for linear in (attention.q_proj, attention.k_proj,
                                                                      attention.v_proj))
        query = self._split(query, self.heads)  # [N, h, 1, D]
        key, value = self._split(key, self.kv_heads), self._split(value, self.kv_heads)
        if attention.q_norm is not None:
            query, key = attention.q_norm(query), attention.k_norm(key)
        query, key = self._rotate(query), self._rotate(key)
        t = self.length
        if self.keys is None:
            self.keys = key.new_empty(self.cache_shape)
            self.values = value.new_empty(self.cache_shape)
        self.keys[i, :, :, t : t + 1] = key
        self.values[i, :, :, t : t + 1] = value
        groups = self.heads // self.kv_heads
        keys = repeat_key_value_heads(self.keys[i, :, :, : t + 1], groups)
        values = repeat_key_value_heads(self.values[i, :, :, : t + 1], groups)
        weights = torch.softmax(torch.matmul(query, keys.transpose(-1, -2)) * attention.scaling, dim=-1)
        heads = torch.matmul(weights, values)  # [N, h, 1, D]
        return self._call(attention.out_proj, heads.view(x.shape[0], -1))

    def _cross_attention(self, i: int, attention: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
        """Attention to the source: the ``k`` rows of a source are that source's ``k`` query positions."""
        key_t, value = self.cross[i]  # [sources, h, D, S], [sources, h, S, D]
        query = self._call(attention.q_proj, x).view(value.shape[0], self.rows_per_source, self.heads, self.head_dim)
        query = query.transpose(1, 2)  # [sources, h, k, D]
        if attention.q_norm is not None:
            query = attention.q_norm(query)
        scores = torch.matmul(query, key_t) * attention.scaling
        if self.cross_mask is not None:
            scores = scores + self.cross_mask
        heads = torch.matmul(torch.softmax(scores, dim=-1), value)  # [sources, h, k, D]
        return self._call(attention.out_proj, heads.transpose(1, 2).reshape(x.shape[0], -1))

    def _feed_forward(self, ffn: FeedForward, x: torch.Tensor) -> torch.Tensor:
        # The plain network's activation (dropout is the identity in eval mode) runs inside fc1's product.
        plain = type(ffn) is FeedForward and "activate" not in vars(ffn)
        hidden = self._fused(ffn, [ffn.fc1], ffn.activation) if plain else None
        hidden = ffn.activate(self._call(ffn.fc1, x)) if hidden is None else hidden(x)
        return self._call(ffn.fc2, hidden)

    def _add_norm(self, add_norm: AddNorm, x: torch.Tensor, sublayer: Callable) -> torch.Tensor:
        """``add_norm(x, sublayer)``; written out for a stock ``AddNorm``, whose dropout and drop-path are the
        identity in eval mode."""
        if type(add_norm) is not AddNorm or not runs_as_written(add_norm):
            return add_norm(x, sublayer)
        return x + sublayer(add_norm.norm(x)) if add_norm.pre_norm else add_norm.norm(x + sublayer(x))

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, log_softmax: bool = False) -> torch.Tensor:
        """Feed one token per row (``[rows]``); returns the next token's logits ``[rows, vocab]`` in float32, or
        with ``log_softmax`` their log-probabilities (computed for the computed rows only)."""
        if self.computed is None:
            logits = self._step(tokens)
            return nn.functional.log_softmax(logits, dim=-1) if log_softmax else logits
        logits = self._step(tokens[self.computed])
        if log_softmax:
            logits = nn.functional.log_softmax(logits, dim=-1)
        return logits.new_zeros(self.rows, logits.shape[-1]).index_copy_(0, self.computed, logits)

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        embeddings = self.decoder.embeddings
        x = embeddings.embed_tokens(tokens) * embeddings.embed_scale
        if self.positions is not None:
            x = x + self.positions[self.length]
        for i, layer in enumerate(self.layers):
            x = self._add_norm(layer.self_attn_add_norm, x, lambda h: self._self_attention(i, layer.self_attn, h))
            x = self._add_norm(layer.cross_attn_add_norm, x, lambda h: self._cross_attention(i, layer.cross_attn, h))
            x = self._add_norm(layer.ffn_add_norm, x, lambda h: self._feed_forward(layer.ffn, h))
        self.length += 1
        return self._call(self.model.get_output_embeddings(), self.decoder.final_norm(x)).float()

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search kept row ``rows[i]``'s hypothesis as row ``i``: make the cache follow. The filled part is
        gathered into a second pair of buffers, which then take the first pair's place."""
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


def decoder_for(model, input_ids: torch.Tensor, generation_config, model_kwargs: dict) -> FastDecoder:
    """A ``FastDecoder`` for ``generate``'s prepared arguments, fed the decoder prompt but its last token."""
    encoder_outputs = model_kwargs["encoder_outputs"]
    decoder = FastDecoder(model, encoder_outputs[0], model_kwargs.get("attention_mask"), input_ids.shape[0],
                          generation_config.max_length)
    for position in range(input_ids.shape[1] - 1):
        decoder.step(input_ids[:, position])
    return decoder


@torch.inference_mode()
def fast_greedy_search(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer=None,
                       **model_kwargs) -> torch.LongTensor:
    """Greedy search as transformers' ``_sample`` runs it with ``do_sample=False``, over ``FastDecoder``."""
    decoder = decoder_for(model, input_ids, generation_config, model_kwargs)
    pad = generation_config._pad_token_tensor
    has_eos = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    computed = len(unfinished)
    while True:
        scores = process_owned_scores(logits_processor, input_ids, decoder.step(input_ids[:, -1]))
        tokens = torch.argmax(scores, dim=-1)
        if has_eos:  # finished rows get padding
            tokens = tokens * unfinished + pad * (1 - unfinished)
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
        if streamer is not None:
            streamer.put(tokens.cpu())
        unfinished = unfinished & ~stopping_criteria(input_ids, None)
        still = int(unfinished.sum())
        if still == 0:
            break
        if still < computed:  # finished rows only get padding from here on
            decoder.keep_sources(unfinished.nonzero().flatten())
            computed = still
    if streamer is not None:
        streamer.end()
    return input_ids


@torch.inference_mode()
def fast_beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
    """Beam search (``generation._BeamSearch``, which returns what transformers' core beam search returns) with
    each step's logits from ``FastDecoder``."""
    decoder = decoder_for(model, input_ids, generation_config, model_kwargs)
    return _BeamSearch(model, input_ids, logits_processor, stopping_criteria, generation_config, False, num_groups=1,
                       diversity_penalty=0.0, constraints=[], model_kwargs=model_kwargs, decoder=decoder).run()


__all__ = ["FastDecoder", "fast_beam_search", "fast_greedy_search", "packed_linear", "unsupported_reason"]
