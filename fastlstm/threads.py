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


def get_num_threads() -> int:
    """BLAS threads fastlstm's kernels run with (the largest of the loaded BLAS pools)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.cpu_count() or 1
    pools = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(pools) if pools else 1
