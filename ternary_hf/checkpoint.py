"""What a saved checkpoint holds, read from file headers only (no tensor data): tensor names, dtypes and
shapes, the per-layer shapes ternary-hf records in the safetensors metadata, and the packed shapes a
layer must have. Used by loading (selection, shape checks), `footprint` and the Hub pre-push checks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from .packing import packed_rows
from .ternarize import scale_shape

# safetensors metadata key holding `{"version": ..., "shapes": {module: [out, in]}, "embeddings": {module: {...}}}`
# of the ternary layers and the quantized embedding tables.
METADATA_KEY = "ternary_hf"
# An empty tensor saved in every packed checkpoint. Loaded without the plugin, transformers lists it in its
# load report (UNEXPECTED) right above the confusing shape-mismatch lines, so the fix is on screen.
HINT_KEY = "TERNARY_HF_CHECKPOINT.pip_install_ternary-hf.then_import_ternary_hf_before_from_pretrained"


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says about one tensor, read from the file header."""

    dtype: str  # safetensors dtype name, e.g. "F32", "U8"
    shape: tuple[int, ...]
    file: str


@dataclass
class CheckpointIndex:
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    layer_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # ternary layers: [out, in]
    # quantized embedding tables: {module: {"dtype": "int8"|"int4"|"ternary", "shape": [num, dim], ...}}
    embedding_tables: dict[str, dict] = field(default_factory=dict)


def read_checkpoint_index(checkpoint_files) -> CheckpointIndex:
    """Read the headers of safetensors (or legacy pickle) checkpoint files.

    Raises `ValueError` naming the file when a header cannot be read (truncated or corrupt file).
    """
    index = CheckpointIndex()
    for path in checkpoint_files:
        path = os.fspath(path)
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(path, framework="pt") as f:
                    meta = f.metadata() or {}
                    if METADATA_KEY in meta:
                        record = json.loads(meta[METADATA_KEY])
                        index.layer_shapes.update({k: tuple(v) for k, v in record.get("shapes", {}).items()})
                        index.embedding_tables.update(record.get("embeddings", {}))
                    for key in f.keys():
                        sl = f.get_slice(key)
                        index.tensors[key] = TensorInfo(sl.get_dtype(), tuple(sl.get_shape()), path)
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise ValueError(
                    f"Cannot read checkpoint file {path}: {e}. The file is truncated or corrupt; "
                    "re-download or re-save the model."
                ) from e
        else:  # legacy pickle checkpoint: mmap so only the headers are touched
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            for key, t in state.items():
                dtype = "U8" if t.dtype == torch.uint8 else "F"
                index.tensors[key] = TensorInfo(dtype, tuple(t.shape), path)
    return index


def expected_packed_shapes(
    out_features: int, in_features: int, granularity: str, group_size: int
) -> dict[str, tuple[int, ...]]:
    """The stored shapes of a ternary layer's `weight` (packed codes) and `weight_scale`."""
    return {
        "weight": (packed_rows(out_features), in_features),
        "weight_scale": scale_shape(out_features, in_features, granularity, group_size),
    }
