"""Keras <-> fastlstm for functional models (Keras 3's ``Functional``; Keras 2 / tf.keras
``Model``/``Functional`` configs of the same form are translated first).

A functional config lists layers with their ``inbound_nodes``: the arguments of each call,
where tensors are named by ``keras_history = [layer, node index, tensor index]``. fastlstm's
``fl.Model`` keeps the same form, so the graph carries over node by node; each layer is
converted by fastlstm.convert._keras as a single layer, with its weights.

Masks: Keras 3 records a mask that it passed on automatically as a ``mask=`` argument fed by
the operations that computed it (``NotEqual``/``Any`` nodes); fastlstm passes masks along
the graph by the same rule, so such arguments and operations are left out, once checked to
be the mask that reaches the layer. Keras 3 passes no mask to a layer called with several
tensor arguments (an RNN with ``initial_state=``) unless given one; fastlstm passes the
sequence's mask, so ``to_keras`` gives it explicitly and ``from_keras`` refuses a graph
where a mask would reach such a call without one.
"""
from __future__ import annotations

import numpy as np

from ._common import ConversionError, resolve_dtype

FUNCTIONAL = ("Functional", "Model")
# Keras operations that compute a mask (Embedding(mask_zero): not_equal(x, 0); Masking:
# any(not_equal(x, value), axis=-1)).
_MASK_OPS = ("NotEqual", "Any")
_MASKERS = ("Embedding", "Masking")
_RNN_LIKE = ("LSTM", "GRU", "SimpleRNN", "Bidirectional")


def is_functional_config(config):
    return isinstance(config, dict) and config.get("class_name") in FUNCTIONAL


def _lists(value):
    """A live model's config as its JSON form has it: tuples as lists."""
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _tensor_ref(value):
    """keras_history [layer, node, index] of a serialised tensor, else None."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        hist = (value.get("config") or {}).get("keras_history")
        if not isinstance(hist, list) or len(hist) != 3 or not isinstance(hist[0], str) \
                or not all(isinstance(h, int) and not isinstance(h, bool) for h in hist[1:]):
            raise ConversionError(f"from_keras: malformed keras_history {hist!r:.100}")
        return tuple(hist)
    return None


def _refs(value):
    """Every tensor reference in a structure of lists and dicts."""
    ref = _tensor_ref(value)
    if ref is not None:
        return [ref]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    return []


def _tensor(ref):
    return {"class_name": "__keras_tensor__",
            "config": {"keras_history": list(ref)}}


# -- Keras 2 configs --------------------------------------------------------------------------
def _keras2_node(class_name, node, where):
    """A Keras 2 inbound node (a list of [layer, node, tensor, kwargs]) in Keras 3's form."""
    if isinstance(node, dict):                       # already Keras 3's
        return node
    if not isinstance(node, list) or not node:
        raise ConversionError(f"from_keras: {where}: malformed inbound node {node!r:.100}")
    tensors, kwargs = [], {}
    for item in node:
        if not isinstance(item, list) or len(item) not in (3, 4):
            raise ConversionError(f"from_keras: {where}: malformed inbound tensor "
                                  f"{item!r:.100}")
        tensors.append(_tensor(item[:3]))
        if len(item) == 4 and item[3]:
            if not isinstance(item[3], dict):
                raise ConversionError(f"from_keras: {where}: malformed call arguments "
                                      f"{item[3]!r:.100}")
            kwargs.update(item[3])

    def convert(value):           # tf.keras >= 2.4 writes tensors in kwargs as [l, n, t]
        if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and \
                all(isinstance(v, int) for v in value[1:]):
            return _tensor(value)
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    kwargs = {k: convert(v) for k, v in kwargs.items()}
    if class_name in _RNN_LIKE and len(tensors) > 1:
        # Keras 2 calls an RNN on [sequences, *initial_state]
        return {"args": [tensors[0]], "kwargs": dict(kwargs, initial_state=tensors[1:])}
    if len(tensors) > 1:
        return {"args": [tensors], "kwargs": kwargs}
    return {"args": tensors, "kwargs": kwargs}


def _keras2_refs(value):
    """Keras 2 lists even one input or output ([[l, n, t]]); Keras 3 writes it alone."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        return value[0]
    return value


# -- Keras config -> fl.Model -----------------------------------------------------------------
class Parsed:
    """A functional config split into its layer entries (InputLayers included, Keras
    operations not) and the graph to rebuild."""

    def __init__(self, model_config):
        cfg = _lists(model_config.get("config"))
        if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list):
            raise ConversionError("from_keras: the functional model config has no list of "
                                  "'layers'")
        self.name = cfg.get("name") if isinstance(cfg.get("name"), str) else None
        self.input_layers = cfg.get("input_layers")
        self.output_layers = cfg.get("output_layers")
        self.entries, self.ops, self.nodes = [], {}, {}
        if any(isinstance(n, list) for e in cfg["layers"] if isinstance(e, dict)
               for n in (e.get("inbound_nodes") or [])):
            self.input_layers = _keras2_refs(self.input_layers)
            self.output_layers = _keras2_refs(self.output_layers)
        for k, e in enumerate(cfg["layers"]):
            if not isinstance(e, dict) or not isinstance(e.get("class_name"), str) or \
                    not isinstance(e.get("config", {}), dict):
                raise ConversionError(f"from_keras: layer entry {k} of the functional config "
                                      f"is malformed: {e!r:.200}")
            cls, lcfg = e["class_name"], e.get("config", {})
            name = e.get("name", lcfg.get("name"))
            if not isinstance(name, str):
                raise ConversionError(f"from_keras: layer entry {k} ({cls}) has no name")
            inbound = e.get("inbound_nodes") or []
            if not isinstance(inbound, list):
                raise ConversionError(f"from_keras: {cls} {name!r}: malformed inbound_nodes")
            nodes = [_keras2_node(cls, n, f"{cls} {name!r}") for n in inbound]
            for n in nodes:
                if not isinstance(n.get("args", []), list) or \
                        not isinstance(n.get("kwargs", {}), dict):
                    raise ConversionError(f"from_keras: {cls} {name!r}: malformed node")
            if name in self.nodes:
                raise ConversionError(f"from_keras: the layer name {name!r} is used twice")
            self.nodes[name] = (cls, lcfg, nodes)
            module = str(e.get("module") or "")
            if cls in _MASK_OPS or module.startswith("keras.src.ops"):
                self.ops[name] = cls
            else:
                self.entries.append((cls, dict(lcfg, name=name)))
        for cls, lcfg in self.entries:
            if cls in FUNCTIONAL or cls == "Sequential":
                raise ConversionError(f"from_keras: {cls} {lcfg['name']!r} is a model inside "
                                      "the model; nested models are not converted (build the "
                                      "outer model from the inner model's layers)")

    # -- masks ----------------------------------------------------------------------------------
    def _producer(self, ref):
        return self.nodes.get(ref[0], (None, None, []))

    def _mask_expression(self, ref, where):
        """('ne', X, value) for a mask computed by Keras operations from tensor X."""
        cls, cfg, nodes = self._producer(ref)
        if ref[0] in self.ops and cls == "Any" and len(nodes) > ref[1]:
            args = nodes[ref[1]].get("args", [])
            inner = _tensor_ref(args[0]) if args else None
            if inner is not None and self.ops.get(inner[0]) == "NotEqual":
                expr = self._mask_expression(inner, where)
                return ("any",) + expr[1:]
        if ref[0] in self.ops and cls == "NotEqual" and len(nodes) > ref[1]:
            args = nodes[ref[1]].get("args", [])
            x = _tensor_ref(args[0]) if args else None
            if x is not None and len(args) == 2 and isinstance(args[1], (int, float)):
                return ("ne", x, float(args[1]))
        raise ConversionError(f"from_keras: {where} is given a mask= tensor made by "
                              f"{cls or '?'} {ref[0]!r}; only the masks that Keras passes "
                              "along the graph (from Embedding(mask_zero=True) or Masking) "
                              "are converted")

    def _maskers_upstream(self, ref):
        """The masks that can reach tensor ``ref`` (made by Embedding(mask_zero=True) or
        Masking calls, following positional arguments as masks travel), as a frozenset of
        ('ne' | 'any', input ref, value). Memoised: each tensor is visited once."""
        cache = self.__dict__.setdefault("_mask_cache", {})
        stack, visiting = [(ref, False)], set()
        while stack:
            r, expanded = stack.pop()
            if r in cache or (r in visiting and not expanded):
                continue                             # done, or a cycle (refused later)
            cls, cfg, nodes = self._producer(r)
            if cls is None or r[1] >= len(nodes) or (cls in _RNN_LIKE and r[2] > 0):
                cache[r] = frozenset()               # an input, or states (no mask)
                continue
            args = nodes[r[1]].get("args", [])
            if cls in _MASKERS and (cls == "Masking" or cfg.get("mask_zero") is True):
                value = cfg.get("mask_value", 0.0) if cls == "Masking" else 0.0
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConversionError(f"from_keras: Masking {r[0]!r} has mask_value "
                                          f"{value!r:.80}; expected a number")
                x = _tensor_ref(args[0]) if args else None
                cache[r] = frozenset({("ne" if cls == "Embedding" else "any", x,
                                       float(value))})
                continue
            inputs = _refs(args)
            if expanded:
                cache[r] = frozenset().union(*(cache.get(i, frozenset()) for i in inputs))
                continue
            visiting.add(r)
            stack.append((r, True))
            stack += [(i, False) for i in inputs if i not in cache]
        return cache.get(ref, frozenset())

    def _clean_node(self, cls, lcfg, node):
        """A node's arguments for fastlstm: ``training`` and automatic masks left out."""
        where = f"{cls} {lcfg['name']!r}"
        args = node.get("args", [])
        kwargs = dict(node.get("kwargs") or {})
        kwargs.pop("training", None)
        first = _refs(args[:1])
        if "mask" in kwargs:
            mask = kwargs.pop("mask")
            mask_refs = _refs(mask)
            if mask is not None and not mask_refs:
                raise ConversionError(f"from_keras: {where} has mask={mask!r:.80}")
            for m in mask_refs:
                expr = self._mask_expression(m, where)
                found = set().union(*(self._maskers_upstream(f) for f in first))
                if found != {expr}:
                    raise ConversionError(
                        f"from_keras: {where} is given a mask= that is not the one its input "
                        "carries; fastlstm passes masks along the graph only")
        elif cls in _RNN_LIKE and kwargs.get("initial_state") is not None and first:
            if self._maskers_upstream(first[0]):
                raise ConversionError(
                    f"from_keras: {where} is called with initial_state= on a masked sequence: "
                    "Keras 3 passes no mask to a layer called with several tensors (unless "
                    "given mask=), fastlstm passes the sequence's; the two would differ")
        if cls in _RNN_LIKE and cfg_flag(lcfg, "go_backwards") and \
                cfg_flag(lcfg, "return_sequences") and first and \
                self._maskers_upstream(first[0]):
            raise ConversionError(
                f"from_keras: {where} has go_backwards=True and return_sequences=True on a "
                "masked sequence: Keras passes the mask on unreversed while fastlstm reverses "
                "it with the output, so the two would compute differently")
        for r in _refs((args, kwargs)):
            if r[0] in self.ops:
                raise ConversionError(f"from_keras: {where} takes the output of the Keras "
                                      f"operation {self.ops[r[0]]} {r[0]!r}, which has no "
                                      "fastlstm layer")
        return {"args": args, "kwargs": kwargs}

    def graph(self):
        """fl.Model._from_graph's graph: layer names with cleaned inbound nodes."""
        layers = []
        for cls, lcfg in self.entries:
            nodes = self.nodes[lcfg["name"]][2]
            layers.append({"name": lcfg["name"],
                           "inbound_nodes": [] if cls == "InputLayer" else
                           [self._clean_node(cls, lcfg, n) for n in nodes]})
        return {"layers": layers, "input_layers": self.input_layers,
                "output_layers": self.output_layers}


def cfg_flag(cfg, key):
    return cfg.get(key) is True


def input_layer(config, ctx):
    """fastlstm's InputLayer for a Keras InputLayer config (Keras 3 or 2)."""
    from ..graph import InputLayer
    name = config.get("name")
    shape = config.get("batch_shape", config.get("batch_input_shape"))
    if not isinstance(shape, list) or not shape:
        raise ConversionError(f"from_keras: InputLayer {name!r} has no batch_shape")
    dtype = config.get("dtype", "float32")
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name", "float32")
    for key in ("sparse", "ragged", "optional"):
        if config.get(key):
            raise ConversionError(f"from_keras: InputLayer {name!r} has {key}=True; fastlstm's "
                                  "inputs are dense arrays")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ConversionError(f"from_keras: InputLayer {name!r} has dtype {dtype!r}") from None
    if dt.kind == "f":
        dt = resolve_dtype(ctx.dtype, dt) if ctx.dtype is not None else dt
    try:
        return InputLayer(batch_shape=[None if d is None else d for d in shape],
                          dtype=dt.name, name=name)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"from_keras: InputLayer {name!r}: {exc}") from None


def build_model(parsed, layers):
    """fl.Model from converted ``layers`` (aligned with ``parsed.entries``)."""
    from ..functional import Model
    graph = parsed.graph()
    try:
        return Model._from_graph(layers, graph, parsed.name)
    except ConversionError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"from_keras: the functional graph cannot be rebuilt in "
                              f"fastlstm: {exc}") from None


# -- fl.Model -> Keras ------------------------------------------------------------------------
def to_keras_model(keras, model, convert_layer):
    """A Keras functional model with the graph, configuration and weights of ``model``;
    ``convert_layer(layer)`` gives (Keras layer, build shape or None)."""
    from ..graph import InputLayer, KerasTensor
    graph = model._graph
    made = {}                   # id(fl layer) -> Keras layer
    values = {}                 # id(fl KerasTensor) -> Keras tensor

    def sub(value):
        if isinstance(value, KerasTensor):
            return values[id(value)]
        if isinstance(value, (list, tuple)):
            return [sub(v) for v in value]
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return value

    for node in graph.nodes:
        layer = node.layer
        if isinstance(layer, InputLayer):
            t = node.outputs[0]
            values[id(t)] = keras.Input(batch_shape=tuple(layer.batch_shape),
                                        dtype=layer.input_dtype, name=layer.name)
            continue
        if id(layer) not in made:
            made[id(layer)] = convert_layer(layer)[0]
        klayer = made[id(layer)]
        args = [sub(a) for a in node.args]
        kwargs = {k: sub(v) for k, v in node.kwargs.items()}
        cls = type(layer).__name__
        if "mask" not in kwargs and node.kwargs.get("initial_state") is not None and args:
            # fastlstm passes the sequence's mask; Keras only when told (several tensors)
            m = getattr(args[0], "_keras_mask", None)
            if m is not None:
                kwargs["mask"] = m
        if getattr(layer, "go_backwards", False) and getattr(layer, "return_sequences", False) \
                and args and getattr(args[0], "_keras_mask", None) is not None:
            raise ConversionError(
                f"to_keras: {cls} {layer.name!r} has go_backwards=True and "
                "return_sequences=True on a masked sequence: fastlstm reverses the mask with "
                "the output while Keras passes it on unreversed, so the two would compute "
                "differently")
        try:
            out = klayer(*args, **kwargs)
        except Exception as exc:        # Keras's own errors are of many kinds
            raise ConversionError(f"to_keras: {cls} {layer.name!r} cannot be called in Keras "
                                  f"as in the fastlstm graph: {type(exc).__name__}: "
                                  f"{exc}") from None
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        if len(outs) != len(node.outputs):
            raise ConversionError(f"to_keras: {cls} {layer.name!r} gives {len(outs)} outputs "
                                  f"in Keras, {len(node.outputs)} in fastlstm")
        for t, k in zip(node.outputs, outs):
            values[id(t)] = k

    def pack(tensors, kind, keys):
        ks = [values[id(t)] for t in tensors]
        if kind == "dict":
            return dict(zip(keys, ks))
        return ks[0] if kind == "single" else ks

    kmodel = keras.Model(pack(model._inputs, model._input_kind, model._input_keys),
                         pack(model._outputs, model._output_kind, model._output_keys),
                         name=model.name)
    for layer in graph.layers:
        if isinstance(layer, InputLayer) or not layer.get_weights():
            continue
        made[id(layer)].set_weights(layer.get_weights())
    return kmodel


# -- merge layers (they take several inputs, so only functional models hold them) ---------------
MERGE = ("Concatenate", "Add", "Multiply", "Average")


def merge_from_keras(class_name, config, weights, options, dtype_name, ctx):
    """fastlstm's merge layer for a Keras Concatenate/Add/Multiply/Average config."""
    from ._common import flag, new_layer
    o = options(class_name, config)
    kw = {"axis": o.take("axis", -1)} if class_name == "Concatenate" else {}
    o.finish()
    if weights:
        raise ConversionError(f"from_keras: {o.where}: expected no weights, got "
                              f"{len(weights)} arrays")
    return new_layer(class_name, "from_keras", name=config.get("name"),
                     dtype=dtype_name(weights, ctx),
                     trainable=flag(config.get("trainable", True),
                                    f"from_keras: {o.where} trainable"), **kw)


def merge_to_keras(keras, layer):
    kw = dict(name=layer.name, trainable=layer.trainable, dtype=layer.dtype.name)
    if type(layer).__name__ == "Concatenate":
        kw["axis"] = layer.axis
    return getattr(keras.layers, type(layer).__name__)(**kw)
