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
