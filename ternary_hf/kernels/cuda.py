"""`cuda`: with per-token int8 activations, an int8 x int8 -> int32 GEMM (`torch._int_mm`, cuBLASLt) on the
unpacked codes; with float activations (or shapes cuBLASLt's int8 GEMM rejects) the dequantized weight
cached once in the input dtype (bf16/fp16/fp32) and a float matmul. The numerics are the layer's either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dense import DenseBackend, DenseState
from .int8 import Int8State, build_int8_state, int8_linear
from .registry import Backend, register_backend

# cuBLASLt int8 GEMM (torch._int_mm on CUDA) wants more than 16 rows and inner/outer sizes divisible by 8.
_MIN_ROWS = 17
_DENSE = DenseBackend()
_ALIGN = 8


def padded_int_mm(q: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """`torch._int_mm` as float32, meeting the CUDA row minimum by zero-padding rows (zero rows give zero
    outputs, which are sliced away) and passing a contiguous activation matrix."""
    rows = q.shape[0]
    if rows < _MIN_ROWS:
        q = torch.cat([q, q.new_zeros(_MIN_ROWS - rows, q.shape[1])])
    out = torch._int_mm(q.contiguous(), codes)
    return (out[:rows] if rows < _MIN_ROWS else out).float()


def int8_shapes_supported(layer) -> bool:
    inner = layer.group_size if layer.granularity == "per_group" else layer.in_features
    return inner % _ALIGN == 0 and layer.out_features % _ALIGN == 0


class CudaBackend(Backend):
    name = "cuda"
    state_depends_on_dtype = True  # the dense fallback caches the weight in the input dtype

    def unavailable_reason(self, layer, x: torch.Tensor) -> str | None:
        if x.device.type != "cuda":
            return f"it runs on CUDA tensors, the input is on {x.device}"
        return None

    def build(self, layer, device, dtype) -> Int8State | DenseState:
        if layer.activation_quant == "per_token_int8" and int8_shapes_supported(layer):
            # [out, in] contiguous, passed transposed: the column-major operand cuBLASLt's int8 GEMM wants.
            return build_int8_state(layer, device, contiguous_in_out=False)
        return _DENSE.build(layer, device, dtype)

    def forward(self, layer, state, x: torch.Tensor) -> torch.Tensor:
        if isinstance(state, Int8State) and state.codes.dtype == torch.int8:
            return int8_linear(state, x, layer.activation_outliers, padded_int_mm).to(x.dtype)
        return _DENSE.forward(layer, state, x)


register_backend(CudaBackend())
