"""`cpu_int8`: per-token int8 activations x int8 ternary codes on the CPU.

Per layer and forward: one fused quantization pass (C, `native.py`), oneDNN's int8 GEMM (`torch._int_mm`:
VNNI / AVX-512 / AVX2 int8 dot products, exact int32 accumulation), one fused rescale pass written over
the int32 buffer. Threads follow `torch.set_num_threads`. Kernel buffers: the codes unpacked once to int8
`[in, out]` (1 byte per weight: 4x the packed 2-bit size, 4x smaller than float32).

Without the C kernels (no compiler, TERNARY_HF_NATIVE=0) and for `per_group` scales the same numerics run
as eager torch ops.
"""

from __future__ import annotations

import torch

from . import native
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
        if len(state.scales) != 1 or native.native_lib() is None:
            return int8_linear(state, x, layer.activation_outliers).to(x.dtype)
        k = x.shape[-1]
        x2 = x.reshape(-1, k)
        if x2.dtype != torch.float32 or not x2.is_contiguous():
            x2 = x2.float().contiguous()
        tq = native.quantize_rows(x2, layer.activation_outliers, reuse_buffer=True)  # read by the GEMM only
        y = native.rescale_(torch._int_mm(tq.q, state.codes), tq, state.codes, state.scales[0], state.bias)
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


register_backend(CpuInt8Backend())
