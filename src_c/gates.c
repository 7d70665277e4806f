/* Instantiates gates_impl.h (with the GRU and SimpleRNN kernels of gru_impl.h and
 * simple_rnn_impl.h) per dtype and ISA, and the run-time dispatch between them. */
#include "gates.h"
#include "gates_math.h"
#include <stdlib.h>
#include <string.h>

#define FL_CAT(a, b) a##b
#define FL_XCAT(a, b) FL_CAT(a, b)
#define FL_CAT3(a, b, c) a##b##c
#define FL_XCAT3(a, b, c) FL_CAT3(a, b, c)

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FL_X86_DISPATCH 1
#else
#define FL_X86_DISPATCH 0
#endif


/* Packed panels of the GEMM in matmul_impl.h: FL_PW columns (256 bytes) on every ISA, so a
 * kernel packed once can be used by whichever variant runs. */
#define FL_PW (256 / (int)sizeof(REAL))
#define FL_KC 512       /* depth of a packed block: C is read and written once per block */
#define FL_NC ((512 << 10) / (FL_KC * (int)sizeof(REAL)))       /* its width: 512 KiB, in L2 */
#define fl_pack_padded(S) FL_XCAT(fl_pack_padded, S)

/* B[K,N] (row stride ldb) into ceil(N/PW) panels laid out [panel][k][PW], the last one
 * zero-padded. */
#define FL_PACK(T, S, PW)                                                                    \
static void fl_pack_padded##S(int K, int N, const T *B, long ldb, T *dst) {                  \
    int p, k, w;                                                                             \
    for (p = 0; p * PW < N; p++) {                                                           \
        T *d = dst + (long)p * K * PW;                                                       \
        w = N - p * PW < PW ? N - p * PW : PW;                                               \
        for (k = 0; k < K; k++) {                                                            \
            memcpy(d + (long)k * PW, B + (long)k * ldb + (long)p * PW, w * sizeof(T));       \
            if (w < PW) memset(d + (long)k * PW + w, 0, (PW - w) * sizeof(T));              \
        }                                                                                    \
    }                                                                                        \
}
FL_PACK(float, _f, 64)
FL_PACK(double, _d, 32)
#undef FL_PACK

/* The same panels of B^T [K,N] read from B [N,K] (row stride ldb) in one pass: a transposed
 * weight (the input and recurrent gradients read W^T and U^T) without a transposed copy
 * first, which took longer than the product's packing. 64 k at a time keep the panel rows
 * being written in L1. */
#define FL_PACK_T(T, S, PW)                                                                  \
static void fl_pack_padded_t##S(int K, int N, const T *B, long ldb, T *dst) {                \
    int p, k, k0, j, w, kn;                                                                  \
    for (p = 0; p * PW < N; p++) {                                                           \
        T *d = dst + (long)p * K * PW;                                                       \
        w = N - p * PW < PW ? N - p * PW : PW;                                               \
        for (k0 = 0; k0 < K; k0 += 64) {                                                     \
            kn = K - k0 < 64 ? K - k0 : 64;                                                  \
            for (j = 0; j < w; j++) {                                                        \
                const T *src = B + (long)(p * PW + j) * ldb + k0;                            \
                for (k = 0; k < kn; k++) d[(long)(k0 + k) * PW + j] = src[k];                \
            }                                                                                \
            if (w < PW)                                                                      \
                for (k = 0; k < kn; k++)                                                     \
                    memset(d + (long)(k0 + k) * PW + w, 0, (PW - w) * sizeof(T));            \
        }                                                                                    \
    }                                                                                        \
}
FL_PACK_T(float, _f, 64)
FL_PACK_T(double, _d, 32)
#undef FL_PACK_T

/* The kernels of each ISA, in both dtypes: gates_instance.h once per (ISA, dtype). */
#define FL_TARGET
#define V __generic
#define FL_VBYTES 16
#define REAL float
#define S _f
#include "gates_instance.h"
#define REAL double
#define S _d
#include "gates_instance.h"
#undef V
#undef FL_VBYTES
#undef FL_TARGET

#if FL_X86_DISPATCH
#if defined(__clang__)
#define FL_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))
#else
#define FL_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,prefer-vector-width=512")))
#endif
#define FL_TARGET FL_TARGET_AVX512
#define V __avx512
#define FL_VBYTES 64
#define REAL float
#define S _f
#include "gates_instance.h"
#define REAL double
#define S _d
#include "gates_instance.h"
#undef V
#undef FL_VBYTES
#undef FL_TARGET

#define FL_TARGET __attribute__((target("avx2,fma")))
#define V __avx2
#define FL_VBYTES 32
#define REAL float
#define S _f
#include "gates_instance.h"
#define REAL double
#define S _d
#include "gates_instance.h"
#undef V
#undef FL_VBYTES
#undef FL_TARGET
#endif

static int fl_forced_level = -1;
static int fl_detected_level = -1;

int fl_isa_level(void) {
    if (fl_forced_level >= 0) return fl_forced_level;
    if (fl_detected_level < 0) {
        int level = 0;
#if FL_X86_DISPATCH
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = 1;
        if (level && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
            level = 2;
#endif
        fl_detected_level = level;
    }
    return fl_detected_level;
}

void fl_force_isa_level(int level) {
    int best;
    fl_forced_level = -1;
    best = fl_isa_level();
    fl_forced_level = (level < 0 || level > best) ? -1 : level;
}

const char *fl_isa_name(void) {
    switch (fl_isa_level()) {
    case 2: return "avx512";
    case 1: return "avx2";
    default:
#if defined(__aarch64__)
        return "neon";
#else
        return "baseline";
#endif
    }
}

#if FL_X86_DISPATCH
#define FL_DISPATCH(name, args)                                                  \
    do {                                                                         \
        switch (fl_isa_level()) {                                                \
        case 2: name##__avx512 args; return;                                     \
        case 1: name##__avx2 args; return;                                       \
        default: name##__generic args; return;                                   \
        }                                                                        \
    } while (0)
#else
#define FL_DISPATCH(name, args) do { name##__generic args; return; } while (0)
#endif

/* The exported entry points of gate_kernels.h: each dispatches to its ISA's variant. */
#define FL_EXPORT_F(name, params, args) void name##_f params { FL_DISPATCH(name##_f, args); }
#define FL_EXPORT_D(name, params, args) void name##_d params { FL_DISPATCH(name##_d, args); }
FL_GATE_KERNELS(FL_EXPORT_F, float)
FL_GATE_KERNELS(FL_EXPORT_D, double)
#undef FL_EXPORT_F
#undef FL_EXPORT_D

/* Panels of the per-step product over packed weights (fl_matmul_packed_acc). */
#define FL_EXPORTS_PACKED(REAL, S)                                                          \
void fl_pack_panels##S(int K, int N, const REAL *W, int ldw, REAL *Wp) {                    \
    const int PW = FL_PANEL_BYTES / (int)sizeof(REAL);                                       \
    for (int j = 0; j < N; j += PW) {                                                        \
        const int w = N - j < PW ? N - j : PW;                                               \
        for (int k = 0; k < K; k++)                                                          \
            memcpy(Wp + (long)j * K + (long)k * w, W + (long)k * ldw + j, w * sizeof(REAL)); \
    }                                                                                        \
}

FL_EXPORTS_PACKED(float, _f)
FL_EXPORTS_PACKED(double, _d)

/* The packed GEMM (matmul_impl.h). The _set forms overwrite C with the product plus an
 * optional bias row; with K = 0 that is the bias (or zeros) alone. */
#define FL_EXPORTS_GEMM(REAL, S)                                                            \
long fl_packed_size##S(int K, int N) {                                                      \
    return (long)K * ((N + FL_PW - 1) / FL_PW) * FL_PW; }                                   \
void fl_pack_b##S(int K, int N, const REAL *B, int ldb, REAL *Bp) {                         \
    if (K > 0 && N > 0) fl_pack_padded##S(K, N, B, ldb, Bp); }                              \
void fl_pack_bt##S(int K, int N, const REAL *B, int ldb, REAL *Bp) {                        \
    if (K > 0 && N > 0) fl_pack_padded_t##S(K, N, B, ldb, Bp); }                            \
static void fl_fill_rows##S(int M, int N, const REAL *bias, REAL *C, int ldc) {             \
    for (long i = 0; i < M; i++) {                                                          \
        if (bias != NULL) memcpy(C + i * ldc, bias, (size_t)N * sizeof(REAL));              \
        else memset(C + i * ldc, 0, (size_t)N * sizeof(REAL));                              \
    }                                                                                       \
}                                                                                           \
static void fl_gemm_packed_run##S(int trans, int M, int N, int K, const REAL *A, int lda,   \
                                  const REAL *Bp, const REAL *bias, int init, REAL *C,      \
                                  int ldc) {                                                \
    if (M <= 0 || N <= 0) return;                                                           \
    if (K <= 0) {                                                                           \
        if (init) fl_fill_rows##S(M, N, bias, C, ldc);                                      \
        return;                                                                             \
    }                                                                                       \
    FL_DISPATCH(fl_gemm_run##S, (trans, M, N, K, A, lda, NULL, 0, Bp, bias, init, C, ldc,   \
                                 0, NULL, 0, NULL, 0, NULL, NULL)); }                       \
void fl_gemm_packed##S(int trans, int M, int N, int K, const REAL *A, int lda,              \
                       const REAL *Bp, REAL *C, int ldc) {                                  \
    fl_gemm_packed_run##S(trans, M, N, K, A, lda, Bp, NULL, 0, C, ldc); }                   \
void fl_gemm_packed_set##S(int M, int N, int K, const REAL *A, int lda, const REAL *Bp,     \
                           const REAL *bias, REAL *C, int ldc) {                            \
    fl_gemm_packed_run##S(0, M, N, K, A, lda, Bp, bias, 1, C, ldc); }                       \
static void fl_gemm_any##S(int trans, int M, int N, int K, const REAL *A, int lda,          \
                           const REAL *B, int ldb, int init, REAL *C, int ldc, int M2,      \
                           const REAL *A2, int lda2, REAL *C2, int ldc2, REAL *buf,         \
                           REAL *bsum) {                                                    \
    FL_DISPATCH(fl_gemm_run##S, (trans, M, N, K, A, lda, B, ldb, NULL, NULL, init, C, ldc,  \
                                 M2, A2, lda2, C2, ldc2, buf, bsum)); }                     \
static void fl_gemm_loop##S(int trans, int M, int N, int K, const REAL *A, int lda,         \
                            const REAL *B, int ldb, int init, REAL *C, int ldc) {           \
    long i, j, k;                    /* out of memory: slow but right */                    \
    if (init) fl_fill_rows##S(M, N, NULL, C, ldc);                                          \
    for (i = 0; i < M; i++)                                                                 \
        for (k = 0; k < K; k++) {                                                           \
            const REAL a = trans ? A[k * lda + i] : A[i * lda + k];                         \
            for (j = 0; j < N; j++) C[i * ldc + j] += a * B[k * ldb + j];                   \
        }                                                                                   \
}                                                                                           \
static void fl_gemm_run_or_loop##S(int trans, int M, int N, int K, const REAL *A, int lda,  \
                                   const REAL *B, int ldb, int init, REAL *C, int ldc,      \
                                   int M2, const REAL *A2, int lda2, REAL *C2, int ldc2,    \
                                   REAL *bsum) {                                            \
    REAL *buf;                                                                              \
    long j, k;                                                                              \
    if (N <= 0) return;                                                                     \
    if (bsum != NULL) memset(bsum, 0, (size_t)N * sizeof(REAL));                            \
    if (M < 0) M = 0;                                                                       \
    if (M2 < 0) M2 = 0;                                                                     \
    if (M == 0 && M2 == 0 && bsum == NULL) return;                                          \
    if (K <= 0) {                                                                           \
        if (init) {                                                                         \
            fl_fill_rows##S(M, N, NULL, C, ldc);                                            \
            fl_fill_rows##S(M2, N, NULL, C2, ldc2);                                         \
        }                                                                                   \
        return;                                                                             \
    }                                                                                       \
    buf = (REAL *)aligned_alloc(64, (size_t)FL_KC * FL_NC * sizeof(REAL));                  \
    if (buf != NULL) {                                                                      \
        fl_gemm_any##S(trans, M, N, K, A, lda, B, ldb, init, C, ldc, M2, A2, lda2, C2,      \
                       ldc2, buf, bsum);                                                    \
        free(buf);                                                                          \
        return;                                                                             \
    }                                                                                       \
    fl_gemm_loop##S(trans, M, N, K, A, lda, B, ldb, init, C, ldc);                          \
    fl_gemm_loop##S(trans, M2, N, K, A2, lda2, B, ldb, init, C2, ldc2);                     \
    if (bsum != NULL)                                                                       \
        for (k = 0; k < K; k++)                                                             \
            for (j = 0; j < N; j++) bsum[j] += B[k * ldb + j];                              \
}                                                                                           \
void fl_gemm##S(int trans, int M, int N, int K, const REAL *A, int lda, const REAL *B,      \
                int ldb, REAL *C, int ldc) {                                                \
    fl_gemm_run_or_loop##S(trans, M, N, K, A, lda, B, ldb, 0, C, ldc, 0, NULL, 0, NULL, 0,  \
                           NULL); }                                                         \
void fl_gemm_set##S(int trans, int M, int N, int K, const REAL *A, int lda, const REAL *B,  \
                    int ldb, REAL *C, int ldc) {                                            \
    fl_gemm_run_or_loop##S(trans, M, N, K, A, lda, B, ldb, 1, C, ldc, 0, NULL, 0, NULL, 0,  \
                           NULL); }                                                         \
void fl_gemm2_set##S(int trans, int M, int M2, int N, int K, const REAL *A, int lda,        \
                     const REAL *A2, int lda2, const REAL *B, int ldb, REAL *C, int ldc,    \
                     REAL *C2, int ldc2, REAL *bsum) {                                      \
    fl_gemm_run_or_loop##S(trans, M, N, K, A, lda, B, ldb, 1, C, ldc, M2, A2, lda2, C2,     \
                           ldc2, bsum); }

#define REAL float
FL_EXPORTS_GEMM(float, _f)
#undef REAL
#define REAL double
FL_EXPORTS_GEMM(double, _d)
#undef REAL
