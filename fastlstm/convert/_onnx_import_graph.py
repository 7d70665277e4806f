"""ONNX -> a functional ``fl.Model``: graphs with several inputs or outputs, or that are not
a chain (what ``to_onnx`` writes for functional models).

``_GraphReader`` runs the nodes the outputs depend on, in order. Data values (``_V``) are
fastlstm symbolic tensors seen through the ONNX tensor's axes: ``labels`` names, per ONNX
axis, the fastlstm tensor's axis (an int) or an inserted unit axis ('d'), and ``rev`` says
the time axis is reversed. A value is handed to a layer only in fastlstm's own layout. A
MatMul (Dense) or Conv (Conv1D) stays pending while an ``Add`` of its bias and an
activation can still join it (when it has one consumer); layers whose nodes read the same
initializers (a shared layer's) are created once and called again. Initializers are read
as by _onnx_import (size limits, no external data) and nodes are checked against their
operator's definition; anything else is refused with ``ConversionError`` naming the node.
"""
from __future__ import annotations

import numpy as np

from ._common import ConversionError, new_layer, resolve_dtype, set_built_weights
from ._onnx_import import (_DENSE_ACTS, _Const, _hard_sigmoid, _layer_spec, _parse_activations,
                           _Reader)

_OPS = ("LSTM", "GRU", "RNN", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Identity",
        "Dropout", "Constant", "MatMul", "Add", "Sum", "Mul", "Mean", "Concat", "Relu", "Tanh",
        "Sigmoid", "Softsign", "HardSigmoid", "Softmax", "Conv", "LayerNormalization",
        "ReduceMean", "ReduceMax", "ReduceSum", "ReduceProd", "Tile", "Reshape", "Gather")
_MERGES = {"Add": "Add", "Sum": "Add", "Mul": "Multiply", "Mean": "Average"}


class _Pending:
    """A layer call not made yet (Dense / Conv1D that a bias or activation may still join)."""

    def __init__(self, cls, kw, ws, src, key):
        self.cls, self.kw, self.ws, self.src, self.key = cls, dict(kw), list(ws), src, key
        self.kt = None

    def but(self, kw=None, ws=None, key=()):
        return _Pending(self.cls, dict(self.kw, **(kw or {})),
                        self.ws if ws is None else ws, self.src, self.key + key)


class _V:
    """``merge``: a bidirectional node's output with its direction axis 'D' still apart
    (the merge mode its consumers apply); ``states``: per direction, the final states a
    Gather on 'D' picks."""

    def __init__(self, kt=None, labels=None, rev=False, pending=None, is_int=False,
                 merge=None, states=None, att=None):
        self.kt = kt
        self.pending = pending
        self.labels = tuple(labels)
        self.rev = rev
        self.is_int = is_int
        self.merge = merge
        self.states = states
        self.att = att              # dot-attention scores / weights not yet applied

    def but(self, **kw):
        d = dict(kt=self.kt, labels=self.labels, rev=self.rev, pending=self.pending,
                 is_int=self.is_int, merge=self.merge, states=self.states, att=self.att)
        d.update(kw)
        return _V(**d)


class _GraphReader(_Reader):
    """See the module docstring; the initializer, attribute and signature checks are
    _Reader's."""

    def __init__(self, onnx, model, dtype):
        super().__init__(onnx, model, dtype)
        self.layers = {}            # key -> layer (shared layers)
        self.uses = {}
        self.names = set()          # layer names taken (the inputs' among them)

    def fresh(self, cls):
        """A layer name of fastlstm's form that no input or earlier layer has."""
        from ..layers.base import _auto_name
        name = _auto_name(cls)
        while name in self.names:
            name = _auto_name(cls)
        self.names.add(name)
        return name

    # -- layers ---------------------------------------------------------------------------
    def layer(self, cls, kw, ws, input_shape, key):
        full = (cls, repr(sorted(kw.items())), key)
        if full not in self.layers:
            layer = new_layer(cls, "from_onnx", dtype=self.dt.name, name=self.fresh(cls), **kw)
            set_built_weights(layer, input_shape, [np.asarray(w, self.dt) for w in ws])
            self.layers[full] = layer
        return self.layers[full]

    def materialize(self, p):
        if p.kt is None:
            layer = self.layer(p.cls, p.kw, p.ws, p.src.shape, p.key)
            p.kt = layer(p.src)
        return p.kt

    def tensor(self, v, node, what="input", labels=None):
        """The fastlstm tensor of a value that a layer reads, in ``labels`` (default
        fastlstm's own layout)."""
        if not isinstance(v, _V):
            raise self.err(node, f"{what} must be computed from a graph input")
        if v.att is not None:
            raise self.err(node, f"{what} are attention scores, read only as the Softmax "
                           "and the MatMul with the values that follow them")
        if v.kt is None and v.pending is None:
            raise self.err(node, f"{what} is a value that no fastlstm layer gives")
        if v.pending is not None:
            v.kt = self.materialize(v.pending)
            v.pending = None
        want = tuple(range(len(v.kt.shape))) if labels is None else tuple(labels)
        if v.labels != want or v.rev:
            raise self.err(node, f"{what} has its axes in an order no fastlstm layer reads "
                           f"(ONNX axis k holds fastlstm axis {list(v.labels)}"
                           f"{', time reversed' if v.rev else ''}; expected {list(want)})")
        if v.is_int and node.op_type != "Gather":
            raise self.err(node, f"{what} is an integer input; only Gather (Embedding) reads it")
        return v.kt

    def single_use(self, node, k=0):
        return self.uses.get(node.input[k], 0) == 1

    def derived(self, node, v, **kw):
        """A new view of ``v``; a pending call with several consumers is made first."""
        if v.pending is not None and not self.single_use(node):
            v.kt = self.materialize(v.pending)
            v.pending = None
        return v.but(**kw)

    # -- run ------------------------------------------------------------------------------
    def run(self):
        from ..functional import Input, Model
        g = self.model.graph
        for init in g.initializer:
            self.vals[init.name] = _Const(self.array(init, f"from_onnx: initializer "
                                                           f"{init.name!r}"))
        data_inputs = [i for i in g.input if i.name not in self.vals]
        if not data_inputs:
            raise ConversionError("from_onnx: the graph has no data input")
        if not g.output:
            raise ConversionError("from_onnx: the graph has no output")
        TP = self.onnx.TensorProto
        floats = [i.type.tensor_type.elem_type for i in data_inputs
                  if i.type.tensor_type.elem_type in (TP.FLOAT, TP.DOUBLE, TP.FLOAT16)]
        first = (np.float64 if floats[0] == TP.DOUBLE else np.float32) if floats else np.float32
        self.dt = resolve_dtype(self.dtype, first)
        inputs = []
        for inp in data_inputs:
            tt = inp.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                    for d in tt.shape.dim]
            if len(dims) < 2:
                raise ConversionError(f"from_onnx: input {inp.name!r} has rank {len(dims)}; "
                                      "expected (batch, ...)")
            if tt.elem_type in (TP.INT64, TP.INT32):
                dtype, is_int = "int64", True
            elif tt.elem_type in (TP.FLOAT, TP.DOUBLE, TP.FLOAT16):
                dtype, is_int = self.dt.name, False
            else:
                raise ConversionError(f"from_onnx: input {inp.name!r} has element type "
                                      f"{tt.elem_type}; expected float or int64")
            kt = Input(shape=tuple(dims[1:]), dtype=dtype, name=inp.name)
            self.names.add(inp.name)
            inputs.append(kt)
            self.vals[inp.name] = _V(kt, range(len(dims)), is_int=is_int)
        targets = [o.name for o in g.output]
        needed = set()
        for t in targets:
            needed |= self._needed(g, t)
        for k, node in enumerate(g.node):
            if k in needed:
                for name in node.input:
                    self.uses[name] = self.uses.get(name, 0) + 1
        for t in targets:
            self.uses[t] = self.uses.get(t, 0) + 1
        self.consumers = {}
        for k, node in enumerate(g.node):
            if k in needed:
                for name in node.input:
                    self.consumers.setdefault(name, []).append(node)
        for k, node in enumerate(g.node):
            if k in needed and node.op_type in ("LSTM", "GRU", "RNN") and \
                    len(node.input) > 4 and node.input[4]:
                raise self.err(node, "sequence_lens (masking) is not supported by from_onnx")
        for k, node in enumerate(g.node):
            if k in needed:
                self.step(node)
        outputs = []
        for t in targets:
            v = self.vals.get(t)
            if not isinstance(v, _V):
                raise ConversionError(f"from_onnx: output {t!r} is not computed from the "
                                      "inputs by supported operators")
            outputs.append(self.tensor(v, _Named(t), f"output {t!r}"))
        try:
            return Model(inputs if len(inputs) > 1 else inputs[0],
                         outputs if len(outputs) > 1 else outputs[0], name=g.name or None)
        except (ValueError, TypeError) as exc:
            raise ConversionError(f"from_onnx: the graph does not make a functional model: "
                                  f"{exc}") from None

    # -- one node -------------------------------------------------------------------------
    def step(self, node):
        op, ins, a = self.node_inputs(node, _OPS, " in a functional graph")
        try:
            if op == "Constant":
                self.vals[node.output[0]] = _Const(self._constant(node, a))
                return
            if not any(isinstance(v, _V) for v in ins):
                if not all(isinstance(v, _Const) or v is None for v in ins):
                    raise self.err(node, "its inputs are neither constants nor data")
                self.vals[node.output[0]] = _Const(self.fold(node, op, ins, a))
                return
            if op in ("LSTM", "GRU", "RNN"):
                for name, v in zip(node.output, self.recurrent(node, ins, a)):
                    if name:
                        self.vals[name] = v
                return
            self.vals[node.output[0]] = self.data(node, op, ins, a)
        except ConversionError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                MemoryError) as exc:
            raise self.err(node, f"cannot be applied to its inputs and attributes "
                           f"({type(exc).__name__}: {exc})") from None

    def data(self, node, op, ins, a):
        x = ins[0]
        if isinstance(x, _V) and "D" in x.labels and op not in ("Transpose", "Identity",
                                                                 "Dropout"):
            return self.directions(node, op, ins, a)
        if any(isinstance(v, _V) and v.att is not None for v in ins) or (
                op == "MatMul" and all(isinstance(v, _V) for v in ins)):
            return self.attention(node, op, ins, a)
        if op in ("Identity", "Dropout"):
            return self.derived(node, x)
        if op == "Transpose":
            perm = a.get("perm", list(range(len(x.labels)))[::-1])
            if sorted(perm) != list(range(len(x.labels))):
                raise self.err(node, f"perm={perm} is not a permutation of {len(x.labels)} axes")
            return self.derived(node, x, labels=[x.labels[p] for p in perm])
        if op in ("Squeeze", "Unsqueeze"):
            axes = self._axes(node, ins, a)
            labels = list(x.labels)
            if op == "Squeeze":
                axes = sorted({ax % len(labels) for ax in axes}) if axes else \
                    [k for k, l in enumerate(labels) if l == "d"]
                if any(labels[ax] != "d" for ax in axes):
                    raise self.err(node, "squeezes an axis of unknown size")
                labels = [l for k, l in enumerate(labels) if k not in axes]
            else:
                n = len(labels) + len(axes)
                for ax in sorted(ax % n for ax in axes):
                    labels.insert(ax, "d")
            return self.derived(node, x, labels=labels)
        if op == "Slice":
            starts, ends = self._ints(ins, 1), self._ints(ins, 2)
            axes, steps = self._ints(ins, 3), self._ints(ins, 4)
            if not (starts == [-1] and steps == [-1] and ends is not None
                    and ends[0] <= -(2 ** 31) and axes is not None and len(axes) == 1
                    and x.labels[axes[0] % len(x.labels)] == 1):
                raise self.err(node, "only the reversal of the time axis (starts=[-1], "
                               "steps=[-1], to the start) is read as a Slice")
            return self.derived(node, x, rev=not x.rev)
        if op == "MatMul":
            kernel = self.const(node, node.input[1], "the second MatMul input (a Dense kernel)")
            self.expect_shape(node, "the kernel", kernel, (None, None), "(in, units)")
            src = self.tensor(x, node)
            if src.shape[-1] != kernel.shape[0]:
                raise self.err(node, f"the kernel has {kernel.shape[0]} rows; the input has "
                               f"{src.shape[-1]} features")
            return _V(labels=range(len(src.shape)), pending=_Pending(
                "Dense", dict(units=kernel.shape[1], use_bias=False), [kernel], src,
                (node.input[1],)))
        if op == "Add" and any(isinstance(v, _Const) for v in ins):
            k = 0 if isinstance(ins[0], _V) else 1
            v, c = ins[k], ins[1 - k]
            p = v.pending
            if (p is None or p.kw.get("use_bias", True) or p.kw.get("activation")
                    or not self.single_use(node, k) or v.labels != tuple(
                        range(len(p.src.shape)))):
                raise self.err(node, "adds a constant to a value that is not a Dense "
                               "without bias")
            units = p.kw["units"] if p.cls == "Dense" else p.kw["filters"]
            self.expect_shape(node, "the bias", c.arr, (units,), "(units,)")
            return v.but(pending=p.but(dict(use_bias=True), p.ws + [c.arr],
                                       (node.input[1 - k],)))
        if op in _MERGES:
            kts = [self.tensor(v, node, f"input {k}") for k, v in enumerate(ins)]
            key = tuple(node.output)            # merges have no weights: one per node
            layer = self.layer(_MERGES[op], {}, [], [t.shape for t in kts], key)
            return _V(layer(kts), range(len(kts[0].shape)))
        if op == "Concat":
            kts = [self.tensor(v, node, f"input {k}") for k, v in enumerate(ins)]
            if "axis" not in a:
                raise self.err(node, "Concat needs the attribute axis")
            layer = self.layer("Concatenate", dict(axis=int(a["axis"])), [],
                               [t.shape for t in kts], tuple(node.output))
            return _V(layer(kts), range(len(kts[0].shape)))
        if op in _DENSE_ACTS or op in ("HardSigmoid", "Softmax"):
            if op == "HardSigmoid":
                act = _hard_sigmoid(a.get("alpha", 0.2), a.get("beta", 0.5))
            elif op == "Softmax":
                rank = len(x.labels)
                if a.get("axis", -1) % rank != rank - 1 or x.labels[-1] != rank - 1:
                    raise self.err(node, "only a Softmax over the feature axis is read")
                act = "softmax"
            else:
                act = _DENSE_ACTS[op]
            p = x.pending
            if p is not None and "activation" not in p.kw and self.single_use(node):
                return x.but(pending=p.but(dict(activation=act), key=(op, repr(act))))
            src = self.tensor(x, node)
            layer = self.layer("Activation", dict(activation=act), [], src.shape,
                               tuple(node.output))
            return _V(layer(src), x.labels)
        if op == "Conv":
            return self.conv(node, ins, a)
        if op == "LayerNormalization":
            src = self.tensor(x, node)
            rank = len(src.shape)
            axis = a.get("axis", -1) % rank
            if axis == 0:
                raise self.err(node, "normalises over the batch axis")
            shape = tuple(src.shape[axis:])
            scale = self.const(node, node.input[1], "Scale")
            self.expect_shape(node, "Scale", scale, shape, "the normalised axes")
            bias = self.const(node, node.input[2], "B") if len(node.input) > 2 and \
                node.input[2] else np.zeros(shape)
            self.expect_shape(node, "B", bias, shape, "the normalised axes")
            kw = dict(axis=-1 if axis == rank - 1 else list(range(axis, rank)),
                      # ONNX keeps a float32: its shortest decimal (1e-3, not 1.0000000474e-3)
                      epsilon=float(str(np.float32(a.get("epsilon", 1e-5)))))
            layer = self.layer("LayerNormalization", kw, [scale, bias], src.shape,
                               tuple(node.input[1:]))
            return _V(layer(src), range(rank))
        if op in ("ReduceMean", "ReduceMax"):
            src = self.tensor(x, node)
            axes = self._axes(node, ins, a)
            if len(src.shape) != 3 or [ax % 3 for ax in axes] != [1]:
                raise self.err(node, f"{op} over axes {axes} of a rank-{len(src.shape)} "
                               "tensor; only the time axis of (batch, time, features) is read "
                               "(a global pooling)")
            keep = bool(a.get("keepdims", 1))
            cls = "GlobalAveragePooling1D" if op == "ReduceMean" else "GlobalMaxPooling1D"
            layer = self.layer(cls, dict(keepdims=keep), [], src.shape, tuple(node.output))
            return _V(layer(src), range(3 if keep else 2))
        if op == "Tile":
            reps = self._ints(ins, 1)
            if x.labels != (0, "d", 1) or x.rev or reps is None or len(reps) != 3 or \
                    reps[0] != 1 or reps[2] != 1 or reps[1] < 1:
                raise self.err(node, "only Tile of a (batch, 1, features) view of a (batch, "
                               "features) tensor along axis 1 is read (RepeatVector)")
            src = self.tensor(x.but(labels=(0, 1)), node)
            layer = self.layer("RepeatVector", dict(n=reps[1]), [], src.shape,
                               tuple(node.output))
            return _V(layer(src), range(3))
        if op == "Reshape":
            shape = self._ints(ins, 1)
            src = self.tensor(x, node)
            if shape != [0, -1] or a.get("allowzero"):
                raise self.err(node, f"Reshape to {shape}; only [0, -1] (Flatten) is read")
            layer = self.layer("Flatten", {}, [], src.shape, tuple(node.output))
            return _V(layer(src), range(2))
        if op == "Gather":
            table = ins[0]
            idx = ins[1]
            if not isinstance(table, _Const) or not isinstance(idx, _V) or not idx.is_int \
                    or a.get("axis", 0) != 0:
                raise self.err(node, "only Gather of a constant table by an integer input "
                               "along axis 0 (Embedding) is read")
            self.expect_shape(node, "the table", table.arr, (None, None), "(vocabulary, dim)")
            src = self.tensor(idx, node)
            layer = self.layer("Embedding", dict(input_dim=table.arr.shape[0],
                                                 output_dim=table.arr.shape[1]),
                               [table.arr], None, (node.input[0],))
            return _V(layer(src), range(len(src.shape) + 1))
        raise self.err(node, f"{op} is not read here")

    def attention(self, node, op, ins, a):
        """Dot attention as to_onnx writes it: MatMul(q, Transpose(k)) [Mul scale]
        Softmax(-1), MatMul(weights, v) -> Attention([q, v, k])."""
        x = ins[0]
        if op == "MatMul" and x.att is None:
            q = self.tensor(x, node, "the query")
            k = self.tensor(ins[1], node, "the key", labels=(0, 2, 1))
            if len(q.shape) != 3:
                raise self.err(node, "MatMul of two data tensors is read only as the scores of "
                               "attention between (batch, time, features) tensors")
            return _V(labels=(0, 1, 2), att=dict(q=q, k=k, scale=None, key=(), probs=False))
        att = x.att
        if x.att is None or len(ins) != 2 and op != "Softmax":
            raise self.err(node, f"{op} of attention scores is not read")
        if op == "Mul" and not att["probs"] and att["scale"] is None:
            c = ins[1]
            if not isinstance(c, _Const) or c.arr.shape != ():
                raise self.err(node, "attention scores are scaled by one constant scalar only")
            return _V(labels=(0, 1, 2), att=dict(att, scale=c.arr, key=(node.input[1],)))
        if op == "Softmax" and not att["probs"]:
            if a.get("axis", -1) not in (-1, 2):
                raise self.err(node, "a Softmax of attention scores over other than the last "
                               "axis is not read")
            return _V(labels=(0, 1, 2), att=dict(att, probs=True, name=node.output[0]))
        if op == "MatMul" and att["probs"]:
            v = self.tensor(ins[1], node, "the value")
            if self.uses.get(att["name"], 0) > 1:
                # a functional model's symbolic call gives Attention one output
                raise self.err(node, "the attention weights are used beyond this MatMul (an "
                               "output?); a functional fl.Model's Attention call gives only "
                               "its result")
            inputs = [att["q"], v] + ([] if att["k"] is v else [att["k"]])
            scale = att["scale"] is not None
            ws = [att["scale"]] if scale else []
            layer = self.layer("Attention", dict(use_scale=scale), ws,
                               [t.shape for t in inputs],
                               att["key"] if scale else tuple(node.output))
            return _V(layer(inputs), range(3))
        raise self.err(node, f"{op} of attention scores is not read")

    def directions(self, node, op, ins, a):
        """The consumers of a bidirectional node's outputs that to_onnx writes: the merge
        (``Reshape`` of (.., D, H) for concat, ``ReduceSum|Mean|Prod`` over D) and
        ``Gather`` of one direction's final state."""
        x = ins[0]
        labels = list(x.labels)
        d_ax = labels.index("D")
        rest = [l for l in labels if l != "D"]
        if op == "Gather":
            idx = self._ints(ins, 1)
            if x.states is None or a.get("axis", 0) % len(labels) != d_ax or idx is None \
                    or len(idx) != 1 or np.ndim(ins[1].arr) != 0 or idx[0] not in (0, 1, -1):
                raise self.err(node, "only Gather of one direction's final state is read")
            return _V(x.states[idx[0]], rest)
        if x.kt is None or x.merge is None:
            raise self.err(node, "merges a bidirectional output that fastlstm cannot give")
        if op == "Reshape":
            shape = self._ints(ins, 1)
            ok = (x.merge == "concat" and d_ax == len(labels) - 2 and shape is not None
                  and shape == [0] * (len(labels) - 2) + [-1] and not a.get("allowzero")
                  and rest == list(range(len(rest))))
            if not ok:
                raise self.err(node, f"Reshape to {shape} of a bidirectional output with axes "
                               f"{labels}; only joining its last two axes (direction, "
                               "hidden) in fastlstm's order is read")
            return _V(x.kt, rest)
        mode = {"ReduceSum": "sum", "ReduceMean": "ave", "ReduceProd": "mul"}.get(op)
        axes = self._axes(node, ins, a) if mode else None
        if mode != x.merge or axes is None or [ax % len(labels) for ax in axes] != [d_ax] \
                or a.get("keepdims", 1):
            raise self.err(node, f"{op} of a bidirectional output: only its merge over the "
                           "direction axis is read")
        return _V(x.kt, rest)

    def bidirectional(self, node, ins, a, src, feat, W, R, B, P, H):
        op = node.op_type
        if any(len(node.input) > k and node.input[k] and not (
                isinstance(ins[k], _Const) and not np.any(ins[k].arr)) for k in (5, 6)):
            raise self.err(node, "a bidirectional node with initial states is not read")
        funcs = _parse_activations(self, node, a, op, 2)
        specs = [_layer_spec(self, node, op, a, d, W, R, B, P, H, funcs[d], d == 1)
                 for d in range(2)]
        y, y_h, y_c = (node.output[k] if len(node.output) > k else "" for k in range(3))
        rs = bool(y) and self.uses.get(y, 0) > 0
        rstate = any(c.op_type == "Gather" for n in (y_h, y_c) if n
                     for c in self.consumers.get(n, []))
        merge = "concat"
        for name in ((y,) if rs else (y_h,)):
            for c in self.consumers.get(name, []):
                if c.op_type in ("ReduceSum", "ReduceMean", "ReduceProd"):
                    merge = {"ReduceSum": "sum", "ReduceMean": "ave", "ReduceProd": "mul"}[
                        c.op_type]
        key = ("bidirectional", merge, rs, rstate) + tuple(node.input[1:4]) + (
            node.input[7] if len(node.input) > 7 else "",)
        full = ("Bidirectional", key)
        if full not in self.layers:
            dirs = [new_layer(cls, "from_onnx", return_sequences=rs, return_state=rstate,
                              dtype=self.dt.name, **kw) for cls, kw, _ in specs]
            for layer, (_, _, ws) in zip(dirs, specs):
                set_built_weights(layer, (None, None, feat), [np.asarray(w, self.dt)
                                                              for w in ws])
            layer = new_layer("Bidirectional", "from_onnx", layer=dirs[0],
                              backward_layer=dirs[1], merge_mode=merge,
                              name=self.fresh("Bidirectional"))
            set_built_weights(layer, (None, None, feat), [np.asarray(w, self.dt) for _, _, ws
                                                          in specs for w in ws])
            self.layers[full] = layer
        out = self.layers[full](src)
        outs = list(out) if rstate else [out]
        hs = cs = None
        if rstate:
            per = 2 if op == "LSTM" else 1
            hs = [outs[1], outs[1 + per]]
            cs = [outs[2], outs[2 + per]] if op == "LSTM" else None
        return [_V(outs[0] if rs else None, (1, "D", 0, 2), merge=merge),
                _V(None if rs else outs[0], ("D", 0, 1), merge=merge, states=hs),
                _V(None, ("D", 0, 1), states=cs)][:len(node.output)]

    def conv(self, node, ins, a):
        x = ins[0]
        src = self.tensor(x, node, "X", labels=(0, 2, 1))
        W = self.const(node, node.input[1], "W")
        self.expect_shape(node, "W", W, (None, src.shape[2], None),
                          "(filters, channels, kernel_size)")
        filters, _, k = W.shape
        if int(a.get("group", 1)) != 1:
            raise self.err(node, f"group={a.get('group')}; only 1 is read")
        s = list(a.get("strides", [1]))
        d = list(a.get("dilations", [1]))
        if a.get("kernel_shape") not in (None, [k]) or len(s) != 1 or len(d) != 1:
            raise self.err(node, "expected a 1-D convolution")
        s, d = int(s[0]), int(d[0])
        span = d * (k - 1)
        auto = a.get("auto_pad", "NOTSET")
        pads = list(a.get("pads", [0, 0]))
        if auto == "SAME_UPPER":
            padding = "same"
        elif auto not in ("NOTSET", "VALID") or len(pads) != 2:
            raise self.err(node, f"auto_pad={auto!r}, pads={pads}: not a Conv1D padding")
        elif pads == [0, 0] or auto == "VALID":
            padding = "valid"
        elif pads == [span, 0]:
            padding = "causal"
        elif s == 1 and pads == [span // 2, span - span // 2]:
            padding = "same"
        else:
            raise self.err(node, f"pads={pads} are none of Conv1D's paddings (valid [0, 0], "
                           f"causal [{span}, 0], same [{span // 2}, {span - span // 2}])")
        B = self.const(node, node.input[2], "B") if len(node.input) > 2 and node.input[2] \
            else None
        if B is not None:
            self.expect_shape(node, "B", B, (filters,), "(filters,)")
        kw = dict(filters=filters, kernel_size=k, strides=s, dilation_rate=d, padding=padding,
                  use_bias=B is not None)
        ws = [np.transpose(W, (2, 1, 0))] + ([B] if B is not None else [])
        return _V(labels=(0, 2, 1), pending=_Pending("Conv1D", kw, ws, src,
                                                     tuple(node.input[1:])))

    def recurrent(self, node, ins, a):
        op = node.op_type
        direction = a.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            raise self.err(node, f"direction={direction!r}; ONNX allows forward, reverse and "
                           "bidirectional")
        D = 2 if direction == "bidirectional" else 1
        if a.get("layout", 0) != 0:
            raise self.err(node, "layout=1 (batch-major) is read only in a chain")
        if a.get("clip") is not None:
            raise self.err(node, f"clip={a['clip']} (cell clipping) has no fastlstm equivalent")
        n_in = len(node.input)
        if n_in > 4 and node.input[4]:
            raise self.err(node, "sequence_lens (masking) is not supported by from_onnx")
        src = self.tensor(ins[0], node, "X", labels=(1, 0, 2))
        feat = src.shape[2]
        if feat is None:
            raise self.err(node, "X has an unknown feature size")
        W = self.const(node, node.input[1], "W")
        R = self.const(node, node.input[2], "R")
        B = self.const(node, node.input[3], "B") if n_in > 3 and node.input[3] else None
        P = self.const(node, node.input[7], "P") if n_in > 7 and node.input[7] else None
        G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
        H = int(a["hidden_size"]) if "hidden_size" in a else (R.shape[-1] if R.ndim == 3 else 0)
        if H < 1:
            raise self.err(node, f"hidden_size={H}; expected a positive integer")
        self.expect_shape(node, "W", W, (D, G * H, feat), "[directions, gates*hidden, input]")
        self.expect_shape(node, "R", R, (D, G * H, H), "[directions, gates*hidden, hidden]")
        if B is not None:
            self.expect_shape(node, "B", B, (D, 2 * G * H), "[directions, 2*gates*hidden]")
        if P is not None:
            self.expect_shape(node, "P", P, (D, 3 * H), "[directions, 3*hidden]")
        if D == 2:
            return self.bidirectional(node, ins, a, src, feat, W, R, B, P, H)
        states = []
        for k, what in ((5, "initial_h"), (6, "initial_c")):
            v = ins[k] if n_in > k and node.input[k] else None
            if isinstance(v, _Const):
                self.expect_shape(node, what, v.arr, (1, None, H), "[1, batch, hidden]")
                if np.any(v.arr):
                    raise self.err(node, f"{what} is a non-zero constant; fastlstm takes "
                                   "initial states as tensors")
                v = None
            if v is not None:
                kt = self.tensor(v, node, what, labels=("d", 0, 1))
                if kt.shape[1] != H:
                    raise self.err(node, f"{what} has {kt.shape[1]} features; hidden_size "
                                   f"is {H}")
                states.append(kt)
        if states and len(states) != (2 if op == "LSTM" else 1):
            raise self.err(node, "an LSTM takes both initial_h and initial_c, or neither")
        funcs = _parse_activations(self, node, a, op, 1)
        cls, kw, ws = _layer_spec(self, node, op, a, 0, W, R, B, P, H, funcs[0],
                                  direction == "reverse")

        def used(k):
            return len(node.output) > k and bool(node.output[k]) and \
                self.uses.get(node.output[k], 0) > 0
        rs = used(0)
        rstate = (rs and (used(1) or used(2))) or (not rs and used(2))
        kw = dict(kw, return_sequences=rs, return_state=rstate)
        key = tuple(node.input[1:4]) + (node.input[7] if n_in > 7 else "",)
        layer = self.layer(cls, kw, ws, (None, None, feat), key)
        out = layer(src, initial_state=states) if states else layer(src)
        outs = list(out) if rstate else [out]
        back = direction == "reverse"
        if rs:
            y = _V(outs[0], (1, "d", 0, 2), rev=back)
            y_h = _V(outs[1], ("d", 0, 1)) if rstate else None
            y_c = _V(outs[2], ("d", 0, 1)) if rstate and op == "LSTM" else None
        else:
            y, y_h = None, _V(outs[0], ("d", 0, 1))
            y_c = _V(outs[2], ("d", 0, 1)) if rstate else None
        return [y, y_h, y_c][:len(node.output)]


class _Named:
    """Stands for a graph output in error messages (which name a node)."""

    def __init__(self, name):
        self.name, self.op_type = name, "output"
