"""FAISS approximate-nearest-neighbour search over (ternary) embeddings, from one process to a Ray cluster.

- :func:`build_index`: encode a corpus in chunks (streaming, progress bar) into a FAISS index of
  type ``flat``, ``hnsw``, ``ivf-flat``, ``ivf-pq`` or ``binary`` (sign bits + int8 rescoring).
- :class:`AnnIndex`: ``search(queries, k) -> (ids, scores)``, ``save`` (atomic, checksummed, with
  corpus ids, model id, model fingerprint and dimension) / ``load``.
- :func:`model_fingerprint`: SHA-256 of a model's weight, config and tokenizer files; an index
  refuses text queries from a model with other files (:class:`ModelMismatchError`).
- Past one machine: :func:`encode_with_ray` (Ray Data actor pools) or :func:`encode_to_shards`
  (one process) write embedding shards (parquet + manifest); :func:`build_ondisk_index` trains
  an IVF index on a sample and merges per-shard lists with FAISS's ``merge_ondisk``;
  :func:`load_index` opens either kind; :func:`search_sharded` searches several indexes as one
  ``faiss.IndexShards``; :func:`export_to_lancedb` puts shards into a LanceDB table.
- :func:`evaluate_ann`: recall@k against exact search, nDCG@10 against qrels, queries/s, build
  time, index bytes, per model (fp32 vs ternary) and index type.

CLI: ``ternary-hf ann build|encode|index|export|search|eval``.
"""

from ternary_hf.ann.encode import build_index, encode_chunks, encode_texts, encode_to_memmap, read_corpus
from ternary_hf.ann.evaluate import AnnRow, evaluate_ann, evaluate_embeddings, qrels_metrics, recall_against, rows_markdown
from ternary_hf.ann.fingerprint import ModelFingerprint, ModelMismatchError, model_fingerprint
from ternary_hf.ann.index import (
    INDEX_TYPES,
    AnnIndex,
    IndexFileError,
    IndexParams,
    build_index_from_chunks,
    faiss_threads,
    search_sharded,
)
from ternary_hf.ann.lance import export_to_lancedb, lancedb_fingerprint
from ternary_hf.ann.ondisk import build_ondisk_index, load_index
from ternary_hf.ann.ray_encode import encode_with_ray
from ternary_hf.ann.shards import EmbeddingShards, ShardError, encode_to_shards, write_shards

__all__ = [
    "INDEX_TYPES",
    "AnnIndex",
    "AnnRow",
    "EmbeddingShards",
    "IndexFileError",
    "IndexParams",
    "ModelFingerprint",
    "ModelMismatchError",
    "ShardError",
    "build_index",
    "build_index_from_chunks",
    "build_ondisk_index",
    "encode_chunks",
    "encode_texts",
    "encode_to_memmap",
    "encode_to_shards",
    "encode_with_ray",
    "evaluate_ann",
    "evaluate_embeddings",
    "export_to_lancedb",
    "faiss_threads",
    "lancedb_fingerprint",
    "load_index",
    "model_fingerprint",
    "qrels_metrics",
    "read_corpus",
    "recall_against",
    "rows_markdown",
    "search_sharded",
    "write_shards",
]
