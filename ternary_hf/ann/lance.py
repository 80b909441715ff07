"""Export embedding shards to LanceDB, for people who want a vector database rather than index files.

Why LanceDB (``pip install 'ternary-hf[store]'``) and not Milvus Lite: LanceDB runs inside the Python process
(a Rust library; no server process to start, no port), stores tables as Lance columnar files in a folder or an
object store (``s3://``, ``gs://``), and takes Arrow record batches, so our parquet shards stream into it without
conversion, one shard in memory at a time. The same table is later served by LanceDB Cloud / Enterprise or read by
anything that reads Lance. Milvus Lite starts a local Milvus server underneath pymilvus; it scales to a Milvus
cluster with the same client, but brings a server binary and gRPC stack for what is, here, a file export.

The table has columns ``id`` (string) and ``vector`` (``fixed_size_list<float32>[dim]``, LanceDB's default vector
column); its schema metadata records the model id and fingerprint, which :func:`lancedb_fingerprint` reads back so
text queries can be checked against the model that encoded the corpus
(:func:`~ternary_hf.ann.fingerprint.check_fingerprint`). Search it with LanceDB's own API, e.g.
``table.search(query_vector).distance_type("cosine").limit(10).to_list()``; add an ANN index there with
``table.create_index(...)`` once the table is large (LanceDB searches exhaustively without one).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

from ternary_hf.ann.fingerprint import ModelFingerprint
from ternary_hf.ann.shards import EmbeddingShards, check_compatible

STORE_EXTRA = "pip install 'ternary-hf[store]'  (lancedb)"
META_FINGERPRINT = b"ternary_hf.model_fingerprint"
META_MODEL_ID = b"ternary_hf.model_id"


def _import_lancedb():
    try:
        import lancedb
    except ImportError as exc:
        raise ImportError(f"exporting to a vector store needs LanceDB, which is not installed: {STORE_EXTRA}") from exc
    return lancedb


def export_to_lancedb(
    shards: str | os.PathLike | EmbeddingShards | Sequence[str | os.PathLike | EmbeddingShards],
    uri: str | os.PathLike,
    table: str = "corpus",
    *,
    overwrite: bool = False,
    verify: bool = True,
) -> Any:
    """Stream one or more shard folders (same model) into the LanceDB table ``table`` at ``uri``; returns it.

    An existing table is refused unless ``overwrite`` (checked before anything is read). LanceDB commits the table
    when all batches are written: an interrupted export leaves no table (or the old one with ``overwrite``).
    """
    import pyarrow as pa

    lancedb = _import_lancedb()
    items = [shards] if isinstance(shards, (str, os.PathLike, EmbeddingShards)) else list(shards)
    if not items:
        raise ValueError("no shard folders given")
    sets = [s if isinstance(s, EmbeddingShards) else EmbeddingShards.open(s, verify=verify) for s in items]
    check_compatible(sets)
    db = lancedb.connect(str(uri))
    if table in db.list_tables().tables and not overwrite:
        raise FileExistsError(f"LanceDB table {table!r} already exists at {uri}; pass --overwrite (overwrite=True)")
    first = sets[0]
    metadata = {META_MODEL_ID: (first.model_id or "").encode()}
    if first.fingerprint is not None:
        metadata[META_FINGERPRINT] = json.dumps(first.fingerprint.to_dict()).encode()
    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), first.dim))], metadata=metadata)

    def batches() -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        for s in sets:
            for path in s.files:
                for batch in pq.ParquetFile(path).iter_batches():
                    yield pa.RecordBatch.from_arrays([batch.column("id"), batch.column("embedding")], schema=schema)

    return db.create_table(table, data=batches(), schema=schema, mode="overwrite" if overwrite else "create")


def lancedb_fingerprint(table: Any) -> ModelFingerprint | None:
    """The model fingerprint an exported table records (``None`` if it records none)."""
    raw = (table.schema.metadata or {}).get(META_FINGERPRINT)
    return ModelFingerprint.from_dict(json.loads(raw)) if raw else None
