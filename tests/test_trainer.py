"""TernaryDistillationTrainer: losses, data, bad input, checkpoints/resume, CLI, one real-model check."""

from __future__ import annotations

import json
import os

import pytest
import torch

import ternary_hf
from ternary_hf import TernaryLinear
from ternary_hf.training import DistillationArguments, TernaryDistillationTrainer, load_texts
from ternary_hf.training.losses import DistillationLoss, LossWeights, masked_mse
from ternary_hf.training.checkpointing import CHECKPOINT_MARKER_NAME, LATENT_WEIGHTS_NAME, last_complete_checkpoint

from distill_helpers import TEXTS, qat_student, training_args, write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny_distill")))


def _latent(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- losses ----

def test_masked_mse_ignores_padding():
    s, t = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    t[1, 2] = 100.0  # a padded position: must not count
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert masked_mse(s, t, mask).item() == 0.0
    t[0, 0] = 2.0  # a real position: (2^2 * 4 dims) / (5 tokens * 4 dims)
    assert masked_mse(s, t, mask).item() == pytest.approx(16 / 20)


def test_loss_terms_and_weights():
    torch.manual_seed(0)
    b, s, d = 2, 5, 8
    mask = torch.ones(b, s, dtype=torch.long)
    student = {"last_hidden_state": torch.randn(b, s, d), "sentence_embedding": torch.randn(b, d),
               "hidden_states": tuple(torch.randn(b, s, d) for _ in range(3)),
               "attentions": tuple(torch.softmax(torch.randn(b, 2, s, s), -1) for _ in range(2))}
    same = {k: v for k, v in student.items()}
    loss_fn = DistillationLoss(LossWeights(1.0, 2.0, 0.5, 0.25))
    total, terms = loss_fn(student, same, mask)
    assert set(terms) == {"hidden_mse", "cosine", "intermediate_mse", "attention_kl"}
    assert total.item() == pytest.approx(0.0, abs=1e-5)
    teacher = {k: (tuple(x + 0.1 for x in v) if isinstance(v, tuple) else v + 0.1) for k, v in student.items()}
    teacher["attentions"] = tuple(torch.softmax(torch.randn(b, 2, s, s), -1) for _ in range(2))
    total, terms = loss_fn(student, teacher, mask)
    expected = terms["hidden_mse"] + 2 * terms["cosine"] + 0.5 * terms["intermediate_mse"] + 0.25 * terms["attention_kl"]
    assert total.item() == pytest.approx(expected.item())
    assert terms["attention_kl"].item() > 0
    with pytest.raises(ValueError, match="all distillation loss weights are 0"):
        LossWeights(0, 0, 0, 0)
    with pytest.raises(ValueError, match="cosine"):
        LossWeights(cosine=-1)


def test_relational_kl_reads_neighbour_order():
    from ternary_hf.training.losses import relational_kl

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 8, generator=g)
    assert relational_kl(teacher * 3.0, teacher, 0.05).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert relational_kl(teacher[:1], teacher[:1], 0.05).item() == 0.0  # no neighbours
    student = (teacher + 0.5 * torch.randn(16, 8, generator=g)).requires_grad_()
    loss = relational_kl(student, teacher, 0.05)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # only the geometry among the sentences counts: a rotated copy of the teacher pays nothing (cosine would)
    rotated = teacher @ torch.linalg.qr(torch.randn(8, 8, generator=g))[0]  # same geometry, other coordinates
    assert relational_kl(rotated, teacher, 0.05).item() == pytest.approx(0.0, abs=1e-4)
    loss_fn = DistillationLoss(LossWeights(0.0, 1.0, relational_kl=2.0))
    total, terms = loss_fn({"sentence_embedding": student.detach()}, {"sentence_embedding": teacher},
                           torch.ones(16, 1))
    assert set(terms) == {"cosine", "relational_kl"}
    assert total.item() == pytest.approx((terms["cosine"] + 2 * terms["relational_kl"]).item())
    with pytest.raises(ValueError, match="relational_temperature"):
        LossWeights(relational_temperature=0)


# ---- data ----

def test_load_texts_sources(tmp_path):
    import datasets

    assert load_texts(["a b", "c"])["text"] == ["a b", "c"]
    pairs = datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1, 0]})
    assert sorted(load_texts(pairs)["text"]) == ["a", "b", "c", "d"]
    (tmp_path / "t.txt").write_text("first line\n\nsecond line\n")
    assert load_texts(str(tmp_path / "t.txt"))["text"] == ["first line", "second line"]
    (tmp_path / "t.jsonl").write_text(json.dumps({"body": "x y"}) + "\n" + json.dumps({"body": "z"}) + "\n")
    assert load_texts(str(tmp_path / "t.jsonl"), text_column="body")["text"] == ["x y", "z"]
    (tmp_path / "t.csv").write_text("anchor,positive\nq1,d1\nq2,d2\n")
    assert sorted(load_texts(str(tmp_path / "t.csv"))["text"]) == ["d1", "d2", "q1", "q2"]


def test_load_texts_bad_input(tmp_path):
    import datasets

    with pytest.raises(ValueError, match="empty"):
        load_texts(datasets.Dataset.from_dict({"text": []}))
    with pytest.raises(ValueError, match=r"no text column found.*\['body', 'id'\]"):
        load_texts(datasets.Dataset.from_dict({"body": ["a"], "id": [1]}))
    with pytest.raises(ValueError, match="not in the dataset"):
        load_texts(datasets.Dataset.from_dict({"text": ["a"]}), text_column="body")
    with pytest.raises(ValueError, match="row 1"):
        load_texts(datasets.Dataset.from_dict({"text": ["a", None]}))
    with pytest.raises(FileNotFoundError):
        load_texts(str(tmp_path / "missing.txt"))
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_texts(str(tmp_path / "x.parquet"))


# ---- bad input to the trainer: errors before training ----

def test_bad_student_teacher_and_data(tiny_dir, tmp_path):
    import datasets
    from transformers import AutoModel, DistilBertConfig, DistilBertModel

    args = training_args(str(tmp_path / "o"))
    with pytest.raises(ValueError, match="has no TernaryLinear layers"):
        TernaryDistillationTrainer(model=AutoModel.from_pretrained(tiny_dir), args=args, train_dataset=TEXTS)
    packed = AutoModel.from_pretrained(tiny_dir, quantization_config=ternary_hf.TernaryConfig())
    with pytest.raises(ValueError, match="inference mode.*TernaryConfig\\(mode='qat'\\)"):
        TernaryDistillationTrainer(model=packed, args=args, train_dataset=TEXTS)
    student = qat_student(tiny_dir)
    with pytest.raises(ValueError, match="empty"):
        TernaryDistillationTrainer(model=student, args=args, train_dataset=datasets.Dataset.from_dict({"text": []}))
    with pytest.raises(ValueError, match="no text column"):
        TernaryDistillationTrainer(model=student, args=args,
                                   train_dataset=datasets.Dataset.from_dict({"body": ["a cat"]}))
    wide = write_tiny_checkpoint(str(tmp_path / "wide"), hidden_size=48)
    with pytest.raises(ValueError, match="hidden_size=48 differs"):
        TernaryDistillationTrainer(model=student, args=args, train_dataset=TEXTS, teacher=wide)
    other = DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64))
    with pytest.raises(ValueError, match="architecture 'distilbert' differs"):
        TernaryDistillationTrainer(model=student, args=args, train_dataset=TEXTS, teacher=other)
    with pytest.raises(ValueError, match="must be the full-precision"):
        TernaryDistillationTrainer(model=student, args=args, train_dataset=TEXTS, teacher=packed)
    packed.save_pretrained(tmp_path / "packed")
    with pytest.raises(ValueError, match="is a ternary checkpoint"):
        TernaryDistillationTrainer(model=student, args=args, train_dataset=TEXTS, teacher=str(tmp_path / "packed"))


# ---- training ----

def test_distillation_trains_logs_terms_and_saves_packed(tiny_dir, tmp_path):
    student = qat_student(tiny_dir)
    before = _latent(student)
    dargs = DistillationArguments(intermediate_mse_weight=1.0, attention_kl_weight=0.5, quant_warmup_steps=2)
    trainer = TernaryDistillationTrainer(model=student, args=training_args(str(tmp_path / "o"), max_steps=4),
                                         train_dataset=TEXTS, distillation_args=dargs)
    assert trainer.teacher.training is False
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    strengths = []
    original_step = trainer.training_step

    def spy(model, inputs, num_items_in_batch=None):
        out = original_step(model, inputs, num_items_in_batch)
        strengths.append(next(m for m in model.modules() if isinstance(m, TernaryLinear)).quant_strength)
        return out

    trainer.training_step = spy
    trainer.train()
    assert strengths == [0.0, 0.5, 1.0, 1.0]  # the warm-up ramp, lambda = min(step / 2, 1)
    assert all(m.quant_strength == 1.0 for m in student.modules() if isinstance(m, TernaryLinear))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for term in ("loss_hidden_mse", "loss_cosine", "loss_intermediate_mse", "loss_attention_kl", "quant_strength"):
        assert term in logs[0], term
    after = _latent(student)
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[query], after[query])
    assert torch.equal(before["pooler.dense.weight"], after["pooler.dense.weight"])  # not in the loss: untouched
    trainer.save_model(str(tmp_path / "final"))
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(tmp_path / "final")
    layer = reloaded.get_submodule("encoder.layer.0.attention.self.query")
    assert isinstance(layer, TernaryLinear) and layer.mode == "inference" and layer.weight.dtype == torch.uint8
    codes, scale = student.get_submodule("encoder.layer.0.attention.self.query").codes_and_scale()
    assert torch.equal(layer.codes_and_scale()[0], codes)


def test_learned_scales_train_and_are_what_is_saved(tiny_dir, tmp_path):
    from transformers import AutoModel

    student = qat_student(tiny_dir)
    trainer = TernaryDistillationTrainer(model=student, args=training_args(str(tmp_path / "o"), max_steps=3),
                                         train_dataset=TEXTS, distillation_args=DistillationArguments(learn_scales=True))
    layer = student.get_submodule("encoder.layer.0.output.dense")
    initial = layer.weight_scale.detach().clone()
    rule_scale = layer.codes_and_scale()[1].clone()
    trainer.train()
    assert not torch.equal(layer.weight_scale.detach(), initial)  # the scale is trained directly
    torch.testing.assert_close(initial, rule_scale)  # ... starting from the rule's scale
    trainer.save_model(str(tmp_path / "final"))
    packed = AutoModel.from_pretrained(tmp_path / "final").get_submodule("encoder.layer.0.output.dense")
    torch.testing.assert_close(packed.weight_scale, layer.weight_scale.detach())
    assert torch.equal(packed.codes_and_scale()[0], layer.codes_and_scale()[0])


@pytest.mark.parametrize("choice, expected", [("auto", "eager"), ("sdpa", "sdpa")])
def test_student_trains_with_its_training_attention_and_gets_its_own_back(tiny_dir, tmp_path, choice, expected):
    student = qat_student(tiny_dir)
    own = student.config._attn_implementation
    assert own == "sdpa"
    trainer = TernaryDistillationTrainer(model=student, args=training_args(str(tmp_path / "o"), max_steps=2),
                                         train_dataset=TEXTS,
                                         distillation_args=DistillationArguments(student_attention=choice))
    seen = []
    original_step = trainer.training_step

    def spy(model, inputs, num_items_in_batch=None):
        seen.append(model.config._attn_implementation)
        return original_step(model, inputs, num_items_in_batch)

    trainer.training_step = spy
    trainer.train()
    assert seen == [expected, expected]  # auto: eager on CPU (its backward is the faster one there)
    assert student.config._attn_implementation == own


def test_teacher_cache_skips_teacher_in_later_epochs(tiny_dir, tmp_path):
    texts = TEXTS[:16]
    calls = []
    trainer = TernaryDistillationTrainer(
        model=qat_student(tiny_dir), train_dataset=texts,
        args=training_args(str(tmp_path / "o"), max_steps=6, per_device_train_batch_size=8),
        distillation_args=DistillationArguments(cache_teacher_outputs=True, intermediate_mse_weight=1.0))
    trainer.teacher.register_forward_hook(lambda *a: calls.append(1))
    trainer.train()  # 2 batches per epoch, 3 epochs
    assert len(calls) == 2
    assert len(trainer.teacher_cache) == 16


def test_time_budget_stops_training_and_decays_lr(tiny_dir, tmp_path, monkeypatch):
    import ternary_hf.training.callbacks as callbacks_mod

    clock = iter(range(0, 10_000))  # a fake wall clock: one second passes per reading
    monkeypatch.setattr(callbacks_mod.time, "monotonic", lambda: float(next(clock)))
    trainer = TernaryDistillationTrainer(
        model=qat_student(tiny_dir), train_dataset=TEXTS,
        args=training_args(str(tmp_path / "o"), max_steps=100_000, warmup_steps=1),
        distillation_args=DistillationArguments(time_budget_minutes=0.1))  # 6 s: 6 steps of 1 s
    trainer.train()
    assert trainer.state.global_step == 6
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    base = trainer.args.learning_rate
    # logged after each step: warm-up (0 -> base), then cosine over the elapsed fraction of the budget as
    # measured at the end of the previous step (1/6, 2/6, ...)
    import math

    expected = [0.0, base] + [base * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(1, 5)]
    assert lrs == pytest.approx(expected)


def test_time_budgeted_progress_counts_the_budget_not_max_steps(tiny_dir, tmp_path, monkeypatch, capsys):
    """`--time_budget_minutes 15 --max_steps 100000` used to show a 100,000-step bar estimating days: with a budget
    the bar counts the budget's seconds, and transformers' step bar is not shown."""
    import ternary_hf.training.callbacks as callbacks_mod
    from transformers import ProgressCallback

    from ternary_hf.training import TrainingProgress

    clock = iter(range(0, 10_000))  # a fake wall clock: one second passes per reading
    monkeypatch.setattr(callbacks_mod.time, "monotonic", lambda: float(next(clock)))
    trainer = TernaryDistillationTrainer(
        model=qat_student(tiny_dir), train_dataset=TEXTS,
        args=training_args(str(tmp_path / "o"), max_steps=100_000, disable_tqdm=False, logging_steps=2),
        distillation_args=DistillationArguments(time_budget_minutes=0.1))  # 6 s
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert kinds.count(TrainingProgress) == 1 and ProgressCallback not in kinds
    trainer.train()
    captured = capsys.readouterr()
    assert trainer.state.global_step == 6
    assert "6/6 s of the time budget" in captured.err and "100000" not in captured.err
    assert "'loss':" in captured.out  # the log lines are still printed above the bar (tqdm.write: stdout)

    plain = TernaryDistillationTrainer(model=qat_student(tiny_dir), train_dataset=TEXTS,
                                       args=training_args(str(tmp_path / "p"), disable_tqdm=False))
    kinds = [type(cb) for cb in plain.callback_handler.callbacks]
    assert ProgressCallback in kinds and TrainingProgress not in kinds  # step-bounded: transformers' own bar


def _run(tiny_dir, out, max_steps, resume=None, crash_at_save=None, learn_scales=False):
    student = qat_student(tiny_dir)
    args = training_args(out, max_steps=max_steps, save_strategy="steps", save_steps=3, save_total_limit=1,
                         logging_steps=100, train_sampling_strategy="group_by_length")
    trainer = TernaryDistillationTrainer(model=student, args=args, train_dataset=TEXTS,
                                         distillation_args=DistillationArguments(learn_scales=learn_scales))
    if crash_at_save is not None:
        original = trainer._save_latent

        def interrupted(path):
            if trainer.state.global_step == crash_at_save:
                raise KeyboardInterrupt  # Ctrl-C in the middle of writing checkpoint-N
            original(path)

        trainer._save_latent = interrupted
    trainer.train(resume_from_checkpoint=resume)
    return student


@pytest.mark.parametrize("learn_scales", [False, True])
def test_interrupted_and_resumed_matches_uninterrupted(tiny_dir, tmp_path, learn_scales):
    reference = _latent(_run(tiny_dir, str(tmp_path / "a"), max_steps=8, learn_scales=learn_scales))
    out = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_dir, out, max_steps=8, crash_at_save=6, learn_scales=learn_scales)
    assert sorted(os.listdir(out)) == ["checkpoint-3", "checkpoint-6"]  # rotation waits for a complete save
    assert last_complete_checkpoint(out).endswith("checkpoint-3")
    assert not os.path.exists(os.path.join(out, "checkpoint-6", CHECKPOINT_MARKER_NAME))
    with pytest.raises(ValueError, match="not a complete ternary-hf checkpoint.*checkpoint-3"):
        _run(tiny_dir, out, max_steps=8, resume=os.path.join(out, "checkpoint-6"), learn_scales=learn_scales)
    resumed = _latent(_run(tiny_dir, out, max_steps=8, resume=True, learn_scales=learn_scales))
    assert reference.keys() == resumed.keys()
    assert ("encoder.layer.0.attention.self.query.weight_scale" in resumed) == learn_scales
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    final_ckpt = os.path.join(out, "checkpoint-8")
    assert os.path.isfile(os.path.join(final_ckpt, LATENT_WEIGHTS_NAME))
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-8"]
    from transformers import AutoModel

    assert ternary_hf.is_ternary_model(AutoModel.from_pretrained(final_ckpt))  # checkpoints are loadable packed


def test_cli_distill_and_resume(tiny_dir, tmp_path):
    from ternary_hf.commands.distill import main_from_argv, parse_args

    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS))
    out = str(tmp_path / "cli")
    common = ["--model", tiny_dir, "--data", str(data), "--output_dir", out, "--time_budget_minutes", "0",
              "--per_device_train_batch_size", "8", "--save_steps", "2", "--logging_steps", "1",
              "--warmup_steps", "0", "--disable_tqdm", "true", "--use_cpu", "true", "--cosine_weight", "2"]
    _, dargs, targs = parse_args(common + ["--max_steps", "2"])
    assert dargs.cosine_weight == 2.0 and targs.train_sampling_strategy == "group_by_length"
    assert main_from_argv(common + ["--max_steps", "2"]) == 0
    assert os.path.isfile(os.path.join(out, "checkpoint-2", LATENT_WEIGHTS_NAME))
    assert main_from_argv(common + ["--max_steps", "4", "--resume_from_checkpoint", "true"]) == 0
    state = json.load(open(os.path.join(out, "checkpoint-4", "trainer_state.json")))
    assert state["global_step"] == 4 and state["log_history"][0]["step"] == 1  # continued the same run
    from transformers import AutoModel

    assert ternary_hf.is_ternary_model(AutoModel.from_pretrained(out))
    with pytest.raises(SystemExit):
        parse_args(["--max_steps", "2"])  # --output_dir is required
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])  # every help string must format (argparse %-expands them)
    assert exit_info.value.code == 0


def test_minilm_real_loss_decreases_and_saves_sentence_transformer(minilm_path, sentences, tmp_path):
    """A short real run: the distillation loss falls, and the output loads as a SentenceTransformer whose
    embeddings are closer to the fp32 model's than post-training ternarization's."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from ternary_hf.data.wordnet import distillation_texts

    texts = distillation_texts()[:12 * 16]
    student = AutoModel.from_pretrained(minilm_path, quantization_config=ternary_hf.TernaryConfig(mode="qat"))
    args = training_args(str(tmp_path / "o"), max_steps=12, per_device_train_batch_size=16, learning_rate=5e-4,
                         warmup_steps=2, lr_scheduler_type="constant_with_warmup")
    trainer = TernaryDistillationTrainer(model=student, args=args, train_dataset=texts,
                                         distillation_args=DistillationArguments(max_length=32))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    trainer.save_model(str(tmp_path / "st"))
    fp = SentenceTransformer(minilm_path, device="cpu")
    ptq = SentenceTransformer(minilm_path, device="cpu",
                              model_kwargs={"quantization_config": ternary_hf.TernaryConfig()})
    distilled = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    sentences = sentences[:32]
    ref = fp.encode(sentences, convert_to_tensor=True)

    def fidelity(model):
        return torch.nn.functional.cosine_similarity(model.encode(sentences, convert_to_tensor=True), ref).mean().item()

    assert fidelity(distilled) > fidelity(ptq) + 0.02


def test_copy_sentence_transformers_files_creates_every_module_folder(tmp_path):
    """`2_Normalize` has no files: its folder must still exist, or the saved model is incomplete."""
    from ternary_hf.defaults import default_model_path
    from ternary_hf.training.checkpointing import copy_sentence_transformers_files

    copied = copy_sentence_transformers_files(str(default_model_path()), str(tmp_path))
    assert "modules.json" in copied and os.path.join("1_Pooling", "config.json") in copied
    assert (tmp_path / "2_Normalize").is_dir()
