"""Encode a corpus in chunks, so corpora larger than memory stream through.

Texts are read lazily (any iterable, e.g. :func:`read_corpus` over a file), encoded ``chunk_size``
at a time in batches, and each chunk is handed on (to an index, and/or to an ``.npy`` memory map on
disk) before the next is read: peak memory is one chunk of texts + embeddings, plus whatever the
consumer keeps (a FAISS index of the chosen type).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch

from ternary_hf.ann.fingerprint import ModelFingerprint, fingerprint_of_model
from ternary_hf.ann.index import AnnIndex, IndexParams


CORPUS_SUFFIXES = (".txt", ".jsonl", ".tsv", ".csv", ".parquet")
ID_COLUMNS = ("_id", "id", "doc_id", "docid")


def read_corpus(source: str | os.PathLike | Mapping[str, str] | Iterable) -> Iterator[tuple[str, str]]:
    """Yield ``(id, text)`` lazily from a file, a ``{id: text}`` dict, or an iterable of texts or pairs.

    Files: ``.txt`` (one document per line; id = line number), ``.jsonl`` (``_id``/``id`` and
    ``text``; BEIR corpus layout, ``title`` prepended), ``.tsv``/``.csv`` (``id``, ``text``
    columns, or two columns without header names), ``.parquet`` (``text`` and an ``_id``/``id``
    column, ``title`` prepended; read one row group at a time).
    """
    if isinstance(source, Mapping):
        yield from ((str(k), str(v)) for k, v in source.items())
        return
    if not isinstance(source, (str, os.PathLike)):
        for i, item in enumerate(source):
            if isinstance(item, (tuple, list)) and len(item) == 2:
                yield str(item[0]), str(item[1])
            else:
                yield str(i), str(item)
        return
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} not found")
    with open(path, "rb") as handle:
        yield from read_corpus_stream(handle, str(path))


def read_corpus_stream(handle: Any, name: str, position_prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(id, text)`` pairs from an open binary file of the format ``name``'s suffix says (see :func:`read_corpus`).

    ``position_prefix`` goes in front of ids made from positions (line / row numbers, when the file has no id),
    so that several files read together keep their ids apart.

    The one parser of corpus files: single-process encoding reads local files through it, and the Ray pipeline
    (:mod:`ternary_hf.ann.ray_encode`) reads each file of a corpus through it on a worker, so both assign the same
    ids to the same lines.
    """
    suffix = Path(name).suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(handle, name, position_prefix)
        return
    if suffix not in CORPUS_SUFFIXES:
        suffix = ".txt"
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    if suffix == ".jsonl":
        for lineno, line in enumerate(text, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}:{lineno}: invalid JSON ({exc.msg})") from exc
            doc_id = row.get("_id", row.get("id", f"{position_prefix}{lineno - 1}"))
            body = row.get("text")
            if body is None:
                raise ValueError(f"{name}:{lineno}: no 'text' field")
            title = (row.get("title") or "").strip()
            yield str(doc_id), f"{title} {body}".strip() if title else str(body)
    elif suffix in (".tsv", ".csv"):
        reader = csv.reader(text, delimiter="\t" if suffix == ".tsv" else ",")
        header = next(reader, None)
        if header is None:
            return
        lower = [h.strip().lower() for h in header]
        if "text" in lower:
            t_col = lower.index("text")
            i_col = next((lower.index(c) for c in ID_COLUMNS if c in lower), None)
            rows: Iterable = reader
        else:  # no header: first column id, second text
            i_col, t_col = 0, 1
            rows = itertools.chain([header], reader)
        for n, row in enumerate(rows):
            if len(row) <= t_col:
                raise ValueError(f"{name}: row {n + 1} has no text column")
            yield (str(row[i_col]) if i_col is not None else f"{position_prefix}{n}"), row[t_col]
    else:
        for lineno, line in enumerate(text):
            line = line.rstrip("\r\n")
            if line.strip():
                yield f"{position_prefix}{lineno}", line


def _read_parquet(handle: Any, name: str, position_prefix: str) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(handle)
    columns = pf.schema_arrow.names
    lower = {c.lower(): c for c in columns}
    if "text" not in lower:
        raise ValueError(f"{name}: no 'text' column (columns: {', '.join(columns)})")
    id_col = next((lower[c] for c in ID_COLUMNS if c in lower), None)
    title_col = lower.get("title")
    wanted = [c for c in (id_col, lower["text"], title_col) if c]
    row = 0
    for batch in pf.iter_batches(columns=wanted, batch_size=8192):
        data = batch.to_pydict()
        bodies = data[lower["text"]]
        ids = data[id_col] if id_col else [f"{position_prefix}{i}" for i in range(row, row + len(bodies))]
        titles = data[title_col] if title_col else itertools.repeat(None)
        for doc_id, body, title in zip(ids, bodies, titles):
            if body is None:
                raise ValueError(f"{name}: row {row} has no text")
            title = (title or "").strip()
            yield str(doc_id), f"{title} {body}".strip() if title else str(body)
            row += 1


def encode_texts(model: Any, texts: list[str], *, batch_size: int = 64, normalize: bool = True) -> np.ndarray:
    """Encode one chunk of texts: float32 ``(len(texts), dim)``.

    Every corpus encoder (single process, Ray actors) goes through here, so the same chunk gives the same vectors.
    """
    with torch.inference_mode():
        emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=normalize)
    return np.asarray(emb, dtype=np.float32)


def encode_chunks(
    model: Any,
    corpus: Iterable[tuple[str, str]],
    *,
    chunk_size: int = 8192,
    batch_size: int = 64,
    total: int | None = None,
    show_progress_bar: bool = True,
    normalize: bool = True,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Encode ``(id, text)`` pairs ``chunk_size`` at a time; yields ``(ids, float32 embeddings)``."""
    from tqdm.auto import tqdm

    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    iterator = iter(corpus)
    bar = tqdm(total=total, desc="encoding corpus", unit="doc", disable=not show_progress_bar)
    try:
        while True:
            chunk = list(itertools.islice(iterator, chunk_size))
            if not chunk:
                break
            ids = [i for i, _ in chunk]
            emb = encode_texts(model, [t for _, t in chunk], batch_size=batch_size, normalize=normalize)
            bar.update(len(chunk))
            yield ids, emb
    finally:
        bar.close()


def encode_to_memmap(
    model: Any, texts: Any, path: str | os.PathLike, *, total: int, **kwargs: Any
) -> tuple[list[str], np.memmap]:
    """Encode into an ``.npy`` file on disk (``np.lib.format.open_memmap``), chunk by chunk.

    ``texts``: anything :func:`read_corpus` accepts; ``total``: the number of texts (the file is
    pre-sized); ``kwargs`` go to :func:`encode_chunks`. Returns ``(ids, memmap)``.
    """
    pairs = read_corpus(texts)
    out = None
    ids: list[str] = []
    row = 0
    for chunk_ids, emb in encode_chunks(model, pairs, total=total, **kwargs):
        if out is None:
            out = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=(total, emb.shape[1]))
        if row + len(emb) > total:
            raise ValueError(f"the corpus has more than total={total} texts")
        out[row : row + len(emb)] = emb
        ids.extend(chunk_ids)
        row += len(emb)
    if out is None:
        raise ValueError("the corpus is empty: nothing to encode")
    if row != total:
        raise ValueError(f"the corpus has {row} texts, not total={total}")
    out.flush()
    return ids, out


def build_index(
    model: Any,
    corpus: Any,
    index_type: str = "hnsw",
    *,
    model_id: str | None = None,
    model_fingerprint: ModelFingerprint | None = None,
    params: IndexParams | None = None,
    chunk_size: int = 8192,
    batch_size: int = 64,
    total: int | None = None,
    show_progress_bar: bool = True,
    embeddings_path: str | os.PathLike | None = None,
) -> AnnIndex:
    """Encode a corpus with ``model`` (a SentenceTransformer) and stream it into a FAISS index.

    Args:
        corpus: anything :func:`read_corpus` accepts (file path, ``{id: text}``, texts, pairs).
        index_type: one of :data:`~ternary_hf.ann.index.INDEX_TYPES`.
        total: corpus size if known (sizes IVF lists, progress bar); ``len(corpus)`` when it has one.
        embeddings_path: also write the embeddings to this ``.npy`` file (needs ``total``).
        model_fingerprint: recorded in the index and checked before queries are encoded; default:
            the fingerprint of the folder ``model`` was loaded from (none if it has no local folder).
    """
    from ternary_hf.ann.index import _check_type

    _check_type(index_type)
    if total is None and hasattr(corpus, "__len__") and not isinstance(corpus, (str, os.PathLike)):
        total = len(corpus)
    if model_fingerprint is None:
        model_fingerprint = fingerprint_of_model(model)
    index: AnnIndex | None = None
    store = None
    row = 0
    for ids, emb in encode_chunks(
        model, read_corpus(corpus), chunk_size=chunk_size, batch_size=batch_size, total=total,
        show_progress_bar=show_progress_bar,
    ):
        if index is None:
            dim = emb.shape[1]
            index = AnnIndex.create(index_type, dim, model_id=model_id, params=params, expected_size=total,
                                    model_fingerprint=model_fingerprint)
            if embeddings_path is not None:
                if total is None:
                    raise ValueError("embeddings_path needs total= (the corpus size) to pre-size the file")
                store = np.lib.format.open_memmap(str(embeddings_path), mode="w+", dtype=np.float32, shape=(total, dim))
        index.add(emb, ids)
        if store is not None:
            store[row : row + len(emb)] = emb
        row += len(emb)
    if index is None:
        raise ValueError("the corpus is empty: an index needs at least one document")
    if store is not None:
        store.flush()
    return index.finalize()
