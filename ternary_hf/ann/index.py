"""FAISS indexes over embeddings, saved as one self-describing, checksummed file.

Index types (all cosine by default: embeddings are L2-normalized and searched by inner product):

============ ================================================ ===============================
type         FAISS structure                                  memory per vector (d = 384)
============ ================================================ ===============================
``flat``     ``IndexFlatIP`` (exact)                          4·d = 1,536 B
``hnsw``     ``IndexHNSWFlat(d, M)``                          4·d + ~8·M (M = 32: ~1.8 kB)
``ivf-flat`` ``IndexIVFFlat`` (nlist lists, nprobe searched)  4·d + 8
``ivf-pq``   ``IndexIVFPQ`` (pq_m sub-quantizers x 8 bits)    pq_m + 8 (pq_m = 48: 56 B)
``binary``   ``IndexBinaryFlat`` on sign bits + rescoring     d/8 = 48 B (+ d B int8 rescore)
============ ================================================ ===============================

``binary`` follows sentence-transformers' embedding-quantization recipe: the corpus is indexed as
packed sign bits (``quantize_embeddings(..., "ubinary")``), a query's ``k * rescore_multiplier``
Hamming-nearest candidates are re-scored with the full-precision query against the candidates'
int8 embeddings (``quantize_embeddings(..., "int8")`` with ranges calibrated on the corpus), kept
next to the index.

File format (``AnnIndex.save``; written through :func:`ternary_hf.fileio.atomic_output_file`, so a
crash leaves the old file or none): ``b"TERNANN1"``, the sections (FAISS index, ids as JSON, optional
rescoring matrix as ``.npy``), the metadata JSON (type, dimension, model id and fingerprint, metric,
parameters, section offsets/lengths/SHA-256), its length (uint64 LE), its SHA-256, and
``b"TERNANN1"`` again. :meth:`AnnIndex.load` verifies every checksum and length, so a truncated or
corrupt file raises :class:`IndexFileError` naming the file and what is wrong.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import json
import math
import os
import struct
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ternary_hf.ann.fingerprint import ModelFingerprint, check_fingerprint, fingerprint_of_model
from ternary_hf.fileio import atomic_output_file

INDEX_TYPES = ("flat", "hnsw", "ivf-flat", "ivf-pq", "binary")
METRICS = ("cosine", "ip", "l2")
MAGIC = b"TERNANN1"
FORMAT_VERSION = 1
_TRAILER = struct.Struct("<Q32s8s")  # meta length, meta sha256, end magic


class IndexFileError(ValueError):
    """An index file is missing, truncated, corrupt, or not an index file."""


@dataclass
class IndexParams:
    """Build and search parameters. ``None`` picks a default from the corpus size.

    Attributes:
        hnsw_m: HNSW graph degree M.
        ef_construction: HNSW candidate list size while building (higher: better graph, slower).
        ef_search: HNSW candidate list size while searching (higher: better recall, slower).
        nlist: IVF inverted lists; default ``4*sqrt(N)``, capped so every list gets >= 39
            training vectors (FAISS' k-means minimum).
        nprobe: IVF lists visited per query; default ``nlist // 16`` clamped to [1, 64].
        pq_m: IVF-PQ sub-quantizers (bytes per vector); must divide the dimension; default: the
            largest divisor of d that is <= d/8 (48 for d = 384).
        pq_bits: bits per PQ code.
        rescore: binary index re-scoring store: ``"int8"`` (d bytes/vector), ``"float32"`` or
            ``"none"`` (pure Hamming ranking; score = 1 - 2*hamming/d).
        rescore_multiplier: binary candidates re-scored per result.
        train_size: vectors buffered to train IVF / calibrate int8 before streaming the rest;
            default ``max(40 * nlist, 10_000)``.
        seed: k-means / PQ training seed.
    """

    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    pq_bits: int = 8
    rescore: str = "int8"
    rescore_multiplier: int = 4
    train_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rescore not in ("int8", "float32", "none"):
            raise ValueError(f"IndexParams.rescore must be 'int8', 'float32' or 'none', got {self.rescore!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "pq_bits", "rescore_multiplier"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexParams.{name} must be >= 1")

    @classmethod
    def from_dict(cls, data: dict) -> "IndexParams":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@contextlib.contextmanager
def faiss_threads(n: int | None):
    """Run FAISS with ``n`` OpenMP threads inside the block (``None``: leave FAISS' default).

    On a busy shared CPU, multi-threaded FAISS can be ~100x slower than one thread (OpenMP
    threads spin waiting for cores that other processes hold); benchmarks there use ``n=1``.
    """
    if n is None:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def default_nlist(n: int) -> int:
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39 if n >= 39 else 1))


def default_pq_m(dim: int) -> int:
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def _check_type(index_type: str) -> str:
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; supported: {', '.join(INDEX_TYPES)}")
    return index_type


def _as_matrix(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, dim), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty: nothing to {'index' if 'corpus' in what else 'search'}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what} have dimension {x.shape[1]}, but the index was built with dimension {dim}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must be floating point embeddings, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass
class AnnIndex:
    """A FAISS index plus everything needed to use it later: corpus ids, model id and fingerprint, dimension.

    Build with :meth:`create` + :meth:`add` (streaming) or :meth:`from_embeddings`; query with
    :meth:`search`; persist with :meth:`save` / :meth:`load`. ``ids`` is a list, or for an index
    built from embedding shards (:mod:`ternary_hf.ann.ondisk`) a memory-mapped id store.
    """

    index_type: str
    dim: int
    metric: str = "cosine"
    model_id: str | None = None
    params: IndexParams = field(default_factory=IndexParams)
    ids: Sequence[str] = field(default_factory=list)
    build_seconds: float = 0.0
    model_fingerprint: ModelFingerprint | None = None
    _index: object = field(default=None, repr=False)
    _pending: list[np.ndarray] = field(default_factory=list, repr=False)
    _pending_ids: list[str] = field(default_factory=list, repr=False)
    _rescore: list[np.ndarray] = field(default_factory=list, repr=False)
    _ranges: np.ndarray | None = field(default=None, repr=False)
    _expected: int | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ building
    @classmethod
    def create(
        cls,
        index_type: str,
        dim: int,
        *,
        metric: str = "cosine",
        model_id: str | None = None,
        params: IndexParams | None = None,
        expected_size: int | None = None,
        model_fingerprint: ModelFingerprint | None = None,
    ) -> "AnnIndex":
        """An empty index; ``expected_size`` (corpus size, if known) sizes nlist and training;
        ``model_fingerprint`` (:func:`~ternary_hf.ann.fingerprint.model_fingerprint` of the model
        that encodes the corpus) is checked before text queries are encoded."""
        _check_type(index_type)
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; supported: {', '.join(METRICS)}")
        if index_type == "binary" and metric == "l2":
            raise ValueError("the binary index ranks by Hamming distance: use metric='cosine' or 'ip'")
        if dim < 1:
            raise ValueError(f"dimension must be >= 1, got {dim}")
        params = params or IndexParams()
        if index_type == "ivf-pq":
            pq_m = params.pq_m or default_pq_m(dim)
            if dim % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide the embedding dimension {dim}")
        return cls(index_type, dim, metric, model_id, params, model_fingerprint=model_fingerprint, _expected=expected_size)

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray,
        ids: Sequence[str] | None = None,
        index_type: str = "flat",
        **kwargs,
    ) -> "AnnIndex":
        """Build from an in-memory (or memory-mapped) embedding matrix, in chunks."""
        if not isinstance(embeddings, np.ndarray):  # np.memmap is an ndarray: it is read chunk by chunk
            embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"corpus embeddings are empty or not 2-D (shape {embeddings.shape})")
        ids = [str(i) for i in range(len(embeddings))] if ids is None else list(ids)
        index = cls.create(index_type, embeddings.shape[1], expected_size=len(embeddings), **kwargs)
        step = 65536
        for start in range(0, len(embeddings), step):
            index.add(embeddings[start : start + step], ids[start : start + step])
        return index.finalize()

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _needs_training(self) -> bool:
        return self.index_type in ("ivf-flat", "ivf-pq") or (self.index_type == "binary" and self.params.rescore == "int8")

    def _train_size(self, n_hint: int) -> int:
        if self.params.train_size:
            return self.params.train_size
        nlist = self.params.nlist or default_nlist(n_hint)
        return max(40 * nlist, 10_000)

    def add(self, embeddings: np.ndarray, ids: Sequence[str]) -> None:
        """Add a chunk of corpus embeddings with their ids (call repeatedly to stream a corpus).

        Trainable indexes buffer the first ``train_size`` vectors, train on them, then add
        everything; memory stays bounded by that buffer plus the index itself.
        """
        x = _as_matrix(embeddings, "corpus embeddings", self.dim)
        ids = [str(i) for i in ids]
        if len(ids) != len(x):
            raise ValueError(f"{len(x)} embeddings but {len(ids)} ids")
        x = self._prepare(x)
        if self.index_type == "binary":  # import outside the timed region (first import is slow)
            from sentence_transformers.util.quantization import quantize_embeddings  # noqa: F401
        start = time.perf_counter()
        if self._index is None and self._needs_training():
            self._pending.append(x)
            self._pending_ids.extend(ids)
            buffered = sum(len(p) for p in self._pending)
            if buffered >= self._train_size(self._expected or buffered):
                self._train_and_flush()
        else:
            if self._index is None:
                self._index = self._new_index(len(x))
            self._add_trained(x, ids)
        self.build_seconds += time.perf_counter() - start

    def finalize(self) -> "AnnIndex":
        """Train on whatever is buffered (small corpora) and check the index is not empty."""
        start = time.perf_counter()
        if self._index is None and self._pending:
            self._train_and_flush()
        self.build_seconds += time.perf_counter() - start
        if not self.ids:
            raise ValueError("the corpus is empty: an index needs at least one document")
        return self

    def _train_and_flush(self) -> None:
        x = np.concatenate(self._pending)
        ids = self._pending_ids
        self._pending, self._pending_ids = [], []
        n_hint = max(self._expected or 0, len(x))
        self._index = self._new_index(n_hint, len(x))
        if self.index_type == "binary":
            # int8 rescoring ranges calibrated on the buffered corpus sample, as in the
            # sentence-transformers recipe (never on the queries)
            self._ranges = np.vstack([x.min(axis=0), x.max(axis=0)]).astype(np.float32)
        else:
            if self.index_type == "ivf-pq" and len(x) < 2**self.params.pq_bits:
                raise ValueError(
                    f"ivf-pq with pq_bits={self.params.pq_bits} needs >= {2**self.params.pq_bits} corpus vectors to "
                    f"train its codebooks, got {len(x)}; use flat or hnsw for a corpus this small, or lower pq_bits"
                )
            rng = np.random.default_rng(self.params.seed)
            sample = x if len(x) <= self._train_size(n_hint) else x[rng.choice(len(x), self._train_size(n_hint), replace=False)]
            self._index.train(sample)
        self._add_trained(x, ids)

    def _new_index(self, n_hint: int, n_train: int | None = None):
        import faiss

        faiss_metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        p, d = self.params, self.dim
        if self.index_type == "flat":
            return faiss.IndexFlat(d, faiss_metric)
        if self.index_type == "hnsw":
            index = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss_metric)
            index.hnsw.efConstruction = p.ef_construction
            index.hnsw.efSearch = p.ef_search
            return index
        if self.index_type == "binary":
            return faiss.IndexBinaryFlat(((d + 7) // 8) * 8)
        nlist = p.nlist or default_nlist(n_hint)
        if n_train is not None and n_train < nlist:
            nlist = max(1, n_train)  # k-means cannot make more centroids than training points
        p.nlist = nlist
        quantizer = faiss.IndexFlat(d, faiss_metric)
        if self.index_type == "ivf-flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
        else:
            p.pq_m = p.pq_m or default_pq_m(d)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, p.pq_m, p.pq_bits, faiss_metric)
        # hand the quantizer to the C++ index (freed with it), not to Python's garbage collector
        quantizer.this.disown()
        index.own_fields = True
        index.cp.seed = p.seed
        index.nprobe = p.nprobe or min(64, max(1, nlist // 16))
        p.nprobe = index.nprobe
        return index

    def _add_trained(self, x: np.ndarray, ids: list[str]) -> None:
        if self.index_type == "binary":
            from sentence_transformers.util.quantization import quantize_embeddings

            self._index.add(quantize_embeddings(x, precision="ubinary"))
            if self.params.rescore == "int8":
                self._rescore.append(quantize_embeddings(x, precision="int8", ranges=self._ranges))
            elif self.params.rescore == "float32":
                self._rescore.append(x.copy())
        else:
            self._index.add(x)
        self.ids.extend(ids)

    # ------------------------------------------------------------------ searching
    @property
    def ntotal(self) -> int:
        return len(self.ids)

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None, rescore_multiplier: int | None = None) -> None:
        """Trade recall for speed after building (or loading)."""
        if ef_search is not None and self.index_type == "hnsw":
            self.params.ef_search = ef_search
            self._index.hnsw.efSearch = ef_search
        if nprobe is not None and self.index_type in ("ivf-flat", "ivf-pq"):
            self.params.nprobe = nprobe
            self._index.nprobe = nprobe
        if rescore_multiplier is not None:
            self.params.rescore_multiplier = rescore_multiplier

    def _rescore_matrix(self) -> np.ndarray | None:
        if not self._rescore:
            return None
        if len(self._rescore) > 1:
            self._rescore = [np.concatenate(self._rescore)]
        return self._rescore[0]

    def _dequantize(self, codes: np.ndarray) -> np.ndarray:
        # inverse of sentence-transformers' int8 quantization (bucket lower edges + half a step)
        steps = (self._ranges[1] - self._ranges[0]) / 255
        steps = np.where(steps == 0, 1, steps)
        return (codes.astype(np.float32) + 128.0 + 0.5) * steps + self._ranges[0]

    def search_embeddings(self, queries: np.ndarray, k: int = 10) -> tuple[list[list[str]], list[list[float]]]:
        """Search with query embeddings. Returns per query the ids and scores of up to ``k`` hits,
        best first (scores: cosine / inner product; negative squared L2 for ``metric='l2'``)."""
        if self._index is None or not self.ids:
            raise ValueError("the index is empty: add a corpus (and finalize()) before searching")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self._prepare(_as_matrix(queries, "query embeddings", self.dim))
        k_eff = min(k, self.ntotal)
        if self.index_type == "binary":
            scores, idx = self._search_binary(q, k_eff)
        else:
            scores, idx = self._index.search(q, k_eff)
            if self.metric == "l2":
                scores = -scores
        out_ids, out_scores = [], []
        for row_idx, row_scores in zip(idx, scores):
            keep = row_idx >= 0  # FAISS pads with -1 when fewer hits are reachable
            out_ids.append([self.ids[i] for i in row_idx[keep]])
            out_scores.append([float(s) for s in row_scores[keep]])
        return out_ids, out_scores

    def _search_binary(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from sentence_transformers.util.quantization import quantize_embeddings

        bits = self._index.d
        rescore = self._rescore_matrix()
        n_cand = k if rescore is None else min(self.ntotal, k * self.params.rescore_multiplier)
        hamming, idx = self._index.search(quantize_embeddings(q, precision="ubinary"), n_cand)
        if rescore is None:
            return 1.0 - 2.0 * hamming.astype(np.float32) / bits, idx
        safe = np.where(idx >= 0, idx, 0)
        cand = rescore[safe]
        if self.params.rescore == "int8":
            cand = self._dequantize(cand)
            if self.metric == "cosine":
                cand = cand / np.maximum(np.linalg.norm(cand, axis=2, keepdims=True), 1e-12)
        scores = np.einsum("qd,qcd->qc", q, cand)
        scores[idx < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        rows = np.arange(len(q))[:, None]
        return scores[rows, order], idx[rows, order]

    def check_model(self, model, *, variant: str | None = None, allow_model_mismatch: bool = False,
                    what: str = "this index") -> None:
        """Refuse (:class:`~ternary_hf.ann.fingerprint.ModelMismatchError`) a model whose files differ
        from those of the model that built the index.

        ``model``: a model folder / cached Hub id (fingerprinted with ``variant``, e.g. ``"ternary-ptq"``)
        or a loaded SentenceTransformer (its source folder's files are compared; how it was loaded is
        not known, so ``variant`` is not). Nothing is checked when the index records no fingerprint
        (built from bare embeddings) or the model's files cannot be found.
        """
        if self.model_fingerprint is None:
            return
        if isinstance(model, (str, os.PathLike)):
            from ternary_hf.ann.fingerprint import model_fingerprint

            actual, label = model_fingerprint(model, variant=variant), str(model)
            recorded = self.model_fingerprint
        else:
            actual, label = fingerprint_of_model(model), "the given model"
            recorded = ModelFingerprint(self.model_fingerprint.digest, self.model_fingerprint.files)
        check_fingerprint(recorded, actual, what=what, model=label, allow_mismatch=allow_model_mismatch)

    def search(self, queries: Sequence[str] | np.ndarray, k: int = 10, model=None, batch_size: int = 64,
               *, allow_model_mismatch: bool = False):
        """Search with texts (encoded by ``model``, a SentenceTransformer) or with embeddings.

        Before texts are encoded, the model's files are checked against the fingerprint the index
        recorded (:meth:`check_model`; ``allow_model_mismatch=True`` downgrades a mismatch to a warning).
        Returns ``(ids, scores)``: lists (one per query) of up to ``k`` corpus ids and scores.
        """
        if isinstance(queries, np.ndarray):
            return self.search_embeddings(queries, k)
        queries = list(queries)
        if not queries:
            raise ValueError("no queries given")
        if model is None:
            raise ValueError(
                f"searching with text needs the model that built the index ({self.model_id or 'unknown'}): "
                "pass model=SentenceTransformer(...)"
            )
        self.check_model(model, allow_model_mismatch=allow_model_mismatch)
        emb = model.encode(queries, batch_size=batch_size, convert_to_numpy=True)
        if emb.shape[1] != self.dim:
            raise ValueError(
                f"the model produces {emb.shape[1]}-dimensional embeddings but the index holds {self.dim}-dimensional "
                f"ones (built with model {self.model_id or 'unknown'}); use the same model"
            )
        return self.search_embeddings(emb, k)

    # ------------------------------------------------------------------ persistence
    def _sections(self) -> list[tuple[str, bytes | np.ndarray]]:
        import faiss

        # the serialized FAISS index stays a uint8 array (no second copy of a multi-GB index)
        if self.index_type == "binary":
            raw = faiss.serialize_index_binary(self._index)
        else:
            raw = faiss.serialize_index(self._index)
        sections = [("faiss", raw), ("ids", json.dumps(self.ids).encode("utf-8"))]
        rescore = self._rescore_matrix()
        if rescore is not None:
            buf = io.BytesIO()
            np.save(buf, rescore, allow_pickle=False)
            sections.append(("rescore", buf.getvalue()))
        return sections

    def nbytes(self) -> int:
        """Bytes of the saved index (FAISS structure + ids + rescoring store)."""
        return sum(len(data) for _, data in self._sections())

    def save(self, path: str | os.PathLike) -> int:
        """Atomically write the index to ``path``; returns the file size."""
        if self._index is None or not self.ids:
            raise ValueError("cannot save an empty index")
        if not isinstance(self.ids, list):
            raise ValueError("this index lives in a folder built from embedding shards; it is saved when built")
        path = Path(path)
        meta = {
            "format": FORMAT_VERSION,
            "index_type": self.index_type,
            "dim": self.dim,
            "metric": self.metric,
            "model_id": self.model_id,
            "model_fingerprint": self.model_fingerprint.to_dict() if self.model_fingerprint else None,
            "count": self.ntotal,
            "params": asdict(self.params),
            "ranges": self._ranges.tolist() if self._ranges is not None else None,
            "build_seconds": self.build_seconds,
            "sections": [],
        }
        with atomic_output_file(path) as tmp, open(tmp, "wb") as handle:
            handle.write(MAGIC)
            offset = len(MAGIC)
            for name, data in self._sections():
                handle.write(data)
                meta["sections"].append(
                    {"name": name, "offset": offset, "length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                )
                offset += len(data)
            meta_bytes = json.dumps(meta).encode("utf-8")
            handle.write(meta_bytes)
            handle.write(_TRAILER.pack(len(meta_bytes), hashlib.sha256(meta_bytes).digest(), MAGIC))
        return path.stat().st_size

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnnIndex":
        """Load an index saved by :meth:`save`, verifying its checksums."""
        import faiss

        path = Path(path)
        if path.is_dir():
            raise IndexFileError(f"{path} is a folder (an index built from embedding shards): use ternary_hf.ann.load_index")
        if not path.is_file():
            raise IndexFileError(f"index file {path} does not exist")
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(len(MAGIC))
            if head != MAGIC:
                raise IndexFileError(f"{path} is not a ternary-hf index file (bad magic bytes)")
            if size < len(MAGIC) + _TRAILER.size:
                raise IndexFileError(f"{path} is truncated ({size} bytes)")
            handle.seek(size - _TRAILER.size)
            meta_len, meta_sha, tail = _TRAILER.unpack(handle.read(_TRAILER.size))
            if tail != MAGIC or meta_len > size - len(MAGIC) - _TRAILER.size:
                raise IndexFileError(f"{path} is truncated or corrupt (no valid trailer); rebuild or re-copy it")
            handle.seek(size - _TRAILER.size - meta_len)
            meta_bytes = handle.read(meta_len)
            if hashlib.sha256(meta_bytes).digest() != meta_sha:
                raise IndexFileError(f"{path}: metadata checksum mismatch (file corrupt)")
            meta = json.loads(meta_bytes)
            if meta.get("format") != FORMAT_VERSION:
                raise IndexFileError(f"{path}: unsupported index format {meta.get('format')!r}; expected {FORMAT_VERSION}")
            data: dict[str, bytes] = {}
            for sec in meta["sections"]:
                handle.seek(sec["offset"])
                blob = handle.read(sec["length"])
                if len(blob) != sec["length"] or hashlib.sha256(blob).hexdigest() != sec["sha256"]:
                    raise IndexFileError(f"{path}: section {sec['name']!r} is corrupt (checksum mismatch)")
                data[sec["name"]] = blob
        index_type = meta["index_type"]
        if index_type not in INDEX_TYPES:
            raise IndexFileError(f"{path}: unknown index type {index_type!r} (written by a newer ternary-hf?)")
        out = cls(index_type, int(meta["dim"]), meta["metric"], meta.get("model_id"), IndexParams.from_dict(meta["params"]),
                  model_fingerprint=ModelFingerprint.from_dict(meta.get("model_fingerprint")))
        raw = np.frombuffer(data["faiss"], dtype=np.uint8)
        try:
            out._index = faiss.deserialize_index_binary(raw) if index_type == "binary" else faiss.deserialize_index(raw)
        except RuntimeError as exc:
            raise IndexFileError(f"{path}: FAISS could not read the index ({exc})") from exc
        out.ids = json.loads(data["ids"])
        if len(out.ids) != out._index.ntotal or len(out.ids) != meta["count"]:
            raise IndexFileError(f"{path}: {len(out.ids)} ids for {out._index.ntotal} vectors")
        if "rescore" in data:
            out._rescore = [np.load(io.BytesIO(data["rescore"]), allow_pickle=False)]
        if meta.get("ranges") is not None:
            out._ranges = np.asarray(meta["ranges"], dtype=np.float32)
        out.build_seconds = float(meta.get("build_seconds", 0.0))
        return out


def build_index_from_chunks(
    chunks: Iterable[tuple[list[str], np.ndarray]],
    index_type: str,
    dim: int,
    **kwargs,
) -> AnnIndex:
    """Stream ``(ids, embeddings)`` chunks into a new index."""
    index = AnnIndex.create(index_type, dim, **kwargs)
    for ids, emb in chunks:
        index.add(emb, ids)
    return index.finalize()


def search_sharded(shards: Sequence[AnnIndex], queries: np.ndarray, k: int = 10) -> tuple[list[list[str]], list[list[float]]]:
    """Search several indexes over disjoint parts of one corpus as one ``faiss.IndexShards``.

    FAISS queries every shard and merges the per-shard top-``k`` (``successive_ids``: shard ``i``'s
    rows follow shard ``i-1``'s, so a hit maps back to its shard's ids). Shards must share dimension,
    metric and model fingerprint (:class:`ValueError` otherwise); each keeps its own search parameters
    (nprobe, efSearch). Binary shards are not supported (their re-scoring is not a FAISS index): build
    one binary index, or shard an ``ivf-pq`` / ``ivf-flat`` index with :mod:`ternary_hf.ann.ondisk`.
    """
    import faiss

    if not shards:
        raise ValueError("no shards to search")
    first = shards[0]
    for i, shard in enumerate(shards):
        if (shard.dim, shard.metric) != (first.dim, first.metric):
            raise ValueError(
                f"shards disagree: shard {i} has dim/metric {shard.dim}/{shard.metric}, shard 0 {first.dim}/{first.metric}"
            )
        if shard.index_type == "binary":
            raise ValueError(f"shard {i} is a binary index: search_sharded merges float indexes only (see its doc)")
        if shard._index is None or not shard.ids:
            raise ValueError(f"shard {i} is empty")
        fp, fp0 = shard.model_fingerprint, first.model_fingerprint
        if fp is not None and fp0 is not None and fp.digest != fp0.digest:
            raise ValueError(
                f"shards disagree: shard {i} was built by model {fp.short}, shard 0 by model {fp0.short} "
                f"({fp0.differences(fp)}); their vectors are not comparable"
            )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = first._prepare(_as_matrix(queries, "query embeddings", first.dim))
    combined = faiss.IndexShards(first.dim, False, True)  # threaded=False: FAISS' own OpenMP does the work
    for shard in shards:
        combined.add_shard(shard._index)
    starts = np.cumsum([0] + [s.ntotal for s in shards]).tolist()
    scores, idx = combined.search(q, min(k, starts[-1]))
    if first.metric == "l2":
        scores = -scores
    out_ids, out_scores = [], []
    for row_idx, row_scores in zip(idx, scores):
        hits, vals = [], []
        for label, score in zip(row_idx, row_scores):
            if label < 0:
                continue
            s = bisect.bisect_right(starts, int(label)) - 1
            hits.append(shards[s].ids[int(label) - starts[s]])
            vals.append(float(score))
        out_ids.append(hits)
        out_scores.append(vals)
    return out_ids, out_scores
