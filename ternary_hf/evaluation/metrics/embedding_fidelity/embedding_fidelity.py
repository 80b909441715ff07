"""`evaluate` metric: how closely a model's embeddings follow a reference model's on the same texts.

Load it offline from the installed package and use it in your own evaluation loop::

    import evaluate
    from ternary_hf.evaluation import metric_path

    fidelity = evaluate.load(metric_path("embedding_fidelity"))
    for batch in texts_in_batches:
        fidelity.add_batch(predictions=ternary.encode(batch), references=fp32.encode(batch))
    fidelity.compute(k=10)   # {"mean_cosine": ..., "min_cosine": ..., "top10_agreement": ...}

The numbers come from `ternary_hf.evaluation.fidelity` (the code behind `ternary-hf eval`'s teacher
fidelity), so they match what the suite reports on the same embeddings.
"""

import evaluate
import numpy as np
from ternary_hf.evaluation.fidelity import embedding_fidelity, neighbour_agreement, paired_cosine
from ternary_hf.evaluation.metric_modules import metric_info

_DESCRIPTION = """\
Teacher fidelity of sentence embeddings: row-wise cosine similarity between a model's embeddings
(predictions) and a reference model's embeddings of the same texts (references), mean and minimum,
and top-k neighbour agreement: for each text, the fraction of the reference model's k nearest
neighbours that the model also ranks in its top k. Neighbours are the other texts of the same set, or,
when `corpus_predictions` / `corpus_references` are given, the documents of that corpus (the
predictions and references are then the queries).
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of embedding vectors (one per text) from the model under test.
    references: list of embedding vectors of the same texts, in the same order, from the reference model.
    k: neighbours compared per text (default 10; capped at the number of other texts).
    corpus_predictions: optional `[n_docs, dim]` embeddings of a document corpus from the model.
    corpus_references: the same corpus embedded by the reference model (needed with corpus_predictions).
Returns:
    mean_cosine: mean cosine similarity between paired rows.
    min_cosine: the lowest paired cosine.
    top{k}_agreement: mean fraction of shared top-k neighbours (NaN when a set has one text).
Examples:
    >>> fidelity = evaluate.load(metric_path("embedding_fidelity"))
    >>> fidelity.compute(predictions=[[1.0, 0.0], [0.0, 1.0]], references=[[1.0, 0.0], [1.0, 1.0]], k=1)
    {'mean_cosine': 0.853..., 'min_cosine': 0.707..., 'top1_agreement': 1.0}
"""


class EmbeddingFidelity(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, "float32")

    def _compute(self, predictions, references, k=10, corpus_predictions=None, corpus_references=None):
        model = np.asarray(predictions, dtype=np.float32)
        reference = np.asarray(references, dtype=np.float32)
        if model.ndim != 2 or reference.ndim != 2:
            raise ValueError("predictions and references must be embedding vectors of one dimension each")
        cosine = paired_cosine(model, reference)
        out = {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min())}
        if (corpus_predictions is None) != (corpus_references is None):
            raise ValueError("pass both corpus_predictions and corpus_references, or neither")
        if corpus_predictions is None:
            import torch

            report = embedding_fidelity(torch.from_numpy(model), torch.from_numpy(reference), k=k)
            out[f"top{k}_agreement"] = report.neighbour_agreement_at_10
        else:
            corpus_model = np.ascontiguousarray(corpus_predictions, dtype=np.float32)
            corpus_reference = np.ascontiguousarray(corpus_references, dtype=np.float32)
            if len(corpus_model) != len(corpus_reference) or len(corpus_model) < k:
                raise ValueError(
                    f"corpus_predictions ({len(corpus_model)} rows) and corpus_references ({len(corpus_reference)} "
                    f"rows) must embed the same documents, at least k={k} of them"
                )
            out[f"top{k}_agreement"] = neighbour_agreement(model, corpus_model, reference, corpus_reference, k=k)
        return out
