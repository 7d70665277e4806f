"""Shared test fixtures: the tolerance table and helpers for backend comparisons."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")   # Keras 3 without TensorFlow

# One table of tolerances, keyed by dtype: compiled backends against the oracle.
TOL = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-11),
}
# Against other frameworks (different summation orders, different exp/tanh).
PEER_TOL = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-10),
}
DTYPES = [np.float32, np.float64]


def assert_close(actual, expected, dtype=None, name="", table=TOL):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dt = np.dtype(dtype if dtype is not None else expected.dtype)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, err_msg=name, **table[dt])


def compiled_backends():
    """Non-oracle backends that run here (the GPU one has its own test module)."""
    import fastlstm as fl
    return [b for b in fl.available_backends() if b not in ("numpy", "cupy")]


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return np.dtype(request.param)
