"""Threads: one setting for fastlstm's kernels.

The LSTM, GRU and SimpleRNN kernels parallelise themselves (OpenMP) over independent slices —
batch rows in the time loops (rows never interact inside a recurrence, so no barrier per
step), row or column slices of the large products — and call BLAS single-threaded inside, as
scikit-learn's KMeans does; the streaming step splits its products at batch 1. One thread
pool then owns the cores: BLAS's idle workers spin for a while after each call and would
fight OpenMP's threads for the same cores.

The kernels keep no thread state of their own: every call takes the thread count and the
product policy as an argument (``KernelSettings``, which ``fastlstm/backends/cpu_ops.py``
passes down), as scikit-learn's kernels take ``n_threads``.
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


# More threads than this is a mistake, not a machine (each costs a stack in OpenMP's pool).
MAX_THREADS = 1024


class KernelSettings:
    """What every kernel call takes besides its arrays (see products.pxd: Settings).

    threads: threads of the kernels' own parallel loops. policy: the per-step products on
    0 the automatic choice, 1 BLAS, 2 our kernel (tests and benchmarks). The rest are the
    thresholds of the kernels' choices, which tests set small to reach every path; why each
    default is what it is: bench/RESULTS.md, "Kernel thresholds". pipe_min_macs,
    cols_min_bytes and gemv_rows are calibrated on the machine at first use
    (fastlstm.calibration; FASTLSTM_CALIBRATE=0 keeps these defaults)."""

    __slots__ = ("threads", "policy", "parallel_min_macs", "pipe_steps", "pipe_min_macs",
                 "direct_rows", "projections_on_blas", "cols_min_bytes", "infer_z_bytes",
                 "infer_min_rows", "gemv_rows", "q_split_min_bytes", "q_cols_min_bytes",
                 "calibrated_for", "fixed")

    def __init__(self):
        self.threads = 1
        self.policy = 0
        # Below this much work the kernels stay on one thread: each parallel region costs a
        # wake-up of the other threads.
        self.parallel_min_macs = float(1 << 24)
        # A forward pass of a few rows (one thread's time loop) projects its input beside
        # the loop, on a second thread, pipe_steps steps at a time, from pipe_min_macs of
        # projection work.
        self.pipe_steps = 16
        self.pipe_min_macs = float(1 << 20)
        # An input projection of fewer rows reads W in place: packing W first costs more.
        self.direct_rows = 32
        # The gradients' many-row products on BLAS when its kernels are AVX-512 ones.
        self.projections_on_blas = False
        # One-row LSTM inference splits the units over the threads from this size of U.
        self.cols_min_bytes = 512 << 10
        # Inference projects this much of Z at a time (a thread's share stays in its L2),
        # but at least infer_min_rows rows (each packed block of W serves a few hundred).
        self.infer_z_bytes = 2 << 20
        self.infer_min_rows = 512
        # One-row products (the streaming step, short sequences) read rows of 1 KiB and more
        # of U one a pass (1) or eight a pass (8): the same bits, the faster way by CPU.
        self.gemv_rows = 1
        # Quantized (int8/bfloat16) sequences whose time loop runs on one thread split each
        # step's product with U over the threads from this size of U (bench/RESULTS.md,
        # "Reduced precision").
        self.q_split_min_bytes = 2 << 20
        # ... and one-row quantized LSTM inference splits its units over the threads, with a
        # barrier per step, from this size of U.
        self.q_cols_min_bytes = 1 << 20
        # gemv_rows, pipe_min_macs and cols_min_bytes depend on the CPU: fastlstm.calibration
        # times both ways at the first call for each thread count (calibrated_for: the count
        # they were set for, -1 none yet) and sets those no setter fixed (fixed: names).
        self.calibrated_for = -1
        self.fixed = set()


_settings = KernelSettings()


def kernel_settings() -> KernelSettings:
    """The settings the compiled kernels run with (the backend passes them to each call),
    calibrated for their thread count first (fastlstm.calibration: once per machine)."""
    if _settings.calibrated_for != _settings.threads:
        from . import calibration
        calibration.apply(_settings)
    return _settings


def _check(n):
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"n: expected an integer number of threads from 1 to {MAX_THREADS}, "
                         f"got {n!r}")


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
    return _settings.threads


def set_loop_threads(n: int) -> None:
    """Only the kernels' own parallel loops (BLAS threads unchanged)."""
    _check(n)
    _set_kernel_threads(n)


def _set_kernel_threads(n: int, parallel_min_macs: float = -1) -> None:
    """Threads of the kernels' loops, and with parallel_min_macs >= 0 the smallest product
    they split over them (tests set 0)."""
    _check(n)
    _settings.threads = n
    if parallel_min_macs >= 0:
        _settings.parallel_min_macs = float(parallel_min_macs)


# -- the kernels' thresholds, for tests and benchmarks (the extensions re-export them) ----
def get_parallel_min_macs() -> float:
    """The smallest product (multiply-adds) the kernels split over threads."""
    return _settings.parallel_min_macs


def set_recurrent_matmul(which: str) -> None:
    """'auto' (default), 'blas' or 'own': the per-step products."""
    try:
        _settings.policy = {"auto": 0, "blas": 1, "own": 2}[which]
    except (KeyError, TypeError):
        raise ValueError(f"which: expected 'auto', 'blas' or 'own', got {which!r}") from None


def set_direct_rows(rows: int) -> None:
    """Input projections of fewer rows read W in place instead of packing it."""
    _settings.direct_rows = max(0, int(rows))


def set_pipeline(steps: int, min_macs: float = 1 << 20) -> None:
    """Steps a block of the projection beside a few-row forward loop, and the least
    projection work (multiply-adds) for it; min_macs < 0 turns it off. Fixes the threshold:
    calibration (fastlstm.calibration) no longer sets it."""
    _settings.pipe_steps = max(1, int(steps))
    _settings.pipe_min_macs = float(min_macs) if min_macs >= 0 else 1e300
    _settings.fixed.add("pipe_min_macs")


def set_projection_blas(on: bool) -> None:
    """Run the gradients' many-row products (input and weight gradients) on BLAS (a little
    faster when its kernels are AVX-512 ones); the input projection stays on ours."""
    _settings.projections_on_blas = bool(on)


def set_cols_min_bytes(nbytes: int) -> None:
    """Recurrent kernel size from which one-row LSTM inference splits the units. Fixes the
    threshold: calibration (fastlstm.calibration) no longer sets it."""
    _settings.cols_min_bytes = max(0, int(nbytes))
    _settings.fixed.add("cols_min_bytes")


def set_q_split_min_bytes(nbytes: int) -> None:
    """Size of a quantized U from which a one-thread time loop splits each step's product
    over the threads (0: always; fl.quantize models)."""
    _settings.q_split_min_bytes = max(0, int(nbytes))


def set_q_cols_min_bytes(nbytes: int) -> None:
    """Size of a quantized U from which one-row LSTM inference splits its units over the
    threads (fl.quantize models)."""
    _settings.q_cols_min_bytes = max(0, int(nbytes))


def set_gemv_rows(rows: int) -> None:
    """Rows of the weights a one-row product reads a pass over its output, 1 or 8 (rows of
    1 KiB and more; the same bits either way). Fixes it: calibration (fastlstm.calibration)
    no longer sets it."""
    if rows not in (1, 8):
        raise ValueError(f"rows: expected 1 or 8, got {rows!r}")
    _settings.gemv_rows = rows
    _settings.fixed.add("gemv_rows")


def set_inference_chunk_bytes(nbytes: int, min_rows: int = 512) -> None:
    """How much of the input projection inference computes at a time, and its least number
    of rows."""
    _settings.infer_z_bytes = max(1, int(nbytes))
    _settings.infer_min_rows = max(1, int(min_rows))


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
    _set_kernel_threads(min(_cores(), MAX_THREADS))
    arch = " ".join(str(c.architecture).lower() for c in _blas()
                    if getattr(c, "architecture", None))
    set_projection_blas(any(a in arch for a in _AVX512_CORES))
