"""Layer normalization of the rows of a product (Ba et al. 2016, haste's LayerNorm cells),
shared by the cell oracles.

    LN(v) = (v - mean(v)) / sqrt(var(v) + EPS)

over the last axis, with the biased variance and no affine of its own: each cell scales the
normalized rows by its own ``gamma`` (and, for the LSTM's cell state, shifts by ``beta_h``).
"""
from __future__ import annotations

EPS = 1e-5


def forward(xp, v):
    """(n, rstd): the normalized rows of v [..., N] and 1 / sqrt(var + EPS) [...]."""
    mu = v.mean(axis=-1, keepdims=True)
    d = v - mu
    var = (d * d).mean(axis=-1, keepdims=True)
    rstd = 1 / xp.sqrt(var + EPS)
    return d * rstd, rstd[..., 0]


def backward(xp, dn, n, rstd):
    """dv of v [..., N] given dn, the gradient of n = LN(v), n itself and rstd:
    dv = rstd * (dn - mean(dn) - n * mean(dn * n))."""
    return rstd[..., None] * (dn - dn.mean(axis=-1, keepdims=True)
                              - n * (dn * n).mean(axis=-1, keepdims=True))
