"""LayerNormalization and global pooling against Keras 3 (outputs, masks, gradients),
finite differences in float64, configuration and errors."""
import json

import numpy as np
import pytest

from fastlstm import layers
from fastlstm.layers import GlobalAveragePooling1D, GlobalMaxPooling1D, LayerNormalization
from fastlstm.regularizers import L1L2

from conftest import PEER_TOL, assert_close
from layer_parity import finite_difference_check, keras_grads

keras = pytest.importorskip("keras")
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")]

# Keras 3.15 on PyTorch averages (ops.mean, layer_normalization) in float32 even for float64
# tensors (its result_type('float64', 'float32') is float32): float32 tolerances against it;
# the float64 oracles are NumPy's formulas and finite differences.
KERAS_F32 = {np.dtype(np.float32): PEER_TOL[np.dtype(np.float32)],
             np.dtype(np.float64): PEER_TOL[np.dtype(np.float32)]}

MASK = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0]], bool)


def _compare(layer, kl, x, dtype, mask=None, keras_mask_kwarg=False, seed=0, tol=PEER_TOL):
    rng = np.random.default_rng(seed)
    y, back = layer.forward_train(x, mask=mask)
    dy = rng.standard_normal(y.shape).astype(dtype)
    kw = {"mask": mask} if keras_mask_kwarg and mask is not None else None
    ky, kmask, kdx, kdw = keras_grads(kl, [x], dy, masks=None if kw else [mask], call_kwargs=kw)
    assert_close(y, ky, dtype, "y", tol)
    assert_close(layer(x, mask=mask), ky, dtype, "call", tol)
    out_mask = layer.compute_mask(x, mask)
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


# ------------------------------------------------------------------ LayerNormalization
@pytest.mark.parametrize("axis,center,scale", [(-1, True, True), (-1, False, True),
                                               (-1, True, False), (2, False, False),
                                               ([1, 2], True, True)])
def test_layer_normalization_matches_keras(axis, center, scale, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 6, 5)) * 3 + 1).astype(dtype)
    kl = keras.layers.LayerNormalization(axis=axis, center=center, scale=scale,
                                         dtype=dtype.name)
    layer = LayerNormalization(axis=axis, center=center, scale=scale, dtype=dtype.name)
    kl.build(x.shape)
    layer.build(x.shape)
    ws = [rng.standard_normal(w.shape).astype(dtype) for w in kl.get_weights()]
    kl.set_weights(ws)
    assert [w.shape for w in layer.get_weights()] == [w.shape for w in ws]
    layer.set_weights(ws)
    _compare(layer, kl, x, dtype, mask=MASK, tol=KERAS_F32)


@pytest.mark.parametrize("axis", [-1, 1, [1, 2]])
def test_layer_normalization_against_its_formula(axis, dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 6, 5)).astype(dtype) * 4 + 2
    layer = LayerNormalization(axis=axis, epsilon=1e-2, dtype=dtype.name)
    layer.build(x.shape)
    layer.set_weights([rng.standard_normal(w.shape) for w in layer.get_weights()])
    axes = tuple(np.atleast_1d(np.arange(3)[axis]))
    shape = [1, 1, 1]
    for a in axes:
        shape[a] = x.shape[a]
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axes, keepdims=True), x64.var(axes, keepdims=True)
    want = ((x64 - mean) / np.sqrt(var + 1e-2) * layer.gamma.reshape(shape)
            + layer.beta.reshape(shape))
    assert_close(layer(x), want.astype(dtype), dtype)


def test_layer_normalization_over_a_middle_axis(dtype):
    # Keras 3 on PyTorch fails for a single axis that is not the last (it hands it to
    # torch's layer_norm, which normalises trailing axes only): the formula is the oracle.
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 6, 5)).astype(dtype)
    layer = LayerNormalization(axis=1, epsilon=1e-2, dtype=dtype.name)
    layer.build(x.shape)
    g, b = rng.standard_normal(6), rng.standard_normal(6)
    layer.set_weights([g, b])
    x64 = x.astype(np.float64)
    mean, var = x64.mean(1, keepdims=True), x64.var(1, keepdims=True)
    want = (x64 - mean) / np.sqrt(var + 1e-2) * g[:, None] + b[:, None]
    assert_close(layer(x), want.astype(dtype), dtype)
    if dtype == np.float64:
        finite_difference_check(layer, x, rng=rng)


def test_layer_normalization_weight_names_and_defaults():
    layer = LayerNormalization()
    layer.build((None, 4, 3))
    assert layer.weight_names == ["gamma", "beta"]
    np.testing.assert_array_equal(layer.gamma, np.ones(3))
    np.testing.assert_array_equal(layer.beta, np.zeros(3))
    assert layer.epsilon == 1e-3 and layer.weight_shapes((None, 7, 3)) == [(3,), (3,)]


@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_layer_normalization_by_finite_differences(axis):
    rng = np.random.default_rng(2)
    layer = LayerNormalization(axis=axis, dtype="float64", gamma_regularizer=L1L2(0, 1))
    layer.build((None, 4, 5))
    layer.set_weights([rng.standard_normal(w.shape) for w in layer.get_weights()])
    finite_difference_check(layer, rng.standard_normal((3, 4, 5)) * 2, rng=rng)


def test_layer_normalization_config_and_errors():
    layer = LayerNormalization(axis=[1, 2], epsilon=1e-5, center=False,
                               beta_regularizer=L1L2(0.1, 0))
    cfg = layer.get_config()
    kcfg = keras.layers.LayerNormalization().get_config()
    assert set(cfg) - {"trainable", "dtype", "name"} <= set(kcfg)
    again = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
    assert again.get_config() == cfg
    with pytest.raises(TypeError, match="axis"):
        LayerNormalization(axis="last")
    with pytest.raises(ValueError, match="epsilon"):
        LayerNormalization(epsilon=-1)
    with pytest.raises(TypeError, match="center"):
        LayerNormalization(center="yes")
    with pytest.raises(ValueError, match="axis"):
        LayerNormalization(axis=3)(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="axis"):
        LayerNormalization(axis=0)(np.zeros((2, 3, 4)))
    built = LayerNormalization()
    built(np.zeros((2, 3, 4)))
    assert built(np.ones((5, 4))).shape == (5, 4)     # another rank, as Keras allows
    with pytest.raises(ValueError, match="built for"):
        built(np.zeros((2, 3, 5)))


# ------------------------------------------------------------------ global pooling
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_global_average_pooling_matches_keras(keepdims, masked, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 6, 4)).astype(dtype)
    mask = MASK if masked else None
    kl = keras.layers.GlobalAveragePooling1D(keepdims=keepdims, dtype=dtype.name)
    layer = GlobalAveragePooling1D(keepdims=keepdims, dtype=dtype.name)
    y = _compare(layer, kl, x, dtype, mask=mask, keras_mask_kwarg=True, tol=KERAS_F32)
    assert layer.compute_output_shape((3, 6, 4)) == y.shape
    x64 = x.astype(np.float64)
    want = ((x64 * MASK[..., None]).sum(1) / MASK.sum(1)[:, None] if masked else x64.mean(1))
    assert_close(y.reshape(3, 4), want.astype(dtype), dtype)    # the valid steps only


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_global_max_pooling_matches_keras(keepdims, masked, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 4)).astype(dtype)
    x[1, 2, 0] = x[1, 4, 0] = 10.0               # a tie: the gradient is shared
    mask = MASK if masked else None
    kl = keras.layers.GlobalMaxPooling1D(keepdims=keepdims, dtype=dtype.name)
    layer = GlobalMaxPooling1D(keepdims=keepdims, dtype=dtype.name)
    y = _compare(layer, kl, x, dtype, mask=mask)
    assert_close(y.reshape(3, 4), x.max(axis=1), dtype)       # the mask is ignored


def test_global_pooling_channels_first():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 6))
    for fl_cls, k_cls in ((GlobalAveragePooling1D, keras.layers.GlobalAveragePooling1D),
                          (GlobalMaxPooling1D, keras.layers.GlobalMaxPooling1D)):
        layer = fl_cls(data_format="channels_first", dtype="float64")
        kl = k_cls(data_format="channels_first", dtype="float64")
        _compare(layer, kl, x, np.dtype(np.float64), tol=KERAS_F32)
        assert layer.compute_output_shape((None, 4, 6)) == (None, 4)


def test_global_average_pooling_of_a_fully_masked_sample_is_nan_as_keras():
    x = np.ones((2, 3, 2))
    mask = np.array([[0, 0, 0], [1, 0, 1]], bool)
    y = GlobalAveragePooling1D(dtype="float64")(x, mask=mask)
    ky = keras.layers.GlobalAveragePooling1D(dtype="float64")(x, mask=mask)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(np.asarray(ky)))
    assert np.isnan(y[0]).all() and (y[1] == 1).all()


@pytest.mark.parametrize("cls", [GlobalAveragePooling1D, GlobalMaxPooling1D])
def test_global_pooling_by_finite_differences(cls):
    rng = np.random.default_rng(6)
    finite_difference_check(cls(dtype="float64"), rng.standard_normal((3, 6, 4)), rng=rng)
    if cls is GlobalAveragePooling1D:
        finite_difference_check(cls(dtype="float64", keepdims=True),
                                rng.standard_normal((3, 6, 4)), mask=MASK, rng=rng)


def test_global_pooling_config_and_errors():
    for cls in (GlobalAveragePooling1D, GlobalMaxPooling1D):
        layer = cls(keepdims=True, name="p")
        again = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
        assert type(again) is cls and again.get_config() == layer.get_config()
        kcfg = getattr(keras.layers, cls.__name__)().get_config()
        assert set(layer.get_config()) - {"trainable", "dtype", "name"} <= set(kcfg)
        with pytest.raises(TypeError, match="keepdims"):
            cls(keepdims=1)
        with pytest.raises(ValueError, match="data_format"):
            cls(data_format="nhwc")
        with pytest.raises(ValueError, match="3-D"):
            cls()(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mask"):
        GlobalAveragePooling1D()(np.zeros((2, 3, 1)), mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="at least one step"):
        GlobalMaxPooling1D()(np.zeros((2, 0, 3)))
