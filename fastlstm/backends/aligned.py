"""Arrays that start on a cache-line boundary: the one-row products of a streaming step load
and store whole 64-byte vectors, and a vector split over two lines costs two loads
(measured in bench/RESULTS.md, "Numbers behind choices"). The layers keep their weights so
and the step plans their buffers."""
from __future__ import annotations

import numpy as np

ALIGNMENT = 64


def aligned_empty(shape, dtype):
    """A new C-contiguous array of this shape and dtype whose data start on an ALIGNMENT
    boundary (a view of a slightly larger byte buffer)."""
    dt = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    buf = np.empty(nbytes + ALIGNMENT, np.uint8)
    off = (-buf.ctypes.data) % ALIGNMENT           # Python's %: never negative
    return buf[off:off + nbytes].view(dt).reshape(shape)
