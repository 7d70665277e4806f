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
from fastlstm._lstm import workspace

from cython.parallel cimport prange
from libc.string cimport memcpy
from blas cimport floating
from products cimport (chunk_rows, fl_matmul_policy, fl_max_threads, fl_parallel_min_macs,
                       pack_projection, set_direct_rows_param, project_chunk, recurrent_input,
                       row_chunks, set_kernel_threads, set_policy, step_grad, step_product,
                       weight_and_input_grads, forward_u, backward_u, U_PACKED, U_PANELS,
                       U_TRANSPOSED)
from gates cimport (fl_act, make_act, merge_rows, pack_b, pack_panels,
                    fl_force_isa_level, fl_isa_level, fl_rnn_fwd_step_f, fl_rnn_fwd_step_d,
                    fl_rnn_bwd_step_f, fl_rnn_bwd_step_d)

include "kernel_settings.pxi"


cdef inline void fwd_step(int B, int H, fl_act act, floating *z, const unsigned char *mask,
                          const floating *h_in, floating *h_out, const floating *out_prev,
                          floating *out) noexcept nogil:
    if floating is float:
        fl_rnn_fwd_step_f(B, H, act, z, mask, h_in, h_out, out_prev, out)
    else:
        fl_rnn_fwd_step_d(B, H, act, z, mask, h_in, h_out, out_prev, out)


cdef inline void bwd_step(int B, int H, fl_act act, floating *z, const unsigned char *mask,
                          const floating *dy, long ldy, const floating *dh, floating *dout,
                          floating *scratch) noexcept nogil:
    if floating is float:
        fl_rnn_bwd_step_f(B, H, act, z, mask, dy, ldy, dh, dout, scratch)
    else:
        fl_rnn_bwd_step_d(B, H, act, z, mask, dy, ldy, dh, dout, scratch)


cdef bint projections_on_blas = False  # set when the BLAS has AVX-512 kernels (fastlstm.threads)


def set_projection_blas(bint on):
    """Run the gradients' many-row products on BLAS (when it has AVX-512 kernels); the input
    projection stays on our packed GEMM."""
    global projections_on_blas
    projections_on_blas = on


cdef inline const floating *ptr_or_null(const floating[::1] a):
    return NULL if a is None else &a[0]


cdef void forward_rows(int T, int B, int H, int b0, int nb, long s0, long s1, long zt0,
                       bint go_backwards, bint training, bint return_sequences, fl_act act,
                       floating *Z, const floating *U,
                       const floating *Up, const floating *Upan, const unsigned char *mask,
                       const floating *rdrop, floating *HIN, floating *Y, floating *out,
                       floating *hd, floating *h) noexcept nogil:
    """Steps [s0, s1) of the forward time loop for batch rows [b0, b0+nb). Z holds the input
    projection of times zt0, zt0+1, ... ([*,B,H]) and becomes the activations; HIN [T,B,H]
    (h_{t-1} * recurrent dropout, as U sees it) is saved when training; Up is U packed by
    pack_b (many rows per thread), Upan U in the panels of matmul_packed_acc (a few rows), or
    both NULL (U read in place); Y [T,B,H] (return_sequences) or out [B,H] (masked last
    output) receive the outputs; hd [B,H] holds h*rdrop at inference; h [B,H] is the
    state."""
    cdef long BH = <long>B * H, rh = <long>b0 * H, nbh = <long>nb * H
    cdef long s, t
    cdef floating *ph = h + rh
    cdef const floating *hin
    cdef floating *zt
    cdef floating *po
    cdef floating *po_prev
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if rdrop == NULL else rdrop + rh
    # Returning the sequence without a mask, each step writes its h straight into Y and the
    # next step reads it there (no copy per step; nor into HIN when Y is its buffer too,
    # see forward); h gets the last one at the end.
    cdef bint ydirect = return_sequences and mask == NULL
    cdef floating *ph_out = ph
    if ydirect and s0 > 0:
        ph = Y + (s0 - 1) * BH + rh
    for s in range(s0, s1):
        t = T - 1 - s if go_backwards else s
        hin = recurrent_input(training, ph, prd, HIN + t * BH + rh if training else NULL,
                              hd + rh if hd != NULL else NULL, nbh)
        zt = Z + (t - zt0) * BH + rh
        step_product(nb, H, H, hin, U, H, Up, Upan, zt, H)
        po = po_prev = NULL
        if mask != NULL:
            pm = mask + t * B + b0
            if return_sequences:
                po = Y + s * BH + rh
                po_prev = Y + (s - 1) * BH + rh if s > 0 else NULL
            else:
                po = po_prev = out + rh
        if ydirect:
            ph_out = Y + s * BH + rh
        fwd_step(nb, H, act, zt, pm, ph, ph_out, po_prev, po)
        ph = ph_out
    if ydirect and s1 > s0:
        memcpy(h + rh, ph, nbh * sizeof(floating))


def forward(const floating[:, :, :] x, const floating[:, ::1] kernel,
            const floating[:, ::1] recurrent_kernel, const floating[::1] bias,
            const floating[:, ::1] h0, const unsigned char[:, ::1] mask,
            const floating[:, ::1] input_dropout_mask,
            const floating[:, ::1] recurrent_dropout_mask, activation, bint go_backwards,
            bint return_sequences, bint training):
    """x [T,B,I], kernel [I,H], recurrent_kernel [H,H], bias [H]|None, h0 [B,H],
    mask [T,B] uint8|None, input_dropout_mask [B,I]|None, recurrent_dropout_mask [B,H]|None.

    Returns (y, h_T, saved): y is [T,B,H] by step when return_sequences, else [B,H]; saved is
    None unless training, then a dict of what backward needs.
    """
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef int H = recurrent_kernel.shape[0]
    cdef long TB = <long>T * B
    dtype = np.float32 if floating is float else np.float64
    cdef fl_act act = make_act(activation)
    cdef bint has_mask = mask is not None
    cdef bint has_rdrop = recurrent_dropout_mask is not None

    cdef long ci
    cdef long sxt, sxb, chunk
    cdef const floating *px
    cdef floating *pstage
    xd_arr, chunk, z_arr = projection_inputs(
        x, input_dropout_mask, training, "rnn_z", H, &px, &sxt, &sxb, &pstage)
    cdef floating[:, :, ::1] Z = z_arr
    cdef floating *pZ = &Z[0, 0, 0]
    cdef const floating *pb = ptr_or_null(bias)
    # Input projection Z = X W + b, on our packed GEMM (W packed once) unless policy 'blas' or
    # a few rows, which read W in place (project_rows).
    cdef floating[::1] Wp
    cdef const floating[:, :] Wv = kernel
    cdef const floating *pWp = NULL
    if pack_projection(TB, <long>I * H * sizeof(floating)):
        Wp = pack_b(Wv, False, None, fl_max_threads)
        pWp = &Wp[0]

    h_arr = np.array(h0, dtype=dtype, copy=True)
    cdef floating[:, ::1] h = h_arr
    cdef floating[:, :, ::1] HIN, Y
    cdef floating[:, ::1] outbuf, hd
    out_arr = None
    # HIN: (h_{t-1} * recurrent dropout) as used by U; without dropout and mask, forward in
    # time, it shares its buffer with Y.
    hin_arr, y_arr = states_and_outputs(T, B, H, dtype, training, return_sequences,
                                        not (has_mask or has_rdrop or go_backwards))
    if training:
        HIN = hin_arr
    elif has_rdrop:
        hd = np.empty((B, H), dtype)
    if return_sequences:
        Y = y_arr
    elif has_mask:
        out_arr = np.zeros((B, H), dtype)
        outbuf = out_arr

    # The per-step product: U packed for our GEMM (many rows per thread), in L1-sized column
    # panels (a few rows, over a sequence that amortises the copy), or read in place.
    cdef int nchunks = row_chunks(T, B, H, H)
    cdef floating[::1] Up, Upan
    cdef const floating[:, :] Uv = recurrent_kernel
    cdef const floating *pUp = NULL
    cdef const floating *pUpan = NULL
    cdef int umode = forward_u(TB, B // nchunks, H, H, sizeof(floating))
    if umode == U_PACKED:
        Up = pack_b(Uv, False, None, fl_max_threads)
        pUp = &Up[0]
    elif umode == U_PANELS:
        Upan = np.empty(<long>H * H, dtype)
        pack_panels(H, H, &recurrent_kernel[0, 0], H, &Upan[0])
        pUpan = &Upan[0]
    cdef const floating *prd = NULL if not has_rdrop else &recurrent_dropout_mask[0, 0]
    cdef const unsigned char *pm = NULL if not has_mask else &mask[0, 0]
    cdef floating *pHIN = &HIN[0, 0, 0] if training else NULL
    cdef floating *pY = &Y[0, 0, 0] if return_sequences else NULL
    cdef floating *pout = &outbuf[0, 0] if (has_mask and not return_sequences) else NULL
    cdef floating *phd = &hd[0, 0] if (has_rdrop and not training) else NULL
    cdef int b0
    cdef long s0 = 0, s1, t_lo, nrows_c
    cdef const floating *pX
    with nogil:
        while s0 < T:
            s1 = min(<long>T, s0 + chunk)
            t_lo = T - s1 if go_backwards else s0         # the chunk's times: [t_lo, t_lo+s1-s0)
            nrows_c = (s1 - s0) * B
            pX = chunk_rows(t_lo, s1 - s0, B, I, px, sxt, sxb, pstage)
            project_chunk(nrows_c, I, H, pX, &kernel[0, 0], pWp, pb, pZ)
            if nchunks == 1:
                forward_rows(T, B, H, 0, B, s0, s1, t_lo, go_backwards, training,
                             return_sequences, act, pZ, &recurrent_kernel[0, 0], pUp, pUpan, pm,
                             prd, pHIN, pY, pout, phd, &h[0, 0])
            else:
                for ci in prange(nchunks, num_threads=nchunks, schedule="static"):
                    b0 = <int>(ci * B // nchunks)
                    forward_rows(T, B, H, b0, <int>((ci + 1) * B // nchunks) - b0, s0, s1, t_lo,
                                 go_backwards, training, return_sequences, act, pZ,
                                 &recurrent_kernel[0, 0], pUp, pUpan, pm, prd, pHIN, pY, pout,
                                 phd, &h[0, 0])
            s0 = s1

    if return_sequences:
        y = y_arr
    elif has_mask:
        y = out_arr
    else:
        y = h_arr.copy()
    saved = None
    if training:
        saved = dict(x=np.asarray(x) if xd_arr is None else xd_arr, z=z_arr, hin=hin_arr)
    return y, h_arr, saved


cdef void backward_rows(int T, int B, int H, int b0, int nb, bint go_backwards, fl_act act,
                        floating *Z, const floating *U, const floating *UT,
                        const floating *UTp, const unsigned char *mask, const floating *rdrop,
                        const floating *DY, long dys, long dyr, floating *dh, floating *dout,
                        floating *dhp, floating *scratch) noexcept nogil:
    """The backward time loop for batch rows [b0, b0+nb): Z [T,B,H] activations in,
    pre-activation gradients out (UTp: U^T packed by pack_b; else UT [H,H] row-major for our
    kernel, or NULL); DY [T,B,H] (steps dys and rows dyr apart) or NULL; dh [B,H] in:
    gradient of the final state, out: of the initial state.
    dhp [B,H] is work space (or dh itself without mask and dropout)."""
    cdef long BH = <long>B * H, rh = <long>b0 * H
    cdef long s, t
    cdef floating *zt
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if rdrop == NULL else rdrop + rh
    cdef floating *pout = NULL if dout == NULL else dout + rh
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if go_backwards else s
        zt = Z + t * BH + rh
        if mask != NULL:
            pm = mask + t * B + b0
        bwd_step(nb, H, act, zt, pm, DY + s * dys + b0 * dyr if DY != NULL else NULL, dyr,
                 dh + rh, pout, scratch)
        step_grad(nb, H, H, zt, H, U, H, UT, UTp, <floating>0, dhp + rh)
        if mask != NULL or rdrop != NULL:
            merge_rows(nb, H, pm, prd, dhp + rh, dh + rh)


def backward(const floating[:, :, ::1] x, floating[:, :, ::1] z, const floating[:, :, ::1] hin,
             const floating[:, ::1] kernel, const floating[:, ::1] recurrent_kernel,
             const unsigned char[:, ::1] mask, const floating[:, ::1] input_dropout_mask,
             const floating[:, ::1] recurrent_dropout_mask, activation, bint go_backwards,
             bint return_sequences, bint has_bias, dy, dh_T, dx_into=None):
    """BPTT for `forward`. x, z, hin are what forward saved (z is overwritten with the
    pre-activation gradients). dy: [T,B,H] (return_sequences; last axis contiguous, the
    others any strides) or [B,H] or None; dh_T: [B,H] or None, all of this dtype and, but
    for dy's, C-contiguous. dx_into: x itself when forward's x was a copy nothing else holds
    (grad_buffers.dx_buffer).

    Returns (dx, dh0, dkernel, drecurrent_kernel, dbias|None).
    """
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef int H = recurrent_kernel.shape[0]
    cdef long TB = <long>T * B
    dtype = np.float32 if floating is float else np.float64
    cdef fl_act act = make_act(activation)
    cdef bint has_mask = mask is not None
    cdef bint has_rdrop = recurrent_dropout_mask is not None

    dh_arr, dout_arr = state_grads(B, H, dtype, dy, dh_T, has_mask, return_sequences)
    cdef floating[:, ::1] dh = dh_arr, dout, dhp
    cdef const floating[:, :, :] DY
    cdef long dys = 0, dyr = 0
    cdef floating *pdout = NULL
    cdef floating *pdhp
    if has_mask:
        dout = dout_arr
        pdout = &dout[0, 0]
    if dy is not None and return_sequences:
        DY = dy
        dys, dyr = row_strides("dy", T, B, H, DY.strides[0], DY.strides[1], DY.strides[2],
                               sizeof(floating))
    dhp_arr = np.empty((B, H), dtype) if (has_mask or has_rdrop) else None
    if dhp_arr is not None:
        dhp = dhp_arr
        pdhp = &dhp[0, 0]
    else:
        pdhp = &dh[0, 0]
    # Threads fixed once: the scratch below is indexed by them, and another Python thread
    # may call set_num_threads while this one has released the GIL (packing).
    cdef int nchunks = row_chunks(T, B, H, H)
    scratch_arr = np.empty(nchunks * H, dtype)
    cdef floating[::1] scratch = scratch_arr
    cdef const floating *prd = NULL if not has_rdrop else &recurrent_dropout_mask[0, 0]
    cdef const unsigned char *pm = NULL if not has_mask else &mask[0, 0]
    cdef floating *pZ = &z[0, 0, 0]
    cdef bint seq_dy = dy is not None and return_sequences
    cdef long ci
    cdef int b0

    dx_arr = dx_buffer(dx_into, T, B, I, dtype)
    dW_arr = np.empty((I, H), dtype)
    dU_arr = np.empty((H, H), dtype)
    cdef bint own = fl_matmul_policy != 1 and not projections_on_blas
    db_arr = np.empty(H, dtype) if has_bias else None
    ones_arr = np.ones(TB, dtype) if has_bias and not own else None   # BLAS's db: ones^T dZ
    cdef floating[:, :, ::1] dx = dx_arr
    cdef floating[:, ::1] dW = dW_arr, dU = dU_arr
    cdef floating[::1] db, ones
    cdef floating *pdb = NULL
    cdef const floating *pones = NULL
    if has_bias:
        db = db_arr
        pdb = &db[0]
    if ones_arr is not None:
        ones = ones_arr
        pones = &ones[0]
    cdef floating[::1] WTp                            # W^T [H,I], packed, for our GEMM
    cdef const floating *pWT = NULL
    cdef const floating[:, :] Wv = kernel, Uv = recurrent_kernel
    if own:
        WTp = pack_b(Wv, True, None, fl_max_threads)
        pWT = &WTp[0]

    cdef floating[::1] UTp_v
    cdef const floating *pUTp = NULL
    cdef floating[:, ::1] UT                          # U^T [H,H] for the in-place kernel
    cdef const floating *pUT = NULL
    cdef int umode = backward_u(T, B, B // nchunks, H, H, sizeof(floating))
    if umode == U_PACKED:
        UTp_v = pack_b(Uv, True, None, fl_max_threads)
        pUTp = &UTp_v[0]
    elif umode == U_TRANSPOSED:
        UT = np.ascontiguousarray(np.asarray(recurrent_kernel).T)
        pUT = &UT[0, 0]
    with nogil:
        if nchunks == 1:
            backward_rows(T, B, H, 0, B, go_backwards, act, pZ, &recurrent_kernel[0, 0], pUT,
                          pUTp, pm, prd, &DY[0, 0, 0] if seq_dy else NULL, dys, dyr, &dh[0, 0],
                          pdout, pdhp, &scratch[0])
        else:
            for ci in prange(nchunks, num_threads=nchunks, schedule="static"):
                b0 = <int>(ci * B // nchunks)
                backward_rows(T, B, H, b0, <int>((ci + 1) * B // nchunks) - b0, go_backwards,
                              act, pZ, &recurrent_kernel[0, 0], pUT, pUTp, pm, prd,
                              &DY[0, 0, 0] if seq_dy else NULL, dys, dyr, &dh[0, 0], pdout,
                              pdhp, &scratch[0] + ci * H)
        weight_and_input_grads(TB, B, I, H, H, &x[0, 0, 0], &hin[0, 0, 0], pZ, &kernel[0, 0],
                               pWT, pones, &dW[0, 0], &dU[0, 0], pdb, &dx[0, 0, 0],
                               NULL if input_dropout_mask is None else &input_dropout_mask[0, 0],
                               own)
    return dx_arr, dh_arr, dW_arr, dU_arr, db_arr
