# A quantized W and U (fastlstm.quantization.QuantizedMatrix) bound for the reduced-precision
# products of src_c/lowp.h; included by driver.pxi (the sequence kernels) and _step.pyx.
from cython.parallel cimport prange
from libc.stdint cimport int32_t
from lowp cimport fl_qmat, fl_q_gemm


cdef class QuantBinding:
    """A quantized W and U (fastlstm.quantization.QuantizedMatrix) as the reduced-precision
    products take them for one call: their blocks (whole, or split as the cell packs its
    float weights: wsplit, usplit) as fl_qmat views, and references to the arrays behind
    them for as long as the call runs."""
    cdef fl_qmat mats[4]                # W, W2, U, U2
    cdef int nw, nu
    cdef readonly int In, H, G
    cdef list refs

    def __cinit__(self, qW, qU, int wsplit, int usplit):
        self.refs = []
        self.In, self.G = qW.shape
        self.H = qU.shape[0]
        self.nw = self.bind(qW, wsplit, 0)
        self.nu = self.bind(qU, usplit, 2)

    cdef int bind(self, qm, int split, int at) except -1:
        cdef fl_qmat *m
        if qm.split != split:           # blocked for another cell: block it for this one
            qm = type(qm)(qm.precision, qm.values, qm.scale, split)
        blocks = qm.blocks()
        self.refs.append(blocks)
        for k, (packed, scale, comp, j0, j1) in enumerate(blocks):
            m = &self.mats[at + k]
            m.kind, m.K, m.N = qm.kind(), qm.shape[0], j1 - j0
            m.packed = <const void *><size_t>packed.ctypes.data
            m.scale = NULL if scale is None else <const float *><size_t>scale.ctypes.data
            m.comp = NULL if comp is None else <const int32_t *><size_t>comp.ctypes.data
        return len(blocks)


cdef class MatsBinding:
    """Up to four unsplit bf16 matrices (QuantizedMatrix) as fl_qmat views for one call:
    mixed_bfloat16 training's U^T blocks (Bwd.qUT, qUT2)."""
    cdef fl_qmat mats[4]
    cdef int n
    cdef list refs

    def __cinit__(self, mats):
        cdef fl_qmat *m
        self.refs = []
        self.n = 0
        for qm in mats:
            if self.n == 4:
                raise ValueError("MatsBinding: at most four matrices")
            if qm.split:
                qm = type(qm)(qm.precision, qm.values, qm.scale, 0)
            (packed, scale, comp, j0, j1), = qm.blocks()
            self.refs.append((packed, scale, comp))
            m = &self.mats[self.n]
            m.kind, m.K, m.N = qm.kind(), qm.shape[0], qm.shape[1]
            m.packed = <const void *><size_t>packed.ctypes.data
            m.scale = NULL if scale is None else <const float *><size_t>scale.ctypes.data
            m.comp = NULL if comp is None else <const int32_t *><size_t>comp.ctypes.data
            self.n += 1


cdef inline void qproduct(int M, const float *A, long lda, const fl_qmat *q, const float *bias,
                          int beta, float *C, long ldc) noexcept nogil:
    """C[M, 0:q.N] = beta C + A q (+ bias): a reduced-precision product (src_c/lowp.h)."""
    fl_q_gemm(M, A, lda, q, 0, q.N, bias, beta, C, ldc)


cdef inline long qbytes(const fl_qmat *q) noexcept nogil:
    """The bytes of q's weights that a product streams."""
    return <long>q.K * q.N * (1 if q.kind == 1 else 2)


cdef inline void qproduct_cols(int nt, int M, const float *A, long lda, const fl_qmat *q,
                               float *C, long ldc) noexcept nogil:
    """C[M, 0:q.N] += A q with q's columns split over nt threads in whole 16-column blocks
    (every thread quantizes the same rows of A alike, so the result does not depend on nt):
    each core streams its share of a weight too large for one core's cache."""
    cdef int k, nb = (q.N + 15) // 16, j0, j1
    if nt < 2 or nb < 2:
        fl_q_gemm(M, A, lda, q, 0, q.N, NULL, 1, C, ldc)
        return
    nt = min(nt, nb)
    for k in prange(nt, num_threads=nt, schedule="static"):
        j0 = (k * nb // nt) * 16
        j1 = min(q.N, ((k + 1) * nb // nt) * 16)
        fl_q_gemm(M, A, lda, q, j0, j1, NULL, 1, C, ldc)
