"""``Activation`` (Keras 3): an activation applied elementwise (softmax: over the last
axis). A mask passes through unchanged."""
from __future__ import annotations

from .. import activations
from .base import Gradients, as_float_array
from .core import _SOFTMAX, _CoreLayer, _dense_activation

__all__ = ["Activation"]


class Activation(_CoreLayer):
    """``activation(x)``: the names of ``fastlstm.activations``, a ``HardSigmoid(alpha,
    beta)``, or ``"softmax"`` (over the last axis)."""

    def __init__(self, activation, dtype="float32", name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.activation = _dense_activation(activation)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def _prepare(self, x):
        x = as_float_array("x", x, self.dtype, device=self.device)
        if x.ndim < 1:
            raise ValueError(f"x: {self.name} expects an array with a batch axis, got a scalar")
        if not self.built:
            self.build(x.shape)
        return x

    def _apply(self, x):
        if self.activation is _SOFTMAX:
            return _SOFTMAX(x)
        if self.activation.code == activations.LINEAR:
            return x
        return self.activation(x, self.xp).astype(self.dtype, copy=False)

    def __call__(self, x, mask=None, training=False):
        return self._apply(self._prepare(x))

    def forward_train(self, x, mask=None):
        x = self._prepare(x)
        y = self._apply(x)
        once = self._once(self.name)

        def backprop(dy):
            once()
            dy = self._check_dy(dy, y.shape)
            if self.activation is _SOFTMAX:
                dx = _SOFTMAX.backward(y, dy)
            elif self.activation.code == activations.LINEAR:
                dx = dy
            else:
                dx = dy * self.activation.grad_from_output(y, self.xp)
            return Gradients(inputs=dx, initial_state=None, weights=[])

        return y, backprop

    def get_config(self):
        cfg = super().get_config()
        cfg.update(activation=(self.activation.get_config() if self.activation is _SOFTMAX
                               else activations.serialize(self.activation)))
        return cfg
