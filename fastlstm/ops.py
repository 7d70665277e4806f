"""Functional forward/backward pairs of every cell, one signature for all backends.

Arrays are time-major (notation in ``fastlstm/backends/oracle/__init__.py``). These functions
check and normalise their arguments once (shapes, dtypes, contiguity), then dispatch to the
active backend (``fl.use_backend``), or to ``cupy`` when given CuPy arrays. A training
forward returns a cache for exactly one backward; an inference forward keeps nothing.
"""
from __future__ import annotations

import numpy as np

from . import activations as _activations
from .backends import get_ops
from .backends.base import Cache, Grads

__all__ = ["lstm_forward", "lstm_backward", "Grads"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _ops_for(x):
    if type(x).__module__.split(".")[0] == "cupy":
        return get_ops("cupy")
    return get_ops()


def _xp_of(ops):
    return ops.xp


def _shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


class _Checker:
    """Converts arguments to contiguous arrays of one float dtype, naming any that is wrong."""

    def __init__(self, xp, dtype):
        self.xp = xp
        self.dtype = dtype

    def array(self, name, a, shape, optional=False):
        if a is None:
            if optional:
                return None
            raise TypeError(f"{name}: expected an array of shape {_shape_str(shape)}, got None")
        try:
            arr = self.xp.asarray(a)
        except Exception as exc:
            raise TypeError(f"{name}: expected an array, got {type(a).__name__}") from exc
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
        if arr.ndim != len(shape) or any(e is not None and e != s
                                         for e, s in zip(shape, arr.shape)):
            expected = _shape_str("?" if e is None else e for e in shape)
            raise ValueError(f"{name}: expected shape {expected}, got {_shape_str(arr.shape)}")
        return self.xp.ascontiguousarray(arr, dtype=self.dtype)

    def mask(self, name, m, shape):
        if m is None:
            return None
        arr = self.xp.asarray(m)
        if arr.shape != tuple(shape):
            raise ValueError(f"{name}: expected shape {_shape_str(shape)}, got {_shape_str(arr.shape)}")
        if arr.dtype != bool:
            if arr.dtype.kind not in "iub":
                raise TypeError(f"{name}: expected a boolean array, got dtype {arr.dtype}")
            arr = arr != 0
        return self.xp.ascontiguousarray(arr)


def _float_dtype(name, a):
    dt = np.dtype(getattr(a, "dtype", np.float64))
    if dt not in _FLOATS:
        raise TypeError(f"{name}: expected float32 or float64 weights, got dtype {dt}")
    return dt


def lstm_forward(x, kernel, recurrent_kernel, bias=None, h0=None, c0=None, *, peephole=None,
                 mask=None, input_dropout_mask=None, recurrent_dropout_mask=None,
                 activation="tanh", recurrent_activation="sigmoid",
                 coupled_input_forget=False, go_backwards=False, return_sequences=True,
                 training=False):
    """LSTM over a sequence.

    x [T,B,I]; kernel [I,G]; recurrent_kernel [H,G]; bias [G] or None; h0, c0 [B,H] or None
    (zeros); peephole [3,H] or None; mask [T,B] bool or None; input_dropout_mask [B,I];
    recurrent_dropout_mask [B,H]. G = 4H, or 3H with ``coupled_input_forget``. The dtype is
    the kernel's (float32 or float64); other arrays are converted to it.

    Returns ``(y, h_T, c_T, cache)``: y [T,B,H] indexed by step (reversed input order with
    ``go_backwards``, as Keras) or the last output [B,H]; cache is None unless ``training``.
    """
    ops = _ops_for(x)
    xp = ops.xp
    dtype = _float_dtype("kernel", kernel)
    chk = _Checker(xp, dtype)
    coupled = bool(coupled_input_forget)
    xa = xp.asarray(x)
    if xa.ndim != 3:
        raise ValueError(f"x: expected a 3-D time-major array (T, B, I), got shape {_shape_str(xa.shape)}")
    T, B, I = xa.shape
    if T < 1:
        raise ValueError(f"x: expected at least one timestep, got shape {_shape_str(xa.shape)}")
    U = chk.array("recurrent_kernel", recurrent_kernel, (None, None))
    H = U.shape[0]
    G = (3 if coupled else 4) * H
    if H < 1 or U.shape[1] != G:
        raise ValueError(f"recurrent_kernel: expected shape (H, {3 if coupled else 4}*H), "
                         f"got {_shape_str(U.shape)}")
    x = chk.array("x", xa, (T, B, I))
    W = chk.array("kernel", kernel, (I, G))
    b = chk.array("bias", bias, (G,), optional=True)
    h0 = chk.array("h0", h0, (B, H), optional=True)
    c0 = chk.array("c0", c0, (B, H), optional=True)
    h0 = xp.zeros((B, H), dtype) if h0 is None else h0
    c0 = xp.zeros((B, H), dtype) if c0 is None else c0
    P = chk.array("peephole", peephole, (3, H), optional=True)
    m = chk.mask("mask", mask, (T, B))
    idm = chk.array("input_dropout_mask", input_dropout_mask, (B, I), optional=True)
    rdm = chk.array("recurrent_dropout_mask", recurrent_dropout_mask, (B, H), optional=True)
    act = _activations.get(activation, "activation")
    ract = _activations.get(recurrent_activation, "recurrent_activation")
    y, h, c, cache = ops.lstm_forward(
        x, W, U, b, h0, c0, peephole=P, mask=m, input_dropout_mask=idm,
        recurrent_dropout_mask=rdm, activation=act, recurrent_activation=ract, coupled=coupled,
        go_backwards=bool(go_backwards), return_sequences=bool(return_sequences),
        training=bool(training))
    if cache is not None:
        cache.info = dict(T=T, B=B, H=H, dtype=dtype, return_sequences=bool(return_sequences),
                          ops=ops)
    return y, h, c, cache


def _grad_arg(chk, name, g, shape):
    return None if g is None else chk.array(name, g, shape)


def lstm_backward(cache, dy=None, dh=None, dc=None) -> Grads:
    """Gradients of the ``lstm_forward`` that returned ``cache``.

    dy mirrors y ([T,B,H] or [B,H]); dh, dc [B,H] are the gradients of h_T and c_T; ``None``
    means zero. Returns ``Grads`` (inputs, h0, c0, kernel, recurrent_kernel, bias, peephole).
    """
    if not isinstance(cache, Cache):
        raise TypeError(f"cache: expected the cache of lstm_forward(training=True), "
                        f"got {type(cache).__name__}")
    info = cache.info
    ops = info["ops"]
    chk = _Checker(ops.xp, info["dtype"])
    T, B, H = info["T"], info["B"], info["H"]
    dy = _grad_arg(chk, "dy", dy, (T, B, H) if info["return_sequences"] else (B, H))
    dh = _grad_arg(chk, "dh", dh, (B, H))
    dc = _grad_arg(chk, "dc", dc, (B, H))
    return ops.lstm_backward(cache, dy, dh, dc)
