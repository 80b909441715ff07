"""Reproducible benchmark of the default distillation recipe: PTQ vs distilled, and the curve of every
measure against steps and wall time.

    PYTHONPATH=$PWD python benchmarks/distill_recipe.py --bench-out runs/distill [distill flags ...]

Trains exactly what `ternary-hf distill` trains (same parser and defaults; any `ternary-hf distill` /
`TrainingArguments` flag can follow), saving a packed snapshot every `--snapshot-minutes` of training.
Then every snapshot, the final model and the post-training-ternarized (PTQ) model are saved packed,
reloaded from disk, and evaluated against the fp32 model with `ternary_hf.evaluation`:
teacher fidelity (mean cosine to fp32 on held-out short WordNet examples and on the ~200-token Lee
background documents, top-10 neighbour agreement), WordNet held-out retrieval nDCG@10 (1,000 queries
over ~14,000 definitions), and the small suite (Lee50, WordSim353, SimLex999, polarity).

`--eval quick` runs only the fidelity measures and the WordNet retrieval (recipe exploration);
`--skip-train` re-evaluates an existing `--bench-out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import ternary_hf  # noqa: E402,F401
from ternary_hf.fileio import atomic_write_json  # noqa: E402

SNAPSHOTS = "snapshots"


class SnapshotCallback(TrainerCallback):
    """Saves the packed model every `minutes` of training wall time (its own clock, saves excluded)."""

    def __init__(self, trainer_ref: list, out_dir: str, minutes: float) -> None:
        self.trainer_ref, self.out_dir, self.every = trainer_ref, out_dir, minutes * 60.0
        self.start = 0.0
        self.paused = 0.0
        self.next = self.every
        self.records: list[dict] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.start - self.paused

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def snapshot(self, step: int) -> None:
        t0 = time.monotonic()
        elapsed = self.elapsed()
        path = os.path.join(self.out_dir, SNAPSHOTS, f"step-{step:06d}")
        self.trainer_ref[0].save_model(path)
        self.records.append({"step": step, "train_minutes": round(elapsed / 60.0, 3), "path": path,
                             "load_avg_1m": os.getloadavg()[0]})
        atomic_write_json(os.path.join(self.out_dir, "snapshots.json"), self.records)
        self.paused += time.monotonic() - t0

    def on_step_end(self, args, state, control, **kwargs):
        if self.elapsed() >= self.next:
            self.snapshot(state.global_step)
            self.next += self.every

    def on_train_end(self, args, state, control, **kwargs):
        if not self.records or self.records[-1]["step"] != state.global_step:
            self.snapshot(state.global_step)


def train(bench_out: str, snapshot_minutes: float, distill_argv: list[str]) -> None:
    from ternary_hf.training.recipe import build_distillation, recipe_arguments

    # snapshots are packed models; resumable checkpoints are tested elsewhere
    recipe, dargs, targs = recipe_arguments(training={"output_dir": os.path.join(bench_out, "trainer")},
                                            flags=distill_argv + ["--save_strategy", "no"])
    ref: list = []
    snapshots = SnapshotCallback(ref, bench_out, snapshot_minutes)
    trainer = build_distillation(recipe, dargs, targs, callbacks=[snapshots])
    ref.append(trainer)
    load_start = os.getloadavg()
    t0 = time.monotonic()
    trainer.train()
    wall = time.monotonic() - t0
    atomic_write_json(os.path.join(bench_out, "train.json"), {
        "argv": distill_argv,
        "distillation_args": {k: v for k, v in vars(dargs).items()},
        "training_args": {k: str(v) for k, v in targs.to_dict().items()},
        "steps": trainer.state.global_step,
        "train_wall_minutes": wall / 60.0,
        "train_minutes_excluding_snapshots": snapshots.elapsed() / 60.0,
        "torch_threads": torch.get_num_threads(),
        "load_avg_at_start": load_start,
        "load_avg_at_end": os.getloadavg(),
        "log_history": trainer.state.log_history,
    })
    print(f"trained {trainer.state.global_step} steps in {wall / 60:.1f} min (load avg start {load_start}, "
          f"end {os.getloadavg()})", flush=True)


def _ptq_dir(bench_out: str, source: str) -> str:
    from sentence_transformers import SentenceTransformer

    path = os.path.join(bench_out, "ptq")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        st = SentenceTransformer(source, device="cpu", model_kwargs={"quantization_config": ternary_hf.TernaryConfig()})
        st.save(path)
    return path


def evaluate(bench_out: str, source: str, mode: str) -> dict:
    from ternary_hf.evaluation import Comparison, default_fidelity_sets, default_tasks, evaluate as run_eval
    from ternary_hf.evaluation import load_model, teacher_fidelity

    task_names = ("wordnet",) if mode == "quick" else None
    tasks = default_tasks(task_names) if task_names else default_tasks()
    sets = default_fidelity_sets()
    base = run_eval(load_model(source), tasks)
    snapshots = []
    snap_file = os.path.join(bench_out, "snapshots.json")
    if os.path.isfile(snap_file):
        with open(snap_file, encoding="utf-8") as f:
            snapshots = json.load(f)
    candidates = [{"name": "PTQ", "path": _ptq_dir(bench_out, source), "step": 0, "train_minutes": 0.0}]
    candidates += [{"name": f"step {s['step']}", **s} for s in snapshots]
    results = []
    for cand in candidates:
        t0 = time.monotonic()
        report = run_eval(load_model(cand["path"]), tasks)  # the packed checkpoint, reloaded from disk
        report.fidelity = teacher_fidelity(report.cache, base.cache, sets)
        comparison = Comparison.build(report, base)
        row = {k: cand[k] for k in ("name", "step", "train_minutes")}
        row["fidelity"] = report.fidelity
        row["metrics"] = comparison.rows
        results.append(row)
        print(f"evaluated {cand['name']} in {time.monotonic() - t0:.0f}s: "
              + ", ".join(f"{r['task']}/{r['metric']} {r['retained']:.1f}%" for r in comparison.rows)
              + f", cos short {report.fidelity['cos_short_mean']:.4f} long {report.fidelity['cos_long_mean']:.4f}",
              flush=True)
    out = {"source": source, "eval_mode": mode, "results": results}
    atomic_write_json(os.path.join(bench_out, f"eval_{mode}.json"), out)
    return out


def print_tables(out: dict) -> None:
    results = out["results"]
    ptq, final = results[0], results[-1]
    print(f"\n## PTQ vs distilled ({final['name']}, {final['train_minutes']:.1f} min of training)\n")
    print("| measure | fp32 | PTQ | PTQ retained | distilled | distilled retained |")
    print("|---|---|---|---|---|---|")
    for rp, rf in zip(ptq["metrics"], final["metrics"]):
        print(f"| {rf['task']} {rf['metric']} | {rf['baseline']:.4f} | {rp['model']:.4f} | {rp['retained']:.1f}% "
              f"| {rf['model']:.4f} | {rf['retained']:.1f}% |")
    for key, label in (("cos_short_mean", "cosine to fp32, short held-out"), ("cos_long_mean", "cosine to fp32, long docs"),
                       ("cos_short_min", "min cosine, short"), ("cos_long_min", "min cosine, long"),
                       ("top10_agreement", "top-10 neighbour agreement")):
        print(f"| {label} | 1 | {ptq['fidelity'][key]:.4f} | | {final['fidelity'][key]:.4f} | |")
    wordnet = [r for r in final["metrics"] if r["task"] == "wordnet"]
    headline = wordnet[0]["metric"] if wordnet else None
    print("\n## Curve (packed snapshots reloaded from disk)\n")
    print(f"| step | train min | cos short | cos long | top-10 agr | wordnet {headline} retained | mean retained (all) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        wn = next((m["retained"] for m in r["metrics"] if m["task"] == "wordnet" and m["metric"] == headline), float("nan"))
        mean = sum(m["retained"] for m in r["metrics"]) / len(r["metrics"])
        print(f"| {r['step']} | {r['train_minutes']:.1f} | {r['fidelity']['cos_short_mean']:.4f} | "
              f"{r['fidelity']['cos_long_mean']:.4f} | {r['fidelity']['top10_agreement']:.3f} | {wn:.1f}% | {mean:.1f}% |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench-out", required=True, help="Directory for snapshots, logs and results.")
    parser.add_argument("--snapshot-minutes", type=float, default=5.0)
    parser.add_argument("--eval", choices=("full", "quick", "none"), default="full")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a shared, oversubscribed CPU 1 thread avoids OpenMP spin-waiting).")
    args, distill_argv = parser.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.bench_out, exist_ok=True)
    if not args.skip_train:
        train(args.bench_out, args.snapshot_minutes, distill_argv)
    if args.eval != "none":
        from ternary_hf.training.recipe import recipe_arguments

        source = recipe_arguments(training={"output_dir": "unused"}, flags=distill_argv)[0].source()
        print_tables(evaluate(args.bench_out, source, args.eval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
