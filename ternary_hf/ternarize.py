"""The ternarization rules: the single source of truth for how a float weight becomes codes x scale.

A weight matrix `W [out, in]` is viewed as groups `[rows, n_groups, group_len]`; every group gets one
scale. The granularity decides the view:
  per_tensor  -> [1, 1, out*in]        scale shape (1,)
  per_channel -> [out, 1, in]          scale shape (out,)
  per_group   -> [out, in/g, g]        scale shape (out, in/g)
Codes are int8 in {-1, 0, +1}; the dequantized weight is `codes * scale` (broadcast per group).
"""

from __future__ import annotations

import torch

_EPS = 1e-8


def scale_shape(out_features: int, in_features: int, granularity: str, group_size: int) -> tuple[int, ...]:
    """Shape of the stored scale tensor for a `[out_features, in_features]` weight."""
    if granularity == "per_tensor":
        return (1,)
    if granularity == "per_channel":
        return (out_features,)
    if granularity == "per_group":
        check_group_size(in_features, group_size)
        return (out_features, in_features // group_size)
    raise ValueError(f"granularity={granularity!r} is invalid; allowed values: per_tensor, per_channel, per_group.")


def check_group_size(in_features: int, group_size: int, name: str = "layer") -> None:
    if in_features % group_size:
        raise ValueError(
            f"Layer '{name}': in_features={in_features} is not divisible by TernaryConfig.group_size={group_size}; "
            "pick a group_size that divides it, or use granularity='per_channel'."
        )


def _grouped(weight: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    out_features, in_features = weight.shape
    if granularity == "per_tensor":
        return weight.reshape(1, 1, -1)
    if granularity == "per_channel":
        return weight.reshape(out_features, 1, in_features)
    return weight.reshape(out_features, in_features // group_size, group_size)


def ternarize(
    weight: torch.Tensor, rule: str, granularity: str, group_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(codes int8 [out, in], scale float32 of scale_shape(...))` for a float weight."""
    if weight.ndim != 2:
        raise ValueError(f"ternarize expects a 2-D weight, got shape {tuple(weight.shape)}")
    scale_shape(*weight.shape, granularity, group_size)  # validates granularity / divisibility
    g = _grouped(weight.detach().float(), granularity, group_size)
    a = g.abs()
    mean_abs = a.mean(dim=-1, keepdim=True)
    if rule == "twn":
        mask = a > 0.7 * mean_abs
        kept = mask.sum(dim=-1, keepdim=True)  # an exact count (int64)
        # float x bool products take torch's slow type-promoting path (~10x a plain multiply): multiply by floats
        keep = mask.to(g.dtype)
        codes = torch.sign(g) * keep
        scale = (a * keep).sum(dim=-1, keepdim=True) / kept.clamp(min=1)
    elif rule in ("absmean", "paper"):
        scale = mean_abs if rule == "absmean" else 2.0 * mean_abs
        codes = torch.round(g / scale.clamp(min=_EPS)).clamp(-1, 1)
    else:
        raise ValueError(f"rule={rule!r} is invalid; allowed values: twn, absmean, paper.")
    scale = scale.clamp(min=_EPS)
    out_features, in_features = weight.shape
    return (
        codes.to(torch.int8).reshape(out_features, in_features),
        scale.reshape(scale_shape(out_features, in_features, granularity, group_size)),
    )


def dequantize(codes: torch.Tensor, scale: torch.Tensor, granularity: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`codes * scale` as a dense `[out, in]` weight in `dtype` (default: the scale's dtype)."""
    dtype = dtype or scale.dtype
    out_features, in_features = codes.shape
    if granularity == "per_tensor":
        return codes.to(dtype) * scale.to(dtype)
    if granularity == "per_channel":
        return codes.to(dtype) * scale.to(dtype).unsqueeze(1)
    n_groups = scale.shape[1]
    w = codes.to(dtype).reshape(out_features, n_groups, in_features // n_groups) * scale.to(dtype).unsqueeze(-1)
    return w.reshape(out_features, in_features)


def _reduce_to_scale(grad: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, granularity: str) -> torch.Tensor:
    """d loss / d scale from d loss / d (codes * scale): per group, the sum of grad * codes."""
    out_features, in_features = codes.shape
    if granularity == "per_tensor":
        return (grad * codes).sum().reshape(scale.shape)
    if granularity == "per_channel":
        return (grad * codes).sum(dim=1)
    n_groups = scale.shape[1]
    g = grad.reshape(out_features, n_groups, in_features // n_groups)
    return (g * codes.reshape(g.shape)).sum(dim=-1)


class _TernarySTE(torch.autograd.Function):
    """`w + strength * (codes * scale - w)` forward (`codes * scale` at full strength); backward: the identity
    to the latent weight (straight-through) and the true gradient `strength * sum(grad * codes)` to the scale.

    One autograd node instead of the half-dozen of the `w + (target - w).detach()` formulation, and the result
    comes out directly in `dtype` (an autocast dtype): the weight is materialised once per forward."""

    @staticmethod
    def forward(ctx, weight, codes, scale, granularity, strength, dtype):  # noqa: D102
        ctx.granularity, ctx.strength = granularity, strength
        ctx.scale_dtype = scale.dtype
        if strength == 1.0:
            out = dequantize(codes, scale, granularity, dtype=dtype)
        else:
            target = dequantize(codes, scale, granularity, dtype=weight.dtype)
            out = torch.lerp(weight.detach(), target, strength).to(dtype)
        ctx.save_for_backward(codes, scale)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        codes, scale = ctx.saved_tensors
        grad_scale = None
        if ctx.needs_input_grad[2]:
            grad_scale = _reduce_to_scale(grad.float(), codes.to(torch.float32), scale, ctx.granularity)
            if ctx.strength != 1.0:
                grad_scale = grad_scale * ctx.strength
            grad_scale = grad_scale.to(ctx.scale_dtype)
        return grad, None, grad_scale, None, None, None


def fake_ternarize(
    weight: torch.Tensor,
    rule: str,
    granularity: str,
    group_size: int = 128,
    strength: float = 1.0,
    scale: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Ternarized weight with a straight-through estimator: the forward sees `codes * scale`, the
    gradient flows to the latent weight unchanged. `strength` in [0, 1] blends latent -> ternary
    (quantization warm-up, lambda in the 1.58-bit fine-tuning recipe).

    The rule picks the codes (and, unless `scale` is given, the scale). A given `scale` (a learned one)
    receives its true gradient. `dtype`: the dtype of the result (default: the weight's), e.g. the
    autocast dtype the weight is about to be cast to anyway."""
    codes, rule_scale = ternarize(weight, rule, granularity, group_size)
    if scale is None:
        scale = rule_scale.to(weight.dtype)
    return _TernarySTE.apply(weight, codes, scale, granularity, float(strength), dtype or weight.dtype)
