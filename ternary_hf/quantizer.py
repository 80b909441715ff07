"""Glue between transformers' quantization API and ternary-hf: registration and the `HfQuantizer`.
The math lives in `ternarize.py` / `packing.py`, the model surgery in `integration.py`."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.quantizers.quantizers_utils import get_module_from_name

from .version import __version__
from .checkpoint import (
    HINT_KEY,
    METADATA_KEY,
    STORAGE_FIELDS,
    check_config_matches_weights,
    integrity_record,
    read_checkpoint_index,
    verify_checkpoint,
    verify_module_weights,
)
from .config import LOADER_HINT, QUANT_METHOD, TernaryConfig
from .integration import (
    check_modules_to_not_convert,
    check_packed_shapes,
    check_recorded_layers,
    check_stored_embeddings,
    dequantize_modules,
    index_by_module,
    replace_embedding_modules,
    replace_linear_modules,
    select_embedding_modules,
    select_linear_modules,
    ternary_modules,
)
from .embedding import QuantizedEmbedding, quantize_rows
from .layer import TernaryLinear
from .vocab import prepare_id_map



class TernaryQuantize(ConversionOps):
    """Load-time op: a full-precision `*.weight` from the checkpoint becomes the module's stored form
    (packed ternary codes + scale for `TernaryLinear`, int8 rows + scale for `Int8Embedding`)."""

    def __init__(self, hf_quantizer: "TernaryHfQuantizer"):
        self.hf_quantizer = hf_quantizer

    @torch.no_grad()
    def convert(self, input_dict: dict[str, Any], model=None, full_layer_name: str | None = None, **kwargs):
        (key, value), = input_dict.items()
        weight = value[0] if isinstance(value, list) else value
        layer, _ = get_module_from_name(model, full_layer_name)
        packed, scale = layer.quantize_weight(weight)
        module_name = full_layer_name.rsplit(".", 1)[0]
        return {full_layer_name: packed, f"{module_name}.weight_scale": scale.to(layer.weight_scale.dtype)}


class TernaryHfQuantizer(HfQuantizer):
    """Ternarizes `nn.Linear` layers on load (from full precision) or loads packed ternary checkpoints."""

    requires_calibration = False
    quantization_config: TernaryConfig

    def __init__(self, quantization_config: TernaryConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.converted_modules: list[str] = []
        self.int8_embeddings: list[str] = []

    @property
    def quantized_element_size(self) -> float | None:
        return 0.25 if self.quantization_config.mode == "inference" else None

    def _process_model_before_weight_loading(self, model, dtype=None, checkpoint_files=None, **kwargs):
        # No files (a `state_dict=` load): convert every Linear not excluded.
        index = read_checkpoint_index(checkpoint_files) if checkpoint_files else None
        if self.pre_quantized and checkpoint_files:
            verify_checkpoint(checkpoint_files)  # hashes, codes, scales: before any tensor is read
        by_module = index_by_module(model, index.tensors) if index is not None else None
        if self.pre_quantized and by_module is not None:
            check_config_matches_weights(self.quantization_config, index, checkpoint_files)
            check_recorded_layers(model, index, by_module, checkpoint_files)
        config = self.quantization_config
        if not self.pre_quantized:  # a packed checkpoint's stored dtypes decide; its entries may name another head
            check_modules_to_not_convert(model, config)
        names = select_linear_modules(model, config, by_module, pre_quantized=self.pre_quantized)
        if not names:
            where = "stored packed in the checkpoint" if self.pre_quantized else "with weights in the checkpoint"
            raise ValueError(
                f"TernaryConfig found no nn.Linear layer to ternarize in {type(model).__name__} ({where}; "
                f"modules_to_not_convert={config.modules_to_not_convert}). Ternary quantization needs a model "
                "with Linear layers, e.g. a BERT/MPNet/XLM-R/ViT encoder."
            )
        if self.pre_quantized and config.mode != "inference":
            config.mode = "inference"  # a packed checkpoint can only be loaded packed
        embeddings = select_embedding_modules(model, config, by_module, pre_quantized=self.pre_quantized)
        if self.pre_quantized and by_module is not None:
            check_stored_embeddings(model, config, by_module, checkpoint_files)
        replace_linear_modules(model, names, config, dtype)
        if config.mode == "inference":  # in QAT the tables stay trainable; they are stored quantized on save
            replace_embedding_modules(model, embeddings, dtype, config)
        prepare_id_map(model)  # a pruned vocabulary's id map loads with its table
        ignored = set(model._keys_to_ignore_on_load_unexpected or ())
        model._keys_to_ignore_on_load_unexpected = ignored | {re.escape(HINT_KEY)}
        if self.pre_quantized and by_module is not None:
            check_packed_shapes(model, by_module, names + embeddings)
        self.converted_modules, self.int8_embeddings = names, embeddings
        self.checkpoint_dir = os.path.dirname(os.fspath(checkpoint_files[0])) if checkpoint_files else None
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        from .hub import enable_push_to_hub

        from .kernels import install_fused_layers
        from .vocab import check_tokenizer_files, install_vocabulary_guard

        # A pruned vocabulary: the tokenizer saved next to the weights must be the pruned one, and ids
        # beyond the pruned table (from another tokenizer) are refused at lookup.
        if getattr(self, "checkpoint_dir", None):
            check_tokenizer_files(self.checkpoint_dir, model.config)
            verify_module_weights(self.checkpoint_dir)  # e.g. a sentence-transformers PCA head next to the weights
        install_vocabulary_guard(model)
        # Packed encoder layers get the fused CPU forward (it steps aside wherever it does not apply).
        install_fused_layers(model)
        # `model.push_to_hub` then validates the packed checkpoint and writes the ternary model card.
        return enable_push_to_hub(model)

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized or self.quantization_config.mode != "inference":
            return False
        module, tensor_name = get_module_from_name(model, param_name)
        return isinstance(module, (TernaryLinear, QuantizedEmbedding)) and tensor_name == "weight"

    def get_quantize_ops(self):
        return TernaryQuantize(self)

    def get_state_dict_and_metadata(self, model):
        """The packed state dict, whatever the layers' mode (QAT latent weights are ternarized and packed)."""
        state = model.state_dict()
        shapes = {}
        for name, layer in ternary_modules(model):
            if not layer.is_packed:
                for suffix, tensor in layer.packed_state().items():
                    state[f"{name}.{suffix}"] = tensor
            shapes[name] = [layer.out_features, layer.in_features]
        config = self.quantization_config
        embeddings = {}
        for name in self.int8_embeddings:
            table = model.get_submodule(name)
            if isinstance(table, torch.nn.Embedding):  # QAT keeps float tables in memory
                rows, scale = quantize_rows(table.weight, config.embedding_dtype, config.embedding_group_size, config.rule)
                state[f"{name}.weight"], state[f"{name}.weight_scale"] = rows, scale.to(table.weight.dtype)
                embeddings[name] = {"dtype": config.embedding_dtype, "shape": list(table.weight.shape),
                                    "group_size": config.embedding_group_size}
        for name, table in model.named_modules():
            if isinstance(table, QuantizedEmbedding):
                embeddings[name] = {"dtype": table.kind, "shape": [table.num_embeddings, table.embedding_dim],
                                    "group_size": table.group_size}
        for entry in embeddings.values():
            if entry["dtype"] != "int4":
                del entry["group_size"]
        check_finite_scales(state, [*shapes, *embeddings])
        state[HINT_KEY] = torch.zeros(0, dtype=torch.uint8)
        record = {"version": __version__, "shapes": shapes, "embeddings": embeddings,
                  "storage": {key: getattr(config, key) for key in STORAGE_FIELDS}}
        if not getattr(model, "_hf_peft_config_loaded", False):  # with adapters only their weights are saved
            codes = [f"{name}.weight" for name in shapes]
            codes += [f"{name}.weight" for name, entry in embeddings.items() if entry["dtype"] == "ternary"]
            integrity = integrity_record(*_as_saved(model, state, codes))
            if integrity is not None:
                record["integrity"] = integrity
        metadata = {METADATA_KEY: json.dumps(record), "ternary_hf_loader_hint": LOADER_HINT}
        return state, metadata

    def _dequantize(self, model, dtype=None):
        return dequantize_modules(model, dtype)

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        # Inference-mode layers are frozen buffers; adapters (PEFT) train on top of them.
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return self.quantization_config.mode == "qat"


def check_finite_scales(state: dict[str, torch.Tensor], modules: list[str]) -> None:
    """Refuse to save a layer or table whose scale holds NaN / inf (a diverged run): the checkpoint would not load,
    and the backends disagree on such a layer (the fast path hides what the reference returns as NaN)."""
    for name in modules:
        scale = state.get(f"{name}.weight_scale")
        if scale is not None and scale.device.type != "meta" and not bool(torch.isfinite(scale).all()):
            raise ValueError(
                f"'{name}.weight_scale' holds {int((~torch.isfinite(scale)).sum())} non-finite value(s) (NaN or inf), "
                "e.g. from a diverged training run; nothing was saved. Resume from an earlier checkpoint or lower the "
                "learning rate."
            )


def _as_saved(model, state: dict[str, torch.Tensor], codes: list[str]):
    """`(tensors by saved name, saved names of `codes`, {state name: saved name} where they differ)`: what
    `save_pretrained` writes after dropping ignored and tied keys and reverting load-time renamings (e.g. ViT's
    `q_proj` back to `attention.query`), so the content hashes are recorded under the names in the file."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    kept = {k: v for k, v in state.items() if k not in set(model._keys_to_ignore_on_save or ())}
    saved = revert_weight_conversion(model, remove_tied_weights_from_state_dict(kept, model))
    saved_name = {id(t): name for name, t in saved.items()}
    aliases = {k: saved_name[id(t)] for k, t in kept.items() if saved_name.get(id(t), k) != k}
    return saved, [aliases.get(name, name) for name in codes if name in kept], aliases


def register() -> None:
    """Register the `ternary` quant method with transformers (idempotent: safe on re-import / reload)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not TernaryConfig:
        AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)
        register_quantization_config(QUANT_METHOD)(TernaryConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not TernaryHfQuantizer:
        AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
        register_quantizer(QUANT_METHOD)(TernaryHfQuantizer)
