"""LoRA adapters on TernaryLinear via peft's custom-module API: placement, training, save/reload, merging."""

from __future__ import annotations

import pytest
import torch

import ternary_hf
from ternary_hf import TernaryLinear
from ternary_hf.peft_integration import (
    TernaryLoraLinear,
    load_ternary_adapter,
    merge_and_reternarize,
    ternary_lora_config,
)
from ternary_hf.training import TernaryDistillationTrainer

from distill_helpers import TEXTS, training_args, write_tiny_checkpoint

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny_peft")))


def _ternary(path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, quantization_config=ternary_hf.TernaryConfig())


def _encode(model, tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    batch = tok(TEXTS[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state


def test_lora_wraps_ternary_layers_and_trains_only_adapters(tiny_dir, tmp_path):
    model = _ternary(tiny_dir)
    packed_before = {n: b.clone() for n, b in model.named_buffers() if b.dtype == torch.uint8}
    peft_model = peft.get_peft_model(model, ternary_lora_config(r=4, lora_alpha=8, target_modules=["query", "value"]))
    wrapped = [n for n, m in peft_model.named_modules() if isinstance(m, TernaryLoraLinear)]
    assert len(wrapped) == 4 and all(n.endswith(("query", "value")) for n in wrapped)
    assert all(isinstance(m.get_base_layer(), TernaryLinear) for m in peft_model.modules()
               if isinstance(m, TernaryLoraLinear))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # LoRA starts as the identity: same outputs as the ternary base
    torch.testing.assert_close(_encode(peft_model, tiny_dir), _encode(_ternary(tiny_dir), tiny_dir))

    trainer = TernaryDistillationTrainer(model=peft_model, args=training_args(str(tmp_path / "o"), max_steps=3),
                                         train_dataset=TEXTS)
    # step 0 gradients: B gets gradient, A none (B starts at zero)
    batch = next(iter(trainer.get_train_dataloader()))
    peft_model.train()
    trainer.compute_loss(peft_model, batch).backward()
    layer = peft_model.get_submodule(wrapped[0])
    assert layer.lora_B["default"].weight.grad.abs().sum() > 0
    assert layer.lora_A["default"].weight.grad.abs().sum() == 0
    peft_model.zero_grad()

    a_before = layer.lora_A["default"].weight.detach().clone()
    trainer.train()
    assert not torch.equal(layer.lora_A["default"].weight, a_before)
    for name, buf in peft_model.named_buffers():
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        if key in packed_before:
            assert torch.equal(buf, packed_before[key]), name  # the ternary base never changes


def test_adapters_save_reload_and_merge(tiny_dir, tmp_path):
    peft_model = peft.get_peft_model(_ternary(tiny_dir), ternary_lora_config(r=4, target_modules=["query", "value"]))
    with torch.no_grad():
        for m in peft_model.modules():
            if isinstance(m, TernaryLoraLinear):
                m.lora_B["default"].weight.normal_(0, 0.5)  # a trained-looking adapter
    expected = _encode(peft_model, tiny_dir)
    peft_model.save_pretrained(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files

    reloaded = load_ternary_adapter(_ternary(tiny_dir), str(tmp_path / "adapter"))
    assert any(isinstance(m, TernaryLoraLinear) for m in reloaded.modules())
    torch.testing.assert_close(_encode(reloaded, tiny_dir), expected)

    with pytest.raises(ValueError, match="re-ternarize.*merge_and_reternarize"):
        reloaded.merge_and_unload()

    merged, error = merge_and_reternarize(load_ternary_adapter(_ternary(tiny_dir), str(tmp_path / "adapter")))
    assert not any(isinstance(m, TernaryLoraLinear) for m in merged.modules())
    layer = merged.get_submodule("encoder.layer.0.attention.self.query")
    assert isinstance(layer, TernaryLinear) and layer.is_packed
    assert error > 0  # re-ternarization is lossy, and says how much
    merged.save_pretrained(tmp_path / "merged")
    from transformers import AutoModel

    assert ternary_hf.is_ternary_model(AutoModel.from_pretrained(tmp_path / "merged"))


def test_lora_rejects_dora(tiny_dir):
    with pytest.raises(ValueError, match="DoRA"):
        peft.get_peft_model(_ternary(tiny_dir), ternary_lora_config(r=4, use_dora=True, target_modules=["query"]))
