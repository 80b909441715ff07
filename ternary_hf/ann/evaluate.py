"""ANN evaluation: each index type against exact search and against the qrels, per model.

For every model the corpus and queries are encoded once; then every index type is built from the
same embeddings and measured: build time, index bytes (as saved), queries/s (median of 3 batch
searches after a warm-up), recall@k against the model's own exact (flat) top-k, and nDCG@10 /
MRR@10 / recall@1 against the task's qrels (sentence-transformers ``InformationRetrievalEvaluator``
metric code on the index's result lists). This is the paper's ternary-embedding-plus-ANN
experiment: run it with the fp32 model and the ternary model.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ternary_hf.ann.index import INDEX_TYPES, AnnIndex, IndexParams, faiss_threads
from ternary_hf.data import RetrievalTask


@dataclass
class AnnRow:
    """One (model, index type) measurement."""

    model: str
    index: str
    build_s: float
    index_bytes: int
    qps: float
    qps_cpu: float
    recall_at_k: float
    ndcg_at_10: float | None
    mrr_at_10: float | None
    recall_at_1: float | None
    k: int = 10


def qrels_metrics(task: RetrievalTask, query_ids: list[str], hits: list[list[str]], scores: list[list[float]]) -> dict[str, float]:
    """nDCG@10, MRR@10, recall@1 of ranked hit lists against the task's binary qrels."""
    from ternary_hf.evaluation.ranking import ranking_metrics

    results = {qid: list(zip(h, sc)) for qid, h, sc in zip(query_ids, hits, scores)}
    judged = {q: task.relevant_docs[q] for q in task.queries if q in task.relevant_docs}
    metrics = ranking_metrics(judged, results, k=10)
    return {name: metrics[name] for name in ("ndcg@10", "mrr@10", "recall@1")}


def recall_against(exact: list[list[str]], approx: list[list[str]], k: int) -> float:
    """Mean |approx top-k ∩ exact top-k| / k."""
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact)]))


def _qps(index: AnnIndex, queries: np.ndarray, k: int, repeats: int = 3) -> tuple[float, float]:
    """Queries per wall second and per CPU second of this process (medians after a warm-up).

    With one FAISS thread on a shared machine the CPU-time figure is the cost of the search; the
    wall-clock figure also counts time spent waiting for cores held by other processes.
    """
    index.search_embeddings(queries[: min(len(queries), 32)], k)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        index.search_embeddings(queries, k)
        wall.append(time.perf_counter() - w)
        cpu.append(max(time.process_time() - c, 1e-9))
    return len(queries) / statistics.median(wall), len(queries) / statistics.median(cpu)


def evaluate_embeddings(
    label: str,
    corpus_ids: list[str],
    corpus_emb: np.ndarray,
    query_ids: list[str],
    query_emb: np.ndarray,
    task: RetrievalTask | None,
    index_types: Sequence[str] = INDEX_TYPES,
    k: int = 10,
    params: IndexParams | None = None,
    threads: int | None = None,
) -> list[AnnRow]:
    """Measure every index type on precomputed embeddings (``threads``: FAISS OpenMP threads)."""
    if len(corpus_emb) == 0:
        raise ValueError("the corpus is empty")
    if len(query_emb) == 0:
        raise ValueError("no queries")
    with faiss_threads(threads):
        return _evaluate_embeddings(label, corpus_ids, corpus_emb, query_ids, query_emb, task, index_types, k, params)


def _evaluate_embeddings(label, corpus_ids, corpus_emb, query_ids, query_emb, task, index_types, k, params):
    exact_index = AnnIndex.from_embeddings(corpus_emb, corpus_ids, "flat")
    exact, _ = exact_index.search_embeddings(query_emb, k)
    rows = []
    for index_type in index_types:
        index = exact_index if index_type == "flat" else AnnIndex.from_embeddings(
            corpus_emb, corpus_ids, index_type, params=IndexParams(**vars(params)) if params else None
        )
        hits, scores = index.search_embeddings(query_emb, max(k, 10))
        quality = qrels_metrics(task, query_ids, hits, scores) if task is not None and task.relevant_docs else {}
        q_wall, q_cpu = _qps(index, query_emb, k)
        rows.append(
            AnnRow(
                model=label,
                index=index_type,
                build_s=index.build_seconds,
                index_bytes=index.nbytes(),
                qps=q_wall,
                qps_cpu=q_cpu,
                recall_at_k=recall_against(exact, hits, k),
                ndcg_at_10=quality.get("ndcg@10"),
                mrr_at_10=quality.get("mrr@10"),
                recall_at_1=quality.get("recall@1"),
                k=k,
            )
        )
    return rows


def evaluate_ann(
    models: Sequence[Any],
    task: RetrievalTask,
    index_types: Sequence[str] = INDEX_TYPES,
    *,
    k: int = 10,
    params: IndexParams | None = None,
    batch_size: int = 64,
    show_progress_bar: bool = True,
    threads: int | None = None,
) -> list[AnnRow]:
    """Encode ``task`` with each model (``LoadedModel``s or anything ``load_model`` accepts) and
    measure every index type. Rows: model x index type."""
    from ternary_hf.evaluation.models import LoadedModel, load_model

    for t in index_types:
        if t not in INDEX_TYPES:
            raise ValueError(f"unknown index type {t!r}; supported: {', '.join(INDEX_TYPES)}")
    rows: list[AnnRow] = []
    corpus_ids = list(task.corpus)
    query_ids = list(task.queries)
    for m in models:
        loaded = m if isinstance(m, LoadedModel) else load_model(m)
        with torch.inference_mode():
            corpus_emb = loaded.model.encode(
                [task.corpus[c] for c in corpus_ids], batch_size=batch_size,
                show_progress_bar=show_progress_bar, convert_to_numpy=True, normalize_embeddings=True,
            )
            query_emb = loaded.model.encode(
                [task.queries[q] for q in query_ids], batch_size=batch_size,
                convert_to_numpy=True, normalize_embeddings=True,
            )
        rows += evaluate_embeddings(
            loaded.label, corpus_ids, corpus_emb, query_ids, query_emb, task, index_types, k, params, threads
        )
    return rows


def rows_markdown(rows: Sequence[AnnRow]) -> str:
    """Markdown table of ANN rows."""
    lines = [
        "| model | index | build s | index MiB | queries/s (wall / per CPU-s) | recall@10 vs exact | nDCG@10 | MRR@10 "
        "| recall@1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r.model} | {r.index} | {r.build_s:.2f} | {r.index_bytes / 2**20:.2f} | {r.qps:,.0f} / {r.qps_cpu:,.0f} | "
            f"{r.recall_at_k:.3f} | {fmt(r.ndcg_at_10)} | {fmt(r.mrr_at_10)} | {fmt(r.recall_at_1)} |"
        )
    return "\n".join(lines)
