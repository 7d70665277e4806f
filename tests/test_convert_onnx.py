"""fastlstm.convert <-> ONNX: to_onnx run by ONNX Runtime (every cell option, directions,
merge modes, masks as sequence_lens, Embedding, Dense), from_onnx of its own graphs and of
torch.onnx.export's, float64 through the ONNX reference evaluator, and the errors."""
import contextlib
import io
import sys
import warnings

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.convert import ConversionError, from_onnx, to_onnx

from convert_util import assert_same, post_padded, randomize

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.peers

L = fl.layers
A = fl.activations
STANDARD_OPS = {"LSTM", "GRU", "RNN", "Transpose", "Squeeze", "Reshape", "Slice", "MatMul",
                "Add", "Identity", "Softmax", "Tanh", "Relu", "Sigmoid", "ReduceSum",
                "ReduceMean", "ReduceProd", "Gather", "Shape", "Range", "Unsqueeze", "Cast",
                "Sub", "Min", "Expand", "GatherElements", "Equal", "Not", "ReduceMax", "Mul",
                "HardSigmoid", "Softsign"}


def run_ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})


def _layer(make, input_dim=4, seed=0):
    return randomize(make(), (None, None, input_dim), np.random.default_rng(seed))


LAYERS = {
    "lstm": lambda: L.LSTM(5, return_sequences=True),
    "lstm_last": lambda: L.LSTM(5),
    "lstm_backwards": lambda: L.LSTM(5, return_sequences=True, go_backwards=True),
    "lstm_peepholes": lambda: L.LSTM(5, return_sequences=True, use_peepholes=True),
    "lstm_cifg": lambda: L.LSTM(5, return_sequences=True, coupled_input_forget=True),
    "lstm_cifg_peep_hard": lambda: L.LSTM(5, coupled_input_forget=True, use_peepholes=True,
                                          recurrent_activation="hard_sigmoid"),
    "lstm_keras2_hard_softsign": lambda: L.LSTM(5, return_sequences=True,
                                                recurrent_activation=A.HardSigmoid(0.2, 0.5),
                                                activation="softsign", use_bias=False),
    "gru_after": lambda: L.GRU(5, return_sequences=True),
    "gru_before_backwards": lambda: L.GRU(5, reset_after=False, go_backwards=True,
                                          return_sequences=True),
    "gru_relu_hard": lambda: L.GRU(5, activation="relu", recurrent_activation="hard_sigmoid"),
    "rnn_tanh": lambda: L.SimpleRNN(5, return_sequences=True),
    "rnn_relu_last": lambda: L.SimpleRNN(5, activation="relu"),
    "rnn_linear": lambda: L.SimpleRNN(5, activation="linear", return_sequences=True),
    "bi_lstm_concat": lambda: L.Bidirectional(L.LSTM(5, return_sequences=True,
                                                     use_peepholes=True)),
    "bi_gru_sum": lambda: L.Bidirectional(L.GRU(5, return_sequences=True), merge_mode="sum"),
    "bi_rnn_ave_last": lambda: L.Bidirectional(L.SimpleRNN(5), merge_mode="ave"),
    "bi_lstm_mul_last": lambda: L.Bidirectional(L.LSTM(5, recurrent_activation="hard_sigmoid"),
                                                merge_mode="mul"),
    "bi_gru_concat_last": lambda: L.Bidirectional(L.GRU(5, reset_after=False)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_to_onnx_layer_runs_in_onnxruntime(name, tmp_path):
    layer = _layer(LAYERS[name])
    path = tmp_path / "m.onnx"
    model = to_onnx(layer, path, opset=17)
    assert path.exists()
    assert {n.op_type for n in model.graph.node} <= STANDARD_OPS
    rng = np.random.default_rng(1)
    for B, T in ((3, 6), (1, 2)):       # dynamic batch and sequence length
        x = rng.standard_normal((B, T, 4)).astype(np.float32)
        assert_same(run_ort(model, x)[0], layer(x), np.float32, name)
    # and back: fastlstm -> ONNX -> fastlstm
    assert_same(from_onnx(str(path))(x), layer(x), np.float32, name + " from_onnx")


def test_cifg_uses_input_forget():
    model = to_onnx(_layer(lambda: L.LSTM(3, coupled_input_forget=True)))
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    assert {a.name: a.i for a in node.attribute}.get("input_forget") == 1


def test_return_state_outputs():
    layer = _layer(lambda: L.LSTM(5, return_sequences=True, return_state=True))
    x = np.random.default_rng(2).standard_normal((3, 6, 4)).astype(np.float32)
    outs = run_ort(to_onnx(layer), x)
    assert len(outs) == 3
    for got, want in zip(outs, layer(x)):
        assert_same(got, want, np.float32)
    bi = _layer(lambda: L.Bidirectional(L.GRU(5, return_state=True)))
    outs = run_ort(to_onnx(bi), x)
    for got, want in zip(outs, bi(x)):
        assert_same(got, want, np.float32)


def _stack(rng):
    return fl.Sequential([
        randomize(L.Bidirectional(L.LSTM(5, return_sequences=True)), (None, None, 4), rng),
        L.Dropout(0.3),
        randomize(L.GRU(6, return_sequences=True, go_backwards=True), (None, None, 10), rng),
        randomize(L.Dense(3, activation="softmax"), (None, 6), rng)])


def test_sequential_to_onnx_and_back():
    rng = np.random.default_rng(3)
    model = _stack(rng)
    x = rng.standard_normal((2, 7, 4)).astype(np.float32)
    onnx_model = to_onnx(model, opset=14)
    assert_same(run_ort(onnx_model, x)[0], model(x), np.float32)
    back = from_onnx(onnx_model.SerializeToString())
    assert [type(l).__name__ for l in back.layers] == ["Bidirectional", "GRU", "Dense"]
    assert_same(back(x), model(x), np.float32)


MASKED = {
    "lstm_seq_dense": lambda rng: [
        randomize(L.LSTM(5, return_sequences=True), (None, None, 4), rng),
        randomize(L.Dense(2, activation="tanh"), (None, 5), rng)],
    "gru_last": lambda rng: [randomize(L.GRU(5), (None, None, 4), rng)],
    "rnn_backwards": lambda rng: [
        randomize(L.SimpleRNN(5, return_sequences=True, go_backwards=True), (None, None, 4),
                  rng)],
    "bi_then_lstm": lambda rng: [
        randomize(L.Bidirectional(L.LSTM(5, return_sequences=True)), (None, None, 4), rng),
        randomize(L.LSTM(3, return_sequences=True), (None, None, 10), rng)],
    "bi_last": lambda rng: [randomize(L.Bidirectional(L.GRU(5), merge_mode="sum"),
                                      (None, None, 4), rng)],
    "zero_output_seq": lambda rng: [
        randomize(L.LSTM(5, return_sequences=True, zero_output_for_mask=True), (None, None, 4),
                  rng),
        randomize(L.GRU(3, return_sequences=True, go_backwards=True, zero_output_for_mask=True),
                  (None, None, 5), rng)],
}


def test_zero_output_for_mask_last_output_is_refused_under_a_mask():
    rng = np.random.default_rng(4)
    layer = randomize(L.LSTM(5, zero_output_for_mask=True), (None, None, 4), rng)
    with pytest.raises(ConversionError, match="zero_output_for_mask=True and return_sequences"):
        to_onnx(fl.Sequential([L.Masking(0.0), layer]))
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)      # no mask: nothing to zero
    assert_same(run_ort(to_onnx(fl.Sequential([layer])), x)[0], layer(x), np.float32)


@pytest.mark.parametrize("name", list(MASKED))
def test_masking_exports_as_sequence_lens(name):
    """Post-padded rows (including a fully masked one and a row of length 1)."""
    rng = np.random.default_rng(4)
    model = fl.Sequential([L.Masking(0.0)] + MASKED[name](rng))
    x = post_padded(rng.standard_normal((4, 7, 4)).astype(np.float32), [7, 3, 1, 0])
    assert_same(run_ort(to_onnx(model), x)[0], model(x), np.float32, name)


def test_embedding_mask_zero():
    rng = np.random.default_rng(5)
    model = fl.Sequential([
        L.Embedding(12, 4, mask_zero=True),
        randomize(L.LSTM(5, return_sequences=True, use_peepholes=True), (None, None, 4), rng),
        randomize(L.Dense(2), (None, 5), rng)])
    model.layers[0].build(None)
    model.layers[0].set_weights([rng.standard_normal((12, 4)).astype(np.float32)])
    idx = rng.integers(1, 12, size=(3, 6))
    idx[1, 4:] = 0
    idx[2, 1:] = 0
    onnx_model = to_onnx(model)
    assert onnx_model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert_same(run_ort(onnx_model, idx.astype(np.int64))[0], model(idx), np.float32)


# -- torch.onnx.export -> from_onnx ----------------------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("num_layers, bidirectional, batch_first",
                         [(1, False, True), (2, True, True), (2, True, False)])
def test_from_torch_onnx_export(kind, num_layers, bidirectional, batch_first):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = getattr(torch.nn, kind)(4, 5, num_layers=num_layers, bidirectional=bidirectional,
                                batch_first=batch_first).eval()
    x = np.random.default_rng(6).standard_normal((3, 7, 4)).astype(np.float32)
    xt = torch.from_numpy(x if batch_first else np.ascontiguousarray(x.transpose(1, 0, 2)))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (xt,), buf, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "d0", 1: "d1"}})
    model = from_onnx(buf.getvalue())
    with torch.no_grad():
        y = m(xt)[0].numpy()
    assert_same(model(x), y if batch_first else y.transpose(1, 0, 2), np.float32)


def test_from_torch_dynamo_export():
    """The dynamo exporter computes the bidirectional reshape target from Shape/Slice/Mul."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    m = torch.nn.GRU(4, 5, num_layers=2, bidirectional=True).eval()      # time-major
    x = np.random.default_rng(9).standard_normal((3, 6, 4)).astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(m, (xt,), dynamo=True, dynamic_shapes=(
            {0: torch.export.Dim("t"), 1: torch.export.Dim("b")},))
    model = from_onnx(program.model_proto)
    with torch.no_grad():
        assert_same(model(x), m(xt)[0].numpy().transpose(1, 0, 2), np.float32)


def test_from_torch_onnx_export_with_linear_head():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(4, 6, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(12, 3)

        def forward(self, x):
            return torch.softmax(self.head(self.lstm(x)[0]), dim=-1)

    torch.manual_seed(1)
    net = Net().eval()
    x = np.random.default_rng(7).standard_normal((2, 5, 4)).astype(np.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), buf, dynamo=False,
                          dynamic_axes={"x": {0: "b", 1: "t"}}, input_names=["x"])
    model = from_onnx(buf.getvalue())
    assert [type(l).__name__ for l in model.layers] == ["Bidirectional", "Dense"]
    with torch.no_grad():
        assert_same(model(x), net(torch.from_numpy(x)).numpy(), np.float32)


# -- float64 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: L.LSTM(5, return_sequences=True, use_peepholes=True),
                                  lambda: L.GRU(5, return_sequences=True),
                                  lambda: L.SimpleRNN(5)], ids=["lstm", "gru", "rnn"])
def test_float64_graph_with_reference_evaluator(make):
    """ONNX Runtime runs these operators in float32 only; the reference evaluator runs
    float64 (it ignores `activations`, so default activations here)."""
    from onnx.reference import ReferenceEvaluator
    rng = np.random.default_rng(8)
    layer = make()
    layer = randomize(type(layer).from_config(dict(layer.get_config(), dtype="float64")),
                      (None, None, 4), rng)
    model = to_onnx(layer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x = rng.standard_normal((3, 6, 4))
    y = ReferenceEvaluator(model).run(None, {"input": x})[0]
    assert y.dtype == np.float64
    assert_same(y, layer(x), np.float64)
    back = from_onnx(model)
    assert back.dtype == np.float64
    assert_same(back(x), layer(x), np.float64)
    as32 = to_onnx(layer, dtype="float32")
    assert_same(run_ort(as32, x.astype(np.float32))[0], layer(x), np.float32)
    assert from_onnx(as32, dtype="float64").dtype == np.float64


# -- errors ----------------------------------------------------------------------------------
def _graph(nodes, inits, in_dims=(None, None, 4)):
    h = onnx.helper
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                            list(in_dims))],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                     [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _lstm_inits(H=3, I=4):
    rng = np.random.default_rng(0)
    return {"W": rng.standard_normal((1, 4 * H, I)).astype(np.float32),
            "R": rng.standard_normal((1, 4 * H, H)).astype(np.float32)}


def test_from_onnx_errors():
    h = onnx.helper
    unsupported = _graph([h.make_node("LeakyRelu", ["x"], ["y"])], {})
    with pytest.raises(ConversionError, match="LeakyRelu"):
        from_onnx(unsupported)
    clip = _graph([h.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=3, clip=2.0)],
                  _lstm_inits())
    with pytest.raises(ConversionError, match="clip"):
        from_onnx(clip)
    lens = _graph([h.make_node("LSTM", ["x", "W", "R", "", "x"], ["y"], hidden_size=3)],
                  _lstm_inits())
    with pytest.raises(ConversionError, match="sequence_lens"):
        from_onnx(lens)
    tanh_cifg = _graph([h.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=3,
                                    input_forget=1, activations=["Tanh", "Tanh", "Tanh"])],
                       _lstm_inits())
    with pytest.raises(ConversionError, match="input_forget"):
        from_onnx(tanh_cifg)
    raw_bidir = _graph([h.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
                        h.make_node("LSTM", ["xt", "W", "R"], ["y"], hidden_size=3,
                                    direction="bidirectional")],
                       {k: np.concatenate([v, v]) for k, v in _lstm_inits().items()})
    with pytest.raises(ConversionError, match="direction"):
        from_onnx(raw_bidir)


@pytest.mark.parametrize("attrs, match", [
    (dict(direction="REVERSE"), "direction='REVERSE'"),
    (dict(direction=""), "direction=''"),
    (dict(made_up=1), "no attribute 'made_up'"),
    (dict(linear_before_reset=1), "no attribute 'linear_before_reset'"),
    (dict(layout=2), "layout=2"),
    (dict(hidden_size=0), "hidden_size=0"),
    (dict(direction=1), "attribute direction is INT; expected STRING"),
])
def test_from_onnx_refuses_attributes_the_operator_lacks(attrs, match):
    # ONNX Runtime refuses these too; from_onnx once read most as a forward LSTM
    h = onnx.helper
    model = _graph([h.make_node("LSTM", ["x", "W", "R"], ["y"], **{"hidden_size": 3, **attrs})],
                   _lstm_inits())
    with pytest.raises(ConversionError, match=match):
        from_onnx(model)


@pytest.mark.parametrize("op, attr", [("GRU", "input_forget"), ("RNN", "linear_before_reset")])
def test_from_onnx_refuses_attributes_of_other_cells(op, attr):
    h = onnx.helper
    G = {"GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((1, G * 3, 4)).astype(np.float32),
             "R": rng.standard_normal((1, G * 3, 3)).astype(np.float32)}
    model = _graph([h.make_node(op, ["x", "W", "R"], ["y"], hidden_size=3, **{attr: 1})], inits)
    with pytest.raises(ConversionError, match=f"no attribute '{attr}'"):
        from_onnx(model)


def _bad_lstm_input(k, arr):
    """A one-node LSTM graph whose input ``k`` is ``arr`` (or the name of no tensor)."""
    inits = _lstm_inits()
    names = ["x", "W", "R"] + [""] * (k - 2)
    names[k] = "bad" if arr is not None else "no_such_tensor"
    if arr is not None:
        inits["bad"] = np.asarray(arr, np.float32)
    return _graph([onnx.helper.make_node("LSTM", names, ["y"], hidden_size=3)], inits)


@pytest.mark.parametrize("k, shape, match", [
    (1, (12, 4), r"W has shape \(12, 4\); expected \(1, 12, 4\)"),
    (2, (1, 12, 4), r"R has shape \(1, 12, 4\); expected \(1, 12, 3\)"),
    (3, (24,), r"B has shape \(24,\); expected \(1, 24\) = \[num_directions, 2\*gates"),
    (3, (1, 12), r"B has shape \(1, 12\); expected \(1, 24\)"),
    (3, (1, 48), r"B has shape \(1, 48\)"),
    (7, (1, 5), r"P has shape \(1, 5\); expected \(1, 9\) = \[num_directions, 3\*hidden\]"),
    (7, (9,), r"P has shape \(9,\)"),
    (5, (2, 1, 3), r"initial_h has shape \(2, 1, 3\); expected \(1, \?, 3\)"),
    (8, (1,), "has 9 inputs; LSTM takes 3 to 8"),
])
def test_from_onnx_refuses_malformed_tensors(k, shape, match):
    with pytest.raises(ConversionError, match=match):
        from_onnx(_bad_lstm_input(k, np.zeros(shape)))


def test_from_onnx_refuses_broken_graphs():
    with pytest.raises(ConversionError, match="'no_such_tensor' is not defined"):
        from_onnx(_bad_lstm_input(5, None))
    h = onnx.helper
    cycle = _graph([h.make_node("Transpose", ["x_or_y"], ["xt"], perm=[1, 0, 2]),
                    h.make_node("LSTM", ["xt", "W", "R"], ["y"], hidden_size=3),
                    h.make_node("Identity", ["y"], ["x_or_y"])], _lstm_inits())
    with pytest.raises(ConversionError, match="'x_or_y' is not defined before"):
        from_onnx(cycle)
    bad_perm = _graph([h.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 5])], {})
    with pytest.raises(ConversionError, match="not a permutation"):
        from_onnx(bad_perm)
    scalar_slice = _graph([h.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
                           h.make_node("LSTM", ["xt", "W", "R"], ["ys"], hidden_size=3),
                           h.make_node("Slice", ["ys", "s", "e"], ["y"])],
                          dict(_lstm_inits(), s=np.array(-1), e=np.array(-2 ** 63)))
    with pytest.raises(ConversionError, match="Slice"):
        from_onnx(scalar_slice)
    complex_w = _lstm_inits()
    complex_w["W"] = complex_w["W"] * 1j
    with pytest.raises(ConversionError, match="W has dtype complex"):
        from_onnx(_graph([h.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=3)],
                         complex_w))
    data = to_onnx(_layer(lambda: L.LSTM(3))).SerializeToString()
    for broken in (data[:len(data) // 2], data[:-3], b"garbage" * 10):
        with pytest.raises(ConversionError, match="not a valid ONNX model"):
            from_onnx(broken)


def test_to_onnx_errors():
    tanh_cifg = _layer(lambda: L.LSTM(3, coupled_input_forget=True,
                                      recurrent_activation="tanh"))
    with pytest.raises(ConversionError, match="coupled_input_forget"):
        to_onnx(tanh_cifg)
    with pytest.raises(ConversionError, match="merge_mode=None"):
        to_onnx(_layer(lambda: L.Bidirectional(L.GRU(3), merge_mode=None)))
    with pytest.raises(ConversionError, match="stateful"):
        to_onnx(_layer(lambda: L.GRU(3, stateful=True)))
    with pytest.raises(ValueError, match="opset"):
        to_onnx(_layer(lambda: L.GRU(3)), opset=9)
    with pytest.raises(ValueError, match="not built"):
        to_onnx(L.LSTM(3))
    rng = np.random.default_rng(0)
    reversed_mask = fl.Sequential([
        L.Masking(), randomize(L.LSTM(3, return_sequences=True, go_backwards=True),
                               (None, None, 4), rng),
        randomize(L.LSTM(2), (None, None, 3), rng)])
    with pytest.raises(ConversionError, match="leading padding"):
        to_onnx(reversed_mask)


def test_missing_onnx_is_a_clear_import_error(monkeypatch):
    layer = _layer(lambda: L.GRU(3))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install onnx"):
        to_onnx(layer)
    with pytest.raises(ImportError, match="pip install onnx"):
        from_onnx("model.onnx")
