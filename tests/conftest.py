"""Shared test fixtures: the tolerance table and helpers for backend comparisons."""
import os

import numpy as np
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run: CI must not flake on a new draw.
settings.register_profile("fastlstm", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("fastlstm")

os.environ.setdefault("KERAS_BACKEND", "torch")   # Keras 3 without TensorFlow
# No run-time calibration of the kernels' thresholds (fastlstm.calibration): the tests run
# with the defaults, or force each path, whatever the machine's timings would choose.
os.environ.setdefault("FASTLSTM_CALIBRATE", "0")

# One table of tolerances, keyed by dtype: compiled backends against the oracle.
# `scale` adds scale * max|expected| to atol: a gradient summed over T*B rows carries rounding
# error proportional to its largest terms, not to the (possibly cancelled) result.
TOL = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=2e-5, scale=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-11, scale=1e-12),
}
# Against other frameworks (different summation orders, different exp/tanh).
PEER_TOL = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5, scale=2e-5),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-10, scale=1e-11),
}
DTYPES = [np.float32, np.float64]


def assert_close(actual, expected, dtype=None, name="", table=TOL):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dt = np.dtype(dtype if dtype is not None else expected.dtype)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    tol = dict(table[dt])
    scale = tol.pop("scale", 0.0)
    if expected.size and scale:
        tol["atol"] += scale * float(np.nanmax(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual, expected, err_msg=name, **tol)


def central_difference(loss, a, i, eps=1e-6):
    """(loss() at a + eps - loss() at a - eps) / (2 eps) in entry i of the flat view of the
    float64 array `a` (C-contiguous: perturbed in place, then restored)."""
    flat = a.reshape(-1)
    saved = flat[i]
    flat[i] = saved + eps
    up = loss()
    flat[i] = saved - eps
    down = loss()
    flat[i] = saved
    return (up - down) / (2 * eps)


def central_differences(loss, a, samples=10, eps=1e-6):
    """(index, central_difference) at about `samples` entries of `a`, spread over it."""
    for i in range(0, a.size, max(1, a.size // samples)):
        yield np.unravel_index(i, a.shape), central_difference(loss, a, i, eps)


def seed_of(*parts):
    """A stable seed from test parameters (str hashes change between processes)."""
    import zlib
    return zlib.crc32(repr(parts).encode())


def _register_cuda_host_backend():
    """Backend "cupy_host": the cupy backend's code and CUDA kernel source, run on the host
    (tests/cuda_host.py), so that every oracle comparison below also covers the GPU kernels.
    Registered only where a C++ compiler exists; built on first use."""
    from fastlstm import backends
    from cuda_host import cxx_compiler
    if cxx_compiler() is None:
        return False
    backends._REGISTRY["cupy_host"] = ("cuda_host", "HostCupyOps")
    return True


HAVE_CUDA_HOST = _register_cuda_host_backend()


def _cupy_or_none():
    """CuPy when it and a GPU are usable here, else None."""
    try:
        from fastlstm.backends.cupy_ops import _import_cupy
        return _import_cupy()
    except RuntimeError:
        return None


CUPY = _cupy_or_none()


def compiled_backends():
    """Non-oracle backends that run here: the CPU kernels and the CUDA kernels built for the
    host (the real GPU run has its own test module)."""
    import fastlstm as fl
    out = [b for b in fl.available_backends() if b not in ("numpy", "cupy")]
    return out + (["cupy_host"] if HAVE_CUDA_HOST else [])


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return np.dtype(request.param)
