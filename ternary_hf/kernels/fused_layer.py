"""Fused CPU forward of BERT-family encoder layers made of packed `TernaryLinear`s (`cpu_int8` numerics).

Per layer and forward, instead of ~60 eager ops and five separate int8 linears, one native call
(`native.tq_encoder_layer`):

    x --quantize--> GEMM [query|key|value] --rescale--> attention --quantize--> GEMM (attention output)
      --rescale + residual + LayerNorm + quantize (one pass)--> GEMM (intermediate)
      --rescale + GELU + quantize (one pass)--> GEMM (output) --rescale + residual + LayerNorm--> y

The three projections read the same input, so it is quantized once and multiplied by the concatenated codes
(one GEMM, bit-identical to three). The GEMMs are `native.py`'s, on 2-bit weight panels built once from the
layer's codes. Intermediate results live in per-thread buffers reused across calls (fresh multi-megabyte
tensors cost page faults on every forward); only the layer output is a new tensor. The linear numerics are
exactly `cpu_int8`'s; attention, LayerNorm and GELU agree with torch to float rounding (so an activation
rounding can flip now and then: embeddings agree to cosine > 0.9999). A layer whose activation is not the
exact (erf) GELU runs the same steps one native / oneDNN call at a time (`run_fused(..., whole_layer=False)`,
bit-identical to the single call where both apply).

It runs only where it computes what the layer would: inference (eval mode, no autograd), float32 CPU input,
the layer's backend resolving to `cpu_int8`, a self-attention mask of the usual forms, no attention
weights requested, no hooks on the modules it bypasses, not under `torch.jit` tracing or `torch.compile`.
Anything else calls the layer's own forward. `fused_layers(False)` turns it off for a block of code.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import operator
import threading
import types
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from . import native
from .int8 import Int8State
from .registry import _OVERRIDE, get_backend, kernel_state

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("ternary_hf_fused_layers", default=True)
_PLAN_ATTR = "_ternary_fused_plan"

# Self-attention classes whose forward is BERT's (q/k/v projections, scaled softmax attention, no relative
# positions): the fused forward reproduces exactly that.
SELF_ATTENTION_CLASSES = frozenset({
    "BertSelfAttention", "RobertaSelfAttention", "XLMRobertaSelfAttention", "CamembertSelfAttention",
    "ElectraSelfAttention",
})
_FUSABLE_BACKENDS = ("auto", "cpu_int8")


@contextlib.contextmanager
def switch(flag: contextvars.ContextVar[bool], enabled: bool) -> Iterator[None]:
    """Set a context-local on/off flag for the duration of the block."""
    token = flag.set(bool(enabled))
    try:
        yield
    finally:
        flag.reset(token)


def fused_layers(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Allow (default) or forbid the fused layer forward inside the block (context-local)."""
    return switch(_ENABLED, enabled)


class _Workspace(threading.local):
    buffers: dict[str, torch.Tensor]

    def __init__(self) -> None:
        self.buffers = {}

    def get(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            with torch.inference_mode(False):  # an inference tensor could not be written outside inference mode
                buf = self.buffers[name] = torch.empty(numel, dtype=dtype)
        return buf[:numel]


_workspace = _Workspace()


@dataclass
class _Plan:
    """What the fused forward of one encoder layer reads (modules, not copies: weights stay the layer's)."""

    original_forward: Any
    projections: tuple[nn.Module, nn.Module, nn.Module]  # query, key, value
    attention_output: nn.Module
    attention_norm: nn.LayerNorm
    intermediate: nn.Module
    activation: nn.Module
    output: nn.Module
    output_norm: nn.LayerNorm
    heads: int
    head_dim: int
    scaling: float
    bypassed: tuple[nn.Module, ...]  # modules whose forward the fused path skips (hooks on them disable it)
    exact_gelu: bool
    structure: tuple[tuple[nn.Module, str, nn.Module], ...]  # (parent, name, child) as planned
    hook_dicts: tuple[dict, ...]  # the bypassed modules' hook dicts (mutated in place, never replaced)
    recorder_hooks: int  # how many hooks there were when all of them were transformers' output recorders
    numerics: tuple = ()  # `_NUMERICS` of each linear when planned (see `dispatch_unchanged`)
    _states: tuple[Int8State, ...] | None = None  # query|key|value fused, attention output, intermediate, output
    _sources: tuple = ()
    _native: native.TqLayer | None = None  # the whole layer for `tq_encoder_layer` (exact GELU only)
    _keep: tuple = ()  # (the states it was built from, tensors `_native` points into)

    @property
    def linears(self) -> tuple[nn.Module, ...]:
        return (*self.projections, self.attention_output, self.intermediate, self.output)

    def dispatches_here(self, override: str | None) -> bool:
        """See `dispatch_unchanged`."""
        return dispatch_unchanged(self.linears, self.numerics, override)

    def wants_grad(self) -> bool:
        """Whether a float parameter the fused path uses (it computes without autograd) requires grad."""
        norms = (self.attention_norm, self.output_norm)
        return (any(n.weight.requires_grad or n.bias.requires_grad for n in norms)
                or any(m.bias is not None and m.bias.requires_grad for m in self.linears))

    def _current_sources(self) -> tuple:
        return tuple((t, t._version) if t is not None else None
                     for m in self.linears for t in (m.weight, m.weight_scale, m.bias))

    def states(self) -> tuple[Int8State, ...]:
        """Kernel states of the fused layer, rebuilt when any linear's weights were replaced or edited
        (the same rule as `registry.kernel_state`, checked for the whole layer at once)."""
        sources = self._current_sources()
        if self._states is not None and all(
            a is b or (a is not None and b is not None and a[0] is b[0] and a[1] == b[1])
            for a, b in zip(sources, self._sources)
        ):
            return self._states
        backend, cpu = get_backend("cpu_int8"), torch.device("cpu")
        parts = [kernel_state(m, backend, cpu, torch.float32) for m in self.linears]
        qkv = parts[:3]
        bias = [p.bias if p.bias is not None else torch.zeros_like(p.scales[0]) for p in qkv]
        fused = Int8State(torch.cat([p.codes for p in qkv], dim=1).contiguous(), qkv[0].group_size,
                          (torch.cat([p.scales[0] for p in qkv]),), torch.cat(bias))
        self._states, self._sources = (fused, *parts[3:]), sources
        return self._states

    def native_layer(self) -> native.TqLayer | None:
        """The layer as one native call reads it (current weights), or None for a non-exact GELU."""
        states = self.states()
        if self.exact_gelu and (self._native is None or self._keep[0] is not states):
            self._native = self._native_layer()
        return self._native

    def __deepcopy__(self, memo: dict) -> "_Plan":
        return copy_plan(self, memo, ("_native", "_keep"))

    def _native_layer(self) -> native.TqLayer:
        states = self._states
        inputs = (self.projections[0], self.attention_output, self.intermediate, self.output)
        panels = tuple(native.pack_gemm_weights(st.codes) for st in states)
        linears = [native.linear_struct(st.codes, p, st.scales[0], st.bias, m.activation_outliers)
                   for st, p, m in zip(states, panels, inputs)]
        n1, n2 = self.attention_norm, self.output_norm
        norms = tuple(t.detach() for t in (n1.weight, n1.bias, n2.weight, n2.bias))
        self._keep = (states, panels, norms)
        return native.TqLayer(*linears, *(t.data_ptr() for t in norms), n1.eps, n2.eps, self.scaling, self.heads,
                              self.head_dim)

    def rewired(self) -> bool:
        """Whether a planned submodule was replaced since (e.g. PEFT wrapping a projection with an adapter)."""
        return any(parent._modules.get(name) is not child for parent, name, child in self.structure)

    def hooked(self) -> bool:
        """Whether a hook (other than transformers' output recorders) sits on a bypassed module."""
        total = sum(len(d) for d in self.hook_dicts)
        if total == self.recorder_hooks:
            return False
        if any(_has_hooks(m) for m in self.bypassed):
            return True
        self.recorder_hooks = total  # transformers installs its recorders on the first forward
        return False


def copy_plan(plan: Any, memo: dict, skip: tuple[str, ...]) -> Any:
    """A deep copy of a plan dataclass with the `skip` fields (native structs: raw pointers into the original's
    tensors, which cannot be copied) back at their defaults, to be rebuilt from the copy's own tensors."""
    new = object.__new__(type(plan))
    memo[id(plan)] = new
    for f in dataclasses.fields(plan):
        setattr(new, f.name, f.default if f.name in skip else copy.deepcopy(getattr(plan, f.name), memo))
    return new


_NUMERICS = operator.attrgetter("activation_quant", "activation_outliers")
_BACKEND = operator.attrgetter("backend")
_FUSABLE = frozenset(_FUSABLE_BACKENDS)


def dispatch_unchanged(linears: tuple[nn.Module, ...], numerics: tuple, override: str | None) -> bool:
    """Whether the linears still ask for what their native structs compute: a fusable backend (unless `override`
    forces one) and the activation quantization they were planned with (`numerics`); a changed
    `activation_quant` / `activation_outliers` sends them back to the modules' own forwards. Runs every forward:
    map/attrgetter keep the loops in C."""
    if override is None and not _FUSABLE.issuperset(map(_BACKEND, linears)):
        return False
    return tuple(map(_NUMERICS, linears)) == numerics


def _is_packed_int8(m: Any) -> bool:
    return (getattr(m, "is_packed", False) and hasattr(m, "weight_scale")
            and getattr(m, "activation_quant", None) == "per_token_int8" and m.granularity != "per_group")


def _plan_for(layer: nn.Module) -> _Plan | None:
    """A plan when `layer` is a BERT-family encoder layer whose linears are all packed int8-activation
    `TernaryLinear`s; None otherwise (the layer keeps its own forward)."""
    attention = getattr(layer, "attention", None)
    self_attn = getattr(attention, "self", None)
    if self_attn is None or type(self_attn).__name__ not in SELF_ATTENTION_CLASSES:
        return None
    if getattr(layer, "is_decoder", False) or getattr(layer, "add_cross_attention", False):
        return None
    if getattr(layer, "chunk_size_feed_forward", 0) or getattr(self_attn, "is_causal", False):
        return None
    if getattr(getattr(self_attn, "config", None), "position_embedding_type", "absolute") != "absolute":
        return None
    try:
        q, k, v = self_attn.query, self_attn.key, self_attn.value
        attn_out, norm1 = attention.output.dense, attention.output.LayerNorm
        inter, act = layer.intermediate.dense, layer.intermediate.intermediate_act_fn
        out, norm2 = layer.output.dense, layer.output.LayerNorm
    except AttributeError:
        return None
    linears = (q, k, v, attn_out, inter, out)
    if not all(_is_packed_int8(m) for m in linears):
        return None
    if len({(m.in_features, m.activation_outliers) for m in (q, k, v)}) != 1:
        return None
    for norm in (norm1, norm2):
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
            return None
    heads, head_dim = self_attn.num_attention_heads, self_attn.attention_head_size
    if q.out_features != heads * head_dim or k.out_features != q.out_features or v.out_features != q.out_features:
        return None
    if attn_out.in_features != q.out_features or inter.in_features != attn_out.out_features:
        return None
    if not isinstance(act, nn.Module):
        return None
    gelu = type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is nn.functional.gelu
    bypassed = (attention, self_attn, attention.output, norm1, layer.intermediate, act, layer.output, norm2, *linears)
    scaling = getattr(self_attn, "scaling", head_dim ** -0.5)
    structure = (
        (layer, "attention", attention), (attention, "self", self_attn), (self_attn, "query", q),
        (self_attn, "key", k), (self_attn, "value", v), (attention, "output", attention.output),
        (attention.output, "dense", attn_out), (attention.output, "LayerNorm", norm1),
        (layer, "intermediate", layer.intermediate), (layer.intermediate, "dense", inter),
        (layer.intermediate, "intermediate_act_fn", act), (layer, "output", layer.output),
        (layer.output, "dense", out), (layer.output, "LayerNorm", norm2),
    )
    hook_dicts = tuple(d for m in bypassed for d in (m._forward_pre_hooks, m._forward_hooks))
    numerics = tuple(map(_NUMERICS, linears))
    return _Plan(layer.forward, (q, k, v), attn_out, norm1, inter, act, out, norm2, heads, head_dim, float(scaling),
                 bypassed, gelu, structure, hook_dicts, 0, numerics)


def install_layer_plans(model: nn.Module) -> int:
    """Give every fusable encoder layer of `model` the fused CPU forward (idempotent; the own forwards still run
    whenever the fused ones do not apply). Returns the number of fused layers."""
    return install_forward(model, _PLAN_ATTR, _plan_for, _fused_forward)


def install_forward(model: nn.Module, attr: str, plan_for: Any, forward: Any) -> int:
    """For every module of `model` for which `plan_for(module)` gives a plan: keep the plan in
    `module.__dict__[attr]` and make `forward` the module's forward (idempotent). Returns how many have one."""
    n = 0
    for module in model.modules():
        if attr in module.__dict__:
            n += 1
            continue
        plan = plan_for(module)
        if plan is not None:
            module.__dict__[attr] = plan
            module.forward = types.MethodType(forward, module)
            n += 1
    return n


def uninstall_forward(model: nn.Module, attr: str) -> int:
    """Undo `install_forward`: the modules' own forwards again. Returns how many were restored."""
    n = 0
    for module in model.modules():
        if module.__dict__.pop(attr, None) is not None:
            module.__dict__.pop("forward", None)
            n += 1
    return n


def uninstall_layer_plans(model: nn.Module) -> int:
    """Restore the original forward of every fused layer. Returns how many."""
    return uninstall_forward(model, _PLAN_ATTR)


def fused_layer_count(model: nn.Module) -> int:
    return sum(_PLAN_ATTR in m.__dict__ for m in model.modules())


# ---------------------------------------------------------------- when it applies

try:
    from transformers.utils.output_capturing import _active_collector as _COLLECTOR
except ImportError:  # another transformers layout: attention weights are then requested by the flag only
    _COLLECTOR = None


def _output_collector() -> dict | None:
    return _COLLECTOR.get() if _COLLECTOR is not None else None


def _has_hooks(m: nn.Module) -> bool:
    """Hooks other than transformers' output recorders (which only act on attention weights here)."""
    if m._forward_pre_hooks:
        return True
    return any(getattr(h, "__name__", "") != "output_capturing_hook" for h in m._forward_hooks.values())


def _additive_mask(mask: torch.Tensor | None, batch: int, length: int) -> tuple[bool, torch.Tensor | None]:
    """`(ok, mask)`: the attention mask as an additive float32 `[batch, length, length]` view, or not ok."""
    if mask is None:
        return True, None
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            return False, None  # per-head masks
        mask = mask[:, 0]
    elif mask.dim() == 2:
        mask = mask[:, None, :]
    if mask.dim() != 3:
        return False, None
    try:
        mask = mask.expand(batch, length, length)
    except RuntimeError:
        return False, None
    mask = native.kernel_mask(mask)
    return True, mask


def _applies(layer: nn.Module, plan: _Plan, hidden: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    if not _ENABLED.get() or layer.training or native.native_lib() is None:
        return False
    if hidden.device.type != "cpu" or hidden.dtype != torch.float32 or hidden.dim() != 3 or not hidden.numel():
        return False
    if hidden.shape[-1] != plan.projections[0].in_features:
        return False  # let the layer's own forward raise its usual error
    if plan.attention_norm.weight.dtype != torch.float32 or plan.output_norm.weight.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (hidden.requires_grad or plan.wants_grad()):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if any(a is not None for a in args) or kwargs.get("encoder_hidden_states") is not None:
        return False
    if kwargs.get("encoder_attention_mask") is not None or kwargs.get("past_key_values") is not None:
        return False
    if kwargs.get("output_attentions"):
        return False
    collector = _output_collector()
    if collector is not None and ("attentions" in collector or "cross_attentions" in collector):
        return False
    override = _OVERRIDE.get()
    if override is not None and override not in _FUSABLE_BACKENDS:
        return False
    if not plan.dispatches_here(override):
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    return not (plan.rewired() or plan.hooked())


def _fused_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   *args: Any, **kwargs: Any) -> torch.Tensor:
    plan: _Plan = self.__dict__[_PLAN_ATTR]
    if _applies(self, plan, hidden_states, args, kwargs):
        ok, mask = _additive_mask(attention_mask, hidden_states.shape[0], hidden_states.shape[1])
        if ok:
            return run_fused(plan, hidden_states, mask)
    return plan.original_forward(hidden_states, attention_mask, *args, **kwargs)


# ---------------------------------------------------------------- the forward

def _quantized_product(x: torch.Tensor, state: Int8State, outliers: int, out: torch.Tensor | None):
    """Per-token int8 quantization of `x` `[M, K]` and the exact int32 product with the codes."""
    tq = native.quantize_rows(x, outliers, reuse_buffer=True)  # read by the GEMM only
    acc = torch._int_mm(tq.q, state.codes) if out is None else torch._int_mm(tq.q, state.codes, out=out)
    return acc, tq


def _workspace_bytes(nbytes: int) -> torch.Tensor:
    return _workspace.get("layer", nbytes, torch.uint8)


def run_fused(plan: _Plan, hidden: torch.Tensor, mask: torch.Tensor | None, whole_layer: bool = True) -> torch.Tensor:
    """The layer's forward on float32 `[batch, length, hidden]` (see the module docstring): one native call
    (`tq_encoder_layer`) for the exact-GELU layers of BERT-family models, otherwise (or with
    `whole_layer=False`) one native or oneDNN call per step."""
    batch, length, width = hidden.shape
    m = batch * length
    x = hidden.reshape(m, width)
    if not x.is_contiguous():
        x = x.contiguous()
    layer = plan.native_layer() if whole_layer else None
    if layer is not None:
        return native.encoder_layer(layer, x, batch, length, mask, _workspace_bytes).view(batch, length, width)
    inner = plan.heads * plan.head_dim
    ws = _workspace
    qkv_state, out_state, inter_state, last_state = plan.states()
    outliers = plan.projections[0].activation_outliers
    acc, tq = _quantized_product(x, qkv_state, outliers, ws.get("qkv", m * 3 * inner, torch.int32).view(m, 3 * inner))
    qkv = native.rescale_(acc, tq, qkv_state.codes, qkv_state.scales[0], qkv_state.bias)
    context = native.attention(qkv, batch, length, plan.heads, plan.head_dim, (0, inner, 2 * inner), mask,
                               plan.scaling, out=ws.get("context", m * inner, torch.float32).view(m, inner))

    lin, norm, st = plan.attention_output, plan.attention_norm, out_state
    n = lin.out_features
    acc, tq = _quantized_product(context, st, lin.activation_outliers, ws.get("attention", m * n, torch.int32).view(m, n))
    h = native.rescale_add_layernorm_(acc, tq, st.codes, st.scales[0], st.bias, x, norm.weight, norm.bias, norm.eps)

    lin, st = plan.intermediate, inter_state
    n = lin.out_features
    acc, tq = _quantized_product(h, st, lin.activation_outliers, ws.get("intermediate", m * n, torch.int32).view(m, n))
    lin, norm = plan.output, plan.output_norm
    if plan.exact_gelu:  # rescale, GELU and the output layer's quantization in one pass
        tq = native.rescale_gelu_quantize(acc, tq, st.codes, st.scales[0], st.bias, lin.activation_outliers)
        st = last_state
        acc = torch._int_mm(tq.q, st.codes)  # a fresh tensor: the layer's output
    else:
        a = plan.activation(native.rescale_(acc, tq, st.codes, st.scales[0], st.bias))
        st = last_state
        acc, tq = _quantized_product(a.contiguous(), st, lin.activation_outliers, None)  # fresh: the layer's output
    y = native.rescale_add_layernorm_(acc, tq, st.codes, st.scales[0], st.bias, h, norm.weight, norm.bias, norm.eps)
    return y.view(batch, length, lin.out_features)
