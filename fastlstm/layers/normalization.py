"""``LayerNormalization`` (Keras 3): each sample normalised over ``axis``, then scaled and
shifted: ``(x - mean) / sqrt(var + epsilon) * gamma + beta`` (biased variance)."""
from __future__ import annotations

import numbers

import numpy as np

from .. import initializers, regularizers
from .base import Gradients, as_float_array, check_bool
from .core import _CoreLayer
from .recurrent import _serialize_regularizer

__all__ = ["LayerNormalization"]


def _check_axis(axis):
    if isinstance(axis, (list, tuple)):
        if not axis or any(isinstance(a, bool) or not isinstance(a, (int, np.integer))
                           for a in axis):
            raise TypeError(f"axis: expected an int or a non-empty list of ints, got {axis!r}")
        return [int(a) for a in axis]
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis: expected an int or a list of ints, got {axis!r}")
    return int(axis)


class LayerNormalization(_CoreLayer):
    """Normalises each sample over ``axis`` (an int or a list of ints; default the last).

    Weights (Keras 3 order): ``gamma`` (if ``scale``), ``beta`` (if ``center``), each of
    the shape of the normalised axes. A mask passes through unchanged (Keras 3 neither uses
    nor changes it). The arithmetic runs in the layer's dtype.
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, dtype="float32", name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.axis = _check_axis(axis)
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or \
                not epsilon >= 0:
            raise ValueError(f"epsilon: expected a non-negative number, got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.center = check_bool("center", center)
        self.scale = check_bool("scale", scale)
        self.beta_initializer = initializers.get(beta_initializer, "beta_initializer")
        self.gamma_initializer = initializers.get(gamma_initializer, "gamma_initializer")
        self.beta_regularizer = regularizers.get(beta_regularizer, "beta_regularizer")
        self.gamma_regularizer = regularizers.get(gamma_regularizer, "gamma_regularizer")

    @property
    def weight_names(self):
        return (["gamma"] if self.scale else []) + (["beta"] if self.center else [])

    def _regularized(self):
        return (([(self.gamma_regularizer, "gamma")] if self.scale else [])
                + ([(self.beta_regularizer, "beta")] if self.center else []))

    def _axes(self, ndim):
        """The normalised axes as sorted non-negative ints for an input of ``ndim`` axes."""
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        out = []
        for a in axes:
            if not -ndim <= a < ndim or a % ndim == 0:
                raise ValueError(f"axis: {self.name} normalises over {self.axis!r}, which is "
                                 f"out of range (or the batch axis) for a {ndim}-D input")
            out.append(a % ndim)
        if len(set(out)) != len(out):
            raise ValueError(f"axis: repeated axes in {self.axis!r}")
        return sorted(out)

    def weight_shapes(self, input_shape):
        if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__"):
            raise ValueError(f"input_shape: {self.name} expects a shape such as (batch, ..., "
                             f"features), got {input_shape!r}")
        shape = []
        for a in self._axes(len(input_shape)):
            d = input_shape[a]
            if d is None:
                raise ValueError(f"input_shape: {self.name} needs a known size on the "
                                 f"normalised axis {a}, got {tuple(input_shape)}")
            shape.append(int(d))
        return [tuple(shape)] * len(self.weight_names)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        shape = tuple(self.weight_shapes(input_shape)[0]) if self.weight_names else None
        if self.scale:
            self.gamma = initializers.initialize(self.gamma_initializer, shape, self.dtype,
                                                 argument="gamma_initializer")
        if self.center:
            self.beta = initializers.initialize(self.beta_initializer, shape, self.dtype,
                                                argument="beta_initializer")
        self._norm_shape = tuple(input_shape[a] for a in self._axes(len(input_shape)))
        super().build(input_shape)

    @property
    def input_dim(self):
        """The size of the input's last axis (None before the layer is built)."""
        return self.input_shape[-1] if self.built else None

    def compute_output_shape(self, input_shape):
        self._axes(len(input_shape))
        return tuple(input_shape)

    def _prepare(self, x):
        """``x`` in the layer's dtype and the axes it is normalised over. As Keras, an
        input of another rank is accepted when the normalised axes have the built sizes."""
        x = as_float_array("x", x, self.dtype, device=self.device)
        if not self.built:
            self.build(x.shape)
        axes = tuple(self._axes(x.ndim))
        if tuple(x.shape[a] for a in axes) != self._norm_shape:
            raise ValueError(f"x: {self.name} was built for sizes {self._norm_shape} on the "
                             f"normalised axes {self.axis!r}, got shape {x.shape}")
        return x, axes

    @staticmethod
    def _broadcast(w, axes, ndim):
        shape = [1] * ndim
        for i, a in enumerate(axes):
            shape[a] = w.shape[i]
        return w.reshape(shape)

    def _forward(self, x, axes):
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
        inv = 1 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True)
                          + self.dtype.type(self.epsilon))
        xhat = xc * inv
        y = xhat
        if self.scale:
            y = y * self._broadcast(self.gamma, axes, x.ndim)
        if self.center:
            y = y + self._broadcast(self.beta, axes, x.ndim)
        return y.astype(self.dtype, copy=False), xhat, inv

    def __call__(self, x, mask=None, training=False):
        return self._forward(*self._prepare(x))[0]

    def forward_train(self, x, mask=None):
        """Returns ``(y, backprop)``; ``Gradients.weights`` are ``[d gamma, d beta]`` (those
        the layer has)."""
        self.check_float("forward_train")
        x, axes = self._prepare(x)
        y, xhat, inv = self._forward(x, axes)
        act_grad = self._activity(y)
        once = self._once(self.name)
        other = tuple(a for a in range(x.ndim) if a not in axes)

        def backprop(dy):
            once()
            dy = self._check_dy(dy, y.shape)
            if act_grad is not None:
                dy = dy + act_grad
            weights = []
            if self.scale:
                weights.append((dy * xhat).sum(axis=other))
                dxhat = dy * self._broadcast(self.gamma, axes, x.ndim)
            else:
                dxhat = dy
            if self.center:
                weights.append(dy.sum(axis=other))
            dx = inv * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                        - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
            return Gradients(inputs=dx.astype(self.dtype, copy=False), initial_state=None,
                             weights=weights)

        return y, backprop

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            axis=self.axis, epsilon=self.epsilon, center=self.center, scale=self.scale,
            beta_initializer=initializers.serialize(self.beta_initializer),
            gamma_initializer=initializers.serialize(self.gamma_initializer),
            beta_regularizer=_serialize_regularizer(self.beta_regularizer),
            gamma_regularizer=_serialize_regularizer(self.gamma_regularizer))
        return cfg
