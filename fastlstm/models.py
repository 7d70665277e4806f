"""``Sequential``: a stack of layers with Keras 3's training loop (fastlstm.trainer, which
the functional ``Model`` of fastlstm.functional shares; both are exported here).

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

import numpy as np

from . import data_adapters
from . import devices
from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from .layers.base import Layer, _auto_name, activity_penalty, check_training
from .saving import register_model_class, save_model
from .trainer import Trainer, _as_data, _masked_weights

__all__ = ["Sequential"]


@register_model_class
class Sequential(Trainer):
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

        lines = [f'Model: "{self.name}"', "_" * width, row("Layer (type)", "Output Shape", "Param #"),
                 "=" * width]
        for i, (layer, shape) in enumerate(zip(self._layers, self._output_shapes())):
            name = f"{layer.name} ({type(layer).__name__})"
            shape_text = "?" if shape is None else str(shape)
            lines.append(row(name, shape_text, f"{layer.count_params():,}"))
            lines.append("=" * width if i == len(self._layers) - 1 else "")
        lines += self._summary_totals(width)
        for line in lines:
            print_fn(line)

    # -- the loop's hooks (fastlstm.trainer) ---------------------------------------------------
    def _x_data(self, name, x):
        return self._as_input(_as_data(name, x))

    def _y_data(self, name, y):
        return _as_data(name, y)

    def _sw_data(self, name, sample_weight):
        return _as_data(name, sample_weight, required=False)

    def _predict_batch(self, x):
        return self._forward(x)[0]

    def _class_weights(self, y, sample_weight, class_weight):
        return data_adapters.combine_weights(
            sample_weight,
            data_adapters.class_weight_to_sample_weights(y, class_weight, self._num_classes()))

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

    @property
    def metrics(self):
        """The loss tracker then the compiled metrics (as Keras 3's ``model.metrics``)."""
        return ([self._loss_tracker] + list(self._compile_metrics)
                + list(getattr(self, "_compile_weighted_metrics", [])))

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
        ready = getattr(self.optimizer, "gradients_ready", None)
        if first is not None:
            for i in range(len(layers) - 1, first - 1, -1):
                g = backprops[i](d_out)
                d_out = g.inputs
                if trainable[i]:
                    grads = list(g.weights)
                    grads = [gw if rw is None else (rw if gw is None else gw + rw)
                             for gw, rw in zip(grads, layers[i].regularization_grads())]
                    layer_grads[i] = grads
                    if ready is not None:
                        ready(layers[i].weights, grads)
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



# The functional API lives beside Sequential: fl.models.Model, fl.models.Input.
from .functional import Input, Model  # noqa: E402

__all__ += ["Model", "Input"]
Model.register(Sequential)      # a Sequential model is a Model, as in Keras
