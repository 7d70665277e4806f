"""The ``cpu`` backend's packed passes: each row runs only up to its length
(``sequence_lengths``, or a prefix mask), with the layout of ``packing.py`` and the time loop
of ``src_c/packed.pxi``. The results are those of the masked path."""
from __future__ import annotations

import numpy as np

from .cache_and_grads import Cache, Grads
from .layer_norm_args import layer_norm_grads as _ln_grads
from .packing import Packing
from ..threads import kernel_settings, single_threaded_blas
from .. import _gru, _lstm, _simple_rnn


def _layout(module, x, lengths, G, H, settings):
    T, B, _ = x.shape
    return Packing(lengths, T, module.packed_groups(T, B, H, G, settings), module.Packed)


def _packed_inputs(pk, x, input_dropout_mask):
    """x's running rows [1,N,I], times the input dropout mask (the weight gradient's rows)."""
    xp = pk.pack(x)
    if input_dropout_mask is not None:
        xp *= input_dropout_mask[pk.rows][None]
    return xp


def _sorted(pk, a):
    return None if a is None else pk.sort(a)


def _input_grads(pk, dx, input_dropout_mask, I, dtype):
    dx = dx.reshape(-1, I)
    if input_dropout_mask is not None:
        dx *= input_dropout_mask[pk.rows]
    return pk.unpack_inputs(dx, I, dtype)


def _zoned(pk, zoneout, go_backwards, dtype):
    """The packing's zoneout: the keep masks [T,B,H] (by step) packed, or 1 - p."""
    if zoneout is None:
        return
    pk.kernel.zoned = True
    if np.ndim(zoneout) == 0:
        pk.kernel.keep = float(zoneout)
    else:
        pk.kernel.zoneout = pk.pack(np.asarray(zoneout), go_backwards,
                                    by_step=True).astype(dtype, copy=False).reshape(-1)


def _full(lengths, x):
    """Every row its full length when only zoneout brings a pass here."""
    return np.full(x.shape[1], x.shape[0]) if lengths is None else lengths


def _cache(cell, pk, saved, training, **options):
    if not training:
        return None
    saved.update(packing=pk, **options)
    return Cache("cpu", cell, saved, made_by="packed")


def _packed(module, x, kernel, recurrent_kernel, lengths, zoneout, go_backwards,
            input_dropout_mask, recurrent_dropout_mask):
    """(settings, the packing, x's packed rows, the sorted recurrent dropout mask) of a
    forward pass of `module`'s cell."""
    H, G = recurrent_kernel.shape
    settings = kernel_settings()
    pk = _layout(module, x, _full(lengths, x), G, H, settings)
    _zoned(pk, zoneout, go_backwards, kernel.dtype)
    return (settings, pk, _packed_inputs(pk, x, input_dropout_mask),
            _sorted(pk, recurrent_dropout_mask))


def _taken(cache, cell, dy, dh):
    """(the saved dict, the packing, dy packed, dh_T sorted) of a backward pass."""
    d = cache.take("cpu", cell)
    pk = d["packing"]
    H = d["recurrent_kernel"].shape[0]
    dyp, dh = pk.output_grads(dy, dh, d["go_backwards"], d["return_sequences"], pk.B, H,
                              d["z"].dtype)
    return d, pk, dyp, pk.sort(dh)


def _grads(d, pk, out, n, **fields):
    """Grads from a kernel's backward `out`: dx unpacked (times the input dropout mask),
    dh0 unsorted, the given fields, and layer norm's past the first n outputs."""
    I = d["kernel"].shape[0]
    return Grads(inputs=_input_grads(pk, out[0], d["input_dropout_mask"], I, d["z"].dtype),
                 h0=pk.unsort(out[1]), **fields, **_ln_grads(out, n))


def lstm_forward(x, kernel, recurrent_kernel, bias, h0, c0, lengths, *, peephole,
                 zoneout=None, mask=None,
                 input_dropout_mask, recurrent_dropout_mask, activation, recurrent_activation,
                 coupled, go_backwards, return_sequences, training, layer_norm=None):
    settings, pk, xp, rdm = _packed(_lstm, x, kernel, recurrent_kernel, lengths, zoneout,
                                    go_backwards, input_dropout_mask, recurrent_dropout_mask)
    with single_threaded_blas():
        y, h, c, saved = _lstm.forward(
            xp, kernel, recurrent_kernel, bias, pk.sort(h0), pk.sort(c0), peephole, None, None,
            rdm, activation, recurrent_activation, coupled, go_backwards, return_sequences,
            training, settings, packing=pk.kernel, layer_norm=layer_norm)
    h, c = pk.unsort(h), pk.unsort(c)
    y = pk.outputs(y, h, go_backwards, return_sequences)
    cache = _cache("lstm", pk, saved, training, kernel=kernel,
                   recurrent_kernel=recurrent_kernel, peephole=peephole,
                   input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=rdm,
                   activation=activation, recurrent_activation=recurrent_activation,
                   coupled=coupled, go_backwards=go_backwards,
                   return_sequences=return_sequences, has_bias=bias is not None)
    return y, h, c, cache


def lstm_backward(cache, dy, dh, dc):
    d, pk, dyp, dh = _taken(cache, "lstm", dy, dh)
    dc = np.zeros_like(dh) if dc is None else pk.sort(dc)
    with single_threaded_blas():
        out = _lstm.backward(
            d["x"], d["z"], d["c"], d["hin"], d["c0"], d["kernel"], d["recurrent_kernel"],
            d["peephole"], None, None, d["recurrent_dropout_mask"], d["activation"],
            d["recurrent_activation"], d["coupled"], d["go_backwards"], d["return_sequences"],
            d["has_bias"], dyp, dh, dc, d["x"], kernel_settings(),
            packing=pk.kernel, ln_saved=d["ln"])
    return _grads(d, pk, out, 7, c0=pk.unsort(out[2]), kernel=out[3], recurrent_kernel=out[4],
                  bias=out[5], peephole=out[6])


def gru_forward(x, kernel, recurrent_kernel, bias, h0, lengths, *, reset_after,
                zoneout=None, mask=None,
                input_dropout_mask, recurrent_dropout_mask, activation, recurrent_activation,
                go_backwards, return_sequences, training, layer_norm=None):
    settings, pk, xp, rdm = _packed(_gru, x, kernel, recurrent_kernel, lengths, zoneout,
                                    go_backwards, input_dropout_mask, recurrent_dropout_mask)
    with single_threaded_blas():
        y, h, saved = _gru.forward(
            xp, kernel, recurrent_kernel, None if bias is None else bias.reshape(-1),
            pk.sort(h0), None, None, rdm, activation, recurrent_activation, reset_after,
            go_backwards, return_sequences, training, settings, packing=pk.kernel,
            layer_norm=layer_norm)
    h = pk.unsort(h)
    y = pk.outputs(y, h, go_backwards, return_sequences)
    cache = _cache("gru", pk, saved, training, kernel=kernel,
                   recurrent_kernel=recurrent_kernel, reset_after=reset_after,
                   input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=rdm,
                   activation=activation, recurrent_activation=recurrent_activation,
                   go_backwards=go_backwards, return_sequences=return_sequences,
                   has_bias=bias is not None)
    return y, h, cache


def gru_backward(cache, dy, dh):
    d, pk, dyp, dh = _taken(cache, "gru", dy, dh)
    with single_threaded_blas():
        out = _gru.backward(
            d["x"], d["z"], d["h_prev"], d["hin"], d["rh"], d["kernel"],
            d["recurrent_kernel"], None, None, d["recurrent_dropout_mask"], d["activation"],
            d["recurrent_activation"], d["reset_after"], d["go_backwards"],
            d["return_sequences"], d["has_bias"], dyp, dh, d["x"],
            kernel_settings(), packing=pk.kernel, ln_saved=d["ln"])
    return _grads(d, pk, out, 5, kernel=out[2], recurrent_kernel=out[3], bias=out[4])


def simple_rnn_forward(x, kernel, recurrent_kernel, bias, h0, lengths, *, input_dropout_mask,
                       zoneout=None, mask=None,
                       recurrent_dropout_mask, activation, go_backwards, return_sequences,
                       training, layer_norm=None):
    settings, pk, xp, rdm = _packed(_simple_rnn, x, kernel, recurrent_kernel, lengths, zoneout,
                                    go_backwards, input_dropout_mask, recurrent_dropout_mask)
    with single_threaded_blas():
        y, h, saved = _simple_rnn.forward(
            xp, kernel, recurrent_kernel, bias, pk.sort(h0), None, None, rdm, activation,
            go_backwards, return_sequences, training, settings, packing=pk.kernel,
            layer_norm=layer_norm)
    h = pk.unsort(h)
    y = pk.outputs(y, h, go_backwards, return_sequences)
    cache = _cache("simple_rnn", pk, saved, training, kernel=kernel,
                   recurrent_kernel=recurrent_kernel, input_dropout_mask=input_dropout_mask,
                   recurrent_dropout_mask=rdm, activation=activation,
                   go_backwards=go_backwards, return_sequences=return_sequences,
                   has_bias=bias is not None)
    return y, h, cache


def simple_rnn_backward(cache, dy, dh):
    d, pk, dyp, dh = _taken(cache, "simple_rnn", dy, dh)
    with single_threaded_blas():
        out = _simple_rnn.backward(
            d["x"], d["z"], d["hin"], d["kernel"], d["recurrent_kernel"], None, None,
            d["recurrent_dropout_mask"], d["activation"], d["go_backwards"],
            d["return_sequences"], d["has_bias"], dyp, dh, d["x"],
            kernel_settings(), packing=pk.kernel, ln_saved=d["ln"])
    return _grads(d, pk, out, 5, kernel=out[2], recurrent_kernel=out[3], bias=out[4])
