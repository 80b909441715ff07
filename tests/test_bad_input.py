"""Bad input gets a clear error naming the problem."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from ternary_hf import TernaryConfig


@pytest.fixture()
def packed_dir(tiny_bert_dir, tmp_path):
    AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig()).save_pretrained(tmp_path)
    return tmp_path


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_packed_shapes_disagreeing_with_config(packed_dir):
    _edit_config(packed_dir, lambda c: c.update(intermediate_size=70))
    with pytest.raises(ValueError, match=r"Packed checkpoint tensor '.*' in .*model.safetensors has shape "
                                         r"\(\d+, ?\d*\), but the model config implies \(\d+, ?\d*\)"):
        AutoModel.from_pretrained(packed_dir)


def test_packed_checkpoint_missing_a_tensor(packed_dir):
    f = packed_dir / "model.safetensors"
    state = load_file(f)
    del state["encoder.layer.1.output.dense.weight_scale"]
    save_file(state, f, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing tensor 'encoder.layer.1.output.dense.weight_scale'"):
        AutoModel.from_pretrained(packed_dir)


def test_unknown_field_in_saved_quantization_config(packed_dir):
    _edit_config(packed_dir, lambda c: c["quantization_config"].update(bits=3, foo=1))
    with pytest.raises(ValueError, match="Unknown TernaryConfig field\\(s\\) in quantization_config: bits, foo"):
        AutoModel.from_pretrained(packed_dir)


def test_invalid_value_in_saved_quantization_config(packed_dir):
    _edit_config(packed_dir, lambda c: c["quantization_config"].update(rule="sign"))
    with pytest.raises(ValueError, match="TernaryConfig.rule='sign' is invalid"):
        AutoModel.from_pretrained(packed_dir)


def test_truncated_checkpoint_names_the_file(packed_dir):
    f = packed_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"Cannot read checkpoint file .*model.safetensors.*corrupt or truncated"):
        AutoModel.from_pretrained(packed_dir)


def test_model_without_convertible_linear_layers(tiny_bert_dir):
    cfg = TernaryConfig(modules_to_not_convert=["encoder", "pooler"])
    with pytest.raises(ValueError, match="found no nn.Linear layer to ternarize in BertModel"):
        AutoModel.from_pretrained(tiny_bert_dir, quantization_config=cfg)


def test_group_size_not_dividing_names_the_layer(tiny_bert_dir):
    with pytest.raises(ValueError, match="Layer 'encoder.layer.0.output.dense': in_features=66 is not divisible"):
        AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig(granularity="per_group",
                                                                                   group_size=16))


@pytest.mark.parametrize("ignore_mismatched", [False, True])
def test_loading_without_the_plugin_shows_the_fix(packed_dir, ignore_mismatched):
    """transformers skips unknown quant methods; the checkpoint's hint key shows up in its load report."""
    code = (
        "import os; os.environ['HF_HUB_OFFLINE']='1'\n"
        "from transformers import AutoModel\n"
        f"AutoModel.from_pretrained({str(packed_dir)!r}, ignore_mismatched_sizes={ignore_mismatched})\n"
    )
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "warning"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    out = proc.stdout + proc.stderr
    assert "Unknown quantization type, got ternary" in out
    assert "pip_install_ternary-hf.then_import_ternary_hf_before_from_pretrained" in out
    assert (proc.returncode != 0) == (not ignore_mismatched)
    config = json.loads((packed_dir / "config.json").read_text())
    assert "import ternary_hf" in config["quantization_config"]["loader_hint"]
