"""Encode a corpus in chunks, so corpora larger than memory stream through.

Texts are read lazily (any iterable, e.g. :func:`read_corpus` over a file), encoded ``chunk_size``
at a time in batches, and each chunk is handed on (to an index, and/or to an ``.npy`` memory map on
disk) before the next is read: peak memory is one chunk of texts + embeddings, plus whatever the
consumer keeps (a FAISS index of the chosen type).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch

from ternary_hf.ann.index import AnnIndex, IndexParams


def read_corpus(source: str | os.PathLike | Mapping[str, str] | Iterable) -> Iterator[tuple[str, str]]:
    """Yield ``(id, text)`` lazily from a file, a ``{id: text}`` dict, or an iterable of texts or pairs.

    Files: ``.txt`` (one document per line; id = line number), ``.jsonl`` (``_id``/``id`` and
    ``text``; BEIR corpus layout, ``title`` prepended), ``.tsv``/``.csv`` (``id``, ``text``
    columns, or two columns without header names).
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
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8", newline="") as handle:
        if suffix == ".jsonl":
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
                doc_id = row.get("_id", row.get("id", lineno - 1))
                text = row.get("text")
                if text is None:
                    raise ValueError(f"{path}:{lineno}: no 'text' field")
                title = (row.get("title") or "").strip()
                yield str(doc_id), f"{title} {text}".strip() if title else str(text)
        elif suffix in (".tsv", ".csv"):
            reader = csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            header = next(reader, None)
            if header is None:
                return
            lower = [h.strip().lower() for h in header]
            if "text" in lower:
                t_col = lower.index("text")
                i_col = next((lower.index(c) for c in ("_id", "id", "doc_id", "docid") if c in lower), None)
                rows: Iterable = reader
            else:  # no header: first column id, second text
                i_col, t_col = 0, 1
                rows = itertools.chain([header], reader)
            for n, row in enumerate(rows):
                if len(row) <= t_col:
                    raise ValueError(f"{path}: row {n + 1} has no text column")
                yield (str(row[i_col]) if i_col is not None else str(n)), row[t_col]
        else:
            for lineno, line in enumerate(handle):
                line = line.rstrip("\n")
                if line.strip():
                    yield str(lineno), line


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
            with torch.inference_mode():
                emb = model.encode(
                    [t for _, t in chunk],
                    batch_size=batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=normalize,
                )
            bar.update(len(chunk))
            yield ids, np.asarray(emb, dtype=np.float32)
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
    """
    from ternary_hf.ann.index import _check_type

    _check_type(index_type)
    if total is None and hasattr(corpus, "__len__") and not isinstance(corpus, (str, os.PathLike)):
        total = len(corpus)
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
    index: AnnIndex | None = None
    store = None
    row = 0
    for ids, emb in encode_chunks(
        model, read_corpus(corpus), chunk_size=chunk_size, batch_size=batch_size, total=total,
        show_progress_bar=show_progress_bar,
    ):
        if index is None:
            dim = emb.shape[1]
            index = AnnIndex.create(index_type, dim, model_id=model_id, params=params, expected_size=total)
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
