# Cython view of lowp.h: the reduced-precision (int8, bfloat16) products. cimport from here;
# every extension links the library that holds them.
from libc.stdint cimport int8_t, int32_t, uint16_t

cdef extern from "lowp.h" nogil:
    enum:
        FL_Q_INT8
        FL_Q_BF16
    enum:
        FL_Q_LEVEL_C
        FL_Q_LEVEL_AVX2
        FL_Q_LEVEL_AVX512
        FL_Q_LEVEL_DOT
    ctypedef struct fl_qmat:
        int kind
        int K
        int N
        const void *packed
        const float *scale
        const int32_t *comp
    long fl_q_packed_bytes(int kind, int K, int N)
    void fl_q_pack(int kind, int K, int N, const void *W, long ld, void *packed, int32_t *comp)
    void fl_q_gemm(int M, const float *A, long lda, const fl_qmat *W, int j0, int j1,
                   const float *bias, int beta, float *C, long ldc)
    int fl_q_level(int kind)
    const char *fl_q_level_name(int kind)
    void fl_q_force_level(int level)
    int fl_q_best_level(int kind)
    void fl_q_quantize_rows_int8(int M, int K, const float *A, long lda, int8_t *q, long ldq,
                                 float *sa)
    void fl_q_round_bf16(long n, const float *x, uint16_t *out)
    void fl_q_pack_bf16_float(int K, int N, const float *A, long lda, void *packed)
