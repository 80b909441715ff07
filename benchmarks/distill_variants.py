"""Screens of training-time variants that are *not* options of the package (negative results, kept so that
the figures README gives for them can be rerun):

  default        the `ternary-hf distill` recipe unchanged: the reference (run it with `--seed 1` as well
                 for the seed-to-seed spread)
  input_scales   a second, learned scale per input channel of every ternary linear, `W ~ diag(r) T diag(c)`:
                 `c` multiplies the layer's input before its activation quantization (a forward pre-hook),
                 parametrised `c = 1 + 10 p` with `p` starting at 0 so that Adam moves `c` 10x faster than
                 a weight; serving it would need a new packed-format tensor and kernel support
  ema            the exponential moving average (decay `--ema-decay`) of every trained parameter, the latent
                 weights included, replaces the parameters at the end (codes re-picked from the averaged
                 latent weights)

Each trains the recipe for `--max_steps` (600) steps on 20,000 texts and evaluates the in-memory QAT student
(its forward simulates the packed model's numerics: ternary weights, per-token int8 activations) on teacher
fidelity and the WordNet retrieval task, then prints one table row. Run two at a time, one thread each:

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python benchmarks/distill_variants.py input_scales --out runs/v_in
    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python benchmarks/distill_variants.py default --out runs/v_s1 --seed 1

Flags after the variant and `--out` go to `ternary-hf distill` (e.g. `--seed 1`).
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
from torch import nn  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import ternary_hf  # noqa: E402,F401
from ternary_hf.layer import TernaryLinear  # noqa: E402

VARIANTS = ("default", "input_scales", "ema")
SCREEN_FLAGS = ["--max_steps", "600", "--warmup_steps", "60", "--max_texts", "20000", "--time_budget_minutes", "0",
                "--save_strategy", "no"]
INPUT_SCALE_GAIN = 10.0


def add_input_scales(model: nn.Module) -> list[nn.Parameter]:
    """A trainable `c = 1 + INPUT_SCALE_GAIN * p` per input channel of every ternary linear, applied to its input."""
    params = []
    for layer in model.modules():
        if isinstance(layer, TernaryLinear):
            layer.input_scale_p = nn.Parameter(torch.zeros(layer.in_features))
            layer.register_forward_pre_hook(lambda m, args: (args[0] * (1.0 + INPUT_SCALE_GAIN * m.input_scale_p),))
            params.append(layer.input_scale_p)
    return params


class ParameterEMA(TrainerCallback):
    """Exponential moving average of the trainable parameters, updated after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model, self.decay = model, decay
        self.params: list[nn.Parameter] = []
        self.shadow: list[torch.Tensor] = []

    def on_step_end(self, args, state, control, **kwargs):
        with torch.no_grad():
            if not self.shadow:  # read at the first step: the learned scales are created when training starts
                self.params = [p for p in self.model.parameters() if p.requires_grad]
                self.shadow = [p.detach().clone() for p in self.params]
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def apply(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--out", required=True, help="Directory for the trainer output and result.json.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    args, distill_argv = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)

    from ternary_hf.commands.distill import parse_args
    from ternary_hf.training.recipe import build_distillation as build_trainer
    from ternary_hf.defaults import default_model_path
    from ternary_hf.evaluation import Comparison, default_fidelity_sets, default_tasks, load_model, teacher_fidelity
    from ternary_hf.evaluation import evaluate as run_eval

    argv_all = ["--output_dir", os.path.join(args.out, "trainer")] + SCREEN_FLAGS + distill_argv
    command_args, dargs, targs = parse_args(argv_all, prog="distill_variants.py")
    trainer = build_trainer(command_args, dargs, targs)
    ema = None
    if args.variant == "input_scales":
        add_input_scales(trainer.model)
    elif args.variant == "ema":
        ema = ParameterEMA(trainer.model, args.ema_decay)
        trainer.add_callback(ema)
    t0 = time.monotonic()
    trainer.train()
    wall = time.monotonic() - t0
    if ema is not None:
        ema.apply()
    student = trainer.model.eval()

    tasks = default_tasks(("wordnet",))
    teacher = run_eval(load_model(default_model_path()), tasks)
    report = run_eval(load_model(student, tokenizer=trainer.processing_class), tasks)
    report.fidelity = teacher_fidelity(report.cache, teacher.cache, default_fidelity_sets())
    rows = Comparison.build(report, teacher).rows
    retained = {r["metric"]: r["retained"] for r in rows}
    result = {"variant": args.variant, "argv": argv_all, "steps": trainer.state.global_step,
              "train_minutes": wall / 60.0, "fidelity": report.fidelity, "retained": retained}
    if args.variant == "input_scales":
        c = torch.cat([1.0 + INPUT_SCALE_GAIN * m.input_scale_p.detach()
                       for m in student.modules() if isinstance(m, TernaryLinear)])
        result["input_scale_range"] = [c.min().item(), c.max().item(), c.std().item()]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=str)
    fid = report.fidelity
    print("| variant | flags | cos short | cos long | top-10 agreement | WordNet nDCG@10 retained | MRR@10 retained |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print(f"| {args.variant} | {' '.join(distill_argv)} | {fid['cos_short_mean']:.4f} | {fid['cos_long_mean']:.4f} | "
          f"{fid['top10_agreement']:.3f} | {retained['ndcg@10']:.1f}% | {retained['mrr@10']:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
