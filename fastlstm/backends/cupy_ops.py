"""The ``cupy`` backend: every cell's forward and BPTT on the GPU, with fused CUDA kernels.

The structure is the CPU kernels': the input projection is one GEMM over all T*B rows (cuBLAS
through CuPy), each step runs the recurrent GEMM and then one fused elementwise kernel for the
gate math (``cuda/rnn_kernels.cu``), and the weight gradients are single GEMMs after the loop.
Saved activations are indexed by time t, outputs by step s, as in the oracle.

Importing fastlstm never needs CuPy; asking for this backend without CuPy or without a GPU is
a clear error. The orchestration is written against an array module and a ``KernelSet``, so the
test suite also runs it with ``xp=numpy`` over the same kernels compiled for the host.
"""
from __future__ import annotations

from .base import Cache, Grads
from .numpy_ops import NumpyOps


def _import_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError("backend 'cupy' needs CuPy and an NVIDIA GPU: pip install cupy-cuda12x "
                           f"(or the build for your CUDA); import failed: {exc}") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device
        raise RuntimeError(f"backend 'cupy': CuPy is installed but no GPU is usable: {exc}") from None
    if n < 1:
        raise RuntimeError("backend 'cupy': CuPy is installed but no GPU was found")
    return cupy


def _act(a):
    return a.code, a.alpha, a.beta


class CupyOps(NumpyOps):
    """``xp``/``kernels`` default to CuPy and the GPU kernels; tests pass NumPy and the host
    build of the same kernels."""

    name = "cupy"

    def __init__(self, xp=None, kernels=None):
        self.xp = _import_cupy() if xp is None else xp
        self._kernels = kernels
        self._dummies = {}

    @property
    def kernels(self):
        if self._kernels is None:
            from .cuda_kernels import CudaKernels
            self._kernels = CudaKernels(self.xp)
        return self._kernels

    def _dummy(self, dtype):
        """A one-element array passed where a kernel's optional pointer is unused."""
        d = self._dummies.get(dtype)
        if d is None:
            d = self._dummies[dtype] = self.xp.zeros(1, dtype)
        return d

    def _opt(self, a, dtype):
        return self._dummy(dtype) if a is None else a

    def _project(self, x, kernel, bias, input_dropout_mask):
        """(x * dropout mask, x W + b as [T,B,G]): one GEMM over every timestep."""
        T, B, I = x.shape
        xin = x if input_dropout_mask is None else x * input_dropout_mask[None]
        xw = self.xp.matmul(xin.reshape(T * B, I), kernel)
        if bias is not None:
            xw += bias
        return xin, xw.reshape(T, B, kernel.shape[1])

    def _mask8(self, mask):
        return None if mask is None else mask.view(self.xp.uint8)

    def _step_views(self, arr, t, dtype):
        return self._dummy(dtype) if arr is None else arr[t]

    def _hin(self, h, rdm, buf):
        """h_{t-1} as it enters the recurrent product (times the recurrent dropout mask)."""
        if rdm is None:
            return h
        self.xp.multiply(h, rdm, out=buf)
        return buf

    def _dh_from(self, dz, UT, dh, dhp, m8, t, rdm):
        """dh_{t-1} from the step's gate gradients dz: dz U^T, times the recurrent dropout
        mask, on unmasked rows (masked rows keep dh). dhp: work space, or None when there is
        neither mask nor dropout (dz U^T is then written into dh directly)."""
        if dhp is None:
            self.xp.matmul(dz, UT, out=dh)
            return
        dt = dz.dtype
        self.xp.matmul(dz, UT, out=dhp)
        self.kernels("merge_dh", dt, dh.size, dh.shape[1], m8 is not None, rdm is not None,
                     False, False, self._dummy(self.xp.uint8) if m8 is None else m8[t],
                     self._opt(rdm, dt), self._dummy(dt), dhp, self._dummy(dt), dh)

    def _backward_init(self, B, H, dtype, dy, dh_T, return_sequences):
        xp = self.xp
        dh = xp.zeros((B, H), dtype) if dh_T is None else dh_T.astype(dtype, copy=True)
        dout = xp.zeros((B, H), dtype)
        if dy is not None and not return_sequences:
            dout += dy
        return dh, dout

    # -- LSTM --------------------------------------------------------------------------
    def lstm_forward(self, x, kernel, recurrent_kernel, bias, h0, c0, *, peephole=None,
                     mask=None, input_dropout_mask=None, recurrent_dropout_mask=None,
                     activation, recurrent_activation, coupled=False, go_backwards=False,
                     return_sequences=True, training=False):
        xp, k = self.xp, self.kernels
        T, B, _ = x.shape
        H, G = recurrent_kernel.shape
        dt = x.dtype
        xin, xw = self._project(x, kernel, bias, input_dropout_mask)
        rdm, m8 = recurrent_dropout_mask, self._mask8(mask)
        h, c = h0.copy(), c0.copy()
        out = xp.zeros((B, H), dt) if mask is not None else h
        ys = xp.empty((T, B, H), dt) if return_sequences else None
        rec = xp.empty((B, G), dt)
        hbuf = xp.empty((B, H), dt) if rdm is not None else None
        gates = cs = h_prev = c_prev = None
        if training:
            gates = xp.empty((T, B, G), dt)
            cs, h_prev, c_prev = (xp.empty((T, B, H), dt) for _ in range(3))
        peep = self._opt(peephole, dt)
        u8 = self._dummy(xp.uint8)
        for s in range(T):
            t = T - 1 - s if go_backwards else s
            xp.matmul(self._hin(h, rdm, hbuf), recurrent_kernel, out=rec)
            k("lstm_fwd_step", dt, B * H, H, coupled, peephole is not None, mask is not None,
              return_sequences, training, *_act(activation), *_act(recurrent_activation),
              xw[t], rec, peep, u8 if m8 is None else m8[t], h, c, out,
              self._step_views(ys, s, dt), self._step_views(gates, t, dt),
              self._step_views(cs, t, dt), self._step_views(h_prev, t, dt),
              self._step_views(c_prev, t, dt))
        y = ys if return_sequences else out.copy()
        cache = None
        if training:
            cache = Cache(self.name, "lstm", dict(
                x=xin, gates=gates, cs=cs, h_prev=h_prev, c_prev=c_prev, kernel=kernel,
                recurrent_kernel=recurrent_kernel, peephole=peephole, mask=mask,
                input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=rdm,
                activation=activation, recurrent_activation=recurrent_activation,
                coupled=coupled, go_backwards=go_backwards, return_sequences=return_sequences,
                has_bias=bias is not None))
        return y, h, c, cache

    def lstm_backward(self, cache, dy=None, dh=None, dc=None):
        d = cache.take(self.name, "lstm")
        xp, k = self.xp, self.kernels
        x, gates, cs, h_prev, c_prev = d["x"], d["gates"], d["cs"], d["h_prev"], d["c_prev"]
        W, U, P, rdm = d["kernel"], d["recurrent_kernel"], d["peephole"], d["recurrent_dropout_mask"]
        coupled, rs = d["coupled"], d["return_sequences"]
        T, B, I = x.shape
        H, G = U.shape
        dt = x.dtype
        dh, dout = self._backward_init(B, H, dt, dy, dh, rs)
        dc = xp.zeros((B, H), dt) if dc is None else dc.astype(dt, copy=True)
        m8 = self._mask8(d["mask"])
        u8 = self._dummy(xp.uint8)
        UT = xp.ascontiguousarray(U.T)
        dhp = None if m8 is None and rdm is None else xp.empty((B, H), dt)
        peep = self._opt(P, dt)
        has_dy = dy is not None and rs
        for s in reversed(range(T)):
            t = T - 1 - s if d["go_backwards"] else s
            dz = gates[t]                     # the gate gradients overwrite the saved gates
            k("lstm_bwd_step", dt, B * H, H, coupled, P is not None, m8 is not None, has_dy,
              *_act(d["activation"]), *_act(d["recurrent_activation"]), gates[t], cs[t],
              c_prev[t], peep, u8 if m8 is None else m8[t], dy[s] if has_dy else self._dummy(dt),
              dh, dc, dout, dz)
            self._dh_from(dz, UT, dh, dhp, m8, t, rdm)
        dz2 = gates.reshape(T * B, G)
        dx = xp.matmul(dz2, W.T).reshape(T, B, I)
        if d["input_dropout_mask"] is not None:
            dx *= d["input_dropout_mask"][None]
        hin = h_prev if rdm is None else h_prev * rdm[None]
        dP = None
        if P is not None:
            of = 0 if coupled else H
            dP = xp.zeros((3, H), dt)
            if not coupled:
                dP[0] = (gates[:, :, :H] * c_prev).sum(axis=(0, 1))
            dP[1] = (gates[:, :, of:of + H] * c_prev).sum(axis=(0, 1))
            dP[2] = (gates[:, :, of + 2 * H:of + 3 * H] * cs).sum(axis=(0, 1))
        return Grads(
            inputs=dx, h0=dh, c0=dc,
            kernel=xp.matmul(x.reshape(T * B, I).T, dz2),
            recurrent_kernel=xp.matmul(hin.reshape(T * B, H).T, dz2),
            bias=dz2.sum(axis=0) if d["has_bias"] else None,
            peephole=dP)

    # -- GRU ---------------------------------------------------------------------------
    def gru_forward(self, x, kernel, recurrent_kernel, bias, h0, *, reset_after=True,
                    mask=None, input_dropout_mask=None, recurrent_dropout_mask=None,
                    activation, recurrent_activation, go_backwards=False,
                    return_sequences=True, training=False):
        xp, k = self.xp, self.kernels
        T, B, _ = x.shape
        H = recurrent_kernel.shape[0]
        G = 3 * H
        dt = x.dtype
        U = recurrent_kernel
        b_in = None if bias is None else (bias[0] if reset_after else bias)
        b_rec = bias[1] if (bias is not None and reset_after) else None
        xin, xw = self._project(x, kernel, b_in, input_dropout_mask)
        rdm, m8 = recurrent_dropout_mask, self._mask8(mask)
        u8 = self._dummy(xp.uint8)
        h = h0.copy()
        out = xp.zeros((B, H), dt) if mask is not None else h
        ys = xp.empty((T, B, H), dt) if return_sequences else None
        hbuf = xp.empty((B, H), dt) if rdm is not None else None
        gates = h_prev = rec_hs = None
        if training:
            gates = xp.empty((T, B, G), dt)
            h_prev = xp.empty((T, B, H), dt)
            rec_hs = xp.empty((T, B, H), dt) if reset_after else None
        a, ra = _act(activation), _act(recurrent_activation)
        if reset_after:
            rec = xp.empty((B, G), dt)
            brec = self._opt(b_rec, dt)
            for s in range(T):
                t = T - 1 - s if go_backwards else s
                xp.matmul(self._hin(h, rdm, hbuf), U, out=rec)
                k("gru_fwd_step", dt, B * H, H, b_rec is not None, mask is not None,
                  return_sequences, training, *a, *ra, xw[t], rec, brec,
                  u8 if m8 is None else m8[t], h, out, self._step_views(ys, s, dt),
                  self._step_views(gates, t, dt), self._step_views(rec_hs, t, dt),
                  self._step_views(h_prev, t, dt))
        else:
            U_zr = xp.ascontiguousarray(U[:, :2 * H])
            U_h = xp.ascontiguousarray(U[:, 2 * H:])
            rec2 = xp.empty((B, 2 * H), dt)
            rh = xp.empty((B, H), dt)
            recn = xp.empty((B, H), dt)
            scratch = None if training else xp.empty((B, G), dt)
            for s in range(T):
                t = T - 1 - s if go_backwards else s
                g = gates[t] if training else scratch
                hin = self._hin(h, rdm, hbuf)
                xp.matmul(hin, U_zr, out=rec2)
                k("gru_fwd_gates", dt, B * H, H, *ra, xw[t], rec2, hin, g, rh)
                xp.matmul(rh, U_h, out=recn)
                k("gru_fwd_step0", dt, B * H, H, mask is not None, return_sequences, training,
                  *a, xw[t], recn, u8 if m8 is None else m8[t], h, out,
                  self._step_views(ys, s, dt), g, self._step_views(h_prev, t, dt))
        y = ys if return_sequences else out.copy()
        cache = None
        if training:
            cache = Cache(self.name, "gru", dict(
                x=xin, gates=gates, h_prev=h_prev, rec_h=rec_hs, kernel=kernel,
                recurrent_kernel=U, reset_after=reset_after, mask=mask,
                input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=rdm,
                activation=activation, recurrent_activation=recurrent_activation,
                go_backwards=go_backwards, return_sequences=return_sequences,
                has_bias=bias is not None))
        return y, h, cache

    def gru_backward(self, cache, dy=None, dh=None):
        d = cache.take(self.name, "gru")
        xp, k = self.xp, self.kernels
        x, gates, h_prev, rec_hs = d["x"], d["gates"], d["h_prev"], d["rec_h"]
        W, U, rdm, reset_after = d["kernel"], d["recurrent_kernel"], d["recurrent_dropout_mask"], d["reset_after"]
        T, B, I = x.shape
        H = U.shape[0]
        G = 3 * H
        dt = x.dtype
        dh, dout = self._backward_init(B, H, dt, dy, dh, d["return_sequences"])
        has_dy = dy is not None and d["return_sequences"]
        m8 = self._mask8(d["mask"])
        u8 = self._dummy(xp.uint8)
        a, ra = _act(d["activation"]), _act(d["recurrent_activation"])
        dz_in = xp.empty((T, B, G), dt)
        dz_rec = xp.empty((T, B, G), dt) if reset_after else None
        carry, dhin = xp.empty((B, H), dt), xp.empty((B, H), dt)
        rdm_arg = self._opt(rdm, dt)
        if reset_after:
            UT = xp.ascontiguousarray(U.T)
        else:
            U_hT = xp.ascontiguousarray(U[:, 2 * H:].T)
            U_zrT = xp.ascontiguousarray(U[:, :2 * H].T)
            drh, part = xp.empty((B, H), dt), xp.empty((B, H), dt)
        for s in reversed(range(T)):
            t = T - 1 - s if d["go_backwards"] else s
            mt = u8 if m8 is None else m8[t]
            k("gru_bwd_step", dt, B * H, H, reset_after, m8 is not None, has_dy, *a, *ra,
              gates[t], h_prev[t], self._step_views(rec_hs, t, dt), mt,
              dy[s] if has_dy else self._dummy(dt), dh, dout, dz_in[t],
              self._step_views(dz_rec, t, dt), carry)
            if reset_after:
                xp.matmul(dz_rec[t], UT, out=dhin)
                k("merge_dh", dt, B * H, H, m8 is not None, rdm is not None, True, False, mt,
                  rdm_arg, carry, dhin, self._dummy(dt), dh)
            else:
                xp.matmul(dz_in[t, :, 2 * H:], U_hT, out=drh)
                k("gru_bwd_reset0", dt, B * H, H, m8 is not None, rdm is not None, ra[0], ra[1],
                  gates[t], h_prev[t], rdm_arg, drh, mt, dz_in[t], part)
                xp.matmul(dz_in[t, :, :2 * H], U_zrT, out=dhin)
                k("merge_dh", dt, B * H, H, m8 is not None, rdm is not None, True, True, mt,
                  rdm_arg, carry, part, dhin, dh)
        dZ = dz_in.reshape(T * B, G)
        dx = xp.matmul(dZ, W.T).reshape(T, B, I)
        if d["input_dropout_mask"] is not None:
            dx *= d["input_dropout_mask"][None]
        hin_all = (h_prev if rdm is None else h_prev * rdm[None]).reshape(T * B, H)
        if reset_after:
            dR = dz_rec.reshape(T * B, G)
            dU = xp.matmul(hin_all.T, dR)
            db = xp.stack([dZ.sum(axis=0), dR.sum(axis=0)]) if d["has_bias"] else None
        else:
            rh_all = gates[:, :, H:2 * H].reshape(T * B, H) * hin_all
            dU = xp.concatenate([xp.matmul(hin_all.T, dZ[:, :2 * H]),
                                 xp.matmul(rh_all.T, dZ[:, 2 * H:])], axis=1)
            db = dZ.sum(axis=0) if d["has_bias"] else None
        return Grads(inputs=dx, h0=dh, kernel=xp.matmul(x.reshape(T * B, I).T, dZ),
                     recurrent_kernel=dU, bias=db)

    # -- SimpleRNN ---------------------------------------------------------------------
    def simple_rnn_forward(self, x, kernel, recurrent_kernel, bias, h0, *, mask=None,
                           input_dropout_mask=None, recurrent_dropout_mask=None, activation,
                           go_backwards=False, return_sequences=True, training=False):
        xp, k = self.xp, self.kernels
        T, B, _ = x.shape
        H = recurrent_kernel.shape[0]
        dt = x.dtype
        xin, xw = self._project(x, kernel, bias, input_dropout_mask)
        rdm, m8 = recurrent_dropout_mask, self._mask8(mask)
        u8 = self._dummy(xp.uint8)
        h = h0.copy()
        out = xp.zeros((B, H), dt) if mask is not None else h
        ys = xp.empty((T, B, H), dt) if return_sequences else None
        rec = xp.empty((B, H), dt)
        hbuf = xp.empty((B, H), dt) if rdm is not None else None
        hs = h_prev = None
        if training:
            hs, h_prev = xp.empty((T, B, H), dt), xp.empty((T, B, H), dt)
        for s in range(T):
            t = T - 1 - s if go_backwards else s
            xp.matmul(self._hin(h, rdm, hbuf), recurrent_kernel, out=rec)
            k("rnn_fwd_step", dt, B * H, H, mask is not None, return_sequences, training,
              *_act(activation), xw[t], rec, u8 if m8 is None else m8[t], h, out,
              self._step_views(ys, s, dt), self._step_views(hs, t, dt),
              self._step_views(h_prev, t, dt))
        y = ys if return_sequences else out.copy()
        cache = None
        if training:
            cache = Cache(self.name, "simple_rnn", dict(
                x=xin, hs=hs, h_prev=h_prev, kernel=kernel, recurrent_kernel=recurrent_kernel,
                mask=mask, input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=rdm,
                activation=activation, go_backwards=go_backwards,
                return_sequences=return_sequences, has_bias=bias is not None))
        return y, h, cache

    def simple_rnn_backward(self, cache, dy=None, dh=None):
        d = cache.take(self.name, "simple_rnn")
        xp, k = self.xp, self.kernels
        x, hs, h_prev, W, U = d["x"], d["hs"], d["h_prev"], d["kernel"], d["recurrent_kernel"]
        rdm = d["recurrent_dropout_mask"]
        T, B, I = x.shape
        H = U.shape[0]
        dt = x.dtype
        dh, dout = self._backward_init(B, H, dt, dy, dh, d["return_sequences"])
        has_dy = dy is not None and d["return_sequences"]
        m8 = self._mask8(d["mask"])
        u8 = self._dummy(xp.uint8)
        UT = xp.ascontiguousarray(U.T)
        dhp = None if m8 is None and rdm is None else xp.empty((B, H), dt)
        dz_all = xp.empty((T, B, H), dt)
        for s in reversed(range(T)):
            t = T - 1 - s if d["go_backwards"] else s
            mt = u8 if m8 is None else m8[t]
            k("rnn_bwd_step", dt, B * H, H, m8 is not None, has_dy, d["activation"].code,
              d["activation"].alpha, hs[t], mt, dy[s] if has_dy else self._dummy(dt), dh, dout,
              dz_all[t])
            self._dh_from(dz_all[t], UT, dh, dhp, m8, t, rdm)
        dz2 = dz_all.reshape(T * B, H)
        dx = xp.matmul(dz2, W.T).reshape(T, B, I)
        if d["input_dropout_mask"] is not None:
            dx *= d["input_dropout_mask"][None]
        hin = h_prev if rdm is None else h_prev * rdm[None]
        return Grads(inputs=dx, h0=dh, kernel=xp.matmul(x.reshape(T * B, I).T, dz2),
                     recurrent_kernel=xp.matmul(hin.reshape(T * B, H).T, dz2),
                     bias=dz2.sum(axis=0) if d["has_bias"] else None)
