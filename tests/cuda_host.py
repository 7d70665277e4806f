"""The CUDA kernels of the cupy backend, compiled for the host and launched through ctypes.

``HostKernels`` is a ``KernelSet``: the cupy backend's orchestration (``CupyOps`` with
``xp=numpy``) runs unchanged on top of it, so every kernel and every launch argument is
exercised without a GPU. Needs a C++ compiler (the one that builds the extension).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sysconfig
import tempfile

from fastlstm.backends.cuda_kernels import (INCLUDE_DIR, MAIN_SOURCE, SOURCE_DIR, KernelSet)

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

    def _pointer(self, a):
        return ctypes.c_void_p(a.ctypes.data)

    def _launch(self, fullname, n, args):
        self.launches[fullname] = self.launches.get(fullname, 0) + 1
        getattr(self.lib, fullname)(*args)


class HostCupyOps:
    """Factory for the backend registry: ``CupyOps`` over NumPy arrays and ``HostKernels``
    (registered by conftest.py as backend "cupy_host")."""

    def __new__(cls):
        import numpy
        from fastlstm.backends.cupy_ops import CupyOps
        return CupyOps(xp=numpy, kernels=HostKernels())
