"""RepeatVector, Flatten, Activation and TimeDistributed against Keras 3 (outputs, masks,
gradients), finite differences in float64, configuration and errors."""
import json

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import layers
from fastlstm.layers import (LSTM, Activation, Conv1D, Dense, Dropout, Flatten,
                             GlobalAveragePooling1D, LayerNormalization, RepeatVector,
                             TimeDistributed)
from fastlstm.regularizers import L1L2

from conftest import PEER_TOL, assert_close
from layer_parity import finite_difference_check, keras_grads

keras = pytest.importorskip("keras")
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")]

MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 1]], bool)
KERAS_F32 = {np.dtype(np.float32): PEER_TOL[np.dtype(np.float32)],
             np.dtype(np.float64): PEER_TOL[np.dtype(np.float32)]}


def _compare(layer, kl, x, dtype, mask=None, tol=PEER_TOL, keras_mask_kwarg=False):
    rng = np.random.default_rng(0)
    y, back = layer.forward_train(x, mask=mask)
    dy = rng.standard_normal(y.shape).astype(dtype)
    kw = {"mask": mask} if keras_mask_kwarg and mask is not None else None
    ky, kmask, kdx, kdw = keras_grads(kl, [x], dy, masks=None if kw else [mask], call_kwargs=kw)
    assert_close(y, ky, dtype, "y", tol)
    assert_close(layer(x, mask=mask), ky, dtype, "call", tol)
    out_mask = layer.compute_mask(x, mask)
    if keras_mask_kwarg:            # the mask Keras gives the output of a masked call
        kmask = kl.compute_mask(x, mask) if kl.supports_masking else None
        kmask = None if kmask is None else np.asarray(kmask)
    if kmask is None:
        assert out_mask is None
    else:
        np.testing.assert_array_equal(out_mask, kmask)
    g = back(dy)
    assert_close(g.inputs, kdx[0], dtype, "dx", tol)
    assert len(g.weights) == len(kdw)
    for name, a, b in zip(layer.weight_names, g.weights, kdw):
        assert_close(a, b, dtype, name, tol)
    return y


# ------------------------------------------------------------------ RepeatVector, Flatten
def test_repeat_vector_matches_keras(dtype):
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(dtype)
    layer = RepeatVector(5, dtype=dtype.name)
    y = _compare(layer, keras.layers.RepeatVector(5, dtype=dtype.name), x, dtype)
    assert y.shape == (3, 5, 4) == layer.compute_output_shape((3, 4))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("shape", [(3, 5, 4), (3, 2, 3, 4), (3, 6)])
def test_flatten_matches_keras(shape, data_format, dtype):
    x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    layer = Flatten(data_format=data_format, dtype=dtype.name)
    kl = keras.layers.Flatten(data_format=data_format, dtype=dtype.name)
    mask = MASK if shape == (3, 5, 4) else None
    y = _compare(layer, kl, x, dtype, mask=mask)          # Keras drops the mask
    assert layer.compute_output_shape((None,) + shape[1:]) == (None, y.shape[1])


@pytest.mark.parametrize("layer", [RepeatVector(3, dtype="float64"), Flatten(dtype="float64"),
                                   Flatten(data_format="channels_first", dtype="float64")])
def test_reshaping_by_finite_differences(layer):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4) if isinstance(layer, RepeatVector) else (2, 3, 4))
    finite_difference_check(layer, x, rng=rng)


# ------------------------------------------------------------------ Activation
ACTS = ["tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "softsign", "softmax"]


@pytest.mark.parametrize("act", ACTS)
def test_activation_matches_keras(act, dtype):
    x = np.random.default_rng(4).standard_normal((3, 5, 4)).astype(dtype) * 3
    layer = Activation(act, dtype=dtype.name)
    kl = keras.layers.Activation(act, dtype=dtype.name)
    # Keras's hard_sigmoid scales by a float32 1/6 in float64 too
    tol = KERAS_F32 if act == "hard_sigmoid" else PEER_TOL
    _compare(layer, kl, x, dtype, mask=MASK, tol=tol)      # the mask passes through


@pytest.mark.parametrize("act", ACTS)
def test_activation_by_finite_differences(act):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4)) * 2
    x[np.abs(x) < 1e-3] = 0.5           # away from relu's kink
    finite_difference_check(Activation(act, dtype="float64"), x, rng=rng)


def test_activation_config_and_errors():
    for act in ("softmax", "relu", fl.activations.HardSigmoid(0.2, 0.5)):
        layer = Activation(act)
        again = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
        assert again.get_config() == layer.get_config()
    assert Activation("softmax").get_config()["activation"] == \
        keras.layers.Activation("softmax").get_config()["activation"]
    with pytest.raises(ValueError, match="activation"):
        Activation("swishy")
    with pytest.raises(ValueError, match="n"):
        RepeatVector(0)
    with pytest.raises(TypeError, match="n"):
        RepeatVector(2.0)
    with pytest.raises(ValueError, match="2-D"):
        RepeatVector(2)(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="data_format"):
        Flatten(data_format="nchw")
    for layer in (RepeatVector(4, name="r"), Flatten(name="f")):
        again = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
        assert type(again) is type(layer) and again.get_config() == layer.get_config()
        kcfg = getattr(keras.layers, type(layer).__name__)(
            *([4] if isinstance(layer, RepeatVector) else [])).get_config()
        assert set(layer.get_config()) - {"trainable", "dtype", "name"} <= set(kcfg)


# ------------------------------------------------------------------ TimeDistributed
def _wrapped_pair(kind, dtype):
    name = dtype.name
    if kind == "dense":
        return Dense(3, activation="tanh", dtype=name), keras.layers.Dense(3, activation="tanh",
                                                                           dtype=name)
    if kind == "softmax":
        return (Dense(3, activation="softmax", dtype=name),
                keras.layers.Dense(3, activation="softmax", dtype=name))
    if kind == "layer_norm":
        return LayerNormalization(dtype=name), keras.layers.LayerNormalization(dtype=name)
    if kind == "activation":
        return Activation("relu", dtype=name), keras.layers.Activation("relu", dtype=name)
    if kind == "conv":              # on (batch, steps, inner steps, channels)
        return (Conv1D(2, 2, padding="same", dtype=name),
                keras.layers.Conv1D(2, 2, padding="same", dtype=name))
    if kind == "pool":
        return (GlobalAveragePooling1D(dtype=name),
                keras.layers.GlobalAveragePooling1D(dtype=name))
    if kind == "flatten":
        return Flatten(dtype=name), keras.layers.Flatten(dtype=name)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["dense", "softmax", "layer_norm", "activation", "conv",
                                  "pool", "flatten"])
@pytest.mark.parametrize("masked", [False, True])
def test_time_distributed_matches_keras(kind, masked, dtype):
    rng = np.random.default_rng(6)
    four_d = kind in ("conv", "pool", "flatten")
    x = rng.standard_normal((3, 5, 4, 2) if four_d else (3, 5, 4)).astype(dtype)
    inner, kinner = _wrapped_pair(kind, dtype)
    layer = TimeDistributed(inner)
    kl = keras.layers.TimeDistributed(kinner, dtype=dtype.name)
    kl.build(x.shape)
    layer.build(x.shape)
    ws = [rng.standard_normal(w.shape).astype(dtype) for w in kl.get_weights()]
    kl.set_weights(ws)
    assert [w.shape for w in layer.get_weights()] == [w.shape for w in ws]
    assert layer.weight_shapes((None,) + x.shape[1:]) == [w.shape for w in ws]
    layer.set_weights(ws)
    # Keras 3.15 on PyTorch computes some float64 steps (tanh, means) in float32: float32
    # tolerances here; the float64 oracle is the finite-difference test below.
    tol = KERAS_F32
    if kind == "pool" and masked:
        # Keras hands the pooling layer one step's (batch,) mask, which it cannot use; a
        # (batch, steps) mask does not reach a wrapped layer here: the unmasked result.
        with pytest.raises(ValueError):
            kl(x, mask=MASK)
        assert_close(layer(x, mask=MASK), np.asarray(kl(x)), dtype, table=tol)
        np.testing.assert_array_equal(layer.compute_mask(x, MASK), MASK)
        return
    y = _compare(layer, kl, x, dtype, mask=MASK if masked else None, tol=tol,
                 keras_mask_kwarg=True)
    assert layer.compute_output_shape((None,) + x.shape[1:]) == (None,) + y.shape[1:]
    assert tuple(kl.compute_output_shape((None,) + x.shape[1:])) == (None,) + y.shape[1:]


def test_time_distributed_in_a_model_passes_the_mask_to_a_recurrent_layer():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    x[0, 3:] = 0.0
    model = fl.Sequential([fl.layers.Masking(0.0, dtype="float32"),
                           TimeDistributed(Dense(6, dtype="float32")),
                           LSTM(3, dtype="float32")])
    kmodel = keras.Sequential([keras.Input((5, 4), dtype="float32"),
                               keras.layers.Masking(0.0, dtype="float32"),
                               keras.layers.TimeDistributed(keras.layers.Dense(6,
                                                                               dtype="float32")),
                               keras.layers.LSTM(3, dtype="float32")])
    model.build((None, 5, 4))
    model.set_weights(kmodel.get_weights())
    assert_close(model.predict(x), np.asarray(kmodel.predict(x, verbose=0)),
                 np.dtype(np.float32), table=PEER_TOL)


@pytest.mark.parametrize("inner", [Dense(3, activation="sigmoid", dtype="float64"),
                                   LayerNormalization(dtype="float64"),
                                   Conv1D(2, 2, dtype="float64")])
def test_time_distributed_by_finite_differences(inner):
    rng = np.random.default_rng(8)
    shape = (2, 3, 4, 2) if isinstance(inner, Conv1D) else (2, 3, 4)
    layer = TimeDistributed(inner)
    layer.build(shape)
    layer.set_weights([w + rng.standard_normal(w.shape) * 0.3 for w in layer.get_weights()])
    finite_difference_check(layer, rng.standard_normal(shape), mask=MASK[:2, :3], rng=rng)


def test_time_distributed_config_weights_and_errors():
    layer = TimeDistributed(Dense(4, kernel_regularizer=L1L2(0, 0.5), name="d"), name="td")
    layer.build((None, 3, 2))
    assert layer.weight_names == ["kernel", "bias"] and layer.count_params() == 12
    assert layer.regularization_loss() == pytest.approx(0.5 * np.sum(layer.layer.kernel ** 2))
    again = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
    assert isinstance(again.layer, Dense) and again.get_config() == layer.get_config()
    kcfg = keras.layers.TimeDistributed(keras.layers.Dense(4)).get_config()
    assert set(layer.get_config()) - {"trainable", "dtype", "name"} <= set(kcfg)
    with pytest.raises(TypeError, match="layer"):
        TimeDistributed("dense")
    with pytest.raises(ValueError, match="list"):
        TimeDistributed(fl.layers.Add())
    with pytest.raises(ValueError, match="activity_regularizer"):
        TimeDistributed(Dense(2, activity_regularizer=L1L2(0.1, 0)))
    with pytest.raises(ValueError, match="dtype"):
        TimeDistributed(Dense(2), dtype="float64")
    with pytest.raises(ValueError, match="3 dimensions"):
        TimeDistributed(Dense(2))(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mask"):
        TimeDistributed(Dense(2))(np.zeros((2, 3, 1)), mask=np.ones((2, 4), bool))
    td = TimeDistributed(Dropout(0.5, seed=1))
    y, back = td.forward_train(np.ones((2, 3, 4), np.float32))
    assert set(np.unique(y)) <= {0.0, 2.0}
    np.testing.assert_array_equal(back(np.ones_like(y)).inputs, y)


def test_time_distributed_recurrent_layer_matches_keras():
    """TimeDistributed(LSTM) on (batch, outer steps, inner steps, features)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    layer = TimeDistributed(LSTM(3, return_sequences=True))
    kl = keras.layers.TimeDistributed(keras.layers.LSTM(3, return_sequences=True))
    kl.build(x.shape)
    ws = [rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in kl.get_weights()]
    kl.set_weights(ws)
    layer.build(x.shape)
    layer.set_weights(ws)
    _compare(layer, kl, x, np.dtype(np.float32))
    # a (batch, outer, inner) mask reaches the LSTM folded, as (batch * outer, inner)
    mask = rng.random((2, 3, 5)) > 0.3
    mask[..., 0] = True
    inner = LSTM(3, return_sequences=True)
    inner.build((None, 5, 4))
    inner.set_weights(ws)
    want = inner(x.reshape(6, 5, 4), mask=mask.reshape(6, 5)).reshape(2, 3, 5, 3)
    assert_close(layer(x, mask=mask), want, np.dtype(np.float32))
