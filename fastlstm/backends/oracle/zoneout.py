"""Zoneout of the state h (Krueger et al. 2016, haste's form), shared by the cell oracles.

``zoneout`` is the share of the new state each step keeps: a [T,B,H] array indexed by step
(training: m_t ~ Bernoulli(1 - p) per step, row and unit) or the number 1 - p (inference);
then h_t = h_{t-1} + m_t * (h~_t - h_{t-1}). The LSTM's c is not zoned out. A masked step
still carries the state unchanged (the mask applies after).
"""
from __future__ import annotations


def keep(zoneout, s):
    """m of step s."""
    return zoneout[s] if getattr(zoneout, "ndim", 0) == 3 else zoneout
