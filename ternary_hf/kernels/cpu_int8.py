"""`cpu_int8`: per-token int8 activations x int8 ternary codes on the CPU with `torch._int_mm` (oneDNN:
VNNI / AVX-512 / AVX2 int8 dot products), int32 accumulation (exact), one float rescale. Threads follow
`torch.set_num_threads`. Kernel buffers: the codes unpacked once to int8 `[in, out]` (1 byte per weight,
4x the packed 2-bit size, 4x smaller than float32)."""

from __future__ import annotations

import torch

from .int8 import Int8State, build_int8_state, int8_linear
from .registry import Backend, register_backend


class CpuInt8Backend(Backend):
    name = "cpu_int8"

    def unavailable_reason(self, layer, x: torch.Tensor) -> str | None:
        if x.device.type != "cpu":
            return f"it runs on CPU tensors, the input is on {x.device}"
        if layer.activation_quant != "per_token_int8":
            return f"it needs activation_quant='per_token_int8', the layer has {layer.activation_quant!r}"
        return None

    def build(self, layer, device, dtype) -> Int8State:
        return build_int8_state(layer, device)

    def forward(self, layer, state: Int8State, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(state, x).to(x.dtype)


register_backend(CpuInt8Backend())
