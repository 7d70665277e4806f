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

from libc.string cimport memcpy
from blas cimport floating, gemm, gemv
from cython.parallel cimport parallel, prange
from products cimport (Settings, load_settings, chunk_rows, pack_projection, par_gemm,
                       pipelined, pipe_rows, projection_in_place, row_chunks, split, step_grad,
                       step_product, forward_u, backward_u, weight_and_input_grads, U_IN_PLACE,
                       U_PACKED, U_PANELS, U_TRANSPOSED)
from gates cimport (fl_force_isa_level, fl_isa_level, fl_team_size, fl_thread_num, fl_publish,
                    fl_await)
from gates cimport (fl_act, make_act, mul, merge_rows, add_mul, gemm_packed_acc,
                    gemm_packed_set, pack_b, pack_panels, gru_fwd_reset, gru_fwd_step,
                    gru_bwd_step, gru_bwd_reset)
from sequence cimport Fwd, Bwd

include "kernel_settings.pxi"
include "driver.pxi"


cdef void forward_rows(const Fwd *p, int b0, int nb, long s0, long s1,
                       floating *scratch) noexcept nogil:
    """Steps [s0, s1) of the forward time loop for batch rows [b0, b0+nb). Z holds the input
    projection of times zt0, zt0+1, ... ([*,B,ZW], the layout in the header); HPREV (and HIN
    with recurrent dropout) are saved when training; RH is [T,B,H] when training, [B,H] work
    space at inference (reset_after=False only). Up (and Up2): U packed by pack_b
    (reset_after: all of U; else U_zr and U_h), or Upan (and Upan2) U in panels, or all NULL
    (see products.step_product). Returning the sequence without a mask, each step writes its
    h straight into Y and the next step reads it there (no copy per step; nor into HPREV when
    Y is its buffer too); h gets the last one at the end. scratch: [nb,3H] for h U with
    layer norm at inference (ln_step_product)."""
    cdef long T = p.T, H = p.H, ZW = p.ZW, BH = p.B * H, BZ = p.B * ZW
    cdef long rh0 = b0 * H, rz = b0 * ZW, nbh = nb * H
    cdef int G = p.G
    cdef long s, t
    cdef const floating *U = <const floating *>p.U
    cdef floating *HPREV = <floating *>p.HPREV
    cdef floating *HIN = <floating *>p.HIN
    cdef floating *RH = <floating *>p.RH
    cdef floating *Y = <floating *>p.Y
    cdef floating *ph = <floating *>p.h + rh0
    cdef floating *hin
    cdef floating *prh
    cdef floating *zt
    cdef floating *po
    cdef floating *po_prev
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if p.rdrop == NULL else <const floating *>p.rdrop + rh0
    cdef bint ydirect = p.return_sequences and p.mask == NULL
    cdef floating *ph_out = ph
    if ydirect and s0 > 0:
        ph = Y + (s0 - 1) * BH + rh0
    for s in range(s0, s1):
        t = T - 1 - s if p.go_backwards else s
        zt = <floating *>p.Z + (t - p.zt0) * BZ + rz
        if p.training:
            if HPREV + t * BH + rh0 != ph:
                memcpy(HPREV + t * BH + rh0, ph, nbh * sizeof(floating))
            if prd != NULL:
                hin = HIN + t * BH + rh0
                mul(ph, prd, hin, nbh)
            else:
                hin = HPREV + t * BH + rh0
        elif prd != NULL:
            hin = <floating *>p.hd + rh0
            mul(ph, prd, hin, nbh)
        else:
            hin = ph
        po = po_prev = NULL
        if p.mask != NULL:
            pm = p.mask + t * p.B + b0
            if p.return_sequences:
                po = Y + s * BH + rh0
                po_prev = Y + (s - 1) * BH + rh0 if s > 0 else NULL
            else:
                po = po_prev = <floating *>p.out + rh0
        if p.reset_after:
            if floating is float and p.qU != NULL:
                step_qproduct(p, nb, hin, p.qU, zt, ZW)
            elif p.ln.g != NULL:
                ln_step_product(p, nb, t, b0, hin, zt, ZW, scratch)
            else:
                step_product(&p.cfg, nb, <int>H, G, hin, U, G, <const floating *>p.Up,
                             <const floating *>p.Upan, zt, <int>ZW)
        else:
            prh = (RH + t * BH + rh0) if p.training else (RH + rh0)
            if floating is float and p.qU != NULL:
                step_qproduct(p, nb, hin, p.qU, zt, ZW)
            else:
                step_product(&p.cfg, nb, <int>H, 2 * <int>H, hin, U, G, <const floating *>p.Up,
                             <const floating *>p.Upan, zt, <int>ZW)
            gru_fwd_reset(nb, <int>H, p.ract, zt, hin, prh)
            if floating is float and p.qU2 != NULL:
                step_qproduct(p, nb, prh, p.qU2, zt + 2 * H, ZW)
            else:
                step_product(&p.cfg, nb, <int>H, <int>H, prh, U + 2 * H, G,
                             <const floating *>p.Up2, <const floating *>p.Upan2, zt + 2 * H,
                             <int>ZW)
        if ydirect:
            ph_out = Y + s * BH + rh0
        gru_fwd_step(nb, <int>H, p.reset_after, p.act, p.ract, zt, pm, ph, ph_out, po_prev, po)
        ph = ph_out
    if ydirect and s1 > s0:
        memcpy(<floating *>p.h + rh0, ph, nbh * sizeof(floating))


cdef inline void forward_cols(const Fwd *p, long s0, long s1, floating *unused) noexcept nogil:
    """No split over the units here (p.ncols stays 0)."""
    pass


cdef inline void project_rows(const Fwd *p, long r0, long nr, floating *Z) noexcept nogil:
    """Rows [r0, r0+nr) of the input projection with the bias row [ZW]: Z[:, 0:2H] =
    X W_zr + ., Z[:, 3H:4H] = X W_h + . and Z[:, 2H:3H] = . (reset_after), or Z = X W + .;
    on our packed GEMM (Wp, Wp2: W's blocks packed by pack_b; the bias goes in with the
    product's first store) or, with Wp NULL, on our kernel reading W in place (a few rows)
    or on BLAS."""
    cdef long r
    cdef int I = p.In, H = p.H, G = p.G, ZW = p.ZW
    cdef const floating *Xr = <const floating *>p.X + r0 * I
    cdef const floating *W = <const floating *>p.W
    cdef const floating *Wp1 = <const floating *>p.Wp
    cdef const floating *brow = <const floating *>p.bias
    cdef floating *Zr = Z + r0 * ZW
    cdef int n1 = 2 * H if p.reset_after else G
    if p.ln.g != NULL:
        ln_project_gru(p, r0, nr, Zr)
        return
    if floating is float:
        if p.qW != NULL:
            if p.reset_after:
                qproduct(<int>nr, Xr, I, p.qW, brow, 0, Zr, ZW)
                qproduct(<int>nr, Xr, I, p.qW2, brow + 3 * H, 0, Zr + 3 * H, ZW)
                for r in range(nr):
                    memcpy(Zr + r * ZW + 2 * H, brow + 2 * H, H * sizeof(floating))
            else:
                qproduct(<int>nr, Xr, I, p.qW, brow, 0, Zr, ZW)
            return
    if Wp1 == NULL or p.reset_after:
        for r in range(nr):
            if Wp1 == NULL:
                memcpy(Zr + r * ZW, brow, ZW * sizeof(floating))
            else:
                memcpy(Zr + r * ZW + 2 * H, brow + 2 * H, H * sizeof(floating))
    cdef long wbytes = <long>I * G * sizeof(floating)
    if Wp1 == NULL:
        projection_in_place(&p.cfg, nr, n1, I, Xr, W, G, wbytes, <floating>1, Zr, ZW)
        if p.reset_after:
            projection_in_place(&p.cfg, nr, H, I, Xr, W + 2 * H, G, wbytes, <floating>1, Zr + 3 * H,
                                ZW)
    elif p.reset_after:
        gemm_packed_set(<int>nr, 2 * H, I, Xr, I, Wp1, brow, Zr, ZW)
        gemm_packed_set(<int>nr, H, I, Xr, I, <const floating *>p.Wp2, brow + 3 * H,
                        Zr + 3 * H, ZW)
    else:
        gemm_packed_set(<int>nr, G, I, Xr, I, Wp1, brow, Zr, ZW)


cdef inline void ln_project_gru(const Fwd *p, long r0, long nr, floating *Zr) noexcept nogil:
    """project_rows with layer norm (reset_after): x W [nr,3H] into Z's columns 0:3H, which
    ln_project turns into LN(x W) gamma[0] + [b_zr + b'_zr | b_h] (the bias row's first
    3H); then x's n block moves to columns 3H:4H and b'_h (the row's last H) fills 2H:3H."""
    cdef long r
    cdef int I = p.In, H = p.H, G = p.G, ZW = p.ZW
    cdef const floating *Xr = <const floating *>p.X + r0 * I
    if p.Wp != NULL:
        gemm_packed_set(<int>nr, G, I, Xr, I, <const floating *>p.Wp, NULL, Zr, ZW)
    else:
        projection_in_place(&p.cfg, nr, G, I, Xr, <const floating *>p.W, G,
                            <long>I * G * sizeof(floating), <floating>0, Zr, ZW)
    ln_project(p, r0, nr, Zr - r0 * ZW, ZW)
    for r in range(nr):
        memcpy(Zr + r * ZW + 3 * H, Zr + r * ZW + 2 * H, H * sizeof(floating))
        memcpy(Zr + r * ZW + 2 * H, <const floating *>p.bias + 3 * H, H * sizeof(floating))


def forward(const floating[:, :, :] x, const floating[:, ::1] kernel,
            const floating[:, ::1] recurrent_kernel, const floating[::1] bias,
            const floating[:, ::1] h0, const unsigned char[:, ::1] mask,
            const floating[:, ::1] input_dropout_mask,
            const floating[:, ::1] recurrent_dropout_mask, activation, recurrent_activation,
            bint reset_after, bint go_backwards, bint return_sequences, bint training,
            settings=None, quant=None, Packed packing=None,
            const floating[:, ::1] layer_norm=None):
    """x [T,B,I], kernel [I,3H], recurrent_kernel [H,3H], bias [6H] (reset_after: rows 0, 1 of
    the [2,3H] bias, flattened) or [3H] or None, h0 [B,H], mask [T,B] uint8|None,
    input_dropout_mask [B,I]|None, recurrent_dropout_mask [B,H]|None. layer_norm: gamma
    [2,3H] (reset_after; layer_norm.pxi) or None.

    Returns (y, h_T, saved): y is [T,B,H] by step when return_sequences, else [B,H]; saved is
    None unless training, then a dict of what backward needs. packing: as _lstm.forward's.
    """
    cdef Fwd p
    read_settings(&p.cfg, settings)
    cdef QuantBinding qb = None
    cdef int H, G
    if quant is not None:
        H = quant[1].shape[0]
        qb = QuantBinding(quant[0], quant[1], 2 * H if reset_after else 0,
                          0 if reset_after else 2 * H)
    H, G = weight_dims(recurrent_kernel, qb)
    dtype = np.float32 if floating is float else np.float64
    # [z r] and h blocks of W apart where they land in different columns of Z, of U where
    # h's product needs r first.
    if layer_norm is not None and (not reset_after or qb is not None):
        raise ValueError("layer_norm: the GRU with reset_after=True and float weights only")
    p.ZW = 4 * H if reset_after else G
    p.wsplit, p.usplit = (2 * H, 0) if reset_after else (0, 2 * H)
    if layer_norm is not None:
        p.wsplit = 0            # x W goes to Z's columns 0:3H whole (ln_project_gru)
    p.pipeline, p.ncols = packing is None, 0
    p.coupled, p.reset_after = False, reset_after
    # The bias row of Z: [b_zr + b'_zr | b'_h | b_h] (reset_after) or b; zeros without bias.
    brow_arr = np.zeros(p.ZW, dtype)
    if bias is not None:
        b = np.asarray(bias)
        if layer_norm is not None:      # [b_zr + b'_zr | b_h | b'_h] (ln_project_gru)
            brow_arr[:3 * H] = b[:3 * H]
            brow_arr[:2 * H] += b[3 * H:5 * H]
            brow_arr[3 * H:] = b[5 * H:]
        elif reset_after:
            brow_arr[:2 * H] = b[:2 * H] + b[3 * H:5 * H]
            brow_arr[2 * H:3 * H] = b[5 * H:]
            brow_arr[3 * H:] = b[2 * H:3 * H]
        else:
            brow_arr[:] = b
    cdef const floating[::1] brow = brow_arr
    # HPREV: h_{t-1} as it entered step t; without a mask, forward in time, it shares its
    # buffer with Y.
    bufs = forward_setup(&p, x, kernel, recurrent_kernel, brow, h0, mask,
                         input_dropout_mask, recurrent_dropout_mask, activation,
                         recurrent_activation, go_backwards, return_sequences, training,
                         "gru_z", not (mask is not None or go_backwards or packing is not None),
                         0 if layer_norm is None else
                         ln_rows(&p.cfg, x.shape[0], <int>x.shape[1], H, G,
                                 packing.widest if packing is not None else 0) * G, qb)
    cdef const floating[:, ::1] no_gains = None
    ln_bufs = ln_setup(&p, layer_norm, no_gains, p.T * p.B, False)
    cdef floating[::1] scratch = bufs[6]
    cdef floating[:, :, ::1] HIN, RH
    cdef floating[:, ::1] rhb
    hin_arr = rh_arr = None
    p.HPREV, p.HIN = p.HIN, NULL
    if training:
        if recurrent_dropout_mask is not None:
            hin_arr = np.empty((p.T, p.B, H), dtype)   # h_{t-1} * recurrent dropout
            HIN = hin_arr
            p.HIN = &HIN[0, 0, 0]
        if not reset_after:
            rh_arr = np.empty((p.T, p.B, H), dtype)    # r * hin, the input of U_h
            RH = rh_arr
            p.RH = &RH[0, 0, 0]
    elif not reset_after:
        rhb = np.empty((p.B, H), dtype)
        p.RH = &rhb[0, 0]
    if packing is not None:
        if layer_norm is not None:
            scratch = bufs[6] = workspace("scratch", max(1, packing.n * p.scratch), dtype)
        packed_forward(&p, packing, &scratch[0])
    else:
        with nogil:
            forward_loop(&p, &scratch[0])
    y = forward_output(bufs, return_sequences, mask is not None)
    saved = None
    if training:
        saved = dict(x=np.asarray(x) if bufs[0] is None else bufs[0], z=bufs[1],
                     h_prev=bufs[3], hin=hin_arr, rh=rh_arr, ln=ln_bufs)
    return y, bufs[2], saved


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


cdef void backward_rows(const Bwd *q, int b0, int nb, floating *acc,
                        floating *scratch) noexcept nogil:
    """The backward time loop for batch rows [b0, b0+nb) (scratch [2H]). With recurrent
    dropout, dhp gathers the recurrent share of dh_{t-1} before scaling (else it is dh
    itself); drh [B,H] is work space (reset_after=False). UTp: U^T packed by pack_b
    (reset_after; else U_zr^T, and UTp2 U_h^T), or NULL (UT or U read in place). acc: layer
    norm's accumulator (lnacc)."""
    cdef long T = q.T, H = q.H, ZW = q.ZW, BH = q.B * H, BZ = q.B * ZW
    cdef long rh0 = b0 * H, rz = b0 * ZW
    cdef int G = q.G
    cdef long s, t
    cdef floating *zt
    cdef const floating *U = <const floating *>q.U
    cdef const floating *UT = <const floating *>q.UT
    cdef const floating *DY = <const floating *>q.DY
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if q.rdrop == NULL else <const floating *>q.rdrop + rh0
    cdef floating *pdh = <floating *>q.dh + rh0
    cdef floating *ptg = <floating *>q.dhp + rh0
    cdef floating *pdo = NULL if q.dout == NULL else <floating *>q.dout + rh0
    cdef floating *pdrh = NULL if q.drh == NULL else <floating *>q.drh + rh0
    cdef floating beta_rec = 0 if q.rdrop != NULL else 1
    cdef const floating *dzu
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if q.go_backwards else s
        zt = <floating *>q.Z + t * BZ + rz
        if q.mask != NULL:
            pm = q.mask + t * q.B + b0
        gru_bwd_step(nb, <int>H, q.reset_after, q.act, q.ract, zt,
                 <const floating *>q.HPREV + t * BH + rh0, pm,
                 DY + s * q.dys + b0 * q.dyr if DY != NULL else NULL, q.dyr, pdh, pdo, scratch)
        if floating is float and q.qUT != NULL:
            if q.reset_after:
                step_grad_mixed(nb, <int>H, zt, <int>ZW, q.qUT, <int>beta_rec, ptg)
            else:
                step_grad_mixed(nb, <int>H, zt + 2 * H, <int>ZW, q.qUT2, 0, pdrh)
                gru_bwd_reset(nb, <int>H, q.ract, zt, <const floating *>q.HIN + t * BH + rh0,
                              pdrh, pm, ptg, q.rdrop == NULL, scratch)
                step_grad_mixed(nb, <int>H, zt, <int>ZW, q.qUT, 1, ptg)
        elif q.ln.g != NULL:        # reset_after: d(h U) through LN, over RN's rows
            dzu = ln_step_grad(q, nb, t, b0, zt, ZW, acc)
            step_grad(&q.cfg, nb, <int>H, G, dzu, G, U, G, UT, <const floating *>q.UTp,
                      beta_rec, ptg)
        elif q.reset_after:
            step_grad(&q.cfg, nb, <int>H, G, zt, <int>ZW, U, G, UT,
                      <const floating *>q.UTp, beta_rec,
                      ptg)
        else:
            step_grad(&q.cfg, nb, <int>H, <int>H, zt + 2 * H, <int>ZW, U + 2 * H, G,
                      UT + 2 * H * H if UT != NULL else NULL, <const floating *>q.UTp2,
                      <floating>0, pdrh)
            gru_bwd_reset(nb, <int>H, q.ract, zt, <const floating *>q.HIN + t * BH + rh0, pdrh, pm,
                      ptg, q.rdrop == NULL, scratch)
            step_grad(&q.cfg, nb, <int>H, 2 * <int>H, zt, <int>ZW, U, G, UT,
                      <const floating *>q.UTp,
                      <floating>1, ptg)
        if prd != NULL:       # masked rows of the target are 0: their dh stays
            add_mul(ptg, prd, pdh, nb * H)


cdef void param_grads(const Bwd *q, floating *Z) noexcept nogil:
    """Weight and input gradients: products over all T*B rows, split into column slices
    (weights) and row slices (inputs) over the threads; on our packed GEMM (the input
    gradient then reads W^T) unless BLAS has AVX-512 kernels. On our GEMM the bias gradient
    (column sums of Z's rows) is summed from the packed blocks of the products that pack
    those columns: no pass of its own over dZ. With layer norm: ln_param_grads."""
    if q.ln.g != NULL:
        ln_param_grads(q, Z)
        return
    cdef long TB = q.T * q.B, ci, t
    cdef int I = q.In, H = q.H, G = q.G, ZW = q.ZW
    cdef int ncols = split(&q.cfg, G, 64, <double>TB * (I + H) * G)
    cdef int nrows = split(&q.cfg, TB, 64, <double>TB * I * G)
    cdef bint own = q.own, fold = q.own and q.db != NULL
    cdef const floating *X = <const floating *>q.X
    cdef const floating *Hin = <const floating *>q.HIN
    cdef floating *dW = <floating *>q.dW
    cdef floating *dU = <floating *>q.dU
    cdef floating *psum = <floating *>q.db
    if q.reset_after:
        par_gemm(True, False, I, 2 * H, <int>TB, <floating>1, X, I, Z, ZW, <floating>0, dW, G,
                 ncols, False, own)
        par_gemm(True, False, I, H, <int>TB, <floating>1, X, I, Z + 3 * H, ZW, <floating>0,
                 dW + 2 * H, G, ncols, False, own, psum + 3 * H if fold else NULL)
        par_gemm(True, False, H, G, <int>TB, <floating>1, Hin, H, Z, ZW, <floating>0, dU, G,
                 ncols, False, own, psum if fold else NULL)
    else:
        par_gemm(True, False, I, G, <int>TB, <floating>1, X, I, Z, ZW, <floating>0, dW, G,
                 ncols, False, own, psum if fold else NULL)
        par_gemm(True, False, H, 2 * H, <int>TB, <floating>1, Hin, H, Z, ZW, <floating>0, dU,
                 G, ncols, False, own)
        par_gemm(True, False, H, H, <int>TB, <floating>1, <const floating *>q.RH, H, Z + 2 * H,
                 ZW, <floating>0, dU + 2 * H, G, ncols, False, own)
    if nrows == 1:
        input_grad_rows(0, TB, I, H, ZW, q.reset_after, Z, <const floating *>q.W,
                        <const floating *>q.WTp, <const floating *>q.WTp2, <floating *>q.dX)
    else:
        for ci in prange(nrows, num_threads=nrows, schedule="static"):
            input_grad_rows(ci * TB // nrows, (ci + 1) * TB // nrows - ci * TB // nrows, I, H,
                            ZW, q.reset_after, Z, <const floating *>q.W,
                            <const floating *>q.WTp, <const floating *>q.WTp2, <floating *>q.dX)
    if psum != NULL and not fold:
        gemv(True, <int>TB, ZW, <floating>1, Z, ZW, <const floating *>q.ones, <floating>0, psum)
    if q.idrop != NULL:
        for t in range(q.T):
            merge_rows(q.B, I, NULL, <const floating *>q.idrop, <floating *>q.dX + t * q.B * I,
                       <floating *>q.dX + t * q.B * I)


def backward(const floating[:, :, ::1] x, floating[:, :, ::1] z, const floating[:, :, ::1] h_prev,
             const floating[:, :, ::1] hin, const floating[:, :, ::1] rh,
             const floating[:, ::1] kernel, const floating[:, ::1] recurrent_kernel,
             const unsigned char[:, ::1] mask, const floating[:, ::1] input_dropout_mask,
             const floating[:, ::1] recurrent_dropout_mask, activation, recurrent_activation,
             bint reset_after, bint go_backwards, bint return_sequences, bint has_bias, dy, dh_T,
             dx_into=None, settings=None, Packed packing=None, mixed=None, ln_saved=None):
    """BPTT for `forward`. x, z, h_prev, hin (None without recurrent dropout), rh (None with
    reset_after) are what forward saved; z is overwritten with the gate gradients. dy:
    [T,B,H] (return_sequences; last axis contiguous, the others any strides) or [B,H] or
    None; dh_T: [B,H] or None, all of this dtype and, but for dy's, C-contiguous. dx_into:
    x itself when forward's x was a copy nothing else holds (grad_buffers.dx_buffer).
    packing: as _lstm.backward's.
    mixed: for mixed_bfloat16 training, U^T in bf16 QuantizedMatrix blocks: [U^T]
    (reset_after) or [U_zr^T, U_h^T]; as in _lstm.backward, dZ is then left in z and the
    weight, input and bias gradients unwritten.

    ln_saved: saved["ln"] of a forward with layer_norm.

    Returns (dx, dh0, dkernel, drecurrent_kernel, dbias|None); dbias is [2,3H] with
    reset_after, else [3H]; with ln_saved a sixth, dgamma [2,3H].
    """
    cdef Bwd q
    read_settings(&q.cfg, settings)
    cdef MatsBinding mb = None if mixed is None else MatsBinding(mixed)
    cdef int H = recurrent_kernel.shape[0], G = recurrent_kernel.shape[1]
    dtype = np.float32 if floating is float else np.float64
    if recurrent_dropout_mask is not None and hin is None:
        raise ValueError("hin: required with a recurrent dropout mask")
    if not reset_after and rh is None:
        raise ValueError("rh: required with reset_after=False")
    q.ZW = 4 * H if reset_after else G
    q.coupled, q.reset_after = False, reset_after
    # With recurrent dropout the recurrent share of dh_{t-1} is formed apart, then scaled.
    cdef const floating[:, :, ::1] hs = h_prev     # the input of U: h_{t-1} (* dropout)
    if recurrent_dropout_mask is not None:
        hs = hin
    bufs = backward_setup(&q, x, z, hs, kernel, recurrent_kernel,
                          mask, input_dropout_mask, recurrent_dropout_mask, activation,
                          recurrent_activation, go_backwards, return_sequences, has_bias, dy,
                          dh_T, dx_into, recurrent_dropout_mask is not None, 2 * H,
                          0 if ln_saved is None else G,
                          2 * H if reset_after and ln_saved is None else 0,
                          0 if reset_after else 2 * H, mb)
    lnpart = ln_bind(&q, ln_saved, 0, dtype)
    cdef floating[::1] scratch = bufs[7], part = bufs[6]
    cdef floating[:, ::1] drh
    q.HPREV = <void *>&h_prev[0, 0, 0]
    if not reset_after:
        q.RH = <void *>&rh[0, 0, 0]
        drh = np.empty((q.B, H), dtype)
        q.drh = &drh[0, 0]
    if packing is not None:
        scratch = bufs[7] = workspace("scratch", max(1, packing.n * q.scratch), dtype)
        if part is not None:
            part = bufs[6] = np.zeros(packing.n * q.acc, dtype)
        packed_backward(&q, packing, &part[0] if part is not None else NULL, &scratch[0])
    else:
        with nogil:
            backward_loop(&q, &part[0] if part is not None else NULL, &scratch[0])
    dg0 = None if ln_saved is None else ln_gains(lnpart, G, q.ZW, bufs[4])
    colsum = bufs[4]
    db = colsum
    if colsum is not None and reset_after and mixed is None:
        db = np.empty((2, G), dtype)
        db[0, :2 * H] = colsum[:2 * H]
        db[0, 2 * H:] = colsum[3 * H:]
        db[1] = colsum[:3 * H]
    if ln_saved is not None:
        return bufs[0], bufs[1], bufs[2], bufs[3], db, np.stack([dg0, accumulated(bufs)])
    return bufs[0], bufs[1], bufs[2], bufs[3], db
