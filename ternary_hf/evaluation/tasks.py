"""Run one task on one model with the ecosystem's metrics.

- :class:`~ternary_hf.data.PairTask`: sentence-transformers' ``EmbeddingSimilarityEvaluator``
  (Pearson and Spearman of cosine similarity against the human scores).
- :class:`~ternary_hf.data.RetrievalTask`: ``InformationRetrievalEvaluator`` (nDCG@10, MRR@10,
  recall@1/@10) for binary qrels; scikit-learn's ``ndcg_score`` on exponential gains
  ``2**g - 1`` for graded qrels (the evaluator only knows binary relevance).
- :class:`~ternary_hf.data.ClassificationTask`: scikit-learn logistic regression, stratified
  shuffled k-fold cross-validated accuracy on the frozen embeddings.

Every text is encoded once per model through an :class:`EmbeddingCache`: the evaluators' own
``embed_inputs`` hook is pointed at the cache, so their metric code runs unchanged while Lee50's 50
documents are not re-encoded for each of their 1,225 pairs, and the teacher-fidelity measures reuse
the embeddings of the tasks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch

from ternary_hf.data import ClassificationTask, PairTask, RetrievalTask

Task = Union[PairTask, RetrievalTask, ClassificationTask]


class EmbeddingCache:
    """Encodes each distinct text once for one model and serves embeddings in any order.

    Args:
        model: a SentenceTransformer.
        batch_size: encoding batch size.
        show_progress_bar: show sentence-transformers' progress bar while encoding.
    """

    def __init__(self, model: Any, batch_size: int = 64, show_progress_bar: bool = False) -> None:
        self.model = model
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self._rows: dict[str, int] = {}
        self._chunks: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None
        self.encode_seconds = 0.0

    def __len__(self) -> int:
        return len(self._rows)

    def encode(self, texts: list[str] | tuple[str, ...]) -> np.ndarray:
        """float32 embeddings of ``texts`` (rows in the given order)."""
        texts = [str(t) for t in texts]
        missing = list(dict.fromkeys(t for t in texts if t not in self._rows))
        if missing:
            start = time.perf_counter()
            with torch.inference_mode():
                new = self.model.encode(
                    missing,
                    batch_size=self.batch_size,
                    show_progress_bar=self.show_progress_bar,
                    convert_to_numpy=True,
                )
            self.encode_seconds += time.perf_counter() - start
            base = len(self._rows)
            for i, text in enumerate(missing):
                self._rows[text] = base + i
            self._chunks.append(np.asarray(new, dtype=np.float32))
            self._matrix = None
        if self._matrix is None:
            self._matrix = np.concatenate(self._chunks) if self._chunks else np.zeros((0, 0), np.float32)
            self._chunks = [self._matrix]
        return self._matrix[[self._rows[t] for t in texts]]


def _check_model(cache: EmbeddingCache, model: Any) -> None:
    if cache.model is not model:
        raise ValueError("EmbeddingCache belongs to another model; use one cache per model")


def _similarity_evaluator(task: PairTask, cache: EmbeddingCache):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator, SimilarityFunction

    class _Cached(EmbeddingSimilarityEvaluator):
        def embed_inputs(self, model, sentences, **kwargs):
            _check_model(cache, model)
            return cache.encode(list(sentences))

    return _Cached(
        list(task.texts1),
        list(task.texts2),
        list(task.scores),
        main_similarity=SimilarityFunction.COSINE,
        similarity_fn_names=["cosine"],
        name=task.name,
        write_csv=False,
    )


def _retrieval_evaluator(task: RetrievalTask, cache: EmbeddingCache):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator, SimilarityFunction
    from sentence_transformers.util import cos_sim

    class _Cached(InformationRetrievalEvaluator):
        def embed_inputs(self, model, sentences, **kwargs):
            _check_model(cache, model)
            return torch.from_numpy(cache.encode(list(sentences)))

    return _Cached(
        queries=task.queries,
        corpus=task.corpus,
        relevant_docs=task.relevant_docs,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10],
        map_at_k=[100],
        name=task.name,
        write_csv=False,
        score_functions={"cosine": cos_sim},
        main_score_function=SimilarityFunction.COSINE,
    )


def graded_ndcg(task: RetrievalTask, cache: EmbeddingCache, k: int = 10) -> float:
    """Mean nDCG@k with exponential gains ``2**g - 1`` (scikit-learn ``ndcg_score``).

    A document with the query's own id is excluded from that query's ranking.
    """
    from sklearn.metrics import ndcg_score

    if not task.graded:
        raise ValueError(f"task {task.name!r} has no graded judgements")
    doc_ids = list(task.corpus)
    docs = cache.encode([task.corpus[d] for d in doc_ids])
    docs = docs / np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
    query_ids = [q for q in task.queries if task.graded.get(q)]
    queries = cache.encode([task.queries[q] for q in query_ids])
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    scores = queries @ docs.T
    values = []
    for row, qid in enumerate(query_ids):
        keep = np.array([d != qid for d in doc_ids])
        gains = np.array([task.graded[qid].get(d, 0.0) for d in doc_ids])[keep]
        values.append(ndcg_score([2.0**gains - 1.0], [scores[row][keep]], k=k))
    return float(np.mean(values))


def classification_accuracy(task: ClassificationTask, cache: EmbeddingCache, seed: int = 0) -> float:
    """Stratified, shuffled k-fold accuracy of a logistic regression on the embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    counts: dict[Any, int] = {}
    for label in task.labels:
        counts[label] = counts.get(label, 0) + 1
    if min(counts.values()) < task.folds:
        raise ValueError(
            f"classification task {task.name!r}: the smallest class has {min(counts.values())} texts, "
            f"fewer than folds={task.folds}; lower folds or add examples"
        )
    features = cache.encode(list(task.texts))
    cv = StratifiedKFold(n_splits=task.folds, shuffle=True, random_state=seed)
    scores = cross_val_score(LogisticRegression(max_iter=1000), features, list(task.labels), cv=cv)
    return float(np.mean(scores))


@dataclass
class TaskResult:
    """Metrics of one task for one model.

    Attributes:
        task: task name.
        kind: ``"pairs"``, ``"retrieval"`` or ``"classification"``.
        metrics: metric name -> value (all in [0, 1] or correlations in [-1, 1]).
        headline: the metric names that count in the mean retained quality.
        seconds: wall time of the task (encoding included).
    """

    task: str
    kind: str
    metrics: dict[str, float]
    headline: list[str]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def run_task(task: Task, model: Any, cache: EmbeddingCache) -> TaskResult:
    """Run one task for one model (a SentenceTransformer) and return its metrics."""
    _check_model(cache, model)
    start = time.perf_counter()
    if isinstance(task, PairTask):
        out = _similarity_evaluator(task, cache)(model)
        metrics = {
            "pearson": float(out[f"{task.name}_pearson_cosine"]),
            "spearman": float(out[f"{task.name}_spearman_cosine"]),
        }
        result = TaskResult(task.name, "pairs", metrics, list(task.headline))
    elif isinstance(task, RetrievalTask):
        metrics: dict[str, float] = {}
        headline: list[str] = []
        if task.relevant_docs:
            out = _retrieval_evaluator(task, cache)(model)
            prefix = f"{task.name}_cosine_"
            for name in ("ndcg@10", "mrr@10", "recall@1", "recall@10", "map@100"):
                metrics[name] = float(out[prefix + name])
            headline += ["ndcg@10", "mrr@10", "recall@1"]
        if task.graded:
            metrics["graded_ndcg@10"] = graded_ndcg(task, cache)
            headline = ["graded_ndcg@10"] + headline
        result = TaskResult(task.name, "retrieval", metrics, headline)
        result.extra = {"queries": len(task.queries), "corpus": len(task.corpus)}
    elif isinstance(task, ClassificationTask):
        acc = classification_accuracy(task, cache)
        result = TaskResult(task.name, "classification", {"accuracy": acc}, ["accuracy"])
        result.extra = {"texts": len(task.texts), "folds": task.folds}
    else:
        raise TypeError(f"unknown task type {type(task).__name__}; expected PairTask, RetrievalTask or ClassificationTask")
    result.seconds = time.perf_counter() - start
    return result
