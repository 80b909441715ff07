"""The terms a family description is written in: `LayerSpec`, `Norm`, `LayerInputs`, the `register` decorator and
the norm / activation readers (kept apart from the package `__init__` so family modules import it one way)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Norm:
    """A LayerNorm (`bias` may be None) or an RMSNorm (`x / sqrt(mean(x^2) + eps) * weight`) as the kernels read it."""

    kind: str  # "layer" | "rms"
    module: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float


@dataclass
class LayerInputs:
    """What one call of the layer brings besides the hidden states (each None when absent)."""

    mask: torch.Tensor | None = None  # transformers' attention mask as the layer got it (2-D .. 4-D, bool or additive)
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # (cos, sin) `[batch or 1, length, head_dim]`
    bias: torch.Tensor | None = None  # additive `[batch, heads, length, length]` (MPNet's relative positions)
    cache: tuple[Any, int] | None = None  # (an empty transformers KV cache, layer index): filled with this call's k, v


@dataclass
class LayerSpec:
    """One transformer layer in the terms of the native building blocks.

    norm_first: pre-norm (`x + attn(norm1(x))`, `h + mlp(norm2(h))`) or post-norm (`norm1(x + attn(x))`,
    `norm2(h + mlp(h))`, BERT / MPNet). `qkv` are concatenated into one GEMM (one fused projection is fine), query
    heads first, then key/value heads. `mlp_in` likewise (gated: the activated half first, then the gate)."""

    norm_first: bool
    attn_norm: Norm | None  # pre-norm: before attention (None: identity); post-norm: after the attention residual
    qkv: tuple[nn.Module, ...]
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    attn_out: nn.Module
    mlp_norm: Norm | None  # pre-norm: before the feed-forward; post-norm: after its residual
    mlp_in: tuple[nn.Module, ...]
    activation: str  # a key of native.ACTIVATIONS
    glu: bool
    mlp_out: nn.Module
    inputs: Callable[[tuple, dict], LayerInputs | None]  # the call's extras, or None: not a call the runner covers
    causal: bool = False
    rope: bool = False
    q_norm: Norm | None = None  # per-head RMSNorm of queries / keys before rotary (Qwen3)
    k_norm: Norm | None = None
    returns_tuple: bool = False  # the layer returns `(hidden_states,)` rather than the tensor
    extra: dict[str, Any] = field(default_factory=dict)


DESCRIBERS: dict[str, Callable[[nn.Module], LayerSpec | None]] = {}


def register(*class_names: str) -> Callable:
    """Decorator: `describe(layer) -> LayerSpec | None` handles layers of these class names."""

    def wrap(fn: Callable[[nn.Module], LayerSpec | None]) -> Callable[[nn.Module], LayerSpec | None]:
        for name in class_names:
            DESCRIBERS[name] = fn
        return fn

    return wrap


# RMSNorm modules computing exactly `weight * (x * rsqrt(mean(x^2) + eps))` (not Gemma's `1 + weight`).
RMS_NORM_CLASSES = frozenset({"Qwen3RMSNorm", "Qwen2RMSNorm", "LlamaRMSNorm", "MistralRMSNorm"})


def norm(module: nn.Module | None) -> Norm | None | bool:
    """`module` as a `Norm`; None for an identity; False when the kernels cannot compute it."""
    if module is None or isinstance(module, nn.Identity):
        return None
    if isinstance(module, nn.LayerNorm) and module.weight is not None and len(module.normalized_shape) == 1:
        return Norm("layer", module, module.weight, module.bias, float(module.eps))
    if type(module).__name__ in RMS_NORM_CLASSES and isinstance(getattr(module, "weight", None), torch.Tensor):
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        if eps is not None:
            return Norm("rms", module, module.weight, None, float(eps))
    return False


def activation(module: Any) -> str | None:
    """The kernels' name of an activation module / function, or None when they do not have it."""
    name = type(module).__name__
    if name == "GELUActivation" and getattr(module, "act", None) is nn.functional.gelu:
        return "gelu"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if name in ("GELUTanh", "PytorchGELUTanh", "NewGELUActivation", "GELUPytorchTanh"):
        return "gelu_tanh"
    if name in ("SiLUActivation", "SiLU"):
        return "silu"
    if isinstance(module, nn.ReLU):
        return "relu"
    return None
