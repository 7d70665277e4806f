"""The gradient buffers every compiled backward starts from (one place for the masking rule)."""
import numpy as np


def state_grads(B, H, dtype, dy, dh_T, has_mask, return_sequences):
    """``(dh, dout)``: the gradient reaching the final state h_T, and with a mask the output
    gradient carried back over masked steps (None without a mask). The gradient of the last
    output alone (``return_sequences=False``) starts in ``dout`` when masked steps repeat an
    earlier output, else in ``dh`` since that output is h_T itself."""
    dh = np.zeros((B, H), dtype) if dh_T is None else np.array(dh_T, dtype=dtype, copy=True)
    dout = np.zeros((B, H), dtype) if has_mask else None
    if dy is not None and not return_sequences:
        if has_mask:
            dout += dy
        else:
            dh += dy
    return dh, dout


def row_strides(name, T, B, H, step, row, col, itemsize):
    """The strides in elements of a [T,B,H] array the kernels read row by row where it lies
    (dy in backward; x at inference): the last axis must be contiguous, the others may have
    any strides of whole elements (a transposed view of a [B,T,H] array, say). Strides of
    axes of length 1 are never used (0 here)."""
    if (H > 1 and col != itemsize) or (T > 1 and step % itemsize) or (B > 1 and row % itemsize):
        raise ValueError(f"{name}: expected its last axis contiguous and strides of whole "
                         f"{itemsize}-byte elements, got strides {(step, row, col)}")
    return (step // itemsize if T > 1 else 0), (row // itemsize if B > 1 else 0)


def states_and_outputs(T, B, H, dtype, training, return_sequences, shared):
    """``(h_saved, y)``: the [T,B,H] buffer a training forward saves the state entering each
    step in (None at inference) and the output sequence (None without return_sequences).
    When ``shared`` (a plain run forward in time: there step t's output is the state entering
    step t+1) they are one buffer of T+1 steps, h_saved[t] = y[t-1] and h_saved[0] = h0, as
    PyTorch's autograd keeps an output it needs rather than a copy (the backend returns
    training outputs read-only: writing to one would change the gradients)."""
    if shared and training and return_sequences:
        hy = np.empty((T + 1, B, H), dtype)
        h_saved, y = hy[:T], hy[1:]
        return h_saved, y
    return (np.empty((T, B, H), dtype) if training else None,
            np.empty((T, B, H), dtype) if return_sequences else None)


def dx_buffer(dx_into, T, B, I, dtype):
    """The array a backward pass writes the input gradient [T,B,I] into: ``dx_into`` when
    given (a copy of x that forward made and nothing else holds: the weight gradient reads
    it before dX overwrites it, so a training step peaks one T*B*I buffer lower), else new."""
    if dx_into is None:
        return np.empty((T, B, I), dtype)
    if not (isinstance(dx_into, np.ndarray) and dx_into.shape == (T, B, I)
            and dx_into.dtype == dtype and dx_into.flags.c_contiguous
            and dx_into.flags.writeable):
        raise ValueError(f"dx_into: expected a writable C-contiguous {np.dtype(dtype).name} "
                         f"array of shape {(T, B, I)}")
    return dx_into
