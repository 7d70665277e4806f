"""Backends: the NumPy oracle, the compiled CPU kernels (default) and the optional CuPy path.

Each backend is an ``Ops`` object with the same methods and signatures (see
``numpy_ops.NumpyOps``, the base). Choose one globally with ``set_backend(name)`` or for a
block with ``with use_backend(name):``; arrays of CuPy type always go to the ``cupy`` backend.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib

__all__ = ["get_ops", "set_backend", "use_backend", "current_backend", "available", "NAMES"]

# name -> (module, class); modules are imported on first use (cupy is optional).
_REGISTRY = {
    "numpy": ("fastlstm.backends.numpy_ops", "NumpyOps"),
    "cpu": ("fastlstm.backends.cpu_ops", "CpuOps"),
    "cupy": ("fastlstm.backends.cupy_ops", "CupyOps"),
}
NAMES = tuple(_REGISTRY)
_instances: dict = {}
_default = "cpu"
_active: contextvars.ContextVar = contextvars.ContextVar("fastlstm_backend", default=None)


def _check_name(name):
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"backend: expected one of {list(NAMES)}, got {name!r}")


def get_ops(name: str | None = None):
    """The ``Ops`` instance of backend ``name`` (default: the active backend)."""
    if name is None:
        name = current_backend()
    _check_name(name)
    ops = _instances.get(name)
    if ops is None:
        module, cls = _REGISTRY[name]
        ops = _instances[name] = getattr(importlib.import_module(module), cls)()
    return ops


def current_backend() -> str:
    return _active.get() or _default


def set_backend(name: str) -> None:
    """Make ``name`` the default backend for this process (and the current context)."""
    global _default
    _check_name(name)
    get_ops(name)          # fail here, not at the first layer call, if it cannot load
    _default = name
    _active.set(None)


@contextlib.contextmanager
def use_backend(name: str):
    """``with fl.use_backend("numpy"): ...`` runs the block on that backend."""
    _check_name(name)
    get_ops(name)
    token = _active.set(name)
    try:
        yield get_ops(name)
    finally:
        _active.reset(token)


def available() -> list:
    """Names of the backends that work on this machine."""
    out = []
    for name in NAMES:
        try:
            ops = get_ops(name)
        except Exception:
            continue
        if getattr(ops, "usable", lambda: True)():
            out.append(name)
    return out
