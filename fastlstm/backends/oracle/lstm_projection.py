"""The projected LSTM (LSTMP, PyTorch's ``nn.LSTM(proj_size=P)``), forward: the definition.

Per step, with the LSTM oracle's notation (``oracle/lstm.py``) and the state h of P features:
    z   = (x_t * dx_mask) W + b + h_{t-1} R          R [P,G]; blocks [i|f|c|o] ([f|c|o] CIFG)
    c_t = f * c_{t-1} + i * g                          (peepholes as the LSTM's)
    h_t = (o * a(c_t)) W_p                             W_p [H,P]
A masked step carries h and c and repeats the last output, as the LSTM's.
"""
from __future__ import annotations

from .lstm import step_gates


def forward(xp, x, kernel, recurrent_kernel, bias, projection, h0, c0, *, peephole, mask,
            input_dropout_mask, activation, recurrent_activation, coupled, go_backwards,
            return_sequences):
    """x [T,B,I] -> (y [T,B,P] or [B,P], h_T [B,P], c_T [B,H])."""
    T, B, _ = x.shape
    H, P = projection.shape
    a, ra = activation, recurrent_activation
    xin = x if input_dropout_mask is None else x * input_dropout_mask[None]
    h, c = h0, c0
    out = xp.zeros((B, P), x.dtype)
    ys = xp.empty((T, B, P), x.dtype)
    for s in range(T):
        t = T - 1 - s if go_backwards else s
        z = xin[t] @ kernel + h @ recurrent_kernel
        if bias is not None:
            z = z + bias
        _, _, _, o, c_new = step_gates(xp, z, c, H, coupled, peephole, a, ra)
        h_new = (o * a(c_new, xp)) @ projection
        if mask is not None:
            m = mask[t][:, None]
            h_new = xp.where(m, h_new, h)
            c_new = xp.where(m, c_new, c)
            out = xp.where(m, h_new, out)
        else:
            out = h_new
        h, c = h_new, c_new
        ys[s] = out
    return (ys if return_sequences else out), h, c
