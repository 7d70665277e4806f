"""LSTM oracle (plain, peephole, coupled input-forget), forward and BPTT.

Per step, with ``ra`` the recurrent activation and ``a`` the activation:
    z  = (x_t * dx_mask) W + b + (h_{t-1} * dh_mask) U        blocks [i|f|c|o] ([f|c|o] CIFG)
    i  = ra(z_i + P_i * c_{t-1})        (CIFG: i = 1 - f)
    f  = ra(z_f + P_f * c_{t-1})
    g  = a(z_c)
    c_t = f * c_{t-1} + i * g
    o  = ra(z_o + P_o * c_t)
    h_t = o * a(c_t)
Peephole terms are present only with ``peephole`` given (Gers & Schmidhuber).

With ``layer_norm = (gamma [2,G], gamma_h [H], beta_h [H])`` (haste's LayerNormLSTM; LN in
``layer_norm.py``) each product is normalized before the bias, and so is the cell state
inside the output:
    z   = LN(x_t W) * gamma[0] + LN(h_{t-1} U) * gamma[1] + b
    h_t = o * a(LN(c_t) * gamma_h + beta_h)
c_t itself (carried, and seen by the peepholes) is not normalized.
"""
from __future__ import annotations

from ..cache_and_grads import Cache, Grads
from . import layer_norm as _ln
from .zoneout import keep as _keep
from .lowp import matmul_for


def step_gates(xp, z, c, H, coupled, peephole, a, ra):
    """One step's gates from the pre-activations z [B,G] and c_{t-1}: (i, f, g, o, c_t),
    with the peephole terms when given (CIFG: i = 1 - f)."""
    if coupled:
        zf, zc, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:]
    else:
        zi, zf, zc, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    if peephole is not None:
        zf = zf + peephole[1] * c
        if not coupled:
            zi = zi + peephole[0] * c
    f = ra(zf, xp)
    i = 1 - f if coupled else ra(zi, xp)
    g = a(zc, xp)
    c_new = f * c + i * g
    if peephole is not None:
        zo = zo + peephole[2] * c_new
    return i, f, g, ra(zo, xp), c_new


def forward(xp, x, kernel, recurrent_kernel, bias, h0, c0, *, peephole, mask,
            input_dropout_mask, recurrent_dropout_mask, activation, recurrent_activation,
            coupled, go_backwards, return_sequences, training, backend="numpy", zoneout=None,
            mixed=False, layer_norm=None):
    T, B, _ = x.shape
    H = recurrent_kernel.shape[0]
    a, ra = activation, recurrent_activation
    blocks = 3 if coupled else 4
    mm = matmul_for(mixed)                  # mixed: bf16 operands, float32 sums

    xin = x if input_dropout_mask is None else x * input_dropout_mask[None]
    xw = mm(xin, kernel)                                  # [T,B,G]
    ln = layer_norm is not None
    if ln:
        gamma, gamma_h, beta_h = layer_norm
        nx, rx = _ln.forward(xp, xw)
        xw = nx * gamma[0]
    if bias is not None:
        xw = xw + bias
    h, c = h0, c0
    out = xp.zeros((B, H), x.dtype)
    ys = xp.empty((T, B, H), x.dtype) if return_sequences else None
    if training:
        gates = xp.empty((T, B, blocks * H), x.dtype)   # post-activation, by time t
        cs = xp.empty((T, B, H), x.dtype)               # c_t
        h_prev = xp.empty((T, B, H), x.dtype)           # h_{t-1}, as it entered step t
        c_prev = xp.empty((T, B, H), x.dtype)
        if ln:                                          # LN(h U) and LN(c_t), by time t
            nhs = xp.empty((T, B, blocks * H), x.dtype)
            rhs = xp.empty((T, B), x.dtype)
            ncs = xp.empty((T, B, H), x.dtype)
            rcs = xp.empty((T, B), x.dtype)
    for s in range(T):
        t = T - 1 - s if go_backwards else s
        hin = h if recurrent_dropout_mask is None else h * recurrent_dropout_mask
        rec = mm(hin, recurrent_kernel)
        if ln:
            nh, rh = _ln.forward(xp, rec)
            rec = nh * gamma[1]
        i, f, g, o, c_new = step_gates(xp, xw[t] + rec, c, H, coupled, peephole, a, ra)
        if ln:
            nc, rc = _ln.forward(xp, c_new)
            h_new = o * a(nc * gamma_h + beta_h, xp)
        else:
            h_new = o * a(c_new, xp)
        if zoneout is not None:               # h_t = h_{t-1} + m (h~_t - h_{t-1})
            h_new = h + _keep(zoneout, s) * (h_new - h)
        if training:
            gates[t] = xp.concatenate([f, g, o] if coupled else [i, f, g, o], axis=1)
            cs[t], h_prev[t], c_prev[t] = c_new, h, c
            if ln:
                nhs[t], rhs[t], ncs[t], rcs[t] = nh, rh, nc, rc
        if mask is not None:
            m = mask[t][:, None]
            h_new = xp.where(m, h_new, h)
            c_new = xp.where(m, c_new, c)
            out = xp.where(m, h_new, out)
        else:
            out = h_new
        h, c = h_new, c_new
        if return_sequences:
            ys[s] = out
    y = ys if return_sequences else out
    cache = None
    if training:
        cache = Cache(backend, "lstm", dict(
            x=xin, gates=gates, cs=cs, h_prev=h_prev, c_prev=c_prev, kernel=kernel,
            recurrent_kernel=recurrent_kernel, peephole=peephole, mask=mask,
            input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask,
            activation=a, recurrent_activation=ra, coupled=coupled, go_backwards=go_backwards,
            return_sequences=return_sequences, has_bias=bias is not None, zoneout=zoneout,
            mixed=mixed, layer_norm=layer_norm,
            ln_saved=(nx, rx, nhs, rhs, ncs, rcs) if ln else None),
            made_by="oracle")
    return y, h, c, cache


def backward(xp, cache, dy, dh_T, dc_T, backend="numpy"):
    d = cache.take(backend, "lstm")
    x, gates, cs = d["x"], d["gates"], d["cs"]
    h_prev, c_prev = d["h_prev"], d["c_prev"]
    W, U, P = d["kernel"], d["recurrent_kernel"], d["peephole"]
    mask, a, ra, coupled = d["mask"], d["activation"], d["recurrent_activation"], d["coupled"]
    rdm, zoneout = d["recurrent_dropout_mask"], d.get("zoneout")
    mm = matmul_for(d.get("mixed", False))
    T, B, _ = x.shape
    H = U.shape[0]
    dtype = x.dtype
    ln = d.get("layer_norm") is not None
    if ln:
        gamma, gamma_h, beta_h = d["layer_norm"]
        nx, rx, nhs, rhs, ncs, rcs = d["ln_saved"]
        drec_all = xp.zeros(gates.shape, dtype)       # d(h_{t-1} U), through LN(.) gamma[1]
        dgamma_h = xp.zeros(H, dtype)
        dbeta_h = xp.zeros(H, dtype)

    dh = xp.zeros((B, H), dtype) if dh_T is None else dh_T.astype(dtype, copy=True)
    dc = xp.zeros((B, H), dtype) if dc_T is None else dc_T.astype(dtype, copy=True)
    dout = xp.zeros((B, H), dtype)        # gradient reaching the output carried by masked steps
    if dy is not None and not d["return_sequences"]:
        dout = dout + dy
    dz_all = xp.zeros(gates.shape, dtype)
    dP = xp.zeros((3, H), dtype) if P is not None else None
    for s in reversed(range(T)):
        t = T - 1 - s if d["go_backwards"] else s
        if dy is not None and d["return_sequences"]:
            dout = dout + dy[s]
        if mask is not None:
            m = mask[t][:, None]
            dh_step = xp.where(m, dh + dout, 0)
            dc_step = xp.where(m, dc, 0)
        else:
            m = None
            dh_step, dc_step = dh + dout, dc
        dcarry = 0
        if zoneout is not None:               # share m to h~_t, 1 - m straight to h_{t-1}
            zk = _keep(zoneout, s)
            dh_step, dcarry = zk * dh_step, (1 - zk) * dh_step
        if coupled:
            f, g, o = gates[t, :, :H], gates[t, :, H:2 * H], gates[t, :, 2 * H:]
            i = 1 - f
        else:
            i, f, g, o = (gates[t, :, k * H:(k + 1) * H] for k in range(4))
        c, cp = cs[t], c_prev[t]
        if ln:
            ac = a(ncs[t] * gamma_h + beta_h, xp)
            dpre = dh_step * o * a.grad_from_output(ac, xp)   # d(LN(c_t) gamma_h + beta_h)
            dgamma_h += (dpre * ncs[t]).sum(0)
            dbeta_h += dpre.sum(0)
            dcs = dc_step + _ln.backward(xp, dpre * gamma_h, ncs[t], rcs[t])
        else:
            ac = a(c, xp)
            dcs = dc_step + dh_step * o * a.grad_from_output(ac, xp)
        do = dh_step * ac
        dzo = do * ra.grad_from_output(o, xp)
        if P is not None:
            dcs = dcs + dzo * P[2]
        dg = dcs * i
        dzc = dg * a.grad_from_output(g, xp)
        dcp = dcs * f
        if coupled:
            dzf = dcs * (cp - g) * ra.grad_from_output(f, xp)
            parts = [dzf, dzc, dzo]
        else:
            dzi = dcs * g * ra.grad_from_output(i, xp)
            dzf = dcs * cp * ra.grad_from_output(f, xp)
            parts = [dzi, dzf, dzc, dzo]
        if P is not None:
            dcp = dcp + dzf * P[1]
            dP[1] += (dzf * cp).sum(0)
            dP[2] += (dzo * c).sum(0)
            if not coupled:
                dcp = dcp + dzi * P[0]
                dP[0] += (dzi * cp).sum(0)
        dz = xp.concatenate(parts, axis=1)
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
            dc = xp.where(m, dcp, dc)
            dout = xp.where(m, 0, dout)
        else:
            dh, dc = dhp, dcp
            dout = xp.zeros_like(dout)
    G = gates.shape[2]
    dz2 = dz_all.reshape(T * B, G)
    bias_grad = dz2.sum(0) if d["has_bias"] else None
    ln_grads = {}
    dr2 = dz2                                       # d(h_{t-1} U), rows by (t, b)
    if ln:
        ln_grads = dict(gamma=xp.stack([(dz_all * nx).reshape(T * B, G).sum(0),
                                        (dz_all * nhs).reshape(T * B, G).sum(0)]),
                        gamma_h=dgamma_h, beta_h=dbeta_h)
        dz2 = _ln.backward(xp, dz_all * gamma[0], nx, rx).reshape(T * B, G)  # d(x W)
        dr2 = drec_all.reshape(T * B, G)
    dx = mm(dz2, W.T).reshape(T, B, W.shape[0])
    if d["input_dropout_mask"] is not None:
        dx = dx * d["input_dropout_mask"][None]
    hin = h_prev if rdm is None else h_prev * rdm[None]
    return Grads(
        inputs=dx, h0=dh, c0=dc,
        kernel=mm(x.reshape(T * B, W.shape[0]).T, dz2),
        recurrent_kernel=mm(hin.reshape(T * B, H).T, dr2),
        bias=bias_grad, peephole=dP, **ln_grads)
