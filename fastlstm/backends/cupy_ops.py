"""The ``cupy`` backend: the oracle's array code run on CuPy arrays (GPU).

For now this runs the NumPy oracle with ``xp = cupy`` — correct on the GPU, cuBLAS for the
products, but without fused elementwise kernels. Importing fastlstm never needs CuPy; asking
for this backend without CuPy or without a GPU is a clear error.
"""
from __future__ import annotations

from .numpy_ops import NumpyOps


def _import_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError("backend 'cupy' needs CuPy and an NVIDIA GPU: pip install cupy-cuda12x "
                           f"(or the build for your CUDA); import failed: {exc}") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device
        raise RuntimeError(f"backend 'cupy': CuPy is installed but no GPU is usable: {exc}") from None
    if n < 1:
        raise RuntimeError("backend 'cupy': CuPy is installed but no GPU was found")
    return cupy


class CupyOps(NumpyOps):
    name = "cupy"

    def __init__(self):
        self.xp = _import_cupy()
