"""What a quickstart run does: its options, the work each stage does (default vs `--fast`), and the training plan
(the typed recipe arguments it distils with)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import EMBEDDING_DTYPES

MARKER_KIND = "ternary-hf-quickstart"
MODEL_SUBDIR = "model"
DEFAULT_MINUTES = 18.0  # training budget of the default run: with evaluation, < 30 min on 2 CPU cores
# int8 tables: the checkpoint is 3.4x smaller than with float tables at no measurable quality cost
# (benchmarks/results/default_footprint.md); int4 and vocabulary pruning cost measurable fidelity.
DEFAULT_EMBEDDING_DTYPE = "int8"


class QuickstartError(ValueError):
    """Bad input (model, corpus, output folder): raised before any work, with what to do instead."""


@dataclass(frozen=True)
class Sizes:
    """How much work each stage does (the default run vs the `--fast` smoke run).

    Attributes:
        max_steps: training steps (None: the time budget alone ends training).
        max_texts: distillation texts used (a seeded random subset; None: all).
        warmup_steps: learning-rate warm-up (None: the recipe's).
        logging_steps: steps between training-curve points (None: the recipe's).
        batch_size / max_length: training batch size and token truncation (None: the recipe's).
        tasks: built-in evaluation tasks (``ternary_hf.evaluation.default_tasks`` names).
        wordnet_queries: queries of the WordNet held-out retrieval task.
        wordnet_docs: documents of that task's corpus (relevant ones + random distractors; None: all 14,190).
        fidelity_short / fidelity_long: held-out texts for the cosine-to-fp32 measures (None: all 300 long).
        speed_short / speed_long / speed_repeats: texts and alternated rounds of the speed measurement.
        index_docs: documents indexed when the corpus is the user's (``--corpus``).
        sample_queries: sample searches printed and written to the report.
    """

    max_steps: int | None
    max_texts: int | None
    warmup_steps: int | None
    logging_steps: int | None
    batch_size: int | None
    max_length: int | None
    tasks: tuple[str, ...]
    wordnet_queries: int
    wordnet_docs: int | None
    fidelity_short: int
    fidelity_long: int | None
    speed_short: int
    speed_long: int
    speed_repeats: int
    index_docs: int
    sample_queries: int = 3


FULL = Sizes(max_steps=None, max_texts=None, warmup_steps=None, logging_steps=None, batch_size=None, max_length=None,
             tasks=("lee50", "lee50_graded", "wordsim353", "simlex999", "polarity", "wordnet"),
             wordnet_queries=1000, wordnet_docs=None, fidelity_short=1000, fidelity_long=None,
             speed_short=128, speed_long=32, speed_repeats=5, index_docs=20_000)
FAST = Sizes(max_steps=5, max_texts=160, warmup_steps=2, logging_steps=1, batch_size=8, max_length=64,
             tasks=("wordsim353", "wordnet"),
             wordnet_queries=30, wordnet_docs=300, fidelity_short=48, fidelity_long=8,
             speed_short=16, speed_long=4, speed_repeats=2, index_docs=300)


@dataclass
class QuickstartConfig:
    """Options of :func:`~ternary_hf.quickstart.run_quickstart` (the `ternary-hf quickstart` flags).

    Attributes:
        out: report folder to create (refused if it exists with files, unless ``overwrite``).
        model: fp model to ternarize (local path or Hub id); None: the bundled all-MiniLM-L6-v2.
        corpus: distillation corpus (.txt one text per line, .jsonl/.json, .csv/.tsv, or a folder saved with
            ``datasets.Dataset.save_to_disk``); also the corpus of the FAISS sample searches. None: the
            `ternary-hf distill` default data (WordNet glosses/examples + Wikipedia paragraphs), and the
            searches run over the held-out WordNet definitions.
        text_column: the corpus column holding text (default: auto-detected).
        minutes: training wall-time budget; None: 18 (default run) or no budget (``fast``: step-bounded).
        fast: smoke run (a few steps, small evaluation subsets, small index): minutes, not half an hour.
        overwrite: replace an existing, non-empty ``out``.
        seed: seed of the training run and of every sampled subset.
        show_progress: progress bars (one per stage: training, evaluation, search index).
        distill_args: extra `ternary-hf distill` flags (e.g. ``["--learning_rate", "1e-4"]``), applied last.
        embedding_dtype: how the checkpoint stores its embedding tables (``TernaryConfig.embedding_dtype``:
            float, int8, int4 or ternary); the PTQ baseline is stored the same way.
    """

    out: str = "out/quickstart"
    model: str | None = None
    corpus: str | None = None
    text_column: str | None = None
    minutes: float | None = None
    fast: bool = False
    overwrite: bool = False
    seed: int = 0
    show_progress: bool = True
    distill_args: list[str] = field(default_factory=list)
    embedding_dtype: str = DEFAULT_EMBEDDING_DTYPE

    def __post_init__(self) -> None:
        if self.embedding_dtype not in EMBEDDING_DTYPES:
            raise QuickstartError(f"embedding_dtype={self.embedding_dtype!r} is invalid; allowed values: "
                                  f"{', '.join(EMBEDDING_DTYPES)}.")

    @property
    def sizes(self) -> Sizes:
        return FAST if self.fast else FULL

    @property
    def budget_minutes(self) -> float | None:
        """The training budget in force: ``minutes``, else 18 (default run) or none (``fast``: step-bounded)."""
        return self.minutes if self.minutes is not None else (None if self.fast else DEFAULT_MINUTES)


@dataclass
class QuickstartResult:
    """What :func:`~ternary_hf.quickstart.run_quickstart` produced: the report folder, its JSON results and the
    printed summary."""

    out: Path
    results: dict[str, Any]
    summary: str

    @property
    def model_dir(self) -> Path:
        return self.out / MODEL_SUBDIR


@dataclass
class TrainingPlan:
    """The typed arguments the quickstart distils with, and the `ternary-hf distill` command that reproduces them."""

    recipe: Any  # RecipeArguments
    distillation: Any  # DistillationArguments
    training: Any  # TrainingArguments
    reproduce_argv: list[str]


def training_plan(config: QuickstartConfig, model: str, trainer_dir: Path) -> TrainingPlan:
    """The recipe with the quickstart's sizes and budget on top, then ``config.distill_args``.

    ``model`` is the resolved source (trained from), ``trainer_dir`` the trainer's scratch output folder.
    """
    from ..training.recipe import recipe_arguments

    sizes = config.sizes
    recipe = {"model": model, "max_texts": sizes.max_texts}
    distillation = {"time_budget_minutes": config.budget_minutes or 0, "max_length": sizes.max_length,
                    "text_column": config.text_column}
    training = {"output_dir": str(trainer_dir), "seed": config.seed, "save_strategy": "no", "disable_tqdm": True,
                "dataloader_pin_memory": False, "max_steps": sizes.max_steps, "warmup_steps": sizes.warmup_steps,
                "logging_steps": sizes.logging_steps, "per_device_train_batch_size": sizes.batch_size}
    # None: keep the recipe's value
    recipe, distillation, training = ({k: v for k, v in d.items() if v is not None}
                                      for d in (recipe, distillation, training))
    try:
        parsed = recipe_arguments(recipe, distillation, training, flags=config.distill_args)
    except ValueError as exc:
        raise QuickstartError(f"the distillation arguments {config.distill_args or ''}: {exc}") from exc
    shown = {**training, "output_dir": "out/distilled", **distillation, **recipe}
    if config.model is None:
        shown.pop("model")  # the bundled model is the command's default
    argv = [word for key, value in shown.items() for word in (f"--{key}", _flag_value(value))]
    return TrainingPlan(*parsed, reproduce_argv=argv + list(config.distill_args))


def _flag_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
