"""Model surgery for transformers models: which Linear layers become `TernaryLinear`, checkpoint
inspection (names, dtypes and shapes read from file headers, no tensor data), and dequantization."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers.quantizers.quantizers_utils import should_convert_module

from .config import TernaryConfig
from .layer import TernaryLinear
from .packing import packed_rows
from .ternarize import check_group_size, scale_shape


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says about one tensor, read from the file header."""

    dtype: str  # safetensors dtype name, e.g. "F32", "U8"
    shape: tuple[int, ...]
    file: str


def read_checkpoint_index(checkpoint_files: list[str] | None) -> dict[str, TensorInfo] | None:
    """Names, dtypes and shapes of every tensor in the checkpoint files, without loading tensor data.
    Returns None when there are no files to inspect (e.g. a `state_dict=` load)."""
    if not checkpoint_files:
        return None
    index: dict[str, TensorInfo] = {}
    for path in checkpoint_files:
        path = os.fspath(path)
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(path, framework="pt") as f:
                    for key in f.keys():
                        sl = f.get_slice(key)
                        index[key] = TensorInfo(sl.get_dtype(), tuple(sl.get_shape()), path)
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise ValueError(
                    f"Cannot read checkpoint file {path}: {e}. The file is corrupt or truncated; "
                    "re-download or re-save the model."
                ) from e
        else:  # legacy pickle checkpoint: mmap so only the headers are touched
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            for key, t in state.items():
                dtype = "U8" if t.dtype == torch.uint8 else "F"
                index[key] = TensorInfo(dtype, tuple(t.shape), path)
    return index


def index_by_module(model: nn.Module, index: dict[str, TensorInfo]) -> dict[str, dict[str, TensorInfo]]:
    """Group checkpoint tensors by the *model's* module name: `{module: {"weight": info, "weight_scale": info}}`.

    Checkpoint keys are mapped to model keys with transformers' own renaming rules (legacy layouts such as
    ViT's `attention.attention.query` -> `attention.q_proj`, and the base-model prefix being present in the
    checkpoint but not the model or the reverse), so the selection matches what the loader will do.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = get_model_conversion_mapping(model, None, None)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    meta_state = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") or ""
    by_module: dict[str, dict[str, TensorInfo]] = {}
    for key, info in index.items():
        for suffix in ("weight", "weight_scale"):
            if key.endswith("." + suffix):
                # Rename through the `.weight` key: that is the name the model's state dict knows.
                ckpt_module = key[: -len(suffix) - 1]
                renamed, _ = rename_source_key(ckpt_module + ".weight", renamings, converters, prefix, meta_state)
                by_module.setdefault(renamed[: -len(".weight")], {})[suffix] = info
    return by_module


def _tied_or_output_modules(model: nn.Module) -> set[str]:
    """Linear modules that share their weight with an embedding (MLM decoders): ternarizing them would
    break the tie, so they stay in full precision."""
    names: set[str] = set()
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for key in list(tied.keys()) + list(tied.values()):
        names.add(key.rsplit(".", 1)[0])
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    if out_emb is not None:
        names.update(n for n, m in model.named_modules() if m is out_emb)
    return names


def select_linear_modules(
    model: nn.Module,
    config: TernaryConfig,
    by_module: dict[str, dict[str, TensorInfo]] | None,
    pre_quantized: bool,
) -> list[str]:
    """Names of the `nn.Linear` modules to replace.

    From a full-precision checkpoint: every Linear whose weight is in the checkpoint (new heads stay
    `nn.Linear` and get initialised normally). From a packed checkpoint: every Linear stored packed (uint8).
    """
    skip = set(config.modules_to_not_convert or [])
    keep_fp = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    never = _tied_or_output_modules(model)
    selected = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or name in never:
            continue
        if not should_convert_module(name, sorted(skip | keep_fp)):
            continue
        if by_module is not None:
            stored = by_module.get(name, {}).get("weight")
            if stored is None:
                continue
            if (stored.dtype == "U8") != pre_quantized:
                continue
        selected.append(name)
    return selected


def replace_linear_modules(model: nn.Module, names: list[str], config: TernaryConfig, dtype: torch.dtype | None) -> None:
    """Swap the named `nn.Linear` modules for empty `TernaryLinear`s (the model is on the meta device)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        if config.granularity == "per_group":
            check_group_size(linear.in_features, config.group_size, name)
        layer = TernaryLinear(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            granularity=config.granularity,
            group_size=config.group_size,
            rule=config.rule,
            mode=config.mode,
            dtype=dtype or linear.weight.dtype,
            device=linear.weight.device,
        )
        setattr(parent, child, layer)


def check_packed_shapes(model: nn.Module, by_module: dict[str, dict[str, TensorInfo]], names: list[str]) -> None:
    """Before any tensor is read: every packed tensor must have the shape the model's config implies."""
    for name in names:
        layer = model.get_submodule(name)
        expected = {
            "weight": (packed_rows(layer.out_features), layer.in_features),
            "weight_scale": scale_shape(layer.out_features, layer.in_features, layer.granularity, layer.group_size),
        }
        for suffix, shape in expected.items():
            info = by_module.get(name, {}).get(suffix)
            if info is None:
                raise ValueError(
                    f"Packed checkpoint is missing tensor '{name}.{suffix}' (expected shape {shape}); "
                    "the checkpoint is incomplete or was not written by ternary-hf."
                )
            if info.shape != tuple(shape):
                raise ValueError(
                    f"Packed checkpoint tensor '{name}.{suffix}' in {info.file} has shape {info.shape}, but the "
                    f"model config implies {tuple(shape)} (in_features={layer.in_features}, "
                    f"out_features={layer.out_features}, granularity={layer.granularity}); the checkpoint and its "
                    "config.json disagree."
                )


def ternary_modules(model: nn.Module) -> list[tuple[str, TernaryLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TernaryLinear)]


def is_ternary_model(model: nn.Module) -> bool:
    """True when the model holds at least one `TernaryLinear`."""
    return any(True for _ in ternary_modules(model))


@torch.no_grad()
def dequantize_modules(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every `TernaryLinear` by an `nn.Linear` holding `codes * scale`: same function, full precision."""
    for name, layer in ternary_modules(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        weight = layer.dequantized_weight(dtype)
        linear = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight)
        if layer.bias is not None:
            linear.bias.copy_(layer.bias.to(weight.dtype))
        setattr(parent, child, linear)
    return model


@torch.no_grad()
def freeze_to_inference(model: nn.Module) -> nn.Module:
    """Turn every QAT `TernaryLinear` into its packed inference form, in place."""
    for _, layer in ternary_modules(model):
        layer.to_inference()
    return model
