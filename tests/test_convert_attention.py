"""from_keras / to_keras of Attention, AdditiveAttention and MultiHeadAttention, layer by
layer (they take several inputs, so no Sequential holds them): configs, weights and equal
outputs both ways, and clear refusals of what fastlstm cannot express."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm.convert import ConversionError, from_keras, to_keras
from fastlstm.regularizers import L1L2

from conftest import PEER_TOL, assert_close

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
if keras.backend.backend() != "torch":
    pytest.skip("Keras runs on another backend than torch", allow_module_level=True)

pytestmark = [pytest.mark.peers,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


def np_(t):
    return keras.ops.convert_to_numpy(t)


def close(a, b):
    # Keras computes in float32 whatever the layer's dtype
    assert_close(np.asarray(a, np.float64), np.asarray(b, np.float64), np.float32,
                 table=PEER_TOL)


RNG = np.random.default_rng(0)
Q = RNG.standard_normal((2, 4, 6)).astype("float32")
V = RNG.standard_normal((2, 5, 6)).astype("float32")
K = RNG.standard_normal((2, 5, 6)).astype("float32")
QM = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
VM = np.array([[1, 1, 1, 1, 0], [1, 0, 1, 1, 1]], bool)

LIST_LAYERS = [("Attention", {}), ("Attention", dict(use_scale=True, score_mode="concat")),
               ("Attention", dict(use_scale=True, dropout=0.2, seed=3)),
               ("AdditiveAttention", {}), ("AdditiveAttention", dict(use_scale=False))]


@pytest.mark.parametrize("cls_name,kw", LIST_LAYERS)
def test_list_attention_from_keras(cls_name, kw):
    kl = getattr(keras.layers, cls_name)(name="att", **kw)
    kl([Q, V, K])
    kl.set_weights([w * 1.7 for w in kl.get_weights()])
    fl_layer = from_keras(kl)
    assert type(fl_layer) is getattr(fl.layers, cls_name) and fl_layer.name == "att"
    for key, value in kw.items():
        assert getattr(fl_layer, key) == value
    for w, kw_ in zip(fl_layer.get_weights(), kl.get_weights()):
        np.testing.assert_array_equal(w, kw_)
    for inputs in ([Q, V], [Q, V, K]):
        ko, ks = kl(inputs, mask=[QM, VM], return_attention_scores=True, use_causal_mask=True)
        o, s = fl_layer(inputs, mask=[QM, VM], return_attention_scores=True,
                        use_causal_mask=True)
        close(o, np_(ko))
        close(s, np_(ks))


@pytest.mark.parametrize("cls_name,kw", LIST_LAYERS)
def test_list_attention_to_keras(cls_name, kw):
    layer = getattr(fl.layers, cls_name)(name="att", **kw)
    layer([Q, V])
    layer.set_weights([w * 0.6 for w in layer.get_weights()])
    kl = to_keras(layer)
    assert type(kl) is getattr(keras.layers, cls_name) and kl.name == "att"
    for key, value in kw.items():
        assert getattr(kl, key) == value
    for w, kw_ in zip(layer.get_weights(), kl.get_weights()):
        np.testing.assert_array_equal(w, kw_)
    ko, ks = kl([Q, V, K], mask=[QM, VM], return_attention_scores=True)
    o, s = layer([Q, V, K], mask=[QM, VM], return_attention_scores=True)
    close(o, np_(ko))
    close(s, np_(ks))
    back = from_keras(kl)
    assert back.get_config() == layer.get_config()


MHA = [dict(num_heads=2, key_dim=3),
       dict(num_heads=3, key_dim=2, value_dim=4, use_bias=False, output_shape=(2, 5)),
       dict(num_heads=2, key_dim=4, dropout=0.1, seed=5, sliding_window=2,
            kernel_initializer="he_uniform", bias_initializer="ones"),
       dict(num_heads=2, key_dim=3, value_dim=2, use_gate=True)]


@pytest.mark.parametrize("kw", MHA)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mha_from_keras(kw, dtype):
    kl = keras.layers.MultiHeadAttention(name="mha", dtype=dtype, **kw)
    k3 = RNG.standard_normal((2, 5, 3)).astype(dtype)
    kl(Q.astype(dtype), V.astype(dtype), k3)
    kl.set_weights([RNG.standard_normal(w.shape) * 0.5 for w in kl.get_weights()])
    layer = from_keras(kl)
    assert isinstance(layer, fl.layers.MultiHeadAttention) and layer.dtype == np.dtype(dtype)
    assert (layer.num_heads, layer.key_dim, layer.value_dim) == (
        kw["num_heads"], kw["key_dim"], kw.get("value_dim", kw["key_dim"]))
    assert [w.shape for w in layer.get_weights()] == [tuple(w.shape) for w in kl.get_weights()]
    ko, ks = kl(torch.tensor(Q.astype(dtype)), torch.tensor(V.astype(dtype)), torch.tensor(k3),
                value_mask=torch.tensor(VM), return_attention_scores=True,
                use_causal_mask=True)
    o, s = layer(Q, V, k3, value_mask=VM, return_attention_scores=True, use_causal_mask=True)
    close(o, np_(ko))
    close(s, np_(ks))


@pytest.mark.parametrize("kw", MHA)
def test_mha_to_keras(kw):
    layer = fl.layers.MultiHeadAttention(name="mha", kernel_regularizer=L1L2(0.0, 0.01),
                                         **kw)
    layer(Q, V)
    layer.set_weights([RNG.standard_normal(w.shape) * 0.5 for w in layer.get_weights()])
    kl = to_keras(layer)
    assert isinstance(kl, keras.layers.MultiHeadAttention) and kl.name == "mha"
    cfg = kl.get_config()
    assert cfg["num_heads"] == kw["num_heads"] and cfg["key_dim"] == kw["key_dim"]
    assert cfg["kernel_regularizer"]["class_name"] in ("L1L2", "L2")
    for w, kw_ in zip(layer.get_weights(), kl.get_weights()):
        np.testing.assert_array_equal(w, kw_)
    ko, ks = kl(Q, V, value_mask=VM, return_attention_scores=True)
    o, s = layer(Q, V, value_mask=VM, return_attention_scores=True)
    close(o, np_(ko))
    close(s, np_(ks))
    back = from_keras(kl)
    assert back.get_config() == dict(layer.get_config(), attention_axes=[1])


def test_unbuilt_and_weightless_layers():
    layer = from_keras(keras.layers.MultiHeadAttention(2, 3))
    assert not layer.built
    assert layer(Q, V).shape == Q.shape
    att = from_keras(keras.layers.Attention())
    assert att([Q, V]).shape == (2, 4, 6)
    with pytest.raises(ValueError, match="not built"):
        to_keras(fl.layers.MultiHeadAttention(2, 3))


def test_refusals():
    with pytest.raises(ConversionError, match="attention_axes"):
        from_keras(keras.layers.MultiHeadAttention(2, 3, attention_axes=(1, 2)))
    with pytest.raises(ConversionError, match="kernel_constraint"):
        from_keras(keras.layers.MultiHeadAttention(2, 3, kernel_constraint="non_neg"))
    layer = from_keras(keras.layers.MultiHeadAttention(2, 3, kernel_constraint="non_neg"),
                       drop_training_options=True)
    assert isinstance(layer, fl.layers.MultiHeadAttention)
    with pytest.raises(ConversionError, match="activity_regularizer"):
        from_keras(keras.layers.Attention(activity_regularizer="l2"))
    assert from_keras(keras.layers.Attention(activity_regularizer="l2"),
                      drop_training_options=True).score_mode == "dot"
