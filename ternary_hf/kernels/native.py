"""Fused CPU pre/post-processing for the int8 GEMM, in C, compiled on first use with the system C compiler.

The int8 GEMM itself is oneDNN's (`torch._int_mm`). What torch cannot do in one pass is everything around
it: per-token quantization (absmax, divide, round, clamp, cast: five eager kernels and temporaries) and the
rescale of the int32 result (cast, two multiplies, bias: four). Unfused, those passes cost more than the
GEMM on MiniLM. Here each is one OpenMP-parallel pass; the rescale writes float32 over the int32 buffer.

The float operations are exactly those of the torch reference (IEEE division, round-half-even, separate
roundings: compiled with `-ffp-contract=off`, no fast-math), so results are bit-identical to
`reference`. The library links the same `libgomp.so.1` soname torch already loaded, so it shares torch's
OpenMP runtime, and the thread count is passed from `torch.get_num_threads()` on every call.

Why C through ctypes rather than a torch C++ extension: it needs no torch headers (builds in ~0.3 s,
no ninja) and nothing at install time. Without a working C compiler (or with TERNARY_HF_NATIVE=0) the
backend keeps working with the same numerics through eager torch ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from .actquant import TokenQuant

logger = logging.getLogger(__name__)

C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

/* Per-token int8 quantization with `nout` float outliers (see actquant.py), bit-identical to the torch
   reference. Magnitudes are compared as the integer bit patterns of |x| (same order as the floats; it
   vectorizes without fast-math). */
static inline int32_t mag_max(const int32_t* bits, int64_t from, int64_t to) {
    int32_t top = -1;
    for (int64_t k = from; k < to; ++k) { int32_t v = bits[k] & 0x7fffffff; top = v > top ? v : top; }
    return top;
}

/* the first (lowest) index whose magnitude is `value`: vectorized block maxima, then a short scan */
static inline int64_t mag_find(const int32_t* bits, int64_t K, int32_t value) {
    int64_t c = 0;
    for (; c + 64 <= K; c += 64)
        if (mag_max(bits, c, c + 64) == value) break;
    for (int64_t j = c; j < K; ++j)
        if ((bits[j] & 0x7fffffff) == value) return j;
    return K;
}

void tq_quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* scale,
                      int64_t* oidx, float* oval, int nout, int nthreads) {
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * K >= 65536)
    {
        int32_t* mag = nout > 1 ? (int32_t*)malloc(sizeof(int32_t) * (size_t)K) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            const float* xr = x + m * K;
            int8_t* qr = q + m * K;
            const int32_t* bits = (const int32_t*)xr;
            int32_t top;
            if (nout == 0) {
                top = mag_max(bits, 0, K);
            } else if (nout == 1) {  /* no scratch copy: the maximum, then the maximum of the others */
                int64_t j = mag_find(bits, K, mag_max(bits, 0, K));
                oidx[m] = j;
                oval[m] = xr[j];
                int32_t left = mag_max(bits, 0, j), right = mag_max(bits, j + 1, K);
                top = left > right ? left : right;
            } else {  /* a picked outlier is marked -1 so it is never picked twice */
                top = -1;
                for (int64_t k = 0; k < K; ++k) { int32_t v = bits[k] & 0x7fffffff; mag[k] = v; top = v > top ? v : top; }
                for (int i = 0; i < nout; ++i) {
                    int64_t j = 0;
                    while (mag[j] != top) ++j;
                    mag[j] = -1;
                    oidx[m * nout + i] = j;
                    oval[m * nout + i] = xr[j];
                    top = -1;
                    for (int64_t k = 0; k < K; ++k) top = mag[k] > top ? mag[k] : top;
                }
            }
            float amax = 0.0f;
            if (top > 0) memcpy(&amax, &top, 4);
            const float mx = amax > 1e-8f ? amax : 1e-8f;
            const float inv = 127.0f / mx;
            scale[m] = mx / 127.0f;
            for (int64_t k = 0; k < K; ++k) {
                float v = rintf(xr[k] * inv);
                v = v > 127.0f ? 127.0f : v;
                v = v < -127.0f ? -127.0f : v;
                qr[k] = (int8_t)v;
            }
            for (int i = 0; i < nout; ++i) qr[oidx[m * nout + i]] = 0;
        }
        free(mag);
    }
}

/* y[m, n] = ((float)acc[m, n] * ws[n]) * a[m] + bias[n] + sum_i oval[m, i] * (codes[oidx[m, i], n] * ws[n]),
   every operation rounded on its own, in the order of the torch reference (int8.py). y may be acc itself. */
void tq_rescale(const int32_t* acc, int64_t M, int64_t N, const float* ws, const float* a, const float* bias,
                const int8_t* codes, const int64_t* oidx, const float* oval, int nout, float* y, int nthreads) {
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * N >= 65536)
    {
        float* o = nout ? (float*)malloc(sizeof(float) * (size_t)N) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            const int32_t* ar = acc + m * N;
            float* yr = y + m * N;
            const float am = a[m];
            if (bias) for (int64_t n = 0; n < N; ++n) { float t = (float)ar[n] * ws[n]; t = t * am; yr[n] = t + bias[n]; }
            else      for (int64_t n = 0; n < N; ++n) { float t = (float)ar[n] * ws[n]; yr[n] = t * am; }
            if (nout) {
                for (int i = 0; i < nout; ++i) {
                    const int8_t* c = codes + oidx[m * nout + i] * N;
                    const float v = oval[m * nout + i];
                    if (i == 0) for (int64_t n = 0; n < N; ++n) { float w = (float)c[n] * ws[n]; o[n] = v * w; }
                    else        for (int64_t n = 0; n < N; ++n) { float w = (float)c[n] * ws[n]; float p = v * w; o[n] = o[n] + p; }
                }
                for (int64_t n = 0; n < N; ++n) yr[n] = yr[n] + o[n];
            }
        }
        free(o);
    }
}
"""

# No fast-math and no FMA contraction: the results must equal the torch reference bit for bit.
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failure: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("TERNARY_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ternary_hf"
    )
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """What `-march=native` compiles for: the CPU model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("flags", "model name"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return cc
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([C_SOURCE, " ".join(CFLAGS), version, _cpu_signature()]).encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    target = out_dir / f"tq_cpu_{key}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = Path(tmp) / "tq_cpu.c"
        src.write_text(C_SOURCE)
        tmp_lib = Path(tmp) / target.name
        proc = subprocess.run([cc, *CFLAGS, str(src), "-o", str(tmp_lib)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed to compile the ternary-hf CPU kernels:\n{proc.stderr[-2000:]}")
        os.replace(tmp_lib, target)  # atomic: concurrent builders race harmlessly
    return target


def _load() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc/clang)")
    lib = ctypes.CDLL(str(_build(cc)))
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.tq_quantize_rows.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, cint, cint]
    lib.tq_quantize_rows.restype = None
    lib.tq_rescale.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint, ptr, cint]
    lib.tq_rescale.restype = None
    return lib


def native_lib() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot be built (the reason is logged once)."""
    global _lib, _failure
    if _lib is not None or _failure is not None:
        return _lib
    with _lock:
        if _lib is None and _failure is None:
            if os.environ.get("TERNARY_HF_NATIVE", "1") == "0":
                _failure = "disabled by TERNARY_HF_NATIVE=0"
            else:
                try:
                    _lib = _load()
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
    outliers = 0 if tq.outlier_index is None else tq.outlier_index.shape[1]
    lib.tq_rescale(
        acc.data_ptr(), m, n, weight_scale.data_ptr(), tq.scale.data_ptr(),
        bias.data_ptr() if bias is not None else None, codes.data_ptr(),
        tq.outlier_index.data_ptr() if outliers else None, tq.outlier_value.data_ptr() if outliers else None,
        outliers, acc.data_ptr(), torch.get_num_threads(),
    )
    return acc.view(torch.float32)
