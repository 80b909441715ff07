"""The per-token int8 activations type, shared by the quantization definition (`actquant.py`) and the
compiled kernels (`native.py`) without either importing the other's module."""

from __future__ import annotations

from typing import NamedTuple

import torch


class TokenQuant(NamedTuple):
    """Per-token int8 activations of a `[..., K]` input."""

    q: torch.Tensor  # int8 [..., K], 0 at the outlier positions
    scale: torch.Tensor  # float32 [..., 1]
    outlier_index: torch.Tensor | None  # int64 [..., n] (None when n = 0)
    outlier_value: torch.Tensor | None  # float32 [..., n]
