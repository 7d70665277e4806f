"""fastlstm.convert <-> PyTorch: nn.LSTM / nn.GRU / nn.RNN (stacks, bidirectional,
batch_first, bias, dropout), the cells, state_dicts with a config, round trips, errors."""
import sys

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.convert import ConversionError, from_torch, to_torch

from convert_util import assert_same, randomize

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.peers

L = fl.layers


def make_module(kind, I, H, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    if kind.startswith("RNN_"):
        kw["nonlinearity"] = kind[4:]
        kind = "RNN"
    return getattr(torch.nn, kind)(I, H, **kw).to(dtype).eval()


def torch_out(m, x, batch_first):
    xt = torch.from_numpy(x if batch_first else np.ascontiguousarray(x.transpose(1, 0, 2)))
    with torch.no_grad():
        y = m(xt)[0].numpy()
    return y if batch_first else y.transpose(1, 0, 2)


KINDS = ["LSTM", "GRU", "RNN_tanh", "RNN_relu"]
SHAPES = [  # num_layers, bidirectional, batch_first, bias, dropout
    (1, False, True, True, 0.0),
    (1, True, False, False, 0.0),
    (2, True, True, True, 0.25),
    (3, False, False, True, 0.0),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers, bidirectional, batch_first, bias, dropout", SHAPES)
def test_from_torch_matches_module(kind, num_layers, bidirectional, batch_first, bias, dropout):
    m = make_module(kind, 3, 5, num_layers=num_layers, bidirectional=bidirectional,
                    batch_first=batch_first, bias=bias, dropout=dropout)
    x = np.random.default_rng(1).standard_normal((4, 7, 3)).astype(np.float32)
    model = from_torch(m)
    assert_same(model(x), torch_out(m, x, batch_first), np.float32, kind)
    layers = model.layers if isinstance(model, fl.Sequential) else [model]
    recurrent = [l for l in layers if not isinstance(l, L.Dropout)]
    assert len(recurrent) == num_layers
    assert all(isinstance(l, L.Bidirectional) == bidirectional for l in recurrent)
    dropouts = [l for l in layers if isinstance(l, L.Dropout)]
    assert len(dropouts) == (num_layers - 1 if dropout else 0)
    assert all(d.rate == dropout for d in dropouts)
    if num_layers == 1 and not bidirectional:
        assert isinstance(model, L.Layer) and model.return_sequences


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_from_torch_cells_step_and_sequence(kind):
    torch.manual_seed(3)
    cell = getattr(torch.nn, kind)(4, 6).eval()
    layer = from_torch(cell)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    states = [rng.standard_normal((3, 6)).astype(np.float32)
              for _ in range(2 if kind == "LSTMCell" else 1)]
    # one step with given states
    y, new = layer.step(x[:, 0], states)
    with torch.no_grad():
        ts = [torch.from_numpy(s) for s in states]
        out = cell(torch.from_numpy(x[:, 0]), tuple(ts) if kind == "LSTMCell" else ts[0])
    out = list(out) if isinstance(out, tuple) else [out]
    assert_same(y, out[0].numpy(), np.float32, "y_t")
    for a, b in zip(new, out):
        assert_same(a, b.numpy(), np.float32, "state")
    # the whole sequence equals the cell looped over time from zero states
    hs, st = [], None
    with torch.no_grad():
        for t in range(5):
            st = cell(torch.from_numpy(x[:, t]), st)
            hs.append((st[0] if kind == "LSTMCell" else st).numpy())
    assert_same(layer(x), np.stack(hs, axis=1), np.float32, "sequence")


def test_from_state_dict_and_config_needs_no_torch(monkeypatch):
    m = make_module("LSTM", 3, 4, num_layers=2, bidirectional=True, batch_first=True)
    sd = {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    expected = torch_out(m, x, True)
    monkeypatch.setitem(sys.modules, "torch", None)       # PyTorch "not installed"
    model = from_torch(sd, config={"type": "LSTM", "input_size": 3, "hidden_size": 4,
                                   "num_layers": 2, "bidirectional": True,
                                   "batch_first": True})
    assert_same(model(x), expected, np.float32)


def test_from_torch_state_dict_of_tensors_gru():
    m = make_module("GRU", 3, 4, batch_first=True)
    model = from_torch(m.state_dict(), config={"type": "GRU", "input_size": 3, "hidden_size": 4})
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    assert_same(model(x), torch_out(m, x, True), np.float32)
    assert model.reset_after and model.bias.shape == (2, 12)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_tanh"])
def test_from_torch_float64(kind):
    m = make_module(kind, 3, 5, dtype=torch.float64, num_layers=2, bidirectional=True,
                    batch_first=True)
    x = np.random.default_rng(4).standard_normal((3, 6, 3))
    model = from_torch(m)
    assert all(w.dtype == np.float64 for w in model.get_weights())
    y = model(x)
    assert y.dtype == np.float64
    assert_same(y, torch_out(m, x, True), np.float64)


def test_from_torch_dtype_override():
    m = make_module("GRU", 3, 4, batch_first=True)
    model = from_torch(m, dtype="float64")
    assert model.dtype == np.float64
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    assert_same(model(x), torch_out(m, x, True), np.float32)


# -- fastlstm -> torch -> fastlstm -------------------------------------------------------------
def _fl_models(rng):
    I = 3
    yield "lstm", randomize(L.LSTM(5, return_sequences=True), (None, None, I), rng)
    yield "gru_last", randomize(L.GRU(5, use_bias=False), (None, None, I), rng)
    yield "rnn_relu", randomize(L.SimpleRNN(5, activation="relu", return_sequences=True),
                                (None, None, I), rng)
    yield "bi_stack", fl.Sequential([
        randomize(L.Bidirectional(L.LSTM(4, return_sequences=True)), (None, None, I), rng),
        L.Dropout(0.3),
        randomize(L.Bidirectional(L.LSTM(4, return_sequences=True)), (None, None, 8), rng)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_round_trip_fastlstm_torch_fastlstm(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 3)).astype(dtype)
    for name, model in _fl_models(rng):
        if dtype == np.float64:
            model = _as_float64(model)
        m = to_torch(model)
        assert not m.training and m.batch_first
        assert next(m.parameters()).dtype == (torch.float64 if dtype == np.float64
                                              else torch.float32)
        expected = model(x)
        with torch.no_grad():
            seq, h_n = m(torch.from_numpy(x))[0].numpy(), m(torch.from_numpy(x))[1]
        if expected.ndim == 2:        # return_sequences=False: the last step
            seq = seq[:, -1]
        assert_same(seq, expected, dtype, name)
        back = from_torch(m)
        y_back = back(x)
        assert_same(y_back if expected.ndim == 3 else y_back[:, -1], expected, dtype,
                    name + " back")
    assert m.dropout == 0.3 and m.num_layers == 2 and m.bidirectional


def _as_float64(model):
    layers = model.layers if isinstance(model, fl.Sequential) else [model]
    out = []
    for layer in layers:
        spec = L.serialize(layer)
        _set_dtype(spec)
        new = L.deserialize(spec)
        ws = layer.get_weights()
        if ws:
            dim = (layer.forward_layer if isinstance(layer, L.Bidirectional) else layer).input_dim
            new.build((None, None, dim))
            new.set_weights([w.astype(np.float64) for w in ws])
        out.append(new)
    return fl.Sequential(out) if isinstance(model, fl.Sequential) else out[0]


def _set_dtype(spec):
    spec["config"]["dtype"] = "float64"
    for k in ("layer", "backward_layer"):
        if isinstance(spec["config"].get(k), dict):
            _set_dtype(spec["config"][k])


# -- errors ----------------------------------------------------------------------------------
def test_projection_weights_without_proj_size_are_a_clear_error():
    m = torch.nn.LSTM(3, 6, proj_size=2)
    with pytest.raises(ConversionError, match="proj_size|projection"):
        from_torch(m.state_dict(), config={"type": "LSTM", "input_size": 3, "hidden_size": 6})
    with pytest.raises(ConversionError, match="proj_size"):
        from_torch(torch.nn.GRU(3, 4).state_dict(), config={"type": "GRU", "proj_size": 2})


def test_state_dict_mismatch_names_keys():
    m = torch.nn.GRU(3, 4, num_layers=2)
    with pytest.raises(ConversionError, match="unexpected.*weight_ih_l1"):
        from_torch(m.state_dict(), config={"type": "GRU", "input_size": 3, "hidden_size": 4})
    with pytest.raises(ConversionError, match="unknown keys"):
        from_torch(m.state_dict(), config={"type": "GRU", "hidden_units": 4})
    with pytest.raises(TypeError, match="config"):
        from_torch(dict(m.state_dict()))
    with pytest.raises(TypeError, match="nn.LSTM"):
        from_torch(torch.nn.Linear(3, 4))


def test_huge_num_layers_is_refused_at_once():
    # It once named every expected key first: 10**5 layers gave a 7.5 MB message, 10**9 the
    # OOM killer (kept small here, so that a regression fails rather than exhausts memory).
    sd = torch.nn.LSTM(5, 4).state_dict()
    with pytest.raises(ConversionError, match="num_layers=100000, but the state_dict holds "
                                              "weights of 1 layer") as err:
        from_torch(sd, config={"type": "LSTM", "input_size": 5, "hidden_size": 4,
                               "num_layers": 10 ** 5})
    assert len(str(err.value)) < 200
    gaps = dict(torch.nn.LSTM(5, 4, num_layers=30).state_dict())
    del gaps["weight_hh_l7"]       # 30 layers held, one key missing: the list stays short
    gaps.update({f"extra_{k}": torch.zeros(1) for k in range(20)})
    with pytest.raises(ConversionError, match=r"missing \['weight_hh_l7'\], unexpected "
                                              r"\['extra_0', .*, \.\.\.\] \(20 in all\)"):
        from_torch(gaps, config={"type": "LSTM", "input_size": 5, "hidden_size": 4,
                                 "num_layers": 30})


@pytest.mark.parametrize("sd_edit, config, match", [
    (lambda sd: {k: v.to(torch.complex64) for k, v in sd.items()}, {},
     "weight_ih_l0 has dtype complex64; expected real numbers"),
    (lambda sd: {k: v.numpy() + 1j for k, v in sd.items()}, {}, "has dtype complex64"),
    (None, {"bias": "False"}, r"config\['bias'\]: expected True or False, got 'False'"),
    (None, {"bidirectional": 0}, r"config\['bidirectional'\]: expected True or False"),
    (None, {"batch_first": "yes"}, r"config\['batch_first'\]"),
    (None, {"nonlinearity": "relu"}, r"config\['nonlinearity'\]: nn.LSTM has none"),
], ids=["complex_tensors", "complex_arrays", "bias_str", "bidirectional_int",
        "batch_first_str", "lstm_nonlinearity"])
def test_from_torch_refuses_lenient_inputs(sd_edit, config, match):
    sd = dict(torch.nn.LSTM(3, 4).state_dict())
    if sd_edit is not None:
        sd = sd_edit(sd)
    with pytest.raises(ConversionError, match=match):
        from_torch(sd, config=dict({"type": "LSTM", "input_size": 3, "hidden_size": 4},
                                   **config))


@pytest.mark.parametrize("layer, match", [
    (lambda: L.LSTM(4, use_peepholes=True), "use_peepholes"),
    (lambda: L.LSTM(4, coupled_input_forget=True), "coupled_input_forget"),
    (lambda: L.LSTM(4, recurrent_activation="hard_sigmoid"), "recurrent_activation"),
    (lambda: L.GRU(4, reset_after=False), "reset_after"),
    (lambda: L.SimpleRNN(4, activation="softsign"), "activation"),
    (lambda: L.LSTM(4, go_backwards=True), "go_backwards"),
    (lambda: L.GRU(4, stateful=True), "stateful"),
    (lambda: L.LSTM(4, dropout=0.2), "dropout"),
    (lambda: L.Bidirectional(L.GRU(4), merge_mode="sum"), "merge_mode"),
], ids=["peepholes", "cifg", "hard_sigmoid", "reset_before", "softsign", "go_backwards",
        "stateful", "dropout", "merge_sum"])
def test_to_torch_refuses_what_torch_cannot_express(layer, match):
    layer = layer()
    layer.build((None, None, 3))
    with pytest.raises(ConversionError, match=match):
        to_torch(layer)


def test_to_torch_model_errors_and_training_options():
    rng = np.random.default_rng(0)
    with pytest.raises(ConversionError, match="Dense"):
        to_torch(fl.Sequential([randomize(L.LSTM(4, return_sequences=True), (None, None, 3), rng),
                                randomize(L.Dense(2), (None, 4), rng)]))
    with pytest.raises(ConversionError, match="differs"):
        to_torch(fl.Sequential([randomize(L.LSTM(4, return_sequences=True), (None, None, 3), rng),
                                randomize(L.LSTM(5), (None, None, 4), rng)]))
    layer = randomize(L.LSTM(4, dropout=0.2, recurrent_dropout=0.1), (None, None, 3), rng)
    m = to_torch(layer, drop_training_options=True)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        assert_same(m(torch.from_numpy(x))[0].numpy()[:, -1], layer(x), np.float32)


def test_missing_torch_is_a_clear_import_error(monkeypatch):
    layer = randomize(L.LSTM(4), (None, None, 3), np.random.default_rng(0))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        to_torch(layer)


def test_rnn_of_cells_converts_like_a_stack():
    rng = np.random.default_rng(6)
    cells = [L.LSTMCell(4), L.LSTMCell(4)]
    layer = L.RNN(cells, return_sequences=True)
    randomize(layer, (None, None, 3), rng)
    m = to_torch(layer)
    assert m.num_layers == 2
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        assert_same(m(torch.from_numpy(x))[0].numpy(), layer(x), np.float32)
