import numpy as np
import pytest
import torch

from ternary_hf.ternarize import dequantize, fake_ternarize, scale_shape, ternarize


def _groups(w, granularity, group_size):
    """Reference grouping written with explicit Python loops: list of (row, column-slice) per scale."""
    out_features, in_features = w.shape
    if granularity == "per_tensor":
        return [[(r, slice(0, in_features)) for r in range(out_features)]]
    if granularity == "per_channel":
        return [[(r, slice(0, in_features))] for r in range(out_features)]
    return [[(r, slice(g * group_size, (g + 1) * group_size))]
            for r in range(out_features) for g in range(in_features // group_size)]


def _reference(w, rule, granularity, group_size):
    w = w.double().numpy()
    codes = np.zeros_like(w)
    scales = []
    for group in _groups(torch.from_numpy(w), granularity, group_size):
        vals = np.concatenate([w[r, sl] for r, sl in group])
        mean_abs = np.abs(vals).mean()
        if rule == "twn":
            delta = 0.7 * mean_abs
            kept = np.abs(vals) > delta
            scale = np.abs(vals)[kept].mean()
            for r, sl in group:
                codes[r, sl] = np.sign(w[r, sl]) * (np.abs(w[r, sl]) > delta)
        else:
            scale = mean_abs if rule == "absmean" else 2 * mean_abs
            for r, sl in group:
                codes[r, sl] = np.clip(np.round(w[r, sl] / scale), -1, 1)
        scales.append(scale)
    return codes, np.array(scales)


@pytest.mark.parametrize("rule", ["twn", "absmean", "paper"])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
def test_rules_match_their_formulas(rule, granularity):
    torch.manual_seed(1)
    w = torch.randn(6, 16) * torch.linspace(0.1, 2.0, 16)
    codes, scale = ternarize(w, rule, granularity, group_size=8)
    ref_codes, ref_scales = _reference(w, rule, granularity, 8)
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) <= {-1, 0, 1}
    assert scale.shape == scale_shape(6, 16, granularity, 8)
    np.testing.assert_array_equal(codes.numpy(), ref_codes)
    np.testing.assert_allclose(scale.reshape(-1).numpy(), ref_scales, rtol=1e-5)


def test_paper_rule_zeroes_weights_below_mean_abs():
    w = torch.tensor([[0.1, -0.2, 0.9, -1.0]])  # mean|W| = 0.55, scale = 1.1
    codes, scale = ternarize(w, "paper", "per_tensor")
    assert codes.tolist() == [[0, 0, 1, -1]]
    assert scale.item() == pytest.approx(1.1)


def test_dequantize_broadcasts_group_scales():
    codes = torch.tensor([[1, -1, 0, 1]], dtype=torch.int8)
    scale = torch.tensor([[2.0, 3.0]])
    assert dequantize(codes, scale, "per_group").tolist() == [[2.0, -2.0, 0.0, 3.0]]


def test_group_size_must_divide_in_features():
    with pytest.raises(ValueError, match="not divisible by TernaryConfig.group_size=5"):
        ternarize(torch.randn(4, 12), "twn", "per_group", group_size=5)


def test_straight_through_estimator():
    torch.manual_seed(0)
    w = torch.randn(4, 8, requires_grad=True)
    q = fake_ternarize(w, "twn", "per_channel")
    codes, scale = ternarize(w, "twn", "per_channel")
    assert torch.allclose(q, dequantize(codes, scale, "per_channel"))
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # gradient passes straight through


def test_strength_blends_latent_and_ternary():
    w = torch.randn(3, 8)
    full = fake_ternarize(w, "twn", "per_channel", strength=1.0)
    assert torch.equal(fake_ternarize(w, "twn", "per_channel", strength=0.0), w)
    assert torch.allclose(fake_ternarize(w, "twn", "per_channel", strength=0.5), (w + full) / 2, atol=1e-6)


def _reference_ste(w, scale, granularity, strength, group_size):
    """The straight-through estimator written out with detach(): what `fake_ternarize` must compute."""
    codes, _ = ternarize(w, "twn", granularity, group_size)
    target = dequantize(codes, scale, granularity, dtype=w.dtype)
    return w + strength * (target - target.detach()) + (strength * (target.detach() - w)).detach()


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
@pytest.mark.parametrize("strength", [1.0, 0.3])
def test_learned_scale_gets_the_true_gradient(granularity, strength):
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    _, rule_scale = ternarize(w, "twn", granularity, group_size=8)
    upstream = torch.randn(6, 16)
    grads = []
    for fn in (lambda w, s: fake_ternarize(w, "twn", granularity, 8, strength, scale=s),
               lambda w, s: _reference_ste(w, s, granularity, strength, 8)):
        wl, sl = w.clone().requires_grad_(), (rule_scale * 1.1).requires_grad_()
        out = fn(wl, sl)
        torch.testing.assert_close(out, _reference_ste(w, rule_scale * 1.1, granularity, strength, 8))
        (out * upstream).sum().backward()
        grads.append((wl.grad, sl.grad))
    assert torch.equal(grads[0][0], upstream)  # straight through to the latent weight
    torch.testing.assert_close(grads[0][1], grads[1][1])  # d/d scale = strength * sum(grad * codes) per group
    assert grads[0][1].abs().sum() > 0


def test_fake_ternarize_in_autocast_dtype_is_the_cast_weight():
    torch.manual_seed(0)
    w = torch.randn(8, 32, requires_grad=True)
    out = fake_ternarize(w, "twn", "per_channel", dtype=torch.bfloat16)
    codes, scale = ternarize(w, "twn", "per_channel")
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, dequantize(codes, scale, "per_channel").to(torch.bfloat16))
    out.float().sum().backward()
    assert w.grad.dtype == torch.float32 and torch.equal(w.grad, torch.ones_like(w))
