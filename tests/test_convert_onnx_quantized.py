"""from_onnx of ONNX Runtime's quantized LSTM graphs (``quantize_dynamic`` writes a
``com.microsoft`` DynamicQuantizeLSTM for each LSTM): the weights are the dequantized
initializers, mapped as for a float LSTM; the float model computes the graph of those weights
(checked against ONNX Runtime on it) and stays within ONNX Runtime's own int8 error of ONNX
Runtime's quantized session; ``quantize=`` re-quantizes it; what is not read is refused."""
import logging
import warnings

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.convert import ConversionError, from_onnx, to_onnx
from fastlstm.quantization import quantized_precision

from convert_util import assert_same

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
ort_quantization = pytest.importorskip("onnxruntime.quantization")
pytestmark = pytest.mark.peers

helper, numpy_helper = onnx.helper, onnx.numpy_helper

# ONNX LSTM's gate blocks are [i, o, f, c]; fastlstm's (Keras') [i, f, c, o]
ONNX_BLOCKS_IN_FL_ORDER = (0, 2, 3, 1)
# How far ONNX Runtime's activation quantization (uint8, per tensor, per step) may take its
# int8 session from the float model of the same weights, relative to how far it takes the
# session from the float model it was quantized from (activations and weights). Measured on
# these models (and on 3 seeds of each): 0.62 to 1.03.
ACTIVATION_SHARE = 1.5


def quantize_file(src, dst, per_channel=False, **kw):
    logging.getLogger().setLevel(logging.ERROR)   # quantize_dynamic's pre-processing advice
    ort_quantization.quantize_dynamic(str(src), str(dst), per_channel=per_channel,
                                      weight_type=ort_quantization.QuantType.QInt8, **kw)
    return onnx.load(str(dst))


def export_torch(module, args, path, names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in args), str(path),
                          dynamo=False, input_names=names,
                          dynamic_axes={n: {0: "b", 1: "t"} if n == "x" else {1: "b"}
                                        for n in names})
    return onnx.load(str(path))


def run(model, feeds):
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def quantized_nodes(model):
    nodes = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    assert nodes and all(n.domain == "com.microsoft" for n in nodes)
    return nodes


def dequantized(model, node):
    """W and R of a DynamicQuantizeLSTM node, dequantized as its definition says, in the
    layout ONNX Runtime stores them: [num_directions, input|hidden, 4*hidden]."""
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for q, s, z in ((1, 8, 9), (2, 10, 11)):
        q, s, z = init[node.input[q]], init[node.input[s]], init[node.input[z]]
        assert q.dtype == np.int8 and s.dtype == np.float32 and z.dtype == q.dtype
        ix = (slice(None), None, None) if s.ndim == 1 else (slice(None), None, slice(None))
        out.append((q.astype(np.float32) - z.astype(np.float32)[ix]) * s[ix])
    return out


def float_graph_of(qmodel, fmodel):
    """The float graph ``fmodel`` with each LSTM's W and R replaced by the dequantized
    initializers of its DynamicQuantizeLSTM in ``qmodel`` (ONNX Runtime names them after the
    float ones: <name>_quantized)."""
    out = onnx.ModelProto()
    out.CopyFrom(fmodel)
    by_name = {i.name: i for i in out.graph.initializer}
    for node in quantized_nodes(qmodel):
        for k, arr in zip((1, 2), dequantized(qmodel, node)):
            name = node.input[k][:-len("_quantized")]
            assert node.input[k].endswith("_quantized") and name in by_name
            by_name[name].CopyFrom(numpy_helper.from_array(
                np.ascontiguousarray(arr.transpose(0, 2, 1)), name))
    return out


def fl_order(w, H):
    """Columns of an ONNX-ordered [rows, 4H] matrix (or a 4H vector) in fastlstm's order."""
    return np.concatenate([w[..., k * H:(k + 1) * H] for k in ONNX_BLOCKS_IN_FL_ORDER], -1)


def lstm_leaves(model):
    """Per recurrent layer (in order), the LSTM layers of its directions."""
    layers = model.layers if hasattr(model, "layers") else [model]
    out = []
    for layer in layers:
        if hasattr(layer, "forward_layer"):
            out.append([layer.forward_layer, layer.backward_layer])
        elif type(layer).__name__ == "LSTM":
            out.append([layer])
    return out


class TorchLSTM(torch.nn.Module):
    def __init__(self, num_layers, bidirectional, batch_first):
        super().__init__()
        self.lstm = torch.nn.LSTM(5, 6, num_layers=num_layers, bidirectional=bidirectional,
                                  batch_first=batch_first)

    def forward(self, x):
        return self.lstm(x)[0]


@pytest.fixture(scope="module")
def small_quantized(tmp_path_factory):
    path = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)
    module = TorchLSTM(1, False, True).eval()
    x = np.zeros((2, 3, 5), np.float32)
    export_torch(module, (x,), path / "f.onnx", ["x"])
    return quantize_file(path / "f.onnx", path / "q.onnx")


def edited(model, edit):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = quantized_nodes(out)[0]
    edit(out, node)
    return out.SerializeToString()


def set_initializer(model, name, arr):
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(arr, name))


CASES = [(1, False, True, False), (2, True, True, False), (2, True, False, True),
         (1, True, True, True)]
CASE_IDS = ["1layer", "2layers_bi", "2layers_bi_timemajor_perchannel", "1layer_bi_perchannel"]


@pytest.fixture(params=CASES, ids=CASE_IDS)
def torch_case(request, tmp_path):
    num_layers, bidirectional, batch_first, per_channel = request.param
    torch.manual_seed(num_layers + 2 * bidirectional)
    module = TorchLSTM(num_layers, bidirectional, batch_first).eval()
    x = np.random.default_rng(3).standard_normal((4, 9, 5)).astype(np.float32)
    xt = x if batch_first else np.ascontiguousarray(x.transpose(1, 0, 2))
    fmodel = export_torch(module, (xt,), tmp_path / "f.onnx", ["x"])
    qmodel = quantize_file(tmp_path / "f.onnx", tmp_path / "q.onnx", per_channel)
    return dict(module=module, x=x, xt=xt, batch_first=batch_first, fmodel=fmodel,
                qmodel=qmodel, path=tmp_path / "q.onnx", per_channel=per_channel)


def test_weights_are_the_dequantized_initializers(torch_case):
    qmodel, module = torch_case["qmodel"], torch_case["module"].lstm
    model = from_onnx(torch_case["path"])
    nodes = quantized_nodes(qmodel)
    leaves = lstm_leaves(model)
    assert len(leaves) == len(nodes) == module.num_layers
    init = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    H = module.hidden_size
    for k, (node, dirs) in enumerate(zip(nodes, leaves)):
        scales = init[node.input[8]]
        assert scales.shape == ((len(dirs), 4 * H) if torch_case["per_channel"]
                                else (len(dirs),))
        W, R = dequantized(qmodel, node)
        B = init[node.input[3]]
        for d, layer in enumerate(dirs):
            kernel, recurrent, bias = layer.get_weights()
            assert layer.go_backwards == (d == 1)
            # exactly the dequantized values, in fastlstm's gate order
            np.testing.assert_array_equal(kernel, fl_order(W[d], H))
            np.testing.assert_array_equal(recurrent, fl_order(R[d], H))
            np.testing.assert_array_equal(bias, fl_order(
                B[d, :4 * H].astype(np.float64) + B[d, 4 * H:], H).astype(np.float32))
            # the mapping, against PyTorch's own weights (gates i, f, g, o = fastlstm's):
            # within half a quantization step
            sfx = f"_l{k}" + ("_reverse" if d else "")
            w_ih = getattr(module, "weight_ih" + sfx).detach().numpy()
            w_hh = getattr(module, "weight_hh" + sfx).detach().numpy()
            b = (getattr(module, "bias_ih" + sfx) + getattr(module, "bias_hh" + sfx)).detach()
            step = np.max(init[node.input[8]][d]) / 2 * (1 + 1e-6)
            assert np.abs(kernel - w_ih.T).max() <= step
            assert np.abs(recurrent - w_hh.T).max() <= np.max(init[node.input[10]][d]) / 2 \
                * (1 + 1e-6)
            np.testing.assert_allclose(bias, b.numpy(), rtol=0, atol=1e-6)


def errors(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max())


def ort_outputs(case, model):
    """ONNX Runtime's output of ``model`` on the case's input, batch-major."""
    out = run(model, {"x": case["xt"]})[0]
    return out if case["batch_first"] else out.transpose(1, 0, 2)


def test_predictions_match_onnxruntime(torch_case):
    x, qmodel, fmodel = torch_case["x"], torch_case["qmodel"], torch_case["fmodel"]
    y = from_onnx(torch_case["path"])(x)
    y_int8 = ort_outputs(torch_case, qmodel)     # ONNX Runtime's quantized session
    y_float = ort_outputs(torch_case, fmodel)    # the float model it was quantized from
    y_deq = ort_outputs(torch_case, float_graph_of(qmodel, fmodel))
    with torch.no_grad():
        y_torch = torch_case["module"](torch.from_numpy(torch_case["xt"])).numpy()
    assert_same(y_float, y_torch if torch_case["batch_first"] else y_torch.transpose(1, 0, 2),
                np.float32)
    # the float model of the dequantized weights is that graph, to float32 rounding
    assert_same(y, y_deq, np.float32)
    ort_int8_error = errors(y_int8, y_float)          # weights and activations quantized
    activation_error = errors(y, y_int8)              # ONNX Runtime's activations only
    assert 0 < ort_int8_error < 0.05
    assert 0 < activation_error <= ACTIVATION_SHARE * ort_int8_error, (
        activation_error, ort_int8_error)
    # the dequantized weights are not the float ones: y moved by the weights' rounding
    assert 0 < errors(y, y_float) <= ort_int8_error


@pytest.mark.parametrize("precision, share", [("int8", 3.0), ("bfloat16", 2.0)])
def test_quantize_keyword(torch_case, precision, share):
    """fastlstm's own rounding of the dequantized weights (per-column symmetric scales) and of
    the activations: the size of ONNX Runtime's int8 error (measured: 0.3 to 1.0 times it for
    int8, 0.2 to 0.4 for bfloat16), from the float model and from ONNX Runtime's session."""
    x = torch_case["x"]
    base = from_onnx(torch_case["path"])
    y_int8 = ort_outputs(torch_case, torch_case["qmodel"])
    ort_int8_error = errors(y_int8, ort_outputs(torch_case, torch_case["fmodel"]))
    q = from_onnx(torch_case["path"], quantize=precision)
    for model, want in ((q, precision), (base, None)):
        layers = model.layers if hasattr(model, "layers") else [model]
        assert {quantized_precision(layer) for layer in layers} == {want}
    yq = q(x)
    assert yq.dtype == np.float32
    np.testing.assert_array_equal(yq, fl.quantize(base, precision)(x))
    assert 0 < errors(yq, base(x)) <= share * ort_int8_error
    assert errors(yq, y_int8) <= (share + 1) * ort_int8_error


@pytest.mark.parametrize("bad", ["int4", "INT8", 8, ["int8"]])
def test_quantize_keyword_refuses_other_values(small_quantized, bad):
    with pytest.raises(ValueError, match=r"quantize=.*expected None, 'int8' or 'bfloat16'"):
        from_onnx(small_quantized, quantize=bad)


def test_uint8_weights_and_float64(small_quantized):
    """uint8 weights (DynamicQuantizeLSTM allows them) shifted by 128 with their zero points
    dequantize to the same values; dtype="float64" keeps them exactly."""
    def to_uint8(m, n):
        init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        for k in (1, 2, 9, 11):
            set_initializer(m, n.input[k], (init[n.input[k]].astype(np.int16) + 128)
                            .astype(np.uint8))

    data = edited(small_quantized, to_uint8)
    x = np.random.default_rng(2).standard_normal((3, 6, 5)).astype(np.float32)
    ref = from_onnx(small_quantized)
    got = from_onnx(data)
    for a, b in zip(got.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    y_int8 = run(small_quantized, {"x": x})[0]
    np.testing.assert_allclose(run(data, {"x": x})[0], y_int8, rtol=0, atol=1e-6)
    wide = from_onnx(data, dtype="float64")
    assert wide.dtype == np.float64
    for a, b in zip(wide.get_weights(), ref.get_weights()):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=0)
    np.testing.assert_allclose(wide(x.astype(np.float64)), ref(x), rtol=0, atol=1e-5)


# -- other graphs: initial states, peepholes, functional models, a float head ---------------

def test_functional_graph_with_initial_states(tmp_path):
    """An encoder-decoder (the decoder starts from the encoder's states) goes through the
    functional-graph reader."""
    rng = np.random.default_rng(5)
    enc_in = fl.Input((None, 4), name="enc")
    dec_in = fl.Input((None, 3), name="dec")
    _, h, c = fl.layers.LSTM(6, return_state=True)(enc_in)
    seq = fl.layers.LSTM(6, return_sequences=True, use_peepholes=True)(
        dec_in, initial_state=[h, c])
    out = fl.layers.Dense(2)(seq)
    src = fl.Model([enc_in, dec_in], out)
    for layer in src.layers:
        if layer.weight_names:
            layer.set_weights([(rng.standard_normal(w.shape) * 0.5).astype(np.float32)
                               for w in layer.get_weights()])
    to_onnx(src, str(tmp_path / "f.onnx"))
    fmodel = onnx.load(str(tmp_path / "f.onnx"))
    qmodel = quantize_file(tmp_path / "f.onnx", tmp_path / "q.onnx",
                           op_types_to_quantize=["LSTM"])
    nodes = quantized_nodes(qmodel)
    assert len(nodes) == 2
    model = from_onnx(str(tmp_path / "q.onnx"))
    assert isinstance(model, fl.Model) and not isinstance(model, fl.Sequential)
    xe = rng.standard_normal((3, 7, 4)).astype(np.float32)
    xd = rng.standard_normal((3, 5, 3)).astype(np.float32)
    feeds = {"enc": xe, "dec": xd}
    lstms = [layer for layer in model.layers if type(layer).__name__ == "LSTM"]
    src_lstms = [layer for layer in src.layers if type(layer).__name__ == "LSTM"]
    assert len(lstms) == 2
    for node, layer, orig in zip(nodes, lstms, src_lstms):
        W, R = dequantized(qmodel, node)
        ws = layer.get_weights()
        np.testing.assert_array_equal(ws[0], fl_order(W[0], 6))
        np.testing.assert_array_equal(ws[1], fl_order(R[0], 6))
        np.testing.assert_array_equal(ws[2], orig.get_weights()[2])   # biases stay float
        if orig.use_peepholes:                                        # so do peepholes
            assert layer.use_peepholes
            np.testing.assert_array_equal(ws[3], orig.get_weights()[3])
    y = model.predict([xe, xd])
    assert_same(y, run(float_graph_of(qmodel, fmodel), feeds)[0], np.float32)
    y_int8, y_float = run(qmodel, feeds)[0], run(fmodel, feeds)[0]
    assert_same(y_float, src.predict([xe, xd]), np.float32)
    assert 0 < errors(y, y_int8) <= ACTIVATION_SHARE * errors(y_int8, y_float)
    q = from_onnx(str(tmp_path / "q.onnx"), quantize="int8")
    np.testing.assert_array_equal(q.predict([xe, xd]), fl.quantize(model, "int8").predict(
        [xe, xd]))


def test_float_head_kept_and_quantized_matmul_refused(tmp_path):
    """quantize_dynamic also rewrites MatMul (a Linear head) into integer operators, which
    from_onnx does not read; quantizing only the LSTMs keeps the head float."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(5, 6, batch_first=True)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    torch.manual_seed(4)
    net = Net().eval()
    x = np.random.default_rng(4).standard_normal((2, 8, 5)).astype(np.float32)
    fmodel = export_torch(net, (x,), tmp_path / "f.onnx", ["x"])
    quantize_file(tmp_path / "f.onnx", tmp_path / "all.onnx")
    with pytest.raises(ConversionError, match="MatMulInteger|DynamicQuantizeLinear"):
        from_onnx(str(tmp_path / "all.onnx"))
    qmodel = quantize_file(tmp_path / "f.onnx", tmp_path / "q.onnx",
                           op_types_to_quantize=["LSTM"])
    model = from_onnx(str(tmp_path / "q.onnx"))
    assert [type(layer).__name__ for layer in model.layers] == ["LSTM", "Dense"]
    assert_same(model(x), run(float_graph_of(qmodel, fmodel), {"x": x})[0], np.float32)


# -- refusals ------------------------------------------------------------------------------

REFUSALS = {
    "clip": (lambda m, n: n.attribute.append(helper.make_attribute("clip", 3.0)),
             r"clip=3\.0 \(cell clipping\)"),
    "layout attribute": (lambda m, n: n.attribute.append(helper.make_attribute("layout", 1)),
                         r"DynamicQuantizeLSTM has no attribute 'layout'"),
    "hidden_size as a float": (
        lambda m, n: [a.CopyFrom(helper.make_attribute("hidden_size", 6.0))
                      for a in n.attribute if a.name == "hidden_size"],
        r"attribute hidden_size is FLOAT; expected INT"),
    "elu activation": (lambda m, n: n.attribute.append(helper.make_attribute(
        "activations", ["Sigmoid", "Elu", "Elu"])), r"activation Elu"),
    "sequence_lens": (lambda m, n: (n.input.__setitem__(4, "lens"), m.graph.initializer.append(
        numpy_helper.from_array(np.array([3, 2], np.int32), "lens"))),
        r"sequence_lens \(masking\) is not supported"),
    "missing scale": (lambda m, n: n.input.__setitem__(8, ""), r"input W_scale is missing"),
    "scale from a node": (lambda m, n: n.input.__setitem__(10, m.graph.node[0].output[0]),
                          r"R_scale .* must be an initializer"),
    "eleven inputs": (lambda m, n: n.input.pop(), r"has 11 inputs; DynamicQuantizeLSTM takes 12"),
    "W in ONNX LSTM's layout": (
        lambda m, n: set_initializer(m, n.input[1], np.zeros((1, 24, 5), np.int8)),
        r"W has shape \(1, 24, 5\); expected \(1, \?, 24\)"),
    "uint8 zero point of int8 weights": (
        lambda m, n: set_initializer(m, n.input[9], np.zeros(1, np.uint8)),
        r"W_zero_point has dtype uint8; expected int8"),
    "scale per input row": (
        lambda m, n: set_initializer(m, n.input[8], np.ones((1, 5), np.float32)),
        r"W_scale has shape \(1, 5\)"),
    "float weights": (
        lambda m, n: set_initializer(m, n.input[2], np.zeros((1, 6, 24), np.float32)),
        r"R has dtype float32; expected int8 or uint8"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_name_the_node_and_the_reason(small_quantized, case):
    edit, message = REFUSALS[case]
    data = edited(small_quantized, edit)
    with pytest.raises(ConversionError, match=message) as info:
        from_onnx(data)
    assert "LSTM_quant" in str(info.value)          # the node, by its name


def test_the_callers_model_is_left_unchanged(small_quantized):
    before = small_quantized.SerializeToString()
    from_onnx(small_quantized)
    assert small_quantized.SerializeToString() == before
    assert [n.op_type for n in small_quantized.graph.node].count("DynamicQuantizeLSTM") == 1


def test_dequantized_weights_are_bounded_by_the_size_limit(small_quantized, monkeypatch):
    """W is 120 bytes of int8 and 480 of float32 here; every other tensor is under 200."""
    from fastlstm import limits
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 200)
    with pytest.raises(ConversionError, match=r"the dequantized W: declares an array of "
                                              r"shape \(1, 5, 24\) and dtype float32"):
        from_onnx(small_quantized)
