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
import threading

import numpy as np

from fastlstm.backends.grad_buffers import (dx_buffer, row_strides, state_grads,
                                            states_and_outputs)

from cython.parallel cimport parallel, prange
from libc.string cimport memcpy
from blas cimport floating
from products cimport (chunk_rows, fl_matmul_policy, fl_max_threads, fl_parallel_min_macs,
                       fl_pipe_steps, pack_projection, pipelined, pipe_rows, set_direct_rows_param,
                       set_pipeline_params, project_chunk, project_rows, recurrent_input,
                       row_chunks, set_kernel_threads, set_policy, step_grad, step_product,
                       weight_and_input_grads, forward_u, backward_u, U_IN_PLACE, U_PACKED,
                       U_PANELS, U_TRANSPOSED)
from gates cimport (fl_act, make_act, merge_rows, pack_b, pack_panels, matmul_packed_acc,
                    fl_barrier, fl_barrier_wait, fl_team_size, fl_thread_num, fl_publish,
                    fl_await, fl_force_isa_level,
                    fl_isa_level, fl_lstm_fwd_step_f, fl_lstm_fwd_step_d, fl_lstm_bwd_step_f,
                    fl_lstm_bwd_step_d)

include "kernel_settings.pxi"


# Buffers that never leave a call (inference's chunk of Z, the packed kernels) are kept per
# thread between calls, up to this size each: fresh ones cost a page fault per 4 KiB at
# every call, and at (T,B,H) = (100,16,128) inference took 1.5-2.8 ms with them against
# 1.5-1.6 ms with glibc told to keep freed memory.
cdef long WORKSPACE_MAX_BYTES = 64 << 20
_workspace = threading.local()


def workspace(str slot, long n, dtype):
    """n elements of this thread's buffer `slot` of dtype, kept for the next call (a new
    array past WORKSPACE_MAX_BYTES). Only for buffers a call does not return."""
    dt = np.dtype(dtype)
    if n * dt.itemsize > WORKSPACE_MAX_BYTES:
        return np.empty(n, dt)
    buffers = getattr(_workspace, "buffers", None)
    if buffers is None:
        buffers = _workspace.buffers = {}
    buf = buffers.get((slot, dt.char))
    if buf is None or buf.shape[0] < n:
        buf = np.empty(max(n, 1), dt)
        buffers[(slot, dt.char)] = buf
    return buf[:n]


def workspace_bytes():
    """Bytes this thread's kept buffers hold."""
    return sum(b.nbytes for b in getattr(_workspace, "buffers", {}).values())


def clear_workspace():
    """Drop this thread's kept buffers."""
    _workspace.buffers = {}


# One-row inference splits the units over the threads from COLS_MIN_BYTES of U: then each
# core's share stays in its own L2 where the whole U streams from L3 on one core (T=100,
# H=256: 0.51-0.70x the time on one thread; H=512: 0.61-0.68x). At H=128 (256 KiB) it was
# 0.76x or 1.15x by the minute (this virtual machine's two cores are not always two).
cdef long COLS_MIN_BYTES = 512 << 10
cdef bint projections_on_blas = False  # set when the BLAS has AVX-512 kernels (fastlstm.threads)


def set_pipeline(long steps, double min_macs=1 << 20):
    """Steps a block of the projection beside a few-row forward loop, and the least
    projection work (multiply-adds) for it; tests set them small, min_macs < 0 turns it off."""
    set_pipeline_params(steps, min_macs)


def set_cols_min_bytes(long nbytes):
    """Recurrent kernel size from which one-row inference splits the units over the threads
    (tests set it small)."""
    global COLS_MIN_BYTES
    COLS_MIN_BYTES = max(0, nbytes)


def set_projection_blas(bint on):
    """Run the gradients' many-row products (input and weight gradients) on BLAS: 1-3%
    faster when the BLAS has AVX-512 kernels. The input projection stays on our packed GEMM,
    7-11% faster there than OpenBLAS's AVX-512 kernels (it writes the bias with the product
    and reads the weights packed once per call)."""
    global projections_on_blas
    projections_on_blas = on


cdef inline bint own_products() noexcept nogil:
    """The gradients' many-row products (input and weight gradients) on our packed GEMM,
    unless BLAS has AVX-512 kernels (a little faster there) or policy 'blas' is forced."""
    return fl_matmul_policy != 1 and not projections_on_blas


cdef inline void fwd_step(int B, int H, int coupled, fl_act act, fl_act ract, floating *z,
                          const floating *peep, const unsigned char *mask, const floating *h_in,
                          const floating *c_in, floating *h_out, floating *c_out,
                          const floating *out_prev, floating *out, floating *scratch) noexcept nogil:
    if floating is float:
        fl_lstm_fwd_step_f(B, H, coupled, act, ract, z, peep, mask, h_in, c_in, h_out, c_out,
                           out_prev, out, scratch)
    else:
        fl_lstm_fwd_step_d(B, H, coupled, act, ract, z, peep, mask, h_in, c_in, h_out, c_out,
                           out_prev, out, scratch)


cdef inline void bwd_step(int B, int H, int coupled, fl_act act, fl_act ract, floating *z,
                          const floating *c, const floating *c_prev, const floating *peep,
                          const unsigned char *mask, const floating *dy, long ldy,
                          const floating *dh, floating *dc, floating *dout, floating *dpeep,
                          floating *scratch) noexcept nogil:
    if floating is float:
        fl_lstm_bwd_step_f(B, H, coupled, act, ract, z, c, c_prev, peep, mask, dy, ldy, dh, dc,
                           dout, dpeep, scratch)
    else:
        fl_lstm_bwd_step_d(B, H, coupled, act, ract, z, c, c_prev, peep, mask, dy, ldy, dh, dc,
                           dout, dpeep, scratch)


cdef inline const floating *ptr_or_null(const floating[::1] a):
    return NULL if a is None else &a[0]


cdef void forward_rows(int T, int B, int H, int G, int b0, int nb, long s0, long s1, long zt0,
                       bint go_backwards, bint training, bint return_sequences, bint coupled,
                       fl_act act, fl_act ract, floating *Z, const floating *U,
                       const floating *Up, const floating *Upan, const floating *P,
                       const unsigned char *mask,
                       const floating *rdrop,
                       floating *HIN, floating *C, floating *Y, floating *out, floating *hd,
                       floating *h, floating *c, floating *scratch) noexcept nogil:
    """Steps [s0, s1) of the forward time loop for batch rows [b0, b0+nb). Z holds the input
    projection of times zt0, zt0+1, ... ([*,B,G]) and becomes the gates; HIN, C [T,B,H] are
    saved when training; Up is U packed by pack_b (many rows per thread), Upan U in the panels
    of matmul_packed_acc (a few rows), or both NULL (U read in place); Y [T,B,H] (return_sequences) or
    out [B,H] (masked last output) receive the outputs; h, c [B,H] are the state (when
    training c starts in c and advances in C: a call from a later step resumes from the
    saved C of the step before); hd [B,H] holds h*rdrop at inference."""
    cdef long BH = <long>B * H, BG = <long>B * G, rh = <long>b0 * H, rg = <long>b0 * G
    cdef long nbh = <long>nb * H
    cdef long s, t
    cdef floating *ph = h + rh
    cdef floating *pc = c + rh
    cdef floating *pc_out
    cdef const floating *hin
    cdef floating *po
    cdef floating *po_prev
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if rdrop == NULL else rdrop + rh
    # Returning the sequence without a mask, each step writes its h straight into Y and the
    # next step reads it there (no copy per step); h gets the last one at the end.
    cdef bint ydirect = return_sequences and mask == NULL
    cdef floating *ph_out = ph
    if training and s0 > 0:
        pc = C + ((T - s0) if go_backwards else (s0 - 1)) * BH + rh
    if ydirect and s0 > 0:
        ph = Y + (s0 - 1) * BH + rh
    for s in range(s0, s1):
        t = T - 1 - s if go_backwards else s
        hin = recurrent_input(training, ph, prd, HIN + t * BH + rh if training else NULL,
                              hd + rh if hd != NULL else NULL, nbh)
        step_product(nb, H, G, hin, U, G, Up, Upan, Z + (t - zt0) * BG + rg, G)
        pc_out = C + t * BH + rh if training else pc
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
        fwd_step(nb, H, coupled, act, ract, Z + (t - zt0) * BG + rg, P, pm, ph, pc, ph_out,
                 pc_out, po_prev, po, scratch)
        ph = ph_out
        pc = pc_out
    if ydirect and s1 > s0:
        memcpy(h + rh, ph, nbh * sizeof(floating))


cdef void forward_pipelined(int T, int B, int I, int H, int G, long s0, long s1, long zt0,
                            bint go_backwards, bint training, bint return_sequences,
                            bint coupled, fl_act act, fl_act ract, const floating *X,
                            const floating *W, const floating *Wp, const floating *bias,
                            floating *Z, const floating *U, const floating *Up,
                            const floating *Upan, const floating *P,
                            const unsigned char *mask, const floating *rdrop, floating *HIN,
                            floating *C, floating *Y, floating *out, floating *hd, floating *h,
                            floating *c, floating *scratch, long *progress) noexcept nogil:
    """Steps [s0, s1) of a time loop of a few rows (one thread's work), with the input
    projection of those steps run beside it: thread 1 projects fl_pipe_steps steps at a time,
    in the order of the loop, and publishes how far it got; thread 0 runs each block of
    steps once it is projected. X: the rows of the chunk's times; the rest as forward_rows."""
    cdef int n = fl_team_size(), k = fl_thread_num()
    cdef long nsteps = s1 - s0, a, e, r0, nr
    if n == 1 or k == 0:
        if n == 1:
            project_rows(0, nsteps * B, I, G, X, W, Wp, bias, Z)
        a = 0
        while a < nsteps:
            e = min(nsteps, a + fl_pipe_steps)
            if n > 1:
                fl_await(progress, e)
            forward_rows(T, B, H, G, 0, B, s0 + a, s0 + e, zt0, go_backwards, training,
                         return_sequences, coupled, act, ract, Z, U, Up, Upan, P, mask, rdrop,
                         HIN, C, Y, out, hd, h, c, scratch)
            a = e
    elif k == 1:
        a = 0
        while a < nsteps:
            e = min(nsteps, a + fl_pipe_steps)
            pipe_rows(a, e, nsteps, B, go_backwards, &r0, &nr)
            project_rows(r0, nr, I, G, X, W, Wp, bias, Z)
            fl_publish(progress, e)
            a = e


cdef inline long cols_stride(int H, int ng, int n) noexcept nogil:
    """Work space of one thread of forward_cols in a team of n (w <= H // n + 31 units)."""
    return (<long>ng * H + ng + 4) * (H // n + 32)


cdef inline long cols_work(int H, int ng, int nt) noexcept nogil:
    """Work space of forward_cols for a team of up to nt <= 32 threads: n * cols_stride(n)
    stays below it for every n <= nt."""
    return nt * cols_stride(H, ng, nt)


cdef void forward_cols(int T, int H, int G, int ng, long s0, long s1, long zt0,
                       bint go_backwards, bint return_sequences, bint coupled, fl_act act,
                       fl_act ract, const floating *Z, const floating *U, const floating *P,
                       const unsigned char *mask, floating *Y, floating *out, floating *hbuf,
                       floating *c, floating *work, fl_barrier *bar) noexcept nogil:
    """Steps [s0, s1) of a one-row forward time loop (inference), run by every thread of a
    parallel region on its own share of the units: the gate columns of those units (ng
    blocks of U) packed into its work space, so each core reads only its part of U, from its
    own cache. The threads meet once per step, after writing their part of h. Z holds the
    input projection of times zt0, ... ([*,G]); hbuf [2,H] the state h, double-buffered (step
    s reads row s % 2, writes the other), unless Y takes the outputs (return_sequences
    without mask: step s reads Y[s-1] and writes Y[s]); c [H]; out [H] the masked last
    output; work: cols_work(H, ng, nt) elements for a team of up to nt threads."""
    cdef int n = fl_team_size(), k = fl_thread_num(), sense = 0, g
    cdef int j0 = (k * (H // 16) // n) * 16          # units [j0, j1), whole vectors
    cdef int j1 = H if k == n - 1 else ((k + 1) * (H // 16) // n) * 16
    cdef int w = j1 - j0
    cdef long s, t
    work = work + k * cols_stride(H, ng, n)
    cdef floating *Up = work                          # ng blocks [H, w], panels
    cdef floating *z = work + <long>ng * H * w        # [ng * w]
    cdef floating *peep = z + ng * w                  # [3, w]
    cdef floating *scratch = peep + 3 * w             # [w]
    cdef const floating *pp = NULL
    cdef const floating *hin
    cdef floating *hout
    cdef floating *po
    cdef floating *po_prev
    cdef const unsigned char *pm = NULL
    cdef bint ydirect = return_sequences and mask == NULL
    if w > 0:
        for g in range(ng):
            pack_panels(H, w, U + g * H + j0, G, Up + <long>g * H * w)
        if P != NULL:
            for g in range(3):
                memcpy(peep + g * w, P + g * H + j0, w * sizeof(floating))
            pp = peep
    for s in range(s0, s1):
        t = T - 1 - s if go_backwards else s
        if ydirect:
            hin = hbuf if s == 0 else Y + (s - 1) * H
            hout = Y + s * H
        else:
            hin = hbuf + (s % 2) * H
            hout = hbuf + ((s + 1) % 2) * H
        if w > 0:
            for g in range(ng):
                memcpy(z + g * w, Z + (t - zt0) * G + g * H + j0, w * sizeof(floating))
                matmul_packed_acc(1, w, H, hin, H, Up + <long>g * H * w, z + g * w, w)
            po = po_prev = NULL
            if mask != NULL:
                pm = mask + t
                if return_sequences:
                    po = Y + s * H + j0
                    po_prev = Y + (s - 1) * H + j0 if s > 0 else NULL
                else:
                    po = po_prev = out + j0
            fwd_step(1, w, coupled, act, ract, z, pp, pm, hin + j0, c + j0, hout + j0, c + j0,
                     po_prev, po, scratch)
        fl_barrier_wait(bar, n, &sense)


def forward(const floating[:, :, :] x, const floating[:, ::1] kernel,
            const floating[:, ::1] recurrent_kernel, const floating[::1] bias,
            const floating[:, ::1] h0, const floating[:, ::1] c0, const floating[:, ::1] peephole,
            const unsigned char[:, ::1] mask, const floating[:, ::1] input_dropout_mask,
            const floating[:, ::1] recurrent_dropout_mask, activation, recurrent_activation,
            bint coupled, bint go_backwards, bint return_sequences, bint training):
    """x [T,B,I], kernel [I,G], recurrent_kernel [H,G], bias [G]|None, h0, c0 [B,H],
    peephole [3,H]|None, mask [T,B] uint8|None, input_dropout_mask [B,I]|None,
    recurrent_dropout_mask [B,H]|None.

    Returns (y, h_T, c_T, saved): y is [T,B,H] by step when return_sequences, else [B,H];
    saved is None unless training, then a dict of what backward needs.
    """
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef int H = recurrent_kernel.shape[0], G = recurrent_kernel.shape[1]
    cdef long TB = <long>T * B
    dtype = np.float32 if floating is float else np.float64
    cdef fl_act act = make_act(activation), ract = make_act(recurrent_activation)
    cdef bint has_mask = mask is not None
    cdef bint has_rdrop = recurrent_dropout_mask is not None

    # Input projection Z = (X * input_dropout_mask) W + b (projection_inputs: all T steps when
    # training, else a chunk of steps at a time).
    cdef long sxt, sxb, chunk
    cdef const floating *px
    cdef floating *pstage
    xd_arr, chunk, z_arr = projection_inputs(
        x, input_dropout_mask, training, "z", G, &px, &sxt, &sxb, &pstage)
    cdef floating[:, :, ::1] Z = z_arr
    cdef floating *pZ = &Z[0, 0, 0]
    cdef const floating *pb = ptr_or_null(bias)

    h_arr = np.array(h0, dtype=dtype, copy=True)
    c_first = np.array(c0, dtype=dtype, copy=True)
    cdef floating[:, ::1] h = h_arr, cf = c_first
    cdef floating[:, :, ::1] C, HIN, Y
    cdef floating[:, ::1] outbuf, hd
    cst_arr = out_arr = None
    # HIN: (h_{t-1} * recurrent dropout) as used by U; without dropout and mask, forward in
    # time, it shares its buffer with Y (and the steps read h there: no copy).
    hin_arr, y_arr = states_and_outputs(T, B, H, dtype, training, return_sequences,
                                        not (has_mask or has_rdrop or go_backwards))
    if training:
        cst_arr = np.empty((T, B, H), dtype)     # c state after step t
        C, HIN = cst_arr, hin_arr
    elif has_rdrop:
        hd = np.empty((B, H), dtype)
    if return_sequences:
        Y = y_arr
    elif has_mask:
        out_arr = np.zeros((B, H), dtype)
        outbuf = out_arr
    cdef int nchunks = row_chunks(T, B, H, G)
    cdef int umode = forward_u(TB, B // nchunks, H, G, sizeof(floating))
    # One row at inference: the units split over the threads (forward_cols), from
    # COLS_MIN_BYTES of U, in shares of whole panels of the packed product (a narrower
    # remainder runs a slow loop there); U is then packed by each thread, its own part.
    cdef int ncols = 0, panel = 256 // sizeof(floating)
    if (B == 1 and not training and not has_rdrop and fl_matmul_policy != 1
            and <long>H * G * sizeof(floating) >= COLS_MIN_BYTES):
        ncols = min(fl_max_threads, 8)
        while ncols >= 2 and H % (panel * ncols) != 0:
            ncols -= 1
        if ncols < 2:
            ncols = 0
        else:
            umode = U_IN_PLACE          # nothing packed here: each thread packs its part
    cdef floating[::1] cwork
    cdef floating[:, ::1] hbuf
    cdef unsigned char[::1] bar_mem
    cdef fl_barrier *bar = NULL
    if ncols:
        cwork = workspace("u", cols_work(H, G // H, ncols), dtype)
        hbuf_arr = np.empty((2, H), dtype)
        hbuf_arr[0] = h_arr[0]
        hbuf = hbuf_arr
        bar_arr = np.zeros(sizeof(fl_barrier) + 64, np.uint8)
        bar_mem = bar_arr
        bar = <fl_barrier *>(&bar_mem[0] + (64 - (<size_t>&bar_mem[0]) % 64))
    cdef const floating *pUp = NULL
    cdef floating[::1] Up
    cdef const floating[:, :] Uv = recurrent_kernel
    if umode == U_PACKED:
        Up = pack_b(Uv, False, lambda n: workspace("u", n, dtype), fl_max_threads)
        pUp = &Up[0]
    cdef floating[::1] Upan
    cdef const floating *pUpan = NULL
    if umode == U_PANELS:
        Upan = workspace("u", <long>H * G, dtype)
        pack_panels(H, G, &recurrent_kernel[0, 0], G, &Upan[0])
        pUpan = &Upan[0]
    scratch_arr = np.empty(nchunks * H, dtype)
    cdef floating[::1] scratch = scratch_arr
    cdef const floating *pP = NULL if peephole is None else &peephole[0, 0]
    cdef const floating *prd = NULL if not has_rdrop else &recurrent_dropout_mask[0, 0]
    cdef const unsigned char *pm = NULL if not has_mask else &mask[0, 0]
    cdef floating *pHIN = &HIN[0, 0, 0] if training else NULL
    cdef floating *pC = &C[0, 0, 0] if training else NULL
    cdef floating *pY = &Y[0, 0, 0] if return_sequences else NULL
    cdef floating *pout = &outbuf[0, 0] if (has_mask and not return_sequences) else NULL
    cdef floating *phd = &hd[0, 0] if (has_rdrop and not training) else NULL
    # W packed once per call: inference projects chunk by chunk, and every thread of a chunk
    # would pack all of W again. A few rows read W in place (project_rows).
    cdef floating[::1] Wp
    cdef const floating[:, :] Wv = kernel
    cdef const floating *pWp = NULL
    if pack_projection(TB, <long>I * G * sizeof(floating)):
        Wp = pack_b(Wv, False, lambda n: workspace("w", n, dtype), fl_max_threads)
        pWp = &Wp[0]
    cdef int b0
    cdef long s0, s1, t_lo, nrows_c, ci
    cdef long progress = 0
    cdef const floating *pX
    s0 = 0
    with nogil:
        while s0 < T:
            s1 = min(<long>T, s0 + chunk)
            t_lo = T - s1 if go_backwards else s0         # the chunk's times: [t_lo, t_lo+s1-s0)
            nrows_c = (s1 - s0) * B
            pX = chunk_rows(t_lo, s1 - s0, B, I, px, sxt, sxb, pstage)
            if not ncols and pipelined(nchunks, s1 - s0, <double>nrows_c * I * G):
                progress = 0
                with parallel(num_threads=2):
                    forward_pipelined(T, B, I, H, G, s0, s1, t_lo, go_backwards, training,
                                      return_sequences, coupled, act, ract,
                                      pX, &kernel[0, 0], pWp, pb, pZ,
                                      &recurrent_kernel[0, 0], pUp, pUpan, pP, pm, prd, pHIN,
                                      pC, pY, pout, phd, &h[0, 0], &cf[0, 0], &scratch[0],
                                      &progress)
                s0 = s1
                continue
            project_chunk(nrows_c, I, G, pX, &kernel[0, 0], pWp, pb, pZ)
            if ncols:
                bar.count = 0                   # every thread starts with sense 0
                bar.flag = 0
                with parallel(num_threads=ncols):
                    forward_cols(T, H, G, G // H, s0, s1, t_lo, go_backwards,
                                 return_sequences, coupled, act, ract, pZ,
                                 &recurrent_kernel[0, 0], pP, pm, pY, pout, &hbuf[0, 0],
                                 &cf[0, 0], &cwork[0], bar)
            elif nchunks == 1:
                forward_rows(T, B, H, G, 0, B, s0, s1, t_lo, go_backwards, training,
                             return_sequences, coupled, act, ract, pZ, &recurrent_kernel[0, 0],
                             pUp, pUpan, pP, pm, prd, pHIN, pC, pY, pout, phd, &h[0, 0], &cf[0, 0],
                             &scratch[0])
            else:
                for ci in prange(nchunks, num_threads=nchunks, schedule="static"):
                    b0 = <int>(ci * B // nchunks)
                    forward_rows(T, B, H, G, b0, <int>((ci + 1) * B // nchunks) - b0, s0, s1,
                                 t_lo, go_backwards, training, return_sequences, coupled, act,
                                 ract, pZ, &recurrent_kernel[0, 0], pUp, pUpan, pP, pm, prd, pHIN, pC,
                                 pY, pout, phd, &h[0, 0], &cf[0, 0], &scratch[0] + ci * H)
            s0 = s1
        if ncols:       # the final h: the last output written, or the buffer row of step T
            memcpy(&h[0, 0], pY + (T - 1) * H if (return_sequences and not has_mask)
                   else &hbuf[T % 2, 0], H * sizeof(floating))

    # The final cell state: the last step's saved state (masked rows copied theirs in).
    c_last = cst_arr[0 if go_backwards else T - 1].copy() if training else c_first
    if return_sequences:
        y = y_arr
    elif has_mask:
        y = out_arr
    else:
        y = h_arr.copy()
    saved = None
    if training:
        saved = dict(x=np.asarray(x) if xd_arr is None else xd_arr, z=z_arr, c=cst_arr,
                     hin=hin_arr, c0=np.asarray(c0))
    return y, h_arr, c_last, saved


cdef void backward_rows(int T, int B, int H, int G, int b0, int nb, bint go_backwards,
                        bint coupled, fl_act act, fl_act ract, floating *Z, const floating *C,
                        const floating *c0, const floating *U, const floating *UT,
                        const floating *UTp, const floating *P, const unsigned char *mask,
                        const floating *rdrop, const floating *DY, long dys, long dyr,
                        floating *dh, floating *dc, floating *dout, floating *dhp,
                        floating *dpeep, floating *scratch) noexcept nogil:
    """The backward time loop for batch rows [b0, b0+nb): Z [T,B,G] gates in, gate
    gradients out (UTp: U^T packed by pack_b, or NULL); DY [T,B,H] (steps dys and rows dyr
    apart) or NULL; dh, dc [B,H] in: gradients of the final state, out: of the initial state.
    dhp [B,H] is work space (or dh itself without mask and dropout); dpeep [3,H] or NULL."""
    cdef long BH = <long>B * H, BG = <long>B * G, rh = <long>b0 * H, rg = <long>b0 * G
    cdef long s, t, tp
    cdef const floating *pcp
    cdef const unsigned char *pm = NULL
    cdef const floating *prd = NULL if rdrop == NULL else rdrop + rh
    cdef floating *pout = NULL if dout == NULL else dout + rh
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if go_backwards else s
        tp = t + 1 if go_backwards else t - 1
        pcp = C + tp * BH + rh if s > 0 else c0 + rh
        if mask != NULL:
            pm = mask + t * B + b0
        bwd_step(nb, H, coupled, act, ract, Z + t * BG + rg, C + t * BH + rh, pcp, P, pm,
                 DY + s * dys + b0 * dyr if DY != NULL else NULL, dyr, dh + rh, dc + rh, pout,
                 dpeep, scratch)
        step_grad(nb, H, G, Z + t * BG + rg, G, U, G, UT, UTp, <floating>0, dhp + rh)
        if mask != NULL or rdrop != NULL:
            merge_rows(nb, H, pm, prd, dhp + rh, dh + rh)


def backward(const floating[:, :, ::1] x, floating[:, :, ::1] z, const floating[:, :, ::1] c,
             const floating[:, :, ::1] hin, const floating[:, ::1] c0,
             const floating[:, ::1] kernel, const floating[:, ::1] recurrent_kernel,
             const floating[:, ::1] peephole, const unsigned char[:, ::1] mask,
             const floating[:, ::1] input_dropout_mask,
             const floating[:, ::1] recurrent_dropout_mask, activation, recurrent_activation,
             bint coupled, bint go_backwards, bint return_sequences, bint has_bias, dy, dh_T, dc_T,
             dx_into=None):
    """BPTT for `forward`. x, z, c, hin, c0 are what forward saved (z is overwritten with
    the gate gradients). dy: [T,B,H] (return_sequences; its last axis contiguous, the others
    any strides, such as a transposed view of [B,T,H]) or [B,H] or None; dh_T, dc_T: [B,H]
    or None, all of this dtype and, but for dy's, C-contiguous. dx_into: x itself when
    forward's x was a copy nothing else holds (grad_buffers.dx_buffer), else None.

    Returns (dx, dh0, dc0, dkernel, drecurrent_kernel, dbias|None, dpeephole|None).
    """
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef int H = recurrent_kernel.shape[0], G = recurrent_kernel.shape[1]
    cdef long TB = <long>T * B
    dtype = np.float32 if floating is float else np.float64
    cdef fl_act act = make_act(activation), ract = make_act(recurrent_activation)
    cdef bint has_mask = mask is not None
    cdef bint has_rdrop = recurrent_dropout_mask is not None

    dh_arr, dout_arr = state_grads(B, H, dtype, dy, dh_T, has_mask, return_sequences)
    dc_arr = np.zeros((B, H), dtype) if dc_T is None else np.array(dc_T, dtype=dtype, copy=True)
    cdef floating[:, ::1] dh = dh_arr, dc = dc_arr, dout, dhp
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
    dpeep_arr = np.zeros((3, H), dtype) if peephole is not None else None
    cdef floating[:, ::1] dpeep_v
    cdef floating *pdpeep = NULL
    if dpeep_arr is not None:
        dpeep_v = dpeep_arr
        pdpeep = &dpeep_v[0, 0]
    # Threads fixed once: the scratch below is indexed by them, and another Python thread
    # may call set_num_threads while this one has released the GIL (packing).
    cdef int nchunks = row_chunks(T, B, H, G)
    scratch_arr = np.empty(nchunks * 5 * H, dtype)
    cdef floating[::1] scratch = scratch_arr
    cdef const floating *pP = NULL if peephole is None else &peephole[0, 0]
    cdef const floating *prd = NULL if not has_rdrop else &recurrent_dropout_mask[0, 0]
    cdef const unsigned char *pm = NULL if not has_mask else &mask[0, 0]
    cdef floating *pZ = &z[0, 0, 0]
    cdef bint seq_dy = dy is not None and return_sequences

    dx_arr = dx_buffer(dx_into, T, B, I, dtype)
    dW_arr = np.empty((I, G), dtype)
    dU_arr = np.empty((H, G), dtype)
    cdef bint own = own_products()
    db_arr = np.empty(G, dtype) if has_bias else None
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
    # W^T and U^T are packed into the buffers the forward pass packed W and U in (it is done
    # with them): a training step keeps two packed kernels between calls, not four.
    cdef floating[::1] WTp                            # W^T [G,I], packed, for our GEMM
    cdef const floating *pWT = NULL
    cdef const floating[:, :] Wv = kernel, Uv = recurrent_kernel
    if own:
        WTp = pack_b(Wv, True, lambda n: workspace("w", n, dtype), fl_max_threads)
        pWT = &WTp[0]

    cdef int ci, b0
    cdef floating[::1] UTp_v
    cdef const floating *pUTp = NULL
    cdef floating[:, ::1] UT                          # U^T [G,H] for the in-place kernel
    cdef const floating *pUT = NULL
    cdef int umode = backward_u(T, B, B // nchunks, H, G, sizeof(floating))
    if umode == U_PACKED:
        UTp_v = pack_b(Uv, True, lambda n: workspace("u", n, dtype), fl_max_threads)
        pUTp = &UTp_v[0]
    elif umode == U_TRANSPOSED:
        UT = np.ascontiguousarray(np.asarray(recurrent_kernel).T)
        pUT = &UT[0, 0]
    cdef floating[:, ::1] part
    if nchunks > 1 and dpeep_arr is not None:       # one accumulator per thread, summed after
        part_arr = np.zeros((nchunks, 3 * H), dtype)
        part = part_arr
    with nogil:
        if nchunks == 1:
            backward_rows(T, B, H, G, 0, B, go_backwards, coupled, act, ract, pZ, &c[0, 0, 0],
                          &c0[0, 0], &recurrent_kernel[0, 0], pUT, pUTp, pP, pm, prd,
                          &DY[0, 0, 0] if seq_dy else NULL, dys, dyr, &dh[0, 0], &dc[0, 0],
                          pdout, pdhp, pdpeep, &scratch[0])
        else:
            for ci in prange(nchunks, num_threads=nchunks, schedule="static"):
                b0 = <int>(<long>ci * B // nchunks)
                backward_rows(T, B, H, G, b0, <int>(<long>(ci + 1) * B // nchunks) - b0,
                              go_backwards, coupled, act, ract, pZ, &c[0, 0, 0], &c0[0, 0],
                              &recurrent_kernel[0, 0], pUT, pUTp, pP, pm, prd,
                              &DY[0, 0, 0] if seq_dy else NULL, dys, dyr, &dh[0, 0], &dc[0, 0],
                              pdout, pdhp, &part[ci, 0] if pdpeep != NULL else NULL,
                              &scratch[0] + <long>ci * 5 * H)
    if nchunks > 1 and dpeep_arr is not None:
        dpeep_arr += part_arr.sum(0).reshape(3, H)
    with nogil:
        weight_and_input_grads(TB, B, I, H, G, &x[0, 0, 0], &hin[0, 0, 0], pZ, &kernel[0, 0],
                               pWT, pones, &dW[0, 0], &dU[0, 0], pdb, &dx[0, 0, 0],
                               NULL if input_dropout_mask is None else &input_dropout_mask[0, 0],
                               own)
    return dx_arr, dh_arr, dc_arr, dW_arr, dU_arr, db_arr, dpeep_arr
