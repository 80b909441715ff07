"""Teacher fidelity: how close a (ternary) model's embeddings are to its reference model's.

The small public sets saturate (a briefly distilled student can score >= 100% of fp32 on them
while its embeddings are only ~0.87 cosine to the teacher's), so the suite also reports:

- **cosine to reference**, mean and minimum over held-out *short* texts (WordNet example sentences
  of held-out synsets) and *long* texts (the 300 Lee background news documents, median ~160 words
  ~ 200 tokens; truncated at the model's ``max_seq_length`` like any input);
- **top-10 neighbour agreement**: for each query, the fraction of the reference model's 10 nearest
  corpus documents that the model also returns in its top 10 (default: the WordNet retrieval
  task's 1,000 queries over its ~14,000 held-out definitions).

None of these texts are in the WordNet distillation corpus (see :mod:`ternary_hf.data.wordnet`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ternary_hf.evaluation.tasks import EmbeddingCache


@dataclass(frozen=True)
class FidelitySets:
    """Texts for the fidelity measures.

    Attributes:
        short: short held-out texts.
        long: long held-out texts (~200 tokens).
        queries: queries for the neighbour agreement.
        corpus: corpus for the neighbour agreement.
        k: neighbours compared per query.
    """

    short: list[str]
    long: list[str]
    queries: list[str]
    corpus: list[str]
    k: int = 10

    def __post_init__(self) -> None:
        for name in ("short", "long", "queries", "corpus"):
            if not getattr(self, name):
                raise ValueError(f"FidelitySets.{name} is empty")
        if len(self.corpus) < self.k:
            raise ValueError(f"FidelitySets.corpus has {len(self.corpus)} texts, fewer than k={self.k}")


def default_fidelity_sets(n_short: int = 1000, wordnet_queries: int = 1000, seed: int = 0) -> FidelitySets:
    """Held-out WordNet examples (short), Lee background documents (long), WordNet retrieval
    queries over its held-out definitions (neighbours)."""
    from ternary_hf.data import gensim_sets, wordnet

    examples = sorted({e for s in wordnet.heldout_synsets() for e in s.examples})
    rng = random.Random(seed)
    short = rng.sample(examples, min(n_short, len(examples)))
    task = wordnet.retrieval_task(n_queries=wordnet_queries, seed=seed)
    return FidelitySets(
        short=short,
        long=gensim_sets.lee_background_documents(),
        queries=list(task.queries.values()),
        corpus=list(task.corpus.values()),
    )


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped embedding matrices."""
    if a.shape != b.shape:
        raise ValueError(
            f"cannot compare embeddings of shape {a.shape} and {b.shape}: the model and its reference "
            "must produce the same dimension"
        )
    return np.sum(_normalize(a) * _normalize(b), axis=1)


def neighbour_agreement(
    queries_a: np.ndarray, corpus_a: np.ndarray, queries_b: np.ndarray, corpus_b: np.ndarray, k: int = 10
) -> float:
    """Mean fraction of shared top-k cosine neighbours (sentence-transformers ``semantic_search``)."""
    from sentence_transformers.util import semantic_search

    hits_a = semantic_search(torch.from_numpy(queries_a), torch.from_numpy(corpus_a), top_k=k)
    hits_b = semantic_search(torch.from_numpy(queries_b), torch.from_numpy(corpus_b), top_k=k)
    overlaps = [
        len({h["corpus_id"] for h in ha} & {h["corpus_id"] for h in hb}) / k for ha, hb in zip(hits_a, hits_b)
    ]
    return float(np.mean(overlaps))


def teacher_fidelity(model_cache: EmbeddingCache, reference_cache: EmbeddingCache, sets: FidelitySets) -> dict[str, float]:
    """Cosine-to-reference (short/long, mean/min) and top-k neighbour agreement."""
    out: dict[str, float] = {}
    for name, texts in (("short", sets.short), ("long", sets.long)):
        cos = paired_cosine(model_cache.encode(texts), reference_cache.encode(texts))
        out[f"cos_{name}_mean"] = float(cos.mean())
        out[f"cos_{name}_min"] = float(cos.min())
    out[f"top{sets.k}_agreement"] = neighbour_agreement(
        model_cache.encode(sets.queries),
        model_cache.encode(sets.corpus),
        reference_cache.encode(sets.queries),
        reference_cache.encode(sets.corpus),
        k=sets.k,
    )
    return out


@dataclass
class FidelityReport:
    """How closely a model's sentence embeddings follow a reference model's on the same texts."""

    n_texts: int
    mean_cosine: float
    min_cosine: float
    neighbour_agreement_at_10: float  # mean overlap of each text's 10 nearest neighbours under both models

    def as_dict(self) -> dict:
        return asdict(self)


def embedding_fidelity(model_embeddings: torch.Tensor, reference_embeddings: torch.Tensor, k: int = 10) -> FidelityReport:
    """Compare two `[n, d]` embedding matrices of the same texts (rows in the same order): paired cosine,
    and how many of each text's k nearest other texts (within the same set) both models agree on."""
    cos = torch.from_numpy(paired_cosine(model_embeddings.float().cpu().numpy(),
                                         reference_embeddings.float().cpu().numpy()))
    a = torch.nn.functional.normalize(model_embeddings.float().cpu(), dim=-1)
    b = torch.nn.functional.normalize(reference_embeddings.float().cpu(), dim=-1)
    k = min(k, a.shape[0] - 1)
    agreement = float("nan")
    if k > 0:
        eye = torch.eye(a.shape[0], dtype=torch.bool)
        na = (a @ a.T).masked_fill(eye, -2).topk(k, dim=-1).indices
        nb = (b @ b.T).masked_fill(eye, -2).topk(k, dim=-1).indices
        overlap = [len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(na, nb)]
        agreement = sum(overlap) / len(overlap)
    return FidelityReport(a.shape[0], float(cos.mean()), float(cos.min()), agreement)
