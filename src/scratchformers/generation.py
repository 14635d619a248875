"""The beam loop of the decoding engine, and beam search beyond transformers 5 core, offline.

``BeamSearch`` runs beam search, beam sampling, diverse (group) beam search and constrained beam search over a
stepper of ``decoding.py``; ``ScratchGenerationMixin``, the mixin every model family of the package inherits, routes
``generate``'s modes to it and to ``decoding.sample_loop``. transformers 5 moved diverse and constrained search out
of core into Hub repositories, which cannot be reached offline: here they are ``custom_generate`` callables, and
the mixin routes ``num_beam_groups > 1`` / ``force_words_ids`` / ``constraints`` to them, so transformers-4 code
runs unchanged::

    model.generate(**inputs, num_beams=6, num_beam_groups=3, diversity_penalty=1.0)
    model.generate(**inputs, num_beams=4, force_words_ids=[[a, b], [[c], [d, e]]])  # "a b" and ("c" or "d e")
    model.generate(**inputs, num_beams=4, custom_generate=diverse_beam_search)      # any GenerationMixin model

Beam search, the chapter
------------------------
Greedy decoding keeps one hypothesis and appends its most likely token. Beam search keeps the ``num_beams`` best
partial hypotheses ("beams"). One step:

1. score every continuation of every beam: score(beam + token) = score(beam) + log p(token | beam), i.e. the sum
   of the log-probabilities of all tokens so far (after the logits processors: repetition penalty, biases ...);
2. take the best ``2 × num_beams`` continuations (twice as many, so that enough are left when some end);
3. a continuation that ends (EOS, or the maximum length) and ranks among the first ``num_beams`` becomes a
   *finished hypothesis*; its score is normalised by length, ``score / L^α`` with ``L`` the number of generated
   tokens including the EOS (``α`` = ``length_penalty``: α > 0 favours longer outputs, α < 0 shorter ones);
   we keep the ``num_beams`` best finished hypotheses;
4. the first ``num_beams`` continuations that did not end are the beams of the next step.

The search stops when no running beam can beat the worst kept finished hypothesis (``early_stopping=False``:
judged at the current length; ``"never"``: judged at the best possible length, an exact bound), as soon as
``num_beams`` hypotheses are finished (``early_stopping=True``), or when every continuation has ended. With one
group and no constraints the code below returns exactly what transformers' core beam search returns (sequences and
``sequences_scores``); the tests check that.

Diverse beam search (Vijayakumar et al., 2016) splits the beams into ``num_beam_groups`` groups that are searched
one after the other within each step. Group ``g`` pays ``diversity_penalty`` for every time a group before it chose
the same token at this step (Hamming diversity), so the groups spread over different tokens. As in transformers 4
the penalty is part of the hypotheses' scores, and the returned hypotheses of all groups are sorted by score.

Constrained beam search (Hokamp & Liu, 2017; dynamic beam allocation of Post & Vilar, 2018) makes phrases appear.
Besides the best-scoring continuations, every beam proposes the tokens that take it one step further into a phrase
it still lacks. Candidates are put in *banks* by how many constraint tokens they have in place, and the beam is
filled round-robin across banks (the best of the fullest bank, the best of the next bank, ...), so hypotheses that
paid a price to make progress on the constraints are not crowded out by unconstrained ones. Only hypotheses that
satisfy every constraint may finish. If the maximum length makes that impossible, the best hypotheses found are
returned with a warning.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Optional, Sequence

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.utils import (
    GenerateBeamDecoderOnlyOutput,
    GenerateBeamEncoderDecoderOutput,
    GenerateOutput,
)

from .compat import cache_field
from .decoding import (
    StepOutputs, choose_stepper, drops_finished_rows, encoder_through_weight_layouts, owned_processors, sample_loop,
)
from .rewrites import process_owned_scores

# The score of "no hypothesis here": a placeholder beam or an empty finished slot. Finite (like core beam search),
# so that sums and divisions stay well defined.
_EMPTY = -1.0e9


# --------------------------------------------------------------------------------------------------------------
# Constraints
# --------------------------------------------------------------------------------------------------------------
def _contains(tokens: Sequence[int], phrase: Sequence[int]) -> bool:
    """Whether ``phrase`` occurs in ``tokens`` as a contiguous run."""
    n = len(phrase)
    return any(tuple(tokens[i : i + n]) == tuple(phrase) for i in range(len(tokens) - n + 1))


def _partial_matches(tokens: Sequence[int], phrase: Sequence[int]) -> list[int]:
    """Every ``p < len(phrase)`` such that ``tokens`` ends with the first ``p`` tokens of ``phrase`` (``0`` always)."""
    return [p for p in range(len(phrase)) if p == 0 or tuple(tokens[-p:]) == tuple(phrase[:p])]


class Constraint(list):
    """A requirement on the generated tokens: one of ``phrases`` (lists of token ids) must appear contiguously.

    Constraints here are stateless: whether a hypothesis satisfies one, and how far it has got, is read off its
    tokens at every step, so nothing has to be copied or reordered with the beams. A constraint is also the list
    of its token ids (the form of one ``force_words_ids`` item), so a ``GenerationConfig`` holding constraints
    prints, saves to JSON and loads back.
    """

    def __init__(self, phrases: Iterable[Sequence[int]]):
        phrases = [list(phrase) for phrase in phrases]
        if not phrases or any(
            len(phrase) == 0 or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in phrase)
            for phrase in phrases
        ):
            raise ValueError(
                f"A constraint needs one or more non-empty lists of non-negative token ids, got {phrases!r}."
            )
        super().__init__(phrases)
        self.phrases: tuple[tuple[int, ...], ...] = tuple(tuple(phrase) for phrase in phrases)

    @property
    def token_ids(self) -> list:
        return [list(x) if isinstance(x, list) else x for x in self]

    def is_satisfied(self, tokens: Sequence[int]) -> bool:
        return any(_contains(tokens, phrase) for phrase in self.phrases)

    def progress(self, tokens: Sequence[int]) -> int:
        """Constraint tokens in place: the longest phrase length once satisfied, else the longest partial match."""
        if self.is_satisfied(tokens):
            return max(len(phrase) for phrase in self.phrases)
        return max(max(_partial_matches(tokens, phrase)) for phrase in self.phrases)

    def next_tokens(self, tokens: Sequence[int]) -> set[int]:
        """Tokens that take ``tokens`` one step further into some phrase (starting a phrase counts)."""
        return {phrase[p] for phrase in self.phrases for p in _partial_matches(tokens, phrase)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"


class PhrasalConstraint(Constraint):
    """The phrase ``token_ids`` must appear (transformers 4's ``PhrasalConstraint``)."""

    def __init__(self, token_ids: Sequence[int]):
        super().__init__([token_ids])
        self[:] = list(token_ids)


class DisjunctiveConstraint(Constraint):
    """At least one of the phrases in ``nested_token_ids`` must appear (transformers 4's ``DisjunctiveConstraint``)."""

    def __init__(self, nested_token_ids: Sequence[Sequence[int]]):
        super().__init__(nested_token_ids)


def build_constraints(force_words_ids=None, constraints=None) -> list[Constraint]:
    """Turn transformers-4 style arguments into constraints.

    ``force_words_ids``: a list whose items are either a phrase (list of ids: it must appear) or a list of
    alternative phrases (list of lists: one of them must appear). ``constraints``: ``Constraint`` objects, items
    shaped like those of ``force_words_ids`` (what a saved generation config holds), or objects with a
    ``token_ids`` attribute of that shape (transformers 4's constraint classes).
    """
    result: list[Constraint] = []
    if force_words_ids is not None:
        if not isinstance(force_words_ids, (list, tuple)) or len(force_words_ids) == 0:
            raise ValueError(
                "force_words_ids must be a non-empty list of phrases (lists of token ids) or of lists of alternative "
                f"phrases, got {force_words_ids!r}."
            )
        for item in force_words_ids:
            result.append(_constraint_from_ids(item))
    for item in constraints or []:
        if isinstance(item, Constraint):
            result.append(item)
        elif isinstance(item, (list, tuple)):
            result.append(_constraint_from_ids(item))
        elif hasattr(item, "token_ids"):
            result.append(_constraint_from_ids(item.token_ids))
        else:
            raise ValueError(f"Unsupported constraint {item!r}: use PhrasalConstraint or DisjunctiveConstraint.")
    return result


def _constraint_from_ids(item) -> Constraint:
    if not isinstance(item, (list, tuple)) or len(item) == 0:
        raise ValueError(f"Each forced word must be a non-empty list of token ids (or of such lists), got {item!r}.")
    if all(isinstance(x, (list, tuple)) for x in item):
        return DisjunctiveConstraint(item)
    return PhrasalConstraint(item)


# --------------------------------------------------------------------------------------------------------------
# The beam search engine
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _Candidates:
    """Continuations proposed for one group, in priority order: position 0 is the one the beam wants most."""

    scores: torch.Tensor  # [B, C] accumulated log-probability of beam + token
    parents: torch.Tensor  # [B, C] index of the parent beam within the group
    tokens: torch.Tensor  # [B, C] the appended token
    valid: torch.Tensor  # [B, C] False for padding (batch items with fewer candidates)
    satisfied: torch.Tensor  # [B, C] every constraint met (always True without constraints)


class _FinishedHypotheses:
    """The ``size`` best finished hypotheses of every batch item (for one group), best first."""

    def __init__(self, batch_size: int, size: int, max_length: int, num_steps: int, fill: int, device):
        self.tokens = torch.full((batch_size, size, max_length), fill, dtype=torch.long, device=device)
        self.scores = torch.full((batch_size, size), _EMPTY, dtype=torch.float, device=device)
        self.origins = torch.full((batch_size, size, num_steps), -1, dtype=torch.int32, device=device)
        self.done = torch.zeros((batch_size, size), dtype=torch.bool, device=device)

    def add(self, tokens: torch.Tensor, scores: torch.Tensor, origins: torch.Tensor, admit: torch.Tensor) -> None:
        """Merge the admitted candidates (length-normalised ``scores``) and keep the best ``size``."""
        size = self.scores.shape[1]
        scores = scores.masked_fill(~admit, float("-inf"))
        merged_scores = torch.cat([self.scores, scores], dim=1)
        best = torch.topk(merged_scores, size, dim=1).indices
        self.tokens = _take(torch.cat([self.tokens, tokens], dim=1), best)
        self.origins = _take(torch.cat([self.origins, origins], dim=1), best)
        self.done = _take(torch.cat([self.done, admit], dim=1), best)
        self.scores = _take(merged_scores, best)


def _take(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b, k], ...]`` for every batch item ``b``: pick beams/candidates along dim 1."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def _propose_by_score(log_probs: torch.Tensor, beam_scores: torch.Tensor, count: int, do_sample: bool = False
                      ) -> _Candidates:
    """The ``count`` best continuations of all beams of a group by accumulated score (step 2 of the chapter); with
    ``do_sample`` (beam sampling) ``count`` continuations drawn without replacement in proportion to
    ``exp(score)``, best first, as transformers' beam sampling draws them."""
    batch, beams, vocab = log_probs.shape
    totals = (log_probs + beam_scores[:, :, None]).reshape(batch, beams * vocab)
    if do_sample:
        flat = torch.multinomial(nn.functional.softmax(totals, dim=-1), num_samples=count)
        scores, order = torch.gather(totals, 1, flat).sort(dim=-1, descending=True)
        flat = flat.gather(-1, order)
    else:
        scores, flat = torch.topk(totals, count, dim=1)
    ones = torch.ones_like(flat, dtype=torch.bool)
    return _Candidates(scores, flat // vocab, flat % vocab, ones, ones)


class _Proposal(NamedTuple):
    score: float  # accumulated log-probability of parent + token
    parent: int  # beam within the group
    token: int
    bank: int  # constraint tokens in place
    satisfied: bool  # every constraint met


def _round_robin_by_bank(proposals: list[_Proposal]) -> list[_Proposal]:
    """Best of the fullest bank, best of the next bank, ..., then the second best of each bank, and so on."""
    seen_in_bank: dict[int, int] = {}
    keyed = []
    for proposal in sorted(proposals, key=lambda p: (-p.bank, -p.score)):
        rank = seen_in_bank.get(proposal.bank, 0)
        seen_in_bank[proposal.bank] = rank + 1
        keyed.append(((rank, -proposal.bank), proposal))
    return [proposal for _, proposal in sorted(keyed, key=lambda k: k[0])]


def _propose_with_constraints(
    log_probs: torch.Tensor,
    beam_scores: torch.Tensor,
    beam_tokens: torch.Tensor,
    count: int,
    prompt_len: int,
    cur_len: int,
    constraints: list[Constraint],
) -> _Candidates:
    """Candidates for constrained search, ordered bank round-robin.

    Proposed: the ``count`` best continuations of all beams by score (as plain beam search), and from every beam
    its own ``num_beams`` most likely next tokens and every token that advances a constraint it still lacks (so a
    beam that paid for constraint tokens, and scores low, can still go on and end). A continuation reached from
    two parents is kept once, with its better score. Placeholder beams (score ``_EMPTY``) propose nothing of their
    own and their continuations come last.
    """
    by_score = _propose_by_score(log_probs, beam_scores, count)
    totals = log_probs + beam_scores[:, :, None]
    batch, beams, vocab = log_probs.shape
    own_best = torch.topk(log_probs, min(beams, vocab), dim=-1).indices.tolist()  # [B][beam][k]
    per_item = []
    for b in range(batch):
        hyps = [beam_tokens[b, j, prompt_len:cur_len].tolist() for j in range(beams)]
        found: dict[tuple, tuple[float, int, int]] = {}  # generated tokens -> (score, parent, token)

        def offer(score: float, parent: int, token: int) -> None:
            key = (*hyps[parent], token)
            if score != float("-inf") and (key not in found or found[key][0] < score):
                found[key] = (score, parent, token)

        for score, parent, token in zip(
            by_score.scores[b].tolist(), by_score.parents[b].tolist(), by_score.tokens[b].tolist()
        ):
            offer(score, parent, token)
        for j, beam_score in enumerate(beam_scores[b].tolist()):
            if beam_score <= _EMPTY / 2:
                continue
            missing = [c for c in constraints if not c.is_satisfied(hyps[j])]
            tokens = sorted(set(own_best[b][j]).union(*(c.next_tokens(hyps[j]) for c in missing)))
            for token, score in zip(tokens, totals[b, j, tokens].tolist()):
                offer(score, j, token)

        proposals = [
            _Proposal(score, parent, token, sum(c.progress(key) for c in constraints),
                      all(c.is_satisfied(key) for c in constraints))
            for key, (score, parent, token) in found.items()
        ]
        real = [p for p in proposals if p.score > _EMPTY / 2]
        placeholders = sorted((p for p in proposals if p.score <= _EMPTY / 2), key=lambda p: -p.score)
        per_item.append(_round_robin_by_bank(real) + placeholders)

    width = max(map(len, per_item))
    padding = _Proposal(2 * _EMPTY, 0, 0, 0, False)

    def column(field: str, dtype) -> torch.Tensor:
        rows = [[getattr(p, field) for p in items + [padding] * (width - len(items))] for items in per_item]
        return torch.tensor(rows, dtype=dtype, device=log_probs.device)

    valid = torch.tensor([[k < len(items) for k in range(width)] for items in per_item], device=log_probs.device)
    return _Candidates(
        column("score", log_probs.dtype), column("parent", torch.long), column("token", torch.long), valid,
        column("satisfied", torch.bool),
    )


def _hamming_counts(chosen: list[torch.Tensor], vocab_size: int) -> torch.Tensor:
    """How often each token was chosen at this step by the groups already searched: ``[B, vocab]``."""
    tokens = torch.cat(chosen, dim=1)
    counts = torch.zeros((tokens.shape[0], vocab_size), dtype=torch.float, device=tokens.device)
    return counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=torch.float))


def _output_fill_value(generation_config) -> int:
    """The id written after a hypothesis ends; as in core beam search (pad, or EOS when pad is unset or 0)."""
    pad, eos = generation_config._pad_token_tensor, generation_config._eos_token_tensor
    if eos is None:
        return -1
    return int(pad) if pad is not None and int(pad) != 0 else int(eos.reshape(-1)[0])


class _Continuations(NamedTuple):
    """Candidates of one group written out as hypotheses: the parent's tokens and history plus the new step."""

    sequences: torch.Tensor  # [B, C, max_length] the parent's tokens, then the candidate token
    origins: torch.Tensor  # [B, C, num_steps] the parent's origins, then the parent's row
    parent_rows: torch.Tensor  # [B, C] the parent's row (batch × num_beams numbering)


class _GroupStep(NamedTuple):
    """The next beams of one group, and whether every candidate of the group ended at this step."""

    sequences: torch.Tensor  # [B, group_size, max_length]
    scores: torch.Tensor  # [B, group_size]
    origins: torch.Tensor  # [B, group_size, num_steps]
    parent_rows: torch.Tensor  # [B, group_size]
    last_tokens: torch.Tensor  # [B, group_size] the tokens chosen at this step, for the Hamming penalty
    all_ended: bool


class BeamSearch:
    """The beam loop: beam search with beam groups and constraints (see the module docstring for the algorithm),
    and beam sampling, over a stepper of ``decoding.py`` (``decoding.choose_stepper``: the model's forward or its
    fast twin).

    ``input_ids`` is ``[batch × num_beams, prompt_len]`` (generate() has expanded it); beams of one batch item are
    contiguous rows, the beams of group ``g`` are rows ``g × group_size ... (g + 1) × group_size - 1`` of it. The
    running beams are kept as ``[batch, num_beams, ...]`` tensors in that order.
    """

    def __init__(
        self,
        model: GenerationMixin,
        input_ids: torch.LongTensor,
        logits_processor: LogitsProcessorList,
        stopping_criteria: StoppingCriteriaList,
        generation_config: GenerationConfig,
        synced_gpus: bool,
        num_groups: int,
        diversity_penalty: float,
        constraints: list[Constraint],
        model_kwargs: dict,
    ):
        config = generation_config
        self.model, self.model_kwargs, self.generation_config = model, model_kwargs, config
        self.stepper = choose_stepper(model, input_ids, config, model_kwargs, synced_gpus)  # computes each step's logits
        self.computed_items = input_ids.shape[0] // config.num_beams  # the batch items the stepper computes
        self.drops_rows = drops_finished_rows(config)
        self.do_sample = config.do_sample
        self.logits_processor = owned_processors(self.stepper, logits_processor)
        self.stopping_criteria = stopping_criteria
        self.synced_gpus = synced_gpus
        self.num_groups, self.diversity_penalty, self.constraints = num_groups, diversity_penalty, constraints
        self.num_beams, self.group_size = config.num_beams, config.num_beams // num_groups
        self.length_penalty, self.early_stopping = config.length_penalty, config.early_stopping
        self.max_length = config.max_length
        self.is_encoder_decoder = model.config.is_encoder_decoder
        self.device = input_ids.device
        self.batch_size = input_ids.shape[0] // self.num_beams
        self.prompt_len = self.cur_len = input_ids.shape[1]
        self.num_steps = self.max_length - self.prompt_len
        self.fill = _output_fill_value(config)
        eos = config._eos_token_tensor
        self.num_candidates = max(2, 1 + (eos.numel() if eos is not None else 0)) * self.group_size

        self._start_beams(input_ids)
        self.finished = self._new_hypotheses()
        # Constrained search only: hypotheses that ended without meeting the constraints, the last resort.
        self.unmet = self._new_hypotheses()
        self.can_improve = torch.ones((self.batch_size, num_groups), dtype=torch.bool, device=self.device)
        self.step_outputs = StepOutputs(config, self.is_encoder_decoder)

    def _start_beams(self, input_ids: torch.LongTensor) -> None:
        """The running beams before the first step: the prompt, with one real beam per group.

        The other beams are placeholders (score ``_EMPTY``), so that the first step does not pick the same token
        once per beam.
        """
        batch_size, num_beams, prompt_len, device = self.batch_size, self.num_beams, self.prompt_len, self.device
        sequences_shape = (batch_size, num_beams, self.max_length)
        self.sequences = torch.full(sequences_shape, self.fill, dtype=torch.long, device=device)
        self.sequences[:, :, :prompt_len] = input_ids.view(batch_size, num_beams, prompt_len)
        scores = torch.zeros((batch_size, self.num_groups, self.group_size), dtype=torch.float, device=device)
        scores[:, :, 1:] = _EMPTY
        self.scores = scores.view(batch_size, num_beams)
        # origins[b, k, t]: the row (batch × num_beams numbering) whose beam the k-th beam continued at step t
        self.origins = torch.full((batch_size, num_beams, self.num_steps), -1, dtype=torch.int32, device=device)

    def _new_hypotheses(self) -> list[_FinishedHypotheses]:
        """Empty finished hypotheses, one pool per group."""
        shape = (self.batch_size, self.group_size, self.max_length, self.num_steps)
        return [_FinishedHypotheses(*shape, self.fill, self.device) for _ in range(self.num_groups)]

    def run(self) -> GenerateBeamEncoderDecoderOutput | GenerateBeamDecoderOnlyOutput | torch.LongTensor:
        """Search step by step until the search is over, then return the best finished hypotheses."""
        this_peer_finished = False
        raw_logits = self.step_outputs.raw_logits is not None
        while self.model._has_unfinished_sequences(this_peer_finished, self.synced_gpus, device=self.device):
            flat_sequences = self.sequences[:, :, : self.cur_len].flatten(0, 1)
            logits = self.stepper.step(flat_sequences, log_softmax=not raw_logits)
            if self.synced_gpus and this_peer_finished:
                continue
            self.step_outputs.add_logits(logits)
            log_probs = nn.functional.log_softmax(logits, dim=-1) if raw_logits else logits
            log_probs = process_owned_scores(self.logits_processor, flat_sequences, log_probs)
            self.step_outputs.add(self.stepper.outputs, log_probs)
            self.stepper.outputs = None
            this_peer_finished = self._step(log_probs)
            if not this_peer_finished and self.drops_rows:
                self._compute_unsettled_only()
        return self._result()

    def _step(self, log_probs: torch.Tensor) -> bool:
        """One step of the chapter, group after group; returns whether the search is over."""
        vocab_size = log_probs.shape[-1]
        # A view: the diversity penalties below also reach log_probs, and so the recorded scores.
        step_log_probs = log_probs.view(self.batch_size, self.num_groups, self.group_size, vocab_size)
        groups: list[_GroupStep] = []
        for g in range(self.num_groups):
            group_log_probs = step_log_probs[:, g]
            if self.diversity_penalty and groups:
                chosen = [group.last_tokens for group in groups]
                group_log_probs -= self.diversity_penalty * _hamming_counts(chosen, vocab_size)[:, None, :]
            groups.append(self._step_group(g, group_log_probs))
        self._advance(groups)
        self._update_can_improve()
        return all(group.all_ended for group in groups) or self._is_settled()

    def _step_group(self, g: int, log_probs: torch.Tensor) -> _GroupStep:
        """Steps 1-4 of the chapter for group ``g``, given its beams' ``[B, group_size, vocab]`` log-probabilities."""
        beams = slice(g * self.group_size, (g + 1) * self.group_size)
        candidates = self._propose(log_probs, beams)
        continuations = self._extend(candidates, beams)
        ended = self._ended(candidates, continuations)
        self._finish(g, candidates, continuations, ended)
        return self._next_beams(candidates, continuations, ended)

    def _propose(self, log_probs: torch.Tensor, beams: slice) -> _Candidates:
        """Steps 1-2: the continuations of the group's beams worth considering, in priority order."""
        if self.constraints:
            return _propose_with_constraints(
                log_probs, self.scores[:, beams], self.sequences[:, beams], self.num_candidates, self.prompt_len,
                self.cur_len, self.constraints,
            )
        return _propose_by_score(log_probs, self.scores[:, beams], self.num_candidates, self.do_sample)

    def _extend(self, candidates: _Candidates, beams: slice) -> _Continuations:
        """Each candidate as a hypothesis: its parent's tokens and origins, extended by this step."""
        sequences = _take(self.sequences[:, beams], candidates.parents)
        sequences[:, :, self.cur_len] = candidates.tokens
        origins = _take(self.origins[:, beams], candidates.parents)
        batch_offsets = torch.arange(self.batch_size, device=self.device)[:, None] * self.num_beams
        parent_rows = candidates.parents + beams.start + batch_offsets
        origins[:, :, self.cur_len - self.prompt_len] = parent_rows
        return _Continuations(sequences, origins, parent_rows)

    def _ended(self, candidates: _Candidates, continuations: _Continuations) -> torch.Tensor:
        """``[B, C]``: which candidates end here (the stopping criteria: EOS, max length ...); padding counts."""
        width = candidates.scores.shape[1]
        flat_sequences = continuations.sequences[:, :, : self.cur_len + 1].reshape(self.batch_size * width, -1)
        ended = self.stopping_criteria(flat_sequences, self.step_outputs.scores)
        return ended.view(self.batch_size, width) | ~candidates.valid

    def _finish(self, g: int, candidates: _Candidates, continuations: _Continuations, ended: torch.Tensor) -> None:
        """Step 3: candidates that end inside the beam become finished hypotheses (unless the search has settled)."""
        width = candidates.scores.shape[1]
        in_beam = torch.arange(width, device=self.device)[None, :] < self.group_size
        full = self.finished[g].done.all(-1, keepdim=True) & (self.early_stopping is True)
        settled = ~self.can_improve[:, g : g + 1] | full
        normalised = candidates.scores / ((self.cur_len + 1 - self.prompt_len) ** self.length_penalty)
        may_finish = ended & candidates.valid & ~settled
        sequences, origins = continuations.sequences, continuations.origins
        if self.constraints:
            # A hypothesis that meets every constraint competes with the others that do, as in a plain beam:
            # it may finish when it ranks among the group_size best of them by score.
            met = candidates.valid & candidates.satisfied
            met_scores = candidates.scores.masked_fill(~met, float("-inf"))
            met_rank = torch.argsort(torch.argsort(met_scores, dim=1, descending=True, stable=True), dim=1)
            self.finished[g].add(sequences, normalised, origins, may_finish & met & (met_rank < self.group_size))
            self.unmet[g].add(sequences, normalised, origins, may_finish & ~met & in_beam)
        else:
            self.finished[g].add(sequences, normalised, origins, may_finish & in_beam)

    def _next_beams(self, candidates: _Candidates, continuations: _Continuations, ended: torch.Tensor) -> _GroupStep:
        """Step 4: the first group_size candidates that go on (ended ones only fill up a shortage, as placeholders)."""
        width = candidates.scores.shape[1]
        going_on = candidates.valid & ~ended
        position = torch.arange(width, device=self.device)[None, :] + (~going_on) * width
        keep = torch.sort(position, dim=1, stable=True).indices[:, : self.group_size]
        return _GroupStep(
            sequences=_take(continuations.sequences, keep),
            scores=_take(candidates.scores + (~going_on).float() * _EMPTY, keep),
            origins=_take(continuations.origins, keep),
            parent_rows=_take(continuations.parent_rows, keep),
            last_tokens=_take(candidates.tokens, keep),
            all_ended=bool(ended.all()),
        )

    def _advance(self, groups: list[_GroupStep]) -> None:
        """Make the groups' next beams the running beams, and the cache follow them."""
        self.sequences = torch.cat([group.sequences for group in groups], dim=1)
        self.scores = torch.cat([group.scores for group in groups], dim=1)
        self.origins = torch.cat([group.origins for group in groups], dim=1)
        parent_rows = torch.cat([group.parent_rows for group in groups], dim=1).reshape(-1)
        self.stepper.reorder(parent_rows)
        self.cur_len += 1

    def _update_can_improve(self) -> None:
        """Narrow ``can_improve``: whether a running beam of each group can still beat its worst finished hypothesis.

        A pool with a free slot can always take one. The running beams are judged at the current length, or at the
        best reachable one (``early_stopping="never"``, an exact bound); once False, it stays False.
        """
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_len = self.max_length - self.prompt_len
        else:
            best_len = self.cur_len - self.prompt_len
        best_running = self.scores.view(self.batch_size, self.num_groups, self.group_size).max(-1).values
        best_running = best_running / (best_len**self.length_penalty)
        done = torch.stack([f.done for f in self.finished], dim=1)  # [B, G, S]
        worst = torch.stack([f.scores.min(-1).values for f in self.finished], dim=1)  # [B, G]
        worst = torch.where(done, worst[:, :, None], _EMPTY)
        self.can_improve &= (best_running[:, :, None] > worst).any(-1)

    def _settled_items(self) -> torch.Tensor:
        """``[B]``: the batch items whose search is over (the per-item form of ``_is_settled``)."""
        settled = ~self.can_improve.any(-1)
        if self.early_stopping is True:
            settled |= torch.stack([f.done.all(-1) for f in self.finished], dim=1).all(-1)
        return settled

    def _compute_unsettled_only(self) -> None:
        """Let the stepper drop the rows of items whose search is over: nothing of theirs changes any more (no
        hypothesis of a settled item is admitted, ``_finish``), so their logits are never read."""
        unsettled = ~self._settled_items()
        count = int(unsettled.sum())
        if count < self.computed_items:
            items = unsettled.nonzero().flatten()
            self.stepper.keep((items[:, None] * self.num_beams + torch.arange(self.num_beams, device=self.device)).reshape(-1))
            self.computed_items = count

    def _is_settled(self) -> bool:
        """No group can improve, or (``early_stopping=True``) every finished pool is full."""
        all_full = self.early_stopping is True and bool(torch.stack([f.done for f in self.finished]).all())
        return all_full or not bool(self.can_improve.any())

    def _result(self) -> GenerateBeamEncoderDecoderOutput | GenerateBeamDecoderOnlyOutput | torch.LongTensor:
        """The ``num_return_sequences`` best finished hypotheses, cut to the longest generated one."""
        config = self.generation_config
        sequences, sequences_scores, beam_indices = _best_hypotheses(
            self.finished, self.unmet if self.constraints else None, config.num_return_sequences
        )
        generated = (beam_indices >= 0).sum(-1).max()
        sequences = sequences[:, : self.prompt_len + generated]
        beam_indices = beam_indices[:, :generated]
        if not config.return_dict_in_generate:
            return sequences
        return self.step_outputs.to_generate_output(
            sequences, self.stepper.to_cache(), self.model_kwargs,
            sequences_scores=sequences_scores if config.output_scores else None, beam_indices=beam_indices,
        )


def _best_hypotheses(finished: list[_FinishedHypotheses], unmet: Optional[list[_FinishedHypotheses]], count: int):
    """The ``count`` best finished hypotheses of each batch item over all groups, flattened to ``[B × count, ...]``.

    With constraints, hypotheses that meet them always come first; the others only fill up a shortage (warned).
    """
    pools = finished + (unmet or [])
    tokens = torch.cat([f.tokens for f in pools], dim=1)
    scores = torch.cat([f.scores for f in pools], dim=1)
    origins = torch.cat([f.origins for f in pools], dim=1)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    if unmet is not None:
        # tier 0: met the constraints, 1: did not, 2: empty slot; best score first within a tier
        tier = torch.cat(
            [torch.where(f.done, 0, 2) for f in finished] + [torch.where(f.done, 1, 2) for f in unmet], dim=1
        )
        order = _take(order, torch.sort(_take(tier, order), dim=1, stable=True).indices)
        if bool((_take(tier, order[:, :count]) != 0).any()):
            warnings.warn(
                "Constrained beam search could not satisfy every constraint within max_length for some inputs; "
                "returning the best hypotheses found. Raise max_new_tokens or num_beams.",
                UserWarning,
                stacklevel=5,  # generate(), the caller of constrained_beam_search
            )
    order = order[:, :count]
    batch = tokens.shape[0]
    return (
        _take(tokens, order).reshape(batch * count, -1),
        _take(scores, order).reshape(-1),
        _take(origins, order).reshape(batch * count, -1),
    )


def _check_beam_arguments(generation_config, streamer, mode: str) -> None:
    if streamer is not None:
        raise ValueError(f"{mode} cannot stream (streamer=...): all beams are only known at the end.")
    if generation_config.do_sample:
        raise ValueError(f"{mode} does not sample: pass do_sample=False.")
    if generation_config.num_return_sequences > generation_config.num_beams:
        raise ValueError(
            f"num_return_sequences ({generation_config.num_return_sequences}) must be <= num_beams "
            f"({generation_config.num_beams})."
        )


# --------------------------------------------------------------------------------------------------------------
# The two custom_generate entry points
# --------------------------------------------------------------------------------------------------------------
def diverse_beam_search(
    model,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria,
    generation_config,
    synced_gpus: bool = False,
    streamer=None,
    **model_kwargs,
):
    """Diverse (group) beam search with Hamming diversity, usable as ``generate(..., custom_generate=...)``.

    Reads ``num_beams``, ``num_beam_groups`` (must divide ``num_beams``) and ``diversity_penalty`` from the
    generation config, and honours length_penalty, early_stopping, EOS, max/min length, every logits processor,
    num_return_sequences and return_dict_in_generate (``sequences_scores`` with ``output_scores=True``, as core).
    With ``num_beam_groups=1`` it is plain beam search and returns what core beam search returns.
    """
    config = generation_config
    num_groups = config.num_beam_groups or 1
    penalty = config.diversity_penalty or 0.0
    _check_beam_arguments(config, streamer, "Diverse beam search")
    if config.constraints is not None or config.force_words_ids is not None:
        raise ValueError("Diverse beam search cannot be combined with constraints (force_words_ids / constraints).")
    if num_groups < 1 or config.num_beams % num_groups != 0:
        raise ValueError(
            f"num_beams ({config.num_beams}) must be a multiple of num_beam_groups ({num_groups}); each group "
            "gets num_beams // num_beam_groups beams."
        )
    if penalty < 0:
        raise ValueError(f"diversity_penalty must be >= 0, got {penalty}.")
    if num_groups > 1 and penalty == 0:
        warnings.warn(
            "num_beam_groups > 1 with diversity_penalty=0.0: every group runs the same search. Set "
            "diversity_penalty > 0 to make the groups differ.",
            UserWarning,
            stacklevel=2,
        )
    return BeamSearch(
        model, input_ids, logits_processor, stopping_criteria, config, synced_gpus,
        num_groups=num_groups, diversity_penalty=penalty, constraints=[], model_kwargs=model_kwargs,
    ).run()


def constrained_beam_search(
    model,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria,
    generation_config,
    synced_gpus: bool = False,
    streamer=None,
    **model_kwargs,
):
    """Constrained beam search (dynamic beam allocation), usable as ``generate(..., custom_generate=...)``.

    The constraints come from the generation config: ``force_words_ids`` (phrases that must appear; an item that is
    a list of phrases is one disjunctive constraint) and/or ``constraints`` (``PhrasalConstraint`` /
    ``DisjunctiveConstraint``). Constraints are checked on the generated tokens (not the decoder prompt). Logits
    processors win over constraints: a token a processor forbids (-inf) is never forced. Without constraints it is
    plain beam search and returns what core beam search returns.
    """
    config = generation_config
    _check_beam_arguments(config, streamer, "Constrained beam search")
    if (config.num_beam_groups or 1) > 1:
        raise ValueError("Constrained beam search cannot be combined with num_beam_groups > 1.")
    constraints = build_constraints(config.force_words_ids, config.constraints)
    vocab_size = model.config.vocab_size
    outside = sorted({t for c in constraints for phrase in c.phrases for t in phrase if t >= vocab_size})
    if outside:
        raise ValueError(
            f"force_words_ids / constraints hold token ids {outside[:5]} outside the model's vocabulary of "
            f"{vocab_size} tokens; encode the words with the model's own tokenizer."
        )
    return BeamSearch(
        model, input_ids, logits_processor, stopping_criteria, config, synced_gpus,
        num_groups=1, diversity_penalty=0.0, constraints=constraints, model_kwargs=model_kwargs,
    ).run()


# --------------------------------------------------------------------------------------------------------------
# Routing: transformers-4 arguments reach these functions by themselves
# --------------------------------------------------------------------------------------------------------------
def _argument(name: str, generation_kwargs: dict, *generation_configs):
    """A generation argument as ``generate`` resolves it: the call's keyword first, then each generation config in
    turn (the first not None)."""
    if generation_kwargs.get(name) is not None:
        return generation_kwargs[name]
    for config in generation_configs:
        if config is not None and getattr(config, name, None) is not None:
            return getattr(config, name)
    return None


def offline_decoding_function(generation_kwargs: dict, *generation_configs):
    """The callable for the generation arguments if they ask for a mode core transformers 5 left out, else None.

    Values come from ``generation_kwargs`` first, then from each generation config in turn (the first not None),
    the precedence ``generate`` itself applies.
    """

    def value(name):
        return _argument(name, generation_kwargs, *generation_configs)

    if value("force_words_ids") is not None or value("constraints") is not None:
        return constrained_beam_search
    if (value("num_beam_groups") or 1) > 1:
        return diverse_beam_search
    return None


#: The signature of the ``generate`` that ``ScratchGenerationMixin`` overrides (``self, inputs, generation_config, ...,
#: custom_generate, **kwargs`` in transformers 5.21 to 5.24), to read its arguments however they are passed.
_GENERATE_SIGNATURE = inspect.signature(GenerationMixin.generate)


class ScratchGenerationMixin(GenerationMixin):
    """``GenerationMixin`` whose decoding runs through the engine of ``decoding.py``: every model family of the
    package inherits it (see ``decoding.py`` for what a model must expose), and defines no generation hook itself.

    - ``_sample`` (greedy search, sampling) runs ``decoding.sample_loop``, ``_beam_search`` (beam search, beam
      sampling) runs ``BeamSearch``, each over the stepper ``decoding.choose_stepper`` picks: the model's forward,
      or its exact fast twin with ``forward_implementation="fast"``;
    - ``generate`` also runs diverse and constrained beam search, offline: when ``num_beam_groups > 1`` or
      ``force_words_ids`` / ``constraints`` are given (as arguments, in a ``generation_config`` or in the model's own
      generation config) and no ``custom_generate`` is, it uses ``diverse_beam_search`` / ``constrained_beam_search``
      instead of fetching them from the Hub. A fast encoder-decoder's encoder runs its products through oneDNN for
      the call (``decoding.encoder_through_weight_layouts``);
    - the requested length is checked against the position table before decoding (``_validate_generated_length``).
    """

    def generate(self, *args, **kwargs) -> GenerateOutput | torch.LongTensor:
        call = _GENERATE_SIGNATURE.bind(self, *args, **kwargs)
        num_beams = _argument("num_beams", kwargs, call.arguments.get("generation_config"), self.generation_config)
        if num_beams is not None and (isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1):
            raise ValueError(f"num_beams={num_beams!r}: it must be a whole number >= 1 (1 is greedy search or sampling).")
        if call.arguments.get("custom_generate") is None:
            generation_config = call.arguments.get("generation_config")
            function = offline_decoding_function(kwargs, generation_config, self.generation_config)
            if function is not None:
                call.arguments["custom_generate"] = function
                args, kwargs = call.args[1:], call.kwargs
        with encoder_through_weight_layouts(self):
            return super().generate(*args, **kwargs)

    def _sample(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus: bool = False,
                streamer=None, **model_kwargs):
        """Greedy search and sampling: ``decoding.sample_loop`` (transformers' ``_sample``, step for step)."""
        stepper = choose_stepper(self, input_ids, generation_config, model_kwargs, synced_gpus)
        return sample_loop(self, stepper, input_ids, logits_processor, stopping_criteria, generation_config,
                           synced_gpus, streamer, model_kwargs)

    def _beam_search(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus: bool = False,
                     **model_kwargs):
        """Beam search and beam sampling: ``BeamSearch`` (what transformers' ``_beam_search`` returns)."""
        return BeamSearch(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus,
                          num_groups=1, diversity_penalty=0.0, constraints=[], model_kwargs=model_kwargs).run()

    def _validate_generated_length(self, generation_config, input_ids_length: int, has_default_max_length: bool):
        """transformers' checks of the requested length, plus one: refuse, before decoding, a ``max_length`` that
        would run the decoder past its position table (instead of failing at that step, output lost).

        The decoder embeds every token but the last, so ``max_length`` tokens need ``max_length - 1`` positions.
        (A default length is already capped at ``max_position_embeddings`` by transformers.)
        """
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)
        positions, max_length = self.config.max_position_embeddings, generation_config.max_length
        if max_length - 1 > positions:
            most = positions + 1 - input_ids_length
            fix = f"pass max_new_tokens <= {most}" if most > 0 else f"shorten the decoder prompt to {positions} tokens"
            raise ValueError(
                f"max_length={max_length} (the decoder prompt's {input_ids_length} token(s) + max_new_tokens) needs "
                f"{max_length - 1} decoder positions, more than the decoder's position table has "
                f"(max_position_embeddings={positions}); {fix}."
            )


__all__ = [
    "BeamSearch",
    "Constraint",
    "PhrasalConstraint",
    "DisjunctiveConstraint",
    "build_constraints",
    "diverse_beam_search",
    "constrained_beam_search",
    "offline_decoding_function",
    "ScratchGenerationMixin",
]
