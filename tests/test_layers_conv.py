"""Conv1D against Keras 3 (outputs and gradients, every padding with strides and
dilations), finite differences in float64, configuration and errors."""
import json

import numpy as np
import pytest

from fastlstm import layers
from fastlstm.layers import Conv1D
from fastlstm.regularizers import L1L2

from conftest import PEER_TOL, assert_close
from layer_parity import finite_difference_check, keras_grads

keras = pytest.importorskip("keras")
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")]

CASES = [(p, k, s, d) for p in ("valid", "same", "causal") for k, s, d in
         [(1, 1, 1), (3, 1, 1), (3, 2, 1), (4, 3, 1), (3, 1, 2), (2, 1, 3), (5, 2, 1)]]


def _pair(dtype, padding, kernel_size, strides, dilation, activation="tanh", use_bias=True):
    kl = keras.layers.Conv1D(4, kernel_size, strides=strides, padding=padding,
                             dilation_rate=dilation, activation=activation,
                             use_bias=use_bias, dtype=dtype.name)
    fl_layer = Conv1D(4, kernel_size, strides=strides, padding=padding,
                      dilation_rate=dilation, activation=activation, use_bias=use_bias,
                      dtype=dtype.name)
    return kl, fl_layer


@pytest.mark.parametrize("padding,kernel_size,strides,dilation", CASES)
def test_conv1d_matches_keras(padding, kernel_size, strides, dilation, dtype):
    rng = np.random.default_rng(kernel_size * 10 + strides + dilation)
    x = rng.standard_normal((3, 11, 5)).astype(dtype)
    kl, layer = _pair(dtype, padding, kernel_size, strides, dilation)
    kl.build(x.shape)
    ws = [rng.standard_normal(w.shape).astype(dtype) * 0.5 for w in kl.get_weights()]
    kl.set_weights(ws)
    layer.build(x.shape)
    assert [w.shape for w in layer.get_weights()] == [w.shape for w in ws]
    layer.set_weights(ws)
    y, back = layer.forward_train(x)
    assert layer.compute_output_shape((None, 11, 5)) == (None,) + y.shape[1:]
    dy = rng.standard_normal(y.shape).astype(dtype)
    ky, kmask, kdx, kdw = keras_grads(kl, [x], dy)
    assert_close(y, ky, dtype, "y", PEER_TOL)
    assert_close(layer(x), ky, dtype, "call", PEER_TOL)
    g = back(dy)
    assert_close(g.inputs, kdx[0], dtype, "dx", PEER_TOL)
    for name, a, b in zip(layer.weight_names, g.weights, kdw):
        assert_close(a, b, dtype, name, PEER_TOL)


@pytest.mark.parametrize("activation", ["relu", "linear", "softmax", "sigmoid"])
def test_conv1d_activations_and_no_bias_match_keras(activation):
    dtype = np.dtype(np.float64)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 3))
    kl, layer = _pair(dtype, "same", 3, 1, 1, activation=activation, use_bias=False)
    kl.build(x.shape)
    layer.build(x.shape)
    layer.set_weights(kl.get_weights())
    y, back = layer.forward_train(x)
    dy = rng.standard_normal(y.shape)
    ky, _, kdx, kdw = keras_grads(kl, [x], dy)
    g = back(dy)
    assert_close(y, ky, dtype, "y", PEER_TOL)
    assert_close(g.inputs, kdx[0], dtype, "dx", PEER_TOL)
    assert_close(g.weights[0], kdw[0], dtype, "dkernel", PEER_TOL)


@pytest.mark.parametrize("padding,kernel_size,strides,dilation", CASES[::2])
def test_conv1d_backprop_by_finite_differences(padding, kernel_size, strides, dilation):
    rng = np.random.default_rng(5)
    layer = Conv1D(3, kernel_size, strides=strides, padding=padding, dilation_rate=dilation,
                   activation="tanh", dtype="float64", kernel_initializer="glorot_normal",
                   bias_initializer="zeros")
    layer.build((None, 10, 4))
    layer.set_weights([w + rng.standard_normal(w.shape) * 0.3 for w in layer.get_weights()])
    finite_difference_check(layer, rng.standard_normal((2, 10, 4)), rng=rng)


def test_conv1d_drops_the_mask_as_keras():
    layer = Conv1D(2, 3, padding="same")
    x = np.ones((2, 5, 3), np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    kl = keras.layers.Conv1D(2, 3, padding="same")
    kl.build(x.shape)
    assert kl.compute_mask(x, mask) is None or not kl.supports_masking
    assert layer.compute_mask(x, mask) is None


def test_conv1d_regularizers_add_to_the_loss_and_gradients():
    layer = Conv1D(2, 2, kernel_regularizer=L1L2(0.0, 0.5), bias_regularizer=L1L2(0.1, 0.0),
                   dtype="float64")
    layer.build((None, 4, 3))
    k, b = layer.get_weights()
    assert layer.regularization_loss() == pytest.approx(0.5 * np.sum(k ** 2)
                                                        + 0.1 * np.sum(np.abs(b)))
    gk, gb = layer.regularization_grads()
    np.testing.assert_allclose(gk, k)


def test_conv1d_config_round_trip_and_keras_names():
    layer = Conv1D(8, 5, strides=1, padding="causal", dilation_rate=2, activation="relu",
                   use_bias=False, kernel_regularizer=L1L2(0.01, 0.0), name="c")
    cfg = layer.get_config()
    kcfg = keras.layers.Conv1D(8, 5, padding="causal", dilation_rate=2).get_config()
    assert set(cfg) - {"trainable", "dtype", "name"} <= set(kcfg)
    again = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
    assert isinstance(again, Conv1D) and again.get_config() == cfg
    assert (again.kernel_size, again.dilation_rate, again.padding) == (5, 2, "causal")


@pytest.mark.parametrize("kwargs,error,text", [
    (dict(filters=0, kernel_size=3), ValueError, "filters"),
    (dict(filters=2, kernel_size=0), ValueError, "kernel_size"),
    (dict(filters=2, kernel_size=(2, 2)), ValueError, "kernel_size"),
    (dict(filters=2, kernel_size=3, strides=2, dilation_rate=2), ValueError, "dilation_rate"),
    (dict(filters=2, kernel_size=3, padding="full"), ValueError, "padding"),
    (dict(filters=2, kernel_size=3, data_format="channels_first"), ValueError, "data_format"),
    (dict(filters=2, kernel_size=3, groups=2), ValueError, "groups"),
    (dict(filters=2, kernel_size=3, activation="nope"), ValueError, "activation"),
    (dict(filters=2.5, kernel_size=3), TypeError, "filters"),
])
def test_conv1d_bad_arguments(kwargs, error, text):
    with pytest.raises(error, match=text):
        Conv1D(**kwargs)


def test_conv1d_keras_refuses_strides_with_dilation_too():
    with pytest.raises(ValueError):
        keras.layers.Conv1D(2, 3, strides=2, dilation_rate=2)


def test_conv1d_bad_inputs():
    layer = Conv1D(2, 4)
    with pytest.raises(ValueError, match="3-D"):
        layer(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="at least 4 steps"):
        layer(np.zeros((2, 3, 1)))
    layer(np.zeros((2, 6, 3)))
    with pytest.raises(ValueError, match="3 channels"):
        layer(np.zeros((2, 6, 2)))
    with pytest.raises(ValueError, match="d_out"):
        layer.forward_train(np.zeros((2, 6, 3)))[1](np.zeros((2, 2, 2)))
