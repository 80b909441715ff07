"""Hugging Face `evaluate` metric modules shipped with the package.

`evaluate.load(metric_path(name))` loads them from the installed package, offline, for use in your own
evaluation loops; their numbers come from the same functions as the suite's
(`ternary_hf.evaluation.fidelity`, `ternary_hf.evaluation.ranking`).

- `embedding_fidelity`: cosine of a model's embeddings to a reference model's (mean, min) and top-k
  neighbour agreement.
- `retrieval`: nDCG@k, MRR@k, recall@1 / recall@k of ranked document ids against relevance judgements.
"""

from __future__ import annotations

from ternary_hf.resources import package_file

METRICS = ("embedding_fidelity", "retrieval")


def metric_info(description: str, inputs_description: str, value_type: str):
    """The `evaluate.MetricInfo` of a ternary-hf metric module: `predictions` and `references` are both
    sequences of `value_type` values (one sequence per example)."""
    import datasets
    import evaluate

    sequence = datasets.Sequence(datasets.Value(value_type))
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": sequence, "references": sequence}),
        codebase_urls=["https://pypi.org/project/ternary-hf/"],
    )


def metric_path(name: str) -> str:
    """Path of the `evaluate` metric module `name` inside the installed package, for `evaluate.load(path)`."""
    if name not in METRICS:
        raise ValueError(f"unknown ternary-hf metric {name!r}; available: {', '.join(METRICS)}")
    return str(package_file("evaluation", "metrics", name, f"{name}.py"))
