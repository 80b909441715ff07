"""`ternary-hf push LOCAL_DIR REPO_ID`: upload a saved ternary checkpoint with a generated model card."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _card_info(args: argparse.Namespace):
    from ..hub import CardInfo

    def load_json(path: str | None, what: str):
        if path is None:
            return None
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--{what} {path}: cannot read JSON ({exc}).") from exc

    evals = load_json(args.eval_results, "eval-results") or {}
    if isinstance(evals, list):
        evals = {"ternary": evals}
    if not isinstance(evals, dict):
        raise ValueError("--eval-results must hold a list of EvalResult dicts or {'ternary': [...], 'fp32': [...]}.")
    return CardInfo(
        base_model=args.base_model,
        license=args.license,
        eval_results=evals.get("ternary", []),
        fp32_eval_results=evals.get("fp32", []),
        distillation=load_json(args.distillation, "distillation"),
        tags=args.tag or (),
    )


def run(args: argparse.Namespace) -> int:
    from ..hub import push_checkpoint

    try:
        card = _card_info(args)
        if args.dry_run:
            from ..hub import render_model_card

            sys.stdout.write(render_model_card(args.local_dir, repo_id=args.repo_id, card=card))
            return 0
        info = push_checkpoint(
            args.local_dir, args.repo_id, private=args.private, revision=args.revision, token=args.token,
            card=card, readme=args.readme, commit_message=args.commit_message,
        )
    except (ValueError, RuntimeError) as exc:  # CheckpointError / PushError / bad arguments: one clear line
        print(f"ternary-hf push: error: {exc}", file=sys.stderr)
        return 1
    print(f"Pushed {args.local_dir} to {args.repo_id}{'@' + args.revision if args.revision else ''}: {info.commit_url}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "push",
        help="upload a saved ternary checkpoint to the Hugging Face Hub with a generated model card",
        description="Validate a saved ternary checkpoint (transformers or sentence-transformers folder), write its "
                    "model card and upload everything as one commit. Nothing is uploaded if the folder is not an "
                    "intact ternary checkpoint, the repo id is invalid or no token is available.",
    )
    p.add_argument("local_dir", metavar="LOCAL_DIR", help="folder written by save_pretrained / SentenceTransformer.save")
    p.add_argument("repo_id", metavar="REPO_ID", help="target repo, 'namespace/name' (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (if it does not exist yet)")
    p.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created from main if missing)")
    p.add_argument("--token", help="Hub write token (default: HF_TOKEN or the token saved by `hf auth login`)")
    p.add_argument("--base-model", help="Hub id of the full-precision model, for the card's base_model")
    p.add_argument("--license", help="license identifier for the card, e.g. apache-2.0")
    p.add_argument("--eval-results", metavar="JSON",
                   help="JSON file: a list of huggingface_hub EvalResult field dicts, or {'ternary': [...], "
                        "'fp32': [...]} to show both")
    p.add_argument("--distillation", metavar="JSON", help="JSON file: the distillation recipe (key -> value)")
    p.add_argument("--tag", action="append", help="extra card tag (repeatable)")
    p.add_argument("--readme", choices=("auto", "generate", "keep"), default="auto",
                   help="auto: keep a local ternary-hf card, otherwise generate one (default); generate: always; "
                        "keep: upload the local README.md as is")
    p.add_argument("--commit-message", help="commit title")
    p.add_argument("--dry-run", action="store_true", help="validate and print the model card; upload nothing")
    p.set_defaults(func=run)
