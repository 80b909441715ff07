"""The general fused CPU forward: any transformer layer a family description (`families/`) maps onto a
`LayerSpec` runs as a short sequence of native calls instead of eager PyTorch around per-linear int8 calls:

    pre-norm (ModernBERT, ViT, Qwen3):
      x --norm1 + quantize--> GEMM q|k|v --rescale--> [per-head RMSNorm, rotary] --> attention
        --quantize--> GEMM out --rescale + residual (-> h) + norm2 + quantize--> GEMM in
        --rescale + act / gated act + quantize--> GEMM out --rescale + residual--> y
    post-norm (MPNet, BERT-style):
      x --quantize--> GEMM q|k|v --rescale--> attention (+ relative bias) --quantize--> GEMM out
        --rescale + residual + norm1 (-> h) + quantize--> GEMM in --rescale + act + quantize--> GEMM out
        --rescale + residual + norm2--> y

Projections that read the same input (query/key/value; gate/up) are one GEMM over concatenated codes, quantized
once (bit-identical to separate calls: the same per-token quantization of the same input). The GEMMs are the
2-bit ternary GEMM of `native.py`; the epilogues are `csrc/tq_blocks.h`. Linear numerics are exactly the
`cpu_int8` backend's (= `reference`); attention, norms, activations and rotary agree with torch to float
rounding. It runs only where it computes what the layer would (inference, float32 CPU, the linears on a fusable
backend with the activation quantization they were planned with, no hooks on bypassed modules, no attention
weights requested, no KV cache to extend (an empty one is filled), not under tracing / compile), else the layer's own forward runs.
`fused_layers(False)` turns it off with the BERT fused path.
"""

from __future__ import annotations

import copy
import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import native
from .families import DESCRIBERS, LayerInputs, LayerSpec, Norm, load_all
from .fused_layer import (_ENABLED, _FUSABLE_BACKENDS, _NUMERICS, _PLAN_ATTR, _has_hooks, _is_packed_int8,
                          _output_collector, _workspace, dispatch_unchanged, install_forward, uninstall_forward)
from .registry import _OVERRIDE, get_backend, kernel_state

_GENERIC_ATTR = "_ternary_generic_plan"


@dataclass
class _Weights:
    """One (merged) projection as the GEMM and its epilogue read it."""

    codes: torch.Tensor  # int8 [K, N]
    panels: torch.Tensor  # 2-bit GEMM layout
    scale: torch.Tensor  # float32 [N]
    bias: torch.Tensor | None
    outliers: int  # float outliers per token of its input
    n: int


@dataclass
class GenericPlan:
    original_forward: Any
    spec: LayerSpec
    linears: tuple[nn.Module, ...]
    numerics: tuple
    structure: tuple  # (parent, name, child) of every submodule when planned
    modules: tuple[nn.Module, ...]  # every submodule (hooks on any disable the fused path)
    _weights: tuple[_Weights, ...] | None = None
    _sources: tuple = ()

    def __deepcopy__(self, memo: dict) -> "GenericPlan":
        new = object.__new__(GenericPlan)
        memo[id(self)] = new
        for f in dataclasses.fields(self):
            skip = f.name in ("_weights", "_sources")
            setattr(new, f.name, f.default if skip else copy.deepcopy(getattr(self, f.name), memo))
        return new

    def weights(self) -> tuple[_Weights, ...]:
        """q|k|v, attention output, feed-forward in, feed-forward out; rebuilt when a linear's tensors changed."""
        sources = tuple((t, t._version) if t is not None else None
                        for m in self.linears for t in (m.weight, m.weight_scale, m.bias))
        if self._weights is not None and all(
            a is b or (a is not None and b is not None and a[0] is b[0] and a[1] == b[1])
            for a, b in zip(sources, self._sources)
        ):
            return self._weights
        s = self.spec
        self._weights = tuple(_merge(group) for group in (s.qkv, (s.attn_out,), s.mlp_in, (s.mlp_out,)))
        self._sources = sources
        return self._weights

    def wants_grad(self) -> bool:
        s = self.spec
        tensors = [m.bias for m in self.linears if m.bias is not None]
        for n in (s.attn_norm, s.mlp_norm, s.q_norm, s.k_norm):
            if n is not None:
                tensors += [t for t in (n.weight, n.bias) if t is not None]
        return any(t.requires_grad for t in tensors)

    def rewired(self) -> bool:
        return any(parent._modules.get(name) is not child for parent, name, child in self.structure)


def _merge(linears: tuple[nn.Module, ...]) -> _Weights:
    backend, cpu = get_backend("cpu_int8"), torch.device("cpu")
    states = [kernel_state(m, backend, cpu, torch.float32) for m in linears]
    codes = states[0].codes if len(states) == 1 else torch.cat([st.codes for st in states], dim=1).contiguous()
    scale = torch.cat([st.scales[0] for st in states]) if len(states) > 1 else states[0].scales[0]
    if all(st.bias is None for st in states):
        bias = None
    else:
        bias = torch.cat([st.bias if st.bias is not None else torch.zeros_like(st.scales[0]) for st in states])
    return _Weights(codes, native.pack_gemm_weights(codes), scale.contiguous(), bias, linears[0].activation_outliers,
                    codes.shape[1])


def _plan_for(layer: nn.Module) -> GenericPlan | None:
    describe = DESCRIBERS.get(type(layer).__name__)
    if describe is None or _PLAN_ATTR in layer.__dict__:
        return None
    try:
        spec = describe(layer)
    except AttributeError:  # a variant of the class without the expected submodules
        return None
    if spec is None:
        return None
    linears = (*spec.qkv, spec.attn_out, *spec.mlp_in, spec.mlp_out)
    if not all(_is_packed_int8(m) for m in linears):
        return None
    for group in (spec.qkv, spec.mlp_in):
        if len({(m.in_features, m.activation_outliers) for m in group}) != 1:
            return None
    q_width = spec.heads * spec.head_dim
    if sum(m.out_features for m in spec.qkv) != q_width + 2 * spec.kv_heads * spec.head_dim:
        return None
    if spec.heads % spec.kv_heads or spec.attn_out.in_features != q_width:
        return None
    mlp_width = sum(m.out_features for m in spec.mlp_in)
    if spec.mlp_out.in_features != (mlp_width // 2 if spec.glu else mlp_width) or (spec.glu and mlp_width % 2):
        return None
    if spec.rope and spec.head_dim % 2:
        return None
    structure = tuple((p, n, c) for p in layer.modules() for n, c in p._modules.items())
    modules = tuple(m for m in layer.modules() if m is not layer)
    return GenericPlan(layer.forward, spec, linears, tuple(map(_NUMERICS, linears)), structure, modules)


def install_generic_layers(model: nn.Module) -> int:
    """Give every layer of `model` that a family description covers (and the BERT fused path does not) the
    general fused forward (idempotent). Returns how many layers have it."""
    load_all()
    return install_forward(model, _GENERIC_ATTR, _plan_for, _generic_forward)


def uninstall_generic_layers(model: nn.Module) -> int:
    return uninstall_forward(model, _GENERIC_ATTR)


def generic_layer_count(model: nn.Module) -> int:
    return sum(_GENERIC_ATTR in m.__dict__ for m in model.modules())


# ---------------------------------------------------------------- when it applies

def _applies(layer: nn.Module, plan: GenericPlan, hidden: torch.Tensor, kwargs: dict) -> bool:
    if not _ENABLED.get() or layer.training or native.native_lib() is None:
        return False
    if hidden.device.type != "cpu" or hidden.dtype != torch.float32 or hidden.dim() != 3 or not hidden.numel():
        return False
    if hidden.shape[-1] != plan.spec.qkv[0].in_features:
        return False
    if torch.is_grad_enabled() and (hidden.requires_grad or plan.wants_grad()):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if kwargs.get("output_attentions") or kwargs.get("encoder_hidden_states") is not None:
        return False
    collector = _output_collector()
    if collector is not None and ("attentions" in collector or "cross_attentions" in collector):
        return False
    override = _OVERRIDE.get()
    if override is not None and override not in _FUSABLE_BACKENDS:
        return False
    if not dispatch_unchanged(plan.linears, plan.numerics, override):
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    return not (plan.rewired() or any(_has_hooks(m) for m in plan.modules))


_MASK_CACHE: dict = {}


def _score_mask(mask: torch.Tensor | None, batch: int, length: int) -> tuple[bool, torch.Tensor | None]:
    """transformers' attention mask (2-D keep mask, or 3-D / 4-D bool keep mask or additive float) as an additive
    float32 `[batch, 1 or heads, length, length]` view; `(False, None)` for a form the kernel does not take.
    All layers of one forward get the same mask object: its conversion is made once."""
    if mask is None:
        return True, None
    key = (id(mask), None if mask.is_inference() else mask._version, batch, length)
    hit = _MASK_CACHE.get("last")
    if hit is not None and hit[0] == key and hit[1]() is mask:
        return True, hit[2]
    m = mask
    if m.dim() == 2:
        m = m[:, None, None, :]
        if m.dtype != torch.bool:
            m = m != 0
    elif m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4:
        return False, None
    try:
        m = m.expand(batch, m.shape[1], length, length)
    except RuntimeError:
        return False, None
    m = native.kernel_mask(m)
    # held only while transformers' mask lives (one forward), never past it: it can be large
    _MASK_CACHE["last"] = (key, weakref.ref(mask), m)
    weakref.finalize(mask, _MASK_CACHE.pop, "last", None)
    return True, m


def _generic_forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
    plan: GenericPlan = self.__dict__[_GENERIC_ATTR]
    if _applies(self, plan, hidden_states, kwargs):
        extra = plan.spec.inputs(args, kwargs)
        if extra is not None:
            ok, mask = _score_mask(extra.mask, hidden_states.shape[0], hidden_states.shape[1])
            if ok and _extras_fit(extra, plan.spec, hidden_states):
                y = run_layer(plan, hidden_states, mask, extra)
                return (y,) if plan.spec.returns_tuple else y
    return plan.original_forward(hidden_states, *args, **kwargs)


def _extras_fit(extra: LayerInputs, spec: LayerSpec, hidden: torch.Tensor) -> bool:
    batch, length = hidden.shape[:2]
    if spec.rope:
        if extra.rope is None:
            return False
        cos, sin = extra.rope
        if cos.dtype != torch.float32 or cos.shape[-2:] != (length, spec.head_dim) or cos.shape != sin.shape:
            return False
        if cos.shape[0] not in (1, batch):
            return False
    if extra.bias is not None:
        b = extra.bias
        if b.dtype != torch.float32 or b.dim() != 4 or b.shape[-2:] != (length, length) or b.stride(-1) != 1:
            return False
        if b.shape[0] not in (1, batch) or b.shape[1] not in (1, spec.heads):
            return False
    return True


# ---------------------------------------------------------------- the forward

def _norm_args(n: Norm | None) -> dict:
    if n is None:
        return {}
    return {"norm": n.kind, "gamma": n.weight.detach(), "beta": None if n.bias is None else n.bias.detach(),
            "eps": n.eps}


def _gemm(q: torch.Tensor, w: _Weights, buffer: str) -> torch.Tensor:
    """The int32 product in a per-thread buffer reused across calls (fresh multi-megabyte tensors cost page
    faults on every forward; see fused_layer's `_workspace`)."""
    m = q.shape[0]
    return native.gemm(q, w.panels, w.n, out=_workspace.get(buffer, m * w.n, torch.int32).view(m, w.n))


def _rescale(tq, w: _Weights) -> tuple:
    return tq, w.codes, w.scale, w.bias


def run_layer(plan: GenericPlan, hidden: torch.Tensor, mask: torch.Tensor | None, extra: LayerInputs) -> torch.Tensor:
    """The layer's forward on float32 `[batch, length, width]` (see the module docstring)."""
    s = plan.spec
    qkv_w, out_w, in_w, last_w = plan.weights()
    batch, length, width = hidden.shape
    m = batch * length
    x = hidden.reshape(m, width)
    if not x.is_contiguous():
        x = x.contiguous()

    if s.norm_first and s.attn_norm is not None:
        tq = native.residual_norm(None, x, None, quantize_outliers=qkv_w.outliers, **_norm_args(s.attn_norm))
    else:
        tq = native.quantize_rows(x, qkv_w.outliers, reuse_buffer=True)
    qkv = native.rescale_(_gemm(tq.q, qkv_w, "g_qkv"), tq, qkv_w.codes, qkv_w.scale, qkv_w.bias)
    q_width, kv_width = s.heads * s.head_dim, s.kv_heads * s.head_dim
    if s.rope or s.q_norm is not None:
        cos, sin = extra.rope if s.rope else (None, None)
        for offset, heads, n in ((0, s.heads, s.q_norm), (q_width, s.kv_heads, s.k_norm)):
            native.heads_norm_rope(qkv, batch, length, offset, heads, s.head_dim,
                                   None if n is None else n.weight.detach(), 0.0 if n is None else n.eps, cos, sin)
    if extra.cache is not None:  # keys after rotary, values: [batch, kv heads, length, head dim]
        cache, idx = extra.cache
        kv = qkv.view(batch, length, -1)[..., q_width:].view(batch, length, 2, s.kv_heads, s.head_dim)
        cache.update(kv[:, :, 0].transpose(1, 2).clone(), kv[:, :, 1].transpose(1, 2).clone(), idx)
    context = native.attention(qkv, batch, length, s.heads, s.head_dim, (0, q_width, q_width + kv_width), mask,
                               s.scaling, kv_heads=s.kv_heads, bias=extra.bias, causal=s.causal,
                               out=_workspace.get("g_context", m * q_width, torch.float32).view(m, q_width))

    tq = native.quantize_rows(context, out_w.outliers, reuse_buffer=True)
    acc = _gemm(tq.q, out_w, "g_out")
    h = _workspace.get("g_h", m * width, torch.float32).view(m, width)
    if s.norm_first:  # h = x + attention; the feed-forward reads norm2(h)
        tq = native.residual_norm(acc, None, _rescale(tq, out_w), residual=x, stream=h,
                                  quantize_outliers=in_w.outliers, **_norm_args(s.mlp_norm))
    else:  # h = norm1(x + attention)
        tq = native.residual_norm(acc, None, _rescale(tq, out_w), residual=x, y=h, quantize_outliers=in_w.outliers,
                                  **_norm_args(s.attn_norm))
    acc = _gemm(tq.q, in_w, "g_in")
    tq = native.rescale_act_quantize(acc, _rescale(tq, in_w), s.activation, s.glu, last_w.outliers)
    acc = _gemm(tq.q, last_w, "g_out")
    y = torch.empty((m, width), dtype=torch.float32)
    native.residual_norm(acc, None, _rescale(tq, last_w), residual=h, y=y,
                         **({} if s.norm_first else _norm_args(s.mlp_norm)))
    return y.view(batch, length, width)
