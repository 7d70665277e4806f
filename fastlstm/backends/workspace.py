"""Buffers the compiled kernels keep per thread between calls (packed weights, inference's
chunk of Z, staged rows), for every cell: fresh ones cost a page fault per 4 KiB at every
call (bench/RESULTS.md, "Kernel thresholds"). Only for buffers a call does not return.

Each thread has its own buffers (calls on several threads at once never share one), and
all threads' kept buffers together stay under one limit (``set_workspace_limit``, default
256 MiB): past it the least recently used buffers, of any thread, are dropped. Dropping only
forgets the buffer; a call still using it keeps its own reference, so the memory goes when
that call ends. A server with many threads thus keeps the buffers of its busiest ones.
"""
import collections
import threading

import numpy as np

# Past this size a buffer is allocated per call, not kept.
WORKSPACE_MAX_BYTES = 64 << 20
DEFAULT_LIMIT_BYTES = 256 << 20

_lock = threading.Lock()
_kept = collections.OrderedDict()     # (thread id, slot, dtype char) -> array, LRU first
_state = {"bytes": 0, "limit": DEFAULT_LIMIT_BYTES}


def set_workspace_limit(nbytes):
    """Keep at most ``nbytes`` of buffers between calls, all threads together (0: keep
    none). Lowering it drops the least recently used buffers at once."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
        raise ValueError(f"nbytes: expected a non-negative integer number of bytes, got "
                         f"{nbytes!r}")
    with _lock:
        _state["limit"] = int(nbytes)
        _evict(0)


def get_workspace_limit():
    """The limit on kept buffers, in bytes, all threads together."""
    return _state["limit"]


def _evict(incoming):
    """Drop least recently used buffers until `incoming` more bytes fit (lock held)."""
    while _kept and _state["bytes"] + incoming > _state["limit"]:
        _, buf = _kept.popitem(last=False)
        _state["bytes"] -= buf.nbytes


def workspace(slot, n, dtype):
    """n elements of this thread's buffer `slot` of dtype, kept for the next call while the
    limit allows (a new array past WORKSPACE_MAX_BYTES or the limit)."""
    dt = np.dtype(dtype)
    nbytes = max(n, 1) * dt.itemsize
    if nbytes > WORKSPACE_MAX_BYTES or nbytes > _state["limit"]:
        return np.empty(n, dt)
    key = (threading.get_ident(), slot, dt.char)
    with _lock:
        buf = _kept.get(key)
        if buf is not None and buf.shape[0] >= n:
            _kept.move_to_end(key)
            return buf[:n]
        if buf is not None:
            del _kept[key]
            _state["bytes"] -= buf.nbytes
        _evict(nbytes)
    buf = np.empty(max(n, 1), dt)         # outside the lock: other threads go on meanwhile
    with _lock:
        old = _kept.pop(key, None)
        if old is not None:
            _state["bytes"] -= old.nbytes
        _evict(nbytes)
        _kept[key] = buf
        _state["bytes"] += nbytes
    return buf[:n]


def workspace_bytes(all_threads=False):
    """Bytes of kept buffers: this thread's, or with ``all_threads`` every thread's."""
    if all_threads:
        return _state["bytes"]
    me = threading.get_ident()
    with _lock:
        return sum(b.nbytes for (t, _, _), b in _kept.items() if t == me)


def clear_workspace(all_threads=False):
    """Drop this thread's kept buffers, or with ``all_threads`` every thread's."""
    me = threading.get_ident()
    with _lock:
        for key in [k for k in _kept if all_threads or k[0] == me]:
            _state["bytes"] -= _kept.pop(key).nbytes
