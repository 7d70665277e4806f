"""Tests of fastlstm.regularizers: Keras 3 formulas, gradients, configs, errors."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from fastlstm import regularizers as R


def finite_difference(f, w, eps=1e-6):
    g = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        wp, wm = w.copy(), w.copy()
        wp[idx] += eps
        wm[idx] -= eps
        g[idx] = (f(wp) - f(wm)) / (2 * eps)
    return g


def test_loss_values():
    w = np.array([[-1.0, 2.0], [0.0, -3.0]])
    assert R.L1(0.1)(w) == pytest.approx(0.1 * 6.0, rel=1e-15)
    assert R.L2(0.1)(w) == pytest.approx(0.1 * 14.0, rel=1e-15)  # no 1/2, as Keras 3
    assert R.L1L2(0.1, 0.2)(w) == pytest.approx(0.6 + 2.8, rel=1e-15)
    assert R.L1L2()(w) == 0.0
    assert isinstance(R.L2(0.1)(w), float)
    assert R.L2()(np.ones(5, np.float32)) == pytest.approx(0.05)  # default 0.01


@pytest.mark.parametrize("reg", [R.L1(0.3), R.L2(0.7), R.L1L2(0.3, 0.7)])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_gradient_matches_finite_differences(reg, shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape)
    w[np.abs(w) < 1e-3] = 0.5  # keep |w| away from the kink of |w| at 0
    g = reg.gradient(w)
    assert g.shape == w.shape and g.dtype == w.dtype
    np.testing.assert_allclose(g, finite_difference(reg, w), rtol=1e-6, atol=1e-8)


def test_gradient_formulas_and_dtype():
    w = np.array([-2.0, 0.0, 3.0], np.float32)
    g1 = R.L1(0.5).gradient(w)
    assert g1.dtype == np.float32
    np.testing.assert_array_equal(g1, [-0.5, 0.0, 0.5])  # sign(0) = 0
    np.testing.assert_allclose(R.L2(0.5).gradient(w), [-2.0, 0.0, 3.0])  # 2 * l2 * w
    np.testing.assert_allclose(R.L1L2(0.5, 0.5).gradient(w), [-2.5, 0.0, 3.5])
    assert not np.any(R.L1L2().gradient(w))


def test_get_names_and_instances():
    assert R.get(None) is None
    assert R.get("l1").get_config() == {"l1": 0.01}
    assert R.get("l2").get_config() == {"l2": 0.01}
    assert R.get("l1_l2").get_config() == {"l1": 0.01, "l2": 0.01}
    # Class names use the class defaults, as keras.regularizers.get does.
    assert R.get("L1L2").get_config() == {"l1": 0.0, "l2": 0.0}
    assert isinstance(R.get(R.L2), R.L2)
    inst = R.L1(0.2)
    assert R.get(inst) is inst


@pytest.mark.parametrize("reg", [R.L1(0.25), R.L2(0.5), R.L1L2(0.1, 0.3), R.L1L2()])
def test_config_round_trip(reg):
    cfg = json.loads(json.dumps(R.serialize(reg)))
    back = R.get(cfg)
    assert type(back) is type(reg) and back.get_config() == reg.get_config()
    assert type(reg).from_config(reg.get_config()).get_config() == reg.get_config()
    assert R.serialize(None) is None
    with pytest.raises(TypeError, match="Regularizer"):
        R.serialize(lambda w: 0.0)
    keras_style = {"module": "keras.regularizers", "registered_name": None, **cfg}
    assert R.get(keras_style).get_config() == reg.get_config()


def test_callables():
    with pytest.raises(TypeError, match="gradient"):
        R.get(lambda w: 0.01 * np.sum(w ** 2), argument="recurrent_regularizer")

    class WithGradient:
        def __call__(self, w):
            return float(np.sum(w))

        def gradient(self, w):
            return np.ones_like(w)

    obj = WithGradient()
    assert R.get(obj) is obj


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_factors_raise_value_error(bad):
    with pytest.raises(ValueError, match="l1"):
        R.L1(bad)
    with pytest.raises(ValueError, match="l2"):
        R.L1L2(l1=0.0, l2=bad)
    with pytest.raises(ValueError, match="bias_regularizer.*l2"):
        R.get({"class_name": "L2", "config": {"l2": bad}}, argument="bias_regularizer")


def test_type_errors_and_unknown_names():
    with pytest.raises(TypeError, match="l1"):
        R.L1("0.1")
    with pytest.raises(TypeError, match="kernel_regularizer"):
        R.get(0.01)
    with pytest.raises(TypeError, match="kernel_regularizer"):
        R.get({"class_name": "L2", "config": {"factor": 0.1}})
    with pytest.raises(ValueError) as err:
        R.get("l3", argument="activity_regularizer")
    msg = str(err.value)
    assert "activity_regularizer" in msg and "'l3'" in msg and "l1_l2" in msg
    with pytest.raises(ValueError, match="kernel_regularizer"):
        R.get({"class_name": "Orthogonal", "config": {}})


def test_none_means_default_like_keras():
    assert R.L1(None).l1 == 0.01 and R.L2(None).l2 == 0.01
    assert R.L1L2(None, None).get_config() == {"l1": 0.0, "l2": 0.0}


# ------------------------------------------------------------------ Keras 3 peers


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


@pytest.mark.peers
@pytest.mark.parametrize("cls,kwargs", [("L1", {"l1": 0.3}), ("L2", {"l2": 0.7}),
                                        ("L1L2", {"l1": 0.3, "l2": 0.7})])
def test_values_and_configs_match_keras(keras, cls, kwargs):
    ours = getattr(R, cls)(**kwargs)
    theirs = getattr(keras.regularizers, cls)(**kwargs)
    w = np.random.default_rng(1).standard_normal((13, 17))
    value = float(keras.ops.convert_to_numpy(theirs(keras.ops.convert_to_tensor(w))))
    # Keras keeps L1's factor as a float32 tensor, hence the 1e-6 tolerance.
    assert ours(w) == pytest.approx(value, rel=1e-6)
    back = keras.regularizers.get(R.serialize(ours))
    assert type(back).__name__ == cls
    for k, v in ours.get_config().items():
        assert back.get_config()[k] == pytest.approx(v, rel=1e-6)
    assert R.get(keras.regularizers.serialize(theirs)).get_config() == pytest.approx(
        ours.get_config(), rel=1e-6)


@pytest.mark.peers
def test_keras_gradient_agrees(keras):
    torch = pytest.importorskip("torch")
    if keras.backend.backend() != "torch":
        pytest.skip("needs the torch backend of Keras for autograd")
    w = np.random.default_rng(2).standard_normal((5, 6))
    w[np.abs(w) < 1e-3] = 0.5
    for ours, theirs in ((R.L1(0.3), keras.regularizers.L1(0.3)),
                         (R.L1L2(0.3, 0.7), keras.regularizers.L1L2(0.3, 0.7))):
        t = torch.tensor(w, requires_grad=True)
        theirs(t).backward()
        np.testing.assert_allclose(ours.gradient(w), t.grad.numpy(), rtol=1e-6)
    assert math.isclose(R.L2(0.7).gradient(np.ones(1))[0], 1.4)
