"""Merge layers (Keras 3): ``Concatenate``, ``Add``, ``Multiply``, ``Average``.

They take a list of arrays: ``layer([a, b], mask=None | [ma, mb])`` and
``forward_train([a, b], mask=...)``, whose backprop gives ``Gradients(inputs=[da, db],
...)`` aligned with the list (``multiple_inputs = True``). Add, Multiply and Average
broadcast as Keras: an input of lower rank gets axes of size 1 after the batch axis, then
NumPy's rules apply. Output masks follow Keras 3: None unless every input has one, else
their logical or (Concatenate: an input without a mask counts as all valid, and the masks
are joined along ``axis``). Multiply, as Keras, also reads the masks: a masked position
counts as 1 in the product, and when every input has a mask the positions masked in all
of them come out 0.
"""
from __future__ import annotations

import numpy as np

from .base import Gradients, as_float_array
from .core import _CoreLayer

__all__ = ["Concatenate", "Add", "Multiply", "Average"]


def _shapes(input_shape, name):
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, (list, tuple)) or \
            not input_shape or not all(isinstance(s, (list, tuple)) for s in input_shape):
        raise ValueError(f"input_shape: {name} expects a list of input shapes, "
                         f"got {input_shape!r}")
    return [tuple(s) for s in input_shape]


def _unbroadcast(g, shape):
    """Sum the gradient ``g`` of a broadcast result back to an input of ``shape``."""
    while g.ndim > len(shape):
        g = g.sum(axis=1)
    axes = tuple(i for i, (a, b) in enumerate(zip(shape, g.shape)) if a == 1 and b != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


class _Merge(_CoreLayer, abstract=True):
    multiple_inputs = True

    def _prepare(self, inputs, mask):
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (list, tuple)):
            raise TypeError(f"inputs: {self.name} ({type(self).__name__}) expects a list of "
                            f"arrays, got {type(inputs).__name__}")
        if len(inputs) < self._min_inputs:
            raise ValueError(f"inputs: {self.name} expects at least {self._min_inputs} "
                             f"arrays, got {len(inputs)}")
        xs = [as_float_array(f"inputs[{i}]", x, self.dtype, device=self.device)
              for i, x in enumerate(inputs)]
        for i, x in enumerate(xs):
            if x.ndim < 1 or x.shape[0] != xs[0].shape[0]:
                raise ValueError(f"inputs: {self.name} expects arrays of one batch size, got "
                                 f"shapes {[a.shape for a in xs]}")
        if not self.built:
            self.build([x.shape for x in xs])
        else:
            self.compute_output_shape([x.shape for x in xs])
        return xs, self._masks(mask, xs)

    def _masks(self, mask, xs):
        if mask is None:
            return None
        if isinstance(mask, (str, bytes)) or not isinstance(mask, (list, tuple)) or \
                len(mask) != len(xs):
            raise ValueError(f"mask: {self.name} expects None or a list of {len(xs)} masks "
                             f"(None for an input without one), got {mask!r:.100}")
        out = []
        for i, (m, x) in enumerate(zip(mask, xs)):
            if m is not None:
                m = np.asarray(m, dtype=bool)
                if m.shape != x.shape[:m.ndim] or m.ndim >= x.ndim:
                    raise ValueError(f"mask: mask[{i}] of shape {m.shape} does not fit "
                                     f"inputs[{i}] of shape {x.shape}")
            out.append(m)
        return out

    def build(self, input_shape):
        shapes = _shapes(input_shape, self.name)
        self.compute_output_shape(shapes)
        self.input_shape = shapes
        self.built = True

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        if not isinstance(mask, (list, tuple)) or len(mask) != len(inputs):
            raise ValueError(f"mask: {self.name} expects a list of {len(inputs)} masks, "
                             f"got {mask!r:.100}")
        if any(m is None for m in mask):
            return None
        out = np.asarray(mask[0], dtype=bool)
        for m in mask[1:]:
            out = np.logical_or(out, np.asarray(m, dtype=bool))
        return out

    def __call__(self, inputs, mask=None, training=False):
        xs, masks = self._prepare(inputs, mask)
        return self._merge(xs, masks)[0]

    def forward_train(self, inputs, mask=None):
        """Returns ``(y, backprop)``; ``backprop(dy)`` gives ``Gradients`` whose ``inputs``
        is a list aligned with ``inputs``."""
        xs, masks = self._prepare(inputs, mask)
        y, grads_of = self._merge(xs, masks)
        once = self._once(self.name)

        def backprop(dy):
            once()
            dy = self._check_dy(dy, y.shape)
            return Gradients(inputs=[np.ascontiguousarray(g, dtype=self.dtype)
                                     for g in grads_of(dy)],
                             initial_state=None, weights=[])

        return y, backprop


class _Elementwise(_Merge, abstract=True):
    _min_inputs = 1

    def compute_output_shape(self, input_shape):
        shapes = _shapes(input_shape, self.name)
        out = shapes[0][1:]
        for s in shapes[1:]:
            out = self._broadcast_shape(out, s[1:], shapes)
        batch = {s[0] for s in shapes if s} - {None}
        if len(batch) > 1:
            raise ValueError(f"inputs: {self.name} cannot merge batch sizes {sorted(batch)} "
                             f"(shapes {shapes})")
        return (batch.pop() if batch else None,) + tuple(out)

    @staticmethod
    def _broadcast_shape(a, b, shapes):
        if len(a) < len(b):
            a, b = b, a
        # Keras puts the new axes of a lower-rank input right after the batch axis.
        b = (1,) * (len(a) - len(b)) + tuple(b)
        out = []
        for i, j in zip(a, b):
            if i is None or j is None:
                out.append(None)
            elif i == 1 or j == 1 or i == j:
                out.append(j if i == 1 else i)
            else:
                raise ValueError(f"inputs: incompatible shapes {shapes} (Keras merges "
                                 "equal shapes, or shapes that broadcast)")
        return tuple(out)

    @staticmethod
    def _aligned(xs, nd=None):
        nd = max(x.ndim for x in xs) if nd is None else nd
        return [x.reshape(x.shape[:1] + (1,) * (nd - x.ndim) + x.shape[1:]) for x in xs]


class Add(_Elementwise):
    """The elementwise sum of the inputs."""

    def _merge(self, xs, masks):
        al = self._aligned(xs)
        y = al[0]
        for x in al[1:]:
            y = y + x
        return y, lambda dy: [_unbroadcast(dy, a.shape).reshape(x.shape)
                              for a, x in zip(al, xs)]


class Average(_Elementwise):
    """The elementwise mean of the inputs."""

    def _merge(self, xs, masks):
        al = self._aligned(xs)
        y = al[0]
        for x in al[1:]:
            y = y + x
        n = self.dtype.type(len(xs))
        return y / n, lambda dy: [_unbroadcast(dy / n, a.shape).reshape(x.shape)
                                  for a, x in zip(al, xs)]


class Multiply(_Elementwise):
    """The elementwise product of the inputs (masked positions count as 1; see above)."""

    def _merge(self, xs, masks):
        one, zero = self.dtype.type(1), self.dtype.type(0)
        ms = [None] * len(xs) if masks is None else masks
        ms = [None if m is None else m.reshape(m.shape + (1,) * (x.ndim - m.ndim))
              for x, m in zip(xs, ms)]
        al = self._aligned([x if m is None else np.where(m, x, one) for x, m in zip(xs, ms)])
        full = masks is not None and all(m is not None for m in masks)
        keep = None
        if full:
            nd = max(x.ndim for x in xs)
            keep = np.logical_or.reduce(np.broadcast_arrays(*self._aligned(ms, nd)))
        # Products of the inputs before and after each one: the gradient of input i is
        # the product of all others, without dividing by a possibly zero input.
        before = [None] * len(al)
        acc = None
        for i, x in enumerate(al):
            before[i] = acc
            acc = x if acc is None else acc * x
        y = acc if not full else np.where(keep, acc, zero)

        def grads_of(dy):
            if full:
                dy = np.where(keep, dy, zero)
            after = None
            out = [None] * len(al)
            for i in range(len(al) - 1, -1, -1):
                other = before[i] if after is None else (
                    after if before[i] is None else before[i] * after)
                g = dy if other is None else dy * other
                g = np.broadcast_to(g, np.broadcast_shapes(g.shape, al[i].shape))
                g = _unbroadcast(g, al[i].shape).reshape(xs[i].shape)
                if ms[i] is not None:
                    g = np.where(ms[i], g, zero)
                out[i] = g
                after = al[i] if after is None else al[i] * after
            return out

        return y, grads_of


class Concatenate(_Merge):
    """The inputs joined along ``axis`` (default the last); the other sizes must match."""

    _min_inputs = 1

    def __init__(self, axis=-1, dtype="float32", name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis: expected an integer, got {axis!r}")
        self.axis = int(axis)

    def compute_output_shape(self, input_shape):
        shapes = _shapes(input_shape, self.name)
        nd = len(shapes[0])
        if any(len(s) != nd for s in shapes):
            raise ValueError(f"inputs: {self.name} expects inputs of one rank, got {shapes}")
        if not -nd <= self.axis < nd or self.axis % nd == 0:
            raise ValueError(f"axis: {self.axis} is out of range (or the batch axis) for "
                             f"inputs of rank {nd}")
        ax = self.axis % nd
        out = list(shapes[0])
        for s in shapes[1:]:
            for i in range(nd):
                if i != ax and None not in (s[i], out[i]) and s[i] != out[i]:
                    raise ValueError(f"inputs: {self.name} needs shapes that match except on "
                                     f"the concatenation axis {self.axis}, got {shapes}")
            out[ax] = None if None in (out[ax], s[ax]) else out[ax] + s[ax]
        return tuple(out)

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        if not isinstance(mask, (list, tuple)) or len(mask) != len(inputs):
            raise ValueError(f"mask: {self.name} expects a list of {len(inputs)} masks, "
                             f"got {mask!r:.100}")
        if all(m is None for m in mask):
            return None
        full = []
        for x, m in zip(inputs, mask):
            shape = np.shape(x)
            if m is None:
                full.append(np.ones(shape, bool))
            else:
                m = np.asarray(m, dtype=bool)
                full.append(np.broadcast_to(m.reshape(m.shape + (1,) * (len(shape) - m.ndim)),
                                            shape))
        return np.concatenate(full, axis=self.axis).any(axis=-1)

    def _merge(self, xs, masks):
        y = np.concatenate(xs, axis=self.axis)
        bounds = np.cumsum([x.shape[self.axis] for x in xs])[:-1]
        return y, lambda dy: np.split(dy, bounds, axis=self.axis)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axis=self.axis)
        return cfg
