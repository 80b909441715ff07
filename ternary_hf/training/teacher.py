"""The teacher side of self-distillation: load the frozen full-precision copy, check it matches the
student, resolve the sentence pooling, and (optionally) cache teacher outputs per training example."""

from __future__ import annotations

import json
import logging
import os

import torch
from torch import nn

from ..integration import is_ternary_model

logger = logging.getLogger(__name__)


def base_model_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def model_source(model: nn.Module) -> str | None:
    """Where the model was loaded from (`config._name_or_path`), or None when unknown."""
    config = getattr(base_model_of(model), "config", None)
    source = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return source or None


def _is_ternary_source(source: str) -> bool:
    """Whether a checkpoint's config.json says it holds ternary (packed) weights."""
    from transformers.utils import cached_file

    path = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False)
    if path is None:
        return False
    with open(path, encoding="utf-8") as f:
        quant = json.load(f).get("quantization_config") or {}
    return quant.get("quant_method") == "ternary"


def load_teacher(student: nn.Module, teacher: nn.Module | str | None = None) -> nn.Module:
    """The frozen full-precision teacher: `teacher` itself (a model), loaded from `teacher` (a path or Hub
    id), or loaded from the student's own source (`config._name_or_path`). Eval mode, no gradients."""
    if teacher is None or isinstance(teacher, (str, os.PathLike)):
        source = os.fspath(teacher) if teacher is not None else model_source(student)
        if not source:
            raise ValueError(
                "Cannot find the teacher: the student's config has no `_name_or_path` (it was not loaded with "
                "from_pretrained). Pass `teacher=` (a full-precision model or its path)."
            )
        if _is_ternary_source(source):
            raise ValueError(
                f"The teacher source {source!r} is a ternary checkpoint; the teacher must be the full-precision "
                "model. Pass `teacher=` (the original full-precision model or its path)."
            )
        cls = type(base_model_of(student))
        # from_pretrained of a QAT/ternary class is still the plain class: no quantization_config is passed.
        teacher = cls.from_pretrained(source, dtype=torch.float32)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def check_teacher_compatible(student: nn.Module, teacher: nn.Module, *, same_depth: bool) -> None:
    """Raise `ValueError` naming the mismatch when the teacher cannot supervise the student."""
    if is_ternary_model(teacher):
        raise ValueError(
            "The teacher contains TernaryLinear layers; it must be the full-precision model (load it without "
            "quantization_config)."
        )
    s_cfg, t_cfg = base_model_of(student).config, base_model_of(teacher).config
    if s_cfg.model_type != t_cfg.model_type:
        raise ValueError(
            f"Teacher architecture {t_cfg.model_type!r} differs from the student's {s_cfg.model_type!r}; "
            "self-distillation needs the full-precision copy of the same model."
        )
    fields = ["hidden_size", "vocab_size", "num_channels", "patch_size"]  # absent fields (None) match
    if same_depth:  # per-layer terms pair the layers one to one
        fields += ["num_hidden_layers", "num_attention_heads"]
    for name in fields:
        s_val, t_val = getattr(s_cfg, name, None), getattr(t_cfg, name, None)
        if s_val != t_val:
            raise ValueError(
                f"Teacher config.{name}={t_val} differs from the student's {s_val}; the teacher must be the "
                "full-precision copy of the student's checkpoint."
            )


def load_pooling(source: str | None, hidden_size: int, mode: str = "auto") -> nn.Module:
    """A sentence-transformers `Pooling` module: the model's own (from `modules.json`) when `mode='auto'`
    and the checkpoint has one, else mean pooling; or the named `mode` ('mean', 'cls', 'max', ...)."""
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    if mode != "auto":
        return Pooling(hidden_size, pooling_mode=mode)
    if source:
        from transformers.utils import cached_file

        modules_path = cached_file(source, "modules.json", _raise_exceptions_for_missing_entries=False)
        if modules_path is not None:
            with open(modules_path, encoding="utf-8") as f:
                modules = json.load(f)
            for entry in modules:
                if entry.get("type", "").endswith(".Pooling"):
                    pooling = Pooling.load(source, subfolder=entry.get("path", ""))
                    if pooling.embedding_dimension != hidden_size:
                        raise ValueError(
                            f"{source}: the Pooling module expects dimension {pooling.embedding_dimension}, "
                            f"the model's hidden size is {hidden_size}."
                        )
                    return pooling
    return Pooling(hidden_size, pooling_mode="mean")


class TeacherCache:
    """Teacher outputs per training example (keyed by the dataset's `example_id`), filled lazily on first
    sight and reused in later epochs, so the teacher runs once per example instead of once per epoch.

    Values are stored in `dtype` and every value handed to the loss goes through that dtype, whether it
    was just computed or read back: a resumed run (empty cache) sees exactly the targets of an
    uninterrupted one.
    """

    def __init__(self, dtype: torch.dtype = torch.float16) -> None:
        self.dtype = dtype
        self._store: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._store)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for e in self._store.values() for t in e.values())

    def lookup(self, ids: list[int], mask: torch.Tensor | None, keys: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
        """The batch's teacher outputs, padded like `mask`, when every example is cached; else None.
        `mask=None` (images): every example has all its tokens, none is padded."""
        if not all(i in self._store for i in ids):
            return None
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            first = self._store[ids[0]][key]
            if key == "sentence_embedding" or mask is None:
                out[key] = torch.stack([self._store[i][key] for i in ids]).float()
                continue
            batch, seq = mask.shape
            # token-level tensors are stored trimmed to the example's real length (last dim is hidden)
            lead = first.shape[:-2]
            padded = first.new_zeros(batch, *lead, seq, first.shape[-1])
            for row, i in enumerate(ids):
                t = self._store[i][key]
                padded[row, ..., : t.shape[-2], :] = t
            out[key] = padded.float()
        return out

    def store(self, ids: list[int], mask: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Store each example's outputs (trimmed to its real tokens); return the outputs rounded through
        the storage dtype."""
        lengths = mask.sum(dim=1).tolist()
        rounded = {k: v.to(self.dtype).float() for k, v in outputs.items()}
        for row, (i, n) in enumerate(zip(ids, lengths)):
            if i in self._store:
                continue
            entry = {}
            for key, value in outputs.items():
                v = value[row].to(self.dtype)
                entry[key] = v.clone() if key == "sentence_embedding" else v[..., : int(n), :].clone()
            self._store[i] = entry
        return rounded
