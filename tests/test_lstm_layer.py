"""fl.layers.LSTM: construction, lazy build, weights, call semantics, training protocol,
and clear errors for bad input."""
import json

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import ops
from fastlstm.layers import LSTM

from conftest import assert_close, seed_of


def test_lazy_build_and_keras_weight_layout():
    layer = LSTM(6)
    assert not layer.built
    y = layer(np.zeros((2, 3, 5), np.float32))
    assert layer.built and y.shape == (2, 6) and y.dtype == np.float32
    k, r, b = layer.get_weights()
    assert k.shape == (5, 24) and r.shape == (6, 24) and b.shape == (24,)
    # unit_forget_bias: ones in the forget block, zeros elsewhere (zeros initializer)
    np.testing.assert_array_equal(b, np.r_[np.zeros(6), np.ones(6), np.zeros(12)])
    # orthogonal recurrent kernel, called once on (H, 4H) as Keras: orthonormal rows
    np.testing.assert_allclose(r @ r.T, np.eye(6), atol=1e-5)
    assert layer.count_params() == 5 * 24 + 6 * 24 + 24


def test_variants_weights():
    peep = LSTM(4, use_peepholes=True)
    peep.build((1, 2, 3))
    assert [w.shape for w in peep.get_weights()] == [(3, 16), (4, 16), (16,), (3, 4)]
    cifg = LSTM(4, coupled_input_forget=True, use_bias=True)
    cifg.build((1, 2, 3))
    assert [w.shape for w in cifg.get_weights()] == [(3, 12), (4, 12), (12,)]
    np.testing.assert_array_equal(cifg.bias[:4], 1)          # forget block first in [f|c|o]
    nob = LSTM(4, use_bias=False, dtype="float64")
    nob.build((1, 2, 3))
    assert [w.dtype for w in nob.get_weights()] == [np.float64, np.float64]


def test_layer_equals_ops_and_return_options():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    full = LSTM(7, return_sequences=True, return_state=True, seed=0)
    y, h, c = full(x)
    assert y.shape == (3, 5, 7) and h.shape == (3, 7) and c.shape == (3, 7)
    ref_y, ref_h, ref_c, _ = ops.lstm_forward(x.transpose(1, 0, 2), *full.get_weights())
    np.testing.assert_array_equal(y, ref_y.transpose(1, 0, 2))
    np.testing.assert_array_equal(h, ref_h)
    last = LSTM(7)
    last.build(x.shape)
    last.set_weights(full.get_weights())
    np.testing.assert_array_equal(last(x), h)
    back = LSTM(7, return_sequences=True, go_backwards=True)
    back.build(x.shape)
    back.set_weights(full.get_weights())
    yb = back(x)
    y_rev = full(x[:, ::-1])[0]
    np.testing.assert_allclose(yb, y_rev, rtol=1e-6, atol=1e-7)   # Keras: reversed order out


def test_mask_and_initial_state_through_layer():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 3))
    mask = np.array([[True, True, False, False], [False, True, True, True]])
    layer = LSTM(2, return_sequences=True, return_state=True, dtype="float64")
    h0, c0 = rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
    y, h, c = layer(x, mask=mask, initial_state=[h0, c0])
    np.testing.assert_array_equal(y[0, 2], y[0, 1])            # carried output
    np.testing.assert_array_equal(y[1, 0], 0)                   # before the first step
    np.testing.assert_array_equal(h[0], y[0, 1])


def test_forward_train_gradients_match_ops():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 2))
    layer = LSTM(3, return_sequences=True, dtype="float64", use_peepholes=True,
                 peephole_initializer="random_normal")
    h0, c0 = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    y, backprop = layer.forward_train(x, initial_state=[h0, c0])
    dy = rng.standard_normal(y.shape)
    g = backprop(dy)
    _, _, _, cache = ops.lstm_forward(x.transpose(1, 0, 2), layer.kernel, layer.recurrent_kernel,
                                      layer.bias, h0, c0, peephole=layer.peephole, training=True)
    ref = ops.lstm_backward(cache, dy.transpose(1, 0, 2))
    assert_close(g.inputs, ref.inputs.transpose(1, 0, 2), np.float64)
    for a, b in zip(g.weights, [ref.kernel, ref.recurrent_kernel, ref.bias, ref.peephole]):
        assert_close(a, b, np.float64)
    assert_close(g.initial_state[0], ref.h0, np.float64)
    assert_close(g.initial_state[1], ref.c0, np.float64)
    with pytest.raises(RuntimeError, match="already"):
        backprop(dy)


def test_backprop_with_return_state_and_none_entries():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 2)).astype(np.float32)
    layer = LSTM(4, return_state=True)
    (y, h, c), backprop = layer.forward_train(x)
    g = backprop([None, None, np.ones_like(c)])
    assert g.inputs.shape == x.shape and g.initial_state is None
    assert np.abs(g.weights[0]).sum() > 0
    with pytest.raises(ValueError, match="d_out: expected a list of 3"):
        layer.forward_train(x)[1](np.ones_like(y))


def test_inputs_in_any_layout_or_dtype_give_the_same_answer():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)
    layer = LSTM(4, return_sequences=True)
    ref = layer(x)
    big = np.zeros((6, 12, 10), np.float32)
    big[::2, ::2, ::2] = x
    for variant in (np.asfortranarray(x), big[::2, ::2, ::2], x.astype(np.float64),
                    x.tolist()):
        np.testing.assert_array_equal(layer(variant), ref)


def test_float64_layer_keeps_float64():
    x = np.random.default_rng(5).standard_normal((2, 3, 4))
    layer = LSTM(3, dtype="float64", return_state=True)
    out = layer(x.astype(np.float32))
    assert all(o.dtype == np.float64 for o in out)


def test_backend_switch_gives_same_result():
    x = np.random.default_rng(6).standard_normal((2, 5, 3))
    layer = LSTM(4, dtype="float64", return_sequences=True)
    y_cpu = layer(x)
    with fl.use_backend("numpy"):
        assert fl.current_backend() == "numpy"
        y_np = layer(x)
    assert fl.current_backend() == "cpu"
    assert_close(y_cpu, y_np, np.float64)


def test_config_is_json_and_round_trips():
    layer = LSTM(5, activation="softsign", recurrent_activation=fl.activations.HardSigmoid(0.2, 0.5),
                 use_peepholes=True, go_backwards=True, return_sequences=True, dtype="float64")
    cfg = json.loads(json.dumps(layer.get_config()))
    clone = LSTM.from_config(cfg)
    assert clone.get_config() == layer.get_config()
    assert clone.recurrent_activation == layer.recurrent_activation


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(units=0), ValueError, "units: expected a positive integer, got 0"),
    (dict(units=-3), ValueError, "units"),
    (dict(units=2.5), TypeError, "units"),
    (dict(units=4, activation="swish"), ValueError, "activation: unknown activation 'swish'"),
    (dict(units=4, recurrent_activation="nope"), ValueError, "recurrent_activation"),
    (dict(units=4, recurrent_activation={"class_name": "HardSigmoid"}), ValueError,
     "recurrent_activation: a HardSigmoid config needs 'alpha' and 'beta'"),
    (dict(units=4, recurrent_activation={"class_name": "HardSigmoid", "alpha": float("inf"),
                                         "beta": 0.5}), ValueError, "alpha must be a finite"),
    (dict(units=4, recurrent_activation={"class_name": "HardSigmoid", "alpha": 0.2,
                                         "beta": float("nan")}), ValueError, "beta must be a finite"),
    (dict(units=4, recurrent_activation={"class_name": "HardSigmoid", "alpha": "0.2",
                                         "beta": 0.5}), TypeError, "alpha must be a finite"),
    (dict(units=4, dtype="float16"), ValueError, "dtype: expected 'float32' or 'float64'"),
    (dict(units=4, dropout=1.0), ValueError, "dropout: expected a float in [0, 1)"),
    (dict(units=4, recurrent_dropout=-0.1), ValueError, "recurrent_dropout"),
    (dict(units=4, seed=-1), ValueError, "seed"),
    (dict(units=4, kernel_initializer="glorot_sideways"), ValueError, "kernel_initializer"),
    (dict(units=4, kernel_regularizer="l3"), ValueError, "kernel_regularizer"),
    (dict(units=4, return_sequences="yes"), TypeError, "return_sequences"),
])
def test_bad_constructor_arguments(kwargs, exc, words):
    with pytest.raises(exc) as info:
        LSTM(**kwargs)
    assert words in str(info.value)


def test_bad_call_arguments():
    layer = LSTM(3)
    layer(np.zeros((2, 4, 5)))
    assert layer(np.zeros((2, 4, 5)), training=None).shape == (2, 3)       # Keras' default
    assert layer(np.zeros((2, 4, 5)), training=np.True_).shape == (2, 3)
    with pytest.raises(TypeError, match="training: expected True or False, got 'yes'"):
        layer(np.zeros((2, 4, 5)), training="yes")
    cases = [
        (dict(x=np.zeros((2, 4))), ValueError, "x: lstm"),
        (dict(x=np.zeros((2, 4, 6))), ValueError, "built for 5 features, got 6"),
        (dict(x=np.zeros((2, 0, 5))), ValueError, "at least one timestep"),
        (dict(x=np.zeros((2, 4, 5)), mask=np.ones((4, 2), bool)), ValueError,
         "mask: expected shape (2, 4)"),
        (dict(x=np.zeros((2, 4, 5)), initial_state=[np.zeros((2, 3))]), ValueError,
         "initial_state: lstm"),
        (dict(x=np.zeros((2, 4, 5)), initial_state=[np.zeros((2, 3)), np.zeros((3, 3))]),
         ValueError, "initial_state[c]: expected shape (2, 3), got (3, 3)"),
        (dict(x=np.full((2, 4, 5), "s")), TypeError, "x: expected a real numeric array"),
        (dict(x=None), TypeError, "x"),
    ]
    for kwargs, exc, words in cases:
        with pytest.raises(exc) as info:
            layer(**kwargs)
        assert words.replace("lstm", layer.name) in str(info.value), str(info.value)


def test_set_weights_checks_shapes():
    layer = LSTM(3)
    with pytest.raises(ValueError, match="before the layer is built"):
        layer.set_weights([])
    layer.build((1, 2, 4))
    with pytest.raises(ValueError, match="expects 3 arrays"):
        layer.set_weights(layer.get_weights()[:2])
    bad = layer.get_weights()
    bad[1] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"recurrent_kernel of .* expects shape \(3, 12\), got \(3, 3\)"):
        layer.set_weights(bad)


def test_step_equals_sequence_call():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    layer = LSTM(5, return_sequences=True, use_peepholes=True, peephole_initializer="ones")
    ys = layer(x)
    state = layer.get_initial_state(2)
    for t in range(6):
        y_t, state = layer.step(x[:, t], state)
        np.testing.assert_allclose(y_t, ys[:, t], rtol=1e-6, atol=1e-6)


STEP_OPTIONS = {
    "plain": {},
    "peepholes": dict(use_peepholes=True, peephole_initializer="random_normal"),
    "cifg": dict(coupled_input_forget=True),
    "cifg_peepholes_no_bias": dict(coupled_input_forget=True, use_peepholes=True,
                                   peephole_initializer="random_normal", use_bias=False),
    "activations": dict(activation="softsign", recurrent_activation="hard_sigmoid",
                        bias_initializer="random_normal"),
}


@pytest.mark.parametrize("opt", list(STEP_OPTIONS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B, I, H", [(1, 5, 7), (1, 19, 33), (4, 3, 16), (3, 9, 5)])
def test_compiled_step_equals_sequence_call(opt, dtype, B, I, H):
    """The compiled step (plan bound to the weights, one-row product at B=1) walks the same
    trajectory as one call over the whole sequence, from a given state, x_t strided or not."""
    rng = np.random.default_rng(seed_of(opt, dtype, B, I, H))
    T = 5
    x = rng.standard_normal((B, T, I)).astype(dtype)
    layer = LSTM(H, return_sequences=True, return_state=True, dtype=dtype,
                 **STEP_OPTIONS[opt])
    layer.build(x.shape)
    state = [rng.standard_normal((B, H)).astype(dtype) for _ in range(2)]
    ys, h_T, c_T = layer(x, initial_state=state)
    for t in range(T):
        x_t = x[:, t] if t % 2 else np.ascontiguousarray(x[:, t])
        y_t, state = layer.step(x_t, state)
        assert y_t.dtype == dtype and y_t.shape == (B, H)
        assert_close(y_t, ys[:, t], dtype, f"t={t}")
    assert_close(state[0], h_T, dtype, "h")
    assert_close(state[1], c_T, dtype, "c")
    assert layer._step_plan is not None and layer._step_plan.batch == B


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("opt", list(STEP_OPTIONS) + ["no_bias"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_step_equals_sequence_call(opt, dtype, threads):
    """From 768 KiB of weights a batch-1 step splits the rows of [W; U] over the threads
    (8-row groups; with I=200, H=264 the first thread's rows end inside U, and with three
    threads two partial sums are added to the first); it walks the same trajectory as the
    sequence call."""
    from fastlstm.threads import get_num_threads, set_loop_threads
    rng = np.random.default_rng(seed_of(opt, dtype))
    T, I, H = 4, 200, 264
    x = rng.standard_normal((1, T, I)).astype(dtype)
    options = dict(use_bias=False) if opt == "no_bias" else STEP_OPTIONS[opt]
    layer = LSTM(H, return_sequences=True, return_state=True, dtype=dtype, **options)
    layer.build(x.shape)
    state = [rng.standard_normal((1, H)).astype(dtype) for _ in range(2)]
    ys, h_T, c_T = layer(x, initial_state=state)
    before = get_num_threads()
    set_loop_threads(threads)
    try:
        for t in range(T):
            y_t, state = layer.step(x[:, t], state)
            assert_close(y_t, ys[:, t], dtype, f"t={t}")
    finally:
        set_loop_threads(before)
    assert_close(state[0], h_T, dtype, "h")
    assert_close(state[1], c_T, dtype, "c")
