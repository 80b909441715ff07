"""Activation quantization: the single definition shared by the fast kernels, the reference backend and
the QAT forward, so that a distilled model is trained for exactly the numerics it is served with.

`per_token_int8`: every token (last-dimension row) `x` gets its own symmetric scale
    a = max(|x|) / 127            (computed in float32, floored at `_EPS / 127`)
    q = round_half_even(x / a)    in [-127, 127], int8
and the linear layer computes `(q @ codes^T) * a * weight_scale + bias`. Per-token scales keep an
outlier token from crushing the resolution of all the others (a per-tensor 7-bit scale, what FBGEMM's
dynamic linear does, drifted distilled MiniLM embeddings to cosine 0.985).
"""

from __future__ import annotations

import torch

from ..config import ACTIVATION_QUANTS
QMAX = 127
_EPS = 1e-8


def check_activation_quant(value: str) -> str:
    if value not in ACTIVATION_QUANTS:
        raise ValueError(
            f"activation_quant={value!r} is invalid; allowed values: {', '.join(ACTIVATION_QUANTS)}."
        )
    return value


def per_token_scale(x: torch.Tensor) -> torch.Tensor:
    """float32 scale `[..., 1]`: the absmax of each token divided by 127."""
    return x.detach().float().abs().amax(dim=-1, keepdim=True).clamp_min(_EPS) / QMAX


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(q int8 [..., K], scale float32 [..., 1])` with `x ~= q * scale`."""
    scale = per_token_scale(x)
    q = torch.round(x.detach().float() / scale).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def fake_quantize_per_token(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """`q * scale` in `x`'s dtype with a straight-through gradient (identity), blended by `strength`
    in [0, 1] like the weight quantization warm-up (`TernaryLinear.quant_strength`)."""
    q, scale = quantize_per_token(x)
    target = (q.float() * scale).to(x.dtype)
    if not x.requires_grad and strength == 1.0:
        return target
    delta = target - x.detach()
    if strength != 1.0:
        delta = strength * delta
    return x + delta


def fake_quantize_activations(x: torch.Tensor, mode: str, strength: float = 1.0) -> torch.Tensor:
    """Apply activation quantization `mode` (see `ACTIVATION_QUANTS`) the plain way: float in, float out."""
    if mode == "none":
        return x
    if mode == "per_token_int8":
        return fake_quantize_per_token(x, strength)
    check_activation_quant(mode)
    raise AssertionError("unreachable")
