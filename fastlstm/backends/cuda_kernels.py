"""The fused CUDA kernels of the cupy backend: their source, signatures and launcher.

The kernels live in ``cuda/rnn_kernels.cu`` (body ``cuda/rnn_kernels_impl.cuh``) and share
``fastlstm/include/gates_math.h`` with the CPU kernels. Their parameter lists are read from the
source itself, so the launcher cannot drift from the kernels: each argument is converted to the
exact C type the kernel declares (``long long``, ``int``, ``double`` or a pointer to a
contiguous array of the call's dtype) before the launch.

``KernelSet`` does the checking and conversion; ``CudaKernels`` compiles the module with CuPy
(NVRTC) on first use and launches on the GPU. The test suite runs the same source compiled for
the host through another ``KernelSet`` (``tests/cuda_host.py``).

A time loop launches its kernels through ``KernelSet.steps`` and its recurrent products through
``KernelSet.gemm``: arguments are checked and converted once per call, and each step only adds
row offsets to addresses. Launching through CuPy's array API instead (a view, a ``matmul`` and a
checked launch per step) costs far more host time per step than the GPU's work
(bench/RESULTS.md, "Numbers behind choices").
"""
from __future__ import annotations

import os
import re

import numpy as np

__all__ = ["KernelSet", "CudaKernels", "At", "Steps", "RowGemm", "SOURCE_DIR", "INCLUDE_DIR",
           "kernel_source", "expanded_source", "parse_signatures"]

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
        self.steps(name, dtype, n, *args)(0, 0)

    def steps(self, name, dtype, n, *args):
        """``run(s, t)``: launch ``name`` with ``At(array, "s"/"t")`` arguments replaced by
        row s or t of their array. Everything is checked and packed here, once: the
        arguments' values sit in one 8-byte slot each (``Steps``), and a launch only writes
        the per-step addresses into their slots."""
        sig, suffix = self._signature(name, dtype, len(args) + 1)
        dtype = np.dtype(dtype)
        if int(n) <= 0:
            return Steps(None, None, [])
        vals, per, keep = np.zeros(len(sig), np.uint64), [], []
        for k, (code, a) in enumerate(zip(sig, (n,) + args)):
            if isinstance(a, At):
                per.append((k, self._rows(name, k, code, a.array, dtype), a.by == "s"))
                keep.append(a.array)
            else:
                self._pack(vals, k, code, self._convert(name, k, code, a, dtype))
                keep.append(a)
        return Steps(self._bind(name + suffix, int(n), sig, vals), vals, per, keep)

    def gemm(self, dtype):  # pragma: no cover - implemented by subclasses
        """A ``RowGemm`` for ``dtype`` on this kernel set's arrays' addresses."""
        raise NotImplementedError

    def address(self, a):  # pragma: no cover - implemented by subclasses
        """The address of ``a``'s first element."""
        raise NotImplementedError

    def _bind(self, fullname, n, sig, vals):  # pragma: no cover - implemented by subclasses
        """A function of no arguments launching ``fullname`` over ``n`` elements with the
        argument values in ``vals`` as they are at the launch (``unpack`` reads them)."""
        raise NotImplementedError

    def _signature(self, name, dtype, nargs):
        sig = self.signatures.get(name)
        if sig is None:
            raise KeyError(f"no CUDA kernel named {name!r}; have {sorted(self.signatures)}")
        if nargs != len(sig):
            raise TypeError(f"kernel {name}: expected {len(sig)} arguments, got {nargs}")
        dtype = np.dtype(dtype)
        if dtype == np.float32:
            return sig, "_f"
        if dtype == np.float64:
            return sig, "_d"
        raise TypeError(f"kernel {name}: expected float32 or float64, got {dtype}")

    def _rows(self, name, k, code, a, dtype):
        """(address of row 0, bytes between rows, rows) of a per-step argument, whose rows
        must each be C-contiguous arrays of the kernel's type."""
        if not isinstance(a, self.array_types) or a.ndim < 1:
            raise TypeError(f"kernel {name}: argument {k} must be an array of rows, got "
                            f"{type(a).__name__}")
        want = (np.dtype(np.uint8), np.dtype(bool)) if code == "m" else (np.dtype(dtype),)
        inner, contiguous = a.itemsize, True
        for size, stride in zip(reversed(a.shape[1:]), reversed(a.strides[1:])):
            contiguous &= size == 1 or stride == inner
            inner *= size
        if code not in "pm" or a.dtype not in want or not contiguous:
            raise TypeError(f"kernel {name}: argument {k} must have C-contiguous {want[0]} "
                            f"rows, got {a.dtype} with strides {a.strides}")
        return (self.address(a) if a.size else 0), a.strides[0], a.shape[0]

    def _convert(self, name, k, code, a, dtype):
        """The value of argument ``k``: a number of the parameter's C type, or the address
        of a C-contiguous array of the call's dtype (uint8/bool for masks)."""
        if code == "l":
            return int(np.int64(a))
        if code == "i":
            return int(np.int32(a))
        if code == "d":
            return float(np.float64(a))
        if not isinstance(a, self.array_types):
            raise TypeError(f"kernel {name}: argument {k} must be an array, got {type(a).__name__}")
        want = (np.dtype(np.uint8), np.dtype(bool)) if code == "m" else (dtype,)
        if a.dtype not in want or not a.flags.c_contiguous:
            raise TypeError(f"kernel {name}: argument {k} must be a C-contiguous "
                            f"{want[0]} array, got {a.dtype} with strides {a.strides}")
        return self.address(a)

    @staticmethod
    def _pack(vals, k, code, value):
        """Argument k's value into slot k as the kernel reads it (little-endian: an int
        in the slot's first 4 bytes)."""
        if code == "l":
            vals.view(np.int64)[k] = value
        elif code == "i":
            vals.view(np.int32)[2 * k] = value
        elif code == "d":
            vals.view(np.float64)[k] = value
        else:
            vals[k] = value

    @staticmethod
    def unpack(vals, k, code):
        """The value in slot k, as ``_pack`` wrote it."""
        if code == "l":
            return int(vals.view(np.int64)[k])
        if code == "i":
            return int(vals.view(np.int32)[2 * k])
        if code == "d":
            return float(vals.view(np.float64)[k])
        return int(vals[k])


class At:
    """A per-step argument of ``KernelSet.steps``: row ``s`` or ``t`` (``by``) of ``array``."""

    __slots__ = ("array", "by")

    def __init__(self, array, by):
        if by not in ("s", "t"):
            raise ValueError(f"At: by must be 's' or 't', got {by!r}")
        self.array, self.by = array, by


class Steps:
    """One kernel's launches over the steps of a loop (``KernelSet.steps``)."""

    __slots__ = ("_launch", "_vals", "_per", "_keep")

    def __init__(self, launch, vals, per, keep=()):
        self._launch, self._vals, self._per = launch, vals, per
        self._keep = keep      # the arrays behind the addresses live as long as the launches

    def __call__(self, s, t):
        if self._launch is None:
            return
        vals = self._vals
        for k, (address, stride, rows), by_s in self._per:
            i = s if by_s else t
            if not 0 <= i < rows:      # a wrong index would be an illegal address
                raise IndexError(f"step row {i} out of range for {rows} rows (argument {k})")
            vals[k] = address + i * stride
        self._launch()


class RowGemm:
    """Row-major ``C[M,N] = A[M,K] @ B[K,N]`` on addresses, with leading dimensions in
    elements, through a column-major GEMM (cuBLAS's convention, signature of ``cublasSgemm``
    with ``alpha``/``beta`` host pointers). Row-major C is column-major C^T = B^T A^T, so the
    operands swap and nothing is transposed."""

    def __init__(self, cm_gemm, dtype):
        self._gemm = cm_gemm
        self._scalars = np.array([1, 0], dtype)          # alpha, beta (kept alive here)
        self._one = self._scalars.ctypes.data
        self._zero = self._one + self._scalars.itemsize

    def __call__(self, M, N, K, a, lda, b, ldb, c, ldc):
        if M <= 0 or N <= 0:
            return
        self._gemm(0, 0, N, M, K, self._one, b, max(ldb, 1), a, max(lda, 1), self._zero, c,
                   max(ldc, 1))


_SCALAR_TYPES = {"l": np.int64, "i": np.int32, "d": np.float64, "p": np.uint64, "m": np.uint64}


class CudaKernels(KernelSet):
    """The kernels compiled by CuPy (NVRTC) for the current GPU on first use, launched
    through the driver's cuLaunchKernel on the packed argument slots (``launch_path``)."""

    block = 256
    launch_path = None

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

    def _bind(self, fullname, n, sig, vals):
        fn = self._functions.get(fullname)
        if fn is None:
            fn = self._functions[fullname] = self.module().get_function(fullname)
        grid, block = min((n + self.block - 1) // self.block, 65535), self.block
        fptr = getattr(getattr(fn, "kernel", None), "ptr", None)     # the CUfunction
        launch = getattr(self.cupy.cuda.driver, "launchKernel", None)
        if not isinstance(fptr, int) or launch is None:
            self.launch_path = "RawKernel"    # CuPy without these: its own (slower) launch
            types = [_SCALAR_TYPES[c] for c in sig]
            return lambda: fn((grid,), (block,), tuple(
                ty(self.unpack(vals, k, c)) for k, (c, ty) in enumerate(zip(sig, types))))
        self.launch_path = "driver"
        # cuLaunchKernel takes a pointer to each argument's value and copies the values at
        # the launch, so the slots can change before the next one.
        params = vals.ctypes.data + 8 * np.arange(len(sig), dtype=np.uint64)
        stream, pptr = self.cupy.cuda.get_current_stream().ptr, params.ctypes.data

        def run(keep=(fn, vals, params)):
            launch(fptr, grid, 1, 1, block, 1, 1, 0, stream, pptr, 0)
        return run

    def address(self, a):
        return a.data.ptr

    def gemm(self, dtype):
        """cuBLAS through CuPy's bindings, on CuPy's handle for this device (which CuPy
        binds to the current stream at each call), in host pointer mode for alpha/beta."""
        try:
            from cupy_backends.cuda.libs import cublas
        except ImportError:       # CuPy < 9
            from cupy.cuda import cublas
        handle = self.cupy.cuda.device.get_cublas_handle()
        cublas.setPointerMode(handle, getattr(cublas, "CUBLAS_POINTER_MODE_HOST", 0))
        fn = cublas.sgemm if np.dtype(dtype) == np.float32 else cublas.dgemm
        return RowGemm(lambda *a: fn(handle, *a), dtype)
