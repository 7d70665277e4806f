"""``Sequential``: a stack of layers with Keras 3's training loop.

    model = fl.Sequential([fl.layers.LSTM(32), fl.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    history = model.fit(x, y, batch_size=32, epochs=10, validation_split=0.1)
    model.evaluate(x_test, y_test); model.predict(x_new)
    model.save("model.npz"); model = fl.load_model("model.npz")

One training step (``train_on_batch`` and each batch of ``fit``):

1. ``forward_train`` through the layers (training semantics: dropout active). Each layer's
   ``compute_mask(inputs, mask)`` goes to the next layer's ``mask=`` (Embedding with
   ``mask_zero`` or Masking -> recurrent layers; Dense and Dropout pass a mask through).
2. ``loss.value_and_grad(y, y_pred, w)``, where ``w`` is ``sample_weight`` combined with the
   mask of the last layer's output as Keras 3's ``apply_mask`` does (masked timesteps weigh
   0, the others ``total / valid`` so the loss is the mean over valid timesteps).
3. Backprop in reverse; each trainable layer's weight gradients plus its
   ``regularization_grads()``.
4. ``optimizer.apply(grads, params)`` on the flat list of every trainable layer's weight
   arrays, in layer order then ``get_weights()`` order. The arrays are updated in place and
   are the layers' own attributes, collected afresh each step (so ``set_weights`` is safe).

The reported loss is the data loss plus the layers' weight-regularization losses and the
activity losses of this forward pass (Keras 3's ``compute_loss``); the epoch's ``loss`` is
the mean of the batch losses weighted by batch size (Keras 3's loss tracker). Metrics are
accumulated over the epoch from the training-mode predictions.

Shuffling draws from NumPy's global generator (``np.random.permutation``), so
``np.random.seed(n)`` makes ``fit`` repeatable (with seeded layers).

Stateful layers and truncated BPTT: with ``stateful=True`` a recurrent layer carries its
final states into the next batch, and gradients stop at the batch boundary. Cut a long
sequence of ``B`` streams into consecutive windows so that row ``i`` of batch ``k + 1``
continues row ``i`` of batch ``k``, and train with ``fit(shuffle=False, batch_size=B)``,
calling ``model.reset_states()`` at the start of each epoch (a ``LambdaCallback``); the
number of samples must be a multiple of ``B``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import callbacks as callbacks_module
from . import data_adapters
from . import devices
from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from .layers.base import Layer, _auto_name, activity_penalty, check_training
from .losses import squeeze_or_expand_to_same_rank
from .saving import register_model_class, save_model

__all__ = ["Sequential"]


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


def _check_lengths(x, y, sample_weight):
    n = x.shape[0]
    if y is not None and y.shape[0] != n:
        raise ValueError(f"x and y: expected the same number of samples (first axis), got "
                         f"x with {n} (shape {x.shape}) and y with {y.shape[0]} (shape {y.shape})")
    if sample_weight is not None and sample_weight.shape[0] != n:
        raise ValueError(f"sample_weight: expected {n} entries (one per sample of x), got "
                         f"shape {sample_weight.shape}")
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


@register_model_class
class Sequential:
    """A linear stack of layers, trained like a Keras 3 ``Sequential`` model.

    ``layers`` are fastlstm layers with one output each (no ``return_state``). The model is
    built on its first call, or by ``build(input_shape)`` with the batch axis ``None``.
    """

    def __init__(self, layers=None, name=None):
        self.name = name if name is not None else _auto_name("Sequential")
        if not isinstance(self.name, str):
            raise TypeError(f"name: expected a string, got {type(name).__name__}")
        self._layers = []
        self._input_shape = None        # (None, ...) once known
        self.device = "cpu"
        self.optimizer = None
        self.loss = None
        self.compiled = False
        self._compile_metrics = []
        self._loss_tracker = metrics_module.Mean(name="loss")
        self.stop_training = False
        self.history = None
        if layers is not None:
            if isinstance(layers, Layer) or not hasattr(layers, "__iter__"):
                raise TypeError(f"layers: expected a list of layers, got {type(layers).__name__}")
            names, ids = set(), set()      # one pass: a long list costs linear time
            for layer in layers:
                self._add(layer, names, ids)
                names.add(layer.name)
                ids.add(id(layer))
            self._build_from_first_layer()

    # -- structure ------------------------------------------------------------------------
    @property
    def layers(self):
        return list(self._layers)

    def add(self, layer):
        """Append ``layer`` to the stack."""
        self._add(layer, {other.name for other in self._layers},
                  {id(other) for other in self._layers})
        self._build_from_first_layer()

    def _build_from_first_layer(self):
        """Keras 2's ``input_shape=`` on the first layer (``LSTM(32, input_shape=(T, F))``)
        gives the model its input shape: build every layer for ``(None, T, F)``, as Keras
        builds a Sequential model whose first layer has one."""
        shape = getattr(self._layers[0], "_input_shape_arg", None) if self._layers else None
        if shape is not None:
            self.build((None,) + tuple(shape))

    def _add(self, layer, names, ids):
        """Append ``layer``, given the names and ids of the layers already there."""
        if not isinstance(layer, Layer):
            raise TypeError(f"layer: expected a fastlstm layer (fl.layers.*), got "
                            f"{type(layer).__name__} {layer!r}")
        if getattr(layer, "multiple_inputs", False):
            raise ValueError(f"layer: {layer.name} ({type(layer).__name__}) takes a list of "
                             "inputs; a Sequential model passes one (use the layer directly)")
        if layer.return_state:
            raise ValueError(f"layer: {layer.name} has return_state=True; every layer of a "
                             "Sequential model must have one output (use the layer directly to "
                             "get its states)")
        if id(layer) in ids:
            raise ValueError(f"layer: {layer.name} is already in {self.name}")
        if layer.name in names:
            raise ValueError(f"layer: the name {layer.name!r} is already used in "
                             f"{self.name}; layers of a model need unique names")
        if layer.device != self.device:
            layer.to(self.device)
        self._layers.append(layer)

    def pop(self):
        """Remove and return the last layer."""
        if not self._layers:
            raise IndexError(f"{self.name}: pop from a model with no layers")
        return self._layers.pop()

    def to(self, device):
        """Move every layer's weights (and the optimizer's state, at its next step) to
        ``device`` ("cpu" or "cuda"); returns the model. Data given to fit/evaluate/predict
        stays where it is and goes to the device a batch at a time; the loss and the metrics
        are computed on the host from the outputs."""
        device = devices.check_device(device)
        for layer in self._layers:     # check all before moving any
            if device != "cpu" and not layer.runs_on_gpu:
                raise NotImplementedError(
                    f"{layer.name}: {type(layer).__name__} runs on the CPU only; {self.name} "
                    f"cannot move to {device!r}")
        for layer in self._layers:
            layer.to(device)
        self.device = device
        return self

    @property
    def built(self):
        return bool(self._layers) and all(layer.built for layer in self._layers)

    def _require_layers(self, what):
        if not self._layers:
            raise ValueError(f"{what}: {self.name} has no layers; pass a list of layers to "
                             "Sequential([...]) or call add(layer)")

    def build(self, input_shape):
        """Build every layer for inputs of ``input_shape`` (the batch axis may be None)."""
        self._require_layers("build")
        if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__"):
            raise TypeError(f"input_shape: expected a tuple such as (None, timesteps, features), "
                            f"got {input_shape!r}")
        shape = tuple(None if d is None else int(d) for d in input_shape)
        if len(shape) < 2:
            raise ValueError(f"input_shape: expected at least (batch, features), got {shape}")
        self._input_shape = (None,) + shape[1:]
        current = self._input_shape
        for layer in self._layers:
            if not layer.built:
                layer.build(current)
            current = self._output_shape(layer, current)

    @staticmethod
    def _output_shape(layer, input_shape):
        shape = layer.compute_output_shape(input_shape)
        return None if shape is None else tuple(shape)

    def _record_input(self, x):
        if self._input_shape is None:
            self._input_shape = (None,) + tuple(x.shape[1:] if hasattr(x, "shape")
                                                else np.shape(x)[1:])

    def _as_input(self, x):
        """Float input in the first layer's dtype, converted once for all batches (integer
        input, for an Embedding, is left alone)."""
        dtype = self._layers[0].dtype if self._layers else None
        if x.dtype.kind == "f" and dtype is not None and x.dtype != dtype:
            return x.astype(dtype)
        return x

    def _output_shapes(self):
        shapes, current = [], self._input_shape
        for layer in self._layers:
            current = None if current is None else self._output_shape(layer, current)
            shapes.append(current)
        return shapes

    @property
    def input_shape(self):
        return self._input_shape

    @property
    def output_shape(self):
        shapes = self._output_shapes() if self._layers else [None]
        return shapes[-1]

    # -- weights -----------------------------------------------------------------------
    @property
    def weights(self):
        """The layers' weight arrays themselves (not copies), in layer order."""
        return [w for layer in self._layers if layer.built for w in layer.weights]

    @property
    def trainable_weights(self):
        return [w for layer in self._layers if layer.built and layer.trainable for w in layer.weights]

    def get_weights(self):
        """Copies of every layer's weights, concatenated in layer order."""
        return [w for layer in self._layers if layer.built for w in layer.get_weights()]

    def set_weights(self, weights):
        """Set every layer's weights from one list (as returned by ``get_weights``)."""
        self._require_layers("set_weights")
        if not self.built:
            raise ValueError(f"set_weights: {self.name} is not built yet; call "
                             "build(input_shape) or call the model on data first")
        weights = list(weights)
        counts = [len(layer.weight_names) for layer in self._layers]
        if len(weights) != sum(counts):
            raise ValueError(f"weights: {self.name} expects {sum(counts)} arrays "
                             f"({', '.join(f'{l.name}: {c}' for l, c in zip(self._layers, counts))}), "
                             f"got {len(weights)}")
        start = 0
        for layer, count in zip(self._layers, counts):
            layer.set_weights(weights[start:start + count])
            start += count

    def count_params(self):
        return int(sum(w.size for w in self.weights))

    def reset_states(self):
        """Zero the carried states of every stateful layer."""
        for layer in self._layers:
            if layer.stateful:
                layer.reset_states()

    def reset_state(self):
        """Keras 3's name for :meth:`reset_states`: zero the carried states of every
        stateful layer (the others are left alone)."""
        self.reset_states()

    # -- summary -------------------------------------------------------------------------
    def summary(self, line_length=None, print_fn=None):
        """Print the layers, their output shapes and parameter counts, like Keras."""
        if not self.built:
            raise ValueError(f"summary: {self.name} has not been built yet; call "
                             "build(input_shape) or call the model on a batch of data first")
        print_fn = print if print_fn is None else print_fn
        width = max(int(line_length or 0), 72)
        c1, c2 = int(width * 0.45), int(width * 0.33)
        c3 = width - c1 - c2

        def row(a, b, c):
            return f" {a:<{c1 - 1}}{b:<{c2}}{c:>{c3}}"

        def size(n_bytes):
            units = ["B", "KB", "MB", "GB", "TB"]
            value, unit = float(n_bytes), 0
            while value >= 1024 and unit < len(units) - 1:
                value /= 1024
                unit += 1
            return f"{value:.2f} {units[unit]}"

        lines = [f'Model: "{self.name}"', "_" * width, row("Layer (type)", "Output Shape", "Param #"),
                 "=" * width]
        for i, (layer, shape) in enumerate(zip(self._layers, self._output_shapes())):
            name = f"{layer.name} ({type(layer).__name__})"
            shape_text = "?" if shape is None else str(shape)
            lines.append(row(name, shape_text, f"{layer.count_params():,}"))
            lines.append("=" * width if i == len(self._layers) - 1 else "")
        total = sum(w.size for w in self.weights)
        trainable = sum(w.size for w in self.trainable_weights)
        nbytes = sum(w.nbytes for w in self.weights)
        tbytes = sum(w.nbytes for w in self.trainable_weights)
        lines += [f" Total params: {total:,} ({size(nbytes)})",
                  f" Trainable params: {trainable:,} ({size(tbytes)})",
                  f" Non-trainable params: {total - trainable:,} ({size(nbytes - tbytes)})",
                  "_" * width]
        for line in lines:
            print_fn(line)

    # -- inference ---------------------------------------------------------------------------
    def _forward(self, x, mask=None, training=False, with_activity=False):
        """Inference pass -> (output, output mask, activity loss)."""
        out, activity = x, 0.0
        for layer in self._layers:
            y = layer(out, mask=mask, training=training)
            if isinstance(y, (list, tuple)):
                raise ValueError(f"{layer.name} returned {len(y)} outputs; every layer of a "
                                 "Sequential model must have one")
            if with_activity and layer.activity_regularizer is not None:
                activity += activity_penalty(layer.activity_regularizer, y)[0]
            mask = layer.compute_mask(out, mask)
            out = y
        return out, mask, activity

    def __call__(self, x, mask=None, training=False):
        """The whole batch through every layer (no batching). ``training=True`` runs
        dropout as in training; states of stateful layers are carried."""
        training = check_training(training)
        self._require_layers("call")
        if not devices.is_device_array(x):      # GPU input goes straight to the layers
            x = _as_data("x", x)
        self._record_input(x)
        return self._forward(x, mask=mask, training=training)[0]

    def predict_on_batch(self, x):
        return devices.to_host(self(x))

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
            out = self._forward(xb)[0]
            outputs.append(devices.to_host(out))
            cbs.on_predict_batch_end(step, {"outputs": out})
        cbs.on_predict_end()
        if not outputs:
            raise ValueError("x: expected at least one batch to predict, got none (an "
                             "exhausted generator?)")
        if n == 0:
            return outputs[0]
        return np.concatenate(outputs, axis=0)

    # -- compile -------------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, weighted_metrics=None):
        """Choose the optimizer, loss and metrics (names, config dicts, instances or
        functions ``f(y_true, y_pred)``). As in Keras 3, ``metrics`` ignore ``sample_weight``
        and ``class_weight`` (the output mask still applies) and ``weighted_metrics`` are
        weighted by them; a weighted metric whose name is taken is logged as
        ``weighted_<name>``."""
        if loss is None:
            raise ValueError("loss: compile needs a loss, e.g. loss='mse' or a "
                             "fastlstm.losses.Loss; got None")
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = losses_module.get(loss)
        if not hasattr(self.loss, "value_and_grad"):
            raise TypeError(f"loss: expected a fastlstm.losses.Loss (with value_and_grad), got "
                            f"{type(self.loss).__name__}")
        def as_list(value):
            if value is None:
                return []
            if isinstance(value, (str, dict, metrics_module.Metric)) or callable(value):
                return [value]
            return list(value)

        self._compile_metrics = [metrics_module.get(m) for m in as_list(metrics)]
        weighted = [metrics_module.get(m) for m in as_list(weighted_metrics)]
        taken = {"loss"} | {m.name for m in self._compile_metrics}
        for m in weighted:
            if m.name in taken:
                m.name = "weighted_" + m.name
            taken.add(m.name)
        self._compile_weighted_metrics = weighted
        # The optimizer keeps its state per trainable weight, fixed from here on.
        self._compiled_trainable = [(layer, bool(layer.trainable)) for layer in self._layers]
        names = ["loss"] + [m.name for m in self._compile_metrics + weighted]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"metrics: the names {duplicates} are used twice; give each metric "
                             "its own name (the loss is 'loss')")
        self.compiled = True

    def _assert_compiled(self, method):
        if not self.compiled:
            raise ValueError(f"{method}: call compile(optimizer, loss, metrics) before "
                             f"{method}()")

    @property
    def metrics(self):
        """The loss tracker then the compiled metrics (as Keras 3's ``model.metrics``)."""
        return ([self._loss_tracker] + list(self._compile_metrics)
                + list(getattr(self, "_compile_weighted_metrics", [])))

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

    # -- loss and metrics ------------------------------------------------------------------------
    def _loss_weights(self, y_pred, mask, sample_weight):
        """(loss weights, (metric weights, weighted-metric weights)) from sample_weight and
        the output mask: ``metrics`` see the mask only, ``weighted_metrics`` both (Keras 3)."""
        if mask is None:
            return sample_weight, (None, sample_weight)
        values_shape = np.shape(y_pred)[:-1]
        return (_masked_weights(sample_weight, mask, values_shape, self.loss.reduction),
                (_masked_weights(None, mask, values_shape, "sum"),
                 _masked_weights(sample_weight, mask, values_shape, "sum")))

    def _data_loss(self, y, y_pred, weights, grad):
        try:
            if grad:
                return self.loss.value_and_grad(y, y_pred, weights)
            return self.loss(y, y_pred, weights), None
        except (ValueError, TypeError) as exc:
            if "`sample_weight`" in str(exc):    # the weights, not y, do not fit
                raise type(exc)(f"sample_weight: {exc} (the model output has shape "
                                f"{np.shape(y_pred)})") from None
            raise type(exc)(f"y: the targets do not fit the model output for loss "
                            f"{self.loss.name!r}: y has shape {np.shape(y)}, the model output "
                            f"has shape {np.shape(y_pred)}. {exc}") from None

    def _update_metrics(self, loss, n, y, y_pred, metric_weights):
        self._loss_tracker.update_state(loss, sample_weight=n)
        unweighted, weighted = metric_weights
        for m in self._compile_metrics:
            m.update_state(y, y_pred, sample_weight=unweighted)
        for m in getattr(self, "_compile_weighted_metrics", []):
            m.update_state(y, y_pred, sample_weight=weighted)

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
        for layer in self._layers:
            precision = quantized_precision(layer)
            if precision is not None:
                raise ValueError(f"fit: {self.name} is quantized ({precision}) for inference "
                                 f"only ({layer.name}); train the float model and quantize it "
                                 "again (fl.quantize)")

    def _train_step(self, x, y, sample_weight):
        self._check_not_quantized()
        self._check_trainable_unchanged()
        layers = self._layers
        out, mask, backprops = x, None, []
        for layer in layers:
            y_layer, backprop = layer.forward_train(out, mask=mask)
            if isinstance(y_layer, (list, tuple)):
                raise ValueError(f"{layer.name} returned {len(y_layer)} outputs; every layer of "
                                 "a Sequential model must have one")
            mask = layer.compute_mask(out, mask)
            backprops.append(backprop)
            out = y_layer
        out, mask = devices.to_host(out), devices.to_host(mask)    # loss and metrics: host
        loss_w, metric_w = self._loss_weights(out, mask, sample_weight)
        loss, d_out = self._data_loss(y, out, loss_w, grad=True)
        trainable = [layer.trainable and bool(layer.weight_names) for layer in layers]
        # Regularization is measured before the update, as Keras adds it in the forward pass.
        total = loss
        for layer, train in zip(layers, trainable):
            total += float(layer.last_activity_loss)
            if train:
                total += float(layer.regularization_loss())
        first = next((i for i, t in enumerate(trainable) if t), None)
        layer_grads = [None] * len(layers)
        if first is not None:
            for i in range(len(layers) - 1, first - 1, -1):
                g = backprops[i](d_out)
                d_out = g.inputs
                if trainable[i]:
                    grads = list(g.weights)
                    grads = [gw if rw is None else (rw if gw is None else gw + rw)
                             for gw, rw in zip(grads, layers[i].regularization_grads())]
                    layer_grads[i] = grads
            params, grads = [], []
            for layer, lg in zip(layers, layer_grads):
                if lg is None:
                    continue
                ws = layer.weights
                if len(lg) != len(ws):
                    raise RuntimeError(f"{layer.name}: backprop gave {len(lg)} weight gradients "
                                       f"for {len(ws)} weights")
                params += ws
                grads += lg
            if any(g is not None for g in grads):
                self.optimizer.apply(grads, params)
        self._update_metrics(total, np.shape(out)[0], y, out, metric_w)
        return total

    def _test_step(self, x, y, sample_weight):
        out, mask, activity = self._forward(x, with_activity=True)
        out, mask = devices.to_host(out), devices.to_host(mask)
        loss_w, metric_w = self._loss_weights(out, mask, sample_weight)
        loss = self._data_loss(y, out, loss_w, grad=False)[0] + activity
        loss += sum(float(layer.regularization_loss()) for layer in self._layers
                    if layer.trainable)
        self._update_metrics(loss, np.shape(out)[0], y, out, metric_w)
        return loss

    def train_on_batch(self, x, y, sample_weight=None, return_dict=False):
        """One optimizer step on one batch. Returns the loss (with metrics, a list
        ``[loss, *metrics]``; ``return_dict=True``: a dict), from the forward pass before the
        update, as Keras does."""
        self._assert_compiled("train_on_batch")
        self._require_layers("train_on_batch")
        x, y = _as_data("x", x), _as_data("y", y)
        sw = _as_data("sample_weight", sample_weight, required=False)
        if _check_lengths(x, y, sw) == 0:      # as fit: no step (nor a counted iteration)
            raise ValueError(f"x: expected at least one sample, got shape {x.shape}")
        self._record_input(x)
        self.reset_metrics()
        self._train_step(x, y, sw)
        logs = self._results()
        return logs if return_dict else self._flatten(logs)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        """Loss and metrics of one batch in inference mode."""
        self._assert_compiled("test_on_batch")
        self._require_layers("test_on_batch")
        x, y = _as_data("x", x), _as_data("y", y)
        sw = _as_data("sample_weight", sample_weight, required=False)
        if _check_lengths(x, y, sw) == 0:
            raise ValueError(f"x: expected at least one sample, got shape {x.shape}")
        self._record_input(x)
        self.reset_metrics()
        self._test_step(x, y, sw)
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
        x = self._as_input(_as_data(f"{what}: batch x", x))
        if not need_y:
            return x, None, None
        y = _as_data(f"{what}: batch y", y)
        sw = _as_data(f"{what}: batch sample_weight", sw, required=False)
        n = x.shape[0]
        if y.shape[0] != n or (sw is not None and sw.shape[0] != n):
            raise ValueError(f"{what}: a batch's x, y and sample_weight must have the same number "
                             f"of samples, got x {x.shape}, y {y.shape}"
                             + ("" if sw is None else f", sample_weight {sw.shape}"))
        if n == 0:
            raise ValueError(f"{what}: got an empty batch (x of shape {x.shape})")
        if class_weight is not None:
            sw = data_adapters.combine_weights(sw, data_adapters.class_weight_to_sample_weights(
                y, class_weight, self._num_classes()))
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
        x = self._as_input(_as_data(names[0], x))
        y = _as_data(names[1], y) if need_y else None
        sw = _as_data(names[2], sample_weight, required=False) if need_y else None
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
            raise ValueError(f"x: expected at least one sample, got shape {source.x.shape}")
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
            x, y = self._as_input(_as_data("x", x)), _as_data("y", y)
            sw = _as_data("sample_weight", sample_weight, required=False)
            n = _check_lengths(x, y, sw)
            if validation_split and validation_data is None:
                split_at = int(math.floor(n * (1.0 - validation_split)))
                if split_at == 0 or split_at == n:
                    raise ValueError(f"validation_split: {n} samples cannot be split into a "
                                     f"training and a validation set with "
                                     f"validation_split={validation_split}")
                val_batch = _check_batch_size(validation_batch_size or batch_size,
                                              "validation_batch_size")
                val = data_adapters.ArraySource(x[split_at:], y[split_at:],
                                                None if sw is None else sw[split_at:], val_batch)
                x, y = x[:split_at], y[:split_at]
                sw = None if sw is None else sw[:split_at]
                n = split_at
            if n == 0:
                raise ValueError(f"x: expected at least one training sample, got shape {x.shape}")
            self._record_input(x)
            if class_weight is not None:
                sw = data_adapters.combine_weights(sw, data_adapters.class_weight_to_sample_weights(
                    y, class_weight, self._num_classes()))
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

    # -- configuration and saving ----------------------------------------------------------------
    def get_config(self):
        from .layers import serialize
        return {"name": self.name, "layers": [serialize(layer) for layer in self._layers]}

    @classmethod
    def from_config(cls, config):
        from .layers import deserialize
        return cls([deserialize(c) for c in config.get("layers", [])], name=config.get("name"))

    def save(self, path):
        """Write the model (architecture, weights, compile settings, optimizer state) to one
        ``.npz`` file; see :mod:`fastlstm.saving` for the format. No pickle is used."""
        save_model(self, path)

    def __repr__(self):
        return f"<Sequential name={self.name!r} layers={[layer.name for layer in self._layers]}>"

