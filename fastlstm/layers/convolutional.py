"""``Conv1D``: a 1-D convolution over the time axis, channels last (Keras 3).

The convolution is an im2col product: a strided view of the padded input holds, for each
output step, its ``kernel_size`` taps (``dilation_rate`` apart), and one matrix product
with the kernel reshaped to ``(kernel_size * in_channels, filters)`` gives every output
step at once. The backward pass is the transposed product, scattered back tap by tap.
"""
from __future__ import annotations

import numpy as np

from .. import activations, initializers
from .base import check_positive_int, input_features
from .core import _SOFTMAX, _KernelBias

__all__ = ["Conv1D"]

_PADDINGS = ("valid", "same", "causal")


def _one_int(name, value):
    """Keras takes an int or a 1-tuple for kernel_size, strides and dilation_rate."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(f"{name}: expected an integer or a tuple of 1 integer, "
                             f"got {tuple(value)!r}")
        value = value[0]
    return check_positive_int(name, value)


def _check_data_format(value, allowed=("channels_last",)):
    if value is None:
        return "channels_last"
    if not isinstance(value, str) or value.lower() not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format: expected 'channels_last' or 'channels_first', "
                         f"got {value!r}")
    value = value.lower()
    if value not in allowed:
        raise ValueError(f"data_format: only {' or '.join(map(repr, allowed))} is supported "
                         f"here, got {value!r}")
    return value


class Conv1D(_KernelBias):
    """``activation(conv1d(x, kernel) + bias)`` on ``x`` of shape (batch, steps, channels).

    Weights: ``kernel (kernel_size, in_channels, filters)``, ``bias (filters,)`` (Keras 3).
    ``padding``: ``"valid"`` (no padding), ``"same"`` (output length ``ceil(steps /
    strides)``, the extra padding step on the right, as Keras), ``"causal"`` (left padding of
    ``dilation_rate * (kernel_size - 1)``: output step t sees input steps <= t). As Keras,
    ``strides > 1`` together with ``dilation_rate > 1`` is refused. Keras's Conv1D does not
    support masking: a mask given to it is dropped (``compute_mask`` returns None).
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 dtype="float32", name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.filters = check_positive_int("filters", filters)
        self.kernel_size = _one_int("kernel_size", kernel_size)
        self.strides = _one_int("strides", strides)
        self.dilation_rate = _one_int("dilation_rate", dilation_rate)
        if not isinstance(padding, str) or padding.lower() not in _PADDINGS:
            raise ValueError(f"padding: expected one of {list(_PADDINGS)}, got {padding!r}")
        self.padding = padding.lower()
        self.data_format = _check_data_format(data_format)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups != 1:
            raise ValueError(f"groups: only groups=1 is supported, got {groups!r}")
        if self.strides > 1 and self.dilation_rate > 1:
            raise ValueError(f"strides: strides > 1 is not supported together with "
                             f"dilation_rate > 1 (as Keras); got strides={self.strides} and "
                             f"dilation_rate={self.dilation_rate}")
        self._kernel_and_bias(activation, use_bias, kernel_initializer, bias_initializer,
                              kernel_regularizer, bias_regularizer, activity_regularizer)

    def weight_shapes(self, input_shape):
        I = input_features(self.name, input_shape, ndim=3)
        return [(self.kernel_size, I, self.filters)] + (
            [(self.filters,)] if self.use_bias else [])

    def build(self, input_shape):
        shapes = self.weight_shapes(tuple(input_shape))
        self._output_steps(input_shape[1])            # refuse too short a sequence early
        self.kernel = initializers.initialize(self.kernel_initializer, shapes[0], self.dtype,
                                              argument="kernel_initializer")
        if self.use_bias:
            self.bias = initializers.initialize(self.bias_initializer, shapes[1], self.dtype,
                                                argument="bias_initializer")
        super().build(input_shape)

    @property
    def input_dim(self):
        return self.kernel.shape[1] if self.built else None

    def _pads(self, steps):
        span = self.dilation_rate * (self.kernel_size - 1)
        if self.padding == "valid":
            return 0, 0
        if self.padding == "causal":
            return span, 0
        out = -(-steps // self.strides)
        total = max((out - 1) * self.strides + span + 1 - steps, 0)
        return total // 2, total - total // 2

    def _output_steps(self, steps):
        if steps is None:
            return None
        left, right = self._pads(steps)
        span = self.dilation_rate * (self.kernel_size - 1)
        out = (steps + left + right - span - 1) // self.strides + 1
        if out < 1:
            raise ValueError(f"x: {self.name} needs at least {span + 1} steps with "
                             f"padding={self.padding!r} (kernel_size={self.kernel_size}, "
                             f"dilation_rate={self.dilation_rate}), got {steps}")
        return out

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        return (input_shape[0], self._output_steps(input_shape[1]), self.filters)

    def compute_mask(self, inputs, mask=None):
        return None

    _ranks = (3, 3)
    _input_layout = "a 3-D array (batch, steps, channels)"
    _last_axis = "channels"

    def _patches(self, x):
        """(padded input, its (batch, out_steps, kernel_size, channels) strided view)."""
        B, L, C = x.shape
        left, right = self._pads(L)
        out = self._output_steps(L)
        xp = np.pad(x, ((0, 0), (left, right), (0, 0))) if left or right else x
        xp = np.ascontiguousarray(xp)
        sb, sl, sc = xp.strides
        view = np.lib.stride_tricks.as_strided(
            xp, shape=(B, out, self.kernel_size, C),
            strides=(sb, self.strides * sl, self.dilation_rate * sl, sc), writeable=False)
        return xp, view

    def _forward(self, x):
        _, view = self._patches(x)
        B, T, K, C = view.shape
        cols = view.reshape(B * T, K * C)                      # im2col (a copy)
        z = cols @ self.kernel.reshape(K * C, self.filters)
        if self.use_bias:
            z += self.bias
        z = z.reshape(B, T, self.filters)
        if self.activation is _SOFTMAX:
            y = _SOFTMAX(z)
        elif self.activation.code == activations.LINEAR:
            y = z
        else:
            y = self.activation(z, np).astype(self.dtype, copy=False)
        return y, cols

    def __call__(self, x, mask=None, training=False):
        return self._forward(self._prepare(x))[0]

    def _forward_saving(self, x):
        return self._forward(x)         # (y, the patches the kernel's gradient reads)

    def _backward(self, x, cols, dz):
        B, T, F = dz.shape
        K, C = self.kernel_size, x.shape[-1]
        dz2 = dz.reshape(B * T, F)
        d_kernel = (cols.T @ dz2).reshape(K, C, F)
        d_cols = (dz2 @ self.kernel.reshape(K * C, F).T).reshape(B, T, K, C)
        left, right = self._pads(x.shape[1])
        dxp = np.zeros((B, x.shape[1] + left + right, C), self.dtype)
        s, d = self.strides, self.dilation_rate
        for j in range(K):          # one strided slice per tap, all steps at once
            start = j * d
            dxp[:, start:start + s * (T - 1) + 1:s] += d_cols[:, :, j]
        dx = dxp[:, left:left + x.shape[1]]
        weights = [d_kernel] + ([dz2.sum(axis=0)] if self.use_bias else [])
        return np.ascontiguousarray(dx), weights

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            filters=self.filters, kernel_size=[self.kernel_size], strides=[self.strides],
            padding=self.padding, data_format=self.data_format,
            dilation_rate=[self.dilation_rate], groups=1, **self._kernel_bias_config())
        return cfg
