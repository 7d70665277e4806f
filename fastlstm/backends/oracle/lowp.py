"""The roundings of reduced-precision inference, in NumPy: what the compiled int8 and
bfloat16 products (src_c/lowp.c) compute, so that they are compared with it to float32
accumulation-order error.

int8: weights symmetric per output column, ``scale = max|W[:, c]| / 127``,
``Wq = clip(rint(W / scale), -127, 127)`` (a zero column: scale 0, Wq 0). Activations per row,
at every product: ``amax = max|a|``, ``q = rint(a * (127 / amax))``, ``sa = amax / 127``;
the product ``sum q Wq`` is exact (int32), then ``acc * (sa * scale)`` in float32.
bfloat16: operands rounded to bfloat16 (nearest even), products accumulated in float32.
"""
from __future__ import annotations

import numpy as np

_F32 = np.float32


def bf16_bits(a):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    a = np.ascontiguousarray(a, dtype=_F32)
    u = a.view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(a)
    out = r.astype(np.uint16)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)    # quiet NaN
    return out


def bits_to_float(bits):
    """bfloat16 bit patterns (uint16) -> float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(_F32)


def bf16_round(a):
    """float32 rounded to the nearest bfloat16, as float32."""
    return bits_to_float(bf16_bits(a))


def quantize_weight_int8(W):
    """W [K,N] -> (Wq int8 [K,N], scale float32 [N]): symmetric, per column."""
    W = np.asarray(W, dtype=_F32)
    amax = np.max(np.abs(W), axis=0) if W.shape[0] else np.zeros(W.shape[1], _F32)
    scale = (amax / _F32(127)).astype(_F32)
    safe = np.where(scale > 0, scale, _F32(1))
    q = np.where(scale > 0, np.rint(W / safe), 0)
    return np.clip(q, -127, 127).astype(np.int8), scale


def quantize_rows_int8(A):
    """A [..., K] -> (q int32 [..., K], sa float32 [...]): per row, as the kernels."""
    A = np.asarray(A, dtype=_F32)
    amax = np.max(np.abs(A), axis=-1) if A.shape[-1] else np.zeros(A.shape[:-1], _F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(amax > 0, _F32(127) / amax, _F32(0)).astype(_F32)
        q = np.rint(A * inv[..., None])
    q = np.where(np.isfinite(q), q, 0).astype(np.int32)
    return q, (amax / _F32(127)).astype(_F32)


def int8_matmul(A, Wq, scale):
    """A [..., K] float32 times the int8 weight (Wq [K,N], scale [N]) -> float32 [..., N]."""
    q, sa = quantize_rows_int8(A)
    acc = q.astype(np.int64) @ np.asarray(Wq, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        return acc.astype(_F32) * (sa[..., None] * np.asarray(scale, _F32))


def bf16_matmul(A, Wb_bits):
    """A [..., K] float32 times the bfloat16 weight (bit patterns [K,N]) -> float32 [..., N]."""
    return np.matmul(bf16_round(A), bits_to_float(Wb_bits))
