"""Sequential: building, summary, weights, fit/evaluate/predict, callbacks, masks, errors,
and the truncated-BPTT recipe with stateful layers."""
from __future__ import annotations

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import callbacks as C
from fastlstm import initializers as I
from fastlstm.layers import Dense, LSTM

from conftest import assert_close


def lstm(units, seed=0, **kw):
    return LSTM(units, kernel_initializer=I.GlorotUniform(seed=seed),
                recurrent_initializer=I.Orthogonal(seed=seed + 1), **kw)


def dense(units, seed=0, **kw):
    return Dense(units, kernel_initializer=I.GlorotUniform(seed=seed + 2), **kw)


def model_and_data(n=40, T=6, F=3, units=8, seed=0, loss="mse", metrics=None, optimizer=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, F)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1, keepdims=True) + 0.1 * x[:, -1, 1:2]).astype(np.float32)
    model = fl.Sequential([lstm(units, seed), dense(1, seed)])
    model.compile(optimizer=optimizer or fl.optimizers.SGD(0.1), loss=loss, metrics=metrics)
    return model, x, y


class Recorder(C.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            events = object.__getattribute__(self, "events")
            return lambda *args, **kw: events.append((name,) + tuple(a for a in args
                                                                   if isinstance(a, int)))
        return object.__getattribute__(self, name)


# ------------------------------------------------------------------------------- structure


def test_build_summary_and_param_counts(capsys):
    model = fl.Sequential([lstm(32), dense(1)], name="adder")
    assert not model.built
    with pytest.raises(ValueError, match="not been built"):
        model.summary()
    model.build((None, 100, 2))
    assert model.built and model.output_shape == (None, 1)
    assert model.count_params() == 4 * 32 * (2 + 32 + 1) + 33
    model.summary()
    out = capsys.readouterr().out
    assert 'Model: "adder"' in out
    assert "lstm" in out and "(LSTM)" in out and "(None, 32)" in out and "4,480" in out
    assert "(None, 1)" in out and " 33" in out
    assert "Total params: 4,513 (17.63 KB)" in out
    assert "Trainable params: 4,513" in out and "Non-trainable params: 0 (0.00 B)" in out


def test_summary_counts_frozen_layers_as_non_trainable():
    lines = []
    first = lstm(4)
    first.trainable = False
    model = fl.Sequential([first, dense(2)])
    model.build((None, 3, 5))
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    n_lstm = 4 * 4 * (5 + 4 + 1)
    assert f"Total params: {n_lstm + 10:,}" in text
    assert f"Trainable params: {10:,}" in text
    assert f"Non-trainable params: {n_lstm:,}" in text


def test_add_layers_and_weights_round_trip():
    model = fl.Sequential()
    model.add(lstm(5))
    model.add(dense(2))
    assert [type(layer).__name__ for layer in model.layers] == ["LSTM", "Dense"]
    x = np.random.default_rng(0).standard_normal((3, 4, 2)).astype(np.float32)
    y = model(x)
    assert y.shape == (3, 2) and model.input_shape == (None, 4, 2)
    ws = model.get_weights()
    assert [w.shape for w in ws] == [(2, 20), (5, 20), (20,), (5, 2), (2,)]
    model.set_weights([w * 0 for w in ws])
    assert np.all(model(x) == 0)
    model.set_weights(ws)
    np.testing.assert_array_equal(model(x), y)
    with pytest.raises(ValueError, match="expects 5 arrays"):
        model.set_weights(ws[:-1])


def test_structure_errors():
    with pytest.raises(TypeError, match="layer"):
        fl.Sequential([np.zeros(3)])
    with pytest.raises(ValueError, match="return_state"):
        fl.Sequential([lstm(3, return_state=True)])
    with pytest.raises(ValueError, match="already used"):
        fl.Sequential([Dense(2, name="d"), Dense(2, name="d")])
    empty = fl.Sequential()
    with pytest.raises(ValueError, match="no layers"):
        empty.predict(np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="not built"):
        fl.Sequential([lstm(3)]).set_weights([])
    layer = lstm(3)
    layer.build((None, 2, 4))
    with pytest.raises(TypeError, match=r"weights: expected a list of 3 arrays .*got int"):
        layer.set_weights(5)
    with pytest.raises(ValueError, match="x: expected an array, got None"):
        fl.Sequential([lstm(3)]).predict(None)
    assert fl.Sequential([lstm(3)]).get_weights() == []


# ------------------------------------------------------------------------------ inference


def test_predict_is_batched_and_equals_one_call():
    model, x, _ = model_and_data(n=37)
    whole = model(x)
    assert_close(model.predict(x, batch_size=8), whole)
    assert_close(model.predict_on_batch(x[:5]), whole[:5])
    assert model.predict(x, batch_size=100).shape == (37, 1)


def test_compile_errors_name_the_argument():
    model, x, y = model_and_data()
    fresh = fl.Sequential([lstm(2), dense(1)])
    for call in (lambda: fresh.fit(x, y), lambda: fresh.evaluate(x, y),
                 lambda: fresh.train_on_batch(x, y)):
        with pytest.raises(ValueError, match="compile"):
            call()
    with pytest.raises(ValueError, match="optimizer.*'adamm'"):
        model.compile(optimizer="adamm", loss="mse")
    with pytest.raises(ValueError, match="loss.*'msqe'"):
        model.compile(optimizer="sgd", loss="msqe")
    with pytest.raises(ValueError, match="metrics.*'maae'"):
        model.compile(optimizer="sgd", loss="mse", metrics=["maae"])
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="sgd")


def test_data_errors_name_the_argument():
    model, x, y = model_and_data(n=20)
    with pytest.raises(ValueError, match=r"x and y.*20.*19"):
        model.fit(x, y[:19], verbose=0)
    with pytest.raises(ValueError, match=r"y: .*\(20, 3\).*\(20, 1\)"):
        model.fit(x, np.zeros((20, 3)), verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(x, y, sample_weight=np.ones(5), verbose=0)
    with pytest.raises(ValueError, match=r"^sample_weight: .*must broadcast"):
        model.fit(x, y, sample_weight=np.ones((20, 7)), verbose=0)
    model.compile(optimizer="sgd", loss="mse")
    for call in (model.train_on_batch, model.test_on_batch):
        with pytest.raises(ValueError, match=r"x: expected at least one sample"):
            call(x[:0], y[:0])
    assert model.optimizer.iterations == 0
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(x, y, validation_split=1.5, verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="validation_data"):
        model.fit(x, y, validation_data=(x,), verbose=0)
    with pytest.raises(ValueError, match="x: .*built for 3 features"):
        model.predict(np.zeros((2, 6, 4), np.float32))
    with pytest.raises(TypeError, match="x: expected a numeric array"):
        model.predict(np.array([["a"]]))


# --------------------------------------------------------------------------------- training


def test_train_on_batch_updates_the_layer_arrays_in_place_and_reports_the_loss_before():
    model, x, y = model_and_data(metrics=["mae"])
    expected = model.test_on_batch(x, y)
    kernel = model.layers[0].kernel
    before = kernel.copy()
    got = model.train_on_batch(x, y)
    assert model.layers[0].kernel is kernel and not np.array_equal(kernel, before)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert list(logs) == ["loss", "mae"]
    assert logs["loss"] < got[0]


def test_sgd_step_equals_manual_gradients_with_regularization():
    """One SGD step = data gradient + L2 gradient; the reported loss includes the penalty."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 5, 3)).astype(np.float64)
    y = rng.standard_normal((6, 2))
    layers = [lstm(4, dtype="float64", kernel_regularizer=fl.regularizers.L2(0.1)),
              dense(2, dtype="float64", bias_regularizer=fl.regularizers.L1(0.05))]
    model = fl.Sequential(layers)
    model.compile(fl.optimizers.SGD(0.5), "mse")
    model.build((None, 5, 3))
    w0 = model.get_weights()
    # manual: forward_train, loss gradient, backprop
    h, bp0 = layers[0].forward_train(x)
    out, bp1 = layers[1].forward_train(h)
    loss, d = fl.losses.get("mse").value_and_grad(y, out)
    g1 = bp1(d)
    g0 = bp0(g1.inputs)
    penalty = 0.1 * np.sum(w0[0] ** 2) + 0.05 * np.sum(np.abs(w0[4]))
    grads = list(g0.weights) + list(g1.weights)
    grads[0] = grads[0] + 0.2 * w0[0]
    grads[4] = grads[4] + 0.05 * np.sign(w0[4])
    model.set_weights(w0)
    reported = model.train_on_batch(x, y)
    np.testing.assert_allclose(reported, loss + penalty, rtol=1e-12)
    for got, w, g in zip(model.get_weights(), w0, grads):
        np.testing.assert_allclose(got, w - 0.5 * g, rtol=1e-10, atol=1e-12)


def test_fit_history_keys_validation_split_and_loss_weighting():
    model, x, y = model_and_data(n=50, metrics=["mae"])
    hist = model.fit(x, y, batch_size=8, epochs=3, validation_split=0.2, verbose=0)
    assert hist is model.history
    assert list(hist.history) == ["loss", "mae", "val_loss", "val_mae"]
    assert hist.epoch == [0, 1, 2] and all(len(v) == 3 for v in hist.history.values())
    # validation is the last 20% (10 samples), evaluated after the epoch's training
    val = model.evaluate(x[40:], y[40:], batch_size=8, return_dict=True)
    assert hist.history["val_loss"][-1] == pytest.approx(val["loss"], rel=1e-12)
    assert hist.history["val_mae"][-1] == pytest.approx(val["mae"], rel=1e-12)


def test_validation_data_and_frozen_layers():
    model, x, y = model_and_data(n=30, metrics=["mae"])
    model.build((None, 6, 3))
    model.layers[0].trainable = False
    frozen = model.layers[0].get_weights()
    hist = model.fit(x[:20], y[:20], batch_size=8, epochs=2, validation_data=(x[20:], y[20:]),
                     verbose=0)
    assert list(hist.history) == ["loss", "mae", "val_loss", "val_mae"]
    # the same loss; evaluate batches the 10 samples differently (one batch against 8 + 2),
    # and a projection of fewer than 32 rows reads W in place: float32 rounding apart
    assert hist.history["val_loss"][-1] == pytest.approx(model.evaluate(x[20:], y[20:])[0], rel=1e-6)
    for a, b in zip(model.layers[0].get_weights(), frozen):
        np.testing.assert_array_equal(a, b)
    assert len(model.trainable_weights) == 2 and len(model.weights) == 5
    assert model.weights[0] is model.layers[0].kernel


def test_epoch_loss_is_the_batch_size_weighted_mean():
    """Keras 3: the loss tracker weighs each batch loss by its batch size; with a zero
    learning rate the epoch loss is the mean over all samples."""
    model, x, y = model_and_data(n=10, optimizer=fl.optimizers.SGD(0.0))
    hist = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    full = model.evaluate(x, y, batch_size=10)
    assert hist.history["loss"][0] == pytest.approx(full, rel=1e-6)
    per_batch = [model.test_on_batch(x[i:i + 4], y[i:i + 4]) for i in (0, 4, 8)]
    assert abs(np.mean(per_batch) - full) > 1e-4      # the unweighted mean differs


def test_validation_split_is_taken_before_shuffling():
    # one shuffled batch holds exactly the first 16 samples: the last 4 are held out
    model, x, y = model_and_data(n=20)
    twin, _, _ = model_and_data(n=20)          # the same seeded initial weights
    model.fit(x, y, batch_size=16, epochs=1, validation_split=0.2, shuffle=True, verbose=0)
    twin.train_on_batch(x[:16], y[:16])
    for a, b in zip(model.get_weights(), twin.get_weights()):
        assert_close(a, b)


def test_shuffle_uses_numpy_global_seed_and_initial_epoch():
    results = []
    for _ in range(2):
        model, x, y = model_and_data(n=30)
        np.random.seed(5)
        hist = model.fit(x, y, batch_size=7, epochs=4, initial_epoch=2, verbose=0)
        results.append(model.get_weights())
        assert hist.epoch == [2, 3]
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    model, x, y = model_and_data(n=30)
    np.random.seed(6)
    model.fit(x, y, batch_size=7, epochs=2, verbose=0)
    assert not np.array_equal(model.get_weights()[0], results[0][0])


def test_training_reduces_the_loss_and_sample_weights_follow_keras():
    model, x, y = model_and_data(n=64, optimizer=fl.optimizers.Adam(0.02))
    hist = model.fit(x, y, batch_size=16, epochs=8, verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
    w = np.zeros(64)
    w[:16] = 2.0
    pred = model.predict(x)
    expected = np.sum(w * np.mean((pred - y) ** 2, axis=1)) / 64   # divided by N, not sum(w)
    assert model.evaluate(x, y, batch_size=64, sample_weight=w) == pytest.approx(expected, rel=1e-5)


def test_callbacks_hooks_order_early_stopping_and_stop_training():
    model, x, y = model_and_data(n=20)
    rec = Recorder()
    model.fit(x, y, batch_size=8, epochs=2, validation_split=0.2, callbacks=[rec], verbose=0)
    names = [e[0] for e in rec.events]
    assert names[0] == "on_train_begin" and names[-1] == "on_train_end"
    assert names.count("on_epoch_begin") == 2 and names.count("on_epoch_end") == 2
    assert names.count("on_train_batch_end") == 4           # 16 training samples / 8
    assert names.count("on_test_begin") == 2                # validation each epoch
    first_epoch = names[1:names.index("on_epoch_end") + 1]
    assert first_epoch[:3] == ["on_epoch_begin", "on_train_batch_begin", "on_train_batch_end"]
    assert first_epoch[-2:] == ["on_test_end", "on_epoch_end"]

    stop = C.EarlyStopping(monitor="loss", min_delta=100.0, patience=0)
    hist = model.fit(x, y, epochs=10, callbacks=[stop], verbose=0)
    assert len(hist.history["loss"]) == 2 and model.stop_training

    batches = []

    def halt(batch, logs):
        batches.append(batch)
        if batch == 1:
            model.stop_training = True

    hist = model.fit(x, y, batch_size=4, epochs=5,
                     callbacks=[C.LambdaCallback(on_train_batch_end=halt)], verbose=0)
    assert batches == [0, 1] and len(hist.history["loss"]) == 1


def test_learning_rate_callbacks_drive_the_optimizer():
    model, x, y = model_and_data(n=16, optimizer=fl.optimizers.Adam(0.01))
    sched = C.LearningRateScheduler(lambda epoch, lr: 0.01 / (epoch + 1))
    hist = model.fit(x, y, batch_size=8, epochs=3, callbacks=[sched], verbose=0)
    assert hist.history["learning_rate"] == pytest.approx([0.01, 0.005, 0.01 / 3])
    assert model.optimizer.learning_rate == pytest.approx(0.01 / 3)


def test_verbose_modes(capsys):
    model, x, y = model_and_data(n=16)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    model.fit(x, y, batch_size=8, epochs=2, verbose=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2"
    assert lines[1].startswith("2/2 - ") and "loss:" in lines[1]
    model.fit(x, y, batch_size=8, epochs=1, verbose=1)
    out = capsys.readouterr().out
    assert "2/2 [==============================]" in out and "loss:" in out
    model.evaluate(x, y, verbose=1)
    assert "loss:" in capsys.readouterr().out


def test_evaluate_return_forms():
    model, x, y = model_and_data(n=12, metrics=["mae", "mse"])
    loss, mae, mse = model.evaluate(x, y)
    assert loss == pytest.approx(mse, rel=1e-6)
    pred = model.predict(x)
    assert mae == pytest.approx(np.mean(np.abs(pred - y)), rel=1e-5)
    assert model.evaluate(x, y, return_dict=True) == {"loss": loss, "mae": mae, "mse": mse}
    assert model.metrics_names == ["loss", "mae", "mse"]
    plain, _, _ = model_and_data(n=12)
    assert isinstance(plain.evaluate(x, y), float)


def test_dropout_is_active_in_training_only():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4, 3)).astype(np.float32)
    y = rng.standard_normal((32, 1)).astype(np.float32)
    model = fl.Sequential([lstm(8, dropout=0.5, seed=3), fl.layers.Dropout(0.5, seed=4), dense(1)])
    model.compile(fl.optimizers.SGD(0.0), "mse")
    np.testing.assert_array_equal(model.predict(x), model.predict(x))
    test_loss = model.test_on_batch(x, y)
    train_losses = {round(model.train_on_batch(x, y), 7) for _ in range(3)}
    assert test_loss not in train_losses and len(train_losses) == 3


# ------------------------------------------------------------------------------------ masks


def test_embedding_mask_zero_reaches_the_lstm():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 10, size=(6, 5))
    padded = np.concatenate([np.zeros((6, 3), int), tokens], axis=1)      # left padding
    model = fl.Sequential([fl.layers.Embedding(10, 4, mask_zero=True), lstm(6), dense(2)])
    assert_close(model(padded), model(tokens))
    unmasked = fl.Sequential([fl.layers.Embedding(10, 4), lstm(6), dense(2)])
    unmasked.build((None, 5))
    unmasked.set_weights(model.get_weights())
    assert not np.allclose(unmasked(padded), model(tokens), atol=1e-4)


def test_masked_timesteps_do_not_count_in_the_loss_and_training_runs():
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 10, size=(8, 6))
    tokens[:, 4:] = 0                                              # right padding
    y = rng.standard_normal((8, 6, 1)).astype(np.float32)
    model = fl.Sequential([fl.layers.Embedding(10, 4, mask_zero=True),
                           lstm(5, return_sequences=True), dense(1)])
    model.compile(fl.optimizers.SGD(0.1), "mse", metrics=["mae"])
    loss = model.evaluate(tokens, y, return_dict=True)
    y2 = y.copy()
    y2[:, 4:] += 100.0                                             # only masked steps change
    assert model.evaluate(tokens, y2, return_dict=True) == pytest.approx(loss, rel=1e-6)
    pred = model.predict(tokens)
    assert loss["loss"] == pytest.approx(np.mean((pred - y)[:, :4] ** 2), rel=1e-5)
    assert loss["mae"] == pytest.approx(np.mean(np.abs(pred - y)[:, :4]), rel=1e-5)
    hist = model.fit(tokens, y, batch_size=4, epochs=3, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]


def test_masking_layer_feeds_the_lstm():
    x = np.random.default_rng(2).standard_normal((4, 5, 3)).astype(np.float32)
    padded = x.copy()
    padded[:, 3:] = 0.0
    model = fl.Sequential([fl.layers.Masking(0.0), lstm(4), dense(1)])
    assert_close(model(padded), model(x[:, :3]))


# --------------------------------------------------------------------------- truncated BPTT


def windows_of_streams(n_streams, n_windows, window, seed):
    """Streams whose first step holds a sign v (+-1) that is the target at every step;
    cut into consecutive windows so that row i of batch k+1 continues row i of batch k."""
    rng = np.random.default_rng(seed)
    v = rng.choice([-1.0, 1.0], size=n_streams)
    length = n_windows * window
    x = np.zeros((n_streams, length, 2), np.float32)
    x[:, 0, 0] = 1.0
    x[:, 0, 1] = v
    x[:, 1:, 1] = 0.1 * rng.standard_normal((n_streams, length - 1))
    y = np.repeat(v[:, None, None], length, axis=1).astype(np.float32)
    xs = x.reshape(n_streams, n_windows, window, 2).transpose(1, 0, 2, 3).reshape(-1, window, 2)
    ys = y.reshape(n_streams, n_windows, window, 1).transpose(1, 0, 2, 3).reshape(-1, window, 1)
    return xs, ys


@pytest.mark.parametrize("stateful", [True, False])
def test_truncated_bptt_recipe_learns_across_windows(stateful):
    B, n_windows, window = 16, 4, 8
    x, y = windows_of_streams(B, n_windows, window, seed=0)
    model = fl.Sequential([lstm(8, seed=3, stateful=stateful, return_sequences=True), dense(1, 3)])
    model.compile(fl.optimizers.Adam(0.03), "mse")
    reset = C.LambdaCallback(on_epoch_begin=lambda epoch, logs: stateful and model.reset_states())
    np.random.seed(0)
    hist = model.fit(x, y, batch_size=B, epochs=60, shuffle=False, callbacks=[reset], verbose=0)
    losses = hist.history["loss"]
    if stateful:
        # the sign seen in window 0 is remembered through windows 1-3 of the same streams
        assert losses[0] > 0.5 and losses[-1] < 0.01
    else:
        # without carried state windows 1-3 cannot be predicted: the MSE stays near 3/4
        assert losses[-1] > 0.4
