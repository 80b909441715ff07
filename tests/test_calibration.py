"""Calibrated (GPTQ-style) ternarization: the grid, the output error it removes, model-level calibration and
the trainer's calibrated start."""

from __future__ import annotations

import pytest
import torch

from ternary_hf import TernaryConfig
from ternary_hf.calibration import calibrate_linear_weights, gptq_ternary_weight
from ternary_hf.ternarize import dequantize, ternarize


def correlated_inputs(n=2000, k=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    x = torch.randn(n, k, generator=g) @ mix
    x[:, 5] *= 6.0  # an outlier channel, as in transformer activations
    return x


@pytest.mark.parametrize("granularity", ["per_channel", "per_group", "per_tensor"])
def test_calibrated_weight_is_on_the_rule_grid_and_beats_plain_rounding(granularity):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 48, generator=g) * 0.05
    x = correlated_inputs()
    h = x.T @ x / x.shape[0]
    q = gptq_ternary_weight(w, h, "twn", granularity, group_size=16)
    codes, scale = ternarize(w, "twn", granularity, group_size=16)
    # every entry is 0 or +-(the rule's scale of the original weights): the rule gives back the same grid
    q_codes, q_scale = ternarize(q, "twn", granularity, group_size=16)
    assert torch.allclose(dequantize(q_codes, q_scale, granularity, dtype=torch.float32), q, rtol=1e-6, atol=0)
    assert torch.allclose(q_scale, scale, rtol=1e-6, atol=0)
    assert not torch.equal(q_codes, codes)  # ... with codes chosen differently from plain rounding
    plain = dequantize(codes, scale, granularity, dtype=torch.float32)
    err_plain = (x @ (w - plain).T).pow(2).mean()
    err_cal = (x @ (w - q).T).pow(2).mean()
    assert err_cal < 0.8 * err_plain, (err_cal.item(), err_plain.item())


def test_calibration_rejects_a_wrong_hessian():
    with pytest.raises(ValueError, match="hessian has shape"):
        gptq_ternary_weight(torch.randn(4, 8), torch.eye(7))


def test_calibrate_linear_weights_on_a_model(tiny_bert_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 120, (8, 12), generator=g),
                "attention_mask": torch.ones(8, 12, dtype=torch.long)} for _ in range(4)]
    calibrated = calibrate_linear_weights(model, names, batches)
    assert sorted(calibrated) == sorted(names)
    weights = {n: c.weight for n, c in calibrated.items()}
    for n, c in calibrated.items():  # the latent rounds to the calibrated codes
        assert torch.equal(ternarize(c.latent, "twn", "per_channel")[0], ternarize(c.weight, "twn", "per_channel")[0])
        assert not torch.equal(c.latent, c.weight)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # the model is left alone

    def output_error(replacements):
        twin = AutoModel.from_pretrained(tiny_bert_dir).eval()
        with torch.no_grad():
            for n, w in replacements.items():
                twin.get_submodule(n).weight.copy_(w)
            return sum((twin(**b).last_hidden_state - model(**b).last_hidden_state).pow(2).mean() for b in batches)

    plain = {}
    for n in names:
        codes, scale = ternarize(model.get_submodule(n).weight, "twn", "per_channel")
        plain[n] = dequantize(codes, scale, "per_channel", dtype=torch.float32)
    assert output_error(weights) < output_error(plain)
    with pytest.raises(ValueError, match="not nn.Linear"):
        calibrate_linear_weights(model, ["embeddings"], batches)


def test_trainer_starts_from_calibrated_weights(tiny_bert_dir, tmp_path):
    from transformers import AutoModel, TrainingArguments

    from ternary_hf import DistillationArguments, TernaryDistillationTrainer

    student = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig(mode="qat"))
    latent = student.encoder.layer[0].intermediate.dense.weight.detach().clone()
    texts = [f"sentence number {i} about cats and dogs" for i in range(40)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, report_to="none",
                             use_cpu=True, save_strategy="no")
    trainer = TernaryDistillationTrainer(model=student, args=args, train_dataset=texts,
                                         distillation_args=DistillationArguments(calibration_examples=24))
    layer = student.encoder.layer[0].intermediate.dense
    start = layer.weight.detach()
    assert not torch.equal(start, latent)
    codes, _ = ternarize(start, layer.rule, layer.granularity, layer.group_size)
    plain_codes, plain_scale = ternarize(latent, layer.rule, layer.granularity, layer.group_size)
    assert not torch.equal(codes, plain_codes)  # calibrated codes, not the plain rule's
    # the learned scale starts at the calibrated grid's scale: the rule's scale of the original weights
    assert torch.allclose(layer.weight_scale.detach().reshape(-1), plain_scale.reshape(-1), rtol=1e-5)
    trainer.train()
    assert trainer.state.global_step == 2
