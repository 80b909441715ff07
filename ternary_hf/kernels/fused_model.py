"""Fused CPU forward of a whole BERT model: embeddings, every encoder layer and the pooler in two native calls.

At batch 1 a MiniLM forward is ~1.5 ms, and a third of it was Python around the layers: transformers'
embedding module, mask building, output-recording machinery, the pooler's five int8 steps, and one
`_fused_forward` check per layer. Here the model's forward becomes

    tq_bert_encoder: ids -> word + position + type rows -> LayerNorm -> tq_encoder_layer x L  (one call)
    tq_linear_rows:  first token of each sequence -> int8 linear -> tanh                      (the pooler)

with the same layer numerics as `fused_layer.py` (embeddings' LayerNorm in C agrees with torch's to float
rounding). It runs only where it computes what the model would, and otherwise calls the model's own forward:
`BertModel` in inference (eval, no autograd on its parameters), `input_ids` (not `inputs_embeds`, not
`position_ids`), a 2-D attention mask or none, no hidden states / attention weights requested, every encoder
layer fusable (`fused_layer._applies` minus what the model-level checks already cover), no hooks on the
modules it bypasses. `whole_model(False)` keeps the per-layer fused path (one native call per layer).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import ctypes
import functools
import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import native
from .fused_layer import (_ENABLED, _FUSABLE_BACKENDS, _NUMERICS, _PLAN_ATTR, _Plan, _has_hooks, _output_collector,
                          _is_packed_int8, _workspace, copy_plan, dispatch_unchanged, install_forward, switch,
                          uninstall_forward)
from .registry import _OVERRIDE, get_backend, kernel_state

MODEL_CLASSES = frozenset({"BertModel"})
_MODEL_ATTR = "_ternary_fused_model"
_WHOLE_MODEL: contextvars.ContextVar[bool] = contextvars.ContextVar("ternary_hf_whole_model", default=True)
_VERSION = operator.attrgetter("_version")
_QUIET_KWARGS = frozenset({"return_dict", "output_attentions", "output_hidden_states", "use_cache"})


def whole_model(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Allow (default) or forbid the whole-model native forward inside the block; the fused layers still run."""
    return switch(_WHOLE_MODEL, enabled)


@dataclass
class _ModelPlan:
    original_forward: Any
    model: nn.Module
    layers: tuple[nn.Module, ...]
    embeddings: nn.Module
    pooler: nn.Module | None
    bypassed: tuple[nn.Module, ...]  # model-level modules whose hooks disable the whole-model path
    _layer_array: Any = None
    _pooler: tuple | None = None  # (TqLinear, kept tensors)
    _linears: tuple = ()  # every TernaryLinear the native call runs, pooler's included: flat for the per-call check
    _numerics: tuple = ()  # theirs as planned (see `dispatch_unchanged`)
    _tables: Any = None  # TqEmbeddings
    _tables_ref: Any = None
    _workspace_sizes: dict | None = None
    _watch: tuple = ()  # (owner dicts, names, tensors) of every tensor the native call reads
    _params: tuple = ()  # the parameters among them (`.to()` swaps their storage: data_ptr tells)
    _versions: tuple | None = None
    _structure: tuple = ()  # (parent._modules, name, child) of every module on the path
    _hook_dicts: tuple = ()
    _hook_total: int = -1  # hook count last seen with only transformers' output recorders

    def layer_plans(self) -> tuple[_Plan, ...]:
        return tuple(layer.__dict__[_PLAN_ATTR] for layer in self.layers)

    def __deepcopy__(self, memo: dict) -> "_ModelPlan":
        keep = ("original_forward", "model", "layers", "embeddings", "pooler", "bypassed")
        return copy_plan(self, memo, tuple(f.name for f in dataclasses.fields(self) if f.name not in keep))

    def current(self) -> bool:
        """Whether the native structs still describe the model: the same tensors with the same storage (not
        converted by `.to()`), not edited in place. (map/operator keep this loop in C: it runs every forward.)"""
        if self._versions is None:
            return False
        dicts, names, tensors = self._watch
        if not all(map(operator.is_, map(dict.get, dicts, names), tensors)):
            return False  # a buffer replaced (`.to()` replaces buffers, but converts parameters in place)
        return (list(map(_VERSION, tensors)) == self._versions[0]
                and list(map(torch.Tensor.data_ptr, self._params)) == self._versions[1])

    def build(self) -> Any:
        """`TqLayer[n]` (and the pooler's `TqLinear`) of the current weights; None if the model cannot run
        natively (a layer without a native form, a tensor that is not float32 on the CPU)."""
        plans = self.layer_plans()
        native_pooler = _pooler_is_native(self.pooler)
        emb = self.embeddings
        owners: list[nn.Module] = [m for p in plans for m in (*p.linears, p.attention_norm, p.output_norm)]
        owners += [emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings, emb.LayerNorm]
        if native_pooler:
            owners.append(self.pooler.dense)
        watch = []
        for m in owners:
            for store in (m._parameters, m._buffers):
                watch += [(store, name, t) for name, t in store.items() if t is not None]
        if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32) for _, _, t in watch):
            return None  # checked first: nothing is packed for a model that cannot run natively
        structs = tuple(p.native_layer() for p in plans)
        if any(s is None for s in structs):
            return None
        self._layer_array = (native.TqLayer * len(structs))(*structs)
        self._pooler = self._pooler_linear() if native_pooler else None
        self._linears = tuple(m for p in plans for m in p.linears) + ((self.pooler.dense,) if native_pooler else ())
        self._numerics = tuple(n for p in plans for n in p.numerics) + (
            (_NUMERICS(self.pooler.dense),) if native_pooler else ())
        # Quantized position / token-type tables (int8 by default) are tiny: the kernels read a float copy of them.
        p, t = _float_table(emb.position_embeddings), _float_table(emb.token_type_embeddings)
        self._small_tables = (p, t)
        words, norm = emb.word_embeddings, emb.LayerNorm
        table = type(words) is nn.Embedding and _float32_cpu(words.weight)
        self._tables = native.TqEmbeddings(
            words.weight.data_ptr() if table else None, p.data_ptr(), t.data_ptr(), norm.weight.data_ptr(),
            norm.bias.data_ptr(), norm.eps, words.num_embeddings if table else 0, p.shape[0], t.shape[0], p.shape[1])
        self._tables_ref = ctypes.byref(self._tables)
        self._workspace_sizes = {}
        self._watch = tuple(zip(*watch))  # (owner dicts, names, tensors)
        self._params = tuple(t for t in self._watch[2] if isinstance(t, nn.Parameter))
        self._versions = (list(map(_VERSION, self._watch[2])), list(map(torch.Tensor.data_ptr, self._params)))
        structure = [(parent._modules, name, child) for p in plans for parent, name, child in p.structure]
        structure += [(self.model._modules, "embeddings", emb)]
        structure += [(emb._modules, n, c) for n, c in emb._modules.items()]
        structure += [(self.model.encoder._modules, "layer", self.model.encoder.layer)]
        structure += [(self.model.encoder.layer._modules, n, c) for n, c in self.model.encoder.layer._modules.items()]
        if self.pooler is not None:
            structure += [(self.model._modules, "pooler", self.pooler)]
            structure += [(self.pooler._modules, n, c) for n, c in self.pooler._modules.items()]
        self._structure = tuple(structure)
        self._hook_dicts = tuple(d for p in plans for d in p.hook_dicts) + tuple(
            d for m in self.bypassed for d in (m._forward_pre_hooks, m._forward_hooks))
        return self._layer_array

    def pristine(self) -> bool:
        """No module on the path replaced and no hook on one (transformers' output recorders aside)."""
        if any(parent.get(name) is not child for parent, name, child in self._structure):
            return False
        total = sum(map(len, self._hook_dicts))
        if total == self._hook_total:
            return True
        if any(_has_hooks(m) for m in self.bypassed) or any(p.hooked() for p in self.layer_plans()):
            return False
        self._hook_total = total
        return True

    def _pooler_linear(self) -> tuple:
        dense = self.pooler.dense
        st = kernel_state(dense, get_backend("cpu_int8"), torch.device("cpu"), torch.float32)
        panels = native.pack_gemm_weights(st.codes)
        return native.linear_struct(st.codes, panels, st.scales[0], st.bias, dense.activation_outliers), (st, panels)


def _pooler_is_native(pooler: nn.Module | None) -> bool:
    return (pooler is not None and type(pooler).__name__ == "BertPooler" and _is_packed_int8(pooler.dense)
            and isinstance(pooler.activation, nn.Tanh))


def _float_table(table: nn.Module | None) -> torch.Tensor | None:
    """The float32 weight of an `nn.Embedding`, or of a quantized table (anything with `dequantized_weight`, e.g.
    `QuantizedEmbedding`: dequantizing the whole table gives exactly the rows its lookups return); else None."""
    if type(table) is nn.Embedding:
        return table.weight
    if table is not None and callable(getattr(table, "dequantized_weight", None)):
        return table.dequantized_weight(torch.float32).contiguous()
    return None


def _model_plan(model: nn.Module) -> _ModelPlan | None:
    if type(model).__name__ not in MODEL_CLASSES or getattr(model.config, "is_decoder", False):
        return None
    emb, encoder = getattr(model, "embeddings", None), getattr(model, "encoder", None)
    if type(emb).__name__ != "BertEmbeddings" or encoder is None:
        return None
    if getattr(model.config, "position_embedding_type", "absolute") != "absolute":
        return None
    for name in ("position_embeddings", "token_type_embeddings"):
        if _float_table(getattr(emb, name, None)) is None:
            return None
    if not isinstance(getattr(emb, "LayerNorm", None), nn.LayerNorm) or emb.LayerNorm.weight is None:
        return None
    layers = tuple(getattr(encoder, "layer", ()))
    if not layers or any(_PLAN_ATTR not in layer.__dict__ or not layer.__dict__[_PLAN_ATTR].exact_gelu
                         for layer in layers):
        return None
    pooler = getattr(model, "pooler", None)
    bypassed = (emb, *emb.children(), encoder)
    if pooler is not None:
        bypassed += (pooler, *pooler.children())
    return _ModelPlan(model.forward, model, layers, emb, pooler, bypassed)


def install_fused_model(model: nn.Module) -> int:
    """Give every BERT model inside `model` whose layers are all fused the whole-model forward. Returns how many."""
    return install_forward(model, _MODEL_ATTR, _model_plan, _model_forward)


def uninstall_fused_model(model: nn.Module) -> int:
    return uninstall_forward(model, _MODEL_ATTR)


def fused_model_count(model: nn.Module) -> int:
    return sum(_MODEL_ATTR in m.__dict__ for m in model.modules())


# ---------------------------------------------------------------- when it applies

def _float32_cpu(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu") for t in tensors)


def _applies(model: nn.Module, plan: _ModelPlan, input_ids: Any, attention_mask: Any, token_type_ids: Any,
             kwargs: dict) -> bool:
    if not (_ENABLED.get() and _WHOLE_MODEL.get()) or model.training or native.native_lib() is None:
        return False
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.device.type != "cpu":
        return False
    if input_ids.dtype not in (torch.int64, torch.int32) or not input_ids.numel():
        return False
    for extra in (attention_mask, token_type_ids):
        if extra is not None and (not isinstance(extra, torch.Tensor) or extra.shape != input_ids.shape
                                  or extra.device.type != "cpu" or extra.is_floating_point()):
            return False
    if any(k not in _QUIET_KWARGS and v is not None for k, v in kwargs.items()):
        return False
    config = model.config
    if kwargs.get("return_dict") is False or (kwargs.get("return_dict") is None and not config.return_dict):
        return False
    for flag in ("output_attentions", "output_hidden_states"):
        if kwargs.get(flag) or (kwargs.get(flag) is None and getattr(config, flag, False)):
            return False
    if _output_collector() is not None:
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    override = _OVERRIDE.get()
    if override is not None and override not in _FUSABLE_BACKENDS:
        return False
    if not plan.current() and plan.build() is None:
        return False
    if not plan.pristine():
        return False
    emb = plan.embeddings
    if input_ids.shape[1] > emb.position_embeddings.num_embeddings:
        return False
    if any(layer.training for layer in plan.layers) or (plan.pooler is not None and plan.pooler.training):
        return False
    if not dispatch_unchanged(plan._linears, plan._numerics, override):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in plan._watch[2]):
        return False
    return True


def _model_forward(self: nn.Module, input_ids: Any = None, attention_mask: Any = None, token_type_ids: Any = None,
                   *args: Any, **kwargs: Any) -> Any:
    plan: _ModelPlan = self.__dict__[_MODEL_ATTR]
    if not args and _applies(self, plan, input_ids, attention_mask, token_type_ids, kwargs):
        out = run_model(plan, input_ids, attention_mask, token_type_ids)
        if out is not None:
            return out
    return plan.original_forward(input_ids, attention_mask, token_type_ids, *args, **kwargs)


# ---------------------------------------------------------------- the forward

def _int64(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    t = t if t.dtype == torch.int64 else t.long()
    return t if t.is_contiguous() else t.contiguous()


def run_model(plan: _ModelPlan, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              token_type_ids: torch.Tensor | None) -> Any:
    """The model's output, or None when the native call refused the input (an id out of range: the model's own
    forward then raises its usual error)."""
    lib = native.native_lib()
    ids, mask, types_ = _int64(input_ids), _int64(attention_mask), _int64(token_type_ids)
    batch, length = ids.shape
    rows = None
    if plan._tables.words is None:  # a word embedding module other than a float32 table: its own lookup
        rows = plan.embeddings.word_embeddings(ids).float().contiguous()
    threads = torch.get_num_threads()
    n = len(plan.layers)
    key = (batch, length, threads)
    size = plan._workspace_sizes.get(key)
    if size is None:
        size = plan._workspace_sizes[key] = lib.tq_bert_workspace_bytes(plan._layer_array, n, batch, length, threads)
    buf = _workspace.get("model", size, torch.uint8)
    hidden = torch.empty((batch, length, plan._tables.hidden), dtype=torch.float32)
    rc = lib.tq_bert_encoder(
        plan._tables_ref, plan._layer_array, n, ids.data_ptr(), rows.data_ptr() if rows is not None else None,
        types_.data_ptr() if types_ is not None else None, mask.data_ptr() if mask is not None else None,
        batch, length, hidden.data_ptr(), buf.data_ptr(), threads,
    )
    if rc != 0:
        return None
    pooled = None
    if plan._pooler is not None:
        linear = plan._pooler[0]
        pooled = torch.empty((batch, linear.N), dtype=torch.float32)
        lib.tq_linear_rows(ctypes.byref(linear), hidden.data_ptr(), batch, length * hidden.shape[2], pooled.data_ptr(), 1)
    elif plan.pooler is not None:
        pooled = plan.pooler(hidden)
    return _output_class()(last_hidden_state=hidden, pooler_output=pooled)


@functools.cache
def _output_class() -> type:
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    return BaseModelOutputWithPoolingAndCrossAttentions
