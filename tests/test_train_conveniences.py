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
        _model().fit(x, y, batch_size=8, verbose=0, shuffle=False,
                     callbacks=[fl.callbacks.TerminateOnNaN(raise_error=True)])
    x, y = _data()
    history = _model().fit(x, y, batch_size=8, epochs=2, verbose=0,
                           callbacks=[fl.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 2
    with pytest.raises(TypeError, match="raise_error"):
        fl.callbacks.TerminateOnNaN(raise_error="yes")


# -------------------------------------------------------------- metrics and losses as functions
def max_abs_error(y_true, y_pred):                 # per sample
    return np.max(np.abs(y_true - y_pred), axis=-1)


def batch_bias(y_true, y_pred):                    # one scalar per batch
    return float(np.mean(y_pred - y_true))


def test_metric_functions_named_and_computed_as_keras_mean_metric_wrapper():
    x, y = _data()
    model = _model(metrics=["mae", max_abs_error, batch_bias, lambda t, p: np.abs(t - p)[:, 0]])
    assert model.metrics_names == ["loss", "mae", "max_abs_error", "batch_bias", "lambda"]
    logs = model.evaluate(x, y, batch_size=10, return_dict=True)
    pred = model.predict(x)
    # per-sample values: the mean over all samples; scalars: the mean over the batches
    np.testing.assert_allclose(logs["max_abs_error"], np.mean(np.abs(y - pred)), rtol=1e-5)
    np.testing.assert_allclose(logs["lambda"], logs["mae"], rtol=1e-6)
    batches = [np.mean(pred[i:i + 10] - y[i:i + 10]) for i in (0, 10, 20)]
    np.testing.assert_allclose(logs["batch_bias"], np.mean(batches), rtol=1e-5)
    history = model.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, verbose=0)
    assert {"max_abs_error", "val_max_abs_error", "batch_bias", "lambda"} <= set(history.history)
    # with sample weights, as every metric
    w = np.arange(len(x), dtype=np.float32)
    logs = model.evaluate(x, y, sample_weight=w, batch_size=24, return_dict=True)
    pred = model.predict(x)
    np.testing.assert_allclose(logs["max_abs_error"],
                               np.sum(w * np.abs(y - pred)[:, 0]) / w.sum(), rtol=1e-5)


def test_metric_function_errors_and_saving(tmp_path):
    with pytest.raises(ValueError, match="used twice"):
        _model(metrics=[max_abs_error, max_abs_error])
    model = _model(metrics=[lambda t, p: "text"])
    x, y = _data()
    with pytest.raises(TypeError, match="metric 'lambda'.*numeric"):
        model.evaluate(x, y)
    model = _model(metrics=[max_abs_error])
    model.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="max_abs_error.*compile=False"):
        fl.load_model(tmp_path / "m.npz")
    loaded = fl.load_model(tmp_path / "m.npz", compile=False)
    loaded.compile("adam", "mse", metrics=[max_abs_error])
    np.testing.assert_allclose(loaded.evaluate(x, y), model.evaluate(x, y), rtol=1e-6)


def log_cosh(y_true, y_pred):
    return np.mean(np.log(np.cosh(y_pred - y_true)), axis=-1)


def log_cosh_gradient(y_true, y_pred):
    return np.tanh(y_pred - y_true) / y_pred.shape[-1]


def test_loss_function_needs_its_gradient():
    with pytest.raises(TypeError, match=r"'log_cosh' is a plain function.*gradient.*"
                                        r"LossFunctionWrapper"):
        fl.Sequential([fl.layers.Dense(1)]).compile("sgd", loss=log_cosh)
    # fastlstm's own loss functions are their classes
    model = fl.Sequential([fl.layers.Dense(1)])
    model.compile("sgd", loss=fl.losses.mean_squared_error)
    assert isinstance(model.loss, fl.losses.MeanSquaredError)


@pytest.mark.parametrize("how", ["wrapper", "attribute"])
def test_loss_function_with_gradient_trains_and_matches_finite_differences(how):
    if how == "wrapper":
        loss = fl.losses.LossFunctionWrapper(log_cosh, log_cosh_gradient)
    else:
        def loss(y_true, y_pred):
            return log_cosh(y_true, y_pred)
        loss.gradient = log_cosh_gradient
    rng = np.random.default_rng(1)
    yt, yp = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    w = rng.random(6)
    model = fl.Sequential([fl.layers.Dense(3)])
    model.compile("sgd", loss=loss)
    value, grad = model.loss.value_and_grad(yt, yp, w)
    assert model.loss.name == ("log_cosh" if how == "wrapper" else "loss")
    eps = 1e-6
    num = np.zeros_like(yp)
    for idx in np.ndindex(yp.shape):
        d = np.zeros_like(yp)
        d[idx] = eps
        num[idx] = (model.loss(yt, yp + d, w) - model.loss(yt, yp - d, w)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(value, np.sum(w * log_cosh(yt, yp)) / 6)
    x, y = _data()
    ours = _model(loss=loss, metrics=[])
    history = ours.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_loss_function_wrapper_checks_what_the_functions_return():
    bad_values = fl.losses.LossFunctionWrapper(lambda t, p: np.zeros(3), log_cosh_gradient)
    with pytest.raises(ValueError, match=r"fn\(y_true, y_pred\) must return numbers of shape \(6,\)"):
        bad_values(np.zeros((6, 2)), np.zeros((6, 2)))
    bad_grad = fl.losses.LossFunctionWrapper(log_cosh, lambda t, p: np.zeros(6))
    with pytest.raises(ValueError, match=r"gradient.*shape \(6, 2\).*\(6,\)"):
        bad_grad.value_and_grad(np.zeros((6, 2)), np.zeros((6, 2)))
    with pytest.raises(TypeError, match="gradient"):
        fl.losses.LossFunctionWrapper(log_cosh, None)
