"""Functional models: ``fl.Input``, layers called on symbolic tensors, and ``fl.Model``.

    inputs = fl.Input(shape=(None, 8), name="chars")
    h = fl.layers.LSTM(32, return_sequences=True)(inputs)
    outputs = fl.layers.Dense(4, activation="softmax")(h)
    model = fl.Model(inputs, outputs)

``fl.Input`` gives a ``KerasTensor`` (a shape and dtype, no data). Calling a layer on
symbolic tensors, anywhere in its arguments (``initial_state=[h, c]``), builds the layer for
their shapes and records a ``Node``; the layer returns symbolic tensors (a list for
``return_state=True``); see fastlstm.graph. ``Model(inputs, outputs)`` walks back from the
outputs to the inputs and keeps the nodes in an order that computes each tensor before its
use. The loop (``fit``, ``evaluate``, ``predict``, ...) is fastlstm.trainer's, shared with
``Sequential``.

Running the graph (inference and training):

- each node's output mask is ``layer.compute_mask(inputs, masks)`` and goes to the layers
  that consume the output: the first positional tensor's mask to ``mask=``; the list of
  masks to ``mask=`` for a layer with ``multiple_inputs``; each tensor's mask to the
  keyword its ``mask_arguments`` names (MultiHeadAttention's ``query_mask``, ...);
- training runs ``forward_train`` node by node and the backprops in reverse. A tensor used
  by several nodes receives the sum of their gradients; a layer called several times (a
  shared layer) gets the sum of its calls' weight gradients. ``Gradients.inputs`` go to the
  first positional argument (aligned with the list for ``multiple_inputs``, with
  ``tensor_arguments`` for layers that name theirs) and ``Gradients.initial_state`` to the
  ``initial_state=`` tensors, so an encoder's states are trained through a decoder.
"""
from __future__ import annotations

import abc
import numbers

import numpy as np

from . import devices
from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from .graph import Graph, Input, InputLayer, KerasTensor, Node, _flat_tensors, _structure, _unique
from .layers.base import _auto_name, activity_penalty, check_training
from .saving import register_model_class, save_model
from .trainer import Trainer, _as_data, _masked_weights

__all__ = ["Input", "InputLayer", "KerasTensor", "Node", "Model"]


def _trainable(layer):
    return bool(layer.trainable) and bool(layer.weight_names) and layer.built


@register_model_class
class Model(Trainer, metaclass=abc.ABCMeta):
    """A functional model: ``Model(inputs, outputs)`` with symbolic tensors (one, or a list
    or dict of them), trained like a Keras 3 functional model. See the module docstring."""

    def __init__(self, inputs=None, outputs=None, name=None):
        self.name = name if name is not None else _auto_name("functional")
        if not isinstance(self.name, str):
            raise TypeError(f"name: expected a string, got {type(name).__name__}")
        if inputs is None or outputs is None:
            raise ValueError("inputs, outputs: fl.Model needs both, e.g. "
                             "fl.Model(inputs=fl.Input(shape), outputs=layer(...)); got "
                             f"inputs={inputs!r:.60}, outputs={outputs!r:.60}")
        self._inputs, self._input_kind, self._input_keys = _structure(inputs, "inputs")
        self._outputs, self._output_kind, self._output_keys = _structure(outputs, "outputs")
        self._graph = Graph(self._inputs, self._outputs, self.name)
        self.input_names = [t.node.layer.name for t in self._inputs]
        if self._input_kind == "dict":
            self.input_names = list(self._input_keys)
        names = _unique([t.node.layer.name if len(t.node.outputs) == 1 else t.name
                         for t in self._outputs])
        self.output_names = list(self._output_keys) if self._output_kind == "dict" else names
        self.device = "cpu"
        self.optimizer = None
        self.loss = None
        self.compiled = False
        self._compile_metrics = []
        self._loss_tracker = metrics_module.Mean(name="loss")
        self._output_trackers = []
        self.stop_training = False
        self.history = None
        self._input_dtypes = [self._input_dtype(t) for t in self._inputs]

    def _input_dtype(self, tensor):
        """The dtype float data for ``tensor`` is converted to once, before batching: that of
        the layers that read it, when they agree (each layer casts its input anyway)."""
        dtypes = {n.layer.dtype for n in self._graph.nodes
                  if any(t is tensor for t in n.inputs)}
        return dtypes.pop() if len(dtypes) == 1 else None

    # -- structure ------------------------------------------------------------------------
    @property
    def layers(self):
        return list(self._graph.layers)

    @property
    def inputs(self):
        return list(self._inputs)

    @property
    def outputs(self):
        return list(self._outputs)

    @property
    def built(self):
        return True

    def _require_layers(self, what):
        pass

    def _record_input(self, x):
        pass

    @property
    def input_shape(self):
        shapes = [t.shape for t in self._inputs]
        return shapes[0] if self._input_kind == "single" else shapes

    @property
    def output_shape(self):
        shapes = [t.shape for t in self._outputs]
        return shapes[0] if self._output_kind == "single" else shapes

    def to(self, device):
        """Move every layer to ``device`` ("cpu" or "cuda"); returns the model."""
        device = devices.check_device(device)
        for layer in self.layers:
            if device != "cpu" and not layer.runs_on_gpu and not isinstance(layer, InputLayer):
                raise NotImplementedError(
                    f"{layer.name}: {type(layer).__name__} runs on the CPU only; {self.name} "
                    f"cannot move to {device!r}")
        for layer in self.layers:
            if not isinstance(layer, InputLayer):
                layer.to(device)
        self.device = device
        return self

    # -- weights ------------------------------------------------------------------------
    def set_weights(self, weights):
        weights = list(weights)
        counts = [len(layer.weight_names) for layer in self.layers]
        if len(weights) != sum(counts):
            raise ValueError(f"weights: {self.name} expects {sum(counts)} arrays, got "
                             f"{len(weights)}")
        start = 0
        for layer, count in zip(self.layers, counts):
            if count:
                layer.set_weights(weights[start:start + count])
            start += count

    # -- data -----------------------------------------------------------------------------
    def _by_name(self, value, names, kind, what, required=True):
        """A list aligned with ``names`` from an array (one name), a list/tuple or a dict."""
        n = len(names)
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(names), key=str)
            if unknown:
                raise ValueError(f"{what}: unknown {kind} names {unknown}; {self.name}'s "
                                 f"{kind}s are {names}")
            missing = [k for k in names if k not in value]
            if missing and required:
                raise ValueError(f"{what}: no data for the {kind}s {missing} of {self.name}")
            return [value.get(k) for k in names]
        if isinstance(value, (list, tuple)) and n > 1:
            if len(value) != n:
                raise ValueError(f"{what}: {self.name} has {n} {kind}s {names}, got a list of "
                                 f"{len(value)}")
            return list(value)
        if isinstance(value, (list, tuple)) and len(value) == 1 and hasattr(value[0], "shape"):
            return [value[0]]
        if n != 1:
            raise ValueError(f"{what}: {self.name} has {n} {kind}s {names}; expected a list "
                             f"or a dict of {n} arrays, got {type(value).__name__}")
        return [value]

    def _x_data(self, name, x):
        if x is None:
            raise ValueError(f"{name}: expected an array, got None")
        parts = self._by_name(x, self.input_names, "input", name)
        out = []
        for k, (part, dtype) in enumerate(zip(parts, self._input_dtypes)):
            what = name if len(parts) == 1 else f"{name}[{self.input_names[k]!r}]"
            arr = _as_data(what, part)
            if dtype is not None and arr.dtype.kind == "f" and arr.dtype != dtype:
                arr = arr.astype(dtype)
            expect = self._inputs[k].shape
            if arr.ndim != len(expect) or any(d is not None and d != s for d, s in
                                              zip(expect[1:], arr.shape[1:])):
                raise ValueError(f"{what}: input {self.input_names[k]!r} expects shape "
                                 f"{expect}, got {arr.shape}")
            out.append(arr)
        return out

    def _y_data(self, name, y):
        if y is None:
            raise ValueError(f"{name}: expected an array, got None")
        parts = self._by_name(y, self.output_names, "output", name, required=False)
        out = []
        for k, part in enumerate(parts):
            what = name if len(parts) == 1 else f"{name}[{self.output_names[k]!r}]"
            has_loss = not self.compiled or self._losses[k] is not None
            out.append(None if part is None and not has_loss else _as_data(what, part))
        return out

    def _sw_data(self, name, sample_weight):
        if sample_weight is None:
            return None
        if isinstance(sample_weight, (list, tuple, dict)) and (
                isinstance(sample_weight, dict) or len(self._outputs) > 1 or (
                    len(sample_weight) == 1 and (sample_weight[0] is None
                                                 or hasattr(sample_weight[0], "shape")))):
            parts = self._by_name(sample_weight, self.output_names, "output", name,
                                  required=False)
        else:                            # one array weighs every output (Keras)
            arr = _as_data(name, sample_weight, required=False)
            return [arr] * len(self._outputs)
        return [_as_data(f"{name}[{self.output_names[k]!r}]", p, required=False)
                for k, p in enumerate(parts)]

    def _class_weights(self, y, sample_weight, class_weight):
        from . import data_adapters
        if len(self._outputs) != 1:
            raise ValueError("class_weight: only a model with one output takes class_weight "
                             f"(as in Keras); {self.name} has {len(self._outputs)}: give "
                             "sample_weight per output instead")
        sw = None if sample_weight is None else sample_weight[0]
        shape = self._outputs[0].shape
        width = shape[-1] if len(shape) > 1 and shape[-1] else None
        return [data_adapters.combine_weights(sw, data_adapters.class_weight_to_sample_weights(
            y[0], class_weight, width))]

    def _pack(self, outputs):
        if self._output_kind == "single":
            return outputs[0]
        if self._output_kind == "dict":
            return dict(zip(self._output_keys, outputs))
        return list(outputs)

    # -- running the graph ------------------------------------------------------------------
    def _run(self, xs, training=False, with_activity=False):
        """Inference through the graph -> (outputs, their masks, activity loss)."""
        values, masks, activity = {}, {}, 0.0
        for t, x in zip(self._inputs, xs):
            values[id(t)] = x
        for node in self._graph.nodes:
            if isinstance(node.layer, InputLayer):
                continue
            args, kwargs = node.call_arguments(values, masks)
            out = node.layer(*args, training=training, **kwargs)
            outs = self._as_outputs(node, out)
            if with_activity and node.layer.activity_regularizer is not None:
                activity += activity_penalty(node.layer.activity_regularizer, outs[0])[0]
            for t, v, m in zip(node.outputs, outs, node.output_masks(args, kwargs, outs, masks)):
                values[id(t)], masks[id(t)] = v, m
        return ([values[id(t)] for t in self._outputs],
                [masks.get(id(t)) for t in self._outputs], activity)

    @staticmethod
    def _as_outputs(node, out):
        if node.multi_output:
            if not isinstance(out, (list, tuple)) or len(out) != len(node.outputs):
                raise RuntimeError(f"{node.layer.name}: expected {len(node.outputs)} outputs, "
                                   f"got {type(out).__name__}")
            return list(out)
        if isinstance(out, (list, tuple)):
            raise RuntimeError(f"{node.layer.name}: returned {len(out)} outputs where its "
                               "symbolic call gave one")
        return [out]

    def __call__(self, x, training=False, mask=None):
        """The outputs for ``x`` (an array, or a list or dict of arrays by input name), the
        whole batch at once; a list (dict) for several outputs."""
        training = check_training(training)
        if _flat_tensors(x):
            raise NotImplementedError(f"{self.name}: calling a functional model on symbolic "
                                      "tensors (a model as a layer) is not supported; call its "
                                      "layers instead")
        xs = self._x_data("x", x)
        return self._pack(self._run(xs, training=training)[0])

    def _predict_batch(self, x):
        outs = self._run(x)[0]
        return outs[0] if self._output_kind == "single" else outs

    def predict(self, x, batch_size=None, verbose=0, callbacks=None, steps=None):
        """Outputs for ``x``, ``batch_size`` samples at a time (see ``Sequential.predict``):
        an array for one output, a list (or a dict, as the outputs were given) for several."""
        out = super().predict(x, batch_size=batch_size, verbose=verbose, callbacks=callbacks,
                              steps=steps)
        if self._output_kind == "dict":
            return dict(zip(self._output_keys, out))
        return out

    # -- compile ------------------------------------------------------------------------------
    def _per_output(self, value, what, convert, default=None):
        """A list aligned with the outputs from one value (every output), a list or a dict
        keyed by output name."""
        n, names = len(self._outputs), self.output_names
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(names), key=str)
            if unknown:
                raise ValueError(f"{what}: unknown output names {unknown}; {self.name}'s "
                                 f"outputs are {names}")
            return [convert(value[k]) if value.get(k) is not None else default for k in names]
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ValueError(f"{what}: {self.name} has {n} outputs {names}, got a list of "
                                 f"{len(value)}")
            return [convert(v) if v is not None else default for v in value]
        return [convert(value) if value is not None else default for _ in range(n)]

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
                weighted_metrics=None):
        """As ``Sequential.compile``, per output: ``loss`` one loss for every output, a list
        aligned with the outputs or a dict by output name (None: the output is not trained);
        ``loss_weights`` (list or dict) weigh each output's loss in the total; ``metrics``
        and ``weighted_metrics`` a list for a model with one output, else a list of lists or
        a dict by output name. With several outputs the logs name ``<output>_loss`` and
        ``<output>_<metric>`` (Keras 3)."""
        if loss is None:
            raise ValueError("loss: compile needs a loss, e.g. loss='mse' or a list or dict "
                             "of losses per output; got None")

        def get_loss(spec):
            out = losses_module.get(spec)
            if not hasattr(out, "value_and_grad"):
                raise TypeError(f"loss: expected a fastlstm.losses.Loss (with value_and_grad), "
                                f"got {type(out).__name__}")
            return out

        losses = self._per_output(loss, "loss", get_loss)
        if all(l is None for l in losses):
            raise ValueError("loss: no output has a loss")

        def get_weight(w):
            if isinstance(w, bool) or not isinstance(w, numbers.Real):
                raise TypeError(f"loss_weights: expected numbers, got {w!r}")
            return float(w)

        weights = self._per_output(loss_weights, "loss_weights", get_weight, 1.0) \
            if loss_weights is not None else [1.0] * len(self._outputs)
        multi = len(self._outputs) > 1

        def metric_lists(spec, what):
            if spec is None:
                return [[] for _ in self._outputs]

            def as_list(value):
                if value is None:
                    return []
                if isinstance(value, (str, dict, metrics_module.Metric)) or callable(value):
                    return [metrics_module.get(value)]
                return [metrics_module.get(m) for m in value]

            if not multi:
                if isinstance(spec, dict):
                    return [as_list(spec.get(self.output_names[0]))]
                return [as_list(spec)]
            if isinstance(spec, dict):
                return self._per_output(spec, what, as_list, [])
            if isinstance(spec, (list, tuple)) and len(spec) == len(self._outputs):
                return [as_list(v) for v in spec]      # one entry (or list) per output
            raise ValueError(f"{what}: {self.name} has {len(self._outputs)} outputs; give a "
                             "list with one entry (a metric or a list of them) per output, or "
                             f"a dict by output name {self.output_names}; got {spec!r:.80}")

        self._compile_spec = {"loss": loss, "loss_weights": loss_weights}
        plain = metric_lists(metrics, "metrics")
        weighted = metric_lists(weighted_metrics, "weighted_metrics")
        self._compile_base = ([[m.name for m in ms] for ms in plain],
                              [[m.name for m in ms] for ms in weighted])
        taken = {"loss"}
        if multi:
            for k, oname in enumerate(self.output_names):
                for m in plain[k]:
                    m.name = f"{oname}_{m.name}"
                for m in weighted[k]:
                    m.name = f"{oname}_{m.name}"
        for ms in plain:
            taken |= {m.name for m in ms}
        for ms in weighted:
            for m in ms:
                if m.name in taken:
                    m.name = "weighted_" + m.name
                taken.add(m.name)
        self.optimizer = optimizers_module.get(optimizer)
        self._losses = losses
        self.loss = losses[0] if not multi else losses
        self._loss_weights_list = weights
        self._output_metrics = plain
        self._output_weighted_metrics = weighted
        self._compile_metrics = [m for ms in plain for m in ms]
        self._compile_weighted_metrics = [m for ms in weighted for m in ms]
        self._output_trackers = [metrics_module.Mean(name=f"{o}_loss") if multi and l is not None
                                 else None for o, l in zip(self.output_names, losses)]
        self._compiled_trainable = [(layer, bool(layer.trainable)) for layer in self.layers]
        names = [m.name for m in self.metrics]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"metrics: the names {duplicates} are used twice; give each metric "
                             "its own name")
        self.compiled = True

    @property
    def metrics(self):
        """The loss tracker, the per-output loss trackers, then the compiled metrics."""
        return ([self._loss_tracker] + [t for t in self._output_trackers if t is not None]
                + list(self._compile_metrics) + list(self._compile_weighted_metrics
                                                      if self.compiled else []))

    # -- loss -----------------------------------------------------------------------------------
    def _output_losses(self, y, outs, masks, sample_weight, grad):
        """(total data loss, [per-output loss or None], [d loss / d output or None],
        [metric weights])."""
        total, values, grads, metric_weights = 0.0, [], [], []
        for k, (loss, w) in enumerate(zip(self._losses, self._loss_weights_list)):
            out, mask = outs[k], masks[k]
            sw = None if sample_weight is None else sample_weight[k]
            if mask is not None:
                values_shape = np.shape(out)[:-1]
                metric_weights.append((_masked_weights(None, mask, values_shape, "sum"),
                                       _masked_weights(sw, mask, values_shape, "sum")))
            else:
                metric_weights.append((None, sw))
            if loss is None:
                values.append(None)
                grads.append(None)
                continue
            lw = sw if mask is None else _masked_weights(sw, mask, np.shape(out)[:-1],
                                                           loss.reduction)
            if y[k] is None:
                raise ValueError(f"y: no targets for the output {self.output_names[k]!r}, "
                                 "which has a loss")
            try:
                if grad:
                    value, d = loss.value_and_grad(y[k], out, lw)
                else:
                    value, d = loss(y[k], out, lw), None
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"y: the targets for output {self.output_names[k]!r} do not "
                                f"fit it for loss {loss.name!r}: y has shape {np.shape(y[k])}, "
                                f"the output has shape {np.shape(out)}. {exc}") from None
            value = float(value)
            values.append(value)
            total += w * value
            if d is not None and w != 1.0:
                d = d * np.asarray(w, dtype=d.dtype)
            grads.append(d)
        return total, values, grads, metric_weights

    def _update(self, total, values, n, y, outs, metric_weights):
        self._loss_tracker.update_state(total, sample_weight=n)
        for tracker, value in zip(self._output_trackers, values):
            if tracker is not None:
                tracker.update_state(value, sample_weight=n)
        for k, (unweighted, weighted) in enumerate(metric_weights):
            for m in self._output_metrics[k]:
                m.update_state(y[k], outs[k], sample_weight=unweighted)
            for m in self._output_weighted_metrics[k]:
                m.update_state(y[k], outs[k], sample_weight=weighted)

    def _regularization(self):
        return sum(float(layer.regularization_loss()) for layer in self.layers
                   if layer.trainable)

    def _test_step(self, x, y, sample_weight):
        outs, masks, activity = self._run(x, with_activity=True)
        outs = [devices.to_host(o) for o in outs]
        masks = [devices.to_host(m) for m in masks]
        data, values, _, mw = self._output_losses(y, outs, masks, sample_weight, grad=False)
        total = data + activity + self._regularization()
        self._update(total, values, np.shape(outs[0])[0], y, outs, mw)
        return total

    def _train_step(self, x, y, sample_weight):
        self._check_not_quantized()
        self._check_trainable_unchanged()
        graph = self._graph
        values, masks, backprops, activity = {}, {}, {}, 0.0
        for t, xv in zip(self._inputs, x):
            values[id(t)] = xv
        # Which nodes need a backward pass: those with trainable weights and those that
        # feed one (through the tensors they consume).
        needs = {}
        for node in graph.nodes:
            if isinstance(node.layer, InputLayer):
                needs[node] = False
                continue
            needs[node] = _trainable(node.layer) or any(needs.get(t.node, False)
                                                        for t in node.inputs)
            args, kwargs = node.call_arguments(values, masks)
            out, backprop = node.layer.forward_train(*args, **kwargs)
            activity += float(node.layer.last_activity_loss)
            backprops[node] = backprop
            outs = self._as_outputs(node, out)
            for t, v, m in zip(node.outputs, outs, node.output_masks(args, kwargs, outs, masks)):
                values[id(t)], masks[id(t)] = v, m
        outs = [devices.to_host(values[id(t)]) for t in self._outputs]
        out_masks = [devices.to_host(masks.get(id(t))) for t in self._outputs]
        data, losses, d_outs, mw = self._output_losses(y, outs, out_masks, sample_weight,
                                                       grad=True)
        total = data + activity + self._regularization()

        grads = {}                       # id(tensor) -> summed gradient

        def add(t, g):
            if g is None or not needs.get(t.node, False):
                return
            key = id(t)
            grads[key] = g if key not in grads else grads[key] + g

        for t, d in zip(self._outputs, d_outs):
            add(t, d)
        ready = getattr(self.optimizer, "gradients_ready", None)
        remaining = dict(graph.calls)
        layer_grads = {}
        for node in reversed(graph.nodes):
            if not needs[node]:
                continue
            layer = node.layer
            d = [grads.pop(id(t), None) for t in node.outputs]
            if any(g is not None for g in d):
                g = backprops.pop(node)(d if node.multi_output else d[0])
                self._route(node, g, add)
                if _trainable(layer):
                    acc = layer_grads.get(id(layer))
                    ws = list(g.weights)
                    layer_grads[id(layer)] = ws if acc is None else [
                        b if a is None else (a if b is None else a + b) for a, b in zip(acc, ws)]
            remaining[id(layer)] -= 1
            if remaining[id(layer)] == 0 and id(layer) in layer_grads:
                lg = [gw if rw is None else (rw if gw is None else gw + rw)
                      for gw, rw in zip(layer_grads[id(layer)], layer.regularization_grads())]
                layer_grads[id(layer)] = lg
                if ready is not None:
                    ready(layer.weights, lg)
        # Every trainable weight, in trainable_weights order (the optimizer's slots follow
        # it); None for a layer the loss does not reach, which the optimizer skips.
        params, flat = [], []
        for layer in graph.layers:
            if not _trainable(layer):
                continue
            ws = layer.weights
            lg = layer_grads.get(id(layer), [None] * len(ws))
            if len(lg) != len(ws):
                raise RuntimeError(f"{layer.name}: backprop gave {len(lg)} weight gradients for "
                                   f"{len(ws)} weights")
            params += ws
            flat += lg
        if any(g is not None for g in flat):
            self.optimizer.apply(flat, params)
        self._update(total, losses, np.shape(outs[0])[0], y, outs, mw)
        return total

    @staticmethod
    def _route(node, g, add):
        """Send a node's input gradients to the tensors they belong to."""
        for field, k, t in node.gradient_slots:
            value = g.inputs if field == "inputs" else g.initial_state
            if k is not None:
                if value is None or not isinstance(value, (list, tuple)) or k >= len(value):
                    continue
                value = value[k]
            add(t, value)

    # -- summary ----------------------------------------------------------------------------------
    def summary(self, line_length=None, print_fn=None):
        """Print the layers with their output shapes, parameter counts and the tensors they
        are connected to (``layer[node][tensor]``), like Keras."""
        print_fn = print if print_fn is None else print_fn

        nodes = self._graph.node_set
        rows = []
        for layer in self.layers:
            own = [n for n in layer._inbound_nodes if n in nodes]
            shapes = [t.shape for n in own for t in n.outputs]
            shape_text = str(shapes[0]) if len(shapes) == 1 else str(shapes)
            inbound = [f"{t.node.layer.name}[{t.node.history(nodes)}][{t.index}]"
                       for n in own for t in n.inputs] or ["-"]
            rows.append((f"{layer.name} ({type(layer).__name__})", shape_text,
                         f"{layer.count_params():,}", inbound))
        header = ("Layer (type)", "Output Shape", "Param #", ["Connected to"])
        w1, w2, w3, w4 = (max(len(r[0]) for r in rows + [header]) + 2,
                          max(len(r[1]) for r in rows + [header]) + 2,
                          max(len(r[2]) for r in rows + [header]) + 2,
                          max(len(c) for r in rows + [header] for c in r[3]) + 2)
        width = max(int(line_length or 0), w1 + w2 + w3 + w4 + 1)

        def line(a, b, c, d):
            return f" {a:<{w1}}{b:<{w2}}{c:>{w3}}  {d}".rstrip()

        lines = [f'Model: "{self.name}"', "_" * width, line(*header[:3], header[3][0]),
                 "=" * width]
        for i, (name, shape_text, params, inbound) in enumerate(rows):
            lines.append(line(name, shape_text, params, inbound[0]))
            lines += [line("", "", "", extra) for extra in inbound[1:]]
            lines.append("=" * width if i == len(rows) - 1 else "")
        lines += self._summary_totals(width)
        for text in lines:
            print_fn(text)

    # -- configuration -----------------------------------------------------------------------------
    def _graph_config(self):
        """The graph in Keras 3's functional form, without the layers' own configs: each
        layer's name and ``inbound_nodes``, ``input_layers``, ``output_layers``."""
        nodes = self._graph.node_set

        def tensor(t):
            return {"class_name": "__keras_tensor__",
                    "config": {"shape": list(t.shape), "dtype": t.dtype,
                               "keras_history": [t.node.layer.name, t.node.history(nodes),
                                                 t.index]}}

        def encode(value):
            if isinstance(value, KerasTensor):
                return tensor(value)
            if isinstance(value, (list, tuple)):
                return [encode(v) for v in value]
            if isinstance(value, dict):
                return {k: encode(v) for k, v in value.items()}
            if isinstance(value, np.generic):
                return value.item()
            return value

        layers = []
        for layer in self.layers:
            own = [n for n in layer._inbound_nodes if n in nodes]
            inbound = [] if isinstance(layer, InputLayer) else [
                {"args": encode(list(n.args)), "kwargs": encode(n.kwargs)} for n in own]
            layers.append({"name": layer.name, "inbound_nodes": inbound})

        def refs(tensors, kind, keys):
            items = [[t.node.layer.name, t.node.history(nodes), t.index] for t in tensors]
            if kind == "dict":
                return dict(zip(keys, items))
            return items[0] if kind == "single" else items

        return {"layers": layers,
                "input_layers": refs(self._inputs, self._input_kind, self._input_keys),
                "output_layers": refs(self._outputs, self._output_kind, self._output_keys)}

    def get_config(self):
        """Keras 3's functional config: ``name``, ``trainable``, ``layers`` (each with
        ``class_name``, ``config``, ``name`` and ``inbound_nodes``), ``input_layers`` and
        ``output_layers``."""
        from .layers import serialize
        graph = self._graph_config()
        layers = [{**serialize(layer), "name": entry["name"],
                   "inbound_nodes": entry["inbound_nodes"]}
                  for layer, entry in zip(self.layers, graph["layers"])]
        return {"name": self.name, "trainable": True, "layers": layers,
                "input_layers": graph["input_layers"], "output_layers": graph["output_layers"]}

    @classmethod
    def from_config(cls, config):
        from .layers import deserialize
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("config: expected a functional model config with a 'layers' list")
        layers = [deserialize({"class_name": e.get("class_name"), "config": e.get("config", {})})
                  for e in config["layers"]]
        return cls._from_graph(layers, config, config.get("name"))

    @classmethod
    def _from_graph(cls, layers, graph, name):
        """Rebuild the model from ``layers`` (by name) and a graph config (``layers``'
        ``name``/``inbound_nodes``, ``input_layers``, ``output_layers``), calling each layer
        on the symbolic tensors its nodes name, in an order where they exist."""
        by_name = {}
        for layer in layers:
            if layer.name in by_name:
                raise ValueError(f"config: the layer name {layer.name!r} is used twice")
            by_name[layer.name] = layer
        entries = graph.get("layers")
        if not isinstance(entries, list) or len(entries) != len(layers):
            raise ValueError("config: the graph lists other layers than the model's")
        made = {}                        # (layer name, node index) -> list of output tensors
        pending = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("name") not in by_name:
                raise ValueError(f"config: a graph entry names an unknown layer: {entry!r:.80}")
            layer = by_name[entry["name"]]
            inbound = entry.get("inbound_nodes") or []
            if not isinstance(inbound, list):
                raise ValueError(f"config: malformed inbound_nodes of {layer.name!r}")
            if isinstance(layer, InputLayer):
                made[(layer.name, 0)] = [layer.output]
            else:
                pending.append([layer, list(inbound), 0])

        def decode(value):
            if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
                hist = (value.get("config") or {}).get("keras_history")
                if not isinstance(hist, list) or len(hist) != 3:
                    raise ValueError(f"config: malformed keras_history {hist!r}")
                key = (hist[0], hist[1])
                if key not in made:
                    raise _NotYet()
                outs = made[key]
                if not isinstance(hist[2], int) or not 0 <= hist[2] < len(outs):
                    raise ValueError(f"config: tensor index {hist[2]!r} out of range for "
                                     f"{hist[0]!r}")
                return outs[hist[2]]
            if isinstance(value, list):
                return [decode(v) for v in value]
            if isinstance(value, dict):
                return {k: decode(v) for k, v in value.items()}
            return value

        while pending:
            progress = False
            for item in pending:
                layer, inbound, done = item
                while done < len(inbound):
                    node = inbound[done]
                    if not isinstance(node, dict):
                        raise ValueError(f"config: malformed node of {layer.name!r}")
                    try:
                        args = decode(node.get("args") or [])
                        kwargs = decode(node.get("kwargs") or {})
                    except _NotYet:
                        break
                    if not isinstance(args, list) or not isinstance(kwargs, dict):
                        raise ValueError(f"config: malformed node of {layer.name!r}")
                    out = layer(*args, **kwargs)
                    made[(layer.name, done)] = out if isinstance(out, list) else [out]
                    done += 1
                    item[2] = done
                    progress = True
            pending = [item for item in pending if item[2] < len(item[1])]
            if pending and not progress:
                raise ValueError("config: the graph's nodes refer to tensors that no node makes "
                                 f"(layers {[item[0].name for item in pending]})")

        def ref(r):
            if not isinstance(r, list) or len(r) != 3 or (r[0], r[1]) not in made:
                raise ValueError(f"config: malformed input or output reference {r!r}")
            outs = made[(r[0], r[1])]
            if not isinstance(r[2], int) or not 0 <= r[2] < len(outs):
                raise ValueError(f"config: malformed input or output reference {r!r}")
            return outs[r[2]]

        def refs(value):
            if isinstance(value, dict):
                return {k: ref(v) for k, v in value.items()}
            if isinstance(value, list) and value and isinstance(value[0], str):
                return ref(value)
            if isinstance(value, list):
                return [ref(v) for v in value]
            raise ValueError(f"config: malformed input_layers/output_layers {value!r:.80}")

        return cls(refs(graph.get("input_layers")), refs(graph.get("output_layers")), name=name)

    # -- saving (fastlstm.saving) ------------------------------------------------------------------
    def save(self, path):
        """Write the model (layers, weights, graph, compile settings, optimizer state) to
        one ``.npz`` file; see :mod:`fastlstm.saving`. No pickle is used."""
        save_model(self, path)

    def _saved_graph(self):
        return self._graph_config()

    @classmethod
    def _from_saved(cls, layers, graph, name):
        return cls._from_graph(layers, graph, name)

    def _compile_config(self):
        """The compile settings for a file: per-output losses, loss weights and metrics."""
        def ser_metrics(groups, base_names):
            out = []
            for ms, names in zip(groups, base_names):
                entries = []
                for m, base in zip(ms, names):
                    entry = metrics_module.serialize(m)
                    if isinstance(entry.get("config"), dict) and "name" in entry["config"]:
                        entry["config"]["name"] = base
                    entries.append(entry)
                out.append(entries)
            return out

        return {"loss": [None if l is None else losses_module.serialize(l) for l in self._losses],
                "loss_weights": list(self._loss_weights_list),
                "metrics": ser_metrics(self._output_metrics, self._compile_base[0]),
                "weighted_metrics": ser_metrics(self._output_weighted_metrics,
                                                self._compile_base[1])}

    def _compile_from_saved(self, comp, optimizer):
        losses = [None if l is None else losses_module.deserialize(l) for l in comp["loss"]]
        mets = [[metrics_module.deserialize(m) for m in ms] for ms in comp.get("metrics") or
                [[] for _ in losses]]
        wmets = [[metrics_module.deserialize(m) for m in ms] for ms in
                 comp.get("weighted_metrics") or [[] for _ in losses]]
        single = len(self._outputs) == 1
        self.compile(optimizer=optimizer, loss=losses[0] if single else losses,
                     loss_weights=comp.get("loss_weights"),
                     metrics=mets[0] if single else mets,
                     weighted_metrics=wmets[0] if single else wmets)

    def __repr__(self):
        return (f"<Model name={self.name!r} inputs={self.input_names} "
                f"outputs={self.output_names}>")


class _NotYet(Exception):
    """A node's input tensor is not made yet (from_config tries again later)."""
