"""Buffers the compiled kernels keep between calls (packed weights, inference's chunk of Z,
staged rows, the time loop's scratch), for every cell: fresh ones cost a page fault per
4 KiB at every call (bench/RESULTS.md, "Kernel thresholds"). Only for buffers a call does
not return.

Each calling thread has its own buffers (calls on several threads at once never share one),
and all threads' kept buffers together stay under one limit (``set_workspace_limit``,
default ``DEFAULT_LIMIT_BYTES``): past it the least recently used buffers, of any thread, are
dropped. Dropping a buffer only forgets it: every call holds a reference to each buffer it
uses until it returns (the kernels hand their pointers' arrays back to their caller's
frame), so the memory of a dropped buffer is freed when its last user is done, never while
a kernel runs on it. A buffer larger than the limit (or than ``WORKSPACE_MAX_BYTES``) is
allocated for the call and not kept; a thread that ends drops its buffers.

A call that finds its buffer kept takes no lock; the lock guards adding and dropping
buffers, no kernel runs under it, and buffers are allocated and freed outside it.
"""
import itertools
import threading
import weakref

import numpy as np

# Past this size a buffer is allocated per call, not kept (whatever the limit).
WORKSPACE_MAX_BYTES = 64 << 20
# All threads' kept buffers together, unless set_workspace_limit says otherwise.
DEFAULT_LIMIT_BYTES = 256 << 20

# Each thread's kept buffers are its own dict {(slot, dtype char): [array, last use]}: a
# call that finds its buffer reads and stamps it without the lock. Entries are added and
# removed (by any thread: eviction) only under the lock, which also guards _kept_bytes.
_lock = threading.RLock()
_threads = {}                       # thread token -> that thread's dict
_kept_bytes = 0
_limit = DEFAULT_LIMIT_BYTES
_clock = itertools.count()          # last-use stamps: a larger one is more recent
_local = threading.local()          # .kept: this thread's dict; .mark: see _register
_tokens = itertools.count(1)
_watch = {}                         # token -> weakref whose callback reports the thread ended
_ended = []                         # tokens of ended threads, dropped at the next miss


class _ThreadMark:
    """Held only by a thread's threading.local: freed when the thread ends."""
    __slots__ = ("__weakref__",)


def _register():
    """This thread's dict of kept buffers, made at its first call."""
    tok = next(_tokens)
    mine = {}
    mark = _ThreadMark()
    # The callback runs as the thread ends, in whatever state (at exit too): it only
    # appends, to a list it holds itself.
    ref = weakref.ref(mark, lambda _ref, tok=tok, ended=_ended: ended.append(tok))
    with _lock:
        _watch[tok] = ref
        _threads[tok] = mine
    _local.mark, _local.kept = mark, mine
    return mine


def _drop(mine, keys):
    """Forget these keys of a thread's kept buffers (lock held); returns the entries, to be
    released after the lock."""
    global _kept_bytes
    gone = []
    for key in keys:
        entry = mine.pop(key, None)
        if entry is not None:
            _kept_bytes -= entry[0].nbytes
            gone.append(entry)
    return gone


def _reap():
    """Forget the buffers of threads that ended (lock held); returns them."""
    gone = []
    while _ended:
        tok = _ended.pop()
        _watch.pop(tok, None)
        mine = _threads.pop(tok, None)
        if mine is not None:
            gone += _drop(mine, list(mine))
    return gone


def _evict(incoming):
    """Forget least recently used buffers, of any thread, until `incoming` more bytes fit
    under the limit (lock held); returns them."""
    if _kept_bytes + incoming <= _limit:
        return []
    by_age = sorted((entry[1], tok, key) for tok, mine in _threads.items()
                    for key, entry in list(mine.items()))
    gone = []
    for _, tok, key in by_age:
        if _kept_bytes + incoming <= _limit:
            break
        gone += _drop(_threads[tok], [key])
    return gone


def workspace(slot, n, dtype):
    """n elements of this thread's buffer `slot` of dtype, kept for its next call while the
    limit allows (a new array past WORKSPACE_MAX_BYTES or the limit).

    The caller must hold the returned array (or an array or memoryview over it) for as
    long as it uses the memory, pointers taken from it included: another thread may drop
    the kept buffer at any time, and only the caller's reference then keeps it alive."""
    dt = np.dtype(dtype)
    mine = getattr(_local, "kept", None)
    if mine is not None:            # the common case: this thread's buffer, large enough
        entry = mine.get((slot, dt.char))
        if entry is not None and entry[0].shape[0] >= n:
            entry[1] = next(_clock)
            return entry[0][:n]
    size = n if n > 0 else 1
    buf = np.empty(size, dt)        # allocated outside the lock
    if size * dt.itemsize <= min(WORKSPACE_MAX_BYTES, _limit):
        _keep(_register() if mine is None else mine, (slot, dt.char), buf)
    return buf[:n]


def _keep(mine, key, buf):
    """buf kept as this thread's `key`, in place of the smaller one it had."""
    global _kept_bytes
    with _lock:
        gone = _reap()
        gone += _drop(mine, [key])
        if buf.nbytes <= _limit:                    # (the limit may have changed meanwhile)
            gone += _evict(buf.nbytes)
            mine[key] = [buf, next(_clock)]
            _kept_bytes += buf.nbytes
    del gone                        # freed here, outside the lock (unless still in use)


def set_workspace_limit(nbytes):
    """Keep at most ``nbytes`` bytes of kernel buffers between calls, all threads together
    (0: keep none). Lowering it drops the least recently used buffers at once; a call
    running on one of them keeps it until it returns."""
    global _limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
        raise TypeError(f"nbytes: expected an integer number of bytes, got "
                        f"{type(nbytes).__name__} {nbytes!r}")
    if nbytes < 0:
        raise ValueError(f"nbytes: expected a number of bytes >= 0, got {nbytes}")
    with _lock:
        _limit = int(nbytes)
        gone = _evict(0)
    del gone


def get_workspace_limit():
    """The limit on kept kernel buffers, in bytes, all threads together."""
    return _limit


def workspace_bytes(all_threads=False):
    """Bytes of kept buffers: this thread's, or with ``all_threads`` every thread's."""
    with _lock:
        gone = _reap()
        if all_threads:
            total = _kept_bytes
        else:
            total = sum(e[0].nbytes for e in list(getattr(_local, "kept", {}).values()))
    del gone
    return total


def clear_workspace(all_threads=False):
    """Drop this thread's kept buffers, or with ``all_threads`` every thread's."""
    with _lock:
        gone = _reap()
        dicts = list(_threads.values()) if all_threads else [getattr(_local, "kept", {})]
        for mine in dicts:
            gone += _drop(mine, list(mine))
    del gone
