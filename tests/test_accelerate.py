"""Distillation under accelerate with two CPU processes (DDP over gloo): both ranks agree.

accelerate 1.15's `launch --cpu --num_processes 2` runs a *single* process (its simple launcher only
spawns several with an MPI hostfile); `launch --multi_gpu --num_processes 2` starts two processes via
torch.distributed, which on a machine without GPUs (or with `use_cpu=True`) train on CPU over gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from distill_helpers import write_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    sys.path.insert(0, {tests!r})
    import ternary_hf
    from ternary_hf.training import DistillationArguments, TernaryDistillationTrainer
    from distill_helpers import TEXTS, qat_student, training_args

    tiny, out = sys.argv[1], sys.argv[2]
    student = qat_student(tiny)
    args = training_args(out, max_steps=3, per_device_train_batch_size=4, save_strategy="steps", save_steps=3)
    # a time budget far away: exercises the per-step broadcast of rank 0's clock
    trainer = TernaryDistillationTrainer(model=student, args=args, train_dataset=TEXTS,
                                         distillation_args=DistillationArguments(time_budget_minutes=60))
    trainer.train()
    rank = trainer.args.process_index
    torch.save({{k: v.detach().cpu() for k, v in student.state_dict().items()}}, os.path.join(out, f"rank{{rank}}.pt"))
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump({{"world_size": trainer.args.world_size, "step": trainer.state.global_step,
                   "ids": sorted(int(i) for b in trainer.get_train_dataloader() for i in b["example_id"])}}, f)
    """
)


def test_two_process_ddp_ranks_agree(tmp_path):
    pytest.importorskip("accelerate")
    tiny = write_tiny_checkpoint(str(tmp_path / "tiny"))
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(tests=os.path.join(REPO, "tests")))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           str(worker), tiny, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(i["world_size"] == 2 and i["step"] == 3 for i in infos)
    assert not set(infos[0]["ids"]) & set(infos[1]["ids"])  # each rank distils its own shard of the data
    w0, w1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert w0.keys() == w1.keys()
    for key in w0:
        torch.testing.assert_close(w0[key], w1[key], rtol=0, atol=0, msg=key)
    from transformers import AutoModel

    start = AutoModel.from_pretrained(tiny).state_dict()  # trained: differs from the checkpoint it started from
    assert not torch.equal(w0["encoder.layer.0.attention.self.query.weight"],
                           start["encoder.layer.0.attention.self.query.weight"])
    assert os.path.isfile(out / "checkpoint-3" / "ternary_checkpoint.json")  # rank 0 wrote the checkpoint
