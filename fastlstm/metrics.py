"""Stateful metrics, defined as in Keras 3.

A metric accumulates over batches (``update_state``) and reports ``result()``. Most are a
weighted :class:`Mean` of a per-sample value::

    result = sum_i(w_i * v_i) / sum_i(w_i)        (w_i = 1 without sample_weight)

where ``v_i`` is the sample's value averaged over its non-batch axes, exactly as
``keras.metrics.Mean`` reduces (see :meth:`Mean.update_state`).

``get("accuracy")`` resolves to binary, sparse-categorical or categorical accuracy from the
shapes of ``y_true``/``y_pred``, as ``Model.compile`` does in Keras 3.
"""
from __future__ import annotations

import numpy as np

from . import losses as _losses
from .losses import squeeze_or_expand_to_same_rank

__all__ = [
    "Metric",
    "Mean",
    "MeanMetricWrapper",
    "MeanSquaredError",
    "MeanAbsoluteError",
    "RootMeanSquaredError",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "SparseCategoricalAccuracy",
    "AutoAccuracy",
    "binary_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
    "get",
    "serialize",
    "deserialize",
]


class Metric:
    """Base class. ``direction`` is ``"up"`` (larger is better), ``"down"`` or ``None``;
    callbacks in ``mode="auto"`` use it."""

    direction = None
    _default_name = "metric"

    def __init__(self, name=None):
        self.name = name or self._default_name
        self.reset_state()

    def update_state(self, *args, **kwargs):
        raise NotImplementedError

    def result(self) -> float:
        raise NotImplementedError

    def reset_state(self):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def _float64(x, name):
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"Argument `{name}` must be numeric; received dtype={a.dtype}.")
    return a.astype(np.float64, copy=False)


class Mean(Metric):
    """Weighted mean of the values passed to :meth:`update_state` (total / count)."""

    _default_name = "mean"

    def reset_state(self):
        self.total = 0.0
        self.count = 0.0

    def update_state(self, values, sample_weight=None):
        """Add a batch of values, reduced to one value per sample like Keras:

        - without weights each sample's value is its mean over the non-batch axes and
          counts 1 (a scalar counts as one sample);
        - with weights of rank ``r`` the values are first averaged over their axes beyond
          ``r``, multiplied by the (broadcast) weights, then averaged per sample; the count
          grows by the per-sample mean weight.
        """
        values = _float64(values, "values")
        weights = None
        if sample_weight is not None:
            weights = _float64(sample_weight, "sample_weight")
            values, weights = squeeze_or_expand_to_same_rank(values, weights)
            w_ndim, v_ndim = weights.ndim, values.ndim
            if v_ndim > w_ndim:
                values = values.mean(axis=tuple(range(w_ndim, v_ndim)))
            try:
                weights = np.broadcast_to(weights, values.shape)
            except ValueError:
                raise ValueError(
                    f"Argument `sample_weight` of shape {np.shape(sample_weight)} does not "
                    f"broadcast to the values of shape {values.shape}."
                ) from None
            values = values * weights
            if w_ndim > 1:
                weights = weights.mean(axis=tuple(range(1, w_ndim)))
        if values.ndim > 1:
            values = values.mean(axis=tuple(range(1, values.ndim)))
        self.total += float(np.sum(values))
        if weights is not None:
            self.count += float(np.sum(weights))
        else:
            self.count += float(values.shape[0]) if values.ndim >= 1 else 1.0

    def result(self) -> float:
        return self.total / self.count if self.count != 0 else 0.0  # divide_no_nan


class MeanMetricWrapper(Mean):
    """:class:`Mean` of ``fn(y_true, y_pred, **kwargs)``: per-sample values (one per
    sample or per timestep, averaged per sample as :meth:`Mean.update_state` does) or one
    scalar per batch (which counts as one sample). ``compile(metrics=[f])`` wraps a plain
    function so, named after it as Keras 3 names it (``f.__name__``, snake-cased)."""

    def __init__(self, fn, name=None, **kwargs):
        if not callable(fn):
            raise TypeError(f"fn: expected a function fn(y_true, y_pred), got {fn!r}")
        self._fn = fn
        self._fn_kwargs = kwargs
        super().__init__(name=name or _losses._object_name(fn))

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = self._fn(y_true, y_pred, **self._fn_kwargs)
        if sample_weight is not None and np.ndim(values) == 0:
            # One value for the batch: every sample's, weighted by its weight (Keras 3 fails
            # to broadcast the weights to a scalar here).
            values = np.full(np.shape(sample_weight), values, dtype=np.result_type(values, float))
        try:
            super().update_state(values, sample_weight=sample_weight)
        except TypeError as exc:
            raise TypeError(f"metric {self.name!r}: {exc}") from None

    def get_config(self):
        if type(self) is MeanMetricWrapper:
            return {"name": self.name, "fn": _losses._object_name(self._fn)}
        return super().get_config()


class MeanSquaredError(MeanMetricWrapper):
    """Mean over samples of ``mean((y_true - y_pred)**2, axis=-1)``."""

    direction = "down"

    def __init__(self, name="mean_squared_error"):
        super().__init__(_losses.mean_squared_error, name=name)


class MeanAbsoluteError(MeanMetricWrapper):
    """Mean over samples of ``mean(abs(y_true - y_pred), axis=-1)``."""

    direction = "down"

    def __init__(self, name="mean_absolute_error"):
        super().__init__(_losses.mean_absolute_error, name=name)


class RootMeanSquaredError(Mean):
    """``sqrt(mean((y_pred - y_true)**2))`` over every element seen (weighted per sample)."""

    direction = "down"
    _default_name = "root_mean_squared_error"

    def update_state(self, y_true, y_pred, sample_weight=None):
        yt, yp = _losses._prepare_dense(y_true, y_pred)
        super().update_state(np.square(yp - yt), sample_weight=sample_weight)

    def result(self) -> float:
        return float(np.sqrt(super().result()))


# ------------------------------------------------------------------------------ accuracy


def binary_accuracy(y_true, y_pred, threshold=0.5):
    """Per-element ``y_true == (y_pred > threshold)``, as floats."""
    yt, yp = squeeze_or_expand_to_same_rank(np.asarray(y_true), np.asarray(y_pred))
    if yt.shape != yp.shape:
        raise ValueError(
            "Arguments `y_true` and `y_pred` must have the same shape. Received: "
            f"y_true.shape={np.shape(y_true)}, y_pred.shape={np.shape(y_pred)}."
        )
    predicted = (yp > threshold).astype(yt.dtype)
    return (yt == predicted).astype(np.float64)


def categorical_accuracy(y_true, y_pred):
    """Per-sample ``argmax(y_true, -1) == argmax(y_pred, -1)`` for one-hot targets."""
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.shape != yp.shape:
        raise ValueError(
            "Arguments `y_true` (one-hot) and `y_pred` must have the same shape. Received: "
            f"y_true.shape={yt.shape}, y_pred.shape={yp.shape}."
        )
    return (np.argmax(yt, axis=-1) == np.argmax(yp, axis=-1)).astype(np.float64)


def sparse_categorical_accuracy(y_true, y_pred):
    """Per-sample ``y_true == argmax(y_pred, -1)`` for integer labels ``(N,)``/``(N, 1)``."""
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.ndim == yp.ndim and yt.ndim > 0 and yt.shape[-1] == 1:
        yt = yt[..., 0]
    if yt.shape != yp.shape[:-1]:
        raise ValueError(
            "Sparse labels `y_true` must have the shape of `y_pred` without its class axis. "
            f"Received: y_true.shape={np.shape(y_true)}, y_pred.shape={yp.shape}."
        )
    return (yt == np.argmax(yp, axis=-1).astype(yt.dtype)).astype(np.float64)


class BinaryAccuracy(MeanMetricWrapper):
    """Fraction of elements with ``y_true == (y_pred > threshold)``."""

    direction = "up"

    def __init__(self, name="binary_accuracy", threshold=0.5):
        self.threshold = float(threshold)
        super().__init__(binary_accuracy, name=name, threshold=self.threshold)

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}


class CategoricalAccuracy(MeanMetricWrapper):
    """Fraction of samples whose predicted argmax matches the one-hot target's argmax."""

    direction = "up"

    def __init__(self, name="categorical_accuracy"):
        super().__init__(categorical_accuracy, name=name)


class SparseCategoricalAccuracy(MeanMetricWrapper):
    """Fraction of samples whose predicted argmax equals the integer label."""

    direction = "up"

    def __init__(self, name="sparse_categorical_accuracy"):
        super().__init__(sparse_categorical_accuracy, name=name)


def _shape(x):
    return tuple(x) if isinstance(x, (tuple, list)) else tuple(np.shape(x))


def _resolve_accuracy(true_shape, pred_shape, name):
    """Keras 3 ``compile_utils.get_metric``: binary if y_pred's last axis is 1, sparse if
    y_true has lower rank or a last axis of 1 against more classes, else categorical."""
    true_shape, pred_shape = _shape(true_shape), _shape(pred_shape)
    t_last = true_shape[-1] if true_shape else None
    p_last = pred_shape[-1] if pred_shape else None
    if p_last == 1:
        return BinaryAccuracy(name=name)
    if len(true_shape) < len(pred_shape) or (t_last == 1 and p_last is not None and p_last > 1):
        return SparseCategoricalAccuracy(name=name)
    return CategoricalAccuracy(name=name)


class AutoAccuracy(Metric):
    """``"accuracy"`` before the data is seen: becomes binary, sparse-categorical or
    categorical accuracy on the first :meth:`update_state`, from the shapes (Keras 3)."""

    direction = "up"
    _default_name = "accuracy"

    def __init__(self, name=None):
        self.resolved = None
        super().__init__(name=name)

    def reset_state(self):
        if self.resolved is not None:
            self.resolved.reset_state()

    def update_state(self, y_true, y_pred, sample_weight=None):
        if self.resolved is None:
            self.resolved = _resolve_accuracy(y_true, y_pred, self.name)
        self.resolved.update_state(y_true, y_pred, sample_weight=sample_weight)

    def result(self) -> float:
        return self.resolved.result() if self.resolved is not None else 0.0


# ---------------------------------------------------------------------------------- lookup

_CLASSES = {
    cls.__name__: cls
    for cls in (Mean, MeanSquaredError, MeanAbsoluteError, RootMeanSquaredError,
                BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy, AutoAccuracy)
}
_ALIASES = {
    **{k: v for k, v in _CLASSES.items() if v not in (Mean, AutoAccuracy)},
    "mse": MeanSquaredError, "MSE": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "MAE": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "rmse": RootMeanSquaredError, "RMSE": RootMeanSquaredError,
    "root_mean_squared_error": RootMeanSquaredError,
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
}


def serialize(metric):
    return {"class_name": type(metric).__name__, "config": metric.get_config()}


def deserialize(config):
    if isinstance(config, dict) and config.get("class_name") == "MeanMetricWrapper":
        cfg = config.get("config") or {}
        raise ValueError(
            f"metric {cfg.get('name')!r} is a Python function ({cfg.get('fn')!r}), which a saved "
            "file does not hold (no code is stored); load the model with compile=False and "
            "compile it again with the function"
        )
    if not isinstance(config, dict) or config.get("class_name") not in _CLASSES:
        raise ValueError(
            "Argument `metric` as a dict must be {'class_name': one of "
            f"{sorted(_CLASSES)}, 'config': {{...}}}}. Received: metric={config!r}."
        )
    return _CLASSES[config["class_name"]].from_config(dict(config.get("config") or {}))


def get(identifier, loss=None, y_true=None, y_pred=None):
    """A :class:`Metric` from a name, a config dict or an instance (returned as is).

    A string names the metric after itself (``get("mae").name == "mae"``), as Keras'
    ``compile`` does. ``"accuracy"``/``"acc"`` (any case) resolve like Keras 3: from the
    shapes of ``y_true`` and ``y_pred`` (arrays or shape tuples) when given, otherwise to
    an :class:`AutoAccuracy` that decides on its first batch. Keras 3 does not look at the
    loss for this; ``loss`` is accepted so callers can pass it, and is unused.
    """
    del loss  # Keras 3 decides by shapes only (Keras 2 looked at the loss).
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        if identifier.lower() in ("accuracy", "acc"):
            if y_true is not None and y_pred is not None:
                return _resolve_accuracy(y_true, y_pred, identifier)
            return AutoAccuracy(name=identifier)
        cls = _ALIASES.get(identifier)
        if cls is None:
            raise ValueError(
                f"Invalid value for argument `metrics`: unknown metric name {identifier!r}. "
                f"Known names: {sorted(set(_ALIASES) | {'accuracy', 'acc'})}."
            )
        return cls(name=identifier)
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if callable(identifier):
        # Keras 3's compile: a function f(y_true, y_pred) becomes a MeanMetricWrapper named
        # after it (naming.get_object_name: the snake-cased __name__).
        return MeanMetricWrapper(identifier, name=_losses._object_name(identifier))
    raise TypeError(
        "Argument `metrics` entries must be metric names, config dicts or "
        f"fastlstm.metrics.Metric instances. Received: {identifier!r} "
        f"of type {type(identifier).__name__}."
    )
