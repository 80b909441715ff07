"""`dense`: the reference computation with its unpacked weight built once per device (and dtype) instead
of on every forward: float codes for per-token int8 activations (bit-identical to `reference`), the
dequantized `codes * scale` in the input dtype for float activations. As fast as a full-precision model
and as large in memory (the packed buffer stays the stored form); `auto` uses it where no integer kernel
applies (float activations on CPU, accelerators other than CUDA)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .int8 import Int8State, build_int8_state, float_product, int8_linear
from .registry import Backend, register_backend


@dataclass(frozen=True)
class DenseState:
    weight: torch.Tensor  # [out, in] in the input dtype
    bias: torch.Tensor | None


class DenseBackend(Backend):
    name = "dense"
    state_depends_on_dtype = True

    @torch.no_grad()
    def build(self, layer, device, dtype) -> DenseState | Int8State:
        if layer.activation_quant == "per_token_int8":
            return build_int8_state(layer, device, codes_dtype=torch.float32)
        weight = layer.dequantized_weight(dtype).to(device)
        bias = layer.bias.detach().to(device=device, dtype=dtype) if layer.bias is not None else None
        return DenseState(weight, bias)

    def forward(self, layer, state, x: torch.Tensor) -> torch.Tensor:
        if isinstance(state, Int8State):
            return int8_linear(state, x, layer.activation_outliers, float_product).to(x.dtype)
        return F.linear(x, state.weight, state.bias)


register_backend(DenseBackend())
