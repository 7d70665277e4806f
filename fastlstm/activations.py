"""Activations of the recurrent cells, by Keras name or as objects.

Each activation knows its value and its derivative *written in terms of its output*
(``grad_from_output``): the kernels keep only post-activation gate values for backward,
so every activation here must have a derivative recoverable from its output.

The integer ``code`` of each kind is shared with the compiled kernels: the codes are read from
``fastlstm/include/fl_activations.h``, the one list the C and CUDA kernels include.
"""
from __future__ import annotations

import math
import os
import re

__all__ = ["Activation", "HardSigmoid", "get", "serialize", "NAMES"]

KINDS_HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "include",
                            "fl_activations.h")


def _kinds(path=KINDS_HEADER):
    """{kind: code} of the ``#define FL_<KIND> <code>`` lines of the kernels' header."""
    with open(path, encoding="utf-8") as f:
        return {m.group(1): int(m.group(2))
                for m in re.finditer(r"^#define FL_(\w+) (\d+)\b", f.read(), re.M)}


_KINDS = _kinds()
TANH, SIGMOID, HARD_SIGMOID, RELU, LINEAR, SOFTSIGN = (
    _KINDS[k] for k in ("TANH", "SIGMOID", "HARD_SIGMOID", "RELU", "LINEAR", "SOFTSIGN"))


class Activation:
    """An elementwise activation usable in a recurrent kernel.

    ``kind`` is one of ``NAMES``; ``alpha``/``beta`` parametrise the hard sigmoid
    ``clip(alpha*x + beta, 0, 1)`` and are ignored by the other kinds.
    """

    __slots__ = ("name", "code", "alpha", "beta")

    def __init__(self, name: str, code: int, alpha: float = 0.0, beta: float = 0.0):
        self.name = name
        self.code = code
        self.alpha = float(alpha)
        self.beta = float(beta)

    # -- math, against an array module so it runs on NumPy and CuPy arrays ----------
    def __call__(self, z, xp=None):
        xp = xp if xp is not None else _xp(z)
        c = self.code
        if c == TANH:
            return xp.tanh(z)
        if c == SIGMOID:
            # exp(-|z|) never overflows; both branches are exact rewrites of 1/(1+exp(-z)).
            e = xp.exp(-xp.abs(z))
            return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))
        if c == HARD_SIGMOID:
            return xp.clip(z * self.alpha + self.beta, 0, 1)
        if c == RELU:
            return xp.maximum(z, 0)
        if c == LINEAR:
            return z * 1
        if c == SOFTSIGN:
            return z / (1 + xp.abs(z))
        raise AssertionError(c)

    def grad_from_output(self, y, xp=None):
        """d act(z) / dz expressed through y = act(z)."""
        xp = xp if xp is not None else _xp(y)
        c = self.code
        if c == TANH:
            return 1 - y * y
        if c == SIGMOID:
            return y * (1 - y)
        if c == HARD_SIGMOID:
            return xp.where((y > 0) & (y < 1), self.alpha, 0).astype(y.dtype)
        if c == RELU:
            return (y > 0).astype(y.dtype)
        if c == LINEAR:
            return xp.ones_like(y)
        if c == SOFTSIGN:
            return (1 - xp.abs(y)) ** 2
        raise AssertionError(c)

    # -- identity ---------------------------------------------------------------------
    def get_config(self):
        if self.code == HARD_SIGMOID and self.name != "hard_sigmoid":
            return {"class_name": "HardSigmoid", "alpha": self.alpha, "beta": self.beta}
        return self.name

    def __eq__(self, other):
        return (isinstance(other, Activation) and self.code == other.code
                and (self.code != HARD_SIGMOID
                     or (self.alpha, self.beta) == (other.alpha, other.beta)))

    def __hash__(self):
        return hash((self.code, self.alpha, self.beta))

    def __repr__(self):
        if self.code == HARD_SIGMOID:
            return f"HardSigmoid(alpha={self.alpha!r}, beta={self.beta!r})"
        return f"Activation({self.name!r})"


def HardSigmoid(alpha: float = 0.2, beta: float = 0.5) -> Activation:
    """``clip(alpha*x + beta, 0, 1)``. Keras 2's ``hard_sigmoid`` is ``HardSigmoid(0.2, 0.5)``;
    Keras 3's (the name ``"hard_sigmoid"`` here) is ``HardSigmoid(1/6, 0.5)``."""
    for arg, v in (("alpha", alpha), ("beta", beta)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"HardSigmoid: {arg} must be a finite number, got {v!r}")
        if not math.isfinite(v):            # inf: outputs of NaN
            raise ValueError(f"HardSigmoid: {arg} must be a finite number, got {v!r}")
    if not alpha > 0:
        raise ValueError(f"HardSigmoid: alpha must be > 0, got {alpha!r}")
    return Activation("hard_sigmoid_custom", HARD_SIGMOID, alpha, beta)


_BUILTIN = {
    "tanh": Activation("tanh", TANH),
    "sigmoid": Activation("sigmoid", SIGMOID),
    "hard_sigmoid": Activation("hard_sigmoid", HARD_SIGMOID, 1.0 / 6.0, 0.5),
    "relu": Activation("relu", RELU),
    "linear": Activation("linear", LINEAR),
    "softsign": Activation("softsign", SOFTSIGN),
}
NAMES = tuple(_BUILTIN)


def get(spec, argument: str = "activation") -> Activation:
    """Resolve a name, an ``Activation``, ``None`` (linear) or a serialized config."""
    if isinstance(spec, Activation):
        return spec
    if spec is None:
        return _BUILTIN["linear"]
    if isinstance(spec, str):
        try:
            return _BUILTIN[spec]
        except KeyError:
            raise ValueError(f"{argument}: unknown activation {spec!r}; "
                             f"expected one of {list(NAMES)} or fl.activations.HardSigmoid(alpha, beta)"
                             ) from None
    if isinstance(spec, dict) and spec.get("class_name") == "HardSigmoid":
        missing = [k for k in ("alpha", "beta") if k not in spec]
        if missing:
            raise ValueError(f"{argument}: a HardSigmoid config needs 'alpha' and 'beta', "
                             f"got {spec!r}")
        return HardSigmoid(spec["alpha"], spec["beta"])
    raise TypeError(f"{argument}: expected an activation name or fl.activations.HardSigmoid(...), "
                    f"got {type(spec).__name__} {spec!r}")


def serialize(act: Activation):
    return act.get_config()


def _xp(a):
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        import cupy
        return cupy
    import numpy
    return numpy
