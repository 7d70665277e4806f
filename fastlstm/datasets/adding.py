"""The adding problem (Hochreiter & Schmidhuber 1997, experiment 4; the form of Le, Jaitly &
Hinton 2015 and Arjovsky et al. 2016).

Each sequence has ``T`` steps and two input channels: channel 0 holds values drawn uniformly
from [0, 1); channel 1 is a marker, 1 at exactly two steps (one drawn from the first half
``[0, T//2)``, one from the second half ``[T//2, T)``) and 0 elsewhere. The target is the sum
of the two marked values, in [0, 2). Always predicting 1 (the target's mean) gives a mean
squared error of 1/6 ~ 0.167 (the variance of a sum of two uniforms); solving the task needs
memory of the first marked value across up to ``T`` steps.
"""
from __future__ import annotations

import numpy as np

__all__ = ["adding_problem", "BASELINE_MSE"]

#: MSE of always predicting 1: Var(U1 + U2) = 2/12.
BASELINE_MSE = 1.0 / 6.0


def adding_problem(n_samples, timesteps=100, seed=0, dtype="float32"):
    """``(x, y)`` with ``x`` of shape ``(n_samples, timesteps, 2)`` and ``y`` of shape
    ``(n_samples, 1)``, drawn from ``numpy.random.default_rng(seed)``."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples: expected a positive integer, got {n_samples!r}")
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 2:
        raise ValueError(f"timesteps: expected an integer >= 2, got {timesteps!r}")
    rng = np.random.default_rng(seed)
    n, T, half = int(n_samples), int(timesteps), int(timesteps) // 2
    values = rng.random((n, T))
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    markers = np.zeros((n, T))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1).astype(dtype)
    y = (values[rows, first] + values[rows, second])[:, None].astype(dtype)
    return x, y
