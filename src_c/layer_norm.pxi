# Layer normalization in the sequence driver (haste's LayerNormLSTM/GRU), included by
# driver.pxi: each row of the input projection x W and of the per-step product h U is
# normalized over its G columns (eps 1e-5, biased variance) and scaled by its gain row,
#   Z_t = LN(x_t W) gamma[0] + b + LN(h_{t-1} U) gamma[1]
# (the GRU keeps its recurrent block apart, _gru.pyx). The LSTM's LN(c_t) lives in its step
# kernels (gates_impl.h). Training saves the normalized rows and their 1/sqrt(var + eps)
# (XN, XS, RN, RS); BPTT turns dZ_t into the gradient of h U over RN_t (dh_{t-1} = that U^T)
# and, after the loop, dZ into that of x W over XN, so dW, dU and dX are the usual products
# over those instead of dZ.
from gates cimport ln_fwd, ln_bwd, merge_rows
from sequence cimport LayerNorm
from products cimport (Settings, par_gemm, input_grad_rows as ln_input_rows, row_chunks,
                       step_product_set)


cdef inline void ln_clear(LayerNorm *ln) noexcept:
    ln.g = ln.h = ln.XN = ln.XS = ln.RN = ln.RS = ln.CN = ln.CS = NULL


cdef long ln_rows(const Settings *s, long T, int B, int H, int G, long widest) noexcept:
    """Rows of the per-step product one thread of an inference loop normalizes in its
    scratch: its share of the batch (row_chunks), or the packed loop's widest group."""
    cdef int n = row_chunks(s, T, B, H, G)
    return widest if widest > 0 else (B + n - 1) // n


cdef list ln_setup(Fwd *p, const floating[:, ::1] gamma, const floating[:, ::1] gamma_h,
                   long rows, bint cell_states):
    """p's layer norm from gamma [2,G] (None: none) and the LSTM's gamma_h, beta_h ([2,H]
    stacked, or None); when training, the buffers it saves over `rows` rows of Z (T*B, or
    the packed rows), with the cell states' (cell_states). Returns the arrays behind the
    pointers (the cell keeps them, and backward takes XN, XS, RN, RS, CN, CS from it)."""
    cdef floating[:, ::1] xn, rn, cn
    cdef floating[::1] xs, rs, cs
    ln_clear(&p.ln)
    if gamma is None:
        return None
    if p.qW != NULL or p.ncols:
        raise ValueError("layer_norm: float weights and a row loop only")
    dtype = np.float32 if floating is float else np.float64
    p.ln.g = <void *>&gamma[0, 0]
    keep = [np.asarray(gamma), None if gamma_h is None else np.asarray(gamma_h)]
    if gamma_h is not None:
        p.ln.h = <void *>&gamma_h[0, 0]
    if not p.training:
        return keep
    arrays = [np.empty((rows, p.G), dtype), np.empty(rows, dtype),
              np.empty((rows, p.G), dtype), np.empty(rows, dtype)]
    xn, xs, rn, rs = arrays
    p.ln.XN, p.ln.XS, p.ln.RN, p.ln.RS = &xn[0, 0], &xs[0], &rn[0, 0], &rs[0]
    if cell_states:
        arrays += [np.empty((rows, p.H), dtype), np.empty(rows, dtype)]
        cn, cs = arrays[4], arrays[5]
        p.ln.CN, p.ln.CS = &cn[0, 0], &cs[0]
    return keep + arrays


cdef inline void ln_project(const Fwd *p, long r0, long nr, floating *Z, long ldz) noexcept nogil:
    """Rows [r0, r0+nr) of the chunk's projection, x W without its bias in Z (row stride
    ldz), become LN(x W) gamma[0] + b (LN(x W) saved in XN when training: then the chunk
    holds every row)."""
    cdef floating *zr = Z + r0 * ldz
    cdef long G = p.G
    ln_fwd(<int>nr, <int>G, zr, ldz, <const floating *>p.ln.g, <const floating *>p.bias, 0, zr,
           ldz, <floating *>p.ln.XN + r0 * G if p.ln.XN != NULL else NULL, G,
           <floating *>p.ln.XS + r0 if p.ln.XS != NULL else NULL)


cdef inline void ln_step_product(const Fwd *p, int nb, long t, long b0, const floating *hin,
                                 floating *zt, long ldz, floating *work) noexcept nogil:
    """A step's Z_t (nb rows from batch row b0, row stride ldz) += LN(hin U) gamma[1]: the
    product in RN's rows of step t when training (normalized there), else in work [nb,G]."""
    cdef long G = p.G, row = t * p.B + b0
    cdef floating *r = <floating *>p.ln.RN + row * G if p.training else work
    step_product_set(&p.cfg, nb, p.H, p.G, hin, <const floating *>p.U, p.G,
                     <const floating *>p.Up, <const floating *>p.Upan, r, p.G)
    ln_fwd(nb, p.G, r, G, <const floating *>p.ln.g + G, NULL, 1, zt, ldz,
           r if p.training else NULL, G, <floating *>p.ln.RS + row if p.training else NULL)


cdef inline const floating *ln_step_grad(const Bwd *q, int nb, long t, long b0,
                                         const floating *dz, long ldz,
                                         floating *acc) noexcept nogil:
    """The gradient of step t's h U (nb rows from b0) from dZ_t, over RN's rows (returned,
    rows G apart: dh_{t-1} = it U^T); gamma[1]'s gradient added to acc + lnacc."""
    cdef long G = q.G, row = t * q.B + b0
    cdef floating *r = <floating *>q.ln.RN + row * G
    ln_bwd(nb, q.G, dz, ldz, <const floating *>q.ln.g + G, r, G, <const floating *>q.ln.RS + row,
           acc + q.lnacc, NULL, r, G)
    return r


cdef void ln_param_grads(const Bwd *q, floating *Z) noexcept nogil:
    """param_grads with layer norm, over dZ [T*B,ZW]: gamma[0]'s gradient and dZ's column
    sums (the bias gradient) into lnpart [n, G + ZW] (a thread's each, summed by the caller:
    ln_gains), XN := the gradient of x W; then dW = X^T XN, dU = HIN^T RN and dX = XN W^T
    (times the input dropout mask). The GRU's dZ [dz dr | d rec_h | dn] (ZW = 4H; the loop
    has taken d rec_h into RN) first gets dn moved over d rec_h: x W fed its columns 0:3H."""
    cdef long TB = q.T * q.B, G = q.G, ZW = q.ZW, H = q.H, ci, a, e, r, j
    cdef int n = split(&q.cfg, TB, 64, <double>TB * G * 8), nw, nr
    cdef const floating *lng = <const floating *>q.ln.g
    cdef floating *XN = <floating *>q.ln.XN
    cdef floating *part = <floating *>q.lnpart
    cdef floating *pg
    cdef floating *zr
    for ci in prange(n, num_threads=n, schedule="static"):
        a = ci * TB // n
        e = (ci + 1) * TB // n
        pg = part + ci * (G + ZW)
        if ZW != G:
            for r in range(a, e):
                zr = Z + r * ZW
                for j in range(ZW):
                    pg[G + j] += zr[j]
                memcpy(zr + 2 * H, zr + 3 * H, H * sizeof(floating))
            ln_bwd(<int>(e - a), <int>G, Z + a * ZW, ZW, lng, XN + a * G, G,
                   <const floating *>q.ln.XS + a, pg, NULL, XN + a * G, G)
        else:
            ln_bwd(<int>(e - a), <int>G, Z + a * G, G, lng, XN + a * G, G,
                   <const floating *>q.ln.XS + a, pg, pg + G, XN + a * G, G)
    nw = split(&q.cfg, G, 64, <double>TB * (q.In + q.H) * G)
    par_gemm(True, False, q.In, <int>G, <int>TB, <floating>1, <const floating *>q.X, q.In, XN,
             <int>G, <floating>0, <floating *>q.dW, <int>G, nw, False, q.own)
    par_gemm(True, False, q.H, <int>G, <int>TB, <floating>1, <const floating *>q.HIN, q.H,
             <const floating *>q.ln.RN, <int>G, <floating>0, <floating *>q.dU, <int>G, nw, False,
             q.own)
    nr = split(&q.cfg, TB, 64, <double>TB * q.In * G)
    for ci in prange(nr, num_threads=nr, schedule="static"):
        ln_input_rows(ci * TB // nr, (ci + 1) * TB // nr - ci * TB // nr, q.In, <int>G, XN,
                      <const floating *>q.W, <const floating *>q.WTp, <floating *>q.dX)
    if q.idrop != NULL:
        for a in range(q.T):
            merge_rows(q.B, q.In, NULL, <const floating *>q.idrop,
                       <floating *>q.dX + a * q.B * q.In, <floating *>q.dX + a * q.B * q.In)


cdef object ln_bind(Bwd *q, list saved, long lnacc, dtype):
    """q's layer norm from forward's saved["ln"] (ln_setup's list) or None; the gains'
    gradients at lnacc in each thread's accumulator. Returns ln_param_grads's per-thread
    sums (ln_part; the caller keeps it until the loop is done), or None."""
    if saved is None:
        return None
    gamma, gamma_h, xn, xs, rn, rs = saved[:6]
    q.ln.g = ptr(gamma)
    q.ln.h = ptr(gamma_h)
    q.ln.XN, q.ln.XS, q.ln.RN, q.ln.RS = ptr(xn), ptr(xs), ptr(rn), ptr(rs)
    if len(saved) > 6:
        q.ln.CN, q.ln.CS = ptr(saved[6]), ptr(saved[7])
    q.lnacc = lnacc
    part = ln_part(q, dtype)
    q.lnpart = ptr(part)
    return part


cdef void *ptr(a):
    """The data of a C-contiguous NumPy array (kept alive by its holder), or NULL for None."""
    if a is None:
        return NULL
    if not a.flags.c_contiguous:
        raise ValueError("layer_norm: expected C-contiguous saved arrays")
    return <void *><size_t>a.ctypes.data


cdef object ln_part(const Bwd *q, dtype):
    """The per-thread [G + ZW] sums ln_param_grads writes (as many as it may split into)."""
    return np.zeros(max(1, q.cfg.threads) * (q.G + q.ZW), dtype)


cdef object ln_gains(part, long G, long ZW, db):
    """gamma[0]'s gradient from ln_param_grads's part; dZ's column sums into db (if any)."""
    s = part.reshape(-1, G + ZW).sum(0)
    if db is not None:
        db[...] = s[G:]
    return s[:G]
