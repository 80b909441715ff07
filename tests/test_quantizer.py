"""Quantize-on-load, packed save/reload, dequantize and QAT on tiny random models."""

import json
import os

import pytest
import torch
from torch import nn
from transformers import (AutoModel, AutoModelForSequenceClassification, BertForMaskedLM, MPNetConfig,
                          MPNetModel, ViTConfig, ViTModel, XLMRobertaConfig, XLMRobertaModel)

import ternary_hf
from ternary_hf import TernaryConfig, TernaryLinear
from ternary_hf.ternarize import dequantize, ternarize

from conftest import tiny_bert_config


def _linear_names(model):
    return {n for n, m in model.named_modules() if type(m) is nn.Linear}


def _ids(vocab=120, shape=(2, 9)):
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(0))


def test_quantize_on_load_replaces_every_linear_with_exact_ternary_weights(tiny_bert_dir):
    fp = AutoModel.from_pretrained(tiny_bert_dir)
    q = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig())
    fp_linears = _linear_names(fp)
    assert fp_linears and not _linear_names(q)
    for name in fp_linears:
        layer, ref = q.get_submodule(name), fp.get_submodule(name)
        assert isinstance(layer, TernaryLinear)
        assert layer.weight.dtype == torch.uint8 and layer.weight.shape == (-(-ref.out_features // 4), ref.in_features)
        codes, scale = ternarize(ref.weight, "twn", "per_channel")
        assert torch.equal(layer.dequantized_weight(torch.float32), dequantize(codes, scale, "per_channel"))
        assert torch.equal(layer.bias, ref.bias)
    assert q.get_submodule("encoder.layer.0.intermediate.dense").out_features == 66  # not divisible by 4
    assert torch.equal(q.embeddings.word_embeddings.weight, fp.embeddings.word_embeddings.weight)
    assert q.is_quantized and q.config.quantization_config.quant_method == "ternary"


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_save_reload_is_bit_identical(tiny_bert_dir, tmp_path, granularity, dtype):
    cfg = TernaryConfig(granularity=granularity, group_size=2, rule="absmean")
    q = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=cfg, dtype=dtype)
    layer = q.encoder.layer[0].attention.self.query
    assert layer.weight_scale.dtype == dtype and layer.bias.dtype == dtype
    q.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "ternary" and saved["granularity"] == granularity
    q2 = AutoModel.from_pretrained(tmp_path, dtype=dtype)  # no config passed
    assert isinstance(q2.encoder.layer[0].attention.self.query, TernaryLinear)
    x = _ids()
    assert torch.equal(q(x).last_hidden_state, q2(x).last_hidden_state)
    for (n1, t1), (n2, t2) in zip(sorted(q.state_dict().items()), sorted(q2.state_dict().items())):
        assert n1 == n2 and torch.equal(t1, t2)


def test_new_head_stays_full_precision_and_initialised(tiny_bert_dir, tmp_path):
    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3,
                                                           quantization_config=TernaryConfig())
    assert type(m.classifier) is nn.Linear
    assert 0.005 < m.classifier.weight.std().item() < 0.05  # initializer_range 0.02, not torch.empty garbage
    assert isinstance(m.bert.pooler.dense, TernaryLinear)
    m.save_pretrained(tmp_path)
    m2 = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(m2.classifier) is nn.Linear and torch.equal(m2.classifier.weight, m.classifier.weight)
    x = _ids()
    assert torch.equal(m(x).logits, m2(x).logits)


def test_packed_base_model_loads_into_task_model(tiny_bert_dir, tmp_path):
    AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig()).save_pretrained(tmp_path)
    m = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert isinstance(m.bert.encoder.layer[0].output.dense, TernaryLinear) and type(m.classifier) is nn.Linear


def test_tied_mlm_decoder_stays_full_precision(tmp_path):
    BertForMaskedLM(tiny_bert_config()).save_pretrained(tmp_path)
    m = BertForMaskedLM.from_pretrained(tmp_path, quantization_config=TernaryConfig())
    assert type(m.cls.predictions.decoder) is nn.Linear
    assert m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight
    assert isinstance(m.bert.encoder.layer[0].attention.self.key, TernaryLinear)


def test_modules_to_not_convert(tiny_bert_dir):
    q = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig(modules_to_not_convert=["pooler"]))
    assert type(q.pooler.dense) is nn.Linear and isinstance(q.encoder.layer[1].output.dense, TernaryLinear)


@pytest.mark.parametrize("arch", ["vit", "mpnet", "xlm-roberta"])
def test_other_encoders(arch, tmp_path):
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if arch == "vit":
        fp = ViTModel(ViTConfig(image_size=32, patch_size=8, **small))
        inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    else:
        cls, cfg = (MPNetModel, MPNetConfig) if arch == "mpnet" else (XLMRobertaModel, XLMRobertaConfig)
        fp = cls(cfg(vocab_size=100, **small))
        inputs = {"input_ids": _ids(100)}
    fp.eval().save_pretrained(tmp_path / "fp")
    q = AutoModel.from_pretrained(tmp_path / "fp", quantization_config=TernaryConfig())
    n_linear = len(_linear_names(fp))
    assert n_linear >= 13 and not _linear_names(q)
    assert sum(isinstance(m, TernaryLinear) for m in q.modules()) == n_linear
    q.save_pretrained(tmp_path / "q")
    q2 = AutoModel.from_pretrained(tmp_path / "q")
    assert torch.equal(q(**inputs).last_hidden_state, q2(**inputs).last_hidden_state)
    # ternary output is a perturbation of the fp output, not noise
    cos = nn.functional.cosine_similarity(fp(**inputs).last_hidden_state.flatten(),
                                          q(**inputs).last_hidden_state.flatten(), dim=0)
    assert cos > 0.5


def test_dequantize_computes_the_same_function(tiny_bert_dir):
    q = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig(granularity="per_group", group_size=2))
    x = _ids()
    expected = q(x).last_hidden_state
    d = q.dequantize()
    assert not ternary_hf.is_ternary_model(d) and not getattr(d, "is_quantized", False)
    assert type(d.encoder.layer[0].attention.self.query) is nn.Linear
    torch.testing.assert_close(d(x).last_hidden_state, expected, rtol=0, atol=1e-6)


def test_qat_mode_trains_latent_weights_and_saves_packed(tiny_bert_dir, tmp_path):
    q = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig(mode="qat"))
    ref = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig())
    layer = q.encoder.layer[0].attention.self.query
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.dtype == torch.float32
    x = _ids()
    torch.testing.assert_close(q(x).last_hidden_state, ref(x).last_hidden_state, rtol=0, atol=1e-5)
    q.train()
    q(x).last_hidden_state.pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert q.hf_quantizer.is_qat_trainable
    q.eval()
    q.save_pretrained(tmp_path)
    q2 = AutoModel.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["mode"] == "inference"
    assert q2.encoder.layer[0].attention.self.query.weight.dtype == torch.uint8
    torch.testing.assert_close(q2(x).last_hidden_state, q(x).last_hidden_state, rtol=0, atol=1e-5)
    ternary_hf.freeze_to_inference(q)
    assert q.encoder.layer[0].attention.self.query.weight.dtype == torch.uint8


def test_packed_load_never_materialises_float_weights(tiny_bert_dir, tmp_path, monkeypatch):
    AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig()).save_pretrained(tmp_path)
    calls = []
    import ternary_hf.layer as layer_mod
    import ternary_hf.quantizer as quantizer_mod

    for mod, name in [(layer_mod, "ternarize"), (layer_mod, "unpack_codes"), (layer_mod, "dequantize")]:
        original = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _n=name, _o=original, **k: calls.append(_n) or _o(*a, **k))
    monkeypatch.setattr(quantizer_mod.TernaryQuantize, "convert", lambda *a, **k: calls.append("convert"))
    q = AutoModel.from_pretrained(tmp_path)
    assert calls == []
    assert isinstance(q.pooler.dense, TernaryLinear)


def test_footprint_model_and_path_agree(tiny_bert_dir, tmp_path):
    q = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig())
    q.save_pretrained(tmp_path)
    from_model, from_path = ternary_hf.footprint(q), ternary_hf.footprint(tmp_path)
    expected_packed = sum(-(-m.out_features // 4) * m.in_features for m in q.modules() if isinstance(m, TernaryLinear))
    assert from_model.packed_weights == from_path.packed_weights == expected_packed
    assert from_model.scales == from_path.scales
    assert from_path.embeddings == from_model.embeddings and from_path.other == from_model.other
    fp = ternary_hf.footprint(AutoModel.from_pretrained(tiny_bert_dir))
    assert fp.packed_weights == 0 and fp.ratio == pytest.approx(1.0)
    assert from_path.fp32_bytes == pytest.approx(fp.fp32_bytes, rel=0.01)
    assert from_path.ratio < 0.75 and from_path.file_bytes == os.path.getsize(tmp_path / "model.safetensors")
