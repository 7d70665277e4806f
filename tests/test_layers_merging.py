"""Concatenate, Add, Multiply, Average against Keras 3 (outputs, output masks, gradients of
every input), finite differences in float64, configuration, errors, and Sequential's
refusal of layers with a list of inputs."""
import json

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import layers
from fastlstm.layers import Add, Average, Concatenate, Multiply

from conftest import PEER_TOL, assert_close
from layer_parity import finite_difference_check, keras_grads

keras = pytest.importorskip("keras")
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")]

RNG = np.random.default_rng(0)
MA = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 1]], bool)
MB = np.array([[1, 0, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 1, 1]], bool)
MC = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], bool)


def _compare(layer, kl, xs, dtype, masks=None):
    rng = np.random.default_rng(1)
    y, back = layer.forward_train(xs, mask=masks)
    dy = rng.standard_normal(y.shape).astype(dtype)
    ky, kmask, kdx, _ = keras_grads(kl, xs, dy, masks=masks)
    assert_close(y, ky, dtype, "y", PEER_TOL)
    assert_close(layer(xs, mask=masks), ky, dtype, "call", PEER_TOL)
    out_mask = layer.compute_mask(xs, masks)
    if kmask is None:
        assert out_mask is None
    else:
        np.testing.assert_array_equal(out_mask, kmask)
    g = back(dy)
    assert g.weights == [] and len(g.inputs) == len(xs)
    for k, (a, b) in enumerate(zip(g.inputs, kdx)):
        assert a.shape == xs[k].shape
        assert_close(a, b, dtype, f"d input {k}", PEER_TOL)
    return y, out_mask


MASK_SETS = {"none": None, "all": [MA, MB, MC], "some": [MA, None, MC],
             "one": [None, MB, None]}


@pytest.mark.parametrize("cls", ["Add", "Multiply", "Average"])
@pytest.mark.parametrize("masks", list(MASK_SETS))
def test_elementwise_merges_match_keras(cls, masks, dtype):
    xs = [RNG.standard_normal((3, 5, 4)).astype(dtype) for _ in range(3)]
    layer = getattr(layers, cls)(dtype=dtype.name)
    kl = getattr(keras.layers, cls)(dtype=dtype.name)
    y, out_mask = _compare(layer, kl, xs, dtype, MASK_SETS[masks])
    if masks == "all":
        np.testing.assert_array_equal(out_mask, MA | MB | MC)
    else:
        assert out_mask is None


@pytest.mark.parametrize("cls", ["Add", "Multiply", "Average"])
def test_elementwise_merges_broadcast_as_keras(cls, dtype):
    xs = [RNG.standard_normal((3, 5, 4)).astype(dtype),
          RNG.standard_normal((3, 1, 4)).astype(dtype),
          RNG.standard_normal((3, 4)).astype(dtype)]
    layer = getattr(layers, cls)(dtype=dtype.name)
    kl = getattr(keras.layers, cls)(dtype=dtype.name)
    y, _ = _compare(layer, kl, xs, dtype)
    assert layer.compute_output_shape([x.shape for x in xs]) == y.shape
    assert tuple(kl.compute_output_shape([x.shape for x in xs])) == y.shape


@pytest.mark.parametrize("axis", [-1, 1, 2])
@pytest.mark.parametrize("masks", list(MASK_SETS))
def test_concatenate_matches_keras(axis, masks, dtype):
    shapes = {-1: [(3, 5, 2), (3, 5, 4), (3, 5, 1)], 2: [(3, 5, 2), (3, 5, 4), (3, 5, 1)],
              1: [(3, 5, 4), (3, 5, 4), (3, 5, 4)]}[axis]
    xs = [RNG.standard_normal(s).astype(dtype) for s in shapes]
    layer = Concatenate(axis=axis, dtype=dtype.name)
    kl = keras.layers.Concatenate(axis=axis, dtype=dtype.name)
    y, _ = _compare(layer, kl, xs, dtype, MASK_SETS[masks])
    assert layer.compute_output_shape([x.shape for x in xs]) == y.shape


@pytest.mark.parametrize("cls", ["Add", "Multiply", "Average", "Concatenate"])
@pytest.mark.parametrize("masks", ["none", "all", "some"])
def test_merges_by_finite_differences(cls, masks):
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((3, 5, 4)) for _ in range(3)]
    finite_difference_check(getattr(layers, cls)(dtype="float64"), xs,
                            mask=MASK_SETS[masks], rng=rng)


def test_multiply_with_zeros_has_the_right_gradients():
    xs = [np.array([[0.0, 2.0]]), np.array([[3.0, 0.0]]), np.array([[5.0, 7.0]])]
    y, back = Multiply(dtype="float64").forward_train(xs)
    g = back(np.ones((1, 2)))
    np.testing.assert_array_equal(g.inputs[0], [[15.0, 0.0]])
    np.testing.assert_array_equal(g.inputs[1], [[0.0, 14.0]])
    np.testing.assert_array_equal(g.inputs[2], [[0.0, 0.0]])


def test_merge_config_and_errors():
    for layer in (Add(name="a"), Multiply(), Average(), Concatenate(axis=1)):
        assert layer.multiple_inputs
        again = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
        assert type(again) is type(layer) and again.get_config() == layer.get_config()
        kcfg = getattr(keras.layers, type(layer).__name__)().get_config()
        assert set(layer.get_config()) - {"trainable", "dtype", "name"} <= set(kcfg)
    x = np.zeros((2, 3, 4))
    with pytest.raises(TypeError, match="list"):
        Add()(x)
    with pytest.raises(ValueError, match="shapes"):
        Add()([x, np.zeros((2, 3, 5))])
    with pytest.raises(ValueError, match="batch"):
        Multiply()([x, np.zeros((3, 3, 4))])
    with pytest.raises(ValueError, match="concatenation axis"):
        Concatenate()([x, np.zeros((2, 4, 4))])
    with pytest.raises(ValueError, match="axis"):
        Concatenate(axis=3)([x, x])
    with pytest.raises(TypeError, match="axis"):
        Concatenate(axis="last")
    with pytest.raises(ValueError, match="mask"):
        Add()([x, x], mask=[np.ones((2, 3), bool)])
    with pytest.raises(ValueError, match="mask"):
        Add()([x, x], mask=[np.ones((2, 4), bool), None])
    with pytest.raises(ValueError, match="d_out"):
        Add().forward_train([x, x])[1](np.zeros((2, 3)))


def test_sequential_refuses_layers_with_a_list_of_inputs():
    for layer in (Add(), Concatenate()):
        with pytest.raises(ValueError, match="list of inputs"):
            fl.Sequential([fl.layers.Dense(2), layer])
        model = fl.Sequential([fl.layers.Dense(2)])
        with pytest.raises(ValueError, match="list of inputs"):
            model.add(layer)
