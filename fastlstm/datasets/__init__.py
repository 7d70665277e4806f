"""Small data sets embedded in the package (nothing is downloaded).

``load_airline()``
    Monthly totals of international airline passengers, January 1949 to December 1960, in
    thousands (144 values; 112 first, 432 last, 40363 in all). Source: G. E. P. Box and
    G. M. Jenkins, *Time Series Analysis: Forecasting and Control*, Holden-Day, 1976,
    Series G (from Brown, *Smoothing, Forecasting and Prediction of Discrete Time Series*,
    1963); the same series as R's ``datasets::AirPassengers``. A public-domain table of
    facts, stored in ``airline.csv`` (columns ``month`` as ``YYYY-MM``, ``passengers``).
``adding_problem(n_samples, timesteps, seed)``
    The adding problem of Hochreiter & Schmidhuber (1997), generated from a seed; see
    :mod:`fastlstm.datasets.adding`.
"""
from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np

from .adding import adding_problem

__all__ = ["load_airline", "adding_problem"]


def load_airline():
    """``(months, passengers)``: ``months`` a (144,) array of ``"YYYY-MM"`` strings,
    ``passengers`` a (144,) int64 array of monthly totals in thousands, 1949-01 to 1960-12."""
    text = resources.files(__name__).joinpath("airline.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    months = np.array([r["month"] for r in rows])
    passengers = np.array([int(r["passengers"]) for r in rows], dtype=np.int64)
    return months, passengers
