"""Recurrent layers (every one of LSTM, GRU, SimpleRNN that exists): variational dropout,
stateful and streaming use, configuration round-trips, and clear errors for bad input."""
import json
import re

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import layers
from fastlstm.regularizers import L1L2

from conftest import assert_close, central_difference

RNN_CLASSES = [getattr(layers, n) for n in ("LSTM", "GRU", "SimpleRNN") if hasattr(layers, n)]
rnn_classes = pytest.mark.parametrize("cls", RNN_CLASSES, ids=lambda c: c.__name__)


def make(cls, units, x_shape, weight_seed=0, dtype="float32", **kw):
    """A built layer with random (not initializer-shaped) weights, so every path matters."""
    layer = cls(units, dtype=dtype, **kw)
    layer.build(x_shape)
    rng = np.random.default_rng(weight_seed)
    layer.set_weights([rng.standard_normal(w.shape) * 0.4 for w in layer.get_weights()])
    return layer


def twin(layer, **changes):
    """A layer of the same class and weights, with config changes."""
    cfg = layer.get_config()
    cfg.update(changes)
    cfg.pop("name")
    other = type(layer).from_config(cfg)
    other.build(layer.input_shape)
    other.set_weights(layer.get_weights())
    return other


def data(shape, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------ dropout
@rnn_classes
def test_input_dropout_is_one_mask_per_sequence_with_the_keep_rate(cls):
    B, T, I, H, p = 64, 5, 40, 3, 0.25
    x = data((B, T, I))
    layer = make(cls, H, x.shape, dropout=p, seed=3, return_sequences=True)
    y, backprop = layer.forward_train(x)
    dx = backprop(data(y.shape, seed=2)).inputs
    dropped = dx == 0
    # the same features are dropped at every timestep of a row (variational dropout)
    for t in range(1, T):
        np.testing.assert_array_equal(dropped[:, t], dropped[:, 0])
    assert abs(dropped[:, 0].mean() - p) < 0.04          # 2560 draws: sd ~ 0.009
    # and the kept inputs are scaled by 1/(1-p): the output is a dropout-free twin's on x*mask
    keep = (~dropped[:, 0]).astype(np.float32) / (1 - p)
    plain = twin(layer, dropout=0.0)
    assert_close(y, plain(x * keep[:, None, :]), np.float32)


@rnn_classes
def test_recurrent_dropout_is_one_mask_per_sequence(cls):
    # With one row, (h*r) @ U = h @ (diag(r) U): recurrent dropout with a per-sequence mask r
    # equals a dropout-free twin whose recurrent kernel rows are scaled by r at every step.
    B, T, I, H, q = 3, 6, 4, 8, 0.4
    x = data((B, T, I))
    layer = make(cls, H, x.shape, recurrent_dropout=q, return_sequences=True)
    layer._rng = np.random.default_rng(11)
    y, _ = layer.forward_train(x)
    r = (np.random.default_rng(11).random((B, H)) >= q) / (1 - q)   # the layer's only draw
    assert 0 < (r == 0).sum() < r.size
    for b in range(B):
        ref = twin(layer, recurrent_dropout=0.0)
        ws = ref.get_weights()
        ws[1] = ws[1] * r[b][:, None]
        ref.set_weights(ws)
        assert_close(y[b:b + 1], ref(x[b:b + 1]), np.float32, name=f"row {b}")


@pytest.mark.parametrize("cls", [c for c in RNN_CLASSES if c.__name__ != "GRU"],
                         ids=lambda c: c.__name__)
def test_recurrent_dropout_keep_rate(cls):
    # h0 enters LSTM and SimpleRNN only through (h0 * r) @ U, so dL/dh0 is 0 exactly where r is
    B, T, I, H, q = 50, 3, 2, 40, 0.3
    x = data((B, T, I))
    layer = make(cls, H, x.shape, recurrent_dropout=q, seed=4)
    state = [data((B, H), seed=5 + k) for k in range(len(layer.state_names))]
    y, backprop = layer.forward_train(x, initial_state=state)
    dh0 = backprop(data(y.shape, seed=9)).initial_state[0]
    assert abs((dh0 == 0).mean() - q) < 0.04


@rnn_classes
def test_dropout_gradients_by_finite_differences_with_fixed_masks(cls):
    B, T, I, H = 2, 4, 3, 3
    x = data((B, T, I), dtype=np.float64)
    layer = make(cls, H, x.shape, dtype="float64", dropout=0.3, recurrent_dropout=0.4,
                 return_sequences=True, return_state=True)
    state = [data((B, H), seed=20 + k, dtype=np.float64) for k in range(len(layer.state_names))]
    rng = np.random.default_rng(6)
    d_out = [rng.standard_normal(s) for s in [(B, T, H)] + [(B, H)] * len(state)]

    def loss():
        layer._rng = np.random.default_rng(123)          # the same masks on every forward
        outs, _ = layer.forward_train(x, initial_state=state)
        return sum(float(np.sum(o * d)) for o, d in zip(outs, d_out))

    layer._rng = np.random.default_rng(123)
    _, backprop = layer.forward_train(x, initial_state=state)
    g = backprop(d_out)
    targets = [("x", x, g.inputs)] + [(f"state{k}", s, gs) for k, (s, gs)
                                      in enumerate(zip(state, g.initial_state))]
    targets += [(n, w, gw) for n, w, gw in zip(layer.weight_names, layer.weights, g.weights)]
    for name, arr, grad in targets:
        gflat = np.asarray(grad).reshape(-1)
        for i in rng.choice(arr.size, size=min(6, arr.size), replace=False):
            np.testing.assert_allclose(gflat[i], central_difference(loss, arr, i), rtol=1e-6,
                                       atol=1e-8, err_msg=f"{name}[{i}]")


@rnn_classes
def test_dropout_has_no_effect_at_inference_and_works_when_training(cls):
    x = data((4, 5, 3))
    layer = make(cls, 6, x.shape, dropout=0.5, recurrent_dropout=0.5, seed=2)
    plain = twin(layer, dropout=0.0, recurrent_dropout=0.0)
    np.testing.assert_array_equal(layer(x), plain(x))
    np.testing.assert_array_equal(layer(x, training=False), plain(x))
    layer._rng = np.random.default_rng(8)
    y_train = layer(x, training=True)
    assert np.abs(y_train - plain(x)).max() > 1e-2
    layer._rng = np.random.default_rng(8)
    y_ft, _ = layer.forward_train(x)
    assert_close(y_train, y_ft, np.float32)


@rnn_classes
def test_same_seed_same_dropout(cls):
    x = data((4, 5, 3))
    a = make(cls, 6, x.shape, dropout=0.3, recurrent_dropout=0.3, seed=2)
    b = twin(a)                                   # same config: seed=2
    c = twin(a, seed=3)
    for _ in range(2):                            # and the same sequence of draws after
        ya, _ = a.forward_train(x)
        yb, _ = b.forward_train(x)
        yc, _ = c.forward_train(x)
        np.testing.assert_array_equal(ya, yb)
        assert np.abs(ya - yc).max() > 1e-3


# ------------------------------------------------------------------------------ stateful
@rnn_classes
@pytest.mark.parametrize("train", [False, True], ids=["call", "forward_train"])
def test_stateful_carry_over_equals_one_long_call(cls, train):
    x = data((3, 9, 4))
    layer = make(cls, 5, x.shape, stateful=True, return_sequences=True)
    full = twin(layer, stateful=False, return_state=True)
    y_full, *states_full = full(x)
    parts = []
    for chunk in (x[:, :4], x[:, 4:5], x[:, 5:]):
        parts.append(layer.forward_train(chunk)[0] if train else layer(chunk))
    assert_close(np.concatenate(parts, axis=1), y_full, np.float32)
    for s, ref in zip(layer.states, states_full):
        assert_close(s, ref, np.float32)


@rnn_classes
def test_reset_states_all_rows_and_chosen_rows(cls):
    x = data((3, 8, 4))
    layer = make(cls, 5, x.shape, stateful=True, return_sequences=True)
    fresh = twin(layer, stateful=False)
    first, second = x[:, :4], x[:, 4:]
    y_long = fresh(x)[:, 4:]
    y_short = fresh(second)

    layer(first)
    layer.reset_states([1])                       # row 1's stream ended: it starts over
    y = layer(second)
    assert_close(y[[0, 2]], y_long[[0, 2]], np.float32)
    assert_close(y[1], y_short[1], np.float32)

    layer.reset_states()
    for s in layer.states:
        np.testing.assert_array_equal(s, 0)
    layer(first)
    layer.reset_states(np.array([True, False, True]))    # a boolean mask over the batch
    y = layer(second)
    assert_close(y[1], y_long[1], np.float32)
    assert_close(y[[0, 2]], y_short[[0, 2]], np.float32)


@rnn_classes
def test_stateful_errors(cls):
    x = data((3, 4, 2))
    layer = make(cls, 4, x.shape, stateful=True)
    layer(x)
    with pytest.raises(ValueError, match=r"batch of 3.*batch of 2"):
        layer(x[:2])
    layer.reset_states()
    with pytest.raises(ValueError, match=r"batch of 3.*batch of 5"):
        layer(np.concatenate([x, x[:2]]))
    for rows in ([3], [0, -4], 7):
        with pytest.raises(ValueError, match=r"rows.*\[0, 3\)"):
            layer.reset_states(rows)
    with pytest.raises(ValueError, match=r"rows.*shape \(3,\)"):
        layer.reset_states(np.array([True, False]))
    with pytest.raises(TypeError, match=r"rows.*float"):
        layer.reset_states(np.array([0.5]))
    layer.states = None                           # the documented way to change batch size
    assert layer(x[:2]).shape == (2, 4)
    with pytest.raises(ValueError, match="stateful=True"):
        make(cls, 4, x.shape).reset_states()


# ------------------------------------------------------------------------------ streaming
@rnn_classes
@pytest.mark.parametrize("with_state", [False, True])
def test_step_equals_the_sequence_call(cls, with_state):
    B, T, I, H = 3, 6, 4, 5
    x = data((B, T, I))
    layer = make(cls, H, x.shape, return_sequences=True, return_state=True)
    state = layer.get_initial_state(B)
    assert [s.shape for s in state] == [(B, H)] * len(layer.state_names)
    assert all(not s.any() and s.dtype == np.float32 for s in state)
    if with_state:
        state = [data((B, H), seed=30 + k) for k in range(len(state))]
    y_seq, *final = layer(x, initial_state=state if with_state else None)
    for t in range(T):
        y_t, state = layer.step(x[:, t], state)
        assert_close(y_t, y_seq[:, t], np.float32, name=f"t={t}")
    for s, ref in zip(state, final):
        assert_close(s, ref, np.float32)


@rnn_classes
def test_step_leaves_stateful_states_alone_and_checks_input(cls):
    x = data((2, 3, 4))
    layer = make(cls, 3, x.shape, stateful=True)
    layer(x)
    before = [s.copy() for s in layer.states]
    layer.step(x[:, 0], layer.get_initial_state(2))
    for s, b in zip(layer.states, before):
        np.testing.assert_array_equal(s, b)
    with pytest.raises(ValueError, match=r"x_t.*4 features, got 5"):
        layer.step(np.zeros((2, 5), np.float32), layer.get_initial_state(2))
    with pytest.raises(ValueError, match=r"x_t.*2-D"):
        layer.step(x, layer.get_initial_state(2))
    with pytest.raises(ValueError, match=r"states\[h\].*\(2, 3\)"):
        layer.step(x[:, 0], layer.get_initial_state(3))


# ------------------------------------------------------------------------------ config
@rnn_classes
def test_config_round_trips_through_json(cls):
    kw = dict(activation="softsign", use_bias=False, kernel_initializer="he_normal",
              recurrent_initializer=fl.initializers.Orthogonal(gain=0.5, seed=3),
              kernel_regularizer="l2", recurrent_regularizer=L1L2(0.1, 0.2),
              activity_regularizer="l1", dropout=0.2, recurrent_dropout=0.1, seed=7,
              return_sequences=True, return_state=True, go_backwards=True, stateful=True,
              dtype="float64", name="rnn_a", unroll=True)
    if cls.__name__ != "SimpleRNN":
        kw["recurrent_activation"] = fl.activations.HardSigmoid(0.2, 0.5)
    layer = cls(4, **kw)
    cfg = layer.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    for key in ("units", "dropout", "recurrent_dropout", "seed", "return_sequences",
                "return_state", "go_backwards", "stateful", "unroll", "use_bias", "name"):
        assert cfg[key] == (4 if key == "units" else kw[key]), key
    assert cfg["dtype"] == "float64" and cfg["activation"] == "softsign"
    assert cfg["kernel_regularizer"] == {"class_name": "L2", "config": {"l2": 0.01}}
    again = cls.from_config(json.loads(json.dumps(cfg)))
    assert type(again) is cls and again.get_config() == cfg
    via = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
    assert type(via) is cls and via.get_config() == cfg
    # the same config and weights give the same function
    x = data((2, 5, 3), dtype=np.float64)
    a = cls(4, **{k: v for k, v in kw.items() if k not in ("stateful", "name")})
    a.build(x.shape)
    b = cls.from_config(a.get_config())
    b.build(x.shape)
    b.set_weights(a.get_weights())
    for u, v in zip(a(x), b(x)):
        assert_close(u, v, np.float64)


@rnn_classes
def test_default_config_matches_keras_names(cls):
    cfg = cls(3).get_config()
    expected = {"units": 3, "activation": "tanh", "use_bias": True, "dropout": 0.0,
                "recurrent_dropout": 0.0, "seed": None, "return_sequences": False,
                "return_state": False, "go_backwards": False, "stateful": False,
                "unroll": False, "dtype": "float32", "trainable": True,
                "kernel_initializer": {"class_name": "GlorotUniform",
                                       "config": {"seed": None, "input_axes": None,
                                                  "output_axes": None}},
                "bias_initializer": {"class_name": "Zeros", "config": {}},
                "kernel_regularizer": None, "activity_regularizer": None}
    for k, v in expected.items():
        assert cfg[k] == v, k
    assert cfg["recurrent_initializer"]["class_name"] == "Orthogonal"
    # Keras's automatic names: lstm, gru, simple_rnn (then lstm_1, ...)
    snake = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}[cls.__name__]
    assert re.fullmatch(snake + r"(_\d+)?", cfg["name"]), cfg["name"]


# ------------------------------------------------------------------------------ regularization
@rnn_classes
def test_activity_regularizer_is_divided_by_the_batch_size_as_keras(cls):
    x = data((4, 3, 2), dtype=np.float64)
    layer = make(cls, 3, x.shape, dtype="float64", activity_regularizer=L1L2(0.0, 0.5))
    plain = twin(layer, activity_regularizer=None)
    y, backprop = layer.forward_train(x)
    assert layer.last_activity_loss == pytest.approx(0.5 * np.sum(y ** 2) / 4, rel=1e-12)
    dy = data(y.shape, seed=3, dtype=np.float64)
    g = backprop(dy)
    g_ref = plain.forward_train(x)[1](dy + 2 * 0.5 * y / 4)
    for a, b in zip(g.weights + [g.inputs], g_ref.weights + [g_ref.inputs]):
        assert_close(a, b, np.float64)


@rnn_classes
def test_weight_regularization_hooks(cls):
    layer = make(cls, 3, (2, 3, 2), dtype="float64", kernel_regularizer=L1L2(0.1, 0.0),
                 recurrent_regularizer=L1L2(0.0, 0.2))
    k, r = layer.get_weights()[:2]
    expected = 0.1 * np.abs(k).sum() + 0.2 * (r ** 2).sum()
    assert layer.regularization_loss() == pytest.approx(expected)
    grads = layer.regularization_grads()
    assert len(grads) == len(layer.get_weights())
    assert_close(grads[0], 0.1 * np.sign(k), np.float64)
    assert_close(grads[1], 0.4 * r, np.float64)
    assert all(gr is None for gr in grads[2:])


# ------------------------------------------------------------------------------ bad input
@rnn_classes
@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(dropout=1.0), ValueError, ["dropout", "[0, 1)", "1.0"]),
    (dict(dropout=-0.1), ValueError, ["dropout", "-0.1"]),
    (dict(recurrent_dropout=1.5), ValueError, ["recurrent_dropout", "1.5"]),
    (dict(dropout="0.5"), ValueError, ["dropout", "'0.5'"]),
    (dict(kernel_initializer="glorot_uniformm"), ValueError, ["kernel_initializer",
                                                              "glorot_uniformm"]),
    (dict(recurrent_initializer="nope"), ValueError, ["recurrent_initializer", "nope"]),
    (dict(bias_regularizer="l3"), ValueError, ["bias_regularizer", "l3"]),
    (dict(activity_regularizer="L5"), ValueError, ["activity_regularizer", "L5"]),
    (dict(seed=-1), ValueError, ["seed", "-1"]),
    (dict(seed=1.5), TypeError, ["seed", "1.5"]),
    (dict(activation="swish"), ValueError, ["activation", "swish"]),
    (dict(stateful="yes"), TypeError, ["stateful", "yes"]),
])
def test_bad_constructor_arguments(cls, kwargs, exc, words):
    with pytest.raises(exc) as info:
        cls(3, **kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
