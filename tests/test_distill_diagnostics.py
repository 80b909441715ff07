"""`benchmarks/distill_diagnostics.py`: the code-change count reads packed checkpoints correctly."""

import importlib.util
import os

import pytest
import torch

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "distill_diagnostics.py")


def _diagnostics():
    spec = importlib.util.spec_from_file_location("distill_diagnostics", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_code_changes_counts_flipped_codes(tiny_bert_dir, tmp_path):
    from transformers import AutoModel

    from ternary_hf import TernaryConfig
    from ternary_hf.layer import TernaryLinear

    diagnostics = _diagnostics()
    model = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig(mode="qat"))
    model.save_pretrained(tmp_path / "a")
    linears = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    layer = linears[0]
    codes, _ = layer.codes_and_scale()
    expected_changed = int((codes[0] != 0).sum())  # negating a row flips exactly its non-zero codes
    with torch.no_grad():
        layer.weight[0].neg_()
    model.save_pretrained(tmp_path / "b")
    total = sum(m.out_features * m.in_features for m in linears)
    zeros = sum(int((m.codes_and_scale()[0] == 0).sum()) for m in linears)

    a, b = diagnostics.packed_codes(str(tmp_path / "a")), diagnostics.packed_codes(str(tmp_path / "b"))
    changed, zero_share = diagnostics.code_changes(a, b)
    assert changed == pytest.approx(expected_changed / total)
    assert zero_share == pytest.approx(zeros / total)
    assert diagnostics.code_changes(a, a)[0] == 0.0


def test_code_changes_rejects_a_directory_without_a_packed_model(tiny_bert_dir, tmp_path):
    diagnostics = _diagnostics()
    with pytest.raises(ValueError, match="no packed ternary weights"):
        diagnostics.packed_codes(tiny_bert_dir)  # the fp32 source: float weights only
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        diagnostics.packed_codes(str(tmp_path))
