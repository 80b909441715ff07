"""IVF indexes past one machine's RAM, built from embedding shards with FAISS's own on-disk machinery.

:func:`build_ondisk_index` follows FAISS's ``demos/demo_ondisk_ivf.py`` recipe:

1. train an empty ``ivf-pq`` / ``ivf-flat`` index on a uniform sample of the shards (``train_size`` vectors);
2. per embedding shard, a copy of the trained index gets that shard's vectors (ids = global row numbers) and is
   written to disk; only one shard's vectors are in memory at a time;
3. :func:`faiss.contrib.ondisk.merge_ondisk` merges the per-shard inverted lists into one ``lists.ivfdata`` file
   (``OnDiskInvertedLists``, memory-mapped when searching), and the per-shard files are deleted.

Folder layout (published whole through :func:`ternary_hf.fileio.staged_directory`)::

    index.json       type, dim, metric, count, model id + fingerprint, parameters, per file: bytes + SHA-256
    index.faiss      the trained IVF structure (centroids, PQ codebooks) pointing at lists.ivfdata
    lists.ivfdata    inverted lists (codes + ids), memory-mapped on load
    ids.bin          corpus ids, UTF-8, concatenated;  ids.offsets.npy: uint64 start offsets (memory-mapped)

:func:`load_index` opens such a folder (or a single ``.tann`` file) as an :class:`~ternary_hf.ann.index.AnnIndex`,
so searching, fingerprint checks and the CLI work the same on both. Search memory: the centroids and codebooks,
plus the pages of the inverted lists that queries touch (the OS page cache, not the process heap).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ternary_hf.ann.fingerprint import ModelFingerprint, file_sha256
from ternary_hf.ann.index import AnnIndex, IndexFileError, IndexParams
from ternary_hf.ann.shards import EmbeddingShards, check_compatible, check_output_free, read_manifest
from ternary_hf.fileio import atomic_write_json, staged_directory

LAYOUT = "ternary-hf-ivf-ondisk"
VERSION = 1
ONDISK_TYPES = ("ivf-pq", "ivf-flat")
_FILES = ("index.faiss", "lists.ivfdata", "ids.bin", "ids.offsets.npy")


@contextlib.contextmanager
def _quiet_faiss_stdout():
    """FAISS's on-disk lists ``printf`` progress lines ("resizing ...", "updating ondisk filename ...") to the
    process's stdout, where they would corrupt ``ann search --json`` output: send C stdout to stderr meanwhile."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout (embedded interpreter): nothing to protect
        yield
        return
    libc = ctypes.CDLL(None)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


class IdStore(Sequence[str]):
    """Corpus ids kept on disk: ``ids[i]`` reads one id from a memory map (10M ids cost no Python objects)."""

    def __init__(self, folder: Path):
        self._offsets = np.load(folder / "ids.offsets.npy", mmap_mode="r")
        size = (folder / "ids.bin").stat().st_size
        self._data = np.memmap(folder / "ids.bin", dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self._data[int(self._offsets[i]) : int(self._offsets[i + 1])].tobytes().decode("utf-8")


class _IdWriter:
    """Appends ids to ``ids.bin`` while shards stream by; :meth:`close` writes the offsets."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.offsets = [0]
        self._handle = open(folder / "ids.bin", "wb")

    def add(self, ids: Sequence[str]) -> None:
        for doc_id in ids:
            raw = doc_id.encode("utf-8")
            self._handle.write(raw)
            self.offsets.append(self.offsets[-1] + len(raw))

    def close(self) -> int:
        self._handle.close()
        np.save(self.folder / "ids.offsets.npy", np.asarray(self.offsets, dtype=np.uint64), allow_pickle=False)
        return len(self.offsets) - 1


def build_ondisk_index(
    shards: str | os.PathLike | EmbeddingShards | Sequence[str | os.PathLike | EmbeddingShards],
    out: str | os.PathLike,
    index_type: str = "ivf-pq",
    *,
    metric: str = "cosine",
    params: IndexParams | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> AnnIndex:
    """Train on a sample, add shard by shard, merge with ``merge_ondisk`` into the folder ``out``; returns it loaded.

    ``shards``: one or several shard folders (:mod:`ternary_hf.ann.shards`), all from the same model (dimension
    and fingerprint are checked first). ``params.train_size`` vectors (default ``max(40 * nlist, 10_000)``) are
    sampled for training; ``nlist`` defaults to ``4 * sqrt(N)`` as for the in-memory types.
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    if index_type not in ONDISK_TYPES:
        raise ValueError(f"an on-disk index is one of {', '.join(ONDISK_TYPES)}, not {index_type!r}")
    out = check_output_free(out, overwrite, "index folder")
    items = [shards] if isinstance(shards, (str, os.PathLike, EmbeddingShards)) else list(shards)
    if not items:
        raise ValueError("no shard folders given")
    sets = [s if isinstance(s, EmbeddingShards) else EmbeddingShards.open(s, verify=verify) for s in items]
    check_compatible(sets)
    first = sets[0]
    count = sum(s.count for s in sets)
    params = IndexParams(**vars(params)) if params else IndexParams()
    template = AnnIndex.create(index_type, first.dim, metric=metric, params=params, expected_size=count,
                               model_id=first.model_id, model_fingerprint=first.fingerprint)
    start = time.perf_counter()
    train_n = template._train_size(count)
    per_set = [max(1, round(train_n * s.count / count)) for s in sets]
    sample = np.concatenate([s.sample(n, seed=params.seed + i) for i, (s, n) in enumerate(zip(sets, per_set))])
    trained = template._new_index(count, len(sample))
    if index_type == "ivf-pq" and len(sample) < 2**params.pq_bits:
        raise ValueError(f"ivf-pq needs >= {2**params.pq_bits} vectors to train its codebooks, the shards hold {count}")
    trained.train(template._prepare(sample))
    train_seconds = time.perf_counter() - start
    n_train = len(sample)
    del sample

    with staged_directory(out, overwrite=overwrite) as stage:
        blocks, row = [], 0
        id_writer = _IdWriter(stage)
        for s in sets:
            for ids, emb in s.iter_shards():
                id_writer.add(ids)
                block = faiss.clone_index(trained)
                block.add_with_ids(template._prepare(emb), np.arange(row, row + len(emb), dtype=np.int64))
                name = str(stage / f"block-{len(blocks):05d}.index")
                faiss.write_index(block, name)
                blocks.append(name)
                row += len(emb)
                del block
        merged = faiss.clone_index(trained)
        with _quiet_faiss_stdout():
            merge_ondisk(merged, blocks, str(stage / "lists.ivfdata"))
        faiss.write_index(merged, str(stage / "index.faiss"))
        del merged
        for name in blocks:
            os.unlink(name)
        n_ids = id_writer.close()
        if n_ids != count or row != count:
            raise IndexFileError(f"wrote {row} vectors and {n_ids} ids for {count} manifest rows")
        meta = {
            "layout": LAYOUT,
            "version": VERSION,
            "index_type": index_type,
            "dim": first.dim,
            "metric": metric,
            "count": count,
            "model_id": first.model_id,
            "model_fingerprint": first.fingerprint.to_dict() if first.fingerprint else None,
            "params": vars(template.params),
            "sources": [str(s.folder) for s in sets],
            "train_vectors": n_train,
            "train_seconds": round(train_seconds, 3),
            "build_seconds": round(time.perf_counter() - start, 3),
            "files": {name: {"bytes": (stage / name).stat().st_size, "sha256": file_sha256(stage / name)} for name in _FILES},
        }
        atomic_write_json(stage / "index.json", meta)
    return load_index(out, verify=False)


def load_index(path: str | os.PathLike, verify: bool = True) -> AnnIndex:
    """Open an index: a ``.tann`` file (:meth:`AnnIndex.load`) or a folder built by :func:`build_ondisk_index`.

    For a folder, every file's size is checked against ``index.json`` and, with ``verify`` (default), its SHA-256
    (a full read: ~1 s per GB); the inverted lists are then memory-mapped, not loaded.
    """
    import faiss

    path = Path(path)
    if not path.is_dir():
        return AnnIndex.load(path)
    meta = read_manifest(path / "index.json", IndexFileError, {"layout": LAYOUT, "version": VERSION}, "rebuild the index")
    for name, info in meta["files"].items():  # cheap checks of every file before any is hashed
        f = path / name
        if not f.is_file():
            raise IndexFileError(f"{path}: {name} is missing; rebuild the index")
        if f.stat().st_size != info["bytes"]:
            raise IndexFileError(f"{f} has {f.stat().st_size} bytes, index.json says {info['bytes']}: truncated or replaced")
    for name, info in meta["files"].items() if verify else ():
        if file_sha256(path / name) != info["sha256"]:
            raise IndexFileError(f"{path / name}: SHA-256 differs from index.json (corrupt or replaced)")
    # the index names its lists file by the path it was built at; SAME_DIR finds it next to index.faiss instead
    with _quiet_faiss_stdout():
        index = faiss.read_index(str(path / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    out = AnnIndex(meta["index_type"], int(meta["dim"]), meta["metric"], meta.get("model_id"),
                   IndexParams.from_dict(meta["params"]), ids=IdStore(path),
                   build_seconds=float(meta.get("build_seconds", 0.0)),
                   model_fingerprint=ModelFingerprint.from_dict(meta.get("model_fingerprint")))
    out._index = index
    if index.ntotal != len(out.ids) or index.ntotal != meta["count"]:
        raise IndexFileError(f"{path}: {len(out.ids)} ids for {index.ntotal} vectors (index.json: {meta['count']})")
    index.nprobe = out.params.nprobe or index.nprobe
    return out
