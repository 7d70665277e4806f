# Cython view of lowp.h: the int8 and bfloat16 products of quantized inference.
from libc.stdint cimport int32_t

cdef extern from "lowp.h" nogil:
    enum:
        FL_Q_INT8
        FL_Q_BF16
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
