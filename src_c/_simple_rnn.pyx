# SimpleRNN forward and BPTT over whole sequences, GIL released (Keras 3 SimpleRNNCell).
#
# Shapes use the notation of fastlstm/backends/oracle/__init__.py, equations those of
# fastlstm/backends/oracle/simple_rnn.py. The callers (fastlstm/backends/cpu_ops.py) pass
# C-contiguous arrays of one dtype whose shapes they have checked (dy's rows, and x's at
# inference, may lie apart), with B, I, H >= 1; nothing here allocates per timestep. The
# products and the threads are the LSTM's (src_c/_lstm.pyx) with G = H and one elementwise
# pass a step.
#
# Forward:  Z = X W + b for all T*B rows (one GEMM); per step Z[t] += hin U (GEMM, GEMV at
#           B=1), then one pass Z[t] := a(Z[t]) that also updates h (and the masked output).
# Backward: per step one pass writes dZ[t] over the saved activations and dh_{t-1} =
#           dZ[t] U^T; then dW = X^T dZ, dU = Hin^T dZ, dX = dZ W^T over all T*B rows.
import numpy as np

from fastlstm.backends.grad_buffers import (dx_buffer, row_strides, state_grads,
                                            states_and_outputs)

from cython.parallel cimport parallel, prange
from libc.string cimport memcpy
from blas cimport floating
from products cimport (Settings, load_settings, chunk_rows, pack_projection, pipelined,
                       pipe_rows, project_rows as dense_rows, recurrent_input, row_chunks, split,
                       step_grad, step_product, weight_and_input_grads, forward_u, backward_u,
                       U_IN_PLACE, U_PACKED, U_PANELS, U_TRANSPOSED)
from gates cimport (fl_act, make_act, merge_rows, pack_b, pack_panels, fl_team_size,
                    fl_thread_num, fl_publish, fl_await, fl_force_isa_level, fl_isa_level,
                    rnn_fwd_step, rnn_bwd_step)
from sequence cimport Fwd, Bwd

include "kernel_settings.pxi"
include "driver.pxi"


cdef inline void project_rows(const Fwd *p, long r0, long nr, floating *Z) noexcept nogil:
    """Rows [r0, r0+nr) of the chunk's Z = X W + b."""
    if floating is float:
        if p.qW != NULL:
            qproduct(<int>nr, <const float *>p.X + r0 * p.In, p.In, p.qW,
                     <const float *>p.bias, 0, Z + r0 * p.H, p.H)
            return
    dense_rows(&p.cfg, r0, nr, p.In, p.H, <const floating *>p.X, <const floating *>p.W,
               <const floating *>p.Wp, <const floating *>p.bias if p.ln.g == NULL else NULL, Z)
    if p.ln.g != NULL:
        ln_project(p, r0, nr, Z, p.H)


cdef void forward_rows(const Fwd *p, int b0, int nb, long s0, long s1,
                       floating *scratch) noexcept nogil:
    """Steps [s0, s1) of the forward time loop for batch rows [b0, b0+nb). Z holds the input
    projection of times zt0, zt0+1, ... ([*,B,H]) and becomes the activations; HIN (h_{t-1}
    * recurrent dropout, as U sees it) is saved when training. Returning the sequence
    without a mask, each step writes its h straight into Y and the next step reads it there
    (no copy per step; nor into HIN when Y is its buffer too); h gets the last one at the
    end. scratch: [nb,H] for h U with layer norm at inference (ln_step_product)."""
    cdef long T = p.T, H = p.H, BH = p.B * H, rh = b0 * H, nbh = nb * H
    cdef long s, t
    cdef floating *HIN = <floating *>p.HIN
    cdef floating *Y = <floating *>p.Y
    cdef floating *hd = <floating *>p.hd
    cdef floating *ph = <floating *>p.h + rh
    cdef const floating *hin
    cdef floating *zt
    cdef floating *po
    cdef floating *po_prev
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if p.rdrop == NULL else <const floating *>p.rdrop + rh
    cdef bint ydirect = p.return_sequences and p.mask == NULL
    cdef floating *ph_out = ph
    if ydirect and s0 > 0:
        ph = Y + (s0 - 1) * BH + rh
    for s in range(s0, s1):
        t = T - 1 - s if p.go_backwards else s
        hin = recurrent_input(p.training, ph, prd, HIN + t * BH + rh if p.training else NULL,
                              hd + rh if hd != NULL else NULL, nbh)
        zt = <floating *>p.Z + (t - p.zt0) * BH + rh
        if floating is float and p.qU != NULL:
            step_qproduct(p, nb, hin, p.qU, zt, H)
        elif p.ln.g != NULL:
            ln_step_product(p, nb, t, b0, hin, zt, H, scratch)
        else:
            step_product(&p.cfg, nb, <int>H, <int>H, hin, <const floating *>p.U, <int>H,
                         <const floating *>p.Up, <const floating *>p.Upan, zt, <int>H)
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
        rnn_fwd_step(nb, <int>H, p.act, zt, pm, ph, ph_out, po_prev, po)
        ph = ph_out
    if ydirect and s1 > s0:
        memcpy(<floating *>p.h + rh, ph, nbh * sizeof(floating))


cdef inline void forward_cols(const Fwd *p, long s0, long s1, floating *unused) noexcept nogil:
    """No split over the units here (p.ncols stays 0)."""
    pass


def forward(const floating[:, :, :] x, const floating[:, ::1] kernel,
            const floating[:, ::1] recurrent_kernel, const floating[::1] bias,
            const floating[:, ::1] h0, const unsigned char[:, ::1] mask,
            const floating[:, ::1] input_dropout_mask,
            const floating[:, ::1] recurrent_dropout_mask, activation, bint go_backwards,
            bint return_sequences, bint training, settings=None, quant=None,
            Packed packing=None, const floating[:, ::1] layer_norm=None):
    """x [T,B,I], kernel [I,H], recurrent_kernel [H,H], bias [H]|None, h0 [B,H],
    mask [T,B] uint8|None, input_dropout_mask [B,I]|None, recurrent_dropout_mask [B,H]|None.

    Returns (y, h_T, saved): y is [T,B,H] by step when return_sequences, else [B,H]; saved is
    None unless training, then a dict of what backward needs. packing: as _lstm.forward's.
    layer_norm: gamma [2,H] (layer_norm.pxi) or None.
    """
    cdef Fwd p
    read_settings(&p.cfg, settings)
    # The projection is not pipelined here (one product a step leaves less to hide).
    cdef QuantBinding qb = None if quant is None else QuantBinding(quant[0], quant[1], 0, 0)
    cdef int H, G
    H, G = weight_dims(recurrent_kernel, qb)
    p.ZW, p.wsplit, p.usplit, p.pipeline, p.ncols = H, 0, 0, False, 0
    p.coupled, p.reset_after = False, False
    # HIN: (h_{t-1} * recurrent dropout) as used by U; without dropout and mask, forward in
    # time, it shares its buffer with Y.
    bufs = forward_setup(&p, x, kernel, recurrent_kernel, bias, h0, mask, input_dropout_mask,
                         recurrent_dropout_mask, activation, None, go_backwards,
                         return_sequences, training, "rnn_z",
                         not (mask is not None or recurrent_dropout_mask is not None
                              or go_backwards or packing is not None),
                         0 if layer_norm is None else
                         ln_rows(&p.cfg, x.shape[0], <int>x.shape[1], H, H,
                                 packing.widest if packing is not None else 0) * H, qb)
    cdef const floating[:, ::1] no_gains = None
    ln_bufs = ln_setup(&p, layer_norm, no_gains, p.T * p.B, False)
    cdef floating[::1] scratch = bufs[6]
    if packing is not None:
        if layer_norm is not None:
            scratch = bufs[6] = workspace("scratch", max(1, packing.n * p.scratch),
                                          np.float32 if floating is float else np.float64)
        packed_forward(&p, packing, &scratch[0])
    else:
        with nogil:
            forward_loop(&p, &scratch[0])
    y = forward_output(bufs, return_sequences, mask is not None)
    saved = None
    if training:
        saved = dict(x=np.asarray(x) if bufs[0] is None else bufs[0], z=bufs[1], hin=bufs[3],
                     ln=ln_bufs)
    return y, bufs[2], saved


cdef void backward_rows(const Bwd *q, int b0, int nb, floating *acc,
                        floating *scratch) noexcept nogil:
    """The backward time loop for batch rows [b0, b0+nb) (scratch [H]): Z [T,B,H]
    activations in, pre-activation gradients out; acc: layer norm's accumulator (lnacc)."""
    cdef long T = q.T, H = q.H, BH = q.B * H, rh = b0 * H
    cdef long s, t
    cdef floating *zt
    cdef const floating *DY = <const floating *>q.DY
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if q.rdrop == NULL else <const floating *>q.rdrop + rh
    cdef floating *pout = NULL if q.dout == NULL else <floating *>q.dout + rh
    cdef floating *dh = <floating *>q.dh + rh
    cdef floating *dhp = <floating *>q.dhp + rh
    cdef const floating *dzu
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if q.go_backwards else s
        zt = <floating *>q.Z + t * BH + rh
        if q.mask != NULL:
            pm = q.mask + t * q.B + b0
        rnn_bwd_step(nb, <int>H, q.act, zt, pm, DY + s * q.dys + b0 * q.dyr if DY != NULL else NULL,
                 q.dyr, dh, pout, scratch)
        dzu = zt
        if q.ln.g != NULL:
            dzu = ln_step_grad(q, nb, t, b0, zt, H, acc)
        if floating is float and q.qUT != NULL:
            step_grad_mixed(nb, <int>H, zt, <int>H, q.qUT, 0, dhp)
        else:
            step_grad(&q.cfg, nb, <int>H, <int>H, dzu, <int>H, <const floating *>q.U, <int>H,
                      <const floating *>q.UT, <const floating *>q.UTp, <floating>0, dhp)
        if q.mask != NULL or q.rdrop != NULL:
            merge_rows(nb, <int>H, pm, prd, dhp, dh)


cdef inline void param_grads(const Bwd *q, floating *Z) noexcept nogil:
    if q.ln.g != NULL:
        ln_param_grads(q, Z)
    else:
        dense_param_grads(q, Z)


def backward(const floating[:, :, ::1] x, floating[:, :, ::1] z, const floating[:, :, ::1] hin,
             const floating[:, ::1] kernel, const floating[:, ::1] recurrent_kernel,
             const unsigned char[:, ::1] mask, const floating[:, ::1] input_dropout_mask,
             const floating[:, ::1] recurrent_dropout_mask, activation, bint go_backwards,
             bint return_sequences, bint has_bias, dy, dh_T, dx_into=None, settings=None,
             Packed packing=None, mixed=None, ln_saved=None):
    """BPTT for `forward`. x, z, hin are what forward saved (z is overwritten with the
    pre-activation gradients). dy: [T,B,H] (return_sequences; last axis contiguous, the
    others any strides) or [B,H] or None; dh_T: [B,H] or None, all of this dtype and, but
    for dy's, C-contiguous. dx_into: x itself when forward's x was a copy nothing else holds
    (grad_buffers.dx_buffer). packing: as _lstm.backward's.
    mixed: as in _lstm.backward. ln_saved: saved["ln"] of a forward with layer_norm.

    Returns (dx, dh0, dkernel, drecurrent_kernel, dbias|None), and with ln_saved a sixth:
    dgamma [2,H].
    """
    cdef Bwd q
    read_settings(&q.cfg, settings)
    cdef MatsBinding mb = None if mixed is None else MatsBinding(mixed)
    cdef int H = recurrent_kernel.shape[0]
    q.ZW = H
    q.coupled, q.reset_after = False, False
    bufs = backward_setup(&q, x, z, hin, kernel, recurrent_kernel, mask, input_dropout_mask,
                          recurrent_dropout_mask, activation, None, go_backwards,
                          return_sequences, has_bias, dy, dh_T, dx_into,
                          mask is not None or recurrent_dropout_mask is not None, H,
                          0 if ln_saved is None else H, 0, 0, mb)
    dtype = np.float32 if floating is float else np.float64
    lnpart = ln_bind(&q, ln_saved, 0, dtype)
    cdef floating[::1] scratch = bufs[7], part = bufs[6]
    if packing is not None:
        scratch = bufs[7] = workspace("scratch", max(1, packing.n * q.scratch), dtype)
        if part is not None:
            part = bufs[6] = np.zeros(packing.n * q.acc, dtype)
        packed_backward(&q, packing, &part[0] if part is not None else NULL, &scratch[0])
    else:
        with nogil:
            backward_loop(&q, &part[0] if part is not None else NULL, &scratch[0])
    out = bufs[0], bufs[1], bufs[2], bufs[3], bufs[4]
    if ln_saved is None:
        return out
    dg0 = ln_gains(lnpart, H, H, bufs[4])
    return out + (np.stack([dg0, accumulated(bufs)]),)
