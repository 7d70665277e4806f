"""The graph behind functional models: symbolic tensors (``KerasTensor``), ``fl.Input``
(an ``InputLayer``), the ``Node`` each call of a layer on symbolic tensors records, and a
model's nodes in an order that computes every tensor before its use (``Graph``).

``Layer.__call__`` hands a call whose arguments hold a symbolic tensor to
:func:`call_symbolic`, which builds the layer for the inputs' shapes (``build``, then
``compute_output_shape``; a layer that cannot tell is run once on a small batch of zeros)
and returns symbolic outputs, a list of them when the layer returns several
(``return_state=True``). A node also knows where its ``backprop``'s gradients go
(``gradient_slots``) and how masks reach the layer (``call_arguments``) and leave it
(``output_masks``); fastlstm.functional runs the nodes.
"""
from __future__ import annotations

import numbers

import numpy as np

from .layers.base import Gradients, Layer, _auto_name

__all__ = ["Input", "InputLayer", "KerasTensor", "Node", "Graph", "call_symbolic"]




class KerasTensor:
    """A symbolic tensor: the shape (batch axis None) and dtype of a value that a graph
    computes, and where it comes from (``node``, output ``index``)."""

    _symbolic_tensor = True             # what Layer.__call__ looks for

    def __init__(self, shape, dtype="float32", node=None, index=0, name=None):
        self.shape = tuple(shape)
        self.dtype = str(np.dtype(dtype))
        self.node = node
        self.index = index
        self.name = name

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"

    def __array__(self, *args, **kwargs):
        raise TypeError(f"{self!r} is symbolic (part of a functional model's graph) and has "
                        "no values; build a fl.Model from it and call the model on data")

    def __bool__(self):
        raise TypeError(f"{self!r} is symbolic and has no truth value")


def _flat_tensors(value):
    """The KerasTensors in a structure of lists, tuples and dicts, in order."""
    if isinstance(value, KerasTensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flat_tensors(v)]
    return []


def _substitute(value, values):
    """``value`` with every KerasTensor replaced by ``values[id(tensor)]``."""
    if isinstance(value, KerasTensor):
        return values[id(value)]
    if isinstance(value, (list, tuple)):
        return [_substitute(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, values) for k, v in value.items()}
    return value


class InputLayer(Layer):
    """The layer behind ``fl.Input``: an identity with a shape and a dtype."""

    # batch_size, sparse, ragged, optional: Keras's arguments, taken (from Keras configs
    # too) and not used: the batch axis is free and inputs are dense arrays.
    def __init__(self, shape=None, batch_size=None, dtype=None, name=None, batch_shape=None,
                 sparse=None, ragged=None, optional=False, trainable=True):
        super().__init__(name=name if name is not None else _auto_name("input_layer"))
        if batch_shape is not None:
            if shape is not None:
                raise ValueError(f"shape: give shape or batch_shape, not both (got shape="
                                 f"{shape!r}, batch_shape={batch_shape!r})")
            batch_shape = tuple(batch_shape)
            if not batch_shape:
                raise ValueError("batch_shape: expected at least the batch axis, got ()")
            shape = batch_shape[1:]
        if shape is None:
            raise ValueError("shape: fl.Input needs the shape of one sample (without the batch "
                             "axis), e.g. shape=(None, 8); got None")
        if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
            shape = (shape,)
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape: expected a tuple without the batch axis such as (None, 8), "
                            f"got {shape!r}")
        dims = []
        for d in shape:
            if d is not None and (isinstance(d, bool) or not isinstance(d, numbers.Integral)
                                  or d < 1):
                raise ValueError(f"shape: expected positive integers or None, got {tuple(shape)!r}")
            dims.append(None if d is None else int(d))
        self.batch_shape = (None,) + tuple(dims)
        try:
            self.input_dtype = "float32" if dtype is None else np.dtype(dtype).name
        except TypeError:
            raise TypeError(f"dtype: expected a NumPy dtype name such as 'float32' or "
                            f"'int32', got {dtype!r}") from None
        if np.dtype(self.input_dtype).kind not in "biuf":
            raise ValueError(f"dtype: expected a numeric dtype, got {dtype!r}")
        self.input_shape = self.batch_shape
        self.built = True
        node = Node(self, (), {}, [KerasTensor(self.batch_shape, self.input_dtype,
                                               name=self.name)], False)
        self.output = node.outputs[0]

    def __call__(self, x, mask=None, training=False):
        return x

    def forward_train(self, x, mask=None):
        return x, lambda dy: Gradients(inputs=dy, initial_state=None, weights=[])

    def compute_output_shape(self, input_shape):
        return self.batch_shape

    def get_config(self):
        return {"batch_shape": list(self.batch_shape), "dtype": self.input_dtype,
                "name": self.name}


def Input(shape=None, batch_size=None, dtype=None, name=None, batch_shape=None, **kwargs):
    """A symbolic input of a functional model: ``shape`` is one sample's shape (no batch
    axis; None for a size that varies, e.g. timesteps). ``dtype`` defaults to float32; give
    an integer dtype for an Embedding's token ids."""
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name,
                      batch_shape=batch_shape, **kwargs).output


class Node:
    """One call of a layer on symbolic tensors: its arguments (tensors anywhere in them) and
    the symbolic outputs it gave (a list; ``multi_output`` when the call returned a list)."""

    def __init__(self, layer, args, kwargs, outputs, multi_output):
        self.layer = layer
        self.args = tuple(args)
        self.kwargs = dict(kwargs)
        self.outputs = list(outputs)
        self.multi_output = multi_output
        for i, t in enumerate(self.outputs):
            t.node, t.index = self, i
        nodes = layer.__dict__.setdefault("_inbound_nodes", [])
        nodes.append(self)
        self.inputs = _flat_tensors((self.args, self.kwargs))
        self.gradient_slots = self._gradient_slots()

    def _gradient_slots(self):
        """Where ``backprop``'s Gradients go: [(field, position or None, tensor)]."""
        layer, slots = self.layer, []
        names = getattr(layer, "tensor_arguments", None)
        if names:
            for k, argname in enumerate(names):
                value = self.args[k] if k < len(self.args) else self.kwargs.get(argname)
                if isinstance(value, KerasTensor):
                    slots.append(("inputs", k, value))
        elif self.args:
            first = self.args[0]
            if isinstance(first, KerasTensor):
                slots.append(("inputs", None, first))
            elif isinstance(first, (list, tuple)):
                slots += [("inputs", k, t) for k, t in enumerate(first)
                          if isinstance(t, KerasTensor)]
        states = self.kwargs.get("initial_state")
        if isinstance(states, KerasTensor):
            states = [states]
        if isinstance(states, (list, tuple)):
            slots += [("initial_state", k, t) for k, t in enumerate(states)
                      if isinstance(t, KerasTensor)]
        return slots

    # -- running --------------------------------------------------------------------------
    def call_arguments(self, values, masks):
        """(args, kwargs) with the tensors' values, and their masks where the layer takes
        them."""
        layer = self.layer
        args = [_substitute(a, values) for a in self.args]
        kwargs = {k: _substitute(v, values) for k, v in self.kwargs.items()}
        mask_arguments = getattr(layer, "mask_arguments", None)
        names = getattr(layer, "tensor_arguments", None)
        if mask_arguments and names:
            for k, argname in enumerate(names):
                tensor = self.args[k] if k < len(self.args) else self.kwargs.get(argname)
                target = mask_arguments.get(argname)
                if isinstance(tensor, KerasTensor) and target and target not in kwargs:
                    m = masks.get(id(tensor))
                    if m is not None:
                        kwargs[target] = m
        elif "mask" not in kwargs and self.args:
            first = self.args[0]
            if isinstance(first, KerasTensor):
                m = masks.get(id(first))
                if m is not None:
                    kwargs["mask"] = m
            elif isinstance(first, (list, tuple)) and getattr(layer, "multiple_inputs", False):
                ms = [masks.get(id(t)) if isinstance(t, KerasTensor) else None for t in first]
                if any(m is not None for m in ms):
                    kwargs["mask"] = ms
        return args, kwargs

    def output_masks(self, args, kwargs, outputs, masks):
        """The masks of this call's outputs: ``compute_mask`` of its first input (the list
        for ``multiple_inputs``), which the first output carries; for a layer that names its
        ``tensor_arguments``, the first one's mask (MultiHeadAttention: the query's)."""
        layer = self.layer
        names = getattr(layer, "tensor_arguments", None)
        if names:
            first = self.args[0] if self.args else self.kwargs.get(names[0])
            out = masks.get(id(first)) if isinstance(first, KerasTensor) else None
            return [out] + [None] * (len(outputs) - 1)
        if not args:
            return [None] * len(outputs)
        mask = kwargs.get("mask")
        if isinstance(mask, list) and not any(m is not None for m in mask):
            mask = None
        out = layer.compute_mask(args[0], mask)
        if isinstance(out, (list, tuple)) and (self.multi_output or len(outputs) > 1):
            out = list(out) + [None] * (len(outputs) - len(out))
            return out[:len(outputs)]
        return [out] + [None] * (len(outputs) - 1)

    def history(self, model_nodes):
        """Keras's ``keras_history`` of each output: [layer name, node index, tensor index],
        the node index counted among ``model_nodes`` (a model's nodes) of this layer."""
        own = [n for n in self.layer._inbound_nodes if n in model_nodes]
        return own.index(self)


def _output_shapes(layer, args, kwargs):
    """Build ``layer`` for its symbolic inputs and return its output shapes (a shape or a
    list of shapes), from ``compute_output_shape`` or, if it cannot tell, a dummy batch."""
    names = getattr(layer, "tensor_arguments", None)
    first = args[0] if args else None
    shape = None
    # A call option that adds outputs (attention's scores): only a run tells their shapes.
    if not names and not kwargs.get("return_attention_scores"):
        if isinstance(first, KerasTensor):
            in_shape = first.shape
        elif isinstance(first, (list, tuple)) and first \
                and all(isinstance(t, KerasTensor) for t in first):
            in_shape = [t.shape for t in first]
        else:
            in_shape = None
        if in_shape is not None:
            if layer.built:
                _check_built_for(layer, in_shape)
            try:
                if not layer.built:
                    layer.build(in_shape)
                shape = layer.compute_output_shape(in_shape)
            except (NotImplementedError, TypeError, AttributeError):
                shape = None
    if shape is None:
        shape = _shapes_from_dummy(layer, args, kwargs)
    return shape


def _check_built_for(layer, in_shape):
    """A built layer (a shared one) called on other shapes: refuse it now, not at fit."""
    try:
        want = layer.weight_shapes(in_shape)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{layer.name}: was built for inputs of shape {layer.input_shape} and "
                         f"cannot be called on {in_shape}: {exc}") from None
    have = [tuple(getattr(w, "shape", ())) for w in layer.weights]
    if want is not None and [tuple(w) for w in want] != have:
        raise ValueError(f"{layer.name}: was built for inputs of shape {layer.input_shape} "
                         f"(weights {have}) and cannot be called on {in_shape}, which needs "
                         f"weights {[tuple(w) for w in want]}")


#: the most values a dummy batch for shape inference may hold
_DUMMY_LIMIT = 1 << 24


def _dummy(t, batch=2, steps=3):
    dims = [batch] + [steps if d is None else d for d in t.shape[1:]]
    if np.prod(dims, dtype=np.float64) > _DUMMY_LIMIT:
        raise ValueError(f"cannot infer an output shape from inputs of shape {t.shape}: a "
                         "batch of that shape is too large to try (give the layer a "
                         "compute_output_shape)")
    return np.zeros(dims, dtype=np.dtype(t.dtype))


def _shapes_from_dummy(layer, args, kwargs):
    """Run the layer on zeros of the inputs' shapes (unknown sizes 3, batch 2), building
    it; sizes that follow the unknown ones are reported as None."""
    stateful = getattr(layer, "stateful", False)
    tensors = _flat_tensors((args, kwargs))
    values = {id(t): _dummy(t) for t in tensors}
    out = layer(*[_substitute(a, values) for a in args],
                **{k: _substitute(v, values) for k, v in kwargs.items()})
    values2 = {id(t): _dummy(t, steps=4) for t in tensors}
    out2 = layer(*[_substitute(a, values2) for a in args],
                 **{k: _substitute(v, values2) for k, v in kwargs.items()})
    if stateful:
        layer.reset_states()

    def shape(a, b):
        return (None,) + tuple(None if p != q else int(p) for p, q in
                               zip(np.shape(a)[1:], np.shape(b)[1:]))
    if isinstance(out, (list, tuple)):
        return [shape(a, b) for a, b in zip(out, out2)]
    return shape(out, out2)


def call_symbolic(layer, args, kwargs):
    """``layer(*args, **kwargs)`` on symbolic tensors: build it, record the node, return
    its symbolic output(s)."""
    kwargs = dict(kwargs)
    kwargs.pop("training", None)       # the model's call decides
    if isinstance(layer, InputLayer):
        raise TypeError(f"{layer.name}: an InputLayer is not called; use fl.Input(shape)")
    shapes = _output_shapes(layer, args, kwargs)
    dtype = layer.dtype.name
    if isinstance(shapes, list):
        outputs = [KerasTensor(s, dtype) for s in shapes]
        multi = True
    else:
        outputs = [KerasTensor(shapes, dtype)]
        multi = False
    Node(layer, args, kwargs, outputs, multi)         # records itself on the layer
    for k, t in enumerate(outputs):
        t.name = layer.name if k == 0 else f"{layer.name}_{k}"
    return outputs if multi else outputs[0]


# -------------------------------------------------------------------------- a model's graph
def _structure(value, what):
    """(list of KerasTensors, kind, keys): a tensor, a list/tuple or a dict of them."""
    if isinstance(value, KerasTensor):
        return [value], "single", None
    if isinstance(value, dict):
        tensors = list(value.values())
        kind, keys = "dict", list(value.keys())
    elif isinstance(value, (list, tuple)):
        tensors, kind, keys = list(value), "list", None
    else:
        raise TypeError(f"{what}: expected a symbolic tensor (from fl.Input or a layer called "
                        f"on one) or a list or dict of them, got {type(value).__name__}")
    if not tensors:
        raise ValueError(f"{what}: expected at least one tensor, got an empty {kind}")
    for t in tensors:
        if not isinstance(t, KerasTensor):
            raise TypeError(f"{what}: expected symbolic tensors (from fl.Input or a layer "
                            f"called on one), got {type(t).__name__}")
    return tensors, kind, keys


def _unique(names):
    seen, out = {}, []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}_{k}")
    return out


class Graph:
    """The nodes between a model's inputs and outputs, in an order that computes every
    tensor before its use, with the model's layers (first use order, inputs first)."""

    def __init__(self, inputs, outputs, model_name):
        for t in inputs:
            if not isinstance(t.node.layer, InputLayer):
                raise ValueError(f"inputs: expected tensors made by fl.Input, got {t!r} (made "
                                 f"by {t.node.layer.name})")
        if len({id(t) for t in inputs}) != len(inputs):
            raise ValueError("inputs: the same Input is given twice")
        order, state = [], {}

        def visit(node):                   # iterative depth-first post-order
            stack = [(node, False)]
            while stack:
                n, done = stack.pop()
                if done:
                    state[n] = 2
                    order.append(n)
                    continue
                if state.get(n) == 2:
                    continue
                if state.get(n) == 1:
                    raise ValueError(f"outputs: the graph has a cycle through {n.layer.name}")
                state[n] = 1
                stack.append((n, True))
                for t in reversed(n.inputs):
                    if state.get(t.node) != 2:
                        stack.append((t.node, False))

        for t in outputs:
            visit(t.node)
        input_nodes = {t.node for t in inputs}
        for n in order:
            if isinstance(n.layer, InputLayer) and n not in input_nodes:
                given = [t.node.layer.name for t in inputs]
                raise ValueError(f"outputs: they depend on the Input {n.layer.name!r}, which is "
                                 f"not among the model's inputs {given} (a disconnected graph)")
        # Inputs that the outputs do not use still belong to the model (Keras allows them).
        order = [t.node for t in inputs if t.node not in state] + order
        inputs_first = [t.node for t in inputs]
        self.nodes = inputs_first + [n for n in order if n not in set(inputs_first)]
        self.node_set = set(self.nodes)
        layers, seen = [], set()
        for n in self.nodes:
            if id(n.layer) not in seen:
                seen.add(id(n.layer))
                layers.append(n.layer)
        names = [layer.name for layer in layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"layers: the names {dup} are used by several layers of "
                             f"{model_name}; layers of a model need unique names")
        self.layers = layers
        self.calls = {id(layer): sum(1 for n in self.nodes if n.layer is layer)
                      for layer in layers}
