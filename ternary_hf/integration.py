"""Model surgery for transformers models: which Linear layers become `TernaryLinear` (matched against
the checkpoint's headers through transformers' own key renaming), packed-shape checks, dequantization."""

from __future__ import annotations

import logging
import os
import re

import torch
from torch import nn
from transformers.quantizers.quantizers_utils import should_convert_module

from .config import TernaryConfig
from .layer import TernaryLinear
from .checkpoint import CheckpointIndex, TensorInfo
from .embedding import STORED_CODE_DTYPE, QuantizedEmbedding, check_embedding_layout, make_embedding
from .ternarize import check_group_size
from .vocab import carry_id_map

logger = logging.getLogger(__name__)


def checkpoint_to_model_names(model: nn.Module):
    """A function mapping a checkpoint module name to the *model's* module name, with transformers' own renaming
    rules (legacy layouts such as ViT's `attention.attention.query` -> `attention.q_proj`, and the base-model
    prefix being present in the checkpoint but not the model or the reverse)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = get_model_conversion_mapping(model, None, None)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    meta_state = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") or ""

    def rename(ckpt_module: str) -> str:
        # Rename through the `.weight` key: that is the name the model's state dict knows.
        renamed, _ = rename_source_key(ckpt_module + ".weight", renamings, converters, prefix, meta_state)
        return renamed[: -len(".weight")]

    return rename


def index_by_module(model: nn.Module, index: dict[str, TensorInfo], rename=None) -> dict[str, dict[str, TensorInfo]]:
    """Group checkpoint tensors by the *model's* module name: `{module: {"weight": info, "weight_scale": info}}`,
    so the selection matches what the loader will do (see `checkpoint_to_model_names`)."""
    rename = rename or checkpoint_to_model_names(model)
    by_module: dict[str, dict[str, TensorInfo]] = {}
    for key, info in index.items():
        for suffix in ("weight", "weight_scale"):
            if key.endswith("." + suffix):
                by_module.setdefault(rename(key[: -len(suffix) - 1]), {})[suffix] = info
    return by_module


def _tied_or_output_modules(model: nn.Module) -> set[str]:
    """Modules whose weight is shared (an MLM decoder and the word embeddings it is tied to): quantizing
    one side would break the tie, so both stay in full precision."""
    names: set[str] = set()
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for key in list(tied.keys()) + list(tied.values()):
        names.add(key.rsplit(".", 1)[0])
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    if out_emb is not None:
        names.update(n for n, m in model.named_modules() if m is out_emb)
    return names


def _select(model, config, by_module, pre_quantized, module_type, stored_dtype) -> list[str]:
    skip = sorted(set(config.modules_to_not_convert or []) | set(getattr(model, "_keep_in_fp32_modules", None) or []))
    never = _tied_or_output_modules(model)
    selected = []
    for name, module in model.named_modules():
        if type(module) is not module_type or not should_convert_module(name, skip):
            continue
        if name in never:
            if module_type is nn.Embedding and config.embedding_dtype != "float" and not pre_quantized:
                logger.warning(
                    "TernaryConfig(embedding_dtype=%r): embedding table '%s' is tied to the output layer (MLM decoder) "
                    "and stays in full precision; quantizing it would untie the head. Load the encoder alone "
                    "(AutoModel) to quantize it.", config.embedding_dtype, name)
            continue
        if by_module is not None:
            stored = by_module.get(name, {}).get("weight")
            if stored is None or (stored.dtype == stored_dtype) != pre_quantized:
                continue
        selected.append(name)
    return selected


def check_modules_to_not_convert(model: nn.Module, config: TernaryConfig) -> None:
    """Every `modules_to_not_convert` entry must match a module (with transformers' matching rules): a typo would
    otherwise ternarize the layer the user meant to keep. Raises naming the entry and the closest module names."""
    import difflib

    names = [name for name, _ in model.named_modules() if name]
    for entry in config.modules_to_not_convert or []:
        try:
            matched = any(not should_convert_module(name, [entry]) for name in names)
        except re.error as exc:
            raise ValueError(f"TernaryConfig.modules_to_not_convert entry {entry!r} is not a valid pattern ({exc}).") \
                from None
        if not matched:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names} | set(names))
            close = difflib.get_close_matches(entry, leaves, n=4, cutoff=0.5)
            hint = f" Close module names: {', '.join(close)}." if close else ""
            raise ValueError(
                f"TernaryConfig.modules_to_not_convert entry {entry!r} matches no module of {type(model).__name__}, so "
                f"it would keep nothing in full precision.{hint} Entries match a module name from its start "
                "('encoder.layer.0'), as a regex ('encoder.layer.*.output.dense') or as a suffix ('pooler.dense')."
            )


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
    return _select(model, config, by_module, pre_quantized, nn.Linear, "U8")


def stored_embedding_dtype(config: TernaryConfig) -> str:
    """The embedding format of a packed checkpoint: what its config declares (a legacy config without
    `embedding_dtype` but with int8 tables is read as int8, since int8 was the only format then)."""
    return config.embedding_dtype if config.embedding_dtype != "float" else "int8"


def select_embedding_modules(
    model: nn.Module,
    config: TernaryConfig,
    by_module: dict[str, dict[str, TensorInfo]] | None,
    pre_quantized: bool,
) -> list[str]:
    """Names of the `nn.Embedding` modules stored quantized: from a full-precision checkpoint every table (bar
    tied / excluded ones) when `embedding_dtype` is not float, from a packed checkpoint every table stored with
    the code dtype of the config's `embedding_dtype`."""
    if not pre_quantized and config.embedding_dtype == "float":
        return []
    kind = stored_embedding_dtype(config) if pre_quantized else config.embedding_dtype
    names = _select(model, config, by_module, pre_quantized, nn.Embedding, STORED_CODE_DTYPE[kind])
    for name in names:
        check_embedding_layout(kind, model.get_submodule(name).embedding_dim, config.embedding_group_size, name)
    return names


def check_stored_embeddings(model: nn.Module, config: TernaryConfig, by_module: dict[str, dict[str, TensorInfo]],
                            files) -> None:
    """A packed checkpoint whose config declares quantized tables must store them so: every table that saving
    would have quantized but is stored in another format means config.json and the weights come from two saves."""
    if config.embedding_dtype == "float":
        return
    kind = config.embedding_dtype
    other = _select(model, config, by_module, False, nn.Embedding, STORED_CODE_DTYPE[kind])
    if other:
        stored = by_module[other[0]]["weight"].dtype
        raise ValueError(
            f"config.json declares embedding_dtype={kind!r}, but table(s) {', '.join(other)} in "
            f"{', '.join(os.fspath(f) for f in files)} are stored as {stored}: the config and the weights come from "
            "two different saves (e.g. an interrupted in-place `ternary-hf quantize` of an older version). Restore "
            "the matching config.json, or quantize again from the source model."
        )


def replace_embedding_modules(model: nn.Module, names: list[str], dtype: torch.dtype | None,
                              config: TernaryConfig | None = None, kind: str | None = None) -> None:
    """Swap the named `nn.Embedding` modules for empty `QuantizedEmbedding`s (the model is on the meta device)."""
    config = config or TernaryConfig(embedding_dtype="int8")
    kind = kind or stored_embedding_dtype(config)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        emb = getattr(parent, child)
        setattr(parent, child, make_embedding(kind, emb.num_embeddings, emb.embedding_dim, emb.padding_idx,
                                              group_size=config.embedding_group_size, rule=config.rule,
                                              dtype=dtype or emb.weight.dtype, device=emb.weight.device))


@torch.no_grad()
def quantize_embeddings(model: nn.Module, kind: str, group_size: int = 64) -> list[str]:
    """Quantize the float embedding tables of a *loaded* ternary model in place (post-training, e.g. on top of
    a distilled checkpoint) and record the format in its `TernaryConfig`, so `save_pretrained` stores them
    packed and `from_pretrained` reloads them. Returns the names of the quantized tables."""
    qconfig = getattr(getattr(model, "config", None), "quantization_config", None)
    if not isinstance(qconfig, TernaryConfig):
        raise ValueError(
            f"quantize_embeddings needs a ternary model (config.quantization_config is {type(qconfig).__name__}); "
            "load it with from_pretrained(..., quantization_config=TernaryConfig(...)) or from a packed checkpoint."
        )
    done = [n for n, m in model.named_modules() if isinstance(m, QuantizedEmbedding)]
    if done and qconfig.embedding_dtype not in ("float", kind):
        raise ValueError(
            f"The embedding tables {done} are already stored as {qconfig.embedding_dtype}; re-quantizing them as "
            f"{kind} would compound the errors. Start from the checkpoint with float tables."
        )
    trial = TernaryConfig(**{**{k: v for k, v in qconfig.to_dict().items() if k != "loader_hint"},
                             "embedding_dtype": kind, "embedding_group_size": group_size})
    names = _select(model, trial, None, False, nn.Embedding, STORED_CODE_DTYPE[kind])
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        emb = getattr(parent, child)
        check_embedding_layout(kind, emb.embedding_dim, group_size, name)
        table = QuantizedEmbedding.from_embedding(emb, kind, group_size, qconfig.rule)
        carry_id_map(emb, table)
        setattr(parent, child, table)
    qconfig.embedding_dtype, qconfig.embedding_group_size = kind, group_size
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.quantization_config = qconfig
    return names + done


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
            activation_quant=config.activation_quant,
            activation_outliers=config.activation_outliers,
            backend=config.backend,
            dtype=dtype or linear.weight.dtype,
            device=linear.weight.device,
        )
        setattr(parent, child, layer)


def check_packed_shapes(model: nn.Module, by_module: dict[str, dict[str, TensorInfo]], names: list[str]) -> None:
    """Before any tensor is read: every stored tensor must have the shape the model's config implies."""
    for name in names:
        layer = model.get_submodule(name)
        for suffix, shape in layer.stored_shapes().items():
            info = by_module.get(name, {}).get(suffix)
            if info is None:
                raise ValueError(
                    f"Packed checkpoint is missing tensor '{name}.{suffix}' (expected shape {shape}); "
                    "the checkpoint is incomplete or was not written by ternary-hf."
                )
            if info.shape != tuple(shape):
                raise ValueError(
                    f"Packed checkpoint tensor '{name}.{suffix}' in {info.file} has shape {info.shape}, but the "
                    f"model config implies {tuple(shape)} ({layer.extra_repr()}); the checkpoint and its "
                    "config.json disagree."
                )


def check_recorded_layers(model: nn.Module, index: CheckpointIndex, by_module: dict[str, dict[str, TensorInfo]],
                          files) -> None:
    """Every layer and table the checkpoint's metadata says it stores packed must have its tensors: a packed
    weight that is missing (or renamed) would otherwise leave a randomly initialised float layer."""
    rename = checkpoint_to_model_names(model)
    for name in [*index.layer_shapes, *index.embedding_tables]:
        for suffix in ("weight", "weight_scale"):
            if suffix not in by_module.get(rename(name), {}):
                raise ValueError(
                    f"Packed checkpoint {', '.join(os.fspath(f) for f in files)} lacks tensor '{name}.{suffix}' of "
                    f"the packed layer '{name}' its metadata lists: the file was edited (a tensor renamed or "
                    "deleted) or is incomplete. Re-download the model or save it again."
                )


def ternary_modules(model: nn.Module) -> list[tuple[str, TernaryLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TernaryLinear)]


def is_ternary_model(model: nn.Module) -> bool:
    """True when the model holds at least one `TernaryLinear`."""
    return any(True for _ in ternary_modules(model))


@torch.no_grad()
def dequantize_modules(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every `TernaryLinear` by an `nn.Linear` holding `codes * scale` (and every `QuantizedEmbedding`
    by an `nn.Embedding`): the same function, in full precision."""
    for name, emb in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedEmbedding)]:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        weight = emb.dequantized_weight(dtype)
        new = nn.Embedding(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, device=weight.device,
                           dtype=weight.dtype)
        new.weight.copy_(weight)
        carry_id_map(emb, new)
        setattr(parent, child, new)
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
