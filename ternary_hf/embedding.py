"""`QuantizedEmbedding`: compact stores for embedding tables (`TernaryConfig(embedding_dtype=...)`).

In a small encoder the embedding table, not the linear layers, dominates the checkpoint (all-MiniLM-L6-v2:
46.9 MB of embeddings vs 21.2 MB of linear weights). This module is the single source of truth for the
stored formats of a `[num_embeddings, dim]` table; every format keeps each row's bytes (and scales)
together, so a lookup gathers only the requested rows and no float copy of the table is ever built:

  int8     weight int8  [num, dim]                 weight_scale float [num]               (absmax/127 per row)
  int4     weight uint8 [num, dim/2]               weight_scale float [num, dim/group]    (absmax/7 per group)
           two codes per byte: column 2j in the low nibble, 2j+1 in the high nibble, stored as code + 8
  ternary  weight uint8 [num, ceil(dim/4)]         weight_scale float [num]               (TernaryConfig.rule)
           `packing.pack_codes` of the transposed codes: byte [r, j] holds columns j, R+j, 2R+j, 3R+j of row r

Scales are in the dtype the model was loaded with. Zero rows (padding) stay exactly zero in every format.
Because rows are independent, slicing rows of a stored table (vocabulary pruning) is exact.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .packing import pack_codes, packed_rows, unpack_codes
from .ternarize import ternarize

# TernaryConfig.embedding_dtype values that store a table quantized, and the safetensors dtype of its codes.
QUANTIZED_EMBEDDING_DTYPES = ("int8", "int4", "ternary")
STORED_CODE_DTYPE = {"int8": "I8", "int4": "U8", "ternary": "U8"}
BITS_PER_VALUE = {"float": 32, "int8": 8, "int4": 4, "ternary": 2}
_INT4_MAX = 7


def check_embedding_layout(kind: str, embedding_dim: int, group_size: int, name: str = "embedding table") -> None:
    """Raise `ValueError` naming the table when `kind` cannot store rows of `embedding_dim` values."""
    if kind not in QUANTIZED_EMBEDDING_DTYPES:
        raise ValueError(f"{name}: embedding dtype {kind!r} is invalid; allowed: {', '.join(QUANTIZED_EMBEDDING_DTYPES)}.")
    if kind == "int4":
        if group_size < 2 or group_size % 2 or embedding_dim % group_size:
            raise ValueError(
                f"{name}: embedding_dim={embedding_dim} is not divisible by TernaryConfig.embedding_group_size="
                f"{group_size} (which must also be even for 4-bit packing); pick an even group size that divides it."
            )


def stored_shapes(kind: str, num_embeddings: int, embedding_dim: int, group_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors a checkpoint holds for a table stored as `kind`."""
    if kind == "int8":
        return {"weight": (num_embeddings, embedding_dim), "weight_scale": (num_embeddings,)}
    if kind == "int4":
        return {"weight": (num_embeddings, embedding_dim // 2), "weight_scale": (num_embeddings, embedding_dim // group_size)}
    if kind == "ternary":
        return {"weight": (num_embeddings, packed_rows(embedding_dim)), "weight_scale": (num_embeddings,)}
    raise ValueError(f"embedding dtype {kind!r} is invalid; allowed: {', '.join(QUANTIZED_EMBEDDING_DTYPES)}.")


def quantize_rows(weight: torch.Tensor, kind: str, group_size: int = 64, rule: str = "twn") -> tuple[torch.Tensor, torch.Tensor]:
    """`(stored codes, float32 scales)` of a float table `[num, dim]` in format `kind` (see module docstring)."""
    w = weight.detach().float()
    num, dim = w.shape
    check_embedding_layout(kind, dim, group_size)
    if kind == "int8":
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale
    if kind == "int4":
        g = w.reshape(num, dim // group_size, group_size)
        scale = g.abs().amax(dim=-1).clamp(min=1e-12) / _INT4_MAX
        codes = (torch.round(g / scale[..., None]).clamp(-_INT4_MAX, _INT4_MAX) + 8).to(torch.uint8).reshape(num, dim)
        return codes[:, 0::2] | (codes[:, 1::2] << 4), scale
    codes, scale = ternarize(w, rule, "per_channel")
    return pack_codes(codes.t()).t().contiguous(), scale


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, kind: str, embedding_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Float rows `[..., dim]` from stored rows `codes [..., stored]` and their scales (same leading shape)."""
    lead = codes.shape[:-1]
    if kind == "int8":
        return codes.to(dtype) * scale.to(dtype).unsqueeze(-1)
    if kind == "int4":
        flat = codes.reshape(-1, codes.shape[-1])
        values = torch.stack(((flat & 15), (flat >> 4)), dim=-1).reshape(flat.shape[0], embedding_dim)
        values = values.to(torch.int8) - 8
        n_groups = scale.shape[-1]
        grouped = values.to(dtype).reshape(-1, n_groups, embedding_dim // n_groups)
        grouped = grouped * scale.to(dtype).reshape(-1, n_groups, 1)
        return grouped.reshape(*lead, embedding_dim)
    flat = codes.reshape(-1, codes.shape[-1])
    values = unpack_codes(flat.t().contiguous(), embedding_dim).t()
    return (values.to(dtype) * scale.to(dtype).reshape(-1, 1)).reshape(*lead, embedding_dim)


class QuantizedEmbedding(nn.Module):
    """An embedding table stored as int8 rows, 4-bit groups or ternary rows, each with its scales (inference
    only). A lookup dequantizes only the rows it returns."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        kind: str = "int8",
        group_size: int = 64,
        rule: str = "twn",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_embedding_layout(kind, embedding_dim, group_size)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.kind = kind
        self.group_size = group_size
        self.rule = rule
        shapes = stored_shapes(kind, num_embeddings, embedding_dim, group_size)
        code_dtype = torch.int8 if kind == "int8" else torch.uint8
        self.register_buffer("weight", torch.empty(shapes["weight"], dtype=code_dtype, device=device))
        self.register_buffer("weight_scale", torch.empty(shapes["weight_scale"], dtype=dtype or torch.get_default_dtype(),
                                                         device=device))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, kind: str, group_size: int = 64, rule: str = "twn") -> "QuantizedEmbedding":
        """Quantize a materialized `nn.Embedding`."""
        w = embedding.weight.detach()
        table = make_embedding(kind, embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx,
                               group_size=group_size, rule=rule, dtype=w.dtype, device=w.device)
        codes, scale = table.quantize_weight(w)
        table.weight, table.weight_scale = codes, scale.to(w.dtype)
        return table

    def quantize_weight(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(stored codes, float32 scales)` of a float table in this module's format."""
        return quantize_rows(weight, self.kind, self.group_size, self.rule)

    def stored_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors a saved checkpoint holds for this table."""
        return stored_shapes(self.kind, self.num_embeddings, self.embedding_dim, self.group_size)

    @property
    def stored_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size() + self.weight_scale.numel() * self.weight_scale.element_size()

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The whole float table (for `dequantize()` and export; a lookup never calls this)."""
        return dequantize_rows(self.weight, self.weight_scale, self.kind, self.embedding_dim, dtype or self.weight_scale.dtype)

    @torch.no_grad()
    def select_rows(self, ids: torch.Tensor) -> "QuantizedEmbedding":
        """A table holding only rows `ids` (in that order): exact, since rows are stored independently."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.weight.device)
        padding_idx = None
        if self.padding_idx is not None:
            hit = (ids == self.padding_idx).nonzero()
            padding_idx = int(hit[0]) if hit.numel() else None
        table = make_embedding(self.kind, int(ids.numel()), self.embedding_dim, padding_idx, group_size=self.group_size,
                               rule=self.rule, dtype=self.weight_scale.dtype, device="meta")
        table.weight, table.weight_scale = self.weight[ids].clone(), self.weight_scale[ids].clone()
        return table

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input_ids, self.weight)
        scales = self.weight_scale[input_ids]
        return dequantize_rows(rows, scales, self.kind, self.embedding_dim, self.weight_scale.dtype)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.kind == "int4" else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, {self.kind}{group}"


class Int8Embedding(QuantizedEmbedding):
    """An embedding table stored as int8 rows times a per-row scale (`QuantizedEmbedding(kind="int8")`)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx, kind="int8", dtype=dtype, device=device)

    @staticmethod
    def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(int8 rows, float32 per-row scale)`: symmetric absmax, so zero rows (padding) stay exactly zero."""
        return quantize_rows(weight, "int8")


def make_embedding(kind: str, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                   group_size: int = 64, rule: str = "twn", dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> QuantizedEmbedding:
    """The module storing a table as `kind` (an `Int8Embedding` for int8, for compatibility)."""
    if kind == "int8":
        return Int8Embedding(num_embeddings, embedding_dim, padding_idx, dtype=dtype, device=device)
    return QuantizedEmbedding(num_embeddings, embedding_dim, padding_idx, kind=kind, group_size=group_size, rule=rule,
                              dtype=dtype, device=device)
