/* Building blocks of the general fused layer forward (kernels/layer_runner.py): every encoder / decoder layer the
   family descriptions in kernels/families/ map onto is a sequence of
       quantize -> ternary GEMM -> epilogue
   steps and one attention call (tq_attention). The epilogues below are the per-token passes between GEMMs:
   rescale of the int32 product, residual add, LayerNorm / RMSNorm, activation (plain or gated) and the next
   linear's int8 quantization, in one pass over each token's row while it is in cache. The rescale and the
   quantization are the bit-exact ones of tq_cpu.c (rescale_row, quantize_row); norms and activations agree
   with torch to float rounding. Included at the end of tq_cpu.c. */
#ifndef TQ_BLOCKS_H
#define TQ_BLOCKS_H

enum { TQ_NORM_NONE = 0, TQ_NORM_LAYER = 1, TQ_NORM_RMS = 2 };
enum { TQ_ACT_GELU = 0, TQ_ACT_GELU_TANH = 1, TQ_ACT_SILU = 2, TQ_ACT_RELU = 3 };

/* In place over one row: LayerNorm (biased variance, like torch; beta may be NULL) or RMSNorm
   (x * 1/sqrt(mean(x^2) + eps) * gamma, like the RMSNorm modules of Llama / Qwen). */
static inline void norm_row(float* v, int64_t N, int kind, const float* gamma, const float* beta, float eps) {
    if (kind == TQ_NORM_LAYER) {
        float sum = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int64_t n = 0; n < N; ++n) sum += v[n];
        const float mean = sum / (float)N;
        float sq = 0.0f;
        #pragma omp simd reduction(+:sq)
        for (int64_t n = 0; n < N; ++n) { float d = v[n] - mean; sq += d * d; }
        const float rstd = 1.0f / sqrtf(sq / (float)N + eps);
        if (beta) for (int64_t n = 0; n < N; ++n) v[n] = (v[n] - mean) * rstd * gamma[n] + beta[n];
        else      for (int64_t n = 0; n < N; ++n) v[n] = (v[n] - mean) * rstd * gamma[n];
    } else if (kind == TQ_NORM_RMS) {
        float sq = 0.0f;
        #pragma omp simd reduction(+:sq)
        for (int64_t n = 0; n < N; ++n) sq += v[n] * v[n];
        const float rstd = 1.0f / sqrtf(sq / (float)N + eps);
        for (int64_t n = 0; n < N; ++n) v[n] = gamma[n] * (v[n] * rstd);
    }
}

static inline float act_value(float v, int act) {
    switch (act) {
        case TQ_ACT_GELU: return 0.5f * v * (1.0f + erf_approx(v * 0.70710678118654752f));
        case TQ_ACT_GELU_TANH: return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        case TQ_ACT_SILU: return v / (1.0f + expf(-v));
        default: return v > 0.0f ? v : 0.0f;
    }
}

/* For every token m (all pointers but the inputs optional):
     v = acc ? rescale_row(acc[m], ...) : x[m]        the linear's output, or a float input
     v = v + residual[m]                              (residual)
     stream[m] = v                                    (stream: the residual stream after this sub-layer)
     u = norm(v)                                      (norm kind, gamma, beta)
     y[m] = u                                         (y: float output; may be stream or x itself)
     q[m], scale[m], qidx/qval = quantize_row(u)      (q: the next linear's int8 input, `nout` outliers)
   `acc` is read only. */
void tq_residual_norm(const int32_t* acc, const float* x, int64_t M, int64_t N, const float* ws, const float* a,
                      const float* bias, const int8_t* codes, const int64_t* oidx, const float* oval, int nout_in,
                      const float* residual, float* stream, int norm, const float* gamma, const float* beta,
                      float eps, float* y, int8_t* q, float* scale, int64_t* qidx, float* qval, int nout,
                      int nthreads) {
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * N >= TQ_PAR_MIN)
    {
        float* v = (float*)malloc(sizeof(float) * (size_t)N);
        float* o = nout_in ? (float*)malloc(sizeof(float) * (size_t)N) : NULL;
        int32_t* mag = nout > 1 ? (int32_t*)malloc(sizeof(int32_t) * (size_t)N) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            if (acc) rescale_row(acc + m * N, N, ws, a[m], bias, codes, nout_in ? oidx + m * nout_in : NULL,
                                 nout_in ? oval + m * nout_in : NULL, nout_in, o, v);
            else memcpy(v, x + m * N, sizeof(float) * (size_t)N);
            if (residual) { const float* r = residual + m * N; for (int64_t n = 0; n < N; ++n) v[n] = v[n] + r[n]; }
            if (stream) memcpy(stream + m * N, v, sizeof(float) * (size_t)N);
            norm_row(v, N, norm, gamma, beta, eps);
            if (y) memcpy(y + m * N, v, sizeof(float) * (size_t)N);
            if (q) quantize_row(v, N, q + m * N, scale + m, qidx + m * nout, qval + m * nout, nout, mag);
        }
        free(v); free(o); free(mag);
    }
}

/* The feed-forward middle for every token: h = rescale_row(acc[m]) over W = glu ? 2N : N columns, then
   u[n] = act(h[n]) * h[N + n] (gated: GeGLU / SwiGLU, the activated half first) or act(h[n]), then
   quantize_row(u) -> q [M, N] (the output linear's input). `acc` is overwritten. */
void tq_rescale_act_quantize(int32_t* acc, int64_t M, int64_t N, int glu, int act, const float* ws, const float* a,
                             const float* bias, const int8_t* codes, const int64_t* oidx, const float* oval,
                             int nout_in, int8_t* q, float* scale, int64_t* qidx, float* qval, int nout,
                             int nthreads) {
    const int64_t W = glu ? 2 * N : N;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * W >= TQ_PAR_MIN)
    {
        float* o = nout_in ? (float*)malloc(sizeof(float) * (size_t)W) : NULL;
        int32_t* mag = nout > 1 ? (int32_t*)malloc(sizeof(int32_t) * (size_t)N) : NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            float* h = (float*)(acc + m * W);
            rescale_row(acc + m * W, W, ws, a[m], bias, codes, nout_in ? oidx + m * nout_in : NULL,
                        nout_in ? oval + m * nout_in : NULL, nout_in, o, h);
            if (glu) for (int64_t n = 0; n < N; ++n) h[n] = act_value(h[n], act) * h[N + n];
            else     for (int64_t n = 0; n < N; ++n) h[n] = act_value(h[n], act);
            quantize_row(h, N, q + m * N, scale + m, qidx + m * nout, qval + m * nout, nout, mag);
        }
        free(o); free(mag);
    }
}

/* In place on `heads` heads of D channels starting at column `off` of every row (stride `row`) of a
   [B * T, row] buffer: optional per-head RMSNorm (gamma [D], Qwen3's q_norm / k_norm), then optional rotary
   embedding in the rotate-half convention of transformers: x * cos + rotate_half(x) * sin, cos / sin of token
   (b, t) at b * cb + t * ct (D floats). */
void tq_heads_norm_rope(float* x, int64_t B, int64_t T, int64_t row, int64_t off, int64_t heads, int64_t D,
                        const float* gamma, float eps, const float* cos, const float* sin, int64_t cb, int64_t ct,
                        int nthreads) {
    const int64_t half = D / 2;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && B * T * heads * D >= TQ_PAR_MIN)
    for (int64_t m = 0; m < B * T; ++m) {
        const int64_t b = m / T, t = m % T;
        const float* c = cos ? cos + b * cb + t * ct : NULL;
        const float* s = sin ? sin + b * cb + t * ct : NULL;
        for (int64_t h = 0; h < heads; ++h) {
            float* v = x + m * row + off + h * D;
            if (gamma) norm_row(v, D, TQ_NORM_RMS, gamma, NULL, eps);
            if (c) {
                for (int64_t i = 0; i < half; ++i) {
                    const float x1 = v[i], x2 = v[i + half];
                    const float a1 = x1 * c[i], b1 = -x2 * s[i];
                    const float a2 = x2 * c[i + half], b2 = x1 * s[i + half];
                    v[i] = a1 + b1;
                    v[i + half] = a2 + b2;
                }
            }
        }
    }
}

#endif
