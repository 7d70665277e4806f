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
                     "metrics": [{"class_name": ..., "config": ...}, ...],
                     "weighted_metrics": [...] (only when there are some)} or null,
         "optimizer": {"class_name": "Adam", "config": {...},
                       "state": [{"name": "iterations", "key": "optimizer/iterations"},
                                 {"name": "momentum/0", "key": "optimizer/momentum/0"}, ...]}
                      or null}

    Layer entries are ``fastlstm.layers.serialize(layer)`` (Keras names and configs) plus the
    layer's build shape and its weights in ``get_weights()`` order. A layer quantized by
    ``fl.quantize`` (format version 2) also has ``"quantization": "int8"`` or
    ``"bfloat16"``; its matrices are stored compact (int8 values with a float32
    ``<name>_scale`` array, or bfloat16 bit patterns as uint16), each right after it.
    A functional model (``fl.Model``, ``"class_name": "Model"``, ``"input_shape": null``)
    lists every layer once, its ``InputLayer``s too (with no weights), and adds
    ``"graph"``: ``{"layers": [{"name": ..., "inbound_nodes": [{"args": [...],
    "kwargs": {...}}, ...]}, ...], "input_layers": ..., "output_layers": ...}``, Keras 3's
    functional config without the layer configs (tensors appear as ``{"class_name":
    "__keras_tensor__", "config": {"shape", "dtype", "keras_history": [layer name, node
    index, tensor index]}}``). The graph is rebuilt last, on layers already built for
    their checked shapes and holding the file's weights, so a graph that calls a layer on
    other shapes is refused before anything is allocated for it. Its ``"compile"`` holds a list per output: ``"loss"`` (null for an output
    without one), ``"loss_weights"``, ``"metrics"`` and ``"weighted_metrics"`` (a list of
    metrics per output). Such files stay format version 1 (2 only with quantized layers).
``"layers/<i>/<weight name>"``
    The weights of layer ``i`` (0-based), e.g. ``layers/0/kernel``, ``layers/1/bias``;
    a Bidirectional layer's are ``layers/<i>/forward/kernel``, ... .
``"optimizer/<state name>"``
    The optimizer's ``get_state()``: ``iterations``, ``learning_rate`` (numeric rates) and
    one array per slot and parameter, ``<slot>/<parameter index>`` (e.g. ``momentum/0``,
    ``velocity/3``), parameters numbered as the model's trainable weights.

Reading opens the archive with ``np.load(path, allow_pickle=False)`` and reads only the
keys the document names: an object array (which would need unpickling) is refused, so a
hostile file cannot run code. Sizes come from headers before anything is inflated or built
(each member's zip and ``.npy`` headers, the bounds of :mod:`fastlstm.limits`), and every
weight shape is compared with the shapes the layer configs imply (``Layer.weight_shapes``)
before any layer is built; see docs/security.md. A file that is not a zip/npz, has no
``"fastlstm.json"``, names another format or a newer version, lacks an array it names, holds
arrays of the wrong shape or dtype, declares a model input shape its layers were not built
for, or lacks optimizer slots raises ``ValueError`` saying what is wrong. Carried states of stateful layers and dropout random
generators are not saved (as in Keras).

The version is raised when a reader of the old version could not read the new files; a
reader accepts every version up to its own.
"""
from __future__ import annotations

import json
import os
import secrets
import zipfile

import numpy as np

from . import limits

FORMAT_NAME = "fastlstm"
# 2: layers quantized by fl.quantize ("quantization" in a layer entry, int8/uint16 arrays).
# A file without quantized layers is still written as version 1, which older readers read.
FORMAT_VERSION = 2
_QUANTIZED_VERSION = 2
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


def _is_shape_list(shape):
    """A layer of several inputs (merges, attention) keeps one shape per input."""
    return isinstance(shape, (list, tuple)) and bool(shape) and all(
        isinstance(s, (list, tuple)) for s in shape)


def _shape_list(shape):
    if shape is None:
        return None
    if _is_shape_list(shape):
        return [_shape_list(s) for s in shape]
    shape = list(shape)
    if shape:
        shape[0] = None
    return [None if d is None else int(d) for d in shape]


#: names Keras writes its own formats under; a fastlstm file there would mislead
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def save_model(model, path):
    """Write ``model`` (a built ``Sequential``) to ``path`` as described in the module doc."""
    from . import __version__, losses, metrics, optimizers
    from .layers import serialize
    from .quantization import quantized_arrays, quantized_precision

    if not model.built:
        raise ValueError(f"save: {model.name} is not built yet; call build(input_shape) or call "
                         "the model on data first, so that it has weights to save")
    path = os.fspath(path)
    suffix = os.path.splitext(os.fsdecode(path))[1].lower()
    if suffix in _KERAS_SUFFIXES:
        raise ValueError(f"path: fastlstm saves a model as a NumPy .npz archive, not in Keras's "
                         f"{suffix} format, got {path!r}; use a name ending in .npz (to write "
                         f"a Keras file, save fastlstm.convert.to_keras(model) with Keras)")
    arrays = {}
    layer_docs = []
    version = 1
    saved_graph = getattr(model, "_saved_graph", None)
    graph = saved_graph() if saved_graph is not None else None
    for i, layer in enumerate(model.layers):
        entry = serialize(layer)
        entry["input_shape"] = _shape_list(getattr(layer, "input_shape", None))
        weights = []
        precision = quantized_precision(layer)
        if precision is not None:
            entry["quantization"] = precision
            version = _QUANTIZED_VERSION
            pairs = quantized_arrays(layer)
        else:
            pairs = zip(layer.weight_names, layer.get_weights())
        for name, w in pairs:
            key = f"layers/{i}/{name}"
            arrays[key] = np.ascontiguousarray(w)
            weights.append({"name": name, "key": key, "shape": list(w.shape),
                            "dtype": w.dtype.name})
        entry["weights"] = weights
        layer_docs.append(entry)
    doc = {
        "format": FORMAT_NAME,
        "version": version,
        "fastlstm_version": __version__,
        "model": {"class_name": type(model).__name__, "config": {"name": model.name},
                  "input_shape": None if graph is not None else _shape_list(model.input_shape),
                  "layers": layer_docs},
        "compile": None,
        "optimizer": None,
    }
    if graph is not None:
        doc["model"]["graph"] = graph
    compile_config = getattr(model, "_compile_config", None)
    if model.compiled and compile_config is not None:
        doc["compile"] = compile_config()
    elif model.compiled:
        doc["compile"] = {"loss": losses.serialize(model.loss),
                          "metrics": [metrics.serialize(m) for m in model._compile_metrics]}
        weighted = getattr(model, "_compile_weighted_metrics", None)
        if weighted:
            doc["compile"]["weighted_metrics"] = [metrics.serialize(m) for m in weighted]
    if model.compiled:
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
    # Write next to the target, then rename: an interrupted save never leaves half a file,
    # and a power cut after the rename leaves the new file, not an empty one (both synced).
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _create_temp(directory):
    """A new temporary file in ``directory``, created with mode 0o666 so that the process's
    umask decides its permissions, as for a file ``open(path, "w")`` or ``np.savez`` creates
    (``tempfile.mkstemp`` would make it 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".fastlstm-{secrets.token_hex(8)}.npz.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"save: cannot create a temporary file in {directory}")


def _fsync_directory(directory):
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Reader:
    """The arrays of an open npz, read one named key at a time. Each member's ``.npy`` header
    (dtype, shape) and zip header (sizes) are checked before its data are inflated; members
    are looked up in a dict (``NpzFile``'s own lookup scans a list)."""

    def __init__(self, npz, path):
        self.zip = npz.zip
        self.path = path
        limits.check_zip_archive(self.zip, "the archive", error=self.error)
        self.members = {info.filename[:-4]: info for info in self.zip.infolist()
                        if info.filename.endswith(".npy")}
        self.headers = {}               # (key, max_bytes) -> (shape, dtype): read once

    def error(self, message):
        return ValueError(f"{self.path}: {message}")

    def header(self, key, what, max_bytes=None):
        """(shape, dtype) of the array ``key`` from its headers, without reading its data."""
        max_bytes = limits.MAX_ARRAY_BYTES if max_bytes is None else max_bytes
        if (key, max_bytes) in self.headers:
            return self.headers[key, max_bytes][:2]
        info = self.members.get(key)
        if info is None:
            raise self.error(f"{what}: the array {key!r} is missing (truncated or edited file?)")
        name = f"{what}: the array {key!r}"
        limits.check_zip_member(info, name, max_bytes + _NPY_HEADER_MAX, error=self.error)
        try:
            with self.zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f".npy format version {version} is not read here")
                offset = f.tell()
        except Exception as exc:        # bad zip member, zlib error, garbled header
            raise self.error(f"{name} is corrupt or truncated: its .npy header cannot be read "
                             f"({type(exc).__name__}: {exc})") from None
        if dtype.hasobject:
            raise self.error(f"{name} holds Python objects (dtype {dtype}), which cannot be "
                             "read without pickle; fastlstm files hold plain numeric arrays "
                             "only")
        if dtype.fields is not None or dtype.subdtype is not None:
            raise self.error(f"{name} has the compound dtype {dtype}; fastlstm files hold "
                             "plain numeric arrays only")
        nbytes = limits.array_nbytes(shape, dtype)
        if nbytes > max_bytes:
            raise self.error(f"{name} declares shape {shape} and dtype {dtype} ({nbytes:,} "
                             f"bytes), more than the limit of {max_bytes:,} bytes "
                             "(fastlstm.limits)")
        if info.file_size != offset + nbytes:
            raise self.error(f"{name} is truncated or corrupt: its header declares shape "
                             f"{shape} and dtype {dtype} ({nbytes:,} bytes of data), the zip "
                             f"member holds {info.file_size - offset:,}")
        self.headers[key, max_bytes] = shape, dtype, fortran, offset
        return shape, dtype

    def get(self, key, what, max_bytes=None):
        """The array ``key`` (read-only), its headers checked first (:meth:`header`)."""
        self.header(key, what, max_bytes)
        shape, dtype, fortran, offset = self.headers[key, limits.MAX_ARRAY_BYTES
                                                     if max_bytes is None else max_bytes]
        nbytes = limits.array_nbytes(shape, dtype)
        try:
            with self.zip.open(self.members[key]) as f:
                f.read(offset)
                data = f.read(nbytes)
                if len(data) != nbytes:
                    raise EOFError(f"{len(data):,} bytes of data, {nbytes:,} declared")
        except Exception as exc:        # zlib/CRC error, data shorter than declared
            raise self.error(f"{what}: the array {key!r} is corrupt or truncated "
                             f"({type(exc).__name__}: {exc})") from None
        arr = np.frombuffer(data, dtype=dtype)
        return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


# A .npy header is at most this long (numpy's own limit for reading one is 10,000 bytes).
_NPY_HEADER_MAX = 65536


def _require(cond, reader, message):
    if not cond:
        raise reader.error(message)


def _read_doc(reader):
    if DOC_KEY not in reader.members:
        names = {info.filename for info in reader.zip.infolist()}
        hint = ("; it looks like a Keras .keras file: fastlstm.convert.from_keras reads those"
                if {"config.json", "model.weights.h5"} <= names else "")
        raise reader.error(f"not a fastlstm model file (no fastlstm header: the zip/.npz "
                           f"archive has no {DOC_KEY!r} array{hint})")
    shape, dtype = reader.header(DOC_KEY, "model description", max_bytes=limits.MAX_JSON_BYTES)
    _require(dtype == np.uint8 and len(shape) == 1, reader,
             f"{DOC_KEY!r} must be a 1-D uint8 array of UTF-8 JSON, got dtype {dtype} "
             f"shape {shape}")
    raw = reader.get(DOC_KEY, "model description", max_bytes=limits.MAX_JSON_BYTES)
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise reader.error(f"{DOC_KEY!r} is not valid UTF-8 JSON ({exc})") from None
    limits.check_nesting(doc, repr(DOC_KEY), error=reader.error)
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


def _array_header(reader, entry, what, dtype_kinds="f"):
    """The (shape, dtype) an array entry of the description names, from the array's headers,
    checked against the entry's own shape (if it gives one)."""
    _require(isinstance(entry, dict) and isinstance(entry.get("key"), str), reader,
             f"{what}: malformed entry {entry!r}")
    shape, dtype = reader.header(entry["key"], what)
    _require(dtype.kind in dtype_kinds, reader,
             f"{what}: {entry['key']!r} has dtype {dtype}, expected a "
             f"{'float' if dtype_kinds == 'f' else 'numeric'} array")
    if "shape" in entry:
        _require(isinstance(entry["shape"], list), reader,
                 f"{what}: malformed shape {entry['shape']!r} for {entry['key']!r}")
        _require(list(shape) == entry["shape"], reader,
                 f"{what}: {entry['key']!r} has shape {shape}, the description says "
                 f"{tuple(entry['shape'])}")
    return shape, dtype


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")     # a zip member, an empty zip
_NPY_MAGIC = b"\x93NUMPY"


def _check_file_kind(path):
    """Refuse, in fastlstm's words, a file that is not a zip archive before NumPy reads it
    (NumPy would take it for a pickle and suggest loading it unsafely)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read as a fastlstm model file "
                         f"({type(exc).__name__}: {exc})") from None
    if head.startswith(_ZIP_MAGIC):
        return
    if head.startswith(_NPY_MAGIC):
        raise ValueError(f"{path}: not a fastlstm model file (a single .npy array, not an .npz "
                         "archive)")
    if not head:
        what = "an empty file"
    elif head[:1] == b"\x80":
        what = "it looks like a Python pickle, which fastlstm never loads"
    else:
        what = f"its first bytes are {head!r}"
    raise ValueError(f"{path}: not a fastlstm model file (not a zip/.npz archive: {what})")


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
    from . import quantization

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    _check_file_kind(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError:                  # refused by allow_pickle=False; never unpickled
        raise ValueError(f"{path}: not a fastlstm model file (not an .npz archive; it holds "
                         "Python objects, which fastlstm never loads)") from None
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
        input_shape = _shape_entry(reader, spec.get("input_shape"), "model")
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
        graph = spec.get("graph")
        from_graph = getattr(model_class, "_from_saved", None)
        model = None
        if from_graph is not None:      # a functional model: made once the weights check out
            _require(isinstance(graph, dict), reader,
                     f"model: a {spec.get('class_name')} entry needs its graph section")
        else:
            try:
                model = model_class(layers, name=config.get("name"))
            except (ValueError, TypeError) as exc:
                raise reader.error(f"model: {exc}") from None
        # Every array's shape is checked against what the configs imply before any layer is
        # built (an orthogonal initializer's QR of a huge config) or any array is read.
        build_shapes, weight_entries, precisions = [], [], []
        for i, (layer, entry) in enumerate(zip(layers, layer_specs)):
            what = f"layer {i} ({layer.name})"
            weights = entry.get("weights", [])
            _require(isinstance(weights, list), reader, f"{what}: malformed weight list")
            precision = entry.get("quantization")
            _require(precision is None or precision in quantization.PRECISIONS, reader,
                     f"{what}: unknown quantization {precision!r}, expected one of "
                     f"{quantization.PRECISIONS}")
            _require(precision is None or doc["version"] >= _QUANTIZED_VERSION, reader,
                     f"{what}: a quantized layer in a format version {doc['version']} file")
            names = [w.get("name") if isinstance(w, dict) else w for w in weights]
            headers = [_array_header(reader, w, f"{what} weight {n!r}",
                                     "fiu" if precision else "f")
                       for w, n in zip(weights, names)]
            build_shape = _shape_entry(reader, entry.get("input_shape"), what)
            if precision is None:
                _check_weight_shapes(reader, what, layer, build_shape, [h[0] for h in headers])
            else:
                _check_quantized_shapes(reader, what, layer, precision, build_shape, names,
                                        headers)
            build_shapes.append(build_shape)
            weight_entries.append(list(zip(weights, names)))
            precisions.append(precision)
        _check_input_shape(reader, input_shape, layers, build_shapes)
        for i, (layer, build_shape, weights, precision) in enumerate(zip(
                layers, build_shapes, weight_entries, precisions)):
            what = f"layer {i} ({layer.name})"
            arrays = [reader.get(w["key"], f"{what} weight {n!r}") for w, n in weights]
            try:
                if not layer.built:
                    layer.build(build_shape)
                if precision is None:
                    layer.set_weights(arrays)
                else:
                    quantization.quantize_layer(layer, precision, dict(zip(
                        [n for _, n in weights], arrays)))
            except (ValueError, TypeError) as exc:
                raise reader.error(f"{what}: the saved weights do not fit the layer: {exc}") from None
            except MemoryError:                 # a config edited to absurd sizes
                raise reader.error(f"{what}: its config asks for weights too large to "
                                   "allocate") from None
        if model is None:
            # The layers are built for their checked shapes and hold the file's weights: a
            # graph that calls one on other shapes is refused, nothing else is allocated.
            try:
                model = from_graph(layers, graph, config.get("name"))
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise reader.error(f"model: the graph cannot be rebuilt: {exc}") from None
        if input_shape is not None:
            model._input_shape = input_shape
        if compile and doc.get("compile"):
            comp, opt = doc["compile"], doc.get("optimizer")
            try:
                optimizer = optimizers.deserialize({k: opt[k] for k in ("class_name", "config")}) \
                    if opt else "rmsprop"
                if hasattr(model, "_compile_from_saved"):
                    model._compile_from_saved(comp, optimizer)
                else:
                    model.compile(
                        optimizer=optimizer, loss=losses.deserialize(comp.get("loss")),
                        metrics=[metrics.deserialize(m) for m in comp.get("metrics") or []],
                        weighted_metrics=[metrics.deserialize(m)
                                          for m in comp.get("weighted_metrics") or []])
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise reader.error(f"compile: the saved loss, metrics or optimizer cannot be "
                                   f"rebuilt: {exc}") from None
            if opt:
                entries = opt.get("state") or []
                _require(isinstance(entries, list), reader, "optimizer: malformed state list")
                headers = {}
                for e in entries:
                    _require(isinstance(e, dict) and isinstance(e.get("name"), str), reader,
                             f"optimizer: malformed state entry {e!r}")
                    headers[e["name"]] = _array_header(reader, e, f"optimizer state {e['name']!r}",
                                                       dtype_kinds="biuf")
                _check_optimizer_state(reader, headers, model)
                state = {e["name"]: reader.get(e["key"], f"optimizer state {e['name']!r}")
                         for e in entries}
                try:
                    model.optimizer.set_state(state)
                except (ValueError, TypeError) as exc:
                    raise reader.error(f"optimizer: the saved state does not fit: {exc}") from None
    return model


def _shape_entry(reader, shape, what, nested=True):
    """A saved input_shape: None, or a list of non-negative ints and nulls, as a tuple; for
    a layer of several inputs, a list of such shapes (a list of tuples)."""
    if nested and isinstance(shape, list) and shape and all(isinstance(s, list) for s in shape):
        _require(len(shape) <= 64, reader, f"{what}: malformed input_shape (more than 64 inputs)")
        return [_shape_entry(reader, s, what, nested=False) for s in shape]
    _require(shape is None or (isinstance(shape, list) and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
        for d in shape)), reader, f"{what}: malformed input_shape {shape!r}")
    return None if shape is None else tuple(shape)


def _check_weight_shapes(reader, what, layer, build_shape, shapes):
    """The file's weight shapes against those the layer's config and saved build shape
    imply (``Layer.weight_shapes``), computed without building the layer."""
    try:
        expected = layer.weight_shapes(build_shape)
    except (ValueError, TypeError) as exc:
        raise reader.error(f"{what}: cannot be built for its saved input_shape "
                           f"{build_shape}: {exc}") from None
    if expected is None:                # a layer that cannot tell: set_weights checks
        return
    names = layer.weight_names
    _require(len(shapes) == len(expected), reader,
             f"{what}: the saved weights do not fit the layer: it has {len(expected)} weights "
             f"({', '.join(names)}), the file lists {len(shapes)}")
    for name, want, got in zip(names, expected, shapes):
        _require(tuple(want) == tuple(got), reader,
                 f"{what}: the saved weights do not fit the layer: {name} has shape "
                 f"{tuple(got)} in the file, the layer's config and input_shape "
                 f"{build_shape} give {tuple(want)}")


def _check_quantized_shapes(reader, what, layer, precision, build_shape, names, headers):
    """A quantized layer's arrays (names, (shape, dtype) headers) against the layout its
    config, saved build shape and precision imply (quantization.quantized_shapes)."""
    from .quantization import quantized_shapes
    try:
        shapes = layer.weight_shapes(build_shape)
    except (ValueError, TypeError) as exc:
        raise reader.error(f"{what}: cannot be built for its saved input_shape "
                           f"{build_shape}: {exc}") from None
    _require(shapes is not None, reader, f"{what}: {type(layer).__name__} cannot be quantized")
    try:
        expected = quantized_shapes(layer, precision, shapes)
    except ValueError as exc:
        raise reader.error(f"{what}: {exc}") from None
    _require([e[0] for e in expected] == list(names), reader,
             f"{what}: a {precision} layer stores {', '.join(e[0] for e in expected)}; the "
             f"file lists {', '.join(map(str, names))}")
    want_dtype = {"i": np.dtype(np.int8), "u": np.dtype(np.uint16), "f": np.dtype(np.float32)}
    for (name, shape, kind), (got_shape, got_dtype) in zip(expected, headers):
        _require(tuple(got_shape) == tuple(shape) and got_dtype == want_dtype[kind], reader,
                 f"{what}: {name} is {got_dtype} of shape {tuple(got_shape)} in the file; a "
                 f"{precision} layer built for {build_shape} takes {want_dtype[kind]} of "
                 f"shape {tuple(shape)}")


def _check_input_shape(reader, input_shape, layers, build_shapes):
    """The model's saved input_shape, passed through the layers, must reach each layer as a
    shape it accepts, giving the weight shapes that the layer was built for."""
    current = input_shape
    for i, (layer, built_for) in enumerate(zip(layers, build_shapes)):
        if current is None:
            return
        if built_for is not None:
            problem = None      # the time axis may differ, and a Dense takes any rank
            try:
                if layer.weight_shapes(current) != layer.weight_shapes(built_for):
                    problem = "other weight shapes than the layer's"
            except (ValueError, TypeError) as exc:
                problem = str(exc)
            _require(problem is None, reader,
                     f"model: input_shape {list(input_shape)} does not fit layer {i} "
                     f"({layer.name}): it reaches the layer as {current} ({problem}); the "
                     f"layer was built for {built_for}")
        try:
            current = layer.compute_output_shape(current)
        except (ValueError, TypeError, IndexError):
            return
        current = None if current is None or not isinstance(current, tuple) else current


def _check_optimizer_state(reader, headers, model):
    """The saved optimizer state's headers ((shape, dtype) by state name) against the
    model's trainable weights: every slot of every weight, of its shape, once any is saved."""
    params = model.trainable_weights
    slot_names = [name for name, _ in model.optimizer._slot_specs()]
    for name, (shape, dtype) in headers.items():
        slot, sep, idx = name.rpartition("/")
        if not sep:
            continue
        _require(idx.isdigit() and int(idx) < len(params), reader,
                 f"optimizer state {name!r}: the model has {len(params)} trainable weights")
        p = params[int(idx)]
        _require(tuple(shape) == p.shape, reader,
                 f"optimizer state {name!r} has shape {tuple(shape)}, the weight it belongs "
                 f"to has shape {p.shape}")
        _require(dtype.kind == "f", reader,
                 f"optimizer state {name!r} has dtype {dtype}, expected float")
    if any("/" in name for name in headers):
        missing = [f"{slot}/{i}" for i in range(len(params)) for slot in slot_names
                   if f"{slot}/{i}" not in headers]
        _require(not missing, reader,
                 f"optimizer: the saved state lacks {len(missing)} array(s) "
                 f"({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}): the model "
                 f"has {len(params)} trainable weights, each with the slots {slot_names} "
                 "(truncated or edited file?)")
