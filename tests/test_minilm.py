"""The bundled real model (all-MiniLM-L6-v2): quantize on load, packed round trip, sentence-transformers, CLI."""

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

import ternary_hf
from ternary_hf import TernaryConfig, TernaryLinear
from ternary_hf.evaluation.fidelity import embedding_fidelity


@pytest.fixture(scope="module")
def st_pair(minilm_path):
    fp = SentenceTransformer(minilm_path, device="cpu")
    q = SentenceTransformer(minilm_path, device="cpu", model_kwargs={"quantization_config": TernaryConfig()})
    return fp, q


def test_every_linear_is_ternary_and_packed_round_trip(minilm_path, tmp_path):
    q = AutoModel.from_pretrained(minilm_path, quantization_config=TernaryConfig())
    layers = [m for m in q.modules() if isinstance(m, TernaryLinear)]
    assert len(layers) == 6 * 6 + 1  # q, k, v, attn-out, ffn-in, ffn-out per layer + pooler
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    q.save_pretrained(tmp_path)
    q2 = AutoModel.from_pretrained(tmp_path)
    x = torch.tensor([[101, 2023, 2003, 1037, 3231, 6251, 1012, 102]])
    assert torch.equal(q(x).last_hidden_state, q2(x).last_hidden_state)
    fp = ternary_hf.footprint(minilm_path)
    size = ternary_hf.footprint(tmp_path)
    assert size.packed_weights == sum(-(-m.out_features // 4) * m.in_features for m in layers)
    assert size.fp32_bytes == pytest.approx(fp.total, rel=1e-3)
    # 2-bit linears + fp32 embeddings: the 46.9 MB embedding table dominates MiniLM
    assert 0.5 < size.ratio < 0.6
    assert size.file_bytes < 0.6 * fp.file_bytes


def test_sentence_transformer_round_trip(st_pair, tmp_path, sentences):
    fp, q = st_pair
    assert isinstance(q[0].auto_model.encoder.layer[0].attention.self.query, TernaryLinear)
    emb = q.encode(sentences, convert_to_tensor=True)
    q.save(str(tmp_path))
    reloaded = SentenceTransformer(str(tmp_path), device="cpu")
    assert isinstance(reloaded[0].auto_model.encoder.layer[5].output.dense, TernaryLinear)
    assert torch.equal(reloaded.encode(sentences, convert_to_tensor=True), emb)


def test_post_training_ternarization_stays_close_to_fp32(st_pair, sentences):
    """PTQ without distillation keeps the embedding geometry recognisable (far from random)."""
    fp, q = st_pair
    report = embedding_fidelity(q.encode(sentences, convert_to_tensor=True), fp.encode(sentences, convert_to_tensor=True))
    assert report.mean_cosine > 0.35
    shuffled = embedding_fidelity(q.encode(sentences[::-1], convert_to_tensor=True),
                                  fp.encode(sentences, convert_to_tensor=True))
    assert shuffled.mean_cosine < report.mean_cosine - 0.2


def test_quantize_cli_main_job(tmp_path, capsys):
    from ternary_hf.cli import main

    out = tmp_path / "minilm-ternary"
    assert main(["quantize", "--output-dir", str(out), "--n-texts", "48"]) == 0
    printed = capsys.readouterr().out
    assert "ratio to fp32" in printed and "mean cosine" in printed
    report = json.loads((out / "ternary_report.json").read_text())
    assert report["fidelity"]["n_texts"] == 48 and 0.1 < report["footprint"]["ratio"] < 0.25  # int8 tables
    assert report["config"]["embedding_dtype"] == "int8"
    st = SentenceTransformer(str(out), device="cpu")
    assert isinstance(st[0].auto_model.pooler.dense, TernaryLinear)


def test_cli_rejects_unknown_arguments():
    from ternary_hf.cli import main

    with pytest.raises(SystemExit):
        main(["quantize", "--no-such-flag"])


def test_quantize_cli_calibrated_codes_are_closer_to_fp32(tmp_path, capsys):
    """`--calibrate` (GPTQ for ternary on bundled texts) against plain rounding, same model and sentences."""
    from ternary_hf.cli import main

    fidelity = {}
    for name, extra in (("plain", []), ("calibrated", ["--calibrate", "96"])):
        out = tmp_path / name
        assert main(["quantize", "--output-dir", str(out), "--n-texts", "96", *extra]) == 0
        fidelity[name] = json.loads((out / "ternary_report.json").read_text())["fidelity"]["mean_cosine"]
    assert "Calibrated the codes of 36 layers on 96 texts" in capsys.readouterr().out
    assert fidelity["calibrated"] > fidelity["plain"] + 0.05, fidelity
