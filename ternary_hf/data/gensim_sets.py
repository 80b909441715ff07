"""Small evaluation sets shipped inside gensim's test data (``gensim/test/test_data``).

They install from PyPI with ``pip install gensim`` and need no network:

- **Lee50** (``lee.cor`` + ``similarities0-1.txt``): 50 Australian news documents (Lee, Pincombe &
  Welsh 2005) with the mean human similarity rating (0..1) of every pair. Used as 1,225 scored
  pairs (upper triangle) and as graded retrieval (each document queries the other 49).
- **Lee background** (``lee_background.cor``): 300 further news documents (median ~160 words),
  used as long held-out text for teacher fidelity.
- **WordSim353** (``wordsim353.tsv``) and **SimLex999** (``simlex999.txt``): word pairs with mean
  human similarity.
- **Polarity** (``pang_lee_polarity.cor``): 200 movie-review sentences (100 positive, 100
  negative; ``__label__pos``/``__label__neg`` prefix).

The ``.cor`` files are Windows-1252 text (``£``, em dashes), not UTF-8.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ternary_hf.data import ClassificationTask, PairTask, RetrievalTask

GENSIM_DATA_ENV = "TERNARY_HF_GENSIM_DATA"


def gensim_data_dir() -> Path:
    """Directory of gensim's bundled test data (``$TERNARY_HF_GENSIM_DATA`` overrides it)."""
    override = os.environ.get(GENSIM_DATA_ENV)
    if override:
        return Path(override)
    try:
        import gensim
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "gensim is needed for the default evaluation sets (Lee50, WordSim353, SimLex999, "
            "polarity): pip install 'ternary-hf[eval]' (or pip install gensim)"
        ) from exc
    return Path(gensim.__file__).parent / "test" / "test_data"


def _path(name: str) -> Path:
    path = gensim_data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: gensim's test data is incomplete. Reinstall gensim "
            f"(pip install --force-reinstall gensim) or set {GENSIM_DATA_ENV} to a directory holding {name}."
        )
    return path


def _read_lines(name: str) -> list[str]:
    text = _path(name).read_bytes().decode("cp1252", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def lee_documents() -> list[str]:
    """The 50 Lee documents, in the order of the rating matrix."""
    docs = _read_lines("lee.cor")
    if len(docs) != 50:
        raise ValueError(f"{_path('lee.cor')}: expected 50 documents, found {len(docs)}")
    return docs


def lee_background_documents() -> list[str]:
    """The 300 Lee background news documents (long held-out text)."""
    return _read_lines("lee_background.cor")


def lee_ratings() -> np.ndarray:
    """Symmetric 50x50 matrix of mean human ratings in [0, 1] (diagonal 1)."""
    path = _path("similarities0-1.txt")
    upper = np.loadtxt(path)
    if upper.shape != (50, 50):
        raise ValueError(f"{path}: expected a 50x50 matrix, got {upper.shape}")
    upper = np.triu(upper, 1)  # the file holds the upper triangle, zeros below
    return upper + upper.T + np.eye(50)


def lee50_pairs() -> PairTask:
    """Lee50 as 1,225 scored document pairs; the reference protocol reports Pearson and Spearman."""
    docs, ratings = lee_documents(), lee_ratings()
    rows, cols = np.triu_indices(50, 1)
    return PairTask(
        "lee50",
        [docs[i] for i in rows],
        [docs[j] for j in cols],
        ratings[rows, cols].tolist(),
        headline=("pearson", "spearman"),
    )


def lee50_graded() -> RetrievalTask:
    """Lee50 as graded retrieval: each document queries the other 49, gain = mean human rating.

    Document ids equal query ids, and the suite excludes a query's own document from its ranking
    (BEIR's ``ignore_identical_ids`` convention). nDCG uses exponential gains ``2**rating - 1``.
    """
    docs, ratings = lee_documents(), lee_ratings()
    ids = [f"lee{i:02d}" for i in range(50)]
    graded = {
        ids[i]: {ids[j]: float(ratings[i, j]) for j in range(50) if j != i} for i in range(50)
    }
    return RetrievalTask(
        "lee50_graded",
        queries=dict(zip(ids, docs)),
        corpus=dict(zip(ids, docs)),
        relevant_docs={},
        graded=graded,
    )


def _word_pairs(name: str, task_name: str) -> PairTask:
    words1, words2, scores = [], [], []
    path = _path(name)
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError(f"{path}:{lineno}: expected 'word1<TAB>word2<TAB>score'")
        words1.append(fields[0])
        words2.append(fields[1])
        scores.append(float(fields[2]))
    return PairTask(task_name, words1, words2, scores)


def wordsim353() -> PairTask:
    """WordSim353: 353 word pairs, mean human relatedness 0..10."""
    return _word_pairs("wordsim353.tsv", "wordsim353")


def simlex999() -> PairTask:
    """SimLex999: 999 word pairs, mean human similarity 0..10."""
    return _word_pairs("simlex999.txt", "simlex999")


def polarity(folds: int = 10) -> ClassificationTask:
    """Pang & Lee polarity: 200 sentences, positive/negative, evaluated with ``folds``-fold CV."""
    texts, labels = [], []
    for line in _read_lines("pang_lee_polarity.cor"):
        label, _, text = line.partition(" ")
        if not label.startswith("__label__"):
            raise ValueError(f"{_path('pang_lee_polarity.cor')}: line without __label__ prefix: {line[:60]!r}")
        labels.append(label.removeprefix("__label__"))
        texts.append(text)
    return ClassificationTask("polarity", texts, labels, folds=folds)


__all__ = [
    "gensim_data_dir",
    "lee_documents",
    "lee_background_documents",
    "lee_ratings",
    "lee50_pairs",
    "lee50_graded",
    "wordsim353",
    "simlex999",
    "polarity",
]
