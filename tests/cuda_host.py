"""The CUDA kernels of the cupy backend, compiled for the host and launched through ctypes.

``HostKernels`` is a ``KernelSet``: the cupy backend's orchestration (``CupyOps`` with
``xp=numpy``) runs unchanged on top of it, so every kernel and every launch argument is
exercised without a GPU. Needs a C++ compiler (the one that builds the extension).
"""
from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import sysconfig
import tempfile

import numpy as np

from fastlstm.backends.cuda_kernels import (INCLUDE_DIR, MAIN_SOURCE, SOURCE_DIR, KernelSet,
                                             RowGemm)

HERE = os.path.dirname(os.path.abspath(__file__))
_CTYPES = {"l": ctypes.c_longlong, "i": ctypes.c_int, "d": ctypes.c_double,
           "p": ctypes.c_void_p, "m": ctypes.c_void_p}


def cxx_compiler():
    """A C++ compiler command, or None."""
    for cand in (os.environ.get("CXX"), sysconfig.get_config_var("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand.split()[0]):
            return cand.split()
    return None


def build_host_library(out_dir):
    cxx = cxx_compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found")
    lib = os.path.join(out_dir, "rnn_kernels_host.so")
    cmd = cxx + ["-x", "c++", "-std=c++14", "-O2", "-fPIC", "-shared", "-Wall", "-Werror",
                 "-Wno-unused-function", "-include", os.path.join(HERE, "cuda_host_shim.h"),
                 "-I", SOURCE_DIR, "-I", INCLUDE_DIR, os.path.join(SOURCE_DIR, MAIN_SOURCE),
                 "-o", lib]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"host build of the CUDA kernels failed:\n{' '.join(cmd)}\n{res.stderr}")
    return lib


class HostKernels(KernelSet):
    def __init__(self, out_dir=None):
        super().__init__()
        self._tmp = None
        if out_dir is None:
            self._tmp = tempfile.TemporaryDirectory()
            out_dir = self._tmp.name
        self.lib = ctypes.CDLL(build_host_library(out_dir))
        self.launches = {}            # kernel name -> number of launches (tests read it)
        for name, sig in self.signatures.items():
            for suffix in ("_f", "_d"):
                fn = getattr(self.lib, name + suffix)
                fn.argtypes = [_CTYPES[c] for c in sig]
                fn.restype = None

    def address(self, a):
        return a.ctypes.data

    def _bind(self, fullname, n, sig, vals):
        fn = getattr(self.lib, fullname)
        types = [_CTYPES[c] for c in sig]

        def launch():
            self.launches[fullname] = self.launches.get(fullname, 0) + 1
            fn(*[ty(self.unpack(vals, k, c)) for k, (c, ty) in enumerate(zip(sig, types))])
        return launch

    def gemm(self, dtype):
        return RowGemm(functools.partial(column_major_gemm, np.dtype(dtype)), dtype)


def _view(dtype, address, shape, strides):
    """The array at ``address`` with ``shape`` and ``strides`` in elements."""
    if 0 in shape:
        return np.zeros(shape, dtype)
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
    buf = (ctypes.c_char * (span * dtype.itemsize)).from_address(address)
    flat = np.frombuffer(buf, dtype)
    return np.lib.stride_tricks.as_strided(flat, shape, [s * dtype.itemsize for s in strides])


def column_major_gemm(dtype, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    """cublas<t>gemm's contract on host memory (no transposes): column-major
    C[m,n] = alpha A[m,k] B[k,n] + beta C, alpha/beta read through their pointers. Refuses
    the leading dimensions cuBLAS refuses, so a wrong one fails here too."""
    assert transa == transb == 0
    if lda < max(1, m) or ldb < max(1, k) or ldc < max(1, m):
        raise ValueError(f"gemm: leading dimensions lda={lda} ldb={ldb} ldc={ldc} too small "
                         f"for m={m} n={n} k={k}")
    al, be = (_view(dtype, p, (1,), (1,))[0] for p in (alpha, beta))
    a = _view(dtype, A, (m, k), (1, lda))
    b = _view(dtype, B, (k, n), (1, ldb))
    c = _view(dtype, C, (m, n), (1, ldc))
    c[...] = al * (a @ b) + (be * c if be != 0 else 0)


class HostCupyOps:
    """Factory for the backend registry: ``CupyOps`` over NumPy arrays and ``HostKernels``
    (registered by conftest.py as backend "cupy_host")."""

    def __new__(cls):
        import numpy
        from fastlstm.backends.cupy_ops import CupyOps
        return CupyOps(xp=numpy, kernels=HostKernels())
