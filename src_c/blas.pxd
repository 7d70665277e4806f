# The one BLAS shim of fastlstm: row-major GEMM/GEMV over scipy.linalg.cython_blas.
#
# Every kernel calls BLAS through these inline functions and nothing else. Arrays are
# row-major (C order); BLAS is column-major, so a row-major product C = op(A) op(B) is
# computed as the column-major C^T = op(B)^T op(A)^T by swapping the operands.
# The `floating` branch resolves at compile time.
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

ctypedef fused floating:
    float
    double


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K, floating alpha,
                      const floating *A, int lda, const floating *B, int ldb, floating beta,
                      floating *C, int ldc) noexcept nogil:
    """C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C, all row-major."""
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    if M <= 0 or N <= 0:
        return
    if floating is float:
        sgemm(&ta, &tb, &N, &M, &K, &alpha, <float *>B, &ldb, <float *>A, &lda, &beta, C, &ldc)
    else:
        dgemm(&ta, &tb, &N, &M, &K, &alpha, <double *>B, &ldb, <double *>A, &lda, &beta, C, &ldc)


cdef inline void gemv(bint trans, int rows, int cols, floating alpha, const floating *A,
                      int lda, const floating *x, floating beta, floating *y) noexcept nogil:
    """y = alpha * op(A) x + beta * y with A[rows, cols] row-major (op = A^T when trans)."""
    cdef char t = b'N' if trans else b'T'
    cdef int one = 1
    if rows <= 0 or cols <= 0:
        return
    if floating is float:
        sgemv(&t, &cols, &rows, &alpha, <float *>A, &lda, <float *>x, &one, &beta, y, &one)
    else:
        dgemv(&t, &cols, &rows, &alpha, <double *>A, &lda, <double *>x, &one, &beta, y, &one)
