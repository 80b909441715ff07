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

/* One token: `mag` is K ints of scratch when nout > 1. */
static inline void quantize_row(const float* xr, int64_t K, int8_t* qr, float* scale, int64_t* oi, float* ov,
                                int nout, int32_t* mag) {
    const int32_t* bits = (const int32_t*)xr;
    int32_t top;
    if (nout == 0) {
        top = mag_max(bits, 0, K);
    } else if (nout == 1) {  /* no scratch copy: the maximum, then the maximum of the others */
        int64_t j = mag_find(bits, K, mag_max(bits, 0, K));
        oi[0] = j;
        ov[0] = xr[j];
        int32_t left = mag_max(bits, 0, j), right = mag_max(bits, j + 1, K);
        top = left > right ? left : right;
    } else {  /* a picked outlier is marked -1 so it is never picked twice */
        top = -1;
        for (int64_t k = 0; k < K; ++k) { int32_t v = bits[k] & 0x7fffffff; mag[k] = v; top = v > top ? v : top; }
        for (int i = 0; i < nout; ++i) {
            int64_t j = 0;
            while (mag[j] != top) ++j;
            mag[j] = -1;
            oi[i] = j;
            ov[i] = xr[j];
            top = -1;
            for (int64_t k = 0; k < K; ++k) top = mag[k] > top ? mag[k] : top;
        }
    }
    float amax = 0.0f;
    if (top > 0) memcpy(&amax, &top, 4);
    const float mx = amax > 1e-8f ? amax : 1e-8f;
    const float inv = 127.0f / mx;
    *scale = mx / 127.0f;
    for (int64_t k = 0; k < K; ++k) {
        float v = rintf(xr[k] * inv);
        v = v > 127.0f ? 127.0f : v;
        v = v < -127.0f ? -127.0f : v;
        qr[k] = (int8_t)v;
    }
    for (int i = 0; i < nout; ++i) qr[oi[i]] = 0;
}

void tq_quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* scale,
                      int64_t* oidx, float* oval, int nout, int nthreads) {
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * K >= 65536)
    {
        int32_t* mag = nout > 1 ? (int32_t*)malloc(sizeof(int32_t) * (size_t)K) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m)
            quantize_row(x + m * K, K, q + m * K, scale + m, oidx + m * nout, oval + m * nout, nout, mag);
        free(mag);
    }
}

/* One row of the rescale: y[n] = ((float)acc[n] * ws[n]) * a + bias[n] + sum_i oval[i] * (codes[oidx[i], n] * ws[n]),
   every operation rounded on its own, in the order of the torch reference (int8.py). y may be acc itself;
   `o` is N floats of scratch when there are outliers. */
static inline void rescale_row(const int32_t* ar, int64_t N, const float* ws, float am, const float* bias,
                               const int8_t* codes, const int64_t* oi, const float* ov, int nout, float* o, float* yr) {
    if (bias) for (int64_t n = 0; n < N; ++n) { float t = (float)ar[n] * ws[n]; t = t * am; yr[n] = t + bias[n]; }
    else      for (int64_t n = 0; n < N; ++n) { float t = (float)ar[n] * ws[n]; yr[n] = t * am; }
    if (nout) {
        for (int i = 0; i < nout; ++i) {
            const int8_t* c = codes + oi[i] * N;
            const float v = ov[i];
            if (i == 0) for (int64_t n = 0; n < N; ++n) { float w = (float)c[n] * ws[n]; o[n] = v * w; }
            else        for (int64_t n = 0; n < N; ++n) { float w = (float)c[n] * ws[n]; float p = v * w; o[n] = o[n] + p; }
        }
        for (int64_t n = 0; n < N; ++n) yr[n] = yr[n] + o[n];
    }
}

/* y[m, :] = rescale_row(acc[m, :]) for every token m. y may be acc itself. */
void tq_rescale(const int32_t* acc, int64_t M, int64_t N, const float* ws, const float* a, const float* bias,
                const int8_t* codes, const int64_t* oidx, const float* oval, int nout, float* y, int nthreads) {
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * N >= 65536)
    {
        float* o = nout ? (float*)malloc(sizeof(float) * (size_t)N) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m)
            rescale_row(acc + m * N, N, ws, a[m], bias, codes, nout ? oidx + m * nout : NULL,
                        nout ? oval + m * nout : NULL, nout, o, y + m * N);
        free(o);
    }
}

/* BERT's sub-layer epilogue in one pass per token: y = LayerNorm(rescale_row(acc) + residual) * gamma + beta
   (biased variance, like torch). Not bit-identical to torch's LayerNorm (a different summation order):
   agrees to float rounding. y may be acc itself (not residual). */
void tq_rescale_add_layernorm(const int32_t* acc, int64_t M, int64_t N, const float* ws, const float* a,
                              const float* bias, const int8_t* codes, const int64_t* oidx, const float* oval,
                              int nout, const float* residual, const float* gamma, const float* beta, float eps,
                              float* y, int nthreads) {
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * N >= 65536)
    {
        float* o = nout ? (float*)malloc(sizeof(float) * (size_t)N) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            float* yr = y + m * N;
            const float* rr = residual + m * N;
            rescale_row(acc + m * N, N, ws, a[m], bias, codes, nout ? oidx + m * nout : NULL,
                        nout ? oval + m * nout : NULL, nout, o, yr);
            float sum = 0.0f;
            #pragma omp simd reduction(+:sum)
            for (int64_t n = 0; n < N; ++n) { float v = yr[n] + rr[n]; yr[n] = v; sum += v; }
            const float mean = sum / (float)N;
            float sq = 0.0f;
            #pragma omp simd reduction(+:sq)
            for (int64_t n = 0; n < N; ++n) { float d = yr[n] - mean; sq += d * d; }
            const float rstd = 1.0f / sqrtf(sq / (float)N + eps);
            for (int64_t n = 0; n < N; ++n) yr[n] = (yr[n] - mean) * rstd * gamma[n] + beta[n];
        }
        free(o);
    }
}

/* erf as a rational function (the odd/even minimax pair used by Eigen and XLA for float32; inputs clamped to
   [-4, 4], where erf is +-1 in float32): max error ~4e-7 against torch.erf, and it vectorizes. */
static inline float erf_approx(float x) {
    const float xc = x < -4.0f ? -4.0f : (x > 4.0f ? 4.0f : x);
    const float x2 = xc * xc;
    float p = fmaf(x2, -2.72614225801306e-10f, 2.77068142495902e-08f);
    p = fmaf(x2, p, -2.10102402082508e-06f);
    p = fmaf(x2, p, -5.69250639462346e-05f);
    p = fmaf(x2, p, -7.34990630326855e-04f);
    p = fmaf(x2, p, -2.95459980854025e-03f);
    p = fmaf(x2, p, -1.60960333262415e-02f);
    p = p * xc;
    float q = fmaf(x2, -1.45660718464996e-05f, -2.13374055278905e-04f);
    q = fmaf(x2, q, -1.68282697438203e-03f);
    q = fmaf(x2, q, -7.37332916720468e-03f);
    q = fmaf(x2, q, -1.42647390514189e-02f);
    return p / q;
}

/* The feed-forward middle in one pass per token: q = quantize(gelu(rescale_row(acc))), gelu the exact (erf)
   one. The float activations are written over acc (as float) and never leave the row's cache lines. */
void tq_rescale_gelu_quantize(int32_t* acc, int64_t M, int64_t N, const float* ws, const float* a,
                              const float* bias, const int8_t* codes, const int64_t* oidx, const float* oval,
                              int nout_in, int8_t* q, float* scale, int64_t* qidx, float* qval, int nout,
                              int nthreads) {
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * N >= 65536)
    {
        float* o = nout_in ? (float*)malloc(sizeof(float) * (size_t)N) : NULL;
        int32_t* mag = nout > 1 ? (int32_t*)malloc(sizeof(int32_t) * (size_t)N) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            float* yr = (float*)(acc + m * N);
            rescale_row(acc + m * N, N, ws, a[m], bias, codes, nout_in ? oidx + m * nout_in : NULL,
                        nout_in ? oval + m * nout_in : NULL, nout_in, o, yr);
            for (int64_t n = 0; n < N; ++n) { float v = yr[n]; yr[n] = 0.5f * v * (1.0f + erf_approx(v * 0.70710678118654752f)); }
            quantize_row(yr, N, q + m * N, scale + m, qidx + m * nout, qval + m * nout, nout, mag);
        }
        free(o); free(mag);
    }
}

/* e^x for the softmax (x <= 0 after the max is subtracted), written to vectorize: Cody-Waite reduction to
   g in [-ln2/2, ln2/2], Cephes' degree-6 polynomial for e^g, then 2^n through the exponent bits.
   Relative error ~2e-7; inputs below -87 give exactly 0 (a masked key contributes nothing). */
static inline float softmax_exp(float x) {
    const float xc = x < -87.0f ? -87.0f : x;
    const float n = rintf(xc * 1.44269504088896341f);
    float g = fmaf(n, -0.693359375f, xc);
    g = fmaf(n, 2.12194440e-4f, g);
    float p = fmaf(1.9875691500e-4f, g, 1.3981999507e-3f);
    p = fmaf(p, g, 8.3334519073e-3f);
    p = fmaf(p, g, 4.1665795894e-2f);
    p = fmaf(p, g, 1.6666665459e-1f);
    p = fmaf(p, g, 5.0000001201e-1f);
    p = fmaf(p, g * g, g + 1.0f);
    union { int32_t i; float f; } e;
    e.i = ((int32_t)n + 127) << 23;
    const float r = p * e.f;
    return x < -87.0f ? 0.0f : r;
}

/* The attention kernel is written with GCC vector extensions: 16 floats per vector (one AVX-512 register,
   two AVX2 ones), so each tile of scores stays in registers. Multiply-adds may fuse here (no bit-exactness
   is promised for attention; the quantization and rescale functions above are compiled without). */
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
#define TQ_FUSE __attribute__((optimize("fp-contract=fast")))
#define TQ_ROWS 4

/* acc[r] (+)= sum_k a[r * as + k] * b[k * bs + (0..31)] for r < 4: 8 accumulators (4 rows x 2 vectors) stay
   in registers, enough independent chains to keep both FMA pipes busy. Scores (a = queries, b = transposed
   keys) and outputs (a = probabilities, b = values) are both this product. */
static inline __attribute__((always_inline)) TQ_FUSE void tile_4x32(const float* a, int64_t as, const float* b,
                                                                     int64_t bs, int64_t K, v16 acc[TQ_ROWS][2]) {
    v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
    for (int64_t k = 0; k < K; ++k) {
        const v16 x = *(const v16u*)(b + k * bs), y = *(const v16u*)(b + k * bs + 16);
        const float r0 = a[k], r1 = a[as + k], r2 = a[2 * as + k], r3 = a[3 * as + k];
        a0 += r0 * x; a1 += r1 * x; a2 += r2 * x; a3 += r3 * x;
        b0 += r0 * y; b1 += r1 * y; b2 += r2 * y; b3 += r3 * y;
    }
    acc[0][0] = a0; acc[1][0] = a1; acc[2][0] = a2; acc[3][0] = a3;
    acc[0][1] = b0; acc[1][1] = b1; acc[2][1] = b2; acc[3][1] = b3;
}

/* Multi-head self-attention over a fused projection: token t of sequence b has its query, key and value for
   head h at qkv[(b*L + t)*row + {qo, ko, vo} + h*D + (0..D-1)]. out[(b*L + t)*NH*D + h*D + d] =
   softmax_j(scaling * q_t . k_j + mask[b, t, j]) . v_j. `mask` is additive (element [b, t, j] at
   b*mb + t*mq + j; NULL = none); a query that can see no key gets zeros. One (sequence, head) per task: keys
   transposed once into a zero-padded [D, Lp] block, values into [L, Dp]; then `tile_4x32` gives 4 queries x
   32 keys of scores, and after the softmax 4 queries x 32 channels of outputs. */
TQ_FUSE void tq_attention(const float* qkv, int64_t B, int64_t L, int64_t NH, int64_t D, int64_t row,
                          int64_t qo, int64_t ko, int64_t vo, const float* mask, int64_t mb, int64_t mq,
                          float scaling, float* out, int nthreads) {
    const int64_t Lp = (L + 31) / 32 * 32, Dp = (D + 31) / 32 * 32;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && B * NH > 1 && B * NH * L * L * D >= 4194304)
    {
        float* kt = (float*)calloc((size_t)(D * Lp), sizeof(float));
        float* vv = (float*)calloc((size_t)(L * Dp), sizeof(float));
        float* qs = (float*)calloc((size_t)(TQ_ROWS * D), sizeof(float));
        float* sc = (float*)calloc((size_t)(TQ_ROWS * Lp), sizeof(float));
        float inv[TQ_ROWS];
        #pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; ++b) {
            for (int64_t h = 0; h < NH; ++h) {
                const float* base = qkv + b * L * row;
                for (int64_t j = 0; j < L; ++j) {
                    const float* kr = base + j * row + ko + h * D;
                    const float* vr = base + j * row + vo + h * D;
                    for (int64_t d = 0; d < D; ++d) { kt[d * Lp + j] = kr[d]; vv[j * Dp + d] = vr[d]; }
                }
                for (int64_t t0 = 0; t0 < L; t0 += TQ_ROWS) {
                    const int64_t nt = L - t0 < TQ_ROWS ? L - t0 : TQ_ROWS;
                    for (int r = 0; r < TQ_ROWS; ++r) {
                        const float* q = base + (t0 + (r < nt ? r : 0)) * row + qo + h * D;
                        for (int64_t d = 0; d < D; ++d) qs[r * D + d] = q[d] * scaling;
                    }
                    for (int64_t jb = 0; jb < Lp; jb += 32) {
                        v16 acc[TQ_ROWS][2];
                        tile_4x32(qs, D, kt + jb, Lp, D, acc);
                        for (int r = 0; r < TQ_ROWS; ++r) {
                            *(v16u*)(sc + r * Lp + jb) = acc[r][0];
                            *(v16u*)(sc + r * Lp + jb + 16) = acc[r][1];
                        }
                    }
                    for (int r = 0; r < TQ_ROWS; ++r) {
                        float* sr = sc + r * Lp;
                        inv[r] = 0.0f;
                        if (r >= nt) { for (int64_t j = 0; j < L; ++j) sr[j] = 0.0f; continue; }
                        if (mask) {
                            const float* mr = mask + b * mb + (t0 + r) * mq;
                            for (int64_t j = 0; j < L; ++j) sr[j] += mr[j];
                        }
                        float mx = -INFINITY;
                        #pragma omp simd reduction(max:mx)
                        for (int64_t j = 0; j < L; ++j) mx = sr[j] > mx ? sr[j] : mx;
                        if (!(mx > -INFINITY)) { for (int64_t j = 0; j < L; ++j) sr[j] = 0.0f; continue; }
                        float sum = 0.0f;
                        #pragma omp simd reduction(+:sum)
                        for (int64_t j = 0; j < L; ++j) { float e = softmax_exp(sr[j] - mx); sr[j] = e; sum += e; }
                        inv[r] = 1.0f / sum;
                    }
                    for (int64_t db = 0; db < Dp; db += 32) {
                        v16 cs[TQ_ROWS][2];
                        tile_4x32(sc, Lp, vv + db, Dp, L, cs);
                        for (int r = 0; r < TQ_ROWS; ++r) { cs[r][0] *= inv[r]; cs[r][1] *= inv[r]; }
                        const int64_t w = D - db < 32 ? D - db : 32;
                        for (int r = 0; r < nt; ++r) {
                            float* o = out + (b * L + t0 + r) * NH * D + h * D + db;
                            for (int64_t d = 0; d < w; ++d) o[d] = cs[r][d >> 4][d & 15];
                        }
                    }
                }
            }
        }
        free(kt); free(vv); free(qs); free(sc);
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
    f32 = ctypes.c_float
    lib.tq_rescale_add_layernorm.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint, ptr, ptr, ptr, f32,
                                             ptr, cint]
    lib.tq_rescale_add_layernorm.restype = None
    lib.tq_attention.argtypes = [ptr, i64, i64, i64, i64, i64, i64, i64, i64, ptr, i64, i64, f32, ptr, cint]
    lib.tq_attention.restype = None
    lib.tq_rescale_gelu_quantize.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint, ptr, ptr, ptr, ptr,
                                             cint, cint]
    lib.tq_rescale_gelu_quantize.restype = None
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


def attention(qkv: torch.Tensor, batch: int, length: int, heads: int, head_dim: int, offsets: tuple[int, int, int],
              mask: torch.Tensor | None, scaling: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of every head over a fused `[batch * length, row]` float32 projection whose query,
    key and value blocks start at columns `offsets`; `mask` additive float32 `[batch, length, length]`
    (any strides with a contiguous last dimension) or None. Returns float32 `[batch * length, heads * head_dim]`
    (written into `out` when given: contiguous, that shape)."""
    lib = native_lib()
    if out is None:
        out = torch.empty((batch * length, heads * head_dim), dtype=torch.float32)
    mb = mq = 0
    if mask is not None:
        mb, mq = mask.stride(0), mask.stride(1)
    lib.tq_attention(
        qkv.data_ptr(), batch, length, heads, head_dim, qkv.stride(0), *offsets,
        mask.data_ptr() if mask is not None else None, mb, mq, float(scaling), out.data_ptr(),
        torch.get_num_threads(),
    )
    return out
