"""Installing the fused CPU forwards on a model, and building its kernel state up front.

The one place that knows every fused path (`fused_layer.py`, `fused_model.py`), so that those modules import
only the registry and the native kernels, never each other's installers.
"""

from __future__ import annotations

import torch
from torch import nn

from .fused_layer import install_layer_plans, uninstall_layer_plans
from .fused_model import install_fused_model, uninstall_fused_model
from .generic_layer import install_generic_layers, uninstall_generic_layers
from .registry import kernel_state, resolve_backend


def install_fused_layers(model: nn.Module) -> int:
    """Give every fusable encoder layer of `model` the fused CPU forward: BERT-family layers the whole-layer
    native call (`fused_layer.py`), and a BERT model whose layers all fuse the whole-model forward
    (`fused_model.py`); layers of the families described in `families/` the general one (`generic_layer.py`).
    Idempotent; the own forwards still run whenever the fused ones do not apply. Returns the number of fused
    layers."""
    n = install_layer_plans(model)
    install_fused_model(model)
    return n + install_generic_layers(model)


def uninstall_fused_layers(model: nn.Module) -> int:
    """Restore the original forward of every fused layer (and fused model). Returns how many layers."""
    uninstall_fused_model(model)
    return uninstall_layer_plans(model) + uninstall_generic_layers(model)


def prepare(model: torch.nn.Module, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> int:
    """Build every packed `TernaryLinear`'s kernel state now (at load) instead of on the first forward, and
    give BERT-family encoder layers the fused CPU forward (`fused_layer.py`; it only runs where it applies).
    Uses the backend a forward on `device` (default: where the layer's weights are) would use.
    Returns the number of layers prepared."""
    install_fused_layers(model)
    n = 0
    for m in model.modules():
        if getattr(m, "is_packed", False) and hasattr(m, "weight_scale"):
            dev = torch.device(device) if device is not None else m.weight.device
            dt = dtype or m.weight_scale.dtype
            probe = torch.empty(0, m.in_features, device=dev, dtype=dt)
            backend = resolve_backend(m, probe)
            kernel_state(m, backend, dev, dt)
            n += 1
    return n
