"""Binary-relevance ranking metrics of ranked result lists (nDCG@k, MRR@k, recall@1/@k).

One implementation for every place that scores result lists without encoding anything itself: the
FAISS index evaluation (`ternary_hf.ann.qrels_metrics`), the quickstart's search table and the
`evaluate` metric module `retrieval` (`ternary_hf.evaluation.metric_path("retrieval")`). The metric
code is sentence-transformers' `InformationRetrievalEvaluator.compute_metrics`, the same code the
suite's retrieval tasks run after encoding, so all of them agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def ranking_metrics(
    relevant_docs: Mapping[str, set[str] | Sequence[str]],
    results: Mapping[str, Sequence[tuple[str, float]]],
    k: int = 10,
) -> dict[str, float]:
    """Score ranked result lists against binary relevance judgements.

    Args:
        relevant_docs: query id -> ids of its relevant documents. Queries with no relevant document
            are left out (as sentence-transformers' evaluator does).
        results: query id -> `(document id, score)` pairs; ranked by score, highest first (ties by id).
            Every query with relevant documents needs an entry (it may be empty: nothing found).
        k: cut-off of nDCG, MRR and the second recall.

    Returns:
        `{"ndcg@k", "mrr@k", "recall@1", "recall@k"}` (means over the judged queries; with k=1 one recall).
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    judged = {q: set(docs) for q, docs in relevant_docs.items() if len(docs) > 0}
    if not judged:
        raise ValueError("no query has a relevant document: nothing to score")
    missing = [q for q in judged if q not in results]
    if missing:
        raise ValueError(f"{len(missing)} judged queries have no result list, e.g. {missing[:3]}")
    corpus_ids = {doc for hits in results.values() for doc, _ in hits} | {d for docs in judged.values() for d in docs}
    recall_ks = sorted({1, k})
    # The evaluator only reads the ids of queries and corpus here; the texts are never encoded.
    evaluator = InformationRetrievalEvaluator(
        {q: q for q in judged}, {d: d for d in corpus_ids}, judged,
        mrr_at_k=[k], ndcg_at_k=[k], accuracy_at_k=recall_ks, precision_recall_at_k=recall_ks, map_at_k=[k],
        write_csv=False,
    )
    metrics = evaluator.compute_metrics(
        [[{"corpus_id": doc, "score": float(score)} for doc, score in results[q]] for q in evaluator.queries_ids]
    )
    out = {f"ndcg@{k}": float(metrics["ndcg@k"][k]), f"mrr@{k}": float(metrics["mrr@k"][k])}
    out.update({f"recall@{r}": float(metrics["recall@k"][r]) for r in recall_ks})
    return out
