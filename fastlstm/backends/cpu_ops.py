"""The ``cpu`` backend (default): the compiled kernels of ``src_c/`` behind the ``Ops`` API."""
from __future__ import annotations

import numpy as np

from . import cpu_packed
from .layer_norm_args import kernel_layer_norm as _ln_kernel, layer_norm_grads as _ln_grads
from .packing import prefix_lengths
from .cache_and_grads import Cache, Grads
from .numpy_ops import NumpyOps
from ..quantization import QuantizedMatrix
from . import mixed_products
from ..threads import kernel_settings, single_threaded_blas

try:
    from .. import _gru, _lstm, _simple_rnn
except ImportError as exc:  # pragma: no cover - only in a source tree without a build
    raise ImportError(
        "fastlstm's compiled kernels are not built. Install the package (pip install .) or, "
        "in a source checkout, build in place (pip install -e . / python setup.py build_ext "
        f"--inplace). Import error: {exc}") from exc


def _weights(kernel, recurrent_kernel):
    """(kernel, recurrent_kernel, quant) for a kernel call: float arrays as they are, or
    quantized ones (fastlstm.quantization) as None, None and the pair."""
    if isinstance(kernel, QuantizedMatrix):
        return None, None, (kernel, recurrent_kernel)
    return kernel, recurrent_kernel, None


def _mixed_weights(kernel, recurrent_kernel, mixed, wsplit=0, usplit=0):
    """_weights, or for mixed_bfloat16 the float32 weights rounded to bf16 for this call."""
    if mixed:
        return None, None, mixed_products.weights(kernel, recurrent_kernel, wsplit, usplit)
    return _weights(kernel, recurrent_kernel)


def quantized(kernel):
    return isinstance(kernel, QuantizedMatrix)


def _u8(mask):
    return None if mask is None else mask.view(np.uint8)


def _read_only(y, return_sequences):
    """A training forward's output sequence may be the buffer of the states its backward
    reads (grad_buffers.states_and_outputs): written to, it would change the gradients."""
    if return_sequences:
        y.flags.writeable = False


def _time_major(x, copy):
    """x [T,B,I] for the kernels, and whether it is a copy made here. Training (copy) takes
    it C-contiguous, for the weight gradient: a layer's batch-major input, transposed, is
    then copied, nothing else holds the copy, and the backward pass writes the input
    gradient over it once the weight gradient has read it. Inference reads the rows where
    they lie, a chunk of steps at a time (products.chunk_rows)."""
    if x.flags.c_contiguous or not copy:
        return x, False
    return np.ascontiguousarray(x), True


def _mixed_unpacked(x, mask, lengths):
    """The [T,B] mask a mixed_bfloat16 pass runs with: its bf16 products live in the sequence
    driver, not in the packed loop, so sequence lengths become the prefix mask they stand
    for (the same results, without the saving on padding). With zoneout the oracle runs it."""
    steps = np.arange(x.shape[0])[:, None] < np.asarray(lengths)[None, :]
    return steps if mask is None else np.logical_and(np.asarray(mask, bool), steps)


def _ln(layer_norm):
    """The oracle's layer_norm keyword (empty without it)."""
    return {} if layer_norm is None else {"layer_norm": layer_norm}


def _zoneout_lengths(x, mask, lengths):
    """(lengths, whether the oracle runs it) of a pass with zoneout, which the kernels run
    on the packed loop: rows of full length, or a prefix mask's lengths; a mask with gaps,
    an empty batch or no step to run anywhere go to the oracle."""
    if lengths is None and mask is not None:
        lengths = prefix_lengths(mask)
        if lengths is None:
            return None, True
    if x.shape[1] == 0 or x.shape[2] == 0 or (lengths is not None and not np.any(lengths)):
        return lengths, True
    return lengths, False


def _path(x, kernel, mask, lengths, zoneout, mixed, layer_norm):
    """(where a forward runs: "oracle", "packed" or "kernel", its mask, its lengths).
    Layer norm in bf16 or on quantized weights, zoneout under a mask with gaps or in bf16,
    an empty batch and no features go to the oracle (NumPy); rows of different lengths and
    zoneout to the packed loop (cpu_packed.py); the rest to the row loop."""
    if layer_norm is not None and (mixed or quantized(kernel)):
        return "oracle", mask, lengths
    if mixed and lengths is not None:
        mask, lengths = _mixed_unpacked(x, mask, lengths), None
    if zoneout is not None:
        lengths, oracle = _zoneout_lengths(x, mask, lengths)
        return ("oracle" if oracle or mixed else "packed"), mask, lengths
    if lengths is not None:
        return "packed", mask, lengths
    if x.shape[1] == 0 or x.shape[2] == 0:
        return "oracle", mask, lengths
    return "kernel", mask, lengths


def _dx_into(saved, x, copied, input_dropout_mask):
    """A buffer of x's shape that the backward pass may overwrite: x times the dropout mask
    (the forward pass's own array), or the copy _time_major made."""
    return saved["x"] if input_dropout_mask is not None else (x if copied else None)


class CpuOps(NumpyOps):
    name = "cpu"
    # x and dy [T,B,·] may come with any row strides (a layer's batch-major arrays,
    # transposed): dy is read where it lies, x copied here once. Every kernel call takes
    # fastlstm.threads's settings (threads, product policy) as its last argument.
    reads_rows_apart = True
    # Rows of different lengths (sequence_lengths, a prefix mask) run only up to their
    # lengths: cpu_packed.py.
    packs_lengths = True

    @staticmethod
    def isa() -> str:
        """The elementwise code path this CPU runs (avx512, avx2, baseline, neon)."""
        from .. import _gates
        return _gates.isa()

    def lstm_forward(self, x, kernel, recurrent_kernel, bias, h0, c0, *, peephole=None,
                     mask=None, input_dropout_mask=None, recurrent_dropout_mask=None,
                     activation, recurrent_activation, coupled=False, go_backwards=False,
                     return_sequences=True, training=False, lengths=None, zoneout=None,
                     mixed=False, layer_norm=None):
        path, mask, lengths = _path(x, kernel, mask, lengths, zoneout, mixed, layer_norm)
        if path == "oracle":
            return super().lstm_forward(
                x, kernel, recurrent_kernel, bias, h0, c0, peephole=peephole, mask=mask,
                input_dropout_mask=input_dropout_mask,
                recurrent_dropout_mask=recurrent_dropout_mask, activation=activation,
                recurrent_activation=recurrent_activation, coupled=coupled,
                go_backwards=go_backwards, return_sequences=return_sequences, training=training,
                mixed=mixed, lengths=lengths, zoneout=zoneout, **_ln(layer_norm))
        if path == "packed":
            return cpu_packed.lstm_forward(
                x, kernel, recurrent_kernel, bias, h0, c0, lengths, zoneout=zoneout,
                mask=mask, peephole=peephole,
                input_dropout_mask=input_dropout_mask,
                recurrent_dropout_mask=recurrent_dropout_mask, activation=activation,
                recurrent_activation=recurrent_activation, coupled=coupled,
                go_backwards=go_backwards, return_sequences=return_sequences,
                training=training, **_ln_kernel(layer_norm))
        x, copied = _time_major(x, training or input_dropout_mask is not None)
        with single_threaded_blas():      # the kernel threads itself (fastlstm.threads)
            W, U, quant = _mixed_weights(kernel, recurrent_kernel, mixed)
            y, h, c, saved = _lstm.forward(
                x, W, U, bias, h0, c0, peephole, _u8(mask),
                input_dropout_mask, recurrent_dropout_mask, activation, recurrent_activation,
                coupled, go_backwards, return_sequences, training, kernel_settings(),
                quant=quant, **_ln_kernel(layer_norm))
        cache = None
        if training:
            _read_only(y, return_sequences)
            saved["dx_into"] = _dx_into(saved, x, copied, input_dropout_mask)
            saved.update(kernel=kernel, recurrent_kernel=recurrent_kernel, peephole=peephole,
                         mask=mask, input_dropout_mask=input_dropout_mask,
                         recurrent_dropout_mask=recurrent_dropout_mask, activation=activation,
                         recurrent_activation=recurrent_activation, coupled=coupled,
                         go_backwards=go_backwards, return_sequences=return_sequences,
                         has_bias=bias is not None, mixed=mixed)
            cache = Cache(self.name, "lstm", saved, made_by="cython")
        return y, h, c, cache

    def lstm_backward(self, cache, dy=None, dh=None, dc=None):
        if cache.made_by == "oracle":      # the oracle paths of _path
            return super().lstm_backward(cache, dy, dh, dc)
        if cache.made_by == "packed":
            return cpu_packed.lstm_backward(cache, dy, dh, dc)
        d = cache.take(self.name, "lstm")
        mixed = d["mixed"]
        with single_threaded_blas():
            out = _lstm.backward(
                d["x"], d["z"], d["c"], d["hin"], d["c0"], d["kernel"], d["recurrent_kernel"],
                d["peephole"], _u8(d["mask"]), d["input_dropout_mask"],
                d["recurrent_dropout_mask"], d["activation"], d["recurrent_activation"],
                d["coupled"], d["go_backwards"], d["return_sequences"], d["has_bias"], dy, dh, dc,
                d["dx_into"], kernel_settings(),
                mixed=[mixed_products.bf16_matrix(d["recurrent_kernel"].T)] if mixed else None,
                ln_saved=d["ln"])
        dx, dh0, dc0, dW, dU, db, dP = out[:7]
        if mixed:
            dx, dW, dU, db = mixed_products.dense_grads(
                d["x"], d["hin"], d["z"], d["kernel"], d["has_bias"], d["input_dropout_mask"],
                dx)
        return Grads(inputs=dx, h0=dh0, c0=dc0, kernel=dW, recurrent_kernel=dU, bias=db,
                     peephole=dP, **_ln_grads(out, 7))

    # -- GRU ---------------------------------------------------------------------------
    def gru_forward(self, x, kernel, recurrent_kernel, bias, h0, *, reset_after=True,
                    mask=None, input_dropout_mask=None, recurrent_dropout_mask=None,
                    activation, recurrent_activation, go_backwards=False,
                    return_sequences=True, training=False, lengths=None, zoneout=None,
                    mixed=False, layer_norm=None):
        path, mask, lengths = _path(x, kernel, mask, lengths, zoneout, mixed, layer_norm)
        if path == "oracle":
            return super().gru_forward(
                x, kernel, recurrent_kernel, bias, h0, reset_after=reset_after, mask=mask,
                input_dropout_mask=input_dropout_mask,
                recurrent_dropout_mask=recurrent_dropout_mask, activation=activation,
                recurrent_activation=recurrent_activation, go_backwards=go_backwards,
                return_sequences=return_sequences, training=training, mixed=mixed,
                lengths=lengths, zoneout=zoneout, **_ln(layer_norm))
        if path == "packed":
            return cpu_packed.gru_forward(
                x, kernel, recurrent_kernel, bias, h0, lengths, zoneout=zoneout, mask=mask,
                reset_after=reset_after,
                input_dropout_mask=input_dropout_mask,
                recurrent_dropout_mask=recurrent_dropout_mask, activation=activation,
                recurrent_activation=recurrent_activation, go_backwards=go_backwards,
                return_sequences=return_sequences, training=training, **_ln_kernel(layer_norm))
        x, copied = _time_major(x, training or input_dropout_mask is not None)
        with single_threaded_blas():
            H = recurrent_kernel.shape[0]
            W, U, quant = _mixed_weights(kernel, recurrent_kernel, mixed,
                                         2 * H if reset_after else 0, 0 if reset_after else 2 * H)
            y, h, saved = _gru.forward(
                x, W, U, None if bias is None else bias.reshape(-1), h0,
                _u8(mask), input_dropout_mask, recurrent_dropout_mask, activation,
                recurrent_activation, reset_after, go_backwards, return_sequences, training,
                kernel_settings(), quant=quant, **_ln_kernel(layer_norm))
        cache = None
        if training:
            _read_only(y, return_sequences)
            saved["dx_into"] = _dx_into(saved, x, copied, input_dropout_mask)
            saved.update(kernel=kernel, recurrent_kernel=recurrent_kernel,
                         reset_after=reset_after, mask=mask,
                         input_dropout_mask=input_dropout_mask,
                         recurrent_dropout_mask=recurrent_dropout_mask, activation=activation,
                         recurrent_activation=recurrent_activation, go_backwards=go_backwards,
                         return_sequences=return_sequences, has_bias=bias is not None,
                         mixed=mixed)
            cache = Cache(self.name, "gru", saved, made_by="cython")
        return y, h, cache

    def gru_backward(self, cache, dy=None, dh=None):
        if cache.made_by == "oracle":
            return super().gru_backward(cache, dy, dh)
        if cache.made_by == "packed":
            return cpu_packed.gru_backward(cache, dy, dh)
        d = cache.take(self.name, "gru")
        mixed, U = d["mixed"], d["recurrent_kernel"]
        uts = None
        if mixed:
            H = U.shape[0]
            uts = ([mixed_products.bf16_matrix(U.T)] if d["reset_after"] else
                   [mixed_products.bf16_matrix(U[:, :2 * H].T),
                    mixed_products.bf16_matrix(U[:, 2 * H:].T)])
        with single_threaded_blas():
            out = _gru.backward(
                d["x"], d["z"], d["h_prev"], d["hin"], d["rh"], d["kernel"],
                d["recurrent_kernel"], _u8(d["mask"]), d["input_dropout_mask"],
                d["recurrent_dropout_mask"], d["activation"], d["recurrent_activation"],
                d["reset_after"], d["go_backwards"], d["return_sequences"], d["has_bias"], dy, dh,
                d["dx_into"], kernel_settings(), mixed=uts, ln_saved=d["ln"])
        dx, dh0, dW, dU, db = out[:5]
        if mixed:
            hin = d["hin"] if d["recurrent_dropout_mask"] is not None else d["h_prev"]
            dx, dW, dU, db = mixed_products.gru_grads(
                d["x"], hin, d["rh"], d["z"], d["kernel"], d["reset_after"], d["has_bias"],
                d["input_dropout_mask"], dx)
        return Grads(inputs=dx, h0=dh0, kernel=dW, recurrent_kernel=dU, bias=db,
                     **_ln_grads(out, 5))

    # -- SimpleRNN ---------------------------------------------------------------------
    def simple_rnn_forward(self, x, kernel, recurrent_kernel, bias, h0, *, mask=None,
                           input_dropout_mask=None, recurrent_dropout_mask=None, activation,
                           go_backwards=False, return_sequences=True, training=False,
                           lengths=None, zoneout=None, mixed=False, layer_norm=None):
        path, mask, lengths = _path(x, kernel, mask, lengths, zoneout, mixed, layer_norm)
        if path == "oracle":
            return super().simple_rnn_forward(
                x, kernel, recurrent_kernel, bias, h0, mask=mask,
                input_dropout_mask=input_dropout_mask,
                recurrent_dropout_mask=recurrent_dropout_mask, activation=activation,
                go_backwards=go_backwards, return_sequences=return_sequences,
                training=training, mixed=mixed, lengths=lengths, zoneout=zoneout,
                **_ln(layer_norm))
        if path == "packed":
            return cpu_packed.simple_rnn_forward(
                x, kernel, recurrent_kernel, bias, h0, lengths, zoneout=zoneout, mask=mask,
                input_dropout_mask=input_dropout_mask,
                recurrent_dropout_mask=recurrent_dropout_mask, activation=activation,
                go_backwards=go_backwards, return_sequences=return_sequences,
                training=training, **_ln_kernel(layer_norm))
        # The kernel threads itself, as the LSTM's: BLAS (if it runs) single-threaded inside.
        x, copied = _time_major(x, training or input_dropout_mask is not None)
        with single_threaded_blas():
            W, U, quant = _mixed_weights(kernel, recurrent_kernel, mixed)
            y, h, saved = _simple_rnn.forward(
                x, W, U, bias, h0, _u8(mask), input_dropout_mask,
                recurrent_dropout_mask, activation, go_backwards, return_sequences, training,
                kernel_settings(), quant=quant, **_ln_kernel(layer_norm))
        cache = None
        if training:
            _read_only(y, return_sequences)
            saved["dx_into"] = _dx_into(saved, x, copied, input_dropout_mask)
            saved.update(kernel=kernel, recurrent_kernel=recurrent_kernel, mask=mask,
                         input_dropout_mask=input_dropout_mask,
                         recurrent_dropout_mask=recurrent_dropout_mask, activation=activation,
                         go_backwards=go_backwards, return_sequences=return_sequences,
                         has_bias=bias is not None, mixed=mixed)
            cache = Cache(self.name, "simple_rnn", saved, made_by="cython")
        return y, h, cache

    def simple_rnn_backward(self, cache, dy=None, dh=None):
        if cache.made_by == "oracle":
            return super().simple_rnn_backward(cache, dy, dh)
        if cache.made_by == "packed":
            return cpu_packed.simple_rnn_backward(cache, dy, dh)
        d = cache.take(self.name, "simple_rnn")
        mixed = d["mixed"]
        with single_threaded_blas():
            out = _simple_rnn.backward(
                d["x"], d["z"], d["hin"], d["kernel"], d["recurrent_kernel"], _u8(d["mask"]),
                d["input_dropout_mask"], d["recurrent_dropout_mask"], d["activation"],
                d["go_backwards"], d["return_sequences"], d["has_bias"], dy, dh, d["dx_into"],
                kernel_settings(),
                mixed=[mixed_products.bf16_matrix(d["recurrent_kernel"].T)] if mixed else None,
                ln_saved=d["ln"])
        dx, dh0, dW, dU, db = out[:5]
        if mixed:
            dx, dW, dU, db = mixed_products.dense_grads(
                d["x"], d["hin"], d["z"], d["kernel"], d["has_bias"], d["input_dropout_mask"],
                dx)
        return Grads(inputs=dx, h0=dh0, kernel=dW, recurrent_kernel=dU, bias=db,
                     **_ln_grads(out, 5))
