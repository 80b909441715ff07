"""The fused CPU forward of BERT-family encoder layers: its C kernels against torch, the fused layer against
the layer's own forward (same model, same weights), and every case where it must step aside."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ternary_hf import TernaryConfig
from ternary_hf.kernels import (
    fused_layer_count,
    fused_layers,
    native,
    quantize_per_token,
    uninstall_fused_layers,
    use_backend,
)
from ternary_hf.kernels import fused_layer
from ternary_hf.kernels.fused_model import whole_model

from conftest import padded_ternary_bert

pytestmark = pytest.mark.skipif(native.native_lib() is None, reason="no C compiler for the CPU kernels")


def split_heads(qkv, batch, length, heads, dim, which):
    inner = heads * dim
    return qkv[:, which * inner:(which + 1) * inner].reshape(batch, length, heads, dim).transpose(1, 2)


@pytest.mark.parametrize("batch,length,heads,dim", [(3, 17, 2, 16), (2, 40, 3, 48), (1, 1, 1, 8), (4, 64, 12, 32)])
def test_attention_kernel_matches_sdpa(batch, length, heads, dim):
    g = torch.Generator().manual_seed(length)
    inner = heads * dim
    qkv = torch.randn(batch * length, 3 * inner + 5, generator=g) * 2  # + 5: a row stride wider than q|k|v
    q, k, v = (split_heads(qkv[:, :3 * inner], batch, length, heads, dim, i) for i in range(3))
    scale = dim ** -0.5
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    keep = torch.arange(length)[None, :] < lengths[:, None]  # [batch, keys]

    out = native.attention(qkv, batch, length, heads, dim, (0, inner, 2 * inner), None, scale)
    ref = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).reshape(batch * length, inner)
    assert torch.allclose(out, ref, atol=2e-5, rtol=1e-4)

    additive = torch.zeros(batch, length).masked_fill(~keep, float("-inf"))[:, None, :].expand(batch, length, length)
    out = native.attention(qkv, batch, length, heads, dim, (0, inner, 2 * inner), additive, scale)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], scale=scale)
    assert torch.allclose(out, ref.transpose(1, 2).reshape(batch * length, inner), atol=2e-5, rtol=1e-4)

    # an arbitrary float bias per (query, key), as eager attention masks are
    bias = torch.randn(batch, length, length, generator=g)
    out = native.attention(qkv, batch, length, heads, dim, (0, inner, 2 * inner), bias, scale)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None], scale=scale)
    assert torch.allclose(out, ref.transpose(1, 2).reshape(batch * length, inner), atol=2e-5, rtol=1e-4)


def test_attention_kernel_query_that_sees_no_key_gets_zeros():
    qkv = torch.randn(4, 3 * 8)
    mask = torch.zeros(1, 4, 4)
    mask[0, 2] = float("-inf")
    out = native.attention(qkv, 1, 4, 1, 8, (0, 8, 16), mask, 0.5)
    assert torch.equal(out[2], torch.zeros(8))
    assert torch.isfinite(out).all()


def test_softmax_exp_accuracy_through_attention():
    """One query, two keys: the weight of key 1 is e^-d / (1 + e^-d); checks the kernel's exp on [-87, 0]."""
    for d in (0.0, 1e-3, 0.5, 3.0, 20.0, 60.0, 86.0, 90.0):
        # q = 1, k0 = d, k1 = 0 (so scores d and 0 after scaling 1); v0 = 0, v1 = 1 -> output = softmax weight of key 1
        qkv = torch.tensor([[1.0, d, 0.0], [1.0, 0.0, 1.0]])
        out = native.attention(qkv, 1, 2, 1, 1, (0, 1, 2), None, 1.0)
        expected = 1.0 / (1.0 + math.exp(d))
        assert out[0, 0].item() == pytest.approx(expected, rel=1e-6, abs=1e-30), d


def test_rescale_add_layernorm_matches_torch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(37, 48, generator=g) * 3
    codes = torch.randint(-1, 2, (48, 40), generator=g, dtype=torch.int8)
    scale = torch.rand(40, generator=g) + 0.5
    bias = torch.randn(40, generator=g)
    residual = torch.randn(37, 40, generator=g)
    gamma, beta = torch.rand(40, generator=g) + 0.5, torch.randn(40, generator=g)
    for outliers in (0, 1, 2):
        tq = native.quantize_rows(x.contiguous(), outliers)
        plain = native.rescale_(torch._int_mm(tq.q, codes), tq, codes, scale, bias).clone()
        ref = F.layer_norm(plain + residual, (40,), gamma, beta, 1e-12)
        out = native.rescale_add_layernorm_(torch._int_mm(tq.q, codes), tq, codes, scale, bias, residual, gamma, beta,
                                            1e-12)
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), outliers
    # the quantization feeding it is the shared definition
    assert torch.equal(native.quantize_rows(x, 1).q, quantize_per_token(x, 1).q)


# ---------------------------------------------------------------- the fused layer on a model

@pytest.fixture(scope="module")
def padded_bert(tmp_path_factory):
    return padded_ternary_bert(tmp_path_factory.mktemp("fused_bert"))


@pytest.fixture
def count_fused(monkeypatch):
    """Counts fused layer calls, with the whole-model path (tests/test_fused_model.py) off: these tests are
    about the per-layer path that other BERT-family models take."""
    calls = []
    real = fused_layer.run_fused

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fused_layer, "run_fused", counting)
    with whole_model(False):
        yield calls


def hidden(model, inputs, **kwargs):
    with torch.inference_mode():
        return model(**inputs, **kwargs).last_hidden_state


def test_fused_layer_matches_the_layer_forward(padded_bert, count_fused):
    model, inputs = padded_bert
    assert fused_layer_count(model) == 3  # installed at load
    with fused_layers(False):
        ref = hidden(model, inputs)
    assert not count_fused
    out = hidden(model, inputs)
    assert len(count_fused) == 3
    real = inputs["attention_mask"].bool()
    # attention and LayerNorm round differently from torch; nothing else differs
    assert torch.allclose(out[real], ref[real], atol=2e-4, rtol=1e-3)
    cos = F.cosine_similarity(out[real], ref[real], dim=-1)
    assert cos.min() > 0.9999
    # no padding: no mask at all reaches the layer
    short = {k: v[:1] for k, v in inputs.items()}
    with fused_layers(False):
        ref = hidden(model, short)
    assert torch.allclose(hidden(model, short), ref, atol=2e-4, rtol=1e-3)


def test_fused_layer_eager_attention_mask(padded_bert, count_fused):
    model, inputs = padded_bert
    real = inputs["attention_mask"].bool()
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with fused_layers(False):
            ref = hidden(model, inputs)
        out = hidden(model, inputs)
    finally:
        model.set_attn_implementation(before)
    assert count_fused
    assert torch.allclose(out[real], ref[real], atol=2e-4, rtol=1e-3)


def test_fused_layer_steps_aside(padded_bert, count_fused):
    model, inputs = padded_bert
    with fused_layers(False):
        ref = hidden(model, inputs)
    # attention weights requested (eager attention returns them): the layer's own modules must run
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    assert len(out.attentions) == 3 and not count_fused
    assert torch.allclose(out.last_hidden_state, ref, atol=1e-4)
    # another backend forced
    with use_backend("reference"):
        hidden(model, inputs)
    assert not count_fused
    # autograd wanted
    out = model(**inputs).last_hidden_state
    assert out.requires_grad and not count_fused
    # training mode
    model.train()
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        model.eval()
    assert not count_fused
    # a hook on a module the fused path would skip
    seen = []
    handle = model.encoder.layer[1].intermediate.dense.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        hidden(model, inputs)
    finally:
        handle.remove()
    assert len(seen) == 1 and len(count_fused) == 2  # layers 0 and 2 still fused
    # a projection replaced (e.g. by an adapter wrapper): never bypassed
    attn = model.encoder.layer[0].attention.self
    original = attn.value

    class Wrapper(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            return self.base(x) * 0.0

    attn.value = Wrapper(original)
    try:
        count_fused.clear()
        changed = hidden(model, inputs)
    finally:
        attn.value = original
    assert len(count_fused) == 2 and not torch.allclose(changed, ref, atol=1e-3)
    # and back to fused
    count_fused.clear()
    hidden(model, inputs)
    assert len(count_fused) == 3


def test_fused_layer_hidden_states_recorded(padded_bert, count_fused):
    model, inputs = padded_bert
    with torch.inference_mode():
        out = model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == 4 and count_fused
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)


def test_fused_layer_follows_weight_edits(padded_bert, count_fused):
    model, inputs = padded_bert
    layer = model.encoder.layer[2].output.dense
    before = hidden(model, inputs)
    saved = layer.bias.detach().clone()
    try:
        with torch.no_grad():
            layer.bias.add_(torch.linspace(-1.0, 1.0, layer.bias.numel()))  # in place: the state must be rebuilt
        edited = hidden(model, inputs)
        with fused_layers(False):
            ref = hidden(model, inputs)
    finally:
        with torch.no_grad():
            layer.bias.copy_(saved)
    assert not torch.allclose(edited, before, atol=1e-3)
    real = inputs["attention_mask"].bool()
    assert torch.allclose(edited[real], ref[real], atol=2e-4, rtol=1e-3)


def test_uninstall_and_deepcopy(padded_bert):
    import copy

    model, inputs = padded_bert
    twin = copy.deepcopy(model)
    assert fused_layer_count(twin) == 3
    plan = twin.encoder.layer[0].__dict__[fused_layer._PLAN_ATTR]
    assert plan.projections[0] is twin.encoder.layer[0].attention.self.query  # the copy's modules, not the original's
    assert torch.allclose(hidden(twin, inputs), hidden(model, inputs), atol=1e-6)
    assert uninstall_fused_layers(twin) == 3 and fused_layer_count(twin) == 0
    assert "forward" not in twin.encoder.layer[0].__dict__


def test_qat_models_are_not_fused(tiny_bert_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig(mode="qat"))
    assert fused_layer_count(model) == 0


def test_fused_layer_inside_and_outside_inference_mode(padded_bert, count_fused):
    """The reused buffers are made under inference_mode by the first call; later calls under no_grad write them."""
    model, inputs = padded_bert
    fused_layer._workspace.buffers.clear()
    a = hidden(model, inputs)
    with torch.no_grad():
        b = model(**inputs).last_hidden_state
    assert len(count_fused) == 6 and torch.equal(a, b)


def test_fused_layer_single_token(padded_bert, count_fused):
    model, _ = padded_bert
    one = {"input_ids": torch.tensor([[7]]), "attention_mask": torch.tensor([[1]])}
    with fused_layers(False):
        ref = hidden(model, one)
    assert torch.allclose(hidden(model, one), ref, atol=2e-4, rtol=1e-3) and count_fused


def test_whole_layer_call_equals_the_stepwise_path(padded_bert):
    """`tq_encoder_layer` (one native call, own GEMM) computes exactly what the step-by-step path (oneDNN GEMM,
    one native call per step) computes: same integer products, same float operations."""
    model, inputs = padded_bert
    layer = model.encoder.layer[1]
    plan = layer.__dict__[fused_layer._PLAN_ATTR]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 23, 64, generator=g)
    ok, mask = fused_layer._additive_mask(inputs["attention_mask"].bool()[:, None, None, :], 4, 23)
    assert ok
    with torch.inference_mode():
        for m in (None, mask):
            whole = fused_layer.run_fused(plan, x, m)
            steps = fused_layer.run_fused(plan, x, m, whole_layer=False)
            assert torch.equal(whole, steps)


def test_whole_layer_call_threads_agree(padded_bert):
    """With more threads the layer's steps are shared with the worker pool: same bits as one thread."""
    model, _ = padded_bert
    plan = model.encoder.layer[0].__dict__[fused_layer._PLAN_ATTR]
    x = torch.randn(9, 40, 64, generator=torch.Generator().manual_seed(6))
    before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            one = fused_layer.run_fused(plan, x, None)
            torch.set_num_threads(3)
            three = fused_layer.run_fused(plan, x, None)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, three)
