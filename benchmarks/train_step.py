"""Time of one distillation step of the default recipe, by phase and sequence length, for the student's
training attention (`DistillationArguments.student_attention`): eager vs sdpa, alternated in one process.

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python benchmarks/train_step.py [--lengths 16 32 64 128 256] [--rounds 5]

Each round times every length with each attention in turn (A B A B ...) after a warm-up step, on the bundled
all-MiniLM-L6-v2 with a batch of 32 sequences of random tokens (every token real, so the length is the
length), under the recipe's precision (bf16 autocast where the CPU has native bf16). Phases: teacher forward,
student forward, loss, backward, optimizer step (gradient clipping + fused AdamW). Medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import ternary_hf  # noqa: E402,F401

PHASES = ("teacher", "student forward", "loss", "backward", "optimizer")


def _batch(length: int, batch: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def _step(trainer, model, optimizer, inputs, bf16: bool) -> list[float]:
    marks = [time.perf_counter()]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        teacher = trainer.teacher_outputs(inputs, None)
        marks.append(time.perf_counter())
        out = model(**inputs, **trainer._forward_kwargs())
        marks.append(time.perf_counter())
        mask = inputs["attention_mask"]
        loss, _ = trainer.loss_fn(trainer._collect(out, mask), teacher, mask)
    marks.append(time.perf_counter())
    loss.backward()
    marks.append(time.perf_counter())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    marks.append(time.perf_counter())
    return [b - a for a, b in zip(marks, marks[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ternary_hf.commands.distill import parse_args
    from ternary_hf.training.recipe import build_distillation as build_trainer
    from ternary_hf.training.teacher import base_model_of

    command_args, dargs, targs = parse_args(["--output_dir", "/tmp/ternary-hf-train-step", "--max_texts", "64"],
                                            prog="train_step.py")
    trainer = build_trainer(command_args, dargs, targs)
    model = trainer.model.train()
    student = base_model_of(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # a tiny learning rate: the weights (and so the ternary codes) stay put across the rounds
    optimizer = torch.optim.AdamW(params, lr=1e-9, fused=True)
    vocab = student.config.vocab_size
    impls = ("sdpa", "eager")
    times: dict[tuple[int, str], list[list[float]]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for length in args.lengths:
            inputs = _batch(length, args.batch, vocab, seed=length)
            for impl in impls:
                student.set_attn_implementation(impl)
                phases = _step(trainer, model, optimizer, inputs, targs.bf16)
                if r:
                    times.setdefault((length, impl), []).append(phases)

    print(f"\nDistillation step, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if targs.bf16 else 'fp32'}; median ms over {args.rounds} alternated rounds\n")
    print("| length | attention | " + " | ".join(PHASES) + " | step | sdpa / eager |")
    print("|---:|---|" + "---:|" * (len(PHASES) + 2))
    for length in args.lengths:
        totals = {impl: statistics.median(sum(p) for p in times[(length, impl)]) for impl in impls}
        for impl in impls:
            med = [statistics.median(p[i] for p in times[(length, impl)]) * 1e3 for i in range(len(PHASES))]
            ratio = f"{totals['sdpa'] / totals['eager']:.2f}x" if impl == "eager" else ""
            print(f"| {length} | {impl} | " + " | ".join(f"{m:.0f}" for m in med)
                  + f" | {totals[impl] * 1e3:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
