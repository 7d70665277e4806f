# Cython view of gates.h, with fused wrappers that pick the float or double kernel (those
# of the per-ISA entry points generated from their list: gate_kernels.pxi).
from blas cimport floating
from cython.parallel cimport prange

cdef extern from "gates.h" nogil:
    ctypedef struct fl_barrier:
        int count
        int flag
    void fl_barrier_wait(fl_barrier *b, int n, int *sense)
    int fl_team_size()
    void fl_publish(long *progress, long value)
    void fl_await(long *progress, long value)
    int fl_thread_num()
    ctypedef struct fl_act:
        int kind
        double alpha
        double beta
    int fl_isa_level()
    const char *fl_isa_name()
    void fl_force_isa_level(int level)


include "gate_kernels.pxi"


cdef extern from "gates.h" nogil:
    void fl_pack_panels_f(int K, int N, const float *W, int ldw, float *Wp)
    void fl_pack_panels_d(int K, int N, const double *W, int ldw, double *Wp)


cdef inline void pack_panels(int K, int N, const floating *W, int ldw,
                             floating *Wp) noexcept nogil:
    """Wp[K*N] := W[K,N] in the column panels of matmul_packed_acc."""
    if floating is float:
        fl_pack_panels_f(K, N, W, ldw, Wp)
    else:
        fl_pack_panels_d(K, N, W, ldw, Wp)


cdef extern from "gates.h" nogil:
    void fl_gemm_f(int trans, int M, int N, int K, const float *A, int lda, const float *B,
                   int ldb, float *C, int ldc)
    void fl_gemm_d(int trans, int M, int N, int K, const double *A, int lda, const double *B,
                   int ldb, double *C, int ldc)
    long fl_packed_size_f(int K, int N)
    long fl_packed_size_d(int K, int N)
    void fl_pack_b_f(int K, int N, const float *B, int ldb, float *Bp)
    void fl_pack_b_d(int K, int N, const double *B, int ldb, double *Bp)
    void fl_pack_bt_f(int K, int N, const float *B, int ldb, float *Bp)
    void fl_pack_bt_d(int K, int N, const double *B, int ldb, double *Bp)
    void fl_gemm_packed_f(int trans, int M, int N, int K, const float *A, int lda,
                          const float *Bp, float *C, int ldc)
    void fl_gemm_packed_d(int trans, int M, int N, int K, const double *A, int lda,
                          const double *Bp, double *C, int ldc)
    void fl_gemm_set_f(int trans, int M, int N, int K, const float *A, int lda, const float *B,
                       int ldb, float *C, int ldc)
    void fl_gemm_set_d(int trans, int M, int N, int K, const double *A, int lda,
                       const double *B, int ldb, double *C, int ldc)
    void fl_gemm2_set_f(int trans, int M, int M2, int N, int K, const float *A, int lda,
                        const float *A2, int lda2, const float *B, int ldb, float *C, int ldc,
                        float *C2, int ldc2, float *bsum)
    void fl_gemm2_set_d(int trans, int M, int M2, int N, int K, const double *A, int lda,
                        const double *A2, int lda2, const double *B, int ldb, double *C,
                        int ldc, double *C2, int ldc2, double *bsum)
    void fl_gemm_packed_set_f(int M, int N, int K, const float *A, int lda, const float *Bp,
                              const float *bias, float *C, int ldc)
    void fl_gemm_packed_set_d(int M, int N, int K, const double *A, int lda,
                              const double *Bp, const double *bias, double *C, int ldc)


cdef inline void gemm_acc(bint trans, int M, int N, int K, const floating *A, int lda,
                          const floating *B, int ldb, floating *C, int ldc) noexcept nogil:
    """C[M,N] += op(A) B[K,N] on the packed GEMM; op(A) = A [M,K] or, with trans, A^T for
    A [K,M]. All row-major."""
    if floating is float:
        fl_gemm_f(trans, M, N, K, A, lda, B, ldb, C, ldc)
    else:
        fl_gemm_d(trans, M, N, K, A, lda, B, ldb, C, ldc)


cdef inline void gemm_set(bint trans, int M, int N, int K, const floating *A, int lda,
                          const floating *B, int ldb, floating *C, int ldc) noexcept nogil:
    """C[M,N] = op(A) B[K,N]: gemm_acc that overwrites C (never read, no clearing needed)."""
    if floating is float:
        fl_gemm_set_f(trans, M, N, K, A, lda, B, ldb, C, ldc)
    else:
        fl_gemm_set_d(trans, M, N, K, A, lda, B, ldb, C, ldc)


cdef inline void gemm2_set(bint trans, int M, int M2, int N, int K, const floating *A, int lda,
                           const floating *A2, int lda2, const floating *B, int ldb,
                           floating *C, int ldc, floating *C2, int ldc2,
                           floating *bsum) noexcept nogil:
    """C = op(A) B and C2 = op(A2) B in one pass: each block of B is packed once for both;
    bsum [N] (unless NULL) = the column sums of B, summed from each block as it is packed."""
    if floating is float:
        fl_gemm2_set_f(trans, M, M2, N, K, A, lda, A2, lda2, B, ldb, C, ldc, C2, ldc2, bsum)
    else:
        fl_gemm2_set_d(trans, M, M2, N, K, A, lda, A2, lda2, B, ldb, C, ldc, C2, ldc2, bsum)


cdef inline void pack_panels_range(int K, int N, const floating *B, int ldb, bint transposed,
                                   int p0, int p1, floating *out) noexcept nogil:
    """Panels [p0, p1) of pack_b's layout (FL_PW columns each; each holds K rows)."""
    cdef int pw = 256 // sizeof(floating)
    cdef int c0 = p0 * pw, c1 = min(N, p1 * pw)
    if c1 <= c0:
        return
    cdef const floating *src = B + (<long>c0 * ldb if transposed else c0)
    if floating is float:
        if transposed:
            fl_pack_bt_f(K, c1 - c0, src, ldb, out + <long>p0 * K * pw)
        else:
            fl_pack_b_f(K, c1 - c0, src, ldb, out + <long>p0 * K * pw)
    else:
        if transposed:
            fl_pack_bt_d(K, c1 - c0, src, ldb, out + <long>p0 * K * pw)
        else:
            fl_pack_b_d(K, c1 - c0, src, ldb, out + <long>p0 * K * pw)


cdef inline object pack_b(const floating[:, :] B, bint transposed=False, object alloc=None,
                          int nthreads=1):
    """B [K,N] (rows may be strided) packed into the panels gemm_packed_acc reads (a 1-D
    array: new, or alloc(n) when given); with transposed, B^T packed so, B given as [N,K].
    From 2^18 elements the panels are split over up to nthreads threads (the transposed
    pack moves one element at a time: bench/RESULTS.md, "Kernel thresholds")."""
    import numpy as np
    cdef int K = B.shape[1] if transposed else B.shape[0]
    cdef int N = B.shape[0] if transposed else B.shape[1]
    cdef floating[::1] out
    dtype = np.float32 if floating is float else np.float64
    if K == 0 or N == 0:
        return np.zeros(1, dtype)
    if B.strides[1] != sizeof(floating):
        raise ValueError("B: expected contiguous rows")
    cdef int ldb = <int>(B.strides[0] // sizeof(floating))
    cdef long n = max(1, fl_packed_size_f(K, N) if floating is float else fl_packed_size_d(K, N))
    arr = np.empty(n, dtype) if alloc is None else alloc(n)
    out = arr
    cdef int pw = 256 // sizeof(floating), npan = (N + pw - 1) // pw, nt, k
    nt = max(1, min(nthreads, npan)) if <long>K * N >= (1 << 18) else 1
    with nogil:
        if nt == 1:
            pack_panels_range(K, N, &B[0, 0], ldb, transposed, 0, npan, &out[0])
        else:
            for k in prange(nt, num_threads=nt, schedule="static"):
                pack_panels_range(K, N, &B[0, 0], ldb, transposed, k * npan // nt,
                                  (k + 1) * npan // nt, &out[0])
    return arr


cdef inline void gemm_packed_acc(int M, int N, int K, const floating *A, int lda,
                                 const floating *Bp, floating *C, int ldc) noexcept nogil:
    """C[M,N] += A[M,K] B with B [K,N] packed beforehand by pack_b."""
    if floating is float:
        fl_gemm_packed_f(0, M, N, K, A, lda, Bp, C, ldc)
    else:
        fl_gemm_packed_d(0, M, N, K, A, lda, Bp, C, ldc)


cdef inline void gemm_packed_set(int M, int N, int K, const floating *A, int lda,
                                 const floating *Bp, const floating *bias, floating *C,
                                 int ldc) noexcept nogil:
    """C[M,N] = A[M,K] B + bias (a row of N, or NULL) with B packed by pack_b; C is
    overwritten, never read."""
    if floating is float:
        fl_gemm_packed_set_f(M, N, K, A, lda, Bp, bias, C, ldc)
    else:
        fl_gemm_packed_set_d(M, N, K, A, lda, Bp, bias, C, ldc)


cdef inline fl_act make_act(object activation):
    """The C description of a fastlstm.activations.Activation."""
    cdef fl_act a
    a.kind = activation.code
    a.alpha = activation.alpha
    a.beta = activation.beta
    return a
