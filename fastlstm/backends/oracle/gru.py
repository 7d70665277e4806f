"""GRU oracle (Keras 3 ``GRUCell``, both forms), forward and BPTT.

Per step, with ``ra`` the recurrent activation, ``a`` the activation, blocks ``[z|r|h]``,
``xw = (x_t * dx_mask) W + b_in`` and ``hin = h_{t-1} * dh_mask``:
    reset_after=True  (bias [2,G]: b_in = bias[0], b_rec = bias[1]):
        rec = hin U + b_rec
        z = ra(xw_z + rec_z);  r = ra(xw_r + rec_r)
        n = a(xw_h + r * rec_h)
    reset_after=False (bias [G]: b_in = bias, no recurrent bias):
        z = ra(xw_z + hin U_z);  r = ra(xw_r + hin U_r)
        n = a(xw_h + (r * hin) U_h)
    h_t = z * h_{t-1} + (1 - z) * n
As in Keras, the recurrent dropout mask applies to every recurrent product (the same mask
for all three blocks) but not to the ``z * h_{t-1}`` carry.

With ``layer_norm = gamma [2,G]`` (reset_after only; haste's LayerNormGRU; LN in
``layer_norm.py``) each product is normalized over its full 3H row before the bias:
    xw  = LN((x_t * dx_mask) W) * gamma[0] + b_in
    rec = LN(hin U) * gamma[1] + b_rec
and the gates follow as above.
"""
from __future__ import annotations

from ..cache_and_grads import Cache, Grads
from . import layer_norm as _ln
from .zoneout import keep as _keep
from .lowp import matmul_for


def forward(xp, x, kernel, recurrent_kernel, bias, h0, *, reset_after, mask,
            input_dropout_mask, recurrent_dropout_mask, activation, recurrent_activation,
            go_backwards, return_sequences, training, backend="numpy", zoneout=None,
            mixed=False, layer_norm=None):
    T, B, _ = x.shape
    H = recurrent_kernel.shape[0]
    a, ra = activation, recurrent_activation
    U = recurrent_kernel
    mm = matmul_for(mixed)                  # mixed: bf16 operands, float32 sums

    xin = x if input_dropout_mask is None else x * input_dropout_mask[None]
    xw = mm(xin, kernel)                                  # [T,B,G]
    ln = layer_norm is not None
    if ln:
        if not reset_after:
            raise ValueError("layer_norm: the GRU takes it with reset_after=True only")
        gamma = layer_norm
        nx, rx = _ln.forward(xp, xw)
        xw = nx * gamma[0]
    b_rec = None
    if bias is not None:
        xw = xw + (bias[0] if reset_after else bias)
        b_rec = bias[1] if reset_after else None
    h = h0
    out = xp.zeros((B, H), x.dtype)
    ys = xp.empty((T, B, H), x.dtype) if return_sequences else None
    if training:
        gates = xp.empty((T, B, 3 * H), x.dtype)        # z, r, n by time t
        h_prev = xp.empty((T, B, H), x.dtype)           # h_{t-1} as it entered step t
        rec_hs = xp.empty((T, B, H), x.dtype) if reset_after else None   # hin U_h + b'_h
        if ln:                                          # LN(hin U), by time t
            nhs = xp.empty((T, B, 3 * H), x.dtype)
            rhs = xp.empty((T, B), x.dtype)
    for s in range(T):
        t = T - 1 - s if go_backwards else s
        hin = h if recurrent_dropout_mask is None else h * recurrent_dropout_mask
        xz, xr, xh = xw[t, :, :H], xw[t, :, H:2 * H], xw[t, :, 2 * H:]
        if reset_after:
            rec = mm(hin, U)
            if ln:
                nh, rh = _ln.forward(xp, rec)
                rec = nh * gamma[1]
            if b_rec is not None:
                rec = rec + b_rec
            z = ra(xz + rec[:, :H], xp)
            r = ra(xr + rec[:, H:2 * H], xp)
            rec_h = rec[:, 2 * H:]
            n = a(xh + r * rec_h, xp)
        else:
            rec = mm(hin, U[:, :2 * H])
            z = ra(xz + rec[:, :H], xp)
            r = ra(xr + rec[:, H:], xp)
            n = a(xh + mm(r * hin, U[:, 2 * H:]), xp)
        h_new = z * h + (1 - z) * n
        if zoneout is not None:               # h_t = h_{t-1} + m (h~_t - h_{t-1})
            h_new = h + _keep(zoneout, s) * (h_new - h)
        if training:
            gates[t] = xp.concatenate([z, r, n], axis=1)
            h_prev[t] = h
            if reset_after:
                rec_hs[t] = rec_h
            if ln:
                nhs[t], rhs[t] = nh, rh
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
        cache = Cache(backend, "gru", dict(
            x=xin, gates=gates, h_prev=h_prev, rec_h=rec_hs, kernel=kernel,
            recurrent_kernel=U, reset_after=reset_after, mask=mask,
            input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask,
            activation=a, recurrent_activation=ra, go_backwards=go_backwards,
            return_sequences=return_sequences, has_bias=bias is not None, zoneout=zoneout,
            mixed=mixed, layer_norm=layer_norm, ln_saved=(nx, rx, nhs, rhs) if ln else None),
            made_by="oracle")
    return y, h, cache


def backward(xp, cache, dy, dh_T, backend="numpy"):
    d = cache.take(backend, "gru")
    x, gates, h_prev, rec_hs = d["x"], d["gates"], d["h_prev"], d["rec_h"]
    W, U = d["kernel"], d["recurrent_kernel"]
    mask, a, ra = d["mask"], d["activation"], d["recurrent_activation"]
    reset_after, rdm = d["reset_after"], d["recurrent_dropout_mask"]
    zoneout = d.get("zoneout")
    mm = matmul_for(d.get("mixed", False))
    T, B, _ = x.shape
    H = U.shape[0]
    dtype = x.dtype
    ln = d.get("layer_norm") is not None
    if ln:
        gamma = d["layer_norm"]
        nx, rx, nhs, rhs = d["ln_saved"]
        dprod_rec = xp.zeros((T, B, 3 * H), dtype)    # d(hin U), through LN(.) gamma[1]

    dh = xp.zeros((B, H), dtype) if dh_T is None else dh_T.astype(dtype, copy=True)
    dout = xp.zeros((B, H), dtype)        # gradient reaching the output carried by masked steps
    if dy is not None and not d["return_sequences"]:
        dout = dout + dy
    dz_in = xp.zeros((T, B, 3 * H), dtype)                          # d(x W + b_in)
    dz_rec = xp.zeros((T, B, 3 * H), dtype) if reset_after else None  # d(hin U + b_rec)
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
        z, r, n = gates[t, :, :H], gates[t, :, H:2 * H], gates[t, :, 2 * H:]
        hp = h_prev[t]
        hin = hp if rdm is None else hp * rdm
        dzz = dh_step * (hp - n) * ra.grad_from_output(z, xp)
        dzn = dh_step * (1 - z) * a.grad_from_output(n, xp)
        if reset_after:
            rec_h = rec_hs[t]
            dzr = dzn * rec_h * ra.grad_from_output(r, xp)
            drec = xp.concatenate([dzz, dzr, dzn * r], axis=1)
            dz_rec[t] = drec
            if ln:
                drec = _ln.backward(xp, drec * gamma[1], nhs[t], rhs[t])
                dprod_rec[t] = drec
            dhin = mm(drec, U.T)
        else:
            drh = mm(dzn, U[:, 2 * H:].T)                 # d(r * hin)
            dzr = drh * hin * ra.grad_from_output(r, xp)
            dhin = drh * r + mm(xp.concatenate([dzz, dzr], axis=1), U[:, :2 * H].T)
        dz_in[t] = xp.concatenate([dzz, dzr, dzn], axis=1)
        if rdm is not None:
            dhin = dhin * rdm
        dhp = dh_step * z + dhin + dcarry
        if m is not None:
            dh = xp.where(m, dhp, dh)
            dout = xp.where(m, 0, dout)
        else:
            dh = dhp
            dout = xp.zeros_like(dout)
    dZ = dz_in.reshape(T * B, 3 * H)
    db_in = dZ.sum(0)
    ln_grads = {}
    if ln:
        ln_grads["gamma"] = xp.stack([(dz_in * nx).reshape(T * B, 3 * H).sum(0),
                                      (dz_rec * nhs).reshape(T * B, 3 * H).sum(0)])
        dZ = _ln.backward(xp, dz_in * gamma[0], nx, rx).reshape(T * B, 3 * H)   # d(x W)
    dx = mm(dZ, W.T).reshape(T, B, W.shape[0])
    if d["input_dropout_mask"] is not None:
        dx = dx * d["input_dropout_mask"][None]
    hin_all = (h_prev if rdm is None else h_prev * rdm[None]).reshape(T * B, H)
    if reset_after:
        dR = dz_rec.reshape(T * B, 3 * H)
        dU = mm(hin_all.T, dprod_rec.reshape(T * B, 3 * H) if ln else dR)
        db = xp.stack([db_in, dR.sum(0)]) if d["has_bias"] else None
    else:
        rh_all = gates[:, :, H:2 * H].reshape(T * B, H) * hin_all
        dU = xp.concatenate([mm(hin_all.T, dZ[:, :2 * H]), mm(rh_all.T, dZ[:, 2 * H:])],
                            axis=1)
        db = dZ.sum(0) if d["has_bias"] else None
    dW = mm(x.reshape(T * B, W.shape[0]).T, dZ)
    return Grads(inputs=dx, h0=dh, kernel=dW, recurrent_kernel=dU, bias=db, **ln_grads)
