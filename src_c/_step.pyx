# One timestep of the LSTM, GRU and SimpleRNN for streaming (layer.step), GIL released.
#
# A plan binds a layer's weight arrays themselves, not copies: updates in place (optimizers,
# users' own loops) show at the next step, and new arrays (set_weights) need a new plan,
# which the layer makes when bound_to() says so. ``call`` checks its arguments with a few C
# comparisons and returns None for anything it does not take as is; the layer then goes the
# general way, which converts or raises. Per step, on the buffers of the plan:
#   - z = b + x W + h U on this thread (our kernel; a GEMV per product at batch 1), then the
#     cell's fused elementwise pass of gates.c;
#   - at batch 1 with weights from STEP_SPLIT_MIN_BYTES, the threads split the rows of
#     [W; U] instead (split_products), and the partial sums are added up with the bias.
# The gate layouts are those of the sequence kernels (src_c/gates_impl.h, gru_impl.h).
import numpy as np
cimport numpy as cnp

cnp.import_array()

from fastlstm.backends.aligned import aligned_empty

from cython.parallel cimport prange
from libc.limits cimport INT_MAX
from libc.string cimport memcpy, memset
from blas cimport floating
from products cimport Settings, product
from lowp cimport fl_q_force_level
from fastlstm.threads import kernel_settings
from gates cimport (fl_act, make_act, gemv_acc, matmul_acc, fl_force_isa_level, fl_isa_level,
                    lstm_fwd_step, gru_fwd_reset, gru_fwd_step, rnn_fwd_step)
from fastlstm.quantization import QuantizedMatrix

include "quant_binding.pxi"

# Weights from which a batch-1 step splits its rows over the threads: below, a split step was
# not reliably faster than one thread (bench/RESULTS.md, "Kernel thresholds").
cdef enum:
    STEP_SPLIT_MIN_BYTES = 768 << 10


# Threads and the product policy are fastlstm.threads's, read at each call; these setters are
# its own, re-exported for tests ('blas' keeps the step on one thread with its products on
# BLAS, 'own' has them on our kernel at any size).
from fastlstm.threads import _set_kernel_threads as set_threads, set_recurrent_matmul


def force_isa_level_here(int level):
    """This extension's own copy of the ISA dispatch (each extension compiles gates.c):
    fastlstm._gates.force_isa_level sets every copy."""
    fl_force_isa_level(level)


def force_lowp_level_here(int level):
    """This extension's own copy of the reduced-precision dispatch (lowp.c):
    fastlstm._lowp.force_level sets every copy."""
    fl_q_force_level(level)


def isa_level_here():
    """The ISA variant this extension's kernels run (0 baseline, 1 AVX2, 2 AVX-512)."""
    return fl_isa_level()


# ------------------------------------------------------------------------------ products
cdef inline void fill_rows(int B, int N, const floating *b, floating *z, int ldz) noexcept nogil:
    """Rows of z [B,N] (row stride ldz) := b [N], or zeros without a bias."""
    cdef int r
    for r in range(B):
        if b != NULL:
            memcpy(z + <long>r * ldz, b, N * sizeof(floating))
        else:
            memset(z + <long>r * ldz, 0, N * sizeof(floating))


cdef inline void rows_acc(int rows, int k0, int k1, int I, int H, int nx, int nh, int ldw,
                          const floating *x, const floating *h, const floating *W,
                          const floating *U, floating *zx, floating *zh) noexcept nogil:
    """zx[nx] := rows [k0, k1) of x W that fall in [0, I), zh[nh] := those of h U (rows I..I+H
    of [W; U]); the first nx and nh columns of W and U, whose row stride is ldw; `rows` of
    them a pass (Settings.gemv_rows)."""
    cdef int j0
    memset(zx, 0, nx * sizeof(floating))
    memset(zh, 0, nh * sizeof(floating))
    if k0 < I:
        gemv_acc(rows, nx, min(k1, I) - k0, x + k0, W + <long>k0 * ldw, ldw, zx)
    if k1 > I:
        j0 = max(k0, I) - I
        gemv_acc(rows, nh, k1 - I - j0, h + j0, U + <long>j0 * ldw, ldw, zh)


cdef inline void split_products(int rows, int nt, int I, int H, int nx, int nh, int ldw,
                                const floating *x, const floating *h, const floating *W,
                                const floating *U, floating *zx, floating *zh,
                                floating *parts) noexcept nogil:
    """zx = x W, zh = h U at batch 1, the rows of [W; U] split over nt threads in whole 8-row
    groups, in one parallel region. Each thread reads one contiguous block of weights (with
    I = H and two threads, one all of W and the other all of U), which streams faster than a
    slice of the columns of every row, into its own partial sums: the first thread into zx
    and zh, the others into parts [nt-1, nx+nh]; this thread adds them up."""
    cdef int k, j, K = I + H, groups = (I + H + 7) // 8
    cdef long w = nx + nh
    for k in prange(nt, num_threads=nt, schedule="static"):
        rows_acc(rows, min(K, (k * groups // nt) * 8), min(K, ((k + 1) * groups // nt) * 8), I, H,
                 nx, nh, ldw, x, h, W, U, zx if k == 0 else parts + (k - 1) * w,
                 zh if k == 0 else parts + (k - 1) * w + nx)
    for k in range(1, nt):
        for j in range(nx):
            zx[j] += parts[(k - 1) * w + j]
        for j in range(nh):
            zh[j] += parts[(k - 1) * w + nx + j]


# ------------------------------------------------------------------------------ cells
cdef inline void step_products(const Settings *s, int nt, int B, int I, int H, int G,
                               const floating *x, int ldx,
                               const floating *h, const floating *W, const floating *U,
                               const floating *b, floating *z, floating *zh,
                               floating *parts) noexcept nogil:
    """z [B,G] = b + x W + h U (LSTM, SimpleRNN): split over nt > 1 threads at batch 1 (zh
    [G] and parts take the partial sums), else on this thread."""
    cdef int j
    if nt > 1:
        split_products(s.gemv_rows, nt, I, H, G, G, G, x, h, W, U, z, zh, parts)
        for j in range(G):
            z[j] += zh[j] + (b[j] if b != NULL else 0)
    else:
        fill_rows(B, G, b, z, G)
        product(s, B, I, G, x, ldx, W, G, <floating>1, z, G)
        product(s, B, H, G, h, H, U, G, <floating>1, z, G)


cdef inline void lstm_step(const Settings *s, int nt, int B, int I, int H, int G,
                           const floating *x, int ldx,
                           const floating *h, const floating *c, const floating *W,
                           const floating *U, const floating *b, const floating *P,
                           bint coupled, fl_act act, fl_act ract, floating *z, floating *zh,
                           floating *parts, floating *scratch, floating *h_out,
                           floating *c_out) noexcept nogil:
    """z [B,G] = b + x W + h U, then the gates and the new h, c (h_out, c_out)."""
    step_products(s, nt, B, I, H, G, x, ldx, h, W, U, b, z, zh, parts)
    lstm_fwd_step(B, H, coupled, act, ract, z, P, NULL, h, c, h_out, c_out, NULL, NULL, scratch,
                  NULL, NULL, NULL)


cdef inline void gru_bias_row(int H, bint reset_after, const floating *b,
                              floating *brow) noexcept nogil:
    """The bias row of z (see _gru.forward): reset_after, from b [2,3H] = [input; recurrent],
    [b_zr + b'_zr | b'_h | b_h]; else b [3H] itself; zeros without a bias."""
    cdef int j
    if b == NULL:
        memset(brow, 0, (4 if reset_after else 3) * H * sizeof(floating))
    elif reset_after:
        for j in range(2 * H):
            brow[j] = b[j] + b[3 * H + j]
        memcpy(brow + 2 * H, b + 5 * H, H * sizeof(floating))
        memcpy(brow + 3 * H, b + 2 * H, H * sizeof(floating))
    else:
        memcpy(brow, b, 3 * H * sizeof(floating))


cdef inline void gru_step(const Settings *s, int nt, int B, int I, int H, bint reset_after,
                          const floating *x,
                          int ldx, const floating *h, const floating *W, const floating *U,
                          const floating *b, fl_act act, fl_act ract, floating *z,
                          floating *zx, floating *zh, floating *parts, floating *brow,
                          floating *rh, floating *h_out) noexcept nogil:
    """z [B,ZW] in the layout of gru_impl.h: reset_after, [x W_zr + h U_zr | h U_h | x W_h]
    plus the bias row; else [x W_zr + h U_zr | x W_h], then rh = r * h and z_h += rh U_h
    (on this thread: it needs r). Then the gates and h_out."""
    cdef int G = 3 * H, ZW = 4 * H if reset_after else 3 * H, j, r
    gru_bias_row(H, reset_after, b, brow)
    if nt > 1:
        split_products(s.gemv_rows, nt, I, H, G, G if reset_after else 2 * H, G, x, h, W, U, zx,
                       zh, parts)
        for j in range(2 * H):
            z[j] = brow[j] + zx[j] + zh[j]
        for j in range(2 * H, 3 * H):
            z[j] = brow[j] + (zh[j] if reset_after else zx[j])
        if reset_after:
            for j in range(H):
                z[3 * H + j] = brow[3 * H + j] + zx[2 * H + j]
    else:
        for r in range(B):
            memcpy(z + <long>r * ZW, brow, ZW * sizeof(floating))
        if reset_after:
            product(s, B, I, 2 * H, x, ldx, W, G, <floating>1, z, ZW)
            product(s, B, I, H, x, ldx, W + 2 * H, G, <floating>1, z + 3 * H, ZW)
            product(s, B, H, G, h, H, U, G, <floating>1, z, ZW)
        else:
            product(s, B, I, G, x, ldx, W, G, <floating>1, z, ZW)
            product(s, B, H, 2 * H, h, H, U, G, <floating>1, z, ZW)
    if not reset_after:
        gru_fwd_reset(B, H, ract, z, h, rh)
        product(s, B, H, H, rh, H, U + 2 * H, G, <floating>1, z + 2 * H, ZW)
    gru_fwd_step(B, H, reset_after, act, ract, z, NULL, h, h_out, NULL, NULL)


cdef inline void rnn_step(const Settings *s, int nt, int B, int I, int H,
                          const floating *x, int ldx,
                          const floating *h, const floating *W, const floating *U,
                          const floating *b, fl_act act, floating *z, floating *zh,
                          floating *parts, floating *h_out) noexcept nogil:
    """z [B,H] = b + x W + h U, h_out = act(z)."""
    step_products(s, nt, B, I, H, H, x, ldx, h, W, U, b, z, zh, parts)
    rnn_fwd_step(B, H, act, z, NULL, h, h_out, NULL, NULL)


# ------------------------------------------------------------ quantized (float32 only)
cdef inline void q_step_products(int B, int I, int H, int G, const float *x, int ldx,
                                 const float *h, const fl_qmat *qW, const fl_qmat *qU,
                                 const float *b, float *z) noexcept nogil:
    """z [B,G] = b + x W + h U with quantized W, U, as the sequence kernels compute them
    (the projection with its bias first, then the recurrent product added)."""
    if b == NULL:
        fill_rows(B, G, b, z, G)
        qproduct(B, x, ldx, qW, NULL, 1, z, G)
    else:
        qproduct(B, x, ldx, qW, b, 0, z, G)
    qproduct(B, h, H, qU, NULL, 1, z, G)


cdef inline void q_gru_step(int B, int I, int H, bint reset_after, const float *x, int ldx,
                            const float *h, const fl_qmat *q, const float *b, fl_act act,
                            fl_act ract, float *z, float *brow, float *rh,
                            float *h_out) noexcept nogil:
    """gru_step with quantized blocks q: W, W2, U, U2 (split as in _gru.forward)."""
    cdef int ZW = 4 * H if reset_after else 3 * H, r
    gru_bias_row(H, reset_after, b, brow)
    if reset_after:
        for r in range(B):
            memcpy(z + <long>r * ZW + 2 * H, brow + 2 * H, H * sizeof(float))
        qproduct(B, x, ldx, &q[0], brow, 0, z, ZW)
        qproduct(B, x, ldx, &q[1], brow + 3 * H, 0, z + 3 * H, ZW)
        qproduct(B, h, H, &q[2], NULL, 1, z, ZW)
    else:
        qproduct(B, x, ldx, &q[0], brow, 0, z, ZW)
        qproduct(B, h, H, &q[2], NULL, 1, z, ZW)
        gru_fwd_reset(B, H, ract, z, h, rh)
        qproduct(B, rh, H, &q[3], NULL, 1, z + 2 * H, ZW)
    gru_fwd_step(B, H, reset_after, act, ract, z, NULL, h, h_out, NULL, NULL)


# ------------------------------------------------------------------------------ plans
cdef inline bint rows_of(object a, int typenum, Py_ssize_t rows, Py_ssize_t cols,
                         bint contiguous) noexcept:
    """a is an aligned, native-order ndarray [rows, cols] of typenum whose rows are contiguous
    (and packed one after another when `contiguous`)."""
    if not cnp.PyArray_Check(a):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != 2
            or cnp.PyArray_DIM(arr, 0) != rows or cnp.PyArray_DIM(arr, 1) != cols
            or not cnp.PyArray_ISBEHAVED_RO(arr)):
        return False
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(arr)
    if cols > 1 and cnp.PyArray_STRIDE(arr, 1) != item:
        return False
    if rows > 1 and cnp.PyArray_STRIDE(arr, 0) != cols * item:
        return not contiguous and cnp.PyArray_STRIDE(arr, 0) % item == 0 \
            and cnp.PyArray_STRIDE(arr, 0) >= cols * item
    return True


cdef inline bint array_of(object a, int typenum, object shape) noexcept:
    """a is an aligned, native-order, C-contiguous ndarray of typenum and this shape."""
    return (cnp.PyArray_Check(a) and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and a.shape == shape and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>a))


cdef inline Py_ssize_t units_of(object recurrent_kernel) noexcept:
    """H of a recurrent kernel [H, gates*H] (an array or a QuantizedMatrix), or 0 when it is
    neither."""
    if ((cnp.PyArray_Check(recurrent_kernel) or isinstance(recurrent_kernel, QuantizedMatrix))
            and recurrent_kernel.ndim == 2):
        return recurrent_kernel.shape[0]
    return 0


cdef inline void *data_of(object a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class StepPlan:
    """What every cell's plan shares: the bound weights and their checks, the buffers, the
    checks of a call's arguments and its outputs. A cell's subclass runs the step (run)."""
    cdef readonly object kernel, recurrent_kernel, bias
    cdef readonly object buffers              # arrays behind the pointers below (z, zx, zh, ...)
    cdef readonly object parts_arr
    cdef readonly QuantBinding qb             # quantized W and U (float32 only), or None
    cdef void *pW
    cdef void *pU
    cdef void *pb
    cdef void *pz
    cdef void *pzx
    cdef void *pzh
    cdef void *pparts
    cdef int typenum, itemsize, n_in, n_units, n_gates, n_batch, n_states
    cdef bint busy                            # a call is running on the buffers

    cdef int bind(self, kernel, recurrent_kernel, bias, int gates, int batch, object bias_shape,
                  long z_width, int wsplit=0, int usplit=0) except -1:
        """Checks and binds the weights: kernel [I, gates*H], recurrent_kernel [H, gates*H] of
        one float dtype, C-contiguous, or both quantized (QuantizedMatrix; float32 then, W
        and U in blocks split at wsplit, usplit as the sequence kernels take them); bias of
        bias_shape or None. Raises ValueError otherwise (the layer then takes the general
        path)."""
        self.qb = None
        if isinstance(kernel, QuantizedMatrix) and isinstance(recurrent_kernel, QuantizedMatrix):
            n_units = recurrent_kernel.shape[0]
            ok = (batch >= 1 and n_units >= 1 and kernel.shape[0] >= 1
                  and recurrent_kernel.shape[1] == gates * n_units == kernel.shape[1]
                  and (bias is None or array_of(bias, cnp.NPY_FLOAT, bias_shape)))
            if not ok:
                raise ValueError("StepPlan: quantized weights or bias do not fit the cell")
            self.qb = QuantBinding(kernel, recurrent_kernel, wsplit, usplit)
            self.bind_buffers(kernel, recurrent_kernel, bias, cnp.NPY_FLOAT, kernel.shape[0],
                              n_units, gates * n_units, batch, z_width)
            self.pW = self.pU = NULL
            return 0
        if not (cnp.PyArray_Check(kernel) and cnp.PyArray_Check(recurrent_kernel)
                and kernel.ndim == 2 and recurrent_kernel.ndim == 2):
            raise ValueError("StepPlan: expected 2-D kernel and recurrent_kernel arrays")
        cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>kernel)
        if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
            raise ValueError("StepPlan: weights must be float32 or float64")
        cdef Py_ssize_t I = kernel.shape[0], H = recurrent_kernel.shape[0]
        cdef Py_ssize_t G = recurrent_kernel.shape[1]
        ok = (batch >= 1 and I >= 1 and H >= 1 and G == gates * H
              and rows_of(kernel, typenum, I, G, True)
              and rows_of(recurrent_kernel, typenum, H, G, True)
              and (bias is None or array_of(bias, typenum, bias_shape)))
        if not ok:
            raise ValueError("StepPlan: weights are not C-contiguous arrays of one float dtype "
                             "with the shapes of the cell")
        self.bind_buffers(kernel, recurrent_kernel, bias, typenum, I, H, G, batch, z_width)
        self.pW = data_of(kernel)
        self.pU = data_of(recurrent_kernel)
        return 0

    cdef int bind_buffers(self, kernel, recurrent_kernel, bias, int typenum, Py_ssize_t I,
                          Py_ssize_t H, Py_ssize_t G, int batch, long z_width) except -1:
        """The weights' references and sizes, the bias, and the step's buffers."""
        self.kernel, self.recurrent_kernel, self.bias = kernel, recurrent_kernel, bias
        self.typenum = typenum
        self.itemsize = 4 if typenum == cnp.NPY_FLOAT else 8
        self.n_in, self.n_units, self.n_gates, self.n_batch = I, H, G, batch
        self.pb = data_of(bias)
        dtype = np.float32 if typenum == cnp.NPY_FLOAT else np.float64
        z = aligned_empty(batch * z_width, dtype)
        zx = aligned_empty(G, dtype)
        zh = aligned_empty(G, dtype)
        self.buffers = [z, zx, zh]
        self.pz, self.pzx, self.pzh = data_of(z), data_of(zx), data_of(zh)
        self.parts_arr = None
        self.busy = False
        return 0

    cdef void *buffer(self, Py_ssize_t n):
        """A new work array of n elements of the weights' dtype, kept with the plan."""
        arr = aligned_empty(max(n, 1), np.float32 if self.typenum == cnp.NPY_FLOAT else np.float64)
        self.buffers.append(arr)
        return data_of(arr)

    @property
    def batch(self):
        return self.n_batch

    cdef bint same_weights(self, layer):
        return (layer.kernel is self.kernel and layer.recurrent_kernel is self.recurrent_kernel
                and (self.bias is None or layer.bias is self.bias))

    def bound_to(self, layer):
        """Whether the layer's weight attributes are still the arrays this plan reads."""
        return self.same_weights(layer)

    def __reduce__(self):
        raise TypeError("a StepPlan is bound to arrays in memory and is not copied or "
                        "pickled; the layer makes a new one")

    def call(self, layer, x, states):
        """``(h, new_states)`` of one step of `layer` from x [B,I] and its states [B,H], or None
        when anything is not what the plan runs as is (other weights, batch, dtype, shapes,
        layout): the caller then checks and converts, and raises on bad input."""
        if not self.same_weights(layer):
            return None
        cdef int B = self.n_batch, I = self.n_in, H = self.n_units, tn = self.typenum
        if not rows_of(x, tn, B, I, False):
            return None
        if not ((type(states) is list or type(states) is tuple)
                and len(states) == self.n_states):
            return None
        h = states[0]
        c = states[1] if self.n_states == 2 else None
        if not (rows_of(h, tn, B, H, True) and (c is None or rows_of(c, tn, B, H, True))):
            return None
        cdef cnp.npy_intp dims[2]
        cdef void *px
        cdef void *ph
        cdef void *pc
        cdef void *pho
        cdef void *pco
        cdef long ldx = I if B == 1 else (cnp.PyArray_STRIDE(<cnp.ndarray>x, 0)
                                          // self.itemsize)
        if ldx > INT_MAX:         # rows further apart than the products take: the general way
            return None
        # This call's threads and product policy (all the step reads of the settings).
        cfg = kernel_settings()
        cdef Settings s
        s.threads, s.policy = cfg.threads, cfg.policy
        s.gemv_rows = 8 if cfg.gemv_rows == 8 else 1
        # Split at batch 1 from STEP_SPLIT_MIN_BYTES of weights, at least half that a thread.
        cdef long nbytes = <long>(I + H) * self.n_gates * self.itemsize
        cdef int nt = <int>min(<long>s.threads, nbytes // (STEP_SPLIT_MIN_BYTES // 2))
        if self.qb is not None:         # compact weights: one thread reads them from its L2
            nt = 1
        # The buffers serve one call at a time: a step of another Python thread on the same
        # layer meanwhile (a server's sessions sharing a model) takes the general way. The
        # flag is tested and set while this thread holds the GIL, before any buffer changes.
        if self.busy:
            return None
        self.busy = True
        try:
            dims[0], dims[1] = B, H
            h_out = cnp.PyArray_EMPTY(2, dims, tn, 0)
            c_out = cnp.PyArray_EMPTY(2, dims, tn, 0) if c is not None else None
            if B == 1 and nt > 1 and s.policy != 1 and nbytes >= STEP_SPLIT_MIN_BYTES:
                if (self.parts_arr is None
                        or self.parts_arr.shape[0] < (nt - 1) * 2 * self.n_gates):
                    self.parts_arr = aligned_empty((nt - 1) * 2 * self.n_gates,
                                                   self.buffers[0].dtype)
                    self.pparts = data_of(self.parts_arr)
            else:
                nt = 1
            px, ph, pc = data_of(x), data_of(h), data_of(c)
            pho, pco = data_of(h_out), data_of(c_out)
            with nogil:
                self.run(&s, nt, B, px, <int>ldx, ph, pc, pho, pco)
        finally:
            self.busy = False
        return h_out, ([h_out] if c is None else [h_out, c_out])

    cdef void run(self, const Settings *s, int nt, int B, const void *x, int ldx,
                  const void *h, const void *c,
                  void *h_out, void *c_out) noexcept nogil:
        pass


cdef class LSTMStepPlan(StepPlan):
    """The step of fastlstm.layers.LSTM (plain, peephole, coupled input-forget gate)."""
    cdef readonly object peephole
    cdef void *pP
    cdef void *pscratch
    cdef fl_act act, ract
    cdef bint coupled

    def __init__(self, kernel, recurrent_kernel, bias, peephole, activation,
                 recurrent_activation, bint coupled, int batch):
        cdef Py_ssize_t H = units_of(recurrent_kernel)
        cdef int gates = 3 if coupled else 4
        self.bind(kernel, recurrent_kernel, bias, gates, batch, (gates * H,), gates * H)
        if peephole is not None and not array_of(peephole, self.typenum, (3, H)):
            raise ValueError("StepPlan: peephole is not a C-contiguous (3, units) array of the "
                             "kernel's dtype")
        self.peephole = peephole
        self.pP = data_of(peephole)
        self.pscratch = self.buffer(H)
        self.act, self.ract = make_act(activation), make_act(recurrent_activation)
        self.coupled = coupled
        self.n_states = 2

    cdef bint same_weights(self, layer):
        return (StepPlan.same_weights(self, layer)
                and (self.peephole is None or layer.peephole is self.peephole))

    cdef void run(self, const Settings *s, int nt, int B, const void *x, int ldx,
                  const void *h, const void *c,
                  void *h_out, void *c_out) noexcept nogil:
        cdef int I = self.n_in, H = self.n_units, G = self.n_gates
        if self.qb is not None:
            q_step_products(B, I, H, G, <const float *>x, ldx, <const float *>h,
                            &self.qb.mats[0], &self.qb.mats[2], <const float *>self.pb,
                            <float *>self.pz)
            lstm_fwd_step(B, H, self.coupled, self.act, self.ract, <float *>self.pz,
                          <const float *>self.pP, NULL, <const float *>h, <const float *>c,
                          <float *>h_out, <float *>c_out, <float *>NULL, <float *>NULL,
                          <float *>self.pscratch, <float *>NULL, <float *>NULL, <float *>NULL)
        elif self.typenum == cnp.NPY_FLOAT:
            lstm_step(s, nt, B, I, H, G, <const float *>x, ldx, <const float *>h,
                      <const float *>c, <const float *>self.pW, <const float *>self.pU,
                      <const float *>self.pb, <const float *>self.pP, self.coupled, self.act,
                      self.ract, <float *>self.pz, <float *>self.pzh, <float *>self.pparts,
                      <float *>self.pscratch, <float *>h_out, <float *>c_out)
        else:
            lstm_step(s, nt, B, I, H, G, <const double *>x, ldx, <const double *>h,
                      <const double *>c, <const double *>self.pW, <const double *>self.pU,
                      <const double *>self.pb, <const double *>self.pP, self.coupled, self.act,
                      self.ract, <double *>self.pz, <double *>self.pzh, <double *>self.pparts,
                      <double *>self.pscratch, <double *>h_out, <double *>c_out)


cdef class GRUStepPlan(StepPlan):
    """The step of fastlstm.layers.GRU, both forms (reset_after: bias [2, 3H]; else [3H])."""
    cdef void *pbrow
    cdef void *prh
    cdef fl_act act, ract
    cdef bint reset_after

    def __init__(self, kernel, recurrent_kernel, bias, activation, recurrent_activation,
                 bint reset_after, int batch):
        cdef Py_ssize_t H = units_of(recurrent_kernel)
        cdef object n = 3 * H
        bias_shape = (2, n) if reset_after else (n,)
        self.bind(kernel, recurrent_kernel, bias, 3, batch, bias_shape,
                  (4 if reset_after else 3) * H, 2 * H if reset_after else 0,
                  0 if reset_after else 2 * H)
        self.pbrow = self.buffer(4 * H)
        self.prh = self.buffer(batch * H)
        self.act, self.ract = make_act(activation), make_act(recurrent_activation)
        self.reset_after = reset_after
        self.n_states = 1

    cdef void run(self, const Settings *s, int nt, int B, const void *x, int ldx,
                  const void *h, const void *c,
                  void *h_out, void *c_out) noexcept nogil:
        cdef int I = self.n_in, H = self.n_units
        if self.qb is not None:
            q_gru_step(B, I, H, self.reset_after, <const float *>x, ldx, <const float *>h,
                       self.qb.mats, <const float *>self.pb, self.act, self.ract,
                       <float *>self.pz, <float *>self.pbrow, <float *>self.prh,
                       <float *>h_out)
        elif self.typenum == cnp.NPY_FLOAT:
            gru_step(s, nt, B, I, H, self.reset_after, <const float *>x, ldx, <const float *>h,
                     <const float *>self.pW, <const float *>self.pU, <const float *>self.pb,
                     self.act, self.ract, <float *>self.pz, <float *>self.pzx,
                     <float *>self.pzh, <float *>self.pparts, <float *>self.pbrow,
                     <float *>self.prh, <float *>h_out)
        else:
            gru_step(s, nt, B, I, H, self.reset_after, <const double *>x, ldx, <const double *>h,
                     <const double *>self.pW, <const double *>self.pU, <const double *>self.pb,
                     self.act, self.ract, <double *>self.pz, <double *>self.pzx,
                     <double *>self.pzh, <double *>self.pparts, <double *>self.pbrow,
                     <double *>self.prh, <double *>h_out)


cdef class SimpleRNNStepPlan(StepPlan):
    """The step of fastlstm.layers.SimpleRNN."""
    cdef fl_act act

    def __init__(self, kernel, recurrent_kernel, bias, activation, int batch):
        cdef Py_ssize_t H = units_of(recurrent_kernel)
        self.bind(kernel, recurrent_kernel, bias, 1, batch, (H,), H)
        self.act = make_act(activation)
        self.n_states = 1

    cdef void run(self, const Settings *s, int nt, int B, const void *x, int ldx,
                  const void *h, const void *c,
                  void *h_out, void *c_out) noexcept nogil:
        cdef int I = self.n_in, H = self.n_units
        if self.qb is not None:
            q_step_products(B, I, H, H, <const float *>x, ldx, <const float *>h,
                            &self.qb.mats[0], &self.qb.mats[2], <const float *>self.pb,
                            <float *>self.pz)
            rnn_fwd_step(B, H, self.act, <float *>self.pz, <const unsigned char *>NULL,
                         <const float *>h, <float *>h_out, <float *>NULL, <float *>NULL)
        elif self.typenum == cnp.NPY_FLOAT:
            rnn_step(s, nt, B, I, H, <const float *>x, ldx, <const float *>h,
                     <const float *>self.pW, <const float *>self.pU, <const float *>self.pb,
                     self.act, <float *>self.pz, <float *>self.pzh, <float *>self.pparts,
                     <float *>h_out)
        else:
            rnn_step(s, nt, B, I, H, <const double *>x, ldx, <const double *>h,
                     <const double *>self.pW, <const double *>self.pU, <const double *>self.pb,
                     self.act, <double *>self.pz, <double *>self.pzh, <double *>self.pparts,
                     <double *>h_out)
