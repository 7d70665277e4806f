"""Mixed precision (Keras's names): ``fl.mixed_precision.set_global_policy("mixed_bfloat16")``
or ``dtype="mixed_bfloat16"`` on a layer.

Under ``mixed_bfloat16`` a layer keeps its variables (weights), the optimizer state and the
updates in float32; the matrix products (input projection, per-step recurrent product, and
in training dX, dW, dU and the per-step dh) take bf16 operands and sum in float32; gate math
and cell states stay float32; outputs are float32 (Keras returns bf16: NumPy has no bf16).
No loss scaling: bf16 has float32's exponent range. See docs/mixed_precision.md.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Policy", "set_global_policy", "global_policy", "POLICIES"]

POLICIES = ("float32", "float64", "mixed_bfloat16")


class Policy:
    """A layer's dtype policy: ``name``, ``compute_dtype`` (the products' operands) and
    ``variable_dtype`` (weights, optimizer state, outputs here)."""

    __slots__ = ("_name",)

    def __init__(self, name):
        if isinstance(name, Policy):
            name = name.name
        if not isinstance(name, str):
            try:
                name = np.dtype(name).name
            except TypeError:
                raise TypeError(f"name: expected one of {POLICIES}, got "
                                f"{type(name).__name__} {name!r}") from None
        if name not in POLICIES:
            raise ValueError(f"name: expected one of {POLICIES}, got {name!r}")
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def compute_dtype(self) -> str:
        return "bfloat16" if self._name == "mixed_bfloat16" else self._name

    @property
    def variable_dtype(self) -> str:
        return "float32" if self._name == "mixed_bfloat16" else self._name

    @property
    def mixed(self) -> bool:
        """Whether the products run with bf16 operands."""
        return self._name == "mixed_bfloat16"

    def __eq__(self, other):
        return isinstance(other, Policy) and other._name == self._name

    def __hash__(self):
        return hash(self._name)

    def __repr__(self):
        return f'<Policy "{self._name}">'

    def get_config(self):
        return {"name": self._name}

    @classmethod
    def from_config(cls, config):
        return cls(config["name"])


_global = Policy("float32")


def set_global_policy(policy) -> None:
    """The policy of every layer made afterwards without a ``dtype`` of its own (recurrent
    layers, Dense, Embedding): a name (``"mixed_bfloat16"``, ``"float32"``, ``"float64"``)
    or a ``Policy``; None restores float32."""
    global _global
    _global = Policy("float32" if policy is None else policy)


def global_policy() -> Policy:
    return _global


def policy_of(dtype) -> Policy:
    """A layer's policy from its ``dtype`` argument: None means the global policy."""
    if dtype is None:
        return _global
    try:
        return Policy(dtype)
    except (TypeError, ValueError):
        raise ValueError(f"dtype: expected 'float32' or 'float64' (or the policy "
                         f"'mixed_bfloat16'), got {dtype!r}") from None
