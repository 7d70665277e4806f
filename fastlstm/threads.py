"""Threads: one setting for fastlstm's kernels.

The LSTM and GRU kernels parallelise themselves (OpenMP) over independent slices — batch
rows in the time loops (rows never interact inside a recurrence, so no barrier per step),
row or column slices of the large products — and call BLAS single-threaded inside, as
scikit-learn's KMeans does; the SimpleRNN kernel runs on one thread. One thread pool then
owns the cores: BLAS's idle workers spin for a while after each call and would fight
OpenMP's threads for the same cores.
"""
from __future__ import annotations

import contextlib
import os

_limiter = None
_blas_libs = None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer number of threads, got {n!r}")


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in fastlstm's kernels, process-wide. Also limits the BLAS libraries
    (NumPy's and SciPy's, through threadpoolctl) to ``n`` threads: the ``numpy`` backend and
    everything outside the compiled kernels use them; the kernels run BLAS single-threaded."""
    global _limiter
    _check(n)
    from threadpoolctl import threadpool_limits
    if _limiter is not None:
        _limiter.restore_original_limits()
    _limiter = threadpool_limits(limits=n, user_api="blas")
    _set_kernel_threads(n)


def get_num_threads() -> int:
    """Threads fastlstm's kernels run with."""
    from . import _lstm
    return _lstm.get_threads()


def set_loop_threads(n: int) -> None:
    """Only the kernels' own parallel loops (BLAS threads unchanged)."""
    _check(n)
    _set_kernel_threads(n)


def _set_kernel_threads(n: int) -> None:
    import importlib
    for name in ("_lstm", "_gru", "_simple_rnn", "_step"):
        try:
            mod = importlib.import_module(f"fastlstm.{name}")
        except ImportError:
            continue
        if hasattr(mod, "set_threads"):
            mod.set_threads(n)


def _blas(numpy: bool = False):
    """threadpoolctl controllers of the BLAS the kernels call (scipy's), or with ``numpy``
    of every BLAS loaded (NumPy's too), looked up once."""
    global _blas_libs
    if _blas_libs is None:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (load it before looking)
            from threadpoolctl import ThreadpoolController
            libs = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        except Exception:
            libs = []
        _blas_libs = {True: libs, False: [c for c in libs
                                          if "numpy" not in c.filepath.replace(os.sep, "/")]}
    return _blas_libs[numpy]


@contextlib.contextmanager
def single_threaded_blas(numpy: bool = False):
    """BLAS on one thread for the duration (about a microsecond to set and restore): scipy's,
    which the kernels call, and with ``numpy`` NumPy's too (its LAPACK: the orthogonal
    initializer's QR, whose idle workers would otherwise spin through a layer's first calls)."""
    libs = _blas(numpy)
    saved = [c.num_threads for c in libs]
    for c, n in zip(libs, saved):
        if n != 1:
            c.set_num_threads(1)
    try:
        yield
    finally:
        for c, n in zip(libs, saved):
            if n != 1:
                c.set_num_threads(n)


# OpenBLAS core types with AVX-512 kernels: there BLAS is a little faster than our packed GEMM
# on the gradients' many-row products (input and weight gradients); with AVX2 kernels ours is
# faster. The input projection stays on ours either way.
_AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5")


def init_threads() -> None:
    """At import: the kernels' loops use the cores this process may run on, and the
    gradients' many-row products go to BLAS when its kernels are AVX-512 ones."""
    _set_kernel_threads(_cores())
    arch = " ".join(str(c.architecture).lower() for c in _blas()
                    if getattr(c, "architecture", None))
    from . import _gru, _lstm, _simple_rnn
    on_blas = any(a in arch for a in _AVX512_CORES)
    for mod in (_lstm, _gru, _simple_rnn):
        mod.set_projection_blas(on_blas)
