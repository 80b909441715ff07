/* The ternary-hf CPU kernels (see ternary_hf/kernels/native.py for how they are built, cached and called).
   One translation unit: the entry points below are what native.py binds through ctypes. */
#include "tq_platform.h"

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
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * K >= TQ_PAR_MIN)
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
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * N >= TQ_PAR_MIN)
    {
        float* o = nout ? (float*)malloc(sizeof(float) * (size_t)N) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m)
            rescale_row(acc + m * N, N, ws, a[m], bias, codes, nout ? oidx + m * nout : NULL,
                        nout ? oval + m * nout : NULL, nout, o, y + m * N);
        free(o);
    }
}

/* BERT's sub-layer epilogue for one token: yr = LayerNorm(rescale_row(ar) + rr) * gamma + beta (biased variance,
   like torch). Not bit-identical to torch's LayerNorm (a different summation order): agrees to float rounding.
   yr may be ar itself (not rr). */
static inline void rescale_add_layernorm_row(const int32_t* ar, int64_t N, const float* ws, float am, const float* bias,
                                             const int8_t* codes, const int64_t* oi, const float* ov, int nout,
                                             float* o, const float* rr, const float* gamma, const float* beta,
                                             float eps, float* yr) {
    rescale_row(ar, N, ws, am, bias, codes, oi, ov, nout, o, yr);
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

/* y[m, :] = rescale_add_layernorm_row(acc[m, :], residual[m, :]) for every token m. y may be acc itself. */
void tq_rescale_add_layernorm(const int32_t* acc, int64_t M, int64_t N, const float* ws, const float* a,
                              const float* bias, const int8_t* codes, const int64_t* oidx, const float* oval,
                              int nout, const float* residual, const float* gamma, const float* beta, float eps,
                              float* y, int nthreads) {
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * N >= TQ_PAR_MIN)
    {
        float* o = nout ? (float*)malloc(sizeof(float) * (size_t)N) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m)
            rescale_add_layernorm_row(acc + m * N, N, ws, a[m], bias, codes, nout ? oidx + m * nout : NULL,
                                      nout ? oval + m * nout : NULL, nout, o, residual + m * N, gamma, beta, eps,
                                      y + m * N);
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

/* The feed-forward middle for one token: qr = quantize(gelu(rescale_row(ar))), gelu the exact (erf) one. The
   float activations are written over ar (as float) and never leave the row's cache lines. */
static inline void rescale_gelu_quantize_row(int32_t* ar, int64_t N, const float* ws, float am, const float* bias,
                                             const int8_t* codes, const int64_t* oi, const float* ov, int nout_in,
                                             float* o, int8_t* qr, float* scale, int64_t* qi, float* qv, int nout,
                                             int32_t* mag) {
    float* yr = (float*)ar;
    rescale_row(ar, N, ws, am, bias, codes, oi, ov, nout_in, o, yr);
    for (int64_t n = 0; n < N; ++n) { float v = yr[n]; yr[n] = 0.5f * v * (1.0f + erf_approx(v * 0.70710678118654752f)); }
    quantize_row(yr, N, qr, scale, qi, qv, nout, mag);
}

void tq_rescale_gelu_quantize(int32_t* acc, int64_t M, int64_t N, const float* ws, const float* a,
                              const float* bias, const int8_t* codes, const int64_t* oidx, const float* oval,
                              int nout_in, int8_t* q, float* scale, int64_t* qidx, float* qval, int nout,
                              int nthreads) {
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * N >= TQ_PAR_MIN)
    {
        float* o = nout_in ? (float*)malloc(sizeof(float) * (size_t)N) : NULL;
        int32_t* mag = nout > 1 ? (int32_t*)malloc(sizeof(int32_t) * (size_t)N) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m)
            rescale_gelu_quantize_row(acc + m * N, N, ws, a[m], bias, codes, nout_in ? oidx + m * nout_in : NULL,
                                      nout_in ? oval + m * nout_in : NULL, nout_in, o, q + m * N, scale + m,
                                      qidx + m * nout, qval + m * nout, nout, mag);
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
   b*mb + t*mq + j; NULL = none); a query that can see no key gets zeros. One (sequence, head) per call: keys
   transposed into a zero-padded [D, Lp] block `kt`, values into [L, Dp] `vv`; then `tile_4x32` gives 4 queries
   x 32 keys of scores, and after the softmax 4 queries x 32 channels of outputs. Scratch: kt, vv, the scaled
   queries qs and the scores sc (`attention_scratch` floats). Not inlined: one compiled copy, so every caller gets the same
   float results. */
/* Rows and slices of the scratch are offset by TQ_SKEW floats so that no two access streams share their low
   12 address bits: with 128-float rows the key transpose and the query copy hit 4K aliasing stalls (a third
   of the kernel's time at 32 x 128). */
#define TQ_SKEW 16
static inline int64_t attention_scratch(int64_t L, int64_t D) {
    const int64_t Lp = (L + 31) / 32 * 32, Dp = (D + 31) / 32 * 32;
    return D * (Lp + TQ_SKEW) + L * (Dp + TQ_SKEW) + TQ_ROWS * (D + TQ_SKEW) + TQ_ROWS * (Lp + TQ_SKEW) + 3 * TQ_SKEW;
}

/* What is added to the scores of sequence b, head h, query t, key j: two optional additive terms (a mask, and a bias
   such as MPNet's relative positions), each at base + b * sb + h * sh + t * sq + j (strides may be 0 for
   broadcasting), and with `causal` the keys after the query are masked out. */
typedef struct {
    const float* mask; int64_t mb, mh, mq;
    const float* bias; int64_t bb, bh, bq;
    int64_t causal;
} TqAttnMask;

static __attribute__((noinline)) TQ_FUSE void attention_head(
        const float* qkv, int64_t b, int64_t h, int64_t kh, int64_t L, int64_t NH, int64_t D, int64_t row,
        int64_t qo, int64_t ko, int64_t vo, const TqAttnMask* am, float scaling, float* out, float* scratch) {
    const int64_t Lp = (L + 31) / 32 * 32, Dp = (D + 31) / 32 * 32;
    const int64_t ks = Lp + TQ_SKEW, vs = Dp + TQ_SKEW, qd = D + TQ_SKEW, ss = Lp + TQ_SKEW;  /* row strides */
    /* disjoint slices of one buffer: `restrict` gives the compiler what separate allocations would */
    float* restrict kt = scratch;
    float* restrict vv = kt + D * ks + TQ_SKEW;
    float* restrict qs = vv + L * vs + TQ_SKEW;
    float* restrict sc = qs + TQ_ROWS * qd + TQ_SKEW;
    float inv[TQ_ROWS];
    const float* base = qkv + b * L * row;
    for (int64_t j = 0; j < L; ++j) {
        const float* kr = base + j * row + ko + kh * D;  /* kh: the key/value head this query head reads */
        const float* vr = base + j * row + vo + kh * D;
        for (int64_t d = 0; d < D; ++d) { kt[d * ks + j] = kr[d]; vv[j * vs + d] = vr[d]; }
        for (int64_t d = D; d < Dp; ++d) vv[j * vs + d] = 0.0f;
    }
    for (int64_t d = 0; d < D; ++d)
        for (int64_t j = L; j < Lp; ++j) kt[d * ks + j] = 0.0f;
    for (int64_t t0 = 0; t0 < L; t0 += TQ_ROWS) {
        const int64_t nt = L - t0 < TQ_ROWS ? L - t0 : TQ_ROWS;
        for (int r = 0; r < TQ_ROWS; ++r) {
            const float* q = base + (t0 + (r < nt ? r : 0)) * row + qo + h * D;
            for (int64_t d = 0; d < D; ++d) qs[r * qd + d] = q[d] * scaling;
        }
        for (int64_t jb = 0; jb < Lp; jb += 32) {
            v16 acc[TQ_ROWS][2];
            tile_4x32(qs, qd, kt + jb, ks, D, acc);
            for (int r = 0; r < TQ_ROWS; ++r) {
                *(v16u*)(sc + r * ss + jb) = acc[r][0];
                *(v16u*)(sc + r * ss + jb + 16) = acc[r][1];
            }
        }
        for (int r = 0; r < TQ_ROWS; ++r) {
            float* sr = sc + r * ss;
            inv[r] = 0.0f;
            if (r >= nt) { for (int64_t j = 0; j < L; ++j) sr[j] = 0.0f; continue; }
            if (am->mask) {
                const float* mr = am->mask + b * am->mb + h * am->mh + (t0 + r) * am->mq;
                for (int64_t j = 0; j < L; ++j) sr[j] += mr[j];
            }
            if (am->bias) {
                const float* br = am->bias + b * am->bb + h * am->bh + (t0 + r) * am->bq;
                for (int64_t j = 0; j < L; ++j) sr[j] += br[j];
            }
            if (am->causal) for (int64_t j = t0 + r + 1; j < L; ++j) sr[j] = -INFINITY;
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
            tile_4x32(sc, ss, vv + db, vs, L, cs);
            for (int r = 0; r < TQ_ROWS; ++r) { cs[r][0] *= inv[r]; cs[r][1] *= inv[r]; }
            const int64_t w = D - db < 32 ? D - db : 32;
            for (int r = 0; r < nt; ++r) {
                float* o = out + (b * L + t0 + r) * NH * D + h * D + db;
                for (int64_t d = 0; d < w; ++d) o[d] = cs[r][d >> 4][d & 15];
            }
        }
    }
}

/* Every head of every sequence; NKV key/value heads (grouped-query attention: query head h reads key/value head
   h / (NH / NKV); NKV = NH is plain multi-head attention). */
void tq_attention(const float* qkv, int64_t B, int64_t L, int64_t NH, int64_t NKV, int64_t D, int64_t row,
                  int64_t qo, int64_t ko, int64_t vo, const TqAttnMask* am, float scaling, float* out, int nthreads) {
    const int64_t group = NH / NKV;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && B * NH > 1 && B * NH * L * L * D >= 4194304)
    {
        float* scratch = (float*)malloc(sizeof(float) * (size_t)attention_scratch(L, D));
        #pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < B; ++b)
            for (int64_t h = 0; h < NH; ++h)
                attention_head(qkv, b, h, h / group, L, NH, D, row, qo, ko, vo, am, scaling, out, scratch);
        free(scratch);
    }
}

#include "tq_gemm_isa.h"

const char* tq_gemm_isa(void) { return TQ_GEMM_ISA; }

/* A linear layer as the fused kernels read it. */
typedef struct {
    const uint8_t* panels;  /* u = code + 1, 2 bits each, the panel layout above */
    const int8_t* codes;    /* int8 [K, N]: the outlier inputs' weight rows */
    const float* scale;     /* [N] */
    const float* bias;      /* [N] or NULL */
    int64_t K, N;
    int64_t nout;           /* float outliers per token of this layer's input */
} TqLinear;

static inline int64_t ceil_to(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* c[m, n] (int32, row stride ldc) = sum_k q[m, k] * code[k, n] for m < M, n < N. q: int8 rows of stride
   ceil(K, 4), at least ceil(M, 4) of them (rows past M are read, never written back); rowsum[m] = sum_k q[m, k].
   Work items are (TQ_MC tokens, one panel): `gemm_team` shares them among the threads of the enclosing OpenMP
   region (every thread of the team must call it). */
static inline int64_t gemm_items(const TqLinear* W, int64_t M) { return ((M + TQ_MC - 1) / TQ_MC) * ((W->N + 63) / 64); }

static void gemm_item(const TqLinear* W, const int8_t* q, const int32_t* rowsum, int64_t M, int32_t* c, int64_t ldc,
                      int64_t item) {
    const int64_t P = (W->N + 63) / 64, Kg = (W->K + 3) / 4, lda = 4 * Kg;
    const int64_t ch = item / P, p = item % P;
    const uint8_t* panel = W->panels + p * Kg * 64;
    const int cols = (int)(W->N - p * 64 < 64 ? W->N - p * 64 : 64);
    const int64_t end = (ch + 1) * TQ_MC < M ? (ch + 1) * TQ_MC : M;
    for (int64_t m = ch * TQ_MC; m < end; m += TQ_MR)
        gemm_block(q + m * lda, lda, panel, Kg, rowsum + m, c + m * ldc + p * 64, ldc,
                   (int)(end - m < TQ_MR ? end - m : TQ_MR), cols);
}

static void gemm_team(const TqLinear* W, const int8_t* q, const int32_t* rowsum, int64_t M, int32_t* c, int64_t ldc) {
    const int64_t n = gemm_items(W, M);
    #pragma omp for schedule(static)
    for (int64_t it = 0; it < n; ++it) gemm_item(W, q, rowsum, M, c, ldc, it);
}

/* One token's input quantization for the GEMM: quantize_row, plus the activation sum the GEMM subtracts. */
static inline void quantize_token(const float* xr, int64_t K, int nout, int8_t* q, float* scale, int64_t* oidx,
                                  float* oval, int32_t* rowsum, int64_t m, int32_t* mag) {
    int8_t* qr = q + m * ceil_to(K, 4);
    quantize_row(xr, K, qr, scale + m, oidx + m * nout, oval + m * nout, nout, mag);
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += qr[k];
    rowsum[m] = s;
}

/* The exact int32 product of int8 q [M, K] (contiguous) and the codes whose panels are given: for tests
   and benchmarks against other int8 GEMMs. */
void tq_gemm(const int8_t* q, int64_t M, int64_t K, const uint8_t* panels, int64_t N, int32_t* c, int nthreads) {
    const int64_t Mp = ceil_to(M, TQ_MR), Kp = ceil_to(K, 4);
    int8_t* qp = (int8_t*)calloc((size_t)(Mp * Kp), 1);
    int32_t* rowsum = (int32_t*)calloc((size_t)Mp, sizeof(int32_t));
    for (int64_t m = 0; m < M; ++m) {
        int32_t s = 0;
        for (int64_t k = 0; k < K; ++k) { qp[m * Kp + k] = q[m * K + k]; s += q[m * K + k]; }
        rowsum[m] = s;
    }
    const TqLinear W = {panels, NULL, NULL, NULL, K, N, 0};
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * K * N >= TQ_GEMM_PAR_MIN)
    gemm_team(&W, qp, rowsum, M, c, N);
    free(qp); free(rowsum);
}

/* ---------------------------------------------------------------- a whole BERT encoder layer in one call */
typedef struct {
    TqLinear qkv;           /* query|key|value concatenated: N = 3 * heads * head_dim */
    TqLinear attn_out, inter, out;
    const float* ln1_weight; const float* ln1_bias; const float* ln2_weight; const float* ln2_bias;
    float ln1_eps, ln2_eps, scaling;
    int64_t heads, head_dim;
} TqLayer;

typedef struct {
    int8_t* q; int32_t* rowsum;               /* the current GEMM input, ceil(M, 4) rows */
    float* scale[2]; int64_t* oidx[2]; float* oval[2];  /* two slots: a rescale reads one while the next quantization fills the other */
    int32_t* big;                             /* query|key|value, then the intermediate activations */
    float* ctx; float* h;                     /* attention output; the first sub-layer's output */
    char* scratch; int64_t per_thread;        /* attention blocks, outlier sums, magnitudes */
} TqWorkspace;

static inline int64_t max2(int64_t a, int64_t b) { return a > b ? a : b; }

/* Carves the workspace of a layer call out of `base` (NULL: only the size); returns its size in bytes. */
static int64_t layer_workspace(const TqLayer* L, int64_t M, int64_t T, int nthreads, char* base, TqWorkspace* w) {
    const TqLinear* lin[4] = {&L->qkv, &L->attn_out, &L->inter, &L->out};
    int64_t kq = 0, wide = 0, nmax = 1;
    for (int i = 0; i < 4; ++i) {
        kq = max2(kq, ceil_to(lin[i]->K, 4));
        wide = max2(wide, max2(lin[i]->K, lin[i]->N));
        nmax = max2(nmax, lin[i]->nout);
    }
    const int64_t Mp = ceil_to(M, TQ_MR);
    int64_t at = 0;
#define TQ_CARVE(field, type, count) do { if (w) w->field = (type*)(base + at); at += ceil_to((int64_t)sizeof(type) * (count), 64); } while (0)
    TQ_CARVE(q, int8_t, Mp * kq);
    TQ_CARVE(rowsum, int32_t, Mp);
    for (int s = 0; s < 2; ++s) { TQ_CARVE(scale[s], float, Mp); TQ_CARVE(oidx[s], int64_t, M * nmax); TQ_CARVE(oval[s], float, M * nmax); }
    TQ_CARVE(big, int32_t, M * max2(L->qkv.N, L->inter.N));
    TQ_CARVE(ctx, float, M * L->attn_out.K);
    TQ_CARVE(h, float, M * L->attn_out.N);
#undef TQ_CARVE
    const int64_t per = ceil_to(4 * attention_scratch(T, L->head_dim), 64) + 2 * ceil_to(4 * wide, 64);
    if (w) { w->scratch = base + at; w->per_thread = per; }
    return at + per * nthreads;
}

int64_t tq_layer_workspace_bytes(const TqLayer* L, int64_t B, int64_t T, int nthreads) {
    return layer_workspace(L, B * T, T, nthreads, NULL, NULL);
}

/* ---------------------------------------------------------------- the worker pool of the layer calls
   At batch 1 a layer is ~30 steps of a few microseconds each. An OpenMP team would make the caller wait at
   every step for a worker that may not be running: on a shared or virtual machine an idle CPU can take
   milliseconds to be woken (we measured 10-40 ms stalls). Here the caller never waits for a thread that has
   not started: every step (a "stage") is a list of items claimed one at a time by whichever threads are
   there, the caller included; the caller waits only for items that were claimed. Workers spin (yielding)
   for TQ_SPIN_NS after their last stage, then sleep on a futex. The yield matters: the scheduler may place a
   just-woken worker on the caller's own CPU, and a worker spinning there took the caller's time (1 x 32 after
   an idle pause: 4.5 ms instead of 3.1 ms). One caller at a time uses the pool; a concurrent caller (another
   Python thread) runs its stages alone. After fork() the child has no workers: the caller does everything. */
typedef void (*tq_item_fn)(void* ctx, int64_t item, int tid);

static struct {
    _Atomic uint64_t claim;   /* stage tag (24 bits) | items (20 bits) | next item (20 bits) */
    _Atomic int64_t done;
    _Atomic uint32_t seq;     /* futex word: the tag of the latest stage */
    _Atomic int sleeping;
    tq_item_fn fn;
    void* ctx;
    uint32_t tag;
    int workers;
    pid_t owner;              /* the process that started the workers */
} tq_pool;
static pthread_mutex_t tq_pool_busy = PTHREAD_MUTEX_INITIALIZER;
#define TQ_ITEMS_MAX 0xfffff
#define TQ_SPIN_NS 2000000L

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static int pool_claim(int64_t* item) {
    uint64_t v = atomic_load(&tq_pool.claim);
    for (;;) {
        const uint64_t n = (v >> 20) & TQ_ITEMS_MAX, next = v & TQ_ITEMS_MAX;
        if (next >= n) return 0;
        if (atomic_compare_exchange_weak(&tq_pool.claim, &v, v + 1)) { *item = (int64_t)next; return 1; }
    }
}

static void* pool_worker(void* arg) {
    const int tid = (int)(intptr_t)arg;
    uint32_t last = atomic_load(&tq_pool.seq);
    for (;;) {
        uint32_t now;
        unsigned spins = 0;
        int64_t since = now_ns();
        while ((now = atomic_load(&tq_pool.seq)) == last) {
            tq_cpu_relax();
            if (++spins % 64) continue;
            /* yield: a woken worker may have been placed on the caller's CPU (the other one idle) and must not
               take its time while it waits */
            sched_yield();
            if (now_ns() - since < TQ_SPIN_NS) continue;
            atomic_fetch_add(&tq_pool.sleeping, 1);
            syscall(SYS_futex, &tq_pool.seq, FUTEX_WAIT_PRIVATE, last, NULL, NULL, 0);
            atomic_fetch_sub(&tq_pool.sleeping, 1);
            since = now_ns();
        }
        last = now;
        int64_t item;
        while (pool_claim(&item)) {  /* a successful claim pins the stage: fn and ctx are its own */
            tq_pool.fn(tq_pool.ctx, item, tid);
            atomic_fetch_add(&tq_pool.done, 1);
        }
    }
    return NULL;
}

/* Take the pool for one call with `nthreads` threads (starting workers as needed). Returns how many threads
   will take part (1: run alone). */
static int pool_acquire(int nthreads) {
    if (nthreads <= 1 || pthread_mutex_trylock(&tq_pool_busy) != 0) return 1;
    if (tq_pool.owner != getpid()) { tq_pool.workers = 0; tq_pool.owner = getpid(); }  /* a forked child */
    while (tq_pool.workers < nthreads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int ok = pthread_create(&t, &attr, pool_worker, (void*)(intptr_t)(tq_pool.workers + 1)) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        tq_pool.workers++;
    }
    if (tq_pool.workers == 0 || tq_pool.workers > nthreads - 1) { pthread_mutex_unlock(&tq_pool_busy); return 1; }
    return tq_pool.workers + 1;
}

static void pool_release(int team) { if (team > 1) pthread_mutex_unlock(&tq_pool_busy); }

/* fn(ctx, i, tid) for i < n, shared with the pool's workers when team > 1; returns when all are done. */
static void run_stage(int team, tq_item_fn fn, void* ctx, int64_t n) {
    if (team <= 1 || n == 1) { for (int64_t i = 0; i < n; ++i) fn(ctx, i, 0); return; }
    for (int64_t start = 0; start < n; start += TQ_ITEMS_MAX) {  /* (never more than 2^20 items in practice) */
        const int64_t count = n - start < TQ_ITEMS_MAX ? n - start : TQ_ITEMS_MAX;
        tq_pool.fn = fn;
        tq_pool.ctx = ctx;
        atomic_store(&tq_pool.done, 0);
        tq_pool.tag = (tq_pool.tag + 1) & 0xffffff;
        atomic_store(&tq_pool.claim, ((uint64_t)tq_pool.tag << 40) | ((uint64_t)count << 20));
        atomic_store(&tq_pool.seq, tq_pool.tag);
        if (atomic_load(&tq_pool.sleeping)) syscall(SYS_futex, &tq_pool.seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        int64_t item;
        while (pool_claim(&item)) { fn(ctx, item, 0); atomic_fetch_add(&tq_pool.done, 1); }
        while (atomic_load(&tq_pool.done) < count) tq_cpu_relax();
    }
}

#define TQ_OI(s, n, m) ((n) ? w->oidx[s] + (m) * (n) : NULL)
#define TQ_OV(s, n, m) ((n) ? w->oval[s] + (m) * (n) : NULL)
#define TQ_RB 4    /* tokens per item of the row-wise stages */

/* What the stages of one layer call read. */
typedef struct {
    const TqLayer* L; const float* x; float* y; const float* mask;
    int64_t mb, mq, B, T, M;
    TqWorkspace* w;
    const TqLinear* lin; int32_t* gout;  /* the current GEMM: weights, output (row stride lin->N) */
} LayerCall;

static inline float* thread_o(const LayerCall* c, int tid) {
    return (float*)(c->w->scratch + tid * c->w->per_thread + ceil_to(4 * attention_scratch(c->T, c->L->head_dim), 64));
}
static inline int32_t* thread_mag(const LayerCall* c, int tid) {
    const int64_t att = ceil_to(4 * attention_scratch(c->T, c->L->head_dim), 64);
    return (int32_t*)(c->w->scratch + tid * c->w->per_thread + att + (c->w->per_thread - att) / 2);
}
#define TQ_ROWS_OF(item) for (int64_t m = (item) * TQ_RB, m_end = m + TQ_RB < c->M ? m + TQ_RB : c->M; m < m_end; ++m)

static void st_gemm(void* ctx, int64_t item, int tid) {
    const LayerCall* c = (const LayerCall*)ctx;
    gemm_item(c->lin, c->w->q, c->w->rowsum, c->M, c->gout, c->lin->N, item);
    (void)tid;
}

static void gemm_stage(int team, LayerCall* c, const TqLinear* W, int32_t* out) {
    c->lin = W;
    c->gout = out;
    run_stage(team, st_gemm, c, gemm_items(W, c->M));
}

static void st_quantize_x(void* ctx, int64_t item, int tid) {
    const LayerCall* c = (const LayerCall*)ctx;
    TqWorkspace* w = c->w;
    const int64_t H = c->L->attn_out.N;
    TQ_ROWS_OF(item) quantize_token(c->x + m * H, H, (int)c->L->qkv.nout, w->q, w->scale[0], w->oidx[0], w->oval[0],
                                    w->rowsum, m, thread_mag(c, tid));
}

static void st_rescale_qkv(void* ctx, int64_t item, int tid) {
    const LayerCall* c = (const LayerCall*)ctx;
    TqWorkspace* w = c->w;
    const TqLinear* W = &c->L->qkv;
    const int n0 = (int)W->nout;
    TQ_ROWS_OF(item) rescale_row(w->big + m * W->N, W->N, W->scale, w->scale[0][m], W->bias, W->codes,
                                 TQ_OI(0, n0, m), TQ_OV(0, n0, m), n0, thread_o(c, tid), (float*)(w->big + m * W->N));
}

static void st_attention(void* ctx, int64_t item, int tid) {
    const LayerCall* c = (const LayerCall*)ctx;
    const TqLayer* L = c->L;
    const int64_t inner = L->heads * L->head_dim;
    const TqAttnMask am = {c->mask, c->mb, 0, c->mq, NULL, 0, 0, 0, 0};
    attention_head((const float*)c->w->big, item / L->heads, item % L->heads, item % L->heads, c->T, L->heads,
                   L->head_dim, L->qkv.N, 0, inner, 2 * inner, &am, L->scaling, c->w->ctx,
                   (float*)(c->w->scratch + tid * c->w->per_thread));
}

/* One sequence from its quantized input to its attention output: the q|k|v GEMM of its rows, the rescale, and
   every head. Stage by stage, the q|k|v of a 32 x 128 batch (19 MB) left the cache between the GEMM that wrote
   it and the attention that gathers it back head by head; per sequence it is 0.6 MB. Same operations, same
   results as the separate stages. */
static void st_sequence_attention(void* ctx, int64_t b, int tid) {
    const LayerCall* c = (const LayerCall*)ctx;
    const TqLayer* L = c->L;
    const TqLinear* W = &L->qkv;
    TqWorkspace* w = c->w;
    const int64_t m0 = b * c->T, m1 = m0 + c->T, P = (W->N + 63) / 64, Kg = (W->K + 3) / 4, lda = 4 * Kg;
    for (int64_t p = 0; p < P; ++p) {
        const int cols = (int)(W->N - p * 64 < 64 ? W->N - p * 64 : 64);
        for (int64_t m = m0; m < m1; m += TQ_MR)
            gemm_block(w->q + m * lda, lda, W->panels + p * Kg * 64, Kg, w->rowsum + m, w->big + m * W->N + p * 64,
                       W->N, (int)(m1 - m < TQ_MR ? m1 - m : TQ_MR), cols);
    }
    const int n0 = (int)W->nout;
    for (int64_t m = m0; m < m1; ++m)
        rescale_row(w->big + m * W->N, W->N, W->scale, w->scale[0][m], W->bias, W->codes, TQ_OI(0, n0, m),
                    TQ_OV(0, n0, m), n0, thread_o(c, tid), (float*)(w->big + m * W->N));
    for (int64_t h = 0; h < L->heads; ++h) st_attention(ctx, b * L->heads + h, tid);
}

static void st_quantize_ctx(void* ctx, int64_t item, int tid) {
    const LayerCall* c = (const LayerCall*)ctx;
    TqWorkspace* w = c->w;
    const int64_t inner = c->L->attn_out.K;
    TQ_ROWS_OF(item) quantize_token(w->ctx + m * inner, inner, (int)c->L->attn_out.nout, w->q, w->scale[1], w->oidx[1],
                                    w->oval[1], w->rowsum, m, thread_mag(c, tid));
}

static void st_norm1_quantize(void* ctx, int64_t item, int tid) {
    const LayerCall* c = (const LayerCall*)ctx;
    const TqLayer* L = c->L;
    TqWorkspace* w = c->w;
    const TqLinear* W = &L->attn_out;
    const int64_t H = W->N;
    const int n1 = (int)W->nout;
    TQ_ROWS_OF(item) {
        float* hr = w->h + m * H;
        rescale_add_layernorm_row((const int32_t*)hr, H, W->scale, w->scale[1][m], W->bias, W->codes, TQ_OI(1, n1, m),
                                  TQ_OV(1, n1, m), n1, thread_o(c, tid), c->x + m * H, L->ln1_weight, L->ln1_bias,
                                  L->ln1_eps, hr);
        quantize_token(hr, H, (int)L->inter.nout, w->q, w->scale[0], w->oidx[0], w->oval[0], w->rowsum, m,
                       thread_mag(c, tid));
    }
}

static void st_gelu_quantize(void* ctx, int64_t item, int tid) {
    const LayerCall* c = (const LayerCall*)ctx;
    const TqLayer* L = c->L;
    TqWorkspace* w = c->w;
    const TqLinear* W = &L->inter;
    const int64_t I = W->N;
    const int n2 = (int)W->nout, n3 = (int)L->out.nout;
    TQ_ROWS_OF(item) {
        int8_t* qr = w->q + m * ceil_to(I, 4);
        rescale_gelu_quantize_row(w->big + m * I, I, W->scale, w->scale[0][m], W->bias, W->codes, TQ_OI(0, n2, m),
                                  TQ_OV(0, n2, m), n2, thread_o(c, tid), qr, w->scale[1] + m, w->oidx[1] + m * n3,
                                  w->oval[1] + m * n3, n3, thread_mag(c, tid));
        int32_t sum = 0;
        for (int64_t k = 0; k < I; ++k) sum += qr[k];
        w->rowsum[m] = sum;
    }
}

static void st_norm2(void* ctx, int64_t item, int tid) {
    const LayerCall* c = (const LayerCall*)ctx;
    const TqLayer* L = c->L;
    TqWorkspace* w = c->w;
    const TqLinear* W = &L->out;
    const int64_t H = W->N;
    const int n3 = (int)W->nout;
    TQ_ROWS_OF(item)
        rescale_add_layernorm_row((const int32_t*)(c->y + m * H), H, W->scale, w->scale[1][m], W->bias, W->codes,
                                  TQ_OI(1, n3, m), TQ_OV(1, n3, m), n3, thread_o(c, tid), w->h + m * H,
                                  L->ln2_weight, L->ln2_bias, L->ln2_eps, c->y + m * H);
}

/* One layer with a team from pool_acquire (the workspace holds `team` threads' scratch). */
static void encoder_layer(int team, const TqLayer* L, const float* x, int64_t B, int64_t T, const float* mask,
                          int64_t mb, int64_t mq, float* y, char* workspace, int nthreads) {
    TqWorkspace w;
    const int64_t M = B * T, rows = (M + TQ_RB - 1) / TQ_RB;
    layer_workspace(L, M, T, nthreads, workspace, &w);
    LayerCall c = {L, x, y, mask, mb, mq, B, T, M, &w, NULL, NULL};
    run_stage(team, st_quantize_x, &c, rows);
    if (B >= 2 * team) {  /* enough sequences to share: each one's q|k|v goes to attention while in cache */
        run_stage(team, st_sequence_attention, &c, B);
    } else {
        gemm_stage(team, &c, &L->qkv, w.big);
        run_stage(team, st_rescale_qkv, &c, rows);
        run_stage(team, st_attention, &c, B * L->heads);
    }
    run_stage(team, st_quantize_ctx, &c, rows);
    gemm_stage(team, &c, &L->attn_out, (int32_t*)w.h);
    run_stage(team, st_norm1_quantize, &c, rows);
    gemm_stage(team, &c, &L->inter, w.big);
    run_stage(team, st_gelu_quantize, &c, rows);
    gemm_stage(team, &c, &L->out, (int32_t*)y);
    run_stage(team, st_norm2, &c, rows);
}

/* y [B*T, H] = BERT encoder layer (self-attention, LayerNorm, GELU feed-forward, LayerNorm) of x [B*T, H]: the
   steps of fused_layer.py with this file's GEMM, on up to `nthreads` threads of the pool. `mask` as in
   tq_attention. */
void tq_encoder_layer(const TqLayer* L, const float* x, int64_t B, int64_t T, const float* mask, int64_t mb,
                      int64_t mq, float* y, char* workspace, int nthreads) {
    const int team = pool_acquire(nthreads);
    encoder_layer(team, L, x, B, T, mask, mb, mq, y, workspace, nthreads);
    pool_release(team);
}

/* ---------------------------------------------------------------- a whole BERT model: embeddings, encoder, pooler */
static inline void layernorm_row(float* yr, int64_t N, const float* gamma, const float* beta, float eps) {
    float sum = 0.0f;
    #pragma omp simd reduction(+:sum)
    for (int64_t n = 0; n < N; ++n) sum += yr[n];
    const float mean = sum / (float)N;
    float sq = 0.0f;
    #pragma omp simd reduction(+:sq)
    for (int64_t n = 0; n < N; ++n) { float d = yr[n] - mean; sq += d * d; }
    const float rstd = 1.0f / sqrtf(sq / (float)N + eps);
    for (int64_t n = 0; n < N; ++n) yr[n] = (yr[n] - mean) * rstd * gamma[n] + beta[n];
}

typedef struct {
    const float* words;      /* [vocab, H] float32 table, or NULL when `word_rows` holds the looked-up rows */
    const float* positions;  /* [npos, H] */
    const float* types;      /* [ntypes, H] */
    const float* ln_weight; const float* ln_bias;
    float ln_eps;
    int64_t vocab, npos, ntypes, hidden;
} TqEmbeddings;

static int64_t bert_workspace(const TqLayer* layers, int64_t nlayers, int64_t B, int64_t T, int nthreads) {
    int64_t lw = 0;
    for (int64_t i = 0; i < nlayers; ++i) lw = max2(lw, layer_workspace(layers + i, B * T, T, nthreads, NULL, NULL));
    return 2 * ceil_to(4 * B * T * layers[0].attn_out.N, 64) + ceil_to(4 * B * T, 64) + lw;
}

int64_t tq_bert_workspace_bytes(const TqLayer* layers, int64_t nlayers, int64_t B, int64_t T, int nthreads) {
    return bert_workspace(layers, nlayers, B, T, nthreads);
}

typedef struct {
    const TqEmbeddings* E; const int64_t* ids; const float* word_rows; const int64_t* types; float* out; int64_t T;
} EmbedCall;

static void st_embed(void* ctx, int64_t i, int tid) {
    const EmbedCall* c = (const EmbedCall*)ctx;
    const TqEmbeddings* E = c->E;
    const int64_t H = E->hidden;
    float* xr = c->out + i * H;
    const float* w = E->words ? E->words + c->ids[i] * H : c->word_rows + i * H;
    const float* p = E->positions + (i % c->T) * H;
    const float* t = E->types + (c->types ? c->types[i] : 0) * H;
    for (int64_t n = 0; n < H; ++n) { float v = w[n] + t[n]; xr[n] = v + p[n]; }
    layernorm_row(xr, H, E->ln_weight, E->ln_bias, E->ln_eps);
    (void)tid;
}

/* The last hidden state y [B*T, H] of a BERT encoder: embeddings (word + position t + token type, LayerNorm),
   then every layer (tq_encoder_layer). ids/types int64 [B, T] (types NULL: type 0); attention int64 [B, T]
   (0 = padding; NULL: none). Returns 0, or -1 (nothing computed) when an id or type is out of range. */
int tq_bert_encoder(const TqEmbeddings* E, const TqLayer* layers, int64_t nlayers, const int64_t* ids,
                    const float* word_rows, const int64_t* types, const int64_t* attention, int64_t B, int64_t T,
                    float* y, char* workspace, int nthreads) {
    const int64_t M = B * T, H = E->hidden;
    if (T > E->npos) return -1;
    for (int64_t i = 0; i < M; ++i) {
        if (E->words && (ids[i] < 0 || ids[i] >= E->vocab)) return -1;
        if (types && (types[i] < 0 || types[i] >= E->ntypes)) return -1;
    }
    float* hid[2] = {(float*)workspace, (float*)(workspace + ceil_to(4 * M * H, 64))};
    float* mask = (float*)(workspace + 2 * ceil_to(4 * M * H, 64));
    char* lw = (char*)mask + ceil_to(4 * M, 64);
    int masked = 0;
    if (attention)
        for (int64_t i = 0; i < M; ++i) { mask[i] = attention[i] ? 0.0f : -INFINITY; masked |= !attention[i]; }
    EmbedCall ec = {E, ids, word_rows, types, hid[0], T};
    const int team = pool_acquire(nthreads);
    run_stage(team, st_embed, &ec, M);
    for (int64_t l = 0; l < nlayers; ++l)
        encoder_layer(team, layers + l, hid[l & 1], B, T, masked ? mask : NULL, T, 0,
                      l + 1 == nlayers ? y : hid[(l + 1) & 1], lw, nthreads);
    pool_release(team);
    if (nlayers == 0) memcpy(y, hid[0], sizeof(float) * (size_t)(M * H));
    return 0;
}

/* y [M, N] = act(linear(x)) for M rows of x (row stride ldx), one thread; act 1 = tanh (BERT's pooler). */
void tq_linear_rows(const TqLinear* W, const float* x, int64_t M, int64_t ldx, float* y, int act) {
    const int64_t Mp = ceil_to(M, TQ_MR), K = W->K, N = W->N, n = W->nout;
    int8_t* q = (int8_t*)calloc((size_t)(Mp * ceil_to(K, 4)), 1);
    int32_t* rowsum = (int32_t*)calloc((size_t)Mp, sizeof(int32_t));
    float* scale = (float*)calloc((size_t)Mp, sizeof(float));
    int64_t* oidx = (int64_t*)calloc((size_t)(M * n + 1), sizeof(int64_t));
    float* oval = (float*)calloc((size_t)(M * n + 1), sizeof(float));
    int32_t* acc = (int32_t*)malloc(sizeof(int32_t) * (size_t)(M * N));
    float* o = (float*)malloc(sizeof(float) * (size_t)N);
    int32_t* mag = (int32_t*)malloc(sizeof(int32_t) * (size_t)K);
    for (int64_t m = 0; m < M; ++m) quantize_token(x + m * ldx, K, (int)n, q, scale, oidx, oval, rowsum, m, mag);
    gemm_team(W, q, rowsum, M, acc, N);
    for (int64_t m = 0; m < M; ++m) {
        float* yr = y + m * N;
        rescale_row(acc + m * N, N, W->scale, scale[m], W->bias, W->codes, n ? oidx + m * n : NULL,
                    n ? oval + m * n : NULL, (int)n, o, yr);
        if (act == 1) for (int64_t j = 0; j < N; ++j) yr[j] = tanhf(yr[j]);
    }
    free(q); free(rowsum); free(scale); free(oidx); free(oval); free(acc); free(o); free(mag);
}
#include "tq_blocks.h"
