"""``ternary-hf ann build|search|eval``: FAISS indexes over (ternary) embeddings.

Examples::

    ternary-hf ann build MODEL corpus.jsonl --index hnsw --out corpus.tann
    ternary-hf ann search corpus.tann "how do ternary weights work" -k 5
    ternary-hf ann eval MODEL --quantize --baseline MODEL            # fp32 vs ternary (PTQ), WordNet task
    ternary-hf ann eval TERNARY_DIR --baseline FP_MODEL --retrieval queries.jsonl corpus.jsonl qrels.tsv

A corpus is a .txt (one document per line), .jsonl (``_id``, ``text``[, ``title``]) or .tsv/.csv
(``id``, ``text``) file, or ``wordnet`` for the held-out WordNet definitions. An index built with
``--quantize`` records ``MODEL#ternary-ptq`` as its model id so ``search`` re-creates that model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ann`` subcommand with ``build``, ``search`` and ``eval``."""
    from ternary_hf.ann.index import INDEX_TYPES

    p = subparsers.add_parser(
        "ann", help="build, search and evaluate FAISS indexes", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="ann_command", required=True)

    b = sub.add_parser("build", help="encode a corpus and build an index file")
    b.add_argument("model", help="model directory or Hub id")
    b.add_argument("corpus", help="corpus file (.txt/.jsonl/.tsv/.csv) or 'wordnet'")
    b.add_argument("--out", required=True, help="index file to write (atomically)")
    b.add_argument("--index", default="hnsw", help=f"one of {', '.join(INDEX_TYPES)}")
    b.add_argument("--quantize", action="store_true", help="ternarize the model on load (PTQ)")
    b.add_argument("--chunk-size", type=int, default=8192, help="texts encoded and added per chunk")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--total", type=int, default=None, help="corpus size, if known (sizes IVF, progress bar)")
    b.add_argument("--embeddings", default=None, help="also write the embeddings to this .npy file (needs --total)")
    b.add_argument("--device", default="cpu")
    _add_params(b)
    b.set_defaults(func=run_build)

    s = sub.add_parser("search", help="search an index with text queries")
    s.add_argument("index_file")
    s.add_argument("queries", nargs="*", help="query texts")
    s.add_argument("--queries-file", help="file with one query per line")
    s.add_argument("--model", help="model to encode queries (default: the one recorded in the index)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--ef-search", type=int, default=None)
    s.add_argument("--nprobe", type=int, default=None)
    s.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
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


def run_build(args: argparse.Namespace) -> int:
    from ternary_hf.ann.encode import build_index
    from ternary_hf.ann.index import _check_type
    from ternary_hf.evaluation.models import load_model

    try:
        _check_type(args.index)
        corpus = _corpus(args.corpus)
        loaded = load_model(args.model, quantize=args.quantize, device=args.device)
        model_id = str(args.model) + (PTQ_SUFFIX if args.quantize else "")
        start = time.perf_counter()
        index = build_index(
            loaded.model, corpus, args.index, model_id=model_id, params=_params(args),
            chunk_size=args.chunk_size, batch_size=args.batch_size, total=args.total,
            embeddings_path=args.embeddings,
        )
        total_s = time.perf_counter() - start
        size = index.save(args.out)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"ternary-hf ann build: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {args.index} index, {index.ntotal:,} documents, dim {index.dim}, {size / 2**20:.2f} MiB; "
        f"encode+build {total_s:.1f} s (index build {index.build_seconds:.1f} s)"
    )
    return 0


def run_search(args: argparse.Namespace) -> int:
    from ternary_hf.ann.index import AnnIndex
    from ternary_hf.evaluation.models import load_model

    try:
        queries = list(args.queries)
        if args.queries_file:
            queries += [q for q in Path(args.queries_file).read_text(encoding="utf-8").splitlines() if q.strip()]
        if not queries:
            raise ValueError("no queries: give query texts or --queries-file")
        index = AnnIndex.load(args.index_file)
        index.set_search_params(ef_search=args.ef_search, nprobe=args.nprobe)
        model_id = args.model or index.model_id
        if not model_id:
            raise ValueError(f"{args.index_file} records no model id: pass --model")
        quantize = model_id.endswith(PTQ_SUFFIX)
        loaded = load_model(model_id.removesuffix(PTQ_SUFFIX), quantize=quantize, device=args.device)
        ids, scores = index.search(queries, args.k, model=loaded.model)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"ternary-hf ann search: error: {exc}", file=sys.stderr)
        return 2
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
