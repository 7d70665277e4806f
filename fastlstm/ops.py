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
from .backends import packing as _packing
from .backends.cache_and_grads import Cache, Grads

__all__ = ["lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
           "simple_rnn_forward", "simple_rnn_backward", "Grads"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _ops_for(x):
    if type(x).__module__.split(".")[0] == "cupy":
        return get_ops("cupy")
    return get_ops()


def _shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


class _Checker:
    """Converts arguments to contiguous arrays of one float dtype, naming any that is wrong."""

    def __init__(self, xp, dtype):
        self.xp = xp
        self.dtype = dtype

    def array(self, name, a, shape, optional=False, rows_apart=False):
        """rows_apart: an array of this dtype whose last axis is contiguous is taken as it
        is, whatever the strides of its other axes (a backend that reads it so asked)."""
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
        if (rows_apart and arr.dtype == self.dtype and arr.flags.aligned
                and (arr.shape[-1] <= 1 or arr.strides[-1] == arr.itemsize)
                and all(s % arr.itemsize == 0 for s in arr.strides)):
            return arr
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


def _flag(name, value):
    """A switch: True/False (NumPy's too) or 0/1; a string such as "False" is refused rather
    than read as true."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer))
                                               and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name}: expected True or False, got {value!r}")


def _sequence_args(x, kernel, recurrent_kernel, blocks):
    """Checks shared by every cell's forward: x [T,B,I], recurrent_kernel [H, blocks*H],
    kernel [I, blocks*H]. Returns (ops, chk, x, kernel, recurrent_kernel, (T, B, I, H))."""
    ops = _ops_for(x)
    xp = ops.xp
    quantized = _quantized_pair(ops, kernel, recurrent_kernel)
    dtype = np.dtype(np.float32) if quantized else _float_dtype("kernel", kernel)
    chk = _Checker(xp, dtype)
    try:
        xa = xp.asarray(x)
    except (ValueError, TypeError) as exc:      # e.g. ragged nested lists
        raise ValueError(f"x: expected a 3-D time-major array (T, B, I): {exc}") from None
    if xa.ndim != 3:
        raise ValueError(f"x: expected a 3-D time-major array (T, B, I), got shape {_shape_str(xa.shape)}")
    T, B, I = xa.shape
    if T < 1:
        raise ValueError(f"x: expected at least one timestep, got shape {_shape_str(xa.shape)}")
    U = recurrent_kernel if quantized else chk.array("recurrent_kernel", recurrent_kernel,
                                                     (None, None))
    H = U.shape[0]
    G = blocks * H
    if H < 1 or U.shape[1] != G:
        raise ValueError(f"recurrent_kernel: expected shape (H, {'H' if blocks == 1 else f'{blocks}*H'}), "
                         f"got {_shape_str(U.shape)}")
    # The compiled backends take a layer's batch-major input as a transposed view and copy it
    # themselves: then they know the copy is theirs (see cpu_ops._time_major).
    x = chk.array("x", xa, (T, B, I), rows_apart=getattr(ops, "reads_rows_apart", False))
    if quantized:
        if tuple(kernel.shape) != (I, G):
            raise ValueError(f"kernel: expected shape {_shape_str((I, G))}, got "
                             f"{_shape_str(kernel.shape)}")
        W = kernel
    else:
        W = chk.array("kernel", kernel, (I, G))
    return ops, chk, x, W, U, (T, B, I, H)


def _quantized_pair(ops, kernel, recurrent_kernel):
    """Whether the weights are quantized (fastlstm.quantization): then both are, with one
    precision, on a backend that runs them."""
    from .quantization import QuantizedMatrix
    qk, qr = isinstance(kernel, QuantizedMatrix), isinstance(recurrent_kernel, QuantizedMatrix)
    if not (qk or qr):
        return False
    if not (qk and qr) or kernel.precision != recurrent_kernel.precision:
        raise TypeError("kernel, recurrent_kernel: quantized weights come in pairs of one "
                        f"precision, got {type(kernel).__name__} and "
                        f"{type(recurrent_kernel).__name__}")
    if ops.name not in ("cpu", "numpy"):
        raise ValueError(f"kernel: {kernel.precision} weights run on the cpu and numpy "
                         f"backends, not on {ops.name!r}")
    return True


def _inference_only(kernel, training):
    from .quantization import QuantizedMatrix
    if training and isinstance(kernel, QuantizedMatrix):
        raise ValueError(f"training: the weights are quantized ({kernel.precision}) for "
                         "inference only; train the float model and quantize it again "
                         "(fl.quantize)")


def _mixed_arg(ops, chk, W, mixed):
    """{"mixed": True} for the backend's forward under mixed_bfloat16 (float32 weights, on
    the cpu or numpy backend), else {} (backends without the option are called as before)."""
    if not _flag("mixed", mixed):
        return {}
    from .quantization import QuantizedMatrix
    if isinstance(W, QuantizedMatrix):
        raise ValueError("mixed: the weights are quantized; mixed_bfloat16 takes float32 "
                         "weights")
    if chk.dtype != np.float32:
        raise ValueError(f"mixed: mixed_bfloat16 takes float32 weights, got {chk.dtype}")
    if ops.name not in ("cpu", "numpy"):
        raise ValueError(f"mixed: mixed_bfloat16 runs on the cpu and numpy backends, not on "
                         f"{ops.name!r}")
    return {"mixed": True}


def _state_arg(chk, name, a, B, H):
    a = chk.array(name, a, (B, H), optional=True)
    return chk.xp.zeros((B, H), chk.dtype) if a is None else a


def _step_masks(chk, mask, input_dropout_mask, recurrent_dropout_mask, T, B, I, H):
    return (chk.mask("mask", mask, (T, B)),
            chk.array("input_dropout_mask", input_dropout_mask, (B, I), optional=True),
            chk.array("recurrent_dropout_mask", recurrent_dropout_mask, (B, H), optional=True))


def _lengths_or_mask(ops, chk, mask, sequence_lengths, T, B, kernel, H):
    """(mask, lengths) for the backend: rows of different lengths (``sequence_lengths``, or
    a mask that is a prefix mask) go to a backend that packs them as lengths (where it is
    worth it: packing.worth_packing), else as their prefix mask; a mask that pads nothing
    is dropped (the plain path is the same)."""
    if sequence_lengths is not None:
        if mask is not None:
            raise ValueError("sequence_lengths: give either a mask or sequence_lengths, "
                             "not both")
        lengths = _packing.check_lengths("sequence_lengths", sequence_lengths, T, B)
    elif mask is not None and getattr(ops, "packs_lengths", False):
        lengths = _packing.prefix_lengths(mask)
    else:
        return mask, None
    if lengths is None:
        return mask, None
    total = int(lengths.sum())
    if total == T * B:
        return None, None
    from .quantization import QuantizedMatrix
    I, G = kernel.shape
    if (total == 0 or isinstance(kernel, QuantizedMatrix)
            or not getattr(ops, "packs_lengths", False)
            or not _packing.worth_packing(lengths, T, I, H, G)):
        return chk.mask("sequence_lengths", _packing.lengths_mask(lengths, T), (T, B)), None
    return None, lengths


def _zoneout_arg(ops, chk, zoneout, zoneout_mask, T, B, H):
    """What the backend takes for zoneout: None, the keep masks [T,B,H] (by step; training)
    or 1 - p (without masks: inference's expectation)."""
    if zoneout is None or (not isinstance(zoneout, bool) and isinstance(zoneout, (int, float))
                           and zoneout == 0):
        if zoneout_mask is not None:
            raise ValueError("zoneout_mask: given without zoneout (the rate p)")
        return None
    if isinstance(zoneout, bool) or not isinstance(zoneout, (int, float, np.floating)) \
            or not 0 <= zoneout < 1:
        raise ValueError(f"zoneout: expected a rate in [0, 1), got {zoneout!r}")
    if ops.name == "cupy":
        raise ValueError("zoneout: not on the cupy backend yet; run it on the cpu backend")
    if zoneout_mask is not None:
        return chk.array("zoneout_mask", zoneout_mask, (T, B, H))
    return 1.0 - float(zoneout)


def _layer_norm_arg(ops, chk, cell, layer_norm, G, H):
    """The backend's layer_norm: None, or the checked arrays (LSTM: (gamma [2,G],
    gamma_h [H], beta_h [H]); GRU, SimpleRNN: gamma [2,G]) in the weights' dtype."""
    if layer_norm is None:
        return None
    if ops.name == "cupy":
        raise ValueError("layer_norm: not on the cupy backend yet; run it on the cpu backend")
    if cell != "lstm":
        return chk.array("layer_norm", layer_norm, (2, G))
    if not isinstance(layer_norm, (tuple, list)) or len(layer_norm) != 3:
        got = (f"a {type(layer_norm).__name__} of {len(layer_norm)}"
               if isinstance(layer_norm, (tuple, list)) else type(layer_norm).__name__)
        raise TypeError(f"layer_norm: expected a tuple (gamma (2, {G}), gamma_h ({H},), "
                        f"beta_h ({H},)), got {got}")
    gamma, gamma_h, beta_h = layer_norm
    return (chk.array("layer_norm[0] (gamma)", gamma, (2, G)),
            chk.array("layer_norm[1] (gamma_h)", gamma_h, (H,)),
            chk.array("layer_norm[2] (beta_h)", beta_h, (H,)))


def _attach_info(cache, ops, chk, T, B, H, return_sequences):
    if cache is not None:
        cache.info = dict(T=T, B=B, H=H, dtype=chk.dtype, return_sequences=return_sequences,
                          ops=ops)


def lstm_forward(x, kernel, recurrent_kernel, bias=None, h0=None, c0=None, *, peephole=None,
                 mask=None, input_dropout_mask=None, recurrent_dropout_mask=None,
                 activation="tanh", recurrent_activation="sigmoid",
                 coupled_input_forget=False, go_backwards=False, return_sequences=True,
                 training=False, sequence_lengths=None, projection=None, zoneout=None,
                 zoneout_mask=None, mixed=False, layer_norm=None):
    """LSTM over a sequence.

    x [T,B,I]; kernel [I,G]; recurrent_kernel [H,G]; bias [G] or None; h0, c0 [B,H] or None
    (zeros); peephole [3,H] or None; mask [T,B] bool or None; input_dropout_mask [B,I];
    recurrent_dropout_mask [B,H]. G = 4H, or 3H with ``coupled_input_forget``. The dtype is
    the kernel's (float32 or float64); other arrays are converted to it.
    sequence_lengths [B] ints in [0, T] (instead of a mask): row b's steps t < length are
    used, the rest padding, exactly as the prefix mask ``t < length``; the ``cpu`` backend
    then runs each row only up to its length (so it does with a mask that is a prefix mask).
    projection [H,P] (PyTorch's ``proj_size``, LSTMP): ``h_t = (o * a(c_t)) projection``;
    then recurrent_kernel is [P,G], h0 and the outputs have P features, c0 H
    (``fastlstm/projected.py``; no recurrent dropout).
    zoneout: a rate p in [0, 1) of zoneout on h (haste's; not on c): ``h_t = h_{t-1} + m_t
    (h~_t - h_{t-1})`` with zoneout_mask [T,B,H] (by step) the keep masks m_t (training,
    Bernoulli(1 - p)), or m_t = 1 - p without it (inference).

    ``mixed``: mixed_bfloat16 (float32 weights and states; every product, the backward's
    too, with bf16 operands and float32 sums; docs/mixed_precision.md).

    ``layer_norm``: ``(gamma [2,G], gamma_h [H], beta_h [H])`` (haste's LayerNormLSTM):
    ``z = LN(x_t W) gamma[0] + LN(h_{t-1} U) gamma[1] + b`` and ``h_t = o * act(LN(c_t)
    gamma_h + beta_h)``, LN the rows' normalization ``(v - mean) / sqrt(var + 1e-5)``
    without an affine of its own; c_t and the peepholes stay unnormalized. The backward then
    returns ``Grads.gamma``, ``gamma_h`` and ``beta_h``. Not with ``projection``.

    Returns ``(y, h_T, c_T, cache)``: y [T,B,H] indexed by step (reversed input order with
    ``go_backwards``, as Keras) or the last output [B,H]; cache is None unless ``training``.
    """
    coupled = _flag("coupled_input_forget", coupled_input_forget)
    if projection is not None and zoneout:
        raise ValueError("zoneout: a projected LSTM (projection, proj_size) takes no zoneout")
    if projection is not None and layer_norm is not None:
        raise ValueError("layer_norm: a projected LSTM (projection, proj_size) takes no "
                         "layer normalization (not supported)")
    if projection is not None and _flag("mixed", mixed):
        raise NotImplementedError("mixed: a projected LSTM (projection, proj_size) does not run "
                                  "in mixed_bfloat16 yet; use float32")
    if projection is not None:
        return _projected_forward(
            x, kernel, recurrent_kernel, bias, projection, h0, c0, peephole=peephole,
            mask=mask, input_dropout_mask=input_dropout_mask,
            recurrent_dropout_mask=recurrent_dropout_mask, activation=activation,
            recurrent_activation=recurrent_activation, coupled_input_forget=coupled,
            go_backwards=_flag("go_backwards", go_backwards),
            return_sequences=_flag("return_sequences", return_sequences),
            training=_flag("training", training), sequence_lengths=sequence_lengths)
    ops, chk, x, W, U, (T, B, I, H) = _sequence_args(x, kernel, recurrent_kernel,
                                                     3 if coupled else 4)
    _inference_only(W, _flag("training", training))
    b = chk.array("bias", bias, (U.shape[1],), optional=True)
    h0 = _state_arg(chk, "h0", h0, B, H)
    c0 = _state_arg(chk, "c0", c0, B, H)
    P = chk.array("peephole", peephole, (3, H), optional=True)
    m, idm, rdm = _step_masks(chk, mask, input_dropout_mask, recurrent_dropout_mask, T, B, I, H)
    m, lengths = _lengths_or_mask(ops, chk, m, sequence_lengths, T, B, W, H)
    act = _activations.get(activation, "activation")
    ract = _activations.get(recurrent_activation, "recurrent_activation")
    extra = {} if lengths is None else {"lengths": lengths}
    zk = _zoneout_arg(ops, chk, zoneout, zoneout_mask, T, B, H)
    if zk is not None:
        extra["zoneout"] = zk
    ln = _layer_norm_arg(ops, chk, "lstm", layer_norm, U.shape[1], H)
    if ln is not None:
        extra["layer_norm"] = ln
    y, h, c, cache = ops.lstm_forward(
        x, W, U, b, h0, c0, peephole=P, mask=m, input_dropout_mask=idm,
        recurrent_dropout_mask=rdm, activation=act, recurrent_activation=ract, coupled=coupled,
        go_backwards=_flag("go_backwards", go_backwards), return_sequences=_flag("return_sequences", return_sequences),
        training=_flag("training", training), **extra, **_mixed_arg(ops, chk, W, mixed))
    _attach_info(cache, ops, chk, T, B, H, _flag("return_sequences", return_sequences))
    return y, h, c, cache


def _projected_forward(x, kernel, recurrent_kernel, bias, projection, h0, c0, *,
                       recurrent_dropout_mask, training, sequence_lengths, mask, **options):
    """lstm_forward with a projection: the shapes checked here, the rest by the LSTM op
    that projected.lstm_forward runs."""
    from . import projected
    ops = _ops_for(x)
    xp = ops.xp
    chk = _Checker(xp, _float_dtype("kernel", kernel))
    Wp = chk.array("projection", projection, (None, None))
    H, P = Wp.shape
    if H < 1 or P < 1:
        raise ValueError(f"projection: expected shape (H, P) with H, P >= 1, got {Wp.shape}")
    G = (3 if options["coupled_input_forget"] else 4) * H
    R = chk.array("recurrent_kernel", recurrent_kernel, (P, G))
    W = chk.array("kernel", kernel, (None, G))
    try:
        xa = chk.array("x", x, (None, None, W.shape[0]))
    except ValueError as exc:
        raise ValueError(f"{exc} (time-major (T, B, I))") from None
    T, B, _ = xa.shape
    if recurrent_dropout_mask is not None:
        raise ValueError("recurrent_dropout_mask: a projected LSTM (projection, proj_size) "
                         "takes no recurrent dropout")
    h0 = chk.array("h0", h0, (B, P), optional=True)
    m = chk.mask("mask", mask, (T, B))
    if sequence_lengths is not None:
        if m is not None:
            raise ValueError("sequence_lengths: give either a mask or sequence_lengths, "
                             "not both")
        sequence_lengths = _packing.check_lengths("sequence_lengths", sequence_lengths, T, B)
    return projected.lstm_forward(lstm_forward, xp, xa, W, R, bias, Wp, h0, c0,
                                  training=training, mask=m, sequence_lengths=sequence_lengths,
                                  **options)


def gru_forward(x, kernel, recurrent_kernel, bias=None, h0=None, *, reset_after=True,
                mask=None, input_dropout_mask=None, recurrent_dropout_mask=None,
                activation="tanh", recurrent_activation="sigmoid", go_backwards=False,
                return_sequences=True, training=False, sequence_lengths=None, zoneout=None,
                zoneout_mask=None, mixed=False, layer_norm=None):
    """GRU over a sequence (Keras 3 ``GRUCell``).

    x [T,B,I]; kernel [I,3H]; recurrent_kernel [H,3H], blocks [z|r|h]; bias [2,3H] (row 0
    input, row 1 recurrent bias) with ``reset_after`` (the default, as cuDNN and PyTorch),
    [3H] without, or None; h0 [B,H] or None (zeros); mask [T,B] bool or None;
    input_dropout_mask [B,I]; recurrent_dropout_mask [B,H] (applied to h_{t-1} in every
    recurrent product, not in the ``z * h_{t-1}`` carry, as Keras). The dtype is the
    kernel's (float32 or float64); other arrays are converted to it. sequence_lengths,
    zoneout, zoneout_mask: as ``lstm_forward``'s.
    ``mixed``: as in ``lstm_forward``.
    ``layer_norm``: gamma [2,3H] (haste's LayerNormGRU; ``reset_after`` only): each product
    normalized over its full 3H row, ``x_z = LN(x_t W) gamma[0] + b[0]``, ``h_z = LN(h_{t-1}
    U) gamma[1] + b[1]``, then the reset-after gates on x_z and h_z; the backward then
    returns ``Grads.gamma``.

    Returns ``(y, h_T, cache)``: y [T,B,H] indexed by step (reversed input order with
    ``go_backwards``, as Keras) or the last output [B,H]; cache is None unless ``training``.
    """
    reset_after = _flag("reset_after", reset_after)
    if layer_norm is not None and not reset_after:
        raise ValueError("layer_norm: the GRU takes layer normalization with "
                         "reset_after=True only, got reset_after=False")
    ops, chk, x, W, U, (T, B, I, H) = _sequence_args(x, kernel, recurrent_kernel, 3)
    _inference_only(W, _flag("training", training))
    G = 3 * H
    try:
        b = chk.array("bias", bias, (2, G) if reset_after else (G,), optional=True)
    except ValueError as exc:
        form = ("(row 0 input bias, row 1 recurrent bias)" if reset_after
                else "(one input bias)")
        raise ValueError(f"{exc}; reset_after={reset_after} takes a bias of shape "
                         f"{'(2, 3*H)' if reset_after else '(3*H,)'} {form}") from None
    h0 = _state_arg(chk, "h0", h0, B, H)
    m, idm, rdm = _step_masks(chk, mask, input_dropout_mask, recurrent_dropout_mask, T, B, I, H)
    m, lengths = _lengths_or_mask(ops, chk, m, sequence_lengths, T, B, W, H)
    act = _activations.get(activation, "activation")
    ract = _activations.get(recurrent_activation, "recurrent_activation")
    extra = {} if lengths is None else {"lengths": lengths}
    zk = _zoneout_arg(ops, chk, zoneout, zoneout_mask, T, B, H)
    if zk is not None:
        extra["zoneout"] = zk
    ln = _layer_norm_arg(ops, chk, "gru", layer_norm, G, H)
    if ln is not None:
        extra["layer_norm"] = ln
    y, h, cache = ops.gru_forward(
        x, W, U, b, h0, reset_after=reset_after, mask=m, input_dropout_mask=idm,
        recurrent_dropout_mask=rdm, activation=act, recurrent_activation=ract,
        go_backwards=_flag("go_backwards", go_backwards), return_sequences=_flag("return_sequences", return_sequences),
        training=_flag("training", training), **extra, **_mixed_arg(ops, chk, W, mixed))
    _attach_info(cache, ops, chk, T, B, H, _flag("return_sequences", return_sequences))
    return y, h, cache


def simple_rnn_forward(x, kernel, recurrent_kernel, bias=None, h0=None, *, mask=None,
                       input_dropout_mask=None, recurrent_dropout_mask=None, activation="tanh",
                       go_backwards=False, return_sequences=True, training=False,
                       sequence_lengths=None, zoneout=None, zoneout_mask=None, mixed=False,
                       layer_norm=None):
    """SimpleRNN over a sequence: ``h_t = act(x_t W + h_{t-1} U + b)``.

    x [T,B,I]; kernel [I,H]; recurrent_kernel [H,H]; bias [H] or None; h0 [B,H] or None
    (zeros); mask [T,B] bool or None; input_dropout_mask [B,I]; recurrent_dropout_mask
    [B,H]. The dtype is the kernel's (float32 or float64); other arrays are converted to it.
    sequence_lengths, zoneout, zoneout_mask: as ``lstm_forward``'s.
    ``mixed``: as in ``lstm_forward``.
    ``layer_norm``: gamma [2,H]: ``h_t = act(LN(x_t W) gamma[0] + LN(h_{t-1} U) gamma[1] +
    b)`` (LN as in ``lstm_forward``); the backward then returns ``Grads.gamma``.

    Returns ``(y, h_T, cache)``: y [T,B,H] indexed by step (reversed input order with
    ``go_backwards``, as Keras) or the last output [B,H]; cache is None unless ``training``.
    """
    ops, chk, x, W, U, (T, B, I, H) = _sequence_args(x, kernel, recurrent_kernel, 1)
    _inference_only(W, _flag("training", training))
    b = chk.array("bias", bias, (H,), optional=True)
    h0 = _state_arg(chk, "h0", h0, B, H)
    m, idm, rdm = _step_masks(chk, mask, input_dropout_mask, recurrent_dropout_mask, T, B, I, H)
    m, lengths = _lengths_or_mask(ops, chk, m, sequence_lengths, T, B, W, H)
    act = _activations.get(activation, "activation")
    extra = {} if lengths is None else {"lengths": lengths}
    zk = _zoneout_arg(ops, chk, zoneout, zoneout_mask, T, B, H)
    if zk is not None:
        extra["zoneout"] = zk
    ln = _layer_norm_arg(ops, chk, "simple_rnn", layer_norm, H, H)
    if ln is not None:
        extra["layer_norm"] = ln
    y, h, cache = ops.simple_rnn_forward(
        x, W, U, b, h0, mask=m, input_dropout_mask=idm, recurrent_dropout_mask=rdm,
        activation=act, go_backwards=_flag("go_backwards", go_backwards),
        return_sequences=_flag("return_sequences", return_sequences), training=_flag("training", training),
        **extra, **_mixed_arg(ops, chk, W, mixed))
    _attach_info(cache, ops, chk, T, B, H, _flag("return_sequences", return_sequences))
    return y, h, cache


def _grad_arg(chk, name, g, shape, rows_apart=False):
    return None if g is None else chk.array(name, g, shape, rows_apart=rows_apart)


def _backward_args(cache, cell, forward_name, dy, states):
    """Checks shared by every cell's backward; ``states`` is [(name, array)] of the
    gradients of the final states. Returns (ops, dy, [state gradients])."""
    if not isinstance(cache, Cache) or cache.info is None:
        raise TypeError(f"cache: expected the cache of {forward_name}(training=True), "
                        f"got {type(cache).__name__}")
    if cache.cell != cell:
        raise ValueError(f"cache: expected the cache of {forward_name}(training=True), "
                         f"got one from {cache.cell}_forward")
    info = cache.info
    ops = info["ops"]
    chk = _Checker(ops.xp, info["dtype"])
    T, B, H = info["T"], info["B"], info["H"]
    # The compiled backends read dy's rows where they are: a layer's gradient of its
    # batch-major output comes as a transposed view and is not copied.
    seq = info["return_sequences"]
    dy = _grad_arg(chk, "dy", dy, (T, B, H) if seq else (B, H),
                   rows_apart=seq and getattr(ops, "reads_rows_apart", False))
    return ops, dy, [_grad_arg(chk, name, g, (B, H)) for name, g in states]


def lstm_backward(cache, dy=None, dh=None, dc=None) -> Grads:
    """Gradients of the ``lstm_forward`` that returned ``cache``.

    dy mirrors y ([T,B,H] or [B,H]); dh, dc [B,H] are the gradients of h_T and c_T; ``None``
    means zero. Returns ``Grads`` (inputs, h0, c0, kernel, recurrent_kernel, bias, peephole;
    gamma, gamma_h, beta_h with layer_norm).
    """
    if isinstance(cache, Cache) and cache.made_by == "projected":
        from . import projected
        d = cache.data
        xp, dt = d["xp"], d["projection"].dtype
        B, H, P = cache.info["B"], cache.info["H"], d["projection"].shape[1]
        chk = _Checker(xp, dt)
        seq = d["return_sequences"]
        dy = _grad_arg(chk, "dy", dy, (cache.info["T"], B, P) if seq else (B, P))
        return projected.lstm_backward(lstm_backward, cache, dy,
                                       _grad_arg(chk, "dh", dh, (B, P)),
                                       _grad_arg(chk, "dc", dc, (B, H)))
    ops, dy, (dh, dc) = _backward_args(cache, "lstm", "lstm_forward", dy,
                                       [("dh", dh), ("dc", dc)])
    return ops.lstm_backward(cache, dy, dh, dc)


def gru_backward(cache, dy=None, dh=None) -> Grads:
    """Gradients of the ``gru_forward`` that returned ``cache``.

    dy mirrors y ([T,B,H] or [B,H]); dh [B,H] is the gradient of h_T; ``None`` means zero.
    Returns ``Grads`` (inputs, h0, kernel, recurrent_kernel, bias; gamma with layer_norm);
    bias is [2,3H] with ``reset_after``, else [3H], or None without a bias.
    """
    ops, dy, (dh,) = _backward_args(cache, "gru", "gru_forward", dy, [("dh", dh)])
    return ops.gru_backward(cache, dy, dh)


def simple_rnn_backward(cache, dy=None, dh=None) -> Grads:
    """Gradients of the ``simple_rnn_forward`` that returned ``cache``.

    dy mirrors y ([T,B,H] or [B,H]); dh [B,H] is the gradient of h_T; ``None`` means zero.
    Returns ``Grads`` (inputs, h0, kernel, recurrent_kernel, bias; gamma with layer_norm).
    """
    ops, dy, (dh,) = _backward_args(cache, "simple_rnn", "simple_rnn_forward", dy,
                                    [("dh", dh)])
    return ops.simple_rnn_backward(cache, dy, dh)
