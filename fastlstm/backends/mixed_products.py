"""mixed_bfloat16 training's products on the compiled bf16 kernels (src_c/lowp.h).

Every product of a mixed layer rounds both operands to bf16 and sums in float32
(fastlstm/backends/oracle/lowp.py: ``mixed_matmul`` is the definition). The sequence kernels
run the input projection and the per-step products themselves (the weights come as bf16
``QuantizedMatrix`` pairs, U^T's blocks for the backward); after their backward time loop
they leave dZ [T*B, ZW], and the products over all T*B rows run here:

    dW = X^T dZ,  dU = Hin^T dZ   (dZ packed once as the kernels' weight operand; X, Hin
                                   packed as they lie with AVX512_BF16, else transposed
                                   copies as the rows)
    dX = dZ W^T                   (W^T packed)

each split over the kernel threads (fastlstm.threads; OpenMP regions of src_c/_lowp.pyx, as
the sequence kernels'), by rows or in whole 16-column blocks: the same bits however split
(every slice rounds its rows alike).
"""
from __future__ import annotations

import numpy as np

from ..quantization import QuantizedMatrix
from ..threads import kernel_settings

try:
    from .. import _lowp
except ImportError:  # pragma: no cover - a source tree without a build
    _lowp = None

BF16 = 2                    # FL_Q_BF16
# Below this many multiply-adds a product runs on the calling thread alone.
PARALLEL_MIN_MACS = 1 << 21
# ... and below this many elements a transposed copy.
TRANSPOSE_PARALLEL_MIN = 1 << 20

def _c_contiguous(a):
    """float32 a as a C-contiguous array; a transposed view of rows (a weight's ``.T``) is
    copied in tiles (_lowp.transpose: NumPy's copy of it walks memory with a large stride)."""
    a = np.asarray(a, dtype=np.float32)
    if (a.ndim == 2 and not a.flags.c_contiguous and a.shape[0] > 1 and a.shape[1] > 1
            and a.strides[0] == 4 and a.strides[1] % 4 == 0 and a.strides[1] >= 4 * a.shape[0]
            and _lowp is not None):
        return _lowp.transpose(a.T, np.empty(a.shape, np.float32), 1)
    return np.ascontiguousarray(a)


def bf16_matrix(a, split=0):
    """float32 a [K,N] rounded to bf16 as a QuantizedMatrix (the kernels' packed operand;
    ``split`` as QuantizedMatrix's)."""
    a = _c_contiguous(a)
    qm = QuantizedMatrix("bfloat16", _lowp.round_bf16(a), None, split)
    edges = [0, split, a.shape[1]] if split else [0, a.shape[1]]
    # Packed from the float32 values in one pass (the same bits as packing qm.values).
    qm._blocks = [(_lowp.pack_float_bf16(a[:, j0:j1]), None, None, j0, j1)
                  for j0, j1 in zip(edges[:-1], edges[1:])]
    return qm


def weights(kernel, recurrent_kernel, wsplit=0, usplit=0):
    """(W, U) of a mixed forward: the float32 weights in bf16, packed at first use."""
    return bf16_matrix(kernel, wsplit), bf16_matrix(recurrent_kernel, usplit)


class Packed:
    """A float32 operand B [K,N] rounded to bf16 and packed for the kernels (the right-hand
    side of a product)."""

    def __init__(self, b):
        b = np.asarray(b, dtype=np.float32)
        if b.ndim != 2 or (b.shape[1] > 1 and b.strides[1] != 4):
            b = _c_contiguous(b)
        self.K, self.N = b.shape
        self.packed = _lowp.pack_float_bf16(b)      # rounded and packed in one pass


def product(a, b, out, threads=None):
    """out[M,N] = bf16(a)[M,K] bf16(b)[K,N], float32 sums; b a Packed. a and out have
    contiguous rows. Split over the kernel threads (OpenMP, as the sequence kernels) by rows
    of a (many rows) or by 16-column blocks of b (a few rows)."""
    M = a.shape[0]
    if threads is None:
        threads = kernel_settings().threads
    n = max(1, int(threads))
    if M * b.K * b.N < PARALLEL_MIN_MACS:
        n = 1
    return _lowp.gemm_split(a, b.packed, b.K, b.N, out, n, M >= 64 * n)


def _transposed(a, threads):
    """a [R,C] -> a^T [C,R] C-contiguous (the rows of a weight gradient's product)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    # A memory-bound copy: a parallel region (a barrier) pays only on large arrays.
    n = threads if a.size >= TRANSPOSE_PARALLEL_MIN else 1
    return _lowp.transpose(a, np.empty((a.shape[1], a.shape[0]), np.float32), n)


# Depth (rows of dZ) of one slice of a weight gradient: each slice of dZ is rounded and
# packed once into a buffer of the thread's, which stays in cache while the slices of the
# other operand stream by (bench/RESULTS.md).
WEIGHT_GRAD_DEPTH = 2048


def weight_grads(inputs, dz, threads=None):
    """[x^T dZ for x in inputs]: each x [T*B, K_i] (X, Hin), dz [T*B, N] (rows may lie
    apart, contiguous columns); the threads split dZ's columns in 16-column blocks."""
    TB, N = dz.shape
    if threads is None:
        threads = kernel_settings().threads
    n = max(1, int(threads))
    if TB * N * sum(x.shape[1] for x in inputs) < PARALLEL_MIN_MACS:
        n = 1
    if dz.shape[1] > 1 and dz.strides[1] != 4:
        dz = np.ascontiguousarray(dz)
    outs = [np.empty((x.shape[1], N), np.float32) for x in inputs]
    if _lowp.packed_level_ok():
        # x packed as it lies (16 rows of x^T share a line per pair of k): no transposed copy.
        aps = [_lowp.pack_float_bf16(_rows(x)) for x in inputs]
        return _lowp.weight_grads_packed(aps, outs, dz, WEIGHT_GRAD_DEPTH, n)
    ats = [_transposed(x, n) for x in inputs]
    return _lowp.weight_grads(ats, outs, dz, WEIGHT_GRAD_DEPTH, n)


def _rows(x):
    """x as float32 with contiguous rows (any row stride)."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1] > 1 and x.strides[1] != 4:
        x = np.ascontiguousarray(x)
    return x


def input_grad(dz, kernel, out=None):
    """dZ W^T: dz [T*B, G] (rows may lie apart), kernel W [I, G]."""
    wt = Packed(np.asarray(kernel).T)
    if out is None:
        out = np.empty((dz.shape[0], wt.N), np.float32)
    return product(dz, wt, out)


def dense_grads(X, Hin, dZ, kernel, has_bias, idrop, dx_out):
    """(dX, dW, dU, db) of the LSTM and SimpleRNN (dZ [T,B,G] is what W and U fed): dX into
    dx_out [T,B,I] (written after X is read: it may be X's buffer), times the input dropout
    mask idrop [B,I] (or None)."""
    T, B, G = dZ.shape
    I, H = X.shape[2], Hin.shape[2]
    dz2 = dZ.reshape(T * B, G)
    dW, dU = weight_grads([X.reshape(T * B, I), Hin.reshape(T * B, H)], dz2)
    db = dz2.sum(0, dtype=np.float32) if has_bias else None
    dx = input_grad(dz2, kernel, dx_out.reshape(T * B, I))
    if idrop is not None:
        dx_out *= idrop[None]
    return dx_out, dW, dU, db


def gru_grads(X, Hin, RH, dZ, kernel, reset_after, has_bias, idrop, dx_out):
    """(dX, dW, dU, db) of the GRU from dZ [T,B,ZW] in the kernels' layout (src_c/_gru.pyx):
    [dz | dr | d rec_h | dn] with reset_after (W fed columns 0:2H and 3H:4H, U 0:3H), else
    [dz | dr | dn] (U_zr fed by Hin, U_h by RH = r * Hin)."""
    T, B, ZW = dZ.shape
    I, H = X.shape[2], Hin.shape[2]
    TB = T * B
    dz2 = dZ.reshape(TB, ZW)
    X2, Hin2 = X.reshape(TB, I), Hin.reshape(TB, H)
    if reset_after:
        dzx = np.concatenate([dz2[:, :2 * H], dz2[:, 3 * H:]], axis=1)
        dW, = weight_grads([X2], dzx)
        dU, = weight_grads([Hin2], dz2[:, :3 * H])
        db = None
        if has_bias:
            db = np.stack([dzx.sum(0, dtype=np.float32), dz2[:, :3 * H].sum(0, dtype=np.float32)])
    else:
        dzx = dz2
        dW, = weight_grads([X2], dz2)
        dU = np.empty((H, 3 * H), np.float32)
        dU[:, :2 * H], = weight_grads([Hin2], dz2[:, :2 * H])
        dU[:, 2 * H:], = weight_grads([RH.reshape(TB, H)], dz2[:, 2 * H:])
        db = dz2.sum(0, dtype=np.float32) if has_bias else None
    dx = input_grad(dzx, kernel, dx_out.reshape(TB, I))
    if idrop is not None:
        dx_out *= idrop[None]
    del dx
    return dx_out, dW, dU, db


def matmul(a, b):
    """bf16(a) [..., K] bf16(b) [K, N] with float32 sums (a mixed Dense layer's products),
    on the compiled kernels where they are built, else the NumPy oracle."""
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        raise ValueError("mixed_bfloat16: the products run on the CPU (NumPy arrays), got "
                         f"{type(a).__name__}")
    if _lowp is None:  # pragma: no cover - a source tree without a build
        from .oracle.lowp import mixed_matmul
        return mixed_matmul(a, b)
    a2 = np.ascontiguousarray(a.reshape(-1, a.shape[-1]), dtype=np.float32)
    out = np.empty((a2.shape[0], b.shape[1]), np.float32)
    product(a2, Packed(b), out)
    return out.reshape(a.shape[:-1] + (b.shape[1],))
