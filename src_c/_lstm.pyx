# LSTM forward and BPTT over whole sequences, GIL released (plain, peephole, CIFG).
#
# Shapes use the notation of fastlstm/backends/oracle/__init__.py. The callers
# (fastlstm/backends/cpu_ops.py) pass C-contiguous arrays of one dtype whose shapes
# they have checked (but for dy, and x at inference, whose rows may lie apart: a view of
# [B,T,·]); nothing here allocates per timestep.
#
# Forward:  Z = X W + b for all T*B rows (one GEMM); per step Z[t] += h U (GEMM, GEMV at
#           B=1), then one fused elementwise pass turns Z[t] into gates and updates h, c.
# Backward: per step the elementwise pass writes dZ[t] over the saved gates and dh_{t-1} =
#           dZ[t] U^T; then dW = X^T dZ, dU = Hin^T dZ, dX = dZ W^T over all T*B rows.
import numpy as np

from fastlstm.backends.grad_buffers import (dx_buffer, row_strides, state_grads,
                                            states_and_outputs)
# Kept here too: the workspace's functions were this module's (benchmarks call them so).
from fastlstm.backends.workspace import clear_workspace, workspace, workspace_bytes

from cython.parallel cimport parallel, prange
from libc.string cimport memcpy
from blas cimport floating
from products cimport (Settings, load_settings, chunk_rows, pack_projection, pipelined,
                       pipe_rows, project_rows as dense_rows, recurrent_input, row_chunks, split,
                       step_grad, step_product, weight_and_input_grads, forward_u, backward_u,
                       U_IN_PLACE, U_PACKED, U_PANELS, U_TRANSPOSED)
from gates cimport (fl_act, make_act, merge_rows, pack_b, pack_panels, matmul_packed_acc,
                    fl_barrier, fl_barrier_wait, fl_team_size, fl_thread_num, fl_publish,
                    fl_await, fl_force_isa_level, fl_isa_level, lstm_fwd_step,
                    lstm_bwd_step)
from sequence cimport Fwd, Bwd

include "kernel_settings.pxi"
include "driver.pxi"


# One-row inference splits the units over the threads from s.cols_min_bytes of U: then each
# core's share stays in its own L2 where the whole U streams from L3 on one core
# (bench/RESULTS.md, "Kernel thresholds").
from fastlstm.threads import set_cols_min_bytes


cdef inline void project_rows(const Fwd *p, long r0, long nr, floating *Z) noexcept nogil:
    """Rows [r0, r0+nr) of the chunk's Z = X W + b."""
    if floating is float:
        if p.qW != NULL:
            qproduct(<int>nr, <const float *>p.X + r0 * p.In, p.In, p.qW,
                     <const float *>p.bias, 0, Z + r0 * p.G, p.G)
            return
    dense_rows(&p.cfg, r0, nr, p.In, p.G, <const floating *>p.X, <const floating *>p.W,
               <const floating *>p.Wp, <const floating *>p.bias if p.ln.g == NULL else NULL, Z)
    if p.ln.g != NULL:
        ln_project(p, r0, nr, Z, p.G)


cdef void forward_rows(const Fwd *p, int b0, int nb, long s0, long s1,
                       floating *scratch) noexcept nogil:
    """Steps [s0, s1) of the forward time loop for batch rows [b0, b0+nb) (scratch [H], and
    [nb,G] after it with layer norm at inference: the step's h U, ln_step_product). Z
    holds the input projection of times zt0, zt0+1, ... and becomes the gates; HIN, C are
    saved when training (a call from a later step resumes from the saved C of the step
    before); returning the sequence without a mask, each step writes its h straight into Y
    and the next step reads it there (no copy per step); h gets the last one at the end."""
    cdef long T = p.T, H = p.H, G = p.G, BH = p.B * H, BG = p.B * G
    cdef long rh = b0 * H, rg = b0 * G, nbh = nb * H
    cdef long s, t
    cdef floating *Z = <floating *>p.Z
    cdef floating *HIN = <floating *>p.HIN
    cdef floating *C = <floating *>p.C
    cdef floating *Y = <floating *>p.Y
    cdef floating *hd = <floating *>p.hd
    cdef floating *CN = <floating *>p.ln.CN
    cdef floating *CS = <floating *>p.ln.CS
    cdef floating *ph = <floating *>p.h + rh
    cdef floating *pc = <floating *>p.c + rh
    cdef floating *pc_out
    cdef const floating *hin
    cdef floating *po
    cdef floating *po_prev
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if p.rdrop == NULL else <const floating *>p.rdrop + rh
    cdef bint ydirect = p.return_sequences and p.mask == NULL
    cdef floating *ph_out = ph
    if p.training and s0 > 0:
        pc = C + ((T - s0) if p.go_backwards else (s0 - 1)) * BH + rh
    if ydirect and s0 > 0:
        ph = Y + (s0 - 1) * BH + rh
    for s in range(s0, s1):
        t = T - 1 - s if p.go_backwards else s
        hin = recurrent_input(p.training, ph, prd, HIN + t * BH + rh if p.training else NULL,
                              hd + rh if hd != NULL else NULL, nbh)
        if floating is float and p.qU != NULL:
            step_qproduct(p, nb, hin, p.qU, Z + (t - p.zt0) * BG + rg, G)
        elif p.ln.g != NULL:
            ln_step_product(p, nb, t, b0, hin, Z + (t - p.zt0) * BG + rg, G, scratch + H)
        else:
            step_product(&p.cfg, nb, <int>H, <int>G, hin, <const floating *>p.U, <int>G,
                         <const floating *>p.Up, <const floating *>p.Upan,
                         Z + (t - p.zt0) * BG + rg, <int>G)
        pc_out = C + t * BH + rh if p.training else pc
        po = po_prev = NULL
        if p.mask != NULL:
            pm = p.mask + t * p.B + b0
            if p.return_sequences:
                po = Y + s * BH + rh
                po_prev = Y + (s - 1) * BH + rh if s > 0 else NULL
            else:
                po = po_prev = <floating *>p.out + rh
        if ydirect:
            ph_out = Y + s * BH + rh
        lstm_fwd_step(nb, <int>H, p.coupled, p.act, p.ract, Z + (t - p.zt0) * BG + rg,
                 <const floating *>p.P, pm, ph, pc, ph_out, pc_out, po_prev, po, scratch,
                 <const floating *>p.ln.h, CN + t * BH + rh if CN != NULL else NULL,
                 CS + t * p.B + b0 if CS != NULL else NULL)
        ph = ph_out
        pc = pc_out
    if ydirect and s1 > s0:
        memcpy(<floating *>p.h + rh, ph, nbh * sizeof(floating))


cdef inline long cols_stride(int H, int ng, int n, bint panels) noexcept nogil:
    """Work space of one thread of forward_cols in a team of n (w <= H // n + 31 units); its
    packed part of U only with panels (float weights)."""
    return (<long>(ng * H if panels else 0) + ng + 4) * (H // n + 32)


cdef inline long cols_work(int H, int ng, int nt, bint panels) noexcept nogil:
    """Work space of forward_cols for a team of up to nt <= 32 threads: n * cols_stride(n)
    stays below it for every n <= nt."""
    return nt * cols_stride(H, ng, nt, panels)


cdef void forward_cols(const Fwd *p, long s0, long s1, floating *unused) noexcept nogil:
    """Steps [s0, s1) of a one-row forward time loop (inference), run by every thread of a
    parallel region on its own share of the units: the gate columns of those units (ng
    blocks of U) packed into its work space, so each core reads only its part of U, from its
    own cache. The threads meet once per step, after writing their part of h. hbuf [2,H]
    holds the state h, double-buffered (step s reads row s % 2, writes the other), unless Y
    takes the outputs (return_sequences without mask: step s reads Y[s-1] and writes Y[s]);
    work: cols_work(H, ng, nt) elements for a team of up to nt threads. Quantized (qU): no
    packed copy; each thread's product writes its columns of Z's row (16-column aligned:
    H a multiple of 16) and reads them from there."""
    cdef int H = p.H, G = p.G, ng = p.G // p.H
    cdef bint quant = False
    if floating is float:
        quant = p.qU != NULL
    cdef int n = fl_team_size(), k = fl_thread_num(), sense = 0, g
    cdef int j0 = (k * (H // 16) // n) * 16          # units [j0, j1), whole vectors
    cdef int j1 = H if k == n - 1 else ((k + 1) * (H // 16) // n) * 16
    cdef int w = j1 - j0
    cdef long s, t
    cdef const floating *Z = <const floating *>p.Z
    cdef const floating *U = <const floating *>p.U
    cdef const floating *P = <const floating *>p.P
    cdef floating *Y = <floating *>p.Y
    cdef floating *hbuf = <floating *>p.hbuf
    cdef floating *c = <floating *>p.c
    cdef floating *work = <floating *>p.work + k * cols_stride(H, ng, n, not quant)
    cdef floating *Up = work                          # ng blocks [H, w], panels
    cdef floating *z = work + (0 if quant else <long>ng * H * w)     # [ng * w]
    cdef floating *zrow
    cdef floating *peep = z + ng * w                  # [3, w]
    cdef floating *scratch = peep + 3 * w             # [w]
    cdef const floating *pp = NULL
    cdef const floating *hin
    cdef floating *hout
    cdef floating *po
    cdef floating *po_prev
    cdef const unsigned char *pm = NULL
    cdef bint ydirect = p.return_sequences and p.mask == NULL
    if w > 0 and not quant:
        for g in range(ng):
            pack_panels(H, w, U + g * H + j0, G, Up + <long>g * H * w)
    if w > 0:
        if P != NULL:
            for g in range(3):
                memcpy(peep + g * w, P + g * H + j0, w * sizeof(floating))
            pp = peep
    for s in range(s0, s1):
        t = p.T - 1 - s if p.go_backwards else s
        if ydirect:
            hin = hbuf if s == 0 else Y + (s - 1) * H
            hout = Y + s * H
        else:
            hin = hbuf + (s % 2) * H
            hout = hbuf + ((s + 1) % 2) * H
        if w > 0:
            zrow = <floating *>Z + (t - p.zt0) * G
            for g in range(ng):
                if floating is float:
                    if quant:
                        fl_q_gemm(1, hin, H, p.qU, g * H + j0, g * H + j1, NULL, 1, zrow, G)
                memcpy(z + g * w, zrow + g * H + j0, w * sizeof(floating))
                if not quant:
                    matmul_packed_acc(1, w, H, hin, H, Up + <long>g * H * w, z + g * w, w)
            po = po_prev = NULL
            if p.mask != NULL:
                pm = p.mask + t
                if p.return_sequences:
                    po = Y + s * H + j0
                    po_prev = Y + (s - 1) * H + j0 if s > 0 else NULL
                else:
                    po = po_prev = <floating *>p.out + j0
            lstm_fwd_step(1, w, p.coupled, p.act, p.ract, z, pp, pm, hin + j0, c + j0, hout + j0,
                     c + j0, po_prev, po, scratch, NULL, NULL, NULL)
        fl_barrier_wait(p.bar, n, &sense)


cdef int q_cols_threads(const Settings *s, bint one_row_inference, int H, QuantBinding qb):
    """cols_threads for quantized weights: from s.q_cols_min_bytes of U, H a multiple of 16
    (the products' column blocks), at least 16 units a thread."""
    cdef int ncols = 0
    if (one_row_inference and s.policy != 1 and H % 16 == 0
            and qbytes(&qb.mats[2]) >= s.q_cols_min_bytes):
        ncols = min(s.threads, 8, H // 16)
    return ncols if ncols >= 2 else 0


cdef int cols_threads(const Settings *s, bint one_row_inference, int H, int G, int itemsize):
    """Threads of a one-row inference (without recurrent dropout) split over the units
    (forward_cols), or 0: from s.cols_min_bytes of U, in shares of whole panels of the
    packed product (a narrower remainder runs a slow loop there)."""
    cdef int ncols = 0, panel = 256 // itemsize
    if one_row_inference and s.policy != 1 and <long>H * G * itemsize >= s.cols_min_bytes:
        ncols = min(s.threads, 8)
        while ncols >= 2 and H % (panel * ncols) != 0:
            ncols -= 1
    return ncols if ncols >= 2 else 0


def forward(const floating[:, :, :] x, const floating[:, ::1] kernel,
            const floating[:, ::1] recurrent_kernel, const floating[::1] bias,
            const floating[:, ::1] h0, const floating[:, ::1] c0, const floating[:, ::1] peephole,
            const unsigned char[:, ::1] mask, const floating[:, ::1] input_dropout_mask,
            const floating[:, ::1] recurrent_dropout_mask, activation, recurrent_activation,
            bint coupled, bint go_backwards, bint return_sequences, bint training, settings=None,
            quant=None, Packed packing=None, layer_norm=None):
    """x [T,B,I], kernel [I,G], recurrent_kernel [H,G], bias [G]|None, h0, c0 [B,H],
    peephole [3,H]|None, mask [T,B] uint8|None, input_dropout_mask [B,I]|None,
    recurrent_dropout_mask [B,H]|None.

    Returns (y, h_T, c_T, saved): y is [T,B,H] by step when return_sequences, else [B,H];
    saved is None unless training, then a dict of what backward needs.

    packing (packed.pxi): x is then the packed rows [1,N,I] (times any input dropout mask;
    mask and input_dropout_mask None), h0, c0 and the recurrent dropout mask in the sorted
    batch order, and y the packed outputs [1,N,H] (by time) or h_T.

    layer_norm: (gamma [2,G], [gamma_h; beta_h] [2,H]) (layer_norm.pxi; float weights), or
    None; then saved["ln"] holds what backward takes as ln_saved.
    """
    cdef Fwd p
    read_settings(&p.cfg, settings)
    cdef QuantBinding qb = None if quant is None else QuantBinding(quant[0], quant[1], 0, 0)
    cdef int H, G
    H, G = weight_dims(recurrent_kernel, qb)
    dtype = np.float32 if floating is float else np.float64
    p.ZW, p.wsplit, p.usplit, p.pipeline = G, 0, 0, True
    p.coupled, p.reset_after = coupled, False
    one_row = (x.shape[1] == 1 and not training and recurrent_dropout_mask is None
               and packing is None)
    if packing is not None:
        p.pipeline = False
    p.ncols = (q_cols_threads(&p.cfg, one_row, H, qb) if qb is not None
               else cols_threads(&p.cfg, one_row, H, G, sizeof(floating)))
    cdef const floating[:, ::1] ln_g = None, ln_h = None
    cdef long scratch_n = H
    if layer_norm is not None:
        ln_g, ln_h = layer_norm
        p.ncols = 0             # LN's row statistics need the whole row on one thread
        scratch_n = H + ln_rows(&p.cfg, x.shape[0], <int>x.shape[1], H, G,
                                packing.widest if packing is not None else 0) * G
    # HIN: (h_{t-1} * recurrent dropout) as used by U; without dropout and mask, forward in
    # time, it shares its buffer with Y (and the steps read h there: no copy).
    bufs = forward_setup(&p, x, kernel, recurrent_kernel, bias, h0, mask, input_dropout_mask,
                         recurrent_dropout_mask, activation, recurrent_activation,
                         go_backwards, return_sequences, training, "z",
                         not (mask is not None or recurrent_dropout_mask is not None
                              or go_backwards or packing is not None), scratch_n, qb)
    ln_bufs = ln_setup(&p, ln_g, ln_h, p.T * p.B, True)
    cdef floating[::1] scratch = bufs[6]
    if packing is not None:
        scratch = bufs[6] = workspace("scratch", max(1, packing.n * p.scratch), dtype)
    c_first = np.array(c0, dtype=dtype, copy=True)
    cdef floating[:, ::1] cf = c_first
    cdef floating[:, :, ::1] C
    p.c = &cf[0, 0]
    cst_arr = None
    if training:
        cst_arr = np.empty((p.T, p.B, H), dtype)     # c state after step t
        C = cst_arr
        p.C = &C[0, 0, 0]
    p.P = NULL if peephole is None else <void *>&peephole[0, 0]
    cdef floating[::1] cwork
    cdef floating[:, ::1] hbuf
    cdef unsigned char[::1] bar_mem
    if p.ncols:             # each thread packs its part of U (forward_cols)
        cwork = workspace("u", cols_work(H, G // H, p.ncols, qb is None), dtype)
        hbuf_arr = np.empty((2, H), dtype)
        hbuf_arr[0] = bufs[2][0]
        hbuf = hbuf_arr
        bar_arr = np.zeros(sizeof(fl_barrier) + 64, np.uint8)
        bar_mem = bar_arr
        p.work, p.hbuf = &cwork[0], &hbuf[0, 0]
        p.bar = <fl_barrier *>(&bar_mem[0] + (64 - (<size_t>&bar_mem[0]) % 64))
    if packing is not None:
        packed_forward(&p, packing, &scratch[0])
        c_last = c_first
        y = forward_output(bufs, return_sequences, False)
        saved = None
        if training:
            saved = dict(x=np.asarray(x), z=bufs[1], c=cst_arr, hin=bufs[3],
                         c0=np.asarray(c0), ln=ln_bufs)
        return y, bufs[2], c_last, saved
    with nogil:
        forward_loop(&p, &scratch[0])
        if p.ncols:     # the final h: the last output written, or the buffer row of step T
            memcpy(p.h, <floating *>p.Y + (p.T - 1) * H if (return_sequences and mask is None)
                   else &hbuf[p.T % 2, 0], H * sizeof(floating))

    # The final cell state: the last step's saved state (masked rows copied theirs in).
    c_last = cst_arr[0 if go_backwards else p.T - 1].copy() if training else c_first
    y = forward_output(bufs, return_sequences, mask is not None)
    saved = None
    if training:
        saved = dict(x=np.asarray(x) if bufs[0] is None else bufs[0], z=bufs[1], c=cst_arr,
                     hin=bufs[3], c0=np.asarray(c0), ln=ln_bufs)
    return y, bufs[2], c_last, saved


cdef void backward_rows(const Bwd *q, int b0, int nb, floating *acc,
                        floating *scratch) noexcept nogil:
    """The backward time loop for batch rows [b0, b0+nb) (scratch [5H]); acc: the thread's
    accumulator, the peepholes' [3,H] gradient first (if any), then layer norm's (lnacc)."""
    cdef long T = q.T, H = q.H, G = q.G, BH = q.B * H, BG = q.B * G
    cdef long rh = b0 * H, rg = b0 * G
    cdef long s, t, tp
    cdef floating *Z = <floating *>q.Z
    cdef const floating *C = <const floating *>q.C
    cdef const floating *DY = <const floating *>q.DY
    cdef const floating *pcp
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if q.rdrop == NULL else <const floating *>q.rdrop + rh
    cdef floating *pout = NULL if q.dout == NULL else <floating *>q.dout + rh
    cdef floating *dh = <floating *>q.dh + rh
    cdef floating *dhp = <floating *>q.dhp + rh
    cdef floating *dpeep = acc if q.P != NULL else NULL
    cdef const floating *CN = <const floating *>q.ln.CN
    cdef const floating *CS = <const floating *>q.ln.CS
    cdef const floating *dzu
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if q.go_backwards else s
        tp = t + 1 if q.go_backwards else t - 1
        pcp = C + tp * BH + rh if s > 0 else <const floating *>q.c0 + rh
        if q.mask != NULL:
            pm = q.mask + t * q.B + b0
        lstm_bwd_step(nb, <int>H, q.coupled, q.act, q.ract, Z + t * BG + rg, C + t * BH + rh, pcp,
                 <const floating *>q.P, pm, DY + s * q.dys + b0 * q.dyr if DY != NULL else NULL,
                 q.dyr, dh, <floating *>q.dc + rh, pout, dpeep, scratch,
                 <const floating *>q.ln.h, CN + t * BH + rh if CN != NULL else NULL,
                 CS + t * q.B + b0 if CS != NULL else NULL,
                 acc + q.lnacc + G if q.ln.h != NULL else NULL)
        dzu = Z + t * BG + rg
        if q.ln.g != NULL:
            dzu = ln_step_grad(q, nb, t, b0, dzu, G, acc)
        if floating is float and q.qUT != NULL:
            step_grad_mixed(nb, <int>H, Z + t * BG + rg, <int>G, q.qUT, 0, dhp)
        else:
            step_grad(&q.cfg, nb, <int>H, <int>G, dzu, <int>G,
                      <const floating *>q.U, <int>G,
                      <const floating *>q.UT, <const floating *>q.UTp, <floating>0, dhp)
        if q.mask != NULL or q.rdrop != NULL:
            merge_rows(nb, <int>H, pm, prd, dhp, dh)


cdef inline void param_grads(const Bwd *q, floating *Z) noexcept nogil:
    if q.ln.g != NULL:
        ln_param_grads(q, Z)
    else:
        dense_param_grads(q, Z)


def backward(const floating[:, :, ::1] x, floating[:, :, ::1] z, const floating[:, :, ::1] c,
             const floating[:, :, ::1] hin, const floating[:, ::1] c0,
             const floating[:, ::1] kernel, const floating[:, ::1] recurrent_kernel,
             const floating[:, ::1] peephole, const unsigned char[:, ::1] mask,
             const floating[:, ::1] input_dropout_mask,
             const floating[:, ::1] recurrent_dropout_mask, activation, recurrent_activation,
             bint coupled, bint go_backwards, bint return_sequences, bint has_bias, dy, dh_T, dc_T,
             dx_into=None, settings=None, Packed packing=None, mixed=None, ln_saved=None):
    """BPTT for `forward`. x, z, c, hin, c0 are what forward saved (z is overwritten with
    the gate gradients). dy: [T,B,H] (return_sequences; its last axis contiguous, the others
    any strides, such as a transposed view of [B,T,H]) or [B,H] or None; dh_T, dc_T: [B,H]
    or None, all of this dtype and, but for dy's, C-contiguous. dx_into: x itself when
    forward's x was a copy nothing else holds (grad_buffers.dx_buffer), else None.
    packing: as forward's (dy then the packed [1,N,H] or None, dh_T given, sorted).

    mixed: [U^T as a bf16 QuantizedMatrix] for mixed_bfloat16 training: then dh_{t-1} =
    bf16(dz) bf16(U^T) per step, and dx, dkernel, drecurrent_kernel, dbias are left
    unwritten, z holding dZ for the caller's bf16 products.

    ln_saved: saved["ln"] of a forward with layer_norm (then z's rows and the saved LN(.)
    rows are overwritten too).

    Returns (dx, dh0, dc0, dkernel, drecurrent_kernel, dbias|None, dpeephole|None), and with
    ln_saved an eighth: (dgamma [2,G], dgamma_h [H], dbeta_h [H]).
    """
    cdef Bwd q
    read_settings(&q.cfg, settings)
    cdef MatsBinding mb = None if mixed is None else MatsBinding(mixed)
    cdef int H = recurrent_kernel.shape[0]
    dtype = np.float32 if floating is float else np.float64
    q.ZW = recurrent_kernel.shape[1]
    q.coupled, q.reset_after = coupled, False
    cdef long npeep = 3 * H if peephole is not None else 0
    bufs = backward_setup(&q, x, z, hin, kernel, recurrent_kernel, mask, input_dropout_mask,
                          recurrent_dropout_mask, activation, recurrent_activation,
                          go_backwards, return_sequences, has_bias, dy, dh_T, dx_into,
                          mask is not None or recurrent_dropout_mask is not None, 5 * H,
                          npeep + (q.ZW + 2 * H if ln_saved is not None else 0), 0, 0,
                          mb)
    lnpart = ln_bind(&q, ln_saved, npeep, dtype)
    dc_arr = (np.zeros((q.B, H), dtype) if dc_T is None
              else np.array(dc_T, dtype=dtype, copy=True))
    cdef floating[:, ::1] dc = dc_arr
    cdef floating[::1] scratch = bufs[7], part = bufs[6]
    q.C, q.c0, q.dc = &c[0, 0, 0], <void *>&c0[0, 0], &dc[0, 0]
    q.P = NULL if peephole is None else <void *>&peephole[0, 0]
    if packing is not None:
        scratch = bufs[7] = workspace("scratch", max(1, packing.n * q.scratch), dtype)
        if part is not None:
            part = bufs[6] = np.zeros(packing.n * q.acc, dtype)
        packed_backward(&q, packing, &part[0] if part is not None else NULL, &scratch[0])
    else:
        with nogil:
            backward_loop(&q, &part[0] if part is not None else NULL, &scratch[0])
    acc = accumulated(bufs)
    dpeep = None if peephole is None else acc[:3 * H].reshape(3, H)
    out = (bufs[0], bufs[1], dc_arr, bufs[2], bufs[3], bufs[4], dpeep)
    if ln_saved is None:
        return out
    G = q.ZW
    dg0 = ln_gains(lnpart, G, G, bufs[4])
    a = acc[npeep:]
    return out + ((np.stack([dg0, a[:G]]), a[G:G + H].copy(), a[G + H:].copy()),)
