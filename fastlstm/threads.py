"""Thread control: one setting for the BLAS that the kernels call (scipy's OpenBLAS/MKL).

The kernels release the GIL for whole sequences and parallelise through BLAS; running more
BLAS threads than cores (or beside another busy thread pool) only slows them down.
"""
from __future__ import annotations

import os

_limiter = None


def set_num_threads(n: int) -> None:
    """Use ``n`` BLAS threads in fastlstm's kernels (process-wide)."""
    global _limiter
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer number of threads, got {n!r}")
    from threadpoolctl import threadpool_limits
    if _limiter is not None:
        _limiter.restore_original_limits()
    _limiter = threadpool_limits(limits=n, user_api="blas")


def set_loop_threads(n: int) -> None:
    """Split the batch rows of the compiled time loops over up to ``n`` OpenMP threads
    (default 1). Rows never interact inside a recurrence, so each thread runs the whole
    sequence for its rows with no barrier per step. Off by default: measured on 2 cores,
    OpenMP threads beside BLAS's own spinning threads lose more than they gain unless BLAS
    runs on one thread (``set_num_threads(1)``), e.g. several processes serving in parallel."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer number of threads, got {n!r}")
    _set_kernel_threads(n)


def _set_kernel_threads(n: int) -> None:
    import importlib
    for name in ("_lstm", "_gru", "_simple_rnn"):
        try:
            mod = importlib.import_module(f"fastlstm.{name}")
        except ImportError:
            continue
        if hasattr(mod, "set_threads"):
            mod.set_threads(n)



def get_num_threads() -> int:
    """Threads fastlstm's kernels run with (the largest of the loaded BLAS pools)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.cpu_count() or 1
    pools = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(pools) if pools else 1
