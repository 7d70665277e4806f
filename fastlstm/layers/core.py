"""Core layers that sit around the recurrent ones, with Keras 3 semantics and weights:
``Dense``, ``Embedding``, ``Masking`` and ``Dropout``.

Every layer has the protocol of ``fastlstm.layers.base``: ``layer(x, mask=None,
training=False)``; ``forward_train(x, mask=None) -> (y, backprop)`` with ``backprop(dy) ->
Gradients``; ``compute_mask(inputs, mask)`` giving the ``(batch, timesteps)`` boolean mask a
following recurrent layer consumes; ``compute_output_shape``; the regularization hooks
``regularization_loss()``, ``regularization_grads()`` and ``last_activity_loss``.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import activations, devices, initializers, mixed_precision, regularizers
from ..backends import mixed_products
from .base import (Gradients, Layer, activity_penalty, as_float_array, check_bool,
                   check_positive_int, check_training, input_features)
from .recurrent import _check_rate, _check_seed, _serialize_regularizer

__all__ = ["Dense", "Embedding", "Masking", "Dropout"]


class _Softmax:
    """Softmax over the last axis, for Dense only (it is not elementwise, so the recurrent
    kernels cannot use it)."""

    name = "softmax"

    def __call__(self, z):
        e = devices.module_of(z).exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    @staticmethod
    def backward(y, dy):
        """dL/dz from y = softmax(z) and dL/dy: y * (dy - sum(dy * y))."""
        return y * (dy - (dy * y).sum(axis=-1, keepdims=True))

    def get_config(self):
        return "softmax"

    def __reduce__(self):
        # One instance, which the layers test by identity: a copied or unpickled Dense
        # keeps it.
        return "_SOFTMAX"


_SOFTMAX = _Softmax()


def _dense_activation(spec):
    if isinstance(spec, _Softmax) or spec == "softmax" or (
            isinstance(spec, dict) and spec.get("class_name") == "Softmax"):
        return _SOFTMAX
    try:
        return activations.get(spec, "activation")
    except ValueError:
        raise ValueError(f"activation: unknown activation {spec!r}; expected one of "
                         f"{list(activations.NAMES) + ['softmax']}, None, or "
                         "fl.activations.HardSigmoid(alpha, beta)") from None


class _CoreLayer(Layer, abstract=True):
    """The activity penalty and the checks shared by the core layers."""

    # The dtype policy (fastlstm.mixed_precision); None on layers unpickled from before it.
    dtype_policy = None

    def __init__(self, name=None, dtype="float32", trainable=True):
        policy = mixed_precision.policy_of(dtype)
        super().__init__(name=name, dtype=policy.variable_dtype, trainable=trainable)
        self.dtype_policy = policy
        self.last_activity_loss = 0.0

    @property
    def _mixed(self):
        """mixed_bfloat16: the products take bf16 operands (float32 weights and sums)."""
        return (self.dtype_policy is not None and self.dtype_policy.mixed
                and self.quantization is None)

    def _matmul(self, a, b):
        return mixed_products.matmul(a, b) if self._mixed else a @ b

    def get_config(self):
        cfg = super().get_config()
        if self.dtype_policy is not None:
            cfg["dtype"] = self.dtype_policy.name
        return cfg

    def _activity(self, out):
        """Sets last_activity_loss; returns the gradient to add to d_out (or None)."""
        self.last_activity_loss = 0.0
        if self.activity_regularizer is None:
            return None
        self.last_activity_loss, grad = activity_penalty(self.activity_regularizer, out)
        return grad

    def _check_dy(self, dy, shape):
        if dy is None:
            return self.xp.zeros(shape, self.dtype)
        dy = as_float_array("d_out", dy, self.dtype, device=self.device)
        if dy.shape != tuple(shape):
            raise ValueError(f"d_out: expected shape {tuple(shape)}, got {dy.shape}")
        return dy


class _KernelBias(_CoreLayer, abstract=True):
    """A kernel, an optional bias and an activation, with their initializers and
    regularizers (Dense, Conv1D)."""

    def _kernel_and_bias(self, activation, use_bias, kernel_initializer, bias_initializer,
                         kernel_regularizer, bias_regularizer, activity_regularizer):
        self.activation = _dense_activation(activation)
        self.use_bias = check_bool("use_bias", use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.kernel_regularizer = regularizers.get(kernel_regularizer, "kernel_regularizer")
        self.bias_regularizer = regularizers.get(bias_regularizer, "bias_regularizer")
        self.activity_regularizer = regularizers.get(activity_regularizer, "activity_regularizer")

    def _kernel_bias_config(self):
        """The config entries of _kernel_and_bias's options, in Keras's names."""
        return dict(
            activation=(self.activation.get_config() if self.activation is _SOFTMAX
                        else activations.serialize(self.activation)),
            use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            bias_initializer=initializers.serialize(self.bias_initializer),
            kernel_regularizer=_serialize_regularizer(self.kernel_regularizer),
            bias_regularizer=_serialize_regularizer(self.bias_regularizer),
            activity_regularizer=_serialize_regularizer(self.activity_regularizer))

    @property
    def weight_names(self):
        return ["kernel"] + (["bias"] if self.use_bias else [])

    def _regularized(self):
        return [(self.kernel_regularizer, "kernel")] + (
            [(self.bias_regularizer, "bias")] if self.use_bias else [])

    # The input's ranks and what its last axis holds (Dense: any rank from 2, features).
    _ranks = (2, None)
    _input_layout = "an array of at least 2 dimensions (batch, ..., features)"
    _last_axis = "features"

    def _prepare(self, x):
        """x as an array of the layer's dtype, checked against the layer (built on first
        call)."""
        x = as_float_array("x", x, self.dtype, device=self.device)
        low, high = self._ranks
        if x.ndim < low or (high is not None and x.ndim > high):
            raise ValueError(f"x: {self.name} expects {self._input_layout}, got shape "
                             f"{x.shape}")
        if not self.built:
            self.build(x.shape)
        elif x.shape[-1] != self.input_dim:
            raise ValueError(f"x: {self.name} was built for {self.input_dim} {self._last_axis} "
                             f"on the last axis, got {x.shape[-1]} (shape {x.shape})")
        return x

    def forward_train(self, x, mask=None):
        """Returns ``(y, backprop)``; ``backprop(dy)`` returns ``Gradients`` with
        ``weights = [d kernel, d bias]`` (data gradients only). The layer's own parts:
        ``_forward_saving(x) -> (y, saved)`` and ``_backward(x, saved, dz) -> (dx,
        weights)``, dz the gradient before the activation."""
        self.check_float("forward_train")
        x = self._prepare(x)
        y, saved = self._forward_saving(x)
        act_grad = self._activity(y)
        once = self._once(self.name)

        def backprop(dy):
            once()
            dy = self._check_dy(dy, y.shape)
            if act_grad is not None:
                dy = dy + act_grad
            dx, weights = self._backward(x, saved, self._activation_grad(y, dy))
            return Gradients(inputs=dx, initial_state=None, weights=weights)

        return y, backprop

    def _activation_grad(self, y, dy):
        """dL/dz of ``y = activation(z)`` from the output and dL/dy."""
        if self.activation is _SOFTMAX:
            return _SOFTMAX.backward(y, dy)
        if self.activation.code == activations.LINEAR:
            return dy
        return dy * self.activation.grad_from_output(y, self.xp)


class Dense(_KernelBias):
    """``activation(x @ kernel + bias)`` on the last axis of ``x`` (any rank >= 2).

    Weights: ``kernel (I, units)``, ``bias (units,)``. A mask passes through unchanged.
    Activations: the names of ``fastlstm.activations`` (``None`` = linear), a
    ``HardSigmoid(alpha, beta)``, and ``"softmax"`` (over the last axis).
    """

    runs_on_gpu = True

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, dtype=None, name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.units = check_positive_int("units", units)
        self._kernel_and_bias(activation, use_bias, kernel_initializer, bias_initializer,
                              kernel_regularizer, bias_regularizer, activity_regularizer)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(f"input_shape: {self.name} expects at least 2 dimensions "
                             f"(batch, ..., features), got {input_shape}")
        input_dim = check_positive_int("input_shape[-1]", input_shape[-1])
        dt = self.dtype
        self.kernel = initializers.initialize(self.kernel_initializer, (input_dim, self.units), dt,
                                              argument="kernel_initializer")
        if self.use_bias:
            self.bias = initializers.initialize(self.bias_initializer, (self.units,), dt,
                                                argument="bias_initializer")
        super().build(input_shape)

    def weight_shapes(self, input_shape):
        I = input_features(self.name, input_shape)
        return [(I, self.units)] + ([(self.units,)] if self.use_bias else [])

    @property
    def input_dim(self):
        return self.kernel.shape[0] if self.built else None

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units,)


    def _forward(self, x):
        z = self.kernel.matmul(x) if self.quantization else self._matmul(x, self.kernel)
        if self.use_bias:
            z += self.bias
        if self.activation is _SOFTMAX:
            return _SOFTMAX(z)
        if self.activation.code == activations.LINEAR:
            return z
        return self.activation(z, self.xp).astype(self.dtype, copy=False)

    def __call__(self, x, mask=None, training=False):
        return self._forward(self._prepare(x))

    def _forward_saving(self, x):
        return self._forward(x), None

    def _backward(self, x, saved, dz):
        dz2 = dz.reshape(-1, self.units)
        x2 = x.reshape(-1, x.shape[-1])
        weights = [self._matmul(x2.T, dz2)] + ([dz2.sum(axis=0)] if self.use_bias else [])
        return self._matmul(dz, self.kernel.T), weights

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, **self._kernel_bias_config())
        return cfg


class Embedding(_CoreLayer):
    """Looks up rows of ``embeddings (input_dim, output_dim)`` for integer indices.

    Input: an integer array of any shape (usually ``(batch, timesteps)``) with values in
    ``[0, input_dim)``; output: that shape plus ``(output_dim,)``. With ``mask_zero=True``
    index 0 is padding: ``compute_mask`` gives ``inputs != 0`` (so ``input_dim`` should be
    the vocabulary size + 1, as in Keras). The default initializer is Keras's
    ``RandomUniform(-0.05, 0.05)``.
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 embeddings_regularizer=None, activity_regularizer=None, mask_zero=False,
                 dtype=None, name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.output_dim = check_positive_int("output_dim", output_dim)
        self.embeddings_initializer = initializers.get(embeddings_initializer,
                                                       "embeddings_initializer")
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer,
                                                       "embeddings_regularizer")
        self.activity_regularizer = regularizers.get(activity_regularizer, "activity_regularizer")
        self.mask_zero = check_bool("mask_zero", mask_zero)

    @property
    def weight_names(self):
        return ["embeddings"]

    def _regularized(self):
        return [(self.embeddings_regularizer, "embeddings")]

    def build(self, input_shape=None):
        self.embeddings = initializers.initialize(
            self.embeddings_initializer, (self.input_dim, self.output_dim), self.dtype,
            argument="embeddings_initializer")
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.built = True

    def weight_shapes(self, input_shape):
        return [(self.input_dim, self.output_dim)]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return np.asarray(inputs) != 0

    def _indices(self, x):
        try:
            idx = np.asarray(x)
        except Exception as exc:
            raise TypeError(f"x: {self.name} expects an integer array, "
                            f"got {type(x).__name__}") from exc
        if idx.dtype.kind not in "iu":
            raise TypeError(f"x: {self.name} expects integer indices in [0, {self.input_dim}), "
                            f"got an array of dtype {idx.dtype}")
        if idx.size:
            lo, hi = idx.min(), idx.max()
            if lo < 0 or hi >= self.input_dim:
                bad = lo if lo < 0 else hi
                raise ValueError(f"x: {self.name} expects indices in [0, {self.input_dim}) "
                                 f"(input_dim={self.input_dim}), got {int(bad)}")
        if not self.built:
            self.build(idx.shape)
        return idx

    def __call__(self, x, mask=None, training=False):
        idx = self._indices(x)
        return self.embeddings[idx]

    def forward_train(self, x, mask=None):
        """Returns ``(y, backprop)``; ``backprop(dy)`` returns ``Gradients`` with
        ``inputs=None`` (integer input has no gradient) and ``weights = [d embeddings]``."""
        self.check_float("forward_train")
        idx = self._indices(x)
        y = self.embeddings[idx]
        act_grad = self._activity(y)
        once = self._once(self.name)

        def backprop(dy):
            once()
            dy = self._check_dy(dy, y.shape)
            if act_grad is not None:
                dy = dy + act_grad
            d_emb = np.zeros_like(self.embeddings)
            np.add.at(d_emb, idx.reshape(-1), dy.reshape(-1, self.output_dim))
            return Gradients(inputs=None, initial_state=None, weights=[d_emb])

        return y, backprop

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            input_dim=self.input_dim, output_dim=self.output_dim,
            embeddings_initializer=initializers.serialize(self.embeddings_initializer),
            embeddings_regularizer=_serialize_regularizer(self.embeddings_regularizer),
            activity_regularizer=_serialize_regularizer(self.activity_regularizer),
            mask_zero=self.mask_zero)
        return cfg


class Masking(_CoreLayer):
    """Masks timesteps whose features all equal ``mask_value``: such steps come out as
    zeros and ``compute_mask`` gives ``any(x != mask_value, axis=-1)`` (Keras 3)."""

    def __init__(self, mask_value=0.0, dtype="float32", name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        if isinstance(mask_value, bool) or not isinstance(mask_value, (numbers.Real, np.number)):
            raise TypeError(f"mask_value: expected a number, got {type(mask_value).__name__} "
                            f"{mask_value!r}")
        self.mask_value = float(mask_value)

    def _keep(self, x):
        return np.any(x != self.dtype.type(self.mask_value), axis=-1)

    def _prepare(self, x):
        x = as_float_array("x", x, self.dtype, device=self.device)
        if x.ndim < 2:
            raise ValueError(f"x: {self.name} expects an array of at least 2 dimensions "
                             f"(batch, ..., features), got shape {x.shape}")
        if not self.built:
            self.build(x.shape)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_mask(self, inputs, mask=None):
        return self._keep(as_float_array("inputs", inputs, self.dtype))

    def __call__(self, x, mask=None, training=False):
        x = self._prepare(x)
        return np.where(self._keep(x)[..., None], x, self.dtype.type(0))

    def forward_train(self, x, mask=None):
        x = self._prepare(x)
        keep = self._keep(x)[..., None]
        y = np.where(keep, x, self.dtype.type(0))
        once = self._once(self.name)

        def backprop(dy):
            once()
            dy = self._check_dy(dy, y.shape)
            return Gradients(inputs=np.where(keep, dy, self.dtype.type(0)), initial_state=None,
                             weights=[])

        return y, backprop

    def get_config(self):
        cfg = super().get_config()
        cfg.update(mask_value=self.mask_value)
        return cfg


class Dropout(_CoreLayer):
    """Inverted dropout: in training, each element is zeroed with probability ``rate`` and
    the rest scaled by ``1 / (1 - rate)``; the identity at inference. ``noise_shape`` (as
    Keras: ``None`` entries take the input's size) shares one draw along axes of size 1.
    Reproducible from ``seed``. A mask passes through."""

    runs_on_gpu = True

    def __init__(self, rate, noise_shape=None, seed=None, dtype="float32", name=None,
                 trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.rate = _check_rate("rate", rate)
        if noise_shape is not None:
            if isinstance(noise_shape, str) or not hasattr(noise_shape, "__iter__"):
                raise TypeError(f"noise_shape: expected a tuple of positive integers or None, "
                                f"got {noise_shape!r}")
            noise_shape = tuple(noise_shape)
            for d in noise_shape:
                if d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer))
                                      or d <= 0):
                    raise ValueError(f"noise_shape: expected positive integers or None, "
                                     f"got {noise_shape!r}")
            noise_shape = tuple(None if d is None else int(d) for d in noise_shape)
        self.noise_shape = noise_shape
        self.seed = _check_seed(seed)
        self._rng = np.random.default_rng(self.seed)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def _mask(self, shape):
        if self.noise_shape is None:
            draw = shape
        else:
            if len(self.noise_shape) != len(shape):
                raise ValueError(f"noise_shape: {self.noise_shape} does not match the input "
                                 f"shape {shape}")
            draw = tuple(s if d is None else d for d, s in zip(self.noise_shape, shape))
            if any(d not in (1, s) for d, s in zip(draw, shape)):
                raise ValueError(f"noise_shape: {self.noise_shape} does not broadcast to the "
                                 f"input shape {shape}")
        keep = self._rng.random(draw) >= self.rate
        return devices.to_device((keep / (1.0 - self.rate)).astype(self.dtype), self.device)

    def _prepare(self, x):
        x = as_float_array("x", x, self.dtype, device=self.device)
        if not self.built:
            self.build(x.shape)
        return x

    def __call__(self, x, mask=None, training=False):
        training = check_training(training)
        x = self._prepare(x)
        if not training or self.rate == 0.0:
            return x
        return x * self._mask(x.shape)

    def forward_train(self, x, mask=None):
        x = self._prepare(x)
        keep = self._mask(x.shape) if self.rate > 0 else None
        y = x if keep is None else x * keep
        once = self._once(self.name)

        def backprop(dy):
            once()
            dy = self._check_dy(dy, y.shape)
            return Gradients(inputs=dy if keep is None else dy * keep, initial_state=None,
                             weights=[])

        return y, backprop

    def get_config(self):
        cfg = super().get_config()
        cfg.update(rate=self.rate,
                   noise_shape=None if self.noise_shape is None else list(self.noise_shape),
                   seed=self.seed)
        return cfg
