"""SimpleRNN oracle (Keras 3 ``SimpleRNNCell``), forward and BPTT.

Per step, with ``a`` the activation:
    h_t = a((x_t * dx_mask) W + b + (h_{t-1} * dh_mask) U)

With ``layer_norm = gamma [2,H]`` (LN in ``layer_norm.py``) each product is normalized
before the bias:
    h_t = a(LN((x_t * dx_mask) W) * gamma[0] + LN((h_{t-1} * dh_mask) U) * gamma[1] + b)
"""
from __future__ import annotations

from ..cache_and_grads import Cache, Grads
from . import layer_norm as _ln
from .zoneout import keep as _keep
from .lowp import matmul_for


def forward(xp, x, kernel, recurrent_kernel, bias, h0, *, mask, input_dropout_mask,
            recurrent_dropout_mask, activation, go_backwards, return_sequences, training,
            backend="numpy", zoneout=None, mixed=False, layer_norm=None):
    T, B, _ = x.shape
    H = recurrent_kernel.shape[0]
    a = activation
    mm = matmul_for(mixed)                  # mixed: bf16 operands, float32 sums

    xin = x if input_dropout_mask is None else x * input_dropout_mask[None]
    xw = mm(xin, kernel)                                  # [T,B,H]
    ln = layer_norm is not None
    if ln:
        gamma = layer_norm
        nx, rx = _ln.forward(xp, xw)
        xw = nx * gamma[0]
    if bias is not None:
        xw = xw + bias
    h = h0
    out = xp.zeros((B, H), x.dtype)
    ys = xp.empty((T, B, H), x.dtype) if return_sequences else None
    if training:
        hs = xp.empty((T, B, H), x.dtype)               # a(.) of step t (before masking)
        h_prev = xp.empty((T, B, H), x.dtype)           # h_{t-1} as it entered step t
        if ln:                                          # LN(hin U), by time t
            nhs = xp.empty((T, B, H), x.dtype)
            rhs = xp.empty((T, B), x.dtype)
    for s in range(T):
        t = T - 1 - s if go_backwards else s
        hin = h if recurrent_dropout_mask is None else h * recurrent_dropout_mask
        rec = mm(hin, recurrent_kernel)
        if ln:
            nh, rh = _ln.forward(xp, rec)
            rec = nh * gamma[1]
        h_new = a(xw[t] + rec, xp)
        if training:
            hs[t], h_prev[t] = h_new, h
            if ln:
                nhs[t], rhs[t] = nh, rh
        if zoneout is not None:               # h_t = h_{t-1} + m (h~_t - h_{t-1})
            h_new = h + _keep(zoneout, s) * (h_new - h)
        if mask is not None:
            m = mask[t][:, None]
            h_new = xp.where(m, h_new, h)
            out = xp.where(m, h_new, out)
        else:
            out = h_new
        h = h_new
        if return_sequences:
            ys[s] = out
    y = ys if return_sequences else out
    cache = None
    if training:
        cache = Cache(backend, "simple_rnn", dict(
            x=xin, hs=hs, h_prev=h_prev, kernel=kernel, recurrent_kernel=recurrent_kernel,
            mask=mask, input_dropout_mask=input_dropout_mask,
            recurrent_dropout_mask=recurrent_dropout_mask, activation=a,
            go_backwards=go_backwards, return_sequences=return_sequences,
            has_bias=bias is not None, zoneout=zoneout, mixed=mixed, layer_norm=layer_norm,
            ln_saved=(nx, rx, nhs, rhs) if ln else None), made_by="oracle")
    return y, h, cache


def backward(xp, cache, dy, dh_T, backend="numpy"):
    d = cache.take(backend, "simple_rnn")
    x, hs, h_prev = d["x"], d["hs"], d["h_prev"]
    W, U, mask, a = d["kernel"], d["recurrent_kernel"], d["mask"], d["activation"]
    rdm, zoneout = d["recurrent_dropout_mask"], d.get("zoneout")
    mm = matmul_for(d.get("mixed", False))
    T, B, _ = x.shape
    H = U.shape[0]
    dtype = x.dtype
    ln = d.get("layer_norm") is not None
    if ln:
        gamma = d["layer_norm"]
        nx, rx, nhs, rhs = d["ln_saved"]
        drec_all = xp.zeros((T, B, H), dtype)         # d(hin U), through LN(.) gamma[1]

    dh = xp.zeros((B, H), dtype) if dh_T is None else dh_T.astype(dtype, copy=True)
    dout = xp.zeros((B, H), dtype)        # gradient reaching the output carried by masked steps
    if dy is not None and not d["return_sequences"]:
        dout = dout + dy
    dz_all = xp.zeros((T, B, H), dtype)
    for s in reversed(range(T)):
        t = T - 1 - s if d["go_backwards"] else s
        if dy is not None and d["return_sequences"]:
            dout = dout + dy[s]
        if mask is not None:
            m = mask[t][:, None]
            dh_step = xp.where(m, dh + dout, 0)
        else:
            m = None
            dh_step = dh + dout
        dcarry = 0
        if zoneout is not None:               # share m to h~_t, 1 - m straight to h_{t-1}
            zk = _keep(zoneout, s)
            dh_step, dcarry = zk * dh_step, (1 - zk) * dh_step
        dz = dh_step * a.grad_from_output(hs[t], xp)
        dz_all[t] = dz
        if ln:
            dz = _ln.backward(xp, dz * gamma[1], nhs[t], rhs[t])
            drec_all[t] = dz
        dhp = mm(dz, U.T)
        if rdm is not None:
            dhp = dhp * rdm
        dhp = dhp + dcarry
        if m is not None:
            dh = xp.where(m, dhp, dh)
            dout = xp.where(m, 0, dout)
        else:
            dh = dhp
            dout = xp.zeros_like(dout)
    dz2 = dz_all.reshape(T * B, H)
    bias_grad = dz2.sum(0) if d["has_bias"] else None
    ln_grads = {}
    dr2 = dz2                                       # d(hin U), rows by (t, b)
    if ln:
        ln_grads["gamma"] = xp.stack([(dz_all * nx).reshape(T * B, H).sum(0),
                                      (dz_all * nhs).reshape(T * B, H).sum(0)])
        dz2 = _ln.backward(xp, dz_all * gamma[0], nx, rx).reshape(T * B, H)   # d(x W)
        dr2 = drec_all.reshape(T * B, H)
    dx = mm(dz2, W.T).reshape(T, B, W.shape[0])
    if d["input_dropout_mask"] is not None:
        dx = dx * d["input_dropout_mask"][None]
    hin = h_prev if rdm is None else h_prev * rdm[None]
    return Grads(
        inputs=dx, h0=dh,
        kernel=mm(x.reshape(T * B, W.shape[0]).T, dz2),
        recurrent_kernel=mm(hin.reshape(T * B, H).T, dr2),
        bias=bias_grad, **ln_grads)
