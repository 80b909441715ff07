"""`ternary-hf quickstart`: the main job in one command.

Ternarizes a model (default: the bundled all-MiniLM-L6-v2), self-distils it within a time budget with the
`ternary-hf distill` recipe, saves the packed checkpoint with its model card, reloads it, evaluates it
against fp32 (quality suite, teacher fidelity, speed), builds a FAISS index and runs sample searches,
and writes a report folder (report.md, results.json, PNG plots, model/ ready for `ternary-hf push`).

Examples::

    ternary-hf quickstart                                   # ~25 min on 2 CPU cores; report in out/quickstart
    ternary-hf quickstart --fast --out out/smoke            # smoke run, a few minutes
    ternary-hf quickstart --model sentence-transformers/all-mpnet-base-v2 --corpus my_texts.jsonl --minutes 60
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `quickstart`."""
    from ..config import EMBEDDING_DTYPES
    from ..quickstart import DEFAULT_EMBEDDING_DTYPE, DEFAULT_MINUTES

    p = subparsers.add_parser(
        "quickstart",
        help="The whole job in one command: ternarize, self-distil, evaluate vs fp32, FAISS search, report folder.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None,
                   help="Model to ternarize: local folder or Hub id (default: the bundled all-MiniLM-L6-v2).")
    p.add_argument("--corpus", default=None,
                   help="Distillation and search corpus: .txt (one text per line), .jsonl/.json, .csv/.tsv, or a "
                        "folder saved with datasets' save_to_disk (default: the `ternary-hf distill` data, WordNet "
                        "+ Wikipedia paragraphs; searches over held-out WordNet definitions).")
    p.add_argument("--text-column", default=None, help="Corpus column with the text (default: auto-detected).")
    p.add_argument("--out", default="out/quickstart", help="Report folder to create (default: out/quickstart).")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"Training wall-time budget in minutes (default: {DEFAULT_MINUTES:g}; with --fast: a few "
                        "steps). The whole default run takes about 5-8 minutes more.")
    p.add_argument("--fast", action="store_true",
                   help="Smoke run: a few training steps, small evaluation subsets, small index (minutes).")
    p.add_argument("--overwrite", action="store_true", help="Replace --out if it already holds files.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedding-dtype", default=DEFAULT_EMBEDDING_DTYPE, choices=EMBEDDING_DTYPES,
                   help=f"How the checkpoint stores its embedding tables (default: {DEFAULT_EMBEDDING_DTYPE}, 0.16x of "
                        "fp32 in all for MiniLM at no measurable quality cost; float: 0.56x; see "
                        "benchmarks/results/default_footprint.md).")
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")
    p.add_argument("distill_args", nargs=argparse.REMAINDER,
                   help="After `--`: extra `ternary-hf distill` flags, e.g. -- --learning_rate 1e-4.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..quickstart import QuickstartConfig, QuickstartError, run_quickstart

    extra = list(args.distill_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.minutes is not None and args.minutes <= 0:
        print("ternary-hf quickstart: error: --minutes must be > 0.", file=sys.stderr)
        return 2
    config = QuickstartConfig(out=args.out, model=args.model, corpus=args.corpus, text_column=args.text_column,
                              minutes=args.minutes, fast=args.fast, overwrite=args.overwrite, seed=args.seed,
                              show_progress=not args.no_progress, distill_args=extra,
                              embedding_dtype=args.embedding_dtype)
    try:
        run_quickstart(config)
    except QuickstartError as exc:
        print(f"ternary-hf quickstart: error: {exc}", file=sys.stderr)
        return 2
    return 0
