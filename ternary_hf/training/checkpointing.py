"""Resumable checkpoints of a QAT student, and the files that make an output folder a SentenceTransformer.

`save_pretrained` of a QAT model writes the *packed* ternary checkpoint, which cannot continue a run (the latent
weights are gone). Every `checkpoint-N/` written during training therefore holds, besides the packed model (loadable
with `from_pretrained` as is), the latent full-precision state in `ternary_latent.safetensors`, and is marked
complete by `ternary_checkpoint.json`, written last (atomically). `resume_from_checkpoint=True` picks the newest
*complete* checkpoint, so a crash or Ctrl-C during a save never leaves a checkpoint that is picked but cannot be
resumed, and older checkpoints are rotated away only once the new one is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..fileio import atomic_output_file, atomic_write_json
from ..integration import ternary_modules

logger = logging.getLogger(__name__)

LATENT_WEIGHTS_NAME = "ternary_latent.safetensors"
CHECKPOINT_MARKER_NAME = "ternary_checkpoint.json"
# Files that make an output directory loadable as a SentenceTransformer; copied from the student's source.
_ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def is_complete_checkpoint(path: str) -> bool:
    """Whether a `checkpoint-N` directory was fully written by `TernaryDistillationTrainer`."""
    marker = os.path.join(path, CHECKPOINT_MARKER_NAME)
    try:
        with open(marker, encoding="utf-8") as f:
            return bool(json.load(f).get("complete"))
    except (OSError, ValueError):
        return False


def checkpoint_dirs(output_dir: str) -> list[tuple[int, str]]:
    """`(step, path)` of every `checkpoint-N` folder in `output_dir`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    for name in os.listdir(output_dir):
        if name.startswith(prefix) and name[len(prefix):].isdigit() and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(name[len(prefix):]), os.path.join(output_dir, name)))
    return sorted(found)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint in `output_dir` (incomplete ones, from an interrupted save, are skipped)."""
    complete = [path for _, path in checkpoint_dirs(output_dir) if is_complete_checkpoint(path)]
    return complete[-1] if complete else None


def resolve_resume(resume_from_checkpoint: str | os.PathLike | bool | None, output_dir: str) -> str | bool | None:
    """The checkpoint `Trainer.train` should resume from: `True` becomes the newest complete checkpoint of
    `output_dir`; a path must be a complete checkpoint. Raises ValueError (naming the one to use) otherwise."""
    if resume_from_checkpoint is True:
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise ValueError(
                f"No complete checkpoint in {output_dir} to resume from (a complete one holds "
                f"{CHECKPOINT_MARKER_NAME}); start without resume_from_checkpoint."
            )
        return found
    if isinstance(resume_from_checkpoint, (str, os.PathLike)):
        path = os.fspath(resume_from_checkpoint)
        if not is_complete_checkpoint(path):
            latest = last_complete_checkpoint(os.path.dirname(os.path.abspath(path)))
            raise ValueError(
                f"{path} is not a complete ternary-hf checkpoint (no {CHECKPOINT_MARKER_NAME}: "
                f"its save was interrupted, or it was not written by TernaryDistillationTrainer). "
                + (f"Resume from {latest} instead." if latest else "")
            )
        return path
    return resume_from_checkpoint


def drop_incomplete_checkpoints(output_dir: str) -> None:
    """Delete the `checkpoint-N` folders whose save was interrupted (no completion marker)."""
    for _, path in checkpoint_dirs(output_dir):
        if not is_complete_checkpoint(path):
            logger.warning("Removing incomplete checkpoint %s (its save was interrupted).", path)
            shutil.rmtree(path, ignore_errors=True)


def save_latent(model: nn.Module, path: str) -> None:
    """The QAT student's full-precision (latent) state, the part of a checkpoint a run continues from."""
    from safetensors.torch import save_model

    with atomic_output_file(path, suffix=".safetensors") as tmp:
        save_model(model, str(tmp), metadata={"format": "pt", "ternary_hf": "qat-latent"})


def load_latent(model: nn.Module, path: str) -> None:
    """Load `save_latent`'s file into `model`; raises ValueError naming the file if it does not match."""
    from safetensors.torch import load_model

    missing, unexpected = load_model(model, path, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the student: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}. "
            "Resume with the same model and TernaryConfig as the interrupted run."
        )


def has_qat_layers(model: nn.Module) -> bool:
    return any(layer.mode == "qat" for _, layer in ternary_modules(model))


class ResumableCheckpoints:
    """`transformers.Trainer` mix-in: checkpoints that hold the latent weights and are rotated only once complete.

    transformers has no public hook between "checkpoint folder written" and "older checkpoints rotated away", nor one
    for "load the model weights of the checkpoint being resumed", so these two private methods are extended; the
    rest is plain functions above.
    """

    def _save_checkpoint(self, model, trial) -> None:
        # Rotation is deferred until this checkpoint is complete, so an interrupted save never leaves the
        # output directory without a resumable checkpoint.
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if not self.args.should_save:
            return
        run_dir = self._get_output_dir(trial=trial)
        output_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        latent = None
        if has_qat_layers(self.model):
            latent = LATENT_WEIGHTS_NAME
            self._save_latent(os.path.join(output_dir, LATENT_WEIGHTS_NAME))
        atomic_write_json(os.path.join(output_dir, CHECKPOINT_MARKER_NAME),
                          {"complete": True, "global_step": self.state.global_step, "latent_weights": latent})
        rotate_checkpoints(run_dir, save_total_limit=limit, best_model_checkpoint=self.state.best_model_checkpoint,
                           use_mtime=False)

    def _save_latent(self, path: str) -> None:
        save_latent(self.accelerator.unwrap_model(self.model), path)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        model = model if model is not None else self.model
        latent = os.path.join(resume_from_checkpoint, LATENT_WEIGHTS_NAME)
        if os.path.isfile(latent):
            load_latent(model, latent)
            return
        if has_qat_layers(self.model):
            raise ValueError(
                f"{resume_from_checkpoint} has no {LATENT_WEIGHTS_NAME}: it holds only packed ternary weights, from "
                "which a QAT run cannot continue. Resume from a checkpoint written by TernaryDistillationTrainer."
            )
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        latent = os.path.join(self.state.best_model_checkpoint, LATENT_WEIGHTS_NAME)
        if os.path.isfile(latent):
            load_latent(self.accelerator.unwrap_model(self.model), latent)
            return
        super()._load_best_model()


def copy_sentence_transformers_files(source: str, output_dir: str) -> list[str]:
    """Copy `modules.json`, `sentence_bert_config.json`, ... and each module's `config.json` (e.g.
    `1_Pooling/config.json`) from `source` (local dir or Hub cache) to `output_dir`, creating every module
    folder `modules.json` lists. Returns the files copied."""
    from transformers.utils import cached_file

    def fetch(name: str, subfolder: str = "") -> str | None:
        return cached_file(source, name, subfolder=subfolder, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)

    copied: list[str] = []
    modules_path = fetch("modules.json")
    if modules_path is None:
        return copied
    targets = [(name, "") for name in _ST_FILES]
    with open(modules_path, encoding="utf-8") as f:
        module_dirs = [m["path"] for m in json.load(f) if m.get("path")]
    targets += [("config.json", d) for d in module_dirs]
    # a module without files (e.g. `2_Normalize`) still needs its folder: sentence-transformers and
    # `ternary-hf push` treat a listed but missing module folder as an incomplete checkpoint
    for d in module_dirs:
        os.makedirs(os.path.join(output_dir, d), exist_ok=True)
    for name, subfolder in targets:
        src = fetch(name, subfolder)
        if src is None:
            continue
        with atomic_output_file(os.path.join(output_dir, subfolder, name)) as tmp:
            shutil.copyfile(src, tmp)
        copied.append(os.path.join(subfolder, name))
    return copied
