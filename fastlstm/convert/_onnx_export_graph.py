"""fastlstm functional models (``fl.Model``) -> ONNX: the graph's nodes in order, each layer
call as the operators of _onnx_export plus those of the layers only graphs hold.

Every model input and output is a graph input / output of the same name. A shared layer's
weights are one set of initializers that each call's nodes read. ``initial_state`` tensors
``(B, H)`` become the recurrent node's ``initial_h`` / ``initial_c`` ``(1, B, H)`` and the
states a ``return_state`` layer returns are its ``Y_h`` / ``Y_c``. Merges: Concatenate ->
``Concat``, Add -> ``Add`` (``Sum`` for more than two), Multiply -> ``Mul``, Average ->
``Mean``. Conv1D -> ``Conv`` between two ``Transpose`` (causal padding is the left pad);
LayerNormalization -> ``LayerNormalization`` (opset 17 or later); global poolings ->
``ReduceMean`` / ``ReduceMax`` over time; RepeatVector -> ``Unsqueeze`` + ``Tile``;
Flatten -> ``Reshape``; Activation -> its operator; TimeDistributed(Dense) as Dense; dot
Attention -> ``MatMul`` / ``Mul`` / ``Softmax`` / ``MatMul``.

Masks follow _onnx_export: ``sequence_lens`` of the recurrent nodes they reach, through
the layers that pass a mask on unchanged; a mask that reaches a layer using it otherwise (a
merge, a pooling, an attention layer) is refused.
"""
from __future__ import annotations

import numpy as np

from ._common import ConversionError, resolve_dtype, rnn_kind
from ._onnx_export import _apply_activation, _export_dense, _export_recurrent, _Flow, \
    _keep_to_lens

_MERGE_OPS = {"Add": "Add", "Multiply": "Mul", "Average": "Mean"}


def _flat(value):
    from ..graph import _flat_tensors
    return _flat_tensors(value)


def _check_no_mask(flows, where):
    if any(f.lens is not None for f in flows):
        raise ConversionError(f"to_onnx: {where} receives a mask (from Masking or "
                              "Embedding(mask_zero=True)); ONNX carries masks only as the "
                              "sequence_lens of recurrent nodes, which this layer has not")


def _states(b, node, values, layer, where):
    """initial_h / initial_c tensors (1, B, H) of a recurrent call, or (None, None)."""
    from ..graph import KerasTensor
    states = node.kwargs.get("initial_state")
    if states is None:
        return None, None
    if isinstance(states, KerasTensor):
        states = [states]
    if not all(isinstance(t, KerasTensor) for t in states):
        raise ConversionError(f"to_onnx: {where} gets an initial_state that is not a graph "
                              "tensor (a constant array); give it as a model input")
    want = 2 if rnn_kind(layer) == "LSTM" else 1
    if rnn_kind(layer) is None or len(states) != want:
        raise ConversionError(f"to_onnx: {where}: initial_state is exported for LSTM [h, c], "
                              "GRU and SimpleRNN [h]; not for Bidirectional")
    out = [b.unsqueeze(values[id(t)].value, [0], "initial_state") for t in states]
    return (out[0], out[1] if want == 2 else None)


def _attention(b, layer, node, flows, where):
    """Luong (dot) Attention: ``softmax(scale * q @ k^T) @ v`` as MatMul / Mul / Softmax
    (and the weights, where the call returns them)."""
    if layer.score_mode != "dot":
        raise ConversionError(f"to_onnx: {where} has score_mode={layer.score_mode!r}; only "
                              "'dot' is exported")
    if node.kwargs.get("use_causal_mask"):
        raise ConversionError(f"to_onnx: {where} is called with use_causal_mask=True, which "
                              "is not exported")
    q, v = flows[0], flows[1]
    k = flows[2] if len(flows) > 2 else v
    scores = b.op("MatMul", [q.value, b.transpose(k.value, (0, 2, 1), "key_t")], "scores")
    if layer.use_scale:
        scores = b.op("Mul", [scores, b.const(layer.get_weights()[0], "attention_scale",
                                              key=(id(layer), "scale"))], "scaled_scores")
    weights = b.op("Softmax", [scores], "attention_weights", axis=-1)
    out = _Flow(b.op("MatMul", [weights, v.value], "attended"), 3)
    return [out, _Flow(weights, 3)] if len(node.outputs) == 2 else [out]


def _conv1d(b, layer, flow, where):
    if layer.data_format != "channels_last":
        raise ConversionError(f"to_onnx: {where} has data_format={layer.data_format!r}; "
                              "only channels_last is exported")
    k, d, s = layer.kernel_size, layer.dilation_rate, layer.strides
    attrs = dict(kernel_shape=[k], strides=[s], dilations=[d], group=1)
    if layer.padding == "same" and s > 1:
        attrs["auto_pad"] = "SAME_UPPER"   # Keras: the extra step of padding on the right
    else:
        attrs["pads"] = list(layer._pads(0 if layer.padding != "same" else 1))
    ws = layer.get_weights()
    inputs = [b.transpose(flow.value, (0, 2, 1), "channels_first"),
              b.const(np.transpose(ws[0], (2, 1, 0)), "conv_kernel", key=(id(layer), "kernel"))]
    if layer.use_bias:
        inputs.append(b.const(ws[1], "conv_bias", key=(id(layer), "bias")))
    z = b.transpose(b.op("Conv", inputs, "conv", **attrs), (0, 2, 1), "channels_last")
    return _Flow(_apply_activation(b, layer.activation, z, where), 3)


def _layer_norm(b, layer, flow, where, rank):
    axes = layer._axes(rank)
    if axes != list(range(axes[0], rank)):
        raise ConversionError(f"to_onnx: {where} normalises over the axes {layer.axis!r}; "
                              "ONNX's LayerNormalization normalises over the last axes only")
    if b.opset < 17:
        raise ConversionError(f"to_onnx: {where} needs opset 17 or later "
                              f"(LayerNormalization); got opset={b.opset}")
    shape = layer._norm_shape
    ws = dict(zip(layer.weight_names, layer.get_weights()))
    scale = b.const(ws.get("gamma", np.ones(shape)), "ln_scale", key=(id(layer), "gamma"))
    bias = b.const(ws.get("beta", np.zeros(shape)), "ln_bias", key=(id(layer), "beta"))
    y = b.op("LayerNormalization", [flow.value, scale, bias], "layer_norm", axis=axes[0],
             epsilon=float(layer.epsilon))
    return _Flow(y, flow.rank, flow.lens, flow.trailing)


def _single(b, layer, flow, where, rank):
    """A single-input layer other than a recurrent one -> the new flow."""
    from .. import layers as L
    name = type(layer).__name__
    if isinstance(layer, L.Dropout):
        return flow
    if isinstance(layer, L.TimeDistributed):
        inner = layer.layer
        if isinstance(inner, (L.Dense, L.Dropout)) or type(inner).__name__ == "Activation":
            return _single(b, inner, flow, f"{where} ({type(inner).__name__})", rank)
        raise ConversionError(f"to_onnx: {where} wraps a {type(inner).__name__}; "
                              "TimeDistributed is exported for Dense, Activation and Dropout")
    if isinstance(layer, L.Dense):
        return _export_dense(b, layer, flow, where)
    if name == "Activation":
        return _Flow(_apply_activation(b, layer.activation, flow.value, where), flow.rank,
                     flow.lens, flow.trailing)
    if name == "LayerNormalization":
        return _layer_norm(b, layer, flow, where, rank)
    if name == "Conv1D":
        return _conv1d(b, layer, flow, where)          # Conv1D drops a mask (Keras)
    if name in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
        _check_no_mask([flow], where)
        axis = 2 if layer.data_format == "channels_first" else 1
        op = "ReduceMean" if name.startswith("GlobalAverage") else "ReduceMax"
        y = b.reduce(op, flow.value, [axis], int(layer.keepdims), "pool")
        return _Flow(y, 3 if layer.keepdims else 2)
    if name == "RepeatVector":
        y = b.op("Tile", [b.unsqueeze(flow.value, [1], "repeat"),
                          b.i64([1, layer.n, 1], "repeats")], "repeated")
        return _Flow(y, 3)
    if name == "Flatten":
        if layer.data_format == "channels_first" and rank > 2:
            raise ConversionError(f"to_onnx: {where} has data_format='channels_first'; "
                                  "only channels_last is exported")
        return _Flow(b.op("Reshape", [flow.value, b.i64([0, -1], "flat_shape")], "flat"), 2)
    if name == "Masking":
        if flow.rank != 3:
            raise ConversionError(f"to_onnx: {where} needs a sequence input (B, T, F)")
        TP = b.onnx.TensorProto
        differs = b.op("Not", [b.op("Equal", [flow.value, b.const(
            np.asarray(layer.mask_value), "mask_value")], "is_mask_value")], "differs")
        keep_f = b.reduce("ReduceMax", b.op("Cast", [differs], "differs_float", to=b.elem),
                          [2], 0, "keep")
        keep = b.op("Cast", [keep_f], "keep_bool", to=TP.BOOL)
        masked = b.op("Mul", [flow.value, b.unsqueeze(keep_f, [2], "keep_col")], "masked")
        return _Flow(masked, 3, _keep_to_lens(b, keep), True)
    raise ConversionError(f"to_onnx: {where} has no ONNX export")


def export_model(model, b):
    """Appends the nodes of the functional ``model`` to the builder ``b``; returns the ONNX
    (inputs, outputs) value infos."""
    from .. import layers as L
    from ..functional import InputLayer
    onnx, TP = b.onnx, b.onnx.TensorProto
    helper = onnx.helper
    values, graph_inputs = {}, []
    names = list(model.input_names)
    out_names = list(model.output_names)
    b.used.update(names + out_names)
    for t, name in zip(model.inputs, names):
        dims = ["batch"] + [d if d is not None else f"{name}_dim{k + 1}"
                            for k, d in enumerate(t.shape[1:])]
        is_int = np.dtype(t.dtype).kind in "iub"
        graph_inputs.append(helper.make_tensor_value_info(name, TP.INT64 if is_int else b.elem,
                                                          dims))
        values[id(t)] = _Flow(name, len(t.shape))
        values[id(t)].is_int = is_int
    for node in model._graph.nodes:
        layer = node.layer
        if isinstance(layer, InputLayer):
            continue
        where = f"{type(layer).__name__} {layer.name!r}"
        if getattr(layer, "stateful", False):
            raise ConversionError(f"to_onnx: {where} has stateful=True; an ONNX graph keeps "
                                  "no state between runs")
        if getattr(layer, "tensor_arguments", None):
            raise ConversionError(f"to_onnx: {where} has no ONNX export")
        extra = [k for k, v in node.kwargs.items() if k != "initial_state" and _flat(v)]
        if extra or any(_flat(arg) for arg in node.args[1:]):
            raise ConversionError(f"to_onnx: {where} is called with tensors in "
                                  f"{extra or 'its positional arguments'}, which are not "
                                  "exported")
        first = node.args[0] if node.args else None
        known = [id(t) in values for t in _flat(first)]
        if not known or not all(known):
            raise ConversionError(f"to_onnx: {where} is called on a constant, not on graph "
                                  "tensors; give it as a model input")
        if getattr(layer, "multiple_inputs", False) and not getattr(
                layer, "tensor_arguments", None):
            if not isinstance(first, (list, tuple)):
                raise ConversionError(f"to_onnx: {where}: expected a list of inputs")
            flows = [values[id(t)] for t in first]
            _check_no_mask(flows, where)
            name = type(layer).__name__
            if name == "Attention":
                outs = _attention(b, layer, node, flows, where)
            elif name == "Concatenate":
                y = b.op("Concat", [f.value for f in flows], "concat", axis=int(layer.axis))
            elif name in _MERGE_OPS:
                op = _MERGE_OPS[name]
                if op == "Add" and len(flows) > 2:
                    op = "Sum"
                if op == "Mul":
                    y = flows[0].value
                    for f in flows[1:]:
                        y = b.op("Mul", [y, f.value], "multiply")
                else:
                    y = b.op(op, [f.value for f in flows], op.lower())
            else:
                raise ConversionError(f"to_onnx: {where} has no ONNX export")
            if name != "Attention":
                outs = [_Flow(y, len(node.outputs[0].shape))]
        else:
            flow = values[id(first)]
            rank = len(first.shape)
            if isinstance(layer, L.Embedding):
                if not getattr(flow, "is_int", False):
                    raise ConversionError(f"to_onnx: {where} must read an integer model input")
                emb = b.op("Gather", [b.const(layer.get_weights()[0], "embeddings",
                                              key=(id(layer), "embeddings")), flow.value],
                           "embedded", axis=0)
                lens = None
                if layer.mask_zero:
                    keep = b.op("Not", [b.op("Equal", [flow.value, b.i64(0, "zero")],
                                             "is_zero")], "keep_bool")
                    lens = _keep_to_lens(b, keep)
                outs = [_Flow(emb, rank + 1, lens, True)]
            elif getattr(flow, "is_int", False):
                raise ConversionError(f"to_onnx: {where} reads an integer input; only an "
                                      "Embedding does in an exported graph")
            elif rnn_kind(layer) is not None or isinstance(layer, L.Bidirectional):
                initial = _states(b, node, values, layer, where)
                states = []
                main = _export_recurrent(b, layer, flow, where, states, initial)
                outs = [main] + [_Flow(s, 2) for s in states]
            else:
                outs = [_single(b, layer, flow, where, rank)]
        if len(outs) != len(node.outputs):
            raise ConversionError(f"to_onnx: {where}: {len(node.outputs)} outputs expected, "
                                  f"the export gave {len(outs)}")
        for t, f in zip(node.outputs, outs):
            values[id(t)] = f
    graph_outputs = []
    for t, name in zip(model.outputs, out_names):
        b.nodes.append(helper.make_node("Identity", [values[id(t)].value], [name],
                                        name=b.name(name + "_node")))
        dims = ["batch"] + list(t.shape[1:])
        graph_outputs.append(helper.make_tensor_value_info(name, b.elem, dims))
    return graph_inputs, graph_outputs


def model_dtype(model, dtype):
    from ..functional import InputLayer
    first = next((l for l in model.layers if not isinstance(l, InputLayer)), None)
    if first is None:
        raise ConversionError("to_onnx: the model has no layer")
    return resolve_dtype(dtype, first.dtype)
