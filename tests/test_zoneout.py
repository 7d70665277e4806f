"""Zoneout on h (haste's form) for every cell: the oracle's BPTT by finite differences in
float64, the compiled packed loop against the oracle (masks, dropout, both dtypes, every ISA
variant, threads), and the layers (seeded masks, inference, step, config)."""
import itertools

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _lstm
from conftest import DTYPES, assert_close, central_differences, seed_of

CELLS = ["lstm", "gru", "gru_reset_before", "simple_rnn"]


def problem(cell, dtype, T, B, I, H, seed, mask_kind="none", dropout=False, training=True):
    rng = np.random.default_rng(seed)
    G = {"lstm": 4 * H, "gru": 3 * H, "gru_reset_before": 3 * H, "simple_rnn": H}[cell]
    kw = dict(x=rng.standard_normal((T, B, I)), kernel=rng.standard_normal((I, G)) * 0.5,
              recurrent_kernel=rng.standard_normal((H, G)) * 0.5,
              bias=rng.standard_normal((2, G) if cell == "gru" else G) * 0.3,
              h0=rng.standard_normal((B, H)))
    if cell == "lstm":
        kw["c0"] = rng.standard_normal((B, H))
    if cell.startswith("gru"):
        kw["reset_after"] = cell == "gru"
    if mask_kind == "prefix":
        kw["mask"] = np.arange(T)[:, None] < rng.integers(0, T + 1, B)[None, :]
    elif mask_kind == "gaps":
        kw["mask"] = rng.random((T, B)) > 0.3
    if dropout:
        kw["input_dropout_mask"] = (rng.random((B, I)) > 0.3) / 0.7
        kw["recurrent_dropout_mask"] = (rng.random((B, H)) > 0.3) / 0.7
    kw["zoneout"] = 0.35
    if training:
        kw["zoneout_mask"] = (rng.random((T, B, H)) >= 0.35).astype(float)
    return {k: (v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
            for k, v in kw.items()}


def forward(cell, kw, **flags):
    if cell == "lstm":
        y, h, c, cache = fl.ops.lstm_forward(**kw, **flags)
        return [y, h, c], cache
    f = fl.ops.gru_forward if cell.startswith("gru") else fl.ops.simple_rnn_forward
    y, h, cache = f(**kw, **flags)
    return [y, h], cache


def backward(cell, cache, w):
    if cell == "lstm":
        g = fl.ops.lstm_backward(cache, *w)
        return [g.inputs, g.h0, g.c0, g.kernel, g.recurrent_kernel, g.bias]
    b = fl.ops.gru_backward if cell.startswith("gru") else fl.ops.simple_rnn_backward
    g = b(cache, *w[:2])
    return [g.inputs, g.h0, g.kernel, g.recurrent_kernel, g.bias]


def weights_of_outputs(cell, seed, T, B, H, rs):
    rng = np.random.default_rng(seed + 7)
    w = [rng.standard_normal((T, B, H) if rs else (B, H)), rng.standard_normal((B, H))]
    if cell == "lstm":
        w.append(rng.standard_normal((B, H)))
    return w


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("mask_kind", ["none", "prefix", "gaps"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_oracle_gradients_by_finite_differences(cell, mask_kind, go_backwards):
    seed = seed_of(cell, mask_kind, go_backwards, "zoneout-fd")
    kw = problem(cell, np.float64, 5, 3, 2, 4, seed, mask_kind)
    w = weights_of_outputs(cell, seed, 5, 3, 4, True)
    flags = dict(go_backwards=go_backwards)

    def loss():
        with fl.use_backend("numpy"):
            out, _ = forward(cell, kw, **flags)
        return sum(float(np.sum(o * wi)) for o, wi in zip(out, w))

    with fl.use_backend("numpy"):
        _, cache = forward(cell, kw, training=True, **flags)
        grads = backward(cell, cache, w)
    names = ["x", "h0"] + (["c0"] if cell == "lstm" else []) + ["kernel", "recurrent_kernel",
                                                                 "bias"]
    for name, g in zip(names, grads):
        for idx, num in central_differences(loss, kw[name], 10):
            assert abs(num - g[idx]) < 1e-6 * (1 + abs(g[idx])), (name, idx)


def test_oracle_definition():
    """h_t = h_{t-1} + m (h~_t - h_{t-1}): a keep mask of ones is the plain cell, zeros keep
    h0 for ever; inference mixes with 1 - p."""
    kw = problem("simple_rnn", np.float64, 4, 2, 3, 5, 0, training=False)
    with fl.use_backend("numpy"):
        plain, _ = forward("simple_rnn", {k: v for k, v in kw.items() if k != "zoneout"})
        ones, _ = forward("simple_rnn", dict(kw, zoneout_mask=np.ones((4, 2, 5))),
                          training=True)
        zeros, _ = forward("simple_rnn", dict(kw, zoneout_mask=np.zeros((4, 2, 5))),
                           training=True)
        y, _ = forward("simple_rnn", kw)
    assert_close(ones[0], plain[0], np.float64)
    assert np.allclose(zeros[1], kw["h0"])
    h = kw["h0"]
    x, W, U, b = kw["x"], kw["kernel"], kw["recurrent_kernel"], kw["bias"]
    for t in range(4):
        h = 0.35 * h + 0.65 * np.tanh(x[t] @ W + h @ U + b)
    assert_close(y[1], h, np.float64)


@pytest.fixture(params=[1, 3], ids=["one-thread", "three-threads"])
def threads(request):
    saved = (fl.get_num_threads(), _lstm.get_parallel_min_macs())
    _lstm.set_threads(request.param, 0)
    yield request.param
    _lstm.set_threads(*saved)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mask_kind", ["none", "prefix", "gaps"])
def test_compiled_matches_oracle(cell, dtype, mask_kind, threads):
    for training, gb, rs, dropout in itertools.product([True, False], [False, True],
                                                       [True, False], [False, True]):
        seed = seed_of(cell, dtype, mask_kind, training, gb, rs, dropout)
        kw = problem(cell, dtype, 6, 7, 3, 5, seed, mask_kind, dropout, training)
        if not training:
            kw.pop("input_dropout_mask", None)
            kw.pop("recurrent_dropout_mask", None)
        w = [a.astype(dtype) for a in weights_of_outputs(cell, seed, 6, 7, 5, rs)]
        flags = dict(go_backwards=gb, return_sequences=rs, training=training)
        res = {}
        for backend in ("numpy", "cpu"):
            with fl.use_backend(backend):
                out, cache = forward(cell, kw, **flags)
                res[backend] = out + (backward(cell, cache, w) if training else [])
                if backend == "cpu" and training and mask_kind != "gaps":
                    assert cache.made_by == "packed"
        for a, e in zip(res["cpu"], res["numpy"]):
            assert_close(a, e, dtype)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_isa_variant(level):
    from fastlstm import _gates
    _gates.force_isa_level(level)
    try:
        for cell, dtype in itertools.product(CELLS, DTYPES):
            seed = seed_of(cell, dtype, level, "zoneout-isa")
            kw = problem(cell, dtype, 5, 4, 3, 17, seed, "prefix")
            w = [a.astype(dtype) for a in weights_of_outputs(cell, seed, 5, 4, 17, True)]
            res = {}
            for backend in ("numpy", "cpu"):
                with fl.use_backend(backend):
                    out, cache = forward(cell, kw, training=True)
                    res[backend] = out + backward(cell, cache, w)
            for a, e in zip(res["cpu"], res["numpy"]):
                assert_close(a, e, dtype)
    finally:
        _gates.force_isa_level(-1)


def test_op_errors():
    kw = problem("simple_rnn", np.float64, 3, 2, 2, 3, 0)
    with pytest.raises(ValueError, match="zoneout"):
        fl.ops.simple_rnn_forward(**dict(kw, zoneout=1.0))
    with pytest.raises(ValueError, match="zoneout_mask"):
        fl.ops.simple_rnn_forward(**dict(kw, zoneout_mask=np.ones((3, 2, 4))))
    with pytest.raises(ValueError, match="zoneout_mask"):
        fl.ops.simple_rnn_forward(**dict(kw, zoneout=None))
    with pytest.raises(ValueError, match="zoneout"):
        fl.layers.LSTM(4, proj_size=2, zoneout=0.1)
    with pytest.raises(ValueError, match="zoneout"):
        fl.layers.GRU(4, zoneout=-0.1)


# -- layers -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_layer(kind, tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 5))
    layer = getattr(fl.layers, kind)(4, zoneout=0.3, return_sequences=True, dtype="float64",
                                     seed=9)
    plain = getattr(fl.layers, kind)(4, return_sequences=True, dtype="float64")
    plain.build(x.shape)
    layer.build(x.shape)
    plain.set_weights(layer.get_weights())
    # Inference: h_t = 0.3 h_{t-1} + 0.7 h~_t, on the cpu backend as on the oracle.
    y = layer(x)
    with fl.use_backend("numpy"):
        assert_close(y, layer(x), np.float64)
    assert not np.allclose(y, plain(x))
    # The streaming step runs the same inference.
    states, steps = layer.get_initial_state(3), []
    for t in range(6):
        yt, states = layer.step(x[:, t], states)
        steps.append(yt)
    assert_close(np.stack(steps, 1), y, np.float64)
    # Training: masks from the layer's seed (two layers of one seed draw the same), and
    # the gradients those masks give on the oracle.
    twin = getattr(fl.layers, kind).from_config(layer.get_config())
    twin.build(x.shape)
    twin.set_weights(layer.get_weights())
    assert twin.zoneout == 0.3
    outs, back = layer.forward_train(x)
    with fl.use_backend("numpy"):
        outs_ref, back_ref = twin.forward_train(x)
    assert_close(outs, outs_ref, np.float64)
    d = rng.standard_normal(outs.shape)
    g, g_ref = back(d), back_ref(d)
    assert_close(g.inputs, g_ref.inputs, np.float64)
    for a, e in zip(g.weights, g_ref.weights):
        assert_close(a, e, np.float64)
    # Saved and loaded with its zoneout.
    model = fl.Sequential([getattr(fl.layers, kind)(4, zoneout=0.3, dtype="float64")])
    model.build((None, 6, 5))
    path = str(tmp_path / "m.fl")
    model.save(path)
    loaded = fl.load_model(path)
    assert loaded.layers[0].zoneout == 0.3
    assert_close(loaded.predict(x), model.predict(x), np.float64)


def test_layer_with_sequence_lengths_and_bidirectional():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 7, 3))
    lengths = np.array([7, 2, 0, 5])
    bi = fl.layers.Bidirectional(fl.layers.GRU(5, zoneout=0.2, return_sequences=True,
                                               dtype="float64", seed=2))
    y = bi(x, sequence_lengths=lengths)
    with fl.use_backend("numpy"):
        ref = bi(x, mask=np.arange(7)[None, :] < lengths[:, None])
    assert_close(y, ref, np.float64)
    outs, back = bi.forward_train(x, sequence_lengths=lengths)
    g = back(np.ones_like(outs))
    assert not g.inputs[2].any() and not g.inputs[1, 2:].any()


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_converters_refuse_zoneout(kind):
    """Zoneout changes inference too (h_t = (1-p) h~_t + p h_{t-1}): a converter that dropped
    it would give other outputs, so each refuses it by name."""
    import importlib.util
    from fastlstm.convert import ConversionError, to_keras, to_onnx, to_torch
    layer = getattr(fl.layers, kind)(5, zoneout=0.25, name="zoned")
    layer.build((None, 6, 4))
    bi = fl.layers.Bidirectional(getattr(fl.layers, kind)(5, zoneout=0.25, name="zoned_dir"))
    bi.build((None, 6, 4))
    for convert, module in ((to_keras, "keras"), (to_torch, "torch"), (to_onnx, "onnx")):
        if importlib.util.find_spec(module) is None:    # that framework is not installed
            continue
        for obj in (layer, bi):
            with pytest.raises(ConversionError, match=r"zoned.*zoneout=0.25.*no zoneout"):
                convert(obj)
