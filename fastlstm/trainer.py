"""The training loop shared by ``Sequential`` and the functional ``Model`` (Keras 3's
``Trainer``): ``fit``, ``evaluate``, ``predict``, ``train_on_batch``, ``test_on_batch``,
callbacks, validation, and the data sources (arrays, generators, PyDatasets; see
fastlstm.data_adapters).

A model class supplies the structure-specific parts:

``_x_data(name, x)``, ``_y_data(name, y)``, ``_sw_data(name, sw)``
    checked inputs, targets and sample weights (an array, or for a functional model a list
    of arrays aligned with its inputs or outputs);
``_train_step(x, y, sw)``, ``_test_step(x, y, sw)``, ``_predict_batch(x)``
    one batch; the steps update the loss tracker and the metrics (``self.metrics``);
``_class_weights(y, class_weight)``
    the sample weights ``class_weight`` gives a batch's targets;
``layers``, ``_require_layers(what)``, ``_record_input(x)``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import callbacks as callbacks_module
from . import data_adapters
from . import devices
from .data_adapters import flat_arrays, num_samples, take
from .losses import squeeze_or_expand_to_same_rank

__all__ = ["Trainer"]


def _check_batch_size(batch_size, argument="batch_size"):
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"{argument}: expected a positive integer, got {batch_size!r}")
    return int(batch_size)


def _as_data(name, value, required=True):
    """``value`` as an ndarray with at least one axis (integer input stays integer)."""
    if value is None:
        if required:
            raise ValueError(f"{name}: expected an array, got None")
        return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value) \
            and len({v.shape for v in value}) > 1:
        raise TypeError(f"{name}: a Sequential model takes one array, got a list of "
                        f"{len(value)} arrays of different shapes")
    try:
        arr = np.asarray(devices.to_host(value))
    except Exception as exc:  # ragged nested lists and the like
        raise TypeError(f"{name}: expected an array, got {type(value).__name__} ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError(f"{name}: expected an array with a batch axis, got a scalar")
    return arr


def _shape_text(value):
    arrays = flat_arrays(value)
    if len(arrays) == 1 and not isinstance(value, (list, tuple, dict)):
        return str(arrays[0].shape)
    return "[" + ", ".join(str(a.shape) for a in arrays) + "]"


def _check_lengths(x, y, sample_weight):
    """The number of samples, the same along the first axis of every array of ``x``, ``y``
    and ``sample_weight`` (arrays, or lists/dicts of arrays)."""
    n = num_samples(x)
    for a in flat_arrays(x):
        if a.shape[0] != n:
            raise ValueError(f"x: expected the same number of samples (first axis) in every "
                             f"input, got shapes {_shape_text(x)}")
    for a in flat_arrays(y):
        if a.shape[0] != n:
            raise ValueError(f"x and y: expected the same number of samples (first axis), got "
                             f"x with {n} (shape {_shape_text(x)}) and y with {a.shape[0]} "
                             f"(shape {_shape_text(y)})")
    for a in flat_arrays(sample_weight):
        if a.shape[0] != n:
            raise ValueError(f"sample_weight: expected {n} entries (one per sample of x), got "
                             f"shape {_shape_text(sample_weight)}")
    return n


def _masked_weights(sample_weight, mask, values_shape, reduction):
    """Keras 3's ``losses.loss.apply_mask``: the output mask folded into the sample weights.

    For a mean-like reduction the valid entries weigh ``total / valid`` and masked ones 0, so
    that ``sum_over_batch_size`` averages over valid entries only."""
    if mask is None:
        return sample_weight
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(values_shape):
        return sample_weight           # a mask that does not describe the loss values
    if reduction in ("mean", "sum_over_batch_size"):
        valid = int(mask.sum())
        scale = mask.size / valid if valid else 0.0
        weights = np.where(mask, scale, 0.0)
    else:
        weights = mask.astype(np.float64)
    if sample_weight is None:
        return weights
    sw = np.asarray(sample_weight, dtype=np.float64)
    weights, sw = squeeze_or_expand_to_same_rank(weights, sw)
    if 0 < sw.ndim < weights.ndim:     # per-sample weights on per-timestep values
        sw = sw.reshape(sw.shape + (1,) * (weights.ndim - sw.ndim))
    return sw * weights


def _to_host(out):
    if isinstance(out, dict):
        return {k: devices.to_host(v) for k, v in out.items()}
    if isinstance(out, list):
        return [devices.to_host(o) for o in out]
    return devices.to_host(out)


class Trainer:
    """The loop; see the module docstring for what a model class supplies."""

    # -- weights and states, over ``layers`` ------------------------------------------
    @property
    def weights(self):
        """The layers' weight arrays themselves (not copies), in layer order."""
        return [w for layer in self.layers if layer.built for w in layer.weights]

    @property
    def trainable_weights(self):
        return [w for layer in self.layers if layer.built and layer.trainable
                for w in layer.weights]

    def get_weights(self):
        """Copies of every layer's weights, concatenated in layer order."""
        return [w for layer in self.layers if layer.built for w in layer.get_weights()]

    def count_params(self):
        return int(sum(w.size for w in self.weights))

    def reset_states(self):
        """Zero the carried states of every stateful layer."""
        for layer in self.layers:
            if layer.stateful:
                layer.reset_states()

    def reset_state(self):
        """Keras 3's name for :meth:`reset_states`: zero the carried states of every
        stateful layer (the others are left alone)."""
        self.reset_states()

    def _summary_totals(self, width):
        """The last lines of ``summary()``: parameter counts and their sizes, as Keras."""
        def size(n_bytes):
            units = ["B", "KB", "MB", "GB", "TB"]
            value, unit = float(n_bytes), 0
            while value >= 1024 and unit < len(units) - 1:
                value /= 1024
                unit += 1
            return f"{value:.2f} {units[unit]}"

        total = sum(w.size for w in self.weights)
        trainable = sum(w.size for w in self.trainable_weights)
        nbytes = sum(w.nbytes for w in self.weights)
        tbytes = sum(w.nbytes for w in self.trainable_weights)
        return [f" Total params: {total:,} ({size(nbytes)})",
                f" Trainable params: {trainable:,} ({size(tbytes)})",
                f" Non-trainable params: {total - trainable:,} ({size(nbytes - tbytes)})",
                "_" * width]

    def get_layer(self, name=None, index=None):
        """The layer called ``name`` or at position ``index`` of ``layers`` (Keras's
        ``get_layer``)."""
        layers = self.layers
        if index is not None:
            if name is not None:
                raise ValueError(f"get_layer: give name or index, not both (got name={name!r}, "
                                 f"index={index!r})")
            if isinstance(index, bool) or not isinstance(index, numbers.Integral):
                raise TypeError(f"index: expected an integer, got {index!r}")
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"index: {self.name} has {len(layers)} layers, got index {index}")
            return layers[index]
        if not isinstance(name, str):
            raise ValueError(f"get_layer: expected a layer name (a string) or an index, got "
                             f"name={name!r}")
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(f"name: no layer named {name!r} in {self.name}; its layers are "
                         f"{[layer.name for layer in layers]}")

    def predict_on_batch(self, x):
        return _to_host(self(x))

    def predict(self, x, batch_size=None, verbose=0, callbacks=None, steps=None):
        """Outputs for ``x`` computed ``batch_size`` samples at a time, concatenated. ``x``
        may be a generator or a PyDataset whose batches are ``x``, ``(x,)`` or ``(x, y[,
        sample_weight])`` (the targets are not used); ``steps`` limits the batches (a
        generator without it runs until exhausted)."""
        self._require_layers("predict")
        source, n = self._data_source(x, None, None, batch_size, steps, False, "x", False,
                                      "steps")
        cbs = callbacks_module.CallbackList(callbacks, add_progbar=verbose != 0, model=self,
                                            verbose=verbose, epochs=1, steps=source.steps)
        cbs.on_predict_begin()
        outputs = []
        for step, (xb, _, _) in enumerate(source.epoch()):
            cbs.on_predict_batch_begin(step)
            xb = self._batch_arrays(source, xb, None, None, need_y=False)[0]
            self._record_input(xb)
            out = self._predict_batch(xb)
            outputs.append(_to_host(out))
            cbs.on_predict_batch_end(step, {"outputs": out})
        cbs.on_predict_end()
        if not outputs:
            raise ValueError("x: expected at least one batch to predict, got none (an "
                             "exhausted generator?)")
        if n == 0 or len(outputs) == 1:
            return outputs[0]
        if isinstance(outputs[0], list):
            return [np.concatenate(parts, axis=0) for parts in zip(*outputs)]
        return np.concatenate(outputs, axis=0)

    def _assert_compiled(self, method):
        if not self.compiled:
            raise ValueError(f"{method}: call compile(optimizer, loss, metrics) before "
                             f"{method}()")

    @property
    def metrics_names(self):
        return [m.name for m in self.metrics]

    def reset_metrics(self):
        for m in self.metrics:
            m.reset_state()

    def _results(self):
        return {m.name: float(m.result()) for m in self.metrics}

    def _flatten(self, logs):
        results = [logs[name] for name in self.metrics_names if name in logs]
        results += [logs[k] for k in sorted(logs) if k not in self.metrics_names]
        return results[0] if len(results) == 1 else results

    # -- one step ----------------------------------------------------------------------------------
    def _check_trainable_unchanged(self):
        compiled = getattr(self, "_compiled_trainable", ())
        changed = [f"{layer.name} (trainable={layer.trainable!r}, {flag!r} at compile)"
                   for layer, flag in compiled
                   if bool(layer.trainable) != flag and layer.weight_names]
        if changed and getattr(self.optimizer, "_slots", None) is None:
            # No step taken yet: the optimizer sets itself up for the weights that train now.
            self._compiled_trainable = [(layer, bool(layer.trainable)) for layer, _ in compiled]
            return
        if changed:
            raise ValueError(f"trainable: changed since compile() on {', '.join(changed)}; "
                             "call compile() again after changing trainable, so that the "
                             "optimizer is set up for the weights that now train")

    def _check_not_quantized(self):
        from .quantization import quantized_precision
        for layer in self.layers:
            precision = quantized_precision(layer)
            if precision is not None:
                raise ValueError(f"fit: {self.name} is quantized ({precision}) for inference "
                                 f"only ({layer.name}); train the float model and quantize it "
                                 "again (fl.quantize)")

    def train_on_batch(self, x, y, sample_weight=None, return_dict=False):
        """One optimizer step on one batch. Returns the loss (with metrics, a list
        ``[loss, *metrics]``; ``return_dict=True``: a dict), from the forward pass before the
        update, as Keras does."""
        return self._on_batch("train_on_batch", self._train_step, x, y, sample_weight,
                              return_dict)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        """Loss and metrics of one batch in inference mode."""
        return self._on_batch("test_on_batch", self._test_step, x, y, sample_weight,
                              return_dict)

    def _on_batch(self, what, step, x, y, sample_weight, return_dict):
        """train_on_batch / test_on_batch: the checked batch through `step`, its logs."""
        self._assert_compiled(what)
        self._require_layers(what)
        x, y = self._x_data("x", x), self._y_data("y", y)
        sw = self._sw_data("sample_weight", sample_weight)
        if _check_lengths(x, y, sw) == 0:      # as fit: no step (nor a counted iteration)
            raise ValueError(f"x: expected at least one sample, got shape {_shape_text(x)}")
        self._record_input(x)
        self.reset_metrics()
        step(x, y, sw)
        logs = self._results()
        return logs if return_dict else self._flatten(logs)

    # -- loops -------------------------------------------------------------------------------------
    def _test_loop(self, source, cbs):
        self.reset_metrics()
        cbs.on_test_begin()
        seen = 0
        for step, (x, y, sw) in enumerate(source.epoch()):
            cbs.on_test_batch_begin(step)
            x, y, sw = self._batch_arrays(source, x, y, sw)
            self._test_step(x, y, sw)
            seen += 1
            cbs.on_test_batch_end(step, self._results())
        if seen == 0:
            raise ValueError(f"{getattr(source, 'what', 'x')}: expected at least one batch to evaluate, "
                             "got none (an exhausted generator?)")
        logs = self._results()
        cbs.on_test_end(logs)
        return logs

    def _batch_arrays(self, source, x, y, sw, need_y=True, class_weight=None):
        """A generator's or PyDataset's batch as checked arrays (arrays pass as they are)."""
        if isinstance(source, data_adapters.ArraySource):
            return x, y, sw
        what = source.what
        x = self._x_data(f"{what}: batch x", x)
        if not need_y:
            return x, None, None
        y = self._y_data(f"{what}: batch y", y)
        sw = self._sw_data(f"{what}: batch sample_weight", sw)
        n = num_samples(x)
        if any(a.shape[0] != n for a in flat_arrays(x) + flat_arrays(y) + flat_arrays(sw)):
            raise ValueError(f"{what}: a batch's x, y and sample_weight must have the same number "
                             f"of samples, got x {_shape_text(x)}, y {_shape_text(y)}"
                             + ("" if sw is None else f", sample_weight {_shape_text(sw)}"))
        if n == 0:
            raise ValueError(f"{what}: got an empty batch (x of shape {_shape_text(x)})")
        if class_weight is not None:
            sw = self._class_weights(y, sw, class_weight)
        return x, y, sw

    def _num_classes(self):
        """The model's output width, when known (bounds class_weight's classes)."""
        try:
            shape = self.output_shape
        except Exception:       # a layer that cannot tell its output shape
            return None
        return shape[-1] if isinstance(shape, tuple) and shape and shape[-1] else None

    def _data_source(self, x, y, sample_weight, batch_size, steps, shuffle, what, need_y,
                     steps_argument, batch_argument="batch_size", names=("x", "y", "sample_weight")):
        """(source, n_samples or None): arrays, a generator or a PyDataset behind one
        interface (fastlstm.data_adapters)."""
        steps = data_adapters.check_steps(steps, steps_argument)
        generator = data_adapters.is_generator(x)
        if generator or data_adapters.is_py_dataset(x):
            kind = "generator" if generator else "PyDataset"
            for name, value, holds in (("y", y, "the targets"),
                                       ("sample_weight", sample_weight, "the sample weights"),
                                       (batch_argument, batch_size, "the batch size")):
                if value is not None:
                    raise ValueError(f"{name}: must not be given when {what} is a {kind} "
                                     f"({holds} come from its batches); got {name}="
                                     f"{value!r:.60}")
            if generator:
                return data_adapters.GeneratorSource(x, steps, what, need_y), None
            return data_adapters.PyDatasetSource(x, steps, shuffle, what, need_y,
                                                 steps_argument), None
        x = self._x_data(names[0], x)
        y = self._y_data(names[1], y) if need_y else None
        sw = self._sw_data(names[2], sample_weight) if need_y else None
        n = _check_lengths(x, y, sw)
        if batch_size is None and steps is not None and n:   # Keras: the data in `steps` batches
            batch_size = math.ceil(n / steps)
        batch_size = _check_batch_size(batch_size, batch_argument)
        self._record_input(x)
        return data_adapters.ArraySource(x, y, sw, batch_size, shuffle, steps), n

    def evaluate(self, x=None, y=None, batch_size=None, verbose=0, sample_weight=None,
                 return_dict=False, callbacks=None, steps=None):
        """Loss and metrics over ``x, y`` in inference mode, ``batch_size`` at a time: the
        loss alone, ``[loss, *metrics]``, or a dict with ``return_dict=True``. ``x`` may be a
        generator or a PyDataset of ``(x, y[, sample_weight])`` batches (no ``y``,
        ``sample_weight`` nor ``batch_size`` then); ``steps`` limits the batches (a generator
        without it runs until exhausted)."""
        self._assert_compiled("evaluate")
        self._require_layers("evaluate")
        source, n = self._data_source(x, y, sample_weight, batch_size, steps, False, "x", True,
                                      "steps")
        if n == 0:
            raise ValueError(f"x: expected at least one sample, got shape {_shape_text(source.x)}")
        cbs = callbacks_module.CallbackList(callbacks, add_progbar=verbose != 0, model=self,
                                            verbose=verbose, epochs=1, steps=source.steps)
        logs = self._test_loop(source, cbs)
        return logs if return_dict else self._flatten(logs)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, sample_weight=None,
            initial_epoch=0, validation_batch_size=None, class_weight=None,
            steps_per_epoch=None, validation_steps=None):
        """Train for ``epochs`` epochs (from ``initial_epoch``) and return the ``History``.

        Keras 3 semantics: ``validation_split`` takes the *last* fraction of the samples, before
        shuffling; ``shuffle=True`` draws a new order each epoch; the last batch may be short.
        ``verbose``: 0 silent, 1 a live progress bar, 2 one line per epoch. Per-epoch logs:
        ``loss``, the metric names, and ``val_loss``/``val_<metric>`` with validation data.
        Setting ``model.stop_training = True`` (e.g. from a callback) ends training after the
        current batch.

        ``x`` (and ``validation_data``) may be a Python generator or a ``fl.utils.PyDataset``
        of ``(x, y)`` or ``(x, y, sample_weight)`` batches (then ``y``, ``sample_weight`` and
        ``batch_size`` are not given): ``steps_per_epoch`` (``validation_steps``) batches per
        epoch, continuing through the generator; a generator without it runs until it is
        exhausted, which is one epoch; a PyDataset gives ``len()`` batches an epoch, in a new
        order each epoch with ``shuffle`` and ``on_epoch_end()`` after each.
        ``class_weight`` (``{class index: weight}``) weighs each training sample by its
        class (from integer or one-hot targets), times ``sample_weight`` when both are given.
        """
        self._assert_compiled("fit")
        self._require_layers("fit")
        self._check_not_quantized()
        for argname, value in (("epochs", epochs), ("initial_epoch", initial_epoch)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{argname}: expected a non-negative integer, got {value!r}")
        if shuffle not in (True, False):
            raise ValueError(f"shuffle: expected True or False, got {shuffle!r}")
        if verbose == "auto":
            verbose = 1
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose: expected 0, 1, 2 or 'auto', got {verbose!r}")
        if class_weight is not None:
            data_adapters._check_class_weight(class_weight)
        streamed = data_adapters.is_generator(x) or data_adapters.is_py_dataset(x)

        val = None
        if validation_data is not None:
            if data_adapters.is_generator(validation_data) \
                    or data_adapters.is_py_dataset(validation_data):
                val_parts = (validation_data, None, None)
            elif isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3):
                val_parts = (validation_data[0], validation_data[1],
                             validation_data[2] if len(validation_data) == 3 else None)
            else:
                raise ValueError("validation_data: expected a tuple (x_val, y_val) or "
                                 f"(x_val, y_val, sample_weight_val), a generator or a PyDataset, "
                                 f"got {type(validation_data).__name__}"
                                 + (f" of length {len(validation_data)}"
                                    if isinstance(validation_data, (tuple, list)) else ""))
            val_streamed = val_parts[1] is None and val_parts[2] is None \
                and not isinstance(validation_data, (tuple, list))
            if val_streamed and data_adapters.is_generator(validation_data) \
                    and validation_steps is None and epochs - initial_epoch > 1:
                raise ValueError(
                    "validation_steps: a validation generator without validation_steps is "
                    "used up by the first epoch's validation (and never ends if it is "
                    f"infinite); fit(epochs={epochs}) needs validation_steps, with a generator "
                    "that yields at least validation_steps batches per epoch, or a PyDataset")
            val, vn = self._data_source(
                val_parts[0], val_parts[1], val_parts[2],
                None if val_streamed else (validation_batch_size or batch_size),
                validation_steps, False, "validation_data", True, "validation_steps",
                "validation_batch_size",
                ("validation_data[0]", "validation_data[1]", "validation_data[2]"))
            if val_streamed:
                val.what = "validation_data"
            elif vn == 0:
                raise ValueError("validation_data: expected at least one sample")
        elif validation_split:
            if streamed:
                raise ValueError(f"validation_split: only arrays can be split; x is a "
                                 f"{'generator' if data_adapters.is_generator(x) else 'PyDataset'} "
                                 "(give validation_data instead), got "
                                 f"validation_split={validation_split!r}")
            if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                    or not 0.0 < validation_split < 1.0:
                raise ValueError(f"validation_split: expected a float in (0, 1), got "
                                 f"{validation_split!r}")
        if streamed and data_adapters.is_generator(x) and steps_per_epoch is None \
                and epochs - initial_epoch > 1:
            raise ValueError(
                "steps_per_epoch: a generator without steps_per_epoch runs until it is "
                "exhausted, which is one epoch (and never ends if it is infinite); "
                f"fit(epochs={epochs}) needs steps_per_epoch, with a generator that yields at "
                "least steps_per_epoch * epochs batches (e.g. one that loops), or a PyDataset")

        if streamed:
            source, n = self._data_source(x, y, sample_weight, batch_size, steps_per_epoch,
                                          shuffle, "x", True, "steps_per_epoch")
        else:
            x, y = self._x_data("x", x), self._y_data("y", y)
            sw = self._sw_data("sample_weight", sample_weight)
            n = _check_lengths(x, y, sw)
            if validation_split and validation_data is None:
                split_at = int(math.floor(n * (1.0 - validation_split)))
                if split_at == 0 or split_at == n:
                    raise ValueError(f"validation_split: {n} samples cannot be split into a "
                                     f"training and a validation set with "
                                     f"validation_split={validation_split}")
                val_batch = _check_batch_size(validation_batch_size or batch_size,
                                              "validation_batch_size")
                rest, head = slice(split_at, None), slice(None, split_at)
                val = data_adapters.ArraySource(take(x, rest), take(y, rest), take(sw, rest),
                                                val_batch)
                x, y, sw = take(x, head), take(y, head), take(sw, head)
                n = split_at
            if n == 0:
                raise ValueError(f"x: expected at least one training sample, got shape "
                                 f"{_shape_text(x)}")
            self._record_input(x)
            if class_weight is not None:
                sw = self._class_weights(y, sw, class_weight)
            source, n = self._data_source(x, y, sw, batch_size, steps_per_epoch, shuffle, "x",
                                          True, "steps_per_epoch")
            class_weight = None          # folded into the sample weights already

        cbs = callbacks_module.CallbackList(callbacks, add_history=True, add_progbar=verbose != 0,
                                            model=self, verbose=verbose, epochs=epochs,
                                            steps=source.steps)
        self.stop_training = False
        cbs.on_train_begin()
        epoch_logs = {}
        for epoch in range(initial_epoch, epochs):
            self.reset_metrics()
            cbs.on_epoch_begin(epoch)
            source.on_epoch_begin()
            seen = 0
            for step, (xb, yb, swb) in enumerate(source.epoch()):
                cbs.on_train_batch_begin(step)
                xb, yb, swb = self._batch_arrays(source, xb, yb, swb, class_weight=class_weight)
                self._record_input(xb)
                self._train_step(xb, yb, swb)
                seen += 1
                cbs.on_train_batch_end(step, self._results())
                if self.stop_training:
                    break
            source.on_epoch_end()
            if seen == 0:              # the generator had nothing left: as Keras, stop
                data_adapters._ran_out_warning("fit")
                break
            epoch_logs = self._results()
            if val is not None:
                val_logs = self._test_loop(val, cbs)
                epoch_logs.update({"val_" + k: v for k, v in val_logs.items()})
            cbs.on_epoch_end(epoch, epoch_logs)
            if source.ran_out:
                data_adapters._ran_out_warning("fit")
                break
            if self.stop_training:
                break
        cbs.on_train_end(epoch_logs)
        return cbs.history
