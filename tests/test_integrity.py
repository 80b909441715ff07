"""Integrity: a corrupted or mismatched checkpoint never loads (or uploads) silently.

Each test reproduces a case of issue 19 that loaded silently before (flipped bytes, invalid 2-bit codes, a
missing or renamed packed weight, non-finite scales) and checks the error names the tensor and the file.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel, BertModel

import ternary_hf
from ternary_hf import TernaryConfig
from ternary_hf.checkpoint import METADATA_KEY, inspect_checkpoint

from conftest import tiny_bert_config

LAYER = "encoder.layer.1.output.dense"


@pytest.fixture()
def packed_dir(tiny_bert_dir, tmp_path):
    out = tmp_path / "packed"
    AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig(embedding_dtype="ternary")) \
        .save_pretrained(out)
    return out


def _span(path: Path, name: str) -> tuple[int, int]:
    """Byte range of tensor `name` inside the safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    begin, end = header[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def _poke(path: Path, name: str, offset: int, value: int) -> None:
    begin, _ = _span(path, name)
    data = bytearray(path.read_bytes())
    data[begin + offset] = value
    path.write_bytes(bytes(data))


def _metadata(path: Path) -> dict:
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata())


def _rewrite(path: Path, edit, keep_hashes: bool = True) -> None:
    """Re-save the file with `edit(state)` applied; without `keep_hashes` the content record is dropped
    (a checkpoint written before content hashes existed, or edited by a tool that rewrote the metadata)."""
    meta = _metadata(path)
    state = load_file(path)
    edit(state)
    if not keep_hashes:
        record = json.loads(meta[METADATA_KEY])
        record.pop("integrity", None)
        meta[METADATA_KEY] = json.dumps(record)
    save_file(state, path, metadata=meta)


def _load(path):
    return AutoModel.from_pretrained(path)


# ---------------------------------------------------------------- content hashes


def test_flipped_byte_in_a_packed_weight_is_refused(packed_dir):
    f = packed_dir / "model.safetensors"
    begin, end = _span(f, f"{LAYER}.weight")
    _poke(f, f"{LAYER}.weight", (end - begin) // 2, 0b00_01_10_00)  # valid codes, wrong bytes
    with pytest.raises(ValueError, match=rf"Tensor '{LAYER}.weight' in .*model.safetensors does not match the "
                                         "content hash"):
        _load(packed_dir)


def test_a_whole_layer_overwritten_is_refused(packed_dir):
    f = packed_dir / "model.safetensors"
    other = "encoder.layer.0.output.dense.weight"
    _rewrite(f, lambda s: s.__setitem__(f"{LAYER}.weight", s[other].clone()))
    with pytest.raises(ValueError, match=rf"'{LAYER}.weight' in .* does not match the content hash"):
        _load(packed_dir)


def test_flipped_float_weight_is_refused(packed_dir):
    f = packed_dir / "model.safetensors"
    _poke(f, "embeddings.LayerNorm.weight", 1, 0x7F)
    with pytest.raises(ValueError, match="'embeddings.LayerNorm.weight' .* does not match the content hash"):
        _load(packed_dir)


def test_intact_checkpoint_loads_without_warning(packed_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = _load(packed_dir)
    assert isinstance(model.get_submodule(LAYER), ternary_hf.TernaryLinear)


# ---------------------------------------------------------------- values ternary-hf never writes


@pytest.mark.parametrize("keep_hashes", [True, False])
@pytest.mark.parametrize("tensor", [f"{LAYER}.weight", "embeddings.word_embeddings.weight"])
def test_invalid_two_bit_code_is_refused(packed_dir, keep_hashes, tensor):
    """0b11 = stored 3 = code +2, which every backend decoded as +2 x scale."""
    f = packed_dir / "model.safetensors"
    if keep_hashes:  # a corrupting tool that re-hashed: the code check alone catches it
        from ternary_hf.checkpoint import tensor_digest

        _poke(f, tensor, 0, 0xFF)
        meta = _metadata(f)
        record = json.loads(meta[METADATA_KEY])
        begin, end = _span(f, tensor)
        record["integrity"]["tensors"][tensor] = tensor_digest(f.read_bytes()[begin:end])
        meta[METADATA_KEY] = json.dumps(record)
        save_file(load_file(f), f, metadata=meta)
    else:
        _rewrite(f, lambda s: s[tensor].view(-1).__setitem__(0, 0xFF), keep_hashes=False)
    with pytest.raises(ValueError, match=rf"'{tensor}' in .*model.safetensors holds the 2-bit value 3"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _load(packed_dir)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scale_is_refused(packed_dir, bad):
    f = packed_dir / "model.safetensors"
    _rewrite(f, lambda s: s[f"{LAYER}.weight_scale"].view(-1).__setitem__(3, bad), keep_hashes=False)
    with pytest.raises(ValueError, match=rf"Scale tensor '{LAYER}.weight_scale' in .* holds 1 non-finite"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _load(packed_dir)


# ---------------------------------------------------------------- missing / renamed packed weights


@pytest.mark.parametrize("keep_hashes", [True, False])
def test_missing_packed_weight_names_the_tensor_and_file(packed_dir, keep_hashes):
    """Before: a randomly initialised float layer and transformers' generic MISSING line."""
    f = packed_dir / "model.safetensors"
    _rewrite(f, lambda s: s.pop(f"{LAYER}.weight"), keep_hashes=keep_hashes)
    with pytest.raises(ValueError, match=rf"lacks tensor\(?s?\)? '{LAYER}.weight'.*" if keep_hashes else
                       rf"model.safetensors lacks tensor '{LAYER}.weight' of the packed layer"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _load(packed_dir)


@pytest.mark.parametrize("keep_hashes", [True, False])
def test_renamed_packed_weight_is_refused(packed_dir, keep_hashes):
    f = packed_dir / "model.safetensors"
    _rewrite(f, lambda s: s.__setitem__(f"{LAYER}.packed", s.pop(f"{LAYER}.weight")), keep_hashes=keep_hashes)
    with pytest.raises(ValueError, match=rf"'{LAYER}.weight'"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _load(packed_dir)


def test_added_tensor_is_refused(packed_dir):
    f = packed_dir / "model.safetensors"
    _rewrite(f, lambda s: s.__setitem__("extra.weight", torch.zeros(3)))
    with pytest.raises(ValueError, match="'extra.weight' in .* were not written with this checkpoint"):
        _load(packed_dir)


# ---------------------------------------------------------------- checkpoints without hashes, other layouts


def test_checkpoint_without_hashes_loads_with_one_warning(packed_dir, tmp_path):
    import shutil

    f = packed_dir / "model.safetensors"
    _rewrite(f, lambda s: None, keep_hashes=False)
    with pytest.warns(UserWarning, match="saved by an older ternary-hf without content hashes"):
        model = _load(packed_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per checkpoint and process
        _load(packed_dir)
    # Re-saving records the hashes.
    model.save_pretrained(tmp_path / "resaved")
    assert "integrity" in json.loads(_metadata(tmp_path / "resaved" / "model.safetensors")[METADATA_KEY])
    shutil.rmtree(tmp_path / "resaved")


def test_sharded_checkpoint_verifies_across_shards(tiny_bert_dir, tmp_path):
    model = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig())
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    _load(tmp_path)  # intact: loads
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    shard = tmp_path / index[f"{LAYER}.weight"]
    _poke(shard, f"{LAYER}.weight", 0, 0x00)
    with pytest.raises(ValueError, match=rf"'{LAYER}.weight' in .*{shard.name} does not match"):
        _load(tmp_path)


@pytest.mark.parametrize("original_format", [True, False])
def test_renamed_layouts_verify(tmp_path, original_format):
    """ViT's load-time renaming (attention.query <-> q_proj) is reverted at save: hashes follow the saved names."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=16, patch_size=8)).save_pretrained(tmp_path / "fp")
    model = AutoModel.from_pretrained(tmp_path / "fp", quantization_config=TernaryConfig())
    model.save_pretrained(tmp_path / "packed", save_original_format=original_format)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reloaded = AutoModel.from_pretrained(tmp_path / "packed")
    pixels = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).last_hidden_state, reloaded(pixel_values=pixels).last_hidden_state)
    f = tmp_path / "packed" / "model.safetensors"
    name = next(n for n in load_file(f) if n.endswith("weight") and load_file(f)[n].dtype == torch.uint8)
    _poke(f, name, 0, 0x00)
    with pytest.raises(ValueError, match=rf"'{name}' .* does not match the content hash"):
        AutoModel.from_pretrained(tmp_path / "packed")


# ---------------------------------------------------------------- push validation sees the same corruption


@pytest.mark.parametrize("case", ["flipped", "code3", "nan_scale", "missing"])
def test_push_validation_refuses_corrupt_checkpoints(packed_dir, case, capsys):
    from ternary_hf.checkpoint import CheckpointError
    from ternary_hf import cli

    def push_main(argv):
        return cli.main(["push", *argv])

    f = packed_dir / "model.safetensors"
    if case == "flipped":
        _poke(f, "embeddings.LayerNorm.bias", 0, 0x11)
    elif case == "code3":
        _rewrite(f, lambda s: s[f"{LAYER}.weight"].view(-1).__setitem__(5, 0xC0), keep_hashes=False)
    elif case == "nan_scale":
        _rewrite(f, lambda s: s[f"{LAYER}.weight_scale"].view(-1).__setitem__(0, float("nan")), keep_hashes=False)
    else:
        _rewrite(f, lambda s: s.pop(f"{LAYER}.weight"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match=str(f)):
            inspect_checkpoint(packed_dir)
        assert push_main([str(packed_dir), "me/model", "--dry-run"]) == 1
    assert "ternary-hf push: error:" in capsys.readouterr().err


def test_push_validation_accepts_an_intact_checkpoint(packed_dir):
    info = inspect_checkpoint(packed_dir)
    assert f"{LAYER}" in info.ternary_layers


def test_random_weight_model_roundtrip_is_bit_identical(tmp_path):
    """The hashes are computed on exactly the bytes written: a save/load cycle verifies for every dtype kind."""
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(tmp_path / "fp")
    for kind in ("float", "int8", "int4", "ternary"):
        model = AutoModel.from_pretrained(tmp_path / "fp", quantization_config=TernaryConfig(
            embedding_dtype=kind, embedding_group_size=16), dtype=torch.bfloat16)
        model.save_pretrained(tmp_path / kind)
        reloaded = AutoModel.from_pretrained(tmp_path / kind, dtype=torch.bfloat16)
        assert torch.equal(reloaded.get_submodule(LAYER).weight, model.get_submodule(LAYER).weight)


def test_saving_a_non_finite_scale_is_refused(tiny_bert_dir, tmp_path):
    model = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig())
    model.get_submodule(LAYER).weight_scale[2] = float("nan")
    with pytest.raises(ValueError, match=rf"'{LAYER}.weight_scale' holds 1 non-finite .* nothing was saved"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_truncated_tail_is_refused(packed_dir):
    f = packed_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"Cannot read checkpoint file .*model.safetensors.*truncated or corrupt"):
        _load(packed_dir)


def test_kill_9_mid_save_leaves_the_previous_output(tiny_bert_dir, tmp_path):
    """A process killed (SIGKILL) half-way through writing the weights: the output folder is the previous one."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig()).save_pretrained(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import transformers.modeling_utils as mu
from safetensors.torch import save_file
from transformers import AutoModel
import ternary_hf
from ternary_hf.hub import save_for_push

def killed_half_way(tensors, filename, metadata=None):
    save_file(tensors, filename, metadata=metadata)
    data = open(filename, "rb").read()
    open(filename, "wb").write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

mu.safe_save_file = killed_half_way
model = AutoModel.from_pretrained({tiny_bert_dir!r}, quantization_config=ternary_hf.TernaryConfig(embedding_dtype="int8"))
save_for_push(model, {str(out)!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _load(out)  # still the complete previous model


# ---------------------------------------------------------------- config.json and weights from two saves


def _edit_qconfig(folder: Path, **fields) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"].update(fields)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_config_claiming_int8_tables_over_float_weights_is_refused(tiny_bert_dir, tmp_path):
    """Issue 19: an interrupted in-place quantize left config.json saying int8 over the old float weights; it
    loaded silently and push --dry-run rendered a card claiming int8."""
    AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig()).save_pretrained(tmp_path)
    _edit_qconfig(tmp_path, embedding_dtype="int8")
    with pytest.raises(ValueError, match=r"embedding_dtype='int8' \(weights: 'float'\)"):
        _load(tmp_path)
    with pytest.raises(ValueError, match=r"disagrees with the weights"):
        inspect_checkpoint(tmp_path)


def test_config_mismatch_without_the_storage_record_is_refused(tiny_bert_dir, tmp_path):
    """Folders written by older versions have no storage record: the loader compares the stored tables."""
    AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig()).save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    meta = _metadata(f)
    record = json.loads(meta[METADATA_KEY])
    record.pop("storage")
    record.pop("integrity")
    meta[METADATA_KEY] = json.dumps(record)
    save_file(load_file(f), f, metadata=meta)
    _edit_qconfig(tmp_path, embedding_dtype="int8")
    with pytest.raises(ValueError, match=r"declares embedding_dtype='int8', but table\(s\) .*word_embeddings.* are "
                                         r"stored as F32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _load(tmp_path)


def test_pca_head_weights_are_verified_too(tmp_path, minilm_path):
    """Second probing pass: the sentence-transformers PCA `Dense` head is written by sentence-transformers without
    hashes; compress seals it, and loading / pushing verify it."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from ternary_hf.compress import compress

    from test_compression import CORPUS, TOKENIZER_FILES, _ternary_st

    torch.manual_seed(0)
    fp = tmp_path / "fp"
    BertModel(tiny_bert_config(vocab_size=30522, hidden_size=32)).save_pretrained(fp)
    for name in TOKENIZER_FILES:
        if (Path(minilm_path) / name).is_file():
            shutil.copy(Path(minilm_path) / name, fp / name)
    out = tmp_path / "small"
    compress(_ternary_st(str(fp)), out, output_dim=8, pca_corpus=CORPUS)
    head = next(out.glob("*Dense*/model.safetensors"))
    assert "integrity" in json.loads(_metadata(head)[METADATA_KEY])
    SentenceTransformer(str(out), device="cpu")  # intact: loads
    _poke(head, "linear.weight", 3, 0x55)
    with pytest.raises(ValueError, match=r"'linear.weight' in .*Dense.*model.safetensors does not match"):
        SentenceTransformer(str(out), device="cpu")
    with pytest.raises(ValueError, match="Dense"):
        inspect_checkpoint(out)
