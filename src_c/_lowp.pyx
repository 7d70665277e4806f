# The reduced-precision (int8, bfloat16) products of lowp.c as seen from Python: packing,
# the product itself with its arguments checked, the variant that runs, and the row
# quantizers, for tests, benchmarks and callers. fastlstm/backends/oracle/lowp.py is their
# definition in NumPy; src_c/lowp.h describes the layout and the numerics.
import numpy as np

from fastlstm.backends.aligned import aligned_empty, ALIGNMENT

from libc.stdint cimport int8_t, int32_t, uint16_t, uintptr_t
from gates cimport fl_force_isa_level, fl_isa_level
from lowp cimport (FL_Q_INT8, FL_Q_BF16, fl_qmat, fl_q_packed_bytes, fl_q_pack, fl_q_gemm,
                   fl_q_level, fl_q_level_name, fl_q_force_level, fl_q_best_level,
                   fl_q_quantize_rows_int8, fl_q_round_bf16, fl_q_pack_bf16_float)

INT8 = FL_Q_INT8
BF16 = FL_Q_BF16
# int32 accumulation of q * Wq (|q|, |Wq| <= 127) is exact up to this depth.
MAX_INT8_K = 131072
# Every extension that links the kernels' library has its own copy of the dispatch.
_MODULES = ("_gates", "_lstm", "_gru", "_simple_rnn", "_step", "_lowp")


def _kind(kind):
    if kind in ("int8", FL_Q_INT8):
        return FL_Q_INT8
    if kind in ("bf16", "bfloat16", FL_Q_BF16):
        return FL_Q_BF16
    raise ValueError(f"kind: expected {FL_Q_INT8} (int8) or {FL_Q_BF16} (bf16), got {kind!r}")


def packed_bytes(kind, int K, int N):
    """Bytes of a [K, N] weight packed for `kind` (0 when K or N is 0)."""
    cdef int k = _kind(kind)
    if K < 0 or N < 0:
        raise ValueError(f"K, N: expected >= 0, got {K}, {N}")
    return fl_q_packed_bytes(k, K, N)


def pack(values):
    """Pack a weight once for every variant: int8 [K, N] (already quantized: Wq) -> kind
    int8, uint16 [K, N] (bf16 bit patterns) -> kind bf16. Returns (packed, comp): packed a
    64-byte-aligned uint8 array of packed_bytes(kind, K, N) bytes, comp the int32 [N]
    128 * column sums of Wq (int8) or None (bf16). Denormal bf16 weights are packed as zeros
    of the same sign."""
    if not isinstance(values, np.ndarray):
        raise TypeError(f"values: expected a numpy array, got {type(values).__name__}")
    if values.ndim != 2:
        raise ValueError(f"values: expected a 2-D [K, N] array, got shape {values.shape}")
    if values.dtype == np.int8:
        kind = FL_Q_INT8
    elif values.dtype == np.uint16:
        kind = FL_Q_BF16
    else:
        raise TypeError(f"values: expected int8 (int8 weights) or uint16 (bf16 bits), got "
                        f"{values.dtype}")
    K, N = values.shape
    if K > 2**31 - 1 or N > 2**31 - 1:
        raise ValueError(f"values: shape {values.shape} too large")
    w = np.ascontiguousarray(values)
    cdef long nbytes = fl_q_packed_bytes(kind, K, N)
    packed = aligned_empty(nbytes, np.uint8)
    comp = np.zeros(N, np.int32) if kind == FL_Q_INT8 else None
    cdef uintptr_t pw = w.ctypes.data, pp = packed.ctypes.data
    cdef uintptr_t pc = comp.ctypes.data if comp is not None else 0
    cdef int ck = kind, cK = K, cN = N
    if K > 0 and N > 0:
        with nogil:
            fl_q_pack(ck, cK, cN, <const void *>pw, cN, <void *>pp, <int32_t *>pc)
    return packed, comp


cdef object _vector(object v, str name, dtype, long n):
    """v checked as a contiguous 1-D array of n values of dtype."""
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(v).__name__}")
    if v.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {v.dtype}")
    if v.ndim != 1 or v.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {v.shape}")
    if not v.flags.c_contiguous or not v.flags.aligned:
        raise ValueError(f"{name}: expected a contiguous, aligned array")
    return v


cdef long _row_stride(object x, str name, long ncols) except -1:
    """x checked as a float32 2-D array with contiguous rows; its row stride in elements."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{name}: expected dtype float32, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {x.shape}")
    if x.shape[1] != ncols:
        raise ValueError(f"{name}: expected {ncols} columns, got shape {x.shape}")
    if x.shape[0] > 2**31 - 1:
        raise ValueError(f"{name}: too many rows ({x.shape[0]})")
    if not x.flags.aligned:
        raise ValueError(f"{name}: expected an aligned array (float32 on 4-byte boundaries)")
    if x.shape[0] == 0 or ncols == 0:
        return max(ncols, 1)
    if x.shape[1] > 1 and x.strides[1] != 4:
        raise ValueError(f"{name}: expected contiguous rows (element stride 4 bytes), got "
                         f"strides {x.strides}")
    if x.shape[0] > 1 and (x.strides[0] % 4 != 0 or x.strides[0] < 4 * ncols):
        raise ValueError(f"{name}: expected a row stride of at least {ncols} elements, got "
                         f"strides {x.strides}")
    return x.strides[0] // 4 if x.shape[0] > 1 else ncols


def gemm(a, packed, scale, comp, kind, int K, int N, bias=None, out=None, int beta=0,
         int j0=0, j1=None, int repeat=1):
    """out[:, j0:j1] = beta*out[:, j0:j1] + q(a) @ W[:, j0:j1] (+ bias[j0:j1]), the
    reduced-precision product of lowp.h (its numerics: fastlstm/backends/oracle/lowp.py).

    a: float32 [M, K] with contiguous rows (any row stride >= K); packed, comp: from pack();
    scale: float32 [N] (int8; None for bf16); bias: float32 [N] or None; out: float32 [M, N]
    with contiguous rows (any row stride >= N), needed when beta = 1; with out None a new
    zeroed array. j0: a multiple of 16; j1: N when None. Columns outside [j0, j1) of out
    are left as they are. repeat: run it that many times (benchmarks). Returns out."""
    cdef int k = _kind(kind)
    if K < 0 or N < 0:
        raise ValueError(f"K, N: expected >= 0, got {K}, {N}")
    if k == FL_Q_INT8 and K > MAX_INT8_K:
        raise ValueError(f"K: at most {MAX_INT8_K} for int8 (exact int32 sums), got {K}")
    if beta not in (0, 1):
        raise ValueError(f"beta: expected 0 or 1, got {beta}")
    if repeat < 1:
        raise ValueError(f"repeat: expected >= 1, got {repeat}")
    cdef long lda = _row_stride(a, "a", K)
    cdef long M = a.shape[0]
    cdef long nbytes = fl_q_packed_bytes(k, K, N)
    if not isinstance(packed, np.ndarray):
        raise TypeError(f"packed: expected a numpy array, got {type(packed).__name__}")
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise TypeError(f"packed: expected a 1-D uint8 array, got {packed.dtype} "
                        f"{packed.shape}")
    if packed.shape[0] != nbytes:
        raise ValueError(f"packed: expected {nbytes} bytes for kind {k}, K={K}, N={N}, got "
                         f"{packed.shape[0]}")
    if nbytes and (not packed.flags.c_contiguous or packed.ctypes.data % ALIGNMENT):
        raise ValueError(f"packed: expected a contiguous, {ALIGNMENT}-byte aligned array "
                         f"(as pack() returns)")
    if k == FL_Q_INT8:
        scale = _vector(scale, "scale", np.float32, N)
        comp = _vector(comp, "comp", np.int32, N)
    else:
        if scale is not None:
            raise ValueError("scale: expected None for bf16")
        if comp is not None:
            raise ValueError("comp: expected None for bf16")
    if bias is not None:
        bias = _vector(bias, "bias", np.float32, N)
    if j1 is None:
        j1 = N
    if not (0 <= j0 <= N) or j0 % 16:
        raise ValueError(f"j0: expected a multiple of 16 in [0, {N}], got {j0}")
    if not (j0 <= j1 <= N):
        raise ValueError(f"j1: expected a value in [{j0}, {N}], got {j1}")
    if out is None:
        if beta:
            raise ValueError("out: needed with beta=1")
        out = np.zeros((M, N), np.float32)
    cdef long ldc = _row_stride(out, "out", N)
    if out.shape[0] != M:
        raise ValueError(f"out: expected {M} rows, got shape {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out: read-only")
    if M and N and np.may_share_memory(out, a) and np.shares_memory(out, a):
        raise ValueError("out: overlaps a")
    if M == 0 or j1 == j0:
        return out
    if M * max(lda, K) > 2**62 or M * ldc > 2**62:
        raise ValueError("a, out: too large")
    cdef fl_qmat w
    w.kind = k
    w.K = K
    w.N = N
    w.packed = <const void *><uintptr_t>packed.ctypes.data if nbytes else NULL
    w.scale = <const float *><uintptr_t>scale.ctypes.data if k == FL_Q_INT8 else NULL
    w.comp = <const int32_t *><uintptr_t>comp.ctypes.data if k == FL_Q_INT8 else NULL
    cdef const float *pa = <const float *><uintptr_t>a.ctypes.data
    cdef const float *pb = <const float *><uintptr_t>bias.ctypes.data if bias is not None else NULL
    cdef float *pc = <float *><uintptr_t>out.ctypes.data
    cdef int cj0 = j0, cj1 = j1, cM = M, r
    with nogil:
        for r in range(repeat):
            fl_q_gemm(cM, pa, lda, &w, cj0, cj1, pb, beta, pc, ldc)
    return out


def quantize_rows_int8(a):
    """(q int8 [M, K], sa float32 [M]) of a float32 [M, K], as gemm quantizes its rows."""
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise TypeError("a: expected a 2-D float32 numpy array")
    cdef long lda = _row_stride(a, "a", a.shape[1])
    M, K = a.shape
    q = np.zeros((M, K), np.int8)
    sa = np.zeros(M, np.float32)
    cdef uintptr_t pa = a.ctypes.data, pq = q.ctypes.data, ps = sa.ctypes.data
    cdef int cM = M, cK = K
    if M and K:
        with nogil:
            fl_q_quantize_rows_int8(cM, cK, <const float *>pa, lda, <int8_t *>pq, cK,
                                    <float *>ps)
    return q, sa


def pack_float_bf16(a):
    """float32 a [K, N] (contiguous rows, any row stride) rounded to bf16 (as round_bf16)
    and packed as pack() packs bf16 bits, in one pass. Returns the packed uint8 array."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2:
        raise TypeError("a: expected a 2-D float32 numpy array")
    K, N = a.shape
    if K > 2**31 - 1 or N > 2**31 - 1:
        raise ValueError(f"a: shape {a.shape} too large")
    cdef long lda = _row_stride(a, "a", N)
    cdef long nbytes = fl_q_packed_bytes(FL_Q_BF16, K, N)
    packed = aligned_empty(nbytes, np.uint8)
    cdef uintptr_t pa = a.ctypes.data, pp = packed.ctypes.data
    cdef int cK = K, cN = N
    if K > 0 and N > 0:
        with nogil:
            fl_q_pack_bf16_float(cK, cN, <const float *>pa, lda, <void *>pp)
    return packed


def round_bf16(a):
    """The bf16 bits (uint16) of float32 values, rounded as gemm rounds its rows."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32:
        raise TypeError("a: expected a float32 numpy array")
    x = np.ascontiguousarray(a)
    out = np.empty(x.shape, np.uint16)
    cdef uintptr_t px = x.ctypes.data, po = out.ctypes.data
    cdef long n = x.size
    if n:
        with nogil:
            fl_q_round_bf16(n, <const float *>px, <uint16_t *>po)
    return out


def level(kind):
    """The variant that runs now for `kind`: 3 AVX512-VNNI / AVX512_BF16, 2 AVX-512BW /
    AVX-512F, 1 AVX2, 0 portable C."""
    return fl_q_level(_kind(kind))


def best_level(kind):
    """The best variant this CPU has for `kind`, whatever the caps."""
    return fl_q_best_level(_kind(kind))


def level_name(kind):
    return fl_q_level_name(_kind(kind)).decode()


def force_level(int level):
    """Cap the variant of both kinds at `level` (-1: automatic), process-wide: in every
    extension that links the kernels (each has its own copy of the dispatch). For tests and
    benchmarks. fastlstm._gates.force_isa_level caps them too (ISA 0 -> 0, 1 -> 1)."""
    import importlib
    for name in _MODULES:
        mod = importlib.import_module("fastlstm." + name)
        here = getattr(mod, "force_lowp_level_here", None)
        if here is not None:
            here(level)


def force_lowp_level_here(int level):
    """This extension's own copy of the reduced-precision dispatch."""
    fl_q_force_level(level)


def force_isa_level_here(int level):
    """This extension's own copy of the ISA dispatch (fastlstm._gates.force_isa_level)."""
    fl_force_isa_level(level)


def isa_level_here():
    return fl_isa_level()


# ------------------------------------------------- mixed_bfloat16 training's many-row products
# (fastlstm/backends/mixed_products.py checks the arguments; these take them as given.)
from cython.parallel cimport prange
from libc.string cimport memset


cdef void transpose_block(const float *a, long lda, float *o, long ldo, long r0, long r1,
                          long c0, long c1) noexcept nogil:
    cdef long r, c
    for r in range(r0, r1):
        for c in range(c0, c1):
            o[c * ldo + r] = a[r * lda + c]


def transpose(a, out, int threads=1):
    """out [C,R] = a [R,C]^T for float32 a with contiguous rows (any row stride) and
    C-contiguous out, in 32x32 tiles (NumPy's transposed copy walks one side with a large
    stride), the rows of out split over the threads."""
    cdef long R = a.shape[0], C = a.shape[1], t, nt, c0, r0
    cdef long lda = a.strides[0] // 4 if R > 1 else C
    cdef uintptr_t pa = a.ctypes.data, po = out.ctypes.data
    if R == 0 or C == 0:
        return out
    nt = (C + 31) // 32
    with nogil:
        for t in prange(nt, num_threads=max(1, threads), schedule="static"):
            c0 = t * 32
            r0 = 0
            while r0 < R:
                transpose_block(<const float *>pa, lda, <float *>po, R, r0, min(R, r0 + 32), c0,
                                min(C, c0 + 32))
                r0 = r0 + 32
    return out


def gemm_split(a, packed, int K, int N, out, int threads, bint by_rows):
    """out [M,N] = bf16(a) [M,K] W (bf16 packed by pack_float_bf16), float32 sums; a and out
    with contiguous rows. Split over the threads by rows of a, or by 16-column blocks of W
    (the same bits however split)."""
    cdef fl_qmat w
    cdef long lda = a.strides[0] // 4 if a.shape[0] > 1 else K
    cdef long ldc = out.strides[0] // 4 if out.shape[0] > 1 else N
    cdef int M = a.shape[0], n = max(1, threads), k, lo, hi, nb = (N + 15) // 16
    cdef const float *pa = <const float *><uintptr_t>a.ctypes.data
    cdef float *pc = <float *><uintptr_t>out.ctypes.data
    w.kind, w.K, w.N = FL_Q_BF16, K, N
    w.packed = <const void *><uintptr_t>packed.ctypes.data
    w.scale, w.comp = NULL, NULL
    if M == 0 or N == 0:
        return out
    if by_rows:
        n = min(n, M)
    else:
        n = min(n, nb)
    with nogil:
        if n == 1:
            fl_q_gemm(M, pa, lda, &w, 0, N, NULL, 0, pc, ldc)
        else:
            for k in prange(n, num_threads=n, schedule="static"):
                if by_rows:
                    lo = <int>(<long>k * M // n)
                    hi = <int>(<long>(k + 1) * M // n)
                    fl_q_gemm(hi - lo, pa + <long>lo * lda, lda, &w, 0, N, NULL, 0,
                              pc + <long>lo * ldc, ldc)
                else:
                    lo = (k * nb // n) * 16
                    hi = min(N, ((k + 1) * nb // n) * 16)
                    fl_q_gemm(M, pa, lda, &w, lo, hi, NULL, 0, pc, ldc)
    return out


cdef extern from "lowp.h" nogil:
    int fl_q_gemm_bf16_packed(int M, const void *Ap, long aG, const fl_qmat *W, int j0,
                              int j1, int beta, float *C, long ldc)


cdef void weight_grads_cols(int npairs, const void **pa, const long *ag, float **po,
                            const int *rows, long TB, const float *pz, long ldz, int N, int j0,
                            int j1, int depth, unsigned char *buf) noexcept nogil:
    """Columns [j0, j1) of every outs[i] = a_i dz, over slices of `depth` rows of dz rounded
    and packed into buf: a_i float32 [K_i, TB] (ag NULL), or the bf16 packing of a_i^T with
    ag[i] groups (fl_q_gemm_bf16_packed)."""
    cdef fl_qmat w
    cdef long k0 = 0
    cdef int kc, i
    if j1 <= j0:
        return
    w.kind, w.N = FL_Q_BF16, j1 - j0
    w.packed, w.scale, w.comp = <const void *>buf, NULL, NULL
    while k0 < TB:
        kc = <int>min(<long>depth, TB - k0)
        fl_q_pack_bf16_float(kc, j1 - j0, pz + k0 * ldz + j0, ldz, buf)
        w.K = kc
        for i in range(npairs):
            if ag == NULL:
                fl_q_gemm(rows[i], <const float *>pa[i] + k0, TB, &w, 0, j1 - j0, NULL,
                          1 if k0 else 0, po[i] + j0, N)
            else:
                fl_q_gemm_bf16_packed(rows[i], <const unsigned char *>pa[i] + (k0 // 2) * 64,
                                      ag[i], &w, 0, j1 - j0, 1 if k0 else 0, po[i] + j0, N)
        k0 += kc


cdef object run_weight_grads(list arrays, list outs, dz, long depth, int threads, bint packed):
    """weight_grads (packed False: arrays the float32 a_i [K_i, TB]) or weight_grads_packed
    (arrays the bf16 packings of the x_i [TB, K_i]): the threads split dz's columns in
    16-column blocks, each with its buffer for dz's slices."""
    cdef int npairs = len(arrays), i
    cdef long TB = dz.shape[0], ldz = dz.strides[0] // 4 if dz.shape[0] > 1 else dz.shape[1]
    cdef int N = dz.shape[1], nb = (N + 15) // 16
    cdef int n = max(1, min(threads, nb)), k
    cdef long part
    cdef const void *pa[8]
    cdef long ag[8]
    cdef float *po[8]
    cdef int rows[8]
    for i in range(npairs):
        pa[i] = <const void *><uintptr_t>arrays[i].ctypes.data
        po[i] = <float *><uintptr_t>outs[i].ctypes.data
        rows[i] = outs[i].shape[0]
        ag[i] = (TB + 1) // 2
        if packed and arrays[i].shape[0] != fl_q_packed_bytes(FL_Q_BF16, <int>TB, rows[i]):
            raise ValueError(f"aps[{i}]: expected the packing of a [{TB}, {rows[i]}] array")
    cdef const float *pz = <const float *><uintptr_t>dz.ctypes.data
    depth = max(2, min(depth, TB)) if TB > 0 else 2
    if packed and depth < TB:
        depth -= depth % 2          # every slice but the last starts a whole group of A
    part = (fl_q_packed_bytes(FL_Q_BF16, <int>depth, ((nb + n - 1) // n) * 16) + 63) // 64 * 64
    bufs = aligned_empty(max(1, n * part), np.uint8)
    cdef unsigned char *pb = <unsigned char *><uintptr_t>bufs.ctypes.data
    if TB == 0:
        for o in outs:
            o[...] = 0
        return outs
    with nogil:
        for k in prange(n, num_threads=n, schedule="static"):
            weight_grads_cols(npairs, pa, ag if packed else NULL, po, rows, TB, pz, ldz, N,
                              (k * nb // n) * 16, min(N, ((k + 1) * nb // n) * 16),
                              <int>depth, pb + k * part)
    return outs


def weight_grads(list ats, list outs, dz, int depth, int threads):
    """outs[i] [K_i, N] = bf16(ats[i]) [K_i, TB] bf16(dz) [TB, N] with float32 sums, over
    slices of `depth` rows of dz (each rounded and packed once into the thread's buffer,
    summed into outs in float32); the threads split dz's columns in 16-column blocks. ats:
    float32 C-contiguous; dz: float32 with contiguous rows."""
    if len(ats) == 0 or len(ats) > 8:
        raise ValueError("ats: expected 1 to 8 arrays")
    return run_weight_grads(ats, outs, dz, depth, threads, False)


def packed_level_ok():
    """Whether weight_grads_packed runs here (the AVX512_BF16 variant is the one that runs)."""
    return fl_q_level(FL_Q_BF16) >= 3


def weight_grads_packed(list aps, list outs, dz, int depth, int threads):
    """outs[i] [K_i, N] = bf16(x_i)^T bf16(dz) as weight_grads, with each x_i [TB, K_i] given
    packed (pack_float_bf16(x_i): no transposed copy), dz's slices of `depth` (even) rows
    packed in the threads' buffers; the threads split dz's columns in 16-column blocks. Only
    where packed_level_ok()."""
    if len(aps) == 0 or len(aps) > 8:
        raise ValueError("aps: expected 1 to 8 arrays")
    if not packed_level_ok():
        raise ValueError("weight_grads_packed: needs the AVX512_BF16 variant")
    return run_weight_grads(aps, outs, dz, depth, threads, True)
    with nogil:
        for k in prange(n, num_threads=n, schedule="static"):
            weight_grads_cols_packed(npairs, pa, ag, po, rows, TB, pz, ldz, N,
                                     (k * nb // n) * 16, min(N, ((k + 1) * nb // n) * 16),
                                     depth, pb + k * part)
    return outs
