# The per-step products of every cell, in one place: the recurrent product h U and its
# gradient dz U^T, on our register-blocked kernel (gates.c, matmul_impl.h) or on BLAS.
#
# Per step the products are small (batch rows x units) and BLAS would repack the recurrent
# kernel on every call; our kernel reads it in place while it fits in cache. Past
# OWN_MAX_BYTES of weights, BLAS (which blocks for cache and threads) is faster.
from libc.string cimport memset
from blas cimport floating, gemm, gemv
from gates cimport matmul_acc

cdef extern from "gates.h" nogil:
    int fl_matmul_policy          # 0 auto, 1 always BLAS, 2 always own kernel (tests)

cdef enum:
    OWN_MAX_BYTES = 8 << 20


cdef inline int set_policy(str which) except -1:
    global fl_matmul_policy
    try:
        fl_matmul_policy = {"auto": 0, "blas": 1, "own": 2}[which]
    except KeyError:
        raise ValueError(f"which: expected 'auto', 'blas' or 'own', got {which!r}") from None
    return 0


cdef inline bint use_own(long weight_bytes) noexcept nogil:
    return fl_matmul_policy == 2 or (fl_matmul_policy == 0 and weight_bytes <= OWN_MAX_BYTES)


cdef inline void recurrent_product(int B, int H, int N, const floating *h, const floating *U,
                                   int ldu, floating beta, floating *z, int ldz) noexcept nogil:
    """z[B,N] (row stride ldz) = h[B,H] U[H,N] (row stride ldu) + beta z; beta is 0 or 1."""
    cdef int r
    if use_own(<long>H * N * sizeof(floating)):
        if beta == 0:
            for r in range(B):
                memset(z + <long>r * ldz, 0, N * sizeof(floating))
        matmul_acc(B, N, H, h, H, U, ldu, z, ldz)
    elif B == 1:
        gemv(True, H, N, <floating>1, U, ldu, h, beta, z)
    else:
        gemm(False, False, B, N, H, <floating>1, h, H, U, ldu, beta, z, ldz)


cdef inline void recurrent_grad(int B, int H, int N, const floating *dz, int ldz,
                                const floating *U, int ldu, const floating *UT,
                                floating beta, floating *dh) noexcept nogil:
    """dh[B,H] = dz[B,N] (row stride ldz) U[H,N]^T (row stride ldu) + beta dh; beta is 0 or
    1. UT [N,H] row-major is the same block of U transposed (own kernel), or NULL (BLAS)."""
    if UT != NULL:
        if beta == 0:
            memset(dh, 0, <long>B * H * sizeof(floating))
        matmul_acc(B, H, N, dz, ldz, UT, H, dh, H)
    elif B == 1:
        gemv(False, H, N, <floating>1, U, ldu, dz, beta, dh)
    else:
        gemm(False, True, B, H, N, <floating>1, dz, ldz, U, ldu, beta, dh, H)
