"""`TernaryLinear`: the module that replaces `nn.Linear`.

Inference mode holds explicit buffers:
  weight        uint8 [ceil(out/4), in]   packed codes (see `packing.py`)
  weight_scale  float (see `ternarize.scale_shape`), in the dtype the model was loaded with
  bias          float [out] (a parameter, or None)
QAT mode holds a latent float `weight [out, in]` parameter instead and ternarizes it in every forward
with a straight-through estimator. `to_inference()` freezes a QAT layer into the packed form.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .checkpoint import expected_packed_shapes
from .kernels import check_backend_name, fake_quantize_activations, ternary_linear
from .kernels.actquant import check_activation_outliers, check_activation_quant
from .packing import pack_codes, packed_rows, unpack_codes
from .ternarize import check_group_size, dequantize, fake_ternarize, scale_shape, ternarize


class TernaryLinear(nn.Module):
    """A linear layer whose weight is `codes * scale` with codes in {-1, 0, +1}."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        granularity: str = "per_channel",
        group_size: int = 128,
        rule: str = "twn",
        mode: str = "inference",
        activation_quant: str = "per_token_int8",
        activation_outliers: int = 1,
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.in_features = in_features
        self.out_features = out_features
        self.granularity = granularity
        self.group_size = group_size
        self.rule = rule
        self.mode = mode
        # Part of the layer's numerics (QAT simulates it, every inference backend computes it).
        self.activation_quant = check_activation_quant(activation_quant)
        self.activation_outliers = check_activation_outliers(activation_outliers)
        # Inference kernel (see ternary_hf.kernels); kernel buffers are cached on first use, not saved.
        self.backend = check_backend_name(backend)
        # Fraction of the quantization applied in QAT (1 = fully ternary); a trainer may ramp it in.
        self.quant_strength = 1.0
        if granularity == "per_group":
            check_group_size(in_features, group_size)
        if mode == "qat":
            self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device))
        elif mode == "inference":
            self.register_buffer(
                "weight", torch.empty(packed_rows(out_features), in_features, dtype=torch.uint8, device=device)
            )
            self.register_buffer(
                "weight_scale",
                torch.empty(scale_shape(out_features, in_features, granularity, group_size), dtype=dtype, device=device),
            )
        else:
            raise ValueError(f"TernaryLinear mode={mode!r} is invalid; allowed values: inference, qat.")
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options) -> "TernaryLinear":
        """Ternarize an existing `nn.Linear` (weights already materialized)."""
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    dtype=w.dtype, device=w.device, **options)
        with torch.no_grad():
            if layer.mode == "qat":
                layer.weight.copy_(w)
            else:
                layer.load_float_weight(w)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer

    @property
    def is_packed(self) -> bool:
        return self.mode == "inference"

    @torch.no_grad()
    def load_float_weight(self, weight: torch.Tensor) -> None:
        """Ternarize a float weight into this (inference) layer's buffers."""
        packed, scale = self.quantize_weight(weight)
        self.weight = packed.to(self.weight.device)
        self.weight_scale = scale.to(self.weight_scale.dtype).to(self.weight_scale.device)

    def quantize_weight(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(packed uint8, scale float32)` for a float weight under this layer's rule and granularity."""
        codes, scale = ternarize(weight, self.rule, self.granularity, self.group_size)
        return pack_codes(codes), scale

    @property
    def has_learned_scale(self) -> bool:
        """QAT with a trainable scale (see `enable_learned_scale`)."""
        return not self.is_packed and isinstance(getattr(self, "weight_scale", None), nn.Parameter)

    @torch.no_grad()
    def enable_learned_scale(self) -> nn.Parameter:
        """QAT only: make the scale a trainable parameter `weight_scale`, initialised with the rule's scale of
        the current latent weight; the rule then only picks the codes. Idempotent. (Not created at load time:
        a checkpoint has no such tensor, and transformers would leave a missing parameter uninitialised.)"""
        if self.is_packed:
            raise ValueError("enable_learned_scale needs a QAT layer (TernaryConfig(mode='qat')); this one is packed.")
        if not self.has_learned_scale:
            _, scale = ternarize(self.weight, self.rule, self.granularity, self.group_size)
            self.weight_scale = nn.Parameter(scale.to(self.weight.dtype))
        return self.weight_scale

    def codes_and_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ternary codes (int8 [out, in]) and scale, from the buffers or the latent weight."""
        if self.is_packed:
            return unpack_codes(self.weight, self.out_features), self.weight_scale
        codes, scale = ternarize(self.weight, self.rule, self.granularity, self.group_size)
        return (codes, self.weight_scale.detach()) if self.has_learned_scale else (codes, scale)

    def packed_state(self) -> dict[str, torch.Tensor]:
        """`{"weight": packed, "weight_scale": scale}` as saved on disk, in either mode."""
        if self.is_packed:
            return {"weight": self.weight, "weight_scale": self.weight_scale}
        codes, scale = self.codes_and_scale()
        return {"weight": pack_codes(codes), "weight_scale": scale.to(self.weight.dtype)}

    def stored_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors a saved checkpoint holds for this layer."""
        return expected_packed_shapes(self.out_features, self.in_features, self.granularity, self.group_size)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dense `codes * scale` weight `[out, in]` (what the layer computes with)."""
        codes, scale = self.codes_and_scale()
        dtype = dtype or (self.weight_scale.dtype if self.is_packed else self.weight.dtype)
        return dequantize(codes, scale, self.granularity, dtype=dtype)

    @torch.no_grad()
    def to_inference(self) -> "TernaryLinear":
        """Freeze a QAT layer into packed buffers (in place); no-op in inference mode."""
        if self.is_packed:
            return self
        latent = self.weight
        codes, scale = self.codes_and_scale()
        packed = pack_codes(codes)
        del self.weight
        if self.has_learned_scale:
            del self.weight_scale
        self.mode = "inference"
        self.register_buffer("weight", packed)
        self.register_buffer("weight_scale", scale.to(latent.dtype))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_packed:
            return ternary_linear(self, x)
        # the weight comes out in the autocast dtype when autocast is on: F.linear would cast it anyway
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        weight = fake_ternarize(self.weight, self.rule, self.granularity, self.group_size, self.quant_strength,
                                scale=self.weight_scale if self.has_learned_scale else None, dtype=dtype)
        x = fake_quantize_activations(x, self.activation_quant, self.activation_outliers, self.quant_strength)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"granularity={self.granularity}, rule={self.rule}, mode={self.mode}, "
            f"activation_quant={self.activation_quant}, activation_outliers={self.activation_outliers}, "
            f"backend={self.backend}"
            + (", learned_scale=True" if self.has_learned_scale else "")
        )
