"""The decoding engine: one stepper interface, two steppers, one greedy/sampling loop (the beam loop is
``generation.BeamSearch``), and the choice between the steppers.

A *stepper* turns the sequences decoded so far into the next token's logits and keeps whatever cache it needs:

- ``step(input_ids, log_softmax=False) -> [rows, vocab]`` float32 logits (or log-probabilities) of the token after
  ``input_ids`` ``[rows, length]``; it feeds the tokens it has not seen yet (the prompt at the first call);
- ``reorder(rows)``: row ``i`` continues row ``rows[i]`` from now on (beam search);
- ``keep(rows)``: only ``rows`` will be read from now on; others may get zeros (finished rows);
- ``to_cache()``: the transformers ``Cache`` that ``return_dict_in_generate`` returns;
- ``outputs``: the last model output (attentions, hidden states), or None where the stepper has none.

``ModelStepper`` is the reference: the model's ``forward`` with its cache, called exactly as transformers' own
loops call it (``_prefill``, ``prepare_inputs_for_generation``, ``_update_model_kwargs_for_generation``), so the
loops give what transformers' ``_sample`` / ``_beam_search`` give. ``fast_decoding.FastDecoder`` is its exact
opt-in twin (``forward_implementation="fast"``). ``choose_stepper`` takes the fast one wherever it covers the model
and the arguments (``fast_decoding.unsupported_reason``), the reference elsewhere. Every decoding mode runs over a
stepper: greedy and sampling (``sample_loop``), beam search and beam sampling, diverse and constrained beams
(``generation.BeamSearch``).

How a model family plugs in
---------------------------
Inherit ``generation.ScratchGenerationMixin`` (it is a ``GenerationMixin``; put it after the ``PreTrainedModel``
base, as ``class MyLM(MyPreTrainedModel, ScratchGenerationMixin)``). Its hooks (``_sample``, ``_beam_search``,
``generate``) run every mode through this engine; the model class defines none of them. The model must have:

- a ``forward`` that takes and returns transformers' cache (``cache=``, ``compat.accepts_cache_alias``) and
  returns ``logits`` (the reference stepper calls it through ``prepare_inputs_for_generation``, as transformers'
  loops do). For a decoder-only model: ``attention_mask`` with left padding, and position ids from the mask
  (position of a token = number of real tokens before it, GPT-2's ``attention_mask.cumsum(-1) - 1``).
- For the fast stepper (optional; where these are missing or replaced the reference runs):
  ``config.forward_implementation``, ``config.attention_scoring``; ``get_output_embeddings()`` (the LM head);
  ``get_decoder()`` returning a stack with ``embeddings`` (``embed_tokens``, ``embed_scale``, ``embed_positions``
  or None), ``rotary`` (or None), ``final_norm(hidden)``, and ``layers``, each with ``self_attn``
  (``layers.MultiHeadAttention``), ``self_attn_add_norm`` (``layers.AddNorm``), ``ffn`` (``layers.FeedForward``),
  ``ffn_add_norm``, and, for an encoder-decoder only, ``cross_attn`` and ``cross_attn_add_norm``. A decoder-only
  stack is simply one whose layers have no ``cross_attn``; ``generate``'s ``attention_mask`` is read as left
  padding. ``tests/test_fast_decoding.py`` shows the parity tests to copy (fast == reference tokens).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.cache_utils import EncoderDecoderCache
from transformers.generation.utils import (
    GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput, GenerateDecoderOnlyOutput,
    GenerateEncoderDecoderOutput,
)

from .compat import cache_field, cache_of
from .cpu_weight_layout import EncoderLinears, WeightLayouts
from .fast_decoding import FastDecoder, unsupported_reason
from .rewrites import exact_logits_processors, is_fast, process_owned_scores


class ModelStepper:
    """The reference stepper: the model's ``forward`` with its cache, called as transformers' loops call it."""

    def __init__(self, model, generation_config: GenerationConfig, model_kwargs: dict):
        self.model, self.generation_config, self.model_kwargs = model, generation_config, model_kwargs
        self.outputs = None
        self.first = True
        compiled = getattr(model, "_valid_auto_compile_criteria", None)
        use_compiled = compiled is not None and compiled(model_kwargs, generation_config)
        self.forward = model.get_compiled_call(generation_config.compile_config) if use_compiled else model.__call__

    def step(self, input_ids: torch.Tensor, log_softmax: bool = False) -> torch.Tensor:
        model, kwargs = self.model, self.model_kwargs
        if self.first and hasattr(model, "_prefill"):
            outputs = model._prefill(input_ids, self.generation_config, kwargs,
                                     is_first_iteration=not getattr(self.generation_config, "is_assistant", False))
        else:
            length = 1 if (kwargs.get("use_cache") and not self.first) else None
            inputs = model.prepare_inputs_for_generation(input_ids, next_sequence_length=length,
                                                         is_first_iteration=self.first, **kwargs)
            outputs = self.forward(**inputs, return_dict=True)
        self.first = False
        self.model_kwargs = model._update_model_kwargs_for_generation(
            outputs, kwargs, is_encoder_decoder=model.config.is_encoder_decoder
        )
        self.outputs = outputs
        logits = outputs.logits[:, -1, :].to(copy=True, dtype=torch.float32, device=input_ids.device)
        return nn.functional.log_softmax(logits, dim=-1) if log_softmax else logits

    def reorder(self, rows: torch.Tensor) -> None:
        """Make the cache follow the beams. Only the self-attention part of an encoder-decoder cache: a source's
        beams hold the same cross-attention keys and values, and beams never move between sources."""
        cache = cache_of(self.model_kwargs)
        if cache is None:
            return
        if isinstance(cache, EncoderDecoderCache):
            cache.self_attention_cache.reorder_cache(rows)
        elif hasattr(cache, "reorder_cache"):
            cache.reorder_cache(rows)
        else:
            raise ValueError(f"{type(cache).__name__} cannot be reordered, so beam search cannot use it.")

    def keep(self, rows: torch.Tensor) -> None:
        """Every row is computed, as in transformers' loops."""

    def to_cache(self):
        return cache_of(self.model_kwargs)


def choose_stepper(model, input_ids: torch.Tensor, generation_config: GenerationConfig, model_kwargs: dict,
                   synced_gpus: bool = False):
    """``FastDecoder`` where it covers ``model`` and the arguments, else ``ModelStepper``."""
    if synced_gpus or unsupported_reason(model, generation_config, model_kwargs) is not None:
        return ModelStepper(model, generation_config, model_kwargs)
    rows, max_length = input_ids.shape[0], generation_config.max_length
    expand_size = max(generation_config.num_beams, generation_config.num_return_sequences)
    if model.config.is_encoder_decoder:
        return FastDecoder(model, rows, max_length, encoder_hidden_states=model_kwargs["encoder_outputs"][0],
                           encoder_attention_mask=model_kwargs.get("attention_mask"), expand_size=expand_size)
    return FastDecoder(model, rows, max_length, attention_mask=model_kwargs.get("attention_mask"))


def owned_processors(stepper, logits_processor: LogitsProcessorList) -> LogitsProcessorList:
    """The processors the loop applies: with the fast stepper the min-length ones are their in-place twins
    (``rewrites.exact_logits_processors``), on a copy of the list."""
    if isinstance(stepper, ModelStepper):
        return logits_processor
    return exact_logits_processors(LogitsProcessorList(logits_processor))


def drops_finished_rows(generation_config: GenerationConfig) -> bool:
    """Whether the loops may let the stepper stop computing finished rows: not when every row's scores are
    returned, nor when sampling (a processor could meet the zeros of a dropped row)."""
    return not (generation_config.return_dict_in_generate or generation_config.do_sample)


@contextlib.contextmanager
def encoder_through_weight_layouts(model):
    """While the ``generate`` call inside this block runs the encoder of a fast ``model``, its plain linear layers
    run through ``cpu_weight_layout.EncoderLinears`` (entered by a pre-hook on the encoder, left by a hook after
    it); elsewhere nothing changes."""
    encoder = model.get_encoder() if model.config.is_encoder_decoder and is_fast(model.config) else None
    if encoder is None or torch.compiler.is_compiling():
        yield
        return
    active: list[EncoderLinears] = []

    def enter(*_):
        if not torch.is_grad_enabled() and not active:
            active.append(EncoderLinears(encoder, WeightLayouts()))
            active[0].__enter__()

    def leave(*_):
        if active:
            active.pop().__exit__(None, None, None)

    handles = [encoder.register_forward_pre_hook(enter), encoder.register_forward_hook(leave)]
    try:
        yield
    finally:
        leave()
        for handle in handles:
            handle.remove()


class StepOutputs:
    """What ``return_dict_in_generate`` asks to keep of every step (scores, logits, attentions, hidden states), for
    both loops."""

    def __init__(self, generation_config: GenerationConfig, is_encoder_decoder: bool):
        config = generation_config
        keep = config.return_dict_in_generate
        self.is_encoder_decoder = is_encoder_decoder
        self.output_attentions, self.output_hidden_states = config.output_attentions, config.output_hidden_states
        self.scores = () if (keep and config.output_scores) else None
        self.raw_logits = () if (keep and config.output_logits) else None
        self.decoder_attentions = () if (keep and config.output_attentions) else None
        self.cross_attentions = () if (keep and config.output_attentions) else None
        self.decoder_hidden_states = () if (keep and config.output_hidden_states) else None

    def add_logits(self, logits: torch.Tensor) -> None:
        """Keep a copy of one step's raw ``logits`` if asked: taken before the processors, which may work in place."""
        if self.raw_logits is not None:
            self.raw_logits += (logits.clone(),)

    def add(self, outputs, scores: torch.Tensor) -> None:
        """Keep one step's processed ``scores`` and the model ``outputs``, as asked."""
        if self.scores is not None:
            self.scores += (scores,)
        if self.decoder_attentions is not None:
            self.decoder_attentions += (outputs.decoder_attentions if self.is_encoder_decoder else outputs.attentions,)
            if self.is_encoder_decoder:
                self.cross_attentions += (outputs.cross_attentions,)
        if self.decoder_hidden_states is not None:
            self.decoder_hidden_states += (
                outputs.decoder_hidden_states if self.is_encoder_decoder else outputs.hidden_states,
            )

    def to_generate_output(self, sequences: torch.Tensor, cache, model_kwargs: Optional[dict],
                           sequences_scores: Optional[torch.Tensor] = None,
                           beam_indices: Optional[torch.Tensor] = None):
        """The result as transformers' loops return it with ``return_dict_in_generate=True``: a beam search's output
        when ``beam_indices`` are given, else a greedy/sampling one."""
        common = dict(sequences=sequences, scores=self.scores, logits=self.raw_logits, **cache_field(cache))
        if beam_indices is not None:
            common.update(sequences_scores=sequences_scores, beam_indices=beam_indices)
        if self.is_encoder_decoder:
            encoder_outputs = (model_kwargs or {}).get("encoder_outputs", {})
            output_class = GenerateBeamEncoderDecoderOutput if beam_indices is not None else GenerateEncoderDecoderOutput
            return output_class(
                **common,
                encoder_attentions=encoder_outputs.get("attentions") if self.output_attentions else None,
                encoder_hidden_states=encoder_outputs.get("hidden_states") if self.output_hidden_states else None,
                decoder_attentions=self.decoder_attentions,
                cross_attentions=self.cross_attentions,
                decoder_hidden_states=self.decoder_hidden_states,
            )
        output_class = GenerateBeamDecoderOnlyOutput if beam_indices is not None else GenerateDecoderOnlyOutput
        return output_class(**common, attentions=self.decoder_attentions, hidden_states=self.decoder_hidden_states)


def sample_loop(model, stepper, input_ids: torch.LongTensor, logits_processor: LogitsProcessorList,
                stopping_criteria: StoppingCriteriaList, generation_config: GenerationConfig,
                synced_gpus: bool = False, streamer=None, model_kwargs: Optional[dict] = None):
    """Greedy search and multinomial sampling over ``stepper``: transformers' ``_sample``, step for step."""
    config = generation_config
    kept = StepOutputs(config, model.config.is_encoder_decoder)
    pad = config._pad_token_tensor
    pad = pad.to(input_ids.device) if pad is not None else None
    has_eos = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
    processors = owned_processors(stepper, logits_processor)
    drops_rows = drops_finished_rows(config)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    computed = len(unfinished)
    this_peer_finished = False
    while model._has_unfinished_sequences(this_peer_finished, synced_gpus, device=input_ids.device):
        logits = stepper.step(input_ids)
        if synced_gpus and this_peer_finished:
            continue
        kept.add_logits(logits)
        next_scores = process_owned_scores(processors, input_ids, logits)
        kept.add(stepper.outputs, next_scores)
        stepper.outputs = None  # the first step's full logits are not kept alive
        if config.do_sample:
            tokens = torch.multinomial(nn.functional.softmax(next_scores, dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = torch.argmax(next_scores, dim=-1)
        if has_eos:  # finished rows get padding
            tokens = tokens * unfinished + pad * (1 - unfinished)
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
        unfinished = unfinished & ~stopping_criteria(input_ids, kept.scores)
        if streamer is not None:
            streamer.put(tokens.cpu())
        still = int(unfinished.sum())
        this_peer_finished = still == 0
        if drops_rows and 0 < still < computed:  # finished rows only get padding from here on
            stepper.keep(unfinished.nonzero().flatten())
            computed = still
    if streamer is not None:
        streamer.end()
    if not config.return_dict_in_generate:
        return input_ids
    return kept.to_generate_output(input_ids, stepper.to_cache(), model_kwargs)


__all__ = ["FastDecoder", "ModelStepper", "StepOutputs", "choose_stepper", "sample_loop"]
