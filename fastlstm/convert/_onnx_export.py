"""fastlstm -> ONNX (``to_onnx``) with the standard ``LSTM`` / ``GRU`` / ``RNN`` operators;
the layouts both directions share are in _onnx_shared.

Export (``to_onnx``) writes one recurrent node per layer (``direction`` "forward",
"reverse" for ``go_backwards``, "bidirectional" for ``Bidirectional``), ``Transpose`` between
fastlstm's batch-major ``(B, T, F)`` and ONNX's time-major ``(T, B, F)``, ``MatMul`` / ``Add``
and an activation for ``Dense``, ``Gather`` for ``Embedding``; batch and sequence length are
dynamic.

Masks: ONNX's ``sequence_lens`` covers only trailing padding. ``Masking`` and
``Embedding(mask_zero=True)`` export as the per-row count of unmasked steps fed to every
following recurrent node, so a masked model exports exactly when every row's padding is at
its end (post-padding; Keras's ``pad_sequences(padding="post")``). Steps past a row's length
then match fastlstm: a one-directional ``return_sequences`` layer repeats its last valid
output (fastlstm carries it; exported with ``GatherElements``), Bidirectional outputs and
those of a layer with ``zero_output_for_mask=True`` are zeros (as Keras and fastlstm),
final states are those at the last valid step. Pre-padded rows give different results: ONNX
has no way to skip leading steps.

Functional models (``fl.Model``) are exported by _onnx_export_graph with these pieces.
"""
from __future__ import annotations

import os

import numpy as np

from ._common import (FL_TO_ONNX_LSTM, PEEPHOLE_SWAP, ConversionError, blocks, fl_layers,
                      is_sequential, layers_of, require, resolve_dtype, rnn_kind)
from ._onnx_shared import DEFAULT_ACTS, GATES

__all__ = ["to_onnx"]

_MIN_OPSET = 14
_ONNX_KIND = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}
_INT64_MIN = -(2 ** 63)


class _Builder:
    """Collects nodes and initializers with unique names (onnx helper API)."""

    def __init__(self, onnx, np_dtype, opset):
        self.onnx = onnx
        self.h = onnx.helper
        self.np_dtype = np.dtype(np_dtype)
        TP = onnx.TensorProto
        self.elem = TP.DOUBLE if self.np_dtype == np.float64 else TP.FLOAT
        self.opset = opset
        self.nodes, self.inits, self.used = [], [], set()
        self.cache = {}             # (id(layer), tag) -> initializer: a shared layer's weights

    def name(self, base):
        n, k = base, 0
        while n in self.used:
            k += 1
            n = f"{base}_{k}"
        self.used.add(n)
        return n

    def const(self, arr, base, dtype=None, key=None):
        if key is not None and key in self.cache:
            return self.cache[key]
        arr = np.array(arr, dtype if dtype is not None else self.np_dtype, order="C")  # keeps 0-d
        name = self.name(base)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        if key is not None:
            self.cache[key] = name
        return name

    def i64(self, values, base):
        return self.const(np.asarray(values, np.int64), base, np.int64)

    def op(self, op_type, inputs, base=None, n_out=1, **attrs):
        base = base or op_type.lower()
        outs = [self.name(f"{base}_out{k}" if n_out > 1 else base) for k in range(n_out)]
        self.nodes.append(self.h.make_node(op_type, list(inputs), outs, name=self.name(
            f"{base}_node"), **attrs))
        return outs if n_out > 1 else outs[0]

    def transpose(self, x, perm, base="transpose"):
        return self.op("Transpose", [x], base, perm=list(perm))

    def squeeze(self, x, axes, base="squeeze"):
        return self.op("Squeeze", [x, self.i64(axes, base + "_axes")], base)

    def unsqueeze(self, x, axes, base="unsqueeze"):
        return self.op("Unsqueeze", [x, self.i64(axes, base + "_axes")], base)

    def reduce(self, op_type, x, axes, keepdims, base):
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.i64(axes, base + "_axes")], base, keepdims=keepdims)
        return self.op(op_type, [x], base, axes=list(axes), keepdims=keepdims)

    def reverse_time(self, x, base="reverse_time"):
        """x[::-1] along axis 0 (dynamic length)."""
        return self.op("Slice", [x, self.i64([-1], base + "_starts"),
                                 self.i64([_INT64_MIN], base + "_ends"),
                                 self.i64([0], base + "_axes"), self.i64([-1], base + "_steps")],
                       base)


class _Flow:
    """The tensor flowing between layers during export."""

    def __init__(self, value, rank, lens=None, trailing=True):
        self.value = value          # tensor name, batch-major
        self.rank = rank            # 3: (B, T, F); 2: (B, F)
        self.lens = lens            # int32 (B,) unmasked-step counts, or None (no mask)
        self.trailing = trailing    # the mask is still post-padding in this tensor's order


def _onnx_activation(act, where):
    """(ONNX name, alpha, beta) of a fastlstm activation."""
    from .. import activations
    c = act.code
    if c == activations.TANH:
        return ("Tanh", None, None)
    if c == activations.SIGMOID:
        return ("Sigmoid", None, None)
    if c == activations.RELU:
        return ("Relu", None, None)
    if c == activations.SOFTSIGN:
        return ("Softsign", None, None)
    if c == activations.LINEAR:
        return ("Affine", 1.0, 0.0)
    if c == activations.HARD_SIGMOID:
        return ("HardSigmoid", act.alpha, act.beta)
    raise ConversionError(f"to_onnx: {where}: activation {act!r} has no ONNX equivalent")


def _activation_attrs(funcs, onnx_kind):
    """The activations / activation_alpha / activation_beta attributes (none if default)."""
    n_dirs = len(funcs) // len(DEFAULT_ACTS[onnx_kind])
    if [f[0] for f in funcs] == DEFAULT_ACTS[onnx_kind] * n_dirs:
        return {}
    if any(f[1] is not None for f in funcs if f[0] != "Affine"):
        # Parameters are needed: write tanh as ScaledTanh(1, 1) so that more (ideally all)
        # functions take them and both readings of the ONNX text agree.
        funcs = [("ScaledTanh", 1.0, 1.0) if f[0] == "Tanh" else f for f in funcs]
    attrs = {"activations": [f[0] for f in funcs]}
    alphas = [f[1] for f in funcs if f[1] is not None]
    betas = [f[2] for f in funcs if f[2] is not None]
    if alphas:
        attrs["activation_alpha"] = [float(a) for a in alphas]
        attrs["activation_beta"] = [float(b) for b in betas]
    return attrs


def _lstm_direction(layer, where):
    """ONNX (W, R, B, P or None) of one fastlstm LSTM direction (float64)."""
    if getattr(layer, "proj_size", 0):
        raise ConversionError(f"to_onnx: {where} has proj_size={layer.proj_size}: ONNX has no "
                              "operator for a projected LSTM (its LSTM has no projection)")
    from .. import activations
    H = layer.units
    ws = [np.asarray(w, np.float64) for w in layer.get_weights()]
    kernel, rec = ws[0], ws[1]
    bias = ws[2] if layer.use_bias else np.zeros(kernel.shape[1])
    peep = ws[-1] if layer.use_peepholes else None
    if layer.coupled_input_forget:
        ra = layer.recurrent_activation
        symmetric = ra.code == activations.SIGMOID or (
            ra.code == activations.HARD_SIGMOID and ra.beta == 0.5)
        if not symmetric:
            raise ConversionError(
                f"to_onnx: {where} has coupled_input_forget=True with recurrent_activation "
                f"{ra!r}: ONNX's input_forget computes f = 1 - i from the input gate, which "
                "equals fastlstm's i = 1 - f only for an activation with s(-z) = 1 - s(z) "
                "(sigmoid, or a hard sigmoid with beta=0.5)")
        # fastlstm [f|c|o] -> [i|f|c|o] with i = -f (see the module notes).
        kernel = np.concatenate([-kernel[:, :H], kernel], axis=1)
        rec = np.concatenate([-rec[:, :H], rec], axis=1)
        bias = np.concatenate([-bias[:H], bias])
        if peep is not None:
            peep = np.stack([-peep[1], peep[1], peep[2]])
    W = blocks(kernel.T, FL_TO_ONNX_LSTM, 4)
    R = blocks(rec.T, FL_TO_ONNX_LSTM, 4)
    B = np.concatenate([blocks(bias, FL_TO_ONNX_LSTM, 4), np.zeros(4 * H)])
    P = None if peep is None else blocks(peep, PEEPHOLE_SWAP, 3).reshape(-1)
    return W, R, B, P


def _direction(layer, kind, where):
    if kind == "LSTM":
        return _lstm_direction(layer, where)
    ws = [np.asarray(w, np.float64) for w in layer.get_weights()]
    G = GATES[_ONNX_KIND[kind]]
    H = layer.units
    if not layer.use_bias:
        B = np.zeros(2 * G * H)
    elif kind == "GRU" and layer.reset_after:
        B = np.concatenate([ws[2][0], ws[2][1]])
    else:
        B = np.concatenate([ws[2], np.zeros(G * H)])
    return ws[0].T, ws[1].T, B, None


def _functions(layer, kind, where):
    main = _onnx_activation(layer.activation, where + " activation")
    if kind == "SimpleRNN":
        return [main]
    rec = _onnx_activation(layer.recurrent_activation, where + " recurrent_activation")
    return [rec, main, main] if kind == "LSTM" else [rec, main]


def _recurrent_node(b, dirs, direction, x_tbf, lens, where, initial=(None, None)):
    """One ONNX LSTM/GRU/RNN node for the direction layers ``dirs`` -> (Y, Y_h, Y_c);
    ``initial``: the initial_h / initial_c tensors ``(D, B, H)`` or None."""
    kind = rnn_kind(dirs[0])
    okind = _ONNX_KIND[kind]
    for layer in dirs:
        if rnn_kind(layer) != kind or layer.units != dirs[0].units:
            raise ConversionError(f"to_onnx: {where}: both directions of an ONNX node have "
                                  "one cell type and hidden size")
    for layer in dirs:
        if getattr(layer, "layer_norm", False):
            who = where if layer is dirs[0] and len(dirs) == 1 else \
                f"{where} ({type(layer).__name__} {layer.name!r})"
            raise ConversionError(
                f"to_onnx: {who} has layer_norm=True: ONNX has no layer-normalized {kind} "
                f"(its {_ONNX_KIND[kind]} operator normalizes nothing)")
        if getattr(layer, "zoneout", 0):
            raise ConversionError(
                f"to_onnx: {where} ({type(layer).__name__} {layer.name!r}) has "
                f"zoneout={layer.zoneout}: ONNX's {_ONNX_KIND[kind]} operator has no zoneout, "
                "which changes inference too (h_t = (1-p) h~_t + p h_{t-1})")
    H = dirs[0].units
    parts = [_direction(layer, kind, f"{where}") for layer in dirs]
    attrs = dict(hidden_size=H, direction=direction)
    funcs = []
    for layer in dirs:
        funcs += _functions(layer, kind, where)
    attrs.update(_activation_attrs(funcs, okind))
    if kind == "GRU":
        forms = {layer.reset_after for layer in dirs}
        if len(forms) > 1:
            raise ConversionError(f"to_onnx: {where}: one direction has reset_after=True, the "
                                  "other False; an ONNX GRU node has one linear_before_reset")
        attrs["linear_before_reset"] = int(forms.pop())
    if kind == "LSTM":
        cifg = {layer.coupled_input_forget for layer in dirs}
        if len(cifg) > 1:
            raise ConversionError(f"to_onnx: {where}: one direction has coupled_input_forget, "
                                  "the other not; an ONNX LSTM node has one input_forget")
        if cifg.pop():
            attrs["input_forget"] = 1
    key = tuple(id(layer) for layer in dirs)
    W = b.const(np.stack([p[0] for p in parts]), "W", key=key + ("W",))
    R = b.const(np.stack([p[1] for p in parts]), "R", key=key + ("R",))
    inputs = [x_tbf, W, R]
    if any(layer.use_bias for layer in dirs):
        inputs.append(b.const(np.stack([p[2] for p in parts]), "B", key=key + ("B",)))
    else:
        inputs.append("")
    inputs.append(lens if lens is not None else "")
    inputs += [initial[0] or "", (initial[1] or "") if kind == "LSTM" else ""]
    if kind == "LSTM" and any(p[3] is not None for p in parts):
        P = np.stack([p[3] if p[3] is not None else np.zeros(3 * H) for p in parts])
        inputs.append(b.const(P, "P", key=key + ("P",)))
    while inputs and inputs[-1] == "":
        inputs.pop()
    n_out = 3 if kind == "LSTM" else 2
    outs = b.op(okind, inputs, okind.lower(), n_out=n_out, **attrs)
    return outs[0], outs[1], (outs[2] if kind == "LSTM" else None)


def _carry_forward(b, y_tbh, lens):
    """Steps past each row's length repeat its last valid output: y[min(t, len-1)]."""
    shape = b.op("Shape", [y_tbh], "carry_shape")
    T = b.op("Gather", [shape, b.i64(0, "carry_t_index")], "carry_T", axis=0)
    steps = b.op("Range", [b.i64(0, "carry_start"), T, b.i64(1, "carry_delta")], "carry_steps")
    t_col = b.unsqueeze(steps, [1], "carry_t")
    last = b.op("Sub", [b.op("Cast", [lens], "carry_lens", to=b.onnx.TensorProto.INT64),
                        b.i64(1, "carry_one")], "carry_last")
    idx = b.op("Min", [t_col, b.unsqueeze(last, [0], "carry_last_row")], "carry_idx")
    idx = b.op("Expand", [b.unsqueeze(idx, [2], "carry_idx3"), shape], "carry_idx_full")
    return b.op("GatherElements", [y_tbh, idx], "carried", axis=0)


def _export_recurrent(b, layer, flow, where, outputs, initial=(None, None)):
    """Appends the nodes of a recurrent layer or Bidirectional; returns the new flow (its
    final states, with ``return_state``, are appended to ``outputs``)."""
    L = fl_layers()
    if flow.rank != 3:
        raise ConversionError(f"to_onnx: {where} needs a sequence input (B, T, F)")
    if flow.lens is not None and not flow.trailing:
        raise ConversionError(
            f"to_onnx: {where} gets a mask that an earlier go_backwards layer reversed into "
            "leading padding, which ONNX's sequence_lens cannot express")
    bidir = isinstance(layer, L.Bidirectional)
    if bidir:
        f, bw = layer.forward_layer, layer.backward_layer
        if f.go_backwards or not bw.go_backwards:
            raise ConversionError(f"to_onnx: {where}: its forward layer runs backwards; an ONNX "
                                  "bidirectional node runs the first direction forwards")
        dirs, direction = [f, bw], "bidirectional"
        main = f
        if layer.merge_mode is None:
            raise ConversionError(f"to_onnx: {where} has merge_mode=None (two outputs); use "
                                  "concat, sum, ave or mul")
    else:
        dirs, direction, main = [layer], ("reverse" if layer.go_backwards else "forward"), layer
    x_tbf = b.transpose(flow.value, (1, 0, 2), "to_time_major")
    Y, Y_h, Y_c = _recurrent_node(b, dirs, direction, x_tbf, flow.lens, where, initial)
    rs = main.return_sequences
    if bidir:
        mode = layer.merge_mode
        if rs:
            if mode == "concat":
                out = b.op("Reshape", [b.transpose(Y, (2, 0, 1, 3), "y_btdh"),
                                       b.i64([0, 0, -1], "concat_shape")], "bidirectional_out")
            else:
                red = {"sum": "ReduceSum", "ave": "ReduceMean", "mul": "ReduceProd"}[mode]
                out = b.transpose(b.reduce(red, Y, [1], 0, "merge_" + mode), (1, 0, 2),
                                  "bidirectional_out")
        else:
            if mode == "concat":
                out = b.op("Reshape", [b.transpose(Y_h, (1, 0, 2), "h_bdh"),
                                       b.i64([0, -1], "concat_shape")], "bidirectional_out")
            else:
                red = {"sum": "ReduceSum", "ave": "ReduceMean", "mul": "ReduceProd"}[mode]
                out = b.reduce(red, Y_h, [0], 0, "merge_" + mode)
        new = _Flow(out, 3 if rs else 2, flow.lens if rs else None, flow.trailing)
        if main.return_state:
            for d in range(2):
                outputs.append(b.op("Gather", [Y_h, b.i64(d, "dir")], "state_h", axis=0))
                if Y_c is not None:
                    outputs.append(b.op("Gather", [Y_c, b.i64(d, "dir")], "state_c", axis=0))
        return new
    zero = getattr(layer, "zero_output_for_mask", False)
    if zero and flow.lens is not None and not rs and not layer.go_backwards:
        raise ConversionError(f"to_onnx: {where} has zero_output_for_mask=True and "
                              "return_sequences=False under a mask: its output is zero for every "
                              "row whose last step is padding, which the exported node cannot "
                              "express; use return_sequences=True or zero_output_for_mask=False")
    if rs:
        y = b.squeeze(Y, [1], "y_tbh")
        if layer.go_backwards:
            y = b.reverse_time(y)            # fastlstm returns the steps in processing order
        elif flow.lens is not None and not zero:
            y = _carry_forward(b, y, flow.lens)   # (with zero_output_for_mask: ONNX's zeros)
        out = b.transpose(y, (1, 0, 2), "to_batch_major")
        new = _Flow(out, 3, flow.lens, flow.trailing and not layer.go_backwards)
    else:
        new = _Flow(b.squeeze(Y_h, [0], "last_h"), 2)
    if layer.return_state:
        outputs.append(b.squeeze(Y_h, [0], "state_h"))
        if Y_c is not None:
            outputs.append(b.squeeze(Y_c, [0], "state_c"))
    return new


def _apply_activation(b, act, z, where):
    """``act(z)``: Softmax over the last axis or the activation's own operator."""
    from .. import activations
    if getattr(act, "name", None) == "softmax" and not hasattr(act, "code"):
        return b.op("Softmax", [z], "softmax", axis=-1)
    if act.code == activations.LINEAR:
        return z
    name, alpha, beta = _onnx_activation(act, where + " activation")
    kw = {} if alpha is None else dict(alpha=float(alpha), beta=float(beta))
    return b.op(name, [z], name.lower(), **kw)


def _export_dense(b, layer, flow, where):
    z = b.op("MatMul", [flow.value, b.const(layer.get_weights()[0], "kernel",
                                            key=(id(layer), "kernel"))], "dense_matmul")
    if layer.use_bias:
        z = b.op("Add", [z, b.const(layer.get_weights()[1], "bias", key=(id(layer), "bias"))],
                 "dense_bias")
    z = _apply_activation(b, layer.activation, z, where)
    return _Flow(z, flow.rank, flow.lens, flow.trailing)


def _keep_to_lens(b, keep_bool):
    keep_i = b.op("Cast", [keep_bool], "keep_int", to=b.onnx.TensorProto.INT32)
    return b.reduce("ReduceSum", keep_i, [1], 0, "seq_lens")


def to_onnx(obj, path=None, opset=17, dtype=None, input_name="input", output_name="output",
            check=True):
    """Write a fastlstm layer, ``fl.Sequential`` or functional ``fl.Model`` as an ONNX model;
    returns the ModelProto.

    Standard operators only: ``LSTM`` (peepholes in ``P``, order ``[i|o|f]``; CIFG through
    ``input_forget=1``), ``GRU`` (``linear_before_reset=1`` for ``reset_after=True``),
    ``RNN``; ``direction`` "forward" / "reverse" (go_backwards) / "bidirectional"
    (Bidirectional; merge modes concat, sum, ave, mul); activations ``Sigmoid``, ``Tanh``,
    ``Relu``, ``Softsign``, ``HardSigmoid`` (alpha/beta), ``Affine`` (linear);
    ``MatMul``/``Add`` and an activation or ``Softmax`` for Dense; ``Gather`` for Embedding
    (then the input is int64 ``(batch, time)``); Dropout is the identity; Masking and
    ``Embedding(mask_zero=True)`` become ``sequence_lens`` (post-padding only: see the module
    notes). The input ``input_name`` is batch-major ``(batch, time, features)`` with dynamic
    batch and time; outputs: ``output_name`` and, for a single layer with
    ``return_state=True``, ``state_h`` (and ``state_c``) per direction.

    ``opset``: 14 or later (default 17). ``dtype``: the graph's float type, default the
    model's (ONNX Runtime runs LSTM/GRU/RNN in float32 only; a float64 graph is valid ONNX
    for runtimes that do). ``check``: run ``onnx.checker.check_model`` (full check).

    A functional ``fl.Model`` keeps its input and output names (``input_name`` and
    ``output_name`` are not used) and exports the layers listed in _onnx_export_graph.
    """
    onnx = require("onnx", "fastlstm.convert.to_onnx")
    if isinstance(opset, bool) or not isinstance(opset, int) or not (
            _MIN_OPSET <= opset <= onnx.defs.onnx_opset_version()):
        raise ValueError(f"opset: expected an integer in [{_MIN_OPSET}, "
                         f"{onnx.defs.onnx_opset_version()}], got {opset!r}")
    from ..functional import Model
    if isinstance(obj, Model) and not is_sequential(obj):
        from . import _onnx_export_graph as fg
        b = _Builder(onnx, fg.model_dtype(obj, dtype), opset)
        inputs, outputs = fg.export_model(obj, b)
        return _finish(onnx, b, obj, inputs, outputs, opset, check, path)
    layers = layers_of(obj, "to_onnx")
    L = fl_layers()
    for layer in layers:
        if not isinstance(layer, (L.Masking, L.Dropout)) and not layer.built:
            raise ValueError(f"to_onnx: {layer.name} is not built; call the model once or "
                             "build(input_shape) first")
    dt = resolve_dtype(dtype, layers[0].dtype)
    b = _Builder(onnx, dt, opset)
    TP = onnx.TensorProto
    first = next((l for l in layers if not isinstance(l, (L.Masking, L.Dropout))), None)
    if first is None:
        raise ConversionError("to_onnx: the model has no layer with weights")
    if isinstance(layers[0], L.Embedding):
        inp = onnx.helper.make_tensor_value_info(input_name, TP.INT64, ["batch", "time"])
        rank = 2
    else:
        if isinstance(first, L.Bidirectional):
            in_dim = first.forward_layer.input_dim
        elif isinstance(first, L.Embedding):
            raise ConversionError(f"to_onnx: {first.name}: an Embedding must be the first layer")
        else:
            in_dim = first.input_dim
        rank = 3
        shape = getattr(obj, "input_shape", None)
        if rnn_kind(first) is None and not isinstance(first, L.Bidirectional) and shape:
            rank = len(shape)
        dims = ["batch", "time", in_dim] if rank == 3 else ["batch"] + list(shape[1:])
        inp = onnx.helper.make_tensor_value_info(input_name, b.elem, dims)
    b.used.add(input_name)
    flow = _Flow(input_name, rank)
    extra_outputs = []
    for i, layer in enumerate(layers):
        where = f"{type(layer).__name__} {layer.name!r}"
        if isinstance(layer, L.Dropout):
            continue
        if isinstance(layer, L.Masking):
            if flow.rank != 3:
                raise ConversionError(f"to_onnx: {where} needs a sequence input (B, T, F)")
            differs = b.op("Not", [b.op("Equal", [flow.value, b.const(
                np.asarray(layer.mask_value), "mask_value")], "is_mask_value")], "differs")
            keep_f = b.reduce("ReduceMax", b.op("Cast", [differs], "differs_float", to=b.elem),
                              [2], 0, "keep")
            keep = b.op("Cast", [keep_f], "keep_bool", to=TP.BOOL)
            masked = b.op("Mul", [flow.value, b.unsqueeze(keep_f, [2], "keep_col")], "masked")
            flow = _Flow(masked, 3, _keep_to_lens(b, keep), True)
        elif isinstance(layer, L.Embedding):
            if i != 0:
                raise ConversionError(f"to_onnx: {where}: an Embedding must be the first layer")
            emb = b.op("Gather", [b.const(layer.get_weights()[0], "embeddings"), flow.value],
                       "embedded", axis=0)
            lens = None
            if layer.mask_zero:
                keep = b.op("Not", [b.op("Equal", [flow.value, b.i64(0, "zero")], "is_zero")],
                            "keep_bool")
                lens = _keep_to_lens(b, keep)
            flow = _Flow(emb, 3, lens, True)
        elif isinstance(layer, L.Dense):
            flow = _export_dense(b, layer, flow, where)
        elif rnn_kind(layer) is not None or isinstance(layer, L.Bidirectional):
            if (layer.return_state if rnn_kind(layer) else layer.return_state) and len(layers) > 1:
                raise ConversionError(f"to_onnx: {where} has return_state=True inside a model")
            if getattr(layer, "stateful", False):
                raise ConversionError(f"to_onnx: {where} has stateful=True; an ONNX graph "
                                      "keeps no state between runs")
            flow = _export_recurrent(b, layer, flow, where, extra_outputs)
        else:
            raise ConversionError(f"to_onnx: {where} has no ONNX export")
    out = b.op("Identity", [flow.value], output_name)
    out_dims = ["batch", "time", None] if flow.rank == 3 else ["batch", None]
    outputs = [onnx.helper.make_tensor_value_info(out, b.elem, out_dims)]
    for name in extra_outputs:
        outputs.append(onnx.helper.make_tensor_value_info(name, b.elem, ["batch", None]))
    return _finish(onnx, b, obj, [inp], outputs, opset, check, path)


def _finish(onnx, b, obj, inputs, outputs, opset, check, path):
    from .. import __version__
    graph = onnx.helper.make_graph(b.nodes, getattr(obj, "name", "fastlstm"), inputs, outputs,
                                   b.inits)
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="fastlstm",
                                   producer_version=__version__)
    model.ir_version = max(onnx.helper.find_min_ir_version_for(opsets), 8)
    if check:
        onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model
