"""``ternary-hf ann build|encode|index|export|search|eval``: FAISS indexes over (ternary) embeddings.

Examples::

    ternary-hf ann build MODEL corpus.jsonl --index hnsw --out corpus.tann
    ternary-hf ann search corpus.tann "how do ternary weights work" -k 5
    # past one machine: encode on Ray (local cluster, or --address HOST:PORT), IVF-PQ merged on disk
    ternary-hf ann build MODEL corpus_dir/ --ray --index ivf-pq --out corpus_index/
    ternary-hf ann encode MODEL corpus_dir/ --ray --address 10.0.0.5:6379 --out shards/   # embeddings only
    ternary-hf ann index shards/ --index ivf-pq --out corpus_index/                        # index from shards
    ternary-hf ann export shards/ --lancedb ./vectors --table corpus                       # LanceDB table
    ternary-hf ann eval MODEL --quantize --baseline MODEL            # fp32 vs ternary (PTQ), WordNet task
    ternary-hf ann eval TERNARY_DIR --baseline FP_MODEL --retrieval queries.jsonl corpus.jsonl qrels.tsv

A corpus is a .txt (one document per line), .jsonl (``_id``, ``text``[, ``title``]) or .tsv/.csv
(``id``, ``text``) file, or ``wordnet`` for the held-out WordNet definitions; with ``--ray`` also ``.parquet``
or a folder of such files. An index built with ``--quantize`` records ``MODEL#ternary-ptq`` as its model id so
``search`` re-creates that model; every index records the model's fingerprint, and ``search`` refuses a model whose
files differ (``--allow-model-mismatch`` overrides).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

PTQ_SUFFIX = "#ternary-ptq"


def _add_params(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("index parameters (defaults follow the corpus size)")
    g.add_argument("--hnsw-m", type=int, default=32)
    g.add_argument("--ef-construction", type=int, default=80)
    g.add_argument("--ef-search", type=int, default=128)
    g.add_argument("--nlist", type=int, default=None)
    g.add_argument("--nprobe", type=int, default=None)
    g.add_argument("--pq-m", type=int, default=None)
    g.add_argument("--rescore", choices=("int8", "float32", "none"), default="int8")
    g.add_argument("--rescore-multiplier", type=int, default=4)


def _params(args: argparse.Namespace):
    from ternary_hf.ann.index import IndexParams

    return IndexParams(
        hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search,
        nlist=args.nlist, nprobe=args.nprobe, pq_m=args.pq_m, rescore=args.rescore,
        rescore_multiplier=args.rescore_multiplier,
    )


def _add_ray(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoding on Ray (pip install 'ternary-hf[ray]')")
    g.add_argument("--ray", action="store_true", help="encode on Ray Data actor pools (a local cluster unless --address)")
    g.add_argument("--address", default=None, help="Ray cluster to join: HOST:PORT, auto or ray://HOST:PORT")
    g.add_argument("--actors", type=int, default=None, help="encoder actors (default: from the cluster's CPUs)")
    g.add_argument("--threads-per-actor", type=int, default=None, help="torch threads per actor (default: 1, 2 above 8 CPUs)")
    g.add_argument("--rows-per-shard", type=int, default=100_000, help="rows per embedding shard file")


def _add_encode(p: argparse.ArgumentParser, chunk_default: int) -> None:
    p.add_argument("model", help="model directory or Hub id")
    p.add_argument("corpus", help="corpus file (.txt/.jsonl/.tsv/.csv/.parquet), a folder of them (--ray), or 'wordnet'")
    p.add_argument("--quantize", action="store_true", help="ternarize the model on load (PTQ)")
    p.add_argument("--chunk-size", type=int, default=chunk_default, help="texts encoded per call (a Ray block)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (checked before any work)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ann`` subcommand with ``build``, ``encode``, ``index``, ``export``, ``search`` and ``eval``."""
    from ternary_hf.ann.index import INDEX_TYPES

    p = subparsers.add_parser(
        "ann", help="build, search and evaluate FAISS indexes", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="ann_command", required=True)

    b = sub.add_parser("build", help="encode a corpus and build an index file (or, with --ray, an on-disk index folder)")
    _add_encode(b, 8192)
    b.add_argument("--out", required=True, help="index file to write atomically (with --ray: index folder)")
    b.add_argument("--index", default=None, help=f"one of {', '.join(INDEX_TYPES)} (default hnsw; with --ray ivf-pq or ivf-flat, default ivf-pq)")
    b.add_argument("--total", type=int, default=None, help="corpus size, if known (sizes IVF, progress bar)")
    b.add_argument("--embeddings", default=None, help="also write the embeddings to this .npy file (needs --total)")
    b.add_argument("--shards", default=None, help="with --ray: embedding shard folder to keep (default: OUT.shards)")
    b.add_argument("--device", default="cpu")
    _add_ray(b)
    _add_params(b)
    b.set_defaults(func=run_build)

    en = sub.add_parser("encode", help="encode a corpus into embedding shards (parquet + manifest), in one process or on Ray")
    _add_encode(en, 1024)
    en.add_argument("--out", required=True, help="shard folder to write (published only when complete)")
    en.add_argument("--device", default="cpu")
    _add_ray(en)
    en.set_defaults(func=run_encode)

    ix = sub.add_parser("index", help="build an on-disk IVF index from embedding shards (FAISS merge_ondisk)")
    ix.add_argument("shards", nargs="+", help="shard folder(s) written by `ann encode` (same model)")
    ix.add_argument("--out", required=True, help="index folder to write")
    ix.add_argument("--index", default="ivf-pq", choices=("ivf-pq", "ivf-flat"))
    ix.add_argument("--train-size", type=int, default=None, help="vectors sampled to train (default max(40*nlist, 10000))")
    ix.add_argument("--threads", type=int, default=None, help="FAISS threads")
    ix.add_argument("--overwrite", action="store_true")
    _add_params(ix)
    ix.set_defaults(func=run_index)

    ex = sub.add_parser("export", help="export embedding shards to a LanceDB table (pip install 'ternary-hf[store]')")
    ex.add_argument("shards", nargs="+", help="shard folder(s) written by `ann encode` (same model)")
    ex.add_argument("--lancedb", required=True, help="LanceDB URI: a folder, or s3://... / gs://...")
    ex.add_argument("--table", default="corpus")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing table")
    ex.set_defaults(func=run_export)

    s = sub.add_parser("search", help="search an index with text queries")
    s.add_argument("index_file", help="index file (.tann) or index folder built from shards")
    s.add_argument("queries", nargs="*", help="query texts")
    s.add_argument("--queries-file", help="file with one query per line")
    s.add_argument("--model", help="model to encode queries (default: the one recorded in the index)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--ef-search", type=int, default=None)
    s.add_argument("--nprobe", type=int, default=None)
    s.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    s.add_argument("--allow-model-mismatch", action="store_true",
                   help="search even if the model's files differ from those of the model that built the index")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=run_search)

    e = sub.add_parser("eval", help="recall vs exact, nDCG@10 vs qrels, QPS, build time, bytes per index type")
    e.add_argument("model", nargs="?", default=None, help="model directory or Hub id (default: bundled all-MiniLM-L6-v2)")
    e.add_argument("--baseline", help="fp32 reference model, evaluated first")
    e.add_argument("--quantize", action="store_true", help="ternarize MODEL on load (PTQ)")
    e.add_argument("--index", default=",".join(INDEX_TYPES), help="comma-separated index types")
    e.add_argument("--retrieval", nargs=3, metavar=("QUERIES", "CORPUS", "QRELS"), help="user retrieval task")
    e.add_argument("--wordnet-queries", type=int, default=1000)
    e.add_argument("-k", type=int, default=10)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, default=None, help="FAISS threads (default: all; 1 on a busy shared CPU)")
    e.add_argument("--out", help="directory for ann_results.json and ann_results.md")
    _add_params(e)
    e.set_defaults(func=run_eval)


def _corpus(spec: str):
    if spec == "wordnet":
        from ternary_hf.data import wordnet

        return wordnet.retrieval_task(n_queries=1).corpus
    if not Path(spec).is_file():
        raise FileNotFoundError(f"corpus file {spec} not found (or pass 'wordnet')")
    return spec


def _fail(verb: str, exc: BaseException) -> int:
    print(f"ternary-hf ann {verb}: error: {exc}", file=sys.stderr)
    return 2


ERRORS = (FileNotFoundError, FileExistsError, ImportError, ConnectionError, ValueError, TypeError)


def _check_out(args: argparse.Namespace, file: bool = False) -> None:
    """``--out`` must be free (or ``--overwrite``) before any encoding starts; an index file cannot replace a folder."""
    from ternary_hf.ann.shards import check_output_free

    if file and Path(args.out).is_dir():
        raise FileExistsError(f"--out {args.out} is a folder; an index file needs a file path (e.g. {args.out.rstrip('/')}.tann)")
    check_output_free(args.out, args.overwrite)


def _encode_shards(args: argparse.Namespace, out: str):
    """Encode ``args.corpus`` into the shard folder ``out``, on Ray or in this process."""
    from ternary_hf.ann.shards import encode_to_shards

    model_id = str(args.model) + (PTQ_SUFFIX if args.quantize else "")
    if args.ray:
        from ternary_hf.ann.ray_encode import encode_with_ray

        if args.corpus == "wordnet":
            raise ValueError("--ray reads corpus files; write the WordNet corpus to a file first")
        return encode_with_ray(
            args.corpus, args.model, out, quantize=args.quantize, model_id=model_id, address=args.address,
            num_actors=args.actors, threads_per_actor=args.threads_per_actor, chunk_size=args.chunk_size,
            batch_size=args.batch_size, rows_per_shard=args.rows_per_shard, overwrite=args.overwrite,
        )
    from ternary_hf.ann.fingerprint import model_fingerprint
    from ternary_hf.evaluation.models import load_model

    corpus = _corpus(args.corpus)
    loaded = load_model(args.model, quantize=args.quantize, device=args.device)  # first: a Hub id gets cached
    fingerprint = model_fingerprint(args.model, variant=PTQ_SUFFIX[1:] if args.quantize else None)
    return encode_to_shards(
        loaded.model, corpus, out, model_id=model_id, model_fingerprint=fingerprint, chunk_size=args.chunk_size,
        batch_size=args.batch_size, rows_per_shard=args.rows_per_shard, overwrite=args.overwrite,
    )


def run_build(args: argparse.Namespace) -> int:
    from ternary_hf.ann.index import _check_type
    from ternary_hf.ann.ondisk import ONDISK_TYPES

    try:
        index_type = _check_type(args.index or ("ivf-pq" if args.ray else "hnsw"))
        if args.ray and index_type not in ONDISK_TYPES:
            raise ValueError(f"--ray builds an on-disk index: --index must be one of {', '.join(ONDISK_TYPES)}")
        _check_out(args, file=not args.ray)
        if args.ray:
            return _run_build_ray(args, index_type)
        from ternary_hf.ann.encode import build_index
        from ternary_hf.ann.fingerprint import model_fingerprint
        from ternary_hf.evaluation.models import load_model

        corpus = _corpus(args.corpus)
        loaded = load_model(args.model, quantize=args.quantize, device=args.device)  # first: a Hub id gets cached
        fingerprint = model_fingerprint(args.model, variant=PTQ_SUFFIX[1:] if args.quantize else None)
        model_id = str(args.model) + (PTQ_SUFFIX if args.quantize else "")
        start = time.perf_counter()
        index = build_index(
            loaded.model, corpus, index_type, model_id=model_id, model_fingerprint=fingerprint, params=_params(args),
            chunk_size=args.chunk_size, batch_size=args.batch_size, total=args.total,
            embeddings_path=args.embeddings,
        )
        total_s = time.perf_counter() - start
        size = index.save(args.out)
    except ERRORS as exc:
        return _fail("build", exc)
    print(
        f"{args.out}: {index_type} index, {index.ntotal:,} documents, dim {index.dim}, {size / 2**20:.2f} MiB; "
        f"encode+build {total_s:.1f} s (index build {index.build_seconds:.1f} s)"
    )
    return 0


def _run_build_ray(args: argparse.Namespace, index_type: str) -> int:
    from ternary_hf.ann.ondisk import build_ondisk_index
    from ternary_hf.ann.shards import check_output_free

    shards_dir = args.shards or str(args.out).rstrip("/") + ".shards"
    check_output_free(shards_dir, args.overwrite, "shard folder")
    start = time.perf_counter()
    shards = _encode_shards(args, shards_dir)
    encoded_s = time.perf_counter() - start
    index = build_ondisk_index(shards, args.out, index_type, params=_params(args), overwrite=args.overwrite, verify=False)
    print(
        f"{args.out}: {index_type} on-disk index, {index.ntotal:,} documents, dim {index.dim}; embeddings in "
        f"{shards_dir} ({len(shards.files)} shards); encode {encoded_s:.1f} s, index {index.build_seconds:.1f} s"
    )
    return 0


def run_encode(args: argparse.Namespace) -> int:
    try:
        _check_out(args)
        start = time.perf_counter()
        shards = _encode_shards(args, args.out)
    except ERRORS as exc:
        return _fail("encode", exc)
    print(f"{args.out}: {shards.count:,} embeddings of dim {shards.dim} in {len(shards.files)} shards, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def run_index(args: argparse.Namespace) -> int:
    from ternary_hf.ann.index import faiss_threads
    from ternary_hf.ann.ondisk import build_ondisk_index

    try:
        _check_out(args)
        params = _params(args)
        params.train_size = args.train_size
        with faiss_threads(args.threads):
            index = build_ondisk_index(args.shards, args.out, args.index, params=params, overwrite=args.overwrite)
    except ERRORS as exc:
        return _fail("index", exc)
    print(f"{args.out}: {args.index} on-disk index, {index.ntotal:,} vectors, nlist {index.params.nlist}, "
          f"built in {index.build_seconds:.1f} s")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ternary_hf.ann.lance import export_to_lancedb

    try:
        table = export_to_lancedb(args.shards, args.lancedb, args.table, overwrite=args.overwrite)
    except ERRORS as exc:
        return _fail("export", exc)
    print(f"{args.lancedb}: LanceDB table {args.table!r} with {table.count_rows():,} rows")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from ternary_hf.ann.ondisk import load_index
    from ternary_hf.evaluation.models import load_model

    try:
        queries = list(args.queries)
        if args.queries_file:
            queries += [q for q in Path(args.queries_file).read_text(encoding="utf-8").splitlines() if q.strip()]
        if not queries:
            raise ValueError("no queries: give query texts or --queries-file")
        index = load_index(args.index_file)
        index.set_search_params(ef_search=args.ef_search, nprobe=args.nprobe)
        model_id = args.model or index.model_id
        if not model_id:
            raise ValueError(f"{args.index_file} records no model id: pass --model")
        quantize = model_id.endswith(PTQ_SUFFIX)
        source = model_id.removesuffix(PTQ_SUFFIX)
        loaded = load_model(source, quantize=quantize, device=args.device)
        # before any query is encoded: the model's files must be those the index was built from
        index.check_model(source, variant=PTQ_SUFFIX[1:] if quantize else None,
                          allow_model_mismatch=args.allow_model_mismatch, what=str(args.index_file))
        with warnings.catch_warnings():  # a mismatch allowed above has been reported once already
            warnings.simplefilter("ignore", UserWarning)
            ids, scores = index.search(queries, args.k, model=loaded.model, allow_model_mismatch=args.allow_model_mismatch)
    except ERRORS as exc:
        return _fail("search", exc)
    for query, hit_ids, hit_scores in zip(queries, ids, scores):
        if args.json:
            print(json.dumps({"query": query, "ids": hit_ids, "scores": hit_scores}))
        else:
            print(f"# {query}")
            for rank, (i, sc) in enumerate(zip(hit_ids, hit_scores), 1):
                print(f"{rank:3d}  {sc:.4f}  {i}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ternary_hf.ann.evaluate import evaluate_ann, rows_markdown
    from ternary_hf.evaluation.models import load_model
    from ternary_hf.fileio import atomic_write_bytes

    try:
        if args.model is None:
            from ternary_hf.defaults import default_model_path

            args.model = default_model_path()
        if args.retrieval:
            from ternary_hf.evaluation.user_tasks import load_retrieval_task

            task = load_retrieval_task(*args.retrieval)
        else:
            from ternary_hf.data import wordnet

            task = wordnet.retrieval_task(n_queries=args.wordnet_queries)
        index_types = [t.strip() for t in args.index.split(",") if t.strip()]
        models = []
        if args.baseline:
            models.append(load_model(args.baseline, device=args.device))
        model = load_model(args.model, quantize=args.quantize, device=args.device)
        if models and model.label == models[0].label:
            model.label += " (model)"
        models.append(model)
        rows = evaluate_ann(
            models, task, index_types, k=args.k, params=_params(args), batch_size=args.batch_size, threads=args.threads
        )
    except (FileNotFoundError, ImportError, ValueError, TypeError) as exc:
        print(f"ternary-hf ann eval: error: {exc}", file=sys.stderr)
        return 2
    table = rows_markdown(rows)
    print(f"task {task.name}: {len(task.queries)} queries, {len(task.corpus):,} documents\n")
    print(table)
    if args.out:
        from dataclasses import asdict

        out = Path(args.out)
        atomic_write_bytes(out / "ann_results.json", json.dumps([asdict(r) for r in rows], indent=2).encode())
        atomic_write_bytes(out / "ann_results.md", (table + "\n").encode())
    return 0
