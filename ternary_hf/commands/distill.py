"""`ternary-hf distill`: self-distil a ternary student from its full-precision checkpoint.

Built on `HfArgumentParser`: every `TrainingArguments` flag works (`--output_dir --max_steps
--learning_rate --per_device_train_batch_size --save_steps --resume_from_checkpoint ...`), as does
every `DistillationArguments` field (`--cosine_weight --long_documents --time_budget_minutes ...`).
The defaults are the recipe measured in `benchmarks/distill_recipe.py`.

Examples::

    ternary-hf distill --output_dir out/minilm-ternary                     # bundled MiniLM, WordNet texts
    ternary-hf distill --model sentence-transformers/all-MiniLM-L6-v2 --data texts.jsonl \\
        --text_column text --output_dir out/x --max_steps 2000 --time_budget_minutes 0
    ternary-hf distill --output_dir out/minilm-ternary --resume_from_checkpoint true
    accelerate launch --cpu --num_processes 2 -m ternary_hf.commands.distill --output_dir out/ddp ...
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import GRANULARITIES, RULES
from ..training.precision import cpu_bf16_training_defaults

WORDNET = "wordnet"
WIKIPEDIA = "wikipedia"

# The default recipe (see benchmarks/distill_recipe.py for how it was chosen and what it reaches).
RECIPE_TRAINING_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 32,
    "learning_rate": 3e-4,  # over the 30-minute budget 3e-4 beat 5e-4 on retrieval (README, Self-distillation)
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
class DistillCommandArguments:
    """What to distil, on what, and how to ternarize it."""

    model: str | None = field(
        default=None,
        metadata={"help": "Student/teacher checkpoint (path or Hub id). Default: the bundled all-MiniLM-L6-v2."},
    )
    data: list[str] = field(
        default_factory=lambda: [WORDNET, WIKIPEDIA, WIKIPEDIA],
        metadata={"help": "Distillation texts: `wordnet` (the non-held-out WordNet glosses and examples, offline), "
                  "`wikipedia` (~1,850 long Wikipedia paragraphs bundled with gensim's test data) and/or "
                  ".txt/.jsonl/.csv files. A name given twice is used twice. Default: wordnet wikipedia wikipedia "
                  "(about 2.5%% long paragraphs: real long inputs lift fidelity on long documents)."},
    )
    max_texts: int | None = field(
        default=None, metadata={"help": "Use at most this many texts (a seeded random subset)."}
    )
    granularity: str = field(default="per_channel", metadata={"help": f"Scale granularity: {', '.join(GRANULARITIES)}."})
    rule: str = field(default="twn", metadata={"help": f"Ternarization rule: {', '.join(RULES)}."})
    group_size: int = field(default=128, metadata={"help": "Group size for granularity=per_group."})


def build_parser(prog: str = "ternary-hf distill"):
    """The `HfArgumentParser` with the recipe defaults applied."""
    from transformers import HfArgumentParser, TrainingArguments

    from ..training import DistillationArguments

    parser = HfArgumentParser((DistillCommandArguments, DistillationArguments, TrainingArguments), prog=prog,
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(**RECIPE_TRAINING_DEFAULTS, **RECIPE_DISTILLATION_DEFAULTS)
    # output_dir has a transformers default ("trainer_output"); a distillation run should name its output.
    for action in parser._actions:
        if action.dest == "output_dir":
            action.required = True
    return parser


def parse_args(argv: list[str], prog: str = "ternary-hf distill"):
    """`(command_args, distillation_args, training_args)` from command-line words."""
    parser = build_parser(prog)
    command_args, dargs, targs = parser.parse_args_into_dataclasses(args=argv)
    return command_args, dargs, targs


def load_distillation_texts(sources: list[str], max_texts: int | None = None, seed: int = 0) -> Any:
    """A `datasets.Dataset` with a `text` column from `wordnet` and/or files."""
    import datasets

    from ..training import load_texts

    parts = []
    files = [s for s in sources if s not in (WORDNET, WIKIPEDIA)]
    for source in sources:  # a keyword given twice is used twice (up-weighting it)
        if source == WORDNET:
            from ..data.wordnet import distillation_texts

            parts.append(datasets.Dataset.from_dict({"text": distillation_texts()}))
        elif source == WIKIPEDIA:
            from ..training.data import wikipedia_paragraphs

            parts.append(datasets.Dataset.from_dict({"text": wikipedia_paragraphs()}))
    if files:
        parts.append(load_texts([Path(f) for f in files]))
    if not parts:
        raise ValueError("no distillation data: pass --data wordnet and/or text/jsonl/csv files.")
    data = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    data = data.shuffle(seed=seed)
    if max_texts is not None:
        data = data.select(range(min(max_texts, len(data))))
    return data


def build_trainer(command_args: DistillCommandArguments, dargs: Any, targs: Any, callbacks: list | None = None):
    """Load the QAT student and the data, and return the `TernaryDistillationTrainer` (not yet trained)."""
    from transformers import AutoModel, AutoTokenizer

    from ..config import TernaryConfig
    from ..defaults import default_model_path
    from ..training import TernaryDistillationTrainer

    source = command_args.model or default_model_path()
    config = TernaryConfig(granularity=command_args.granularity, rule=command_args.rule,
                           group_size=command_args.group_size, mode="qat")
    student = AutoModel.from_pretrained(source, quantization_config=config)
    tokenizer = AutoTokenizer.from_pretrained(source)
    data = load_distillation_texts(command_args.data, command_args.max_texts, seed=targs.seed)
    return TernaryDistillationTrainer(model=student, args=targs, train_dataset=data, distillation_args=dargs,
                                      processing_class=tokenizer, callbacks=callbacks)


def _resume_value(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def check_model_source(source: str | None, flag: str) -> None:
    """Before any work: `source` must be a saved model folder, or something shaped like a Hub id (and, offline,
    one in the local cache). Raises `ValueError` saying which and what to pass."""
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


def check_distill_arguments(command_args: DistillCommandArguments, dargs: Any, targs: Any) -> None:
    """Everything that can be checked before the models and the data are loaded: model sources, data files
    (file and line of the first bad record), the output folder."""
    from ..training.data import check_text_files

    check_model_source(command_args.model, "--model")
    check_model_source(getattr(dargs, "teacher", None), "--teacher")
    check_text_files([s for s in command_args.data if s not in (WORDNET, WIKIPEDIA)])
    out = Path(targs.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is an existing file; pass a folder path.")


def save_final_model(trainer: Any, output_dir: str) -> None:
    """Write the final packed model into a temporary folder next to `output_dir`, then move its files into
    `output_dir` (which also holds the resumable checkpoint-*/ folders, so it cannot be swapped as a whole): a
    failure while writing (full disk, a bad tensor) leaves the previous files of `output_dir` untouched."""
    import shutil
    import tempfile

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


def main_from_argv(argv: list[str], prog: str = "ternary-hf distill") -> int:
    command_args, dargs, targs = parse_args(argv, prog)
    try:
        check_distill_arguments(command_args, dargs, targs)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    trainer = build_trainer(command_args, dargs, targs)
    resume = _resume_value(targs.resume_from_checkpoint)
    trainer.train(resume_from_checkpoint=resume or None)
    save_final_model(trainer, targs.output_dir)
    if trainer.is_world_process_zero():
        print(f"Saved the packed ternary model to {targs.output_dir} after {trainer.state.global_step} steps "
              f"(latent weights of resumable checkpoints: {targs.output_dir}/checkpoint-*/).")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `distill`; its arguments are parsed by `HfArgumentParser` (`ternary-hf distill --help`)."""
    p = subparsers.add_parser(
        "distill",
        help="Self-distil a ternary student from its full-precision checkpoint (every TrainingArguments flag works).",
        add_help=False,
    )
    p.set_defaults(func=run, accepts_extra_args=True)


def run(args: argparse.Namespace) -> int:
    return main_from_argv(list(getattr(args, "extra_args", []) or []))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ternary_hf  # noqa: F401  (registers the quantizer)

    sys.exit(main_from_argv(sys.argv[1:], prog="python -m ternary_hf.commands.distill"))
