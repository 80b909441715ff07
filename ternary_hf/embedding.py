"""`Int8Embedding`: an optional int8 store for embedding tables (`TernaryConfig(embedding_dtype="int8")`).

In a small encoder the embedding table, not the linear layers, dominates the checkpoint (all-MiniLM-L6-v2:
46.9 MB of embeddings vs 21.2 MB of linear weights). Rows are stored as int8 with one absmax scale per row:
  weight        int8 [num_embeddings, dim]
  weight_scale  float [num_embeddings], in the dtype the model was loaded with
A lookup gathers the int8 rows and their scales, so no float copy of the table is ever built.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows times a per-row scale (inference only)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(num_embeddings, dtype=dtype or torch.get_default_dtype(),
                                                         device=device))

    @staticmethod
    def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(int8 rows, float32 per-row scale)`: symmetric absmax, so zero rows (padding) stay exactly zero."""
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale

    def stored_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors a saved checkpoint holds for this table."""
        return {"weight": (self.num_embeddings, self.embedding_dim), "weight_scale": (self.num_embeddings,)}

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.weight_scale.dtype
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input_ids, self.weight)
        return rows.to(self.weight_scale.dtype) * self.weight_scale[input_ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, int8"
