"""Per-architecture descriptions for the general fused layer forward (`kernels/generic_layer.py`).

Each module here maps one family's transformer layer onto a `LayerSpec`: which `TernaryLinear`s are the
query/key/value, attention-output and feed-forward projections, which norms sit where (pre- or post-norm,
LayerNorm or RMSNorm), the activation (plain or gated), and how the layer's forward arguments give the attention
mask, rotary embeddings or relative-position bias. The runner turns that into native calls: one GEMM per
(merged) projection with fused quantize / rescale / residual / norm / activation epilogues, and one attention
call. Supporting the next architecture is one new module with one `@register`ed function (see `qwen3.py` for a
decoder, `vit.py` for the smallest one); a layer nothing here describes keeps its own forward (per-linear int8
kernels, eager everything else).
"""

from __future__ import annotations

from .spec import DESCRIBERS, LayerInputs, LayerSpec, Norm, activation, norm, register

__all__ = ["DESCRIBERS", "LayerInputs", "LayerSpec", "Norm", "activation", "load_all", "norm", "register"]


def load_all() -> None:
    """Import every family module (each registers its describer)."""
    from . import modernbert, mpnet, qwen3, vit  # noqa: F401
