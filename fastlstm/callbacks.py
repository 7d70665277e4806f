"""Training callbacks with Keras' hooks and behaviour.

A callback sees a duck-typed model: ``model.stop_training`` (bool), ``model.get_weights()``
/ ``model.set_weights(ws)``, ``model.save(path)`` and ``model.optimizer.learning_rate``
(readable, and settable for a numeric rate). ``params`` is a dict with at least
``"epochs"``, ``"steps"`` (batches per epoch, or None) and ``"verbose"``.

Hook order in ``fit``: ``on_train_begin``; per epoch ``on_epoch_begin``,
``on_train_batch_begin/end`` per batch, then ``on_epoch_end(epoch, logs)`` with the epoch's
``loss``, metrics and ``val_*`` entries; finally ``on_train_end``. Epochs and batches are
0-based, as in Keras.
"""
from __future__ import annotations

import collections.abc
import csv
import inspect
import math
import numbers
import os
import sys
import time
import warnings

import numpy as np

__all__ = [
    "Callback",
    "CallbackList",
    "History",
    "EarlyStopping",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "LearningRateScheduler",
    "CSVLogger",
    "LambdaCallback",
    "TerminateOnNaN",
    "ProgbarLogger",
    "Progbar",
]


def _on_chief():
    """False on the ranks other than 0 of a job set up with ``fastlstm.distributed.init()``,
    True otherwise: checkpoints and progress output come from rank 0 only, as in Horovod.
    Looked up in ``sys.modules`` so that callbacks never import MPI."""
    distributed = sys.modules.get("fastlstm.distributed")
    return distributed is None or distributed._on_chief()


class Callback:
    """Base class: every hook is a no-op. ``self.model`` and ``self.params`` are set by
    the training loop (through :class:`CallbackList`) before ``on_train_begin``."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_test_begin(self, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_begin(self, logs=None):
        pass

    def on_predict_end(self, logs=None):
        pass

    def on_predict_batch_begin(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass


_HOOKS = [name for name in vars(Callback) if name.startswith("on_")]


class CallbackList:
    """Calls every hook on each callback in order. With ``add_history``/``add_progbar`` a
    :class:`History` / :class:`ProgbarLogger` is appended unless one is already present
    (the progress bar last, so it prints the logs other callbacks added)."""

    def __init__(self, callbacks=None, add_history=False, add_progbar=False, model=None,
                 **params):
        if isinstance(callbacks, Callback):     # one callback, as Keras also takes it
            callbacks = [callbacks]
        elif callbacks is not None and not isinstance(callbacks, (list, tuple)):
            raise TypeError("Argument `callbacks` must be a list of fastlstm.callbacks.Callback "
                            f"instances, got {type(callbacks).__name__}.")
        self.callbacks = list(callbacks or [])
        for i, cb in enumerate(self.callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"Argument `callbacks` must hold fastlstm.callbacks.Callback instances; "
                    f"callbacks[{i}] is {type(cb).__name__}."
                )
        self.history = next((cb for cb in self.callbacks if isinstance(cb, History)), None)
        if self.history is None and add_history:
            self.history = History()
            self.callbacks.append(self.history)
        if add_progbar and not any(isinstance(cb, ProgbarLogger) for cb in self.callbacks):
            self.callbacks.append(ProgbarLogger())
        self.model = None
        self.params = {}
        if model is not None:
            self.set_model(model)
        if params:
            self.set_params(params)

    def set_model(self, model):
        self.model = model
        for cb in self.callbacks:
            cb.set_model(model)

    def set_params(self, params):
        self.params = params
        for cb in self.callbacks:
            cb.set_params(params)

    def append(self, callback):
        self.callbacks.append(callback)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self):
        return len(self.callbacks)


def _make_dispatcher(hook):
    # Pass `logs` positionally, as Keras does, so plain functions (LambdaCallback) that
    # take `logs` without a default work.
    if hook in ("on_epoch_begin", "on_epoch_end") or "_batch_" in hook:
        def dispatch(self, index, logs=None):
            for cb in self.callbacks:
                getattr(cb, hook)(index, logs)
    else:
        def dispatch(self, logs=None):
            for cb in self.callbacks:
                getattr(cb, hook)(logs)

    dispatch.__name__ = hook
    dispatch.__doc__ = f"Call ``{hook}`` on every callback."
    return dispatch


for _hook in _HOOKS:
    setattr(CallbackList, _hook, _make_dispatcher(_hook))


class History(Callback):
    """Records the epoch logs: ``history[name]`` is the list of per-epoch values and
    ``epoch`` the list of epoch indices; also sets ``model.history`` to itself."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
        if self.model is not None:
            try:
                self.model.history = self
            except AttributeError:  # a model that refuses new attributes
                pass


# --------------------------------------------------------------------------- monitoring


def _is_max_metric(name):
    """Keras 2's rule for mode="auto": accuracy-, AUC- and F-measure-like are maximised."""
    return "acc" in name or "auc" in name or name.startswith("fmeasure")


class _MonitorCallback(Callback):
    """Tracks the best value of ``logs[monitor]``. ``mode="min"``: an improvement is
    ``current < best - min_delta``; ``"max"``: ``current > best + min_delta``; ``"auto"``:
    min for losses, else the metric's ``direction`` if the model lists it in
    ``model.metrics``, else max for names containing acc/auc, else min."""

    def __init__(self, monitor="val_loss", mode="auto", min_delta=0.0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                f"Invalid value for argument `mode`: expected 'auto', 'min' or 'max'. "
                f"Received: mode={mode!r}."
            )
        if not isinstance(monitor, str):
            raise TypeError(f"Argument `monitor` must be a string. Received: monitor={monitor!r}.")
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(float(min_delta))
        self.best = None
        self._maximize = None

    def _resolve_mode(self):
        if self.mode != "auto":
            return self.mode == "max"
        name = self.monitor[4:] if self.monitor.startswith("val_") else self.monitor
        if name == "loss" or name.endswith("_loss"):
            return False
        for metric in getattr(self.model, "metrics", None) or []:
            if getattr(metric, "name", None) == name:
                direction = getattr(metric, "direction", None) or getattr(
                    metric, "_direction", None)
                if direction in ("up", "down"):
                    return direction == "up"
        return _is_max_metric(name)

    def _is_improvement(self, current, reference):
        if self._maximize is None:
            self._maximize = self._resolve_mode()
        if reference is None:
            return True
        if self._maximize:
            return current - self.min_delta > reference
        return current + self.min_delta < reference

    def _current(self, logs, what):
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(
                f"{what} conditioned on metric `{self.monitor}` which is not available. "
                f"Available metrics are: {','.join(logs or {})}",
                stacklevel=3,
            )
            return None
        return float(value)


class EarlyStopping(_MonitorCallback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs (Keras 3).

    Each epoch from ``start_from_epoch`` on: ``wait += 1``; on an improvement the best is
    updated (and the weights kept if ``restore_best_weights``) and ``wait`` reset to 0 --
    unless a ``baseline`` is set and not beaten. When ``wait >= patience`` (and epoch > 0)
    ``model.stop_training`` is set. At the end of training the best weights are restored if
    asked for (the current weights count as best if no epoch was ever monitored).
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta)
        if not isinstance(patience, numbers.Integral) or patience < 0:
            raise ValueError(
                f"Invalid value for argument `patience`: expected an int >= 0. "
                f"Received: patience={patience!r}."
            )
        self.patience = int(patience)
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights = None
        self.best_epoch = 0

    def on_train_begin(self, logs=None):
        # Reset so one instance can serve several fit() calls.
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        current = self._current(logs, "Early stopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping", file=sys.stdout)
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print("Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.", file=sys.stdout)
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_MonitorCallback):
    """Calls ``model.save(path)`` at the end of every epoch, or only when ``monitor``
    improved if ``save_best_only``. ``filepath`` may hold ``str.format`` fields filled
    with ``epoch`` (1-based) and the epoch logs, e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``.
    Missing directories are created."""

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 mode="auto", initial_value_threshold=None):
        super().__init__(monitor, mode, 0.0)
        self.filepath = os.fspath(filepath)
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.best = initial_value_threshold

    def _format_path(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError) as e:
            raise KeyError(
                f'Failed to format the ModelCheckpoint filepath "{self.filepath}" with '
                f"epoch and the logs {sorted(logs)}. Reason: {e!r}"
            ) from None

    def on_epoch_end(self, epoch, logs=None):
        if not _on_chief():
            return
        logs = dict(logs or {})
        path = self._format_path(epoch, logs)
        if self.save_best_only:
            current = self._current(logs, "Saving the best model")
            if current is not None:
                if not self._is_improvement(current, self.best):
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from "
                              f"{self.best:.5f}", file=sys.stdout)
                    return
                if self.verbose > 0:
                    best = "None" if self.best is None else f"{self.best:.5f}"
                    print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} to "
                          f"{current:.5f}, saving model to {path}", file=sys.stdout)
                self.best = current
        elif self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: saving model to {path}", file=sys.stdout)
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self.model.save(path)


class ReduceLROnPlateau(_MonitorCallback):
    """Multiplies the learning rate by ``factor`` (floored at ``min_lr``) when ``monitor``
    has not improved by ``min_delta`` for ``patience`` epochs; then waits ``cooldown``
    epochs before counting again (Keras 3). Adds ``logs["learning_rate"]``."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta)
        if not (isinstance(factor, numbers.Real) and 0 <= factor < 1):
            raise ValueError(
                f"Invalid value for argument `factor`: expected a number in [0, 1). "
                f"Received: factor={factor!r}."
            )
        self.factor = float(factor)
        self.patience = int(patience)
        self.verbose = verbose
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)
        self.cooldown_counter = 0
        self.wait = 0

    def on_train_begin(self, logs=None):
        self.best = None
        self.cooldown_counter = 0
        self.wait = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(optimizer.learning_rate)
        current = self._current(logs, "Learning rate reduction")
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = float(optimizer.learning_rate)
                # float32 comparison as Keras does, so a rate stored in float32 stops too.
                if old_lr > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    optimizer.learning_rate = new_lr
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning "
                              f"rate to {new_lr}.", file=sys.stdout)
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class LearningRateScheduler(Callback):
    """At the start of each epoch sets ``optimizer.learning_rate = schedule(epoch, lr)``
    (or ``schedule(epoch)`` for a one-argument function); adds ``logs["learning_rate"]``."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"Argument `schedule` must be callable. Received: {schedule!r}.")
        self.schedule = schedule
        self.verbose = verbose
        try:
            inspect.signature(schedule).bind(0, 0.0)
            self._two_args = True
        except TypeError:
            self._two_args = False
        except ValueError:  # no signature available (some builtins)
            self._two_args = True

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if self._two_args:
            lr = self.schedule(epoch, float(optimizer.learning_rate))
        else:
            lr = self.schedule(epoch)
        if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not math.isfinite(lr):
            raise ValueError(
                f"The output of the `schedule` function should be a finite float. Got: {lr!r}"
            )
        optimizer.learning_rate = float(lr)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to "
                  f"{float(lr)}.", file=sys.stdout)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class CSVLogger(Callback):
    """Writes one CSV row per epoch: ``epoch`` (0-based) and the logs in sorted key order.

    As in Keras 3 the columns are fixed at the first epoch, ``val_*`` columns are added for
    every key when the first epoch had no validation entries (filled with ``NA`` while
    missing), rows use the csv module's excel dialect (``\\r\\n`` line ends), and with
    ``append=True`` the header is written only if the file is missing or empty.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = bool(append)
        self.keys = None
        self.writer = None
        self.csv_file = None
        self.append_header = True

    def on_train_begin(self, logs=None):
        self.append_header = True
        if self.append and os.path.exists(self.filename):
            with open(self.filename, "r", newline="") as f:
                self.append_header = not bool(f.readline())
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = open(self.filename, "a" if self.append else "w", newline="")
        self.writer = None
        self.keys = None

    @staticmethod
    def _cell(value):
        if isinstance(value, str):
            return value
        if isinstance(value, np.ndarray) and value.ndim == 0:
            return value.item()
        if isinstance(value, collections.abc.Iterable):
            return f'"[{", ".join(map(str, value))}]"'
        return value

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.csv_file is None:  # used without on_train_begin
            self.on_train_begin()
        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys += [f"val_{k}" for k in self.keys]
        if self.writer is None:
            dialect = type("_Dialect", (csv.excel,), {"delimiter": self.sep})
            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys,
                                         dialect=dialect)
            if self.append_header:
                self.writer.writeheader()
        row = {"epoch": epoch}
        row.update((k, self._cell(logs.get(k, "NA"))) for k in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None


class LambdaCallback(Callback):
    """A callback from plain functions: ``on_epoch_begin(epoch, logs)``,
    ``on_epoch_end(epoch, logs)``, ``on_train_begin(logs)``, ``on_train_end(logs)``,
    ``on_train_batch_begin(batch, logs)``, ``on_train_batch_end(batch, logs)``; any other
    hook can be given by keyword (e.g. ``on_test_end=...``)."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 **kwargs):
        super().__init__()
        hooks = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                     on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end, **kwargs)
        for name, fn in hooks.items():
            if name not in _HOOKS:
                raise ValueError(
                    f"Unknown callback hook `{name}` for LambdaCallback; known hooks: {_HOOKS}."
                )
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"Argument `{name}` must be callable. Received: {fn!r}.")
                setattr(self, name, fn)


class TerminateOnNaN(Callback):
    """Stops training when the loss becomes NaN or infinite (Keras 3).

    After each training batch it looks at ``logs["loss"]`` (the epoch's running loss, as
    Keras reports it, so one bad batch makes it NaN or inf for the rest of the epoch); when it
    is not finite it prints ``Batch <n>: Invalid loss, terminating training`` and sets
    ``model.stop_training = True``: ``fit`` ends after that batch, the epoch's logs and
    ``on_epoch_end``/``on_train_end`` still run (so ``EarlyStopping`` or ``ModelCheckpoint``
    finish normally). ``raise_error=True`` raises a ``RuntimeError`` instead, at once, as
    Keras 3.12+ does (no later hooks run).
    """

    def __init__(self, raise_error=False):
        super().__init__()
        if not isinstance(raise_error, (bool, np.bool_)):
            raise TypeError(f"raise_error: expected True or False, got {raise_error!r}")
        self.raise_error = bool(raise_error)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if math.isnan(loss) or math.isinf(loss):
            if self.raise_error:
                raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}. "
                                   f"Loss value: {loss}. Terminating training immediately.")
            if _on_chief():
                print(f"Batch {batch}: Invalid loss, terminating training", flush=True)
            self.model.stop_training = True


# ----------------------------------------------------------------------------- progress


def _format_value(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return f" {value}"
    return f" {v:.4f}" if abs(v) > 1e-3 else f" {v:.4e}"


def _format_duration(seconds):
    if seconds > 3600:
        return "%d:%02d:%02d" % (seconds // 3600, (seconds % 3600) // 60, seconds % 60)
    if seconds > 60:
        return "%d:%02d" % (seconds // 60, seconds % 60)
    return "%ds" % seconds


def _format_per_step(seconds, unit="step"):
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s/{unit}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/{unit}"
    return f"{seconds * 1e6:.0f}us/{unit}"


class Progbar:
    """A text progress bar.

    ``verbose=1``: ``12/40 [=====>......] - ETA: 3s - loss: 0.1234`` redrawn in place
    (carriage return) while the stream is a terminal, at most every ``interval`` seconds;
    on a non-terminal stream only the final line is printed, so logs carry no ``\\r``
    noise. The final line reads ``40/40 [======] - 2s 50ms/step - loss: 0.1234``.
    ``verbose=2``: only the final line, ``40/40 - 2s - 50ms/step - loss: 0.1234``.
    Values are shown as given (the training loop passes running means).
    """

    def __init__(self, target, width=30, verbose=1, interval=0.05, stream=None,
                 unit_name="step", clock=time.monotonic):
        self.target = target
        self.width = width
        self.verbose = verbose
        self.interval = interval
        self.unit_name = unit_name
        self._stream = stream
        self._clock = clock
        self._values = {}
        self._start = clock()
        self._last_update = None
        self._time_after_first_step = None
        self._prev_width = 0
        self._seen = 0

    @property
    def stream(self):
        # Looked up at write time so redirected stdout (pytest's capsys, notebooks) works.
        return self._stream if self._stream is not None else sys.stdout

    def _dynamic(self):
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty()) or "ipykernel" in sys.modules
        except ValueError:  # closed stream
            return False

    def _step_time(self, current, now):
        # The first step (compilation, warm caches) is excluded once later ones exist.
        if not current:
            return 0.0
        if self._time_after_first_step is not None and current > 1:
            per = (now - self._time_after_first_step) / (current - 1)
        else:
            per = (now - self._start) / current
        if current == 1:
            self._time_after_first_step = now
        return per

    def _metrics_text(self):
        return "".join(f" - {k}:{_format_value(v)}" for k, v in self._values.items())

    def update(self, current, values=None, finalize=None):
        """Show ``current`` steps done with ``values`` (``[(name, value), ...]``)."""
        if finalize is None:
            finalize = self.target is not None and current >= self.target
        for k, v in values or []:
            self._values[k] = v
        self._seen = current
        now = self._clock()
        per_step = self._step_time(current, now)
        if self.verbose == 1:
            self._draw(current, now, per_step, finalize)
        elif self.verbose == 2 and finalize:
            target = self.target if self.target is not None else current
            digits = len(str(target))
            line = (f"{current:{digits}d}/{target} - {now - self._start:.0f}s - "
                    f"{_format_per_step(per_step, self.unit_name)}{self._metrics_text()}\n")
            self.stream.write(line)
            self.stream.flush()
        self._last_update = now

    def _draw(self, current, now, per_step, finalize):
        dynamic = self._dynamic()
        if not finalize:
            if not dynamic:
                return  # non-terminal: final line only
            if self._last_update is not None and now - self._last_update < self.interval:
                return
        if self.target:
            digits = len(str(self.target))
            done = int(self.width * min(current / self.target, 1.0))
            bar = ""
            if done > 0:
                bar = "=" * (done - 1) + (">" if current < self.target else "=")
            text = f"{current:{digits}d}/{self.target} [{bar}{'.' * (self.width - done)}]"
        else:
            text = f"{current:7d}/Unknown"
        if finalize:
            text += f" - {now - self._start:.0f}s {_format_per_step(per_step, self.unit_name)}"
        elif self.target:
            text += f" - ETA: {_format_duration(per_step * (self.target - current))}"
        text += self._metrics_text()
        if dynamic:
            padding = " " * max(self._prev_width - len(text), 0)
            self.stream.write("\r" + text + padding + ("\n" if finalize else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._prev_width = len(text)


class ProgbarLogger(Callback):
    """Progress output for ``fit``/``evaluate``/``predict`` as Keras prints it.

    ``verbose`` (default ``params["verbose"]``): 0 silent, 1 a live bar per epoch (see
    :class:`Progbar`), 2 one line per epoch. ``Epoch i/N`` headers are printed when
    ``epochs > 1``. During ``fit``, evaluation on validation data stays silent.
    """

    def __init__(self, verbose=None, stream=None):
        super().__init__()
        self._verbose = verbose
        self.stream = stream
        self.verbose = 1 if verbose is None else verbose
        self.epochs = 1
        self.target = None
        self.progbar = None
        self._seen = 0
        self._in_fit = False

    def set_params(self, params):
        super().set_params(params)
        verbose = self._verbose if self._verbose is not None else params.get("verbose", 1)
        self.verbose = 1 if verbose == "auto" else int(verbose)
        if not _on_chief():
            self.verbose = 0
        self.epochs = params.get("epochs", 1)
        self.target = params.get("steps")

    def _write(self, text):
        stream = self.stream if self.stream is not None else sys.stdout
        stream.write(text)
        stream.flush()

    def _reset(self):
        self._seen = 0
        self.progbar = Progbar(self.target, verbose=self.verbose, stream=self.stream)

    def _update(self, batch, logs):
        if self.progbar is None:
            self._reset()
        self._seen = batch + 1
        if self.verbose == 1:
            self.progbar.update(self._seen, list((logs or {}).items()), finalize=False)

    def _finalize(self, logs):
        if self.progbar is None:
            self._reset()
        if self.progbar.target is None:
            self.progbar.target = self._seen
        self.progbar.update(self.progbar.target, list((logs or {}).items()), finalize=True)

    def on_train_begin(self, logs=None):
        self._in_fit = True

    def on_train_end(self, logs=None):
        self._in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        self._reset()
        if self.verbose and self.epochs > 1:
            self._write(f"Epoch {epoch + 1}/{self.epochs}\n")

    def on_train_batch_end(self, batch, logs=None):
        self._update(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._finalize(logs)

    def on_test_begin(self, logs=None):
        if not self._in_fit:
            self._reset()

    def on_test_batch_end(self, batch, logs=None):
        if not self._in_fit:
            self._update(batch, logs)

    def on_test_end(self, logs=None):
        if not self._in_fit:
            self._finalize(logs)

    def on_predict_begin(self, logs=None):
        self._reset()

    def on_predict_batch_end(self, batch, logs=None):
        self._update(batch, None)  # predictions are not metrics

    def on_predict_end(self, logs=None):
        self._finalize(None)
