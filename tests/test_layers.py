"""The notes' building blocks against independent, loop-based references."""

import math

import pytest
import torch

from scratchformers.layers import (
    AddNorm,
    build_attention_mask,
    cross_entropy,
    make_norm,
    masked_softmax,
    resolve_attention_function,
    sinusoidal_table,
)

from conftest import tiny_transformer_config


def test_padding_mask_gives_zero_weight_to_padding():
    scores = torch.randn(2, 1, 3, 4)
    mask = build_attention_mask(torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), 3, 4, causal=False)
    weights = masked_softmax(scores, mask)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 1, 3))
    assert torch.all(weights[1, :, :, 2:] == 0)
    # The unmasked keys keep softmax over themselves only (the notes' masked softmax with valid lengths).
    assert torch.allclose(weights[1, 0, 0, :2], torch.softmax(scores[1, 0, 0, :2], -1), atol=1e-6)


def test_causal_mask_lets_position_i_see_only_keys_up_to_i():
    mask = build_attention_mask(None, 4, 4, causal=True)
    assert torch.equal(mask[0, 0], torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    # With 3 cached tokens, the 2 new queries sit at positions 3 and 4.
    cached = build_attention_mask(None, 2, 5, causal=True, past_length=3)
    assert torch.equal(cached[0, 0], torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))


def test_no_mask_when_nothing_is_masked():
    assert build_attention_mask(torch.ones(2, 5, dtype=torch.long), 5, 5, causal=False) is None
    assert build_attention_mask(None, 1, 5, causal=True) is None


def test_mask_shape_errors_are_clear():
    with pytest.raises(ValueError, match="attention_mask covers 3 positions"):
        build_attention_mask(torch.ones(1, 3), 4, 4, causal=False)


def test_a_padding_mask_row_of_zeros_is_refused():
    """A row with no key leaves softmax undefined; eager and sdpa would give it different outputs."""
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="attention_mask row 1 masks every source token.*at least one token"):
        build_attention_mask(mask, 3, 3, causal=False)
    # Causal (decoder) masks are left alone: a left-padded row's leading pad queries see no key, and nobody reads them.
    assert build_attention_mask(torch.tensor([[0, 1, 1]]), 3, 3, causal=True) is not None


def test_make_norm_refuses_an_unknown_norm_type():
    """Not a silent RMSNorm: a config edited after construction would save a model that does not load back."""
    assert isinstance(make_norm("rmsnorm", 4, 1e-5), torch.nn.RMSNorm)
    allowed = "allowed values: 'layernorm', 'rmsnorm'"
    with pytest.raises(ValueError, match=f"norm_type='batchnorm' is not supported; {allowed}"):
        make_norm("batchnorm", 4, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_masked_softmax_is_finite_in_fp16_and_bf16(dtype):
    scores = torch.randn(1, 1, 2, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    scores[0, 0, 1, 1] = torch.finfo(dtype).max  # a masked key with the largest score the dtype holds: still 0
    mask = torch.tensor([True, False, True])[None, None, None]
    weights = masked_softmax(scores, mask)
    assert torch.isfinite(weights).all() and torch.all(weights[..., 1] == 0)
    # The kept keys get softmax over themselves, computed in float32 and rounded once to the scores' dtype.
    assert weights.dtype == dtype
    expected = torch.softmax(scores[..., [0, 2]].float(), -1).to(dtype)
    assert torch.equal(weights[..., [0, 2]], expected)


def test_sinusoidal_table_matches_the_formula():
    table = sinusoidal_table(10, 8)
    for pos in range(10):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert math.isclose(table[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)


def test_additive_attention_matches_a_loop_reference():
    torch.manual_seed(0)

    class Module(torch.nn.Module):
        training = False

    module = Module()
    module.additive_v = torch.randn(2, 3)
    q, k, v = torch.randn(1, 2, 4, 3), torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3)
    mask = torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool)[None, None, None]
    out, weights = resolve_attention_function("eager", "additive")(module, q, k, v, mask, scaling=1.0)
    for h in range(2):
        for i in range(4):
            scores = torch.stack([module.additive_v[h] @ torch.tanh(q[0, h, i] + k[0, h, j]) for j in range(3)])
            expected = torch.softmax(scores, -1)
            assert torch.allclose(weights[0, h, i, :3], expected, atol=1e-6)
            assert torch.allclose(out[0, i, h], expected @ v[0, h, :3], atol=1e-6)


def test_additive_scoring_refuses_sdpa():
    with pytest.raises(ValueError, match="additive.*attn_implementation='eager'"):
        resolve_attention_function("sdpa", "additive")


def test_add_norm_post_and_pre_placement():
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    seen = []

    def sublayer(h):
        seen.append(h)
        return y

    post = AddNorm(8, "layernorm", "post", 0.0, 1e-5).eval()
    assert torch.allclose(post(x, sublayer), torch.nn.functional.layer_norm(x + y, (8,)), atol=1e-6)
    assert torch.equal(seen.pop(), x)  # post-norm: the sublayer reads the residual stream itself
    pre = AddNorm(8, "rmsnorm", "pre", 0.0, 1e-5).eval()
    assert torch.allclose(pre(x, sublayer), x + y)
    rms = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(seen.pop(), rms, atol=1e-6)  # pre-norm: it reads the normalised stream


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_and_its_gradient_equal_torchs(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 3:] = -100
    ours = cross_entropy(logits, labels, label_smoothing=smoothing)
    (ours_grad,) = torch.autograd.grad(3.0 * ours, logits)
    theirs = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), label_smoothing=smoothing)
    (theirs_grad,) = torch.autograd.grad(3.0 * theirs, logits)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_grad, theirs_grad)
    assert torch.all(ours_grad[0, 3:] == 0)  # ignored positions get no gradient
    assert torch.isnan(cross_entropy(logits, torch.full((2, 5), -100)))  # nothing to average, like torch




# --------------------------------------------------------------------------------------------------------------
# Later papers' variants: rotary positions, gated FFN, qk-norm, grouped-query attention
# --------------------------------------------------------------------------------------------------------------
def test_rotary_turns_each_feature_pair_by_position_times_its_frequency():
    """Against the complex-number form of RoFormer: feature pair (i, i + D/2) as z = x_i + j·x_{i+D/2}, times
    e^{j·m·θ_i} at position m; the score then depends only on the distance between the positions."""
    from scratchformers.layers import RotaryPositionalEncoding, apply_rotary

    dim, positions = 8, torch.arange(5)
    x = torch.randn(1, 2, 5, dim, generator=torch.Generator().manual_seed(0))
    rotated = apply_rotary(x, *RotaryPositionalEncoding(dim)(positions))
    theta = 10000.0 ** (-torch.arange(0, dim, 2).double() / dim)
    z = torch.complex(x[..., : dim // 2].double(), x[..., dim // 2:].double())
    expected = z * torch.polar(torch.ones(5, dim // 2, dtype=torch.float64), positions[:, None].double() * theta)
    torch.testing.assert_close(rotated.double(), torch.cat([expected.real, expected.imag], -1), atol=1e-5, rtol=0)
    q, k = torch.randn(2, dim, generator=torch.Generator().manual_seed(1)).unbind(0)

    def score(m, n):
        cos, sin = RotaryPositionalEncoding(dim)(torch.tensor([m, n]))
        rq, rk = apply_rotary(torch.stack([q, k])[None, None], cos, sin)[0, 0]
        return float(rq @ rk)

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-4) and score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


@pytest.mark.parametrize("activation, gate", [("swiglu", torch.nn.functional.silu), ("geglu", torch.nn.functional.gelu)])
def test_gated_feed_forward_is_fc2_of_the_gated_product(activation, gate):
    from scratchformers.layers import GatedFeedForward, make_feed_forward

    ffn = make_feed_forward(6, 10, activation)
    assert isinstance(ffn, GatedFeedForward) and ffn.fc1.out_features == 20
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    w_gate, w_value = ffn.fc1.weight[:10], ffn.fc1.weight[10:]
    b_gate, b_value = ffn.fc1.bias[:10], ffn.fc1.bias[10:]
    expected = ffn.fc2(gate(x @ w_gate.T + b_gate) * (x @ w_value.T + b_value))
    torch.testing.assert_close(ffn(x), expected)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_grouped_query_attention_equals_attention_with_repeated_key_value_heads(attn_implementation):
    """num_key_value_heads=2 of 4 heads: the same as 4 heads whose key/value projections repeat each group's rows."""
    from scratchformers.layers import MultiHeadAttention

    config = tiny_transformer_config()
    config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    grouped = MultiHeadAttention(config, 32, 4, num_key_value_heads=2).eval()
    full = MultiHeadAttention(config, 32, 4).eval()
    with torch.no_grad():
        for name in ("q_proj", "out_proj"):
            getattr(full, name).load_state_dict(getattr(grouped, name).state_dict())
        for name in ("k_proj", "v_proj"):  # head g of 2 serves query heads 2g, 2g+1
            source = getattr(grouped, name)
            getattr(full, name).weight.copy_(source.weight.view(2, 1, 8, 32).expand(2, 2, 8, 32).reshape(32, 32))
            getattr(full, name).bias.copy_(source.bias.view(2, 1, 8).expand(2, 2, 8).reshape(32))
    assert grouped.k_proj.out_features == 16
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    mask = build_attention_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]), 5, 5, causal=False)
    torch.testing.assert_close(grouped(x, attention_mask=mask)[0], full(x, attention_mask=mask)[0])


def test_qk_norm_normalises_each_heads_queries_and_keys_before_scoring():
    from scratchformers.layers import MultiHeadAttention

    config = tiny_transformer_config(norm_type="rmsnorm")
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    attention = MultiHeadAttention(config, 32, 4, qk_norm=True).eval()
    x = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1))
    _, weights = attention(x, output_attentions=True)

    def rms(t):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + config.layer_norm_eps)

    q = rms(attention.q_proj(x).view(1, 5, 4, 8).transpose(1, 2))
    k = rms(attention.k_proj(x).view(1, 5, 4, 8).transpose(1, 2))
    torch.testing.assert_close(weights, torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1))
