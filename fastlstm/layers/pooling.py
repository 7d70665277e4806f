"""Global pooling over the time axis (Keras 3): ``GlobalAveragePooling1D`` and
``GlobalMaxPooling1D``.

Masks, as Keras 3.15: the average is over the valid steps only (a sample with no valid
step gives NaN, 0 / 0, as Keras); the max ignores the mask (every step counts, padding
included) and, as Keras, drops it. Neither passes a mask on (``compute_mask`` is None).
"""
from __future__ import annotations

import numpy as np

from .base import Gradients, as_float_array, check_bool
from .convolutional import _check_data_format
from .core import _CoreLayer

__all__ = ["GlobalAveragePooling1D", "GlobalMaxPooling1D"]


class _GlobalPooling1D(_CoreLayer, abstract=True):

    def __init__(self, data_format=None, keepdims=False, dtype="float32", name=None,
                 trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.data_format = _check_data_format(data_format, ("channels_last", "channels_first"))
        self.keepdims = check_bool("keepdims", keepdims)

    @property
    def _steps_axis(self):
        return 1 if self.data_format == "channels_last" else 2

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"input_shape: {self.name} expects 3 dimensions, "
                             f"got {input_shape}")
        if not self.keepdims:
            return (input_shape[0], input_shape[3 - self._steps_axis])
        out = list(input_shape)
        out[self._steps_axis] = 1
        return tuple(out)

    def compute_mask(self, inputs, mask=None):
        return None

    def _prepare(self, x):
        x = as_float_array("x", x, self.dtype, device=self.device)
        if x.ndim != 3:
            raise ValueError(f"x: {self.name} expects a 3-D array (batch, steps, features), "
                             f"got shape {x.shape}")
        if not self.built:
            self.build(x.shape)
        return x

    def __call__(self, x, mask=None, training=False):
        return self._pool(self._prepare(x), mask)[0]

    def forward_train(self, x, mask=None):
        x = self._prepare(x)
        y, grad_of = self._pool(x, mask)
        once = self._once(self.name)

        def backprop(dy):
            once()
            dy = self._check_dy(dy, y.shape)
            if not self.keepdims:
                dy = np.expand_dims(dy, self._steps_axis)
            return Gradients(inputs=grad_of(dy).astype(self.dtype, copy=False),
                             initial_state=None, weights=[])

        return y, backprop

    def get_config(self):
        cfg = super().get_config()
        cfg.update(data_format=self.data_format, keepdims=self.keepdims)
        return cfg


class GlobalAveragePooling1D(_GlobalPooling1D):
    """The mean over the steps; with a mask ``(batch, steps)``, the mean over the valid
    steps. Output ``(batch, features)``, or ``(batch, 1, features)`` with ``keepdims``."""

    def _pool(self, x, mask):
        ax = self._steps_axis
        if mask is None:
            n = x.shape[ax]
            y = x.mean(axis=ax, keepdims=self.keepdims)
            return y, lambda dy: np.broadcast_to(dy / self.dtype.type(n), x.shape)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (x.shape[0], x.shape[ax]):
            raise ValueError(f"mask: expected shape {(x.shape[0], x.shape[ax])} "
                             f"(batch, steps), got {mask.shape}")
        m = np.expand_dims(mask, 3 - ax)
        count = m.sum(axis=ax, keepdims=True).astype(self.dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(m, x, 0).sum(axis=ax, keepdims=True) / count
        y = y if self.keepdims else np.squeeze(y, ax)

        def grad_of(dy):
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(m, dy / count, self.dtype.type(0))

        return y, grad_of


class GlobalMaxPooling1D(_GlobalPooling1D):
    """The max over the steps (a mask is ignored, as Keras 3 does). The gradient is shared
    equally by tied maxima (as the reduction Keras 3 uses on PyTorch)."""

    def _pool(self, x, mask):
        ax = self._steps_axis
        if x.shape[ax] == 0:
            raise ValueError(f"x: {self.name} needs at least one step, got shape {x.shape}")
        y = x.max(axis=ax, keepdims=True)

        def grad_of(dy):
            hit = x == y
            return hit * (dy / hit.sum(axis=ax, keepdims=True).astype(self.dtype))

        return (y if self.keepdims else np.squeeze(y, ax)), grad_of
