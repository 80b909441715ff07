"""Backend registry and dispatch for packed `TernaryLinear` layers.

A backend computes `y = actquant(x) @ (codes * scale)^T + bias` for one layer. Its kernel state (unpacked
codes, prepacked weights, ...) is built once per (weights, device[, dtype]) and cached on the layer as a
plain attribute, so it never enters the state dict; the packed 2-bit buffer stays the storage format.
The cache entry remembers which tensors it was built from (identity and in-place version counter), so
reloading or editing the weights rebuilds it, and nothing is rebuilt per forward otherwise.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import torch

from ..config import BACKENDS

_REGISTRY: dict[str, "Backend"] = {}
_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("ternary_hf_backend", default=None)
_CACHE_ATTR = "_ternary_kernel_cache"


class Backend:
    """One way of computing a packed `TernaryLinear` forward. Subclasses set `name` and implement
    `build` (kernel state from the layer's buffers; called once per cache key) and `forward`."""

    name: str = ""
    # True when the kernel state depends on the input dtype (e.g. a dequantized weight in that dtype).
    state_depends_on_dtype: bool = False

    def unavailable_reason(self, layer, x: torch.Tensor) -> str | None:
        """Why this backend cannot run `layer` on `x` (None when it can)."""
        return None

    def build(self, layer, device: torch.device, dtype: torch.dtype) -> Any:
        raise NotImplementedError

    def forward(self, layer, state: Any, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def register_backend(backend: Backend) -> Backend:
    """Make `backend` selectable by name (its name must be listed in `TernaryConfig`'s BACKENDS)."""
    if backend.name not in BACKENDS or backend.name == "auto":
        raise ValueError(f"Backend name {backend.name!r} is not one of TernaryConfig's BACKENDS {BACKENDS}.")
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown TernaryLinear backend {name!r}; available: {', '.join(sorted(_REGISTRY))} (or 'auto').")
    return _REGISTRY[name]


def check_backend_name(name: str) -> str:
    """Validate a configured backend name (`auto` or one of TernaryConfig's BACKENDS)."""
    if name not in BACKENDS:
        raise ValueError(f"TernaryLinear backend={name!r} is invalid; allowed values: {', '.join(BACKENDS)}.")
    return name


def available_backends() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every packed `TernaryLinear` forward inside the block with backend `name` (or 'auto'),
    whatever the layers' configured backend. Context-local (threads and async tasks are independent)."""
    if name != "auto":
        get_backend(name)
    token = _OVERRIDE.set(name)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def auto_backend_name(device: torch.device, activation_quant: str) -> str:
    """The backend `auto` picks: int8 kernels where activations are int8, else a cached dense weight."""
    if device.type == "cuda":
        return "cuda"
    if device.type == "cpu" and activation_quant == "per_token_int8":
        return "cpu_int8"
    return "dense"


def resolve_backend(layer, x: torch.Tensor) -> Backend:
    """The backend that runs `layer` on `x`: the `use_backend` override, else the layer's configured one;
    `auto` picks per device and falls back to `dense` when its pick cannot run this layer."""
    name = _OVERRIDE.get() or layer.backend
    if name == "auto":
        backend = get_backend(auto_backend_name(x.device, layer.activation_quant))
        if backend.unavailable_reason(layer, x) is None:
            return backend
        return get_backend("dense")
    backend = get_backend(name)
    reason = backend.unavailable_reason(layer, x)
    if reason is not None:
        raise RuntimeError(
            f"TernaryLinear backend {name!r} cannot run layer {layer.extra_repr()!r} on a {x.device.type} "
            f"{x.dtype} input: {reason}. Use backend='auto' (or ternary_hf.kernels.use_backend('auto'))."
        )
    return backend


def kernel_state(layer, backend: Backend, device: torch.device, dtype: torch.dtype) -> Any:
    """The cached kernel state of `backend` for `layer`, built on first use and whenever the layer's
    weight, weight_scale or bias tensor was replaced or modified in place."""
    key = (backend.name, device, dtype if backend.state_depends_on_dtype else None)
    caches = layer.__dict__.get(_CACHE_ATTR)
    if caches is None:
        caches = layer.__dict__[_CACHE_ATTR] = {}
    sources = (layer.weight, layer.weight_scale, layer.bias)
    entry = caches.get(key)
    if entry is not None and _same_sources(entry[0], sources):
        return entry[1]
    state = backend.build(layer, device, dtype)
    caches[key] = (tuple((t, t._version) if t is not None else None for t in sources), state)
    return state


def _same_sources(recorded: tuple, sources: tuple) -> bool:
    for rec, t in zip(recorded, sources):
        if rec is None:
            if t is not None:
                return False
        elif t is not rec[0] or t._version != rec[1]:
            return False
    return True


def clear_kernel_cache(module: torch.nn.Module) -> None:
    """Drop every cached kernel state under `module` (they are rebuilt on the next forward)."""
    for m in module.modules():
        m.__dict__.pop(_CACHE_ATTR, None)


def ternary_linear(layer, x: torch.Tensor) -> torch.Tensor:
    """Forward of a packed `TernaryLinear` through the selected backend. Under autograd (adapters such as
    LoRA train on top of frozen packed layers, so gradients must flow through them) the output is the
    same, and the input gets the straight-through gradient `grad_y @ (codes * scale)`."""
    backend = resolve_backend(layer, x)
    state = kernel_state(layer, backend, x.device, x.dtype)
    bias = layer.bias
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        return _StraightThrough.apply(x, bias, layer, backend, state)
    return backend.forward(layer, state, x)


class _StraightThrough(torch.autograd.Function):
    """The backend's forward; backward as if activation quantization were the identity."""

    @staticmethod
    def forward(ctx, x, bias, layer, backend, state):
        ctx.layer = layer
        ctx.has_bias = bias is not None
        return backend.forward(layer, state, x)

    @staticmethod
    def backward(ctx, grad_y):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ ctx.layer.dequantized_weight(grad_y.dtype)
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0).to(ctx.layer.bias.dtype)
        return grad_x, grad_bias, None, None, None
