"""The evaluation suite: run tasks on a model, or compare a (ternary) model with its fp baseline.

>>> from ternary_hf.evaluation import compare
>>> cmp = compare("out/ternary-minilm", baseline="sentence-transformers/all-MiniLM-L6-v2")
>>> print(cmp.to_markdown()); cmp.save("eval-out")          # results.json, results.md, quality_vs_size.png
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from ternary_hf.evaluation.fidelity import FidelitySets, default_fidelity_sets, teacher_fidelity
from ternary_hf.evaluation.models import LoadedModel, load_model, model_size_bytes
from ternary_hf.evaluation.tasks import EmbeddingCache, Task, TaskResult, run_task

DEFAULT_TASKS = ("lee50", "lee50_graded", "wordsim353", "simlex999", "polarity", "wordnet")


def default_tasks(names: Sequence[str] = DEFAULT_TASKS, wordnet_queries: int = 1000, seed: int = 0) -> list[Task]:
    """The built-in offline tasks, by name (see :data:`DEFAULT_TASKS`)."""
    from ternary_hf.data import gensim_sets, wordnet

    builders = {
        "lee50": gensim_sets.lee50_pairs,
        "lee50_graded": gensim_sets.lee50_graded,
        "wordsim353": gensim_sets.wordsim353,
        "simlex999": gensim_sets.simlex999,
        "polarity": gensim_sets.polarity,
        "wordnet": lambda: wordnet.retrieval_task(n_queries=wordnet_queries, seed=seed),
    }
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; built-in tasks: {', '.join(builders)}")
    return [builders[n]() for n in names]


@dataclass
class ModelReport:
    """Everything measured for one model.

    Attributes:
        label: model name in reports.
        results: one :class:`TaskResult` per task.
        size: ``{"bytes", "fp32_bytes", "ratio"}`` from ``ternary_hf.footprint``.
        speed: encoding throughput in texts/s (median of alternated runs), when measured.
        fidelity: cosine/neighbour agreement with the reference model, when compared.
        cache: the model's embedding cache (reused for fidelity; not serialized).
    """

    label: str
    results: list[TaskResult]
    size: dict[str, float] | None = None
    speed: float | None = None
    fidelity: dict[str, float] | None = None
    cache: EmbeddingCache | None = field(default=None, repr=False, compare=False)

    def metric(self, task: str, name: str) -> float:
        for result in self.results:
            if result.task == task:
                return result.metrics[name]
        raise KeyError(f"{self.label}: no result for task {task!r}")

    def headline(self) -> list[tuple[str, str, float]]:
        """(task, metric, value) of every headline metric."""
        return [(r.task, m, r.metrics[m]) for r in self.results for m in r.headline]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "size": self.size,
            "speed_texts_per_s": self.speed,
            "fidelity": self.fidelity,
            "results": [asdict(r) for r in self.results],
        }


@dataclass
class Comparison:
    """A model against its baseline: every headline metric, retained %, and the mean retained."""

    model: ModelReport
    baseline: ModelReport
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(cls, model: ModelReport, baseline: ModelReport) -> "Comparison":
        rows = []
        for task, metric, base_value in baseline.headline():
            value = model.metric(task, metric)
            retained = 100.0 * value / base_value if base_value else float("nan")
            rows.append({"task": task, "metric": metric, "baseline": base_value, "model": value, "retained": retained})
        return cls(model, baseline, rows)

    @property
    def mean_retained(self) -> float:
        """Mean retained % over the headline metrics (metrics whose baseline is 0 are left out)."""
        values = [r["retained"] for r in self.rows if r["retained"] == r["retained"]]
        return sum(values) / len(values) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "baseline": self.baseline.to_dict(),
            "rows": self.rows,
            "mean_retained": self.mean_retained,
        }

    def to_markdown(self) -> str:
        from ternary_hf.evaluation.report import comparison_markdown

        return comparison_markdown(self)

    def save(self, out_dir: str, plot: bool = True) -> dict[str, str]:
        from ternary_hf.evaluation.report import save_comparison

        return save_comparison(self, out_dir, plot=plot)


def measure_speed(
    models: Sequence[LoadedModel], texts: list[str], batch_size: int = 32, repeats: int = 5
) -> list[float]:
    """Encoding throughput (texts/s) of each model: one warm-up, then ``repeats`` alternated runs
    (model A, model B, A, B, ...) in this process; the median time is used."""
    if not texts:
        raise ValueError("measure_speed needs at least one text")
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for m in models:
            m.model.encode(texts[: batch_size * 2], batch_size=batch_size)
        for _ in range(repeats):
            for i, m in enumerate(models):
                start = time.perf_counter()
                m.model.encode(texts, batch_size=batch_size)
                times[i].append(time.perf_counter() - start)
    return [len(texts) / statistics.median(t) for t in times]


def speed_texts(n_short: int = 192, n_long: int = 64) -> list[str]:
    """Held-out short (WordNet definitions) and long (Lee background) texts for speed runs."""
    from ternary_hf.data import gensim_sets, wordnet

    short = [s.gloss for s in wordnet.heldout_synsets()[:n_short]]
    return short + gensim_sets.lee_background_documents()[:n_long]


def evaluate(
    model: Any,
    tasks: Sequence[Task] | None = None,
    *,
    batch_size: int = 64,
    show_progress_bar: bool = False,
    cache: EmbeddingCache | None = None,
    on_task_done: Callable[[TaskResult], None] | None = None,
    **load_kwargs: Any,
) -> ModelReport:
    """Run ``tasks`` (default: :func:`default_tasks`) on one model.

    ``model`` is anything :func:`~ternary_hf.evaluation.models.load_model` accepts, or a
    :class:`LoadedModel`; ``load_kwargs`` go to ``load_model`` (``quantize=True`` for PTQ).
    ``on_task_done`` is called with each task's result as it finishes (e.g. to advance one progress bar
    for a whole evaluation instead of an encoding bar per call).
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model, **load_kwargs)
    tasks = default_tasks() if tasks is None else list(tasks)
    if not tasks:
        raise ValueError("no tasks to run")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    cache = cache or EmbeddingCache(loaded.model, batch_size=batch_size, show_progress_bar=show_progress_bar)
    results = []
    for task in tasks:
        results.append(run_task(task, loaded.model, cache))
        if on_task_done is not None:
            on_task_done(results[-1])
    report = ModelReport(loaded.label, results, cache=cache)
    try:
        report.size = model_size_bytes(loaded)
    except Exception as exc:  # size is informative; a model footprint() cannot read must not abort the run
        warnings.warn(f"{loaded.label}: model size unavailable ({exc})", stacklevel=2)
    return report


def compare(
    model: Any,
    baseline: Any,
    tasks: Sequence[Task] | None = None,
    *,
    fidelity: bool | FidelitySets = True,
    speed: bool | Sequence[str] = False,
    batch_size: int = 64,
    show_progress_bar: bool = False,
    quantize_model: bool = False,
    device: str = "cpu",
) -> Comparison:
    """Evaluate ``model`` and ``baseline`` on the same tasks and compare them.

    Args:
        model: the model under test (path, Hub id, SentenceTransformer, transformers model).
        baseline: its full-precision reference, also the reference for teacher fidelity.
        tasks: tasks to run (default: :func:`default_tasks`).
        fidelity: ``True`` for :func:`default_fidelity_sets`, a :class:`FidelitySets`, or ``False``.
        speed: also measure encoding throughput (alternated runs, medians) on
            :func:`speed_texts`, or on the given texts.
        quantize_model: ternarize ``model`` on load (post-training quantization) - e.g.
            ``compare(path, baseline=path, quantize_model=True)``.
    """
    tasks = default_tasks() if tasks is None else list(tasks)
    loaded_base = baseline if isinstance(baseline, LoadedModel) else load_model(baseline, device=device)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, quantize=quantize_model, device=device)
    if loaded.label == loaded_base.label:
        loaded.label += " (model)"
    base_report = evaluate(loaded_base, tasks, batch_size=batch_size, show_progress_bar=show_progress_bar)
    model_report = evaluate(loaded, tasks, batch_size=batch_size, show_progress_bar=show_progress_bar)
    if fidelity:
        sets = fidelity if isinstance(fidelity, FidelitySets) else default_fidelity_sets()
        model_report.fidelity = teacher_fidelity(model_report.cache, base_report.cache, sets)
    if speed:
        texts = list(speed) if not isinstance(speed, bool) else speed_texts()
        base_report.speed, model_report.speed = measure_speed([loaded_base, loaded], texts)
    return Comparison.build(model_report, base_report)
