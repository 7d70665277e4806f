"""fl.layers.Bidirectional: construction as Keras, each merge mode against the two layers run
by hand, masks, states, training gradients by finite differences, configuration."""
import json

import numpy as np
import pytest

from fastlstm import layers
from fastlstm.layers import Bidirectional, LSTM

from conftest import assert_close, central_difference

RNN_CLASSES = [getattr(layers, n) for n in ("LSTM", "GRU", "SimpleRNN") if hasattr(layers, n)]
rnn_classes = pytest.mark.parametrize("cls", RNN_CLASSES, ids=lambda c: c.__name__)
MERGE_MODES = ["concat", "sum", "mul", "ave", None]


def randomize(layer, x_shape, seed=0):
    layer.build(x_shape)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(w.shape) * 0.4 for w in layer.get_weights()])
    return layer


def copy_of(layer, **changes):
    cfg = dict(layer.get_config(), **changes)
    cfg.pop("name")
    other = type(layer).from_config(cfg)
    other.build(layer.input_shape)
    return other


def manual(bi, x, mask=None, initial_state=None):
    """What Keras computes, from two standalone layers with the wrapper's weights."""
    f = copy_of(bi.forward_layer, return_state=True)
    b = copy_of(bi.backward_layer, return_state=True)
    f.set_weights(bi.forward_layer.get_weights())
    b.set_weights(bi.backward_layer.get_weights())
    n = len(f.state_names)
    fs = None if initial_state is None else initial_state[:n]
    bs = None if initial_state is None else initial_state[n:]
    y, *sf = f(x, mask=mask, initial_state=fs)
    yb, *sb = b(x, mask=mask, initial_state=bs)
    if bi.return_sequences:
        if mask is not None:                      # masked steps are zeros (in step order)
            y = y * mask[:, :, None]
            yb = yb * mask[:, ::-1, None]         # the backward layer's steps run reversed
        yb = yb[:, ::-1]
    merged = {"concat": lambda: np.concatenate([y, yb], -1), "sum": lambda: y + yb,
              "mul": lambda: y * yb, "ave": lambda: (y + yb) / 2,
              None: lambda: [y, yb]}[bi.merge_mode]()
    head = merged if bi.merge_mode is None else [merged]
    if bi.return_state:
        return head + sf + sb
    return head if bi.merge_mode is None else merged


def data(shape, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_construction_as_keras():
    inner = LSTM(3, name="enc", return_sequences=True, seed=4, dropout=0.1)
    bi = Bidirectional(inner)
    f, b = bi.forward_layer, bi.backward_layer
    assert (f.name, b.name) == ("forward_enc", "backward_enc")
    assert f is not inner and (f.go_backwards, b.go_backwards) == (False, True)
    # as Keras: both copies zero masked outputs when they return sequences
    assert f.get_config() == dict(inner.get_config(), name="forward_enc",
                                  zero_output_for_mask=True)
    assert b.get_config() == dict(inner.get_config(), name="backward_enc", go_backwards=True,
                                  zero_output_for_mask=True)
    assert bi.return_sequences and not bi.return_state and not bi.stateful
    assert not bi.built and bi.input_shape is None
    bi(np.zeros((2, 4, 5), np.float32))
    assert bi.built and bi.input_shape == (2, 4, 5)     # recorded for model saving
    assert [w.shape for w in bi.get_weights()] == [(5, 12), (3, 12), (12,)] * 2
    assert bi.count_params() == 2 * (5 * 12 + 3 * 12 + 12)
    # weights: forward then backward
    ws = [np.full(w.shape, k, np.float32) for k, w in enumerate(bi.get_weights())]
    bi.set_weights(ws)
    np.testing.assert_array_equal(f.recurrent_kernel, 1)
    np.testing.assert_array_equal(b.kernel, 3)
    with pytest.raises(ValueError, match=r"weights:.*6 arrays.*got 5"):
        bi.set_weights(ws[:5])
    # a layer that already runs backwards: its copy runs forwards (flipped)
    rev = Bidirectional(LSTM(2, go_backwards=True))
    assert (rev.forward_layer.go_backwards, rev.backward_layer.go_backwards) == (True, False)


@rnn_classes
@pytest.mark.parametrize("merge_mode", MERGE_MODES)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_merge_modes_match_the_two_layers(cls, merge_mode, return_sequences):
    B, T, I, H = 3, 5, 4, 3
    x = data((B, T, I))
    mask = np.ones((B, T), bool)
    mask[0, 3:] = False
    mask[1, :2] = False
    mask[2, 2] = False
    bi = randomize(Bidirectional(cls(H, return_sequences=return_sequences, return_state=True),
                                 merge_mode=merge_mode), x.shape)
    n = len(bi.forward_layer.state_names)
    state = [data((B, H), seed=10 + k) for k in range(2 * n)]
    for m, s in [(None, None), (mask, None), (mask, state)]:
        got = bi(x, mask=m, initial_state=s)
        want = manual(bi, x, m, s)
        assert len(got) == len(want) == (2 if merge_mode is None else 1) + 2 * n
        for k, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, np.float32, name=f"output {k}")
    out_shape = bi.compute_output_shape((B, T, I))
    assert [tuple(o.shape) for o in got] == [tuple(s) for s in out_shape]


def test_without_return_state_and_masks_out():
    x = data((2, 4, 3))
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    bi = randomize(Bidirectional(LSTM(2, return_sequences=True), merge_mode="sum"), x.shape)
    y = bi(x, mask=mask)
    assert isinstance(y, np.ndarray) and y.shape == (2, 4, 2)
    np.testing.assert_array_equal(y[0, 3], 0)
    assert_close(y, manual(bi, x, mask), np.float32)
    assert bi.compute_output_shape((2, 4, 3)) == (2, 4, 2)
    assert bi.compute_mask(x, mask) is not None and (bi.compute_mask(x, mask) == mask).all()
    assert Bidirectional(LSTM(2)).compute_mask(x, mask) is None
    both = Bidirectional(LSTM(2, return_sequences=True), merge_mode=None)
    assert len(both.compute_mask(x, mask)) == 2
    assert both.compute_output_shape((2, 4, 3)) == [(2, 4, 2), (2, 4, 2)]


@rnn_classes
@pytest.mark.parametrize("merge_mode, return_sequences, with_state", [
    ("concat", True, True), ("sum", True, False), ("mul", True, True), ("ave", False, True),
    (None, True, True), ("mul", False, False)])
def test_gradients_by_finite_differences(cls, merge_mode, return_sequences, with_state):
    B, T, I, H = 2, 4, 3, 2
    x = data((B, T, I), dtype=np.float64)
    mask = np.array([[1, 1, 0, 1], [1, 1, 1, 0]], bool)
    bi = randomize(Bidirectional(cls(H, dtype="float64", return_sequences=return_sequences,
                                     return_state=with_state), merge_mode=merge_mode), x.shape)
    n = len(bi.forward_layer.state_names)
    state = [data((B, H), seed=20 + k, dtype=np.float64) for k in range(2 * n)]
    init = state if with_state else None
    outs, backprop = bi.forward_train(x, mask=mask, initial_state=init)
    outs_list = outs if isinstance(outs, list) else [outs]
    rng = np.random.default_rng(5)
    d_out = [rng.standard_normal(np.shape(o)) for o in outs_list]
    if with_state:
        d_out[-1] = None                          # None entries are zero gradients

    def loss():
        o, _ = bi.forward_train(x, mask=mask, initial_state=init)
        o = o if isinstance(o, list) else [o]
        return sum(float(np.sum(a * d)) for a, d in zip(o, d_out) if d is not None)

    g = backprop(d_out if isinstance(outs, list) else d_out[0])
    targets = [("x", x, g.inputs)]
    targets += [(f"w{k}", w, gw) for k, (w, gw) in enumerate(zip(bi.weights, g.weights))]
    if with_state:
        assert len(g.initial_state) == 2 * n
        targets += [(f"s{k}", s, gs) for k, (s, gs) in enumerate(zip(state, g.initial_state))]
    else:
        assert g.initial_state is None
    for name, arr, grad in targets:
        gflat = np.asarray(grad).reshape(-1)
        for i in rng.choice(arr.size, size=min(5, arr.size), replace=False):
            np.testing.assert_allclose(gflat[i], central_difference(loss, arr, i), rtol=1e-6,
                                       atol=1e-8, err_msg=f"{name}[{i}]")


def test_config_round_trip_and_custom_backward_layer():
    fwd = LSTM(3, return_sequences=True, name="f")
    bwd = LSTM(3, return_sequences=True, go_backwards=True, activation="relu", name="b")
    bi = Bidirectional(fwd, merge_mode="ave", backward_layer=bwd, name="bi")
    assert bi.backward_layer is bwd
    cfg = bi.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["merge_mode"] == "ave" and cfg["name"] == "bi"
    assert cfg["layer"]["class_name"] == "LSTM" and cfg["layer"]["config"]["name"] == "forward_f"
    assert cfg["backward_layer"]["config"]["activation"] == "relu"
    again = layers.deserialize(json.loads(json.dumps(layers.serialize(bi))))
    assert isinstance(again, Bidirectional) and again.get_config() == cfg
    assert again.forward_layer.name == "forward_f"        # not forward_forward_f
    x = data((2, 4, 3))
    bi(x)
    again(x)
    again.set_weights(bi.get_weights())
    assert_close(again(x), bi(x), np.float32)


def test_stateful_bidirectional():
    x = data((2, 6, 3))
    bi = randomize(Bidirectional(LSTM(2, stateful=True)), x.shape)
    assert bi.stateful and bi.states is None
    y1 = bi(x)
    assert len(bi.states) == 4
    y2 = bi(x)
    assert np.abs(y1 - y2).max() > 1e-4           # states carried over
    bi.reset_states()
    assert_close(bi(x), y1, np.float32)
    bi.reset_states([0])
    assert [s.shape for s in bi.get_initial_state(5)] == [(5, 2)] * 4
    with pytest.raises(ValueError, match="stateful=True"):
        Bidirectional(LSTM(2)).reset_states()


def test_regularization_passes_through():
    from fastlstm.regularizers import L1L2
    x = data((2, 3, 2), dtype=np.float64)
    bi = randomize(Bidirectional(LSTM(2, dtype="float64", kernel_regularizer=L1L2(0.1, 0.0),
                                      activity_regularizer=L1L2(0.0, 1.0))), x.shape)
    f, b = bi.forward_layer, bi.backward_layer
    assert bi.regularization_loss() == pytest.approx(0.1 * (np.abs(f.kernel).sum()
                                                            + np.abs(b.kernel).sum()))
    grads = bi.regularization_grads()
    assert len(grads) == 6 and grads[1] is None
    assert_close(grads[3], 0.1 * np.sign(b.kernel), np.float64)
    y, _ = bi.forward_train(x)
    yf, yb = y[:, :2], y[:, 2:]
    assert bi.last_activity_loss == pytest.approx(((yf ** 2).sum() + (yb ** 2).sum()) / 2)


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"layer: expected a recurrent layer.*Dense"):
        Bidirectional(layers.Dense(2))
    with pytest.raises(ValueError, match=r"merge_mode.*'max'"):
        Bidirectional(LSTM(2), merge_mode="max")
    with pytest.raises(ValueError, match=r"backward_layer: expected go_backwards=True"):
        Bidirectional(LSTM(2), backward_layer=LSTM(2))
    with pytest.raises(ValueError, match=r"backward_layer: expected return_sequences=True"):
        Bidirectional(LSTM(2, return_sequences=True), backward_layer=LSTM(2, go_backwards=True))
    with pytest.raises(TypeError, match="backward_layer"):
        Bidirectional(LSTM(2), backward_layer="lstm")
    with pytest.raises(ValueError, match=r"dtype.*float32"):
        Bidirectional(LSTM(2), dtype="float64")
    bi = Bidirectional(LSTM(2, return_state=True))
    x = data((2, 3, 4))
    with pytest.raises(ValueError, match=r"initial_state: .*4 arrays.*got 2"):
        bi(x, initial_state=[np.zeros((2, 2))] * 2)
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 3\)"):
        bi(x, mask=np.ones((2, 4), bool))
    _, backprop = bi.forward_train(x)
    with pytest.raises(ValueError, match=r"d_out: expected a list of 5"):
        backprop(np.zeros((2, 4)))
    _, backprop = Bidirectional(LSTM(2)).forward_train(x)
    with pytest.raises(ValueError, match=r"d_out: expected shape \(2, 4\)"):
        backprop(np.zeros((2, 2)))
