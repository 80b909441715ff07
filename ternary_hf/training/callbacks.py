"""Trainer callbacks of a distillation run: the wall-time budget, and a progress display that tells the truth about it.

With a time budget the run ends when the budget is spent, not at `max_steps` (the recipe sets 100,000 so that the
budget decides): transformers' own bar would count towards 100,000 steps and estimate days. `TrainingProgress` counts
seconds of the budget instead (or steps, when no budget is set).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import ProgressCallback, TrainerCallback


class TimeBudgetCallback(TrainerCallback):
    """Stops training once `seconds` of wall time have passed since `on_train_begin` (checkpointing then, if
    checkpoints are enabled). Rank 0's clock is broadcast every step so that all ranks agree on the learning
    rate and on when to stop."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start: float | None = None
        self.elapsed = 0.0

    @property
    def fraction(self) -> float:
        return min(self.elapsed / self.seconds, 1.0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()
        self.elapsed = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.monotonic() - (self.start if self.start is not None else time.monotonic())
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            value = torch.tensor([elapsed], dtype=torch.float64, device=args.device)
            torch.distributed.broadcast(value, src=0)
            elapsed = float(value)
        self.elapsed = elapsed
        if elapsed >= self.seconds:
            control.should_training_stop = True
            if args.save_strategy != "no":
                control.should_save = True
        return control


class TrainingProgress(ProgressCallback):
    """transformers' `ProgressCallback`, with its training bar against the limit in force: the seconds of `budget`
    (a `TimeBudgetCallback`) when there is one, else `state.max_steps` steps. The step and the last loss are shown
    beside the bar; with `print_logs` each log dict is also printed above it (as `ProgressCallback` does).
    Evaluation bars are `ProgressCallback`'s. Only the main process draws."""

    def __init__(self, budget: TimeBudgetCallback | None = None, print_logs: bool = True, desc: str = "distilling",
                 show: bool = True) -> None:
        super().__init__()
        self.budget, self.print_logs, self.desc, self.show = budget, print_logs, desc, show
        self._postfix: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.current_step = state.global_step
        if not state.is_world_process_zero:
            return
        if self.budget is not None:
            self.training_bar = tqdm(total=round(self.budget.seconds), desc=self.desc, unit="s", disable=not self.show,
                                     dynamic_ncols=True,
                                     bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of the time budget "
                                                "[{elapsed}<{remaining}{postfix}]")
        else:
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step",
                                     disable=not self.show, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is None:
            return
        self._postfix["step"] = state.global_step
        if self.budget is not None:
            self.training_bar.n = min(round(self.budget.elapsed), self.training_bar.total)
        else:
            self.training_bar.n = state.global_step
        self.training_bar.set_postfix(self._postfix, refresh=False)
        self.training_bar.refresh()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None or not logs:
            return
        if "loss" in logs:
            self._postfix["loss"] = f"{logs['loss']:.4f}"
            self.training_bar.set_postfix(self._postfix)
        if self.print_logs:
            super().on_log(args, state, control, logs=logs, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


class CurveRecorder(TrainerCallback):
    """The training curve with wall time: one point per logged loss (step, minutes since the start, every `loss*`
    term and the learning rate)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.curve: list[dict[str, float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            point = {"step": state.global_step, "minutes": (time.monotonic() - self.start) / 60.0}
            point.update({k: float(v) for k, v in logs.items() if k.startswith("loss") or k == "learning_rate"})
            self.curve.append(point)
