"""What the converters share: lazy imports of the peer libraries, gate-block reordering,
and walking / assembling fastlstm layers and models.

fastlstm objects are the hub of every conversion: ``from_*`` builds fastlstm layers from a
peer's weights, ``to_*`` reads fastlstm layers. Gate blocks are named once here:

    fastlstm / Keras   LSTM [i|f|c|o]   GRU [z|r|h]   peephole rows [i, f, o]
    PyTorch            LSTM [i|f|g|o]   GRU [r|z|n]
    ONNX               LSTM [i|o|f|c]   GRU [z|r|h]   P [i|o|f]
"""
from __future__ import annotations

import importlib

import numpy as np

__all__ = ["ConversionError", "require"]


class ConversionError(ValueError):
    """The source uses something the target cannot express (an option, an operator, a layer).

    The message names it. A ``ValueError``, so ``except ValueError`` catches it too.
    """


_PIP = {"torch": "torch", "keras": "keras", "onnx": "onnx", "onnxruntime": "onnxruntime",
        "h5py": "h5py"}


def require(module: str, purpose: str):
    """Import ``module`` now (converters import their peer lazily), or raise an ImportError
    that names the function that needs it and the pip package that provides it."""
    pip = _PIP.get(module, module)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if module == "keras" and missing and missing.split(".")[0] == "tensorflow":
            raise ImportError(
                f"{purpose} needs Keras 3, which tried to load TensorFlow (not installed): set "
                "the environment variable KERAS_BACKEND=torch (or jax) before Keras is first "
                "imported, or pip install tensorflow") from exc
        raise ImportError(f"{purpose} needs the optional dependency {module!r}, which is not "
                          f"installed: pip install {pip}") from exc


# -- dtypes --------------------------------------------------------------------------------
def resolve_dtype(dtype, source_dtype=None) -> np.dtype:
    """``dtype`` if given (float32/float64), else the source's when it is float64, else
    float32 (half-precision sources are widened to float32)."""
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        return dt
    if source_dtype is not None and np.dtype(source_dtype) == np.float64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


# -- checking sources -----------------------------------------------------------------------
def real_array(value, where):
    """``value`` as a NumPy array of real numbers. Complex values are refused (casting them to
    float would drop the imaginary part with only a warning), and so are text and objects."""
    arr = np.asarray(value)
    if arr.dtype.kind in "cOSU":
        raise ConversionError(f"{where} has dtype {arr.dtype}; expected real numbers")
    return arr


def flag(value, where):
    """A boolean option, refusing anything but True / False: ``bool("false")`` is True."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConversionError(f"{where}: expected True or False, got {value!r}")
    return bool(value)


def listing(items, limit=8):
    """``items`` for an error message, the first ``limit`` only when there are more."""
    items = list(items)
    if len(items) <= limit:
        return repr(items)
    return repr(items[:limit])[:-1] + f", ...] ({len(items)} in all)"


# -- gate blocks ---------------------------------------------------------------------------
def blocks(a, order, n_blocks, axis=0):
    """Reorder the ``n_blocks`` equal blocks of ``a`` along ``axis``: block k of the result is
    block ``order[k]`` of ``a``."""
    a = np.asarray(a)
    parts = np.split(a, n_blocks, axis=axis)
    return np.concatenate([parts[k] for k in order], axis=axis)


# PyTorch GRU [r|z|n] <-> fastlstm [z|r|h] (the swap is its own inverse).
TORCH_GRU = (1, 0, 2)
# ONNX LSTM [i|o|f|c] from fastlstm [i|f|c|o], and back.
FL_TO_ONNX_LSTM = (0, 3, 1, 2)
ONNX_TO_FL_LSTM = (0, 2, 3, 1)
# Peepholes: fastlstm rows [i, f, o] <-> ONNX P [i|o|f] (its own inverse).
PEEPHOLE_SWAP = (0, 2, 1)


# -- fastlstm objects ----------------------------------------------------------------------
def fl_layers():
    from .. import layers
    return layers


def fl_sequential_class():
    import fastlstm
    seq = getattr(fastlstm, "Sequential", None)
    if seq is None:
        try:
            from ..models import Sequential as seq
        except ImportError:
            seq = None
    return seq


def is_sequential(obj) -> bool:
    seq = fl_sequential_class()
    return seq is not None and isinstance(obj, seq)


def layers_of(obj, purpose, expand_cells=True):
    """The list of fastlstm layers of a layer or a Sequential model; with ``expand_cells``
    an ``fl.layers.RNN`` of built-in cells becomes the equivalent plain layers."""
    from ..layers.base import Layer
    if isinstance(obj, Layer):
        layers = [obj]
    elif is_sequential(obj):
        layers = list(obj.layers)
    else:
        raise TypeError(f"{purpose}: expected a fastlstm layer or fl.Sequential model, got "
                        f"{type(obj).__name__}")
    return _expand_cells(layers, purpose) if expand_cells else layers


def _expand_cells(layers, purpose):
    """``RNN([cell_0, ..., cell_n])`` computes what the layers ``cell_k._layer`` do in a row:
    the first runs backwards if the RNN does, all but the last return sequences."""
    from ..layers import deserialize, serialize
    rnn_cls = getattr(fl_layers(), "RNN", None)
    out = []
    for layer in layers:
        if rnn_cls is None or not isinstance(layer, rnn_cls):
            out.append(layer)
            continue
        if not layer.compiled:
            raise ConversionError(f"{purpose}: RNN {layer.name!r} runs a user-defined cell, "
                                  "which has no equivalent in other frameworks")
        if layer.return_state:
            raise ConversionError(f"{purpose}: RNN {layer.name!r} has return_state=True; "
                                  "convert the cells as separate layers")
        n = len(layer.cells)
        for k, cell in enumerate(layer.cells):
            inner = cell._layer
            spec = serialize(inner)
            spec["config"].update(
                return_sequences=layer.return_sequences if k == n - 1 else True,
                return_state=False, go_backwards=layer.go_backwards and k == 0,
                stateful=layer.stateful, name=f"{layer.name}_cell{k}" if n > 1 else layer.name)
            copy = deserialize(spec)
            if inner.built:
                copy.build((None, None, inner.input_dim))
                copy.set_weights(inner.get_weights())
            out.append(copy)
    return out


def assemble(layers, name=None, model=False):
    """One layer as itself (unless ``model``), several as an ``fl.Sequential``."""
    if len(layers) == 1 and not model:
        return layers[0]
    seq = fl_sequential_class()
    if seq is None:
        raise ImportError("fastlstm.Sequential is not available in this build")
    return seq(layers) if name is None else seq(layers, name=name)


def rnn_kind(layer):
    """'LSTM', 'GRU' or 'SimpleRNN' for a fastlstm recurrent layer, else None."""
    L = fl_layers()
    for kind in ("LSTM", "GRU", "SimpleRNN"):
        cls = getattr(L, kind, None)
        if cls is not None and isinstance(layer, cls):
            return kind
    return None


def new_layer(class_name, purpose, **kwargs):
    """``fl.layers.<class_name>(**kwargs)``, with a clear error if this build lacks it."""
    cls = getattr(fl_layers(), class_name, None)
    if cls is None:
        raise ConversionError(f"{purpose}: this fastlstm build has no fl.layers.{class_name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:     # an option of the source that is out of range
        if isinstance(exc, ConversionError):
            raise
        raise ConversionError(f"{purpose}: {class_name} {kwargs.get('name')!r}: {exc}") from None


def set_built_weights(layer, input_shape, weights):
    """Build ``layer`` for ``input_shape`` (None: an Embedding's) and load ``weights``
    (get_weights order). The weights' shapes are compared first with those the layer's
    config implies, so that a config asking for huge weights (units=40000) is refused
    before its initializers run."""
    shapes = [tuple(np.shape(w)) for w in weights]
    try:
        expected = layer.weight_shapes(input_shape)
    except (ValueError, TypeError) as exc:
        raise ConversionError(f"{type(layer).__name__} {layer.name!r}: cannot be built for "
                              f"input shape {input_shape}: {exc}") from None
    if expected is not None and [tuple(s) for s in expected] != shapes:
        raise ConversionError(f"{type(layer).__name__} {layer.name!r}: the weights have "
                              f"shapes {shapes}; its configuration gives "
                              f"{[tuple(s) for s in expected]} ({', '.join(layer.weight_names)})")
    layer.build(None if input_shape is None else tuple(input_shape))
    layer.set_weights([np.asarray(w) for w in weights])
    return layer


def is_keras3_hard_sigmoid(act) -> bool:
    from .. import activations
    return (getattr(act, "code", None) == activations.HARD_SIGMOID
            and np.isclose(act.alpha, 1.0 / 6.0, rtol=0, atol=1e-12) and act.beta == 0.5)
