"""The ``numpy`` backend: the oracle in ``oracle/``, as an ``Ops`` object.

It is the base class of every backend: a backend overrides the methods it runs faster and
inherits the rest. Every method takes already-validated, time-major arrays (``fastlstm.ops``
checks user input once for all backends).
"""
from __future__ import annotations

import numpy

from .packing import lengths_mask
from .oracle import gru as _gru
from .oracle import lstm as _lstm
from .oracle import simple_rnn as _simple_rnn


def _with_lengths(x, mask, lengths):
    """The [T,B] mask that rows' lengths stand for (with a mask given too: both)."""
    if lengths is None:
        return mask
    steps = lengths_mask(numpy.asarray(lengths), x.shape[0])
    return steps if mask is None else numpy.logical_and(numpy.asarray(mask, bool), steps)


class NumpyOps:
    name = "numpy"
    xp = numpy

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    # -- LSTM --------------------------------------------------------------------------
    def lstm_forward(self, x, kernel, recurrent_kernel, bias, h0, c0, *, peephole=None,
                     mask=None, input_dropout_mask=None, recurrent_dropout_mask=None,
                     activation, recurrent_activation, coupled=False, go_backwards=False,
                     return_sequences=True, training=False, zoneout=None, mixed=False,
                     lengths=None, layer_norm=None):
        """x [T,B,I] -> (y [T,B,H] or [B,H], h_T [B,H], c_T [B,H], cache or None).
        zoneout: the kept share of each step's new h (oracle/zoneout.py) or None.
        mixed: mixed_bfloat16 (every product with bf16 operands, float32 sums; the
        backward's too). lengths: rows' lengths (from a backend that packs them), run as
        their prefix mask. layer_norm: (gamma, gamma_h, beta_h) or None (oracle/lstm.py)."""
        mask = _with_lengths(x, mask, lengths)
        y, h, c, cache = _lstm.forward(
            self.xp, x, kernel, recurrent_kernel, bias, h0, c0, peephole=peephole, mask=mask,
            input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask,
            activation=activation, recurrent_activation=recurrent_activation, coupled=coupled,
            go_backwards=go_backwards, return_sequences=return_sequences, training=training,
            backend=self.name, zoneout=zoneout, mixed=mixed, layer_norm=layer_norm)
        return y, h, c, cache

    def lstm_backward(self, cache, dy=None, dh=None, dc=None):
        """Gradients (``Grads``) of the forward that made ``cache``, given the gradients of
        its outputs (``None`` = zero)."""
        return _lstm.backward(self.xp, cache, dy, dh, dc, backend=self.name)

    # -- GRU ---------------------------------------------------------------------------
    def gru_forward(self, x, kernel, recurrent_kernel, bias, h0, *, reset_after=True,
                    mask=None, input_dropout_mask=None, recurrent_dropout_mask=None,
                    activation, recurrent_activation, go_backwards=False,
                    return_sequences=True, training=False, zoneout=None, mixed=False,
                    lengths=None, layer_norm=None):
        """x [T,B,I] -> (y [T,B,H] or [B,H], h_T [B,H], cache or None).

        bias is [2,G] (row 0 input, row 1 recurrent) with ``reset_after``, else [G].
        layer_norm: gamma [2,G] or None (reset_after only)."""
        mask = _with_lengths(x, mask, lengths)
        return _gru.forward(
            self.xp, x, kernel, recurrent_kernel, bias, h0, reset_after=reset_after, mask=mask,
            input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask,
            activation=activation, recurrent_activation=recurrent_activation,
            go_backwards=go_backwards, return_sequences=return_sequences, training=training,
            backend=self.name, zoneout=zoneout, mixed=mixed, layer_norm=layer_norm)

    def gru_backward(self, cache, dy=None, dh=None):
        """Gradients (``Grads``) of the GRU forward that made ``cache``."""
        return _gru.backward(self.xp, cache, dy, dh, backend=self.name)

    # -- SimpleRNN ---------------------------------------------------------------------
    def simple_rnn_forward(self, x, kernel, recurrent_kernel, bias, h0, *, mask=None,
                           input_dropout_mask=None, recurrent_dropout_mask=None, activation,
                           go_backwards=False, return_sequences=True, training=False,
                           zoneout=None, mixed=False, lengths=None, layer_norm=None):
        """x [T,B,I] -> (y [T,B,H] or [B,H], h_T [B,H], cache or None).
        layer_norm: gamma [2,H] or None."""
        mask = _with_lengths(x, mask, lengths)
        return _simple_rnn.forward(
            self.xp, x, kernel, recurrent_kernel, bias, h0, mask=mask,
            input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask,
            activation=activation, go_backwards=go_backwards, return_sequences=return_sequences,
            training=training, backend=self.name, zoneout=zoneout, mixed=mixed,
            layer_norm=layer_norm)

    def simple_rnn_backward(self, cache, dy=None, dh=None):
        """Gradients (``Grads``) of the SimpleRNN forward that made ``cache``."""
        return _simple_rnn.backward(self.xp, cache, dy, dh, backend=self.name)
