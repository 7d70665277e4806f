"""``RepeatVector`` and ``Flatten`` (Keras 3). Neither supports masking in Keras: a mask
given to them is dropped (``compute_mask`` is None)."""
from __future__ import annotations

import math

import numpy as np

from .base import Gradients, as_float_array, check_positive_int
from .convolutional import _check_data_format
from .core import _CoreLayer

__all__ = ["RepeatVector", "Flatten"]


class _Reshaping(_CoreLayer, abstract=True):

    def compute_mask(self, inputs, mask=None):
        return None

    def _prepare(self, x):
        x = as_float_array("x", x, self.dtype, device=self.device)
        self._check_ndim(x.shape)
        if not self.built:
            self.build(x.shape)
        return x

    def __call__(self, x, mask=None, training=False):
        return self._apply(self._prepare(x))

    def forward_train(self, x, mask=None):
        x = self._prepare(x)
        y = self._apply(x)
        once = self._once(self.name)

        def backprop(dy):
            once()
            dy = self._check_dy(dy, y.shape)
            return Gradients(inputs=self._unapply(dy, x.shape), initial_state=None,
                             weights=[])

        return y, backprop


class RepeatVector(_Reshaping):
    """``(batch, features) -> (batch, n, features)``: the input repeated ``n`` times."""

    def __init__(self, n, dtype="float32", name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.n = check_positive_int("n", n)

    def _check_ndim(self, shape):
        if len(shape) != 2:
            raise ValueError(f"x: {self.name} expects a 2-D array (batch, features), "
                             f"got shape {tuple(shape)}")

    def compute_output_shape(self, input_shape):
        self._check_ndim(input_shape)
        return (input_shape[0], self.n, input_shape[1])

    def _apply(self, x):
        return np.repeat(x[:, None, :], self.n, axis=1)

    def _unapply(self, dy, shape):
        return dy.sum(axis=1)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(n=self.n)
        return cfg


class Flatten(_Reshaping):
    """``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)``; with
    ``data_format="channels_first"`` axis 1 is moved last first (Keras 3)."""

    def __init__(self, data_format=None, dtype="float32", name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.data_format = _check_data_format(data_format, ("channels_last", "channels_first"))

    def _check_ndim(self, shape):
        if len(shape) < 1:
            raise ValueError(f"x: {self.name} expects an array with a batch axis, "
                             f"got shape {tuple(shape)}")

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        rest = input_shape[1:]
        size = None if any(d is None for d in rest) else math.prod(rest)
        return (input_shape[0], size)

    def _order(self, ndim):
        return (0, *range(2, ndim), 1)

    def _apply(self, x):
        if self.data_format == "channels_first" and x.ndim > 2:
            x = x.transpose(self._order(x.ndim))
        return x.reshape(x.shape[0], -1) if x.shape[0] else x.reshape(0, math.prod(x.shape[1:]))

    def _unapply(self, dy, shape):
        if self.data_format == "channels_first" and len(shape) > 2:
            moved = tuple(shape[i] for i in self._order(len(shape)))
            return np.ascontiguousarray(
                dy.reshape(moved).transpose(np.argsort(self._order(len(shape)))))
        return dy.reshape(shape)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(data_format=self.data_format)
        return cfg
