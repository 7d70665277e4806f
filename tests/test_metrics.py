"""Metrics: hand-computed values, accumulation, Keras 3 "accuracy" resolution, and Keras 3
itself where installed."""
from __future__ import annotations

import os

import numpy as np
import pytest

from fastlstm import metrics as M

RNG = np.random.default_rng(7)


def test_mean_unweighted_weighted_and_reset():
    m = M.Mean()
    m.update_state([1.0, 3.0, 5.0, 7.0])
    assert m.result() == 4.0
    m.reset_state()
    m.update_state([1.0, 3.0, 5.0, 7.0], sample_weight=[1, 1, 0, 0])
    assert m.result() == 2.0
    m.update_state([10.0], sample_weight=[2.0])  # accumulates: (1 + 3 + 20) / 4
    assert m.result() == pytest.approx(6.0)
    m.reset_state()
    assert m.result() == 0.0  # divide_no_nan


def test_mean_tracks_a_batch_size_weighted_loss():
    # How a training loop tracks the loss: scalar batch loss weighted by batch size.
    m = M.Mean(name="loss")
    m.update_state(2.0, sample_weight=3)
    m.update_state(4.0, sample_weight=1)
    assert m.result() == pytest.approx(2.5)
    m.reset_state()
    m.update_state(2.0)
    m.update_state(4.0)
    assert m.result() == pytest.approx(3.0)


def test_mean_reduces_per_sample_like_keras():
    values = np.arange(12.0).reshape(3, 4)
    m = M.Mean()
    m.update_state(values)  # per-sample means 1.5, 5.5, 9.5
    assert m.result() == pytest.approx(5.5)
    w = np.array([1.0, 0.0, 3.0])
    m.reset_state()
    m.update_state(values, sample_weight=w)
    assert m.result() == pytest.approx((1.5 + 3 * 9.5) / 4)
    w2 = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1.0]])
    m.reset_state()
    m.update_state(values, sample_weight=w2)
    # per sample: mean(v*w) over axis 1, count += mean(w) over axis 1
    total = (0 + 1) / 4 + 0 + (8 + 9 + 10 + 11) / 4
    count = 0.5 + 0 + 1
    assert m.result() == pytest.approx(total / count)


def test_regression_metrics_known_values():
    yt = np.array([[0.0, 1.0], [0.0, 0.0]])
    yp = np.array([[1.0, 1.0], [0.0, 0.0]])
    for cls, expected, weighted in [(M.MeanSquaredError, 0.25, 0.5),
                                    (M.MeanAbsoluteError, 0.25, 0.5),
                                    (M.RootMeanSquaredError, 0.5, np.sqrt(0.5))]:
        m = cls()
        m.update_state(yt, yp)
        assert m.result() == pytest.approx(expected), cls
        m.reset_state()
        m.update_state(yt, yp, sample_weight=[1, 0])
        assert m.result() == pytest.approx(weighted), cls
    m = M.RootMeanSquaredError()
    m.update_state([[1.0], [2.0]], [[1.0], [0.0]])
    m.update_state([[0.0]], [[3.0]])
    assert m.result() == pytest.approx(np.sqrt((0 + 4 + 9) / 3))
    assert M.MeanSquaredError().name == "mean_squared_error"
    assert M.RootMeanSquaredError().direction == "down"


def test_accuracies_known_values():
    m = M.BinaryAccuracy()
    m.update_state([[1], [1], [0], [0]], [[0.98], [1], [0], [0.6]])
    assert m.result() == pytest.approx(0.75)
    m.reset_state()
    m.update_state([[1], [1], [0], [0]], [[0.98], [1], [0], [0.6]], sample_weight=[1, 0, 0, 1])
    assert m.result() == pytest.approx(0.5)
    m = M.BinaryAccuracy(threshold=0.99)  # strictly greater than the threshold
    m.update_state([1.0, 1.0, 0.0], [[0.995], [0.99], [0.5]])
    assert m.result() == pytest.approx(2 / 3)

    m = M.CategoricalAccuracy()
    m.update_state([[0, 0, 1], [0, 1, 0]], [[0.1, 0.9, 0.8], [0.05, 0.95, 0]])
    assert m.result() == pytest.approx(0.5)
    m.reset_state()
    m.update_state([[0, 0, 1], [0, 1, 0]], [[0.1, 0.9, 0.8], [0.05, 0.95, 0]],
                   sample_weight=[0.7, 0.3])
    assert m.result() == pytest.approx(0.3)

    m = M.SparseCategoricalAccuracy()
    m.update_state([[2], [1]], [[0.1, 0.6, 0.3], [0.05, 0.95, 0]])
    assert m.result() == pytest.approx(0.5)
    m.update_state(np.array([0.0, 2.0]), [[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]])
    assert m.result() == pytest.approx(0.75)


def test_accuracy_over_timesteps_averages_per_sample():
    yt = np.array([[1, 2], [0, 0]])               # (N, T) sparse labels
    yp = np.eye(3)[np.array([[1, 2], [1, 1]])]    # (N, T, C)
    m = M.SparseCategoricalAccuracy()
    m.update_state(yt, yp, sample_weight=[1.0, 3.0])
    assert m.result() == pytest.approx((1 * 1.0 + 3 * 0.0) / 4)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        M.CategoricalAccuracy().update_state(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 2\)"):
        M.SparseCategoricalAccuracy().update_state(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="y_pred"):
        M.MeanAbsoluteError().update_state(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="sample_weight"):
        M.Mean().update_state(np.zeros((4, 2)), sample_weight=np.ones(3))


@pytest.mark.parametrize("true_shape, pred_shape, expected", [
    ((8, 1), (8, 1), M.BinaryAccuracy),              # one sigmoid output
    ((8,), (8, 1), M.BinaryAccuracy),
    ((8, 5), (8, 5), M.CategoricalAccuracy),         # one-hot targets
    ((8,), (8, 5), M.SparseCategoricalAccuracy),     # integer labels
    ((8, 1), (8, 5), M.SparseCategoricalAccuracy),
    ((8, 10), (8, 10, 5), M.SparseCategoricalAccuracy),  # per-timestep labels
    ((8, 3), (8, 3), M.CategoricalAccuracy),         # multi-label sigmoid: Keras 3 says so
])
def test_accuracy_resolution_follows_keras3_shapes(true_shape, pred_shape, expected):
    metric = M.get("accuracy", y_true=true_shape, y_pred=pred_shape)
    assert type(metric) is expected and metric.name == "accuracy"
    metric = M.get("acc", loss="binary_crossentropy", y_true=np.zeros(true_shape),
                   y_pred=np.zeros(pred_shape))
    assert type(metric) is expected and metric.name == "acc"
    auto = M.get("accuracy", loss="mse")
    assert isinstance(auto, M.AutoAccuracy) and auto.resolved is None
    yt = RNG.integers(0, 2, size=true_shape)
    yp = RNG.uniform(size=pred_shape)
    auto.update_state(yt, yp)
    assert type(auto.resolved) is expected
    direct = expected()
    direct.update_state(yt, yp)
    assert auto.result() == direct.result()


def test_auto_accuracy_value_and_reset():
    auto = M.get("accuracy")
    auto.update_state(np.array([0, 2, 1]), np.eye(3)[[0, 2, 2]])
    assert auto.result() == pytest.approx(2 / 3)
    auto.reset_state()
    assert auto.result() == 0.0


def test_get_names_and_errors():
    m = M.get("mae")
    assert isinstance(m, M.MeanAbsoluteError) and m.name == "mae"
    assert isinstance(M.get("mean_squared_error"), M.MeanSquaredError)
    assert isinstance(M.get("rmse"), M.RootMeanSquaredError)
    assert isinstance(M.get("binary_accuracy"), M.BinaryAccuracy)
    obj = M.BinaryAccuracy(threshold=0.2)
    assert M.get(obj) is obj
    again = M.get(M.serialize(obj))
    assert isinstance(again, M.BinaryAccuracy) and again.threshold == 0.2
    with pytest.raises(ValueError, match=r"`metrics`.*'maee'.*'mae'"):
        M.get("maee")
    with pytest.raises(TypeError, match="metrics"):
        M.get(3)


# ------------------------------------------------------------------------------ Keras 3


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras/torch
def test_against_keras_metrics():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    n, c = 10, 4
    reg_t, reg_p = RNG.normal(size=(n, 3)), RNG.normal(size=(n, 3))
    bin_t = (RNG.uniform(size=(n, 1)) > 0.5).astype(np.float32)
    bin_p = RNG.uniform(size=(n, 1)).astype(np.float32)
    labels = RNG.integers(0, c, size=n)
    probs = RNG.dirichlet(np.ones(c), size=n).astype(np.float32)
    onehot = np.eye(c, dtype=np.float32)[labels]
    onehot[:3] = np.eye(c, dtype=np.float32)[np.argmax(probs[:3], -1)]  # some hits
    sw = RNG.uniform(0, 2, size=n).astype(np.float32)
    cases = [
        (M.MeanSquaredError(), keras.metrics.MeanSquaredError(), reg_t, reg_p),
        (M.MeanAbsoluteError(), keras.metrics.MeanAbsoluteError(), reg_t, reg_p),
        (M.RootMeanSquaredError(), keras.metrics.RootMeanSquaredError(), reg_t, reg_p),
        (M.BinaryAccuracy(), keras.metrics.BinaryAccuracy(), bin_t, bin_p),
        (M.BinaryAccuracy(threshold=0.3), keras.metrics.BinaryAccuracy(threshold=0.3),
         bin_t[:, 0], bin_p),
        (M.CategoricalAccuracy(), keras.metrics.CategoricalAccuracy(), onehot, probs),
        (M.SparseCategoricalAccuracy(), keras.metrics.SparseCategoricalAccuracy(), labels, probs),
        (M.SparseCategoricalAccuracy(), keras.metrics.SparseCategoricalAccuracy(),
         labels[:, None], probs),
    ]
    for ours, theirs, yt, yp in cases:
        for weights in (None, sw):
            ours.reset_state()
            theirs.reset_state()
            for sl in (slice(0, 4), slice(4, n)):  # two batches accumulate
                w = None if weights is None else weights[sl]
                ours.update_state(yt[sl], yp[sl], sample_weight=w)
                theirs.update_state(yt[sl], yp[sl], sample_weight=w)
            expected = float(keras.ops.convert_to_numpy(theirs.result()))
            assert ours.result() == pytest.approx(expected, rel=1e-6, abs=1e-7), type(ours)
    ours, theirs = M.Mean(), keras.metrics.Mean()
    for value, count in [(0.5, 32), (0.25, 8)]:
        ours.update_state(value, sample_weight=count)
        theirs.update_state(value, sample_weight=count)
    assert ours.result() == pytest.approx(float(keras.ops.convert_to_numpy(theirs.result())))
