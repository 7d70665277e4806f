"""Layer norm's arguments and gradients between the ``cpu`` backend and its kernels
(``src_c/layer_norm.pxi``)."""
from __future__ import annotations

import numpy as np


def kernel_layer_norm(layer_norm):
    """The kernels' layer_norm keyword (src_c/layer_norm.pxi): the LSTM's (gamma, gamma_h,
    beta_h) as (gamma, [gamma_h; beta_h]), the GRU's and SimpleRNN's gamma as it is."""
    if layer_norm is None:
        return {}
    if isinstance(layer_norm, tuple):
        gamma, gamma_h, beta_h = layer_norm
        return {"layer_norm": (np.ascontiguousarray(gamma), np.stack([gamma_h, beta_h]))}
    return {"layer_norm": np.ascontiguousarray(layer_norm)}


def layer_norm_grads(out, n):
    """The Grads fields of layer norm from a kernel's backward (its outputs past the first
    n): gamma, and the LSTM's gamma_h, beta_h."""
    if len(out) == n:
        return {}
    g = out[n]
    if isinstance(g, tuple):
        return {"gamma": g[0], "gamma_h": g[1], "beta_h": g[2]}
    return {"gamma": g}
