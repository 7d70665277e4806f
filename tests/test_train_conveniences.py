"""Keras 3's training conveniences: fit/evaluate/predict from generators and PyDatasets,
class_weight, metrics and losses given as functions, TerminateOnNaN."""
import math

import numpy as np
import pytest

import fastlstm as fl


def _data(n=24, T=5, F=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, T, F)).astype(np.float32),
            rng.standard_normal((n, 1)).astype(np.float32))


def _model(seed=0, metrics=("mae",), loss="mse", out=1, activation=None):
    model = fl.Sequential([fl.layers.LSTM(4, seed=seed), fl.layers.Dense(out, activation=activation)])
    model.build((None, 5, 3))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.3
                       for w in model.get_weights()])
    model.compile(fl.optimizers.Adam(0.01), loss, metrics=list(metrics))
    return model


# -------------------------------------------------------------------------- TerminateOnNaN
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_stops_after_the_bad_batch(capsys):
    x, y = _data()
    y[8:16] = np.nan                                   # batch 1 of 3 (batch_size 8)
    model = _model()
    seen = []
    count = fl.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))
    history = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
                        callbacks=[fl.callbacks.TerminateOnNaN(), count])
    assert seen == [0, 1] and model.stop_training
    assert len(history.history["loss"]) == 1 and math.isnan(history.history["loss"][0])
    assert "Batch 1: Invalid loss, terminating training" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_inf_raise_error_and_finite_losses():
    x, y = _data()
    y[0] = np.inf
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 0"):
        _model().fit(x, y, batch_size=8, verbose=0,
                     callbacks=[fl.callbacks.TerminateOnNaN(raise_error=True)])
    x, y = _data()
    history = _model().fit(x, y, batch_size=8, epochs=2, verbose=0,
                           callbacks=[fl.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 2
    with pytest.raises(TypeError, match="raise_error"):
        fl.callbacks.TerminateOnNaN(raise_error="yes")
