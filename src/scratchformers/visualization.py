"""Attention and search you can look at: heatmaps of a Transformer's attention, attention rollout over a ViT's
image, and the tree of a beam search.

    result = plot_attention(model, tokenizer, "the cat sat", path="cross.png")   # generates the target
    result.weights      # [target tokens, source tokens], every row a probability distribution
    result.row_labels   # the target tokens (what each row predicts), result.col_labels the source tokens

    result = plot_vit_attention(vit, image_processor, "cat.png", path="rollout.png")
    result.mask         # [patch rows, patch columns]: how much the [CLS] token draws from each patch

    result = plot_beam_search(model, tokenizer, "the cat", num_beams=2, max_new_tokens=3, path="beams.png")
    result.greedy_probability, result.beam_probability, result.best_probability  # greedy vs beams vs exhaustive

matplotlib is an optional dependency (``pip install matplotlib``), imported only when a plot is drawn. Figures are
built with matplotlib's object-oriented API (no pyplot), so they need no display and are freed with the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ATTENTION_KINDS = ("cross", "encoder")
HEAD_FUSIONS = ("mean", "max", "min")


def _new_figure(**kwargs) -> "Figure":
    """A matplotlib ``Figure``; a clear error naming the install command when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Plotting needs matplotlib, which is not installed. Install it with: pip install matplotlib "
            "(or pip install 'scratchformers[plot]')."
        ) from error
    return Figure(**kwargs)


@dataclass
class AttentionPlot:
    """What ``plot_attention`` drew: ``weights[i, j]`` is how much query token ``i`` attends to key token ``j``."""

    weights: np.ndarray
    row_labels: list[str]
    col_labels: list[str]
    figure: "Figure" = field(repr=False)
    path: Optional[Path] = None


@dataclass
class RolloutPlot:
    """What ``plot_vit_attention`` drew: the rollout ``[T, T]`` and the [CLS] row over the patch grid."""

    rollout: np.ndarray
    mask: np.ndarray
    figure: "Figure" = field(repr=False)
    path: Optional[Path] = None


# --------------------------------------------------------------------------------------------------------------
# Encoder-decoder attention
# --------------------------------------------------------------------------------------------------------------
def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """Readable axis labels: each id decoded on its own (special tokens kept), surrounding spaces stripped."""
    labels = []
    for token_id in ids:
        text = tokenizer.decode([int(token_id)], skip_special_tokens=False)
        labels.append(text.strip() or repr(text))
    return labels


def select_attention(attentions: Sequence[Optional[torch.Tensor]], layer: int, head: Optional[int]) -> torch.Tensor:
    """One layer's weights of the first batch element ``[Tq, Tk]``: one head, or the mean of all heads."""
    if not attentions or attentions[0] is None:
        raise RuntimeError(
            "The model returned no attention weights. Load it with attn_implementation='eager' "
            "(fused kernels such as sdpa do not compute them)."
        )
    if not -len(attentions) <= layer < len(attentions):
        raise ValueError(f"layer={layer} is out of range: the model has {len(attentions)} layers.")
    weights = attentions[layer][0].float()  # [H, Tq, Tk]
    if head is None:
        return weights.mean(dim=0)  # a mean of probability rows is a probability row
    if not -weights.shape[0] <= head < weights.shape[0]:
        raise ValueError(f"head={head} is out of range: the layer has {weights.shape[0]} heads.")
    return weights[head]


@torch.no_grad()
def plot_attention(
    model,
    tokenizer,
    source: str,
    target: Optional[str] = None,
    path: Union[str, Path, None] = None,
    layer: int = -1,
    head: Optional[int] = None,
    kind: str = "cross",
    pad_to: Optional[int] = None,
    max_new_tokens: int = 64,
) -> AttentionPlot:
    """Heatmap of an encoder-decoder model's attention for one sentence; saved as PNG when ``path`` is given.

    Args:
        source: the input sentence.
        target: the output sentence to force (teacher forcing); ``None`` generates it greedily.
        layer: which layer (negative counts from the last); head: which head, ``None`` averages the heads.
        kind: ``"cross"`` (rows: target tokens, the token each row predicts; columns: source tokens) or
            ``"encoder"`` (encoder self-attention, source tokens on both axes).
        pad_to: pad the source with ``<pad>`` up to this many tokens, to see that padding gets zero weight.
        max_new_tokens: length limit when the target is generated.

    Weights are computed by the eager attention code whatever ``attn_implementation`` the model was loaded with
    (our attention switches to it when weights are requested).
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind={kind!r} is not supported; allowed values: {', '.join(map(repr, ATTENTION_KINDS))}.")
    was_training = model.training
    model.eval()  # dropout off: the weights are exactly the softmax, rows sum to 1
    try:
        max_length = pad_to or getattr(model.config, "max_position_embeddings", None)
        padding = "max_length" if pad_to else False
        encoded = tokenizer(source, return_tensors="pt", truncation=max_length is not None, max_length=max_length,
                            padding=padding).to(model.device)
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        col_labels = token_labels(tokenizer, input_ids[0])

        if kind == "encoder":
            outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
            attentions = outputs.attentions
            row_labels = col_labels
        else:
            decoder_input_ids, predicted = _decoder_tokens(model, tokenizer, input_ids, attention_mask, target,
                                                           max_new_tokens)
            outputs = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                            output_attentions=True)
            attentions = outputs.cross_attentions
            row_labels = token_labels(tokenizer, predicted)
    finally:
        model.train(was_training)

    weights = select_attention(attentions, layer, head).cpu().numpy()
    head_name = "mean of heads" if head is None else f"head {head}"
    title = f"{'cross' if kind == 'cross' else 'encoder self'}-attention, layer {layer % len(attentions)}, {head_name}"
    ylabel = "target tokens (queries)" if kind == "cross" else "source tokens (queries)"
    figure = _heatmap(weights, row_labels, col_labels, title, ylabel, "source tokens (keys)")
    return AttentionPlot(weights, row_labels, col_labels, figure, _save(figure, path))


def _decoder_tokens(model, tokenizer, input_ids, attention_mask, target, max_new_tokens):
    """Decoder inputs ``<start> y_1 ... y_{n-1}`` and the tokens ``y_1 ... y_n`` they predict."""
    start = model.config.decoder_start_token_id
    if target is None:
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None:
            max_new_tokens = min(max_new_tokens, limit - 1)
        sequence = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                  num_beams=1, do_sample=False)[0]
    else:
        labels = tokenizer(text_target=target, return_tensors="pt")["input_ids"][0].to(input_ids.device)
        sequence = torch.cat([labels.new_tensor([start]), labels])
    return sequence[None, :-1], sequence[1:]


def _heatmap(weights: np.ndarray, row_labels: list[str], col_labels: list[str], title: str, ylabel: str,
             xlabel: str) -> "Figure":
    rows, cols = weights.shape
    figure = _new_figure(figsize=(max(4.0, 0.4 * cols + 2.0), max(3.0, 0.4 * rows + 1.5)))
    axes = figure.add_subplot()
    image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto")
    axes.set_xticks(range(cols), labels=col_labels, rotation=90)
    axes.set_yticks(range(rows), labels=row_labels)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="attention weight")
    figure.tight_layout()
    return figure


def _save(figure: "Figure", path: Union[str, Path, None]) -> Optional[Path]:
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------------------------------------------
# Training curves, from the Trainer's log history
# --------------------------------------------------------------------------------------------------------------
def plot_training_curves(log_history: Sequence[dict], metric: Optional[str] = None,
                         path: Union[str, Path, None] = None) -> "Figure":
    """Training loss (and evaluation loss) against steps, and the evaluation ``metric`` (e.g. ``"bleu"``) against
    steps beside it, from ``trainer.state.log_history`` (``trainer_state.json``'s ``log_history``); saved as PNG
    when ``path`` is given."""
    # Evaluations after the end of training (the final one, of the best checkpoint) are not points of the curve.
    ended = next((i for i, entry in enumerate(log_history) if "train_runtime" in entry), len(log_history))
    during_training = log_history[:ended]

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(entry["step"], entry[key]) for entry in during_training if key in entry and "step" in entry]
        return [step for step, _ in points], [value for _, value in points]

    eval_metric = f"eval_{metric}" if metric else None
    panels = 2 if eval_metric and series(eval_metric)[0] else 1
    figure = _new_figure(figsize=(5.5 * panels, 3.6), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for key, label in (("loss", "training loss"), ("eval_loss", "evaluation loss")):
        steps, values = series(key)
        if steps:
            axes[0].plot(steps, values, marker="." if key == "eval_loss" else None, label=label)
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[0].legend()
    if panels == 2:
        axes[1].plot(*series(eval_metric), marker="o", color="tab:green")
        axes[1].set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    for axis in axes:
        axis.grid(alpha=0.3)
    _save(figure, path)
    return figure


# --------------------------------------------------------------------------------------------------------------
# ViT: attention rollout (Abnar & Zuidema, 2020)
# --------------------------------------------------------------------------------------------------------------
def attention_rollout(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", add_residual: bool = True
) -> torch.Tensor:
    """Attention rollout: how much each token's final state draws from each input token, through all layers.

    Each layer's ``[B, H, T, T]`` weights are fused over heads to ``A``; the residual connection is accounted for
    as ``Â = (A + I) / 2``, rows renormalised; the rollout is ``Â_L ··· Â_2 Â_1`` ``[B, T, T]``. Every row is a
    probability distribution over the input tokens.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion={head_fusion!r}; allowed values: {', '.join(map(repr, HEAD_FUSIONS))}.")
    if not attentions or any(a is None for a in attentions):
        raise RuntimeError(
            "The model returned no attention weights. Load it with attn_implementation='eager' "
            "(fused kernels such as sdpa do not compute them)."
        )
    rollout = None
    for weights in attentions:
        weights = weights.float()
        fused = {"mean": weights.mean(dim=1), "max": weights.amax(dim=1), "min": weights.amin(dim=1)}[head_fusion]
        if add_residual:
            fused = 0.5 * fused + 0.5 * torch.eye(fused.shape[-1], device=fused.device)
        fused = fused / fused.sum(dim=-1, keepdim=True)
        rollout = fused if rollout is None else fused @ rollout
    return rollout


def _to_pil(image: Any):
    from PIL import Image

    if isinstance(image, (str, Path)):
        return Image.open(image).convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    return image


@torch.no_grad()
def plot_vit_attention(
    model,
    image_processor,
    image: Any,
    path: Union[str, Path, None] = None,
    head_fusion: str = "mean",
    alpha: float = 0.5,
) -> RolloutPlot:
    """Overlay the attention rollout of the [CLS] token (index 0) on ``image`` (a path, PIL image or array).

    Works with any model that returns Hugging Face ViT outputs: ``attentions``, one ``[B, H, T, T]`` per layer,
    with the patch tokens last (``T = prefix tokens + patch rows × patch columns``).
    """
    pil_image = _to_pil(image)
    was_training = model.training
    model.eval()
    try:
        pixel_values = image_processor(images=pil_image, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=model.device, dtype=model.dtype)
        outputs = model(pixel_values=pixel_values, output_attentions=True)
    finally:
        model.train(was_training)
    rollout = attention_rollout(outputs.attentions, head_fusion=head_fusion)[0].cpu()

    patch_size = model.config.patch_size
    patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    grid_h, grid_w = pixel_values.shape[-2] // patch_h, pixel_values.shape[-1] // patch_w
    if hasattr(model.config, "grid_size"):  # ours: a convolutional stem also counts a partial patch at the edge
        grid_h, grid_w = model.config.grid_size(pixel_values.shape[-2]), model.config.grid_size(pixel_values.shape[-1])
    prefix = rollout.shape[-1] - grid_h * grid_w  # [CLS] (and any other extra tokens) come first
    if prefix < 1:
        raise ValueError(f"Expected a [CLS] token before the {grid_h * grid_w} patch tokens, got {rollout.shape[-1]} tokens.")
    mask = rollout[0, prefix:].reshape(grid_h, grid_w).numpy()

    shown = np.asarray(pil_image.convert("RGB"))
    height, width = shown.shape[:2]
    figure = _new_figure(figsize=(9.0, 4.0))
    original, overlay = figure.subplots(1, 2)
    original.imshow(shown)
    original.set_title("image")
    overlay.imshow(shown)
    heat = overlay.imshow(mask / max(float(mask.max()), 1e-12), cmap="jet", alpha=alpha, extent=(0, width, height, 0),
                          interpolation="bilinear", vmin=0.0, vmax=1.0)
    overlay.set_title(f"[CLS] attention rollout ({head_fusion})")
    for axes in (original, overlay):
        axes.axis("off")
    figure.colorbar(heat, ax=overlay, label="relative attention")
    figure.tight_layout()
    return RolloutPlot(rollout.numpy(), mask, figure, _save(figure, path))


__all__ = [
    "plot_attention",
    "plot_training_curves",
    "plot_vit_attention",
    "attention_rollout",
    "select_attention",
    "token_labels",
    "AttentionPlot",
    "RolloutPlot",
]


# --------------------------------------------------------------------------------------------------------------
# Beam search as a tree: greedy, the beams kept, and the best sequence by exhaustive search
# --------------------------------------------------------------------------------------------------------------
@dataclass
class SearchNode:
    """One expanded token: ``tokens`` is the continuation after the input, this node's token last."""

    tokens: tuple[int, ...]
    text: str
    probability: float  # p(token | input, tokens[:-1])
    sequence_probability: float  # the product of the probabilities along the path
    kept: bool = False  # among the beams kept after its step
    greedy: bool = False  # on the greedy path
    best: bool = False  # on the best sequence found by exhaustive search


@dataclass
class BeamSearchPlot:
    """What ``plot_beam_search`` drew. Sequences are tuples of token ids after the input (the prompt, or the
    decoder's start token); probabilities are products of the model's next-token probabilities."""

    nodes: dict[tuple[int, ...], SearchNode]
    beams: list[list[tuple[int, ...]]]  # the sequences kept after each step, most probable first
    greedy: tuple[int, ...]
    greedy_probability: float
    beam: tuple[int, ...]  # the most probable sequence beam search ends with
    beam_probability: float
    best: tuple[int, ...]  # the most probable sequence of that length (exhaustive search)
    best_probability: float
    expanded_prefixes: int  # how many prefixes the exhaustive search ran the model on
    figure: "Figure" = field(repr=False)
    path: Optional[Path] = None


class NextTokenProbabilities:
    """``p(· | input, prefix)`` for many prefixes of one length at a time, for a seq2seq or a causal LM: the
    encoder reads the text and the decoder ``<start> + prefix``, or the causal LM reads ``text + prefix``."""

    def __init__(self, model, tokenizer, text: str, batch_size: int = 256):
        self.model, self.batch_size = model, batch_size
        device = next(model.parameters()).device
        self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        # A prompt is continued, so no end-of-text token is appended to it (as in pipeline("text-generation")).
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=self.encoder_decoder).to(device)
        if self.encoder_decoder:
            self.source = encoded
            self.start = torch.tensor([[model.config.decoder_start_token_id]], device=device)
        else:
            self.source, self.start = None, encoded["input_ids"]
            if self.start.shape[1] == 0:
                raise ValueError(f"The text {text!r} encodes to no tokens: give a prompt of at least one token.")

    @torch.no_grad()
    def __call__(self, prefixes: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """``[len(prefixes), V]`` float32 probabilities of the next token."""
        rows = []
        for begin in range(0, len(prefixes), self.batch_size):
            part = prefixes[begin:begin + self.batch_size]
            chunk = torch.tensor([list(prefix) for prefix in part], dtype=torch.long, device=self.start.device)
            chunk = chunk.reshape(len(part), len(prefixes[0]))
            inputs = torch.cat([self.start.expand(len(chunk), -1), chunk], dim=1)
            if self.encoder_decoder:
                logits = self.model(input_ids=self.source["input_ids"].expand(len(chunk), -1),
                                    attention_mask=self.source["attention_mask"].expand(len(chunk), -1),
                                    decoder_input_ids=inputs, use_cache=False).logits
            else:
                logits = self.model(input_ids=inputs, use_cache=False).logits
            rows.append(torch.softmax(logits[:, -1].float(), dim=-1).cpu())
        return torch.cat(rows)


def exhaustive_best(
    probabilities: Callable[[Sequence[tuple[int, ...]]], torch.Tensor], length: int, excluded: Sequence[int],
    best: tuple[int, ...], best_probability: float, max_prefixes: int,
) -> tuple[tuple[int, ...], float, int]:
    """The most probable sequence of ``length`` tokens (none of them ``excluded``), by exhaustive search with
    branch and bound: a prefix whose probability is already below a known sequence's cannot lead to a better one
    (every further factor is at most 1), so only the others are expanded. Exact, and as cheap as the model is
    sure. Starts from a known sequence (greedy's or the beams'); returns the best, its probability and the number
    of prefixes the model ran on."""
    frontier: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
    expanded = 0
    for depth in range(length):
        expanded += len(frontier)
        if expanded > max_prefixes:
            raise ValueError(f"The exhaustive search would run the model on more than max_prefixes={max_prefixes} "
                             f"prefixes (the model is unsure over many tokens): lower max_new_tokens, or raise "
                             f"max_prefixes.")
        table = probabilities([prefix for prefix, _ in frontier])
        table[:, list(excluded)] = 0.0
        scores = table.double() * torch.tensor([p for _, p in frontier], dtype=torch.float64)[:, None]
        if depth == length - 1:
            flat = int(scores.argmax())
            row, token = divmod(flat, scores.shape[1])
            if float(scores[row, token]) > best_probability:
                best, best_probability = (*frontier[row][0], token), float(scores[row, token])
            break
        rows, tokens = torch.nonzero(scores > best_probability, as_tuple=True)
        frontier = [((*frontier[r][0], t), float(scores[r, t])) for r, t in zip(rows.tolist(), tokens.tolist())]
        if not frontier:
            break
    return best, best_probability, expanded


@torch.no_grad()
def plot_beam_search(
    model,
    tokenizer,
    text: str,
    num_beams: int = 2,
    max_new_tokens: int = 3,
    top_k: int = 3,
    path: Union[str, Path, None] = None,
    max_prefixes: int = 20_000,
) -> BeamSearchPlot:
    """The search tree of beam search on one input, to see why beams find sequences that greedy misses.

    From the input (the source sentence of a seq2seq model, the prompt of a causal LM), every beam kept at a step
    is expanded into its ``top_k`` most probable next tokens (at least ``num_beams``), each drawn with its
    probability; the ``num_beams`` most probable sequences over all expansions are kept (bold), as beam search
    keeps them (products of probabilities, no length penalty). The greedy path (blue) and the most probable
    sequence of ``max_new_tokens`` tokens found by exhaustive search (green, ``exhaustive_best``) are drawn over
    it, with their probabilities in the title: the notes' "the dog has 0.36 beats greedy's the nice woman 0.20".

    Sequences are of exactly ``max_new_tokens`` tokens: the end-of-sequence and pad tokens are not expanded.
    Saved as PNG when ``path`` is given.
    """
    if num_beams < 1 or max_new_tokens < 1 or top_k < 1:
        raise ValueError(f"num_beams={num_beams}, max_new_tokens={max_new_tokens} and top_k={top_k} must be at least 1.")
    was_training = model.training
    model.eval()
    try:
        probabilities = NextTokenProbabilities(model, tokenizer, text)
        excluded = sorted({i for i in (model.config.eos_token_id, model.config.pad_token_id) if isinstance(i, int)})
        nodes: dict[tuple[int, ...], SearchNode] = {}

        def add(prefix: tuple[int, ...], prefix_probability: float, row: torch.Tensor, tokens: Sequence[int]):
            for token in tokens:
                sequence = (*prefix, int(token))
                if sequence not in nodes:
                    probability = float(row[token])
                    nodes[sequence] = SearchNode(sequence, token_labels(tokenizer, [token])[0], probability,
                                                 prefix_probability * probability)

        def top(row: torch.Tensor, k: int) -> list[int]:
            row = row.clone()
            row[excluded] = -1.0
            return row.topk(min(k, row.numel() - len(excluded))).indices.tolist()

        # Beam search, recording each expansion.
        beams: list[list[tuple[int, ...]]] = []
        kept: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
        for _ in range(max_new_tokens):
            table = probabilities([prefix for prefix, _ in kept])
            candidates = []
            for (prefix, probability), row in zip(kept, table):
                children = top(row, max(top_k, num_beams))
                add(prefix, probability, row, children)
                candidates += [nodes[(*prefix, token)] for token in children[:num_beams]]
            candidates.sort(key=lambda node: -node.sequence_probability)
            kept = [(node.tokens, node.sequence_probability) for node in candidates[:num_beams]]
            for sequence, _ in kept:
                nodes[sequence].kept = True
            beams.append([sequence for sequence, _ in kept])
        beam, beam_probability = kept[0]

        # Greedy: the most probable token at each step.
        greedy: tuple[int, ...] = ()
        for _ in range(max_new_tokens):
            row = probabilities([greedy])[0]
            add(greedy, nodes[greedy].sequence_probability if greedy else 1.0, row, top(row, 1))
            greedy = (*greedy, top(row, 1)[0])
            nodes[greedy].greedy = True
        greedy_probability = nodes[greedy].sequence_probability

        start, start_probability = max(((beam, beam_probability), (greedy, greedy_probability)), key=lambda x: x[1])
        best, best_probability, expanded = exhaustive_best(
            probabilities, max_new_tokens, excluded, start, start_probability, max_prefixes
        )
        for depth in range(1, max_new_tokens + 1):
            prefix = best[:depth - 1]
            if best[:depth] not in nodes:
                row = probabilities([prefix])[0]
                add(prefix, nodes[prefix].sequence_probability if prefix else 1.0, row, [best[depth - 1]])
            nodes[best[:depth]].best = True
    finally:
        model.train(was_training)
    figure = _search_tree_figure(nodes, text, tokenizer, greedy, greedy_probability, beam, beam_probability, best,
                                 best_probability, num_beams)
    return BeamSearchPlot(nodes, beams, greedy, greedy_probability, beam, beam_probability, best, best_probability,
                          expanded, figure, _save(figure, path))


def _search_tree_figure(nodes, text, tokenizer, greedy, greedy_probability, beam, beam_probability, best,
                        best_probability, num_beams) -> "Figure":
    """The tree, depth left to right, siblings ordered by probability; each node ``token`` and its probability."""
    children: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for sequence in nodes:
        children.setdefault(sequence[:-1], []).append(sequence)
    rows: dict[tuple[int, ...], float] = {}

    def place(prefix: tuple[int, ...]) -> float:  # leaves one row each, a parent at the middle of its children
        below = sorted(children.get(prefix, []), key=lambda s: -nodes[s].probability)
        if not below:
            rows[prefix] = float(len([s for s in rows if s not in children]))
            return rows[prefix]
        rows[prefix] = float(np.mean([place(child) for child in below]))
        return rows[prefix]

    place(())
    depth = max(len(sequence) for sequence in nodes)
    leaves = sum(1 for sequence in nodes if sequence not in children)
    figure = _new_figure(figsize=(2.6 * (depth + 1) + 1.0, max(3.0, 0.45 * leaves + 1.8)))
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.text(0, rows[()], text if len(text) < 40 else text[:37] + "...", ha="right", va="center", fontsize=9,
              bbox=dict(boxstyle="round", facecolor="whitesmoke", edgecolor="gray"))
    for sequence, node in nodes.items():
        parent = sequence[:-1]
        on = [(node.best, "tab:green", 5.0), (node.greedy, "tab:blue", 2.5)]
        for flag, color, width in on:
            if flag:
                axes.plot([len(parent), len(sequence)], [rows[parent], rows[sequence]], color=color, lw=width,
                          alpha=0.6, zorder=1)
        axes.plot([len(parent), len(sequence)], [rows[parent], rows[sequence]], color="gray", lw=0.8, zorder=0)
        axes.text(len(sequence), rows[sequence], f"{node.text}  {node.probability:.2f}", ha="left", va="center",
                  fontsize=9, fontweight="bold" if node.kept else "normal",
                  bbox=dict(boxstyle="round", facecolor="moccasin" if node.kept else "white",
                            edgecolor="darkorange" if node.kept else "lightgray"))
    decode = lambda sequence: " ".join(nodes[sequence[:i + 1]].text for i in range(len(sequence)))  # noqa: E731
    axes.set_title(f"greedy: {decode(greedy)!r} {greedy_probability:.3g}   beam search ({num_beams} beams, kept in "
                   f"orange): {decode(beam)!r} {beam_probability:.3g}\nexhaustive best: {decode(best)!r} "
                   f"{best_probability:.3g}   (blue: greedy path, green: exhaustive best)", fontsize=9)
    axes.set_xlim(-1.2, depth + 1.0)
    axes.set_ylim(max(rows.values()) + 0.8, -0.8)
    figure.tight_layout()
    return figure
