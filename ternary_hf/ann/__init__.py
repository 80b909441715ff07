"""FAISS approximate-nearest-neighbour search over (ternary) embeddings.

- :func:`build_index`: encode a corpus in chunks (streaming, progress bar) into a FAISS index of
  type ``flat``, ``hnsw``, ``ivf-flat``, ``ivf-pq`` or ``binary`` (sign bits + int8 rescoring).
- :class:`AnnIndex`: ``search(queries, k) -> (ids, scores)``, ``save`` (atomic, checksummed, with
  corpus ids, model id and dimension) / ``load``.
- :func:`search_sharded`: merge the top-k of indexes built over disjoint corpus shards.
- :func:`evaluate_ann`: recall@k against exact search, nDCG@10 against qrels, queries/s, build
  time, index bytes, per model (fp32 vs ternary) and index type.

CLI: ``ternary-hf ann build|search|eval``.
"""

from ternary_hf.ann.encode import build_index, encode_chunks, encode_to_memmap, read_corpus
from ternary_hf.ann.evaluate import AnnRow, evaluate_ann, evaluate_embeddings, qrels_metrics, recall_against, rows_markdown
from ternary_hf.ann.index import (
    INDEX_TYPES,
    AnnIndex,
    IndexFileError,
    IndexParams,
    build_index_from_chunks,
    faiss_threads,
    search_sharded,
)

__all__ = [
    "INDEX_TYPES",
    "AnnIndex",
    "AnnRow",
    "IndexFileError",
    "IndexParams",
    "build_index",
    "build_index_from_chunks",
    "encode_chunks",
    "encode_to_memmap",
    "evaluate_ann",
    "evaluate_embeddings",
    "faiss_threads",
    "qrels_metrics",
    "read_corpus",
    "recall_against",
    "rows_markdown",
    "search_sharded",
]
