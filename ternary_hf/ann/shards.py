"""Embedding shards: a corpus's vectors as parquet files plus a checksummed manifest.

Layout of a shard folder (written by :func:`encode_to_shards` in one process or by
:func:`ternary_hf.ann.ray_encode.encode_with_ray` on Ray; the same bytes either way)::

    manifest.json              format, dim, count, model id + fingerprint, per shard: file, rows, bytes, SHA-256
    shard-00000.parquet        columns id (string), embedding (fixed_size_list<float32>[dim]); corpus order
    shard-00001.parquet        ...

Plain parquet, readable by pyarrow, pandas, DuckDB, Spark or LanceDB without ternary-hf. The folder is written
through :func:`ternary_hf.fileio.staged_directory`: an interrupted run leaves no folder (or the previous one), never
a folder whose manifest lists shards that are not there. :class:`EmbeddingShards` opens a folder, checks every file
against the manifest, and streams shards or samples from it; :func:`check_compatible` refuses to combine shard
folders of different dimensions or models.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ternary_hf.ann.fingerprint import ModelFingerprint, file_sha256
from ternary_hf.fileio import atomic_write_json, staged_directory

MANIFEST = "manifest.json"
FORMAT = "ternary-hf-embeddings"
VERSION = 1
ROW_GROUP = 8192


class ShardError(ValueError):
    """A shard folder is incomplete, corrupt, or does not fit with another one."""


def check_output_free(out: str | os.PathLike, overwrite: bool, what: str = "output") -> Path:
    """Refuse an existing ``out`` before any work is done (unless ``overwrite``); an empty folder counts as free."""
    out = Path(out).expanduser()
    if (out.is_symlink() or out.exists()) and not overwrite:
        if not (out.is_dir() and not any(out.iterdir())):
            raise FileExistsError(f"{what} {out} already exists; choose another path or pass --overwrite (overwrite=True)")
    return out


def embeddings_to_arrow(emb: np.ndarray):
    """A float32 ``(n, dim)`` array as an Arrow ``fixed_size_list<float32>[dim]`` column (no copy)."""
    import pyarrow as pa

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), emb.shape[1])


def arrow_to_embeddings(column) -> np.ndarray:
    """The inverse of :func:`embeddings_to_arrow` for a (chunked) column: float32 ``(n, dim)``."""
    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(len(column), column.type.list_size), dtype=np.float32)


def read_manifest(path: Path, error: type[ValueError], expect: dict[str, Any], remedy: str) -> dict[str, Any]:
    """Read a JSON manifest and check its format markers (``expect``); ``error`` names the file and ``remedy``."""
    if not path.is_file():
        raise error(f"{path.parent} has no {path.name}: not a ternary-hf folder of this kind (or an interrupted write)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc}); {remedy}") from exc
    if any(manifest.get(k) != v for k, v in expect.items()):
        raise error(f"{path}: not a {' '.join(str(v) for v in expect.values())} manifest; {remedy}")
    return manifest


def _schema(dim: int):
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])


class ShardWriter:
    """Write ``(ids, embeddings)`` chunks, in order, into shards of ``rows_per_shard`` rows inside ``folder``.

    ``folder`` is a staging folder (see :func:`encode_to_shards`); :meth:`close` finishes the last shard, hashes
    every shard and writes the manifest. Memory: one row group (<= 8192 rows) is buffered at a time.
    """

    def __init__(self, folder: Path, rows_per_shard: int = 100_000, metadata: dict[str, Any] | None = None):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.folder = Path(folder)
        self.rows_per_shard = rows_per_shard
        self.metadata = dict(metadata or {})
        self.dim: int | None = None
        self.count = 0
        self.shards: list[dict[str, Any]] = []
        self._writer = None
        self._rows_in_shard = 0
        self._pending: list[tuple[Sequence[str], np.ndarray]] = []
        self._pending_rows = 0
        self._started = time.perf_counter()

    def add(self, ids: Sequence[str], embeddings: np.ndarray) -> None:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(ids):
            raise ValueError(f"{len(ids)} ids but embeddings of shape {emb.shape}")
        if self.dim is None:
            self.dim = emb.shape[1]
        elif emb.shape[1] != self.dim:
            raise ShardError(f"embedding dimension changed from {self.dim} to {emb.shape[1]} mid-corpus")
        start = 0
        while start < len(emb):
            if self._writer is None:
                self._open_shard()
            # row groups of exactly ROW_GROUP rows (or up to the shard's end), whatever chunks arrive: the same
            # corpus gives the same bytes, encoded in one process or in Ray blocks of any size
            take = min(len(emb) - start, self.rows_per_shard - self._rows_in_shard - self._pending_rows,
                       ROW_GROUP - self._pending_rows)
            self._pending.append((ids[start : start + take], emb[start : start + take]))
            self._pending_rows += take
            self.count += take
            start += take
            if self._pending_rows == ROW_GROUP or self._rows_in_shard + self._pending_rows == self.rows_per_shard:
                self._flush()
            if self._rows_in_shard == self.rows_per_shard:
                self._close_shard()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        ids = [str(i) for part, _ in self._pending for i in part]
        table = pa.Table.from_arrays(
            [pa.array(ids, pa.string()), embeddings_to_arrow(np.concatenate([e for _, e in self._pending]))],
            schema=_schema(self.dim),
        )
        self._writer.write_table(table, row_group_size=ROW_GROUP)
        self._rows_in_shard += len(ids)
        self._pending, self._pending_rows = [], 0

    def _open_shard(self) -> None:
        import pyarrow.parquet as pq

        name = f"shard-{len(self.shards):05d}.parquet"
        # no compression: float embeddings do not compress, and readers can memory-map the pages
        self._writer = pq.ParquetWriter(str(self.folder / name), _schema(self.dim), compression="none")
        self.shards.append({"file": name, "rows": 0})
        self._rows_in_shard = 0

    def _close_shard(self) -> None:
        self._writer.close()
        self._writer = None
        entry = self.shards[-1]
        path = self.folder / entry["file"]
        entry.update(rows=self._rows_in_shard, bytes=path.stat().st_size, sha256=file_sha256(path))

    def close(self) -> dict[str, Any]:
        """Finish the last shard and write ``manifest.json``; returns the manifest."""
        if self._writer is not None:
            self._flush()
            self._close_shard()
        if not self.count:
            raise ValueError("the corpus is empty: nothing to encode")
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.dim,
            "count": self.count,
            **self.metadata,
            "seconds": round(time.perf_counter() - self._started, 3),
            "shards": self.shards,
        }
        atomic_write_json(self.folder / MANIFEST, manifest)
        return manifest


def write_shards(
    chunks: Iterable[tuple[Sequence[str], np.ndarray]],
    out: str | os.PathLike,
    *,
    rows_per_shard: int = 100_000,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> "EmbeddingShards":
    """Stream ``(ids, embeddings)`` chunks into a new shard folder ``out`` (published only when complete)."""
    out = check_output_free(out, overwrite, "shard folder")
    with staged_directory(out, overwrite=overwrite) as stage:
        writer = ShardWriter(stage, rows_per_shard, metadata)
        for ids, emb in chunks:
            writer.add(ids, emb)
        writer.close()
    return EmbeddingShards.open(out, verify=False)


def encode_to_shards(
    model: Any,
    corpus: Any,
    out: str | os.PathLike,
    *,
    model_id: str | None = None,
    model_fingerprint: ModelFingerprint | None = None,
    chunk_size: int = 1024,
    batch_size: int = 64,
    rows_per_shard: int = 100_000,
    normalize: bool = True,
    show_progress_bar: bool = True,
    overwrite: bool = False,
) -> "EmbeddingShards":
    """Encode a corpus in one process into a shard folder (the single-machine twin of ``encode_with_ray``).

    ``corpus``: anything :func:`~ternary_hf.ann.encode.read_corpus` accepts. With the same ``chunk_size`` and
    ``batch_size`` the vectors are the ones the Ray pipeline writes for a single-file corpus.
    """
    from ternary_hf.ann.encode import encode_chunks, read_corpus
    from ternary_hf.ann.fingerprint import fingerprint_of_model

    check_output_free(out, overwrite, "shard folder")
    if model_fingerprint is None:
        model_fingerprint = fingerprint_of_model(model)
    metadata = {
        "model_id": model_id,
        "model_fingerprint": model_fingerprint.to_dict() if model_fingerprint else None,
        "normalized": normalize,
        "encoder": {"engine": "single-process", "chunk_size": chunk_size, "batch_size": batch_size},
    }
    chunks = encode_chunks(model, read_corpus(corpus), chunk_size=chunk_size, batch_size=batch_size,
                           show_progress_bar=show_progress_bar, normalize=normalize)
    return write_shards(chunks, out, rows_per_shard=rows_per_shard, metadata=metadata, overwrite=overwrite)


@dataclass
class EmbeddingShards:
    """An opened shard folder: its manifest, checked against the files on disk."""

    folder: Path
    manifest: dict[str, Any]
    fingerprint: ModelFingerprint | None = field(default=None)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def model_id(self) -> str | None:
        return self.manifest.get("model_id")

    @property
    def files(self) -> list[Path]:
        return [self.folder / s["file"] for s in self.manifest["shards"]]

    @classmethod
    def open(cls, folder: str | os.PathLike, verify: bool = True) -> "EmbeddingShards":
        """Read ``folder/manifest.json`` and check every shard it lists exists with the recorded size (and, with
        ``verify``, SHA-256 and row count); :class:`ShardError` names the first one that does not."""
        folder = Path(folder)
        path = folder / MANIFEST
        manifest = read_manifest(path, ShardError, {"format": FORMAT, "version": VERSION}, "re-encode the corpus")
        shards = cls(folder, manifest, ModelFingerprint.from_dict(manifest.get("model_fingerprint")))
        if sum(s["rows"] for s in manifest["shards"]) != manifest["count"]:
            raise ShardError(f"{path}: shard rows do not add up to count={manifest['count']}")
        for entry in manifest["shards"]:
            shards._check_file(entry, verify)
        return shards

    def _check_file(self, entry: dict[str, Any], verify: bool) -> None:
        import pyarrow.parquet as pq

        path = self.folder / entry["file"]
        if not path.is_file():
            raise ShardError(f"{self.folder}/{MANIFEST} lists {entry['file']}, which is missing; re-encode the corpus")
        if path.stat().st_size != entry["bytes"]:
            raise ShardError(f"{path} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}: truncated or replaced")
        if verify:
            if file_sha256(path) != entry["sha256"]:
                raise ShardError(f"{path}: SHA-256 differs from the manifest (corrupt or replaced)")
            meta = pq.ParquetFile(path).metadata
            if meta.num_rows != entry["rows"]:
                raise ShardError(f"{path} holds {meta.num_rows} rows, the manifest says {entry['rows']}")

    def iter_shards(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """``(ids, float32 embeddings)`` of one shard at a time, in corpus order."""
        for path in self.files:
            ids, emb = read_shard(path)
            if emb.shape[1] != self.dim:
                raise ShardError(f"{path} holds {emb.shape[1]}-dimensional vectors, the manifest says {self.dim}")
            yield ids, emb

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` rows drawn uniformly without replacement across all shards (every shard read once)."""
        n = min(n, self.count)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(self.count, n, replace=False))
        out, start = [], 0
        for entry, path in zip(self.manifest["shards"], self.files):
            stop = start + entry["rows"]
            local = rows[(rows >= start) & (rows < stop)] - start
            if len(local):
                out.append(read_shard(path)[1][local])
            start = stop
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def read_shard(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """One shard file as ``(ids, float32 (rows, dim) array)``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.column("id").to_pylist(), arrow_to_embeddings(table.column("embedding"))


def check_compatible(shard_sets: Sequence[EmbeddingShards]) -> None:
    """Refuse to combine shard folders whose vectors are not comparable (dimension, model fingerprint)."""
    first = shard_sets[0]
    for other in shard_sets[1:]:
        if other.dim != first.dim:
            raise ShardError(
                f"{other.folder} holds {other.dim}-dimensional embeddings but {first.folder} {first.dim}-dimensional: "
                "they come from different models and cannot share an index"
            )
        fa, fb = first.fingerprint, other.fingerprint
        if (fa is None) != (fb is None) or (fa and fb and fa.digest != fb.digest):
            detail = fa.differences(fb) if fa and fb else "one of them records no model fingerprint"
            raise ShardError(
                f"{other.folder} was encoded by model {fb.short if fb else '?'} but {first.folder} by model "
                f"{fa.short if fa else '?'} ({detail}); re-encode one of them with the other's model"
            )
