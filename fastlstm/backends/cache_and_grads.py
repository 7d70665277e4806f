"""Types shared by every backend: the saved-for-backward cache and the gradients."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


class Cache:
    """What a training forward keeps for its backward; opaque outside its backend.

    A backward may reuse the cache's buffers for its own work (the compiled kernels write
    the gate gradients over the saved gates), so each cache serves one backward only.

    ``backend`` names the ``Ops`` object whose backward may take it; ``made_by`` the code
    that saved ``data`` and so decides its layout: ``"oracle"`` (backends/oracle, also when a
    compiled backend hands it a case such as an empty batch), ``"cython"`` (the compiled CPU
    kernels) or ``"cupy"``.
    """

    __slots__ = ("backend", "cell", "data", "made_by", "consumed", "info")

    def __init__(self, backend: str, cell: str, data: dict, *, made_by: str):
        self.backend = backend
        self.cell = cell
        self.data = data
        self.made_by = made_by
        self.consumed = False
        self.info = None      # set by fastlstm.ops: shapes and dtype for checking backward

    def take(self, backend: str, cell: str) -> dict:
        if self.cell != cell:
            raise ValueError(f"cache: expected a {cell} cache, got one from {self.cell}")
        if self.backend != backend:
            raise ValueError(f"cache: made by the {self.backend!r} backend, "
                             f"cannot be used by the {backend!r} backend")
        if self.consumed:
            raise RuntimeError("cache: this forward's backward was already run; "
                               "run forward_train again for another backward")
        self.consumed = True
        return self.data


@dataclass
class Grads:
    """Gradients of a cell's sequence op. ``None`` where the op has no such input."""

    inputs: Any                       # [T,B,I]
    h0: Any                           # [B,H]
    kernel: Any                       # [I,G]
    recurrent_kernel: Any             # [H,G]
    bias: Optional[Any] = None        # [G] or [2,G] (GRU reset_after)
    c0: Optional[Any] = None          # [B,H]   LSTM only
    peephole: Optional[Any] = None    # [3,H]   LSTM with peepholes only
    projection: Optional[Any] = None  # [H,P]   LSTM with a projection (proj_size) only
    gamma: Optional[Any] = None       # [2,G]   with layer_norm: the scales of LN(x W), LN(h U)
    gamma_h: Optional[Any] = None     # [H]     LSTM with layer_norm: the scale of LN(c_t)
    beta_h: Optional[Any] = None      # [H]     LSTM with layer_norm: the shift of LN(c_t)
