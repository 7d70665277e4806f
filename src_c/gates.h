/* Elementwise gate kernels of fastlstm, in float (_f) and double (_d).
 *
 * Each public function dispatches once per call to a variant compiled for AVX-512, AVX2+FMA
 * or the baseline ISA (chosen at run time with __builtin_cpu_supports), so the loops vectorize
 * without -march=native at build time. Shapes follow the notation of
 * fastlstm/backends/oracle/__init__.py: B rows, H units, G gate width, row-major.
 */
#ifndef FASTLSTM_GATES_H
#define FASTLSTM_GATES_H

#include <sched.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

#include "fl_activations.h"      /* the activation kinds (fastlstm/include) */
#include "gate_kernels.h"        /* the list of the per-ISA entry points */

typedef struct {
    int kind;
    double alpha, beta;   /* hard sigmoid: clip(alpha*x + beta, 0, 1) */
} fl_act;

/* Which variant runs here: 2 = AVX-512, 1 = AVX2+FMA, 0 = baseline. */
int fl_isa_level(void);
const char *fl_isa_name(void);
/* Force a lower variant (tests); -1 restores automatic choice. */
void fl_force_isa_level(int level);

/* The per-ISA entry points (gate_kernels.h), in float (_f) and double (_d). */
#define FL_DECLARE_F(name, params, args) void name##_f params;
#define FL_DECLARE_D(name, params, args) void name##_d params;
FL_GATE_KERNELS(FL_DECLARE_F, float)
FL_GATE_KERNELS(FL_DECLARE_D, double)
#undef FL_DECLARE_F
#undef FL_DECLARE_D

/* W[K,N] (row stride ldw) -> Wp[K*N]: column panels of FL_PANEL_BYTES (the last one
 * narrower), each K x (panel width) row-major, which fl_matmul_packed_acc reads. For
 * products that reuse one W over many row blocks (the time loops, the projections). */
#define FL_PANEL_BYTES 256
void fl_pack_panels_f(int K, int N, const float *W, int ldw, float *Wp);
void fl_pack_panels_d(int K, int N, const double *W, int ldw, double *Wp);

/* C[M,N] += op(A)[M,K] B[K,N], row-major: op(A) = A [M,K] (trans = 0) or A^T with A [K,M]
 * (trans = 1), both read in place with row stride lda; B [K,N] row stride ldb, packed
 * block by block (a 512 KiB work buffer per call). For the many-row products. */
void fl_gemm_f(int trans, int M, int N, int K, const float *A, int lda, const float *B,
               int ldb, float *C, int ldc);
void fl_gemm_d(int trans, int M, int N, int K, const double *A, int lda, const double *B,
               int ldb, double *C, int ldc);
/* The same with B packed once beforehand (a weight reused at every step): fl_pack_b writes
 * fl_packed_size(K, N) elements to Bp. */
long fl_packed_size_f(int K, int N);
long fl_packed_size_d(int K, int N);
void fl_pack_b_f(int K, int N, const float *B, int ldb, float *Bp);
void fl_pack_b_d(int K, int N, const double *B, int ldb, double *Bp);
/* The same for B^T [K,N], given B [N,K] (row stride ldb). */
void fl_pack_bt_f(int K, int N, const float *B, int ldb, float *Bp);
void fl_pack_bt_d(int K, int N, const double *B, int ldb, double *Bp);
void fl_gemm_packed_f(int trans, int M, int N, int K, const float *A, int lda,
                      const float *Bp, float *C, int ldc);
void fl_gemm_packed_d(int trans, int M, int N, int K, const double *A, int lda,
                      const double *Bp, double *C, int ldc);
/* C = op(A) B (fl_gemm_set) or C = A Bp + bias (fl_gemm_packed_set; bias a row of N, or
 * NULL): C is overwritten, never read, so it needs no clearing beforehand. */
void fl_gemm_set_f(int trans, int M, int N, int K, const float *A, int lda, const float *B,
                   int ldb, float *C, int ldc);
void fl_gemm_set_d(int trans, int M, int N, int K, const double *A, int lda, const double *B,
                   int ldb, double *C, int ldc);
/* Two products sharing B, overwriting C and C2: C = op(A) B, C2 = op(A2) B (A2 [M2,K] or,
 * with trans, [K,M2]); bsum [N], unless NULL, gets the column sums of B. */
void fl_gemm2_set_f(int trans, int M, int M2, int N, int K, const float *A, int lda,
                    const float *A2, int lda2, const float *B, int ldb, float *C, int ldc,
                    float *C2, int ldc2, float *bsum);
void fl_gemm2_set_d(int trans, int M, int M2, int N, int K, const double *A, int lda,
                    const double *A2, int lda2, const double *B, int ldb, double *C, int ldc,
                    double *C2, int ldc2, double *bsum);
void fl_gemm_packed_set_f(int M, int N, int K, const float *A, int lda, const float *Bp,
                          const float *bias, float *C, int ldc);
void fl_gemm_packed_set_d(int M, int N, int K, const double *A, int lda, const double *Bp,
                          const double *bias, double *C, int ldc);

/* One round of a spin wait: a pause, and past a few thousand rounds the core yielded. */
static inline void fl_spin(long round) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (round > 4000) sched_yield();
}

/* A barrier for the threads of one parallel region that meet at every timestep (a few
 * hundred nanoseconds apart): they spin on a shared word rather than sleep, as an OpenMP
 * barrier may. Each thread keeps its own `sense` (0 at first); `count` and `flag` start at 0.
 * After a few thousand spins a waiting thread yields its core, so a region with more threads
 * than cores still advances. */
typedef struct { int count; int flag; char pad[56]; } fl_barrier;

static inline void fl_barrier_wait(fl_barrier *b, int n, int *sense) {
    const int s = !*sense;
    *sense = s;
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == n) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->flag, s, __ATOMIC_RELEASE);
        return;
    }
    for (long round = 0; __atomic_load_n(&b->flag, __ATOMIC_ACQUIRE) != s; round++)
        fl_spin(round);
}

/* One thread publishes how far it got (release); another waits until then (acquire),
 * with fl_spin. */
static inline void fl_publish(long *progress, long value) {
    __atomic_store_n(progress, value, __ATOMIC_RELEASE);
}
static inline void fl_await(long *progress, long value) {
    for (long round = 0; __atomic_load_n(progress, __ATOMIC_ACQUIRE) < value; round++)
        fl_spin(round);
}

/* The calling thread's number and its team's size inside a parallel region (0 and 1 in a
 * build without OpenMP, where a region runs once, on this thread). */
static inline int fl_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}
static inline int fl_thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}


#ifdef __cplusplus
}
#endif
#endif
