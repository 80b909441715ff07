"""Glue between transformers' quantization API and ternary-hf: registration and the `HfQuantizer`.
The math lives in `ternarize.py` / `packing.py`, the model surgery in `integration.py`."""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.quantizers.quantizers_utils import get_module_from_name

from . import __version__
from .config import LOADER_HINT, QUANT_METHOD, TernaryConfig
from .integration import (
    check_packed_shapes,
    dequantize_modules,
    index_by_module,
    read_checkpoint_index,
    replace_linear_modules,
    select_linear_modules,
    ternary_modules,
)
from .layer import TernaryLinear

# safetensors metadata key holding per-layer shapes (used by `footprint` on a bare path).
METADATA_KEY = "ternary_hf"
# An empty tensor saved in every packed checkpoint. Loaded without the plugin, transformers lists it in its
# load report (UNEXPECTED) right above the confusing shape-mismatch lines, so the fix is on screen.
HINT_KEY = "TERNARY_HF_CHECKPOINT.pip_install_ternary-hf.then_import_ternary_hf_before_from_pretrained"


class TernaryQuantize(ConversionOps):
    """Load-time op: a full-precision `*.weight` from the checkpoint becomes packed codes + scale."""

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

    @property
    def quantized_element_size(self) -> float | None:
        return 0.25 if self.quantization_config.mode == "inference" else None

    def _process_model_before_weight_loading(self, model, dtype=None, checkpoint_files=None, **kwargs):
        index = read_checkpoint_index(checkpoint_files)
        by_module = index_by_module(model, index) if index is not None else None
        config = self.quantization_config
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
        replace_linear_modules(model, names, config, dtype)
        ignored = set(model._keys_to_ignore_on_load_unexpected or ())
        model._keys_to_ignore_on_load_unexpected = ignored | {re.escape(HINT_KEY)}
        if self.pre_quantized and by_module is not None:
            check_packed_shapes(model, by_module, names)
        self.converted_modules = names
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        return model

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized or self.quantization_config.mode != "inference":
            return False
        module, tensor_name = get_module_from_name(model, param_name)
        return isinstance(module, TernaryLinear) and tensor_name == "weight"

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
        state[HINT_KEY] = torch.zeros(0, dtype=torch.uint8)
        metadata = {
            METADATA_KEY: json.dumps({"version": __version__, "shapes": shapes}),
            "ternary_hf_loader_hint": LOADER_HINT,
        }
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


def register() -> None:
    """Register the `ternary` quant method with transformers (idempotent: safe on re-import / reload)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not TernaryConfig:
        AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)
        register_quantization_config(QUANT_METHOD)(TernaryConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not TernaryHfQuantizer:
        AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
        register_quantizer(QUANT_METHOD)(TernaryHfQuantizer)
