# SimpleRNN forward and BPTT over whole sequences, GIL released (Keras 3 SimpleRNNCell).
#
# Shapes use the notation of fastlstm/backends/oracle/__init__.py, equations those of
# fastlstm/backends/oracle/simple_rnn.py. The callers (fastlstm/backends/cpu_ops.py) pass
# C-contiguous arrays of one dtype whose shapes they have checked, with B, I, H >= 1;
# nothing here allocates per timestep.
#
# Forward:  Z = X W + b for all T*B rows (one GEMM); per step Z[t] += hin U (GEMM, GEMV at
#           B=1), then one pass Z[t] := a(Z[t]) that also updates h (and the masked output).
# Backward: per step one pass writes dZ[t] over the saved activations and dh_{t-1} =
#           dZ[t] U^T; then dW = X^T dZ, dU = Hin^T dZ, dX = dZ W^T over all T*B rows.
import numpy as np

from fastlstm.backends.grad_buffers import state_grads

from libc.string cimport memcpy
from blas cimport floating, gemm, gemv
from products cimport recurrent_grad, recurrent_product, set_policy, use_own
from gates cimport fl_force_isa_level, fl_isa_level
from gates cimport (fl_act, make_act, mul, merge_rows, fl_rnn_fwd_step_f, fl_rnn_fwd_step_d,
                    fl_rnn_bwd_step_f, fl_rnn_bwd_step_d)


cdef inline void fwd_step(int B, int H, fl_act act, floating *z, const unsigned char *mask,
                          const floating *h_in, floating *h_out, const floating *out_prev,
                          floating *out) noexcept nogil:
    if floating is float:
        fl_rnn_fwd_step_f(B, H, act, z, mask, h_in, h_out, out_prev, out)
    else:
        fl_rnn_fwd_step_d(B, H, act, z, mask, h_in, h_out, out_prev, out)


cdef inline void bwd_step(int B, int H, fl_act act, floating *z, const unsigned char *mask,
                          const floating *dy, const floating *dh, floating *dout,
                          floating *scratch) noexcept nogil:
    if floating is float:
        fl_rnn_bwd_step_f(B, H, act, z, mask, dy, dh, dout, scratch)
    else:
        fl_rnn_bwd_step_d(B, H, act, z, mask, dy, dh, dout, scratch)


def set_recurrent_matmul(str which):
    """'auto' (default), 'blas' or 'own': the per-step product, for tests and benchmarks."""
    set_policy(which)


def forward(floating[:, :, ::1] x, floating[:, ::1] kernel, floating[:, ::1] recurrent_kernel,
            floating[::1] bias, floating[:, ::1] h0, const unsigned char[:, ::1] mask,
            floating[:, ::1] input_dropout_mask, floating[:, ::1] recurrent_dropout_mask,
            activation, bint go_backwards, bint return_sequences, bint training):
    """x [T,B,I], kernel [I,H], recurrent_kernel [H,H], bias [H]|None, h0 [B,H],
    mask [T,B] uint8|None, input_dropout_mask [B,I]|None, recurrent_dropout_mask [B,H]|None.

    Returns (y, h_T, saved): y is [T,B,H] by step when return_sequences, else [B,H]; saved is
    None unless training, then a dict of what backward needs.
    """
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef int H = recurrent_kernel.shape[0]
    cdef long BH = <long>B * H, TB = <long>T * B
    dtype = np.float32 if floating is float else np.float64
    cdef fl_act act = make_act(activation)
    cdef bint has_mask = mask is not None
    cdef bint has_rdrop = recurrent_dropout_mask is not None

    cdef floating[:, :, ::1] xin = x
    if input_dropout_mask is not None:
        xin = np.empty_like(np.asarray(x))
    z_arr = np.empty((T, B, H), dtype)
    cdef floating[:, :, ::1] Z = z_arr
    cdef floating *pZ = &Z[0, 0, 0]
    cdef floating *pb = NULL if bias is None else &bias[0]
    cdef long r, t, s
    with nogil:
        if input_dropout_mask is not None:
            for r in range(T):
                merge_rows(B, I, NULL, &input_dropout_mask[0, 0], &x[r, 0, 0], &xin[r, 0, 0])
        if pb != NULL:
            for r in range(TB):
                memcpy(pZ + r * H, pb, H * sizeof(floating))
        gemm(False, False, <int>TB, H, I, <floating>1, &xin[0, 0, 0], I, &kernel[0, 0], H,
             <floating>(1 if pb != NULL else 0), pZ, H)

    h_arr = np.array(h0, dtype=dtype, copy=True)
    cdef floating[:, ::1] h = h_arr
    cdef floating[:, :, ::1] HIN, Y
    cdef floating[:, ::1] outbuf, hd
    hin_arr = y_arr = out_arr = None
    if training:
        hin_arr = np.empty((T, B, H), dtype)     # (h_{t-1} * recurrent dropout), as used by U
        HIN = hin_arr
    elif has_rdrop:
        hd = np.empty((B, H), dtype)
    if return_sequences:
        y_arr = np.empty((T, B, H), dtype)
        Y = y_arr
    elif has_mask:
        out_arr = np.zeros((B, H), dtype)
        outbuf = out_arr

    cdef floating *ph = &h[0, 0]
    cdef floating *hin
    cdef floating *pout
    cdef floating *pout_prev
    cdef const floating *prd = NULL if not has_rdrop else &recurrent_dropout_mask[0, 0]
    cdef const unsigned char *pm = NULL
    with nogil:
        for s in range(T):
            t = T - 1 - s if go_backwards else s
            if training:
                hin = &HIN[t, 0, 0]
                if has_rdrop:
                    mul(ph, prd, hin, BH)
                else:
                    memcpy(hin, ph, BH * sizeof(floating))
            elif has_rdrop:
                hin = &hd[0, 0]
                mul(ph, prd, hin, BH)
            else:
                hin = ph
            recurrent_product(B, H, H, hin, &recurrent_kernel[0, 0], H, <floating>1, pZ + t * BH, H)
            pout = pout_prev = NULL
            if has_mask:
                pm = &mask[t, 0]
                if return_sequences:
                    pout = &Y[s, 0, 0]
                    pout_prev = &Y[s - 1, 0, 0] if s > 0 else NULL
                else:
                    pout = pout_prev = &outbuf[0, 0]
            fwd_step(B, H, act, pZ + t * BH, pm, ph, ph, pout_prev, pout)
            if return_sequences and not has_mask:
                memcpy(&Y[s, 0, 0], ph, BH * sizeof(floating))

    if return_sequences:
        y = y_arr
    elif has_mask:
        y = out_arr
    else:
        y = h_arr.copy()
    saved = None
    if training:
        saved = dict(x=np.asarray(xin), z=z_arr, hin=hin_arr)
    return y, h_arr, saved


def backward(floating[:, :, ::1] x, floating[:, :, ::1] z, floating[:, :, ::1] hin,
             floating[:, ::1] kernel, floating[:, ::1] recurrent_kernel,
             const unsigned char[:, ::1] mask, floating[:, ::1] input_dropout_mask,
             floating[:, ::1] recurrent_dropout_mask, activation, bint go_backwards,
             bint return_sequences, bint has_bias, dy, dh_T):
    """BPTT for `forward`. x, z, hin are what forward saved (z is overwritten with the
    pre-activation gradients). dy: [T,B,H] (return_sequences) or [B,H] or None; dh_T: [B,H]
    or None, all of this dtype and C-contiguous.

    Returns (dx, dh0, dkernel, drecurrent_kernel, dbias|None).
    """
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef int H = recurrent_kernel.shape[0]
    cdef long BH = <long>B * H, TB = <long>T * B
    dtype = np.float32 if floating is float else np.float64
    cdef fl_act act = make_act(activation)
    cdef bint has_mask = mask is not None
    cdef bint has_rdrop = recurrent_dropout_mask is not None

    dh_arr, dout_arr = state_grads(B, H, dtype, dy, dh_T, has_mask, return_sequences)
    cdef floating[:, ::1] dh = dh_arr, dout, dhp
    cdef floating[:, :, ::1] DY
    cdef floating *pdout = NULL
    cdef floating *pdhp
    if has_mask:
        dout = dout_arr
        pdout = &dout[0, 0]
    if dy is not None and return_sequences:
        DY = dy
    dhp_arr = np.empty((B, H), dtype) if (has_mask or has_rdrop) else None
    if dhp_arr is not None:
        dhp = dhp_arr
        pdhp = &dhp[0, 0]
    else:
        pdhp = &dh[0, 0]
    scratch_arr = np.empty(H, dtype)
    cdef floating[::1] scratch = scratch_arr
    cdef const floating *prd = NULL if not has_rdrop else &recurrent_dropout_mask[0, 0]
    cdef const unsigned char *pm = NULL
    cdef const floating *pdy
    cdef floating *pZ = &z[0, 0, 0]
    cdef bint seq_dy = dy is not None and return_sequences
    cdef long s, t

    cdef floating[:, ::1] UT                          # U^T for the own-kernel path
    cdef const floating *pUT = NULL
    if B > 1 and use_own(<long>H * H * sizeof(floating)):   # one row reads U by rows
        UT = np.ascontiguousarray(np.asarray(recurrent_kernel).T)
        pUT = &UT[0, 0]

    dx_arr = np.empty((T, B, I), dtype)
    dW_arr = np.empty((I, H), dtype)
    dU_arr = np.empty((H, H), dtype)
    db_arr = np.empty(H, dtype) if has_bias else None
    ones_arr = np.ones(TB, dtype) if has_bias else None
    cdef floating[:, :, ::1] dx = dx_arr
    cdef floating[:, ::1] dW = dW_arr, dU = dU_arr
    cdef floating[::1] db, ones
    if has_bias:
        db, ones = db_arr, ones_arr

    with nogil:
        for s in range(T - 1, -1, -1):
            t = T - 1 - s if go_backwards else s
            pdy = &DY[s, 0, 0] if seq_dy else NULL
            if has_mask:
                pm = &mask[t, 0]
            bwd_step(B, H, act, pZ + t * BH, pm, pdy, &dh[0, 0], pdout, &scratch[0])
            recurrent_grad(B, H, H, pZ + t * BH, H, &recurrent_kernel[0, 0], H, pUT, <floating>0, pdhp)
            if has_mask or has_rdrop:
                merge_rows(B, H, pm, prd, pdhp, &dh[0, 0])
        # Weight and input gradients: single products over all T*B rows.
        gemm(True, False, I, H, <int>TB, <floating>1, &x[0, 0, 0], I, pZ, H, <floating>0,
             &dW[0, 0], H)
        gemm(True, False, H, H, <int>TB, <floating>1, &hin[0, 0, 0], H, pZ, H, <floating>0,
             &dU[0, 0], H)
        if has_bias:
            gemv(True, <int>TB, H, <floating>1, pZ, H, &ones[0], <floating>0, &db[0])
        gemm(False, True, <int>TB, I, H, <floating>1, pZ, H, &kernel[0, 0], H, <floating>0,
             &dx[0, 0, 0], I)
        if input_dropout_mask is not None:
            for t in range(T):
                merge_rows(B, I, NULL, &input_dropout_mask[0, 0], &dx[t, 0, 0], &dx[t, 0, 0])
    return dx_arr, dh_arr, dW_arr, dU_arr, db_arr


def force_isa_level_here(int level):
    """This extension's own copy of the ISA dispatch (each extension compiles gates.c):
    fastlstm._gates.force_isa_level sets every copy."""
    fl_force_isa_level(level)


def isa_level_here():
    """The ISA variant this extension's kernels run (0 baseline, 1 AVX2, 2 AVX-512)."""
    return fl_isa_level()
