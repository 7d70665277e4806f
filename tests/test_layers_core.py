"""Dense, Embedding, Masking, Dropout: values, gradients, masks feeding a recurrent layer,
configuration round-trips, (de)serialization, and clear errors for bad input."""
import json

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import layers
from fastlstm.layers import LSTM, Dense, Dropout, Embedding, Masking
from fastlstm.regularizers import L1L2

from conftest import assert_close, central_difference

DENSE_ACTS = ["tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "softsign", "softmax", None]


def ref_activation(name, z):
    if name in (None, "linear"):
        return z
    if name == "softmax":
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return {"tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
            "hard_sigmoid": lambda v: np.clip(v / 6 + 0.5, 0, 1),
            "relu": lambda v: np.maximum(v, 0), "softsign": lambda v: v / (1 + np.abs(v))}[name](z)


numeric_grad = central_difference


# ------------------------------------------------------------------------------ Dense
@pytest.mark.parametrize("act", DENSE_ACTS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_dense_values(act, ndim, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5)[:ndim - 1] + (5,)).astype(dtype) * 2
    layer = Dense(6, activation=act, dtype=dtype.name)
    y = layer(x)
    k, b = layer.get_weights()
    assert k.shape == (5, 6) and b.shape == (6,) and y.dtype == dtype
    layer.set_weights([k, rng.standard_normal(6)])
    y = layer(x)
    assert y.shape == x.shape[:-1] + (6,) and y.dtype == dtype
    assert_close(y, ref_activation(act, x.astype(np.float64) @ k + layer.bias).astype(dtype), dtype)


@pytest.mark.parametrize("act", DENSE_ACTS + [fl.activations.HardSigmoid(0.2, 0.5)])
def test_dense_gradients_by_finite_differences(act):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5))
    layer = Dense(4, activation=act, dtype="float64", activity_regularizer=L1L2(0.0, 0.3),
                  bias_initializer="random_normal")
    dy = rng.standard_normal((3, 4, 4))

    def loss():
        y, _ = layer.forward_train(x)
        return float(np.sum(y * dy)) + layer.last_activity_loss

    _, backprop = layer.forward_train(x)
    g = backprop(dy)
    assert g.initial_state is None and len(g.weights) == 2
    for name, arr, grad in [("x", x, g.inputs), ("kernel", layer.kernel, g.weights[0]),
                            ("bias", layer.bias, g.weights[1])]:
        for i in rng.choice(arr.size, min(8, arr.size), replace=False):
            np.testing.assert_allclose(grad.reshape(-1)[i], numeric_grad(loss, arr, i),
                                       rtol=1e-6, atol=1e-8, err_msg=f"{act} {name}[{i}]")


def test_dense_without_bias_mask_shape_and_regularization():
    layer = Dense(3, use_bias=False, kernel_regularizer=L1L2(0.5, 0.0), dtype="float64")
    x = np.ones((2, 4, 7))
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    y, backprop = layer.forward_train(x, mask=mask)
    assert layer.weight_names == ["kernel"] and len(backprop(np.ones_like(y)).weights) == 1
    assert layer.compute_mask(x, mask) is mask          # the mask passes through
    assert layer.compute_output_shape((None, 4, 7)) == (None, 4, 3)
    assert layer.regularization_loss() == pytest.approx(0.5 * np.abs(layer.kernel).sum())
    assert_close(layer.regularization_grads()[0], 0.5 * np.sign(layer.kernel), np.float64)
    assert Dense(2).regularization_loss() == 0.0       # unbuilt


def test_dense_errors():
    layer = Dense(3)
    layer(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"x: dense.*5 features.*got 4"):
        layer(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"x:.*at least 2 dimensions.*\(5,\)"):
        layer(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"activation.*'swish'.*softmax"):
        Dense(3, activation="swish")
    with pytest.raises(ValueError, match="units"):
        Dense(0)
    with pytest.raises(TypeError, match="units"):
        Dense(2.5)
    with pytest.raises(ValueError, match=r"kernel_initializer.*'glorot'"):
        Dense(2, kernel_initializer="glorot")
    with pytest.raises(ValueError, match=r"bias_regularizer.*'l3'"):
        Dense(2, bias_regularizer="l3")
    with pytest.raises(ValueError, match=r"d_out: expected shape \(2, 3\)"):
        layer.forward_train(np.zeros((2, 5), np.float32))[1](np.zeros((2, 4)))


# ------------------------------------------------------------------------------ Embedding
def test_embedding_lookup_default_initializer_and_gradient():
    layer = Embedding(10, 4, dtype="float64")
    idx = np.array([[1, 2, 2, 0], [9, 1, 1, 1]])
    y, backprop = layer.forward_train(idx)
    E = layer.get_weights()[0]
    assert E.shape == (10, 4) and y.shape == (2, 4, 4)
    assert np.abs(E).max() <= 0.05 and np.abs(E).max() > 0.01     # RandomUniform(-0.05, 0.05)
    assert layer.get_config()["embeddings_initializer"] == {
        "class_name": "RandomUniform", "config": {"seed": None, "minval": -0.05, "maxval": 0.05}}
    assert_close(y, E[idx], np.float64)
    dy = np.random.default_rng(0).standard_normal(y.shape)
    g = backprop(dy)
    assert g.inputs is None and g.initial_state is None
    expected = np.zeros_like(E)
    for b in range(2):
        for t in range(4):
            expected[idx[b, t]] += dy[b, t]                        # repeated indices add up
    assert_close(g.weights[0], expected, np.float64)
    assert layer.compute_mask(idx) is None                         # mask_zero=False
    assert layer.compute_output_shape((2, 4)) == (2, 4, 4)
    fresh = Embedding(10, 4)
    fresh.build()                                                  # weights without data
    fresh.set_weights([E])
    assert_close(fresh(idx), E[idx].astype(np.float32), np.float32)
    assert_close(layer(idx.astype(np.uint8)), E[idx], np.float64)


def test_embedding_mask_zero_feeds_an_lstm():
    rng = np.random.default_rng(2)
    emb = Embedding(7, 3, mask_zero=True, embeddings_initializer="random_normal")
    idx = np.array([[3, 5, 1, 0, 0], [2, 2, 6, 4, 1]])            # row 0 padded with 0
    mask = emb.compute_mask(idx)
    np.testing.assert_array_equal(mask, idx != 0)
    lstm = LSTM(4)
    lstm.build((2, 5, 3))
    lstm.set_weights([rng.standard_normal(w.shape) * 0.5 for w in lstm.get_weights()])
    out = lstm(emb(idx), mask=mask)
    # the padded row ends where its data ends: the same as running it on its three tokens
    assert_close(out[0], lstm(emb(idx[:1, :3]))[0], np.float32)
    assert_close(out[1], lstm(emb(idx[1:]))[0], np.float32)


def test_embedding_errors():
    layer = Embedding(5, 2)
    with pytest.raises(TypeError, match=r"x: embedding.*integer.*float32"):
        layer(np.array([[1.0, 2.0]], np.float32))
    with pytest.raises(ValueError, match=r"x:.*\[0, 5\).*got 5"):
        layer(np.array([[1, 5]]))
    with pytest.raises(ValueError, match=r"x:.*\[0, 5\).*got -1"):
        layer(np.array([[-1, 2]]))
    with pytest.raises(TypeError, match=r"x:.*bool"):
        layer(np.array([[True, False]]))
    with pytest.raises(ValueError, match="input_dim"):
        Embedding(0, 2)
    with pytest.raises(TypeError, match="mask_zero"):
        Embedding(3, 2, mask_zero=1)


# ------------------------------------------------------------------------------ Masking
def test_masking_values_mask_gradient_and_lstm():
    x = np.random.default_rng(3).standard_normal((2, 5, 3)).astype(np.float32)
    x[0, 2] = -1.0                                   # a masked step in the middle
    x[1, 3:] = -1.0
    x[1, 0, 0] = -1.0                                # one feature equal to mask_value: kept
    layer = Masking(mask_value=-1.0)
    mask = layer.compute_mask(x)
    np.testing.assert_array_equal(mask, [[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]])
    y, backprop = layer.forward_train(x)
    assert_close(y, np.where(mask[..., None], x, 0), np.float32)
    np.testing.assert_array_equal(layer(x), y)
    dy = np.ones_like(y)
    np.testing.assert_array_equal(backprop(dy).inputs, np.broadcast_to(mask[..., None], y.shape))
    lstm = LSTM(3, seed=0)
    out = lstm(layer(x), mask=mask)
    # a masked step is skipped: the same as the sequence without it
    assert_close(out[0], lstm(np.delete(x[:1], 2, axis=1))[0], np.float32)
    assert_close(out[1], lstm(x[1:, :3])[0], np.float32)
    assert Masking(0.5).get_config()["mask_value"] == 0.5
    assert layer.regularization_loss() == 0.0 and layer.regularization_grads() == []
    assert layer.compute_output_shape((2, 5, 3)) == (2, 5, 3) and layer.input_shape == x.shape
    with pytest.raises(TypeError, match="mask_value"):
        Masking("0")


# ------------------------------------------------------------------------------ Dropout
def test_dropout_inference_training_and_gradient():
    x = np.ones((200, 50), np.float32)
    layer = Dropout(0.3, seed=4)
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer(x, training=False), x)
    y, backprop = layer.forward_train(x)
    assert set(np.unique(y).tolist()) == {0.0, np.float32(1 / 0.7)}
    assert abs((y == 0).mean() - 0.3) < 0.02
    dy = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(backprop(dy).inputs, dy * y)     # x is ones: y is the mask
    y2 = layer(x, training=True)
    assert (y2 != y).any()                                           # a new draw per call
    same_a, same_b = Dropout(0.3, seed=9), Dropout(0.3, seed=9)
    np.testing.assert_array_equal(same_a.forward_train(x)[0], same_b.forward_train(x)[0])
    assert_close(Dropout(0.0).forward_train(x)[0], x, np.float32)


def test_dropout_noise_shape_shares_the_draw():
    x = np.ones((8, 6, 5), np.float32)
    y, _ = Dropout(0.5, noise_shape=(None, 1, 5), seed=1).forward_train(x)
    for t in range(1, 6):
        np.testing.assert_array_equal(y[:, t], y[:, 0])
    assert 0 < (y == 0).mean() < 1
    with pytest.raises(ValueError, match="noise_shape"):
        Dropout(0.5, noise_shape=(8, 2, 5)).forward_train(x)
    with pytest.raises(ValueError, match="noise_shape"):
        Dropout(0.5, noise_shape=(0, 1))


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(rate=1.0), ValueError, ["rate", "1.0"]),
    (dict(rate=-0.2), ValueError, ["rate", "-0.2"]),
    (dict(rate=0.1, seed=-3), ValueError, ["seed", "-3"]),
    (dict(rate=0.1, seed="a"), TypeError, ["seed", "'a'"]),
])
def test_dropout_errors(kwargs, exc, words):
    with pytest.raises(exc) as info:
        Dropout(**kwargs)
    for w in words:
        assert w in str(info.value)


# ------------------------------------------------------------------------------ config
CONFIG_CASES = [
    lambda: Dense(5, activation="softmax", use_bias=False, kernel_initializer="he_uniform",
                  kernel_regularizer="l1", activity_regularizer=L1L2(0.1, 0.2), dtype="float64"),
    lambda: Dense(2, activation=fl.activations.HardSigmoid(0.2, 0.5)),
    lambda: Dense(3),
    lambda: Embedding(11, 3, embeddings_initializer=fl.initializers.RandomNormal(seed=2),
                      embeddings_regularizer="l2", mask_zero=True),
    lambda: Masking(mask_value=-2.5, dtype="float64"),
    lambda: Dropout(0.25, noise_shape=(None, 1, 3), seed=5),
]


@pytest.mark.parametrize("make", CONFIG_CASES, ids=["dense_softmax", "dense_hs", "dense",
                                                     "embedding", "masking", "dropout"])
def test_config_round_trip(make):
    layer = make()
    cfg = layer.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    again = type(layer).from_config(json.loads(json.dumps(cfg)))
    assert again.get_config() == cfg
    ser = layers.serialize(layer)
    assert ser["class_name"] == type(layer).__name__
    via = layers.deserialize(json.loads(json.dumps(ser)))
    assert type(via) is type(layer) and via.get_config() == cfg
    # same config + same weights = same function
    if isinstance(layer, Embedding):
        x = np.array([[1, 0, 4], [10, 3, 3]])
    else:
        x = np.random.default_rng(0).standard_normal((2, 4, 3))
    layer(x)
    again(x)
    if layer.weight_names:
        again.set_weights(layer.get_weights())
    assert_close(again(x), layer(x), layer.dtype)


def test_dense_config_uses_keras_names_and_defaults():
    cfg = Dense(4).get_config()
    assert cfg["activation"] == "linear" and cfg["use_bias"] is True
    assert cfg["kernel_initializer"]["class_name"] == "GlorotUniform"
    assert cfg["bias_initializer"] == {"class_name": "Zeros", "config": {}}
    assert {"kernel_regularizer", "bias_regularizer", "activity_regularizer", "units",
            "name", "dtype", "trainable"} <= set(cfg)


def test_deserialize_errors():
    with pytest.raises(ValueError, match=r"unknown layer class_name 'Conv2D'"):
        layers.deserialize({"class_name": "Conv2D", "config": {}})
    with pytest.raises(TypeError, match="config"):
        layers.deserialize("Dense")
    with pytest.raises(TypeError, match="layer"):
        layers.serialize(object())
    # Keras's extra keys are ignored
    d = layers.deserialize({"module": "keras.layers", "class_name": "Dense",
                            "config": {"units": 2}, "registered_name": None})
    assert isinstance(d, Dense) and d.units == 2


def test_activity_regularizer_of_dense_and_embedding():
    x = np.random.default_rng(0).standard_normal((4, 3))
    d = Dense(2, activity_regularizer=L1L2(0.0, 1.0), dtype="float64")
    y, _ = d.forward_train(x)
    assert d.last_activity_loss == pytest.approx((y ** 2).sum() / 4)   # Keras: / batch size
    e = Embedding(4, 2, activity_regularizer=L1L2(2.0, 0.0), dtype="float64")
    y, _ = e.forward_train(np.array([[1, 2, 3]]))
    assert e.last_activity_loss == pytest.approx(2.0 * np.abs(y).sum())
