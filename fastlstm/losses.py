"""Loss functions with analytic gradients, defined as in Keras 3.

Every loss computes a per-sample value ``values`` (the loss of one row of the last
axis, e.g. ``mean((y_pred - y_true)**2, axis=-1)`` for MSE) and reduces it like
``keras.losses.Loss`` with the default ``reduction="sum_over_batch_size"``::

    loss = sum(values * sample_weight) / values.size

The divisor is the number of loss values, *not* the sum of the weights: a zero weight
still counts in the denominator (Keras 3 behaviour). ``reduction="mean_with_sample_weight"``
divides by the sum of the weights instead, ``"sum"`` does not divide, ``None``/``"none"``
returns the per-sample values (``__call__`` only).

``loss.value_and_grad(y_true, y_pred, sample_weight)`` returns the reduced value and
``dL/dy_pred`` (same shape and dtype as ``y_pred``), which is what a training loop needs
to start backpropagation.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "EPSILON",
    "Loss",
    "MeanSquaredError",
    "MeanAbsoluteError",
    "Huber",
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "LossFunctionWrapper",
    "mean_squared_error",
    "mean_absolute_error",
    "huber",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "get",
    "serialize",
    "deserialize",
]

#: Keras' ``backend.epsilon()``: probabilities are clipped to ``[EPSILON, 1 - EPSILON]``.
EPSILON = 1e-7

_REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None)


# ----------------------------------------------------------------------------- helpers


def _float_array(x, name):
    """``x`` as a float32/float64 array (ints promote the NumPy way, float16 to float32)."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(
            f"Argument `{name}` must be a numeric array; received dtype={a.dtype}."
        )
    if a.dtype in (np.float32, np.float64):
        return a
    return a.astype(np.result_type(a.dtype, np.float32))


def squeeze_or_expand_to_same_rank(x1, x2, expand_rank_1=True):
    """Keras' rank reconciliation: if the ranks differ by one and the longer array ends
    in a dimension of size 1, squeeze it (or, if the shorter one is rank 1, expand that
    one instead). So ``(N,)`` against ``(N, 1)`` becomes ``(N, 1)`` against ``(N, 1)``."""
    r1, r2 = x1.ndim, x2.ndim
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1 and expand_rank_1:
            x2 = x2[..., None]
        else:
            x1 = x1[..., 0]
    elif r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1 and expand_rank_1:
            x1 = x1[..., None]
        else:
            x2 = x2[..., 0]
    return x1, x2


def _prepare_dense(y_true, y_pred):
    """Float arrays of one shape, y_true cast to y_pred's dtype (as Keras casts it)."""
    yp = _float_array(y_pred, "y_pred")
    yt = np.asarray(y_true)
    if yt.dtype.kind not in "biuf":
        raise TypeError(f"Argument `y_true` must be a numeric array; received dtype={yt.dtype}.")
    yt = yt.astype(yp.dtype, copy=False)
    yt2, yp2 = squeeze_or_expand_to_same_rank(yt, yp)
    if yt2.shape != yp2.shape:
        raise ValueError(
            "Arguments `y_true` and `y_pred` must have the same shape (up to a trailing "
            f"dimension of size 1). Received: y_true.shape={yt.shape}, y_pred.shape={yp.shape}."
        )
    if yp2.ndim == 0:
        raise ValueError(
            f"Argument `y_pred` must be at least rank 1. Received: y_pred.shape={yp.shape}."
        )
    return yt2, yp2


def _prepare_sparse(y_true, y_pred):
    """Integer labels of shape ``y_pred.shape[:-1]`` (a trailing 1 is squeezed)."""
    yp = _float_array(y_pred, "y_pred")
    yt = np.asarray(y_true)
    if yp.ndim == 0:
        raise ValueError(
            f"Argument `y_pred` must be at least rank 1. Received: y_pred.shape={yp.shape}."
        )
    if yt.ndim == yp.ndim and yt.ndim > 0 and yt.shape[-1] == 1:
        yt = yt[..., 0]
    if yt.shape != yp.shape[:-1]:
        raise ValueError(
            "Sparse labels `y_true` must have the shape of `y_pred` without its class axis "
            f"(optionally with a trailing 1): expected {yp.shape[:-1]} or {yp.shape[:-1] + (1,)}. "
            f"Received: y_true.shape={np.shape(y_true)}, y_pred.shape={yp.shape}."
        )
    if yt.dtype.kind == "f":
        # Keras casts float labels to int; refuse fractional ones rather than truncate.
        if not np.all(np.isfinite(yt)) or np.any(yt != np.round(yt)):
            raise ValueError(
                "Sparse labels `y_true` must be integer class indices; received "
                "non-integer values."
            )
    elif yt.dtype.kind not in "biu":
        raise TypeError(f"Argument `y_true` must hold integer labels; received dtype={yt.dtype}.")
    labels = yt.astype(np.int64)
    n_classes = yp.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"Sparse labels `y_true` must lie in [0, {n_classes}) for y_pred with "
            f"{n_classes} classes; received labels from {labels.min()} to {labels.max()}."
        )
    return labels, yp


def _clip_bounds(dtype):
    t = np.dtype(dtype).type
    return t(EPSILON), t(1.0 - EPSILON)


def _sigmoid(x):
    # exp of a non-positive number only: no overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def _log_softmax(x):
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


# ---------------------------------------------------- per-row values and local gradients
# Each returns (values, local): values has shape y_pred.shape[:-1]; local[..., k] is
# d values[...] / d y_pred[..., k] (every value depends only on its own row), or None.


def _mse_rows(yt, yp, want_grad):
    diff = yp - yt
    values = np.mean(diff * diff, axis=-1)
    return values, (diff * (2.0 / yp.shape[-1]) if want_grad else None)


def _mae_rows(yt, yp, want_grad):
    diff = yp - yt
    values = np.mean(np.abs(diff), axis=-1)
    return values, (np.sign(diff) / yp.shape[-1] if want_grad else None)


def _huber_rows(yt, yp, want_grad, delta):
    t = yp.dtype.type
    d = t(delta)
    err = yp - yt
    abs_err = np.abs(err)
    quad = abs_err <= d
    elem = np.where(quad, t(0.5) * err * err, d * abs_err - t(0.5) * d * d)
    values = np.mean(elem, axis=-1)
    if not want_grad:
        return values, None
    return values, np.where(quad, err, d * np.sign(err)) / yp.shape[-1]


def _bce_rows(yt, yp, want_grad, from_logits, label_smoothing):
    if label_smoothing:
        yt = yt * (1.0 - label_smoothing) + 0.5 * label_smoothing
    n = yp.shape[-1]
    if from_logits:
        # max(x, 0) - x*t + log(1 + exp(-|x|)): the stable form TF, JAX and torch use.
        elem = np.maximum(yp, 0) - yp * yt + np.log1p(np.exp(-np.abs(yp)))
        local = (_sigmoid(yp) - yt) / n if want_grad else None
        return np.mean(elem, axis=-1), local
    lo, hi = _clip_bounds(yp.dtype)
    out = np.clip(yp, lo, hi)
    elem = -(yt * np.log(out) + (1.0 - yt) * np.log(1.0 - out))
    if not want_grad:
        return np.mean(elem, axis=-1), None
    inside = (yp >= lo) & (yp <= hi)  # the clip passes gradient only inside its range
    local = np.where(inside, ((1.0 - yt) / (1.0 - out) - yt / out) / n, 0).astype(yp.dtype)
    return np.mean(elem, axis=-1), local


def _cce_rows(yt, yp, want_grad, from_logits, label_smoothing):
    if label_smoothing:
        yt = yt * (1.0 - label_smoothing) + label_smoothing / yp.shape[-1]
    if from_logits:
        log_p = _log_softmax(yp)
        values = -np.sum(yt * log_p, axis=-1)
        if not want_grad:
            return values, None
        return values, np.exp(log_p) * np.sum(yt, axis=-1, keepdims=True) - yt
    # Keras renormalises the probabilities, clips them, then takes the log.
    total = np.sum(yp, axis=-1, keepdims=True)
    q = yp / total
    lo, hi = _clip_bounds(yp.dtype)
    qc = np.clip(q, lo, hi)
    values = -np.sum(yt * np.log(qc), axis=-1)
    if not want_grad:
        return values, None
    g = np.where((q >= lo) & (q <= hi), -yt / qc, 0).astype(yp.dtype)  # dL/dq
    # q = p / sum(p): dL/dp_k = (g_k - sum_j g_j q_j) / sum(p)
    local = (g - np.sum(g * q, axis=-1, keepdims=True)) / total
    return values, local


def _scce_rows(labels, yp, want_grad, from_logits):
    idx = labels[..., None]
    if from_logits:
        log_p = _log_softmax(yp)
        values = -np.take_along_axis(log_p, idx, axis=-1)[..., 0]
        if not want_grad:
            return values, None
        local = np.exp(log_p)
        np.put_along_axis(local, idx, np.take_along_axis(local, idx, axis=-1) - 1, axis=-1)
        return values, local
    total = np.sum(yp, axis=-1, keepdims=True)
    q_l = np.take_along_axis(yp, idx, axis=-1) / total
    lo, hi = _clip_bounds(yp.dtype)
    qc = np.clip(q_l, lo, hi)
    values = -np.log(qc)[..., 0]
    if not want_grad:
        return values, None
    inside = ((q_l >= lo) & (q_l <= hi)).astype(yp.dtype)
    # From the dense formula with a one-hot target: m/S everywhere, minus m/(q_l S) at the label.
    local = np.broadcast_to(inside / total, yp.shape).copy()
    np.put_along_axis(local, idx, inside / total - inside / (qc * total), axis=-1)
    return values, local


# ------------------------------------------------------- per-sample functions (Keras API)


def mean_squared_error(y_true, y_pred):
    """Per-sample ``mean((y_true - y_pred)**2, axis=-1)``."""
    return _mse_rows(*_prepare_dense(y_true, y_pred), False)[0]


def mean_absolute_error(y_true, y_pred):
    """Per-sample ``mean(abs(y_true - y_pred), axis=-1)``."""
    return _mae_rows(*_prepare_dense(y_true, y_pred), False)[0]


def huber(y_true, y_pred, delta=1.0):
    """Per-sample mean over the last axis of ``0.5*e**2`` if ``|e| <= delta`` else
    ``delta*|e| - 0.5*delta**2``, with ``e = y_pred - y_true``."""
    return _huber_rows(*_prepare_dense(y_true, y_pred), False, delta)[0]


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    """Per-sample mean over the last axis of ``-(t*log(p) + (1-t)*log(1-p))``."""
    return _bce_rows(*_prepare_dense(y_true, y_pred), False, from_logits, label_smoothing)[0]


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    """Per-sample ``-sum(t * log(p), axis=-1)``."""
    return _cce_rows(*_prepare_dense(y_true, y_pred), False, from_logits, label_smoothing)[0]


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Per-sample ``-log(p[label])`` for integer labels."""
    return _scce_rows(*_prepare_sparse(y_true, y_pred), False, from_logits)[0]


# ------------------------------------------------------------------------------ reduction


def _sample_weights(values, sample_weight):
    """Weights broadcast to ``values.shape``, reconciled the way Keras reconciles them."""
    sw = np.asarray(sample_weight)
    if sw.dtype.kind not in "biuf":
        raise TypeError(
            f"Argument `sample_weight` must be numeric; received dtype={sw.dtype}."
        )
    sw = sw.astype(values.dtype, copy=False)
    v2, sw2 = squeeze_or_expand_to_same_rank(values, sw)
    if 0 < sw2.ndim < v2.ndim:
        # Per-sample weights on per-timestep losses: broadcast over the trailing axes
        # (Keras 3 fails to broadcast here; Keras 2 did this).
        sw2 = sw2.reshape(sw2.shape + (1,) * (v2.ndim - sw2.ndim))
    try:
        ok = np.broadcast_shapes(v2.shape, sw2.shape) == v2.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            "Argument `sample_weight` must broadcast to the per-sample loss of shape "
            f"{values.shape}. Received: sample_weight.shape={np.shape(sample_weight)}."
        )
    return np.broadcast_to(sw2, v2.shape).reshape(values.shape)


def _reduce(values, sample_weight, reduction):
    """(loss, coef) with ``loss = sum(coef * values)``; coef has ``values.shape``."""
    w = None if sample_weight is None else _sample_weights(values, sample_weight)
    weighted = values if w is None else values * w
    total = float(np.sum(weighted, dtype=np.float64))
    if reduction == "sum":
        divisor = 1.0
    elif reduction == "mean_with_sample_weight" and w is not None:
        divisor = float(np.sum(w, dtype=np.float64))
    else:
        divisor = float(values.size)
    if divisor == 0.0:  # Keras' divide_no_nan
        return 0.0, np.zeros(values.shape, values.dtype)
    scale = values.dtype.type(1.0 / divisor)
    coef = np.full(values.shape, scale, values.dtype) if w is None else w * scale
    return total / divisor, coef


# ---------------------------------------------------------------------------------- losses


class Loss:
    """Base class: per-sample values from :meth:`call`, reduced as Keras 3 reduces them."""

    _default_name = "loss"

    def __init__(self, name=None, reduction="sum_over_batch_size"):
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"Invalid value for argument `reduction`: expected one of {_REDUCTIONS}. "
                f"Received: reduction={reduction!r}."
            )
        self.name = name or self._default_name
        self.reduction = reduction

    # Subclasses: _prepare(y_true, y_pred) -> arrays; _rows(yt, yp, want_grad) -> (values, local)
    def _prepare(self, y_true, y_pred):
        return _prepare_dense(y_true, y_pred)

    def _rows(self, yt, yp, want_grad):
        raise NotImplementedError

    def call(self, y_true, y_pred):
        """Per-sample loss values (shape ``y_pred.shape[:-1]``), before reduction."""
        return self._rows(*self._prepare(y_true, y_pred), False)[0]

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Reduced loss as a Python float (the per-sample array if ``reduction`` is none)."""
        values = self.call(y_true, y_pred)
        if self.reduction in (None, "none"):
            if sample_weight is not None:
                values = values * _sample_weights(values, sample_weight)
            return values
        return _reduce(values, sample_weight, self.reduction)[0]

    def value_and_grad(self, y_true, y_pred, sample_weight=None):
        """``(loss, dloss/dy_pred)``; the gradient has y_pred's shape and float dtype."""
        if self.reduction in (None, "none"):
            raise ValueError(
                "value_and_grad needs a scalar loss: `reduction` must not be None/'none'."
            )
        yt, yp = self._prepare(y_true, y_pred)
        values, local = self._rows(yt, yp, True)
        loss, coef = _reduce(values, sample_weight, self.reduction)
        grad = (coef[..., None] * local).astype(yp.dtype, copy=False)
        return loss, grad.reshape(np.shape(y_pred))

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class MeanSquaredError(Loss):
    """``values = mean((y_true - y_pred)**2, axis=-1)``."""

    _default_name = "mean_squared_error"

    def _rows(self, yt, yp, want_grad):
        return _mse_rows(yt, yp, want_grad)


class MeanAbsoluteError(Loss):
    """``values = mean(abs(y_true - y_pred), axis=-1)`` (gradient ``sign(e)``, 0 at 0)."""

    _default_name = "mean_absolute_error"

    def _rows(self, yt, yp, want_grad):
        return _mae_rows(yt, yp, want_grad)


def _check_number(value, name, low, high=None, low_open=False):
    """``value`` as a float after checking it is finite and within the bounds."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        rng = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a finite number {rng}. "
            f"Received: {name}={value!r}."
        )
    return float(value)


class Huber(Loss):
    """``values = mean(0.5*e**2 if |e| <= delta else delta*|e| - 0.5*delta**2, axis=-1)``
    with ``e = y_pred - y_true``."""

    _default_name = "huber_loss"

    def __init__(self, delta=1.0, name=None, reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.delta = _check_number(delta, "delta", low=0, low_open=True)

    def _rows(self, yt, yp, want_grad):
        return _huber_rows(yt, yp, want_grad, self.delta)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class _Crossentropy(Loss):
    def __init__(self, from_logits=False, label_smoothing=0.0, name=None,
                 reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        if not isinstance(from_logits, (bool, np.bool_)):
            raise TypeError(
                f"Argument `from_logits` must be a bool. Received: from_logits={from_logits!r}."
            )
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_number(label_smoothing, "label_smoothing", 0, 1)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing}


class BinaryCrossentropy(_Crossentropy):
    """``values = mean(-(t*log(p) + (1-t)*log(1-p)), axis=-1)``.

    Probabilities are clipped to ``[1e-7, 1 - 1e-7]`` (no gradient where clipped); with
    ``from_logits=True`` the stable ``max(x,0) - x*t + log1p(exp(-|x|))`` is used.
    ``label_smoothing=s`` replaces ``t`` by ``t*(1-s) + s/2``.
    """

    _default_name = "binary_crossentropy"

    def _rows(self, yt, yp, want_grad):
        return _bce_rows(yt, yp, want_grad, self.from_logits, self.label_smoothing)


class CategoricalCrossentropy(_Crossentropy):
    """``values = -sum(t * log(p), axis=-1)`` for one-hot (or soft) targets ``t``.

    Without logits ``p = y_pred / sum(y_pred, -1)`` is clipped to ``[1e-7, 1 - 1e-7]``;
    with logits ``log p = log_softmax(y_pred)``. ``label_smoothing=s`` replaces ``t`` by
    ``t*(1-s) + s/num_classes``.
    """

    _default_name = "categorical_crossentropy"

    def _rows(self, yt, yp, want_grad):
        return _cce_rows(yt, yp, want_grad, self.from_logits, self.label_smoothing)


class SparseCategoricalCrossentropy(Loss):
    """``values = -log(p[label])`` for integer labels of shape ``(N,)`` or ``(N, 1)``
    against ``y_pred`` of shape ``(N, C)``; ``p`` as in :class:`CategoricalCrossentropy`."""

    _default_name = "sparse_categorical_crossentropy"

    def __init__(self, from_logits=False, name=None, reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        if not isinstance(from_logits, (bool, np.bool_)):
            raise TypeError(
                f"Argument `from_logits` must be a bool. Received: from_logits={from_logits!r}."
            )
        self.from_logits = bool(from_logits)

    def _prepare(self, y_true, y_pred):
        return _prepare_sparse(y_true, y_pred)

    def _rows(self, yt, yp, want_grad):
        return _scce_rows(yt, yp, want_grad, self.from_logits)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


class LossFunctionWrapper(Loss):
    """A loss from two plain functions: ``fn(y_true, y_pred)`` gives the per-sample values
    (shape ``y_pred.shape[:-1]``, as Keras's loss functions, or one scalar) and
    ``gradient(y_true, y_pred)`` their derivative with respect to ``y_pred`` (shape of
    ``y_pred``: entry ``[..., j]`` is ``d values[...] / d y_pred[..., j]``; for a scalar value,
    ``d value / d y_pred``). Both take NumPy arrays (``y_true`` as given, ``y_pred`` float)
    and ``**kwargs``. The values are reduced as every fastlstm loss (``reduction``,
    ``sample_weight``, masks), and the gradient is scaled accordingly.

    fastlstm has no automatic differentiation: the training loop starts backpropagation
    from this gradient, so a loss needs one (Keras differentiates ``fn`` itself). Check a
    new gradient with finite differences, as ``tests/test_train_conveniences.py`` does.
    """

    def __init__(self, fn, gradient, name=None, reduction="sum_over_batch_size", **kwargs):
        if not callable(fn):
            raise TypeError(f"fn: expected a function fn(y_true, y_pred), got {fn!r}")
        if not callable(gradient):
            raise TypeError(f"gradient: expected a function gradient(y_true, y_pred) returning "
                            f"d fn / d y_pred, got {gradient!r}")
        super().__init__(name=name or _object_name(fn), reduction=reduction)
        self.fn, self.gradient, self._fn_kwargs = fn, gradient, kwargs

    def _prepare(self, y_true, y_pred):
        yt = np.asarray(y_true)
        if yt.dtype.kind not in "biuf":
            raise TypeError(f"Argument `y_true` must be a numeric array; received dtype={yt.dtype}.")
        yp = _float_array(y_pred, "y_pred")
        if yp.ndim == 0:
            raise ValueError(
                f"Argument `y_pred` must be at least rank 1. Received: y_pred.shape={yp.shape}."
            )
        return yt, yp

    def _rows(self, yt, yp, want_grad):
        values = np.asarray(self.fn(yt, yp, **self._fn_kwargs))
        if values.dtype.kind not in "biuf" or values.shape not in (yp.shape[:-1], ()):
            raise ValueError(
                f"loss {self.name!r}: fn(y_true, y_pred) must return numbers of shape "
                f"{yp.shape[:-1]} (one per sample: y_pred's shape without its last axis) or a "
                f"scalar; received {values.dtype} of shape {values.shape}."
            )
        values = values.astype(yp.dtype, copy=False)
        local = None
        if want_grad:
            local = np.asarray(self.gradient(yt, yp, **self._fn_kwargs))
            if local.dtype.kind not in "biuf" or local.shape != yp.shape:
                raise ValueError(
                    f"loss {self.name!r}: gradient(y_true, y_pred) must return d fn / d y_pred "
                    f"with y_pred's shape {yp.shape}; received {local.dtype} of shape "
                    f"{local.shape}."
                )
            local = local.astype(yp.dtype, copy=False)
        return values, local

    def get_config(self):
        return {**super().get_config(), "fn": _object_name(self.fn),
                "gradient": _object_name(self.gradient)}

    @classmethod
    def from_config(cls, config):
        raise ValueError(
            f"loss {config.get('name')!r} is made of Python functions ({config.get('fn')!r}, "
            f"{config.get('gradient')!r}), which a saved file does not hold (no code is "
            "stored); load the model with compile=False and compile it again with the loss"
        )


def _object_name(obj):
    """Keras 3's ``naming.get_object_name``: ``name``, else the snake-cased ``__name__``
    (``<lambda>`` -> ``lambda``), else the snake-cased class name."""
    import re
    name = getattr(obj, "name", None)
    if isinstance(name, str):
        return name
    name = getattr(obj, "__name__", None) or type(obj).__name__
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# ------------------------------------------------------------------------------- lookup

_CLASSES = {
    cls.__name__: cls
    for cls in (MeanSquaredError, MeanAbsoluteError, Huber, BinaryCrossentropy,
                CategoricalCrossentropy, SparseCategoricalCrossentropy)
}
_ALIASES = {
    **_CLASSES,
    "mse": MeanSquaredError, "MSE": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "MAE": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "huber": Huber, "huber_loss": Huber,
    "bce": BinaryCrossentropy, "BCE": BinaryCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}


def serialize(loss):
    """``{"class_name": ..., "config": ...}``, JSON-serialisable."""
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def deserialize(config):
    """Inverse of :func:`serialize`."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            "Argument `loss` as a dict must look like {'class_name': ..., 'config': {...}}. "
            f"Received: loss={config!r}."
        )
    if config["class_name"] == "LossFunctionWrapper":
        return LossFunctionWrapper.from_config(dict(config.get("config") or {}))
    cls = _CLASSES.get(config["class_name"])
    if cls is None:
        raise ValueError(
            f"Unknown loss class_name {config['class_name']!r} in argument `loss`. "
            f"Known: {sorted(_CLASSES)}."
        )
    return cls.from_config(dict(config.get("config") or {}))


def get(identifier):
    """A :class:`Loss` from a name (``"mse"``, ``"binary_crossentropy"``, ...), a config
    dict, or a Loss instance (returned as is). ``None`` gives ``None`` (no loss)."""
    if identifier is None or isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        cls = _ALIASES.get(identifier)
        if cls is None:
            raise ValueError(
                f"Invalid value for argument `loss`: unknown loss name {identifier!r}. "
                f"Known names: {sorted(_ALIASES)}."
            )
        return cls()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if callable(identifier):
        for fn, cls in _FUNCTIONS.items():        # fl.losses.mean_squared_error and the like
            if identifier is fn:
                return cls()
        gradient = getattr(identifier, "gradient", None)
        if callable(gradient):                    # a function carrying its own gradient
            return LossFunctionWrapper(identifier, gradient)
        raise TypeError(
            f"Argument `loss`: {_object_name(identifier)!r} is a plain function, which gives the "
            "loss values but not their gradient, and fastlstm (which has no automatic "
            "differentiation) starts backpropagation from d loss / d y_pred. Give the gradient: "
            "fl.losses.LossFunctionWrapper(fn, gradient=grad) with grad(y_true, y_pred) "
            "returning d fn / d y_pred (y_pred's shape), or set fn.gradient = grad, or subclass "
            "fl.losses.Loss (its _rows(y_true, y_pred, want_grad) returns the values and that "
            f"gradient). Received: loss={identifier!r}."
        )
    raise TypeError(
        "Argument `loss` must be a loss name, a config dict, a fastlstm.losses.Loss (which "
        "provides value_and_grad) or a function with its gradient (LossFunctionWrapper). "
        f"Received: loss={identifier!r} of type {type(identifier).__name__}."
    )


_FUNCTIONS = {mean_squared_error: MeanSquaredError, mean_absolute_error: MeanAbsoluteError,
              huber: Huber, binary_crossentropy: BinaryCrossentropy,
              categorical_crossentropy: CategoricalCrossentropy,
              sparse_categorical_crossentropy: SparseCategoricalCrossentropy}
