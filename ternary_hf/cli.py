"""`ternary-hf` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import os
import sys

from .commands import ann, distill, eval as eval_cmd, push, quantize, quickstart

SUBCOMMANDS = [quickstart, quantize, distill, eval_cmd, ann, push]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ternary-hf", description="Ternary-weight embedding models for the HF stack.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Subcommands built on HfArgumentParser parse their own arguments (every TrainingArguments flag).
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "accepts_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.extra_args = rest
    import ternary_hf  # noqa: F401  (registers the quantizer before any model is loaded)

    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
