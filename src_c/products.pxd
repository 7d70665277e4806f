# The products of every cell, in one place: per step the recurrent product h U and its
# gradient dz U^T, on our register-blocked kernel (gates.c, matmul_impl.h) or on BLAS; over
# all T*B rows the input projection and the input and weight gradients (packed GEMM or BLAS).
#
# Per step the products are small (batch rows x units) and BLAS would repack the recurrent
# kernel on every call; our kernel reads it in place while it fits in cache. Past
# OWN_MAX_BYTES of weights, BLAS (which blocks for cache and threads) is faster.
from cython.parallel cimport prange
from libc.string cimport memcpy, memset
from blas cimport floating, gemm, gemv
from gates cimport (gemm_acc, gemm_packed_acc, gemm_packed_set, gemm_set, gemm2_set, gemv_acc,
                   gemv_t_acc,
                   matmul_acc, matmul_packed_acc, matmul_rows_acc, merge_rows, mul)

# What a kernel call takes besides its arrays: threads and product policy, passed per call
# (fastlstm.threads holds the user's settings; fastlstm/backends/cpu_ops.py passes them down,
# load_settings copies them here).
cdef struct Settings:
    int threads                  # threads of the kernels' own parallel loops
    int policy                   # per-step products: 0 auto, 1 always BLAS, 2 always ours
    double parallel_min_macs     # smallest product (multiply-adds) split over threads
    long pipe_steps              # steps a block of a pipelined projection
    double pipe_min_macs         # least projection work worth pipelining
    long direct_rows             # projections of fewer rows read W in place
    bint projections_on_blas     # the gradients' many-row products on BLAS (AVX-512 BLAS)
    long cols_min_bytes          # U from which one-row LSTM inference splits the units
    long infer_z_bytes           # inference projects this much of Z at a time ...
    long infer_min_rows          # ... but at least this many rows
    int gemv_rows                # one-row products: rows of U a pass (1 or 8, the same bits)
    long q_split_min_bytes       # quantized U from which a one-thread loop's per-step
                                 # products split their columns over the threads
    long q_cols_min_bytes        # quantized U from which one-row LSTM inference splits
                                 # the units over the threads (a barrier per step)

cdef enum:
    OWN_MAX_BYTES = 8 << 20


cdef inline int load_settings(Settings *s, object cfg) except -1:
    """s := the settings object cfg (fastlstm.threads.KernelSettings)."""
    s.threads = max(1, <int>cfg.threads)
    s.policy = cfg.policy
    s.parallel_min_macs = cfg.parallel_min_macs
    s.pipe_steps = max(1, <long>cfg.pipe_steps)
    s.pipe_min_macs = cfg.pipe_min_macs
    s.direct_rows = cfg.direct_rows
    s.projections_on_blas = cfg.projections_on_blas
    s.cols_min_bytes = cfg.cols_min_bytes
    s.infer_z_bytes = max(1, <long>cfg.infer_z_bytes)
    s.infer_min_rows = max(1, <long>cfg.infer_min_rows)
    s.gemv_rows = 8 if cfg.gemv_rows == 8 else 1
    s.q_split_min_bytes = cfg.q_split_min_bytes
    s.q_cols_min_bytes = cfg.q_cols_min_bytes
    return 0


cdef inline bint pack_projection(const Settings *s, long rows, long weight_bytes) noexcept nogil:
    """Whether an input projection of `rows` rows packs W for the packed GEMM first; with
    fewer than s.direct_rows rows it reads W in place (project_rows), unless W is too large
    for our in-place kernel (BLAS was slower than packing there)."""
    return s.policy != 1 and (rows >= s.direct_rows or not use_own(s, weight_bytes))


cdef inline bint direct_projection(const Settings *s, long rows, long weight_bytes) noexcept nogil:
    """Whether rows of an input projection whose W is not packed run on our kernel reading W
    in place (a few rows, W within our kernel's size) rather than on BLAS."""
    return rows < s.direct_rows and use_own(s, weight_bytes)


cdef inline bint pipelined(const Settings *s, int nchunks, long nsteps, double macs) noexcept nogil:
    """Whether a forward pass projects its input (macs multiply-adds) beside its time loop
    of nsteps, on a second thread, s.pipe_steps steps at a time: only when one thread runs
    the loop (a few rows), so that the other one is free."""
    return (nchunks == 1 and s.threads > 1 and nsteps > s.pipe_steps
            and macs >= s.pipe_min_macs)


cdef inline void pipe_rows(long a, long e, long nsteps, int B, bint go_backwards, long *r0,
                           long *nr) noexcept nogil:
    """The rows [r0, r0+nr) of the projection that steps [a, e) of a loop over nsteps times
    read: from the last time backwards under go_backwards."""
    r0[0] = ((nsteps - e) if go_backwards else a) * B
    nr[0] = (e - a) * B


cdef inline const floating *chunk_rows(long t_lo, long nt, int B, int I, const floating *X,
                                       long sxt, long sxb, floating *stage) noexcept nogil:
    """The rows of x [T,B,I] for times [t_lo, t_lo+nt), time-major: X's own when stage is
    NULL (X C-contiguous), else copied into stage [nt*B, I] from row (t, b) at X + t*sxt +
    b*sxb (inference reads a batch-major input so, a chunk at a time)."""
    cdef long t, b
    if stage == NULL:
        return X + t_lo * B * I
    for t in range(nt):
        for b in range(B):
            memcpy(stage + (t * B + b) * I, X + (t_lo + t) * sxt + b * sxb, I * sizeof(floating))
    return stage


cdef inline int row_chunks(const Settings *s, long T, int B, int H, int G) noexcept nogil:
    """Threads for a time loop. Batch rows never interact inside a recurrence, so each
    thread runs the whole sequence for its rows: no barrier per step (>= 4 rows each, the
    row blocking of the product kernel)."""
    if <double>T * B * H * G < s.parallel_min_macs:
        return 1
    return max(1, min(B // 4, s.threads))


cdef inline int split(const Settings *s, long n, long grain, double macs) noexcept nogil:
    """Threads for a product of `macs` multiply-adds split along an n-wide dimension into
    slices of at least `grain`."""
    if macs < s.parallel_min_macs:
        return 1
    return <int>max(1, min(n // grain, <long>s.threads))


cdef inline bint use_own(const Settings *s, long weight_bytes) noexcept nogil:
    return s.policy == 2 or (s.policy == 0 and weight_bytes <= OWN_MAX_BYTES)


cdef inline void product(const Settings *s, int B, int K, int N, const floating *a,
                         int lda, const floating *W,
                         int ldw, floating beta, floating *z, int ldz) noexcept nogil:
    """z[B,N] (row stride ldz) = a[B,K] (row stride lda) W[K,N] (row stride ldw) + beta z;
    beta is 0 or 1. Our kernel while W fits in cache, else BLAS (GEMV for one row)."""
    cdef int r
    if use_own(s, <long>K * N * sizeof(floating)):
        if beta == 0:
            for r in range(B):
                memset(z + <long>r * ldz, 0, N * sizeof(floating))
        if B == 1:
            gemv_acc(s.gemv_rows, N, K, a, W, ldw, z)
        else:
            matmul_acc(B, N, K, a, lda, W, ldw, z, ldz)
    elif B == 1:
        gemv(True, K, N, <floating>1, W, ldw, a, beta, z)
    else:
        gemm(False, False, B, N, K, <floating>1, a, lda, W, ldw, beta, z, ldz)


cdef inline void recurrent_product(const Settings *s, int B, int H, int N,
                                   const floating *h, const floating *U,
                                   int ldu, floating beta, floating *z, int ldz) noexcept nogil:
    """z[B,N] (row stride ldz) = h[B,H] U[H,N] (row stride ldu) + beta z; beta is 0 or 1."""
    product(s, B, H, N, h, H, U, ldu, beta, z, ldz)


cdef inline bint use_packed(const Settings *s, int rows, int K) noexcept nogil:
    """The per-step product on the packed GEMM, its kernel packed once per call (it is reused
    at every step): faster than reading the kernel in place from about 2048 rows x depth up,
    below that packing does not pay off (bench/RESULTS.md, "Kernel thresholds"). Not with
    policy 'blas'."""
    return s.policy != 1 and <long>rows * K >= 2048


# How a time loop reads the recurrent kernel (forward_u, backward_u).
cdef enum:
    U_IN_PLACE = 0      # read as it is (our kernel, or BLAS past OWN_MAX_BYTES)
    U_PANELS = 1        # forward: copied into L1-sized column panels (matmul_packed_acc)
    U_TRANSPOSED = 1    # backward: U^T copied row-major for our kernel
    U_PACKED = 2        # packed by pack_b for the packed GEMM (U^T in backward)


cdef inline int forward_u(const Settings *s, long TB, int rows, int H, int G,
                          int itemsize) noexcept nogil:
    """How a forward time loop with `rows` batch rows a thread reads U [H,G]: packed for the
    packed GEMM from use_packed's size on; else, over a sequence of at least 32 rows that
    amortises the copy, in L1-sized panels while it fits our kernel (faster than reading it
    in place: bench/RESULTS.md, "Kernel thresholds"); else in place."""
    if use_packed(s, rows, H):
        return U_PACKED
    if TB >= 32 and use_own(s, <long>H * G * itemsize):
        return U_PANELS
    return U_IN_PLACE


cdef inline int backward_u(const Settings *s, int T, int B, int rows, int H, int G,
                           int itemsize) noexcept nogil:
    """How a backward time loop with `rows` batch rows a thread reads U^T for dh = dz U^T:
    packed for the packed GEMM from use_packed's size on, or at one row over 32 steps or
    more (where it beats both in-place one-row products); else, from two rows and while U
    fits our kernel, as a transposed copy; else in place (one row: a dot product per row
    of U)."""
    if use_packed(s, rows, G) or (B == 1 and T >= 32 and s.policy != 1):
        return U_PACKED
    if B > 1 and use_own(s, <long>H * G * itemsize):
        return U_TRANSPOSED
    return U_IN_PLACE


cdef inline void recurrent_product_packed(int B, int H, int N, const floating *h,
                                          const floating *Up, floating beta, floating *z,
                                          int ldz) noexcept nogil:
    """recurrent_product with U [H,N] packed by pack_b (fl_pack_b)."""
    if beta == 0:
        gemm_packed_set(B, N, H, h, H, Up, NULL, z, ldz)
    else:
        gemm_packed_acc(B, N, H, h, H, Up, z, ldz)


cdef inline void recurrent_grad_packed(int B, int H, int N, const floating *dz, int ldz,
                                       const floating *UTp, floating beta,
                                       floating *dh) noexcept nogil:
    """recurrent_grad with U^T [N,H] packed by pack_b."""
    if beta == 0:
        gemm_packed_set(B, H, N, dz, ldz, UTp, NULL, dh, H)
    else:
        gemm_packed_acc(B, H, N, dz, ldz, UTp, dh, H)


cdef inline void recurrent_grad(const Settings *s, int B, int H, int N, const floating *dz, int ldz,
                                const floating *U, int ldu, const floating *UT,
                                floating beta, floating *dh) noexcept nogil:
    """dh[B,H] = dz[B,N] (row stride ldz) U[H,N]^T (row stride ldu) + beta dh; beta is 0 or
    1. UT [N,H] row-major is the same block of U transposed (own kernel), or NULL (BLAS).
    One row needs no UT: a dot product per row of U, while U fits in cache."""
    if B == 1 and use_own(s, <long>H * N * sizeof(floating)):
        if beta == 0:
            memset(dh, 0, H * sizeof(floating))
        gemv_t_acc(H, N, U, ldu, dz, dh)
    elif UT != NULL:
        if beta == 0:
            memset(dh, 0, <long>B * H * sizeof(floating))
        matmul_acc(B, H, N, dz, ldz, UT, H, dh, H)
    elif B == 1:
        gemv(False, H, N, <floating>1, U, ldu, dz, beta, dh)
    else:
        gemm(False, True, B, H, N, <floating>1, dz, ldz, U, ldu, beta, dh, H)


cdef inline void step_product(const Settings *s, int nb, int H, int N, const floating *h,
                              const floating *U,
                              int ldu, const floating *Up, const floating *Upan, floating *z,
                              int ldz) noexcept nogil:
    """A time loop's z[nb,N] (row stride ldz) += h[nb,H] U (U [H,N], row stride ldu): with U
    packed by pack_b (Up: many rows per thread), in L1-sized column panels (Upan: a few
    rows), or read in place (both NULL)."""
    if Up != NULL:
        recurrent_product_packed(nb, H, N, h, Up, <floating>1, z, ldz)
    elif Upan != NULL:
        matmul_packed_acc(nb, N, H, h, H, Upan, z, ldz)
    else:
        recurrent_product(s, nb, H, N, h, U, ldu, <floating>1, z, ldz)


cdef inline void step_product_set(const Settings *s, int nb, int H, int N, const floating *h,
                                  const floating *U, int ldu, const floating *Up,
                                  const floating *Upan, floating *z, int ldz) noexcept nogil:
    """step_product's z = h U (not added to z)."""
    cdef int r
    if Up != NULL:
        recurrent_product_packed(nb, H, N, h, Up, <floating>0, z, ldz)
    elif Upan != NULL:
        for r in range(nb):
            memset(z + <long>r * ldz, 0, N * sizeof(floating))
        matmul_packed_acc(nb, N, H, h, H, Upan, z, ldz)
    else:
        recurrent_product(s, nb, H, N, h, U, ldu, <floating>0, z, ldz)


cdef inline void step_grad(const Settings *s, int nb, int H, int N, const floating *dz, int ldz,
                           const floating *U, int ldu, const floating *UT,
                           const floating *UTp, floating beta, floating *dh) noexcept nogil:
    """A backward time loop's dh[nb,H] = dz[nb,N] U^T + beta dh: with U^T packed by pack_b
    (UTp), or as recurrent_grad reads it (UT, or U in place)."""
    if UTp != NULL:
        recurrent_grad_packed(nb, H, N, dz, ldz, UTp, beta, dh)
    else:
        recurrent_grad(s, nb, H, N, dz, ldz, U, ldu, UT, beta, dh)


cdef inline const floating *recurrent_input(bint training, const floating *h,
                                            const floating *rdrop, floating *saved,
                                            floating *work, long n) noexcept nogil:
    """What a step's recurrent product reads: h [n] times the recurrent dropout mask (or h
    itself), copied into saved when training (backward needs it; not when h is already
    there: the output the step before wrote, in a buffer of saved states and outputs), into
    work for the dropout at inference."""
    if training:
        if rdrop != NULL:
            mul(h, rdrop, saved, n)
        elif saved != h:
            memcpy(saved, h, n * sizeof(floating))
        return saved
    if rdrop != NULL:
        mul(h, rdrop, work, n)
        return work
    return h


cdef inline void slice_gemm(bint trans_a, bint trans_b, int M, int N, int K, floating alpha,
                            const floating *A, int lda, const floating *B, int ldb,
                            floating beta, floating *C, int ldc, bint own,
                            floating *bsum) noexcept nogil:
    """One slice of par_gemm: BLAS, or with own our packed GEMM (which takes alpha 1, beta 0
    or 1 and B not transposed: the caller passes B^T row-major instead). bsum (own, beta 0
    only; else NULL) gets the column sums of B, summed as its blocks are packed."""
    if own:
        if bsum != NULL:
            gemm2_set(trans_a, M, 0, N, K, A, lda, NULL, 0, B, ldb, C, ldc, NULL, 0, bsum)
        elif beta == 0:
            gemm_set(trans_a, M, N, K, A, lda, B, ldb, C, ldc)
        else:
            gemm_acc(trans_a, M, N, K, A, lda, B, ldb, C, ldc)
    else:
        gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)


cdef inline void par_gemm(bint trans_a, bint trans_b, int M, int N, int K, floating alpha,
                          const floating *A, int lda, const floating *B, int ldb, floating beta,
                          floating *C, int ldc, int nthreads, bint by_rows,
                          bint own=False, floating *bsum=NULL) noexcept nogil:
    """The shim's row-major gemm, split over `nthreads` threads by rows of C (by_rows) or by
    its columns; each slice is an independent single-threaded BLAS call (the callers limit
    BLAS to one thread while the kernels run: fastlstm.threads), or with own a call of our
    packed GEMM (see slice_gemm for what it takes; bsum [N]: split by columns only)."""
    cdef int n = max(1, nthreads), k, a, e
    if n == 1:
        slice_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, own, bsum)
        return
    for k in prange(n, num_threads=n, schedule="static"):
        if by_rows:
            a = <int>(<long>k * M // n)
            e = <int>(<long>(k + 1) * M // n)
            slice_gemm(trans_a, trans_b, e - a, N, K, alpha,
                       A + (a if trans_a else <long>a * lda), lda, B, ldb, beta,
                       C + <long>a * ldc, ldc, own, NULL)
        else:
            a = <int>(<long>k * N // n)
            e = <int>(<long>(k + 1) * N // n)
            slice_gemm(trans_a, trans_b, M, e - a, K, alpha, A, lda,
                       B + (<long>a * ldb if trans_b else a), ldb, beta, C + a, ldc, own,
                       NULL if bsum == NULL else bsum + a)


# ------------------------------------------------------------- the many-row products
cdef inline void projection_in_place(const Settings *s, long nr, int N, int K, const floating *X,
                                     const floating *W, int ldw, long weight_bytes,
                                     floating beta, floating *Z, int ldz) noexcept nogil:
    """Z[nr,N] = X[nr,K] W[K,N] + beta Z (beta 0 or 1; X's rows contiguous, ldz Z's row
    stride) with W as it is, not packed: on our kernel computing every row the same way (a
    few rows, weight_bytes, the whole W's, within its size: direct_projection) or on BLAS."""
    cdef long r
    if direct_projection(s, nr, weight_bytes):
        if beta == 0:
            for r in range(nr):
                memset(Z + r * ldz, 0, N * sizeof(floating))
        matmul_rows_acc(<int>nr, N, K, X, K, W, ldw, Z, ldz)
    else:
        gemm(False, False, <int>nr, N, K, <floating>1, X, K, W, ldw, beta, Z, ldz)


cdef inline void project_rows(const Settings *s, long r0, long nr, int I, int G, const floating *X,
                              const floating *W, const floating *Wp, const floating *b,
                              floating *Z) noexcept nogil:
    """Z[r0:r0+nr] = X[r0:r0+nr] W + b: rows of the input projection, on our GEMM with W
    packed by pack_b (Wp), or with Wp NULL on our kernel reading W in place (a few rows) or
    on BLAS."""
    cdef long r
    if Wp != NULL:       # the bias goes in with the product's first store: no pass of its own
        gemm_packed_set(<int>nr, G, I, X + r0 * I, I, Wp, b, Z + r0 * G, G)
        return
    if b != NULL:
        for r in range(r0, r0 + nr):
            memcpy(Z + r * G, b, G * sizeof(floating))
    projection_in_place(s, nr, G, I, X + r0 * I, W, G, <long>I * G * sizeof(floating),
                        <floating>(1 if b != NULL else 0), Z + r0 * G, G)


cdef inline void project_chunk(const Settings *s, long nr, int I, int G, const floating *X,
                               const floating *W,
                               const floating *Wp, const floating *b,
                               floating *Z) noexcept nogil:
    """Z[0:nr] = X[0:nr] W + b (project_rows), the rows split over the threads when the work
    is worth it (split)."""
    cdef int n = split(s, nr, 64, <double>nr * I * G), ci
    if n == 1:
        project_rows(s, 0, nr, I, G, X, W, Wp, b, Z)
        return
    for ci in prange(n, num_threads=n, schedule="static"):
        project_rows(s, ci * nr // n, (ci + 1) * nr // n - ci * nr // n, I, G, X, W, Wp, b, Z)

cdef inline void input_grad_rows(long r0, long nr, int I, int G, const floating *dZ,
                                 const floating *W, const floating *WTp,
                                 floating *dX) noexcept nogil:
    """Rows [r0, r0+nr) of dX = dZ W^T; WTp: W^T [G,I] packed by pack_b for our GEMM, or
    NULL for BLAS."""
    if WTp != NULL:
        gemm_packed_set(<int>nr, I, G, dZ + r0 * G, G, WTp, NULL, dX + r0 * I, I)
    else:
        gemm(False, True, <int>nr, I, G, <floating>1, dZ + r0 * G, G, W, G, <floating>0,
             dX + r0 * I, I)


cdef inline void weight_grad_cols(long g0, long ng, int I, int H, int G, long TB,
                                  const floating *X, const floating *Hin, const floating *dZ,
                                  const floating *ones, floating *dW, floating *dU,
                                  floating *db, bint own) noexcept nogil:
    """Columns [g0, g0+ng) of dW = X^T dZ, dU = Hin^T dZ and db = column sums of dZ, on our
    packed GEMM (own; db summed from dZ's packed blocks, no pass of its own over dZ) or
    BLAS."""
    if own:
        gemm2_set(True, I, H, <int>ng, <int>TB, X, I, Hin, H, dZ + g0, G, dW + g0, G,
                  dU + g0, G, NULL if db == NULL else db + g0)
        return
    gemm(True, False, I, <int>ng, <int>TB, <floating>1, X, I, dZ + g0, G, <floating>0,
         dW + g0, G)
    gemm(True, False, H, <int>ng, <int>TB, <floating>1, Hin, H, dZ + g0, G, <floating>0,
         dU + g0, G)
    if db != NULL:
        gemv(True, <int>TB, <int>ng, <floating>1, dZ + g0, G, ones, <floating>0, db + g0)


cdef inline void weight_and_input_grads(const Settings *s, long TB, int B, int I, int H,
                                        int G, const floating *X,
                                        const floating *Hin, const floating *dZ,
                                        const floating *W, const floating *WTp,
                                        const floating *ones, floating *dW, floating *dU,
                                        floating *db, floating *dX, const floating *idrop,
                                        bint own) noexcept nogil:
    """After a backward time loop (LSTM, SimpleRNN: dZ [TB,G]): dW = X^T dZ, dU = Hin^T dZ
    and db (NULL without bias) split into column slices over the threads (no reduction
    across threads), then dX = dZ W^T split into row slices (WTp: W^T packed for our GEMM,
    or NULL for BLAS), times the input dropout mask idrop [B,I] (or NULL)."""
    cdef int ncols = split(s, G, 64, <double>TB * (I + H) * G)
    cdef int nrows = split(s, TB, 64, <double>TB * I * G)
    cdef long ci, t
    if ncols == 1:
        weight_grad_cols(0, G, I, H, G, TB, X, Hin, dZ, ones, dW, dU, db, own)
    else:
        for ci in prange(ncols, num_threads=ncols, schedule="static"):
            weight_grad_cols(ci * G // ncols, (ci + 1) * G // ncols - ci * G // ncols, I, H, G,
                             TB, X, Hin, dZ, ones, dW, dU, db, own)
    if nrows == 1:
        input_grad_rows(0, TB, I, G, dZ, W, WTp, dX)
    else:
        for ci in prange(nrows, num_threads=nrows, schedule="static"):
            input_grad_rows(ci * TB // nrows, (ci + 1) * TB // nrows - ci * TB // nrows, I, G,
                            dZ, W, WTp, dX)
    if idrop != NULL:
        for t in range(TB // B):
            merge_rows(B, I, NULL, idrop, dX + t * B * I, dX + t * B * I)
