"""Offline evaluation and distillation data.

The task record types live here so that every loader (WordNet, gensim's test data, user files)
returns the same shapes, and so that the evaluation suite can run any of them:

- :class:`PairTask`: sentence/word pairs with a human similarity score (STS-style).
- :class:`RetrievalTask`: queries, a corpus and relevance judgements (qrels), shaped exactly as
  sentence-transformers' ``InformationRetrievalEvaluator`` wants them.
- :class:`ClassificationTask`: texts with labels, for a linear probe on frozen embeddings.

Loaders: :mod:`ternary_hf.data.wordnet` (Debian ``wordnet-base``) and
:mod:`ternary_hf.data.gensim_sets` (Lee50, WordSim353, SimLex999, polarity from gensim's test data).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PairTask:
    """Pairs of texts with a graded human similarity score.

    Attributes:
        name: task name used in reports (e.g. ``"wordsim353"``).
        texts1: first text of every pair.
        texts2: second text of every pair (same length as ``texts1``).
        scores: human score of every pair (any scale: only correlations are reported).
        main_metric: ``"spearman"`` or ``"pearson"``; the metric a report leads with.
    """

    name: str
    texts1: list[str]
    texts2: list[str]
    scores: list[float]
    main_metric: str = "spearman"

    def __post_init__(self) -> None:
        if not (len(self.texts1) == len(self.texts2) == len(self.scores)):
            raise ValueError(
                f"pair task {self.name!r}: texts1/texts2/scores lengths differ "
                f"({len(self.texts1)}/{len(self.texts2)}/{len(self.scores)})"
            )
        if not self.texts1:
            raise ValueError(f"pair task {self.name!r} has no pairs")
        if self.main_metric not in ("spearman", "pearson"):
            raise ValueError(f"pair task {self.name!r}: main_metric must be 'spearman' or 'pearson'")


@dataclass(frozen=True)
class RetrievalTask:
    """Queries, a corpus and relevance judgements.

    The three dicts have exactly the shapes of sentence-transformers'
    ``InformationRetrievalEvaluator(queries, corpus, relevant_docs)``.

    Attributes:
        name: task name used in reports.
        queries: query id -> query text.
        corpus: document id -> document text.
        relevant_docs: query id -> set of relevant document ids (binary relevance).
        graded: optional query id -> {document id: gain} for graded nDCG; when given, the suite
            reports graded nDCG@10 besides the binary metrics.
    """

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant_docs: dict[str, set[str]]
    graded: dict[str, dict[str, float]] | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.queries:
            raise ValueError(f"retrieval task {self.name!r} has no queries")
        if not self.corpus:
            raise ValueError(f"retrieval task {self.name!r} has an empty corpus")
        missing = [q for q in self.queries if not self.relevant_docs.get(q)]
        if missing:
            raise ValueError(
                f"retrieval task {self.name!r}: {len(missing)} queries have no relevant document "
                f"(e.g. {missing[0]!r}); drop them or add qrels"
            )
        unknown = {d for docs in self.relevant_docs.values() for d in docs} - self.corpus.keys()
        if unknown:
            raise ValueError(
                f"retrieval task {self.name!r}: qrels name {len(unknown)} document ids that are not "
                f"in the corpus (e.g. {sorted(unknown)[0]!r})"
            )


@dataclass(frozen=True)
class ClassificationTask:
    """Texts with class labels, evaluated by a cross-validated linear probe.

    Attributes:
        name: task name used in reports.
        texts: input texts.
        labels: one label per text (any hashable; at least two classes).
        folds: number of stratified cross-validation folds.
    """

    name: str
    texts: list[str]
    labels: list
    folds: int = 5

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"classification task {self.name!r}: {len(self.texts)} texts but "
                f"{len(self.labels)} labels"
            )
        if len(set(self.labels)) < 2:
            raise ValueError(f"classification task {self.name!r} needs at least two classes")


__all__ = ["PairTask", "RetrievalTask", "ClassificationTask"]
