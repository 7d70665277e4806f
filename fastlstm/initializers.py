"""Weight initializers with Keras 3 names, definitions and configs, in pure NumPy.

Every initializer is an object ``init(shape, dtype="float32") -> numpy.ndarray`` with
``get_config()`` / ``from_config()``; :func:`get` turns a name, a config dict, an instance
or a callable into one.

Randomness
----------
Random initializers draw from ``numpy.random.default_rng(seed)`` (PCG64, the same stream on
every platform), always in float64, and then cast to the requested dtype, so float32 and
float64 weights from one seed agree to float32 rounding.

- ``seed=<int>``: every call restarts the generator, so the instance returns the same values
  on each call for a given shape. This is what Keras 3 does with an integer seed (checked on
  Keras 3.15; it no longer warns about it). One consequence, shared with Keras: the first
  ``n`` values of a ``(2n,)`` draw equal an ``(n,)`` draw from the same seed (uniform and
  untruncated normal draws).
- ``seed=None``: every call draws fresh randomness from the operating system. This differs
  on purpose from Keras 3, where an unseeded instance picks a random integer seed once at
  construction and then repeats its values on every call (so one unseeded instance shared by
  two layers gives both the same weights). Pass an integer seed for reproducibility.

NumPy does not promise that ``Generator`` streams never change between NumPy versions;
within one NumPy version the values are identical on every machine.
"""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .threads import single_threaded_blas

__all__ = [
    "Initializer",
    "Zeros",
    "Ones",
    "Constant",
    "Identity",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "VarianceScaling",
    "GlorotUniform",
    "GlorotNormal",
    "HeUniform",
    "HeNormal",
    "LecunUniform",
    "LecunNormal",
    "Orthogonal",
    "compute_fans",
    "get",
    "serialize",
    "deserialize",
    "initialize",
    "recurrent_kernel",
    "lstm_bias",
    "TRUNCATED_NORMAL_STDDEV_FACTOR",
]

# Standard deviation of a unit normal truncated to [-2, 2]; VarianceScaling divides by it so
# that the truncated draw has the intended variance (the constant Keras uses).
TRUNCATED_NORMAL_STDDEV_FACTOR = 0.87962566103423978


# --------------------------------------------------------------------------------------------
# argument checking


def _check_shape(shape: Any) -> Tuple[int, ...]:
    if isinstance(shape, (numbers.Integral, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(
            f"shape must be a tuple of non-negative integers; received shape={shape!r}"
        ) from None
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (numbers.Integral, np.integer)):
            raise TypeError(
                f"shape must be a tuple of non-negative integers; received shape={shape!r}"
            )
        if d < 0:
            raise ValueError(
                f"shape must be a tuple of non-negative integers; received shape={shape!r}"
            )
        out.append(int(d))
    return tuple(out)


def _check_dtype(dtype: Any) -> np.dtype:
    if dtype is None:
        return np.dtype("float32")  # Keras's floatx default
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"dtype must be a floating dtype such as 'float32' or 'float64'; "
            f"received dtype={dtype!r}"
        ) from None
    if dt.kind != "f":
        raise ValueError(
            f"dtype must be a floating dtype such as 'float32' or 'float64'; "
            f"received dtype={dtype!r}"
        )
    return dt


def _check_seed(seed: Any) -> Optional[int]:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise TypeError(
            f"seed must be None or a non-negative integer; received seed={seed!r} "
            f"of type {type(seed).__name__}"
        )
    if seed < 0:
        raise ValueError(f"seed must be None or a non-negative integer; received seed={seed}")
    return int(seed)


def _check_real(value: Any, name: str, *, positive: bool = False,
                nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number; received {name}={value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; received {name}={value}")
    if positive and value <= 0.0:
        raise ValueError(f"{name} must be positive; received {name}={value}")
    if nonnegative and value < 0.0:
        raise ValueError(f"{name} must be non-negative; received {name}={value}")
    return value


def _check_axes(axes: Any, name: str) -> Optional[list]:
    if axes is None:
        return None
    if isinstance(axes, (numbers.Integral, np.integer)) and not isinstance(axes, bool):
        axes = [axes]
    try:
        items = list(axes)
    except TypeError:
        items = [None]
    if any(isinstance(a, bool) or not isinstance(a, (numbers.Integral, np.integer))
           for a in items):
        raise TypeError(f"{name} must be None or a list of integers; received {name}={axes!r}")
    return [int(a) for a in items]


# --------------------------------------------------------------------------------------------
# base classes


class Initializer:
    """Base class: ``init(shape, dtype="float32") -> numpy.ndarray``.

    Subclasses implement :meth:`_generate`, returning float64 values of the given shape;
    ``__call__`` checks the arguments and casts to ``dtype``.
    """

    def __call__(self, shape, dtype="float32") -> np.ndarray:
        shape = _check_shape(shape)
        dt = _check_dtype(dtype)
        return np.asarray(self._generate(shape), dtype=np.float64).astype(dt, copy=False)

    def _generate(self, shape: Tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> Dict[str, Any]:
        """Constructor arguments, JSON-serialisable, with Keras's key names."""
        return {}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Initializer":
        return cls(**config)

    def clone(self) -> "Initializer":
        return self.__class__.from_config(self.get_config())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class _RandomInitializer(Initializer):
    """Holds the seed and hands out a fresh generator per call (see the module docstring)."""

    def __init__(self, seed: Optional[int] = None):
        self.seed = _check_seed(seed)

    def _rng(self) -> np.random.Generator:
        # A new generator per call: a fixed seed repeats its values, None never does.
        return np.random.default_rng(self.seed)

    def get_config(self) -> Dict[str, Any]:
        return {"seed": self.seed}


def _truncated_standard_normal(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    """Unit normal draws conditioned on |z| <= 2: out-of-range values are re-drawn.

    Re-drawing (rather than clipping) gives the exact truncated distribution, as Keras does.
    """
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():  # about 4.6% per round, so a handful of rounds
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return z


# --------------------------------------------------------------------------------------------
# constant initializers


class Zeros(Initializer):
    """All zeros."""

    def _generate(self, shape):
        return np.zeros(shape)


class Ones(Initializer):
    """All ones."""

    def _generate(self, shape):
        return np.ones(shape)


class Constant(Initializer):
    """Every element equal to the scalar ``value``."""

    def __init__(self, value: float = 0.0):
        self.value = _check_real(value, "value")

    def _generate(self, shape):
        return np.full(shape, self.value)

    def get_config(self):
        return {"value": self.value}


class Identity(Initializer):
    """``gain * eye(rows, cols)`` for 2-D shapes (non-square allowed, as ``numpy.eye``)."""

    def __init__(self, gain: float = 1.0):
        self.gain = _check_real(gain, "gain")

    def _generate(self, shape):
        if len(shape) != 2:
            raise ValueError(
                f"Identity initializer needs a 2-D shape; received shape={shape} "
                f"of rank {len(shape)}"
            )
        return self.gain * np.eye(*shape)

    def get_config(self):
        return {"gain": self.gain}


# --------------------------------------------------------------------------------------------
# random initializers


class RandomNormal(_RandomInitializer):
    """Normal draws: ``mean + stddev * z``, ``z ~ N(0, 1)``."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: Optional[int] = None):
        self.mean = _check_real(mean, "mean")
        self.stddev = _check_real(stddev, "stddev", nonnegative=True)
        super().__init__(seed)

    def _generate(self, shape):
        return self.mean + self.stddev * self._rng().standard_normal(shape)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


class RandomUniform(_RandomInitializer):
    """Uniform draws on ``[minval, maxval)``."""

    def __init__(self, minval: float = -0.05, maxval: float = 0.05,
                 seed: Optional[int] = None):
        self.minval = _check_real(minval, "minval")
        self.maxval = _check_real(maxval, "maxval")
        if self.maxval < self.minval:
            raise ValueError(
                f"maxval must be >= minval; received minval={self.minval}, maxval={self.maxval}"
            )
        super().__init__(seed)

    def _generate(self, shape):
        return self._rng().uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {**super().get_config(), "minval": self.minval, "maxval": self.maxval}


class TruncatedNormal(_RandomInitializer):
    """``mean + stddev * z`` with ``z ~ N(0, 1)`` re-drawn until ``|z| <= 2``.

    Values lie within two ``stddev`` of ``mean``; their standard deviation is
    ``0.8796... * stddev`` (no correction here, as in Keras).
    """

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: Optional[int] = None):
        self.mean = _check_real(mean, "mean")
        self.stddev = _check_real(stddev, "stddev", nonnegative=True)
        super().__init__(seed)

    def _generate(self, shape):
        return self.mean + self.stddev * _truncated_standard_normal(self._rng(), shape)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


def compute_fans(shape, input_axes=None, output_axes=None) -> Tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape, as Keras computes them.

    - rank 0: ``(1, 1)``; rank 1 ``(n,)``: ``(n, n)``; rank 2 ``(i, o)``: ``(i, o)``;
    - rank >= 3 (convolution kernels ``(..., in, out)``): with ``r = prod(shape[:-2])``,
      ``(shape[-2] * r, shape[-1] * r)``;
    - with both ``input_axes`` and ``output_axes`` given: the products of those axes.
    """
    shape = _check_shape(shape)
    if input_axes is not None and output_axes is not None:
        fan_in = int(np.prod([shape[a] for a in input_axes], dtype=np.int64))
        fan_out = int(np.prod([shape[a] for a in output_axes], dtype=np.int64))
        return fan_in, fan_out
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2], dtype=np.int64))
    return shape[-2] * receptive, shape[-1] * receptive


class VarianceScaling(_RandomInitializer):
    """Draws with variance ``scale / n``, ``n`` chosen by ``mode`` from :func:`compute_fans`:
    ``fan_in``, ``fan_out`` or ``fan_avg = (fan_in + fan_out) / 2`` (``n`` at least 1).

    - ``"truncated_normal"`` (alias ``"normal"``): :class:`TruncatedNormal` with
      ``stddev = sqrt(scale / n) / 0.87962566103423978``, so the truncated values have
      standard deviation ``sqrt(scale / n)``;
    - ``"untruncated_normal"``: normal with ``stddev = sqrt(scale / n)``;
    - ``"uniform"``: uniform on ``[-limit, limit]``, ``limit = sqrt(3 * scale / n)``.
    """

    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale: float = 1.0, mode: str = "fan_in",
                 distribution: str = "truncated_normal", seed: Optional[int] = None,
                 input_axes: Optional[Sequence[int]] = None,
                 output_axes: Optional[Sequence[int]] = None):
        self.scale = _check_real(scale, "scale", positive=True)
        if mode not in self._MODES:
            raise ValueError(f"mode must be one of {list(self._MODES)}; received mode={mode!r}")
        if not isinstance(distribution, str):
            raise TypeError(f"distribution must be a string; received {distribution!r}")
        dist = distribution.lower()
        if dist == "normal":
            dist = "truncated_normal"
        if dist not in self._DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {list(self._DISTRIBUTIONS)}; "
                f"received distribution={distribution!r}"
            )
        self.mode = mode
        self.distribution = dist
        self.input_axes = _check_axes(input_axes, "input_axes")
        self.output_axes = _check_axes(output_axes, "output_axes")
        super().__init__(seed)

    def _variance(self, shape) -> float:
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}
        return self.scale / max(1.0, n[self.mode])

    def _generate(self, shape):
        var = self._variance(shape)
        rng = self._rng()
        if self.distribution == "truncated_normal":
            stddev = math.sqrt(var) / TRUNCATED_NORMAL_STDDEV_FACTOR
            return stddev * _truncated_standard_normal(rng, shape)
        if self.distribution == "untruncated_normal":
            return math.sqrt(var) * rng.standard_normal(shape)
        limit = math.sqrt(3.0 * var)
        return rng.uniform(-limit, limit, shape)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "mode": self.mode,
                "distribution": self.distribution, "input_axes": self.input_axes,
                "output_axes": self.output_axes}


class _FixedVarianceScaling(VarianceScaling):
    """A VarianceScaling preset: only ``seed`` and the axes are arguments."""

    _preset: Tuple[float, str, str] = (1.0, "fan_in", "truncated_normal")

    def __init__(self, seed: Optional[int] = None, input_axes: Optional[Sequence[int]] = None,
                 output_axes: Optional[Sequence[int]] = None):
        scale, mode, dist = self._preset
        super().__init__(scale, mode, dist, seed=seed, input_axes=input_axes,
                         output_axes=output_axes)

    def get_config(self):
        return {"seed": self.seed, "input_axes": self.input_axes,
                "output_axes": self.output_axes}


class GlorotUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(6 / (fan_in + fan_out))``."""

    _preset = (1.0, "fan_avg", "uniform")


class GlorotNormal(_FixedVarianceScaling):
    """Truncated normal with standard deviation ``sqrt(2 / (fan_in + fan_out))``."""

    _preset = (1.0, "fan_avg", "truncated_normal")


class HeUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(6 / fan_in)``."""

    _preset = (2.0, "fan_in", "uniform")


class HeNormal(_FixedVarianceScaling):
    """Truncated normal with standard deviation ``sqrt(2 / fan_in)``."""

    _preset = (2.0, "fan_in", "truncated_normal")


class LecunUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(3 / fan_in)``."""

    _preset = (1.0, "fan_in", "uniform")


class LecunNormal(_FixedVarianceScaling):
    """Truncated normal with standard deviation ``sqrt(1 / fan_in)``."""

    _preset = (1.0, "fan_in", "truncated_normal")


class Orthogonal(_RandomInitializer):
    """``gain`` times a random orthogonal matrix (Saxe et al., 2014), as Keras builds it.

    The shape is flattened to ``(rows, cols) = (prod(shape[:-1]), shape[-1])``. A normal
    matrix of shape ``(max(rows, cols), min(rows, cols))`` is QR-factorised and the columns of
    ``Q`` are multiplied by ``sign(diag(R))`` (which makes ``Q`` Haar-distributed); ``Q`` is
    transposed when ``rows < cols``. So the result has orthonormal columns when
    ``rows >= cols`` and orthonormal rows when ``rows < cols``, times ``gain``.
    """

    def __init__(self, gain: float = 1.0, seed: Optional[int] = None):
        self.gain = _check_real(gain, "gain")
        super().__init__(seed)

    def _generate(self, shape):
        if len(shape) < 2:
            raise ValueError(
                f"Orthogonal initializer needs a shape of rank >= 2; received shape={shape} "
                f"of rank {len(shape)}"
            )
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        cols = shape[-1]
        if rows == 0 or cols == 0:
            return np.zeros(shape)
        a = self._rng().standard_normal((max(rows, cols), min(rows, cols)))
        # One BLAS thread: faster here than two, and no idle BLAS workers left spinning
        # against the kernels' first calls (bench/RESULTS.md, "Numbers behind choices").
        with single_threaded_blas(numpy=True):
            q, r = np.linalg.qr(a)
        # sign(diag(R)), with +1 where the diagonal is exactly 0 so no column is zeroed.
        q *= np.where(np.diag(r) < 0.0, -1.0, 1.0)
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


# --------------------------------------------------------------------------------------------
# lookup and serialisation


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i > 0 and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


_CLASSES = (Zeros, Ones, Constant, Identity, RandomNormal, RandomUniform, TruncatedNormal,
            VarianceScaling, GlorotUniform, GlorotNormal, HeUniform, HeNormal, LecunUniform,
            LecunNormal, Orthogonal)

# Keras accepts both the class name and its snake_case name, plus a few aliases.
_BY_NAME: Dict[str, type] = {}
for _cls in _CLASSES:
    _BY_NAME[_cls.__name__] = _cls
    _BY_NAME[_snake(_cls.__name__)] = _cls
_BY_NAME.update({"normal": RandomNormal, "uniform": RandomUniform, "one": Ones,
                 "zero": Zeros, "IdentityInitializer": Identity,
                 "OrthogonalInitializer": Orthogonal})
del _cls

_KNOWN = sorted(_snake(c.__name__) for c in _CLASSES)


def serialize(initializer: Optional[Initializer]) -> Optional[Dict[str, Any]]:
    """``{"class_name": ..., "config": {...}}``, the form Keras writes and :func:`get` reads;
    ``None`` stays ``None``. Plain callables and arrays cannot be serialised (``TypeError``):
    subclass :class:`Initializer` to save a custom initializer."""
    if initializer is None:
        return None
    if not isinstance(initializer, Initializer):
        raise TypeError(
            f"serialize needs a fastlstm Initializer (a plain callable or array has no "
            f"config); received {initializer!r} of type {type(initializer).__name__}"
        )
    return {"class_name": type(initializer).__name__, "config": initializer.get_config()}


def deserialize(config: Dict[str, Any], argument: str = "initializer") -> Initializer:
    """Inverse of :func:`serialize`; also reads Keras 3 configs (extra keys are ignored)."""
    return get(config, argument=argument)


def _lookup(name: str, argument: str) -> type:
    cls = _BY_NAME.get(name)
    if cls is None:
        raise ValueError(
            f"Unknown initializer for {argument}: received {argument}={name!r}; "
            f"known names: {', '.join(_KNOWN)}"
        )
    return cls


def _construct(cls: type, config: Dict[str, Any], argument: str) -> Initializer:
    try:
        return cls.from_config(dict(config))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{argument}: invalid config for {cls.__name__}: {err}") from None


class _ArrayInitializer:
    """Returns a fixed array (Keras's ``get(tensor)``); the shape must match."""

    def __init__(self, value: np.ndarray, argument: str):
        self.value = np.array(value, dtype=np.float64)
        self.argument = argument

    def __call__(self, shape, dtype="float32"):
        shape = _check_shape(shape)
        if shape != self.value.shape:
            raise ValueError(
                f"{self.argument}: the array given has shape {self.value.shape}, "
                f"but a weight of shape {shape} was requested"
            )
        return self.value.astype(_check_dtype(dtype))


def get(spec: Any, argument: str = "kernel_initializer") -> Callable:
    """Resolve an initializer specification.

    Accepts a name (``"glorot_uniform"`` or ``"GlorotUniform"``; aliases ``normal``,
    ``uniform``, ``one``, ``zero``), an :class:`Initializer` instance (returned as is) or
    class (instantiated with defaults), a config dict ``{"class_name": ..., "config": {...}}``
    (Keras's extra keys such as ``module`` are ignored), a NumPy array (returned as a fixed
    value, as Keras does with tensors), or any callable ``f(shape, dtype)`` (returned as is).

    Raises ``ValueError`` for an unknown name or bad config values and ``TypeError`` for other
    types (including ``None``); messages name ``argument``.
    """
    if isinstance(spec, Initializer):
        return spec
    if isinstance(spec, str):
        return _lookup(spec, argument)()
    if isinstance(spec, dict):
        name = spec.get("class_name")
        if not isinstance(name, str):
            raise TypeError(
                f"{argument}: a config dict needs a string 'class_name'; received {spec!r}"
            )
        config = spec.get("config") or {}
        if not isinstance(config, dict):
            raise TypeError(f"{argument}: 'config' must be a dict; received {config!r}")
        return _construct(_lookup(name, argument), config, argument)
    if inspect.isclass(spec) and issubclass(spec, Initializer):
        return spec()
    if isinstance(spec, (np.ndarray, np.generic)):
        return _ArrayInitializer(spec, argument)
    if callable(spec) and not inspect.isclass(spec):
        return spec
    raise TypeError(
        f"{argument} must be an initializer name, Initializer instance, config dict or "
        f"callable f(shape, dtype); received {argument}={spec!r} of type {type(spec).__name__}"
    )


# --------------------------------------------------------------------------------------------
# helpers for the recurrent layers


def initialize(initializer: Any, shape, dtype="float32",
               argument: str = "kernel_initializer") -> np.ndarray:
    """Call ``get(initializer)`` on ``shape`` and check what comes back.

    User callables may return any array-like; the result is converted to a C-contiguous
    array of ``dtype`` and must have exactly ``shape`` (``ValueError`` naming ``argument``).
    """
    init = get(initializer, argument=argument)
    shape = _check_shape(shape)
    dt = _check_dtype(dtype)
    value = np.ascontiguousarray(np.asarray(init(shape, dt), dtype=dt))
    if value.shape != shape:
        raise ValueError(
            f"{argument} returned an array of shape {value.shape}; expected shape {shape}"
        )
    return value


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer; received {name}={value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; received {name}={value}")
    return int(value)


def recurrent_kernel(initializer: Any, units: int, blocks: int,
                     dtype="float32") -> np.ndarray:
    """The ``(units, blocks * units)`` recurrent kernel, built as Keras 3 builds it.

    Keras 3's ``SimpleRNNCell`` (1 block), ``GRUCell`` (3) and ``LSTMCell`` (4) call the
    recurrent initializer once on the whole ``(units, blocks * units)`` shape, not once per
    gate block. With the default ``"orthogonal"`` that gives a matrix with orthonormal rows
    (``K @ K.T == I``); its ``(units, units)`` gate blocks are not orthogonal themselves
    (only for ``blocks == 1``).
    """
    units = _check_count(units, "units", 1)
    blocks = _check_count(blocks, "blocks", 1)
    return initialize(initializer, (units, blocks * units), dtype,
                      argument="recurrent_initializer")


def lstm_bias(bias_initializer: Any, units: int, blocks: int = 4,
              unit_forget_bias: bool = True, forget_block_index: int = 1,
              dtype="float32") -> np.ndarray:
    """The ``(blocks * units,)`` LSTM bias, built as Keras 3's ``LSTMCell`` builds it.

    Without ``unit_forget_bias``: ``bias_initializer((blocks * units,))``.
    With it (Keras 3): the concatenation of ``bias_initializer`` on the blocks before the
    forget block (one call, shape ``(forget_block_index * units,)``), ones for the forget
    block, and ``bias_initializer`` on the blocks after it (a second call). The other blocks
    are therefore *not* forced to zero: a non-zero ``bias_initializer`` still applies to them.
    With the standard ``[i|f|c|o]`` layout the calls are on ``(units,)`` and ``(2 * units,)``;
    for CIFG ``[f|c|o]`` use ``blocks=3, forget_block_index=0``.
    """
    units = _check_count(units, "units", 1)
    blocks = _check_count(blocks, "blocks", 1)
    forget_block_index = _check_count(forget_block_index, "forget_block_index", 0)
    if forget_block_index >= blocks:
        raise ValueError(
            f"forget_block_index must be < blocks={blocks}; "
            f"received forget_block_index={forget_block_index}"
        )
    dt = _check_dtype(dtype)
    if not unit_forget_bias:
        return initialize(bias_initializer, (blocks * units,), dt, argument="bias_initializer")
    before = forget_block_index * units
    after = (blocks - forget_block_index - 1) * units
    parts = []
    if before:
        parts.append(initialize(bias_initializer, (before,), dt, argument="bias_initializer"))
    parts.append(np.ones(units, dtype=dt))
    if after:
        parts.append(initialize(bias_initializer, (after,), dt, argument="bias_initializer"))
    return np.concatenate(parts)
