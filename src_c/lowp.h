/* Reduced-precision products (int8 and bfloat16) for quantized inference.
 *
 * C[M, j0:j1] = beta*C + q(A)[M,K] . W[:, j0:j1] (+ bias), A float32, W packed once by
 * fl_q_pack into a layout that every ISA variant of its kind reads:
 *   int8: column blocks of 16, K in groups of 4 (zero-padded): 64 bytes per (block, group),
 *         byte 4*c + r = Wq[4*g + r, 16*b + c]; blocks follow one another, each
 *         ceil(K/4)*64 bytes.
 *   bf16: column blocks of 16, K in pairs (zero-padded): 64 bytes per (block, pair),
 *         uint16 2*c + r = W[2*p + r, 16*b + c] (bf16 bits); each block ceil(K/2)*64 bytes.
 *
 * Numerics (fastlstm/backends/oracle/lowp.py reproduces them):
 *   int8: per row of A, amax = max|a| (float32). A row holding NaN or +-Inf gives a NaN
 *   output row (sa = NaN). A row with amax == 0, or so small that 127.0f/amax overflows to
 *   Inf (amax < ~3.7e-37), is a zero row (sa = 0, q = 0). Otherwise
 *   q = rint(a * (127.0f/amax)) (float32 multiply, round half to even), sa = amax/127.0f.
 *   acc = sum_k q*Wq exactly in int32 (exact for K <= 131072). Then, with every operation
 *   rounded on its own (no FMA anywhere):  d = sa*scale[c];  r = (float)acc * d;
 *   r = r + C (beta = 1);  r = r + bias[c] (bias != NULL).
 *   bf16: a is rounded to bf16 per element: round to nearest even; zero and denormal inputs
 *   give a zero of the same sign (as VCVTNE2PS2BF16, which treats denormals as zero); NaN
 *   stays NaN (quieted); Inf stays Inf; finite values that round past the largest bf16 give
 *   Inf. fl_q_pack flushes denormal bf16 weights to signed zero the same way. Products of
 *   bf16 pairs are exact in float32 and accumulate in float32, in an order that differs by
 *   variant (the results agree to float32 accumulation-order error); then r = acc (+ C)
 *   (+ bias[c]).
 *
 * Variants (level, same numbering for both kinds): 3 = AVX512-VNNI (int8) / AVX512_BF16
 * (bf16), 2 = AVX-512BW (int8: vpmaddwd on int16, exact) / AVX-512F (bf16 widened to fp32 +
 * FMA), 1 = AVX2 (likewise), 0 = portable C. fl_force_isa_level (gates.h) caps them too:
 * ISA level 0 -> 0, 1 -> at most 1, 2 -> no cap.
 */
#ifndef FASTLSTM_LOWP_H
#define FASTLSTM_LOWP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { FL_Q_INT8 = 1, FL_Q_BF16 = 2 };

/* The variants' levels. */
enum { FL_Q_LEVEL_C = 0, FL_Q_LEVEL_AVX2 = 1, FL_Q_LEVEL_AVX512 = 2, FL_Q_LEVEL_DOT = 3 };

typedef struct {
    int kind;             /* FL_Q_INT8 or FL_Q_BF16 */
    int K, N;             /* the logical weight W [K,N] */
    const void *packed;   /* fl_q_packed_bytes(kind, K, N) bytes written by fl_q_pack, 64-byte aligned */
    const float *scale;   /* int8: per-column scales [N] (W ~= Wq * scale[col]); bf16: NULL */
    const int32_t *comp;  /* int8: 128 * column sums of Wq [N] (compensates the u8 shift); bf16: NULL */
} fl_qmat;

/* Bytes of the packed weight (0 for an unknown kind or K, N <= 0). */
long fl_q_packed_bytes(int kind, int K, int N);
/* kind int8: W is int8 [K,N] with row stride ld (elements), comp [N] is written;
   kind bf16: W is uint16 bf16 bit patterns [K,N], row stride ld; comp unused (NULL). */
void fl_q_pack(int kind, int K, int N, const void *W, long ld, void *packed, int32_t *comp);
/* C[M, j0:j1] (row stride ldc; C points at column 0) = beta*C + q(A)[M,K] . W[:, j0:j1]
   (+ bias[j0:j1] when bias != NULL). A is float32 [M,K], row stride lda. beta is 0 or 1.
   j0 is a multiple of 16 (or 0), j1 <= N (any). Single-threaded. No allocation for
   K <= 8192 (a stack buffer of quantized rows); beyond, one malloc freed before return (if
   it fails, C[:, j0:j1] is set to NaN, as when W lacks packed, or scale or comp for int8).
   K = 0: C = beta*C + bias (or 0). An unknown kind or a j0 not a multiple of 16 writes
   nothing. */
void fl_q_gemm(int M, const float *A, long lda, const fl_qmat *W, int j0, int j1,
               const float *bias, int beta, float *C, long ldc);
int fl_q_level(int kind);            /* which variant runs now for that kind */
const char *fl_q_level_name(int kind);
void fl_q_force_level(int level);    /* tests: cap the variant (as fl_force_isa_level); -1 = automatic */

/* Added: the best variant this CPU has for that kind (ignoring any cap), and the row
   quantizers the kernels use, for tests and callers that keep quantized rows. */
int fl_q_best_level(int kind);
/* q[M, K] int8 and sa[M] as fl_q_gemm computes them (numerics above). */
void fl_q_quantize_rows_int8(int M, int K, const float *A, long lda, int8_t *q, long ldq,
                             float *sa);
/* bf16 bits of n floats, rounded as fl_q_gemm rounds A. */
void fl_q_round_bf16(long n, const float *x, uint16_t *out);
/* float32 A [K,N] (row stride lda) rounded to bf16 as above and packed as fl_q_pack packs
   bf16 bits (fl_q_packed_bytes(FL_Q_BF16, K, N) bytes), in one pass. */
void fl_q_pack_bf16_float(int K, int N, const float *A, long lda, void *packed);

/* C[M, j0:j1] = beta*C + A[M,K] . W[:, j0:j1] with A given packed as well: the bf16
   packing (fl_q_pack_bf16_float, fl_q_pack) of A^T [K,M] for aG >= the groups of W->K
   ((K+1)/2), columns of A^T past W->K zero (the rows of a weight gradient's product, X^T,
   packed straight from X [K,M] with no transposed copy; a slice of its rows k0:k0+K, k0
   even, starts at group k0/2 of each block). The same bits as fl_q_gemm on A. Runs only
   with the AVX512_BF16 variant: returns 0 (and writes nothing) where that is not the
   variant that runs, or W is not bf16; else 1. */
int fl_q_gemm_bf16_packed(int M, const void *Ap, long aG, const fl_qmat *W, int j0, int j1,
                          int beta, float *C, long ldc);

#ifdef __cplusplus
}
#endif
#endif
