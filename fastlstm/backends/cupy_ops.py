"""The ``cupy`` backend: every cell's forward and BPTT on the GPU, with fused CUDA kernels.

The structure is the CPU kernels': the input projection is one GEMM over all T*B rows (cuBLAS
through CuPy), each step runs the recurrent GEMM and then one fused elementwise kernel for the
gate math (``cuda/rnn_kernels.cu``), and the weight gradients are single GEMMs after the loop.
Saved activations are indexed by time t, outputs by step s, as in the oracle. The time loops
launch through ``KernelSet.steps`` and ``KernelSet.gemm`` (checked once per call, a few
microseconds of Python a launch), not through CuPy's array API.

Importing fastlstm never needs CuPy; asking for this backend without CuPy or without a GPU is
a clear error. The orchestration is written against an array module and a ``KernelSet``, so the
test suite also runs it with ``xp=numpy`` over the same kernels compiled for the host.
"""
from __future__ import annotations

from .cache_and_grads import Cache, Grads
from .cuda_kernels import At
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

    def _rows(self, arr, by, dtype):
        """Per step, row s or t (``by``) of ``arr``; the unused-pointer dummy for None."""
        return self._dummy(dtype) if arr is None else At(arr, by)

    def _mask_rows(self, m8):
        return self._rows(m8, "t", self.xp.uint8)

    #: Products of at most this many multiply-adds, each output a sum of at most
    #: ``small_product_depth`` terms, run on the small_gemm kernel rather than cuBLAS, whose
    #: host cost per call dwarfs their GPU time. small_gemm sums each output on one thread,
    #: so its GPU time grows with the depth and deep products are faster on cuBLAS
    #: (bench/RESULTS.md, "Numbers behind choices").
    small_product_macs = 1 << 22
    small_product_depth = 128

    def _product(self, a, b, out, stack=None):
        """f(t=0): out = a @ b. a [M,K] has contiguous rows (any distance apart), b and out
        are C-contiguous. With ``stack`` (a C-contiguous [T,...] array, a a window of
        stack[0]) f(t) takes the same window of stack[t]. f holds the arrays, so their
        memory outlives it (b is often a temporary copy)."""
        k = self.kernels
        (M, K), N = a.shape, b.shape[1]
        if M == 0 or N == 0:
            return lambda t=0: None
        if not (b.flags.c_contiguous and out.flags.c_contiguous
                and (K <= 1 or a.strides[1] == a.itemsize)
                and (stack is None or stack.flags.c_contiguous)):
            raise ValueError(f"_product: needs contiguous rows, got strides {a.strides}, "
                             f"{b.strides}, {out.strides}")
        lda = a.strides[0] // a.itemsize if M > 1 else K
        A = k.address
        if (M * N * K <= self.small_product_macs and K <= self.small_product_depth
                and (stack is not None or a.flags.c_contiguous)):
            rows = a
            if stack is not None:          # the window's span in each stack[t], as rows
                offset = (A(a) - A(stack)) // a.itemsize
                rows = At(stack.reshape(stack.shape[0], -1)[:, offset:], "t")
            step = k.steps("small_gemm", out.dtype, M * N, N, K, lda, rows, b, out)
            return lambda t=0: step(t, t)
        gemm = k.gemm(out.dtype)
        pa, pb, pc = A(a), A(b), A(out)
        a_step = 0 if stack is None else stack.strides[0]

        def f(t=0, keep=(a, b, out, stack)):
            gemm(M, N, K, pa + t * a_step, lda, pb, N, pc, N)
        return f

    def _recurrent_input(self, h, rdm, dt):
        """(hin, f): hin is h_{t-1} as it enters the recurrent product; f() refreshes it
        (times the recurrent dropout mask) before each product."""
        if rdm is None:
            return h, lambda: None
        buf = self.xp.empty(h.shape, dt)
        return buf, lambda: self.xp.multiply(h, rdm, out=buf)

    def _dh_steps(self, dz, UT, dh, m8, rdm):
        """f(t): dh_{t-1} from the step's gate gradients dz[t] (dz: [T,B,G]): dz[t] U^T,
        times the recurrent dropout mask, on unmasked rows (masked rows keep dh). With
        neither mask nor dropout the product is written into dh directly."""
        dt = dh.dtype
        if m8 is None and rdm is None:
            return self._product(dz[0], UT, dh, dz)
        dhp = self.xp.empty(dh.shape, dt)
        product = self._product(dz[0], UT, dhp, dz)
        merge = self.kernels.steps(
            "merge_dh", dt, dh.size, dh.shape[1], m8 is not None, rdm is not None, False,
            False, self._mask_rows(m8), self._opt(rdm, dt), self._dummy(dt), dhp,
            self._dummy(dt), dh)

        def f(t):
            product(t)
            merge(t, t)
        return f

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
        xp = self.xp
        T, B, _ = x.shape
        H, G = recurrent_kernel.shape
        dt = x.dtype
        xin, xw = self._project(x, kernel, bias, input_dropout_mask)
        rdm, m8 = recurrent_dropout_mask, self._mask8(mask)
        h, c = h0.copy(), c0.copy()
        out = xp.zeros((B, H), dt) if mask is not None else h
        ys = xp.empty((T, B, H), dt) if return_sequences else None
        rec = xp.empty((B, G), dt)
        gates = cs = h_prev = c_prev = None
        if training:
            gates = xp.empty((T, B, G), dt)
            cs, h_prev, c_prev = (xp.empty((T, B, H), dt) for _ in range(3))
        hin, refresh = self._recurrent_input(h, rdm, dt)
        product = self._product(hin, xp.ascontiguousarray(recurrent_kernel), rec)
        step = self.kernels.steps(
            "lstm_fwd_step", dt, B * H, H, coupled, peephole is not None, mask is not None,
            return_sequences, training, *_act(activation), *_act(recurrent_activation),
            At(xw, "t"), rec, self._opt(peephole, dt), self._mask_rows(m8), h, c, out,
            self._rows(ys, "s", dt), self._rows(gates, "t", dt), self._rows(cs, "t", dt),
            self._rows(h_prev, "t", dt), self._rows(c_prev, "t", dt))
        for s in range(T):
            t = T - 1 - s if go_backwards else s
            refresh()
            product()
            step(s, t)
        y = ys if return_sequences else out.copy()
        cache = None
        if training:
            cache = Cache(self.name, "lstm", dict(
                x=xin, gates=gates, cs=cs, h_prev=h_prev, c_prev=c_prev, kernel=kernel,
                recurrent_kernel=recurrent_kernel, peephole=peephole, mask=mask,
                input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=rdm,
                activation=activation, recurrent_activation=recurrent_activation,
                coupled=coupled, go_backwards=go_backwards, return_sequences=return_sequences,
                has_bias=bias is not None), made_by="cupy")
        return y, h, c, cache

    def lstm_backward(self, cache, dy=None, dh=None, dc=None):
        d = cache.take(self.name, "lstm")
        xp = self.xp
        x, gates, cs, h_prev, c_prev = d["x"], d["gates"], d["cs"], d["h_prev"], d["c_prev"]
        W, U, P, rdm = d["kernel"], d["recurrent_kernel"], d["peephole"], d["recurrent_dropout_mask"]
        coupled, rs = d["coupled"], d["return_sequences"]
        T, B, I = x.shape
        H, G = U.shape
        dt = x.dtype
        dh, dout = self._backward_init(B, H, dt, dy, dh, rs)
        dc = xp.zeros((B, H), dt) if dc is None else dc.astype(dt, copy=True)
        m8 = self._mask8(d["mask"])
        has_dy = dy is not None and rs
        # the gate gradients dz overwrite the saved gates, row t by row t
        step = self.kernels.steps(
            "lstm_bwd_step", dt, B * H, H, coupled, P is not None, m8 is not None, has_dy,
            *_act(d["activation"]), *_act(d["recurrent_activation"]), At(gates, "t"),
            At(cs, "t"), At(c_prev, "t"), self._opt(P, dt), self._mask_rows(m8),
            self._rows(dy if has_dy else None, "s", dt), dh, dc, dout, At(gates, "t"))
        dh_from = self._dh_steps(gates, xp.ascontiguousarray(U.T), dh, m8, rdm)
        for s in reversed(range(T)):
            t = T - 1 - s if d["go_backwards"] else s
            step(s, t)
            dh_from(t)
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
        U = xp.ascontiguousarray(recurrent_kernel)
        b_in = None if bias is None else (bias[0] if reset_after else bias)
        b_rec = bias[1] if (bias is not None and reset_after) else None
        xin, xw = self._project(x, kernel, b_in, input_dropout_mask)
        rdm, m8 = recurrent_dropout_mask, self._mask8(mask)
        h = h0.copy()
        out = xp.zeros((B, H), dt) if mask is not None else h
        ys = xp.empty((T, B, H), dt) if return_sequences else None
        gates = h_prev = rec_hs = None
        if training:
            gates = xp.empty((T, B, G), dt)
            h_prev = xp.empty((T, B, H), dt)
            rec_hs = xp.empty((T, B, H), dt) if reset_after else None
        a, ra = _act(activation), _act(recurrent_activation)
        hin, refresh = self._recurrent_input(h, rdm, dt)
        if reset_after:
            rec = xp.empty((B, G), dt)
            product = self._product(hin, U, rec)
            step = k.steps(
                "gru_fwd_step", dt, B * H, H, b_rec is not None, mask is not None,
                return_sequences, training, *a, *ra, At(xw, "t"), rec, self._opt(b_rec, dt),
                self._mask_rows(m8), h, out, self._rows(ys, "s", dt), self._rows(gates, "t", dt),
                self._rows(rec_hs, "t", dt), self._rows(h_prev, "t", dt))
            for s in range(T):
                t = T - 1 - s if go_backwards else s
                refresh()
                product()
                step(s, t)
        else:
            rec2 = xp.empty((B, 2 * H), dt)
            rh = xp.empty((B, H), dt)
            recn = xp.empty((B, H), dt)
            g = self._rows(gates, "t", dt) if training else xp.empty((B, G), dt)
            product_zr = self._product(hin, xp.ascontiguousarray(U[:, :2 * H]), rec2)
            product_h = self._product(rh, xp.ascontiguousarray(U[:, 2 * H:]), recn)
            zr = k.steps("gru_fwd_gates", dt, B * H, H, *ra, At(xw, "t"), rec2, hin, g, rh)
            step = k.steps(
                "gru_fwd_step0", dt, B * H, H, mask is not None, return_sequences, training,
                *a, At(xw, "t"), recn, self._mask_rows(m8), h, out, self._rows(ys, "s", dt), g,
                self._rows(h_prev, "t", dt))
            for s in range(T):
                t = T - 1 - s if go_backwards else s
                refresh()
                product_zr()
                zr(s, t)
                product_h()
                step(s, t)
        y = ys if return_sequences else out.copy()
        cache = None
        if training:
            cache = Cache(self.name, "gru", dict(
                x=xin, gates=gates, h_prev=h_prev, rec_h=rec_hs, kernel=kernel,
                recurrent_kernel=U, reset_after=reset_after, mask=mask,
                input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=rdm,
                activation=activation, recurrent_activation=recurrent_activation,
                go_backwards=go_backwards, return_sequences=return_sequences,
                has_bias=bias is not None), made_by="cupy")
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
        mt = self._mask_rows(m8)
        a, ra = _act(d["activation"]), _act(d["recurrent_activation"])
        dz_in = xp.empty((T, B, G), dt)
        dz_rec = xp.empty((T, B, G), dt) if reset_after else None
        carry, dhin = xp.empty((B, H), dt), xp.empty((B, H), dt)
        rdm_arg = self._opt(rdm, dt)
        step = k.steps(
            "gru_bwd_step", dt, B * H, H, reset_after, m8 is not None, has_dy, *a, *ra,
            At(gates, "t"), At(h_prev, "t"), self._rows(rec_hs, "t", dt), mt,
            self._rows(dy if has_dy else None, "s", dt), dh, dout, At(dz_in, "t"),
            self._rows(dz_rec, "t", dt), carry)
        if reset_after:
            product = self._product(dz_rec[0], xp.ascontiguousarray(U.T), dhin, dz_rec)
            merge = k.steps("merge_dh", dt, B * H, H, m8 is not None, rdm is not None, True,
                            False, mt, rdm_arg, carry, dhin, self._dummy(dt), dh)
        else:
            drh, part = xp.empty((B, H), dt), xp.empty((B, H), dt)
            product_h = self._product(dz_in[0, :, 2 * H:], xp.ascontiguousarray(U[:, 2 * H:].T),
                                      drh, dz_in)
            reset = k.steps("gru_bwd_reset0", dt, B * H, H, m8 is not None, rdm is not None,
                            ra[0], ra[1], At(gates, "t"), At(h_prev, "t"), rdm_arg, drh, mt,
                            At(dz_in, "t"), part)
            product = self._product(dz_in[0, :, :2 * H], xp.ascontiguousarray(U[:, :2 * H].T),
                                    dhin, dz_in)
            merge = k.steps("merge_dh", dt, B * H, H, m8 is not None, rdm is not None, True,
                            True, mt, rdm_arg, carry, part, dhin, dh)
        for s in reversed(range(T)):
            t = T - 1 - s if d["go_backwards"] else s
            step(s, t)
            if not reset_after:
                product_h(t)
                reset(t, t)
            product(t)
            merge(t, t)
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
        xp = self.xp
        T, B, _ = x.shape
        H = recurrent_kernel.shape[0]
        dt = x.dtype
        xin, xw = self._project(x, kernel, bias, input_dropout_mask)
        rdm, m8 = recurrent_dropout_mask, self._mask8(mask)
        h = h0.copy()
        out = xp.zeros((B, H), dt) if mask is not None else h
        ys = xp.empty((T, B, H), dt) if return_sequences else None
        rec = xp.empty((B, H), dt)
        hs = h_prev = None
        if training:
            hs, h_prev = xp.empty((T, B, H), dt), xp.empty((T, B, H), dt)
        hin, refresh = self._recurrent_input(h, rdm, dt)
        product = self._product(hin, xp.ascontiguousarray(recurrent_kernel), rec)
        step = self.kernels.steps(
            "rnn_fwd_step", dt, B * H, H, mask is not None, return_sequences, training,
            *_act(activation), At(xw, "t"), rec, self._mask_rows(m8), h, out,
            self._rows(ys, "s", dt), self._rows(hs, "t", dt), self._rows(h_prev, "t", dt))
        for s in range(T):
            t = T - 1 - s if go_backwards else s
            refresh()
            product()
            step(s, t)
        y = ys if return_sequences else out.copy()
        cache = None
        if training:
            cache = Cache(self.name, "simple_rnn", dict(
                x=xin, hs=hs, h_prev=h_prev, kernel=kernel, recurrent_kernel=recurrent_kernel,
                mask=mask, input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=rdm,
                activation=activation, go_backwards=go_backwards,
                return_sequences=return_sequences, has_bias=bias is not None), made_by="cupy")
        return y, h, cache

    def simple_rnn_backward(self, cache, dy=None, dh=None):
        d = cache.take(self.name, "simple_rnn")
        xp = self.xp
        x, hs, h_prev, W, U = d["x"], d["hs"], d["h_prev"], d["kernel"], d["recurrent_kernel"]
        rdm = d["recurrent_dropout_mask"]
        T, B, I = x.shape
        H = U.shape[0]
        dt = x.dtype
        dh, dout = self._backward_init(B, H, dt, dy, dh, d["return_sequences"])
        has_dy = dy is not None and d["return_sequences"]
        m8 = self._mask8(d["mask"])
        dz_all = xp.empty((T, B, H), dt)
        step = self.kernels.steps(
            "rnn_bwd_step", dt, B * H, H, m8 is not None, has_dy, d["activation"].code,
            d["activation"].alpha, At(hs, "t"), self._mask_rows(m8),
            self._rows(dy if has_dy else None, "s", dt), dh, dout, At(dz_all, "t"))
        dh_from = self._dh_steps(dz_all, xp.ascontiguousarray(U.T), dh, m8, rdm)
        for s in reversed(range(T)):
            t = T - 1 - s if d["go_backwards"] else s
            step(s, t)
            dh_from(t)
        dz2 = dz_all.reshape(T * B, H)
        dx = xp.matmul(dz2, W.T).reshape(T, B, I)
        if d["input_dropout_mask"] is not None:
            dx *= d["input_dropout_mask"][None]
        hin = h_prev if rdm is None else h_prev * rdm[None]
        return Grads(inputs=dx, h0=dh, kernel=xp.matmul(x.reshape(T * B, I).T, dz2),
                     recurrent_kernel=xp.matmul(hin.reshape(T * B, H).T, dz2),
                     bias=dz2.sum(axis=0) if d["has_bias"] else None)
