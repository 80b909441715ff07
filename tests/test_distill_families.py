"""Self-distillation on every encoder family of the fast CPU path, with its usual pooling (mean, CLS, last
token): a few steps lower the eval loss, the packed checkpoint reloads with bit-identical codes and scales, and
the reloaded model runs on the fused fast path and matches the `reference` backend."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import ternary_hf
from ternary_hf import TernaryLinear
from ternary_hf.kernels import fused_layer, generic_layer, native, use_backend
from ternary_hf.training import DistillationArguments, TernaryDistillationTrainer

from distill_helpers import TEXTS, WORDS, training_args

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(native.native_lib() is None, reason="no C compiler for the CPU kernels")]

# family -> (pooling the trainer uses, which fused forward serves the reloaded model)
FAMILIES = {
    "bert": ("mean", "bert"),
    "xlmr": ("cls", "bert"),
    "mpnet": ("mean", "generic"),
    "modernbert": ("mean", "generic"),
    "qwen3": ("lasttoken", "generic"),
    "vit": ("cls", "generic"),
}


def _write(family: str, path: str) -> None:
    """A tiny random fp32 model of `family` with a word-level tokenizer over distill_helpers' WORDS."""
    import transformers as tf

    os.makedirs(path, exist_ok=True)
    # initializer_range 0.3: with the default 0.02 a random layer barely changes its input, so the ternary student
    # starts next to its teacher and there is nothing for a few steps to learn
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 initializer_range=0.3)
    if family == "vit":
        cfg = tf.ViTConfig(image_size=16, patch_size=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           **small)
        torch.manual_seed(0)
        tf.ViTModel(cfg, add_pooling_layer=False).eval().save_pretrained(path)
        tf.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
        return
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(WORDS))
    with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    tok = tf.BertTokenizerFast(vocab_file=os.path.join(path, "vocab.txt"), do_lower_case=True)
    ids = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
    v = len(vocab)
    if family == "bert":
        model = tf.BertModel(tf.BertConfig(vocab_size=v, max_position_embeddings=64, **small))
    elif family == "xlmr":
        model = tf.XLMRobertaModel(tf.XLMRobertaConfig(vocab_size=v, max_position_embeddings=66, **small, **ids))
    elif family == "mpnet":
        model = tf.MPNetModel(tf.MPNetConfig(vocab_size=v, max_position_embeddings=66, **small, **ids))
    elif family == "modernbert":
        model = tf.ModernBertModel(tf.ModernBertConfig(vocab_size=v, local_attention=8, global_attn_every_n_layers=2,
                                                       cls_token_id=2, sep_token_id=3, **small, **ids))
    elif family == "qwen3":
        model = tf.Qwen3Model(tf.Qwen3Config(vocab_size=v, num_key_value_heads=2, head_dim=8, **small, **ids))
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)


def _codes(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {n: m.codes_and_scale() for n, m in model.named_modules() if isinstance(m, TernaryLinear)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_distillation_per_family(family, tmp_path, monkeypatch):
    from transformers import AutoModel

    pooling, path_kind = FAMILIES[family]
    src = str(tmp_path / "src")
    _write(family, src)
    student = AutoModel.from_pretrained(src, quantization_config=ternary_hf.TernaryConfig(mode="qat"))
    if family == "vit":
        data = torch.randn(48, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        eval_data = data[:16]
    else:
        data, eval_data = TEXTS, TEXTS[:16]
    trainer = TernaryDistillationTrainer(
        model=student, train_dataset=data, eval_dataset=eval_data,
        args=training_args(str(tmp_path / "o"), max_steps=12, per_device_train_batch_size=16, learning_rate=1e-3,
                           warmup_steps=2, per_device_eval_batch_size=16),
        distillation_args=DistillationArguments(pooling=pooling, quant_warmup_steps=0))  # ternary from step 0
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before, (family, before, after)

    trainer.save_model(str(tmp_path / "final"))
    packed = AutoModel.from_pretrained(tmp_path / "final").eval()
    student.eval()
    saved, trained = _codes(packed), _codes(student)
    assert saved.keys() == trained.keys() and saved
    for name, (codes, scale) in trained.items():
        assert torch.equal(saved[name][0], codes) and torch.equal(saved[name][1], scale), name
    assert all(m.weight.dtype == torch.uint8 for m in packed.modules() if isinstance(m, TernaryLinear))

    calls = []
    target = (generic_layer, "run_layer") if path_kind == "generic" else (fused_layer, "run_fused")
    real = getattr(*target)
    monkeypatch.setattr(*target, lambda *a, **k: calls.append(1) or real(*a, **k))
    if family == "vit":
        inputs = {"pixel_values": data[:8]}
    else:
        inputs = dict(trainer.processing_class(TEXTS[:8], padding=True, return_tensors="pt"))
        inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    with torch.inference_mode():
        fast = packed(**inputs).last_hidden_state
        with use_backend("reference"):
            ref = packed(**inputs).last_hidden_state
    if path_kind == "bert":  # BertModel runs the whole-model call instead of per-layer calls
        from ternary_hf.kernels import fused_model

        assert calls or fused_model.fused_model_count(packed) == 1
    else:
        assert calls
    keep = inputs.get("attention_mask", torch.ones(fast.shape[:2], dtype=torch.long)).bool()
    assert F.cosine_similarity(fast[keep], ref[keep], dim=-1).min() > 0.999
