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
    # as Keras 3: metrics ignore sample weights, weighted_metrics use them
    model.compile(model.optimizer, "mse", metrics=[max_abs_error],
                  weighted_metrics=[max_abs_error, "mae"])
    assert model.metrics_names == ["loss", "max_abs_error", "weighted_max_abs_error", "mae"]
    w = np.arange(len(x), dtype=np.float32)
    logs = model.evaluate(x, y, sample_weight=w, batch_size=24, return_dict=True)
    pred = model.predict(x)
    np.testing.assert_allclose(logs["max_abs_error"], np.mean(np.abs(y - pred)), rtol=1e-5)
    np.testing.assert_allclose(logs["weighted_max_abs_error"],
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


# ------------------------------------------------------------------ generators and PyDatasets
class Batches(fl.utils.PyDataset):
    def __init__(self, x, y, batch_size, sw=None):
        super().__init__()
        self.x, self.y, self.sw, self.batch_size = x, y, sw, batch_size
        self.epochs_ended = 0
        self.asked = []

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        self.asked.append(index)
        s = slice(index * self.batch_size, (index + 1) * self.batch_size)
        if self.sw is None:
            return self.x[s], self.y[s]
        return self.x[s], self.y[s], self.sw[s]

    def on_epoch_end(self):
        self.epochs_ended += 1


def looping(x, y, batch_size, sw=None):
    while True:
        for i in range(0, len(x), batch_size):
            s = slice(i, i + batch_size)
            yield (x[s], y[s]) if sw is None else (x[s], y[s], sw[s])


def _same_training(h1, m1, h2, m2):
    assert h1.history.keys() == h2.history.keys()
    for key in h1.history:
        np.testing.assert_array_equal(h1.history[key], h2.history[key], err_msg=key)
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("with_weights", [False, True])
def test_fit_from_a_generator_or_pydataset_equals_fit_on_arrays(with_weights):
    x, y = _data(n=20)
    vx, vy = _data(n=6, seed=1)
    sw = np.linspace(0.5, 2, 20).astype(np.float32) if with_weights else None
    ref = _model()
    h_ref = ref.fit(x, y, batch_size=8, epochs=3, shuffle=False, sample_weight=sw,
                    validation_data=(vx, vy), validation_batch_size=4, verbose=0)
    gen = _model()
    h_gen = gen.fit(looping(x, y, 8, sw), steps_per_epoch=3, epochs=3,
                    validation_data=looping(vx, vy, 4), validation_steps=2, verbose=0)
    _same_training(h_ref, ref, h_gen, gen)
    ds = Batches(x, y, 8, sw)
    pyd = _model()
    h_pyd = pyd.fit(ds, epochs=3, shuffle=False, validation_data=Batches(vx, vy, 4), verbose=0)
    _same_training(h_ref, ref, h_pyd, pyd)
    assert ds.epochs_ended == 3 and ds.asked == [0, 1, 2] * 3
    # evaluate and predict read them too
    expected = ref.evaluate(vx, vy, batch_size=4)
    np.testing.assert_array_equal(pyd.evaluate(Batches(vx, vy, 4)), expected)
    np.testing.assert_array_equal(gen.evaluate(looping(vx, vy, 4), steps=2), expected)
    np.testing.assert_array_equal(pyd.predict(Batches(vx, vy, 4)), ref.predict(vx, batch_size=4))
    np.testing.assert_array_equal(gen.predict((b[0] for b in looping(vx, vy, 4)), steps=2),
                                  ref.predict(vx))
    np.testing.assert_array_equal(ref.predict(vx[i:i + 4] for i in range(0, 6, 4)),
                                  ref.predict(vx))           # a finite generator of x alone


def test_generator_without_steps_runs_until_exhausted_one_epoch():
    x, y = _data(n=20)
    ref = _model()
    h_ref = ref.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    model = _model()
    finite = (b for b, _ in zip(looping(x, y, 8), range(3)))
    seen = []
    h = model.fit(finite, verbose=0, callbacks=[fl.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(b))])
    assert seen == [0, 1, 2]
    _same_training(h_ref, ref, h, model)
    with pytest.raises(ValueError, match=r"steps_per_epoch: a generator without "
                                         r"steps_per_epoch.*one epoch.*infinite.*epochs=2"):
        model.fit(looping(x, y, 8), epochs=2, verbose=0)
    with pytest.raises(ValueError, match="validation_steps: a validation generator"):
        model.fit(looping(x, y, 8), steps_per_epoch=2, epochs=2,
                  validation_data=looping(x, y, 8), verbose=0)


def test_generator_running_out_warns_and_stops():
    x, y = _data(n=16)
    model = _model()
    finite = (b for b, _ in zip(looping(x, y, 8), range(5)))
    with pytest.warns(UserWarning, match="ran out of data"):
        h = model.fit(finite, steps_per_epoch=2, epochs=4, verbose=0)
    assert len(h.history["loss"]) == 3          # 2 + 2 + 1 batches, then it stopped


def test_pydataset_shuffle_steps_and_epoch_hooks():
    x, y = _data(n=40)
    ds = Batches(x, y, 8)
    model = _model()
    np.random.seed(0)
    model.fit(ds, epochs=2, verbose=0)               # shuffle=True: a new batch order each epoch
    first, second = ds.asked[:5], ds.asked[5:]
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4] and first != [0, 1, 2, 3, 4]
    ds.asked.clear()
    model.fit(ds, steps_per_epoch=2, epochs=4, shuffle=False, verbose=0)
    assert ds.asked == [0, 1, 2, 3, 4, 0, 1]    # continues through the pass (the third epoch
    # is the pass's last batch only), then a new pass
    with pytest.raises(ValueError, match=r"steps_per_epoch: expected at most 5 batches"):
        model.fit(ds, steps_per_epoch=6, verbose=0)

    class DuckTyped:                                 # the protocol is enough
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]

    assert len(model.fit(DuckTyped(), epochs=2, verbose=0).history["loss"]) == 2


def test_generator_and_pydataset_argument_errors():
    x, y = _data(n=16)
    model = _model()
    for bad, match in ((dict(y=y), "y: must not be given when x is a generator"),
                       (dict(batch_size=8), "batch_size: must not be given when x is a generator"),
                       (dict(sample_weight=y[:, 0]), "sample_weight: must not be given"),
                       (dict(validation_split=0.2), "validation_split: only arrays"),
                       (dict(steps_per_epoch=0), "steps_per_epoch: expected a positive integer")):
        with pytest.raises(ValueError, match=match):
            model.fit(looping(x, y, 8), **{"steps_per_epoch": 2, **bad}, verbose=0)
    with pytest.raises(ValueError, match="batch_size: must not be given when x is a PyDataset"):
        model.evaluate(Batches(x, y, 8), batch_size=8)
    with pytest.raises(ValueError, match=r"expected batches \(x, y\) or \(x, y, sample_weight\), "
                                         r"got one ndarray"):
        model.fit((xb for xb in [x[:8]]), verbose=0)
    with pytest.raises(ValueError, match="a tuple of 4"):
        model.fit(iter([(x, y, y, y)]), verbose=0)
    with pytest.raises(ValueError, match=r"same number of samples.*x \(8, 5, 3\), y \(7, 1\)"):
        model.fit(iter([(x[:8], y[:7])]), verbose=0)
    with pytest.raises(ValueError, match="validation_data: expected a tuple"):
        model.fit(x, y, validation_data=[x], verbose=0)


# ------------------------------------------------------------------------------- class_weight
def test_class_weight_is_per_sample_weight_from_integer_or_one_hot_targets():
    x, _ = _data(n=24)
    labels = np.random.default_rng(5).integers(0, 3, 24)
    cw = {0: 1.0, 1: 3.0, 2: 0.5}
    expected_w = np.array([cw[c] for c in labels], np.float64)
    sw = np.linspace(0.5, 1.5, 24).astype(np.float32)      # combined in float64, as fit does
    for loss, y in (("sparse_categorical_crossentropy", labels[:, None]),
                    ("categorical_crossentropy", np.eye(3, dtype=np.float32)[labels])):
        ref = _model(loss=loss, out=3, activation="softmax", metrics=["accuracy"])
        h_ref = ref.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                        sample_weight=expected_w * sw.astype(np.float64))
        model = _model(loss=loss, out=3, activation="softmax", metrics=["accuracy"])
        h = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, class_weight=cw,
                      sample_weight=sw)
        _same_training(h_ref, ref, h, model)
        # the same from a PyDataset's batches
        pyd = _model(loss=loss, out=3, activation="softmax", metrics=["accuracy"])
        h = pyd.fit(Batches(x, y, 8, sw), epochs=2, shuffle=False, verbose=0, class_weight=cw)
        _same_training(h_ref, ref, h, pyd)


def test_class_weight_binary_missing_classes_and_sequences():
    from fastlstm.data_adapters import class_weight_to_sample_weights as cw_to_sw
    np.testing.assert_array_equal(cw_to_sw(np.array([[0.], [1.], [1.]]), {1: 4}), [1, 4, 4])
    np.testing.assert_array_equal(cw_to_sw(np.array([2, 0]), {"0": 2}), [1, 2])  # "0" as Keras
    y_seq = np.array([[[0], [1], [1]], [[1], [0], [0]]])              # a class per timestep
    np.testing.assert_array_equal(cw_to_sw(y_seq, {1: 3}), [[1, 3, 3], [3, 1, 1]])
    model = fl.Sequential([fl.layers.LSTM(3, return_sequences=True),
                           fl.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    model.fit(x, y_seq, class_weight={0: 1, 1: 3}, verbose=0)


def test_class_weight_errors():
    x, y = _data(n=8)
    model = _model(loss="sparse_categorical_crossentropy", out=3, activation="softmax",
                   metrics=[])
    labels = np.array([0, 1, 2, 1, 0, 2, 1, 0])
    for cw, match in (([1, 2], "class_weight: expected a dict"),
                      ({"a": 1}, "class_weight: expected integer class indices.*'a'"),
                      ({-1: 1}, "class_weight: class indices start at 0"),
                      ({0: -2}, "class_weight: expected a finite non-negative weight"),
                      ({5: 1.0}, r"class_weight: the keys \[5\] are out of range for a model "
                                 r"with 3 classes")):
        with pytest.raises((TypeError, ValueError), match=match):
            model.fit(x, labels, class_weight=cw, verbose=0)
    with pytest.raises(ValueError, match="target class 4 is out of range"):
        model.fit(x, np.where(labels == 2, 4, labels), class_weight={0: 2}, verbose=0)
    regression = _model()
    with pytest.raises(ValueError, match="class_weight: the targets y must be class indices"):
        regression.fit(x, y, class_weight={0: 2}, verbose=0)
    one_hot = np.eye(3, dtype=np.float32)[labels]
    cat = _model(loss="categorical_crossentropy", out=3, activation="softmax", metrics=[])
    with pytest.raises(ValueError, match=r"keys \[3\] are out of range for one-hot targets "
                                         r"with 3 classes"):
        cat.fit(x, one_hot, class_weight={3: 1}, verbose=0)


def test_steps_with_arrays_as_keras():
    x, y = _data(n=20)
    model = _model()
    sizes = []
    model.fit(x, y, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False, callbacks=[
        fl.callbacks.LambdaCallback(on_train_batch_begin=lambda b, logs: sizes.append(b))])
    assert sizes == [0, 1]                              # batch_size = ceil(20 / 2) = 10
    np.testing.assert_array_equal(model.evaluate(x, y, batch_size=4, steps=2),
                                  model.evaluate(x[:8], y[:8], batch_size=4))
    assert model.predict(x, batch_size=4, steps=2).shape == (8, 1)


def test_progress_bar_with_a_generator_of_unknown_length(capsys):
    x, y = _data(n=16)
    _model().fit((b for b, _ in zip(looping(x, y, 8), range(2))), verbose=1)
    out = capsys.readouterr().out
    assert "2/" in out or "2 " in out
