"""`reference`: the plain computation every other backend is tested against.

Unpack the 2-bit codes on every forward (nothing is cached: it is the definition, slow on purpose) and
run float matmuls. With float activations: `x @ (codes * scale)^T + bias`. With per-token int8
activations: quantize `x` (see `actquant.py`), multiply the integer values as float32 (exact), rescale
(see `int8.py`). The QAT forward simulates the same numerics with fake-quantized float tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .int8 import build_int8_state, float_product, int8_linear
from .registry import Backend, register_backend


class ReferenceBackend(Backend):
    name = "reference"

    def build(self, layer, device, dtype):
        return None

    def forward(self, layer, state, x: torch.Tensor) -> torch.Tensor:
        if layer.activation_quant == "per_token_int8":
            plain = build_int8_state(layer, x.device, codes_dtype=torch.float32)
            return int8_linear(plain, x, layer.activation_outliers, float_product).to(x.dtype)
        weight = layer.dequantized_weight(x.dtype)
        bias = layer.bias.to(x.dtype) if layer.bias is not None else None
        return F.linear(x, weight, bias)


register_backend(ReferenceBackend())
