"""Sequences of different lengths without compute on padding: the packed layout.

A prefix mask (each row's steps ``t < length``, the padding after them: what
``Masking``/``Embedding(mask_zero=True)`` give post-padded rows) or explicit
``sequence_lengths`` let a compiled kernel run each row only up to its length, as cuDNN's
packed layout does: rows are sorted by length, so at each step the rows still running are a
prefix, and the batch shrinks as rows finish. The results are those of the masked path
(``fastlstm/backends/oracle/__init__.py``: a masked step carries the state and repeats the
last output, zero before the first valid step), which this module rebuilds around the
kernel's packed outputs.

Layout (what ``src_c/packed.pxi`` reads): the rows are dealt, longest first, round-robin to
``n`` groups (one per thread of the time loop, so that each gets a fair share of the work),
each group a block of the sorted batch, longest first. Packed arrays hold the running rows
of time 0, then those of time 1, ..., each time's rows group by group: N = sum(lengths)
rows in all. ``start[t*n+k]``, ``cnt[t*n+k]``: where group k's running rows of time t lie
and how many there are.
"""
from __future__ import annotations

import numpy as np

__all__ = ["prefix_lengths", "check_lengths", "lengths_mask", "worth_packing", "Packing"]

#: The least work (multiply-adds of the skipped steps' products) for which a batch is packed:
#: below it the layout's own cost (some 0.1 ms of NumPy work a call) outweighs what it saves,
#: and the masked path runs. Tests set 0 to take the packed pass at every size.
PACK_MIN_MACS = float(1 << 21)


def prefix_lengths(mask):
    """The lengths [B] of a [T,B] mask that is a prefix mask (True exactly for ``t < length``
    in every row), else None."""
    m = np.asarray(mask, bool)
    lengths = m.sum(0)
    if not np.array_equal(m, np.arange(m.shape[0])[:, None] < lengths[None, :]):
        return None
    return lengths.astype(np.int64)


def check_lengths(name, lengths, T, B):
    """``sequence_lengths`` as int64 [B] with 0 <= length <= T, or a clear error."""
    try:
        a = np.asarray(lengths)
    except Exception as exc:
        raise TypeError(f"{name}: expected an integer array of shape ({B},), "
                        f"got {type(lengths).__name__}") from exc
    if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and a.size
                                         and np.all(a == np.round(a))):
        raise TypeError(f"{name}: expected an integer array of shape ({B},), got dtype "
                        f"{a.dtype}")
    if a.shape != (B,):
        raise ValueError(f"{name}: expected shape ({B},), got {tuple(a.shape)}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > T):
        raise ValueError(f"{name}: expected lengths in [0, {T}], got values from {a.min()} "
                         f"to {a.max()}")
    return a


def worth_packing(lengths, T, I, H, G):
    """Whether to pack a batch with these lengths (an input of I features, H units, G gate
    columns): rows of a batch of one run the masked path (which splits one row's units
    over the threads); else when the skipped steps' products reach PACK_MIN_MACS."""
    B = len(lengths)
    skipped = T * B - int(np.sum(lengths))
    return B > 1 and skipped > 0 and float(skipped) * (I + H) * G >= PACK_MIN_MACS


def lengths_mask(lengths, T):
    """The [T,B] prefix mask of ``lengths``."""
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


class Packing:
    """The packed layout of one batch (see the module docstring).

    perm [B]: the original row at each sorted position; rows [N]: the original batch row of
    each packed row; times [N]: its time; kernel: the layout as the kernels take it
    (``Packed(T, n, start, cnt, gb0)``)."""

    def __init__(self, lengths, T, groups, packed_type):
        lengths = np.asarray(lengths, np.int64)
        B = lengths.shape[0]
        n = max(1, min(int(groups), B))
        order = np.argsort(-lengths, kind="stable")
        parts = [order[k::n] for k in range(n)]
        self.perm = np.concatenate(parts)
        self.gb0 = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int32)
        self.T, self.B, self.n = T, B, n
        self.lengths = lengths
        sorted_len = lengths[self.perm]
        valid = np.arange(T)[:, None] < sorted_len[None, :]           # [T,B], sorted order
        cnt = np.stack([valid[:, self.gb0[k]:self.gb0[k + 1]].sum(1) for k in range(n)], 1)
        flat = cnt.reshape(-1)
        start = np.concatenate([[0], np.cumsum(flat)[:-1]]).astype(np.int64)
        self.N = int(flat.sum())
        times, pos = np.nonzero(valid)                                 # packed order
        self.times = times
        self.rows = self.perm[pos]
        self.kernel = packed_type(T, n, start, flat.astype(np.int32), self.gb0)

    def steps(self, go_backwards):
        """The step index of each packed row (its time, reversed with go_backwards)."""
        return self.T - 1 - self.times if go_backwards else self.times

    def pack(self, a, go_backwards=False, by_step=False):
        """Rows of a time-major [T,B,F] array (indexed by step when by_step) -> [1,N,F]."""
        t = self.steps(go_backwards) if by_step else self.times
        return np.ascontiguousarray(a[t, self.rows])[None]

    def sort(self, a):
        """A [B,...] array in the sorted order (a copy)."""
        return np.ascontiguousarray(a[self.perm])

    def unsort(self, a):
        """A [B,...] array from the sorted order back to the batch's."""
        out = np.empty_like(a)
        out[self.perm] = a
        return out

    def outputs(self, y_packed, h_T, go_backwards, return_sequences):
        """The masked path's outputs from the kernel's packed outputs [1,N,H] (by time) and
        the final states h_T [B,H] (batch order): a step past a row's end repeats its last
        output, a step before its first (go_backwards) is zero, and a row of length 0 has
        only zero outputs."""
        ran = (self.lengths > 0)[:, None]
        if not return_sequences:
            return np.where(ran, h_T, 0).astype(h_T.dtype)
        H = h_T.shape[1]
        if go_backwards:
            y = np.zeros((self.T, self.B, H), h_T.dtype)
        else:
            y = np.empty((self.T, self.B, H), h_T.dtype)
            y[...] = np.where(ran, h_T, 0)[None]
        y[self.steps(go_backwards), self.rows] = y_packed[0]
        return y

    def output_grads(self, dy, dh_T, go_backwards, return_sequences, B, H, dtype):
        """(dy packed [1,N,H] or None, dh_T [B,H] in batch order) for the kernel's backward:
        the gradients of outputs that repeat a row's final state (steps past its end; the
        last output) go to dh_T; those of zero outputs go nowhere."""
        dh = np.zeros((B, H), dtype) if dh_T is None else np.array(dh_T, dtype=dtype)
        if dy is None:
            return None, dh
        ran = (self.lengths > 0)[:, None]
        if not return_sequences:
            dh += np.where(ran, dy, 0)
            return None, dh
        if not go_backwards:
            past = np.arange(self.T)[:, None] >= self.lengths[None, :]     # [T,B]
            dh += np.where(ran, np.einsum("tb,tbh->bh", past.astype(dtype), dy), 0)
        return self.pack(dy, go_backwards, by_step=True).astype(dtype, copy=False), dh

    def unpack_inputs(self, dx_packed, I, dtype):
        """The input gradient [T,B,I] from the packed one (zero at padded steps)."""
        dx = np.zeros((self.T, self.B, I), dtype)
        dx[self.times, self.rows] = dx_packed.reshape(-1, I)
        return dx
