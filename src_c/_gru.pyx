# GRU forward and BPTT over whole sequences, GIL released (Keras 3 GRUCell, both forms).
#
# Shapes use the notation of fastlstm/backends/oracle/__init__.py; the equations are those of
# fastlstm/backends/oracle/gru.py and the gate-buffer layouts those of src_c/gru_impl.h. The
# callers (fastlstm/backends/cpu_ops.py) pass C-contiguous arrays of one dtype whose shapes
# they have checked (dy's rows, and x's at inference, may lie apart), with B >= 1, I >= 1,
# H >= 1; nothing here allocates per timestep.
#
# reset_after=True, Z [T,B,4H] = [z | r | rec_h | n]:
#   Forward:  Z[:, 0:2H] = X W_zr + b_zr + b'_zr, Z[:, 2H:3H] = b'_h, Z[:, 3H:4H] = X W_h + b_h
#             for all T*B rows (two GEMMs); per step Z[t, :, 0:3H] += hin U (one GEMM, GEMV at
#             B=1), then one fused pass (gates, n = a(. + r * rec_h), h update).
#   Backward: per step one fused pass writes [dz | dr | d rec_h | dn] over Z[t] and the carry
#             share of dh_{t-1}, then dh_{t-1} += Z[t, :, 0:3H] U^T; then dW, dU, dX, db
#             as products over all T*B rows.
# reset_after=False, Z [T,B,3H] = [z | r | n]:
#   Forward:  Z = X W + b (one GEMM); per step Z[t, :, 0:2H] += hin U_zr, a pass for z, r and
#             rh = r * hin, Z[t, :, 2H:] += rh U_h, a pass for n and the h update.
#   Backward: per step a pass (dz, dn, carry), drh = dn U_h^T, a pass (dr, drh * r), then
#             dh_{t-1} += [dz dr] U_zr^T; then the products over all T*B rows.
import numpy as np

from fastlstm.backends.grad_buffers import (dx_buffer, row_strides, state_grads,
                                            states_and_outputs)
from fastlstm._lstm import workspace

from libc.string cimport memcpy
from blas cimport floating, gemm, gemv
from cython.parallel cimport parallel, prange
from products cimport (chunk_rows, fl_matmul_policy, fl_max_threads, fl_parallel_min_macs,
                       fl_pipe_steps, pack_projection, par_gemm, pipelined, pipe_rows,
                       projection_in_place, row_chunks, set_direct_rows_param, set_kernel_threads,
                       set_pipeline_params, set_policy, split, step_grad, step_product, forward_u,
                       backward_u, U_PACKED, U_PANELS, U_TRANSPOSED)
from gates cimport (fl_force_isa_level, fl_isa_level, fl_team_size, fl_thread_num, fl_publish,
                    fl_await)
from gates cimport (fl_act, make_act, mul, merge_rows, add_mul, gemm_packed_acc,
                    gemm_packed_set, pack_b, pack_panels, fl_gru_fwd_reset_f,
                    fl_gru_fwd_reset_d, fl_gru_fwd_step_f, fl_gru_fwd_step_d, fl_gru_bwd_step_f,
                    fl_gru_bwd_step_d, fl_gru_bwd_reset_f, fl_gru_bwd_reset_d)

include "kernel_settings.pxi"


cdef inline void fwd_reset(int B, int H, fl_act ract, floating *z, const floating *hin,
                           floating *rh) noexcept nogil:
    if floating is float:
        fl_gru_fwd_reset_f(B, H, ract, z, hin, rh)
    else:
        fl_gru_fwd_reset_d(B, H, ract, z, hin, rh)


cdef inline void fwd_step(int B, int H, int reset_after, fl_act act, fl_act ract, floating *z,
                          const unsigned char *mask, const floating *h_in, floating *h_out,
                          const floating *out_prev, floating *out) noexcept nogil:
    if floating is float:
        fl_gru_fwd_step_f(B, H, reset_after, act, ract, z, mask, h_in, h_out, out_prev, out)
    else:
        fl_gru_fwd_step_d(B, H, reset_after, act, ract, z, mask, h_in, h_out, out_prev, out)


cdef inline void bwd_step(int B, int H, int reset_after, fl_act act, fl_act ract, floating *z,
                          const floating *h_prev, const unsigned char *mask, const floating *dy,
                          long ldy, floating *dh, floating *dout,
                          floating *scratch) noexcept nogil:
    if floating is float:
        fl_gru_bwd_step_f(B, H, reset_after, act, ract, z, h_prev, mask, dy, ldy, dh, dout,
                          scratch)
    else:
        fl_gru_bwd_step_d(B, H, reset_after, act, ract, z, h_prev, mask, dy, ldy, dh, dout,
                          scratch)


cdef inline void bwd_reset(int B, int H, fl_act ract, floating *z, const floating *hin,
                           const floating *drh, const unsigned char *mask, floating *dhin,
                           int accumulate, floating *scratch) noexcept nogil:
    if floating is float:
        fl_gru_bwd_reset_f(B, H, ract, z, hin, drh, mask, dhin, accumulate, scratch)
    else:
        fl_gru_bwd_reset_d(B, H, ract, z, hin, drh, mask, dhin, accumulate, scratch)


def set_pipeline(long steps, double min_macs=1 << 20):
    """Steps a block of the projection beside a few-row forward loop, and the least
    projection work (multiply-adds) for it; tests set them small, min_macs < 0 turns it off."""
    set_pipeline_params(steps, min_macs)


cdef void forward_rows(int T, int B, int H, int G, int ZW, int b0, int nb, long s0, long s1,
                       long zt0, bint reset_after, bint go_backwards, bint training,
                       bint return_sequences, fl_act act,
                       fl_act ract, floating *Z, const floating *U, const floating *Up,
                       const floating *Up2, const floating *Upan, const floating *Upan2,
                       const unsigned char *mask,
                       const floating *rdrop, floating *HPREV, floating *HIN, floating *RH,
                       floating *Y, floating *out, floating *hd, floating *h) noexcept nogil:
    """Steps [s0, s1) of the forward time loop for batch rows [b0, b0+nb). Z holds the input
    projection of times zt0, zt0+1, ... ([*,B,ZW], the layout in the header).
    HPREV, HIN [T,B,H] are saved when training (HIN only with recurrent dropout); RH is
    [T,B,H] when training, [B,H] work space at inference (reset_after=False only); Y [T,B,H]
    or out [B,H] receive the outputs; hd [B,H] holds h*rdrop at inference; h [B,H] the state.
    Up (and Up2): U packed by pack_b (reset_after: all of U; else U_zr and U_h), or Upan
    (and Upan2) U in panels, or all NULL (see products.step_product)."""
    cdef long BH = <long>B * H, BZ = <long>B * ZW, rh0 = <long>b0 * H, rz = <long>b0 * ZW
    cdef long nbh = <long>nb * H
    cdef long s, t
    cdef floating *ph = h + rh0
    cdef floating *hin
    cdef floating *prh
    cdef floating *zt
    cdef floating *po
    cdef floating *po_prev
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if rdrop == NULL else rdrop + rh0
    # Returning the sequence without a mask, each step writes its h straight into Y and the
    # next step reads it there (no copy per step; nor into HPREV when Y is its buffer too,
    # see forward); h gets the last one at the end.
    cdef bint ydirect = return_sequences and mask == NULL
    cdef floating *ph_out = ph
    if ydirect and s0 > 0:
        ph = Y + (s0 - 1) * BH + rh0
    for s in range(s0, s1):
        t = T - 1 - s if go_backwards else s
        zt = Z + (t - zt0) * BZ + rz
        if training:
            if HPREV + t * BH + rh0 != ph:
                memcpy(HPREV + t * BH + rh0, ph, nbh * sizeof(floating))
            if prd != NULL:
                hin = HIN + t * BH + rh0
                mul(ph, prd, hin, nbh)
            else:
                hin = HPREV + t * BH + rh0
        elif prd != NULL:
            hin = hd + rh0
            mul(ph, prd, hin, nbh)
        else:
            hin = ph
        po = po_prev = NULL
        if mask != NULL:
            pm = mask + t * B + b0
            if return_sequences:
                po = Y + s * BH + rh0
                po_prev = Y + (s - 1) * BH + rh0 if s > 0 else NULL
            else:
                po = po_prev = out + rh0
        if reset_after:
            step_product(nb, H, G, hin, U, G, Up, Upan, zt, ZW)
        else:
            prh = (RH + t * BH + rh0) if training else (RH + rh0)
            step_product(nb, H, 2 * H, hin, U, G, Up, Upan, zt, ZW)
            fwd_reset(nb, H, ract, zt, hin, prh)
            step_product(nb, H, H, prh, U + 2 * H, G, Up2, Upan2, zt + 2 * H, ZW)
        if ydirect:
            ph_out = Y + s * BH + rh0
        fwd_step(nb, H, reset_after, act, ract, zt, pm, ph, ph_out, po_prev, po)
        ph = ph_out
    if ydirect and s1 > s0:
        memcpy(h + rh0, ph, nbh * sizeof(floating))


cdef bint projections_on_blas = False  # set when the BLAS has AVX-512 kernels (fastlstm.threads)


def set_projection_blas(bint on):
    """Run the gradients' many-row products on BLAS (when it has AVX-512 kernels: faster
    there at the larger sizes); the input projection stays on our kernel, as fast or faster."""
    global projections_on_blas
    projections_on_blas = on


cdef object packed_cols(const floating[:, ::1] w, int j0, int n, dtype):
    """Columns [j0, j0+n) of w [K,N] packed for matmul_packed_acc, a new 1-D array."""
    arr = np.empty(w.shape[0] * n, dtype)
    cdef floating[::1] v = arr
    pack_panels(<int>w.shape[0], n, &w[0, 0] + j0, <int>w.shape[1], &v[0])
    return arr


cdef tuple packed_u(const floating[:, :] U, int H, bint reset_after, bint transposed):
    """U [H,3H] (U^T with transposed) packed for the packed GEMM, as the time loops take it:
    whole with reset_after (one product for z, r and h), else its [z r] and h blocks apart
    (h's product needs r first). Returns (packed, packed h block or None)."""
    cdef const floating[:, :] Uzr = U[:, :2 * H], Uh = U[:, 2 * H:]
    if reset_after:
        return pack_b(U, transposed, None, fl_max_threads), None
    return (pack_b(Uzr, transposed, None, fl_max_threads),
            pack_b(Uh, transposed, None, fl_max_threads))


cdef void forward_pipelined(int T, int B, int I, int H, int G, int ZW, long s0, long s1,
                            long zt0, bint reset_after, bint go_backwards, bint training,
                            bint return_sequences,
                            fl_act act, fl_act ract, const floating *X, const floating *W,
                            const floating *Wp1, const floating *Wp2, const floating *brow,
                            floating *Z, const floating *U, const floating *Up,
                            const floating *Up2, const floating *Upan, const floating *Upan2,
                            const unsigned char *mask, const floating *rdrop, floating *HPREV,
                            floating *HIN, floating *RH, floating *Y, floating *out,
                            floating *hd, floating *h, long *progress) noexcept nogil:
    """Steps [s0, s1) of a time loop of a few rows (one thread's work) with the input
    projection of those steps run beside it: thread 1 projects fl_pipe_steps steps at a
    time, in the order of the loop, and publishes how far it got; thread 0 runs each block of
    steps once it is projected. A team of one projects first. X: the rows of the steps'
    times; the rest as project_rows and forward_rows."""
    cdef int n = fl_team_size(), k = fl_thread_num()
    cdef long nsteps = s1 - s0, a = 0, e, r0, nr
    if n == 1:
        project_rows(0, nsteps * B, I, H, G, ZW, reset_after, X, W, Wp1, Wp2, brow, Z)
    if n == 1 or k == 0:
        while a < nsteps:
            e = min(nsteps, a + fl_pipe_steps)
            if n > 1:
                fl_await(progress, e)
            forward_rows(T, B, H, G, ZW, 0, B, s0 + a, s0 + e, zt0, reset_after, go_backwards,
                         training, return_sequences, act, ract, Z, U, Up, Up2, Upan, Upan2,
                         mask, rdrop, HPREV, HIN, RH, Y, out, hd, h)
            a = e
    elif k == 1:
        while a < nsteps:
            e = min(nsteps, a + fl_pipe_steps)
            pipe_rows(a, e, nsteps, B, go_backwards, &r0, &nr)
            project_rows(r0, nr, I, H, G, ZW, reset_after, X, W, Wp1, Wp2, brow, Z)
            fl_publish(progress, e)
            a = e


cdef inline const floating *ptr_or_null(const floating[::1] a):
    return NULL if a is None else &a[0]


cdef inline void project_rows(long r0, long nr, int I, int H, int G, int ZW, bint reset_after,
                              const floating *X, const floating *W, const floating *Wp1,
                              const floating *Wp2, const floating *brow,
                              floating *Z) noexcept nogil:
    """Rows [r0, r0+nr) of the input projection with the bias row brow [ZW]: Z[:, 0:2H] =
    X W_zr + ., Z[:, 3H:4H] = X W_h + . and Z[:, 2H:3H] = . (reset_after), or Z = X W + .;
    on our packed GEMM (Wp1, Wp2: W's blocks packed by pack_b; the bias goes in with the
    product's first store) or, with Wp1 NULL, on our kernel reading W in place (a few rows)
    or on BLAS."""
    cdef long r
    cdef const floating *Xr = X + r0 * I
    cdef floating *Zr = Z + r0 * ZW
    cdef int n1 = 2 * H if reset_after else G
    if Wp1 == NULL or reset_after:
        for r in range(nr):
            if Wp1 == NULL:
                memcpy(Zr + r * ZW, brow, ZW * sizeof(floating))
            else:
                memcpy(Zr + r * ZW + 2 * H, brow + 2 * H, H * sizeof(floating))
    cdef long wbytes = <long>I * G * sizeof(floating)
    if Wp1 == NULL:
        projection_in_place(nr, n1, I, Xr, W, G, wbytes, <floating>1, Zr, ZW)
        if reset_after:
            projection_in_place(nr, H, I, Xr, W + 2 * H, G, wbytes, <floating>1, Zr + 3 * H,
                                ZW)
    elif reset_after:
        gemm_packed_set(<int>nr, 2 * H, I, Xr, I, Wp1, brow, Zr, ZW)
        gemm_packed_set(<int>nr, H, I, Xr, I, Wp2, brow + 3 * H, Zr + 3 * H, ZW)
    else:
        gemm_packed_set(<int>nr, G, I, Xr, I, Wp1, brow, Zr, ZW)


def forward(const floating[:, :, :] x, const floating[:, ::1] kernel,
            const floating[:, ::1] recurrent_kernel, const floating[::1] bias,
            const floating[:, ::1] h0, const unsigned char[:, ::1] mask,
            const floating[:, ::1] input_dropout_mask,
            const floating[:, ::1] recurrent_dropout_mask, activation, recurrent_activation,
            bint reset_after, bint go_backwards, bint return_sequences, bint training):
    """x [T,B,I], kernel [I,3H], recurrent_kernel [H,3H], bias [6H] (reset_after: rows 0, 1 of
    the [2,3H] bias, flattened) or [3H] or None, h0 [B,H], mask [T,B] uint8|None,
    input_dropout_mask [B,I]|None, recurrent_dropout_mask [B,H]|None.

    Returns (y, h_T, saved): y is [T,B,H] by step when return_sequences, else [B,H]; saved is
    None unless training, then a dict of what backward needs.
    """
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef int H = recurrent_kernel.shape[0], G = recurrent_kernel.shape[1]
    cdef int ZW = 4 * H if reset_after else G       # width of a row of Z
    cdef long TB = <long>T * B
    dtype = np.float32 if floating is float else np.float64
    cdef fl_act act = make_act(activation), ract = make_act(recurrent_activation)
    cdef bint has_mask = mask is not None
    cdef bint has_rdrop = recurrent_dropout_mask is not None
    cdef bint has_bias = bias is not None

    # The bias row of Z: [b_zr + b'_zr | b'_h | b_h] (reset_after) or b; zeros without bias.
    brow_arr = np.zeros(ZW, dtype)
    if has_bias:
        b = np.asarray(bias)
        if reset_after:
            brow_arr[:2 * H] = b[:2 * H] + b[3 * H:5 * H]
            brow_arr[2 * H:3 * H] = b[5 * H:]
            brow_arr[3 * H:] = b[2 * H:3 * H]
        else:
            brow_arr[:] = b
    cdef floating[::1] brow = brow_arr

    cdef long sxt, sxb, chunk
    cdef const floating *px
    cdef floating *pstage
    xd_arr, chunk, z_arr = projection_inputs(
        x, input_dropout_mask, training, "gru_z", ZW, &px, &sxt, &sxb, &pstage)
    cdef floating[:, :, ::1] Z = z_arr
    cdef floating *pZ = &Z[0, 0, 0]
    cdef const floating *pW = &kernel[0, 0]
    cdef const floating *pU = &recurrent_kernel[0, 0]
    cdef const floating[:, :] Wv = kernel, Uv = recurrent_kernel
    # The input projection on our packed GEMM, W packed once per call (from a few dozen
    # rows; [z r] and h blocks apart where they land in different columns of Z), else W read
    # in place (project_rows).
    # (Memoryview slices go into named variables: as operands of a conditional expression
    # Cython miscounts their references.)
    cdef const floating[:, :] Wzr = Wv[:, :2 * H], Wh = Wv[:, 2 * H:]
    wp1 = wp2 = None
    if pack_projection(TB, <long>I * G * sizeof(floating)):
        if reset_after:
            wp1 = pack_b(Wzr, False, None, fl_max_threads)
            wp2 = pack_b(Wh, False, None, fl_max_threads)
        else:
            wp1 = pack_b(Wv, False, None, fl_max_threads)
    cdef floating[::1] vw1 = wp1, vw2 = wp2
    cdef const floating *pWp1 = ptr_or_null(vw1)
    cdef const floating *pWp2 = ptr_or_null(vw2)
    cdef long ci
    cdef int nchunks = row_chunks(T, B, H, G)

    h_arr = np.array(h0, dtype=dtype, copy=True)
    cdef floating[:, ::1] h = h_arr
    cdef floating[:, :, ::1] HPREV, HIN, RH, Y
    cdef floating[:, ::1] outbuf, hd, rhb
    hin_arr = rh_arr = out_arr = None
    # HPREV: h_{t-1} as it entered step t; without a mask, forward in time, it shares its
    # buffer with Y.
    hprev_arr, y_arr = states_and_outputs(T, B, H, dtype, training, return_sequences,
                                          not (has_mask or go_backwards))
    if training:
        HPREV = hprev_arr
        if has_rdrop:
            hin_arr = np.empty((T, B, H), dtype)   # h_{t-1} * recurrent dropout
            HIN = hin_arr
        if not reset_after:
            rh_arr = np.empty((T, B, H), dtype)    # r * hin, the input of U_h
            RH = rh_arr
    else:
        if has_rdrop:
            hd = np.empty((B, H), dtype)
        if not reset_after:
            rhb = np.empty((B, H), dtype)
    if return_sequences:
        Y = y_arr
    elif has_mask:
        out_arr = np.zeros((B, H), dtype)
        outbuf = out_arr

    # The per-step products: U packed for our GEMM (many rows per thread), in L1-sized
    # column panels (a few rows, over a sequence that amortises the copy), or read in place.
    cdef int umode = forward_u(TB, B // nchunks, H, G, sizeof(floating))
    up1 = up2 = upan1 = upan2 = None
    if umode == U_PACKED:
        up1, up2 = packed_u(Uv, H, reset_after, False)
    elif umode == U_PANELS:
        upan1 = packed_cols(recurrent_kernel, 0, G if reset_after else 2 * H, dtype)
        if not reset_after:
            upan2 = packed_cols(recurrent_kernel, 2 * H, H, dtype)
    cdef floating[::1] vu1 = up1, vu2 = up2, vp1 = upan1, vp2 = upan2
    cdef const floating *pUp1 = ptr_or_null(vu1)
    cdef const floating *pUp2 = ptr_or_null(vu2)
    cdef const floating *pUpan1 = ptr_or_null(vp1)
    cdef const floating *pUpan2 = ptr_or_null(vp2)
    cdef const floating *prd = NULL if not has_rdrop else &recurrent_dropout_mask[0, 0]
    cdef const unsigned char *pm = NULL if not has_mask else &mask[0, 0]
    cdef floating *pHP = &HPREV[0, 0, 0] if training else NULL
    cdef floating *pHIN = &HIN[0, 0, 0] if (training and has_rdrop) else NULL
    cdef floating *pRH = NULL
    if not reset_after:
        pRH = &RH[0, 0, 0] if training else &rhb[0, 0]
    cdef floating *pY = &Y[0, 0, 0] if return_sequences else NULL
    cdef floating *pout = &outbuf[0, 0] if (has_mask and not return_sequences) else NULL
    cdef floating *phd = &hd[0, 0] if (has_rdrop and not training) else NULL
    cdef int b0, nproj
    cdef long progress = 0, s0 = 0, s1, t_lo, nrows_c
    cdef const floating *pX
    with nogil:
        while s0 < T:
            s1 = min(<long>T, s0 + chunk)
            t_lo = T - s1 if go_backwards else s0         # the chunk's times: [t_lo, t_lo+s1-s0)
            nrows_c = (s1 - s0) * B
            pX = chunk_rows(t_lo, s1 - s0, B, I, px, sxt, sxb, pstage)
            # One thread runs the time loop of a few rows: the other projects beside it.
            if pipelined(nchunks, s1 - s0, <double>nrows_c * I * G):
                progress = 0
                with parallel(num_threads=2):
                    forward_pipelined(T, B, I, H, G, ZW, s0, s1, t_lo, reset_after, go_backwards,
                                      training, return_sequences, act, ract,
                                      pX, pW, pWp1, pWp2, &brow[0],
                                      pZ, pU, pUp1, pUp2, pUpan1, pUpan2, pm, prd, pHP, pHIN,
                                      pRH, pY, pout, phd, &h[0, 0], &progress)
                s0 = s1
                continue
            nproj = split(nrows_c, 64, <double>nrows_c * I * G)
            if nproj == 1:
                project_rows(0, nrows_c, I, H, G, ZW, reset_after, pX, pW, pWp1, pWp2,
                             &brow[0], pZ)
            else:
                for ci in prange(nproj, num_threads=nproj, schedule="static"):
                    project_rows(ci * nrows_c // nproj,
                                 (ci + 1) * nrows_c // nproj - ci * nrows_c // nproj, I, H, G,
                                 ZW, reset_after, pX, pW, pWp1, pWp2, &brow[0], pZ)
            if nchunks == 1:
                forward_rows(T, B, H, G, ZW, 0, B, s0, s1, t_lo, reset_after, go_backwards,
                             training, return_sequences, act, ract, pZ, pU, pUp1, pUp2, pUpan1,
                             pUpan2, pm, prd, pHP, pHIN, pRH, pY, pout, phd, &h[0, 0])
            else:
                for ci in prange(nchunks, num_threads=nchunks, schedule="static"):
                    b0 = <int>(ci * B // nchunks)
                    forward_rows(T, B, H, G, ZW, b0, <int>((ci + 1) * B // nchunks) - b0, s0,
                                 s1, t_lo, reset_after, go_backwards, training,
                                 return_sequences, act, ract, pZ, pU, pUp1, pUp2, pUpan1,
                                 pUpan2, pm, prd, pHP, pHIN, pRH, pY, pout, phd, &h[0, 0])
            s0 = s1

    if return_sequences:
        y = y_arr
    elif has_mask:
        y = out_arr
    else:
        y = h_arr.copy()
    saved = None
    if training:
        saved = dict(x=np.asarray(x) if xd_arr is None else xd_arr, z=z_arr, h_prev=hprev_arr,
                     hin=hin_arr, rh=rh_arr)
    return y, h_arr, saved


cdef inline void input_grad_rows(long r0, long nr, int I, int H, int ZW, bint reset_after,
                                 const floating *dZ, const floating *W, const floating *WTp1,
                                 const floating *WTp2, floating *dX) noexcept nogil:
    """Rows [r0, r0+nr) of dX = dZ_x W^T, dZ_x the columns of dZ that x W fed ([dz dr] and dn
    with reset_after, else all): on our GEMM with W^T packed by pack_b (WTp1: W_zr^T, WTp2:
    W_h^T with reset_after, else WTp1 all of W^T), or on BLAS (WTp1 NULL)."""
    cdef const floating *dz = dZ + r0 * ZW
    cdef floating *dx = dX + r0 * I
    if WTp1 != NULL and reset_after:
        gemm_packed_set(<int>nr, I, 2 * H, dz, ZW, WTp1, NULL, dx, I)
        gemm_packed_acc(<int>nr, I, H, dz + 3 * H, ZW, WTp2, dx, I)
    elif WTp1 != NULL:
        gemm_packed_set(<int>nr, I, 3 * H, dz, ZW, WTp1, NULL, dx, I)
    else:
        gemm(False, True, <int>nr, I, 2 * H if reset_after else 3 * H, <floating>1, dz, ZW, W,
             3 * H, <floating>0, dx, I)
        if reset_after:
            gemm(False, True, <int>nr, I, H, <floating>1, dz + 3 * H, ZW, W + 2 * H, 3 * H,
                 <floating>1, dx, I)


cdef inline const unsigned char *mask_ptr(const unsigned char[:, ::1] mask) noexcept nogil:
    return NULL if mask is None else &mask[0, 0]


cdef void backward_rows(int T, int B, int H, int G, int ZW, int b0, int nb, bint reset_after,
                        bint go_backwards, fl_act act, fl_act ract, floating *Z,
                        const floating *HPREV, const floating *HIN, const unsigned char *mask,
                        const floating *rdrop, const floating *DY, long dys, long dyr,
                        const floating *U,
                        const floating *UT, const floating *UTp, const floating *UTp2,
                        floating *dh, floating *dout, floating *target, floating *drh,
                        floating *scratch) noexcept nogil:
    """The backward time loop for batch rows [b0, b0+nb): Z [T,B,ZW] gates in, gradients
    out; DY [T,B,H] (steps dys and rows dyr apart) or NULL; dh [B,H] in: gradient of the
    final state, out: of the initial state. With recurrent dropout, target [B,H] gathers the
    recurrent share of dh_{t-1} before scaling (else it is dh itself); drh [B,H] is work
    space (reset_after=False). UTp: U^T packed by pack_b (reset_after; else U_zr^T, and
    UTp2 U_h^T), or NULL (UT or U read in place)."""
    cdef long BH = <long>B * H, BZ = <long>B * ZW, rh0 = <long>b0 * H, rz = <long>b0 * ZW
    cdef long s, t
    cdef floating *zt
    cdef const floating *phin
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if rdrop == NULL else rdrop + rh0
    cdef floating *pdh = dh + rh0
    cdef floating *ptg = target + rh0
    cdef floating *pdo = NULL if dout == NULL else dout + rh0
    cdef floating *pdrh = NULL if drh == NULL else drh + rh0
    cdef floating beta_rec = 0 if rdrop != NULL else 1
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if go_backwards else s
        zt = Z + t * BZ + rz
        if mask != NULL:
            pm = mask + t * B + b0
        bwd_step(nb, H, reset_after, act, ract, zt, HPREV + t * BH + rh0, pm,
                 DY + s * dys + b0 * dyr if DY != NULL else NULL, dyr, pdh, pdo, scratch)
        if reset_after:
            step_grad(nb, H, G, zt, ZW, U, G, UT, UTp, beta_rec, ptg)
        else:
            phin = (HIN if HIN != NULL else HPREV) + t * BH + rh0
            step_grad(nb, H, H, zt + 2 * H, ZW, U + 2 * H, G,
                      UT + 2 * H * H if UT != NULL else NULL, UTp2, <floating>0, pdrh)
            bwd_reset(nb, H, ract, zt, phin, pdrh, pm, ptg, rdrop == NULL, scratch)
            step_grad(nb, H, 2 * H, zt, ZW, U, G, UT, UTp, <floating>1, ptg)
        if prd != NULL:       # masked rows of the target are 0: their dh stays
            add_mul(ptg, prd, pdh, <long>nb * H)


def backward(const floating[:, :, ::1] x, floating[:, :, ::1] z, const floating[:, :, ::1] h_prev,
             const floating[:, :, ::1] hin, const floating[:, :, ::1] rh,
             const floating[:, ::1] kernel, const floating[:, ::1] recurrent_kernel,
             const unsigned char[:, ::1] mask, const floating[:, ::1] input_dropout_mask,
             const floating[:, ::1] recurrent_dropout_mask, activation, recurrent_activation,
             bint reset_after, bint go_backwards, bint return_sequences, bint has_bias, dy, dh_T,
             dx_into=None):
    """BPTT for `forward`. x, z, h_prev, hin (None without recurrent dropout), rh (None with
    reset_after) are what forward saved; z is overwritten with the gate gradients. dy:
    [T,B,H] (return_sequences; last axis contiguous, the others any strides) or [B,H] or
    None; dh_T: [B,H] or None, all of this dtype and, but for dy's, C-contiguous. dx_into:
    x itself when forward's x was a copy nothing else holds (grad_buffers.dx_buffer).

    Returns (dx, dh0, dkernel, drecurrent_kernel, dbias|None); dbias is [2,3H] with
    reset_after, else [3H].
    """
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef int H = recurrent_kernel.shape[0], G = recurrent_kernel.shape[1]
    cdef int ZW = 4 * H if reset_after else G
    cdef long TB = <long>T * B
    dtype = np.float32 if floating is float else np.float64
    cdef fl_act act = make_act(activation), ract = make_act(recurrent_activation)
    cdef bint has_mask = mask is not None
    cdef bint has_rdrop = recurrent_dropout_mask is not None
    if has_rdrop and hin is None:
        raise ValueError("hin: required with a recurrent dropout mask")
    if not reset_after and rh is None:
        raise ValueError("rh: required with reset_after=False")

    dh_arr, dout_arr = state_grads(B, H, dtype, dy, dh_T, has_mask, return_sequences)
    cdef floating[:, ::1] dh = dh_arr, dout, dhin_v, drh_v
    cdef const floating[:, :, :] DY
    cdef long dys = 0, dyr = 0
    cdef floating *pdout = NULL
    if has_mask:
        dout = dout_arr
        pdout = &dout[0, 0]
    if dy is not None and return_sequences:
        DY = dy
        dys, dyr = row_strides("dy", T, B, H, DY.strides[0], DY.strides[1], DY.strides[2],
                               sizeof(floating))
    cdef floating *pdh = &dh[0, 0]
    # With recurrent dropout the recurrent share of dh_{t-1} is formed apart, then scaled.
    cdef floating *ptarget = pdh
    if has_rdrop:
        dhin_v = np.empty((B, H), dtype)
        ptarget = &dhin_v[0, 0]
    cdef floating *pdrh = NULL
    if not reset_after:
        drh_v = np.empty((B, H), dtype)
        pdrh = &drh_v[0, 0]
    # Threads fixed once: the scratch below is indexed by them, and another Python thread
    # may call set_num_threads while this one has released the GIL (packing).
    cdef int nchunks = row_chunks(T, B, H, G)
    scratch_arr = np.empty(nchunks * 2 * H, dtype)
    cdef floating[::1] scratch = scratch_arr
    cdef const floating *prd = NULL if not has_rdrop else &recurrent_dropout_mask[0, 0]
    cdef const floating *pU = &recurrent_kernel[0, 0]
    cdef const floating *pW = &kernel[0, 0]
    cdef floating *pZ = &z[0, 0, 0]
    cdef bint seq_dy = dy is not None and return_sequences
    cdef long t

    dx_arr = dx_buffer(dx_into, T, B, I, dtype)
    dW_arr = np.empty((I, G), dtype)
    dU_arr = np.empty((H, G), dtype)
    cdef bint own = fl_matmul_policy != 1 and not projections_on_blas
    cdef bint fold = own and has_bias        # db summed by the weight gradients' GEMMs
    colsum_arr = np.empty(ZW, dtype) if has_bias else None
    ones_arr = np.ones(TB, dtype) if has_bias and not fold else None   # BLAS's db: ones^T dZ
    cdef floating[:, :, ::1] dx = dx_arr
    cdef floating[:, ::1] dW = dW_arr, dU = dU_arr
    cdef floating[::1] colsum, ones
    cdef floating *psum = NULL
    if has_bias:
        colsum = colsum_arr
        psum = &colsum[0]
    if ones_arr is not None:
        ones = ones_arr
    cdef const floating *pHin = &hin[0, 0, 0] if has_rdrop else &h_prev[0, 0, 0]
    cdef floating[:, ::1] UT                          # U^T [G,H] for the own-kernel path
    cdef const floating *pUT = NULL
    cdef const floating[:, :] Uv = recurrent_kernel
    utp1 = utp2 = None                                # U^T (or its blocks) packed for our GEMM
    cdef int umode = backward_u(T, B, B // nchunks, H, G, sizeof(floating))
    if umode == U_PACKED:
        utp1, utp2 = packed_u(Uv, H, reset_after, True)
    elif umode == U_TRANSPOSED:
        UT = np.ascontiguousarray(np.asarray(recurrent_kernel).T)
        pUT = &UT[0, 0]
    cdef floating[::1] vut1 = utp1, vut2 = utp2
    cdef const floating *pUTp1 = ptr_or_null(vut1)
    cdef const floating *pUTp2 = ptr_or_null(vut2)
    cdef int ncols = split(G, 64, <double>TB * (I + H) * G)
    cdef int nrows = split(TB, 64, <double>TB * I * G)
    cdef const floating *pH = &h_prev[0, 0, 0]
    # The input gradient's W^T, packed once for our GEMM ([z r] and h blocks apart where
    # they meet different columns of dZ), or NULL for BLAS.
    cdef const floating[:, :] Wv = kernel
    cdef const floating[:, :] Wzr = Wv[:, :2 * H], Wh = Wv[:, 2 * H:]
    wtp1 = wtp2 = None
    if own and reset_after:
        wtp1 = pack_b(Wzr, True, None, fl_max_threads)
        wtp2 = pack_b(Wh, True, None, fl_max_threads)
    elif own:
        wtp1 = pack_b(Wv, True, None, fl_max_threads)
    cdef floating[::1] vwt1 = wtp1, vwt2 = wtp2
    cdef const floating *pWTp1 = ptr_or_null(vwt1)
    cdef const floating *pWTp2 = ptr_or_null(vwt2)
    cdef const floating *pHIN = &hin[0, 0, 0] if has_rdrop else NULL
    cdef long ci
    cdef int b0
    with nogil:
        if nchunks == 1:
            backward_rows(T, B, H, G, ZW, 0, B, reset_after, go_backwards, act, ract, pZ, pH,
                          pHIN, mask_ptr(mask), prd, &DY[0, 0, 0] if seq_dy else NULL, dys, dyr,
                          pU, pUT, pUTp1, pUTp2, pdh, pdout, ptarget, pdrh, &scratch[0])
        else:
            for ci in prange(nchunks, num_threads=nchunks, schedule="static"):
                b0 = <int>(ci * B // nchunks)
                backward_rows(T, B, H, G, ZW, b0, <int>((ci + 1) * B // nchunks) - b0,
                              reset_after, go_backwards, act, ract, pZ, pH, pHIN,
                              mask_ptr(mask), prd, &DY[0, 0, 0] if seq_dy else NULL, dys,
                              dyr, pU, pUT, pUTp1, pUTp2, pdh, pdout, ptarget, pdrh,
                              &scratch[0] + ci * 2 * H)
        # Weight and input gradients: products over all T*B rows, split into column slices
        # (weights) and row slices (inputs) over the threads; on our packed GEMM (the input
        # gradient then reads W^T) unless BLAS has AVX-512 kernels.
        # On our GEMM the bias gradient (column sums of Z's rows) is summed from the packed
        # blocks of the products that pack those columns: no pass of its own over dZ.
        if reset_after:
            par_gemm(True, False, I, 2 * H, <int>TB, <floating>1, &x[0, 0, 0], I, pZ, ZW,
                     <floating>0, &dW[0, 0], G, ncols, False, own)
            par_gemm(True, False, I, H, <int>TB, <floating>1, &x[0, 0, 0], I, pZ + 3 * H, ZW,
                     <floating>0, &dW[0, 2 * H], G, ncols, False, own,
                     psum + 3 * H if fold else NULL)
            par_gemm(True, False, H, G, <int>TB, <floating>1, pHin, H, pZ, ZW, <floating>0,
                     &dU[0, 0], G, ncols, False, own, psum if fold else NULL)
        else:
            par_gemm(True, False, I, G, <int>TB, <floating>1, &x[0, 0, 0], I, pZ, ZW,
                     <floating>0, &dW[0, 0], G, ncols, False, own, psum if fold else NULL)
            par_gemm(True, False, H, 2 * H, <int>TB, <floating>1, pHin, H, pZ, ZW, <floating>0,
                     &dU[0, 0], G, ncols, False, own)
            par_gemm(True, False, H, H, <int>TB, <floating>1, &rh[0, 0, 0], H, pZ + 2 * H, ZW,
                     <floating>0, &dU[0, 2 * H], G, ncols, False, own)
        if nrows == 1:
            input_grad_rows(0, TB, I, H, ZW, reset_after, pZ, pW, pWTp1, pWTp2, &dx[0, 0, 0])
        else:
            for ci in prange(nrows, num_threads=nrows, schedule="static"):
                input_grad_rows(ci * TB // nrows, (ci + 1) * TB // nrows - ci * TB // nrows, I,
                                H, ZW, reset_after, pZ, pW, pWTp1, pWTp2, &dx[0, 0, 0])
        if has_bias and not fold:
            gemv(True, <int>TB, ZW, <floating>1, pZ, ZW, &ones[0], <floating>0, &colsum[0])
        if input_dropout_mask is not None:
            for t in range(T):
                merge_rows(B, I, NULL, &input_dropout_mask[0, 0], &dx[t, 0, 0], &dx[t, 0, 0])
    db = None
    if has_bias:
        if reset_after:
            db = np.empty((2, G), dtype)
            db[0, :2 * H] = colsum_arr[:2 * H]
            db[0, 2 * H:] = colsum_arr[3 * H:]
            db[1] = colsum_arr[:3 * H]
        else:
            db = colsum_arr
    return dx_arr, dh_arr, dW_arr, dU_arr, db
