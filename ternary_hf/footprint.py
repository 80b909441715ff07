"""`footprint`: where the bytes of a ternary model go, and how that compares to its fp32 checkpoint."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from .checkpoint import read_checkpoint_index
from .integration import ternary_modules
from .packing import packed_rows

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass
class Footprint:
    """Bytes per component of a model's weights (as stored), and the fp32 checkpoint they replace."""

    packed_weights: int
    scales: int
    embeddings: int
    other: int
    fp32_bytes: int
    file_bytes: int | None = None  # size of the .safetensors files on disk, when measured from a path

    @property
    def total(self) -> int:
        return self.packed_weights + self.scales + self.embeddings + self.other

    @property
    def ratio(self) -> float:
        """Stored bytes / fp32 bytes (0.25 would be a 4x smaller model)."""
        return self.total / self.fp32_bytes if self.fp32_bytes else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "ratio": self.ratio}

    def to_markdown(self) -> str:
        mb = lambda b: f"{b / 2**20:.2f} MiB"  # noqa: E731
        rows = [
            ("packed linear weights (2-bit)", self.packed_weights),
            ("scales", self.scales),
            ("embeddings", self.embeddings),
            ("other (LayerNorm, biases, fp layers)", self.other),
            ("**total**", self.total),
            ("fp32 checkpoint", self.fp32_bytes),
        ]
        lines = ["| component | bytes | size |", "|---|---:|---:|"]
        lines += [f"| {name} | {b:,} | {mb(b)} |" for name, b in rows]
        lines.append(f"| **ratio to fp32** | | **{self.ratio:.3f}x** |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _classify(name: str, is_packed: bool, is_scale: bool) -> str:
    if is_packed:
        return "packed_weights"
    if is_scale:
        return "scales"
    return "embeddings" if "embeddings" in name else "other"


def _from_model(model: nn.Module) -> Footprint:
    """Bytes as `save_pretrained` would store them."""
    sizes = dict(packed_weights=0, scales=0, embeddings=0, other=0)
    fp32 = 0
    layers = dict(ternary_modules(model))
    seen: set[int] = set()
    # The state dict is what gets saved: persistent buffers only, tied weights once.
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen and t.numel():
            continue
        seen.add(t.data_ptr())
        owner, _, leaf = name.rpartition(".")
        layer = layers.get(owner)
        if layer is not None and leaf in ("weight", "weight_scale"):
            if leaf == "weight":
                sizes["packed_weights"] += packed_rows(layer.out_features) * layer.in_features
                fp32 += layer.out_features * layer.in_features * 4
                if not layer.is_packed and not layer.has_learned_scale:  # QAT: the scale is computed on save
                    sizes["scales"] += layer.packed_state()["weight_scale"].numel() * t.element_size()
            else:
                sizes["scales"] += t.numel() * t.element_size()
            continue
        if leaf == "weight_scale":  # e.g. an Int8Embedding's row scales: no fp32 counterpart
            sizes["scales"] += t.numel() * t.element_size()
            continue
        sizes[_classify(name, False, False)] += t.numel() * t.element_size()
        fp32 += t.numel() * 4
    return Footprint(**sizes, fp32_bytes=fp32)


def _safetensors_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No .safetensors file in {path}; footprint() needs a saved model directory.")
    return files


def _from_path(path: Path) -> Footprint:
    sizes = dict(packed_weights=0, scales=0, embeddings=0, other=0)
    fp32 = 0
    files = _safetensors_files(path)
    index = read_checkpoint_index(files)
    for key, info in index.tensors.items():
        numel = math.prod(info.shape)
        is_packed = info.dtype == "U8" and key.endswith(".weight")
        is_scale = key.endswith(".weight_scale")
        sizes[_classify(key, is_packed, is_scale)] += numel * _DTYPE_BYTES.get(info.dtype, 4)
        if is_packed:
            out_in = index.layer_shapes.get(key.rpartition(".")[0])
            fp32 += (math.prod(out_in) if out_in else info.shape[0] * 4 * info.shape[1]) * 4
        elif not is_scale:
            fp32 += numel * 4
    return Footprint(**sizes, fp32_bytes=fp32, file_bytes=sum(f.stat().st_size for f in files))


def footprint(model_or_path: nn.Module | str | os.PathLike) -> Footprint:
    """Bytes per component (packed linear weights, scales, embeddings, other) and the ratio to fp32.

    Accepts a loaded model (transformers or SentenceTransformer) or a saved directory / .safetensors file.
    """
    if isinstance(model_or_path, nn.Module):
        return _from_model(model_or_path)
    path = Path(model_or_path)
    if not path.exists():
        raise FileNotFoundError(f"footprint(): {path} does not exist.")
    return _from_path(path)
