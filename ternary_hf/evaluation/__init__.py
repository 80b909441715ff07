"""Evaluation suite: what ternarization costs in quality, on real offline data.

- :func:`evaluate` one model, or :func:`compare` a model with its fp baseline, on
  :func:`default_tasks` (Lee50 pairs + graded retrieval, WordSim353, SimLex999, polarity, WordNet
  held-out retrieval) or your own tasks (:func:`load_pair_task`, :func:`load_retrieval_task`,
  :func:`load_classification_task`).
- Metrics come from sentence-transformers' evaluators and scikit-learn (see
  :mod:`ternary_hf.evaluation.tasks`); teacher fidelity from :mod:`ternary_hf.evaluation.fidelity`.
- Image encoders (ViT): :func:`encode_images` (pooled CLS / mean-patch embeddings), then
  :func:`linear_probe_accuracy` and :func:`knn_accuracy` on the frozen features.
- Reports: :meth:`Comparison.to_markdown`, :meth:`Comparison.save` (JSON, Markdown, PNG plot).
- Your own loops: ``evaluate.load(metric_path("embedding_fidelity"))`` and
  ``evaluate.load(metric_path("retrieval"))``, Hugging Face ``evaluate`` metric modules shipped with the
  package (offline), computed by the same functions as the suite.

CLI: ``ternary-hf eval MODEL [--baseline FP_MODEL] [--quantize] [--out DIR]``.
"""

from ternary_hf.evaluation.fidelity import FidelitySets, default_fidelity_sets, teacher_fidelity
from ternary_hf.evaluation.metric_modules import METRICS, metric_path
from ternary_hf.evaluation.models import LoadedModel, load_model, model_size_bytes
from ternary_hf.evaluation.report import (
    comparison_markdown,
    plot_quality_vs_size,
    report_markdown,
    save_comparison,
    save_report,
)
from ternary_hf.evaluation.suite import (
    DEFAULT_TASKS,
    Comparison,
    ModelReport,
    compare,
    default_tasks,
    evaluate,
    measure_speed,
)
from ternary_hf.evaluation.tasks import EmbeddingCache, TaskResult, run_task
from ternary_hf.evaluation.user_tasks import load_classification_task, load_pair_task, load_retrieval_task
from ternary_hf.evaluation.vision import encode_images, knn_accuracy, linear_probe_accuracy

__all__ = [
    "DEFAULT_TASKS",
    "Comparison",
    "EmbeddingCache",
    "FidelitySets",
    "LoadedModel",
    "METRICS",
    "ModelReport",
    "TaskResult",
    "compare",
    "comparison_markdown",
    "default_fidelity_sets",
    "default_tasks",
    "encode_images",
    "evaluate",
    "knn_accuracy",
    "linear_probe_accuracy",
    "load_classification_task",
    "load_model",
    "load_pair_task",
    "load_retrieval_task",
    "measure_speed",
    "metric_path",
    "model_size_bytes",
    "plot_quality_vs_size",
    "report_markdown",
    "run_task",
    "save_comparison",
    "save_report",
    "teacher_fidelity",
]
