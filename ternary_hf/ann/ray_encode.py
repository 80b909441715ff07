"""Encode a corpus on a Ray cluster (local or remote) into embedding shards, with the same code on one machine or many.

Pipeline (Ray Data, streaming: no process ever holds the corpus)::

    corpus files ──read (one task per file, `chunk_size`-row blocks)──▶ encoder actors ──▶ driver ──▶ shard folder
                                                                         (model loaded once per actor,
                                                                          `threads_per_actor` torch threads)

* Reading: each corpus file (``.txt`` / ``.jsonl`` / ``.tsv`` / ``.csv`` / ``.parquet``) is parsed by
  :func:`~ternary_hf.ann.encode.read_corpus_stream` on a worker, the parser single-process encoding uses, so ids and
  texts are the same. Files are read in parallel; one file is read by one task (split a huge corpus into files).
* Encoding: ``map_batches`` with an actor pool of ``num_actors`` :class:`CorpusEncoder` actors; each block is one
  :func:`~ternary_hf.ann.encode.encode_texts` call, exactly the chunk :func:`~ternary_hf.ann.shards.encode_to_shards`
  encodes in one process, so the vectors are identical for a single-file corpus (same threads per encoder).
* Faults: Ray Data restarts a dead actor and re-runs its block (``max_restarts=-1, max_task_retries=-1``); a block's
  output reaches the driver only from a task that finished, so a killed worker loses and duplicates nothing.
* Writing: the driver receives embeddings in corpus order (``preserve_order``) and writes them with
  :class:`~ternary_hf.ann.shards.ShardWriter`; the output is the same shard folder as the single-process path, on
  the driver's disk (no shared file system needed for the output). At d = 384 that is 1.5 kB per document.

On a cluster, every node must see the corpus files and the model at the same paths (NFS, or a Hub id in each
node's cache) and have ternary-hf installed; each actor checks that the model files it loads have the driver's
fingerprint before encoding anything.
"""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ternary_hf.ann.encode import CORPUS_SUFFIXES, encode_texts, read_corpus_stream
from ternary_hf.ann.fingerprint import ModelMismatchError, model_fingerprint
from ternary_hf.ann.shards import (
    EmbeddingShards,
    arrow_to_embeddings,
    check_output_free,
    embeddings_to_arrow,
    write_shards,
)

RAY_EXTRA = "pip install 'ternary-hf[ray]'  (Ray Data: ray[data])"


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"encoding on Ray needs Ray Data, which is not installed: {RAY_EXTRA}") from exc
    return ray


def corpus_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The corpus files behind a file, a folder (its corpus files, sorted) or a list of files; checked up front."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[str] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"corpus folder {path} holds no {'/'.join(CORPUS_SUFFIXES)} files")
            files.extend(str(p.resolve()) for p in found)
        elif path.is_file():
            files.append(str(path.resolve()))
        else:
            raise FileNotFoundError(f"corpus file {path} not found")
    if not files:
        raise FileNotFoundError("no corpus files given")
    return files


def _corpus_datasource(files: list[str], chunk_size: int, prefix_ids: bool):
    import pyarrow as pa
    from ray.data.datasource import FileBasedDatasource

    class CorpusDatasource(FileBasedDatasource):
        """One read task per file; each row is one chunk of ``chunk_size`` documents (``ids``, ``texts`` lists).

        A chunk travels as one row because Ray Data re-blocks rows freely (splitting and merging blocks) and
        never splits a row: the encoder gets exactly the chunks a single process would encode.
        """

        def _open_input_source(self, filesystem, path, **open_args):
            if path.lower().endswith(".parquet"):  # parquet needs random access (footer first)
                return filesystem.open_input_file(path)
            return super()._open_input_source(filesystem, path, **open_args)

        def _read_stream(self, f, path: str) -> Iterator["pa.Table"]:
            prefix = f"{Path(path).name}:" if prefix_ids else ""
            ids: list[str] = []
            texts: list[str] = []
            handle = f if path.lower().endswith(".parquet") else io.BufferedReader(f)
            for doc_id, text in read_corpus_stream(handle, path, prefix):
                ids.append(doc_id)
                texts.append(text)
                if len(ids) == chunk_size:
                    yield pa.table({"ids": [ids], "texts": [texts]})
                    ids, texts = [], []
            if ids:
                yield pa.table({"ids": [ids], "texts": [texts]})

    return CorpusDatasource(files, file_extensions=None)


class CorpusEncoder:
    """Ray Data actor: loads the model once, then encodes batches into ``(id, embedding)`` rows.

    A batch is either chunk rows (``ids``, ``texts`` lists, from corpus files: each chunk is one encode call)
    or plain ``(id, text)`` rows (from a user's ``ray.data.Dataset``).
    """

    def __init__(self, model: str, quantize: bool, threads: int, batch_size: int, normalize: bool,
                 fingerprint: str | None):
        import torch

        from ternary_hf.evaluation.models import load_model

        torch.set_num_threads(threads)
        if fingerprint is not None:
            mine = model_fingerprint(model, variant="ternary-ptq" if quantize else None)
            if mine.digest != fingerprint:
                raise ModelMismatchError(
                    f"the model files at {model} on {socket.gethostname()} (model {mine.short}) differ from the "
                    f"driver's (model {fingerprint[:12]}): give every node the same model"
                )
        self.model = load_model(model, quantize=quantize).model
        self.batch_size, self.normalize = batch_size, normalize

    def __call__(self, batch):
        import pyarrow as pa

        if "texts" in batch.column_names:
            chunks = zip(batch.column("ids").to_pylist(), batch.column("texts").to_pylist())
        else:
            chunks = [(batch.column("id").to_pylist(), batch.column("text").to_pylist())]
        tables = []
        for ids, texts in chunks:
            emb = encode_texts(self.model, texts, batch_size=self.batch_size, normalize=self.normalize)
            tables.append(pa.table({"id": pa.array(ids, pa.string()), "embedding": embeddings_to_arrow(emb)}))
        return pa.concat_tables(tables)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with what to do, when a ``host:port`` Ray address does not answer (Ray itself retries for long)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379), 'auto' or ray://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one there with `ray start --head "
            f"--port {port}`, fix --address, or leave --address out to run a local cluster on this machine"
        ) from exc


def cluster_plan(cpus: int, num_actors: int | None = None, threads_per_actor: int | None = None) -> tuple[int, int]:
    """``(num_actors, threads_per_actor)`` from the cluster's CPUs: one-thread actors up to 8 CPUs (no intra-op
    threading overhead), two-thread actors above (half the model copies); one actor per ``threads`` CPUs."""
    cpus = max(1, int(cpus))
    threads = threads_per_actor or (1 if cpus <= 8 else 2)
    if threads < 1:
        raise ValueError(f"threads_per_actor must be >= 1, got {threads}")
    actors = num_actors or max(1, cpus // threads)
    if actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {actors}")
    return actors, threads


def encode_with_ray(
    corpus: Any,
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    quantize: bool = False,
    model_id: str | None = None,
    address: str | None = None,
    num_actors: int | None = None,
    threads_per_actor: int | None = None,
    chunk_size: int = 1024,
    batch_size: int = 64,
    rows_per_shard: int = 100_000,
    normalize: bool = True,
    overwrite: bool = False,
    show_progress_bar: bool = True,
    ray_init_kwargs: dict[str, Any] | None = None,
) -> EmbeddingShards:
    """Encode ``corpus`` with ``model`` on Ray Data into the shard folder ``out`` (see the module doc).

    Args:
        corpus: a corpus file, a folder of corpus files, a list of files, or a ``ray.data.Dataset`` with ``id`` and
            ``text`` columns. With several files, ids that come from positions (``.txt`` line numbers, rows without
            an id column) are prefixed with the file name.
        model: model folder or Hub id, loaded by every actor (``quantize``: ternarize on load).
        address: Ray cluster to join (``host:port``, ``auto``, ``ray://...``); ``None`` joins a running
            ``ray.init`` session, else ``RAY_ADDRESS``, else starts a local cluster on this machine.
        num_actors, threads_per_actor: default from the cluster's CPUs (:func:`cluster_plan`).
        chunk_size: rows per block, i.e. per encode call; batch_size: texts per forward pass inside it.
        rows_per_shard: rows per output parquet shard.
    """
    out = check_output_free(out, overwrite, "shard folder")
    ray = _import_ray()
    from ray.data import ActorPoolStrategy, DataContext

    if chunk_size < 1 or batch_size < 1:
        raise ValueError("chunk_size and batch_size must be >= 1")
    dataset = corpus if isinstance(corpus, ray.data.Dataset) else None
    files = None if dataset is not None else corpus_files(corpus)
    variant = "ternary-ptq" if quantize else None
    fingerprint = model_fingerprint(model, variant=variant)  # also: the model exists, before a cluster starts
    started_here = False
    if address is not None:
        check_address(address)
    if not ray.is_initialized():
        kwargs = dict(ray_init_kwargs or {})
        if address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs.setdefault("include_dashboard", False)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            raise ConnectionError(f"could not join the Ray cluster at {address or 'RAY_ADDRESS/local'}: {exc}") from exc
        started_here = True
    try:
        actors, threads = cluster_plan(ray.cluster_resources().get("CPU", 1), num_actors, threads_per_actor)
        ctx = DataContext.get_current()
        saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
        ctx.execution_options.preserve_order = True  # the driver writes shards in corpus order
        ctx.enable_progress_bars = show_progress_bar
        try:
            if dataset is None:
                # reading and parsing is cheap next to encoding: read tasks do not hold a CPU the actors need
                dataset = ray.data.read_datasource(_corpus_datasource(files, chunk_size, len(files) > 1),
                                                   num_cpus=0)
                block_rows = 1  # one chunk row per call: the same encode calls as a single process makes
            else:
                missing = {"id", "text"} - set(dataset.schema().names)
                if missing:
                    raise ValueError(f"the dataset has no {', '.join(sorted(missing))} column (it needs 'id' and 'text')")
                block_rows = chunk_size
            encoded = dataset.map_batches(
                CorpusEncoder,
                fn_constructor_kwargs={"model": str(model), "quantize": quantize, "threads": threads,
                                       "batch_size": batch_size, "normalize": normalize,
                                       "fingerprint": fingerprint.digest},
                batch_size=block_rows, batch_format="pyarrow", compute=ActorPoolStrategy(size=actors),
                num_cpus=threads,
            )
            metadata = {
                "model_id": model_id or str(model) + ("#ternary-ptq" if quantize else ""),
                "model_fingerprint": fingerprint.to_dict(),
                "normalized": normalize,
                "encoder": {"engine": "ray", "actors": actors, "threads_per_actor": threads,
                            "chunk_size": chunk_size, "batch_size": batch_size,
                            "cluster_cpus": ray.cluster_resources().get("CPU"), "nodes": len(ray.nodes())},
                "corpus": files if files is not None else "ray.data.Dataset",
            }
            return write_shards(_chunks(encoded), out, rows_per_shard=rows_per_shard, metadata=metadata,
                                overwrite=overwrite)
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
    finally:
        if started_here:
            ray.shutdown()


def _chunks(encoded) -> Iterator[tuple[list[str], np.ndarray]]:
    for table in encoded.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield table.column("id").to_pylist(), arrow_to_embeddings(table.column("embedding"))
