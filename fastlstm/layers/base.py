"""The layer base: weights, lazy build, configuration, and the training-call protocol.

Every layer has
    y = layer(x, mask=None, training=False)        inference (Keras call semantics)
    y, backprop = layer.forward_train(x, mask=None)   training forward; backprop(dy) -> Gradients
    layer.compute_mask(x, mask)                    the mask its output carries to the next layer
    layer.get_weights() / set_weights(ws)          Keras order and layouts
    layer.get_config() / Layer.from_config(cfg)    JSON-serialisable, Keras names
    layer.regularization_loss()                    weight penalties (0.0 without regularizers)
    layer.regularization_grads()                   their gradients, aligned with get_weights()
    layer.last_activity_loss                       activity penalty of the last forward_train

``Layer`` defines each of them, with defaults for a layer without weights or regularizers,
so a model calls them on any layer without asking which it has.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np

from .. import devices
from ..backends.aligned import ALIGNMENT, aligned_empty
from ..ops import _flag

_DTYPES = {"float32": np.float32, "float64": np.float64}


def check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in _DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return dt


def aligned_weight(a, copy=False):
    """``a`` itself when it is a C-contiguous NumPy array on a cache-line boundary
    (backends.aligned) or empty (and not ``copy``), else such a copy (other values, CuPy
    arrays included, unchanged)."""
    if not isinstance(a, np.ndarray) or (not copy and a.flags.c_contiguous and (
            a.size == 0 or a.ctypes.data % ALIGNMENT == 0)):
        return a
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive integer, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def input_features(name, input_shape, ndim=None):
    """The feature size (last axis) of ``input_shape``, for weight_shapes; the shape must
    have ``ndim`` axes (None: at least 2)."""
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__"):
        raise ValueError(f"input_shape: {name} expects a shape such as (batch, ..., features), "
                         f"got {input_shape!r}")
    if len(input_shape) < 2 if ndim is None else len(input_shape) != ndim:
        raise ValueError(f"input_shape: {name} expects {ndim or 'at least 2'} dimensions, "
                         f"got {tuple(input_shape)}")
    return check_positive_int("input_shape[-1]", input_shape[-1])


def check_training(value):
    """The ``training`` switch of a call: True or False (NumPy's too, 0 or 1); None is
    False, as Keras' default. A string such as "no" is refused rather than read as true."""
    return False if value is None else _flag("training", value)


def as_float_array(name, x, dtype, ndim=None, device="cpu"):
    """x as an array of ``dtype`` on ``device`` (a copy only when needed), with a clear
    error otherwise."""
    if device == "cpu" and isinstance(x, np.ndarray) and x.dtype == dtype:
        arr = x
    else:
        if device == "cpu" and devices.is_device_array(x):
            raise TypeError(f"{name}: got a CuPy (GPU) array for a layer on the CPU; move the "
                            "layer with layer.to('cuda') (model.to('cuda')), or the array "
                            "with .get()")
        try:
            arr = x if hasattr(x, "dtype") and device != "cpu" else np.asarray(x)
            arr = devices.to_device(arr, device)
        except Exception as exc:
            raise TypeError(f"{name}: expected an array, got {type(x).__name__}") from exc
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
        arr = arr.astype(dtype, copy=False)
    if ndim is not None and arr.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    return arr


def activity_penalty(regularizer, output):
    """``(loss, d loss / d output)`` of an activity regularizer, divided by the batch size
    (``output.shape[0]``) as Keras 2 and 3 do, so its strength does not depend on the batch."""
    n = output.shape[0] if output.ndim > 0 and output.shape[0] > 0 else 1
    loss = float(regularizer(output)) / n
    grad = regularizer.gradient(output).astype(output.dtype, copy=False) / output.dtype.type(n)
    return loss, grad


@dataclass
class Gradients:
    """What ``backprop`` returns: data gradients only (regularization is the caller's)."""

    inputs: Any                          # dL/dx, shape of x
    initial_state: Optional[List[Any]]   # like initial_state; None if none was given
    weights: List[Any]                   # aligned with layer.get_weights()


def check_input_shape(input_shape, input_dim=None, where="layer"):
    """Keras's ``input_shape=`` / ``input_dim=`` layer arguments: the input shape without
    the batch axis as a tuple (``None`` for an unknown size, e.g. timesteps), or None."""
    if input_dim is not None:
        if input_shape is not None:
            raise ValueError(f"input_dim: {where} got both input_shape={input_shape!r} and "
                             f"input_dim={input_dim!r}; give one")
        return (check_positive_int("input_dim", input_dim),)
    if input_shape is None:
        return None
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, (tuple, list)):
        raise TypeError(f"input_shape: expected a tuple without the batch axis such as "
                        f"(timesteps, features), got {input_shape!r}")
    shape = []
    for d in input_shape:
        if d is None:
            shape.append(None)
        elif isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"input_shape: expected positive integers or None (without the "
                             f"batch axis), got {tuple(input_shape)!r}")
        else:
            shape.append(int(d))
    if not shape:
        raise ValueError("input_shape: expected at least one axis besides the batch, got ()")
    return tuple(shape)


def _accepts_input_shape(init):
    """``__init__`` that also takes Keras's ``input_shape=`` (and ``input_dim=``), as
    Keras 2 code gives it to a model's first layer; a Sequential model builds itself for
    ``(None, *input_shape)``. Nested ``super().__init__`` calls pass no such argument."""
    import functools
    import inspect

    own = inspect.signature(init).parameters
    if "input_shape" in own:
        return init
    if "input_dim" in own:              # Embedding: input_dim is its vocabulary size

        @functools.wraps(init)
        def __init__(self, *args, input_shape=None, **kwargs):
            init(self, *args, **kwargs)
            shape = check_input_shape(input_shape, None, type(self).__name__)
            if shape is not None:
                self._input_shape_arg = shape

        return __init__

    @functools.wraps(init)
    def __init__(self, *args, input_shape=None, input_dim=None, **kwargs):
        init(self, *args, **kwargs)
        shape = check_input_shape(input_shape, input_dim, type(self).__name__)
        if shape is not None:
            self._input_shape_arg = shape

    return __init__


_PLAIN = frozenset((np.ndarray, type(None), bool, int, float, str))


def _is_symbolic(value):
    kind = type(value)
    if getattr(kind, "_symbolic_tensor", False):
        return True
    if kind is list or kind is tuple:
        for item in value:
            if getattr(type(item), "_symbolic_tensor", False):
                return True
    return False


def _holds_symbolic(args, kwargs):
    """Whether a call's arguments (or a list among them, e.g. ``initial_state=[h, c]``)
    hold a symbolic tensor of fastlstm.functional. Arrays and plain values are passed over
    first: this runs on every call of every layer."""
    for value in args:
        if type(value) not in _PLAIN and _is_symbolic(value):
            return True
    if kwargs:
        for value in kwargs.values():
            if type(value) not in _PLAIN and _is_symbolic(value):
                return True
    return False


def _symbolic_dispatch(call):
    """``__call__`` that, given symbolic tensors (``fl.Input`` and what layers make of
    them), records a node of a functional model instead of computing."""
    if getattr(call, "_symbolic_dispatch", False):
        return call
    import functools

    @functools.wraps(call)
    def __call__(self, *args, **kwargs):
        if _holds_symbolic(args, kwargs):
            from ..graph import call_symbolic
            return call_symbolic(self, args, kwargs)
        return call(self, *args, **kwargs)

    __call__._symbolic_dispatch = True
    return __call__


class Layer:
    """Base class: holds weights as arrays of its device and builds them on first call."""

    # Whether layer.to("cuda") is supported (the layer's math runs on CuPy arrays).
    runs_on_gpu = False
    # The training protocol's defaults: no activity penalty, one output, no carried state.
    activity_regularizer = None
    last_activity_loss = 0.0
    return_state = False
    stateful = False
    # "int8" or "bfloat16" on an inference copy made by fl.quantize (fastlstm.quantization).
    quantization = None

    _registry: dict = {}

    @staticmethod
    def _once(name):
        """A check that a forward_train's backprop runs once: the second call raises."""
        used = [False]

        def check():
            if used[0]:
                raise RuntimeError(f"{name}: backprop of this forward_train was already run")
            used[0] = True
        return check

    def __init_subclass__(cls, abstract=False, **kw):
        # Concrete layers register by class name for deserialize; a shared base such as
        # RecurrentLayer (``abstract=True``) cannot be built, so a file may not name it.
        super().__init_subclass__(**kw)
        if not abstract:
            Layer._registry[cls.__name__] = cls
        if "__init__" in cls.__dict__:
            cls.__init__ = _accepts_input_shape(cls.__dict__["__init__"])
        if "__call__" in cls.__dict__:
            cls.__call__ = _symbolic_dispatch(cls.__dict__["__call__"])

    def __init__(self, name=None, dtype="float32", trainable=True):
        self.dtype = check_dtype(dtype)
        self.name = name if name is not None else _auto_name(type(self).__name__)
        if not isinstance(self.name, str):
            raise TypeError(f"name: expected a string, got {type(name).__name__}")
        self.trainable = check_bool("trainable", trainable)
        self.built = False
        self.input_shape = None
        self.device = "cpu"

    # -- weights ---------------------------------------------------------------------
    @property
    def weight_names(self) -> List[str]:
        """Names of the weight attributes, in get_weights() order."""
        return []

    @property
    def weights(self) -> List[np.ndarray]:
        return [getattr(self, n) for n in self.weight_names]

    def weight_shapes(self, input_shape):
        """The shapes ``build(input_shape)`` gives the weights, in get_weights() order, from
        the configuration alone (nothing is allocated or initialised); None when the layer
        cannot tell. Loaders compare a file's arrays with them before building anything.
        Raises ValueError for an input_shape the layer cannot be built for."""
        return [] if not self.weight_names else None

    def get_weights(self) -> List[np.ndarray]:
        """Copies of the weights as NumPy arrays (from the GPU too), in Keras order."""
        return [np.array(devices.to_host(w), copy=True) for w in self.weights]

    def check_float(self, what):
        """Refuse what a quantized (inference-only) layer cannot do."""
        if self.quantization is not None:
            raise ValueError(f"{what}: {self.name} is quantized ({self.quantization}) for "
                             "inference only; train or change the float model and quantize "
                             "it again (fl.quantize)")

    def set_weights(self, weights) -> None:
        self.check_float("set_weights")
        if not self.built:
            raise ValueError(f"{self.name}: set_weights before the layer is built; call it once "
                             "or call build(input_shape) first")
        names = self.weight_names
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
            raise TypeError(f"weights: expected a list of {len(names)} arrays "
                            f"({', '.join(names)}), got {type(weights).__name__}")
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(f"weights: {self.name} expects {len(names)} arrays ({', '.join(names)}), "
                             f"got {len(weights)}")
        new = []
        for n, cur, w in zip(names, self.weights, weights):
            arr = as_float_array(n, devices.to_host(w), self.dtype)
            if arr.shape != cur.shape:
                raise ValueError(f"weights: {n} of {self.name} expects shape {cur.shape}, got {arr.shape}")
            new.append(devices.to_device(aligned_weight(arr, copy=True), self.device))
        for n, arr in zip(names, new):
            setattr(self, n, arr)

    # -- the call protocol ---------------------------------------------------------------
    def __call__(self, x, mask=None, training=False):
        """Inference: the output for ``x`` (batch-major)."""
        raise NotImplementedError(f"{type(self).__name__} does not define __call__")

    def forward_train(self, x, mask=None):
        """Training forward: ``(output, backprop)``, with ``backprop(d_out) -> Gradients``;
        sets ``last_activity_loss``."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward_train")

    # -- regularization --------------------------------------------------------------------
    def _regularized(self):
        """(regularizer or None, weight name) pairs; none by default."""
        return []

    def regularization_loss(self) -> float:
        """Weight-regularization loss of this layer (0.0 before it is built)."""
        if not self.built:
            return 0.0
        return float(sum(reg(getattr(self, n)) for reg, n in self._regularized()
                         if reg is not None))

    def regularization_grads(self):
        """Gradients of regularization_loss, aligned with get_weights() (None = zero)."""
        grads = {n: (reg.gradient(getattr(self, n)) if reg is not None else None)
                 for reg, n in self._regularized()}
        return [grads.get(n) for n in self.weight_names]

    # -- device ----------------------------------------------------------------------------
    @property
    def xp(self):
        """The array module of this layer's device (NumPy or CuPy)."""
        return devices.array_module(self.device)

    def to(self, device):
        """Move the weights (and carried states) to ``device`` ("cpu" or "cuda") and run there
        from now on; returns the layer. Inputs given as NumPy arrays are copied to the device
        at each call; outputs stay on it."""
        device = devices.check_device(device)
        if device != "cpu" and self.quantization is not None:
            raise NotImplementedError(f"{self.name}: quantized ({self.quantization}) layers run "
                                      f"on the CPU only; cannot move it to {device!r}")
        if device != "cpu" and not self.runs_on_gpu:
            raise NotImplementedError(f"{self.name}: {type(self).__name__} runs on the CPU only; "
                                      f"cannot move it to {device!r}")
        devices.array_module(device)       # fail here if CuPy or the GPU is missing
        if self.built:
            for n in self.weight_names:
                setattr(self, n, aligned_weight(devices.to_device(getattr(self, n), device)))
        self.device = device
        self._moved(device)
        return self

    def _moved(self, device):
        """Hook: move whatever else the layer keeps on its device (states, sublayers)."""

    def count_params(self) -> int:
        return int(sum(w.size for w in self.weights))

    # -- configuration -------------------------------------------------------------------
    def get_config(self) -> dict:
        cfg = {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable}
        if getattr(self, "_input_shape_arg", None) is not None:
            cfg["input_shape"] = list(self._input_shape_arg)
        return cfg

    # -- states (Keras 3's name beside the Keras 2 one) ----------------------------------
    def reset_state(self, rows=None):
        """Keras 3's name for :meth:`reset_states` (the same method)."""
        reset = getattr(self, "reset_states", None)
        if reset is None:
            raise AttributeError(f"{self.name}: {type(self).__name__} carries no states to reset")
        return reset(rows) if rows is not None else reset()

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    # -- building --------------------------------------------------------------------------
    def build(self, input_shape) -> None:
        """Subclasses create their weights (on the host) and then call this."""
        self.input_shape = tuple(input_shape)
        if self.device != "cpu":
            for n in self.weight_names:
                setattr(self, n, devices.to_device(getattr(self, n), self.device))
        self.built = True

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        """The output's shape for ``input_shape`` (batch axis None); None when unknown."""
        return None

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


_counters: dict = {}


def _snake_case(name: str) -> str:
    """Keras's ``to_snake_case``: LSTM -> lstm, SimpleRNN -> simple_rnn, Dense -> dense."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _auto_name(cls_name: str) -> str:
    base = _snake_case(cls_name)
    n = _counters.get(base, 0)
    _counters[base] = n + 1
    return base if n == 0 else f"{base}_{n}"
