"""Model files: one ``.npz`` archive, no pickle, versioned.

``model.save(path)`` writes, and ``fl.load_model(path)`` reads, a NumPy ``.npz`` file (a zip
of ``.npy`` arrays) holding:

``"fastlstm.json"``
    A ``uint8`` array: the UTF-8 bytes of a JSON document::

        {"format": "fastlstm", "version": 1, "fastlstm_version": "0.1.0",
         "model": {"class_name": "Sequential", "config": {"name": "sequential"},
                   "input_shape": [null, 100, 2],
                   "layers": [{"class_name": "LSTM", "config": {...},
                               "input_shape": [null, 100, 2],
                               "weights": [{"name": "kernel", "key": "layers/0/kernel",
                                            "shape": [2, 128], "dtype": "float32"}, ...]},
                              ...]},
         "compile": {"loss": {"class_name": ..., "config": ...},
                     "metrics": [{"class_name": ..., "config": ...}, ...]} or null,
         "optimizer": {"class_name": "Adam", "config": {...},
                       "state": [{"name": "iterations", "key": "optimizer/iterations"},
                                 {"name": "momentum/0", "key": "optimizer/momentum/0"}, ...]}
                      or null}

    Layer entries are ``fastlstm.layers.serialize(layer)`` (Keras names and configs) plus the
    layer's build shape and its weights in ``get_weights()`` order.
``"layers/<i>/<weight name>"``
    The weights of layer ``i`` (0-based), e.g. ``layers/0/kernel``, ``layers/1/bias``;
    a Bidirectional layer's are ``layers/<i>/forward/kernel``, ... .
``"optimizer/<state name>"``
    The optimizer's ``get_state()``: ``iterations``, ``learning_rate`` (numeric rates) and
    one array per slot and parameter, ``<slot>/<parameter index>`` (e.g. ``momentum/0``,
    ``velocity/3``), parameters numbered as the model's trainable weights.

Reading uses ``np.load(path, allow_pickle=False)`` and only the keys the document names:
an object array (which would need unpickling) is refused, so a hostile file cannot run code.
A file that is not a zip/npz, has no ``"fastlstm.json"``, names another format or a newer
version, lacks an array it names, or holds arrays of the wrong shape or dtype raises
``ValueError`` saying what is wrong. Carried states of stateful layers and dropout random
generators are not saved (as in Keras).

The version is raised when a reader of the old version could not read the new files; a
reader accepts every version up to its own.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT_NAME = "fastlstm"
FORMAT_VERSION = 1
DOC_KEY = "fastlstm.json"

__all__ = ["save_model", "load_model", "register_model_class", "FORMAT_NAME",
           "FORMAT_VERSION", "DOC_KEY"]

# Model classes a file may name, by class name. fastlstm.models registers Sequential: this
# module rebuilds models without importing the module that saves them.
_MODEL_CLASSES = {}


def register_model_class(cls):
    """Let :func:`load_model` rebuild files whose model ``class_name`` is ``cls.__name__``
    (``cls(layers, name=...)``); returns ``cls``, so it serves as a class decorator."""
    _MODEL_CLASSES[cls.__name__] = cls
    return cls


def _shape_list(shape):
    if shape is None:
        return None
    shape = list(shape)
    if shape:
        shape[0] = None
    return [None if d is None else int(d) for d in shape]


def save_model(model, path):
    """Write ``model`` (a built ``Sequential``) to ``path`` as described in the module doc."""
    from . import __version__, losses, metrics, optimizers
    from .layers import serialize

    if not model.built:
        raise ValueError(f"save: {model.name} is not built yet; call build(input_shape) or call "
                         "the model on data first, so that it has weights to save")
    path = os.fspath(path)
    arrays = {}
    layer_docs = []
    for i, layer in enumerate(model.layers):
        entry = serialize(layer)
        entry["input_shape"] = _shape_list(getattr(layer, "input_shape", None))
        weights = []
        for name, w in zip(layer.weight_names, layer.get_weights()):
            key = f"layers/{i}/{name}"
            arrays[key] = np.ascontiguousarray(w)
            weights.append({"name": name, "key": key, "shape": list(w.shape),
                            "dtype": w.dtype.name})
        entry["weights"] = weights
        layer_docs.append(entry)
    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fastlstm_version": __version__,
        "model": {"class_name": type(model).__name__, "config": {"name": model.name},
                  "input_shape": _shape_list(model.input_shape), "layers": layer_docs},
        "compile": None,
        "optimizer": None,
    }
    if model.compiled:
        doc["compile"] = {"loss": losses.serialize(model.loss),
                          "metrics": [metrics.serialize(m) for m in model._compile_metrics]}
        opt = model.optimizer
        state_entries = []
        for name, value in opt.get_state().items():
            key = f"optimizer/{name}"
            arrays[key] = np.asarray(value)
            state_entries.append({"name": name, "key": key})
        doc["optimizer"] = {**optimizers.serialize(opt), "state": state_entries}
    try:
        text = json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save: the model's configuration cannot be written as JSON ({exc}); "
                         "a custom object in a layer, loss or optimizer config?") from None
    arrays[DOC_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    # Write next to the target, then rename: an interrupted save never leaves half a file.
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastlstm-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Reader:
    """The arrays of an open npz, read one named key at a time with clear errors."""

    def __init__(self, npz, path):
        self.npz = npz
        self.path = path

    def error(self, message):
        return ValueError(f"{self.path}: {message}")

    def get(self, key, what):
        if key not in self.npz.files:
            raise self.error(f"{what}: the array {key!r} is missing (truncated or edited file?)")
        try:
            return self.npz[key]
        except ValueError as exc:       # object arrays: refused, never unpickled
            raise self.error(f"{what}: the array {key!r} cannot be read without pickle "
                             f"({exc}); fastlstm files hold plain numeric arrays only") from None
        except Exception as exc:        # bad zip member, zlib/CRC error, truncated data
            raise self.error(f"{what}: the array {key!r} is corrupt "
                             f"({type(exc).__name__}: {exc})") from None


def _require(cond, reader, message):
    if not cond:
        raise reader.error(message)


def _read_doc(reader):
    raw = reader.get(DOC_KEY, "model description")
    _require(raw.dtype == np.uint8 and raw.ndim == 1, reader,
             f"{DOC_KEY!r} must be a 1-D uint8 array of UTF-8 JSON, got dtype {raw.dtype} "
             f"shape {raw.shape}")
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise reader.error(f"{DOC_KEY!r} is not valid UTF-8 JSON ({exc})") from None
    _require(isinstance(doc, dict), reader, f"{DOC_KEY!r} must hold a JSON object")
    fmt = doc.get("format")
    _require(fmt == FORMAT_NAME, reader, f"not a fastlstm model file (format {fmt!r}, "
                                         f"expected {FORMAT_NAME!r})")
    version = doc.get("version")
    _require(isinstance(version, int) and not isinstance(version, bool) and version >= 1, reader,
             f"invalid format version {version!r}")
    _require(version <= FORMAT_VERSION, reader,
             f"written by a newer fastlstm (format version {version}, written by fastlstm "
             f"{doc.get('fastlstm_version', '?')}); this fastlstm reads versions up to "
             f"{FORMAT_VERSION}: upgrade fastlstm")
    return doc


def _read_array(reader, entry, what, dtype_kinds="f"):
    _require(isinstance(entry, dict) and isinstance(entry.get("key"), str), reader,
             f"{what}: malformed entry {entry!r}")
    arr = reader.get(entry["key"], what)
    _require(arr.dtype.kind in dtype_kinds, reader,
             f"{what}: {entry['key']!r} has dtype {arr.dtype}, expected a "
             f"{'float' if dtype_kinds == 'f' else 'numeric'} array")
    if "shape" in entry:
        _require(isinstance(entry["shape"], list), reader,
                 f"{what}: malformed shape {entry['shape']!r} for {entry['key']!r}")
        _require(list(arr.shape) == entry["shape"], reader,
                 f"{what}: {entry['key']!r} has shape {arr.shape}, the description says "
                 f"{tuple(entry['shape'])}")
    return arr


def load_model(path, compile=True):
    """Read a model written by :func:`save_model`; ``compile=False`` skips the loss, metrics
    and optimizer. Raises ``ValueError`` naming the problem for any unreadable file."""
    path = os.fspath(path)
    try:
        return _load(path, compile)
    except (TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        # A description that passed the checks above but is still malformed somewhere.
        raise ValueError(f"{path}: malformed model description "
                         f"({type(exc).__name__}: {exc})") from None


def _load(path, compile):
    from .layers import deserialize
    from . import losses, metrics, optimizers

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as exc:           # e.g. a pickle file: refused by allow_pickle=False
        raise ValueError(f"{path}: not a fastlstm model file (not an .npz archive: {exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile,
            NotImplementedError, RuntimeError) as exc:   # e.g. "zip file version 11.2"
        raise ValueError(f"{path}: not a fastlstm model file, or a truncated/corrupt one "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not a fastlstm model file (a single .npy array, not an .npz "
                         "archive)")
    with npz:
        reader = _Reader(npz, path)
        doc = _read_doc(reader)
        spec = doc.get("model")
        model_class = _MODEL_CLASSES.get(spec.get("class_name")) \
            if isinstance(spec, dict) and isinstance(spec.get("class_name"), str) else None
        _require(model_class is not None, reader,
                 f"model: expected class_name {' or '.join(map(repr, sorted(_MODEL_CLASSES)))}, "
                 f"got {spec.get('class_name') if isinstance(spec, dict) else spec!r}")
        layer_specs = spec.get("layers")
        _require(isinstance(layer_specs, list) and layer_specs, reader,
                 "model: the layer list is missing or empty")
        config = spec.get("config") or {}
        _require(isinstance(config, dict), reader, f"model: malformed config {config!r}")
        shape = spec.get("input_shape")
        _require(shape is None or (isinstance(shape, list) and all(
            d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in shape)),
            reader, f"model: malformed input_shape {shape!r}")
        layers = []
        for i, entry in enumerate(layer_specs):
            _require(isinstance(entry, dict), reader, f"layer {i}: malformed entry")
            try:
                layer = deserialize({"class_name": entry.get("class_name"),
                                     "config": entry.get("config", {})})
            except (ValueError, TypeError, KeyError) as exc:
                raise reader.error(f"layer {i} ({entry.get('class_name')!r}): cannot be "
                                   f"rebuilt from its config: {exc}") from None
            layers.append(layer)
        try:
            model = model_class(layers, name=config.get("name"))
        except (ValueError, TypeError) as exc:
            raise reader.error(f"model: {exc}") from None
        for i, (layer, entry) in enumerate(zip(layers, layer_specs)):
            what = f"layer {i} ({layer.name})"
            weights = entry.get("weights", [])
            _require(isinstance(weights, list), reader, f"{what}: malformed weight list")
            arrays = [_read_array(reader, w, f"{what} weight {w.get('name') if isinstance(w, dict) else w!r}")
                      for w in weights]
            try:
                if not layer.built:
                    shape = entry.get("input_shape")
                    layer.build(None if shape is None else tuple(shape))
                layer.set_weights(arrays)
            except (ValueError, TypeError) as exc:
                raise reader.error(f"{what}: the saved weights do not fit the layer: {exc}") from None
            except MemoryError:                 # a config edited to absurd sizes
                raise reader.error(f"{what}: its config asks for weights too large to "
                                   "allocate") from None
        if spec.get("input_shape") is not None:
            model._input_shape = tuple(spec["input_shape"])
        if compile and doc.get("compile"):
            comp, opt = doc["compile"], doc.get("optimizer")
            try:
                optimizer = optimizers.deserialize({k: opt[k] for k in ("class_name", "config")}) \
                    if opt else "rmsprop"
                model.compile(optimizer=optimizer, loss=losses.deserialize(comp.get("loss")),
                              metrics=[metrics.deserialize(m) for m in comp.get("metrics") or []])
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise reader.error(f"compile: the saved loss, metrics or optimizer cannot be "
                                   f"rebuilt: {exc}") from None
            if opt:
                entries = opt.get("state") or []
                _require(isinstance(entries, list), reader, "optimizer: malformed state list")
                state = {}
                for e in entries:
                    _require(isinstance(e, dict) and isinstance(e.get("name"), str), reader,
                             f"optimizer: malformed state entry {e!r}")
                    state[e["name"]] = _read_array(reader, e, f"optimizer state {e['name']!r}",
                                                   dtype_kinds="biuf")
                _check_optimizer_state(reader, state, model)
                try:
                    model.optimizer.set_state(state)
                except (ValueError, TypeError) as exc:
                    raise reader.error(f"optimizer: the saved state does not fit: {exc}") from None
    return model


def _check_optimizer_state(reader, state, model):
    params = model.trainable_weights
    for name, arr in state.items():
        slot, sep, idx = name.rpartition("/")
        if not sep:
            continue
        _require(idx.isdigit() and int(idx) < len(params), reader,
                 f"optimizer state {name!r}: the model has {len(params)} trainable weights")
        p = params[int(idx)]
        _require(arr.shape == p.shape, reader,
                 f"optimizer state {name!r} has shape {arr.shape}, the weight it belongs to "
                 f"has shape {p.shape}")
        _require(arr.dtype.kind == "f", reader,
                 f"optimizer state {name!r} has dtype {arr.dtype}, expected float")

