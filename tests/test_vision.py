"""Vision encoders: ViT image classifiers through TernaryConfig, and self-distillation of a tiny ViT
on images (tensors, or a datasets.Dataset of PIL images with an image processor); probe/k-NN scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForImageClassification, ViTConfig, ViTForImageClassification, ViTModel

import ternary_hf
from ternary_hf import TernaryLinear
from ternary_hf.evaluation.vision import encode_images, knn_accuracy, linear_probe_accuracy
from ternary_hf.training import (DistillationArguments, ImageDistillationCollator, ImagePooling,
                                 TernaryDistillationTrainer, is_image_encoder, load_images)

from distill_helpers import training_args

SMALL = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _pixels(n=48, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    """A random fp32 ViTModel (no pooler) with a ViTImageProcessor for 16x16 RGB images."""
    from transformers import ViTImageProcessor

    path = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**SMALL), add_pooling_layer=False).eval().save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return str(path)


def _qat(path):
    return AutoModel.from_pretrained(path, quantization_config=ternary_hf.TernaryConfig(mode="qat"))


# ---- image classifiers through the quantizer ----

def test_image_classifier_ternarizes_saves_packed_and_reloads_identically(tmp_path):
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(num_labels=5, **SMALL)).eval().save_pretrained(tmp_path / "fp")
    cfg = ternary_hf.TernaryConfig(modules_to_not_convert=["classifier"])
    q = AutoModelForImageClassification.from_pretrained(tmp_path / "fp", quantization_config=cfg)
    assert type(q.classifier) is nn.Linear
    assert isinstance(q.vit.layers[0].attention.q_proj, TernaryLinear)
    assert isinstance(q.vit.layers[1].mlp.fc2, TernaryLinear)
    assert type(q.vit.embeddings.patch_embeddings.projection) is nn.Conv2d  # the patch conv stays fp
    q.save_pretrained(tmp_path / "q")
    q2 = AutoModelForImageClassification.from_pretrained(tmp_path / "q")
    x = _pixels(4)
    assert torch.equal(q(pixel_values=x).logits, q2(pixel_values=x).logits)
    for (n1, t1), (n2, t2) in zip(sorted(q.state_dict().items()), sorted(q2.state_dict().items())):
        assert n1 == n2 and torch.equal(t1, t2)
    # the packed encoder alone loads as a ViTModel
    enc = AutoModel.from_pretrained(tmp_path / "q")
    assert isinstance(enc.layers[0].mlp.fc1, TernaryLinear)
    torch.testing.assert_close(enc(pixel_values=x).last_hidden_state, q2.vit(pixel_values=x).last_hidden_state)


def test_new_classifier_head_on_a_ternary_vit_stays_full_precision(vit_dir):
    m = AutoModelForImageClassification.from_pretrained(vit_dir, num_labels=3,
                                                        quantization_config=ternary_hf.TernaryConfig())
    assert type(m.classifier) is nn.Linear and m.classifier.weight.abs().max() < 1  # initialised, not garbage
    assert isinstance(m.vit.layers[0].attention.o_proj, TernaryLinear)
    assert m(pixel_values=_pixels(2)).logits.shape == (2, 3)


# ---- pieces of the image path ----

def test_image_pooling_and_detection(vit_dir):
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    assert torch.equal(ImagePooling("cls")({"token_embeddings": tokens})["sentence_embedding"], tokens[:, 0])
    assert torch.equal(ImagePooling("mean", prefix_tokens=1)({"token_embeddings": tokens})["sentence_embedding"],
                       tokens[:, 1:].mean(1))
    with pytest.raises(ValueError, match="image pooling must be one of"):
        ImagePooling("max")
    assert is_image_encoder(AutoModel.from_pretrained(vit_dir))
    assert not is_image_encoder(nn.Linear(2, 2))


def test_load_images_and_collator_bad_input():
    import datasets

    with pytest.raises(ValueError, match=r"float \[N, C, H, W\]"):
        load_images(torch.zeros(4, 16, 16))
    with pytest.raises(ValueError, match="empty"):
        load_images(torch.zeros(0, 3, 16, 16))
    with pytest.raises(ValueError, match=r"no image column found.*\['label'\]"):
        load_images(datasets.Dataset.from_dict({"label": [1, 2]}))
    with pytest.raises(ValueError, match="not in the dataset"):
        load_images(datasets.Dataset.from_dict({"image": [[0]]}), image_column="photo")
    with pytest.raises(ValueError, match="need an image processor"):
        ImageDistillationCollator(None)([{"image": np.zeros((16, 16, 3), np.uint8), "example_id": 0}])
    ds = load_images(_pixels(6))
    batch = ImageDistillationCollator()([ds[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and batch["example_id"].tolist() == [0, 1, 2]


def test_bad_image_distillation_setup(vit_dir, tmp_path):
    import datasets

    args = training_args(str(tmp_path / "o"))
    with pytest.raises(ValueError, match="long_documents applies to text"):
        TernaryDistillationTrainer(model=_qat(vit_dir), args=args, train_dataset=_pixels(),
                                   distillation_args=DistillationArguments(long_documents=4))
    with pytest.raises(ValueError, match="no image column"):
        TernaryDistillationTrainer(model=_qat(vit_dir), args=args,
                                   train_dataset=datasets.Dataset.from_dict({"text": ["a cat"]}))
    other = ViTModel(ViTConfig(**{**SMALL, "patch_size": 8}), add_pooling_layer=False)
    with pytest.raises(ValueError, match="patch_size=8 differs"):
        TernaryDistillationTrainer(model=_qat(vit_dir), args=args, train_dataset=_pixels(), teacher=other)


# ---- distillation on images ----

def test_vit_distillation_on_pixel_tensors_reduces_loss_and_reloads_packed(vit_dir, tmp_path):
    pixels = _pixels(48)
    student = _qat(vit_dir)
    calls = []
    trainer = TernaryDistillationTrainer(
        model=student, train_dataset=pixels, eval_dataset=pixels[:16],
        args=training_args(str(tmp_path / "o"), max_steps=12, per_device_train_batch_size=16, learning_rate=5e-4,
                           warmup_steps=2, per_device_eval_batch_size=16),
        distillation_args=DistillationArguments(pooling="mean", cache_teacher_outputs=True))
    assert trainer.processing_class is not None  # the image processor saved with the source
    trainer.teacher.register_forward_hook(lambda *a: calls.append(1))
    before = trainer.evaluate()["eval_loss"]
    calls.clear()
    trainer.train()  # 3 batches per epoch, 4 epochs: the teacher runs in the first epoch only
    assert len(calls) == 3 and len(trainer.teacher_cache) == 48
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert {"loss_hidden_mse", "loss_cosine", "loss_intermediate_mse"} <= set(logs[0])
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.7 * before, (before, after)
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "preprocessor_config.json").exists()
    packed = AutoModel.from_pretrained(tmp_path / "final")
    layer = packed.layers[0].attention.v_proj
    assert isinstance(layer, TernaryLinear) and layer.weight.dtype == torch.uint8
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(packed(pixel_values=pixels[:4]).last_hidden_state,
                                   student(pixel_values=pixels[:4]).last_hidden_state, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(encode_images(packed, pixels[:8], pooling="mean", batch_size=3),
                               encode_images(student, pixels[:8], pooling="mean"), rtol=1e-4, atol=1e-4)


def test_vit_distillation_on_a_dataset_of_pil_images(vit_dir, tmp_path):
    """Raw images in a datasets.Dataset reach the collator, where the source's image processor makes pixels."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(16)]
    data = datasets.Dataset.from_dict({"photo": images, "label": list(range(16))})
    student = _qat(vit_dir)
    before = {k: v.detach().clone() for k, v in student.state_dict().items()}
    trainer = TernaryDistillationTrainer(model=student, train_dataset=data,
                                         args=training_args(str(tmp_path / "o"), max_steps=2),
                                         distillation_args=DistillationArguments(image_column="photo"))
    trainer.train()
    key = "layers.0.attention.q_proj.weight"
    assert not torch.equal(before[key], student.state_dict()[key])
    assert encode_images(student, images[:5], image_processor=trainer.processing_class).shape == (5, 32)


# ---- scoring frozen features ----

def test_linear_probe_and_knn_accuracy():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    def sample(n):
        y = rng.integers(0, 4, n)
        return centres[y] + rng.normal(size=(n, 16)), y
    (tx, ty), (vx, vy) = sample(400), sample(200)
    assert linear_probe_accuracy(tx, ty, vx, vy) > 0.95 and knn_accuracy(tx, ty, vx, vy) > 0.95
    shuffled = rng.permutation(ty)
    assert linear_probe_accuracy(tx, shuffled, vx, vy) < 0.5 and knn_accuracy(tx, shuffled, vx, vy, k=5) < 0.5
    with pytest.raises(ValueError, match="same dim"):
        knn_accuracy(tx, ty, vx[:, :8], vy)


# ---- the Fashion-MNIST example, end to end on a few steps ----

def test_fashion_mnist_example_runs_end_to_end(tmp_path):
    import os
    import subprocess
    import sys

    data_dir = "/usr/share/datasets/fashion-mnist"
    if not os.path.isdir(data_dir):
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "vit_fashion_mnist.py"), "--output-dir", str(tmp_path),
         "--train-steps", "20", "--distill-steps", "6", "--probe-train", "300", "--test", "300", "--quiet"],
        env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "MiB" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["fp32", "ternary PTQ", "ternary distilled"]
    for row in rows:  # accuracies are fractions; the ternary checkpoints are much smaller than fp32
        probe, knn = float(row.split("|")[2]), float(row.split("|")[4])
        assert 0.1 < probe <= 1 and 0.1 < knn <= 1
    assert float(rows[2].split("|")[-2].strip().rstrip("x")) < 0.2
    packed = AutoModel.from_pretrained(tmp_path / "distilled")
    assert isinstance(packed.layers[0].mlp.fc1, TernaryLinear)
