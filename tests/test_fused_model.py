"""The whole-model native forward of a ternary BertModel (`kernels/fused_model.py`): embeddings, every encoder
layer and the pooler in two native calls. Checked against the per-layer fused path and the model's own forward,
and in every case where it must step aside."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from ternary_hf.kernels import fused_layers, native, use_backend
from ternary_hf.kernels import fused_model
from ternary_hf.kernels.fused_model import fused_model_count, whole_model

from conftest import padded_ternary_bert

pytestmark = pytest.mark.skipif(native.native_lib() is None, reason="no C compiler for the CPU kernels")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """The padded ternary BERT of the fused-layer tests, with token types in its batch."""
    model, inputs = padded_ternary_bert(tmp_path_factory.mktemp("whole_bert"))
    types = (torch.arange(23) >= 12).long().expand(4, 23).contiguous()
    return model, {**inputs, "token_type_ids": types}


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = fused_model.run_model
    monkeypatch.setattr(fused_model, "run_model", lambda *a, **k: seen.append(1) or real(*a, **k))
    return seen


def run(model, inputs, **kwargs):
    with torch.inference_mode():
        return model(**inputs, **kwargs)


def close(a, b, real):
    """Per-token agreement on real tokens: LayerNorm and attention round differently from torch's, so an
    activation rounding can flip now and then."""
    return F.cosine_similarity(a[real], b[real], dim=-1).min() > 0.999 and torch.allclose(a[real], b[real], atol=5e-2)


def test_installed_at_load_and_matches_the_per_layer_path(bert, calls):
    model, inputs = bert
    assert fused_model_count(model) == 1
    out = run(model, inputs)
    assert len(calls) == 1
    with whole_model(False):
        per_layer = run(model, inputs)
    with fused_layers(False):
        own = run(model, inputs)
    assert len(calls) == 1
    real = inputs["attention_mask"].bool()
    assert close(out.last_hidden_state, per_layer.last_hidden_state, real)
    assert close(out.last_hidden_state, own.last_hidden_state, real)
    assert torch.allclose(out.pooler_output, per_layer.pooler_output, atol=2e-2)
    assert out.pooler_output.shape == (4, 64)
    # token types default to 0, a missing mask means no padding, int32 ids work
    short = {"input_ids": inputs["input_ids"][:1].int()}
    with whole_model(False):
        ref = run(model, short).last_hidden_state
    assert close(run(model, short).last_hidden_state, ref, torch.ones(1, 23, dtype=torch.bool)) and len(calls) == 2


def test_steps_aside(bert, calls):
    model, inputs = bert
    real = inputs["attention_mask"].bool()
    with whole_model(False):
        ref = run(model, inputs).last_hidden_state
    out = run(model, inputs, output_hidden_states=True)  # hidden states wanted: the model's own forward
    assert len(out.hidden_states) == 4 and not calls
    assert close(out.last_hidden_state, ref, real)
    assert isinstance(run(model, inputs, return_dict=False), tuple) and not calls
    embeds = model.embeddings.word_embeddings(inputs["input_ids"]).detach()
    run(model, {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"]})
    run(model, {**inputs, "position_ids": torch.arange(23).expand(4, 23)})
    with use_backend("reference"):
        run(model, inputs)
    assert not calls
    assert model(**inputs).last_hidden_state.requires_grad and not calls  # autograd wanted
    model.train()
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        model.eval()
    assert not calls
    seen = []
    handle = model.embeddings.LayerNorm.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        run(model, inputs)
    finally:
        handle.remove()
    assert len(seen) == 1 and not calls
    run(model, inputs)
    assert len(calls) == 1  # and back


def test_bad_ids_raise_the_models_own_error(bert):
    model, inputs = bert
    bad = inputs["input_ids"].clone()
    bad[0, 3] = model.config.vocab_size + 5
    with pytest.raises(IndexError):
        run(model, {"input_ids": bad})
    too_long = torch.randint(5, 100, (1, model.config.max_position_embeddings + 1))
    with pytest.raises(Exception):
        run(model, {"input_ids": too_long})


def test_follows_weight_edits_and_dtype_changes(bert, calls):
    model, inputs = bert
    real = inputs["attention_mask"].bool()
    before = run(model, inputs).last_hidden_state
    ln = model.embeddings.LayerNorm
    saved = ln.bias.detach().clone()
    try:
        with torch.no_grad():
            ln.bias.add_(0.5)  # in place: the native structs must be rebuilt
        edited = run(model, inputs).last_hidden_state
        with whole_model(False):
            ref = run(model, inputs).last_hidden_state
    finally:
        with torch.no_grad():
            ln.bias.copy_(saved)
    assert not torch.allclose(edited[real], before[real], atol=1e-2)
    assert close(edited, ref, real)
    assert torch.allclose(run(model, inputs).last_hidden_state, before)
    n = len(calls)
    twin = __import__("copy").deepcopy(model).double()
    out = run(twin, inputs)  # float64 parameters: the model's own forward
    assert out.last_hidden_state.dtype == torch.float64 and len(calls) == n


def test_follows_activation_quantization_changes(bert, calls):
    """`activation_quant` / `activation_outliers` are part of the numerics compiled into the native structs:
    changing them on one linear sends its layer (and the whole model) back to the modules' own forwards."""
    model, inputs = bert
    real = inputs["attention_mask"].bool()
    before = run(model, inputs)
    n = len(calls)
    for module, name, value in ((model.encoder.layer[1].intermediate.dense, "activation_quant", "none"),
                                (model.encoder.layer[0].attention.self.key, "activation_outliers", 4),
                                (model.pooler.dense, "activation_quant", "none")):
        saved = getattr(module, name)
        setattr(module, name, value)
        try:
            changed = run(model, inputs)
            with fused_layers(False):
                own = run(model, inputs)
        finally:
            setattr(module, name, saved)
        assert len(calls) == n
        field = "pooler_output" if module is model.pooler.dense else "last_hidden_state"
        assert not torch.equal(getattr(changed, field), getattr(before, field))
        if field == "pooler_output":
            assert torch.allclose(changed.pooler_output, own.pooler_output, atol=1e-4)
        else:
            assert close(changed.last_hidden_state, own.last_hidden_state, real)
    assert torch.equal(run(model, inputs).last_hidden_state, before.last_hidden_state) and len(calls) == n + 1


def test_concurrent_callers(bert):
    """Two Python threads at once: one takes the worker pool, the other runs its steps alone; both correct."""
    model, inputs = bert
    big = {k: v.repeat(4, 1) for k, v in inputs.items()}
    expected = run(model, big).last_hidden_state
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(run(model, big).last_hidden_state)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 15
    assert all(torch.equal(r, expected) for r in results)


def test_whole_model_forward_with_int8_embedding_tables(tmp_path):
    """`ternary-hf quantize` stores int8 tables by default: the whole-model forward must still apply, exactly."""
    from transformers import AutoModel, BertModel

    from conftest import tiny_bert_config
    from ternary_hf import TernaryConfig
    from ternary_hf.kernels import fused_model, native, use_backend

    if native.native_lib() is None:
        pytest.skip("native kernels unavailable")
    torch.manual_seed(0)
    BertModel(tiny_bert_config(hidden_size=64, num_attention_heads=4, intermediate_size=96)).eval().save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path, quantization_config=TernaryConfig(embedding_dtype="int8")).eval()
    assert type(model.embeddings.position_embeddings).__name__ != "Embedding"
    ids = torch.randint(5, 120, (3, 17), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        fast = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert fused_model.fused_model_count(model) > 0
        with use_backend("reference"):
            ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
    cos = torch.nn.functional.cosine_similarity(fast[mask.bool()], ref[mask.bool()], dim=-1)
    assert cos.min() > 0.999
