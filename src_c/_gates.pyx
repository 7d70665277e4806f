# The elementwise layer of the kernels as seen from Python: which ISA variant runs, and the
# vectorized activations themselves, so tests can measure them against NumPy.
import numpy as np

from blas cimport floating
from gates cimport (fl_act, make_act, act_forward, matmul_acc, matmul_packed_acc, pack_panels,
                    gemm_acc, gemm_packed_acc, gemm_set, gemm_packed_set, pack_b, fl_act_grad_f,
                    fl_act_grad_d, fl_isa_name, fl_isa_level, fl_force_isa_level)


def isa():
    """Name of the elementwise code path running on this CPU: avx512, avx2, baseline or neon."""
    return fl_isa_name().decode()


def isa_level():
    return fl_isa_level()


def force_isa_level(int level):
    """Run a lower variant (0 baseline, 1 AVX2, 2 AVX-512; capped at what the CPU has);
    -1 restores the automatic choice. Process-wide, in every extension (each compiles its
    own copy of the dispatch): for tests and benchmarks."""
    import importlib
    fl_force_isa_level(level)
    for name in ("_lstm", "_gru", "_simple_rnn", "_step", "_lowp"):
        importlib.import_module("fastlstm." + name).force_isa_level_here(level)


def activation_forward(floating[::1] z, activation):
    """z = act(z) in place, through the compiled kernel."""
    cdef fl_act a = make_act(activation)
    if z.shape[0]:
        act_forward(a, &z[0], z.shape[0])


def activation_grad(floating[::1] y, floating[::1] g, floating[::1] out, activation):
    """out = g * act'(.) expressed through y = act(.), through the compiled kernel."""
    cdef fl_act a = make_act(activation)
    if y.shape[0] != g.shape[0] or y.shape[0] != out.shape[0]:
        raise ValueError("y, g, out: expected equal lengths")
    if y.shape[0] == 0:
        return
    if floating is float:
        fl_act_grad_f(a, &y[0], &g[0], &out[0], y.shape[0])
    else:
        fl_act_grad_d(a, &y[0], &g[0], &out[0], y.shape[0])


def matmul_accumulate(floating[:, ::1] a, floating[:, ::1] w, floating[:, ::1] c, int repeat=1):
    """c += a @ w through the per-step kernel (``repeat`` times, for benchmarks)."""
    if a.shape[1] != w.shape[0] or c.shape[0] != a.shape[0] or c.shape[1] != w.shape[1]:
        raise ValueError(f"a, w, c: expected shapes (M,K), (K,N), (M,N), got "
                         f"{(a.shape[0], a.shape[1])}, {(w.shape[0], w.shape[1])}, "
                         f"{(c.shape[0], c.shape[1])}")
    if a.shape[0] == 0 or w.shape[1] == 0:
        return
    cdef int r
    with nogil:
        for r in range(repeat):
            matmul_acc(a.shape[0], w.shape[1], a.shape[1], &a[0, 0], a.shape[1], &w[0, 0],
                       w.shape[1], &c[0, 0], c.shape[1])


def matmul_packed_accumulate(floating[:, ::1] a, floating[:, ::1] w, floating[:, ::1] c,
                             int repeat=1):
    """c += a @ w through the kernel over packed weights (packs w first)."""
    if a.shape[1] != w.shape[0] or c.shape[0] != a.shape[0] or c.shape[1] != w.shape[1]:
        raise ValueError("a, w, c: expected shapes (M,K), (K,N), (M,N)")
    if a.shape[0] == 0 or w.shape[1] == 0 or w.shape[0] == 0:
        return
    wp_arr = np.empty(w.shape[0] * w.shape[1], np.asarray(w).dtype)
    cdef floating[::1] wp = wp_arr
    cdef int r
    with nogil:
        pack_panels(w.shape[0], w.shape[1], &w[0, 0], w.shape[1], &wp[0])
        for r in range(repeat):
            matmul_packed_acc(a.shape[0], w.shape[1], a.shape[1], &a[0, 0], a.shape[1], &wp[0],
                              &c[0, 0], c.shape[1])


def gemm_accumulate(floating[:, :] a, floating[:, :] b, floating[:, :] c,
                    bint trans_a=False, bint packed=False, bint overwrite=False,
                    floating[::1] bias=None, floating[:, :] b_t=None, int pack_threads=1):
    """c += op(a) @ b through the packed GEMM, op(a) = a.T with trans_a; with packed, b is
    packed once first (as the recurrent kernel is) and a must not be transposed; b_t (with
    packed): b is packed from b_t, its transpose, instead. With overwrite,
    c = op(a) @ b (+ bias, packed only) and c is never read. Rows of a, b and c may be
    strided (views of wider arrays). pack_threads: threads that pack b (from 2^18 elements)."""
    cdef int M = a.shape[1] if trans_a else a.shape[0]
    cdef int K = a.shape[0] if trans_a else a.shape[1]
    cdef int N = b.shape[1]
    if b_t is not None and (not packed or b_t.shape[0] != N or b_t.shape[1] != K):
        raise ValueError("b_t: expected b's transpose, with packed")
    cdef floating[::1] bp
    cdef const floating *pbias = NULL
    if b.shape[0] != K or c.shape[0] != M or c.shape[1] != N:
        raise ValueError("a, b, c: shapes do not match c += op(a) @ b")
    if packed and trans_a:
        raise ValueError("packed: only for a not transposed")
    if bias is not None:
        if not (packed and overwrite):
            raise ValueError("bias: only with packed and overwrite")
        if bias.shape[0] != N:
            raise ValueError(f"bias: expected {N} values, got {bias.shape[0]}")
        if N > 0:
            pbias = &bias[0]
    if M == 0 or N == 0 or (K == 0 and not overwrite):
        return
    if (c.strides[1] != sizeof(floating) or (K > 0 and (a.strides[1] != sizeof(floating)
                                                          or b.strides[1] != sizeof(floating)))):
        raise ValueError("a, b, c: expected contiguous rows")
    cdef int lda = <int>(a.strides[0] // sizeof(floating)) if K > 0 else 1
    cdef int ldb = <int>(b.strides[0] // sizeof(floating)) if K > 0 else 1
    cdef int ldc = <int>(c.strides[0] // sizeof(floating))
    cdef const floating *pa = &a[0, 0] if K > 0 else NULL
    cdef const floating *pb = &b[0, 0] if K > 0 else NULL
    if packed:
        bp = pack_b(b, False, None, pack_threads) if b_t is None else pack_b(b_t, True, None,
                                                                             pack_threads)
        with nogil:
            if overwrite:
                gemm_packed_set(M, N, K, pa, lda, &bp[0], pbias, &c[0, 0], ldc)
            else:
                gemm_packed_acc(M, N, K, pa, lda, &bp[0], &c[0, 0], ldc)
    else:
        with nogil:
            if overwrite:
                gemm_set(trans_a, M, N, K, pa, lda, pb, ldb, &c[0, 0], ldc)
            else:
                gemm_acc(trans_a, M, N, K, pa, lda, pb, ldb, &c[0, 0], ldc)
