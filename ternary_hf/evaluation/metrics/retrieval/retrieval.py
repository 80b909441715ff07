"""`evaluate` metric: nDCG@k, MRR@k and recall of ranked retrieval results (binary relevance).

Load it offline from the installed package and feed it the ranked document ids of your own search
(FAISS, `ternary_hf.ann`, BM25, anything)::

    import evaluate
    from ternary_hf.evaluation import metric_path

    retrieval = evaluate.load(metric_path("retrieval"))
    for query, relevant in judged_queries:
        ids, _ = index.search([query], k=10, model=model)
        retrieval.add(prediction=ids[0], reference=relevant)
    retrieval.compute(k=10)   # {"ndcg@10": ..., "mrr@10": ..., "recall@1": ..., "recall@10": ...}

The numbers come from `ternary_hf.evaluation.ranking` (sentence-transformers'
`InformationRetrievalEvaluator` metric code, as in `ternary-hf eval` and `ternary-hf ann eval`).
"""

import evaluate
from ternary_hf.evaluation.metric_modules import metric_info
from ternary_hf.evaluation.ranking import ranking_metrics

_DESCRIPTION = """\
Ranking quality of retrieval results against binary relevance judgements: nDCG@k, MRR@k, recall@1
and recall@k, averaged over the queries. Each prediction is one query's ranked list of document ids
(best first); each reference is the list of that query's relevant document ids. Queries without a
relevant document are left out, as in sentence-transformers' InformationRetrievalEvaluator.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: per query, the retrieved document ids, best first (strings; no duplicates).
    references: per query, the ids of its relevant documents (strings).
    k: cut-off for nDCG, MRR and the second recall (default 10).
Returns:
    ndcg@k, mrr@k, recall@1, recall@k: means over the queries with at least one relevant document.
Examples:
    >>> retrieval = evaluate.load(metric_path("retrieval"))
    >>> retrieval.compute(predictions=[["d2", "d1"], ["d3", "d4"]], references=[["d1"], ["d3"]], k=10)
    {'ndcg@10': 0.815..., 'mrr@10': 0.75, 'recall@1': 0.5, 'recall@10': 1.0}
"""


class Retrieval(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, "string")

    def _compute(self, predictions, references, k=10):
        results, relevant = {}, {}
        for i, (ranked, judged) in enumerate(zip(predictions, references)):
            if len(set(ranked)) != len(ranked):
                raise ValueError(f"the ranking of query {i} lists a document more than once: {list(ranked)}")
            qid = str(i)
            # Scores that keep the given order: the evaluator ranks by score, highest first.
            results[qid] = [(doc, float(-rank)) for rank, doc in enumerate(ranked)]
            relevant[qid] = set(judged)
        return ranking_metrics(relevant, results, k=k)
