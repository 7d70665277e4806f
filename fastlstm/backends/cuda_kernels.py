"""The fused CUDA kernels of the cupy backend: their source, signatures and launcher.

The kernels live in ``cuda/rnn_kernels.cu`` (body ``cuda/rnn_kernels_impl.cuh``) and share
``fastlstm/include/gates_math.h`` with the CPU kernels. Their parameter lists are read from the
source itself, so the launcher cannot drift from the kernels: each argument is converted to the
exact C type the kernel declares (``long long``, ``int``, ``double`` or a pointer to a
contiguous array of the call's dtype) before the launch.

``KernelSet`` does the checking and conversion; ``CudaKernels`` compiles the module with CuPy
(NVRTC) on first use and launches on the GPU. The test suite runs the same source compiled for
the host through another ``KernelSet`` (``tests/cuda_host.py``).
"""
from __future__ import annotations

import os
import re

import numpy as np

__all__ = ["KernelSet", "CudaKernels", "SOURCE_DIR", "INCLUDE_DIR", "kernel_source",
           "expanded_source", "parse_signatures"]

SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")
INCLUDE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "include")
MAIN_SOURCE = "rnn_kernels.cu"
BODY_SOURCE = "rnn_kernels_impl.cuh"

_INCLUDE_RE = re.compile(r'^#include\s+"([\w.]+)"[^\n]*$', re.M)
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+FN\((\w+)\)\s*\((.*?)\)\s*\{', re.S)
_TYPES = {"long long": "l", "int": "i", "double": "d"}


def kernel_source(name: str = MAIN_SOURCE) -> str:
    with open(os.path.join(SOURCE_DIR, name), encoding="utf-8") as f:
        return f.read()


def expanded_source() -> str:
    """rnn_kernels.cu with its local #includes written in: the one string CuPy compiles.

    CuPy caches compiled modules by their source text, so the headers must be part of it (an
    #include would let a stale binary survive a change of a header)."""
    def expand(match):
        name = match.group(1)
        for folder in (SOURCE_DIR, INCLUDE_DIR):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    return f"// ---- {name}\n" + _INCLUDE_RE.sub(expand, f.read())
        raise FileNotFoundError(f"{MAIN_SOURCE}: #include \"{name}\" not found in "
                                f"{SOURCE_DIR} or {INCLUDE_DIR}")
    return _INCLUDE_RE.sub(expand, kernel_source(MAIN_SOURCE))


def parse_signatures(body: str) -> dict:
    """{kernel: codes}, one code per parameter: l (long long), i (int), d (double),
    p (pointer to REAL), m (pointer to unsigned char: a mask)."""
    out = {}
    for name, params in _KERNEL_RE.findall(body):
        codes = []
        for p in params.split(","):
            p = " ".join(p.replace("const", " ").split())
            if "*" in p:
                codes.append("m" if p.startswith("unsigned char") else "p")
                continue
            ctype = p.rsplit(" ", 1)[0]
            if ctype not in _TYPES:
                raise ValueError(f"kernel {name}: parameter {p!r} has a type the launcher "
                                 "does not convert")
            codes.append(_TYPES[ctype])
        out[name] = "".join(codes)
    return out


class KernelSet:
    """Calls kernel ``name`` for ``dtype`` over ``n`` elements: ``ks(name, dtype, n, *args)``.

    ``args`` follow the kernel's parameter list after ``n``. Arrays must be C-contiguous, of
    the call's dtype (``uint8``/``bool`` for masks); flags may be bools.
    """

    array_types: tuple = (np.ndarray,)

    def __init__(self):
        self.signatures = parse_signatures(kernel_source(BODY_SOURCE))

    def __call__(self, name, dtype, n, *args):
        sig = self.signatures.get(name)
        if sig is None:
            raise KeyError(f"no CUDA kernel named {name!r}; have {sorted(self.signatures)}")
        args = (n,) + args
        if len(args) != len(sig):
            raise TypeError(f"kernel {name}: expected {len(sig)} arguments, got {len(args)}")
        dtype = np.dtype(dtype)
        if dtype == np.float32:
            suffix = "_f"
        elif dtype == np.float64:
            suffix = "_d"
        else:
            raise TypeError(f"kernel {name}: expected float32 or float64, got {dtype}")
        if int(n) <= 0:
            return
        conv = [self._convert(name, k, code, a, dtype) for k, (code, a) in
                enumerate(zip(sig, args))]
        self._launch(name + suffix, int(n), conv)

    def _convert(self, name, k, code, a, dtype):
        if code == "l":
            return np.int64(a)
        if code == "i":
            return np.int32(a)
        if code == "d":
            return np.float64(a)
        if not isinstance(a, self.array_types):
            raise TypeError(f"kernel {name}: argument {k} must be an array, got {type(a).__name__}")
        want = (np.dtype(np.uint8), np.dtype(bool)) if code == "m" else (dtype,)
        if a.dtype not in want or not a.flags.c_contiguous:
            raise TypeError(f"kernel {name}: argument {k} must be a C-contiguous "
                            f"{want[0]} array, got {a.dtype} with strides {a.strides}")
        return self._pointer(a)

    def _pointer(self, a):
        return a

    def _launch(self, fullname, n, args):  # pragma: no cover - implemented by subclasses
        raise NotImplementedError


class CudaKernels(KernelSet):
    """The kernels compiled by CuPy (NVRTC) for the current GPU on first use."""

    block = 256

    def __init__(self, cupy):
        super().__init__()
        self.cupy = cupy
        self.array_types = (cupy.ndarray,)
        self._module = None
        self._functions = {}

    def module(self):
        if self._module is None:
            self._module = self.cupy.RawModule(code=expanded_source(), options=("--std=c++14",))
        return self._module

    def _launch(self, fullname, n, args):
        fn = self._functions.get(fullname)
        if fn is None:
            fn = self._functions[fullname] = self.module().get_function(fullname)
        grid = min((n + self.block - 1) // self.block, 65535)
        fn((grid,), (self.block,), tuple(args))
