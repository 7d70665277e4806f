"""layer_norm=True on the LSTM, GRU and SimpleRNN layers: the weights, the configuration,
saving, Bidirectional, stateful calls, step(), the cells of RNN, mixed_bfloat16, training,
bad arguments and the converters' refusals. The cell math itself is tested against PyTorch in
test_layer_norm.py; here the layers are checked against the ops they run."""
import importlib.util

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import layers
from conftest import assert_close

KINDS = ["LSTM", "GRU", "SimpleRNN"]


def _layer(kind, units=5, **kw):
    return getattr(layers, kind)(units, layer_norm=True, **kw)


def _x(B=3, T=6, I=4, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((B, T, I)).astype(dtype)


def _randomize(layer, seed=1):
    """Weights of a fixed draw, away from the initial values (so that gamma and beta
    matter): gamma and gamma_h about 1, the rest about 0."""
    rng = np.random.default_rng(seed)
    names = [n.split("/")[-1] for n in layer.weight_names]
    layer.set_weights([rng.standard_normal(w.shape) * 0.4 + (n.startswith("gamma"))
                       for n, w in zip(names, layer.get_weights())])


@pytest.mark.parametrize("kind, options, names, shapes", [
    ("LSTM", {}, ["kernel", "recurrent_kernel", "bias", "gamma", "gamma_h", "beta_h"],
     [(4, 20), (5, 20), (20,), (2, 20), (5,), (5,)]),
    ("LSTM", dict(use_peepholes=True),
     ["kernel", "recurrent_kernel", "bias", "peephole", "gamma", "gamma_h", "beta_h"],
     [(4, 20), (5, 20), (20,), (3, 5), (2, 20), (5,), (5,)]),
    ("LSTM", dict(coupled_input_forget=True, use_bias=False),
     ["kernel", "recurrent_kernel", "gamma", "gamma_h", "beta_h"],
     [(4, 15), (5, 15), (2, 15), (5,), (5,)]),
    ("GRU", {}, ["kernel", "recurrent_kernel", "bias", "gamma"],
     [(4, 15), (5, 15), (2, 15), (2, 15)]),
    ("SimpleRNN", {}, ["kernel", "recurrent_kernel", "bias", "gamma"],
     [(4, 5), (5, 5), (5,), (2, 5)]),
    ("SimpleRNN", dict(use_bias=False), ["kernel", "recurrent_kernel", "gamma"],
     [(4, 5), (5, 5), (2, 5)]),
])
def test_weights(kind, options, names, shapes):
    layer = _layer(kind, **options)
    assert layer.weight_shapes((None, 6, 4)) == shapes
    layer.build((None, 6, 4))
    assert layer.weight_names == names
    ws = layer.get_weights()
    assert [w.shape for w in ws] == shapes
    assert layer.count_params() == sum(int(np.prod(s)) for s in shapes)
    got = dict(zip(names, ws))
    np.testing.assert_array_equal(got["gamma"], 1)
    if kind == "LSTM":
        np.testing.assert_array_equal(got["gamma_h"], 1)
        np.testing.assert_array_equal(got["beta_h"], 0)
    assert len(layer.trainable_weights if hasattr(layer, "trainable_weights")
               else layer.weights) == len(names)
    # regularizers are untouched: none on the normalization's weights
    assert len(layer.regularization_grads()) == len(names)


def test_initializers_and_config_round_trip():
    layer = _layer("LSTM", gamma_initializer=fl.initializers.Constant(0.5),
                   beta_initializer="ones")
    layer.build((None, 6, 4))
    ws = layer.get_weights()
    np.testing.assert_array_equal(ws[3], 0.5)
    np.testing.assert_array_equal(ws[4], 0.5)
    np.testing.assert_array_equal(ws[5], 1)
    cfg = layer.get_config()
    assert cfg["layer_norm"] is True
    twin = layers.LSTM.from_config(cfg)
    assert twin.layer_norm and twin.get_config() == cfg
    twin.build((None, 6, 4))
    np.testing.assert_array_equal(twin.get_weights()[4], 0.5)
    for kind in KINDS:                    # emitted only when on, as zoneout
        plain = getattr(layers, kind)(3).get_config()
        assert "layer_norm" not in plain and "gamma_initializer" not in plain
        assert getattr(layers, kind).from_config(plain).layer_norm is False
        assert layers.deserialize(layers.serialize(_layer(kind))).layer_norm is True


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [{}, dict(go_backwards=True, use_peepholes=True),
                                     dict(use_bias=False, coupled_input_forget=True)],
                         ids=["plain", "backwards_peephole", "nobias_cifg"])
def test_layer_runs_the_op_and_returns_every_gradient(kind, options):
    if kind != "LSTM":
        options = {k: v for k, v in options.items()
                   if k not in ("use_peepholes", "coupled_input_forget")}
    x = _x()
    layer = _layer(kind, return_sequences=True, return_state=True, dtype="float64", **options)
    layer.build(x.shape)
    _randomize(layer)
    h0 = [np.random.default_rng(5).standard_normal((3, 5)) for _ in layer.state_names]
    mask = np.random.default_rng(6).random((3, 6)) > 0.3
    outs, back = layer.forward_train(x, mask=mask, initial_state=h0)
    rng = np.random.default_rng(7)
    d = [rng.standard_normal(o.shape) for o in outs]
    g = back(d)
    ws = dict(zip(layer.weight_names, layer.get_weights()))
    xt, mt = x.transpose(1, 0, 2), mask.T
    with fl.use_backend("numpy"):
        if kind == "LSTM":
            y, h, c, cache = fl.ops.lstm_forward(
                xt, ws["kernel"], ws["recurrent_kernel"], ws.get("bias"), *h0,
                peephole=ws.get("peephole"), mask=mt,
                coupled_input_forget=layer.coupled_input_forget,
                go_backwards=layer.go_backwards, training=True,
                layer_norm=(ws["gamma"], ws["gamma_h"], ws["beta_h"]))
            ref = fl.ops.lstm_backward(cache, d[0].transpose(1, 0, 2), d[1], d[2])
            finals = [h, c]
        else:
            f = fl.ops.gru_forward if kind == "GRU" else fl.ops.simple_rnn_forward
            b = fl.ops.gru_backward if kind == "GRU" else fl.ops.simple_rnn_backward
            y, h, cache = f(xt, ws["kernel"], ws["recurrent_kernel"], ws.get("bias"), h0[0],
                            mask=mt, go_backwards=layer.go_backwards, training=True,
                            layer_norm=ws["gamma"])
            ref = b(cache, d[0].transpose(1, 0, 2), d[1])
            finals = [h]
    assert_close(outs[0], y.transpose(1, 0, 2), np.float64)
    for a, e in zip(outs[1:], finals):
        assert_close(a, e, np.float64)
    assert_close(g.inputs, ref.inputs.transpose(1, 0, 2), np.float64)
    assert_close(g.initial_state[0], ref.h0, np.float64)
    fields = {"kernel": "kernel", "recurrent_kernel": "recurrent_kernel", "bias": "bias",
              "peephole": "peephole", "gamma": "gamma", "gamma_h": "gamma_h",
              "beta_h": "beta_h"}
    assert len(g.weights) == len(layer.weight_names)
    for name, gw in zip(layer.weight_names, g.weights):
        assert gw is not None, name
        assert_close(gw, getattr(ref, fields[name]), np.float64, name)
    # inference runs the same forward
    assert_close(layer(x, mask=mask, initial_state=h0)[0], outs[0], np.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_lengths_zoneout_and_zero_output_for_mask(kind):
    x = _x(B=4, T=7)
    lengths = np.array([7, 2, 0, 5])
    layer = _layer(kind, return_sequences=True, zoneout=0.2, zero_output_for_mask=True,
                   dtype="float64", seed=3)
    layer.build(x.shape)
    _randomize(layer)
    y = layer(x, sequence_lengths=lengths)
    with fl.use_backend("numpy"):
        ref = layer(x, mask=np.arange(7)[None, :] < lengths[:, None])
    assert_close(y, ref, np.float64)
    assert not y[1, 2:].any() and not y[2].any()
    outs, back = layer.forward_train(x, sequence_lengths=lengths)
    g = back(np.ones_like(outs))
    assert not g.inputs[2].any() and not g.inputs[1, 2:].any()
    assert all(w is not None and np.isfinite(w).all() for w in g.weights)


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_model(kind, tmp_path):
    x = _x()
    model = fl.Sequential([_layer(kind, return_sequences=True, dtype="float64"),
                           _layer(kind, units=3, dtype="float64")])
    model.build((None, 6, 4))
    for layer in model.layers:
        _randomize(layer)
    path = str(tmp_path / "m.npz")
    model.save(path)
    loaded = fl.load_model(path)
    assert all(layer.layer_norm for layer in loaded.layers)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional(kind):
    x = _x()
    bi = layers.Bidirectional(_layer(kind, return_sequences=True, dtype="float64"))
    bi.build(x.shape)
    assert bi.forward_layer.layer_norm and bi.backward_layer.layer_norm
    n = len(bi.forward_layer.weight_names)
    assert len(bi.get_weights()) == 2 * n
    assert bi.weight_names[n - 1].startswith("forward/") and bi.weight_names[-1].startswith(
        "backward/")
    _randomize(bi)
    y = bi(x)
    fwd, bwd = bi.forward_layer(x), bi.backward_layer(x)[:, ::-1]
    assert_close(y, np.concatenate([fwd, bwd], axis=-1), np.float64)
    outs, back = bi.forward_train(x)
    g = back(np.ones_like(outs))
    assert len(g.weights) == 2 * n
    ln = [i for i, name in enumerate(bi.weight_names) if name.split("/")[1] == "gamma"]
    assert len(ln) == 2 and all(np.abs(g.weights[i]).sum() > 0 for i in ln)


@pytest.mark.parametrize("kind", KINDS)
def test_stateful_calls_continue_one_sequence(kind):
    x = _x(T=8)
    whole = _layer(kind, return_sequences=True, dtype="float64")
    whole.build(x.shape)
    _randomize(whole)
    stateful = _layer(kind, return_sequences=True, stateful=True, dtype="float64")
    stateful.build(x.shape)
    stateful.set_weights(whole.get_weights())
    y = np.concatenate([stateful(x[:, :5]), stateful(x[:, 5:])], axis=1)
    assert_close(y, whole(x), np.float64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_step_equals_the_sequence_call(kind, dtype):
    x = _x(dtype=np.dtype(dtype))
    layer = _layer(kind, return_sequences=True, dtype=dtype)
    layer.build(x.shape)
    _randomize(layer)
    states, ys = layer.get_initial_state(3), []
    for t in range(x.shape[1]):
        yt, states = layer.step(x[:, t], states)
        ys.append(yt)
    assert layer._step_plan is None               # the op runs it, no compiled step
    assert_close(np.stack(ys, 1), layer(x), np.dtype(dtype))


@pytest.mark.parametrize("kind", KINDS)
def test_rnn_cell_passes_layer_norm_through(kind):
    x = _x()
    cell = getattr(layers, kind + "Cell")(5, layer_norm=True, dtype="float64")
    rnn = layers.RNN(cell, return_sequences=True)
    rnn.build(x.shape)
    assert cell.get_config()["layer_norm"] is True
    _randomize(rnn)
    layer = _layer(kind, return_sequences=True, dtype="float64")
    layer.build(x.shape)
    layer.set_weights(rnn.get_weights())
    assert_close(rnn(x), layer(x), np.float64)
    y0, states = cell(x[:, 0], cell.get_initial_state(3))
    assert_close(y0, layer(x[:, :1])[:, 0], np.float64)
    twin = layers.RNN.from_config(rnn.get_config())
    assert twin.cells[0]._layer.layer_norm


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_bfloat16(kind):
    x = _x(dtype=np.float32)
    layer = _layer(kind, units=6, return_sequences=True, dtype="mixed_bfloat16", seed=1)
    layer.build(x.shape)
    _randomize(layer)
    got = layer(x)
    with fl.use_backend("numpy"):
        want = layer(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain = _layer(kind, units=6, return_sequences=True)
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(got, plain(x), rtol=0, atol=5e-2)
    assert not np.array_equal(got, plain(x))     # the products took bf16 operands
    outs, back = layer.forward_train(x)
    g = back(np.ones_like(outs))
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in g.weights)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_reduces_the_loss(kind):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 6, 3)).astype(np.float32)
    y = np.tanh(x.sum(axis=(1, 2)))[:, None].astype(np.float32)
    init = fl.initializers
    model = fl.Sequential([
        _layer(kind, units=8, seed=0, kernel_initializer=init.GlorotUniform(seed=0),
               recurrent_initializer=init.Orthogonal(seed=1)),
        layers.Dense(1, kernel_initializer=init.GlorotUniform(seed=2))])
    model.compile("adam", "mse")
    before = model.evaluate(x, y)
    gammas = [w.copy() for n, w in zip(model.layers[0].weight_names,
                                       model.layers[0].get_weights()) if n == "gamma"]
    model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    after = model.evaluate(x, y)
    before, after = (v if np.isscalar(v) else v[0] for v in (before, after))
    assert after < 0.8 * before
    trained = dict(zip(model.layers[0].weight_names, model.layers[0].get_weights()))
    assert not np.allclose(trained["gamma"], gammas[0])     # gamma is trained too


def test_bad_arguments():
    for kind in KINDS:
        with pytest.raises(TypeError, match="layer_norm: expected True or False, got 'yes'"):
            getattr(layers, kind)(3, layer_norm="yes")
        with pytest.raises(TypeError, match="layer_norm: expected True or False, got 1"):
            getattr(layers, kind)(3, layer_norm=1)
    with pytest.raises(ValueError, match="layer_norm: .*reset_after=True only"):
        layers.GRU(3, layer_norm=True, reset_after=False)
    with pytest.raises(ValueError, match="layer_norm: a projected LSTM"):
        layers.LSTM(4, proj_size=2, layer_norm=True)
    with pytest.raises(ValueError, match="gamma_initializer"):
        layers.LSTM(4, layer_norm=True, gamma_initializer="no_such_initializer")
    with pytest.raises(ValueError, match="beta_initializer"):
        layers.LSTM(4, layer_norm=True, beta_initializer="no_such_initializer")
    layer = _layer("SimpleRNN")
    layer.build((None, 2, 3))
    ws = layer.get_weights()
    with pytest.raises(ValueError, match=r"gamma of .* expects shape \(2, 5\)"):
        layer.set_weights(ws[:-1] + [np.ones((2, 4))])
    with pytest.raises(ValueError, match="expects 4 arrays"):
        layer.set_weights(ws[:-1])


@pytest.mark.parametrize("kind", KINDS)
def test_converters_refuse(kind):
    from fastlstm.convert import ConversionError, to_keras, to_onnx, to_torch
    layer = _layer(kind)
    layer.build((None, 6, 4))
    bi = layers.Bidirectional(_layer(kind, name=f"ln_{kind.lower()}"))
    bi.build((None, 6, 4))
    for convert, target, module in ((to_keras, "Keras", "keras"),
                                    (to_torch, "PyTorch", "torch"), (to_onnx, "ONNX", "onnx")):
        if importlib.util.find_spec(module) is None:    # that framework is not installed
            continue
        for obj, name in ((layer, layer.name), (bi, f"ln_{kind.lower()}")):
            with pytest.raises(ConversionError, match=f"{name}.*layer_norm=True.*{target} "
                                                      "has no layer-normalized"):
                convert(obj)


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_quantize_refuses_a_layer_normalized_cell_by_name(precision):
    """The int8/bfloat16 kernels have no layer norm: fl.quantize says so rather than serving
    the copy from the NumPy definition; the float model is left as it was."""
    x = _x(dtype=np.float32)
    model = fl.Sequential([_layer("LSTM", units=8, return_sequences=True),
                           _layer("GRU", units=6)])
    model.build(x.shape)
    want = model.predict(x)
    with pytest.raises(ValueError, match=r"fl.quantize: .*layer_norm=True.*float32 and "
                                         r"float64 only"):
        fl.quantize(model, precision)
    np.testing.assert_array_equal(model.predict(x), want)
