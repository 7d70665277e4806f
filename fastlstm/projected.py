"""The projected LSTM (``proj_size``) on every backend, through the LSTM's own kernels.

With h_t = m_t W_p (m_t = o * a(c_t), the LSTM's output before the projection), the
recurrent term h_{t-1} R is m_{t-1} (W_p R): a projected LSTM is an LSTM over m with the
recurrent kernel U = W_p R [H,G], whose outputs are projected once after the loop (one GEMM
over all steps). An initial state h0 enters through the input: x gets P more features,
zero but at each row's first valid step, where they hold h0, and the kernel gets R as its
rows (so that step adds h0 R); without h0 nothing is added. The definition
is ``backends/oracle/lstm_projection.py``; BPTT follows by the chain rule through these
products. Recurrent dropout (which would scale h inside W_p R, per row) is not supported.
"""
from __future__ import annotations

from .backends.cache_and_grads import Cache, Grads

__all__ = ["lstm_forward", "lstm_backward"]


def _first_steps(xp, mask, T, B, go_backwards):
    """Each row's first valid time in processing order, and which rows have one."""
    if mask is None:
        first = xp.full(B, T - 1 if go_backwards else 0)
        return first, xp.ones(B, bool)
    m = xp.asarray(mask, bool)
    if go_backwards:
        first = T - 1 - xp.argmax(m[::-1], axis=0)
    else:
        first = xp.argmax(m, axis=0)
    return first, m.any(axis=0)


def lstm_forward(lstm_forward_op, xp, x, kernel, recurrent_kernel, bias, projection, h0, c0,
                 *, training, return_sequences, go_backwards, mask, sequence_lengths,
                 input_dropout_mask, **options):
    """The projected forward on the checked arguments (x [T,B,I], recurrent_kernel [P,G],
    projection [H,P], h0 [B,P] or None, c0 [B,H] or None); lstm_forward_op: ops.lstm_forward.
    Returns (y, h_T, c_T, cache)."""
    T, B, I = x.shape
    H, P = projection.shape
    dtype = kernel.dtype
    U = projection @ recurrent_kernel                               # [H,G]
    inject = h0 is not None
    if mask is None and sequence_lengths is not None:
        from .backends.packing import lengths_mask
        mask = xp.asarray(lengths_mask(sequence_lengths, T))
        sequence_lengths = None
    first, ran = _first_steps(xp, mask, T, B, go_backwards)
    rows = xp.arange(B)
    xin, W, idm = x, kernel, input_dropout_mask
    if inject:
        xin = xp.zeros((T, B, I + P), dtype)
        xin[..., :I] = x
        xin[first[ran], rows[ran], I:] = h0[ran]
        W = xp.concatenate([kernel, recurrent_kernel], axis=0)
        if idm is not None:
            idm = xp.concatenate([idm, xp.ones((B, P), dtype)], axis=1)
    m, m_T, c_T, inner = lstm_forward_op(
        xin, W, U, bias, None, c0, mask=mask, input_dropout_mask=idm,
        return_sequences=return_sequences, go_backwards=go_backwards, training=training,
        **options)
    y = m @ projection
    h_T = m_T @ projection
    if h0 is not None:
        h_T = xp.where(ran[:, None], h_T, h0)
    elif not bool(xp.all(ran)):
        h_T = xp.where(ran[:, None], h_T, 0).astype(dtype)
    cache = None
    if training:
        cache = Cache(getattr(inner, "backend", "numpy"), "lstm", dict(
            inner=inner, m=m, m_T=m_T, projection=projection, recurrent_kernel=recurrent_kernel,
            U=U, inject=inject, first=first, ran=ran, I=I, given_h0=h0 is not None,
            return_sequences=return_sequences, xp=xp), made_by="projected")
        cache.info = inner.info
    return y, h_T, c_T, cache


def lstm_backward(lstm_backward_op, cache, dy=None, dh=None, dc=None):
    """Gradients of the projected forward (``Grads`` with ``projection`` set)."""
    d = cache.data
    if cache.consumed:
        raise RuntimeError("cache: this forward's backward was already run; "
                           "run forward_train again for another backward")
    cache.consumed = True
    xp, Wp, R = d["xp"], d["projection"], d["recurrent_kernel"]
    ran, I = d["ran"], d["I"]
    H, P = Wp.shape
    dWp = xp.zeros_like(Wp)
    dm = dm_T = None
    if dy is not None:
        dm = dy @ Wp.T
        m = d["m"]
        dWp += (m.reshape(-1, H).T @ dy.reshape(-1, P))
    dh0_passed = None
    if dh is not None and not d["given_h0"]:
        dh = None                 # the final states of rows that never ran are h0's
    if dh is not None:
        dh_run = xp.where(ran[:, None], dh, 0)
        dm_T = dh_run @ Wp.T
        dWp += d["m_T"].T @ dh_run
        dh0_passed = xp.where(ran[:, None], 0, dh)
    g = lstm_backward_op(d["inner"], dm, dm_T, dc)
    dU = g.recurrent_kernel                                         # [H,G]
    dWp += dU @ R.T
    dR = Wp.T @ dU
    dx = g.inputs
    dh0 = None
    if d["inject"]:
        dR = dR + g.kernel[I:]
        dW = g.kernel[:I]
        B = dx.shape[1]
        rows = xp.arange(B)
        dh0 = xp.zeros((B, P), dx.dtype)
        dh0[ran] = dx[d["first"][ran], rows[ran], I:]
        dx = xp.ascontiguousarray(dx[..., :I])
    else:
        dW = g.kernel
    if dh0_passed is not None:
        dh0 = dh0_passed if dh0 is None else dh0 + dh0_passed
    return Grads(inputs=dx, h0=dh0, c0=g.c0, kernel=dW, recurrent_kernel=dR, bias=g.bias,
                 peephole=g.peephole, projection=dWp)

