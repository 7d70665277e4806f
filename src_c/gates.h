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

/* Must match the codes in fastlstm/activations.py. */
enum fl_act_kind { FL_TANH = 0, FL_SIGMOID = 1, FL_HARD_SIGMOID = 2, FL_RELU = 3,
                   FL_LINEAR = 4, FL_SOFTSIGN = 5 };

typedef struct {
    int kind;
    double alpha, beta;   /* hard sigmoid: clip(alpha*x + beta, 0, 1) */
} fl_act;

/* Which variant runs here: 2 = AVX-512, 1 = AVX2+FMA, 0 = baseline. */
int fl_isa_level(void);
const char *fl_isa_name(void);
/* Force a lower variant (tests); -1 restores automatic choice. */
void fl_force_isa_level(int level);

#define FL_DECLARE(REAL, S)                                                                   \
/* z[0:n] = act(z[0:n]) */                                                                    \
void fl_act_forward##S(fl_act act, REAL *z, long n);                                          \
/* out[0:n] = g[0:n] * act'(.) written through y = act(.); out may alias y or g */                                           \
void fl_act_grad##S(fl_act act, const REAL *y, const REAL *g, REAL *out, long n);                             \
/* out[0:n] = a[0:n] * b[0:n] */                                                              \
void fl_mul##S(const REAL *a, const REAL *b, REAL *out, long n);                              \
/* rows b with mask[b] (or all rows when mask is NULL): dst[b] = src[b] (* scale[b]) */        \
void fl_merge_rows##S(int B, int H, const unsigned char *mask, const REAL *scale,              \
                      const REAL *src, REAL *dst);                                            \
/* One LSTM step after the recurrent product. z [B,G]: pre-activations in, gates out       \
 * (rows of masked steps are left as they are). h_in, c_in [B,H]: state before the step;    \
 * h_out, c_out [B,H]: after it (may alias h_in, c_in; masked rows copy the input state).   \
 * out [B,H]: the step's output, out_prev [B,H] the previous one (NULL = zeros); both are   \
 * used only with a mask. peep [3,H] or NULL. scratch [H]. */                                \
void fl_lstm_fwd_step##S(int B, int H, int coupled, fl_act act, fl_act ract,                  \
                         REAL *z, const REAL *peep, const unsigned char *mask,                \
                         const REAL *h_in, const REAL *c_in, REAL *h_out, REAL *c_out,        \
                         const REAL *out_prev, REAL *out, REAL *scratch);                     \
/* Backward of one LSTM step. z [B,G]: gates in, gate gradients (pre-activation) out.         \
 * c [B,H]: c_t; c_prev [B,H]: c_{t-1}. dy [B,H] (rows ldy apart) or NULL: gradient of   \
 * this step's output. dh [B,H]: gradient reaching h_t from later steps (read). dc [B,H]: in  \
 * dc_t, out dc_{t-1}                                                                         \
 * (masked rows keep theirs). dout [B,H] (only with a mask): output gradient carried over     \
 * masked steps. dpeep [3,H] or NULL: accumulated. scratch [5H]. */                            \
void fl_lstm_bwd_step##S(int B, int H, int coupled, fl_act act, fl_act ract,                  \
                         REAL *z, const REAL *c, const REAL *c_prev, const REAL *peep,        \
                         const unsigned char *mask, const REAL *dy, long ldy,                 \
                         const REAL *dh, REAL *dc, REAL *dout, REAL *dpeep, REAL *scratch);   \
/* out[0:n] += a[0:n] * b[0:n] */                                                            \
void fl_add_mul##S(const REAL *a, const REAL *b, REAL *out, long n);                          \
/* GRU (layouts of the gate rows in gru_impl.h). reset_after=0, between the two recurrent   \
 * products: z [B,3H] columns 0:2H := ra(.), rh [B,H] = r * hin. */                           \
void fl_gru_fwd_reset##S(int B, int H, fl_act ract, REAL *z, const REAL *hin, REAL *rh);      \
/* One GRU step after the recurrent product(s). z [B,4H] (reset_after) or [B,3H]:          \
 * pre-activations in, z, r, n out (masked rows left as they are). h_in/h_out [B,H] may     \
 * alias; out, out_prev [B,H] as in fl_lstm_fwd_step (used only with a mask). */             \
void fl_gru_fwd_step##S(int B, int H, int reset_after, fl_act act, fl_act ract, REAL *z,      \
                        const unsigned char *mask, const REAL *h_in, REAL *h_out,             \
                        const REAL *out_prev, REAL *out);                                     \
/* Backward of one GRU step before the recurrent products: gate gradients over z; dh [B,H]  \
 * in: gradient from later steps, out: its carry share s*z; h_prev [B,H]; dy [B,H] (row     \
 * stride ldy) or NULL; dout [B,H] only with a mask. scratch [2H]. */                         \
void fl_gru_bwd_step##S(int B, int H, int reset_after, fl_act act, fl_act ract, REAL *z,      \
                        const REAL *h_prev, const unsigned char *mask, const REAL *dy,        \
                        long ldy, REAL *dh, REAL *dout, REAL *scratch);                       \
/* reset_after=0: given drh = dn U_h^T [B,H], dr over column block 1 of z [B,3H] and         \
 * dhin [B,H] (+)= drh * r. scratch [H]. */                                                   \
void fl_gru_bwd_reset##S(int B, int H, fl_act ract, REAL *z, const REAL *hin,                 \
                         const REAL *drh, const unsigned char *mask, REAL *dhin,              \
                         int accumulate, REAL *scratch);                                      \
/* One SimpleRNN step after the recurrent product: z [B,H] := act(z); h_in, h_out, out,      \
 * out_prev as in fl_lstm_fwd_step. */                                                        \
void fl_rnn_fwd_step##S(int B, int H, fl_act act, REAL *z, const unsigned char *mask,         \
                        const REAL *h_in, REAL *h_out, const REAL *out_prev, REAL *out);      \
/* Its backward: z [B,H] := (dh + dy + dout) act'(.) (masked rows 0, dout += dy); dy's rows  \
 * ldy apart. scratch [H] */                                                                  \
void fl_rnn_bwd_step##S(int B, int H, fl_act act, REAL *z, const unsigned char *mask,         \
                        const REAL *dy, long ldy, const REAL *dh, REAL *dout, REAL *scratch);

FL_DECLARE(float, _f)
FL_DECLARE(double, _d)

#undef FL_DECLARE

/* Which per-step product the cells use: 0 auto, 1 BLAS, 2 own kernel (one per module). */
extern int fl_matmul_policy;
/* Threads of the kernels' own parallel loops, and the smallest work (multiply-adds) worth
 * splitting over them (one copy per extension module; fastlstm.threads sets them all). */
extern int fl_max_threads;
extern double fl_parallel_min_macs;
/* Blocks of steps, and the least projection work, of a pipelined few-row forward pass. */
extern long fl_pipe_steps;
extern double fl_pipe_min_macs;
/* Input projections of fewer rows read W in place instead of packing it. */
extern long fl_direct_rows;

/* C[M,N] += A[M,K] W[K,N], row-major with leading dimensions: the per-step recurrent
 * product, register-blocked, W read in place (no packing). */
void fl_matmul_acc_f(int M, int N, int K, const float *A, int lda, const float *W, int ldw,
                     float *C, int ldc);
void fl_matmul_acc_d(int M, int N, int K, const double *A, int lda, const double *W, int ldw,
                     double *C, int ldc);
/* The same product with every row computed the same way whatever M: for input projections
 * of a few rows, whose bits must not depend on how their rows are split into calls. */
void fl_matmul_rows_acc_f(int M, int N, int K, const float *A, int lda, const float *W,
                          int ldw, float *C, int ldc);
void fl_matmul_rows_acc_d(int M, int N, int K, const double *A, int lda, const double *W,
                          int ldw, double *C, int ldc);
/* y[N] += W[N,K] x[K] (row stride ldw): the one-row product with a transposed weight. */
void fl_gemv_t_acc_f(int N, int K, const float *W, int ldw, const float *x, float *y);
void fl_gemv_t_acc_d(int N, int K, const double *W, int ldw, const double *x, double *y);

/* W[K,N] (row stride ldw) -> Wp[K*N]: column panels of FL_PANEL_BYTES (the last one
 * narrower), each K x (panel width) row-major; and C[M,N] += A[M,K] W[K,N] over it. For
 * products that reuse one W over many row blocks (the time loops, the projections). */
#define FL_PANEL_BYTES 256
void fl_pack_panels_f(int K, int N, const float *W, int ldw, float *Wp);
void fl_pack_panels_d(int K, int N, const double *W, int ldw, double *Wp);
void fl_matmul_packed_acc_f(int M, int N, int K, const float *A, int lda, const float *Wp,
                            float *C, int ldc);
void fl_matmul_packed_acc_d(int M, int N, int K, const double *A, int lda, const double *Wp,
                            double *C, int ldc);

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
