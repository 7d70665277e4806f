"""Losses: values against the written-out Keras formulas, gradients against central finite
differences (float64), Keras 3 itself where installed."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fastlstm import losses as L

RNG = np.random.default_rng(1234)
EPS = 1e-7


def fd_grad(f, x, h=1e-6):
    """Central finite differences of the scalar f at x (float64)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def weighted_mean(per_sample, sw):
    """Keras 'sum_over_batch_size': sum(values * w) / number of values."""
    if sw is None:
        return per_sample.sum() / per_sample.size
    w = np.broadcast_to(np.reshape(sw, np.shape(sw) + (1,) * (per_sample.ndim - np.ndim(sw))),
                        per_sample.shape)
    return (per_sample * w).sum() / per_sample.size


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# Each case: (loss object, y_true, y_pred, reference per-sample values written out here)
def make_cases(shape=(6, 4)):
    n_cls = shape[-1]
    yt = RNG.normal(size=shape)
    yp = RNG.normal(size=shape)
    probs = RNG.uniform(0.05, 0.95, size=shape)
    binary = (RNG.uniform(size=shape) > 0.5).astype(float)
    logits = RNG.normal(scale=2.0, size=shape)
    onehot = np.eye(n_cls)[RNG.integers(0, n_cls, size=shape[:-1])]
    soft = softmax(RNG.normal(size=shape))
    labels = RNG.integers(0, n_cls, size=shape[:-1])
    # well away from each Huber kink so finite differences stay on one side
    huber_pred = yt + RNG.choice([-1, 1], size=shape) * RNG.uniform(0.1, 2.0, size=shape)
    huber_pred[np.abs(np.abs(huber_pred - yt) - 0.7) < 0.05] += 0.2

    def bce(t, p):
        p = np.clip(p, EPS, 1 - EPS)
        return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(-1)

    def huber_ref(t, p, d):
        e = np.abs(p - t)
        return np.where(e <= d, 0.5 * e ** 2, d * e - 0.5 * d ** 2).mean(-1)

    ls = 0.2
    return [
        ("mse", L.MeanSquaredError(), yt, yp, ((yp - yt) ** 2).mean(-1)),
        ("mae", L.MeanAbsoluteError(), yt, yp, np.abs(yp - yt).mean(-1)),
        ("huber", L.Huber(delta=0.7), yt, huber_pred, huber_ref(yt, huber_pred, 0.7)),
        ("bce", L.BinaryCrossentropy(), binary, probs, bce(binary, probs)),
        ("bce_soft_ls", L.BinaryCrossentropy(label_smoothing=ls), probs[::-1], probs,
         bce(probs[::-1] * (1 - ls) + 0.5 * ls, probs)),
        ("bce_logits", L.BinaryCrossentropy(from_logits=True), binary, logits,
         bce(binary, sigmoid(logits))),
        ("bce_logits_ls", L.BinaryCrossentropy(from_logits=True, label_smoothing=ls), binary,
         logits, bce(binary * (1 - ls) + 0.5 * ls, sigmoid(logits))),
        ("cce", L.CategoricalCrossentropy(), onehot, probs,
         -(onehot * np.log(probs / probs.sum(-1, keepdims=True))).sum(-1)),
        ("cce_soft_ls", L.CategoricalCrossentropy(label_smoothing=ls), soft, probs,
         -((soft * (1 - ls) + ls / n_cls) * np.log(probs / probs.sum(-1, keepdims=True))).sum(-1)),
        ("cce_logits", L.CategoricalCrossentropy(from_logits=True), soft, logits,
         -(soft * np.log(softmax(logits))).sum(-1)),
        ("cce_logits_ls", L.CategoricalCrossentropy(from_logits=True, label_smoothing=ls),
         onehot, logits, -((onehot * (1 - ls) + ls / n_cls) * np.log(softmax(logits))).sum(-1)),
        ("scce", L.SparseCategoricalCrossentropy(), labels, probs,
         -np.log(np.take_along_axis(probs / probs.sum(-1, keepdims=True),
                                    labels[..., None], -1)[..., 0])),
        ("scce_logits", L.SparseCategoricalCrossentropy(from_logits=True), labels, logits,
         -np.log(np.take_along_axis(softmax(logits), labels[..., None], -1)[..., 0])),
    ]


CASES_2D = make_cases((6, 4))
CASES_3D = make_cases((3, 5, 4))  # (batch, timesteps, features): return_sequences outputs
WEIGHTS_2D = [None, RNG.uniform(0, 2, size=6), RNG.uniform(0, 2, size=(6, 1))]
WEIGHTS_3D = [None, RNG.uniform(0, 2, size=3), RNG.uniform(0, 2, size=(3, 5))]


@pytest.mark.parametrize("sw_index", range(3))
@pytest.mark.parametrize("case", CASES_2D, ids=[c[0] for c in CASES_2D])
def test_value_and_grad_float64_2d(case, sw_index):
    _, loss, yt, yp, per_sample = case
    sw = WEIGHTS_2D[sw_index]
    expected = weighted_mean(per_sample, None if sw is None else np.reshape(sw, (-1,)))
    value, grad = loss.value_and_grad(yt, yp, sample_weight=sw)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-14)
    assert loss(yt, yp, sample_weight=sw) == pytest.approx(value, rel=1e-14)
    assert grad.shape == yp.shape and grad.dtype == np.float64
    num = fd_grad(lambda x: loss(yt, x, sample_weight=sw), yp)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sw_index", range(3))
@pytest.mark.parametrize("case", CASES_3D, ids=[c[0] for c in CASES_3D])
def test_value_and_grad_float64_per_timestep(case, sw_index):
    _, loss, yt, yp, per_sample = case
    sw = WEIGHTS_3D[sw_index]
    value, grad = loss.value_and_grad(yt, yp, sample_weight=sw)
    # per-sample weights broadcast over timesteps; divisor = batch * timesteps
    assert value == pytest.approx(weighted_mean(per_sample, sw), rel=1e-12, abs=1e-14)
    num = fd_grad(lambda x: loss(yt, x, sample_weight=sw), yp)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", CASES_2D, ids=[c[0] for c in CASES_2D])
def test_float32_matches_float64(case):
    _, loss, yt, yp, _ = case
    sw = WEIGHTS_2D[1]
    v64, g64 = loss.value_and_grad(yt, yp, sw)
    yt32 = yt if yt.dtype.kind == "i" else yt.astype(np.float32)
    v32, g32 = loss.value_and_grad(yt32, yp.astype(np.float32), sw.astype(np.float32))
    assert g32.dtype == np.float32
    assert v32 == pytest.approx(v64, rel=1e-6)
    np.testing.assert_allclose(g32, g64, rtol=2e-5, atol=1e-6 * np.abs(g64).max())


def test_zero_weights_still_count_in_the_divisor():
    yt, yp = np.zeros((4, 1)), np.array([[1.0], [2.0], [3.0], [4.0]])
    sw = np.array([1.0, 0.0, 0.0, 2.0])
    assert L.MeanSquaredError()(yt, yp, sw) == pytest.approx((1 + 2 * 16) / 4)
    v, g = L.MeanSquaredError().value_and_grad(yt, yp, sw)
    np.testing.assert_allclose(g[:, 0], [2 * 1 * 1 / 4, 0, 0, 2 * 4 * 2 / 4])


def test_other_reductions():
    yt, yp = np.zeros((3, 2)), np.array([[1.0, 1.0], [2.0, 2.0], [0.0, 2.0]])
    per = np.array([1.0, 4.0, 2.0])
    sw = np.array([1.0, 0.5, 0.0])
    assert L.MeanSquaredError(reduction="sum")(yt, yp, sw) == pytest.approx(1 + 2)
    assert L.MeanSquaredError(reduction="mean_with_sample_weight")(yt, yp, sw) == \
        pytest.approx(3 / 1.5)
    np.testing.assert_allclose(L.MeanSquaredError(reduction=None)(yt, yp), per)
    np.testing.assert_allclose(L.MeanSquaredError(reduction="none")(yt, yp, sw), per * sw)
    v, g = L.MeanSquaredError(reduction="sum").value_and_grad(yt, yp)
    assert v == pytest.approx(7.0)
    np.testing.assert_allclose(g, yp)  # d/dp sum_i mean_j p^2 = 2p/2
    with pytest.raises(ValueError, match="reduction"):
        L.MeanSquaredError(reduction=None).value_and_grad(yt, yp)
    with pytest.raises(ValueError, match="reduction"):
        L.MeanSquaredError(reduction="avg")


def test_probability_clipping_matches_keras_epsilon():
    yt = np.array([[1.0], [0.0], [1.0]])
    yp = np.array([[0.0], [1.0], [1.0]])
    v, g = L.BinaryCrossentropy().value_and_grad(yt, yp)
    # p clipped to [1e-7, 1 - 1e-7]: two maximal errors, one perfect prediction
    hi = 1 - EPS
    expected = (-np.log(EPS) - np.log(1 - hi) - np.log(hi)) / 3
    assert v == pytest.approx(expected, rel=1e-14)
    np.testing.assert_array_equal(g[:2], 0.0)  # clipped: no gradient
    onehot = np.array([[0.0, 1.0, 0.0]])
    v = L.CategoricalCrossentropy()(onehot, np.array([[0.5, 0.0, 0.5]]))
    assert v == pytest.approx(-np.log(EPS), rel=1e-12)
    v = L.SparseCategoricalCrossentropy()([1], np.array([[0.5, 0.0, 0.5]]))
    assert v == pytest.approx(-np.log(EPS), rel=1e-12)


def test_categorical_renormalises_probabilities():
    onehot = np.array([[0.0, 1.0]])
    assert L.CategoricalCrossentropy()(onehot, np.array([[2.0, 2.0]])) == \
        pytest.approx(np.log(2.0), rel=1e-12)
    assert L.SparseCategoricalCrossentropy()([1], np.array([[2.0, 2.0]])) == \
        pytest.approx(np.log(2.0), rel=1e-12)


def test_logits_are_stable_for_extreme_values():
    x = np.array([[1000.0, -1000.0]])
    v, g = L.BinaryCrossentropy(from_logits=True).value_and_grad(np.array([[0.0, 1.0]]), x)
    assert v == pytest.approx(1000.0)
    np.testing.assert_allclose(g, [[0.5, -0.5]])
    v, g = L.CategoricalCrossentropy(from_logits=True).value_and_grad(np.array([[0.0, 1.0]]), x)
    assert v == pytest.approx(2000.0)
    np.testing.assert_allclose(g, [[1.0, -1.0]])
    v = L.SparseCategoricalCrossentropy(from_logits=True)([1], x.astype(np.float32))
    assert v == pytest.approx(2000.0)


def test_rank_reconciliation_keeps_gradient_shape():
    yt = np.array([0.0, 1.0, 2.0])
    yp = np.array([[0.5], [1.0], [1.0]])
    v, g = L.MeanSquaredError().value_and_grad(yt, yp)
    assert v == pytest.approx((0.25 + 0 + 1) / 3)
    assert g.shape == (3, 1)
    v, g = L.MeanSquaredError().value_and_grad(yt[:, None], yp[:, 0])
    assert g.shape == (3,)
    np.testing.assert_allclose(g, 2 * (yp[:, 0] - yt) / 3)
    # sparse labels as (N,) and (N, 1), float-typed integers accepted
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    a = L.SparseCategoricalCrossentropy()(np.array([1, 0]), probs)
    b = L.SparseCategoricalCrossentropy()(np.array([[1.0], [0.0]]), probs)
    assert a == b == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"y_true.shape=\(4, 2\).*y_pred.shape=\(4, 3\)"):
        L.MeanSquaredError()(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        L.CategoricalCrossentropy()(np.zeros((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"y_true.shape=\(4, 2\)"):
        L.SparseCategoricalCrossentropy()(np.zeros((4, 2), int), np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        L.SparseCategoricalCrossentropy()(np.array([0, 3]), np.ones((2, 3)))
    with pytest.raises(ValueError, match="integer"):
        L.SparseCategoricalCrossentropy()(np.array([0.5, 1.0]), np.ones((2, 3)))
    with pytest.raises(ValueError, match="sample_weight"):
        L.MeanSquaredError()(np.zeros((4, 2)), np.zeros((4, 2)), sample_weight=np.ones(3))


def test_hyperparameter_validation():
    with pytest.raises(ValueError, match="delta"):
        L.Huber(delta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        L.BinaryCrossentropy(label_smoothing=1.5)
    with pytest.raises(TypeError, match="from_logits"):
        L.CategoricalCrossentropy(from_logits="yes")


def test_get_and_config_round_trip():
    assert isinstance(L.get("mse"), L.MeanSquaredError)
    assert isinstance(L.get("mean_squared_error"), L.MeanSquaredError)
    assert isinstance(L.get("mae"), L.MeanAbsoluteError)
    assert isinstance(L.get("huber"), L.Huber)
    assert isinstance(L.get("binary_crossentropy"), L.BinaryCrossentropy)
    assert isinstance(L.get("CategoricalCrossentropy"), L.CategoricalCrossentropy)
    assert isinstance(L.get("sparse_categorical_crossentropy"), L.SparseCategoricalCrossentropy)
    obj = L.Huber(delta=2.5)
    assert L.get(obj) is obj
    assert L.get(None) is None
    for loss in (L.Huber(delta=2.5, name="h"), L.BinaryCrossentropy(True, 0.1),
                 L.SparseCategoricalCrossentropy(from_logits=True)):
        blob = json.loads(json.dumps(L.serialize(loss)))
        again = L.get(blob)
        assert type(again) is type(loss) and again.get_config() == loss.get_config()
    assert L.get({"class_name": "Huber", "config": {"delta": 3.0}}).delta == 3.0
    with pytest.raises(ValueError, match=r"`loss`.*'msee'.*mean_squared_error"):
        L.get("msee")
    with pytest.raises(TypeError, match="loss"):
        L.get(lambda yt, yp: 0.0)


# ------------------------------------------------------------------------------ Keras 3


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    if keras.backend.backend() != "torch":
        pytest.skip("these comparisons use Keras' torch backend for autograd")
    return keras, torch


def _keras_value_and_grad(keras_loss, torch, yt, yp, sw):
    pred = torch.tensor(yp, requires_grad=True)
    value = keras_loss(torch.tensor(yt), pred,
                       sample_weight=None if sw is None else torch.tensor(sw))
    value.backward()
    return float(value.detach()), pred.grad.numpy()


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras/torch
@pytest.mark.parametrize("with_weights", [False, True])
def test_against_keras(with_weights):
    keras, torch = _keras()
    pairs = {
        "mse": keras.losses.MeanSquaredError(),
        "mae": keras.losses.MeanAbsoluteError(),
        "huber": keras.losses.Huber(delta=0.7),
        "bce": keras.losses.BinaryCrossentropy(),
        "bce_soft_ls": keras.losses.BinaryCrossentropy(label_smoothing=0.2),
        "bce_logits": keras.losses.BinaryCrossentropy(from_logits=True),
        "bce_logits_ls": keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2),
        "cce": keras.losses.CategoricalCrossentropy(),
        "cce_soft_ls": keras.losses.CategoricalCrossentropy(label_smoothing=0.2),
        "cce_logits": keras.losses.CategoricalCrossentropy(from_logits=True),
        "cce_logits_ls": keras.losses.CategoricalCrossentropy(from_logits=True,
                                                              label_smoothing=0.2),
        "scce": keras.losses.SparseCategoricalCrossentropy(),
        "scce_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }
    sw = WEIGHTS_2D[1].astype(np.float32) if with_weights else None
    for name, ours, yt, yp, _ in CASES_2D:
        yt32 = yt if yt.dtype.kind == "i" else yt.astype(np.float32)
        yp32 = yp.astype(np.float32)
        v, g = ours.value_and_grad(yt32, yp32, sw)
        kv, kg = _keras_value_and_grad(pairs[name], torch, yt32, yp32, sw)
        assert v == pytest.approx(kv, rel=1e-6), name
        np.testing.assert_allclose(g, kg, rtol=1e-5, atol=1e-6 * np.abs(kg).max(), err_msg=name)


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras/torch
def test_against_keras_clipped_and_sparse_column_labels():
    keras, torch = _keras()
    yt = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    yp = np.array([[0.0, 1.0], [0.3, 0.7]], np.float32)  # saturated probabilities
    for ours, theirs in [(L.BinaryCrossentropy(), keras.losses.BinaryCrossentropy()),
                         (L.CategoricalCrossentropy(), keras.losses.CategoricalCrossentropy())]:
        v, g = ours.value_and_grad(yt, yp)
        kv, kg = _keras_value_and_grad(theirs, torch, yt, yp, None)
        assert v == pytest.approx(kv, rel=1e-6)
        np.testing.assert_allclose(g, kg, rtol=1e-5, atol=1e-6)
    labels = np.array([[1], [0]])
    v, g = L.SparseCategoricalCrossentropy().value_and_grad(labels, yp)
    kv, kg = _keras_value_and_grad(keras.losses.SparseCategoricalCrossentropy(), torch, labels,
                                   yp, None)
    assert v == pytest.approx(kv, rel=1e-6)
    np.testing.assert_allclose(g, kg, rtol=1e-5, atol=1e-6)
