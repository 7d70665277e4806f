"""Keras 3's ``reset_state()`` beside ``reset_states()``, and Keras 2's ``input_shape=`` on
a model's first layer."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm.layers import GRU, LSTM, RNN, Bidirectional, Dense, Embedding, LSTMCell


def _x(B=2, T=4, F=3, seed=0):
    return np.random.default_rng(seed).standard_normal((B, T, F)).astype(np.float32)


@pytest.mark.parametrize("make", [lambda: LSTM(3, stateful=True),
                                  lambda: GRU(3, stateful=True),
                                  lambda: Bidirectional(LSTM(3, stateful=True)),
                                  lambda: RNN(LSTMCell(3), stateful=True)],
                         ids=["LSTM", "GRU", "Bidirectional", "RNN"])
def test_reset_state_zeroes_carried_states(make):
    layer = make()
    x = _x()
    first = layer(x)
    assert not np.allclose(layer(x), first)        # the states carried
    layer.reset_state()
    np.testing.assert_allclose(layer(x), first, rtol=1e-6)
    assert all(np.all(s == 0) for s in (layer.reset_state() or layer.states))


def test_reset_state_rows_and_non_stateful():
    layer = LSTM(3, stateful=True)
    layer(_x())
    layer.reset_state([1])
    assert np.all(layer.states[0][1] == 0) and np.any(layer.states[0][0] != 0)
    with pytest.raises(ValueError, match="stateful=True"):
        LSTM(3).reset_state()
    with pytest.raises(AttributeError, match="no states"):
        Dense(2).reset_state()


def test_model_reset_state():
    model = fl.Sequential([LSTM(3, stateful=True), Dense(1)])
    x = _x()
    first = model.predict(x, batch_size=2)
    assert not np.allclose(model.predict(x, batch_size=2), first)
    model.reset_state()
    np.testing.assert_allclose(model.predict(x, batch_size=2), first, rtol=1e-6)


def test_input_shape_builds_the_model(tmp_path):
    model = fl.Sequential([LSTM(4, input_shape=(5, 3), return_sequences=True), Dense(1)])
    assert model.built and model.input_shape == (None, 5, 3)
    assert model.output_shape == (None, 5, 1)
    assert model.count_params() == 4 * 4 * (3 + 4 + 1) + 5
    model.summary(print_fn=lambda line: None)           # no data needed
    model.save(tmp_path / "m.npz")                       # nor for saving
    loaded = fl.load_model(tmp_path / "m.npz")
    assert loaded.input_shape == (None, 5, 3)
    np.testing.assert_array_equal(loaded.predict(_x(T=5)), model.predict(_x(T=5)))
    again = fl.Sequential.from_config(model.get_config())
    assert again.built and again.input_shape == (None, 5, 3)
    # add() builds too, and later layers join the build
    grown = fl.Sequential()
    grown.add(GRU(2, input_shape=(None, 3)))
    assert grown.built and grown.input_shape == (None, None, 3)
    grown.add(Dense(1))
    assert grown.built and grown.output_shape == (None, 1)


def test_input_shape_forms_and_errors():
    assert fl.Sequential([Embedding(10, 4, input_shape=(7,)), LSTM(2)]).input_shape == (None, 7)
    assert fl.Sequential([Dense(2, input_dim=6)]).input_shape == (None, 6)
    bi = fl.Sequential([Bidirectional(LSTM(2), input_shape=(4, 3))])
    assert bi.built and bi.output_shape == (None, 4)
    inner = fl.Sequential([Bidirectional(LSTM(2, input_shape=(4, 3)))])  # on the wrapped layer
    assert inner.input_shape == (None, 4, 3)
    # only the first layer's counts, as in Keras
    assert not fl.Sequential([LSTM(2), Dense(1, input_shape=(9,))]).built
    with pytest.raises(TypeError, match="input_shape"):
        LSTM(2, input_shape=5)
    with pytest.raises(ValueError, match=r"input_shape.*\(5, -1\)"):
        LSTM(2, input_shape=(5, -1))
    with pytest.raises(ValueError, match="input_dim"):
        Dense(2, input_shape=(3,), input_dim=3)
    with pytest.raises(ValueError, match=r"input_shape.*expects \(batch, timesteps, features\)"):
        fl.Sequential([LSTM(2, input_shape=(3,))])
