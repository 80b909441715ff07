"""LoRA adapters on `TernaryLinear` layers (peft >= 0.21).

The ternary base stays frozen (packed codes in inference mode); only the low-rank adapters train:

    from peft import get_peft_model
    from ternary_hf.peft_integration import ternary_lora_config, load_ternary_adapter

    model = AutoModel.from_pretrained(packed_dir)                 # ternary, inference mode
    peft_model = get_peft_model(model, ternary_lora_config(r=8, target_modules=["query", "value"]))
    ...train with transformers.Trainer or TernaryDistillationTrainer...
    peft_model.save_pretrained("adapter")                           # adapter weights only
    reloaded = load_ternary_adapter(AutoModel.from_pretrained(packed_dir), "adapter")

Merging: `merge_and_unload()` refuses. Folding `B @ A` into a ternary weight means re-ternarizing
`W + scaling * B @ A`, and most of an adapter's update is far below the ternary threshold, so the
merge would silently discard it. `merge_and_reternarize(peft_model)` does it anyway, explicitly, and
returns the merge error relative to the adapter's update, so you can judge.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layer import TernaryLinear

_MERGE_REFUSAL = (
    "Merging a LoRA adapter into a TernaryLinear would re-ternarize W + scaling * B @ A; most of the adapter's "
    "update is below the ternary threshold and would be silently lost. Keep the adapter separate "
    "(peft_model.save_pretrained / ternary_hf.peft_integration.load_ternary_adapter), drop it with unload(), or "
    "re-ternarize explicitly with ternary_hf.peft_integration.merge_and_reternarize(peft_model)."
)


try:
    from peft import LoraConfig, PeftModel
    from peft.tuners.lora.layer import LoraLayer
except ImportError as exc:  # pragma: no cover - exercised only without the [train] extra
    raise ImportError("ternary_hf.peft_integration needs peft: pip install 'ternary-hf[train]'") from exc


class TernaryLoraLinear(nn.Module, LoraLayer):
    """A LoRA adapter around a frozen `TernaryLinear` (built like peft's EETQ/AQLM LoRA layers)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int = 0,
                 lora_alpha: int = 1, **kwargs: Any) -> None:
        if config.use_dora:
            raise ValueError("TernaryLoraLinear does not support DoRA (use_dora=True): its magnitude vector "
                             "needs the dense weight norm every step; set use_dora=False.")
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features  # peft's generic lookup warns on unknown layer types

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for active_adapter in self.active_adapters:
            if active_adapter not in self.lora_A.keys():
                continue
            lora_A = self.lora_A[active_adapter]
            lora_B = self.lora_B[active_adapter]
            dropout = self.lora_dropout[active_adapter]
            scaling = self.scaling[active_adapter]
            x_cast = self._cast_input_dtype(x, lora_A.weight.dtype)
            result = result + (lora_B(lora_A(dropout(x_cast))) * scaling).to(result.dtype)
        return result

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """`scaling * B @ A`, the adapter's dense weight update `[out, in]`."""
        return (self.lora_B[adapter].weight @ self.lora_A[adapter].weight) * self.scaling[adapter]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(_MERGE_REFUSAL)

    def unmerge(self) -> None:
        raise ValueError("TernaryLoraLinear adapters are never merged, so there is nothing to unmerge.")

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def register_ternary_lora(config: LoraConfig) -> LoraConfig:
    """Register `TernaryLinear -> TernaryLoraLinear` on a `LoraConfig` (peft's custom-module API); returns it."""
    config._register_custom_module({TernaryLinear: TernaryLoraLinear})
    return config


def ternary_lora_config(**kwargs: Any) -> LoraConfig:
    """`peft.LoraConfig(**kwargs)` that puts `TernaryLoraLinear` adapters on `TernaryLinear` layers."""
    return register_ternary_lora(LoraConfig(**kwargs))


def load_ternary_adapter(model: nn.Module, adapter_path: str, adapter_name: str = "default",
                         is_trainable: bool = False, **kwargs: Any) -> "PeftModel":
    """Load a saved adapter onto a ternary model. (peft does not serialize the custom-module mapping, so a
    plain `PeftModel.from_pretrained` would not know how to wrap `TernaryLinear`.)"""
    config = register_ternary_lora(LoraConfig.from_pretrained(adapter_path))
    return PeftModel.from_pretrained(model, adapter_path, adapter_name=adapter_name, is_trainable=is_trainable,
                                     config=config, **kwargs)


@torch.no_grad()
def merge_and_reternarize(peft_model: "PeftModel", adapter_name: str | None = None) -> tuple[nn.Module, float]:
    """Fold each LoRA adapter into its ternary layer by re-ternarizing `W + scaling * B @ A` (same rule and
    granularity); return `(base_model, merge_error)`.

    `merge_error` is `||T(W + dW) - (W + dW)|| / ||dW||` averaged over the adapted layers: 0 means the merged
    ternary layer computes exactly what base + adapter computed; about 1 means the adapter's update was lost
    (T(W + dW) == W); above 1, re-ternarization added more error than the adapter contributed. The returned
    model is a plain ternary model (inference mode) without peft wrappers; `peft_model` is consumed.
    """
    adapter_name = adapter_name or peft_model.active_adapter
    errors = []
    base = peft_model.get_base_model()
    for name, module in list(base.named_modules()):
        if not isinstance(module, TernaryLoraLinear) or adapter_name not in module.lora_A:
            continue
        layer: TernaryLinear = module.get_base_layer()
        w = layer.dequantized_weight(torch.float32)
        delta = module.get_delta_weight(adapter_name).float()
        merged = TernaryLinear(layer.in_features, layer.out_features, layer.bias is not None,
                               granularity=layer.granularity, group_size=layer.group_size, rule=layer.rule,
                               mode="inference", dtype=layer.weight_scale.dtype if layer.is_packed else layer.weight.dtype,
                               device=w.device)
        merged.load_float_weight(w + delta)
        if layer.bias is not None:
            merged.bias.copy_(layer.bias)
        err = (merged.dequantized_weight(torch.float32) - (w + delta)).norm() / delta.norm().clamp(min=1e-12)
        errors.append(float(err))
        parent_name, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent_name) if parent_name else base, child, merged)
    if not errors:
        raise ValueError(f"no TernaryLoraLinear adapter named {adapter_name!r} found in the model.")
    return base, sum(errors) / len(errors)
