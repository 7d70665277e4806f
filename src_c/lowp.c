/* Reduced-precision products (int8, bfloat16): packing, row quantization, the per-ISA tile
 * kernels and their run-time dispatch. The layout and numerics are described in lowp.h. */
#include "lowp.h"
#include "gates.h"        /* fl_isa_level: fl_force_isa_level caps these variants too */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FL_Q_X86 1
#include <immintrin.h>
#else
#define FL_Q_X86 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FL_Q_INLINE static inline __attribute__((always_inline))
#else
#define FL_Q_INLINE static inline
#endif

/* Quantized rows of A live in a stack buffer of this many bytes (a few rows at K = 8192). */
#define FL_Q_STACK (128 << 10)
/* At most this many rows are quantized at a time (their scales are on the stack too). */
#define FL_Q_MAX_ROWS 256
#define FL_Q_MAXMR 6            /* the most rows of a tile in any variant */

/* Layout of a row of quantized A in the buffer, per variant. */
enum { FMT_U8 = 0,      /* int8 VNNI: q + 128 as uint8, K padded to 4 with 128 (q = 0) */
       FMT_I16 = 1,     /* int8 widening: q as int16, padded with 0 */
       FMT_BF16 = 2,    /* bf16 dot: bf16 bits, K padded to 2 with 0 */
       FMT_F32 = 3 };   /* bf16 widening: the bf16-rounded values as float32, padded with 0 */

/* A tile: rows [0, mr) of the buffer (row stride arow bytes) times nb column blocks of the
 * packed weight starting at wp (blocks bstride bytes apart, G groups each), into
 * C[0:mr, 0:ncols] (C, scale, comp and bias point at the tile's first column). */
#define FL_Q_SHAPE_PARAMS const unsigned char *abuf, long arow, const float *sa,           \
    const unsigned char *wp, long bstride, long G, const float *scale, const int32_t *comp, \
    const float *bias, int beta, float *C, long ldc, int ncols
#define FL_Q_TILE_PARAMS int mr, int nb, FL_Q_SHAPE_PARAMS
/* A tile of a fixed shape (the SIMD variants: a table of them, [rows][blocks]). */
typedef void (*fl_q_shape_fn)(FL_Q_SHAPE_PARAMS);
typedef void (*fl_q_tile_fn)(FL_Q_TILE_PARAMS);

static inline int32_t fl_q_ld32(const unsigned char *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline long long fl_q_ld64(const unsigned char *p) {
    long long v;
    memcpy(&v, p, 8);
    return v;
}

/* ------------------------------------------------------------------------------------ */
/* Row quantization (portable C: every variant quantizes the same way)                   */

/* Returns 1 and sets inv, sa for an ordinary row; 0 for a zero row (sa = 0) or a row with
 * NaN/Inf (sa = NaN): the caller then writes q = 0. */
static int fl_q8_row_scale(int K, const float *a, float *inv, float *sa) {
    float amax = 0.0f;
    int bad = 0, k;
    for (k = 0; k < K; k++) {
        const float x = fabsf(a[k]);
        bad |= !(x <= FLT_MAX);
        amax = x > amax ? x : amax;
    }
    if (bad) {
        *sa = NAN;
        return 0;
    }
    if (amax == 0.0f) {
        *sa = 0.0f;
        return 0;
    }
    *inv = 127.0f / amax;
    if (!(*inv <= FLT_MAX)) {       /* amax so small that 127/amax overflows: a zero row */
        *sa = 0.0f;
        return 0;
    }
    *sa = amax / 127.0f;
    return 1;
}

static inline int fl_q8_round(float x) { return (int)lrintf(x); }

void fl_q_quantize_rows_int8(int M, int K, const float *A, long lda, int8_t *q, long ldq,
                             float *sa) {
    int i, k;
    float inv = 0.0f;
    for (i = 0; i < M; i++) {
        const float *a = A + (long)i * lda;
        int8_t *qi = q + (long)i * ldq;
        if (fl_q8_row_scale(K, a, &inv, sa + i))
            for (k = 0; k < K; k++) qi[k] = (int8_t)fl_q8_round(a[k] * inv);
        else
            memset(qi, 0, (size_t)(K > 0 ? K : 0));
    }
}

/* bf16 bits of x: round to nearest even; zero and denormal -> zero of the same sign; NaN ->
 * quiet NaN; Inf -> Inf (as VCVTNE2PS2BF16). */
static inline uint16_t fl_q_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float fl_q_bf16_float(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static void fl_q_round_bf16_c(long n, const float *x, uint16_t *out) {
    long i;
    for (i = 0; i < n; i++) out[i] = fl_q_bf16(x[i]);
}

/* Rows [0, m) of A into the buffer in the variant's format; Kp: K padded (4 or 2). */
static void fl_q_fill_rows(int fmt, int m, int K, int Kp, const float *A, long lda,
                           unsigned char *buf, long arow, float *sa) {
    int i, k;
    float inv = 0.0f;
    for (i = 0; i < m; i++) {
        const float *a = A + (long)i * lda;
        unsigned char *row = buf + (long)i * arow;
        switch (fmt) {
        case FMT_U8:
            if (fl_q8_row_scale(K, a, &inv, sa + i))
                for (k = 0; k < K; k++) row[k] = (unsigned char)(fl_q8_round(a[k] * inv) + 128);
            else
                memset(row, 128, (size_t)K);
            memset(row + K, 128, (size_t)(Kp - K));
            break;
        case FMT_I16: {
            int16_t *r = (int16_t *)row;
            if (fl_q8_row_scale(K, a, &inv, sa + i))
                for (k = 0; k < K; k++) r[k] = (int16_t)fl_q8_round(a[k] * inv);
            else
                memset(r, 0, (size_t)K * 2);
            memset(r + K, 0, (size_t)(Kp - K) * 2);
            break;
        }
        case FMT_BF16: {
            uint16_t *r = (uint16_t *)row;
            for (k = 0; k < K; k++) r[k] = fl_q_bf16(a[k]);
            for (; k < Kp; k++) r[k] = 0;
            break;
        }
        default: {
            float *r = (float *)row;
            for (k = 0; k < K; k++) r[k] = fl_q_bf16_float(fl_q_bf16(a[k]));
            for (; k < Kp; k++) r[k] = 0.0f;
            break;
        }
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* Packing                                                                               */

static long fl_q_groups(int kind, int K) {
    return kind == FL_Q_INT8 ? ((long)K + 3) / 4 : ((long)K + 1) / 2;
}

long fl_q_packed_bytes(int kind, int K, int N) {
    if ((kind != FL_Q_INT8 && kind != FL_Q_BF16) || K <= 0 || N <= 0) return 0;
    return ((long)N + 15) / 16 * fl_q_groups(kind, K) * 64;
}

void fl_q_pack(int kind, int K, int N, const void *W, long ld, void *packed, int32_t *comp) {
    const long G = fl_q_groups(kind, K);
    long b, g, k;
    int c, r, j;
    if (K <= 0 || N <= 0) {
        if (kind == FL_Q_INT8 && comp != NULL && N > 0) memset(comp, 0, (size_t)N * 4);
        return;
    }
    if (kind == FL_Q_INT8) {
        const int8_t *w = (const int8_t *)W;
        int8_t *p = (int8_t *)packed;
        for (b = 0; b * 16 < N; b++)
            for (g = 0; g < G; g++)
                for (c = 0; c < 16; c++)
                    for (r = 0; r < 4; r++) {
                        const long kk = 4 * g + r, col = 16 * b + c;
                        p[(b * G + g) * 64 + 4 * c + r] =
                            (kk < K && col < N) ? w[kk * ld + col] : 0;
                    }
        if (comp != NULL)
            for (j = 0; j < N; j++) {
                long s = 0;
                for (k = 0; k < K; k++) s += w[k * ld + j];
                comp[j] = (int32_t)(128 * s);
            }
    } else if (kind == FL_Q_BF16) {
        const uint16_t *w = (const uint16_t *)W;
        uint16_t *p = (uint16_t *)packed;
        for (b = 0; b * 16 < N; b++)
            for (g = 0; g < G; g++)
                for (c = 0; c < 16; c++)
                    for (r = 0; r < 2; r++) {
                        const long kk = 2 * g + r, col = 16 * b + c;
                        uint16_t v = (kk < K && col < N) ? w[kk * ld + col] : 0;
                        if ((v & 0x7f80u) == 0) v &= 0x8000u;      /* denormal -> signed 0 */
                        p[(b * G + g) * 32 + 2 * c + r] = v;
                    }
    }
}

/* ------------------------------------------------------------------------------------ */
/* Portable C tiles                                                                      */

/* The product r = (float)acc * d rounded on its own before the additions (no FMA). */
static inline float fl_q_unfused(float x) {
    volatile float v = x;
    return v;
}

static void fl_q8_tile_c(int mr, int nb, const unsigned char *abuf, long arow,
                         const float *sa, const unsigned char *wp, long bstride, long G,
                         const float *scale, const int32_t *comp, const float *bias,
                         int beta, float *C, long ldc, int ncols) {
    int m, b, c, r;
    long g;
    (void)comp;
    for (m = 0; m < mr; m++) {
        const int16_t *a = (const int16_t *)(abuf + m * arow);
        for (b = 0; b < nb; b++) {
            const int8_t *w = (const int8_t *)(wp + b * bstride);
            uint32_t acc[16] = {0};     /* sums modulo 2^32, as the vector variants' */
            const int n = ncols - 16 * b < 16 ? ncols - 16 * b : 16;
            for (g = 0; g < G; g++)
                for (c = 0; c < 16; c++)
                    for (r = 0; r < 4; r++)
                        acc[c] += (uint32_t)((int32_t)a[4 * g + r] *
                                             (int32_t)w[g * 64 + 4 * c + r]);
            for (c = 0; c < n; c++) {
                const long j = 16 * b + c;
                const float d = sa[m] * scale[j];
                float v = fl_q_unfused((float)(int32_t)acc[c] * d);
                if (beta) v = v + C[m * ldc + j];
                if (bias != NULL) v = v + bias[j];
                C[m * ldc + j] = v;
            }
        }
    }
}

static void fl_b16_tile_c(int mr, int nb, const unsigned char *abuf, long arow,
                          const float *sa, const unsigned char *wp, long bstride, long G,
                          const float *scale, const int32_t *comp, const float *bias,
                          int beta, float *C, long ldc, int ncols) {
    int m, b, c;
    long p;
    (void)sa; (void)scale; (void)comp;
    for (m = 0; m < mr; m++) {
        const float *a = (const float *)(abuf + m * arow);
        for (b = 0; b < nb; b++) {
            const uint16_t *w = (const uint16_t *)(wp + b * bstride);
            float acc[16] = {0};
            const int n = ncols - 16 * b < 16 ? ncols - 16 * b : 16;
            for (p = 0; p < G; p++)
                for (c = 0; c < 16; c++) {
                    acc[c] += a[2 * p + 1] * fl_q_bf16_float(w[p * 32 + 2 * c + 1]);
                    acc[c] += a[2 * p] * fl_q_bf16_float(w[p * 32 + 2 * c]);
                }
            for (c = 0; c < n; c++) {
                const long j = 16 * b + c;
                float v = acc[c];
                if (beta) v = v + C[m * ldc + j];
                if (bias != NULL) v = v + bias[j];
                C[m * ldc + j] = v;
            }
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* x86 tiles                                                                             */

#if FL_Q_X86
#define FL_Q_T512 "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"
#define FL_Q_TGT_512 __attribute__((target(FL_Q_T512)))
#define FL_Q_TGT_VNNI __attribute__((target(FL_Q_T512 ",avx512vnni")))
#define FL_Q_TGT_BF16 __attribute__((target(FL_Q_T512 ",avx512bf16")))
#define FL_Q_TGT_AVX2 __attribute__((target("avx2,fma")))
/* An empty asm the compiler cannot see through: the product before it is rounded on its
 * own, never contracted into an FMA with the additions after it. */
#define FL_Q_OPAQUE512(x) __asm__("" : "+v"(x))
#define FL_Q_OPAQUE256(x) __asm__("" : "+x"(x))

/* (AMX-INT8 / AMX-BF16 tiles would be a level 4 here; this CPU has none, so none is
 * written.) */

FL_Q_TGT_512 FL_Q_INLINE __mmask16 fl_q_mask16(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}


/* int8 epilogue of one row and one block: cols (int32, q*Wq summed) -> C. */
FL_Q_TGT_512 FL_Q_INLINE void fl_q8_store512(__m512i cols, float sam, __m512 sc, __m512 bi,
                                             int has_bias, int beta, float *c, __mmask16 mk) {
    const __m512 d = _mm512_mul_ps(_mm512_set1_ps(sam), sc);
    __m512 r = _mm512_mul_ps(_mm512_cvtepi32_ps(cols), d);
    FL_Q_OPAQUE512(r);
    if (beta) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mk, c));
    if (has_bias) r = _mm512_add_ps(r, bi);
    _mm512_mask_storeu_ps(c, mk, r);
}

/* --- Rows of A quantized / rounded with AVX-512: the same numbers as fl_q_fill_rows (max is
 * exact in any order; one float32 multiply; vcvtps2dq rounds half to even, as lrintf in the
 * default rounding mode; the bf16 rounding is the same integer arithmetic) --- */
FL_Q_TGT_512 static int fl_q8_row_scale_512(int K, const float *a, float *inv, float *sa) {
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    const __m512 big = _mm512_set1_ps(FLT_MAX);
    __m512 vmax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    float amax;
    int k;
    for (k = 0; k < K; k += 16) {
        const __mmask16 mk = fl_q_mask16(K - k);
        const __m512 x = _mm512_castsi512_ps(
            _mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(mk, a + k)), absmask));
        bad |= _mm512_cmp_ps_mask(x, big, _CMP_NLE_UQ);
        vmax = _mm512_max_ps(vmax, x);
    }
    if (bad) {
        *sa = NAN;
        return 0;
    }
    amax = _mm512_reduce_max_ps(vmax);
    if (amax == 0.0f) {
        *sa = 0.0f;
        return 0;
    }
    *inv = 127.0f / amax;
    if (!(*inv <= FLT_MAX)) {
        *sa = 0.0f;
        return 0;
    }
    *sa = amax / 127.0f;
    return 1;
}

FL_Q_TGT_512 static __m512i fl_q_bf16_512(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __mmask16 zero = _mm512_cmpeq_epi32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7f800000)), _mm512_setzero_si512());
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                         _mm512_and_si512(hi, _mm512_set1_epi32(1))), 16);
    r = _mm512_mask_mov_epi32(r, zero, _mm512_and_si512(hi, _mm512_set1_epi32(0x8000)));
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x0040)));
}

FL_Q_TGT_512 static void fl_q_fill_rows_512(int fmt, int m, int K, int Kp, const float *A,
                                            long lda, unsigned char *buf, long arow,
                                            float *sa) {
    int i, k;
    float inv = 0.0f;
    for (i = 0; i < m; i++) {
        const float *a = A + (long)i * lda;
        unsigned char *row = buf + (long)i * arow;
        if (fmt == FMT_U8 || fmt == FMT_I16) {
            const int ok = fl_q8_row_scale_512(K, a, &inv, sa + i);
            const __m512 vinv = _mm512_set1_ps(inv);
            for (k = 0; k < Kp; k += 16) {
                const __mmask16 mk = fl_q_mask16(Kp - k);
                __m512i q = _mm512_setzero_si512();
                if (ok)
                    q = _mm512_cvtps_epi32(_mm512_mul_ps(
                        _mm512_maskz_loadu_ps(fl_q_mask16(K - k), a + k), vinv));
                if (fmt == FMT_U8)
                    _mm512_mask_cvtepi32_storeu_epi8(
                        row + k, mk, _mm512_add_epi32(q, _mm512_set1_epi32(128)));
                else
                    _mm512_mask_cvtepi32_storeu_epi16(row + 2 * k, mk, q);
            }
        } else {
            for (k = 0; k < Kp; k += 16) {
                const __mmask16 mk = fl_q_mask16(Kp - k);
                const __m512i r = fl_q_bf16_512(_mm512_maskz_loadu_ps(fl_q_mask16(K - k), a + k));
                if (fmt == FMT_BF16)
                    _mm512_mask_cvtepi32_storeu_epi16(row + 2 * k, mk, r);
                else
                    _mm512_mask_storeu_epi32(row + 4 * k, mk, _mm512_slli_epi32(r, 16));
            }
        }
    }
}

/* Each (rows, blocks) shape of a tile is two functions of its own: the loop over K (BODY_k,
 * accumulators to t once at the end) and the epilogue (BODY_e, from t). With both in one
 * function, or all shapes in one switch, GCC moved and spilled accumulators inside the
 * loop. A variant's table holds the shapes. */
#define FL_Q_LOOP_ARGS abuf, arow, wp, bstride, G, t
#define FL_Q_LOOP_PARAMS const unsigned char *abuf, long arow, const unsigned char *wp,      \
    long bstride, long G, void *t
#define FL_Q_SHAPE(TGT, BODY, MR, NB)                                                       \
    TGT __attribute__((noinline)) static void BODY##_k_##MR##x##NB(FL_Q_LOOP_PARAMS) {     \
        BODY##_k(MR, NB, FL_Q_LOOP_ARGS); }                                                 \
    TGT __attribute__((noinline)) static void BODY##_##MR##x##NB(FL_Q_SHAPE_PARAMS) {       \
        uint64_t t[FL_Q_MAXMR * 4 * 2 * 8 + 8];                                             \
        void *ta = (void *)(((uintptr_t)t + 63) & ~(uintptr_t)63);                          \
        BODY##_k_##MR##x##NB(abuf, arow, wp, bstride, G, ta);                               \
        BODY##_e(MR, NB, ta, sa, scale, comp, bias, beta, C, ldc, ncols); }
#define FL_Q_ROW2(TGT, BODY, MR) FL_Q_SHAPE(TGT, BODY, MR, 1) FL_Q_SHAPE(TGT, BODY, MR, 2)
#define FL_Q_ROW4(TGT, BODY, MR) FL_Q_ROW2(TGT, BODY, MR)                                   \
    FL_Q_SHAPE(TGT, BODY, MR, 3) FL_Q_SHAPE(TGT, BODY, MR, 4)
#define FL_Q_PTRS2(BODY, MR) {NULL, BODY##_##MR##x1, BODY##_##MR##x2, NULL, NULL}
#define FL_Q_PTRS4(BODY, MR)                                                                \
    {NULL, BODY##_##MR##x1, BODY##_##MR##x2, BODY##_##MR##x3, BODY##_##MR##x4}
#define FL_Q_TABLE6(BODY, PTRS) {{NULL}, PTRS(BODY, 1), PTRS(BODY, 2), PTRS(BODY, 3),         \
                                 PTRS(BODY, 4), PTRS(BODY, 5), PTRS(BODY, 6)}
#define FL_Q_TABLE4(BODY, PTRS) {{NULL}, PTRS(BODY, 1), PTRS(BODY, 2), PTRS(BODY, 3),         \
                                 PTRS(BODY, 4), {NULL}, {NULL}}

/* --- int8, AVX512-VNNI: vpdpbusd on (q + 128) u8 x Wq s8, minus comp = 128 * sum Wq --- */
FL_Q_TGT_VNNI FL_Q_INLINE void fl_q8_vnni_k(const int MR, const int NB,
                                            FL_Q_LOOP_PARAMS) {
    __m512i acc[FL_Q_MAXMR][4];
    int32_t (*out)[4][16] = (int32_t (*)[4][16])t;
    long g;
    int m, b;
#pragma GCC unroll 8
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) acc[m][b] = _mm512_setzero_si512();
    for (g = 0; g < G; g++) {
        __m512i w[4];
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) w[b] = _mm512_loadu_si512(wp + b * bstride + g * 64);
#pragma GCC unroll 8
        for (m = 0; m < MR; m++) {
            const __m512i a = _mm512_set1_epi32(fl_q_ld32(abuf + m * arow + 4 * g));
#pragma GCC unroll 4
            for (b = 0; b < NB; b++) acc[m][b] = _mm512_dpbusd_epi32(acc[m][b], a, w[b]);
        }
    }
#pragma GCC unroll 8
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) _mm512_store_si512(out[m][b], acc[m][b]);
}

FL_Q_TGT_512 FL_Q_INLINE void fl_q8_vnni_e(const int MR, const int NB, const void *t,
        const float *sa, const float *scale, const int32_t *comp, const float *bias,
        int beta, float *C, long ldc, int ncols) {
    const int32_t (*acc)[4][16] = (const int32_t (*)[4][16])t;
    int m, b;
    for (b = 0; b < NB; b++) {
        const __mmask16 mk = fl_q_mask16(ncols - 16 * b);
        const __m512 sc = _mm512_maskz_loadu_ps(mk, scale + 16 * b);
        const __m512i cp = _mm512_maskz_loadu_epi32(mk, comp + 16 * b);
        const __m512 bi = bias != NULL ? _mm512_maskz_loadu_ps(mk, bias + 16 * b)
                                       : _mm512_setzero_ps();
        for (m = 0; m < MR; m++)
            fl_q8_store512(_mm512_sub_epi32(_mm512_load_si512(acc[m][b]), cp), sa[m], sc, bi,
                           bias != NULL, beta, C + m * ldc + 16 * b, mk);
    }
}

FL_Q_ROW4(FL_Q_TGT_VNNI, fl_q8_vnni, 1) FL_Q_ROW4(FL_Q_TGT_VNNI, fl_q8_vnni, 2)
FL_Q_ROW4(FL_Q_TGT_VNNI, fl_q8_vnni, 3) FL_Q_ROW4(FL_Q_TGT_VNNI, fl_q8_vnni, 4)
FL_Q_ROW4(FL_Q_TGT_VNNI, fl_q8_vnni, 5) FL_Q_ROW4(FL_Q_TGT_VNNI, fl_q8_vnni, 6)
static const fl_q_shape_fn fl_q8_vnni[7][5] = FL_Q_TABLE6(fl_q8_vnni, FL_Q_PTRS4);

/* --- int8, AVX-512BW: q (int16) x Wq widened to int16, vpmaddwd (exact, no saturation) ---
 * Each block gives two accumulators: lo holds columns 0-7 and hi 8-15, each column as two
 * int32 lanes (k 0,1 and k 2,3 of every group), added at the end. */
FL_Q_TGT_512 FL_Q_INLINE __m512i fl_q8_pairs512(__m512i lo, __m512i hi) {
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                         28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                         29, 31);
    return _mm512_add_epi32(_mm512_permutex2var_epi32(lo, ie, hi),
                            _mm512_permutex2var_epi32(lo, io, hi));
}

FL_Q_TGT_512 FL_Q_INLINE void fl_q8_bw_k(const int MR, const int NB, FL_Q_LOOP_PARAMS) {
    __m512i lo[FL_Q_MAXMR][2], hi[FL_Q_MAXMR][2];
    int32_t (*out)[2][2][16] = (int32_t (*)[2][2][16])t;      /* [m][b][lo, hi] */
    long g;
    int m, b;
#pragma GCC unroll 8
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) lo[m][b] = hi[m][b] = _mm512_setzero_si512();
    for (g = 0; g < G; g++) {
        __m512i wl[2], wh[2];
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) {
            const unsigned char *p = wp + b * bstride + g * 64;
            wl[b] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p));
            wh[b] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(p + 32)));
        }
#pragma GCC unroll 8
        for (m = 0; m < MR; m++) {
            const __m512i a = _mm512_set1_epi64(fl_q_ld64(abuf + m * arow + 8 * g));
#pragma GCC unroll 4
            for (b = 0; b < NB; b++) {
                lo[m][b] = _mm512_add_epi32(lo[m][b], _mm512_madd_epi16(a, wl[b]));
                hi[m][b] = _mm512_add_epi32(hi[m][b], _mm512_madd_epi16(a, wh[b]));
            }
        }
    }
#pragma GCC unroll 8
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) {
            _mm512_store_si512(out[m][b][0], lo[m][b]);
            _mm512_store_si512(out[m][b][1], hi[m][b]);
        }
}

FL_Q_TGT_512 FL_Q_INLINE void fl_q8_bw_e(const int MR, const int NB, const void *t,
        const float *sa, const float *scale, const int32_t *comp, const float *bias,
        int beta, float *C, long ldc, int ncols) {
    const int32_t (*acc)[2][2][16] = (const int32_t (*)[2][2][16])t;
    int m, b;
    (void)comp;
    for (b = 0; b < NB; b++) {
        const __mmask16 mk = fl_q_mask16(ncols - 16 * b);
        const __m512 sc = _mm512_maskz_loadu_ps(mk, scale + 16 * b);
        const __m512 bi = bias != NULL ? _mm512_maskz_loadu_ps(mk, bias + 16 * b)
                                       : _mm512_setzero_ps();
        for (m = 0; m < MR; m++)
            fl_q8_store512(fl_q8_pairs512(_mm512_load_si512(acc[m][b][0]),
                                          _mm512_load_si512(acc[m][b][1])),
                           sa[m], sc, bi, bias != NULL, beta, C + m * ldc + 16 * b, mk);
    }
}

FL_Q_ROW2(FL_Q_TGT_512, fl_q8_bw, 1) FL_Q_ROW2(FL_Q_TGT_512, fl_q8_bw, 2)
FL_Q_ROW2(FL_Q_TGT_512, fl_q8_bw, 3) FL_Q_ROW2(FL_Q_TGT_512, fl_q8_bw, 4)
FL_Q_ROW2(FL_Q_TGT_512, fl_q8_bw, 5) FL_Q_ROW2(FL_Q_TGT_512, fl_q8_bw, 6)
static const fl_q_shape_fn fl_q8_bw[7][5] = FL_Q_TABLE6(fl_q8_bw, FL_Q_PTRS2);

/* --- int8, AVX2: as AVX-512BW on 8-lane vectors; a block gives four accumulators, each
 * four columns as pairs of lanes. --- */
FL_Q_TGT_AVX2 FL_Q_INLINE __m256i fl_q8_mask8(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

FL_Q_TGT_AVX2 FL_Q_INLINE void fl_q8_store256(__m256i cols, float sam, const float *scale,
                                              const float *bias, int beta, float *c, int n) {
    const __m256i mk = fl_q8_mask8(n);
    const __m256 d = _mm256_mul_ps(_mm256_set1_ps(sam), _mm256_maskload_ps(scale, mk));
    __m256 r = _mm256_mul_ps(_mm256_cvtepi32_ps(cols), d);
    FL_Q_OPAQUE256(r);
    if (beta) r = _mm256_add_ps(r, _mm256_maskload_ps(c, mk));
    if (bias != NULL) r = _mm256_add_ps(r, _mm256_maskload_ps(bias, mk));
    _mm256_maskstore_ps(c, mk, r);
}

FL_Q_TGT_AVX2 FL_Q_INLINE __m256i fl_q8_pairs256(__m256i p0, __m256i p1) {
    /* hadd: [c0 c1 c4 c5 | c2 c3 c6 c7] as 64-bit pairs (0,1),(4,5),(2,3),(6,7) */
    return _mm256_permute4x64_epi64(_mm256_hadd_epi32(p0, p1), 0xD8);
}

FL_Q_TGT_AVX2 FL_Q_INLINE void fl_q8_avx2_body(const int MR,
        const unsigned char *abuf, long arow, const float *sa, const unsigned char *wp,
        long G, const float *scale, const float *bias, int beta, float *C, long ldc,
        int ncols) {
    __m256i acc[2][4];
    long g;
    int m, p;
#pragma GCC unroll 2
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (p = 0; p < 4; p++) acc[m][p] = _mm256_setzero_si256();
    for (g = 0; g < G; g++) {
        __m256i a[2];
#pragma GCC unroll 2
        for (m = 0; m < MR; m++) a[m] = _mm256_set1_epi64x(fl_q_ld64(abuf + m * arow + 8 * g));
#pragma GCC unroll 4
        for (p = 0; p < 4; p++) {
            const __m256i w = _mm256_cvtepi8_epi16(
                _mm_loadu_si128((const __m128i *)(wp + g * 64 + 16 * p)));
#pragma GCC unroll 2
            for (m = 0; m < MR; m++)
                acc[m][p] = _mm256_add_epi32(acc[m][p], _mm256_madd_epi16(a[m], w));
        }
    }
#pragma GCC unroll 2
    for (m = 0; m < MR; m++) {
        fl_q8_store256(fl_q8_pairs256(acc[m][0], acc[m][1]), sa[m], scale,
                       bias, beta, C + m * ldc, ncols);
        if (ncols > 8)
            fl_q8_store256(fl_q8_pairs256(acc[m][2], acc[m][3]), sa[m], scale + 8,
                           bias != NULL ? bias + 8 : NULL, beta, C + m * ldc + 8, ncols - 8);
    }
}

FL_Q_TGT_AVX2 static void fl_q8_tile_avx2(FL_Q_TILE_PARAMS) {
    int b;
    (void)comp;
    for (b = 0; b < nb; b++) {
        const int n = ncols - 16 * b < 16 ? ncols - 16 * b : 16;
        const float *bb = bias != NULL ? bias + 16 * b : NULL;
        if (mr == 2)
            fl_q8_avx2_body(2, abuf, arow, sa, wp + b * bstride, G, scale + 16 * b, bb, beta,
                            C + 16 * b, ldc, n);
        else
            fl_q8_avx2_body(1, abuf, arow, sa, wp + b * bstride, G, scale + 16 * b, bb, beta,
                            C + 16 * b, ldc, n);
    }
}

/* --- bf16, AVX512_BF16: vdpbf16ps on pairs of k --- */
FL_Q_TGT_BF16 FL_Q_INLINE void fl_b16_dot_k(const int MR, const int NB, FL_Q_LOOP_PARAMS) {
    __m512 acc[FL_Q_MAXMR][4];
    float (*out)[4][16] = (float (*)[4][16])t;
    long g;
    int m, b;
#pragma GCC unroll 8
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) acc[m][b] = _mm512_setzero_ps();
    for (g = 0; g < G; g++) {
        __m512i w[4];
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) w[b] = _mm512_loadu_si512(wp + b * bstride + g * 64);
#pragma GCC unroll 8
        for (m = 0; m < MR; m++) {
            const __m512i a = _mm512_set1_epi32(fl_q_ld32(abuf + m * arow + 4 * g));
#pragma GCC unroll 4
            for (b = 0; b < NB; b++)
                acc[m][b] = _mm512_dpbf16_ps(acc[m][b], (__m512bh)a, (__m512bh)w[b]);
        }
    }
#pragma GCC unroll 8
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) _mm512_store_ps(out[m][b], acc[m][b]);
}

/* bf16 epilogue (AVX-512): r = acc (+ C) (+ bias) */
FL_Q_TGT_512 FL_Q_INLINE void fl_b16_e(const int MR, const int NB, const void *t,
        const float *sa, const float *scale, const int32_t *comp, const float *bias,
        int beta, float *C, long ldc, int ncols) {
    const float (*acc)[4][16] = (const float (*)[4][16])t;
    int m, b;
    (void)sa; (void)scale; (void)comp;
    for (b = 0; b < NB; b++) {
        const __mmask16 mk = fl_q_mask16(ncols - 16 * b);
        const __m512 bi = bias != NULL ? _mm512_maskz_loadu_ps(mk, bias + 16 * b)
                                       : _mm512_setzero_ps();
        for (m = 0; m < MR; m++) {
            float *c = C + m * ldc + 16 * b;
            __m512 r = _mm512_load_ps(acc[m][b]);
            if (beta) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mk, c));
            if (bias != NULL) r = _mm512_add_ps(r, bi);
            _mm512_mask_storeu_ps(c, mk, r);
        }
    }
}
#define fl_b16_dot_e fl_b16_e
#define fl_b16_f512_e fl_b16_e

FL_Q_ROW4(FL_Q_TGT_BF16, fl_b16_dot, 1) FL_Q_ROW4(FL_Q_TGT_BF16, fl_b16_dot, 2)
FL_Q_ROW4(FL_Q_TGT_BF16, fl_b16_dot, 3) FL_Q_ROW4(FL_Q_TGT_BF16, fl_b16_dot, 4)
FL_Q_ROW4(FL_Q_TGT_BF16, fl_b16_dot, 5) FL_Q_ROW4(FL_Q_TGT_BF16, fl_b16_dot, 6)
static const fl_q_shape_fn fl_b16_dot[7][5] = FL_Q_TABLE6(fl_b16_dot, FL_Q_PTRS4);

/* --- bf16, AVX-512F: the bf16 pairs widened to float32 (shift / mask), two FMAs (odd k
 * first, as vdpbf16ps) --- */
FL_Q_TGT_512 FL_Q_INLINE void fl_b16_f512_k(const int MR, const int NB, FL_Q_LOOP_PARAMS) {
    __m512 acc[FL_Q_MAXMR][4];
    float (*out)[4][16] = (float (*)[4][16])t;
    const __m512i himask = _mm512_set1_epi32((int)0xFFFF0000u);
    long g;
    int m, b;
#pragma GCC unroll 8
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) acc[m][b] = _mm512_setzero_ps();
    for (g = 0; g < G; g++) {
        __m512 we[4], wo[4];
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) {
            const __m512i w = _mm512_loadu_si512(wp + b * bstride + g * 64);
            we[b] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
            wo[b] = _mm512_castsi512_ps(_mm512_and_si512(w, himask));
        }
#pragma GCC unroll 8
        for (m = 0; m < MR; m++) {
            const float *a = (const float *)(abuf + m * arow) + 2 * g;
            const __m512 a0 = _mm512_set1_ps(a[0]), a1 = _mm512_set1_ps(a[1]);
#pragma GCC unroll 4
            for (b = 0; b < NB; b++) {
                acc[m][b] = _mm512_fmadd_ps(a1, wo[b], acc[m][b]);
                acc[m][b] = _mm512_fmadd_ps(a0, we[b], acc[m][b]);
            }
        }
    }
#pragma GCC unroll 8
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) _mm512_store_ps(out[m][b], acc[m][b]);
}

FL_Q_ROW4(FL_Q_TGT_512, fl_b16_f512, 1) FL_Q_ROW4(FL_Q_TGT_512, fl_b16_f512, 2)
FL_Q_ROW4(FL_Q_TGT_512, fl_b16_f512, 3) FL_Q_ROW4(FL_Q_TGT_512, fl_b16_f512, 4)
static const fl_q_shape_fn fl_b16_f512[7][5] = FL_Q_TABLE4(fl_b16_f512, FL_Q_PTRS4);

/* --- bf16, AVX2: likewise on 8-lane vectors, one block (two halves) at a time --- */
FL_Q_TGT_AVX2 FL_Q_INLINE void fl_b16_avx2_body(const int MR,
        const unsigned char *abuf, long arow, const unsigned char *wp, long G,
        const float *bias, int beta, float *C, long ldc, int ncols) {
    /* At one or two rows the odd and even k accumulate apart (S = 2): twice the chains of
     * dependent FMAs, which otherwise bound the one-row product. */
    const int S = MR <= 2 ? 2 : 1;
    __m256 acc[4][2][2];
    const __m256i himask = _mm256_set1_epi32((int)0xFFFF0000u);
    long g;
    int m, h;
#pragma GCC unroll 4
    for (m = 0; m < MR; m++)
        acc[m][0][0] = acc[m][0][1] = acc[m][1][0] = acc[m][1][1] = _mm256_setzero_ps();
    for (g = 0; g < G; g++) {
        __m256 we[2], wo[2];
#pragma GCC unroll 2
        for (h = 0; h < 2; h++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(wp + g * 64 + 32 * h));
            we[h] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
            wo[h] = _mm256_castsi256_ps(_mm256_and_si256(w, himask));
        }
#pragma GCC unroll 4
        for (m = 0; m < MR; m++) {
            const float *a = (const float *)(abuf + m * arow) + 2 * g;
            const __m256 a0 = _mm256_set1_ps(a[0]), a1 = _mm256_set1_ps(a[1]);
#pragma GCC unroll 2
            for (h = 0; h < 2; h++) {
                acc[m][h][0] = _mm256_fmadd_ps(a1, wo[h], acc[m][h][0]);
                acc[m][h][S - 1] = _mm256_fmadd_ps(a0, we[h], acc[m][h][S - 1]);
            }
        }
    }
#pragma GCC unroll 4
    for (m = 0; m < MR; m++)
        for (h = 0; h < 2 && 8 * h < ncols; h++) {
            const __m256i mk = fl_q8_mask8(ncols - 8 * h);
            float *c = C + m * ldc + 8 * h;
            __m256 r = S == 2 ? _mm256_add_ps(acc[m][h][0], acc[m][h][1]) : acc[m][h][0];
            if (beta) r = _mm256_add_ps(r, _mm256_maskload_ps(c, mk));
            if (bias != NULL) r = _mm256_add_ps(r, _mm256_maskload_ps(bias + 8 * h, mk));
            _mm256_maskstore_ps(c, mk, r);
        }
}

FL_Q_TGT_AVX2 static void fl_b16_tile_avx2(FL_Q_TILE_PARAMS) {
    int b;
    (void)sa; (void)scale; (void)comp;
    for (b = 0; b < nb; b++) {
        const int n = ncols - 16 * b < 16 ? ncols - 16 * b : 16;
        const float *bb = bias != NULL ? bias + 16 * b : NULL;
        const unsigned char *w = wp + b * bstride;
        switch (mr) {
        case 4: fl_b16_avx2_body(4, abuf, arow, w, G, bb, beta, C + 16 * b, ldc, n); break;
        case 3: fl_b16_avx2_body(3, abuf, arow, w, G, bb, beta, C + 16 * b, ldc, n); break;
        case 2: fl_b16_avx2_body(2, abuf, arow, w, G, bb, beta, C + 16 * b, ldc, n); break;
        default: fl_b16_avx2_body(1, abuf, arow, w, G, bb, beta, C + 16 * b, ldc, n); break;
        }
    }
}
/* --- bf16, AVX512_BF16, both operands packed (fl_q_gemm_bf16_packed): the rows of A are
 * the columns of a packed [K, M] matrix, so a group's words of 16 rows lie in one 64-byte
 * line (row m of the block at 4 m, group g at 64 g) --- */
FL_Q_TGT_BF16 FL_Q_INLINE void fl_b16_pa_k(const int MR, const int NB,
        const unsigned char *ap, const unsigned char *wp, long bstride, long G, void *t) {
    __m512 acc[8][4];
    float (*out)[4][16] = (float (*)[4][16])t;
    long g;
    int m, b;
#pragma GCC unroll 8
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) acc[m][b] = _mm512_setzero_ps();
    for (g = 0; g < G; g++) {
        __m512i w[4];
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) w[b] = _mm512_loadu_si512(wp + b * bstride + g * 64);
#pragma GCC unroll 8
        for (m = 0; m < MR; m++) {
            const __m512i a = _mm512_set1_epi32(fl_q_ld32(ap + g * 64 + 4 * m));
#pragma GCC unroll 4
            for (b = 0; b < NB; b++)
                acc[m][b] = _mm512_dpbf16_ps(acc[m][b], (__m512bh)a, (__m512bh)w[b]);
        }
    }
#pragma GCC unroll 8
    for (m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (b = 0; b < NB; b++) _mm512_store_ps(out[m][b], acc[m][b]);
}

typedef void (*fl_b16_pa_fn)(const unsigned char *ap, const unsigned char *wp, long bstride,
                             long G, const float *bias, int beta, float *C, long ldc,
                             int ncols);
#define FL_B16_PA(MR, NB)                                                                   \
    FL_Q_TGT_BF16 __attribute__((noinline)) static void fl_b16_pa_k_##MR##x##NB(            \
            const unsigned char *ap, const unsigned char *wp, long bstride, long G,         \
            void *t) { fl_b16_pa_k(MR, NB, ap, wp, bstride, G, t); }                        \
    FL_Q_TGT_BF16 __attribute__((noinline)) static void fl_b16_pa_##MR##x##NB(              \
            const unsigned char *ap, const unsigned char *wp, long bstride, long G,         \
            const float *bias, int beta, float *C, long ldc, int ncols) {                   \
        float t[8 * 4 * 16 + 16];                                                           \
        void *ta = (void *)(((uintptr_t)t + 63) & ~(uintptr_t)63);                          \
        fl_b16_pa_k_##MR##x##NB(ap, wp, bstride, G, ta);                                    \
        fl_b16_e(MR, NB, ta, NULL, NULL, NULL, bias, beta, C, ldc, ncols); }
#define FL_B16_PA_ROW(MR) FL_B16_PA(MR, 1) FL_B16_PA(MR, 2) FL_B16_PA(MR, 3) FL_B16_PA(MR, 4)
FL_B16_PA_ROW(1) FL_B16_PA_ROW(2) FL_B16_PA_ROW(3) FL_B16_PA_ROW(4) FL_B16_PA_ROW(5)
FL_B16_PA_ROW(6)
#define FL_B16_PA_PTRS(MR) {NULL, fl_b16_pa_##MR##x1, fl_b16_pa_##MR##x2, fl_b16_pa_##MR##x3, \
                            fl_b16_pa_##MR##x4}
static const fl_b16_pa_fn fl_b16_pa[7][5] = {{NULL}, FL_B16_PA_PTRS(1), FL_B16_PA_PTRS(2),
    FL_B16_PA_PTRS(3), FL_B16_PA_PTRS(4), FL_B16_PA_PTRS(5), FL_B16_PA_PTRS(6)};

/* fl_q_round_bf16, AVX-512F: 16 values a store, the same integer rounding. */
FL_Q_TGT_512 static void fl_q_round_bf16_512(long n, const float *x, uint16_t *out) {
    long i;
    for (i = 0; i < n; i += 16) {
        const __mmask16 mk = fl_q_mask16(n - i > 16 ? 16 : (int)(n - i));
        _mm512_mask_cvtepi32_storeu_epi16(out + i, mk,
                                          fl_q_bf16_512(_mm512_maskz_loadu_ps(mk, x + i)));
    }
}

/* fl_q_pack_bf16_float, AVX-512F: a pair of rows at a time, 16 columns a store (row 2p in
 * the low, row 2p+1 in the high half of each 32-bit lane: the packed pair order). */
FL_Q_TGT_512 static void fl_q_pack_bf16_float_512(int K, int N, const float *A, long lda,
                                                  uint16_t *p) {
    const long G = (K + 1) / 2;
    long g, b;
    for (g = 0; g < G; g++) {
        const float *r0 = A + 2 * g * lda;
        const float *r1 = r0 + lda;
        const int two = 2 * g + 1 < K;
        for (b = 0; 16 * b < N; b++) {
            const __mmask16 mk = fl_q_mask16(N - 16 * (int)b);
            const __m512i lo = fl_q_bf16_512(_mm512_maskz_loadu_ps(mk, r0 + 16 * b));
            const __m512i hi = two ? fl_q_bf16_512(_mm512_maskz_loadu_ps(mk, r1 + 16 * b))
                                   : _mm512_setzero_si512();
            _mm512_storeu_si512(p + (b * G + g) * 32,
                                _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

#endif  /* FL_Q_X86 */

/* ------------------------------------------------------------------------------------ */
/* Levels and dispatch                                                                   */

static int fl_q_forced = -1;
static int fl_q_best[3] = {-1, -1, -1};

int fl_q_best_level(int kind) {
    int level = 0;
    if (kind != FL_Q_INT8 && kind != FL_Q_BF16) return -1;
    if (fl_q_best[kind] >= 0) return fl_q_best[kind];
#if FL_Q_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        level = 1;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
            level = 2;
            if (kind == FL_Q_INT8 && __builtin_cpu_supports("avx512vnni")) level = 3;
            if (kind == FL_Q_BF16 && __builtin_cpu_supports("avx512bf16")) level = 3;
        }
    }
#endif
    fl_q_best[kind] = level;
    return level;
}

int fl_q_level(int kind) {
    int level = fl_q_best_level(kind), isa;
    if (level < 0) return -1;
    isa = fl_isa_level();
    if (isa < 2 && level > isa) level = isa;
    if (fl_q_forced >= 0 && level > fl_q_forced) level = fl_q_forced;
    return level;
}

const char *fl_q_level_name(int kind) {
    static const char *const i8[4] = {"c", "avx2", "avx512bw", "avx512vnni"};
    static const char *const b16[4] = {"c", "avx2", "avx512f", "avx512bf16"};
    const int level = fl_q_level(kind);
    if (level < 0 || level > 3) return "unknown";
    return kind == FL_Q_INT8 ? i8[level] : b16[level];
}

void fl_q_force_level(int level) { fl_q_forced = level < 0 ? -1 : level; }

void fl_q_round_bf16(long n, const float *x, uint16_t *out) {
#if FL_Q_X86
    if (fl_q_level(FL_Q_BF16) >= FL_Q_LEVEL_AVX512) {
        fl_q_round_bf16_512(n, x, out);
        return;
    }
#endif
    fl_q_round_bf16_c(n, x, out);
}

/* float32 A [K,N] (row stride lda) rounded to bf16 (as fl_q_round_bf16) and packed as
 * fl_q_pack packs bf16 bits, in one pass: mixed_bfloat16 training packs dZ so at every
 * step. */
void fl_q_pack_bf16_float(int K, int N, const float *A, long lda, void *packed) {
    const long G = ((long)K + 1) / 2;
    uint16_t *p = (uint16_t *)packed;
    long g, b;
    int c, r;
    if (K <= 0 || N <= 0) return;
#if FL_Q_X86
    if (fl_q_level(FL_Q_BF16) >= FL_Q_LEVEL_AVX512) {
        fl_q_pack_bf16_float_512(K, N, A, lda, p);
        return;
    }
#endif
    for (g = 0; g < G; g++)
        for (b = 0; 16 * b < N; b++)
            for (c = 0; c < 16; c++)
                for (r = 0; r < 2; r++) {
                    const long kk = 2 * g + r, col = 16 * b + c;
                    p[(b * G + g) * 32 + 2 * c + r] =
                        (kk < K && col < N) ? fl_q_bf16(A[kk * lda + col]) : 0;
                }
}

/* One variant: its row format, tile shape limits and tile function. */
typedef struct {
    int fmt, elem, mrmax, nbmax;
    fl_q_tile_fn tile;                      /* shapes given at run time, or */
    const fl_q_shape_fn (*shapes)[5];       /* a table of fixed shapes [mr][nb] */
} fl_q_variant;

static fl_q_variant fl_q_pick(int kind, int level) {
    fl_q_variant v;
    if (kind == FL_Q_INT8) {
        v.fmt = FMT_I16; v.elem = 2; v.mrmax = 4; v.nbmax = 1; v.tile = fl_q8_tile_c;
        v.shapes = NULL;
#if FL_Q_X86
        if (level >= 3) { v.fmt = FMT_U8; v.elem = 1; v.mrmax = 6; v.nbmax = 4;
                          v.shapes = fl_q8_vnni; }
        else if (level == 2) { v.mrmax = 6; v.nbmax = 2; v.shapes = fl_q8_bw; }
        else if (level == 1) { v.mrmax = 2; v.nbmax = 4; v.tile = fl_q8_tile_avx2; }
#endif
    } else {
        v.fmt = FMT_F32; v.elem = 4; v.mrmax = 4; v.nbmax = 1; v.tile = fl_b16_tile_c;
        v.shapes = NULL;
#if FL_Q_X86
        /* AMX-BF16 (Intel Sapphire Rapids and later: TDPBF16PS on 16x32 tiles) would be a
         * level 4 here, its tiles reading the same bf16 pair layout; the AMD Zen 4 this was
         * measured on has none, so it is not written yet. */
        if (level >= 3) { v.fmt = FMT_BF16; v.elem = 2; v.mrmax = 6; v.nbmax = 4;
                          v.shapes = fl_b16_dot; }
        else if (level == 2) { v.mrmax = 4; v.nbmax = 4; v.shapes = fl_b16_f512; }
        else if (level == 1) { v.mrmax = 4; v.nbmax = 4; v.tile = fl_b16_tile_avx2; }
#endif
    }
    (void)level;
    return v;
}

static void fl_q_fill_cols(int M, int j0, int j1, const float *bias, int beta, float *C,
                           long ldc, int nan) {
    int i, j;
    for (i = 0; i < M; i++) {
        float *c = C + (long)i * ldc;
        for (j = j0; j < j1; j++) {
            float v = nan ? NAN : (beta ? c[j] : 0.0f);
            if (!nan && bias != NULL) v = v + bias[j];
            c[j] = v;
        }
    }
}

void fl_q_gemm(int M, const float *A, long lda, const fl_qmat *W, int j0, int j1,
               const float *bias, int beta, float *C, long ldc) {
    uint64_t stack[FL_Q_STACK / 8 + 8];
    float sa[FL_Q_MAX_ROWS];
    unsigned char *heap = NULL, *buf;
    fl_q_variant v;
    long G, Kp, arow, bstride, cap;
    int K, rb, r0, m0, jb, level;
    if (W == NULL || M <= 0 || j0 < 0 || (j0 & 15) != 0) return;
    if (W->kind != FL_Q_INT8 && W->kind != FL_Q_BF16) return;
    if (j1 > W->N) j1 = W->N;
    if (j1 <= j0) return;
    K = W->K;
    beta = beta != 0;
    if (K > 0 && (W->packed == NULL ||
                  (W->kind == FL_Q_INT8 && (W->scale == NULL || W->comp == NULL)))) {
        fl_q_fill_cols(M, j0, j1, NULL, 0, C, ldc, 1);     /* no weight: NaN, not a crash */
        return;
    }
    if (K <= 0) {
        fl_q_fill_cols(M, j0, j1, bias, beta, C, ldc, 0);
        return;
    }
    level = fl_q_level(W->kind);
    v = fl_q_pick(W->kind, level);
    G = fl_q_groups(W->kind, K);
    Kp = W->kind == FL_Q_INT8 ? 4 * G : 2 * G;
    arow = (Kp * v.elem + 63) / 64 * 64;
    bstride = G * 64;
    buf = (unsigned char *)(((uintptr_t)stack + 63) & ~(uintptr_t)63);
    cap = FL_Q_STACK / arow;
    rb = M < FL_Q_MAX_ROWS ? M : FL_Q_MAX_ROWS;
    if (cap < rb) rb = (int)cap;
    if (rb < (M < v.mrmax ? M : v.mrmax)) {
        /* Long rows: a few rows (a tile's) from the heap. */
        const int want = M < v.mrmax ? M : v.mrmax;
        heap = (unsigned char *)malloc((size_t)(want * arow + 64));
        if (heap != NULL) {
            buf = (unsigned char *)(((uintptr_t)heap + 63) & ~(uintptr_t)63);
            rb = want;
        } else if (rb < 1) {
            fl_q_fill_cols(M, j0, j1, NULL, 0, C, ldc, 1);
            return;
        }
    }
    if (rb > v.mrmax) rb -= rb % v.mrmax;
    for (r0 = 0; r0 < M; r0 += rb) {
        const int mb = M - r0 < rb ? M - r0 : rb;
#if FL_Q_X86
        if (level >= 2)
            fl_q_fill_rows_512(v.fmt, mb, K, (int)Kp, A + (long)r0 * lda, lda, buf, arow, sa);
        else
#endif
            fl_q_fill_rows(v.fmt, mb, K, (int)Kp, A + (long)r0 * lda, lda, buf, arow, sa);
        for (jb = j0; jb < j1; jb += 16 * v.nbmax) {
            const int ncols = j1 - jb < 16 * v.nbmax ? j1 - jb : 16 * v.nbmax;
            const int nb = (ncols + 15) / 16;
            const unsigned char *wp = (const unsigned char *)W->packed + (jb / 16) * bstride;
            for (m0 = 0; m0 < mb; m0 += v.mrmax) {
                const int mr = mb - m0 < v.mrmax ? mb - m0 : v.mrmax;
                const float *sc = W->scale != NULL ? W->scale + jb : NULL;
                const int32_t *cp = W->comp != NULL ? W->comp + jb : NULL;
                const float *bi = bias != NULL ? bias + jb : NULL;
                float *c = C + (long)(r0 + m0) * ldc + jb;
                if (v.shapes != NULL)
                    v.shapes[mr][nb](buf + m0 * arow, arow, sa + m0, wp, bstride, G, sc, cp, bi,
                                     beta, c, ldc, ncols);
                else
                    v.tile(mr, nb, buf + m0 * arow, arow, sa + m0, wp, bstride, G, sc, cp, bi,
                           beta, c, ldc, ncols);
            }
        }
    }
    free(heap);
}

int fl_q_gemm_bf16_packed(int M, const void *Ap, long aG, const fl_qmat *W, int j0, int j1,
                          int beta, float *C, long ldc) {
#if FL_Q_X86
    const unsigned char *ap = (const unsigned char *)Ap;
    long G, bstride;
    int r0, m0, jb;
    if (W == NULL || W->kind != FL_Q_BF16 || fl_q_level(FL_Q_BF16) < FL_Q_LEVEL_DOT)
        return 0;
    if (M <= 0 || j0 < 0 || (j0 & 15) != 0) return 1;
    if (j1 > W->N) j1 = W->N;
    if (j1 <= j0) return 1;
    if (W->K <= 0) {
        fl_q_fill_cols(M, j0, j1, NULL, beta != 0, C, ldc, 0);
        return 1;
    }
    G = fl_q_groups(FL_Q_BF16, W->K);
    bstride = G * 64;
    /* A block of 16 rows (G * 64 bytes) stays in L2 while the panels of W go by; each
     * panel of 64 columns (G * 256 bytes) serves the block's three tiles in turn. */
    for (r0 = 0; r0 < M; r0 += 16) {
        const unsigned char *ab = ap + (long)(r0 / 16) * aG * 64;
        const int rows = M - r0 < 16 ? M - r0 : 16;
        for (jb = j0; jb < j1; jb += 64) {
            const int ncols = j1 - jb < 64 ? j1 - jb : 64;
            const unsigned char *wp = (const unsigned char *)W->packed + (jb / 16) * bstride;
            for (m0 = 0; m0 < rows; m0 += 6) {
                const int mr = rows - m0 < 6 ? rows - m0 : 6;
                fl_b16_pa[mr][(ncols + 15) / 16](ab + 4 * m0, wp, bstride, G, NULL, beta != 0,
                                                 C + (long)(r0 + m0) * ldc + jb, ldc, ncols);
            }
        }
    }
    return 1;
#else
    (void)M; (void)Ap; (void)aG; (void)W; (void)j0; (void)j1; (void)beta; (void)C; (void)ldc;
    return 0;
#endif
}
