"""ONNX export of a ternary model, so ONNX Runtime users get the 2-bit checkpoint and the same numerics.

Every `TernaryLinear` becomes a small ONNX subgraph:
  * the packed 2-bit codes are stored as they are on disk (uint8 `[ceil(out/4), in]`) and unpacked by
    BitShift/Sub/Cast nodes that depend only on initializers, so ONNX Runtime folds them once when the
    session is created (the .onnx file stays 2-bit; export-time folding is off for that reason);
  * per-token int8 activations (with float outliers) are computed with ArgMax/ScatterElements/ReduceMax/
    Div/Round/Clip/Cast exactly as `ternary_hf.kernels.actquant` defines them, multiplied by the codes with
    MatMulInteger (int8 x int8 -> int32) and rescaled in the order of `ternary_hf.kernels.int8`;
  * with `activation_quant="none"` the layer is a float MatMul on `codes * scale`.

`torch.onnx.export` traces (and switches the train/eval mode of) the module it is given, so the export
works on a deep copy: the caller's model is left untouched.
"""

from __future__ import annotations

import copy
import inspect
import os
from pathlib import Path

import torch
from torch import nn

from .fileio import atomic_output_file
from .integration import ternary_modules
from .kernels.actquant import QMAX, _EPS
from .packing import CODES_PER_BYTE

DEFAULT_OPSET = 17


class _MatMulInteger(torch.autograd.Function):
    """uint8 `[..., K]` (int8 value + 128) x int8 `[K, N]` -> int32, exported as ONNX MatMulInteger with
    a_zero_point=128: the same product as int8 x int8, on ONNX Runtime's fast u8s8 path (its s8s8 path
    measured 10x slower on an AVX-512 VNNI CPU)."""

    @staticmethod
    def forward(ctx, q_u8: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        q = (q_u8.to(torch.int16) - 128).to(torch.int8)
        out = torch._int_mm(q.reshape(-1, q.shape[-1]), codes)
        return out.reshape(*q.shape[:-1], codes.shape[1])

    @staticmethod
    def symbolic(g, q_u8, codes):
        zero_point = g.op("Constant", value_t=torch.tensor(128, dtype=torch.uint8))
        return g.op("MatMulInteger", q_u8, codes, zero_point)


class OnnxTernaryLinear(nn.Module):
    """Export form of a packed `TernaryLinear` (same function, ONNX-friendly ops, 2-bit initializer)."""

    def __init__(self, layer) -> None:
        super().__init__()
        if not layer.is_packed:
            raise ValueError("OnnxTernaryLinear needs a packed (inference-mode) TernaryLinear; call to_inference().")
        self.out_features = layer.out_features
        self.in_features = layer.in_features
        self.granularity = layer.granularity
        self.group_size = layer.group_size
        self.activation_quant = layer.activation_quant
        self.outliers = min(layer.activation_outliers, layer.in_features) if layer.activation_quant != "none" else 0
        self.register_buffer("packed", layer.weight.detach().clone())
        scale = layer.weight_scale.detach().float()
        if layer.granularity == "per_group":
            scale = scale.t().contiguous()  # [groups, out]; expanded to [in, out] in the graph (folded at load)
        else:
            scale = scale.reshape(-1).expand(layer.out_features).contiguous()
        self.register_buffer("scale_stored", scale)
        self.register_buffer("bias", layer.bias.detach().float().clone() if layer.bias is not None else None)

    def codes_in_out(self) -> torch.Tensor:
        """Unpack to int8 `[in, out]` (see `packing.py`) with ops ONNX Runtime constant-folds."""
        parts = [torch.bitwise_right_shift(self.packed, shift) for shift in (0, 2, 4, 6)]
        parts = [p - torch.bitwise_right_shift(p, 2) * 4 for p in parts]  # & 3, with shifts only
        codes = torch.cat(parts, dim=0)[: self.out_features]
        return (codes.to(torch.int8) - 1).t()

    @property
    def scale(self) -> torch.Tensor:
        """float32 `[out]`, or `[in, out]` for per_group (one scale per code)."""
        if self.granularity == "per_group":
            return self.scale_stored.repeat_interleave(self.group_size, dim=0)
        return self.scale_stored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.codes_in_out()
        scale = self.scale
        xf = x.float()
        if self.activation_quant == "none":
            weight = codes.float() * scale  # scale: [in, out] (per_group) or [out], broadcast
            y = torch.matmul(xf, weight)
            return (y + self.bias if self.bias is not None else y).to(x.dtype)
        rest, index, value = xf, None, None
        if self.outliers:
            magnitude = xf.abs()
            picked = []
            for _ in range(self.outliers):
                j = magnitude.argmax(dim=-1, keepdim=True)
                picked.append(j)
                magnitude = magnitude.scatter(-1, j, torch.full_like(j, -1, dtype=magnitude.dtype))
            index = torch.cat(picked, dim=-1)
            value = xf.gather(-1, index)
            rest = xf.scatter(-1, index, torch.zeros_like(value))
        absmax = rest.abs().amax(dim=-1, keepdim=True).clamp(min=_EPS)
        q = (torch.round(rest * (absmax.new_full((), QMAX) / absmax)).clamp(-QMAX, QMAX) + 128).to(torch.uint8)
        act_scale = absmax / QMAX
        if self.granularity == "per_group":
            y = None
            gs = self.group_size
            for g in range(self.in_features // gs):
                part = _MatMulInteger.apply(q[..., g * gs:(g + 1) * gs], codes[g * gs:(g + 1) * gs]).float()
                part = part * self.scale_stored[g]
                y = part if y is None else y + part
        else:
            y = _MatMulInteger.apply(q, codes).float() * scale
        y = y * act_scale
        if self.bias is not None:
            y = y + self.bias
        if index is not None:
            w = codes[index].float()  # [..., n, out]: the outlier inputs' weight rows
            w = w * (scale[index] if self.granularity == "per_group" else scale)
            p = value.unsqueeze(-1) * w
            o = p[..., 0, :]
            for i in range(1, self.outliers):
                o = o + p[..., i, :]
            y = y + o
        return y.to(x.dtype)


class _EncoderOutput(nn.Module):
    """Named tensor inputs -> last_hidden_state (what `torch.onnx.export` traces)."""

    def __init__(self, model: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).last_hidden_state


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers encoder inside a SentenceTransformer (or the model itself)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:  # sentence-transformers is optional
        SentenceTransformer = ()  # type: ignore[assignment]
    if SentenceTransformer and isinstance(model, SentenceTransformer):
        return model[0].auto_model
    return model


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    example_length: int = 16,
) -> Path:
    """Export a ternary transformers encoder (or a SentenceTransformer's) to ONNX.

    Inputs: `input_ids`, `attention_mask` (and `token_type_ids` when the model takes them), int64
    `[batch, sequence]`, both axes dynamic. Output: `last_hidden_state` float32 `[batch, sequence, hidden]`.
    The model is not modified. Returns the written path (written atomically).
    """
    base = _base_model(model)
    export_model = copy.deepcopy(base).eval()
    for name, layer in ternary_modules(export_model):
        parent_name, _, child = name.rpartition(".")
        parent = export_model.get_submodule(parent_name) if parent_name else export_model
        setattr(parent, child, OnnxTernaryLinear(layer))
    config = getattr(export_model, "config", None)
    if config is not None and hasattr(config, "_attn_implementation"):
        config._attn_implementation = "eager"  # traces to plain MatMul/Softmax, valid for every padding
    params = inspect.signature(export_model.forward).parameters
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in params else [])
    example = tuple(
        torch.ones(2, example_length, dtype=torch.long) if n != "token_type_ids" else torch.zeros(2, example_length, dtype=torch.long)
        for n in input_names
    )
    example[1][1, example_length // 2:] = 0  # a padded row, so the mask path is traced
    axes = {n: {0: "batch", 1: "sequence"} for n in input_names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    path = Path(path)
    with atomic_output_file(path, suffix=".onnx") as tmp, torch.no_grad():
        torch.onnx.export(
            _EncoderOutput(export_model, input_names).eval(), example, str(tmp),
            input_names=input_names, output_names=["last_hidden_state"], dynamic_axes=axes,
            opset_version=opset, dynamo=False, do_constant_folding=False,
        )
    return path
