"""The integer path shared by every backend when activations are per-token int8 (see `actquant.py`).
Ternary codes are exact int8 values, so the product of int8 activations and codes is an exact integer
matrix, rescaled once; the float outliers of each token meet their weight columns in float:

    y = ((P * weight_scale[out]) * act_scale[token] + bias) + sum_i v_i * (codes[j_i, out] * weight_scale[out])
    P = q @ codes^T

`P` can come from an int8 GEMM (`torch._int_mm`, int32 accumulation) or from a float32 matmul of the same
integer values (exact too: every partial sum is an integer below 2**24 for in_features < 132,000). Every
backend then performs the same float operations in the same order (each rounded on its own), so all agree
bit for bit. That matters: activation rounding makes the network discontinuous (a 1e-7 difference can flip a
rounding, and flips compound layer after layer), so backends that merely agree to float precision
would drift apart visibly after six layers.
For `per_group` weight scales the product runs once per input group and the groups are summed in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..packing import unpack_codes
from .actquant import TokenQuant, quantize_per_token

# (q int8 [M, k], codes [k, N]) -> exact integer products as float32 [M, N]
IntProduct = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Int8State:
    """Kernel buffers of one layer, built once from its packed buffers."""

    codes: torch.Tensor  # [in, out]: int8 for a GEMM (contiguous or a transposed view), float32 for a matmul
    group_size: int  # inputs per weight scale (in_features unless per_group)
    scales: tuple[torch.Tensor, ...]  # float32 [out] per input group (a per_tensor scale is expanded)
    bias: torch.Tensor | None  # float32 [out]


@torch.no_grad()
def build_int8_state(
    layer, device: torch.device, contiguous_in_out: bool = True, codes_dtype: torch.dtype = torch.int8
) -> Int8State:
    """Unpack the layer's codes once into the `[in, out]` layout the product reads."""
    codes = unpack_codes(layer.weight.to(device), layer.out_features).to(codes_dtype)  # [out, in]
    codes = codes.t().contiguous() if contiguous_in_out else codes.contiguous().t()
    scale = layer.weight_scale.detach().to(device=device, dtype=torch.float32)
    if layer.granularity == "per_group":
        group_size = layer.group_size
        scales = tuple(s.contiguous() for s in scale.t())  # [out, groups] -> per-group [out]
    else:
        group_size = layer.in_features
        scales = (scale.reshape(-1).expand(layer.out_features).contiguous(),)
    bias = layer.bias.detach().to(device=device, dtype=torch.float32) if layer.bias is not None else None
    return Int8State(codes, group_size, scales, bias)


def int_mm_product(q: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Integer product with an int8 GEMM (int32 accumulation)."""
    return torch._int_mm(q, codes).float()


def float_product(q: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The same integer product with a float32 matmul (exact, see the module docstring)."""
    return torch.mm(q.float(), codes)


def outlier_product(state: Int8State, tq: TokenQuant) -> torch.Tensor:
    """`sum_i v_i * W[:, j_i]` per token, float32 `[M, out]`, summed in outlier order."""
    w = state.codes[tq.outlier_index].float()  # [M, n, out], codes of the outlier inputs
    if len(state.scales) == 1:
        w = w * state.scales[0]
    else:
        w = w * torch.stack(state.scales)[torch.div(tq.outlier_index, state.group_size, rounding_mode="floor")]
    p = tq.outlier_value.unsqueeze(-1) * w
    out = p[:, 0]
    for i in range(1, p.shape[1]):
        out = out + p[:, i]
    return out


def int8_linear(state: Int8State, x: torch.Tensor, outliers: int,
                product: IntProduct = int_mm_product) -> torch.Tensor:
    """`y = actquant_int8(x) @ (codes * scale)^T + bias`; float32 output of shape `[..., out]`."""
    lead = x.shape[:-1]
    tq = quantize_per_token(x.reshape(-1, x.shape[-1]), outliers)
    return int8_rescale(state, tq, product).reshape(*lead, state.codes.shape[1])


def int8_rescale(state: Int8State, tq: TokenQuant, product: IntProduct) -> torch.Tensor:
    q = tq.q
    if len(state.scales) == 1:
        y = product(q, state.codes).mul_(state.scales[0])
    else:
        gs = state.group_size
        y = None
        for g, scale in enumerate(state.scales):
            part = product(q[:, g * gs:(g + 1) * gs], state.codes[g * gs:(g + 1) * gs]).mul_(scale)
            y = part if y is None else y.add_(part)
    y.mul_(tq.scale)
    if state.bias is not None:
        y.add_(state.bias)
    if tq.outlier_index is not None:
        y.add_(outlier_product(state, tq))
    return y
