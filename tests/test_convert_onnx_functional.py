"""fastlstm.convert <-> ONNX for functional ``fl.Model`` graphs: to_onnx run by ONNX Runtime
against fastlstm's predict (encoder-decoder with initial and returned states, several inputs
and outputs with a shared layer and merges, Conv1D / LayerNormalization / poolings /
reshaping layers), from_onnx of those graphs back to an ``fl.Model``, and the errors."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm.convert import ConversionError, from_onnx, to_onnx

from convert_util import assert_same

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.peers

L = fl.layers


def randomize_model(model, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    model.set_weights([(rng.standard_normal(np.shape(w)) * scale).astype(np.asarray(w).dtype)
                       for w in model.get_weights()])
    return model


def as_list(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def run_ort(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check_model(model, xs, tmp_path, opset=17):
    """ONNX Runtime == fastlstm on the exported graph; from_onnx gives an fl.Model that
    predicts the same; returns (proto, model read back)."""
    want = as_list(model.predict(xs if len(xs) > 1 else xs[0]))
    path = tmp_path / "model.onnx"
    proto = to_onnx(model, path, opset=opset)
    assert [i.name for i in proto.graph.input] == model.input_names
    assert [o.name for o in proto.graph.output] == model.output_names
    got = run_ort(proto, dict(zip(model.input_names, xs)))
    assert len(got) == len(want)
    for g, w, name in zip(got, want, model.output_names):
        assert_same(g, w, name=name)
    back = from_onnx(path)
    assert isinstance(back, fl.Model)
    again = as_list(back.predict(xs if len(xs) > 1 else xs[0]))
    for g, w in zip(again, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    return proto, back


def data(*shapes, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype("float32") for s in shapes]


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_seq2seq_encoder_decoder_with_states(kind, tmp_path):
    cls = getattr(L, kind)
    enc_in = fl.Input((None, 5), name="encoder_tokens")
    dec_in = fl.Input((None, 4), name="decoder_tokens")
    enc = cls(6, return_state=True)(enc_in)
    states = enc[1:]
    dec = cls(6, return_sequences=True, return_state=True)(dec_in, initial_state=states)
    out = L.Dense(3, activation="softmax")(dec[0])
    model = randomize_model(fl.Model([enc_in, dec_in], [out] + dec[1:]))
    proto, back = check_model(model, data((3, 7, 5), (3, 4, 4)), tmp_path)
    rnn_op = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}[kind]
    decoder = [n for n in proto.graph.node if n.op_type == rnn_op][1]
    assert decoder.input[5] != ""                           # initial_h is wired
    if kind == "LSTM":
        assert decoder.input[6] != ""
    assert back.input_names == ["encoder_tokens", "decoder_tokens"]
    assert back.count_params() == model.count_params()


def test_seq2seq_backwards_decoder_and_reversed_sequence(tmp_path):
    enc_in = fl.Input((None, 3), name="x")
    _, h, c = L.LSTM(4, return_state=True, go_backwards=True)(enc_in)
    y = L.LSTM(4, return_sequences=True, go_backwards=True)(enc_in, initial_state=[h, c])
    model = randomize_model(fl.Model(enc_in, [y, h]))
    check_model(model, data((2, 6, 3)), tmp_path)


def test_two_inputs_two_outputs_shared_layer_and_merges(tmp_path):
    a = fl.Input((None, 4), name="left")
    b = fl.Input((None, 4), name="right")
    shared = L.LSTM(5, return_sequences=True, name="shared_lstm")
    ha, hb = shared(a), shared(b)
    joined = L.Concatenate()([ha, hb])
    summed = L.Add()([ha, hb])
    out1 = L.Dense(2, name="tagger")(joined)
    pooled = L.GlobalAveragePooling1D()(summed)
    dense = L.Dense(3, activation="tanh", name="shared_dense")
    out2 = L.Average()([L.Multiply()([dense(pooled), dense(pooled)]), dense(pooled)])
    model = randomize_model(fl.Model([a, b], [out1, out2]))
    proto, back = check_model(model, data((3, 6, 4), (3, 6, 4)), tmp_path)
    # the shared layers' weights are one set of initializers read by each call
    lstm_nodes = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert len(lstm_nodes) == 2 and lstm_nodes[0].input[1:4] == lstm_nodes[1].input[1:4]
    # (ONNX's B holds a recurrent bias too: 4 * units zeros more than fastlstm's weights)
    assert sum(int(np.prod(i.dims)) for i in proto.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT) == model.count_params() + 4 * 5
    assert back.count_params() == model.count_params()     # shared again after from_onnx
    assert {type(layer).__name__ for layer in back.layers} >= {
        "Concatenate", "Add", "Multiply", "Average", "GlobalAveragePooling1D"}


@pytest.mark.parametrize("conv", [
    dict(padding="causal", dilation_rate=2, activation="relu"),
    dict(padding="same", activation="tanh"),
    dict(padding="same", strides=2),
    dict(padding="valid", kernel_size=2, use_bias=False),
])
def test_conv1d_lstm_maxpool_classifier(conv, tmp_path):
    conv = dict(dict(filters=6, kernel_size=3), **conv)
    x = fl.Input((None, 4), name="signal")
    h = L.Conv1D(**conv)(x)
    h = L.LSTM(5, return_sequences=True)(h)
    h = L.GlobalMaxPooling1D()(h)
    out = L.Dense(3, activation="softmax")(h)
    model = randomize_model(fl.Model(x, out))
    proto, back = check_model(model, data((3, 9, 4)), tmp_path)
    assert "Conv" in {n.op_type for n in proto.graph.node}
    got = [layer for layer in back.layers if type(layer).__name__ == "Conv1D"][0]
    assert (got.padding, got.strides, got.dilation_rate) == (
        conv["padding"], conv.get("strides", 1), conv.get("dilation_rate", 1))


@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_layer_normalization(axis, tmp_path):
    x = fl.Input((5, 4), name="x")
    h = L.LSTM(6, return_sequences=True)(x)
    h = L.LayerNormalization(axis=axis, epsilon=1e-3)(h)
    out = L.TimeDistributed(L.Dense(2))(h)
    model = randomize_model(fl.Model(x, out))
    proto, _ = check_model(model, data((3, 5, 4)), tmp_path)
    assert "LayerNormalization" in {n.op_type for n in proto.graph.node}


def test_reshaping_activation_and_embedding(tmp_path):
    tokens = fl.Input((None,), dtype="int64", name="tokens")
    feats = fl.Input((6,), name="features")
    e = L.Embedding(10, 4)(tokens)
    h = L.GRU(5)(e)
    r = L.RepeatVector(3)(L.Activation("sigmoid")(L.Dense(5)(feats)))
    seq = L.SimpleRNN(5, return_sequences=True)(r)
    flat = L.Flatten()(L.Activation("softmax")(seq))
    out = L.Concatenate()([h, flat, L.Dense(2, activation="hard_sigmoid")(flat)])
    model = randomize_model(fl.Model([tokens, feats], out))
    rng = np.random.default_rng(3)
    xs = [rng.integers(0, 10, (4, 7)).astype("int64"), data((4, 6))[0]]
    proto, back = check_model(model, xs, tmp_path)
    assert back.input_names == ["tokens", "features"]


def test_single_chain_reads_back_as_sequential(tmp_path):
    x = fl.Input((None, 3), name="input")
    out = L.Dense(2)(L.LSTM(4)(x))
    model = randomize_model(fl.Model(x, out))
    to_onnx(model, tmp_path / "m.onnx")
    back = from_onnx(tmp_path / "m.onnx")
    assert isinstance(back, fl.Sequential)
    xs = data((2, 5, 3))
    assert_same(back.predict(xs[0]), model.predict(xs[0]))


def test_masked_recurrent_in_graph_exports(tmp_path):
    from convert_util import post_padded
    x = fl.Input((None, 3), name="x")
    m = L.Masking(0.0)(x)
    h = L.LSTM(4, return_sequences=True)(m)
    out = L.Dense(2)(L.LSTM(4)(h))
    model = randomize_model(fl.Model(x, [out, h]))
    xs = post_padded(data((3, 6, 3))[0], [6, 4, 2])
    proto = to_onnx(model)
    for g, w in zip(run_ort(proto, {"x": xs}), model.predict(xs)):
        assert_same(g, w)
    with pytest.raises(ConversionError, match="sequence_lens"):
        from_onnx(proto)            # as for Sequential graphs: masks are not read back


# -- refused ---------------------------------------------------------------------------------
@pytest.mark.parametrize("use_scale", [False, True])
def test_dot_attention_encoder_decoder(use_scale, tmp_path):
    enc_in = fl.Input((None, 3), name="source")
    dec_in = fl.Input((None, 4), name="target")
    enc_seq, h, c = L.LSTM(5, return_sequences=True, return_state=True)(enc_in)
    dec_seq = L.LSTM(5, return_sequences=True)(dec_in, initial_state=[h, c])
    attention = L.Attention(use_scale=use_scale)
    context = attention([dec_seq, enc_seq])
    keyed = attention([dec_seq, enc_seq, L.Dense(5)(enc_seq)])       # shared, with a key
    out = L.Dense(2)(L.Concatenate()([dec_seq, context, keyed]))
    model = randomize_model(fl.Model([enc_in, dec_in], [out, context]))
    if use_scale:
        attention.set_weights([np.asarray(0.7, np.float32)])
    proto, back = check_model(model, data((2, 6, 3), (2, 4, 4)), tmp_path)
    assert {"Softmax", "MatMul"} <= {n.op_type for n in proto.graph.node}
    got = [layer for layer in back.layers if type(layer).__name__ == "Attention"]
    assert len(got) == (1 if use_scale else 2)            # a scale initializer is shared
    weights = next(n for n in proto.graph.node if n.op_type == "Softmax").output[0]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(
        weights, onnx.TensorProto.FLOAT, None))
    with pytest.raises(ConversionError, match="attention weights are used beyond"):
        from_onnx(proto)


@pytest.mark.parametrize("make", [
    lambda q, v: L.AdditiveAttention()([q, v]),
    lambda q, v: L.Attention(score_mode="concat")([q, v]),
    lambda q, v: L.Attention()([q, v], use_causal_mask=True),
    lambda q, v: L.MultiHeadAttention(2, 3)(q, v),
], ids=["additive", "concat", "causal", "multi_head"])
def test_other_attention_is_refused(make):
    q = fl.Input((None, 4), name="q")
    v = fl.Input((None, 4), name="v")
    model = fl.Model([q, v], make(q, v))
    with pytest.raises(ConversionError, match="Attention.*(no ONNX export|only 'dot'|causal)"):
        to_onnx(model)


def test_constant_argument_is_refused():
    x = fl.Input((None, 3), name="x")
    h = np.zeros((1, 2), np.float32)
    model = fl.Model(x, L.GRU(2)(x, initial_state=[h]))
    with pytest.raises(ConversionError, match="initial_state that is not a graph tensor"):
        to_onnx(model)


def test_mask_reaching_a_merge_is_refused():
    a = fl.Input((None, 3), name="a")
    m = L.Masking()(a)
    model = fl.Model(a, L.Add()([m, a]))
    with pytest.raises(ConversionError, match="Add.*receives a mask"):
        to_onnx(model)


def test_layer_normalization_needs_opset_17():
    x = fl.Input((None, 3), name="x")
    model = fl.Model(x, L.LayerNormalization()(L.LSTM(3, return_sequences=True)(x)))
    with pytest.raises(ConversionError, match="opset 17"):
        to_onnx(model, opset=16)


@pytest.mark.parametrize("merge", ["concat", "sum", "ave", "mul"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_shared_bidirectional_in_a_graph(kind, merge, tmp_path):
    a = fl.Input((None, 3), name="a")
    b = fl.Input((None, 3), name="b")
    cls = getattr(L, kind)
    seq = L.Bidirectional(cls(2, return_sequences=True), merge_mode=merge)
    last = L.Bidirectional(cls(3, return_state=True), merge_mode=merge)
    outs = last(L.Add()([seq(a), seq(b)]))
    model = randomize_model(fl.Model([a, b], outs))
    proto, back = check_model(model, data((2, 4, 3), (2, 4, 3)), tmp_path)
    assert [type(layer).__name__ for layer in back.layers].count("Bidirectional") == 2


def test_bidirectional_initial_state_is_refused():
    x = fl.Input((None, 3), name="x")
    h = fl.Input((2,), name="h")
    model = fl.Model([x, h], L.Bidirectional(L.GRU(2))(x, initial_state=[h, h]))
    with pytest.raises(ConversionError, match="not for Bidirectional"):
        to_onnx(model)


def _two_input_graph(**conv_attrs):
    h = onnx.helper
    TP = onnx.TensorProto
    w = onnx.numpy_helper.from_array(np.ones((2, 2, 1), np.float32), "w")
    nodes = [h.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1]),
             h.make_node("Conv", ["at", "w"], ["c"], name="the_conv", **conv_attrs),
             h.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 1]),
             h.make_node("Add", ["ct", "b"], ["y"], name="the_add")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("a", TP.FLOAT, ["n", "t", 2]),
                                  h.make_tensor_value_info("b", TP.FLOAT, ["n", "t", 2])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["n", "t", 2])], [w])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_handmade_two_input_graph_reads():
    model = from_onnx(_two_input_graph())
    xs = data((2, 5, 2), (2, 5, 2))
    want = xs[0] @ np.ones((2, 2), np.float32) + xs[1]
    np.testing.assert_allclose(model.predict(xs), want, rtol=1e-6)


def test_input_named_like_a_layer_reads():
    a = fl.Input((None, 2), name="dense")
    b = fl.Input((None, 2), name="add")
    model = randomize_model(fl.Model([a, b], L.Add()([L.Dense(2)(a), b])))
    back = from_onnx(to_onnx(model))
    xs = data((2, 3, 2), (2, 3, 2))
    np.testing.assert_allclose(back.predict(xs), model.predict(xs), rtol=1e-6)


def test_functional_import_refuses_malformed_and_unsupported():
    with pytest.raises(ConversionError, match="the_conv.*group=2"):
        from_onnx(_two_input_graph(group=2))
    with pytest.raises(ConversionError, match="the_conv.*no attribute 'color'"):
        from_onnx(_two_input_graph(color=1))
    with pytest.raises(ConversionError, match="pads=.*none of Conv1D's paddings"):
        from_onnx(_two_input_graph(pads=[1, 1], kernel_shape=[1]))
    m = _two_input_graph()
    w = m.graph.initializer[0]
    w.data_location = onnx.TensorProto.EXTERNAL
    e = w.external_data.add()
    e.key, e.value = "location", "/etc/passwd"
    with pytest.raises(ConversionError, match="external file"):
        from_onnx(m)
    m = _two_input_graph()
    m.graph.node[3].op_type = "Sub"
    with pytest.raises(ConversionError, match="operator Sub is not supported"):
        from_onnx(m)


def test_oversized_initializer_is_refused(monkeypatch):
    from fastlstm import limits
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 2**10)
    m = _two_input_graph()
    big = onnx.numpy_helper.from_array(np.zeros((64, 64), np.float32), "big")
    m.graph.initializer.append(big)
    with pytest.raises(ConversionError, match="initializer 'big'.*limit"):
        from_onnx(m)


def test_float64_round_trip():
    a = fl.Input((None, 3), name="a", dtype="float64")
    b = fl.Input((None, 3), name="b", dtype="float64")
    lstm = L.LSTM(4, return_sequences=True, dtype="float64")
    out = L.Concatenate(dtype="float64")([lstm(a), lstm(b)])
    model = randomize_model(fl.Model([a, b], L.LayerNormalization(dtype="float64")(out)))
    back = from_onnx(to_onnx(model))
    xs = [x.astype(np.float64) for x in data((2, 5, 3), (2, 5, 3))]
    assert back.layers[-1].dtype == np.float64
    np.testing.assert_allclose(back.predict(xs), model.predict(xs), rtol=1e-12)
