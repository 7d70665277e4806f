"""Layer (de)serialization in Keras's form ``{"class_name": ..., "config": {...}}``.

``config`` is ``layer.get_config()`` (JSON-serialisable, Keras argument names); the class is
looked up in ``Layer._registry`` (every ``Layer`` subclass registers itself by class name).
Model saving relies on this pair.
"""
from __future__ import annotations

from .base import Layer

__all__ = ["serialize", "deserialize"]


def serialize(layer) -> dict:
    """``{"class_name": type(layer).__name__, "config": layer.get_config()}``."""
    if not isinstance(layer, Layer):
        raise TypeError(f"layer: expected a fastlstm layer, got {type(layer).__name__}")
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(config: dict) -> Layer:
    """Inverse of :func:`serialize`: a new, unbuilt layer of the named class. Extra keys
    beside ``class_name`` and ``config`` (Keras writes ``module``, ``registered_name``) are
    ignored."""
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict {{'class_name': ..., 'config': {{...}}}}, "
                        f"got {type(config).__name__}")
    name = config.get("class_name")
    if not isinstance(name, str):
        raise ValueError(f"config: expected a string 'class_name', got {name!r}")
    cls = Layer._registry.get(name)
    if cls is None or name.startswith("_"):
        known = sorted(n for n in Layer._registry if not n.startswith("_"))
        raise ValueError(f"config: unknown layer class_name {name!r}; known: {known}")
    inner = config.get("config", {})
    if not isinstance(inner, dict):
        raise TypeError(f"config['config']: expected a dict, got {type(inner).__name__}")
    return cls.from_config(dict(inner))
