"""The packed 2-bit storage format: the single source of truth for how codes are laid out on disk.

Codes in {-1, 0, +1} are stored as `code + 1` in {0, 1, 2}, four per uint8, along the output
dimension in blocks: with `R = ceil(out / 4)`, byte `[r, j]` holds rows `r, R + r, 2R + r, 3R + r`
of column `j` in bits 0-1, 2-3, 4-5, 6-7. Missing rows (out not divisible by 4) are padded with
code 0. Block (rather than interleaved) order makes unpacking four shifts and a concatenation.
"""

from __future__ import annotations

import torch

CODES_PER_BYTE = 4


def packed_rows(out_features: int) -> int:
    return -(-out_features // CODES_PER_BYTE)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Pack int codes `[out, in]` in {-1, 0, 1} into uint8 `[ceil(out/4), in]`. Does not modify `codes`."""
    if codes.ndim != 2:
        raise ValueError(f"pack_codes expects a 2-D tensor, got shape {tuple(codes.shape)}")
    out_features, in_features = codes.shape
    rows = packed_rows(out_features)
    stored = torch.ones(CODES_PER_BYTE * rows, in_features, dtype=torch.uint8, device=codes.device)
    stored[:out_features] = (codes.to(torch.int16) + 1).to(torch.uint8)
    if int(stored.max()) > 2:
        raise ValueError("pack_codes: codes must be in {-1, 0, +1}")
    stored = stored.reshape(CODES_PER_BYTE, rows, in_features)
    return stored[0] | (stored[1] << 2) | (stored[2] << 4) | (stored[3] << 6)


def unpack_codes(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """Inverse of `pack_codes`: uint8 `[ceil(out/4), in]` -> int8 codes `[out, in]`."""
    if packed.dtype != torch.uint8 or packed.ndim != 2:
        raise ValueError(f"unpack_codes expects a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if packed.shape[0] != packed_rows(out_features):
        raise ValueError(
            f"unpack_codes: {packed.shape[0]} packed rows cannot hold {out_features} output rows "
            f"(expected {packed_rows(out_features)})"
        )
    parts = [(packed >> shift) & 3 for shift in (0, 2, 4, 6)]
    return (torch.cat(parts, dim=0)[:out_features].to(torch.int8) - 1)
