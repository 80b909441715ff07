"""`ternary-hf quickstart`, the main job in one call: ternarize -> self-distil -> save packed -> reload -> evaluate
against fp32 -> FAISS search -> report folder.

>>> from ternary_hf.quickstart import QuickstartConfig, run_quickstart
>>> result = run_quickstart(QuickstartConfig(out="out/quickstart", fast=True))
>>> print(result.summary)

Modules: `config` (options, stage sizes, the training plan on top of `ternary_hf.training.recipe`), `inputs` (model,
corpus and output-folder checks), `stages` (evaluation data, FAISS search, stage messages and bars), `run`
(`run_quickstart`), `report` (tables, summary, plots).
"""

from .config import (
    DEFAULT_EMBEDDING_DTYPE,
    DEFAULT_MINUTES,
    FAST,
    FULL,
    QuickstartConfig,
    QuickstartError,
    QuickstartResult,
    Sizes,
    TrainingPlan,
    training_plan,
)
from .inputs import check_output_dir, load_corpus, resolve_model
from .run import publish_report, run_quickstart
from .stages import corpus_search_sets

__all__ = [
    "DEFAULT_EMBEDDING_DTYPE",
    "DEFAULT_MINUTES",
    "FAST",
    "FULL",
    "QuickstartConfig",
    "QuickstartError",
    "QuickstartResult",
    "Sizes",
    "TrainingPlan",
    "check_output_dir",
    "corpus_search_sets",
    "load_corpus",
    "publish_report",
    "resolve_model",
    "run_quickstart",
    "training_plan",
]
