"""`footprint`: where the bytes of a ternary model go, and how that compares to its fp32 checkpoint.

Parts reported: packed linear weights, scales (of linears and quantized tables), embeddings (split by
storage format: float / int8 / int4 / ternary), other tensors, sentence-transformers head modules (e.g. a
PCA `Dense`), plus the vocabulary kept by pruning and the output dimension. `fp32_bytes` is the fp32
checkpoint the model replaces: for a pruned vocabulary it counts the *original* table, so the ratio is the
compression against the source model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from .checkpoint import read_checkpoint_index
from .embedding import BITS_PER_VALUE, QuantizedEmbedding
from .integration import ternary_modules
from .packing import packed_rows

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_TABLE_ORDER = ("float", "int8", "int4", "ternary")


@dataclass
class Footprint:
    """Bytes per component of a model's weights (as stored), and the fp32 checkpoint they replace."""

    packed_weights: int
    scales: int
    embeddings: int
    other: int
    fp32_bytes: int
    file_bytes: int | None = None  # size of the .safetensors files on disk, when measured from a path
    # embedding tables by storage format, codes + their scales: {"float": b, "int8": b, "int4": b, "ternary": b}
    embedding_tables: dict[str, int] = field(default_factory=dict)
    heads: int = 0  # sentence-transformers modules after the encoder (e.g. a PCA Dense layer)
    vocab_size: int | None = None
    original_vocab_size: int | None = None  # set when the vocabulary was pruned
    output_dim: int | None = None
    hidden_size: int | None = None

    @property
    def total(self) -> int:
        return self.packed_weights + self.scales + self.embeddings + self.other + self.heads

    @property
    def ratio(self) -> float:
        """Stored bytes / fp32 bytes (0.25 would be a 4x smaller model)."""
        return self.total / self.fp32_bytes if self.fp32_bytes else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "ratio": self.ratio}

    def to_markdown(self) -> str:
        mb = lambda b: f"{b / 2**20:.2f} MiB"  # noqa: E731
        rows = [("packed linear weights (2-bit)", self.packed_weights), ("scales", self.scales),
                ("embeddings", self.embeddings)]
        rows += [(f"- tables stored {kind} (with their scales)", self.embedding_tables[kind])
                 for kind in _TABLE_ORDER if self.embedding_tables.get(kind)]
        rows.append(("other (LayerNorm, biases, fp layers)", self.other))
        if self.heads:
            rows.append(("sentence-transformers head modules (e.g. PCA Dense)", self.heads))
        rows += [("**total**", self.total), ("fp32 checkpoint", self.fp32_bytes)]
        lines = ["| component | bytes | size |", "|---|---:|---:|"]
        lines += [f"| {name} | {b:,} | {mb(b)} |" for name, b in rows]
        lines.append(f"| **ratio to fp32** | | **{self.ratio:.3f}x** |")
        if self.original_vocab_size:
            lines.append(f"| vocabulary (pruned) | {self.vocab_size:,} of {self.original_vocab_size:,} tokens | |")
        elif self.vocab_size:
            lines.append(f"| vocabulary | {self.vocab_size:,} tokens | |")
        if self.output_dim:
            of = f" (reduced from {self.hidden_size})" if self.hidden_size and self.hidden_size != self.output_dim else ""
            lines.append(f"| output dimension | {self.output_dim}{of} | |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _classify(name: str, is_packed: bool, is_scale: bool) -> str:
    if is_packed:
        return "packed_weights"
    if is_scale:
        return "scales"
    return "embeddings" if "embeddings" in name else "other"


def _vocab_fields(config: dict) -> dict:
    record = config.get("ternary_hf_vocabulary") or {}
    return {"vocab_size": config.get("vocab_size"), "original_vocab_size": record.get("original_vocab_size"),
            "hidden_size": config.get("hidden_size")}


def _fp32_rows(rows: int, vocab: dict) -> int:
    """Rows of the fp32 table a stored table replaces (the original vocabulary for a pruned one)."""
    if vocab.get("original_vocab_size") and rows == vocab.get("vocab_size"):
        return vocab["original_vocab_size"]
    return rows


def _from_model(model: nn.Module) -> Footprint:
    """Bytes as `save_pretrained` would store them."""
    from sentence_transformers import SentenceTransformer

    if isinstance(model, SentenceTransformer):
        encoder = model[0].auto_model
        fp = _from_model(encoder)
        head_modules = [m for m in list(model)[1:]]
        fp.heads = sum(t.numel() * t.element_size() for m in head_modules for t in m.state_dict().values())
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        fp.output_dim = get_dim()
        return fp
    sizes = dict(packed_weights=0, scales=0, embeddings=0, other=0)
    tables: dict[str, int] = {}
    fp32 = 0
    config = model.config.to_dict() if hasattr(getattr(model, "config", None), "to_dict") else {}
    vocab = _vocab_fields(config)
    layers = dict(ternary_modules(model))
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedEmbedding)}
    float_tables = {n: m for n, m in model.named_modules() if type(m) is nn.Embedding}
    seen: set[int] = set()
    # The state dict is what gets saved: persistent buffers only, tied weights once.
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen and t.numel():
            continue
        seen.add(t.data_ptr())
        owner, _, leaf = name.rpartition(".")
        nbytes = t.numel() * t.element_size()
        layer = layers.get(owner)
        if layer is not None and leaf in ("weight", "weight_scale"):
            if leaf == "weight":
                sizes["packed_weights"] += packed_rows(layer.out_features) * layer.in_features
                fp32 += layer.out_features * layer.in_features * 4
                if not layer.is_packed and not layer.has_learned_scale:  # QAT: the scale is computed on save
                    sizes["scales"] += layer.packed_state()["weight_scale"].numel() * t.element_size()
            else:
                sizes["scales"] += nbytes
            continue
        table = quantized.get(owner)
        if table is not None and leaf in ("weight", "weight_scale"):
            sizes["scales" if leaf == "weight_scale" else "embeddings"] += nbytes
            tables[table.kind] = tables.get(table.kind, 0) + nbytes
            if leaf == "weight":
                fp32 += _fp32_rows(table.num_embeddings, vocab) * table.embedding_dim * 4
            continue
        if owner in float_tables and leaf == "weight":
            tables["float"] = tables.get("float", 0) + nbytes
            sizes["embeddings"] += nbytes
            fp32 += _fp32_rows(t.shape[0], vocab) * t.shape[1] * 4
            continue
        sizes[_classify(name, False, False)] += nbytes
        fp32 += t.numel() * 4
    return Footprint(**sizes, fp32_bytes=fp32, embedding_tables=tables, **vocab)


def _safetensors_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No .safetensors file in {path}; footprint() needs a saved model directory.")
    return files


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _heads(root: Path) -> tuple[int, int | None]:
    """Bytes of the sentence-transformers modules stored in subfolders, and the output dimension."""
    modules = _read_json(root / "modules.json")
    if not isinstance(modules, list):
        return 0, None
    head_bytes, out_dim = 0, None
    for entry in modules:
        sub = entry.get("path") or ""
        if not sub:
            continue
        folder = root / sub
        head_bytes += sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        cfg = _read_json(folder / "config.json")
        out_dim = cfg.get("out_features", cfg.get("embedding_dimension", cfg.get("word_embedding_dimension", out_dim)))
    return head_bytes, out_dim


def _from_path(path: Path) -> Footprint:
    sizes = dict(packed_weights=0, scales=0, embeddings=0, other=0)
    tables: dict[str, int] = {}
    fp32 = 0
    files = _safetensors_files(path)
    root = path if path.is_dir() else path.parent
    vocab = _vocab_fields(_read_json(root / "config.json"))
    index = read_checkpoint_index(files)
    embedding_kinds = {m: e.get("dtype") for m, e in index.embedding_tables.items()}
    for key, info in index.tensors.items():
        if key.endswith(".weight_scale") and index.tensors.get(key[: -len("_scale")], info).dtype == "I8":
            embedding_kinds.setdefault(key[: -len(".weight_scale")], "int8")  # checkpoints before the metadata
    for key, info in index.tensors.items():
        module, _, leaf = key.rpartition(".")
        numel = math.prod(info.shape)
        nbytes = numel * _DTYPE_BYTES.get(info.dtype, 4)
        kind = embedding_kinds.get(module)
        if kind is not None and leaf in ("weight", "weight_scale"):
            sizes["scales" if leaf == "weight_scale" else "embeddings"] += nbytes
            tables[kind] = tables.get(kind, 0) + nbytes
            if leaf == "weight":
                entry = index.embedding_tables.get(module, {})
                rows, dim = entry.get("shape") or (info.shape[0], info.shape[1] * 8 // BITS_PER_VALUE[kind])
                fp32 += _fp32_rows(rows, vocab) * dim * 4
            continue
        is_packed = info.dtype == "U8" and leaf == "weight"
        is_scale = leaf == "weight_scale"
        sizes[_classify(key, is_packed, is_scale)] += nbytes
        if is_packed:
            out_in = index.layer_shapes.get(module)
            fp32 += (math.prod(out_in) if out_in else info.shape[0] * 4 * info.shape[1]) * 4
        elif not is_scale:
            if "embeddings" in key and leaf == "weight" and len(info.shape) == 2:  # a float table
                tables["float"] = tables.get("float", 0) + nbytes
                fp32 += _fp32_rows(info.shape[0], vocab) * info.shape[1] * 4
            else:
                fp32 += numel * 4
    heads, out_dim = _heads(root) if path.is_dir() else (0, None)
    return Footprint(**sizes, fp32_bytes=fp32, file_bytes=sum(f.stat().st_size for f in files), embedding_tables=tables,
                     heads=heads, output_dim=out_dim, **vocab)


def footprint(model_or_path: nn.Module | str | os.PathLike) -> Footprint:
    """Bytes per component (packed linear weights, scales, embeddings by format, other, head modules), the
    ratio to fp32, the vocabulary kept and the output dimension.

    Accepts a loaded model (transformers or SentenceTransformer) or a saved directory / .safetensors file.
    """
    if isinstance(model_or_path, nn.Module):
        return _from_model(model_or_path)
    path = Path(model_or_path)
    if not path.exists():
        raise FileNotFoundError(f"footprint(): {path} does not exist.")
    return _from_path(path)
