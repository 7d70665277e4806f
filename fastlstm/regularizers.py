"""Weight regularizers with Keras 3 definitions, in pure NumPy.

A regularizer is an object with ``reg(w) -> float`` (the penalty added to the loss) and
``reg.gradient(w) -> ndarray`` (its derivative, same shape and dtype as ``w``):

- ``L1(l1=0.01)``: ``l1 * sum(|w|)``; gradient ``l1 * sign(w)`` (0 where ``w == 0``);
- ``L2(l2=0.01)``: ``l2 * sum(w**2)`` (no 1/2, as Keras 3); gradient ``2 * l2 * w``;
- ``L1L2(l1=0.0, l2=0.0)``: the sum of both.

Training needs the gradient, so :func:`get` accepts a callable only if it also has a callable
``gradient`` attribute (for example a :class:`Regularizer` subclass); a plain function
``f(w) -> float`` is refused with a ``TypeError`` when the layer is built rather than
failing later in ``fit``.

Names: ``"l1"``, ``"l2"`` and ``"l1_l2"`` use the defaults of the Keras docs (0.01 for each
factor; so ``"l1_l2"`` is ``L1L2(0.01, 0.01)``, as ``l1_l2`` was in Keras 2). The class names
``"L1"``, ``"L2"`` and ``"L1L2"`` / ``"l1l2"`` instantiate the classes with their own
defaults, as Keras 3's ``regularizers.get`` does (so ``"L1L2"`` is ``L1L2(0.0, 0.0)``).
"""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Dict, Optional

import numpy as np

from . import devices

__all__ = ["Regularizer", "L1", "L2", "L1L2", "get", "serialize", "deserialize"]


def _check_factor(value: Any, name: str, default: float) -> float:
    """A non-negative finite float; ``None`` means the default (as Keras)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a non-negative float; received {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a non-negative finite float; received {name}={value}")
    return value


def _as_float_array(w: Any) -> np.ndarray:
    """``w`` as a float array of its own array module (NumPy, or CuPy for GPU weights)."""
    w = w if devices.is_device_array(w) else np.asarray(w)
    if w.dtype.kind != "f":
        w = w.astype(np.float64)
    return w


class Regularizer:
    """Base class: implement ``__call__(w) -> float``, ``gradient(w)`` and ``get_config``."""

    def __call__(self, w) -> float:
        raise NotImplementedError

    def gradient(self, w) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> Dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Regularizer":
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w**2)``; gradient ``l1 * sign(w) + 2 * l2 * w``."""

    def __init__(self, l1: Optional[float] = 0.0, l2: Optional[float] = 0.0):
        self.l1 = _check_factor(l1, "l1", 0.0)
        self.l2 = _check_factor(l2, "l2", 0.0)

    def __call__(self, w) -> float:
        w = _as_float_array(w)
        xp = devices.module_of(w)
        # Accumulate in float64: the penalty is a single scalar, so precision is free.
        loss = 0.0
        if self.l1:
            loss += self.l1 * float(xp.sum(xp.abs(w), dtype=np.float64))
        if self.l2:
            loss += self.l2 * float(xp.sum(xp.square(w, dtype=np.float64)))
        return loss

    def gradient(self, w) -> np.ndarray:
        w = _as_float_array(w)
        xp = devices.module_of(w)
        g = xp.zeros_like(w)
        if self.l1:
            g += w.dtype.type(self.l1) * xp.sign(w)  # sign(0) == 0: the subgradient at 0
        if self.l2:
            g += w.dtype.type(2.0 * self.l2) * w
        return g

    def get_config(self) -> Dict[str, Any]:
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """``l1 * sum(|w|)``; gradient ``l1 * sign(w)``, 0 where ``w == 0``."""

    def __init__(self, l1: Optional[float] = 0.01):
        super().__init__(l1=_check_factor(l1, "l1", 0.01), l2=0.0)

    def get_config(self) -> Dict[str, Any]:
        return {"l1": self.l1}


class L2(L1L2):
    """``l2 * sum(w**2)`` (Keras 3: no factor 1/2); gradient ``2 * l2 * w``."""

    def __init__(self, l2: Optional[float] = 0.01):
        super().__init__(l1=0.0, l2=_check_factor(l2, "l2", 0.01))

    def get_config(self) -> Dict[str, Any]:
        return {"l2": self.l2}


# Keras 3 looks classes up by class name and snake_case name ("l1l2" for L1L2).
_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2, "l1l2": L1L2}
# Lower-case function-style names with the documented 0.01 defaults.
_NAMES = {"l1": lambda: L1(0.01), "l2": lambda: L2(0.01), "l1_l2": lambda: L1L2(0.01, 0.01)}
_KNOWN = ["l1", "l2", "l1_l2", "L1", "L2", "L1L2"]
# In a config dict only the class matters (the config gives the factors).
_CONFIG_CLASSES = {**_CLASSES, "l1": L1, "l2": L2, "l1_l2": L1L2}


def serialize(regularizer: Optional[Regularizer]) -> Optional[Dict[str, Any]]:
    """``{"class_name": ..., "config": {...}}``, the form Keras writes and :func:`get` reads;
    ``None`` stays ``None``. Only :class:`Regularizer` instances can be serialised."""
    if regularizer is None:
        return None
    if not isinstance(regularizer, Regularizer):
        raise TypeError(
            f"serialize needs a fastlstm Regularizer; received {type(regularizer).__name__}"
        )
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def deserialize(config: Dict[str, Any], argument: str = "regularizer") -> Regularizer:
    """Inverse of :func:`serialize`; also reads Keras 3 configs (extra keys are ignored)."""
    return get(config, argument=argument)


def _unknown(name: str, argument: str) -> ValueError:
    return ValueError(
        f"Unknown regularizer for {argument}: received {argument}={name!r}; "
        f"known names: {', '.join(_KNOWN)}"
    )


def get(spec: Any, argument: str = "kernel_regularizer") -> Optional[Regularizer]:
    """Resolve a regularizer specification.

    ``None`` -> ``None``; a name (see the module docstring); a :class:`Regularizer` instance
    (returned as is) or class (instantiated); a config dict ``{"class_name": ..., "config":
    {...}}``; or any callable object that also has a callable ``gradient`` (returned as is).
    Unknown names and bad factors raise ``ValueError``, other types ``TypeError``; messages
    name ``argument``.
    """
    if spec is None or isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, str):
        if spec in _NAMES:
            return _NAMES[spec]()
        if spec in _CLASSES:
            return _CLASSES[spec]()
        raise _unknown(spec, argument)
    if isinstance(spec, dict):
        name = spec.get("class_name")
        if not isinstance(name, str):
            raise TypeError(
                f"{argument}: a config dict needs a string 'class_name'; received {spec!r}"
            )
        cls = _CONFIG_CLASSES.get(name)
        if cls is None:
            raise _unknown(name, argument)
        config = spec.get("config") or {}
        if not isinstance(config, dict):
            raise TypeError(f"{argument}: 'config' must be a dict; received {config!r}")
        try:
            return cls.from_config(dict(config))
        except (TypeError, ValueError) as err:
            raise type(err)(f"{argument}: invalid config for {cls.__name__}: {err}") from None
    if inspect.isclass(spec) and issubclass(spec, Regularizer):
        return spec()
    if callable(spec) and not inspect.isclass(spec):
        if callable(getattr(spec, "gradient", None)):
            return spec
        raise TypeError(
            f"{argument}: a plain callable has no gradient, which training needs; received "
            f"{argument}={spec!r}. Subclass fastlstm.regularizers.Regularizer (or give the "
            f"object a gradient(w) method) instead."
        )
    raise TypeError(
        f"{argument} must be None, a regularizer name, a Regularizer instance, a config dict "
        f"or a callable with a gradient method; received {argument}={spec!r} "
        f"of type {type(spec).__name__}"
    )
