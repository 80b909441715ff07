"""Activation quantization: the single definition shared by the fast kernels, the reference backend and
the QAT forward, so that a distilled model is trained for exactly the numerics it is served with.

`per_token_int8` with `n` outliers: in every token (last-dimension row) `x`
    O = the n entries of largest |x| (ties: lowest index first), kept in float32
    r = x with the entries in O set to 0
    m = max(max(|r|), _EPS)       (float32)
    q = round_half_even(r * (127 / m))  in [-127, 127], int8 (0 on O)
    a = m / 127                   the token's scale: r ~= q * a
and a linear layer computes `(q @ codes^T) * weight_scale * a + bias + x[O] @ W[:, O]^T`.

Per-token scales keep one token from crushing the resolution of all the others (a per-tensor 7-bit scale,
what FBGEMM's dynamic linear does, drifted distilled MiniLM embeddings to cosine 0.985). Outliers keep one
channel from crushing the resolution of the rest of its token: BERT-family hidden states have a few
channels 5-10x larger than the rest, and on a ternary all-MiniLM-L6-v2 keeping the single largest entry
of each token in float brought the sentence embeddings ~9x closer to float activations (mean 1 - cosine
3.5e-4 -> 4e-5; `benchmarks/cpu_speed.py`, numerics table), for one extra multiply-add per output.
"""

from __future__ import annotations

import torch

from ..config import ACTIVATION_QUANTS, MAX_ACTIVATION_OUTLIERS
from . import native
from .token_quant import TokenQuant

QMAX = 127
_EPS = 1e-8


def check_activation_quant(value: str) -> str:
    if value not in ACTIVATION_QUANTS:
        raise ValueError(f"activation_quant={value!r} is invalid; allowed values: {', '.join(ACTIVATION_QUANTS)}.")
    return value


def check_activation_outliers(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ACTIVATION_OUTLIERS:
        raise ValueError(
            f"activation_outliers={value!r} is invalid; use an integer from 0 to {MAX_ACTIVATION_OUTLIERS}."
        )
    return value


def quantize_per_token(x: torch.Tensor, outliers: int = 0) -> TokenQuant:
    """Quantize `x` per token (see the module docstring), computing in float32."""
    xf = x.detach().float()
    index = value = None
    rest = xf
    if outliers:
        magnitude = xf.abs()
        picked = []
        for _ in range(min(outliers, xf.shape[-1])):
            j = magnitude.argmax(dim=-1, keepdim=True)  # the first maximum: ties go to the lowest index
            picked.append(j)
            magnitude.scatter_(-1, j, -1.0)  # never picked again
        index = torch.cat(picked, dim=-1)
        value = xf.gather(-1, index)
        rest = xf.scatter(-1, index, 0.0)
    absmax = rest.abs().amax(dim=-1, keepdim=True).clamp_min(_EPS)
    # a tensor numerator: `127 / t` would run as `t.reciprocal() * 127`, rounding differently from the kernels
    q = torch.round(rest * (absmax.new_full((), QMAX) / absmax)).clamp_(-QMAX, QMAX).to(torch.int8)
    scale = absmax / QMAX
    return TokenQuant(q, scale, index, value)


def _quantize_tokens_fast(x: torch.Tensor, outliers: int) -> TokenQuant:
    """`quantize_per_token` through the compiled kernel where there is one (CPU; same bits, one pass per
    token instead of a dozen eager ops), else the reference itself."""
    if x.device.type == "cpu" and x.numel():
        if native.native_lib() is not None:
            k = x.shape[-1]
            tq = native.quantize_rows(x.detach().reshape(-1, k).float().contiguous(), outliers)
            lead = x.shape[:-1]
            return TokenQuant(tq.q.view(*lead, k), tq.scale.view(*lead, 1),
                              None if tq.outlier_index is None else tq.outlier_index.view(*lead, -1),
                              None if tq.outlier_value is None else tq.outlier_value.view(*lead, -1))
    return quantize_per_token(x, outliers)


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: the given quantized value (blended by `strength`); backward: the identity (straight-through).
    One autograd node instead of the `x + (target - x).detach()` arithmetic."""

    @staticmethod
    def forward(ctx, x, target, strength):  # noqa: D102
        return target if strength == 1.0 else torch.lerp(x.detach(), target, strength)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad, None, None


def fake_quantize_per_token(x: torch.Tensor, outliers: int = 0, strength: float = 1.0) -> torch.Tensor:
    """`q * scale` (+ the float outliers) in `x`'s dtype with a straight-through gradient (identity),
    blended by `strength` in [0, 1] like the weight quantization warm-up (`TernaryLinear.quant_strength`)."""
    tq = _quantize_tokens_fast(x, outliers)
    target = tq.q.to(torch.float32).mul_(tq.scale)
    if tq.outlier_index is not None:
        target.scatter_(-1, tq.outlier_index, tq.outlier_value)
    target = target.to(x.dtype)
    if strength == 1.0 and not x.requires_grad:
        return target
    return _FakeQuantSTE.apply(x, target, float(strength))


def fake_quantize_activations(x: torch.Tensor, mode: str, outliers: int = 0, strength: float = 1.0) -> torch.Tensor:
    """Apply activation quantization `mode` (see `ACTIVATION_QUANTS`) the plain way: float in, float out."""
    if mode == "none":
        return x
    if mode == "per_token_int8":
        return fake_quantize_per_token(x, outliers, strength)
    check_activation_quant(mode)
    raise AssertionError("unreachable")
