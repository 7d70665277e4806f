"""Buffers the compiled kernels keep per thread between calls (packed weights, inference's
chunk of Z, staged rows), for every cell: fresh ones cost a page fault per 4 KiB at every
call (bench/RESULTS.md, "Kernel thresholds"). Only for buffers a call does not
return."""
import threading

import numpy as np

# Past this size a buffer is allocated per call, not kept.
WORKSPACE_MAX_BYTES = 64 << 20
_local = threading.local()


def workspace(slot, n, dtype):
    """n elements of this thread's buffer `slot` of dtype, kept for the next call (a new
    array past WORKSPACE_MAX_BYTES)."""
    dt = np.dtype(dtype)
    if n * dt.itemsize > WORKSPACE_MAX_BYTES:
        return np.empty(n, dt)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get((slot, dt.char))
    if buf is None or buf.shape[0] < n:
        buf = np.empty(max(n, 1), dt)
        buffers[(slot, dt.char)] = buf
    return buf[:n]


def workspace_bytes():
    """Bytes this thread's kept buffers hold."""
    return sum(b.nbytes for b in getattr(_local, "buffers", {}).values())


def clear_workspace():
    """Drop this thread's kept buffers."""
    _local.buffers = {}
