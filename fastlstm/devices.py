"""Where a layer's weights live and its arithmetic runs: ``"cpu"`` or ``"cuda"``.

``"cpu"``: NumPy arrays, run by the active backend (the compiled kernels by default).
``"cuda"``: CuPy arrays on the current GPU, run by the ``cupy`` backend. ``layer.to(device)``
and ``model.to(device)`` move the weights once; every call then takes its inputs to that
device (a NumPy input is copied there) and returns arrays living there. CuPy is imported only
when ``"cuda"`` is asked for.
"""
from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["DEVICES", "check_device", "array_module", "is_device_array", "to_host",
           "to_device", "module_of"]

# device -> (array module or None = import on demand, backend that runs it or None = active)
_DEVICES = {"cpu": (np, None), "cuda": (None, "cupy")}
DEVICES = ("cpu", "cuda")


def check_device(device) -> str:
    if not isinstance(device, str) or device.lower() not in _DEVICES:
        raise ValueError(f"device: expected one of {list(DEVICES)}, got {device!r}")
    return device.lower()


def array_module(device):
    """NumPy for "cpu", CuPy for "cuda" (a clear RuntimeError without CuPy or a GPU)."""
    xp, _ = _DEVICES[device]
    if xp is None:
        from .backends.cupy_ops import _import_cupy
        xp = _import_cupy()
    return xp


def backend_context(device):
    """The backend the device's arrays run on, as a context (none needed for "cpu")."""
    backend = _DEVICES[device][1]
    if backend is None:
        return contextlib.nullcontext()
    from .backends import use_backend
    return use_backend(backend)


def is_device_array(a) -> bool:
    """True for CuPy arrays (checked by type name: CuPy need not be importable)."""
    return type(a).__module__.split(".")[0] == "cupy"


def module_of(a):
    """The array module of ``a``: CuPy for CuPy arrays, else NumPy."""
    if is_device_array(a):
        import cupy
        return cupy
    return np


def to_host(a):
    """``a`` as a NumPy array (a copy from the GPU for CuPy arrays; ``None`` stays ``None``)."""
    if a is None:
        return None
    return a.get() if is_device_array(a) else a


def to_device(a, device):
    """``a`` on ``device``: copied across only when it lives elsewhere."""
    if a is None:
        return None
    xp = array_module(device)
    if xp is np:
        return to_host(a)
    return xp.asarray(a)
