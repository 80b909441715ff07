"""Output-dimension reduction: a PCA of teacher embeddings, stored as a sentence-transformers `Dense` module.

arXiv 2207.12852 reduces the teacher's embedding dimension before distilling to it. Here the reduction is
post-training: the principal axes of the *teacher's* sentence embeddings on a corpus (training texts, never
the evaluation sets) become a linear `Dense(hidden -> dim)` module (bias = -W @ mean, i.e. centred PCA, computed with torch's SVD)
appended to the model, followed by `Normalize` when the model normalized its output. The saved model's
`modules.json` lists it, so `SentenceTransformer(path).encode(...)` returns the reduced embeddings and
`footprint()` reports the output dimension. The student is not re-distilled to the reduced teacher
(optional in the paper; its ternary encoder already imitates the teacher's full-dimension output).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch


@dataclass
class PcaReport:
    """How much of the teacher's embedding variance the kept axes explain."""

    input_dim: int
    output_dim: int
    n_texts: int
    explained_variance: float  # fraction of the (centred) variance kept

    def __str__(self) -> str:
        return (f"PCA {self.input_dim} -> {self.output_dim} dims on {self.n_texts:,} texts, "
                f"{100 * self.explained_variance:.1f}% of the variance kept")


def check_output_dim(dim: Any) -> int:
    """`dim` if it is a usable output dimension (an int >= 1), else `ValueError` saying what to pass."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"output_dim={dim!r} is invalid: pass the number of output dimensions to keep (an integer "
                         ">= 1, smaller than the model's embedding dimension), or leave it out to keep them all.")
    return dim


def fit_pca(embeddings: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`(components [dim, d], mean [d], explained variance fraction)` of `[n, d]` embeddings: the top right
    singular vectors of the centred matrix (float64 SVD; signs fixed so each axis' largest loading is positive)."""
    x = embeddings.detach().to(torch.float64).cpu()
    n, d = x.shape
    if not 0 < dim < d:
        raise ValueError(f"output_dim={dim} must be between 1 and the embedding dimension {d} (exclusive).")
    if n < dim:
        raise ValueError(f"PCA to {dim} dimensions needs at least {dim} texts; got {n}. Pass a larger corpus.")
    mean = x.mean(dim=0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    components = vh[:dim]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = components * signs
    explained = float((s[:dim] ** 2).sum() / (s ** 2).sum())
    return components.float(), mean.float(), explained


def pca_dense(components: torch.Tensor, mean: torch.Tensor) -> Any:
    """The sentence-transformers `Dense` module computing `components @ (x - mean)`."""
    from sentence_transformers.sentence_transformer.modules import Dense

    dim, d = components.shape
    return Dense(d, dim, bias=True, activation_function=torch.nn.Identity(), init_weight=components.clone(),
                 init_bias=-(components @ mean))


def reduce_output_dimension(
    model: Any,
    corpus: Iterable[str],
    dim: int,
    *,
    teacher: Any | None = None,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
) -> PcaReport:
    """Append a PCA projection to `dim` dimensions to a SentenceTransformer `model` (in place).

    Args:
        model: the SentenceTransformer to reduce (e.g. a distilled ternary model).
        corpus: texts whose teacher embeddings define the axes (training texts, not evaluation data).
        dim: output dimension.
        teacher: the model whose embeddings are analysed (default: `model` itself); pass the full-precision
            teacher to use its axes, as in arXiv 2207.12852.
        out_dir: when given, `model.save(out_dir)` afterwards.
    """
    from sentence_transformers.sentence_transformer.modules import Normalize

    check_output_dim(dim)
    texts = [t for t in corpus if t and t.strip()]
    teacher = teacher if teacher is not None else model
    with torch.inference_mode():
        emb = teacher.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    components, mean, explained = fit_pca(emb, dim)
    normalized = any(isinstance(m, Normalize) for m in model)
    model.append(pca_dense(components, mean).to(next(model.parameters()).device))
    if normalized:
        model.append(Normalize())
    if out_dir is not None:
        from .fileio import staged_directory

        from .checkpoint import seal_module_weights

        with staged_directory(out_dir) as stage:
            model.save(str(stage))
            seal_module_weights(stage)
    return PcaReport(emb.shape[1], dim, len(texts), explained)


def project_with_head(model: Any, embeddings: torch.Tensor) -> torch.Tensor:
    """Apply `model`'s output-reduction head (its last `Dense` module and what follows it) to full-dimension
    sentence embeddings: how the *reduced teacher* is obtained from the teacher's embeddings, so a reduced
    model can be compared with its teacher in the same space."""
    from sentence_transformers.sentence_transformer.modules import Dense

    modules = list(model)
    starts = [i for i, m in enumerate(modules) if isinstance(m, Dense)]
    if not starts:
        return embeddings
    features = {"sentence_embedding": embeddings}
    with torch.inference_mode():
        for module in modules[starts[-1]:]:
            features = module(features)
    return features["sentence_embedding"]
