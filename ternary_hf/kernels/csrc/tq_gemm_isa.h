/* The inner block of the ternary GEMM, one variant per instruction set, chosen at compile time by the
   target's feature macros: AVX-512 VNNI, AVX-VNNI / AVX2, or a portable C loop (any CPU; what
   `-march=x86-64` and ARM builds get). Every variant computes the same exact int32 product. Included once,
   by tq_cpu.c. */
#ifndef TQ_GEMM_ISA_H
#define TQ_GEMM_ISA_H
#include "tq_platform.h"

/* ---------------------------------------------------------------- ternary GEMM
   Weights are stored as u = code + 1 in {0, 1, 2} (2 bits) and activations are int8, so
       sum_k a[k] * code[k] = sum_k a[k] * u[k] - sum_k a[k]:
   an unsigned x signed byte dot product (VNNI's vpdpbusd; vpmaddubsw + vpmaddwd on AVX2) minus the token's
   activation sum. |a * u| <= 254, so AVX2's 16-bit pair sums cannot saturate. The result is the exact int32
   product, identical to oneDNN's int8 GEMM of the codes.
   Layout ("panels"): output columns in panels of 64, inputs in groups of 4; one group of one panel is 64 bytes:
       bits 2j..2j+1 of byte [(p * Kg + g) * 64 + c * 4 + r] = u[k = 4g + r][n = 64p + 16j + c]   (Kg = ceil(K/4))
   and 0 for padding (k >= K or n >= N), so padded inputs contribute nothing whatever the activations hold.
   `(byte >> 2j) & 3` over the 64 bytes is the j-th register of bytes for vpdpbusd (16 columns x 4 inputs):
   weights stream from memory at 2 bits each, 4x less than int8 (what a cold cache pays for). */
#define TQ_MR 4    /* tokens per register tile */
#define TQ_MC 64   /* tokens per work item: their activations stay in L1 while the panels stream by */

#if defined(__AVX512VNNI__) && defined(__AVX512F__) && defined(__AVX512BW__)
#define TQ_GEMM_ISA "avx512-vnni"
/* 16 accumulators as named variables: with an array GCC copies every accumulator around each vpdpbusd */
#define TQ_ROW4(r, x) do { \
        c##r##0 = _mm512_dpbusd_epi32(c##r##0, w0, x); c##r##1 = _mm512_dpbusd_epi32(c##r##1, w1, x); \
        c##r##2 = _mm512_dpbusd_epi32(c##r##2, w2, x); c##r##3 = _mm512_dpbusd_epi32(c##r##3, w3, x); } while (0)
static inline __m512i bcast4(const int8_t* p) { int32_t v; memcpy(&v, p, 4); return _mm512_set1_epi32(v); }
static inline void store_row(int32_t* c, int32_t sum, int cols, __m512i v0, __m512i v1, __m512i v2, __m512i v3) {
    const __m512i s = _mm512_set1_epi32(sum);
    const __m512i v[4] = {_mm512_sub_epi32(v0, s), _mm512_sub_epi32(v1, s), _mm512_sub_epi32(v2, s), _mm512_sub_epi32(v3, s)};
    for (int j = 0; j < 4 && 16 * j < cols; ++j) {
        const int left = cols - 16 * j;
        if (left >= 16) _mm512_storeu_si512(c + 16 * j, v[j]);
        else _mm512_mask_storeu_epi32(c + 16 * j, (__mmask16)((1u << left) - 1u), v[j]);
    }
}
static inline void gemm_block(const int8_t* a, int64_t lda, const uint8_t* panel, int64_t Kg,
                              const int32_t* rowsum, int32_t* c, int64_t ldc, int rows, int cols) {
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    __m512i c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    const int8_t *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda;
    const __m512i three = _mm512_set1_epi8(3);
    for (int64_t g = 0; g < Kg; ++g) {
        const __m512i p = _mm512_loadu_si512(panel + g * 64);
        const __m512i w0 = _mm512_and_si512(p, three), w1 = _mm512_and_si512(_mm512_srli_epi16(p, 2), three);
        const __m512i w2 = _mm512_and_si512(_mm512_srli_epi16(p, 4), three), w3 = _mm512_and_si512(_mm512_srli_epi16(p, 6), three);
        const __m512i x0 = bcast4(a0 + 4 * g), x1 = bcast4(a1 + 4 * g), x2 = bcast4(a2 + 4 * g), x3 = bcast4(a3 + 4 * g);
        TQ_ROW4(0, x0); TQ_ROW4(1, x1); TQ_ROW4(2, x2); TQ_ROW4(3, x3);
    }
    store_row(c, rowsum[0], cols, c00, c01, c02, c03);
    if (rows > 1) store_row(c + ldc, rowsum[1], cols, c10, c11, c12, c13);
    if (rows > 2) store_row(c + 2 * ldc, rowsum[2], cols, c20, c21, c22, c23);
    if (rows > 3) store_row(c + 3 * ldc, rowsum[3], cols, c30, c31, c32, c33);
}
#elif defined(__AVX2__)
#if defined(__AVXVNNI__)
#define TQ_GEMM_ISA "avx-vnni"
static inline __m256i dot4(__m256i acc, __m256i w, __m256i x) { return _mm256_dpbusd_avx_epi32(acc, w, x); }
#else
#define TQ_GEMM_ISA "avx2"
static inline __m256i dot4(__m256i acc, __m256i w, __m256i x) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
}
#endif
/* 16 registers: a quarter panel (16 columns = 2 registers) at a time */
static inline void gemm_block(const int8_t* a, int64_t lda, const uint8_t* panel, int64_t Kg,
                              const int32_t* rowsum, int32_t* c, int64_t ldc, int rows, int cols) {
    for (int qt = 0; qt < 4 && 16 * qt < cols; ++qt) {
        __m256i acc[TQ_MR][2];
        for (int r = 0; r < TQ_MR; ++r) { acc[r][0] = _mm256_setzero_si256(); acc[r][1] = _mm256_setzero_si256(); }
        const __m256i three = _mm256_set1_epi8(3);
        for (int64_t g = 0; g < Kg; ++g) {
            const uint8_t* w = panel + g * 64;
            const __m256i w0 = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i*)w), 2 * qt), three);
            const __m256i w1 = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i*)(w + 32)), 2 * qt), three);
            for (int r = 0; r < TQ_MR; ++r) {
                int32_t four;
                memcpy(&four, a + r * lda + 4 * g, 4);
                const __m256i x = _mm256_set1_epi32(four);
                acc[r][0] = dot4(acc[r][0], w0, x);
                acc[r][1] = dot4(acc[r][1], w1, x);
            }
        }
        const int left = cols - 16 * qt < 16 ? cols - 16 * qt : 16;
        for (int r = 0; r < rows; ++r) {
            const __m256i s = _mm256_set1_epi32(rowsum[r]);
            int32_t tmp[16];
            _mm256_storeu_si256((__m256i*)tmp, _mm256_sub_epi32(acc[r][0], s));
            _mm256_storeu_si256((__m256i*)(tmp + 8), _mm256_sub_epi32(acc[r][1], s));
            memcpy(c + r * ldc + 16 * qt, tmp, sizeof(int32_t) * (size_t)left);
        }
    }
}
#else
#define TQ_GEMM_ISA "portable"
static inline void gemm_block(const int8_t* a, int64_t lda, const uint8_t* panel, int64_t Kg,
                              const int32_t* rowsum, int32_t* c, int64_t ldc, int rows, int cols) {
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j) {
            int32_t s = 0;
            for (int64_t g = 0; g < Kg; ++g)
                for (int t = 0; t < 4; ++t)
                    s += (int32_t)((panel[g * 64 + (j & 15) * 4 + t] >> (2 * (j >> 4))) & 3) * (int32_t)a[r * lda + 4 * g + t];
            c[r * ldc + j] = s - rowsum[r];
        }
}
#endif

#endif
