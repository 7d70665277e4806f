"""Callbacks driven by a tiny fake model and a hand-written epoch loop."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest

from fastlstm import callbacks as C
from fastlstm import optimizers as O


class FakeOptimizer:
    def __init__(self, lr):
        self.learning_rate = lr


class FakeModel:
    """The duck type callbacks rely on; its weight is the epoch counter."""

    def __init__(self, lr=0.1, optimizer=None):
        self.stop_training = False
        self.weights = [np.zeros(2)]
        self.optimizer = optimizer or FakeOptimizer(lr)
        self.saved = []

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [np.array(w) for w in weights]

    def save(self, path):
        self.saved.append(path)
        with open(path, "w") as f:
            f.write("model")


def fit(model, callbacks, epoch_logs, steps=3, verbose=0):
    """Drive the hooks like a fit loop; the weights record the epoch (epoch + 1)."""
    cbs = C.CallbackList(callbacks, add_history=True, model=model, epochs=len(epoch_logs),
                         steps=steps, verbose=verbose)
    cbs.on_train_begin()
    for epoch, logs in enumerate(epoch_logs):
        cbs.on_epoch_begin(epoch)
        for batch in range(steps or 3):
            cbs.on_train_batch_begin(batch)
            cbs.on_train_batch_end(batch, {"loss": logs.get("loss", 0.0)})
        model.weights = [np.full(2, epoch + 1.0)]
        logs = dict(logs)
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end()
    return cbs.history


def val_losses(*values):
    return [{"loss": 1.0, "val_loss": v} for v in values]


def test_history_and_callback_list_order():
    calls = []
    cb = C.LambdaCallback(on_train_begin=lambda logs: calls.append("train_begin"),
                          on_epoch_begin=lambda e, logs: calls.append(f"epoch_begin {e}"),
                          on_train_batch_end=lambda b, logs: calls.append(f"batch_end {b}"),
                          on_epoch_end=lambda e, logs: calls.append(f"epoch_end {e}"),
                          on_train_end=lambda logs: calls.append("train_end"))
    model = FakeModel()
    history = fit(model, [cb], val_losses(0.5, 0.4), steps=2)
    assert calls == ["train_begin", "epoch_begin 0", "batch_end 0", "batch_end 1",
                     "epoch_end 0", "epoch_begin 1", "batch_end 0", "batch_end 1",
                     "epoch_end 1", "train_end"]
    assert history.epoch == [0, 1]
    assert history.history == {"loss": [1.0, 1.0], "val_loss": [0.5, 0.4]}
    assert model.history is history
    assert cb.model is model and cb.params["epochs"] == 2


def test_callback_list_rejects_non_callbacks_and_lambda_unknown_hook():
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        C.CallbackList([object()])
    with pytest.raises(TypeError, match=r"`callbacks` must be a list .*got int"):
        C.CallbackList(3)
    one = C.History()
    assert C.CallbackList(one).callbacks == [one]          # one callback, as Keras takes it
    with pytest.raises(ValueError, match="on_epoch_ending"):
        C.LambdaCallback(on_epoch_ending=print)


def test_early_stopping_patience_and_restore_best_weights():
    model = FakeModel()
    es = C.EarlyStopping(patience=2, restore_best_weights=True)
    history = fit(model, [es], val_losses(1.0, 0.9, 0.95, 0.96, 0.97, 0.1))
    # best at epoch 1; epochs 2 and 3 do not improve -> stop at epoch 3
    assert history.epoch == [0, 1, 2, 3]
    assert es.stopped_epoch == 3 and model.stop_training
    assert es.best == 0.9 and es.best_epoch == 1
    np.testing.assert_array_equal(model.weights[0], 2.0)  # weights from the end of epoch 1


def test_early_stopping_min_delta_mode_baseline_and_start():
    # improvements smaller than min_delta do not count
    es = C.EarlyStopping(min_delta=0.1, patience=1)
    h = fit(FakeModel(), [es], val_losses(1.0, 0.95, 0.92, 0.5))
    assert h.epoch == [0, 1]
    # "val_accuracy" is maximised in mode="auto"
    es = C.EarlyStopping(monitor="val_accuracy", patience=1)
    logs = [{"val_accuracy": a} for a in (0.5, 0.6, 0.7, 0.65, 0.9)]
    assert fit(FakeModel(), [es], logs).epoch == [0, 1, 2, 3]
    # mode="max" forced on a loss-like name
    es = C.EarlyStopping(monitor="val_score", mode="max", patience=0)
    logs = [{"val_score": a} for a in (0.1, 0.2, 0.1, 0.3)]
    assert fit(FakeModel(), [es], logs).epoch == [0, 1, 2]
    # until the baseline is beaten `wait` is never reset, so the first epoch without
    # improvement stops once `patience` epochs have passed (without a baseline: all 4 run)
    es = C.EarlyStopping(baseline=0.5, patience=2)
    assert fit(FakeModel(), [es], val_losses(0.9, 0.8, 0.85, 0.6)).epoch == [0, 1, 2]
    es = C.EarlyStopping(patience=2)
    assert fit(FakeModel(), [es], val_losses(0.9, 0.8, 0.85, 0.6)).epoch == [0, 1, 2, 3]
    # nothing is monitored before start_from_epoch
    es = C.EarlyStopping(patience=0, start_from_epoch=2)
    assert fit(FakeModel(), [es], val_losses(0.1, 0.9, 0.8, 0.85)).epoch == [0, 1, 2, 3]


def test_early_stopping_uses_metric_direction_from_model():
    class Metric:
        name, direction = "score", "up"
    model = FakeModel()
    model.metrics = [Metric()]
    es = C.EarlyStopping(monitor="val_score", patience=0)
    logs = [{"val_score": a} for a in (0.1, 0.2, 0.15)]
    assert fit(model, [es], logs).epoch == [0, 1, 2]


def test_monitor_missing_warns_and_mode_is_validated():
    es = C.EarlyStopping(monitor="val_mae")
    with pytest.warns(UserWarning, match="val_mae.*Available metrics are: loss"):
        fit(FakeModel(), [es], [{"loss": 1.0}, {"loss": 2.0}])
    with pytest.raises(ValueError, match="mode"):
        C.EarlyStopping(mode="biggest")


def test_reduce_lr_on_plateau_patience_cooldown_and_min_lr():
    model = FakeModel(lr=1.0)
    seen = []
    rl = C.ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=0.3)
    spy = C.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(logs["learning_rate"]))
    fit(model, [rl, spy], val_losses(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    # logs show the rate before that epoch's reduction. Epoch 2: second bad epoch -> 0.5.
    # Epoch 3: the cooldown counter drops to 0 and (as in Keras) the epoch already counts
    # as bad again, so epoch 4 reduces to 0.3 (floored at min_lr); nothing goes below it.
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.3, 0.3, 0.3]
    assert model.optimizer.learning_rate == pytest.approx(0.3)


def test_reduce_lr_on_plateau_min_delta_and_real_optimizer():
    opt = O.Adam(0.01)
    model = FakeModel(optimizer=opt)
    rl = C.ReduceLROnPlateau(factor=0.1, patience=1, min_delta=0.05)
    fit(model, [rl], val_losses(1.0, 0.97, 0.5))  # 0.97 is within min_delta: no improvement
    assert opt.learning_rate == pytest.approx(0.001)
    with pytest.raises(ValueError, match="factor"):
        C.ReduceLROnPlateau(factor=1.0)


def test_learning_rate_scheduler_both_signatures():
    model = FakeModel(lr=1.0)
    h = fit(model, [C.LearningRateScheduler(lambda epoch, lr: lr * 0.5)], val_losses(1, 1, 1))
    assert h.history["learning_rate"] == [0.5, 0.25, 0.125]
    model = FakeModel(lr=1.0)
    h = fit(model, [C.LearningRateScheduler(lambda epoch: 0.1 * (epoch + 1))], val_losses(1, 1))
    assert h.history["learning_rate"] == pytest.approx([0.1, 0.2])
    with pytest.raises(ValueError, match="schedule"):
        fit(FakeModel(), [C.LearningRateScheduler(lambda epoch: "fast")], val_losses(1))


def test_model_checkpoint_best_only(tmp_path):
    model = FakeModel()
    pattern = str(tmp_path / "ckpt" / "model-{epoch:02d}-{val_loss:.2f}.npz")
    fit(model, [C.ModelCheckpoint(pattern, save_best_only=True)],
        val_losses(0.9, 0.95, 0.5, 0.7, 0.4))
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["model-01-0.90.npz", "model-03-0.50.npz", "model-05-0.40.npz"]
    assert [p.rsplit("/", 1)[-1] for p in model.saved] == names


def test_model_checkpoint_every_epoch_and_max_mode(tmp_path):
    model = FakeModel()
    fit(model, [C.ModelCheckpoint(str(tmp_path / "last.npz"))], val_losses(0.9, 0.95))
    assert len(model.saved) == 2 and (tmp_path / "last.npz").exists()
    model = FakeModel()
    logs = [{"val_acc": a} for a in (0.5, 0.4, 0.8)]
    fit(model, [C.ModelCheckpoint(str(tmp_path / "e{epoch}.npz"), monitor="val_acc",
                                  save_best_only=True)], logs)
    assert [p.rsplit("/", 1)[-1] for p in model.saved] == ["e1.npz", "e3.npz"]
    with pytest.raises(KeyError, match="val_mae"):
        fit(FakeModel(), [C.ModelCheckpoint(str(tmp_path / "{val_mae}.npz"))], val_losses(1))


def test_csv_logger_contents_and_append(tmp_path):
    path = tmp_path / "log.csv"
    logs = [{"loss": 0.5, "mae": 0.25, "val_loss": 0.75, "val_mae": 0.5},
            {"loss": 0.25, "mae": 0.125, "val_loss": 0.5, "val_mae": 0.25}]
    fit(FakeModel(), [C.CSVLogger(str(path))], logs)
    assert path.read_bytes().decode() == ("epoch,loss,mae,val_loss,val_mae\r\n"
                                "0,0.5,0.25,0.75,0.5\r\n"
                                "1,0.25,0.125,0.5,0.25\r\n")
    fit(FakeModel(), [C.CSVLogger(str(path), append=True)], logs[:1])
    lines = path.read_bytes().decode().split("\r\n")
    assert lines[0].startswith("epoch") and lines[3] == "0,0.5,0.25,0.75,0.5" and \
        sum(line.startswith("epoch") for line in lines) == 1
    # without validation Keras 3 adds val_ columns filled with NA; custom separator
    fit(FakeModel(), [C.CSVLogger(str(path), separator=";")], [{"loss": 1.5}])
    assert path.read_bytes().decode() == "epoch;loss;val_loss\r\n0;1.5;NA\r\n"


# --------------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_verbose_0_is_silent(capsys):
    fit(FakeModel(), [C.ProgbarLogger()], val_losses(0.5, 0.4), verbose=0)
    assert capsys.readouterr().out == ""


def test_progress_verbose_2_one_line_per_epoch(capsys):
    fit(FakeModel(), [C.ProgbarLogger()], [{"loss": 0.5, "val_loss": 0.4},
                                           {"loss": 0.25, "val_loss": 0.0001}], verbose=2)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    assert re.fullmatch(r"3/3 - \d+s - \d+(us|ms|s)/step - loss: 0\.5000 - val_loss: 0\.4000",
                        lines[1])
    assert lines[3].endswith("loss: 0.2500 - val_loss: 1.0000e-04")
    assert "\r" not in out


def test_progress_verbose_1_not_a_tty_prints_only_final_lines(capsys):
    fit(FakeModel(), [C.ProgbarLogger()], val_losses(0.5, 0.4), steps=4, verbose=1)
    out = capsys.readouterr().out
    assert "\r" not in out and "ETA" not in out
    lines = out.splitlines()
    assert len(lines) == 4 and lines[0] == "Epoch 1/2"
    assert re.fullmatch(r"4/4 \[={30}\] - \d+s \d+(us|ms|s)/step - loss: 1\.0000 - "
                        r"val_loss: 0\.5000", lines[1])


def test_progress_verbose_1_on_a_tty_redraws_in_place():
    stream, clock = TTY(), FakeClock()
    bar = C.Progbar(target=40, verbose=1, stream=stream, clock=clock)
    clock.t = 3.0  # a slow first step is left out of the estimate
    bar.update(1, [("loss", 0.5)])
    clock.t = 3.01  # within `interval` (0.05 s) of the last draw: not redrawn
    bar.update(2, [("loss", 0.4)])
    clock.t = 8.5
    bar.update(12, [("loss", 0.1234), ("mae", 0.2)])
    clock.t = 22.5
    bar.update(40, [("loss", 0.1), ("mae", 0.2)])
    frames = stream.getvalue().split("\r")[1:]
    assert len(frames) == 3
    # 3 s for the first step, 39 left -> 117 s
    assert frames[0] == " 1/40 [..............................] - ETA: 1:57 - loss: 0.5000"
    # steps 2..12 took 0.5 s each; 28 steps left -> 14 s
    assert frames[1].rstrip() == ("12/40 [========>.....................] - ETA: 14s"
                                  " - loss: 0.1234 - mae: 0.2000")
    assert frames[2] == ("40/40 [==============================] - 22s 500ms/step"
                         " - loss: 0.1000 - mae: 0.2000\n")

    # a shorter frame is padded with spaces to wipe the end of the previous one
    stream, clock = TTY(), FakeClock()
    bar = C.Progbar(target=40, verbose=1, stream=stream, clock=clock)
    clock.t = 3.0
    bar.update(1, [("loss", 0.5)])    # "ETA: 1:57"
    clock.t = 4.0
    bar.update(39, [("loss", 0.5)])   # "ETA: 0s": two characters shorter
    first, second = stream.getvalue().split("\r")[1:]
    assert second.endswith("ETA: 0s - loss: 0.5000  ") and len(second) == len(first)


def test_progress_logger_tty_and_unknown_steps():
    stream = TTY()
    logger = C.ProgbarLogger(stream=stream)
    fit(FakeModel(), [logger], val_losses(0.5), steps=None, verbose=1)
    out = stream.getvalue()
    assert "Epoch" not in out  # a single epoch prints no header, as in Keras
    frames = [f for f in out.split("\r") if f]
    assert frames[0].startswith("      1/Unknown")
    assert re.match(r"3/3 \[={30}\] - \d+s", frames[-1])


def test_progress_for_evaluate_outside_fit(capsys):
    logger = C.ProgbarLogger()
    cbs = C.CallbackList([logger], steps=2, verbose=2, epochs=1)
    cbs.on_test_begin()
    cbs.on_test_batch_end(0, {"loss": 0.5})
    cbs.on_test_batch_end(1, {"loss": 0.3})
    cbs.on_test_end({"loss": 0.3, "mae": 0.1})
    out = capsys.readouterr().out
    assert re.fullmatch(r"2/2 - \d+s - \d+(us|ms|s)/step - loss: 0\.3000 - mae: 0\.1000\n", out)
