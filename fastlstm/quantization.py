"""Reduced-precision inference: ``fl.quantize(model_or_layer, "int8" | "bfloat16")``.

A quantized copy keeps its matrices compact and computes in float32 around them:

- ``"int8"``: every weight matrix symmetric per output column (``scale = max|W[:, c]| / 127``);
  each product quantizes its input rows on the fly (per row, ``max|a| / 127``), multiplies
  in exact int32 arithmetic (AVX512-VNNI where the CPU has it) and scales back to float32.
- ``"bfloat16"``: weights rounded to bfloat16; each product rounds its input rows to
  bfloat16 and accumulates in float32 (AVX512_BF16 where the CPU has it).

Inputs, outputs, states, biases, peepholes and all gate math stay float32. The NumPy oracle
(``fastlstm/backends/oracle/lowp.py``) performs the same roundings, so the compiled kernels
are tested against it to float32 accumulation-order error. See docs/quantization.md.
"""
from __future__ import annotations

import copy

import numpy as np

from .backends.oracle import lowp as _oracle

PRECISIONS = ("int8", "bfloat16")
#: the depth (rows of W) up to which int8 products accumulate exactly in int32 (src_c/lowp.h)
INT8_MAX_DEPTH = 131072
_KIND = {"int8": 1, "bfloat16": 2}          # FL_Q_INT8, FL_Q_BF16 of src_c/lowp.h

__all__ = ["quantize", "QuantizedMatrix", "QuantizedTable", "PRECISIONS"]


def check_precision(precision):
    if not isinstance(precision, str):
        raise TypeError(f"precision: expected one of {PRECISIONS}, got "
                        f"{type(precision).__name__} {precision!r}")
    p = {"bf16": "bfloat16", "qint8": "int8"}.get(precision.lower(), precision.lower())
    if p not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return p


def _compiled():
    try:
        from . import _lowp
    except ImportError:                     # pragma: no cover - a source tree without a build
        return None
    return _lowp


class QuantizedMatrix:
    """A weight W [K,N] kept in int8 (with per-column float32 scales) or bfloat16.

    Behaves as a read-only float32 matrix where the oracle and the layers need one:
    ``a @ qm`` is the product with the kernels' roundings (the NumPy oracle's),
    ``np.asarray(qm)`` the dequantized weight, ``qm[:, j0:j1]`` a block of columns.
    ``split`` (the GRU's blocks) packs columns ``[0, split)`` and ``[split, N)`` apart for
    the compiled kernels, which then run them as separate products.
    """

    __array_ufunc__ = None              # `ndarray @ qm` comes to __rmatmul__
    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, precision, values, scale=None, split=0):
        self.precision = check_precision(precision)
        values = np.ascontiguousarray(values)
        if values.ndim != 2:
            raise ValueError(f"values: expected a 2-D array, got shape {values.shape}")
        want = np.int8 if self.precision == "int8" else np.uint16
        if values.dtype != want:
            raise TypeError(f"values: {self.precision} weights are {np.dtype(want).name}, got "
                            f"{values.dtype}")
        if self.precision == "int8":
            if values.shape[0] > INT8_MAX_DEPTH:     # the int32 sums stay exact below it
                raise ValueError(f"values: int8 products take at most {INT8_MAX_DEPTH} rows "
                                 f"(inputs or units), got {values.shape[0]}")
            scale = np.ascontiguousarray(scale, dtype=np.float32)
            if scale.shape != (values.shape[1],):
                raise ValueError(f"scale: expected shape ({values.shape[1]},), got {scale.shape}")
            if not np.all(np.isfinite(scale)) or np.any(scale < 0):
                raise ValueError("scale: expected finite non-negative per-column scales")
        elif scale is not None:
            raise ValueError("scale: bfloat16 weights take no scale")
        if not 0 <= int(split) < max(values.shape[1], 1):
            raise ValueError(f"split: expected 0 or a column in (0, {values.shape[1]}), got {split}")
        self.values, self.scale, self.split = values, scale, int(split)
        self._blocks = None

    @classmethod
    def from_float(cls, W, precision, split=0):
        precision = check_precision(precision)
        W = np.asarray(W, dtype=np.float32)
        if not np.all(np.isfinite(W)):
            raise ValueError("weights: cannot quantize a matrix holding NaN or infinity")
        if precision == "int8":
            q, s = _oracle.quantize_weight_int8(W)
            return cls(precision, q, s, split)
        return cls(precision, _oracle.bf16_bits(W), None, split)

    # -- the array face ------------------------------------------------------------------
    @property
    def shape(self):
        return self.values.shape

    @property
    def size(self):
        return self.values.size

    @property
    def nbytes(self):
        return self.values.nbytes + (0 if self.scale is None else self.scale.nbytes)

    def dequantize(self):
        """The float32 matrix these values stand for."""
        if self.precision == "int8":
            return self.values.astype(np.float32) * self.scale
        return _oracle.bits_to_float(self.values)

    def __array__(self, dtype=None, copy=None):
        a = self.dequantize()
        return a if dtype is None else a.astype(dtype)

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)
                and isinstance(key[1], slice)):
            raise TypeError("a QuantizedMatrix takes only column blocks: qm[:, j0:j1]")
        return QuantizedMatrix(self.precision, self.values[:, key[1]],
                               None if self.scale is None else self.scale[key[1]])

    def __rmatmul__(self, a):
        a = np.asarray(a)
        if a.dtype != np.float32:
            raise TypeError(f"a {self.precision} product takes float32 input, got {a.dtype}")
        if self.precision == "int8":
            return _oracle.int8_matmul(a, self.values, self.scale)
        return _oracle.bf16_matmul(a, self.values)

    def __repr__(self):
        return f"<QuantizedMatrix {self.precision} {self.shape[0]}x{self.shape[1]}>"

    # -- the compiled kernels' form ----------------------------------------------------
    def blocks(self):
        """[(packed, scale, comp, j0, j1)] for the compiled kernels, packed at first use:
        one block, or two with a split (columns [0, split) and [split, N))."""
        if self._blocks is None:
            lowp = _compiled()
            if lowp is None:
                raise RuntimeError("the compiled kernels are not built")
            N = self.shape[1]
            edges = [0, self.split, N] if self.split else [0, N]
            blocks = []
            for j0, j1 in zip(edges[:-1], edges[1:]):
                vals = np.ascontiguousarray(self.values[:, j0:j1])
                packed, comp = lowp.pack(vals)
                scale = None if self.scale is None else np.ascontiguousarray(self.scale[j0:j1])
                blocks.append((packed, scale, comp, j0, j1))
            self._blocks = blocks
        return self._blocks

    def kind(self):
        return _KIND[self.precision]

    def matmul(self, a):
        """a [..., K] float32 times this matrix on the compiled kernels (the oracle's
        numbers to accumulation order), or the NumPy oracle where they are not built."""
        lowp = _compiled()
        if lowp is None:
            return self.__rmatmul__(a)
        a = np.asarray(a, dtype=np.float32)
        K, N = self.shape
        a2 = np.ascontiguousarray(a.reshape(-1, K))
        out = np.empty((a2.shape[0], N), np.float32)
        for packed, scale, comp, j0, j1 in self.blocks():
            out[:, j0:j1] = lowp.gemm(a2, packed, scale, comp, self.kind(), K, j1 - j0)
        return out.reshape(a.shape[:-1] + (N,))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_blocks"] = None
        return state


class QuantizedTable:
    """An embedding table E [V,D] in int8 (symmetric per row: each row is an output
    vector) or bfloat16; ``table[idx]`` gathers and widens rows to float32."""

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, precision, values, scale=None):
        self.precision = check_precision(precision)
        self.values = np.ascontiguousarray(values)
        want = np.int8 if self.precision == "int8" else np.uint16
        if self.values.ndim != 2 or self.values.dtype != want:
            raise TypeError(f"values: expected a 2-D {np.dtype(want).name} array, got "
                            f"{self.values.dtype} of shape {self.values.shape}")
        if self.precision == "int8":
            scale = np.ascontiguousarray(scale, dtype=np.float32)
            if scale.shape != (self.values.shape[0],):
                raise ValueError(f"scale: expected shape ({self.values.shape[0]},), got {scale.shape}")
        self.scale = scale

    @classmethod
    def from_float(cls, E, precision):
        precision = check_precision(precision)
        E = np.asarray(E, dtype=np.float32)
        if not np.all(np.isfinite(E)):
            raise ValueError("embeddings: cannot quantize a table holding NaN or infinity")
        if precision == "int8":
            q, s = _oracle.quantize_weight_int8(E.T)
            return cls(precision, np.ascontiguousarray(q.T), s)
        return cls(precision, _oracle.bf16_bits(E))

    shape = QuantizedMatrix.shape
    size = QuantizedMatrix.size
    nbytes = QuantizedMatrix.nbytes

    def __getitem__(self, idx):
        rows = self.values[idx]
        if self.precision == "int8":
            return rows.astype(np.float32) * self.scale[idx][..., None]
        return _oracle.bits_to_float(rows)

    def dequantize(self):
        return self[np.arange(self.shape[0])]

    def __array__(self, dtype=None, copy=None):
        a = self.dequantize()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self):
        return f"<QuantizedTable {self.precision} {self.shape[0]}x{self.shape[1]}>"


# ------------------------------------------------------------------------ layers
def _leaves(layer, prefix=""):
    """(prefix, layer) for the layers that hold the weights of `layer`: itself, the two
    directions of a Bidirectional, the cells' layers of an RNN."""
    from .layers.cells import RNN
    from .layers.wrappers import Bidirectional
    if isinstance(layer, Bidirectional):
        return (_leaves(layer.forward_layer, prefix + "forward/")
                + _leaves(layer.backward_layer, prefix + "backward/"))
    if isinstance(layer, RNN):
        cells = getattr(layer, "cells", None)
        inner = [getattr(c, "_layer", None) for c in cells or []]
        if not inner or any(lay is None for lay in inner):
            raise ValueError(f"fl.quantize: {layer.name} wraps a custom cell; only the built-in "
                             "LSTMCell, GRUCell and SimpleRNNCell can be quantized")
        out = []
        for k, lay in enumerate(inner):
            out += _leaves(lay, f"{prefix}cell_{k}/")
        return out
    return [(prefix, layer)]


def _matrix_weights(layer):
    """{weight name: column split} of the matrices a leaf layer quantizes, or None when its
    type cannot be quantized."""
    from .layers.core import Dense, Embedding
    from .layers.recurrent import GRU, LSTM, SimpleRNN
    if isinstance(layer, LSTM) or isinstance(layer, SimpleRNN):
        return {"kernel": 0, "recurrent_kernel": 0}
    if isinstance(layer, GRU):
        H = layer.units
        # The kernels' blocks (src_c/_gru.pyx): W's [z r | h] apart with reset_after, U's
        # without.
        return ({"kernel": 2 * H, "recurrent_kernel": 0} if layer.reset_after
                else {"kernel": 0, "recurrent_kernel": 2 * H})
    if isinstance(layer, Dense):
        return {"kernel": 0}
    if isinstance(layer, Embedding):
        return {"embeddings": 0}
    return None


def quantized_precision(layer):
    """The precision of a (possibly wrapped) quantized layer, or None for a float one."""
    try:
        leaves = _leaves(layer)
    except ValueError:
        return None
    found = {getattr(leaf, "quantization", None) for _, leaf in leaves}
    found.discard(None)
    return found.pop() if found else None


def _quantize_leaf(layer, precision, saved=None):
    """Turn a built float leaf layer into its quantized form, in place: from its own float
    weights, or from `saved` ({name: values} and {name + "_scale": scales}) read from a file."""
    spec = _matrix_weights(layer)
    if spec is None:
        raise ValueError(f"fl.quantize: cannot quantize {layer.name} ({type(layer).__name__}); "
                         "int8/bfloat16 cover LSTM, GRU, SimpleRNN, Bidirectional, RNN of "
                         "built-in cells, Dense and Embedding")
    if getattr(layer, "layer_norm", False):
        raise ValueError(f"fl.quantize: {layer.name} has layer_norm=True; layer-normalized "
                         "cells run in float32 and float64 only")
    if getattr(layer, "device", "cpu") != "cpu":
        raise ValueError(f"fl.quantize: {layer.name} is on {layer.device!r}; quantized layers "
                         "run on the CPU (move the model with .to('cpu') first)")
    if getattr(layer, "quantization", None) is not None:
        raise ValueError(f"fl.quantize: {layer.name} is already quantized "
                         f"({layer.quantization}); quantize the float model")
    for name in layer.weight_names:
        w = getattr(layer, name)
        if name in spec:
            if saved is not None:
                vals = saved[name]
                scale = saved.get(name + "_scale")
                qm = (QuantizedTable(precision, vals, scale) if name == "embeddings"
                      else QuantizedMatrix(precision, vals, scale, spec[name]))
                if qm.shape != tuple(w.shape):
                    raise ValueError(f"{name}: expected shape {tuple(w.shape)}, got {qm.shape}")
            elif name == "embeddings":
                qm = QuantizedTable.from_float(w, precision)
            else:
                qm = QuantizedMatrix.from_float(w, precision, spec[name])
            object.__setattr__(layer, name, qm)
        else:
            src = saved[name] if saved is not None else w
            object.__setattr__(layer, name, np.ascontiguousarray(src, dtype=np.float32))
    layer.dtype = np.dtype(np.float32)
    layer.quantization = precision
    if hasattr(layer, "_step_plan"):
        layer.__dict__["_step_plan"] = None
    if hasattr(layer, "states") and layer.states is not None:
        layer.states = [np.asarray(s, dtype=np.float32) for s in layer.states]


def quantize_layer(layer, precision, saved=None):
    """Quantize a built layer in place (every leaf of a wrapper); saved: arrays by weight
    name as a file holds them (see quantized_arrays)."""
    precision = check_precision(precision)
    if not layer.built:
        raise ValueError(f"fl.quantize: {layer.name} is not built yet; call the model on data "
                         "(or build(input_shape)) first, so that it has weights to quantize")
    leaves = _leaves(layer)
    bad = [leaf for _, leaf in leaves if leaf.weight_names and _matrix_weights(leaf) is None]
    if bad:
        _quantize_leaf(bad[0], precision)          # raises the message
    for prefix, leaf in leaves:
        if not leaf.weight_names:
            continue
        part = None
        if saved is not None:
            part = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
        _quantize_leaf(leaf, precision, part)
    if leaves[0][1] is not layer:           # a wrapper: it reports its leaves' precision
        layer.dtype = np.dtype(np.float32)
        layer.quantization = precision
    return layer


def quantized_arrays(layer):
    """[(name, array)] of a quantized layer as a file stores them: each quantized matrix as
    its values (int8 or uint16 bfloat16 bits) and, for int8, ``<name>_scale``; the rest
    float32."""
    out = []
    for prefix, leaf in _leaves(layer):
        for name in leaf.weight_names:
            w = getattr(leaf, name)
            if isinstance(w, (QuantizedMatrix, QuantizedTable)):
                out.append((prefix + name, w.values))
                if w.scale is not None:
                    out.append((prefix + name + "_scale", w.scale))
            else:
                out.append((prefix + name, np.ascontiguousarray(w)))
    return out


def quantized_shapes(layer, precision, shapes):
    """[(name, shape, dtype kind)] a file holds for `layer` quantized, from its float
    weight shapes (Layer.weight_shapes) in weight_names order."""
    out = []
    names = layer.weight_names
    leaf_of = {}
    for prefix, leaf in _leaves(layer):
        spec = _matrix_weights(leaf) or {}
        for n in leaf.weight_names:
            leaf_of[prefix + n] = (n in spec, n)
    for name, shape in zip(names, shapes):
        quant, base = leaf_of.get(name, (False, name))
        if not quant:
            out.append((name, tuple(shape), "f"))
            continue
        out.append((name, tuple(shape), "i" if precision == "int8" else "u"))
        if precision == "int8":
            n_scale = shape[0] if base == "embeddings" else shape[1]
            out.append((name + "_scale", (n_scale,), "f"))
    return out


def quantize(model_or_layer, precision):
    """An inference-ready copy of a built model or layer with int8 or bfloat16 weights.

    Covers LSTM (plain, peephole, coupled), GRU (both forms), SimpleRNN, Bidirectional, RNN
    of built-in cells, Dense and Embedding; layers without weights (Dropout, Masking, ...)
    are copied as they are. Anything else raises ValueError: nothing silently stays in
    float32. Inputs, outputs and states stay float32; ``__call__``, ``predict``,
    ``evaluate``, ``step`` and stateful use work; training a quantized copy is an error
    (train the float model and quantize again). The original is left unchanged.
    """
    from .layers.base import Layer
    precision = check_precision(precision)
    layers = getattr(model_or_layer, "layers", None)
    if isinstance(model_or_layer, Layer):
        targets = [model_or_layer]
    elif isinstance(layers, list):
        targets = layers
        if not getattr(model_or_layer, "built", True):
            raise ValueError(f"fl.quantize: {model_or_layer.name} is not built yet; call it on "
                             "data (or build(input_shape)) first")
    else:
        raise TypeError(f"model_or_layer: expected a fastlstm model or layer, got "
                        f"{type(model_or_layer).__name__}")
    for layer in targets:                  # check everything before copying anything
        if not layer.weight_names:
            continue
        if getattr(layer, "device", "cpu") != "cpu":
            raise ValueError(f"fl.quantize: {layer.name} is on {layer.device!r}; quantized "
                             "layers run on the CPU (move the model with .to('cpu') first)")
        if quantized_precision(layer) is not None:
            raise ValueError(f"fl.quantize: {layer.name} is already quantized; quantize the "
                             "float model")
        for _, leaf in _leaves(layer):
            if leaf.weight_names and _matrix_weights(leaf) is None:
                _quantize_leaf(leaf, precision)    # raises, naming the layer
            if not leaf.built:
                raise ValueError(f"fl.quantize: {leaf.name} is not built yet; call the model "
                                 "on data (or build(input_shape)) first")
    out = copy.deepcopy(model_or_layer)
    for layer in ([out] if isinstance(out, Layer) else out.layers):
        if layer.weight_names:
            quantize_layer(layer, precision)
    return out
