"""The quickstart's stages between training and the report: evaluation data, the FAISS search comparison, the
numbered stage messages, and one progress display per stage."""

from __future__ import annotations

import random
import time
from typing import Any, Callable

from .config import Sizes


def small_wordnet_task(task: Any, n_docs: int, seed: int) -> Any:
    """``task`` with its corpus cut to the relevant documents + random distractors (``n_docs`` in all)."""
    from ..data import RetrievalTask

    relevant = sorted({d for docs in task.relevant_docs.values() for d in docs})
    others = sorted(set(task.corpus) - set(relevant))
    keep = set(relevant) | set(random.Random(seed).sample(others, max(0, min(len(others), n_docs - len(relevant)))))
    corpus = {k: v for k, v in task.corpus.items() if k in keep}
    return RetrievalTask(task.name, dict(task.queries), corpus, {q: set(d) for q, d in task.relevant_docs.items()})


def evaluation_data(sizes: Sizes, seed: int) -> tuple[list, Any, Any]:
    """(tasks, fidelity sets, the WordNet retrieval task) for ``sizes``."""
    from ..data import gensim_sets, wordnet
    from ..evaluation import FidelitySets, default_tasks

    names = [n for n in sizes.tasks if n != "wordnet"]
    tasks = default_tasks(names, seed=seed) if names else []
    wn = wordnet.retrieval_task(n_queries=sizes.wordnet_queries, seed=seed)
    if sizes.wordnet_docs is not None:
        wn = small_wordnet_task(wn, sizes.wordnet_docs, seed)
    if "wordnet" in sizes.tasks:
        tasks.append(wn)
    examples = sorted({e for s in wordnet.heldout_synsets() for e in s.examples})
    short = random.Random(seed).sample(examples, min(sizes.fidelity_short, len(examples)))
    long = gensim_sets.lee_background_documents()
    if sizes.fidelity_long is not None:
        long = long[: sizes.fidelity_long]
    sets = FidelitySets(short=short, long=long, queries=list(wn.queries.values()), corpus=list(wn.corpus.values()),
                        k=min(10, len(wn.corpus)))
    return tasks, sets, wn


def speed_texts(sizes: Sizes) -> list[str]:
    from ..evaluation.suite import speed_texts as held_out_speed_texts

    return held_out_speed_texts(sizes.speed_short, sizes.speed_long)


def stage_bar(total: int, desc: str, unit: str, show: bool) -> Any:
    """The one progress bar of a stage (the encoders' own per-call bars stay off)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=False, dynamic_ncols=True)


def _encode(model: Any, texts: list[str], bar: Any) -> Any:
    import numpy as np

    from ..ann import encode_chunks

    chunks = []
    for _, emb in encode_chunks(model, ((str(i), t) for i, t in enumerate(texts)), total=len(texts),
                                chunk_size=4096, show_progress_bar=False):
        chunks.append(emb)
        bar.update(len(emb))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def ann_search(models: dict[str, Any], caches: dict[str, Any], corpus_texts: dict[str, str],
               queries: dict[str, str], task: Any | None, sample_ids: list[str], show: bool,
               index_type: str = "hnsw", k: int = 10) -> dict[str, Any]:
    """FAISS ``index_type`` indexes of ``corpus_texts`` under each model: recall@k against the model's own
    exact search, agreement of the top-k with the first model's exact top-k, qrels metrics when ``task`` has
    them, index size/build time, and the top hits of the ``sample_ids`` queries."""
    from ..ann import AnnIndex, qrels_metrics, recall_against

    ids, texts = list(corpus_texts), list(corpus_texts.values())
    qids, qtexts = list(queries), list(queries.values())
    rows, samples, reference_exact = [], {q: {"query": queries[q], "hits": {}} for q in sample_ids}, None
    # the evaluation already encoded the WordNet corpus: its caches serve those embeddings again
    to_encode = sum(len(texts) + len(qtexts) for label in models if caches.get(label) is None)
    bar = stage_bar(to_encode, "encoding for the index", "text", show and to_encode > 0)
    for label, model in models.items():
        cache = caches.get(label)
        if cache is not None:
            corpus_emb, query_emb = cache.encode(texts), cache.encode(qtexts)
        else:
            corpus_emb, query_emb = _encode(model, texts, bar), _encode(model, qtexts, bar)
        exact_hits, _ = AnnIndex.from_embeddings(corpus_emb, ids, "flat").search_embeddings(query_emb, k)
        reference_exact = reference_exact or exact_hits
        index = AnnIndex.from_embeddings(corpus_emb, ids, index_type, model_id=label)
        t0 = time.perf_counter()
        hits, scores = index.search_embeddings(query_emb, k)
        search_s = time.perf_counter() - t0
        row = {"model": label, "index": index_type, "documents": len(ids), "queries": len(qids),
               "build_s": index.build_seconds, "index_bytes": index.nbytes(),
               "queries_per_s": len(qids) / search_s if search_s > 0 else float("nan"),
               f"recall@{k}_vs_own_exact": recall_against(exact_hits, hits, k),
               f"top{k}_agreement_with_{next(iter(models))}_exact": recall_against(reference_exact, hits, k)}
        if task is not None and task.relevant_docs:
            row.update(qrels_metrics(task, qids, hits, scores))
        rows.append(row)
        position = {q: i for i, q in enumerate(qids)}
        for q in sample_ids:
            i = position[q]
            samples[q]["hits"][label] = [{"id": d, "text": corpus_texts[d], "score": s}
                                         for d, s in zip(hits[i][:3], scores[i][:3])]
            if task is not None:
                samples[q]["relevant"] = sorted(task.relevant_docs.get(q, ()))
    bar.close()
    return {"rows": rows, "samples": list(samples.values()), "k": k}


def corpus_search_sets(texts: list[str], n_docs: int, n_queries: int, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """(corpus, queries) drawn from a user corpus: ``n_queries`` texts held out of the indexed documents."""
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    rng = random.Random(seed)
    order = rng.sample(range(len(unique)), len(unique))
    n_q = min(n_queries, max(1, len(unique) // 2)) if len(unique) > 1 else 1
    query_idx = order[:n_q] if len(unique) > 1 else order
    doc_idx = order[n_q : n_q + n_docs] if len(unique) > 1 else order
    return {str(i): unique[i] for i in sorted(doc_idx)}, {f"q{i}": unique[i] for i in query_idx}


class Stages:
    """Numbered stage messages with wall times (recorded in results.json)."""

    def __init__(self, total: int, printer: Callable[[str], None]) -> None:
        self.total, self.print, self.n = total, printer, 0
        self.times: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = 0.0
        self._run_start = time.monotonic()

    def start(self, name: str, message: str) -> None:
        self.stop()
        self.n += 1
        self._name, self._t0 = name, time.monotonic()
        self.print(f"[{self.n}/{self.total} at {(self._t0 - self._run_start) / 60:.1f} min] {message}")

    def stop(self) -> None:
        if self._name is not None:
            self.times[self._name] = round(time.monotonic() - self._t0, 2)
            self._name = None


def card_eval_results(comparison: Any) -> tuple[list[dict], list[dict]]:
    """Model-card evaluation results (huggingface_hub `EvalResult` fields) of the model and of fp32."""
    kinds = {r.task: r.kind for r in comparison.model.results}
    task_types = {"pairs": "sentence-similarity", "retrieval": "text-retrieval", "classification": "text-classification"}
    ternary, fp32 = [], []
    for row in comparison.rows:
        base = {"task_type": task_types.get(kinds.get(row["task"], ""), "feature-extraction"),
                "dataset_type": f"ternary-hf/{row['task']}", "dataset_name": row["task"],
                "metric_type": row["metric"], "metric_name": row["metric"]}
        ternary.append({**base, "metric_value": round(float(row["model"]), 4)})
        fp32.append({**base, "metric_value": round(float(row["baseline"]), 4)})
    return ternary, fp32
