"""The self-distillation recipe as a typed API: what `ternary-hf distill`, `ternary-hf quickstart` and the benchmarks
all run.

>>> from ternary_hf.training.recipe import RecipeArguments, distill, recipe_training_arguments
>>> trainer = distill(RecipeArguments(max_texts=2000), training_args=recipe_training_arguments("out/x", max_steps=50))

The defaults are the recipe measured in `benchmarks/distill_recipe.py`: `RECIPE_TRAINING_DEFAULTS` on top of
transformers' `TrainingArguments`, `RECIPE_DISTILLATION_DEFAULTS` on top of `DistillationArguments`, and the
data / ternarization choices of `RecipeArguments`. The command line (`commands/distill.py`) is a parser over these
three dataclasses and nothing else.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..config import GRANULARITIES, RULES, TernaryConfig
from .arguments import DistillationArguments
from .precision import cpu_bf16_training_defaults

WORDNET = "wordnet"
WIKIPEDIA = "wikipedia"

# The default recipe (see benchmarks/distill_recipe.py for how it was chosen and what it reaches).
RECIPE_TRAINING_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 32,
    "learning_rate": 3e-4,  # over the 30-minute budget 3e-4 beat 5e-4 on retrieval (benchmarks/README.md)
    "warmup_steps": 100,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.0,
    "optim": "adamw_torch_fused",  # fused AdamW: ~7x faster optimizer step on CPU than the foreach one
    "max_steps": 100_000,  # the time budget ends the run; see --time_budget_minutes
    "train_sampling_strategy": "group_by_length",
    "logging_steps": 25,
    "save_steps": 250,
    "save_total_limit": 2,
    "report_to": "none",
    "dataloader_drop_last": False,
    # bf16 autocast on CPUs that compute bf16 natively: ~2x the steps per minute (training/precision.py)
    **cpu_bf16_training_defaults(),
}
RECIPE_DISTILLATION_DEFAULTS: dict[str, Any] = {
    "time_budget_minutes": 30.0,
}


@dataclass
class RecipeArguments:
    """What to distil, on what, and how to ternarize it."""

    model: str | None = field(
        default=None,
        metadata={"help": "Student/teacher checkpoint (path or Hub id). Default: the bundled all-MiniLM-L6-v2."},
    )
    data: list[str] = field(
        default_factory=lambda: [WORDNET, WIKIPEDIA, WIKIPEDIA],
        metadata={"help": "Distillation texts: `wordnet` (the non-held-out WordNet glosses and examples, offline), "
                  "`wikipedia` (~1,850 long Wikipedia paragraphs bundled with gensim's test data) and/or "
                  ".txt/.jsonl/.csv files. A name given twice is used twice: repeat `wikipedia` to weight long inputs "
                  "more (closer to the teacher on long documents, fewer steps per minute). Default: wordnet "
                  "wikipedia wikipedia."},
    )
    max_texts: int | None = field(
        default=None, metadata={"help": "Use at most this many texts (a seeded random subset)."}
    )
    granularity: str = field(default="per_channel", metadata={"help": f"Scale granularity: {', '.join(GRANULARITIES)}."})
    rule: str = field(default="twn", metadata={"help": f"Ternarization rule: {', '.join(RULES)}."})
    group_size: int = field(default=128, metadata={"help": "Group size for granularity=per_group."})

    def source(self) -> str:
        """The model to distil: `model`, or the bundled all-MiniLM-L6-v2."""
        from ..defaults import default_model_path

        return self.model or str(default_model_path())

    def ternary_config(self, mode: str = "qat", **options: Any) -> TernaryConfig:
        """The `TernaryConfig` of the student (`qat`) or of its post-training twin (`inference`); ``options`` are
        further `TernaryConfig` fields (e.g. ``embedding_dtype``)."""
        return TernaryConfig(granularity=self.granularity, rule=self.rule, group_size=self.group_size, mode=mode,
                             **options)


def recipe_parser(prog: str = "ternary-hf distill", description: str | None = None) -> Any:
    """An `HfArgumentParser` over `(RecipeArguments, DistillationArguments, TrainingArguments)` with the recipe
    defaults: every `TrainingArguments` flag works, as does every `DistillationArguments` field."""
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((RecipeArguments, DistillationArguments, TrainingArguments), prog=prog,
                              description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(**RECIPE_TRAINING_DEFAULTS, **RECIPE_DISTILLATION_DEFAULTS)
    return parser


def recipe_training_arguments(output_dir: str, **overrides: Any) -> Any:
    """`TrainingArguments` with the recipe defaults, then `overrides` (any `TrainingArguments` field)."""
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=output_dir, **{**RECIPE_TRAINING_DEFAULTS, **overrides})


def recipe_distillation_arguments(**overrides: Any) -> DistillationArguments:
    """`DistillationArguments` with the recipe defaults (a 30-minute budget), then `overrides`."""
    return DistillationArguments(**{**RECIPE_DISTILLATION_DEFAULTS, **overrides})


def recipe_arguments(recipe: dict[str, Any] | None = None, distillation: dict[str, Any] | None = None,
                     training: dict[str, Any] | None = None, flags: Sequence[str] = ()) -> tuple[Any, Any, Any]:
    """`(RecipeArguments, DistillationArguments, TrainingArguments)`: the recipe defaults, then the given field values
    (``training`` must hold ``output_dir``), then ``flags`` in `ternary-hf distill` syntax (e.g. a user's extra
    ``["--learning_rate", "1e-4"]``). Raises ValueError naming an unknown field or flag."""
    recipe, distillation, training = dict(recipe or {}), dict(distillation or {}), dict(training or {})
    if "output_dir" not in training:
        raise ValueError("recipe_arguments: training needs an output_dir.")
    if not flags:
        try:
            return (RecipeArguments(**recipe), recipe_distillation_arguments(**distillation),
                    recipe_training_arguments(**training))
        except TypeError as exc:  # an unknown field name
            raise ValueError(f"recipe_arguments: {exc}") from exc
    parser = recipe_parser()
    parser.set_defaults(**recipe, **distillation, **training)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=list(flags)))
    except SystemExit as exc:  # argparse already printed what was wrong with the flags
        raise ValueError(f"recipe_arguments: invalid flags {list(flags)}") from exc


def load_distillation_texts(sources: Sequence[str], max_texts: int | None = None, seed: int = 0) -> Any:
    """A shuffled `datasets.Dataset` with a `text` column from `wordnet`, `wikipedia` and/or text files; a name given
    twice is used twice (up-weighting it); `max_texts` keeps a seeded random subset."""
    import datasets

    from .data import load_texts

    parts = []
    files = [s for s in sources if s not in (WORDNET, WIKIPEDIA)]
    for source in sources:
        if source == WORDNET:
            from ..data.wordnet import distillation_texts

            parts.append(datasets.Dataset.from_dict({"text": distillation_texts()}))
        elif source == WIKIPEDIA:
            from .data import wikipedia_paragraphs

            parts.append(datasets.Dataset.from_dict({"text": wikipedia_paragraphs()}))
    if files:
        from pathlib import Path

        parts.append(load_texts([Path(f) for f in files]))
    if not parts:
        raise ValueError("no distillation data: pass --data wordnet and/or text/jsonl/csv files.")
    data = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    data = data.shuffle(seed=seed)
    if max_texts is not None:
        data = data.select(range(min(max_texts, len(data))))
    return data


def build_distillation(
    recipe: RecipeArguments,
    distillation_args: DistillationArguments,
    training_args: Any,
    data: Any = None,
    callbacks: list | None = None,
) -> Any:
    """The QAT student of `recipe.source()` and its `TernaryDistillationTrainer` (not yet trained).

    `data`: the training texts (anything `TernaryDistillationTrainer` accepts); None loads `recipe.data`
    (at most `recipe.max_texts`, shuffled with `training_args.seed`).
    """
    from transformers import AutoModel, AutoTokenizer

    from .trainer import TernaryDistillationTrainer

    source = recipe.source()
    student = AutoModel.from_pretrained(source, quantization_config=recipe.ternary_config("qat"))
    tokenizer = AutoTokenizer.from_pretrained(source)
    if data is None:
        data = load_distillation_texts(recipe.data, recipe.max_texts, seed=training_args.seed)
    return TernaryDistillationTrainer(model=student, args=training_args, train_dataset=data,
                                      distillation_args=distillation_args, processing_class=tokenizer,
                                      callbacks=callbacks)


def check_model_source(source: str | None, flag: str) -> None:
    """Before any work: `source` must be a saved model folder, or something shaped like a Hub id (and, offline,
    one in the local cache). Raises `ValueError` saying which and what to pass; `flag` names the argument."""
    import os
    from pathlib import Path

    if source is None:
        return
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir() or not any((path / n).is_file() for n in ("config.json", "modules.json")):
            raise ValueError(f"{flag} {source} is not a saved model folder (no config.json / modules.json in it); "
                             "pass the folder written by save_pretrained / model.save, or a Hub id 'org/name'.")
        return
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source:
        raise ValueError(f"{flag} {source}: no such folder. Pass an existing model folder or a Hub id 'org/name'.")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            raise ValueError(f"{flag} {source}: no such folder, and with HF_HUB_OFFLINE set the Hub model {source!r} "
                             "is not in the local cache. Pass an existing model folder, or download it first.")


def check_distillation_inputs(recipe: RecipeArguments, distillation_args: DistillationArguments,
                              training_args: Any) -> None:
    """Everything that can be checked before the models and the data are loaded: model sources, data files
    (file and line of the first bad record), the output folder. Raises `ValueError` / `FileNotFoundError`."""
    from pathlib import Path

    from .data import check_text_files

    check_model_source(recipe.model, "--model")
    check_model_source(getattr(distillation_args, "teacher", None), "--teacher")
    check_text_files([s for s in recipe.data if s not in (WORDNET, WIKIPEDIA)])
    out = Path(training_args.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is an existing file; pass a folder path.")


def save_final_model(trainer: Any, output_dir: str) -> None:
    """Write the final packed model into a temporary folder next to `output_dir`, then move its files into
    `output_dir` (which also holds the resumable checkpoint-*/ folders, so it cannot be swapped as a whole): a
    failure while writing (full disk, a bad tensor) leaves the previous files of `output_dir` untouched."""
    import shutil
    import tempfile
    from pathlib import Path

    from ..fileio import publish_directory

    if not trainer.args.should_save:  # other ranks take part in the collective calls and write nothing
        trainer.save_model(output_dir)
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        trainer.save_model(str(stage))
        # config.json last: until then a reader sees the previous model's config.
        for entry in sorted(stage.iterdir(), key=lambda p: p.name == "config.json"):
            publish_directory(entry, out / entry.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def distill(
    recipe: RecipeArguments | None = None,
    distillation_args: DistillationArguments | None = None,
    training_args: Any = None,
    data: Any = None,
    callbacks: list | None = None,
    resume_from_checkpoint: str | bool | None = None,
    check_inputs: bool = True,
) -> Any:
    """Distil with the recipe and save the packed model to `training_args.output_dir`; returns the trainer.

    Defaults: the bundled MiniLM on the recipe data (`RecipeArguments()`), `recipe_distillation_arguments()` and
    `recipe_training_arguments("out/distilled")`. `resume_from_checkpoint=True` resumes from the newest complete
    checkpoint of the output folder. Inputs are checked (`check_distillation_inputs`) before anything is loaded
    unless `check_inputs=False` (the caller already did); the final model is written through a staged folder.
    """
    recipe = recipe or RecipeArguments()
    distillation_args = distillation_args or recipe_distillation_arguments()
    training_args = training_args or recipe_training_arguments("out/distilled")
    if check_inputs:
        check_distillation_inputs(recipe, distillation_args, training_args)
    trainer = build_distillation(recipe, distillation_args, training_args, data=data, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
    save_final_model(trainer, training_args.output_dir)
    return trainer
