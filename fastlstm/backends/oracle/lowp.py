"""The reduced-precision products (int8, bfloat16) in NumPy: the definition the compiled
kernels of src_c/lowp.c (fastlstm._lowp) are tested against.

int8 (weights symmetric per output column, activations dynamic per row):

- weights, here in NumPy: ``scale[c] = max|W[:, c]| / 127`` (float32),
  ``Wq = clip(rint(W / scale), -127, 127)`` (int8); a zero column has scale 0 and Wq 0.
- rows of A, in the kernel: ``amax = max|a|`` (float32). A row with NaN or +-Inf gives a NaN
  output row (``sa = NaN``, ``q = 0``). A row with ``amax == 0``, or so small that
  ``127.0f / amax`` overflows to Inf (``amax < ~3.7e-37``), is a zero row (``sa = 0``,
  ``q = 0``). Otherwise ``inv = 127.0f / amax``, ``q = rint(a * inv)`` (one float32
  multiply, round half to even), ``sa = amax / 127.0f``.
- ``acc = sum_k q * Wq`` exactly (int32 in the kernel; exact for K <= 131072).
- then, every operation rounded to float32 on its own (no FMA anywhere, in the kernel or
  here): ``d = sa * scale[c]``; ``r = float32(acc) * d``; ``r = r + C`` (beta = 1);
  ``r = r + bias[c]``. So the kernel and this oracle agree exactly.

bfloat16:

- rounding to bf16 (weights here, rows of A in the kernel): round to nearest even; zeros and
  float32 denormals give a zero of the same sign (as VCVTNE2PS2BF16, which treats denormal
  inputs as zero); NaN stays NaN; Inf stays Inf; finite values past the largest bf16 round to
  Inf. Denormal bf16 weights are read as zeros of the same sign (the kernel's pack does so).
- the product: the bf16 values (exact in float32) multiplied and summed in float32; the
  kernel's order of summation differs by variant, so it agrees with ``bf16_matmul`` to
  float32 accumulation-order error (about ``K * eps32 * sum_k |a_k w_k|``), then
  ``r = acc (+ C) (+ bias)``.
"""
from __future__ import annotations

import operator

import numpy as np

__all__ = ["bf16_round", "bf16_bits", "bits_to_float", "quantize_weight_int8",
           "quantize_rows_int8", "int8_matmul", "int8_gemm", "bf16_matmul", "bf16_gemm",
           "flush_bf16_bits", "mixed_matmul", "matmul_for"]


def bf16_bits(a):
    """The bf16 bit patterns (uint16) of a (converted to float32), rounded as above."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    exp = u & np.uint32(0x7F800000)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    out = np.where(exp == 0, (u >> np.uint32(16)) & np.uint32(0x8000),
                   np.where(nan, (u >> np.uint32(16)) | np.uint32(0x0040), rounded))
    return out.astype(np.uint16)


def flush_bf16_bits(bits):
    """Denormal bf16 bit patterns -> zero of the same sign (as the kernel's pack)."""
    b = np.asarray(bits, dtype=np.uint16)
    return np.where((b & np.uint16(0x7F80)) == 0, b & np.uint16(0x8000), b).astype(np.uint16)


def bits_to_float(u16):
    """float32 values of bf16 bit patterns (exact: the bits shifted left by 16)."""
    u = np.asarray(u16, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
    return u.view(np.float32)


def bf16_round(a):
    """a rounded to bf16, as float32 values."""
    return bits_to_float(bf16_bits(a))


def quantize_weight_int8(W):
    """(Wq int8 [K, N], scale float32 [N]) of W [K, N]: symmetric per column. A column of
    zeros gets scale 0 and Wq 0. W must be finite."""
    W = np.asarray(W, dtype=np.float32)
    if W.ndim != 2:
        raise ValueError(f"W: expected a 2-D [K, N] array, got shape {W.shape}")
    if not np.isfinite(W).all():
        raise ValueError("W: expected finite values")
    amax = np.abs(W).max(axis=0) if W.shape[0] else np.zeros(W.shape[1], np.float32)
    scale = (amax / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    Wq = np.where(scale > 0, np.clip(np.rint(W / safe), -127, 127), 0)
    return Wq.astype(np.int8), scale


def quantize_rows_int8(A):
    """(q int8 [..., K], sa float32 [...]) of the rows of A [..., K], as the kernel does."""
    A = np.asarray(A, dtype=np.float32)
    K = A.shape[-1]
    if K == 0:
        return np.zeros(A.shape, np.int8), np.zeros(A.shape[:-1], np.float32)
    finite = np.isfinite(A).all(axis=-1)
    amax = np.where(finite, np.abs(np.where(np.isfinite(A), A, 0)).max(axis=-1), 0)
    amax = amax.astype(np.float32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = (np.float32(127) / amax).astype(np.float32)
        ok = finite & (amax > 0) & np.isfinite(inv)
        inv = np.where(ok, inv, np.float32(0)).astype(np.float32)
        prod = (np.where(ok[..., None], A, 0) * inv[..., None]).astype(np.float32)
        q = np.rint(prod).astype(np.int8)
        sa = np.where(ok, amax / np.float32(127), np.float32(0)).astype(np.float32)
    sa = np.where(finite, sa, np.float32(np.nan)).astype(np.float32)
    return q, sa


def int8_matmul(A, Wq, scale):
    """float32 [..., N]: quantized rows of A [..., K] times Wq int8 [K, N] with the column
    scales, as the kernel computes it without bias or beta."""
    A = np.asarray(A, dtype=np.float32)
    Wq = np.asarray(Wq)
    scale = np.asarray(scale, dtype=np.float32)
    q, sa = quantize_rows_int8(A)
    # Integer sums below 2^53: exact in float64.
    acc = q.astype(np.float64) @ Wq.astype(np.float64)
    accf = acc.astype(np.int64).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        d = (sa[..., None] * scale).astype(np.float32)
        return (accf * d).astype(np.float32)


def _epilogue(r, bias, C):
    """r (+ C, beta = 1) (+ bias), each addition rounded to float32 on its own, as the
    kernels add them."""
    with np.errstate(invalid="ignore", over="ignore"):
        if C is not None:
            r = (r + np.asarray(C, np.float32)).astype(np.float32)
        if bias is not None:
            r = (r + np.asarray(bias, np.float32)).astype(np.float32)
    return r


def int8_gemm(A, Wq, scale, bias=None, C=None):
    """The kernel's whole result: int8_matmul (+ C, beta = 1) (+ bias), in that order."""
    return _epilogue(int8_matmul(A, Wq, scale), bias, C)


def bf16_matmul(A, Wb_bits):
    """float32 [..., N]: bf16(A) [..., K] times the bf16 weights Wb_bits (uint16 [K, N]),
    products summed in float32 (to float32 accumulation-order error from the kernel)."""
    a = bf16_round(A)
    w = bits_to_float(flush_bf16_bits(Wb_bits))
    with np.errstate(invalid="ignore", over="ignore"):
        return np.matmul(a, w).astype(np.float32)


def bf16_gemm(A, Wb_bits, bias=None, C=None):
    """bf16_matmul (+ C) (+ bias)."""
    return _epilogue(bf16_matmul(A, Wb_bits), bias, C)


def mixed_matmul(a, b):
    """A product of mixed_bfloat16 training: both operands rounded to bf16 (as above), the
    products summed in float32 (the compiled kernels agree to accumulation order)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.matmul(bf16_round(a), bf16_round(b)).astype(np.float32)


def matmul_for(mixed):
    """The product the oracle's cells use: mixed_matmul, or plain ``@``."""
    return mixed_matmul if mixed else operator.matmul
