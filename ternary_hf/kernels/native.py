"""The CPU kernels in C, compiled on first use with the system C compiler.

Two layers of them:
* Passes around oneDNN's int8 GEMM (`torch._int_mm`) for the per-linear `cpu_int8` backend: per-token
  quantization (absmax, divide, round, clamp, cast: five eager kernels and temporaries) and the rescale of
  the int32 result (cast, two multiplies, bias: four), each one OpenMP-parallel pass.
* Whole calls: a ternary GEMM on 2-bit weight panels (`tq_gemm`), one BERT encoder layer
  (`tq_encoder_layer`: quantize, GEMMs, attention, LayerNorm, GELU), and a BERT model's embeddings + layers
  (`tq_bert_encoder`) and pooler (`tq_linear_rows`), run on a small worker pool of their own.

The quantization and rescale operations are exactly those of the torch reference (IEEE division,
round-half-even, separate roundings: compiled with `-ffp-contract=off`, no fast-math), so the linears are
bit-identical to `reference`; attention, LayerNorm and GELU agree with torch to float rounding. The library
links the same `libgomp.so.1` soname torch already loaded, so it shares torch's OpenMP runtime, and the
thread count is passed from `torch.get_num_threads()` on every call.

The C sources are `csrc/*.c|h` (package data); `build.py` compiles and caches them (and validates the cached
library before every load). Why C through ctypes rather than a torch C++ extension: it needs no torch headers
(builds in ~2 s, no ninja) and nothing at install time. Without a working C compiler (or with
TERNARY_HF_NATIVE=0) the `cpu_int8` backend keeps working with the same numerics through eager torch ops (and
nothing is fused).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Callable

import torch

from .build import ensure_library, native_enabled
from .token_quant import TokenQuant

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failure: str | None = None


def load_library(march: str | None = None) -> ctypes.CDLL:
    """Compile (once; cached and validated by `build.py`) and load the kernels for `-march=march` (default:
    `TERNARY_HF_MARCH`, else this CPU). Raises RuntimeError when there is no working C compiler."""
    path = ensure_library(march)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:  # matches its record yet will not load (e.g. built by another libc): build it afresh once
        lib = ctypes.CDLL(str(ensure_library(march, rebuild=True)))
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.tq_quantize_rows.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, cint, cint]
    lib.tq_quantize_rows.restype = None
    lib.tq_rescale.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint, ptr, cint]
    lib.tq_rescale.restype = None
    f32 = ctypes.c_float
    lib.tq_rescale_add_layernorm.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint, ptr, ptr, ptr, f32,
                                             ptr, cint]
    lib.tq_rescale_add_layernorm.restype = None
    lib.tq_attention.argtypes = [ptr, i64, i64, i64, i64, i64, i64, i64, i64, i64, ctypes.POINTER(TqAttnMask), f32,
                                 ptr, cint]
    lib.tq_attention.restype = None
    lib.tq_rescale_gelu_quantize.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint, ptr, ptr, ptr, ptr,
                                             cint]
    lib.tq_rescale_gelu_quantize.restype = None
    lib.tq_gemm_isa.argtypes, lib.tq_gemm_isa.restype = [], ctypes.c_char_p
    lib.tq_gemm.argtypes, lib.tq_gemm.restype = [ptr, i64, i64, ptr, i64, ptr, cint], None
    lib.tq_layer_workspace_bytes.argtypes = [ctypes.POINTER(TqLayer), i64, i64, cint]
    lib.tq_layer_workspace_bytes.restype = i64
    lib.tq_encoder_layer.argtypes = [ctypes.POINTER(TqLayer), ptr, i64, i64, ptr, i64, i64, ptr, ptr, cint]
    lib.tq_encoder_layer.restype = None
    layers = ctypes.POINTER(TqLayer)
    lib.tq_bert_workspace_bytes.argtypes, lib.tq_bert_workspace_bytes.restype = [layers, i64, i64, i64, cint], i64
    lib.tq_bert_encoder.argtypes = [ctypes.POINTER(TqEmbeddings), layers, i64, ptr, ptr, ptr, ptr, i64, i64, ptr, ptr,
                                    cint]
    lib.tq_bert_encoder.restype = cint
    lib.tq_residual_norm.argtypes = [ptr, ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint, ptr, ptr, cint, ptr, ptr,
                                     f32, ptr, ptr, ptr, ptr, ptr, cint, cint]
    lib.tq_residual_norm.restype = None
    lib.tq_rescale_act_quantize.argtypes = [ptr, i64, i64, cint, cint, ptr, ptr, ptr, ptr, ptr, ptr, cint, ptr, ptr,
                                            ptr, ptr, cint, cint]
    lib.tq_rescale_act_quantize.restype = None
    lib.tq_heads_norm_rope.argtypes = [ptr, i64, i64, i64, i64, i64, i64, ptr, f32, ptr, ptr, i64, i64, cint]
    lib.tq_heads_norm_rope.restype = None
    lib.tq_linear_rows.argtypes, lib.tq_linear_rows.restype = [ctypes.POINTER(TqLinear), ptr, i64, i64, ptr, cint], None
    return lib


def native_lib() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot be built (the reason is logged once)."""
    global _lib, _failure
    if _lib is not None or _failure is not None:
        return _lib
    with _lock:
        if _lib is None and _failure is None:
            if not native_enabled():
                _failure = "disabled by TERNARY_HF_NATIVE=0"
            else:
                try:
                    _lib = load_library()
                except Exception as exc:  # any build/load problem means: use the eager path
                    _failure = str(exc)
                    logger.warning(
                        "ternary-hf: fused CPU kernels unavailable (%s); the cpu_int8 backend falls back to "
                        "eager torch ops (same results, slower).", _failure
                    )
    return _lib


def native_unavailable_reason() -> str | None:
    native_lib()
    return _failure


class _Scratch(threading.local):
    buffer: torch.Tensor | None = None


_scratch = _Scratch()


def scratch_int8(numel: int) -> torch.Tensor:
    """A per-thread int8 buffer of at least `numel` elements, reused across calls. Fresh large tensors come
    from fresh pages (glibc serves them with mmap), and their page faults cost MiniLM ~10% of a 32 x 128
    forward; the quantized activations never outlive the GEMM that reads them, so one buffer serves all."""
    buf = _scratch.buffer
    if buf is None or buf.numel() < numel:
        buf = _scratch.buffer = torch.empty(numel, dtype=torch.int8)
    return buf[:numel]


def quantize_rows(x: torch.Tensor, outliers: int, reuse_buffer: bool = False) -> TokenQuant:
    """`quantize_per_token` of a contiguous float32 `[M, K]` matrix, in one pass per row. With
    `reuse_buffer`, `q` is a view of this thread's scratch buffer, valid until the next such call."""
    lib = native_lib()
    m, k = x.shape
    outliers = min(outliers, k)
    q = scratch_int8(m * k).view(m, k) if reuse_buffer else torch.empty((m, k), dtype=torch.int8)
    scale = torch.empty((m, 1), dtype=torch.float32)
    index = torch.empty((m, outliers), dtype=torch.int64) if outliers else None
    value = torch.empty((m, outliers), dtype=torch.float32) if outliers else None
    lib.tq_quantize_rows(
        x.data_ptr(), m, k, q.data_ptr(), scale.data_ptr(),
        index.data_ptr() if outliers else None, value.data_ptr() if outliers else None, outliers,
        torch.get_num_threads(),
    )
    return TokenQuant(q, scale, index, value)


def rescale_(acc: torch.Tensor, tq: TokenQuant, codes: torch.Tensor, weight_scale: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:
    """In place: the int32 `[M, N]` product becomes the float32 layer output (see `int8.py`), returned as a
    float32 view of the same memory. `codes` int8 `[K, N]` contiguous, `weight_scale` float32 `[N]`."""
    lib = native_lib()
    m, n = acc.shape
    oidx, oval, nout = _outlier_args(tq)
    lib.tq_rescale(
        acc.data_ptr(), m, n, weight_scale.data_ptr(), tq.scale.data_ptr(),
        bias.data_ptr() if bias is not None else None, codes.data_ptr(), oidx, oval, nout, acc.data_ptr(),
        torch.get_num_threads(),
    )
    return acc.view(torch.float32)


def _outlier_args(tq: TokenQuant) -> tuple:
    if tq.outlier_index is None:
        return None, None, 0
    return tq.outlier_index.data_ptr(), tq.outlier_value.data_ptr(), tq.outlier_index.shape[1]


def rescale_add_layernorm_(acc: torch.Tensor, tq: TokenQuant, codes: torch.Tensor, weight_scale: torch.Tensor,
                           bias: torch.Tensor | None, residual: torch.Tensor, gamma: torch.Tensor,
                           beta: torch.Tensor, eps: float) -> torch.Tensor:
    """In place: `LayerNorm(rescale(acc) + residual)` over the int32 `[M, N]` product (`rescale_` then a
    residual add and a LayerNorm, in one pass per token); returned as a float32 view of `acc`'s memory.
    `residual` float32 `[M, N]` contiguous, `gamma`/`beta` float32 `[N]`."""
    lib = native_lib()
    m, n = acc.shape
    oidx, oval, nout = _outlier_args(tq)
    lib.tq_rescale_add_layernorm(
        acc.data_ptr(), m, n, weight_scale.data_ptr(), tq.scale.data_ptr(),
        bias.data_ptr() if bias is not None else None, codes.data_ptr(), oidx, oval, nout,
        residual.data_ptr(), gamma.data_ptr(), beta.data_ptr(), float(eps), acc.data_ptr(), torch.get_num_threads(),
    )
    return acc.view(torch.float32)


def rescale_gelu_quantize(acc: torch.Tensor, tq: TokenQuant, codes: torch.Tensor, weight_scale: torch.Tensor,
                          bias: torch.Tensor | None, outliers: int) -> TokenQuant:
    """`quantize_rows(gelu(rescale_(acc, ...)), outliers, reuse_buffer=True)` in one pass per token (exact erf
    GELU to ~4e-7; `acc` is overwritten). The returned `q` is a view of this thread's scratch buffer."""
    lib = native_lib()
    m, n = acc.shape
    outliers = min(outliers, n)
    oidx, oval, nout_in = _outlier_args(tq)
    q = scratch_int8(m * n).view(m, n)
    scale = torch.empty((m, 1), dtype=torch.float32)
    index = torch.empty((m, outliers), dtype=torch.int64) if outliers else None
    value = torch.empty((m, outliers), dtype=torch.float32) if outliers else None
    lib.tq_rescale_gelu_quantize(
        acc.data_ptr(), m, n, weight_scale.data_ptr(), tq.scale.data_ptr(),
        bias.data_ptr() if bias is not None else None, codes.data_ptr(), oidx, oval, nout_in,
        q.data_ptr(), scale.data_ptr(), index.data_ptr() if outliers else None,
        value.data_ptr() if outliers else None, outliers, torch.get_num_threads(),
    )
    return TokenQuant(q, scale, index, value)


class TqAttnMask(ctypes.Structure):
    """C `TqAttnMask`: additive mask and bias of the attention scores (see `attention`)."""

    _fields_ = [("mask", ctypes.c_void_p), ("mb", ctypes.c_int64), ("mh", ctypes.c_int64), ("mq", ctypes.c_int64),
                ("bias", ctypes.c_void_p), ("bb", ctypes.c_int64), ("bh", ctypes.c_int64), ("bq", ctypes.c_int64),
                ("causal", ctypes.c_int64)]


def _score_term(t: torch.Tensor | None) -> tuple:
    """(pointer, batch stride, head stride, query stride) of an additive float32 score term: `[batch, length,
    length]` or `[batch, heads, length, length]`, any strides (0 to broadcast) with a contiguous last dimension."""
    if t is None:
        return None, 0, 0, 0
    if t.dtype != torch.float32 or t.stride(-1) != 1:
        raise ValueError(f"attention score terms must be float32 with a contiguous last dimension, got {t.dtype} "
                         f"strides {t.stride()}")
    def stride(d: int) -> int:  # a dimension of size 1 broadcasts
        return 0 if t.shape[d] == 1 else t.stride(d)

    if t.dim() == 3:
        return t.data_ptr(), stride(0), 0, stride(1)
    return t.data_ptr(), stride(0), stride(1), stride(2)


def attention(qkv: torch.Tensor, batch: int, length: int, heads: int, head_dim: int, offsets: tuple[int, int, int],
              mask: torch.Tensor | None, scaling: float, out: torch.Tensor | None = None, *,
              kv_heads: int | None = None, bias: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """Softmax attention of every head over a fused `[batch * length, row]` float32 projection whose query,
    key and value blocks start at columns `offsets` (`heads` query heads, `kv_heads` key/value heads, default
    `heads`: query head h reads key/value head h // (heads // kv_heads)). Scores: `scaling * q . k + mask + bias`,
    `mask` and `bias` additive float32 `[batch, length, length]` or `[batch, heads, length, length]` (see
    `_score_term`) or None; `causal` masks the keys after each query. Returns float32
    `[batch * length, heads * head_dim]` (written into `out` when given: contiguous, that shape)."""
    lib = native_lib()
    kv_heads = kv_heads or heads
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads evenly")
    if out is None:
        out = torch.empty((batch * length, heads * head_dim), dtype=torch.float32)
    am = TqAttnMask(*_score_term(mask), *_score_term(bias), int(causal))
    lib.tq_attention(
        qkv.data_ptr(), batch, length, heads, kv_heads, head_dim, qkv.stride(0), *offsets, ctypes.byref(am),
        float(scaling), out.data_ptr(), torch.get_num_threads(),
    )
    return out


NORM_KINDS = {None: 0, "layer": 1, "rms": 2}
ACTIVATIONS = {"gelu": 0, "gelu_tanh": 1, "silu": 2, "relu": 3}


def _opt(t: torch.Tensor | None):
    return t.data_ptr() if t is not None else None


def _new_token_quant(m: int, n: int, outliers: int) -> TokenQuant:
    """Output buffers of a fused quantization: `q` in this thread's scratch buffer (read by the next GEMM only)."""
    outliers = min(outliers, n)
    return TokenQuant(scratch_int8(m * n).view(m, n), torch.empty((m, 1), dtype=torch.float32),
                      torch.empty((m, outliers), dtype=torch.int64) if outliers else None,
                      torch.empty((m, outliers), dtype=torch.float32) if outliers else None)


def residual_norm(acc: torch.Tensor | None, x: torch.Tensor | None, rescale: tuple | None, *,
                  residual: torch.Tensor | None = None, stream: torch.Tensor | None = None, norm: str | None = None,
                  gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None, eps: float = 0.0,
                  y: torch.Tensor | None = None, quantize_outliers: int | None = None) -> TokenQuant | None:
    """`tq_residual_norm` (see csrc/tq_blocks.h): v = rescale(acc) or x; + residual; -> stream; norm; -> y; and,
    with `quantize_outliers`, the per-token int8 quantization of the result (returned; `q` in scratch).
    `rescale` = (tq, codes, weight_scale, bias) of the linear that produced `acc`. All float32 `[M, N]`
    contiguous (`y` may be `stream` or `x`)."""
    lib = native_lib()
    m, n = (acc if acc is not None else x).shape
    ws = a = bias = codes = oidx = oval = None
    nout_in = 0
    if acc is not None:
        tq_in, codes_t, ws_t, bias_t = rescale
        oidx, oval, nout_in = _outlier_args(tq_in)
        ws, a, bias, codes = ws_t.data_ptr(), tq_in.scale.data_ptr(), _opt(bias_t), codes_t.data_ptr()
    tq = _new_token_quant(m, n, quantize_outliers) if quantize_outliers is not None else None
    lib.tq_residual_norm(
        _opt(acc), _opt(x), m, n, ws, a, bias, codes, oidx, oval, nout_in, _opt(residual), _opt(stream),
        NORM_KINDS[norm], _opt(gamma), _opt(beta), float(eps), _opt(y),
        _opt(tq.q) if tq else None, _opt(tq.scale) if tq else None, _opt(tq.outlier_index) if tq else None,
        _opt(tq.outlier_value) if tq else None, 0 if tq is None or tq.outlier_index is None else tq.outlier_index.shape[1],
        torch.get_num_threads(),
    )
    return tq


def rescale_act_quantize(acc: torch.Tensor, rescale: tuple, activation: str, glu: bool, outliers: int) -> TokenQuant:
    """`tq_rescale_act_quantize`: the int32 `[M, W]` product of the feed-forward input linear -> rescale ->
    `act(h[:, :N]) * h[:, N:]` (glu, N = W / 2) or `act(h)` -> per-token int8 `[M, N]` (returned; `q` in
    scratch; `acc` is overwritten)."""
    lib = native_lib()
    m, w = acc.shape
    n = w // 2 if glu else w
    tq_in, codes, ws, bias = rescale
    oidx, oval, nout_in = _outlier_args(tq_in)
    tq = _new_token_quant(m, n, outliers)
    lib.tq_rescale_act_quantize(
        acc.data_ptr(), m, n, int(glu), ACTIVATIONS[activation], ws.data_ptr(), tq_in.scale.data_ptr(), _opt(bias),
        codes.data_ptr(), oidx, oval, nout_in, tq.q.data_ptr(), tq.scale.data_ptr(), _opt(tq.outlier_index),
        _opt(tq.outlier_value), 0 if tq.outlier_index is None else tq.outlier_index.shape[1], torch.get_num_threads(),
    )
    return tq


def heads_norm_rope(x: torch.Tensor, batch: int, length: int, offset: int, heads: int, head_dim: int,
                    gamma: torch.Tensor | None = None, eps: float = 0.0, cos: torch.Tensor | None = None,
                    sin: torch.Tensor | None = None) -> None:
    """In place on `heads` heads starting at column `offset` of float32 `[batch * length, row]` `x`: per-head
    RMSNorm (`gamma` `[head_dim]`), then rotary embedding with `cos` / `sin` `[batch or 1, length, head_dim]`
    (float32, contiguous last dimension)."""
    lib = native_lib()
    cb = ct = 0
    if cos is not None:
        if cos.dtype != torch.float32 or sin.dtype != torch.float32 or cos.stride() != sin.stride() or cos.stride(-1) != 1:
            raise ValueError("rotary cos / sin must be float32 with the same strides and a contiguous last dimension")
        cb = cos.stride(0) if cos.shape[0] > 1 else 0
        ct = cos.stride(1)
    lib.tq_heads_norm_rope(x.data_ptr(), batch, length, x.stride(0), offset, heads, head_dim, _opt(gamma), float(eps),
                           _opt(cos), _opt(sin), cb, ct, torch.get_num_threads())


# ---------------------------------------------------------------- the ternary GEMM and the whole-layer call

class TqLinear(ctypes.Structure):
    """C `TqLinear`: one linear layer as `tq_encoder_layer` reads it."""

    _fields_ = [("panels", ctypes.c_void_p), ("codes", ctypes.c_void_p), ("scale", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("K", ctypes.c_int64), ("N", ctypes.c_int64), ("nout", ctypes.c_int64)]


class TqLayer(ctypes.Structure):
    """C `TqLayer`: a BERT encoder layer (its four linears, two LayerNorms, attention shape)."""

    _fields_ = [("qkv", TqLinear), ("attn_out", TqLinear), ("inter", TqLinear), ("out", TqLinear),
                ("ln1_weight", ctypes.c_void_p), ("ln1_bias", ctypes.c_void_p), ("ln2_weight", ctypes.c_void_p),
                ("ln2_bias", ctypes.c_void_p), ("ln1_eps", ctypes.c_float), ("ln2_eps", ctypes.c_float),
                ("scaling", ctypes.c_float), ("heads", ctypes.c_int64), ("head_dim", ctypes.c_int64)]


class TqEmbeddings(ctypes.Structure):
    """C `TqEmbeddings`: BERT's embedding tables and their LayerNorm."""

    _fields_ = [("words", ctypes.c_void_p), ("positions", ctypes.c_void_p), ("types", ctypes.c_void_p),
                ("ln_weight", ctypes.c_void_p), ("ln_bias", ctypes.c_void_p), ("ln_eps", ctypes.c_float),
                ("vocab", ctypes.c_int64), ("npos", ctypes.c_int64), ("ntypes", ctypes.c_int64),
                ("hidden", ctypes.c_int64)]


PANEL = 64  # output columns per panel of the GEMM layout
GROUP = 4  # inputs per 32-bit lane


def pack_gemm_weights(codes: torch.Tensor) -> torch.Tensor:
    """The GEMM's 2-bit weight layout (see the C source) of ternary codes int8 `[K, N]` in {-1, 0, 1}: uint8
    `[ceil(N/64), ceil(K/4), 64]`, code + 1 in bits 2j..2j+1 of each byte, zero-padded."""
    k, n = codes.shape
    kp, np_ = -(-k // GROUP) * GROUP, -(-n // PANEL) * PANEL
    u = torch.zeros((kp, np_), dtype=torch.uint8)
    u[:k, :n] = (codes.to(torch.int16) + 1).to(torch.uint8)
    # [g, r, p, j, c] -> [p, g, j, c, r]: register j of group g holds columns 16j + c, inputs 4g + r
    u = u.view(kp // GROUP, GROUP, np_ // PANEL, 4, PANEL // 4).permute(2, 0, 3, 4, 1).reshape(np_ // PANEL, kp // GROUP, 4, PANEL)
    return (u[:, :, 0] | (u[:, :, 1] << 2) | (u[:, :, 2] << 4) | (u[:, :, 3] << 6)).contiguous()


def gemm(q: torch.Tensor, panels: torch.Tensor, n: int, lib: ctypes.CDLL | None = None,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """Exact int32 `q @ codes` for int8 `q` `[M, K]` and `panels = pack_gemm_weights(codes)` (`n` columns),
    written into `out` (contiguous int32 `[M, n]`) when given."""
    lib = lib or native_lib()
    q = q.contiguous()
    m, k = q.shape
    if out is None:
        out = torch.empty((m, n), dtype=torch.int32)
    lib.tq_gemm(q.data_ptr(), m, k, panels.data_ptr(), n, out.data_ptr(), torch.get_num_threads())
    return out


def gemm_isa(lib: ctypes.CDLL | None = None) -> str:
    """Which GEMM variant the library was compiled with: avx512-vnni, avx-vnni, avx2 or portable."""
    return (lib or native_lib()).tq_gemm_isa().decode()


def linear_struct(codes: torch.Tensor, panels: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                  outliers: int) -> TqLinear:
    """A `TqLinear` over these tensors (the caller keeps them alive: the struct holds raw pointers)."""
    k, n = codes.shape
    return TqLinear(panels.data_ptr(), codes.data_ptr(), scale.data_ptr(),
                    bias.data_ptr() if bias is not None else None, k, n, min(outliers, k))


def encoder_layer(layer: TqLayer, x: torch.Tensor, batch: int, length: int, mask: torch.Tensor | None,
                  workspace: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """`tq_encoder_layer` on float32 `x` `[batch * length, hidden]` (contiguous); `mask` as in `attention`;
    `workspace(nbytes)` returns a uint8 buffer of at least that size. Returns a fresh `[batch * length, hidden]`."""
    lib = native_lib()
    threads = torch.get_num_threads()
    ref = ctypes.byref(layer)
    buf = workspace(lib.tq_layer_workspace_bytes(ref, batch, length, threads))
    y = torch.empty((batch * length, layer.attn_out.N), dtype=torch.float32)
    mb = mq = 0
    if mask is not None:
        mb, mq = mask.stride(0), mask.stride(1)
    lib.tq_encoder_layer(ref, x.data_ptr(), batch, length, mask.data_ptr() if mask is not None else None, mb, mq,
                         y.data_ptr(), buf.data_ptr(), threads)
    return y


def kernel_mask(mask: torch.Tensor) -> torch.Tensor:
    """An attention mask in the form `tq_attention` reads: additive float32 (a bool mask's False -> -inf), contiguous
    along its last dimension."""
    if mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, float("-inf"))
    elif mask.dtype != torch.float32:
        mask = mask.float()
    return mask if mask.stride(-1) == 1 else mask.contiguous()
