"""`ternary-hf distill`: self-distil a ternary student from its full-precision checkpoint.

Built on `HfArgumentParser`: every `TrainingArguments` flag works (`--output_dir --max_steps
--learning_rate --per_device_train_batch_size --save_steps --resume_from_checkpoint ...`), as does
every `DistillationArguments` field (`--cosine_weight --long_documents --time_budget_minutes ...`).
The defaults are the recipe measured in `benchmarks/distill_recipe.py` (`ternary_hf.training.recipe`).

Examples::

    ternary-hf distill --output_dir out/minilm-ternary                     # bundled MiniLM, WordNet texts
    ternary-hf distill --model sentence-transformers/all-MiniLM-L6-v2 --data texts.jsonl \\
        --text_column text --output_dir out/x --max_steps 2000 --time_budget_minutes 0
    ternary-hf distill --output_dir out/minilm-ternary --resume_from_checkpoint true
    accelerate launch --cpu --num_processes 2 -m ternary_hf.commands.distill --output_dir out/ddp ...
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def build_parser(prog: str = "ternary-hf distill"):
    """The recipe's `HfArgumentParser`, with `--output_dir` required (a distillation run should name its output)."""
    from ..training.recipe import recipe_parser

    parser = recipe_parser(prog, description=__doc__)
    for action in parser._actions:
        if action.dest == "output_dir":
            action.required = True
    return parser


def parse_args(argv: list[str], prog: str = "ternary-hf distill"):
    """`(recipe_args, distillation_args, training_args)` from command-line words."""
    return tuple(build_parser(prog).parse_args_into_dataclasses(args=argv))


def _resume_value(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def main_from_argv(argv: list[str], prog: str = "ternary-hf distill") -> int:
    from ..training.recipe import check_distillation_inputs, distill

    recipe, dargs, targs = parse_args(argv, prog)
    try:
        check_distillation_inputs(recipe, dargs, targs)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    trainer = distill(recipe, dargs, targs, resume_from_checkpoint=_resume_value(targs.resume_from_checkpoint),
                      check_inputs=False)
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


if __name__ == "__main__":  # the entry `accelerate launch -m ternary_hf.commands.distill` runs on every rank
    from ..cli import main

    sys.exit(main(["distill", *sys.argv[1:]]))
