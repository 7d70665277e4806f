"""ONNX -> fastlstm (``from_onnx``): reads a graph's first output back into fastlstm layers;
the layouts both directions share are in _onnx_shared.

``_Reader`` runs the nodes the output depends on, in order, over three kinds of value:
``_Const`` (initializers and what folds from them, bounded by ``limits.MAX_ARRAY_BYTES``),
``_Sym`` (values computed from the input's shape: zero initial states, shape vectors) and
``_Seq`` (the data, as the chain of fastlstm layer specs that computes it). Recurrent nodes,
MatMul/Gemm, activations, Gather on integer input and the layout operators around them
extend the chain; anything else is refused with ``ConversionError`` naming the node.
"""
from __future__ import annotations

import os

import numpy as np

from .. import limits
from ._common import (ONNX_TO_FL_LSTM, PEEPHOLE_SWAP, ConversionError, assemble, blocks,
                      new_layer, real_array, require, resolve_dtype, set_built_weights)
from ._onnx_shared import DEFAULT_ACTS, GATES

__all__ = ["from_onnx"]

_PARAMETRISED = {"HardSigmoid": 2, "Affine": 2, "ScaledTanh": 2, "LeakyRelu": 1,
                 "ThresholdedRelu": 1, "Elu": 1}
_DIRECTIONS = ("forward", "reverse", "bidirectional")


class _Const:
    def __init__(self, arr):
        self.arr = np.asarray(arr)


class _Sym:
    """A value computed from the input's shape (Shape -> Gather -> Concat ...); ``zero``
    when it is known to be all zeros (ConstantOfShape(0) and what keeps it so); ``dims``
    when it is a known shape vector: entries are ints or axis labels ('A0', 'T', ...)."""

    def __init__(self, zero=False, dims=None):
        self.zero = zero
        self.dims = dims


class _Seq:
    """Data derived from the graph input: the chain of fastlstm layer specs that computes it
    (batch-major), its axis labels in this tensor, and the feature size.

    Labels: 'A0', 'A1' the input's first two axes until a recurrent node tells which is time
    (then 'T', 'B'); 'F' the feature axis; 'D' a recurrent node's direction axis.
    ``rev``: fastlstm's time order is the reverse of this tensor's time axis."""

    def __init__(self, chain, axes, feat, ndir=1, rev=False, is_int=False):
        self.chain = tuple(chain)
        self.axes = tuple(axes)
        self.feat = feat
        self.ndir = ndir
        self.rev = rev
        self.is_int = is_int

    def but(self, **kw):
        d = dict(chain=self.chain, axes=self.axes, feat=self.feat, ndir=self.ndir,
                 rev=self.rev, is_int=self.is_int)
        d.update(kw)
        return _Seq(**d)


class _Stack:
    """Final states of recurrent nodes concatenated along their direction axis (PyTorch's
    ``h_n``, ``num_layers * num_directions`` entries): per entry, the ``_Seq`` of the node's
    final state and the direction it holds. Gather on that axis picks one entry."""

    def __init__(self, parts, axes):
        self.parts = list(parts)
        self.axes = tuple(axes)


_SUPPORTED_OPS = ("LSTM", "GRU", "RNN", "Transpose", "Squeeze", "Unsqueeze", "Reshape",
                  "Slice", "Concat", "Shape", "Gather", "ConstantOfShape", "Constant",
                  "Identity", "Dropout", "Cast", "Expand", "MatMul", "Gemm", "Add", "Relu",
                  "Tanh", "Sigmoid", "Softsign", "HardSigmoid", "Softmax", "ReduceSum",
                  "ReduceMean", "ReduceProd", "Mul")
_DENSE_ACTS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softsign": "softsign"}


class _Reader:
    def __init__(self, onnx, model, dtype):
        self.onnx = onnx
        self.model = model
        self.dtype = dtype
        self.vals = {}
        self.resolved = {}          # 'A0'/'A1' -> 'T'/'B'
        self.first_float = None
        # the default domain's opset (the operators' definitions depend on it)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          onnx.defs.onnx_opset_version())

    def attrs(self, node):
        out = {}
        for a in node.attribute:
            v = self.onnx.helper.get_attribute_value(a)
            # a corrupt name stays refusable (by the checks that read it), not a decode error
            if isinstance(v, bytes):
                v = v.decode(errors="replace")
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                v = [s.decode(errors="replace") for s in v]
            out[a.name] = v
        return out

    def array(self, tensor, where):
        """A TensorProto's values; a corrupt one (unknown type, wrong size), one larger than
        ``limits.MAX_ARRAY_BYTES`` and one whose data live in another file are refused."""
        if tensor.data_location == self.onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise ConversionError(f"{where} keeps its data in an external file "
                                  f"({[(e.key, e.value) for e in tensor.external_data]}); "
                                  "from_onnx reads no other file: embed the weights in the "
                                  "model (onnx.save(model, path, save_as_external_data=False))")
        try:
            dtype = self.onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            limits.check_array_size(tensor.dims, dtype, where, error=ConversionError)
            return self.onnx.numpy_helper.to_array(tensor)
        except (ValueError, TypeError, KeyError) as exc:
            if isinstance(exc, ConversionError):
                raise
            raise ConversionError(f"{where} cannot be read ({exc!r})") from None

    def where(self, node):
        return f"from_onnx: node {node.name or node.op_type!r} ({node.op_type})"

    def err(self, node, msg):
        return ConversionError(f"{self.where(node)}: {msg}")

    def get(self, name, node):
        if name == "":
            return None
        if name not in self.vals:
            # ONNX lists nodes in topological order: an input is defined before it is used
            raise self.err(node, f"input {name!r} is not defined before this node (by an "
                           "initializer, the graph input or an earlier node)")
        return self.vals[name]

    def const(self, node, name, what):
        v = self.get(name, node)
        if not isinstance(v, _Const):
            raise self.err(node, f"{what} must be a constant (initializer)")
        return v.arr

    def label(self, a):
        return self.resolved.get(a, a)

    # -- run ------------------------------------------------------------------------------
    def run(self):
        g = self.model.graph
        for init in g.initializer:
            self.vals[init.name] = _Const(self.array(init, f"from_onnx: initializer "
                                                           f"{init.name!r}"))
        inputs = [i for i in g.input if i.name not in self.vals]
        if len(inputs) != 1:
            raise ConversionError(f"from_onnx: expected one data input, got "
                                  f"{[i.name for i in inputs]}")
        inp = inputs[0]
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        TP = self.onnx.TensorProto
        if tt.elem_type in (TP.INT64, TP.INT32):
            if len(dims) != 2:
                raise ConversionError(f"from_onnx: integer input {inp.name!r} must be "
                                      f"(batch, time), got rank {len(dims)}")
            self.vals[inp.name] = _Seq((), ("A0", "A1"), None, is_int=True)
        elif tt.elem_type in (TP.FLOAT, TP.DOUBLE, TP.FLOAT16):
            self.first_float = np.float64 if tt.elem_type == TP.DOUBLE else np.float32
            if len(dims) == 3:
                self.vals[inp.name] = _Seq((), ("A0", "A1", "F"), dims[2])
            elif len(dims) == 2:
                self.vals[inp.name] = _Seq((), ("B", "F"), dims[1])
            else:
                raise ConversionError(f"from_onnx: input {inp.name!r} has rank {len(dims)}; "
                                      "expected (batch, time, features)")
        else:
            raise ConversionError(f"from_onnx: input {inp.name!r} has element type "
                                  f"{tt.elem_type}; expected float or int64")
        if not g.output:
            raise ConversionError("from_onnx: the graph has no output")
        target = g.output[0].name
        needed = self._needed(g, target)
        for k, node in enumerate(g.node):
            if k in needed:
                self.step(node)
        out = self.vals.get(target)
        if not isinstance(out, _Seq) or not out.chain:
            raise ConversionError(f"from_onnx: the first output {target!r} is not computed "
                                  "from the input by supported operators")
        return self.finish(out, target)

    def _needed(self, g, target):
        """Indices of the nodes the target depends on (others may use any operator)."""
        nodes = list(g.node)
        producer = {o: k for k, node in enumerate(nodes) for o in node.output}
        needed, stack, seen = set(), [target], set()
        while stack:
            name = stack.pop()
            if name in seen or name not in producer:
                continue
            seen.add(name)
            k = producer[name]
            needed.add(k)
            stack.extend(i for i in nodes[k].input if i)
        return needed

    # -- one node -------------------------------------------------------------------------
    def node_inputs(self, node, supported, where=""):
        """(op, the node's input values, its attributes) of a node of an operator in
        `supported`, its signature checked; else a ConversionError naming it."""
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise self.err(node, f"operator domain {node.domain!r} is not supported")
        if op not in supported:
            raise self.err(node, f"operator {op} is not supported by from_onnx{where} "
                           f"(supported: {', '.join(supported)})")
        self.check_signature(node)
        return op, [self.get(n, node) for n in node.input], self.attrs(node)

    def step(self, node):
        op, ins, a = self.node_inputs(node, _SUPPORTED_OPS)
        if op == "Constant":
            self.vals[node.output[0]] = _Const(self._constant(node, a))
            return
        if op in ("LSTM", "GRU", "RNN"):
            for name, v in zip(node.output, self.recurrent(node, ins, a)):
                if name:
                    self.vals[name] = v
            return
        seqs = [v for v in ins if isinstance(v, (_Seq, _Stack))]
        try:
            if not seqs:
                if all(isinstance(v, _Const) or v is None for v in ins) and not any(
                        isinstance(v, _Sym) for v in ins):
                    self.vals[node.output[0]] = _Const(self.fold(node, op, ins, a))
                else:
                    self.vals[node.output[0]] = self.sym(node, op, ins, a)
                return
            self.vals[node.output[0]] = self.data(node, op, ins, a, seqs)
        except ConversionError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                MemoryError) as exc:
            # malformed attributes or inputs (an index out of range, an unknown type, a
            # missing attribute): the node is refused, whatever NumPy made of it
            raise self.err(node, f"cannot be applied to its inputs and attributes "
                           f"({type(exc).__name__}: {exc})") from None

    def check_signature(self, node):
        """Refuse what the operator's definition (at the model's opset) does not have: extra
        inputs or outputs, unknown or mistyped attributes (ONNX Runtime refuses them too)."""
        try:
            schema = self.onnx.defs.get_schema(node.op_type, self.opset, "")
        except self.onnx.defs.SchemaError:
            raise self.err(node, f"{node.op_type} is not defined at opset {self.opset}") from None
        names = [i.name for i in schema.inputs]
        if not schema.min_input <= len(node.input) <= schema.max_input:
            raise self.err(node, f"has {len(node.input)} inputs; {node.op_type} takes "
                           f"{schema.min_input} to {schema.max_input} ({', '.join(names)})")
        if not schema.min_output <= len(node.output) <= schema.max_output:
            raise self.err(node, f"has {len(node.output)} outputs; {node.op_type} has "
                           f"{schema.min_output} to {schema.max_output}")
        unknown = [at.name for at in node.attribute if at.name not in schema.attributes]
        if unknown:
            raise self.err(node, f"{node.op_type} (opset {schema.since_version}) has no "
                           f"attribute {', '.join(map(repr, unknown))} (it has: "
                           f"{', '.join(sorted(schema.attributes))})")
        for at in node.attribute:
            want = schema.attributes[at.name].type
            if at.type != int(want):
                got = self.onnx.AttributeProto.AttributeType.Name(at.type)
                raise self.err(node, f"attribute {at.name} is {got}; expected {want.name}")

    def _constant(self, node, a):
        if "value" in a:
            return self.array(a["value"], self.where(node))
        for k in ("value_float", "value_int"):
            if k in a:
                return np.asarray(a[k])
        for k in ("value_floats", "value_ints"):
            if k in a:
                return np.asarray(a[k])
        raise self.err(node, f"unsupported Constant attributes {sorted(a)}")

    def _axes(self, node, ins, a, idx=1):
        if len(ins) > idx and ins[idx] is not None:
            return [int(v) for v in np.asarray(self.const(node, node.input[idx], "axes")).ravel()]
        return list(a.get("axes", []))

    def _bounded(self, node, shape, dtype):
        """Refuse a folded result of ``shape`` above limits.MAX_ARRAY_BYTES before making it."""
        limits.check_array_size(shape, dtype, f"{self.where(node)}: its result",
                                error=ConversionError)
        return tuple(int(d) for d in shape)

    def fold(self, node, op, ins, a):
        """Constant folding of the layout/shape ops on constants; results are bounded by
        limits.MAX_ARRAY_BYTES before they are allocated."""
        x = ins[0].arr if ins and ins[0] is not None else None
        if op == "Identity" or op == "Dropout":
            return x
        if op == "Transpose":
            return np.transpose(x, a.get("perm"))
        if op == "Squeeze":
            axes = self._axes(node, ins, a)
            return np.squeeze(x, tuple(axes)) if axes else np.squeeze(x)
        if op == "Unsqueeze":
            out = x
            for ax in sorted(ax % (x.ndim + len(self._axes(node, ins, a)))
                             for ax in self._axes(node, ins, a)):
                out = np.expand_dims(out, ax)
            return out
        if op == "Reshape":
            shape = [int(s) for s in ins[1].arr]
            shape = [x.shape[i] if s == 0 and not a.get("allowzero") else s
                     for i, s in enumerate(shape)]
            return x.reshape(shape)
        if op == "Concat":
            if "axis" not in a:
                raise self.err(node, "Concat needs the attribute axis")
            return np.concatenate([v.arr for v in ins], axis=a["axis"])
        if op == "Gather":
            idx, axis = np.asarray(ins[1].arr), a.get("axis", 0)
            ax = axis % x.ndim if -x.ndim <= axis < x.ndim else None
            if ax is None:
                raise self.err(node, f"axis {axis} is out of range for rank {x.ndim}")
            if idx.size and not (-x.shape[ax] <= idx.min() and idx.max() < x.shape[ax]):
                raise self.err(node, f"indices {idx.ravel()[:8].tolist()} are out of range "
                               f"for an axis of size {x.shape[ax]}")
            self._bounded(node, x.shape[:ax] + idx.shape + x.shape[ax + 1:], x.dtype)
            return np.take(x, idx, axis=ax)
        if op == "Slice":
            starts, ends = ins[1].arr, ins[2].arr
            axes = ins[3].arr if len(ins) > 3 and ins[3] is not None else range(len(starts))
            steps = ins[4].arr if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
            sl = [slice(None)] * x.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                dim = x.shape[ax]
                e = None if (st < 0 and e < -dim) else min(int(e), dim) if e >= 0 else int(e)
                sl[ax] = slice(int(s), e, int(st))
            return x[tuple(sl)]
        if op == "Cast":
            try:
                to = self.onnx.helper.tensor_dtype_to_np_dtype(a["to"])
            except KeyError:
                raise self.err(node, f"to={a.get('to')!r} is not an ONNX element type") from None
            return x.astype(to)
        if op == "ConstantOfShape":
            fill = self.array(a["value"], self.where(node)) if "value" in a else np.zeros(1)
            shape = self._bounded(node, [int(s) for s in np.atleast_1d(x)], fill.dtype)
            return np.full(shape, fill.ravel()[0], fill.dtype)
        if op == "Expand":
            shape = np.broadcast_shapes(x.shape, tuple(int(s) for s in ins[1].arr))
            return np.broadcast_to(x, self._bounded(node, shape, x.dtype)).copy()
        if op in ("Add", "Mul"):
            shape = np.broadcast_shapes(ins[0].arr.shape, ins[1].arr.shape)
            self._bounded(node, shape, np.result_type(ins[0].arr, ins[1].arr))
            return ins[0].arr + ins[1].arr if op == "Add" else ins[0].arr * ins[1].arr
        raise self.err(node, f"{op} on constants is not supported")

    def sym(self, node, op, ins, a):
        """Values computed from the input's shape: zero-filled tensors (initial states) and
        shape vectors (targets of Reshape); anything else stays opaque."""
        if op == "ConstantOfShape":
            fill = self.array(a["value"], self.where(node)) if "value" in a else np.zeros(1)
            return _Sym(zero=not np.any(fill))
        if op == "Expand":
            return _Sym(zero=isinstance(ins[0], _Const) and not np.any(ins[0].arr))
        x = ins[0]
        zero = isinstance(x, _Sym) and x.zero
        dims = x.dims if isinstance(x, _Sym) else None
        if op == "Slice" and dims is not None:
            starts, ends = self._ints(ins, 1), self._ints(ins, 2)
            axes, steps = self._ints(ins, 3), self._ints(ins, 4)
            ok = (starts is not None and ends is not None and len(starts) == 1
                  and (axes is None or axes == [0]) and (steps is None or steps == [1]))
            dims = dims[slice(starts[0], min(ends[0], len(dims)))] if ok else None
            return _Sym(zero, dims)
        if op == "Gather" and dims is not None:
            idx = self._ints(ins, 1)
            return _Sym(zero, [dims[i] for i in idx] if idx is not None else None)
        if op in ("Slice", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Transpose", "Cast",
                  "Identity"):
            return _Sym(zero, dims)
        if op == "Concat":
            parts = []
            for v in ins:
                if isinstance(v, _Const) and v.arr.ndim <= 1:
                    parts += [int(e) for e in np.atleast_1d(v.arr)]
                elif isinstance(v, _Sym) and v.dims is not None:
                    parts += list(v.dims)
                else:
                    parts = None
                    break
            return _Sym(zero=all((isinstance(v, _Sym) and v.zero)
                                 or (isinstance(v, _Const) and not np.any(v.arr)) for v in ins),
                        dims=parts)
        if op == "Mul":
            vals = [v.dims if isinstance(v, _Sym) else
                    [int(e) for e in np.atleast_1d(v.arr)] if isinstance(v, _Const) else None
                    for v in ins]
            if all(d is not None and len(d) == 1 and isinstance(d[0], (int, np.integer))
                   for d in vals):
                return _Sym(dims=[int(vals[0][0]) * int(vals[1][0])])
        return _Sym()

    def _ints(self, ins, k):
        if len(ins) <= k or ins[k] is None:
            return None
        if isinstance(ins[k], _Const):
            return [int(e) for e in np.atleast_1d(ins[k].arr)]
        return None

    # -- data ops ---------------------------------------------------------------------------
    def data(self, node, op, ins, a, seqs):
        x = ins[0]
        if op == "Shape":
            dims = [x.feat if l == "F" else x.ndir if l == "D" else l for l in x.axes]
            dims = dims[slice(a.get("start", 0), a.get("end"))]
            return _Sym(dims=None if any(d is None for d in dims) else dims)
        if op in ("Identity", "Dropout"):
            return x
        if op == "Cast":
            return x
        if op == "Concat":
            return self.concat(node, ins, a)
        if isinstance(x, _Stack):
            if op == "Gather":
                return self.pick_state(node, x, ins, a)
            raise self.err(node, f"{op} on stacked final states is not supported (only "
                           "Gather of one entry)")
        if op == "Gather" and isinstance(x, _Seq) and not x.is_int:
            return self.gather_data(node, x, ins, a)
        if not isinstance(x, _Seq):
            if op in ("Add", "MatMul") and isinstance(ins[1], _Seq):
                if op == "Add":
                    return self.add(node, ins[1], ins[0])
            if op == "Gather" and isinstance(ins[1], _Seq):
                return self.embedding(node, ins[0], ins[1], a)
            raise self.err(node, "unsupported use of the data tensor")
        if op == "Transpose":
            perm = a.get("perm", list(reversed(range(len(x.axes)))))
            if sorted(perm) != list(range(len(x.axes))):
                raise self.err(node, f"perm={perm} is not a permutation of the "
                               f"{len(x.axes)} axes")
            return x.but(axes=[x.axes[p] for p in perm])
        if op == "Squeeze":
            axes = [ax % len(x.axes) for ax in self._axes(node, ins, a)]
            for ax in axes:
                if x.axes[ax] != "D" or x.ndir != 1:
                    raise self.err(node, f"squeezes axis {ax} ({x.axes[ax]}); only a single "
                                   "direction axis can be squeezed")
            return x.but(axes=[l for i, l in enumerate(x.axes) if i not in axes])
        if op == "Reshape":
            target = ins[1]
            if isinstance(target, _Sym) and target.dims is not None:
                shape = list(target.dims)
            else:
                shape = [int(s) for s in self.const(node, node.input[1], "shape")]
            return self.reshape(node, x, shape, a)
        if op == "Slice":
            return self.slice(node, x, ins)
        if op in ("ReduceSum", "ReduceMean", "ReduceProd"):
            return self.merge_reduce(node, op, x, ins, a)
        if op == "MatMul":
            w = self.const(node, node.input[1], "the MatMul weight")
            return self.dense(node, x, w, None)
        if op == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise self.err(node, "only Gemm with transA=0, alpha=1, beta=1 is supported")
            w = self.const(node, node.input[1], "the Gemm weight")
            if a.get("transB", 0):
                w = w.T
            c = self.const(node, node.input[2], "the Gemm bias") if len(node.input) > 2 and \
                node.input[2] else None
            return self.dense(node, x, w, c)
        if op == "Add":
            return self.add(node, x, ins[1])
        if op in _DENSE_ACTS or op in ("HardSigmoid", "Softmax"):
            return self.activation(node, op, x, a)
        raise self.err(node, f"{op} on the data tensor is not supported")

    def _last_dense(self, node, x):
        if not x.chain or x.chain[-1][0] != "dense" or x.rev:
            return None
        return x.chain[-1]

    def dense(self, node, x, w, bias):
        if x.axes[-1] != "F" or "D" in x.axes:
            raise self.err(node, f"MatMul on axes {self._labels(x)}; expected the features last")
        if x.feat is not None and w.shape[0] != x.feat:
            raise self.err(node, f"weight rows {w.shape[0]} != features {x.feat}")
        spec = ("dense", {"kernel": w, "bias": bias, "activation": None})
        return x.but(chain=x.chain + (spec,), feat=w.shape[1])

    def add(self, node, x, other):
        if not isinstance(other, _Const):
            raise self.err(node, "Add of two data tensors is not supported")
        last = self._last_dense(node, x)
        if last is None or last[1]["bias"] is not None or last[1]["activation"] is not None:
            raise self.err(node, "Add is supported only as the bias of a MatMul (Dense)")
        b = np.asarray(other.arr)
        if b.size != x.feat or (b.ndim > 1 and any(s != 1 for s in b.shape[:-1])):
            raise self.err(node, f"bias of shape {b.shape} for {x.feat} features")
        spec = ("dense", dict(last[1], bias=b.reshape(-1)))
        return x.but(chain=x.chain[:-1] + (spec,))

    def activation(self, node, op, x, a):
        last = self._last_dense(node, x)
        if last is None or last[1]["activation"] is not None:
            raise self.err(node, f"{op} is supported only after a MatMul (as Dense's "
                           "activation)")
        if op == "Softmax":
            axis = a.get("axis", -1)
            if axis not in (-1, len(x.axes) - 1):
                raise self.err(node, f"Softmax over axis {axis}; only the last axis")
            act = "softmax"
        elif op == "HardSigmoid":
            act = _hard_sigmoid(a.get("alpha", 0.2), a.get("beta", 0.5))
        else:
            act = _DENSE_ACTS[op]
        spec = ("dense", dict(last[1], activation=act))
        return x.but(chain=x.chain[:-1] + (spec,))

    def embedding(self, node, table, idx, a):
        if not isinstance(table, _Const) or not idx.is_int or idx.chain or a.get("axis", 0):
            raise self.err(node, "Gather is supported as an Embedding lookup of the integer "
                           "input in a constant table")
        w = table.arr
        if w.ndim != 2:
            raise self.err(node, f"embedding table of shape {w.shape}")
        return _Seq((("embedding", {"embeddings": w}),), idx.axes + ("F",), w.shape[1])

    def _labels(self, x):
        return tuple(self.label(l) for l in x.axes)

    def reshape(self, node, x, shape, a):
        """Only merging a trailing (direction, feature) pair: bidirectional concatenation.
        ``shape`` entries: ints (0 copies a dim, -1 infers one) or axis labels."""
        axes = list(x.axes)
        n = len(axes)

        def keeps(entry, label):
            if isinstance(entry, str):
                return self.label(entry) == self.label(label)
            return entry == 0 and not a.get("allowzero")

        if len(shape) == n - 1 and n >= 2 and axes[-2:] == ["D", "F"]:
            merged = x.ndir * (x.feat or -2)
            head = shape[:-1]
            if shape[-1] == merged:
                # the feature size is explicit: one -1 may stand for a leading axis, and a
                # positive size for a symbolic one (an exporter that fixed that size)
                ok = sum(e == -1 for e in head) <= 1 and all(
                    keeps(e, l) or e == -1 or (isinstance(e, (int, np.integer)) and e > 0
                                               and self.label(l) in ("A0", "A1", "T", "B"))
                    for e, l in zip(head, axes))
            else:
                ok = shape[-1] == -1 and all(keeps(e, l) for e, l in zip(head, axes))
            if ok:
                return self._merge(node, x, "concat", axes[:-2] + ["F"])
        raise self.err(node, f"Reshape of axes {self._labels(x)} to {shape} is not supported "
                       "(only merging the direction and feature axes, as bidirectional "
                       "concatenation)")

    def merge_reduce(self, node, op, x, ins, a):
        axes = [ax % len(x.axes) for ax in self._axes(node, ins, a)]
        if len(axes) != 1 or x.axes[axes[0]] != "D" or a.get("keepdims", 1):
            raise self.err(node, f"{op} is supported over the direction axis with keepdims=0")
        mode = {"ReduceSum": "sum", "ReduceMean": "ave", "ReduceProd": "mul"}[op]
        return self._merge(node, x, mode, [l for i, l in enumerate(x.axes) if i != axes[0]])

    def _merge(self, node, x, mode, new_axes):
        kind, spec = x.chain[-1]
        if kind != "rnn" or spec.get("merge") is not None:
            raise self.err(node, "merging directions that are not a recurrent node's output")
        if x.ndir == 1:
            if mode != "concat":
                raise self.err(node, "reducing a single direction")
            return x.but(axes=new_axes)
        spec = dict(spec, merge=mode)
        feat = x.feat * 2 if mode == "concat" else x.feat
        return x.but(chain=x.chain[:-1] + (("rnn", spec),), axes=new_axes, feat=feat, ndir=1)

    def slice(self, node, x, ins):
        starts = self.const(node, node.input[1], "starts")
        ends = self.const(node, node.input[2], "ends")
        axes = self.const(node, node.input[3], "axes") if len(node.input) > 3 and \
            node.input[3] else np.arange(np.size(starts))
        steps = self.const(node, node.input[4], "steps") if len(node.input) > 4 and \
            node.input[4] else np.ones(np.size(starts), np.int64)
        one_axis = all(np.shape(v) == (1,) for v in (starts, ends, axes, steps))
        if one_axis and steps[0] == -1 and starts[0] == -1 and ends[0] <= -(2 ** 31):
            ax = int(axes[0]) % len(x.axes)
            if self.label(x.axes[ax]) in ("T", "A0", "A1") and x.chain and \
                    x.chain[-1][0] == "rnn":
                return x.but(rev=not x.rev)
        raise self.err(node, "Slice of the data tensor is supported only as a reversal of the "
                       "time axis of a recurrent output")

    # -- final states and last steps ---------------------------------------------------------
    def _scalar_index(self, node, ins):
        idx = np.asarray(self.const(node, node.input[1], "the Gather indices"))
        if idx.ndim != 0:
            raise self.err(node, f"Gather with indices of shape {idx.shape} on the data tensor; "
                           "only a single index (out[:, -1], h_n[-1]) is supported")
        return int(idx)

    def _final_states(self, node, x):
        """The entries of a final-state value (a node's Y_h) as a _Stack."""
        if not x.chain or x.chain[-1][0] != "rnn" or x.chain[-1][1].get("mode") != "last" \
                or x.chain[-1][1].get("merge") is not None or "D" not in x.axes:
            return None
        return _Stack([(x, d) for d in range(x.ndir)], x.axes)

    def gather_data(self, node, x, ins, a):
        axis = a.get("axis", 0) % len(x.axes)
        label = self.label(x.axes[axis])
        if label == "D":
            stack = self._final_states(node, x)
            if stack is None:
                raise self.err(node, "Gather on the direction axis of a recurrent node's "
                               "output sequence is not supported")
            return self.pick_state(node, stack, ins, a)
        index = self._scalar_index(node, ins)
        if label not in ("T", "A0", "A1") or index != -1:
            raise self.err(node, f"Gather of index {index} on axis {axis} ({label}) of the "
                           "data tensor; only the last time step (index -1) is supported")
        kind, spec = x.chain[-1] if x.chain else (None, None)
        if kind != "rnn" or spec.get("mode") != "seq" or x.rev or "D" in x.axes:
            raise self.err(node, "Gather of the last time step is supported only on the output "
                           "sequence of a recurrent node (single direction, input order)")
        if len(spec["dirs"]) != 1:
            raise self.err(node, "the last time step of a bidirectional output holds the "
                           "backward direction after one step, which no fastlstm layer returns; "
                           "use the final states (h_n) instead")
        if label in ("A0", "A1"):
            self.resolved[label] = "T"
        chain = x.chain[:-1] + (("rnn", dict(spec, mode="last")),)
        return x.but(chain=chain, axes=[l for i, l in enumerate(x.axes) if i != axis])

    def pick_state(self, node, stack, ins, a):
        axis = a.get("axis", 0) % len(stack.axes)
        if stack.axes[axis] != "D":
            raise self.err(node, f"Gather on axis {axis} of stacked final states; only on "
                           "their first (layers x directions) axis")
        index = self._scalar_index(node, ins)
        n = len(stack.parts)
        if not -n <= index < n:
            raise self.err(node, f"index {index} of {n} stacked final states")
        seq, d = stack.parts[index]
        kind, spec = seq.chain[-1]
        one = dict(spec, dirs=[spec["dirs"][d]], picked=(id(spec), d, len(spec["dirs"])))
        return seq.but(chain=seq.chain[:-1] + (("rnn", one),), ndir=1,
                       axes=[l for l in seq.axes if l != "D"])

    def concat(self, node, ins, a):
        if "axis" not in a:
            raise self.err(node, "Concat needs the attribute axis")
        first = ins[0]
        axis = a["axis"] % len(first.axes) if isinstance(first, (_Seq, _Stack)) else None
        if axis is not None and first.axes[axis] == "D":
            parts = []
            for v in ins:
                stack = v if isinstance(v, _Stack) else (
                    self._final_states(node, v) if isinstance(v, _Seq) else None)
                if stack is None or len(stack.axes) != len(first.axes):
                    raise self.err(node, "Concat on the direction axis is supported only of "
                                   "recurrent nodes' final states (h_n)")
                parts += stack.parts
            return _Stack(parts, first.axes)
        # [h_n[-2], h_n[-1]] of one bidirectional node: its two final states, concatenated
        if len(ins) == 2 and all(isinstance(v, _Seq) for v in ins) and axis is not None \
                and first.axes[axis] == "F" and first.chain[:-1] == ins[1].chain[:-1]:
            (k0, s0), (k1, s1) = first.chain[-1], ins[1].chain[-1]
            p0, p1 = s0.get("picked"), s1.get("picked")
            if k0 == k1 == "rnn" and p0 and p1 and p0[0] == p1[0] and (p0[1], p1[1]) == (0, 1) \
                    and p0[2] == 2:
                both = dict(s0, dirs=s0["dirs"] + s1["dirs"], merge="concat")
                both.pop("picked")
                return first.but(chain=first.chain[:-1] + (("rnn", both),), feat=2 * first.feat)
        raise self.err(node, "Concat on the data tensor is supported only of final states "
                       "(h_n) along their first axis, or of the forward and backward final "
                       "states of one bidirectional node")

    # -- recurrent nodes -----------------------------------------------------------------------
    def expect_shape(self, node, what, arr, shape, doc):
        """Refuse a tensor not of ``shape`` (None: any size); ``doc`` names the dimensions."""
        real_array(arr, f"{self.where(node)}: {what}")
        if arr.ndim != len(shape) or any(n is not None and n != m
                                         for n, m in zip(shape, arr.shape)):
            want = ", ".join("?" if n is None else str(n) for n in shape)
            raise self.err(node, f"{what} has shape {arr.shape}; expected ({want}) = {doc}")

    def recurrent(self, node, ins, a):
        op = node.op_type
        direction = a.get("direction", "forward")
        if direction not in _DIRECTIONS:
            raise self.err(node, f"direction={direction!r}; ONNX allows "
                           f"{', '.join(map(repr, _DIRECTIONS))}")
        layout = a.get("layout", 0)
        if layout not in (0, 1):
            raise self.err(node, f"layout={layout}; ONNX allows 0 (time-major) or 1 "
                           "(batch-major)")
        x = ins[0]
        if not isinstance(x, _Seq):
            raise self.err(node, "X must come from the graph input")
        if x.rev:
            raise self.err(node, "X is a reversed sequence; fastlstm has no layer that "
                           "reverses time")
        if len(x.axes) != 3 or x.axes[2] != "F" or "D" in x.axes:
            raise self.err(node, f"X has axes {self._labels(x)}; expected (time, batch, "
                           "features)")
        t_ax, b_ax = (0, 1) if layout == 0 else (1, 0)
        for ax, want in ((t_ax, "T"), (b_ax, "B")):
            lab = self.label(x.axes[ax])
            if lab in ("A0", "A1"):
                self.resolved[lab] = want
            elif lab != want:
                raise self.err(node, f"X has {lab} where the operator expects {want} "
                               f"(axes {self._labels(x)}, layout={layout})")
        if a.get("clip") is not None:
            raise self.err(node, f"clip={a['clip']} (cell clipping) has no fastlstm equivalent")
        W = self.const(node, node.input[1], "W")
        R = self.const(node, node.input[2], "R")
        n_in = len(node.input)
        B = self.const(node, node.input[3], "B") if n_in > 3 and node.input[3] else None
        if n_in > 4 and node.input[4]:
            raise self.err(node, "sequence_lens (masking) is not supported by from_onnx")
        P = self.const(node, node.input[7], "P") if n_in > 7 and node.input[7] else None
        D = 2 if direction == "bidirectional" else 1
        G = GATES[op]
        if "hidden_size" in a:
            H = int(a["hidden_size"])
            if H < 1:
                raise self.err(node, f"hidden_size={H}; expected a positive integer")
        else:       # R tells it
            self.expect_shape(node, "R", R, (D, None, None), "[num_directions, gates*hidden, "
                              "hidden]")
            H = R.shape[2]
        # Shapes as the ONNX operator defines them (gates: LSTM 4, GRU 3, RNN 1).
        self.expect_shape(node, "W", W, (D, G * H, x.feat),
                          "[num_directions, gates*hidden, input]")
        self.expect_shape(node, "R", R, (D, G * H, H), "[num_directions, gates*hidden, hidden]")
        if B is not None:
            self.expect_shape(node, "B", B, (D, 2 * G * H), "[num_directions, 2*gates*hidden]")
        if P is not None:
            self.expect_shape(node, "P", P, (D, 3 * H), "[num_directions, 3*hidden]")
        for k, what in ((5, "initial_h"), (6, "initial_c")):
            if n_in > k and node.input[k]:
                v = ins[k]
                if isinstance(v, _Const):
                    self.expect_shape(node, what, v.arr, (D, None, H) if layout == 0 else
                                      (None, D, H), "[num_directions, batch, hidden]" if
                                      layout == 0 else "[batch, num_directions, hidden]")
                zero = (isinstance(v, _Sym) and v.zero) or (
                    isinstance(v, _Const) and not np.any(v.arr))
                if not zero:
                    raise self.err(node, f"{what} must be absent or zeros (fastlstm layers "
                                   "start from zero states; pass initial_state= yourself)")
        funcs = _parse_activations(self, node, a, op, D)
        dirs = []
        for d in range(D):
            backwards = direction == "reverse" or d == 1
            dirs.append(_layer_spec(self, node, op, a, d, W, R, B, P, H, funcs[d], backwards))
        spec = {"op": op, "dirs": dirs, "merge": None, "units": H, "input_dim": W.shape[2]}
        rev = direction == "reverse"
        y = x.but(chain=x.chain + (("rnn", dict(spec, mode="seq")),),
                  axes=(x.axes[t_ax], "D", x.axes[b_ax], "F") if layout == 0
                  else (x.axes[b_ax], x.axes[t_ax], "D", "F"), feat=H, ndir=D, rev=rev)
        h_axes = ("D", x.axes[b_ax], "F") if layout == 0 else (x.axes[b_ax], "D", "F")
        y_h = x.but(chain=x.chain + (("rnn", dict(spec, mode="last")),), axes=h_axes, feat=H,
                    ndir=D, rev=False)
        y_c = _Sym()       # the cell state: fastlstm layers cannot output it alone
        return [y, y_h, y_c][:len(node.output)]

    # -- result ------------------------------------------------------------------------------
    def finish(self, out, target):
        labels = [self.label(l) for l in out.axes]
        if out.rev:
            raise ConversionError(f"from_onnx: output {target!r} is a reverse-direction "
                                  "sequence in input order; fastlstm's go_backwards returns "
                                  "it in processing order, and no layer reverses time")
        if "D" in labels:
            raise ConversionError(f"from_onnx: output {target!r} keeps a direction axis "
                                  f"(axes {labels}); fastlstm merges directions")
        labels = ["B" if l == "A0" else "T" if l == "A1" else l for l in labels]
        if labels not in (["B", "T", "F"], ["T", "B", "F"], ["B", "F"]):
            raise ConversionError(f"from_onnx: output {target!r} has axes {labels}")
        dt = resolve_dtype(self.dtype, self.first_float or _first_weight_dtype(out.chain))
        return _build_chain(out.chain, dt)


def _first_weight_dtype(chain):
    for kind, spec in chain:
        if kind == "dense":
            return spec["kernel"].dtype
    return None


def _hard_sigmoid(alpha, beta):
    from .. import activations
    alpha, beta = float(alpha), float(beta)
    if np.isclose(alpha, 1 / 6, rtol=0, atol=1e-7) and beta == 0.5:
        return "hard_sigmoid"
    return activations.HardSigmoid(alpha, beta)


def _parse_activations(reader, node, a, op, D):
    """Per direction, the fastlstm activations of the node's function list."""
    n = len(DEFAULT_ACTS[op])
    names = a.get("activations") or DEFAULT_ACTS[op] * D
    if len(names) != n * D:
        raise reader.err(node, f"{len(names)} activations for {D} direction(s) of {op}; "
                         f"expected {n * D}")
    alphas = list(a.get("activation_alpha", []))
    betas = list(a.get("activation_beta", []))
    out = []
    for name in names:
        need = _PARAMETRISED.get(name, 0)
        if need:
            al = alphas.pop(0) if alphas else None
            be = betas.pop(0) if (betas and need == 2) else None
            if name == "HardSigmoid":
                out.append(_hard_sigmoid(0.2 if al is None else al, 0.5 if be is None else be))
            elif name == "Affine" and al == 1.0 and be == 0.0:
                out.append("linear")
            elif name == "ScaledTanh" and al == 1.0 and be == 1.0:
                out.append("tanh")
            else:
                raise reader.err(node, f"activation {name}(alpha={al}, beta={be}) has no "
                                 "fastlstm equivalent")
        else:
            fl_name = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu",
                       "Softsign": "softsign"}.get(name)
            if fl_name is None:
                raise reader.err(node, f"activation {name} has no fastlstm equivalent")
            out.append(fl_name)
    return [out[d * n:(d + 1) * n] for d in range(D)]


def _symmetric(act):
    from .. import activations
    a = activations.get(act)
    return a.code == activations.SIGMOID or (a.code == activations.HARD_SIGMOID and a.beta == 0.5)


def _layer_spec(reader, node, op, a, d, W, R, B, P, H, funcs, backwards):
    """fastlstm constructor arguments and weights (float64) of one direction."""
    W, R = W[d].astype(np.float64), R[d].astype(np.float64)
    G = GATES[op]
    Wb = B[d, :G * H].astype(np.float64) if B is not None else np.zeros(G * H)
    Rb = B[d, G * H:].astype(np.float64) if B is not None else np.zeros(G * H)
    use_bias = B is not None
    kw = dict(units=H, use_bias=use_bias, go_backwards=backwards)
    if op == "LSTM":
        f, g, h = funcs
        if g != h:
            raise reader.err(node, f"cell activation {g} differs from output activation {h}; "
                             "fastlstm's LSTM uses one activation for both")
        kw.update(recurrent_activation=f, activation=g)
        kernel = blocks(W, ONNX_TO_FL_LSTM, 4).T
        rec = blocks(R, ONNX_TO_FL_LSTM, 4).T
        bias = blocks(Wb + Rb, ONNX_TO_FL_LSTM, 4)
        peep = None
        if P is not None and np.any(P[d]):
            peep = blocks(P[d].astype(np.float64), PEEPHOLE_SWAP, 3).reshape(3, H)
        if a.get("input_forget", 0):
            if not _symmetric(f):
                raise reader.err(node, f"input_forget=1 with recurrent activation {f}: "
                                 "fastlstm's CIFG (i = 1 - f) matches ONNX Runtime's (f = 1 - "
                                 "i) only for sigmoid or a hard sigmoid with beta=0.5")
            # ONNX Runtime: f = 1 - s(z_i) = s(-z_i): fastlstm's forget block is -i.
            kernel = np.concatenate([-kernel[:, :H], kernel[:, 2 * H:]], axis=1)
            rec = np.concatenate([-rec[:, :H], rec[:, 2 * H:]], axis=1)
            bias = np.concatenate([-bias[:H], bias[2 * H:]])
            kw["coupled_input_forget"] = True
            if peep is not None:
                peep = np.stack([np.zeros(H), -peep[0], peep[2]])
        ws = [kernel, rec] + ([bias] if use_bias else [])
        if peep is not None:
            kw["use_peepholes"] = True
            ws.append(peep)
        return ("LSTM", kw, ws)
    if op == "GRU":
        kw.update(recurrent_activation=funcs[0], activation=funcs[1])
        lbr = bool(a.get("linear_before_reset", 0))
        kw["reset_after"] = lbr
        ws = [W.T, R.T]
        if use_bias:
            ws.append(np.stack([Wb, Rb]) if lbr else Wb + Rb)
        return ("GRU", kw, ws)
    kw.update(activation=funcs[0])
    return ("SimpleRNN", kw, [W.T, R.T] + ([Wb + Rb] if use_bias else []))


def _build_chain(chain, dt):
    out = []
    purpose = "from_onnx"
    for kind, spec in chain:
        if kind == "embedding":
            layer = new_layer("Embedding", purpose, input_dim=spec["embeddings"].shape[0],
                              output_dim=spec["embeddings"].shape[1], dtype=dt.name)
            layer.build(None)
            layer.set_weights([spec["embeddings"].astype(dt)])
        elif kind == "dense":
            w = spec["kernel"]
            layer = new_layer("Dense", purpose, units=w.shape[1],
                              use_bias=spec["bias"] is not None,
                              activation=spec["activation"], dtype=dt.name)
            ws = [w] + ([spec["bias"]] if spec["bias"] is not None else [])
            set_built_weights(layer, (None, w.shape[0]), [np.asarray(v, dt) for v in ws])
        else:
            rs = spec["mode"] == "seq"
            dirs = []
            for cls, kw, ws in spec["dirs"]:
                layer = new_layer(cls, purpose, return_sequences=rs, dtype=dt.name, **kw)
                set_built_weights(layer, (None, None, spec["input_dim"]),
                                  [np.asarray(w, dt) for w in ws])
                dirs.append((layer, ws))
            if len(dirs) == 1:
                layer = dirs[0][0]
            else:
                if spec["merge"] is None:
                    raise ConversionError("from_onnx: a bidirectional node's output keeps its "
                                          "two directions apart; fastlstm merges them")
                layer = new_layer("Bidirectional", purpose, layer=dirs[0][0],
                                  backward_layer=dirs[1][0], merge_mode=spec["merge"])
                set_built_weights(layer, (None, None, spec["input_dim"]),
                                  [np.asarray(w, dt) for w in dirs[0][1] + dirs[1][1]])
        out.append(layer)
    return assemble(out)


# -- onnxruntime's quantized LSTM ----------------------------------------------------------
# com.microsoft DynamicQuantizeLSTM (what onnxruntime.quantization.quantize_dynamic writes for
# LSTM): ONNX LSTM's inputs and attributes (no layout) plus int8/uint8 W and R stored
# transposed, [num_directions, input|hidden, 4*hidden], with per-tensor ([num_directions])
# or per-output-channel ([num_directions, 4*hidden]) scales and zero points.
_QLSTM_INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P",
                 "W_scale", "W_zero_point", "R_scale", "R_zero_point")
_QLSTM_ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction",
                "hidden_size", "input_forget")


def _is_quantized_lstm(node):
    return node.op_type == "DynamicQuantizeLSTM" and node.domain == "com.microsoft"


def _dequantize(where, q, scale, zero, what, D, rows, H):
    """``(q - zero) * scale`` in float32 (as onnxruntime), in ONNX LSTM's layout
    [num_directions, 4*hidden, rows]."""
    if q.dtype not in (np.int8, np.uint8):
        raise ConversionError(f"{where}: {what} has dtype {q.dtype}; expected int8 or uint8")
    if q.ndim != 3 or q.shape[0] != D or q.shape[2] != 4 * H or (
            rows is not None and q.shape[1] != rows):
        want = f"({D}, {'?' if rows is None else rows}, {4 * H})"
        raise ConversionError(f"{where}: {what} has shape {q.shape}; expected {want} = "
                              "[num_directions, rows, 4*hidden] (onnxruntime's layout)")
    if zero.dtype != q.dtype:
        raise ConversionError(f"{where}: {what}_zero_point has dtype {zero.dtype}; expected "
                              f"{q.dtype} (as {what})")
    real_array(scale, f"{where}: {what}_scale")
    for arr, name in ((scale, "scale"), (zero, "zero_point")):
        if arr.shape not in ((D,), (D, 4 * H)):
            raise ConversionError(f"{where}: {what}_{name} has shape {arr.shape}; expected "
                                  f"({D},) per tensor or ({D}, {4 * H}) per output channel")
    if zero.shape != scale.shape:
        raise ConversionError(f"{where}: {what}_zero_point has shape {zero.shape}, "
                              f"{what}_scale {scale.shape}; expected the same")
    # the float32 copy is four times the int8 initializer: bounded as any other tensor
    limits.check_array_size(q.shape, np.float32, f"{where}: the dequantized {what}",
                            error=ConversionError)
    scale = scale.astype(np.float32)
    if not np.all(np.isfinite(scale)):
        raise ConversionError(f"{where}: {what}_scale has non-finite values")
    # per tensor: one scale per direction; per channel: one per output column
    ix = (slice(None), None, None) if scale.ndim == 1 else (slice(None), None, slice(None))
    deq = (q.astype(np.float32) - zero.astype(np.float32)[ix]) * scale[ix]
    return np.ascontiguousarray(deq.transpose(0, 2, 1))


def _float_lstm(onnx, reader, node, inits, taken):
    """The float ONNX ``LSTM`` node of a DynamicQuantizeLSTM node, and the initializers of
    its dequantized W and R."""
    where = f"from_onnx: node {node.name or node.op_type!r} (DynamicQuantizeLSTM)"
    if len(node.input) != len(_QLSTM_INPUTS):
        raise ConversionError(f"{where}: has {len(node.input)} inputs; DynamicQuantizeLSTM "
                              f"takes {len(_QLSTM_INPUTS)} ({', '.join(_QLSTM_INPUTS)})")
    if len(node.output) > 3:
        raise ConversionError(f"{where}: has {len(node.output)} outputs; DynamicQuantizeLSTM "
                              "has 0 to 3 (Y, Y_h, Y_c)")
    lstm = onnx.defs.get_schema("LSTM", 14, "")     # the attributes' types are LSTM's
    for at in node.attribute:
        if at.name not in _QLSTM_ATTRS:
            raise ConversionError(f"{where}: DynamicQuantizeLSTM has no attribute {at.name!r} "
                                  f"(it has: {', '.join(_QLSTM_ATTRS)})")
        want = lstm.attributes[at.name].type
        if at.type != int(want):
            got = onnx.AttributeProto.AttributeType.Name(at.type)
            raise ConversionError(f"{where}: attribute {at.name} is {got}; expected "
                                  f"{want.name}")
    a = reader.attrs(node)
    direction = a.get("direction", "forward")
    if direction not in _DIRECTIONS:
        raise ConversionError(f"{where}: direction={direction!r}; allowed: "
                              f"{', '.join(map(repr, _DIRECTIONS))}")
    D = 2 if direction == "bidirectional" else 1

    def init(k):
        name = node.input[k]
        if not name:
            raise ConversionError(f"{where}: input {_QLSTM_INPUTS[k]} is missing")
        if name not in inits:
            raise ConversionError(f"{where}: {_QLSTM_INPUTS[k]} ({name!r}) must be an "
                                  "initializer")
        return reader.array(inits[name], f"{where}: {_QLSTM_INPUTS[k]}")

    W, R = init(1), init(2)
    if "hidden_size" in a:
        H = int(a["hidden_size"])
        if H < 1:
            raise ConversionError(f"{where}: hidden_size={H}; expected a positive integer")
    elif R.ndim == 3:
        H = R.shape[1]
    else:
        raise ConversionError(f"{where}: R has shape {R.shape}; expected (num_directions, "
                              "hidden, 4*hidden)")
    Wf = _dequantize(where, W, init(8), init(9), "W", D, None, H)
    Rf = _dequantize(where, R, init(10), init(11), "R", D, H, H)
    names = []
    for k, arr in ((1, Wf), (2, Rf)):
        name = f"{node.input[k]}_dequantized"
        while name in taken:
            name += "_"
        taken.add(name)
        names.append(name)
        inits[name] = onnx.numpy_helper.from_array(arr, name)
    ins = [node.input[0], *names, *node.input[3:8]]
    while ins and not ins[-1]:
        ins.pop()
    # named after the source node, so that later refusals name it
    out = onnx.helper.make_node("LSTM", ins, list(node.output),
                                name=f"{node.name or 'DynamicQuantizeLSTM'} (DynamicQuantizeLSTM"
                                     ", dequantized)")
    out.attribute.extend(node.attribute)
    return out, [inits[n] for n in names]


def _dequantized(onnx, model):
    """``model`` with each DynamicQuantizeLSTM node replaced by the float LSTM node of its
    dequantized weights (a copy; ``model`` itself when there is none)."""
    if not any(_is_quantized_lstm(n) for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    reader = _Reader(onnx, out, None)       # its initializer checks and attribute decoding
    inits = {i.name: i for i in g.initializer}
    taken = set(inits) | {i.name for i in g.input} | {o for n in g.node for o in n.output}
    added = []
    for k in range(len(g.node)):
        if _is_quantized_lstm(g.node[k]):
            node, new = _float_lstm(onnx, reader, g.node[k], inits, taken)
            g.node[k].CopyFrom(node)
            added += new
    g.initializer.extend(added)
    return out


def _quantized_copy(model, quantize):
    if quantize is None:
        return model
    from ..quantization import quantize as quantize_model
    return quantize_model(model, quantize)


def from_onnx(model, dtype=None, quantize=None):
    """A fastlstm layer or ``fl.Sequential`` computing an ONNX graph's first output, or a
    functional ``fl.Model`` for a graph with several inputs or outputs or that is not a chain
    (_onnx_import_graph; what ``to_onnx`` writes for functional models).

    ``model``: a path, serialized bytes, or an ``onnx.ModelProto``. Reads graphs of standard
    ``LSTM`` / ``GRU`` / ``RNN`` nodes (any direction, peepholes, ``input_forget``,
    ``linear_before_reset``, the activations fastlstm has, zero or absent initial states)
    with ``Transpose`` / ``Squeeze`` / ``Unsqueeze`` / ``Reshape`` (bidirectional concat) /
    ``ReduceSum|Mean|Prod`` (other merge modes) / ``Slice`` (time reversal) around them,
    ``MatMul`` (+ ``Add`` + activation or ``Softmax``) or ``Gemm`` as Dense, ``Gather`` on the
    integer input as Embedding, the shape arithmetic that builds zero initial states,
    ``Gather`` of the last time step of a one-direction output (``out[:, -1]``, as
    ``return_sequences=False``), and ``Concat`` / ``Gather`` of final states (PyTorch's
    ``h_n[k]``, and ``torch.cat([h_n[-2], h_n[-1]], 1)`` of a bidirectional layer).
    That covers what ``torch.onnx.export(..., dynamo=False)`` writes for ``nn.LSTM`` /
    ``nn.GRU`` / ``nn.RNN`` (single or multi-layer, bidirectional, batch_first or not), what
    the dynamo exporter writes for ``nn.LSTM`` / ``nn.GRU`` (it unrolls ``nn.RNN`` into
    MatMul/Tanh steps instead of an RNN node, which is refused), and what ``to_onnx`` writes
    without masks.

    The result takes batch-major input and returns batch-major output, also when the graph is
    time-major (``batch_first=False``). A single-input graph with several outputs that does
    not read as a functional model converts to its first output. Operators
    or attributes it cannot map raise ``ConversionError`` naming them (``sequence_lens``,
    ``clip``, non-zero initial states, other operators), and so do malformed graphs (an
    attribute or input the operator does not have, a tensor of the wrong shape, an undefined
    input, corrupt bytes). ``dtype``: float32 or float64, default the graph's.

    ONNX Runtime's quantized LSTM (``com.microsoft`` ``DynamicQuantizeLSTM``, what
    ``onnxruntime.quantization.quantize_dynamic`` writes) is read as the float LSTM of its
    dequantized weights, ``(q - zero_point) * scale`` per tensor or per output channel; it
    computes what ONNX Runtime's node does up to ONNX Runtime's dynamic quantization of the
    activations. ``quantize``: None (that float model), ``"int8"`` or ``"bfloat16"``
    (``fl.quantize`` of it: fastlstm's own scales, per output column, over the dequantized
    weights; not bit-identical to ONNX Runtime's int8).
    """
    if quantize is not None and not (isinstance(quantize, str)
                                     and quantize in ("int8", "bfloat16")):
        raise ValueError(f"from_onnx: quantize={quantize!r}; expected None, 'int8' or "
                         "'bfloat16'")
    onnx = require("onnx", "fastlstm.convert.from_onnx")
    from google.protobuf.message import DecodeError     # onnx's own dependency
    try:
        if isinstance(model, (str, os.PathLike)):
            # external data (weights kept in other files) is refused, never loaded
            model = onnx.load(os.fspath(model), load_external_data=False)
        elif isinstance(model, (bytes, bytearray)):
            model = onnx.load_from_string(bytes(model))
        elif not isinstance(model, onnx.ModelProto):
            raise TypeError(f"from_onnx: expected a path, bytes or onnx.ModelProto, got "
                            f"{type(model).__name__}")
    except DecodeError as exc:
        raise ConversionError(f"from_onnx: not a valid ONNX model (corrupt or truncated: "
                              f"{exc})") from None
    dt = None if dtype is None else resolve_dtype(dtype)
    model = _dequantized(onnx, model)
    return _quantized_copy(_read(onnx, model, dt), quantize)


def _read(onnx, model, dt):
    """The chain or functional reading of ``model`` (see ``from_onnx``)."""
    from ._onnx_import_graph import _GraphReader
    g = model.graph
    inits = {i.name for i in g.initializer}
    n_in = sum(1 for i in g.input if i.name not in inits)
    if n_in == 1 and len(g.output) == 1:
        try:
            return _Reader(onnx, model, dt).run()
        except ConversionError as exc:
            try:
                return _GraphReader(onnx, model, dt).run()
            except ConversionError as exc2:
                raise ConversionError(f"{exc} (read as a functional graph: {exc2})") from None
    try:
        return _GraphReader(onnx, model, dt).run()
    except ConversionError as exc:
        if n_in != 1:
            raise
        try:            # a graph with more outputs, e.g. PyTorch's (output, h_n, c_n)
            return _Reader(onnx, model, dt).run()
        except ConversionError as exc2:
            raise ConversionError(f"{exc} (read as a chain to its first output: "
                                  f"{exc2})") from None
