"""Quick quality check of a ternary model against its full-precision reference (teacher fidelity)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


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
    """Compare two `[n, d]` embedding matrices of the same texts (rows in the same order)."""
    a = torch.nn.functional.normalize(model_embeddings.float(), dim=-1)
    b = torch.nn.functional.normalize(reference_embeddings.float(), dim=-1)
    cos = (a * b).sum(-1)
    k = min(k, a.shape[0] - 1)
    agreement = float("nan")
    if k > 0:
        eye = torch.eye(a.shape[0], dtype=torch.bool)
        na = (a @ a.T).masked_fill(eye, -2).topk(k, dim=-1).indices
        nb = (b @ b.T).masked_fill(eye, -2).topk(k, dim=-1).indices
        overlap = [len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(na, nb)]
        agreement = sum(overlap) / len(overlap)
    return FidelityReport(a.shape[0], float(cos.mean()), float(cos.min()), agreement)
