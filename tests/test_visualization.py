"""Attention plots: the PNGs are written, and what they plot is right (probabilities, token labels, zero weight on
padding); attention rollout is checked against its definition."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import scratchformers as sf
from scratchformers.visualization import attention_rollout
from translation_fixtures import SOURCES, make_translation_model


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return make_translation_model()


def tick_labels(result, axis: str) -> list[str]:
    axes = result.figure.axes[0]
    ticks = axes.get_xticklabels() if axis == "x" else axes.get_yticklabels()
    return [tick.get_text() for tick in ticks]


def assert_png(path, result):
    assert path.is_file() and result.path == path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_cross_attention_of_generated_target(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    result = sf.plot_attention(model, tokenizer, SOURCES[0], path=tmp_path / "cross.png", max_new_tokens=6)
    assert_png(tmp_path / "cross.png", result)

    source_ids = tokenizer(SOURCES[0])["input_ids"]
    generated = model.generate(**tokenizer(SOURCES[0], return_tensors="pt"), max_new_tokens=6)[0, 1:].tolist()
    assert result.col_labels == [tokenizer.decode([i]).strip() for i in source_ids]
    assert result.col_labels[:2] == ["the", "red"] and result.col_labels[-1] == "</s>"
    assert result.row_labels == sf.visualization.token_labels(tokenizer, generated)
    assert result.weights.shape == (len(generated), len(source_ids))
    assert (result.weights >= 0).all()
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0, atol=1e-5)
    # The plotted weights are the model's own last-layer cross-attention, averaged over the heads, with the decoder
    # reading <start> and the generated tokens but the last.
    with torch.no_grad():
        decoder_input_ids = torch.tensor([[model.config.decoder_start_token_id, *generated[:-1]]])
        cross = model(input_ids=torch.tensor([source_ids]), decoder_input_ids=decoder_input_ids,
                      output_attentions=True).cross_attentions
    np.testing.assert_allclose(result.weights, cross[-1][0].mean(0).numpy(), atol=1e-6)
    # The figure shows these tokens on its axes.
    assert tick_labels(result, "x") == result.col_labels
    assert tick_labels(result, "y") == result.row_labels


def test_forced_target_and_padding_gets_zero_weight(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    result = sf.plot_attention(model, tokenizer, SOURCES[0], target="the big dog ran", pad_to=12,
                               path=tmp_path / "padded.png", layer=0, head=2)
    assert_png(tmp_path / "padded.png", result)
    real = len(tokenizer(SOURCES[0])["input_ids"])
    assert result.col_labels[real:] == ["<pad>"] * (12 - real)
    assert result.row_labels[:3] == ["the", "big", "dog"] and result.row_labels[-1] == "</s>"
    assert result.weights.shape == (len(tokenizer(text_target="the big dog ran")["input_ids"]), 12)
    assert (result.weights[:, real:] == 0).all()
    np.testing.assert_allclose(result.weights[:, :real].sum(axis=1), 1.0, atol=1e-5)
    assert "layer 0, head 2" in result.figure.axes[0].get_title()
    # The padded source's first layer, third head: its real tokens get what the unpadded source gets
    target = tokenizer(text_target="the big dog ran")["input_ids"]
    with torch.no_grad():
        cross = model(input_ids=torch.tensor([tokenizer(SOURCES[0])["input_ids"]]),
                      decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id, *target[:-1]]]),
                      output_attentions=True).cross_attentions
    np.testing.assert_allclose(result.weights[:, :real], cross[0][0, 2].numpy(), atol=1e-6)


def test_encoder_self_attention(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    result = sf.plot_attention(model, tokenizer, SOURCES[1], kind="encoder", pad_to=10, path=tmp_path / "enc.png")
    assert_png(tmp_path / "enc.png", result)
    real = len(tokenizer(SOURCES[1])["input_ids"])
    assert result.weights.shape == (10, 10) and result.row_labels == result.col_labels
    assert (result.weights[:, real:] == 0).all()
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0, atol=1e-5)
    assert tick_labels(result, "y") == result.col_labels


def test_mean_of_heads_is_the_default(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    target = "le chien"
    mean = sf.plot_attention(model, tokenizer, SOURCES[2], target=target).weights
    heads = [sf.plot_attention(model, tokenizer, SOURCES[2], target=target, head=h).weights for h in range(4)]
    np.testing.assert_allclose(mean, np.mean(heads, axis=0), atol=1e-6)
    assert not np.allclose(heads[0], heads[1])


def test_sdpa_model_gives_the_eager_weights(tmp_path):
    """Loaded with sdpa (which computes no weights), our attention switches to eager code when asked for them."""
    model, tokenizer = make_translation_model()
    model.save_pretrained(tmp_path)
    sdpa = sf.ScratchTransformerForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="sdpa")
    eager = sf.ScratchTransformerForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    assert sdpa.config._attn_implementation == "sdpa"
    for kind in ("cross", "encoder"):
        a = sf.plot_attention(sdpa, tokenizer, SOURCES[0], target="le chat", kind=kind, pad_to=8).weights
        b = sf.plot_attention(eager, tokenizer, SOURCES[0], target="le chat", kind=kind, pad_to=8).weights
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert sdpa.config._attn_implementation == "sdpa" and not sdpa.training


def test_training_mode_is_restored(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.train()
    try:
        sf.plot_attention(model, tokenizer, SOURCES[0], target="le chat")
        assert model.training
    finally:
        model.eval()


BAD_ARGUMENTS = {  # name -> (plot_attention arguments, exact error message)
    "layer_past_the_last": (dict(target="x", layer=5), r"layer=5 is out of range: the model has 2 layers\."),
    "layer_before_the_first": (dict(target="x", layer=-3), r"layer=-3 is out of range: the model has 2 layers\."),
    "head_past_the_last": (dict(target="x", head=4), r"head=4 is out of range: the layer has 4 heads\."),
    "unknown_kind": (dict(kind="decoder"), r"kind='decoder' is not supported; allowed values: 'cross', 'encoder'\."),
}


@pytest.mark.parametrize("arguments, message", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS)
def test_bad_arguments_are_named(model_and_tokenizer, arguments, message):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match=f"^{message}$"):
        sf.plot_attention(model, tokenizer, SOURCES[0], **arguments)


def test_missing_matplotlib_names_the_install_command(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        sf.plot_attention(model, tokenizer, SOURCES[0], target="x")


# ----------------------------------------------------------------------------------------------------------------
# Attention rollout (Abnar & Zuidema, 2020)
# ----------------------------------------------------------------------------------------------------------------
def random_attention(layers: int, batch: int = 2, heads: int = 3, tokens: int = 5) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.softmax(torch.randn(batch, heads, tokens, tokens, generator=generator), -1) for _ in range(layers)]


def test_rollout_matches_its_definition():
    attentions = random_attention(3)
    expected = []
    for b in range(2):
        rollout = np.eye(5)
        for weights in attentions:
            a = 0.5 * weights[b].mean(0).numpy() + 0.5 * np.eye(5)
            rollout = (a / a.sum(-1, keepdims=True)) @ rollout
        expected.append(rollout)
    result = attention_rollout(attentions)
    np.testing.assert_allclose(result.numpy(), np.stack(expected), atol=1e-6)
    np.testing.assert_allclose(result.sum(-1).numpy(), 1.0, atol=1e-6)


def test_rollout_special_cases():
    identity = [torch.eye(4).expand(1, 2, 4, 4)] * 3
    np.testing.assert_allclose(attention_rollout(identity)[0].numpy(), np.eye(4), atol=1e-7)
    uniform = [torch.full((1, 2, 4, 4), 0.25)] * 3
    np.testing.assert_allclose(attention_rollout(uniform, add_residual=False)[0].numpy(), 0.25, atol=1e-7)
    maxed = attention_rollout(random_attention(2), head_fusion="max")
    np.testing.assert_allclose(maxed.sum(-1).numpy(), 1.0, atol=1e-6)
    with pytest.raises(RuntimeError, match="eager"):
        attention_rollout([None, None])


def test_plot_vit_attention(tmp_path):
    config = sf.ScratchViTConfig(image_size=32, patch_size=8, d_model=32, num_layers=2, num_heads=4, ffn_dim=64,
                                 num_labels=3)
    torch.manual_seed(0)
    model = sf.ScratchViTForImageClassification(config).eval()
    processor = sf.make_image_processor(config)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8))
    result = sf.plot_vit_attention(model, processor, image, path=tmp_path / "rollout.png")
    assert_png(tmp_path / "rollout.png", result)

    tokens = 1 + (32 // 8) ** 2
    assert result.rollout.shape == (tokens, tokens) and result.mask.shape == (4, 4)
    np.testing.assert_allclose(result.rollout.sum(-1), 1.0, atol=1e-5)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        attentions = model(pixel_values=pixel_values, output_attentions=True).attentions
    expected = attention_rollout(attentions)[0, 0, 1:].reshape(4, 4).numpy()
    np.testing.assert_allclose(result.mask, expected, atol=1e-6)
    # The overlay is drawn on the original image, not on the resized model input.
    assert result.figure.axes[1].get_images()[0].get_array().shape[:2] == (40, 52)


def test_training_curves_plot_the_logged_losses_and_the_metric(tmp_path):
    from scratchformers.visualization import plot_training_curves

    history = [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}, {"step": 20, "eval_loss": 2.5, "eval_bleu": 1.5},
               {"step": 30, "loss": 1.5}, {"step": 40, "eval_loss": 2.0, "eval_bleu": 4.0},
               {"step": 40, "train_runtime": 9.0, "train_loss": 2.1}, {"step": 40, "eval_loss": 2.5, "eval_bleu": 1.5}]
    figure = plot_training_curves(history, "bleu", tmp_path / "curves.png")
    loss_axis, metric_axis = figure.axes
    lines = {line.get_label(): line.get_xydata().tolist() for line in loss_axis.get_lines()}
    assert lines == {"training loss": [[10, 3.0], [20, 2.0], [30, 1.5]], "evaluation loss": [[20, 2.5], [40, 2.0]]}
    assert metric_axis.get_lines()[0].get_xydata().tolist() == [[20, 1.5], [40, 4.0]]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert len(plot_training_curves(history[:1]).axes) == 1  # no evaluation yet: the loss panel alone


# --------------------------------------------------------------------------------------------------------------
# Beam search as a tree
# --------------------------------------------------------------------------------------------------------------
def the_notes_example(prefixes):
    """The notes' tree after "The" (tokens 1 dog, 2 nice, 3 car, 4 has, 5 woman, 6 house, 7 guy, 8 runs, 9 is;
    0 is the end token): greedy's "nice woman" 0.5 x 0.4 = 0.20 loses to "dog has" 0.4 x 0.9 = 0.36."""
    table = {(): {1: 0.4, 2: 0.5, 3: 0.1}, (1,): {4: 0.9, 8: 0.05, 9: 0.05}, (2,): {5: 0.4, 6: 0.3, 7: 0.3},
             (3,): {8: 0.5, 9: 0.5}}
    rows = torch.zeros(len(prefixes), 10)
    for i, prefix in enumerate(prefixes):
        for token, probability in table.get(prefix, {0: 1.0}).items():
            rows[i, token] = probability
    return rows


def test_exhaustive_best_finds_the_notes_036_over_greedys_020():
    from scratchformers.visualization import exhaustive_best

    best, probability, expanded = exhaustive_best(the_notes_example, 2, [0], (2, 5), 0.2, max_prefixes=100)
    assert best == (1, 4) and probability == pytest.approx(0.36)
    assert expanded == 1 + 2  # "car" (0.1 < 0.2) is never expanded
    with pytest.raises(ValueError, match="more than max_prefixes=2 prefixes"):
        exhaustive_best(the_notes_example, 2, [0], (2, 5), 0.2, max_prefixes=2)


def sequence_probabilities(model, input_ids, length: int, excluded: list[int]) -> dict[tuple, float]:
    """Independent oracle: the probability of every sequence of ``length`` tokens (not ``excluded``), enumerated;
    after the source (seq2seq: the decoder reads ``<start> + sequence``) or the prompt (causal LM)."""
    sequences = {(): 1.0}
    for _ in range(length):
        prefixes = list(sequences)
        with torch.no_grad():
            if model.config.is_encoder_decoder:
                decoder = torch.tensor([[model.config.decoder_start_token_id, *prefix] for prefix in prefixes])
                logits = model(input_ids=input_ids.expand(len(prefixes), -1), decoder_input_ids=decoder).logits
            else:
                logits = model(input_ids=torch.tensor([[*input_ids[0].tolist(), *p] for p in prefixes])).logits
            logits = logits[:, -1]
        probabilities = torch.softmax(logits, -1).double()
        sequences = {(*prefix, token): sequences[prefix] * float(probabilities[i, token])
                     for i, prefix in enumerate(prefixes) for token in range(logits.shape[-1]) if token not in excluded}
    return sequences


@pytest.mark.parametrize("source", SOURCES)
def test_beam_search_tree_agrees_with_generate_and_with_enumerating_every_sequence(model_and_tokenizer, source):
    model, tokenizer = model_and_tokenizer
    excluded = [model.config.eos_token_id, model.config.pad_token_id]
    result = sf.plot_beam_search(model, tokenizer, source, num_beams=2, max_new_tokens=2)
    input_ids = tokenizer(source, return_tensors="pt")["input_ids"]
    every = sequence_probabilities(model, input_ids, 2, excluded)
    best = max(every, key=every.get)
    assert result.best == best and result.best_probability == pytest.approx(every[best], rel=1e-5)
    for sequence, node in result.nodes.items():  # each leaf: the product of the probabilities along its path
        if len(sequence) == 2:
            assert node.sequence_probability == pytest.approx(every[sequence], rel=1e-5)
    for depth, kept in enumerate(result.beams, 1):  # the beams: the two most probable of their expansions
        assert [result.nodes[s].kept for s in kept] == [True, True] and len(kept[0]) == depth
    generated = model.generate(input_ids, max_new_tokens=2, num_beams=2, length_penalty=0.0, suppress_tokens=excluded,
                               early_stopping=True)
    greedy = model.generate(input_ids, max_new_tokens=2, num_beams=1, do_sample=False, suppress_tokens=excluded)
    assert result.beam == tuple(generated[0, 1:].tolist()) and result.greedy == tuple(greedy[0, 1:].tolist())
    assert result.greedy_probability == pytest.approx(every[result.greedy], rel=1e-5)
    assert result.beam_probability == pytest.approx(every[result.beam], rel=1e-5)


def test_beam_search_tree_shows_beams_beating_greedy(model_and_tokenizer, tmp_path):
    """Three tokens: the greedy path is not the best; beam search (2 beams) finds the exhaustive search's best."""
    model, tokenizer = model_and_tokenizer
    result = sf.plot_beam_search(model, tokenizer, SOURCES[2], path=tmp_path / "beams.png")
    assert_png(tmp_path / "beams.png", result)
    assert result.greedy_probability < result.beam_probability == pytest.approx(result.best_probability, rel=1e-6)
    assert result.greedy != result.best and result.beam == result.best
    # Each node's probability is the model's next-token probability after its prefix (teacher forcing).
    input_ids = tokenizer(SOURCES[2], return_tensors="pt")["input_ids"]
    for sequence in (result.greedy, result.best):
        decoder = torch.tensor([[model.config.decoder_start_token_id, *sequence[:-1]]])
        with torch.no_grad():
            probabilities = torch.softmax(model(input_ids=input_ids, decoder_input_ids=decoder).logits[0], -1)
        steps = [float(probabilities[i, token]) for i, token in enumerate(sequence)]
        for depth in range(1, 4):
            assert result.nodes[sequence[:depth]].probability == pytest.approx(steps[depth - 1], rel=1e-5)
        assert result.nodes[sequence].sequence_probability == pytest.approx(float(np.prod(steps)), rel=1e-5)
        assert result.nodes[sequence].greedy == (sequence == result.greedy) and result.nodes[sequence].best == (
            sequence == result.best)
    # Every kept beam was expanded into top_k = 3 children; the figure labels each node with its probability.
    for kept in result.beams[:-1]:
        for sequence in kept:
            assert sum(1 for s in result.nodes if s[:-1] == sequence and len(s) == len(sequence) + 1) >= 3
    texts = {text.get_text() for text in result.figure.axes[0].texts}
    assert all(f"{node.text}  {node.probability:.2f}" in texts for node in result.nodes.values())
    assert f"{result.greedy_probability:.3g}" in result.figure.axes[0].get_title()


def test_beam_search_tree_bad_arguments_are_named(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="num_beams=0, max_new_tokens=3 and top_k=3 must be at least 1"):
        sf.plot_beam_search(model, tokenizer, SOURCES[0], num_beams=0)
    with pytest.raises(ValueError, match="max_prefixes=5"):
        sf.plot_beam_search(model, tokenizer, SOURCES[0], max_prefixes=5)


def tiny_causal_lm(tokenizer) -> "sf.ScratchTransformerForCausalLM":
    from scratchformers.configuration_causal_lm import ScratchTransformerLMConfig
    from scratchformers.modeling_causal_lm import ScratchTransformerForCausalLM

    torch.manual_seed(0)
    config = ScratchTransformerLMConfig(
        vocab_size=len(tokenizer), d_model=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
        max_position_embeddings=32, dropout=0.0, attention_dropout=0.0, init_std=0.2,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return ScratchTransformerForCausalLM(config).eval()


@pytest.mark.parametrize("prompt", SOURCES[:2])
def test_beam_search_tree_of_a_causal_lm_agrees_with_generate_and_every_sequence(model_and_tokenizer, prompt, tmp_path):
    _, tokenizer = model_and_tokenizer
    model = tiny_causal_lm(tokenizer)
    excluded = [model.config.eos_token_id, model.config.pad_token_id]
    result = sf.plot_beam_search(model, tokenizer, prompt, num_beams=2, max_new_tokens=2, path=tmp_path / "lm.png")
    assert_png(tmp_path / "lm.png", result)
    input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]  # no </s> after a prompt
    every = sequence_probabilities(model, input_ids, 2, excluded)
    best = max(every, key=every.get)
    assert result.best == best and result.best_probability == pytest.approx(every[best], rel=1e-5)
    prompt_length = input_ids.shape[1]
    generated = model.generate(input_ids, max_new_tokens=2, num_beams=2, length_penalty=0.0, suppress_tokens=excluded,
                               early_stopping=True)
    greedy = model.generate(input_ids, max_new_tokens=2, num_beams=1, do_sample=False, suppress_tokens=excluded)
    assert result.beam == tuple(generated[0, prompt_length:].tolist())
    assert result.greedy == tuple(greedy[0, prompt_length:].tolist())
    assert result.beam_probability == pytest.approx(every[result.beam], rel=1e-5)
