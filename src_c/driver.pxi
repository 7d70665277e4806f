# The sequence driver of every cell, included into _lstm.pyx, _gru.pyx and _simple_rnn.pyx:
# the forward prologue (the projection's inputs, state and output buffers, packed weights),
# the chunk loop (stage rows -> project, beside the loop or before it -> time loop on one
# thread, over the batch rows with prange, or over the units), the output tail, and the
# backward prologue (dh, dout, dy's strides, packed weights, the bias gradient) and loop.
#
# A cell file defines, before including this, its step math and the products it needs:
#   forward_rows(const Fwd *p, int b0, int nb, long s0, long s1, floating *scratch)
#       steps [s0, s1) of the forward time loop for batch rows [b0, b0+nb);
#   forward_cols(const Fwd *p, long s0, long s1, floating *scratch)
#       the same for one row, run by every thread of a region on its share of the units
#       (only where the cell sets p.ncols);
#   project_rows(const Fwd *p, long r0, long nr, floating *Z)
#       rows [r0, r0+nr) of the chunk's input projection (with the bias row);
#   backward_rows(const Bwd *q, int b0, int nb, floating *acc, floating *scratch)
#       the backward time loop for batch rows [b0, b0+nb) (acc: its own accumulator);
#   param_grads(const Bwd *q, floating *Z)
#       after the loop: dX, dW, dU and the column sums of dZ over all T*B rows.
# Threads and products follow the call's Settings (p.cfg, q.cfg), which the cell's forward
# and backward read first (read_settings).
from libc.limits cimport INT_MAX
from sequence cimport Fwd, Bwd
from fastlstm.backends.workspace import workspace


cdef inline void *data(const floating[::1] a) noexcept:
    """The first element of a 1-D buffer, or NULL for None."""
    return NULL if a is None else <void *>&a[0]


cdef int check_int(str name, long value) except -1:
    """Sizes the products take as C ints (rows, depths, leading dimensions)."""
    if value > INT_MAX:
        raise ValueError(f"{name}: {value} exceeds the kernels' limit of {INT_MAX}")
    return 0


class Slot:
    """alloc(n) for pack_b: n elements of this thread's workspace `slot`."""
    def __init__(self, slot, dtype):
        self.slot, self.dtype = slot, dtype

    def __call__(self, n):
        return workspace(self.slot, n, self.dtype)


cdef object pack_block(const floating[:, :] A, bint transposed, str slot, bint panels, dtype,
                       int threads):
    """A [K,N] (rows may lie apart) packed for the packed GEMM (pack_b; with transposed its
    transpose A^T), or in the column panels of matmul_packed_acc (panels), into this
    thread's workspace `slot`."""
    cdef floating[::1] buf
    if not panels:
        return pack_b(A, transposed, Slot(slot, dtype), threads)
    buf = workspace(slot, <long>A.shape[0] * A.shape[1], dtype)
    pack_panels(<int>A.shape[0], <int>A.shape[1], &A[0, 0],
                <int>(A.strides[0] // sizeof(floating)), &buf[0])
    return buf


cdef tuple packed_blocks(const floating[:, :] A, int split, bint transposed, str slot,
                         bint panels, dtype, int threads):
    """A weight [K,N] packed (pack_block) whole, or its columns [0, split) and [split, N)
    apart when split > 0 (the GRU's blocks that feed different columns of Z, or whose
    product needs r first), in the slots `slot` and `slot`2. Returns (first, second|None)."""
    # (Memoryview slices go into named variables: as operands of a conditional expression
    # Cython miscounts their references.)
    cdef const floating[:, :] left, right
    if not split:
        return pack_block(A, transposed, slot, panels, dtype, threads), None
    left, right = A[:, :split], A[:, split:]
    return (pack_block(left, transposed, slot, panels, dtype, threads),
            pack_block(right, transposed, slot + "2", panels, dtype, threads))


include "quant_binding.pxi"
from lowp cimport FL_Q_BF16


cdef int bind_mixed(Bwd *q, MatsBinding mb) except -1:
    """q's bf16 U^T blocks from mb (mixed_bfloat16 training), or none when mb is None."""
    q.qUT = q.qUT2 = NULL
    if mb is not None:
        if mb.n < 1 or mb.mats[0].kind != FL_Q_BF16:
            raise ValueError("mixed: expected bf16 blocks of U^T")
        q.qUT = &mb.mats[0]
        q.qUT2 = &mb.mats[1] if mb.n > 1 else NULL
    return 0


cdef inline void step_grad_mixed(int nb, int H, const float *dz, int ldz, const fl_qmat *qt,
                                 int beta, float *dh) noexcept nogil:
    """A time loop's dh[nb,H] = bf16(dz)[nb,K] bf16(U^T block qt) + beta dh, float32 sums."""
    fl_q_gemm(nb, dz, ldz, qt, 0, H, NULL, beta, dh, H)


cdef int bind_quantized(Fwd *p, QuantBinding qb) except -1:
    """p's quantized blocks from qb, or none (float weights) when qb is None."""
    p.qW = p.qW2 = p.qU = p.qU2 = NULL
    if qb is not None:
        p.qW = &qb.mats[0]
        p.qW2 = &qb.mats[1] if qb.nw == 2 else NULL
        p.qU = &qb.mats[2]
        p.qU2 = &qb.mats[3] if qb.nu == 2 else NULL
    return 0


cdef inline void step_qproduct(const Fwd *p, int nb, const float *A, const fl_qmat *q,
                               float *C, long ldc) noexcept nogil:
    """A time loop's C[nb, 0:q.N] += A q (quantized U or one of its blocks), its columns over
    the threads where the pass set qsplit."""
    qproduct_cols(p.cfg.threads if p.qsplit else 1, nb, A, p.H, q, C, ldc)


cdef tuple weight_dims(const floating[:, ::1] recurrent_kernel, QuantBinding qb):
    """(H, G) of the recurrent kernel, float or quantized."""
    if qb is not None:
        return qb.H, qb.G
    return recurrent_kernel.shape[0], recurrent_kernel.shape[1]


# ---------------------------------------------------------------------------- forward
cdef object forward_setup(Fwd *p, const floating[:, :, :] x, const floating[:, ::1] kernel,
                          const floating[:, ::1] recurrent_kernel, const floating[::1] bias,
                          const floating[:, ::1] h0, const unsigned char[:, ::1] mask,
                          const floating[:, ::1] input_dropout_mask,
                          const floating[:, ::1] recurrent_dropout_mask, activation,
                          recurrent_activation, bint go_backwards, bint return_sequences,
                          bint training, str zslot, bint shared_states, long scratch,
                          QuantBinding qb=None):
    """Fills p for a forward pass (sizes, options, the projection's inputs, buffers, packed
    weights) from the arguments of the cell's forward; the cell has read p.cfg and set
    p.ZW, p.wsplit, p.usplit, p.pipeline, p.ncols and its options first, and sets its own
    saved arrays after. bias: the row the projection adds (Z's width) or None.
    shared_states: the saved input states and the outputs may be one buffer
    (states_and_outputs). scratch: WORK elements per thread of the time loop.

    Returns [x times the input dropout mask or None, Z, h, saved states or None, y or
    None, the masked last output or None, scratch, and the arrays behind p's pointers].
    The cell holds this list until its loop is done: it is what keeps every buffer behind
    p's pointers alive (a workspace buffer that another thread drops from the kept ones is
    freed when its last reference goes, fastlstm/backends/workspace.py)."""
    cdef long T = x.shape[0]
    cdef int B = <int>x.shape[1], I = <int>x.shape[2]
    cdef int H, G
    H, G = weight_dims(recurrent_kernel, qb)
    cdef long TB = T * B
    # Training takes bf16 weights (mixed_bfloat16: the caller rounds them per call).
    if qb is not None and (floating is not float or qb.In != I
                           or (training and qb.mats[0].kind != FL_Q_BF16)):
        raise ValueError("quantized weights: float32 only, with kernel rows = x's features; "
                         "training in bf16 only")
    bind_quantized(p, qb)
    check_int("x: batch rows", x.shape[1])
    check_int("x: features", x.shape[2])
    if training:
        check_int("x: steps * batch rows", TB)     # rows of the weight gradients' products
    dtype = np.float32 if floating is float else np.float64
    p.T, p.B, p.In, p.H, p.G = T, B, I, H, G
    p.go_backwards, p.training, p.return_sequences = go_backwards, training, return_sequences
    p.act = make_act(activation)
    p.ract = make_act(recurrent_activation if recurrent_activation is not None else activation)
    p.mask = NULL if mask is None else &mask[0, 0]
    p.rdrop = NULL if recurrent_dropout_mask is None else <void *>&recurrent_dropout_mask[0, 0]

    # Input projection Z = (X * input_dropout_mask) W + b: all T steps when training, else a
    # chunk of steps at a time (projection_inputs).
    cdef const floating *px
    cdef floating *pstage
    xd_arr, p.chunk, z_arr, stage_arr = projection_inputs(&p.cfg, x, input_dropout_mask,
                                                          training, zslot, p.ZW, &px, &p.sxt,
                                                          &p.sxb, &pstage)
    check_int("x: rows of a chunk", p.chunk * B)
    p.x, p.stage = <void *>px, <void *>pstage
    cdef floating[:, :, ::1] Z = z_arr
    p.Z = &Z[0, 0, 0]
    p.bias = data(bias)
    if qb is None:
        p.W, p.U = <void *>&kernel[0, 0], <void *>&recurrent_kernel[0, 0]
    else:
        p.W = p.U = NULL

    h_arr = np.array(h0, dtype=dtype, copy=True)
    cdef floating[:, ::1] h = h_arr
    p.h = &h[0, 0]
    cdef floating[:, :, ::1] S, Y
    cdef floating[:, ::1] outbuf, hd
    out_arr = hd_arr = None
    states_arr, y_arr = states_and_outputs(T, B, H, dtype, training, return_sequences,
                                           shared_states)
    p.HIN = p.HPREV = p.C = p.RH = p.Y = p.out = p.hd = p.c = p.P = NULL
    ln_clear(&p.ln)
    if training:
        S = states_arr
        p.HIN = &S[0, 0, 0]
    elif recurrent_dropout_mask is not None:
        hd_arr = np.empty((B, H), dtype)
        hd = hd_arr
        p.hd = &hd[0, 0]
    if return_sequences:
        Y = y_arr
        p.Y = &Y[0, 0, 0]
    elif mask is not None:
        out_arr = np.zeros((B, H), dtype)
        outbuf = out_arr
        p.out = &outbuf[0, 0]

    # W packed once per call (inference projects chunk by chunk, and every thread of a
    # chunk would pack all of W again); a few rows read W in place (project_rows).
    cdef const floating[:, :] Wv = kernel, Uv = recurrent_kernel
    cdef floating[::1] w1 = None, w2 = None, u1 = None, u2 = None, pan1 = None, pan2 = None
    if qb is None and pack_projection(&p.cfg, TB, <long>I * G * sizeof(floating)):
        w1, w2 = packed_blocks(Wv, p.wsplit, False, "w", False, dtype, p.cfg.threads)
    p.Wp, p.Wp2 = data(w1), data(w2)
    # The per-step products: U packed for our GEMM (many rows per thread), in L1-sized
    # column panels (a few rows, over a sequence that amortises the copy), or read in place
    # (also where each thread of a column split packs its own part).
    p.nchunks = row_chunks(&p.cfg, T, B, H, G)
    cdef int umode = U_IN_PLACE if (p.ncols or qb is not None) else forward_u(
        &p.cfg, TB, B // p.nchunks, H, G, sizeof(floating))
    if umode == U_PACKED:
        u1, u2 = packed_blocks(Uv, p.usplit, False, "u", False, dtype, p.cfg.threads)
    elif umode == U_PANELS:
        pan1, pan2 = packed_blocks(Uv, p.usplit, False, "u", True, dtype, p.cfg.threads)
    p.Up, p.Up2, p.Upan, p.Upan2 = data(u1), data(u2), data(pan1), data(pan2)
    # Quantized, one thread's loop and a U from q_split_min_bytes: both threads stream U at
    # every step (its columns split) rather than one projecting beside the other's loop.
    p.qsplit = (qb is not None and p.nchunks == 1 and p.cfg.threads > 1
                and p.cfg.policy != 1
                and qbytes(p.qU) + (0 if p.qU2 == NULL else qbytes(p.qU2))
                >= p.cfg.q_split_min_bytes)
    if p.qsplit:
        p.pipeline = False
    p.scratch = scratch
    scratch_arr = workspace("scratch", max(1, p.nchunks * scratch), dtype)
    return [xd_arr, z_arr, h_arr, states_arr, y_arr, out_arr, scratch_arr,
            (hd_arr, stage_arr, w1, w2, u1, u2, pan1, pan2, qb)]


cdef inline void project_chunk_rows(const Fwd *p, long nr, floating *Z) noexcept nogil:
    """The chunk's input projection (nr rows), split over the threads when the work is
    worth it, or in a loop split over the units (p.ncols: its threads are awake, and the
    projection would otherwise take one core while the other waits) over those threads in
    slices of at least 16 rows. Rows are computed the same way however they are split."""
    cdef int n = split(&p.cfg, nr, 64, <double>nr * p.In * p.G), ci
    if p.ncols:
        n = max(n, <int>min(<long>p.ncols, nr // 16))
    if n == 1:
        project_rows(p, 0, nr, Z)
        return
    for ci in prange(n, num_threads=n, schedule="static"):
        project_rows(p, ci * nr // n, (ci + 1) * nr // n - ci * nr // n, Z)


cdef void forward_pipelined(const Fwd *p, long s0, long s1, long *progress,
                            floating *scratch) noexcept nogil:
    """Steps [s0, s1) of a time loop of a few rows (one thread's work), with the input
    projection of those steps run beside it: thread 1 projects cfg.pipe_steps steps at a time,
    in the order of the loop, and publishes how far it got; thread 0 runs each block of
    steps once it is projected. A team of one projects first."""
    cdef int n = fl_team_size(), k = fl_thread_num()
    cdef long nsteps = s1 - s0, a = 0, e, r0, nr
    cdef floating *Z = <floating *>p.Z
    if n == 1:
        project_rows(p, 0, nsteps * p.B, Z)
    if n == 1 or k == 0:
        while a < nsteps:
            e = min(nsteps, a + p.cfg.pipe_steps)
            if n > 1:
                fl_await(progress, e)
            forward_rows(p, 0, p.B, s0 + a, s0 + e, scratch)
            a = e
    elif k == 1:
        while a < nsteps:
            e = min(nsteps, a + p.cfg.pipe_steps)
            pipe_rows(a, e, nsteps, p.B, p.go_backwards, &r0, &nr)
            project_rows(p, r0, nr, Z)
            fl_publish(progress, e)
            a = e


cdef void forward_loop(Fwd *p, floating *scratch) noexcept nogil:
    """The forward pass over all T steps, a chunk of steps at a time: stage the chunk's rows
    of x, project them (beside a one-thread loop, or first), then run its steps on one
    thread, over the batch rows (each thread the whole chunk for its rows: rows never
    interact inside a recurrence, so no barrier per step), or over the units (p.ncols)."""
    cdef long s0 = 0, s1, nrows_c, ci, progress
    cdef int b0, nchunks = p.nchunks
    cdef floating *Z = <floating *>p.Z
    while s0 < p.T:
        s1 = min(p.T, s0 + p.chunk)
        p.zt0 = p.T - s1 if p.go_backwards else s0      # the chunk's times: [zt0, zt0+s1-s0)
        nrows_c = (s1 - s0) * p.B
        p.X = <void *>chunk_rows(p.zt0, s1 - s0, p.B, p.In, <const floating *>p.x, p.sxt, p.sxb,
                                 <floating *>p.stage)
        # One thread runs the time loop of a few rows: the other projects beside it.
        if (p.pipeline and not p.ncols
                and pipelined(&p.cfg, nchunks, s1 - s0, <double>nrows_c * p.In * p.G)):
            progress = 0
            with parallel(num_threads=2):
                forward_pipelined(p, s0, s1, &progress, scratch)
            s0 = s1
            continue
        project_chunk_rows(p, nrows_c, Z)
        if p.ncols:
            p.bar.count = 0                   # every thread starts with sense 0
            p.bar.flag = 0
            with parallel(num_threads=p.ncols):
                forward_cols(p, s0, s1, scratch)
        elif nchunks == 1:
            forward_rows(p, 0, p.B, s0, s1, scratch)
        else:
            for ci in prange(nchunks, num_threads=nchunks, schedule="static"):
                b0 = <int>(ci * p.B // nchunks)
                forward_rows(p, b0, <int>((ci + 1) * p.B // nchunks) - b0, s0, s1,
                             scratch + ci * p.scratch)
        s0 = s1


cdef object forward_output(list bufs, bint return_sequences, bint has_mask):
    """y of a forward pass: the sequence, the masked last output, or h_T (a copy)."""
    if return_sequences:
        return bufs[4]
    if has_mask:
        return bufs[5]
    return bufs[2].copy()


# ---------------------------------------------------------------------------- backward
cdef object backward_setup(Bwd *q, const floating[:, :, ::1] x, floating[:, :, ::1] z,
                           const floating[:, :, ::1] hin, const floating[:, ::1] kernel,
                           const floating[:, ::1] recurrent_kernel,
                           const unsigned char[:, ::1] mask,
                           const floating[:, ::1] input_dropout_mask,
                           const floating[:, ::1] recurrent_dropout_mask, activation,
                           recurrent_activation, bint go_backwards, bint return_sequences,
                           bint has_bias, dy, dh_T, dx_into, bint merge, long scratch,
                           long acc, int wsplit, int usplit, MatsBinding mixed=None):
    """Fills q for a backward pass from the arguments of the cell's backward; the cell has
    read q.cfg and set q.ZW and its options first, and sets its own saved arrays after.
    hin: the saved input of U (the weight gradient's rows). merge: dh_{t-1} is formed in a buffer of its
    own and merged into dh (mask, recurrent dropout). scratch, acc: WORK and accumulator
    elements per thread of the time loop; wsplit, usplit as in Fwd. mixed: the bf16 U^T
    blocks of mixed_bfloat16 training (float32 only; then no float W^T or U^T is packed,
    and the loop leaves dZ in z for the caller's products), or None.

    Returns [dx, dh, dW, dU, the column sums of dZ or None, the accumulated acc or None,
    the per-thread accumulators or None, scratch, and the arrays behind q's pointers]; the
    cell holds it until its loop is done (as forward_setup's)."""
    cdef long T = x.shape[0]
    cdef int B = <int>x.shape[1], I = <int>x.shape[2]
    cdef int H = <int>recurrent_kernel.shape[0], G = <int>recurrent_kernel.shape[1]
    cdef long TB = T * B
    check_int("x: steps * batch rows", TB)
    dtype = np.float32 if floating is float else np.float64
    if mixed is not None and floating is not float:
        raise ValueError("mixed: float32 only")
    bind_mixed(q, mixed)
    q.T, q.B, q.In, q.H, q.G = T, B, I, H, G
    q.go_backwards = go_backwards
    q.act = make_act(activation)
    q.ract = make_act(recurrent_activation if recurrent_activation is not None else activation)
    q.mask = NULL if mask is None else &mask[0, 0]
    q.rdrop = NULL if recurrent_dropout_mask is None else <void *>&recurrent_dropout_mask[0, 0]
    q.idrop = NULL if input_dropout_mask is None else <void *>&input_dropout_mask[0, 0]
    q.Z, q.X, q.HIN = &z[0, 0, 0], <void *>&x[0, 0, 0], <void *>&hin[0, 0, 0]
    q.W, q.U = <void *>&kernel[0, 0], <void *>&recurrent_kernel[0, 0]

    dh_arr, dout_arr = state_grads(B, H, dtype, dy, dh_T, mask is not None, return_sequences)
    cdef floating[:, ::1] dh = dh_arr, dout, dhp
    q.dh, q.dout = &dh[0, 0], NULL
    if mask is not None:
        dout = dout_arr
        q.dout = &dout[0, 0]
    cdef const floating[:, :, :] DY
    q.DY, q.dys, q.dyr = NULL, 0, 0
    if dy is not None and return_sequences:
        DY = dy
        q.dys, q.dyr = row_strides("dy", T, B, H, DY.strides[0], DY.strides[1], DY.strides[2],
                                   sizeof(floating))
        q.DY = <void *>&DY[0, 0, 0]
    dhp_arr = None
    q.dhp = q.dh
    if merge:
        dhp_arr = np.empty((B, H), dtype)
        dhp = dhp_arr
        q.dhp = &dhp[0, 0]
    # Threads fixed once: the scratch below is indexed by them, and another Python thread
    # may call set_num_threads while this one has released the GIL (packing).
    q.nchunks = row_chunks(&q.cfg, T, B, H, G)
    q.scratch, q.acc = scratch, acc
    scratch_arr = workspace("scratch", max(1, q.nchunks * scratch), dtype)
    acc_arr = part_arr = None
    if acc:
        acc_arr = np.zeros(acc, dtype)          # one accumulator per thread, summed after
        part_arr = acc_arr if q.nchunks == 1 else np.zeros(q.nchunks * acc, dtype)

    dx_arr = dx_buffer(dx_into, T, B, I, dtype)
    dW_arr = np.empty((I, G), dtype)
    dU_arr = np.empty((H, G), dtype)
    cdef floating[:, :, ::1] dx = dx_arr
    cdef floating[:, ::1] dW = dW_arr, dU = dU_arr
    q.dX, q.dW, q.dU = &dx[0, 0, 0], &dW[0, 0], &dU[0, 0]
    # The many-row products on our packed GEMM (its db summed from dZ's packed blocks,
    # no pass of its own), unless BLAS has AVX-512 kernels (a little faster there) or
    # policy 'blas' is forced; BLAS's db is ones^T dZ.
    q.own = own_products(&q.cfg)
    db_arr = np.empty(q.ZW, dtype) if has_bias else None
    ones_arr = np.ones(TB, dtype) if has_bias and not q.own else None
    cdef floating[::1] vdb = db_arr, vones = ones_arr
    q.db, q.ones = data(vdb), data(vones)
    # W^T and U^T are packed into the buffers the forward pass packed W and U in (it is done
    # with them): a training step keeps two packed kernels between calls, not four.
    cdef const floating[:, :] Wv = kernel, Uv = recurrent_kernel
    cdef floating[::1] wt1 = None, wt2 = None, ut1 = None, ut2 = None
    cdef floating[:, ::1] UT
    if q.own and mixed is None:
        wt1, wt2 = packed_blocks(Wv, wsplit, True, "w", False, dtype, q.cfg.threads)
    q.WTp, q.WTp2 = data(wt1), data(wt2)
    q.UT = NULL
    ut_arr = None
    cdef int umode = U_IN_PLACE if mixed is not None else backward_u(
        &q.cfg, T, B, B // q.nchunks, H, G, sizeof(floating))
    if umode == U_PACKED:
        ut1, ut2 = packed_blocks(Uv, usplit, True, "u", False, dtype, q.cfg.threads)
    elif umode == U_TRANSPOSED:
        ut_arr = np.ascontiguousarray(np.asarray(recurrent_kernel).T)
        UT = ut_arr
        q.UT = &UT[0, 0]
    q.UTp, q.UTp2 = data(ut1), data(ut2)
    q.C = q.c0 = q.P = q.dc = q.HPREV = q.RH = q.drh = NULL
    ln_clear(&q.ln)
    q.lnacc, q.lnpart = 0, NULL
    return [dx_arr, dh_arr, dW_arr, dU_arr, db_arr, acc_arr, part_arr, scratch_arr,
            (dout_arr, dhp_arr, ones_arr, ut_arr, dy, wt1, wt2, ut1, ut2, mixed)]


cdef void backward_loop(const Bwd *q, floating *part, floating *scratch) noexcept nogil:
    """The backward time loop on one thread or over the batch rows (each thread all steps
    for its rows, into its own accumulator of part), then the many-row products."""
    cdef long ci
    cdef int b0, nchunks = q.nchunks
    if nchunks == 1:
        backward_rows(q, 0, q.B, part, scratch)
    else:
        for ci in prange(nchunks, num_threads=nchunks, schedule="static"):
            b0 = <int>(ci * q.B // nchunks)
            backward_rows(q, b0, <int>((ci + 1) * q.B // nchunks) - b0,
                          part + ci * q.acc if q.acc else NULL, scratch + ci * q.scratch)
    if q.qUT == NULL:           # mixed: the caller's bf16 products take dZ from here
        param_grads(q, <floating *>q.Z)


cdef object accumulated(list bufs):
    """The accumulator of backward_loop summed over its threads (or None)."""
    acc_arr, part_arr = bufs[5], bufs[6]
    if acc_arr is not None and part_arr is not acc_arr:
        acc_arr += part_arr.reshape(-1, acc_arr.shape[0]).sum(0)
    return acc_arr


cdef inline void dense_param_grads(const Bwd *q, floating *Z) noexcept nogil:
    """param_grads of a cell whose Z [T*B,G] is exactly what W and U fed (LSTM, SimpleRNN)."""
    weight_and_input_grads(&q.cfg, q.T * q.B, q.B, q.In, q.H, q.G, <const floating *>q.X,
                           <const floating *>q.HIN, Z, <const floating *>q.W,
                           <const floating *>q.WTp, <const floating *>q.ones,
                           <floating *>q.dW, <floating *>q.dU, <floating *>q.db,
                           <floating *>q.dX, <const floating *>q.idrop, q.own)


include "layer_norm.pxi"
include "packed.pxi"
