"""Keras <-> fastlstm. Weights need no reordering (fastlstm uses Keras 3's layouts and gate
orders); what needs care is the configuration: every option is mapped or refused, and
``hard_sigmoid`` means ``clip(0.2x + 0.5)`` in Keras 2 but ``clip(x/6 + 0.5)`` in Keras 3.

Files are read without TensorFlow (and without Keras): a ``.keras`` archive is a zip of
``config.json``, ``metadata.json`` and ``model.weights.h5``, read with zipfile, json and
h5py; a legacy ``.h5`` model (Keras 2 / tf.keras, or Keras 3's legacy writer) keeps its
config in the ``model_config`` attribute and its weights under ``model_weights``. Functional
models: fastlstm.convert._keras_functional.
"""
from __future__ import annotations

import io
import json
import mmap
import os
import re
import sys
import warnings
import zipfile
import zlib

import numpy as np

from .. import limits
from . import _keras_layers
from ._common import (ConversionError, assemble, flag, is_keras3_hard_sigmoid,
                      is_sequential, layers_of, listing, new_layer, require, resolve_dtype,
                      rnn_kind, set_built_weights)
from ._keras_attention import ATTENTION, from_keras_layer as _attention_layer, \
    to_keras_layer as _to_keras_attention
from . import _keras_functional as _functional

__all__ = ["from_keras", "to_keras"]

_RNN = ("LSTM", "GRU", "SimpleRNN")
_SUPPORTED = _RNN + ("Bidirectional", "Dense", "Embedding", "Masking", "Dropout") + \
    _keras_layers.NAMES + ATTENTION + _functional.MERGE
# Keys that describe how Keras computes or builds, never what: accepted and left alone.
_HARMLESS = {"name", "trainable", "dtype", "module", "registered_name", "build_config",
             "implementation", "unroll", "use_cudnn", "batch_input_shape", "batch_shape",
             "input_dim", "input_length", "input_shape", "synchronized", "shared_object_id"}
_INITIALIZERS = ("kernel_initializer", "recurrent_initializer", "bias_initializer",
                 "embeddings_initializer")
_REGULARIZERS = ("kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
                 "activity_regularizer", "embeddings_regularizer")
_CONSTRAINTS = ("kernel_constraint", "recurrent_constraint", "bias_constraint",
                "embeddings_constraint")


def _snake_case(name):
    """Keras's ``to_snake_case`` (how Keras 3 names layer groups in weight files)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name if not name.startswith("_") else "private" + name


def _major(version):
    if version is None:
        return None
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ValueError(f"keras_version: expected a version such as '2.15.0' or '3.4', "
                         f"got {version!r}") from None


class _Context:
    """What a conversion needs besides the layer config: the Keras major version (for
    ``hard_sigmoid``), the target dtype, and whether training-only options may be dropped."""

    def __init__(self, keras_major, dtype, drop_training_options):
        self.keras_major = keras_major
        self.dtype = dtype
        self.drop = drop_training_options


# -- Keras config -> fastlstm layers ---------------------------------------------------------
def _activation(spec, ctx, where, allow_softmax=False):
    from .. import activations
    if isinstance(spec, dict):
        # Keras 3 may serialise a built-in function as {"class_name": "function", "config": name}
        if spec.get("class_name") in ("function", "builtins.function") and isinstance(
                spec.get("config"), str):
            spec = spec["config"]
        else:
            raise ConversionError(f"from_keras: {where}: custom activation {spec!r} has no "
                                  "fastlstm equivalent")
    if spec is None or spec == "linear":
        return "linear"
    if spec == "hard_sigmoid":
        if ctx.keras_major is None:
            raise ConversionError(
                f"from_keras: {where}: 'hard_sigmoid' is clip(0.2x+0.5, 0, 1) in Keras 2 but "
                "clip(x/6+0.5, 0, 1) in Keras 3, and this source does not say which Keras "
                "wrote it; pass keras_version='2' or '3'")
        if ctx.keras_major < 3:
            return activations.HardSigmoid(0.2, 0.5)
        return "hard_sigmoid"
    if spec == "softmax" and allow_softmax:
        return "softmax"
    if isinstance(spec, str) and spec in activations.NAMES:
        return spec
    raise ConversionError(f"from_keras: {where}: activation {spec!r} has no fastlstm "
                          f"equivalent (supported: {list(activations.NAMES)}"
                          f"{' and softmax' if allow_softmax else ''})")


def _dtype_name(weights, ctx):
    src = weights[0].dtype if weights else None
    return resolve_dtype(ctx.dtype, src).name


def _policy_name(config, weights, ctx):
    """The layer's dtype argument: "mixed_bfloat16" where the Keras layer's policy is (its
    weights are float32 either way), else _dtype_name."""
    name = _dtype_name(weights, ctx)
    policy = config.get("dtype")
    if isinstance(policy, dict):
        policy = policy.get("config", {}).get("name")
    return "mixed_bfloat16" if policy == "mixed_bfloat16" and name == "float32" else name


class _Options:
    """Walks one Keras layer config, consuming keys; ``finish()`` refuses what is left."""

    def __init__(self, class_name, config, ctx):
        self.cls = class_name
        self.cfg = dict(config)
        self.ctx = ctx
        self.where = f"{class_name} {config.get('name', '')!r}"
        self.used = set(_HARMLESS)

    def take(self, key, default=None):
        self.used.add(key)
        return self.cfg.get(key, default)

    def take_flag(self, key, default):
        return flag(self.take(key, default), f"from_keras: {self.where} {key}")

    def require(self, key, expected, why):
        value = self.take(key, expected)
        if value != expected:
            raise ConversionError(f"from_keras: {self.where} has {key}={value!r}: {why}")

    def initializer(self, key, out):
        from .. import initializers
        spec = self.take(key)
        if spec is None:
            return
        try:
            out[key] = initializers.get(spec, key)
        except (TypeError, ValueError):
            # Initializers only shape a fresh build; the converted weights are set below.
            warnings.warn(f"from_keras: {self.where}: {key} {spec!r} has no fastlstm "
                          "equivalent; the layer keeps fastlstm's default (it only matters "
                          "if the layer is re-initialised)", stacklevel=4)

    def regularizer(self, key, out):
        from .. import regularizers
        spec = self.take(key)
        if spec is None:
            return
        try:
            out[key] = regularizers.get(spec, key)
        except (TypeError, ValueError) as exc:
            if self.ctx.drop:
                return
            raise ConversionError(f"from_keras: {self.where}: {key} {spec!r} has no fastlstm "
                                  f"equivalent ({exc}); pass drop_training_options=True to "
                                  "leave it out (inference is unchanged)") from None

    def constraints(self):
        for key in _CONSTRAINTS:
            spec = self.take(key)
            if spec is not None and not self.ctx.drop:
                raise ConversionError(f"from_keras: {self.where} has {key}={spec!r}; fastlstm "
                                      "has no weight constraints; pass "
                                      "drop_training_options=True to leave them out "
                                      "(inference is unchanged)")

    def finish(self):
        left = {k: v for k, v in self.cfg.items() if k not in self.used}
        # Keras 3 additions that are off by default.
        for k in ("lora_rank", "lora_alpha", "quantization_config", "gradient_checkpointing"):
            if k in left and not left[k]:
                left.pop(k)
        if left:
            raise ConversionError(f"from_keras: {self.where} has options fastlstm cannot map: "
                                  f"{left}")


def _rnn_layer(class_name, config, weights, ctx, in_bidirectional=False):
    o = _Options(class_name, config, ctx)
    kw = dict(units=o.take("units"), use_bias=o.take_flag("use_bias", True))
    _expect_weights(o.where, weights, 2 + kw["use_bias"])
    kw["activation"] = _activation(o.take("activation", "tanh"), ctx, o.where + " activation")
    if class_name in ("LSTM", "GRU"):
        kw["recurrent_activation"] = _activation(o.take("recurrent_activation", "sigmoid"), ctx,
                                                 o.where + " recurrent_activation")
    if class_name == "LSTM":
        kw["unit_forget_bias"] = o.take_flag("unit_forget_bias", True)
    if class_name == "GRU":
        reset_after = o.take("reset_after")
        if reset_after is None:        # old configs: tell the form from the bias shape
            reset_after = kw["use_bias"] and np.ndim(weights[2]) == 2
        kw["reset_after"] = flag(reset_after, f"from_keras: {o.where} reset_after")
    for key in ("return_sequences", "return_state", "go_backwards", "stateful"):
        kw[key] = o.take_flag(key, False)
    o.require("time_major", False, "fastlstm layers take batch-major input")
    kw["zero_output_for_mask"] = o.take_flag("zero_output_for_mask", False)
    for key in ("dropout", "recurrent_dropout"):
        rate = _real(o.take(key, 0.0), f"from_keras: {o.where} {key}")
        if rate and not ctx.drop:
            kw[key] = rate
    seed = o.take("seed")
    if isinstance(seed, int):
        kw["seed"] = seed
    for key in _INITIALIZERS[:3]:
        o.initializer(key, kw)
    for key in _REGULARIZERS[:4]:
        o.regularizer(key, kw)
    o.constraints()
    o.take("cell")
    o.finish()
    kw["trainable"] = flag(o.cfg.get("trainable", True), f"from_keras: {o.where} trainable")
    kw["dtype"] = _policy_name(o.cfg, weights, ctx)
    layer = new_layer(class_name, "from_keras", **kw)
    return set_built_weights(layer, (None, None, np.shape(weights[0])[0]),
                             [np.asarray(w, _dtype_name(weights, ctx)) for w in weights])


def _real(value, where):
    """A number option (a rate, a mask value) of a config; anything else is refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ConversionError(f"{where}: expected a number, got {value!r:.100}")
    return float(value)


def _entry(entry, where):
    """(class_name, config) of a serialised layer, refusing a malformed one."""
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str) or \
            not isinstance(entry.get("config", {}), dict):
        raise ConversionError(f"from_keras: {where} is not a layer entry (a dict with a "
                              f"class_name and a config dict): {repr(entry):.200}")
    return entry["class_name"], entry.get("config", {})


def _expect_weights(where, weights, count):
    """Refuse a weight list that cannot be the layer's (a malformed file): ``count`` arrays,
    the first (kernel or embeddings) a matrix."""
    if len(weights) != count or np.ndim(weights[0]) != 2:
        raise ConversionError(f"from_keras: {where}: expected {count} weight arrays, the "
                              f"first 2-D; got shapes {[np.shape(w) for w in weights]}")


def _layer(class_name, config, weights, ctx):
    """One fastlstm layer from a Keras class name, config and weights (get_weights order)."""
    if class_name in _RNN:
        return _rnn_layer(class_name, config, weights, ctx)
    if class_name == "Bidirectional":
        o = _Options(class_name, config, ctx)
        fcls, fcfg = _entry(o.take("layer"), f"{o.where}: its 'layer'")
        back = o.take("backward_layer")
        merge_mode = o.take("merge_mode", "concat")
        o.finish()
        if fcls not in _RNN:
            raise ConversionError(f"from_keras: {o.where} wraps a {fcls}; fastlstm's "
                                  "Bidirectional takes LSTM, GRU or SimpleRNN")
        if back:
            bcls, bcfg = _entry(back, f"{o.where}: its 'backward_layer'")
        else:
            bcls, bcfg = fcls, dict(fcfg, go_backwards=not fcfg.get("go_backwards", False),
                                    name="backward_" + str(fcfg.get("name", "")))
        if bcls not in _RNN:
            raise ConversionError(f"from_keras: {o.where}: backward layer {bcls} is not a "
                                  "recurrent layer")
        n_f = len(weights) // 2
        fwd = _rnn_layer(fcls, fcfg, weights[:n_f], ctx, in_bidirectional=True)
        bwd = _rnn_layer(bcls, bcfg, weights[n_f:], ctx, in_bidirectional=True)
        layer = new_layer("Bidirectional", "from_keras", layer=fwd, merge_mode=merge_mode,
                          backward_layer=bwd, name=config.get("name"))
        # fastlstm's Bidirectional rebuilds its forward copy from the config: load weights.
        return set_built_weights(layer, (None, None, np.shape(weights[0])[0]),
                                 [np.asarray(w, fwd.dtype) for w in weights])
    if class_name == "Dense":
        o = _Options(class_name, config, ctx)
        kw = dict(units=o.take("units"), use_bias=o.take_flag("use_bias", True))
        _expect_weights(o.where, weights, 1 + kw["use_bias"])
        kw["activation"] = _activation(o.take("activation"), ctx, o.where + " activation",
                                       allow_softmax=True)
        for key in ("kernel_initializer", "bias_initializer"):
            o.initializer(key, kw)
        for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            o.regularizer(key, kw)
        o.constraints()
        o.finish()
        kw.update(name=config.get("name"), dtype=_policy_name(config, weights, ctx),
                  trainable=flag(config.get("trainable", True), f"from_keras: {o.where} "
                                 "trainable"))
        layer = new_layer("Dense", "from_keras", **kw)
        return set_built_weights(layer, (None, np.shape(weights[0])[0]),
                                 [np.asarray(w, _dtype_name(weights, ctx)) for w in weights])
    if class_name == "Embedding":
        o = _Options(class_name, config, ctx)
        kw = dict(input_dim=o.take("input_dim"), output_dim=o.take("output_dim"),
                  mask_zero=o.take_flag("mask_zero", False))
        _expect_weights(o.where, weights, 1)
        o.initializer("embeddings_initializer", kw)
        for key in ("embeddings_regularizer", "activity_regularizer"):
            o.regularizer(key, kw)
        o.constraints()
        o.take("weights")
        o.finish()
        kw.update(name=config.get("name"), dtype=_policy_name(config, weights, ctx),
                  trainable=flag(config.get("trainable", True), f"from_keras: {o.where} "
                                 "trainable"))
        layer = new_layer("Embedding", "from_keras", **kw)
        return set_built_weights(layer, None, [np.asarray(w, _dtype_name(weights, ctx))
                                               for w in weights])
    if class_name == "Masking":
        o = _Options(class_name, config, ctx)
        value = o.take("mask_value", 0.0)
        o.finish()
        return new_layer("Masking", "from_keras", mask_value=_real(value, f"from_keras: {o.where} mask_value"),
                         name=config.get("name"), dtype=resolve_dtype(ctx.dtype).name)
    if class_name in ATTENTION:
        return _attention_layer(class_name, config, weights, ctx, _Options, _real, _dtype_name)
    if class_name == "Dropout":
        o = _Options(class_name, config, ctx)
        kw = dict(rate=_real(o.take("rate"), f"from_keras: {o.where} rate"),
                  noise_shape=o.take("noise_shape"))
        seed = o.take("seed")
        if isinstance(seed, int):
            kw["seed"] = seed
        o.finish()
        return new_layer("Dropout", "from_keras", name=config.get("name"),
                         dtype=resolve_dtype(ctx.dtype).name, **kw)
    if class_name in _functional.MERGE:
        return _functional.merge_from_keras(class_name, config, weights,
                                            lambda cls, cfg: _Options(cls, cfg, ctx),
                                            _dtype_name, ctx)
    if class_name in _keras_layers.NAMES:
        return _keras_layers.from_keras_layer(
            class_name, config, weights, ctx,
            options=lambda cls, cfg: _Options(cls, cfg, ctx),
            activation=lambda spec, where: _activation(spec, ctx, where, allow_softmax=True),
            convert=lambda cls, cfg, ws: _layer(cls, cfg, ws, ctx))
    raise ConversionError(f"from_keras: layer {class_name} {config.get('name', '')!r} has no "
                          f"fastlstm equivalent (supported: {list(_SUPPORTED)}, InputLayer)")


def _model_layers(model_config):
    """[(class_name, config)] of a serialised Sequential (Keras 2 or 3 form), InputLayer
    excluded; a ``_functional.Parsed`` for a functional model."""
    cls = model_config.get("class_name") if isinstance(model_config, dict) else None
    if cls in _functional.FUNCTIONAL:
        return _functional.Parsed(model_config)
    if cls != "Sequential":
        cls, config = _entry(model_config, "the model config")
        if cls in _SUPPORTED:
            return [(cls, config)]
        raise ConversionError(f"from_keras: a {cls} model is not supported; from_keras reads "
                              "functional and Sequential models and single layers")
    inner = model_config.get("config", {})
    # Keras 2.2 wrote the list of layers as the config itself
    entries = inner if isinstance(inner, list) else (
        inner.get("layers") if isinstance(inner, dict) else None)
    if not isinstance(entries, list):
        # never an empty model: the weights would be left unread
        raise ConversionError("from_keras: the Sequential config has no list of 'layers'")
    entries = [_entry(e, f"layer entry {k} of the Sequential config")
               for k, e in enumerate(entries)]
    return [e for e in entries if e[0] != "InputLayer"]


def _is_keras3_config(obj):
    """Keras 3 writes ``"module"`` next to each ``"class_name"``; Keras 2 does not."""
    if isinstance(obj, dict):
        if "class_name" in obj and "module" in obj:
            return True
        return any(_is_keras3_config(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_is_keras3_config(v) for v in obj)
    return False


def _check_masks(steps, purpose):
    """Keras passes a go_backwards layer's mask on unchanged although its output sequence is
    reversed; fastlstm reverses the mask with the output. The two compute differently when
    such a mask reaches another recurrent layer: refuse that. ``steps``: per layer,
    (kind, name, makes_mask, return_sequences, go_backwards), kind 'mask', 'rnn' or 'other'."""
    active = flipped = False
    for kind, name, makes_mask, rs, back in steps:
        if makes_mask:
            active, flipped = True, False
        elif kind == "rnn" and active:
            if flipped:
                raise ConversionError(
                    f"{purpose}: {name} receives the mask of an earlier go_backwards layer "
                    "with return_sequences=True: Keras passes that mask on unreversed while "
                    "fastlstm reverses it with the output, so the two would compute "
                    "differently")
            if not rs:
                active = False
            elif back:
                flipped = not flipped


def _keras_steps(entries):
    out = []
    for cls, cfg in entries:
        if cls == "Bidirectional":
            inner = _entry(cfg.get("layer"),
                           f"Bidirectional {cfg.get('name', '')!r}: its 'layer'")[1]
            out.append(("rnn", cls, False, bool(inner.get("return_sequences")), False))
        elif cls in _RNN:
            out.append(("rnn", f"{cls} {cfg.get('name', '')!r}", False,
                        bool(cfg.get("return_sequences")), bool(cfg.get("go_backwards"))))
        else:
            makes = cls == "Masking" or (cls == "Embedding" and bool(cfg.get("mask_zero")))
            out.append(("other", cls, makes, True, False))
    return out


def _fl_steps(layers):
    out = []
    for layer in layers:
        cls = type(layer).__name__
        if cls == "Bidirectional":
            out.append(("rnn", layer.name, False, layer.return_sequences, False))
        elif rnn_kind(layer) is not None:
            out.append(("rnn", f"{cls} {layer.name!r}", False, layer.return_sequences,
                        layer.go_backwards))
        else:
            makes = cls == "Masking" or (cls == "Embedding" and layer.mask_zero)
            out.append(("other", cls, makes, True, False))
    return out


def _build(entries, weight_lists, ctx):
    """fastlstm layers from [(class_name, config)] and their weight lists; one dtype for
    all (the ``dtype`` asked for, else the first weights')."""
    _check_masks(_keras_steps(entries), "from_keras")
    if ctx.dtype is None:
        first = next((ws[0] for ws in weight_lists if ws), None)
        ctx.dtype = resolve_dtype(None, None if first is None else first.dtype)
    return [_layer(cls, cfg, ws, ctx) for (cls, cfg), ws in zip(entries, weight_lists)]


def _build_functional(parsed, weight_lists, ctx):
    """An fl.Model from a parsed functional config and per-layer weights."""
    if ctx.dtype is None:
        first = next((ws[0] for ws in weight_lists if ws), None)
        ctx.dtype = resolve_dtype(None, None if first is None else first.dtype)
    layers = []
    for (cls, cfg), ws in zip(parsed.entries, weight_lists):
        if cls == "InputLayer":
            layers.append(_functional.input_layer(cfg, ctx))
            continue
        layer = _layer(cls, cfg, ws, ctx)
        layer.name = cfg["name"]           # the graph names its layers
        layers.append(layer)
    return _functional.build_model(parsed, layers)


def _load_into_copies(architecture, weight_lists, dtype):
    """Fresh copies of the fastlstm layers of ``architecture`` holding ``weight_lists``."""
    from ..layers import deserialize, serialize
    out = []
    for layer, ws in zip(layers_of(architecture, "from_keras", expand_cells=False),
                         weight_lists):
        spec = serialize(layer)
        if dtype is not None:
            _set_dtype(spec, dtype.name)
        copy = deserialize(spec)
        if ws:
            shape = ((None, None) if type(layer).__name__ == "Embedding"
                     else (None, None, np.shape(ws[0])[0]))
            if type(layer).__name__ in _keras_layers.NAMES and layer.built:
                shape = layer.input_shape
            set_built_weights(copy, shape, [np.asarray(w, copy.dtype) for w in ws])
        out.append(copy)
    return out


def _set_dtype(spec, dtype):
    cfg = spec["config"]
    if "dtype" in cfg:
        cfg["dtype"] = dtype
    for key in ("layer", "backward_layer"):
        if isinstance(cfg.get(key), dict):
            _set_dtype(cfg[key], dtype)


# -- weights in files ----------------------------------------------------------------------------
_NO_WEIGHTS = ("Masking", "Dropout", "InputLayer") + _keras_layers.WEIGHTLESS + \
    _functional.MERGE


def _keras3_weight_lists(h5, entries, where):
    """Per layer, its arrays from a Keras 3 weights file (group names: snake_case of the
    class name, made unique in order: lstm, lstm_1, ...)."""
    root = h5["layers"] if "layers" in h5 else None
    used, read = {}, set()
    out = []
    for cls, _ in entries:
        base = _snake_case(cls)
        key = base if base not in used else f"{base}_{used[base] + 1}"
        used[base] = used.get(base, -1) + 1
        read.add(key)
        if root is None or key not in root:
            if cls in _NO_WEIGHTS:
                out.append([])
                continue
            raise ConversionError(f"from_keras: {where} has no weights for layer {key!r} "
                                  f"({cls}); found {sorted(root) if root is not None else []}")
        g = root[key]
        if cls == "Bidirectional":
            ws = []
            for side in ("forward_layer", "backward_layer"):
                if side not in g:
                    raise ConversionError(f"from_keras: {where} has no group {g.name}/{side}")
                ws += _vars(g[side].get("cell", g[side]))
            out.append(ws)
        elif cls in _RNN:
            out.append(_vars(g["cell"] if "cell" in g else g))
        elif cls in _keras_layers.NAMES:
            out.append(_keras_layers.weights_of_group(cls, g, _vars))
        elif cls == "MultiHeadAttention":
            # its projections are sub-layers, each with a group (get_weights order)
            out.append([w for part in ("query", "key", "gate", "value", "output")
                        if f"{part}_dense" in g for w in _vars(g[f"{part}_dense"])])
        else:
            out.append(_vars(g))
    _refuse_unread(root, read, where)
    return out


def _vars(group):
    if "vars" not in group:
        return []
    v = group["vars"]
    return [_h5_array(v[k], f"from_keras: {v[k].name}") for k in sorted(v, key=int)]


def _h5_array(dset, where):
    """A dataset's values, once its dtype is known to be plain numbers (the file's links,
    storage and sizes were checked when it was opened: _check_h5)."""
    if not hasattr(dset, "dtype") or not hasattr(dset, "shape"):
        raise ConversionError(f"{where} is a group, expected a weight array")
    dt = dset.dtype
    if dt.fields is not None or dt.subdtype is not None or dt.kind not in "fiub":
        raise ConversionError(f"{where} has dtype {dt}; expected real numbers")
    return np.asarray(dset[()])


def _check_h5(h5py, h5, where):
    """Refuse an HDF5 file that makes reading it read other files or allocate more than
    ``limits.MAX_ARRAY_BYTES`` per array: soft and external links, datasets with external
    storage (raw data in another file, e.g. /etc/passwd) and virtual datasets (mapped from
    other files), and datasets whose declared shape is too large. Walks every object once,
    following hard links only, before any value is read."""
    seen, stack, count = set(), [h5], 0
    while stack:
        group = stack.pop()
        for name in group:
            count += 1
            if count > limits.MAX_ZIP_MEMBERS:
                raise ConversionError(f"from_keras: {where} holds more than "
                                      f"{limits.MAX_ZIP_MEMBERS:,} objects")
            link = group.get(name, getlink=True)
            path = f"{group.name.rstrip('/')}/{name}"
            if not isinstance(link, h5py.HardLink):
                kind = type(link).__name__
                raise ConversionError(f"from_keras: {where}: {path} is a {kind} (to "
                                      f"{getattr(link, 'filename', '')}"
                                      f"{getattr(link, 'path', '')}); links are refused, as "
                                      "they can make the converter read other files")
            obj = group[name]
            if obj.id in seen:
                continue
            seen.add(obj.id)
            if isinstance(obj, h5py.Dataset):
                if obj.external:
                    raise ConversionError(
                        f"from_keras: {where}: dataset {path} keeps its data in external "
                        f"files {[e[0] for e in obj.external]}; refused (a weights file "
                        "holds its own data)")
                if obj.is_virtual:
                    raise ConversionError(f"from_keras: {where}: dataset {path} is virtual "
                                          "(mapped from other datasets or files); refused")
                if obj.shape is not None and obj.dtype.kind != "O":
                    limits.check_array_size(obj.shape, obj.dtype, f"from_keras: {where}: "
                                            f"dataset {path}", error=ConversionError)
            elif isinstance(obj, h5py.Group):
                stack.append(obj)


def _legacy_weight_lists(h5, entries, config_names):
    """Per layer, its arrays from a legacy (Keras 2 / tf.keras) HDF5 file, by layer name."""
    g = h5["model_weights"] if "model_weights" in h5 else h5
    out = []
    for (cls, cfg), name in zip(entries, config_names):
        if not isinstance(name, str):
            raise ConversionError(f"from_keras: layer {cls} is named {name!r}; the weights "
                                  "of a legacy HDF5 file are found by the layer's name, a "
                                  "string")
        if name not in g:
            if cls in _NO_WEIGHTS:
                out.append([])
                continue
            raise ConversionError(f"from_keras: the HDF5 file has no weights for layer "
                                  f"{name!r} ({cls})")
        lg = g[name]
        names = _h5_names(_h5_text_attr(lg, "weight_names", [], names=True), f"{lg.name} weight_names")
        missing = [n for n in names if n not in lg]
        if missing:
            raise ConversionError(f"from_keras: the HDF5 file lacks the weights {missing} of "
                                  f"layer {name!r}")
        out.append([_h5_array(lg[n], f"from_keras: {lg[n].name}") for n in names])
    _refuse_unread(g, set(config_names), "the HDF5 file")
    return out


def _h5_text_attr(obj, name, default=None, names=False):
    """The value of the HDF5 attribute ``name`` of ``obj`` (a group or file), ``default`` if
    it has none. Keras writes these attributes as strings (a list of names: strings, or an
    empty array of numbers when there are none); one whose stored datatype is of another
    class is refused before it is read: the HDF5 library can crash while converting a
    damaged variable-length datatype (a string turned into a sequence by one flipped bit)."""
    import h5py
    if name not in obj.attrs:
        return default
    cls = obj.attrs.get_id(name).get_type().get_class()
    allowed = (h5py.h5t.STRING, h5py.h5t.INTEGER, h5py.h5t.FLOAT) if names \
        else (h5py.h5t.STRING,)
    if cls not in allowed:
        raise ConversionError(f"from_keras: the HDF5 attribute {obj.name} {name} is stored "
                              f"with datatype class {cls}; expected "
                              f"{'names' if names else 'a string'}")
    return obj.attrs[name]


def _h5_names(value, where):
    """An HDF5 attribute that lists names (``weight_names``, ``layer_names``) as a list of
    str; anything else is refused."""
    if np.ndim(value) != 1:
        raise ConversionError(f"from_keras: the HDF5 attribute {where} is {value!r:.100}; "
                              "expected a list of names")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in value]
    if not all(isinstance(n, str) for n in names):
        raise ConversionError(f"from_keras: the HDF5 attribute {where} holds "
                              f"{[type(n).__name__ for n in names]}; expected names (strings)")
    return names


def _refuse_unread(group, read, where):
    """Weights of layers that the config or architecture does not list mean that the two do
    not match: refuse rather than drop them."""
    def holds_arrays(obj):
        return obj.visititems(lambda _, o: True if hasattr(o, "shape") else None) is not None

    unread = [k for k in (group if group is not None else [])
              if k not in read and hasattr(group[k], "visititems") and holds_arrays(group[k])]
    if unread:
        raise ConversionError(f"from_keras: {where} holds weights for layers that the "
                              f"architecture does not have: {listing(unread)}")


def _json_object(text, where):
    """The JSON object (dict) in ``text``; other JSON values, invalid JSON, and documents
    larger or deeper than fastlstm.limits allows are refused."""
    if len(text) > limits.MAX_JSON_BYTES:
        raise ConversionError(f"from_keras: {where} holds {len(text):,} bytes of JSON, more "
                              f"than the limit of {limits.MAX_JSON_BYTES:,} "
                              "(fastlstm.limits.MAX_JSON_BYTES)")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:   # JSONDecodeError, UnicodeDecodeError
        raise ConversionError(f"from_keras: {where} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"from_keras: {where} holds a JSON {type(obj).__name__}; "
                              "expected an object")
    return limits.check_nesting(obj, f"from_keras: {where}", error=ConversionError)


# What h5py raises for a file whose structure is damaged (bad object headers, symbol table
# nodes or addresses, offsets past the end of a file in memory): the HDF5 library's errors as
# OSError, KeyError or RuntimeError, and OverflowError from h5py's in-memory file driver.
_H5_DAMAGE = (OSError, KeyError, RuntimeError, OverflowError)


def _check_global_heaps(data, where):
    """Refuse an HDF5 file (bytes or mmap) with a global heap collection whose objects do not
    tile it: variable-length strings (Keras's ``model_config``, ``weight_names``) live in
    these collections, and the HDF5 library loops without end on some inconsistent ones
    while reading such a string. Layout (HDF5 format spec, III.E, 8-byte lengths): "GCOL",
    version 1, 3 reserved bytes, the collection size; then objects of 2-byte index, 2-byte
    reference count, 4 reserved bytes, 8-byte size and the data padded to 8 bytes; index 0
    is the free space that ends it."""
    end_of_file = len(data)
    start = data.find(b"GCOL\x01")
    while start >= 0:
        if start + 16 <= end_of_file:
            size = int.from_bytes(data[start + 8:start + 16], "little")
            end = start + size
            if 16 < size and end <= end_of_file:
                p = start + 16
                while p + 16 <= end:
                    index = int.from_bytes(data[p:p + 2], "little")
                    length = int.from_bytes(data[p + 8:p + 16], "little")
                    need = length if index == 0 else 16 + (length + 7) // 8 * 8
                    if need == 0 or p + need > end:     # 0: the library never moves on
                        raise ConversionError(
                            f"from_keras: {where}: the global heap collection at byte {start} "
                            f"holds object {index} of {length:,} bytes at byte {p}, which does "
                            f"not fit the collection's {size:,} bytes; the file is damaged")
                    p += need
        start = data.find(b"GCOL\x01", start + 4)


class _open_h5:
    """``source`` opened with h5py and checked (_check_h5) before anything is read; a
    truncated or corrupt file is refused, also when the damage shows only while reading
    (inside the ``with`` block). A context manager, as h5py.File."""

    def __init__(self, h5py, source, where):
        self.where = where
        try:
            if isinstance(source, io.BytesIO):
                _check_global_heaps(source.getbuffer().tobytes(), where)
            else:
                with open(source, "rb") as f:
                    if os.fstat(f.fileno()).st_size:
                        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                            _check_global_heaps(data, where)
            self.h5 = h5py.File(source, "r")
        except (OSError, OverflowError) as exc:
            raise ConversionError(f"from_keras: {where} is not a readable HDF5 file "
                                  f"({exc})") from None
        try:
            _check_h5(h5py, self.h5, where)
        except _H5_DAMAGE as exc:
            self.h5.close()
            raise self._damaged(exc) from None
        except BaseException:
            self.h5.close()
            raise

    def _damaged(self, exc):
        return ConversionError(f"from_keras: {self.where} is a damaged HDF5 file "
                               f"({type(exc).__name__}: {exc})")

    def __enter__(self):
        return self.h5

    def __exit__(self, exc_type, exc, tb):
        self.h5.close()
        if exc is not None and isinstance(exc, _H5_DAMAGE):
            raise self._damaged(exc) from None


# Bytes of the weights file inside a .keras archive (read into memory whole).
_MAX_WEIGHTS_FILE_BYTES = 16 * 2**30


def _read_member(z, name, where, limit):
    """Member ``name`` of an open zip, its declared sizes and method checked first."""
    info = z.getinfo(name)
    limits.check_zip_member(info, where, limit, error=ConversionError)
    try:
        return z.read(info)
    except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, zlib.error) as exc:
        raise ConversionError(f"{where} is damaged ({type(exc).__name__}: {exc})") from None


def _read_keras_archive(path):
    h5py = require("h5py", "fastlstm.convert.from_keras (reading .keras files)")
    try:
        with zipfile.ZipFile(path) as z:
            limits.check_zip_archive(z, f"from_keras: {path}", error=ConversionError)
            names = set(z.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise ConversionError(f"from_keras: {path} is not a Keras 3 .keras archive (no "
                                      f"config.json / model.weights.h5; found "
                                      f"{listing(sorted(names))})")
            json_limit = limits.MAX_JSON_BYTES
            config = _json_object(
                _read_member(z, "config.json", f"from_keras: {path}: config.json", json_limit),
                f"{path}: config.json")
            meta = _json_object(
                _read_member(z, "metadata.json", f"from_keras: {path}: metadata.json",
                             json_limit), f"{path}: metadata.json") \
                if "metadata.json" in names else {}
            data = _read_member(z, "model.weights.h5", f"from_keras: {path}: model.weights.h5",
                                _MAX_WEIGHTS_FILE_BYTES)
    except zipfile.BadZipFile as exc:
        raise ConversionError(f"from_keras: {path} is a damaged zip archive ({exc})") from None
    with _open_h5(h5py, io.BytesIO(data), f"{path}: model.weights.h5") as h5:
        entries = _model_layers(config)
        weights = _keras3_weight_lists(h5, _layer_entries(entries), str(path))
    return entries, weights, meta.get("keras_version"), True


def _read_legacy_h5(path, h5):
    raw = _h5_text_attr(h5, "model_config")
    config = _json_object(raw.decode() if isinstance(raw, bytes) else raw,
                          f"{path}: model_config")
    version = _h5_text_attr(h5, "keras_version")
    if isinstance(version, bytes):
        version = version.decode()
    entries = _model_layers(config)
    names = [cfg.get("name") for _, cfg in _layer_entries(entries)]
    return (entries, _legacy_weight_lists(h5, _layer_entries(entries), names), version,
            _is_keras3_config(config))


def _layer_entries(entries):
    """The (class_name, config) list of a Sequential's entries or of a functional model."""
    return entries.entries if isinstance(entries, _functional.Parsed) else entries


def _architecture_entries(architecture, ctx_version):
    """[(class_name, config)] from a fastlstm model/layer or a Keras config (dict/JSON)."""
    from ..layers.base import Layer
    if isinstance(architecture, (str, bytes)):
        architecture = _json_object(architecture, "architecture")
    if isinstance(architecture, dict):
        limits.check_nesting(architecture, "from_keras: architecture", error=ConversionError)
        version = architecture.get("keras_version", ctx_version)
        return _model_layers(architecture), version, _is_keras3_config(architecture)
    if isinstance(architecture, Layer) or is_sequential(architecture):
        entries = [(type(layer).__name__, {"name": layer.name})
                   for layer in layers_of(architecture, "from_keras", expand_cells=False)]
        return entries, ctx_version, True
    raise TypeError("from_keras: architecture: expected a fastlstm model or layer, or a Keras "
                    f"config (dict or JSON string), got {type(architecture).__name__}")


# -- public: from_keras ---------------------------------------------------------------------
def from_keras(obj, architecture=None, dtype=None, keras_version=None,
               drop_training_options=False):
    """A fastlstm layer (from a Keras layer), ``fl.Sequential`` (from a Keras Sequential
    model or a file) or ``fl.Model`` (from a functional model or a file) computing what the
    Keras source computes.

    ``obj``: a Keras 3 layer (LSTM, GRU in both forms, SimpleRNN, Bidirectional, Dense,
    Embedding, Masking, Dropout, and those of ``_keras_layers.NAMES``; Attention,
    AdditiveAttention, MultiHeadAttention as single layers), ``keras.Sequential`` of them,
    or a functional model of them and the merge layers (fastlstm.convert._keras_functional
    says which graphs convert); or a path to a ``.keras``
    file, a legacy ``.h5``/``.hdf5`` full-model file (Keras 2, tf.keras or Keras 3), or a
    ``.weights.h5`` file together with ``architecture`` (a fastlstm model/layer whose layers
    match the file's, or a Keras model config as a dict or JSON string). Files are read with
    zipfile, json and h5py: neither Keras nor TensorFlow is needed.

    ``keras_version``: which Keras wrote the source, when the source does not say (it
    decides ``hard_sigmoid``: Keras 2's is ``HardSigmoid(0.2, 0.5)``, Keras 3's is
    ``clip(x/6 + 0.5)``). ``dtype``: float32 or float64, default the source weights' dtype.
    Dropout layers and rates are kept (fastlstm trains with them; inference ignores them).
    Initializers are mapped where fastlstm has them (a warning otherwise: they only matter on
    re-initialisation). Options fastlstm cannot express raise ``ConversionError``; weight
    constraints and unmappable regularizers (training-only) raise unless
    ``drop_training_options=True``, which also leaves out dropout rates inside recurrent
    layers.
    """
    dt = None if dtype is None else resolve_dtype(dtype)
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if not os.path.exists(path):
            raise FileNotFoundError(f"from_keras: no such file: {path}")
        if zipfile.is_zipfile(path):
            if architecture is not None:
                raise ValueError("from_keras: a .keras file holds its architecture; do not "
                                 "pass architecture=")
            entries, weights, version, k3 = _read_keras_archive(path)
        else:
            h5py = require("h5py", "fastlstm.convert.from_keras (reading .h5 files)")
            with _open_h5(h5py, path, path) as h5:
                if "model_config" in h5.attrs and architecture is None:
                    entries, weights, version, k3 = _read_legacy_h5(path, h5)
                elif architecture is None:
                    raise ValueError(f"from_keras: {path} holds weights only; pass "
                                     "architecture= (a fastlstm model, or the Keras model "
                                     "config as a dict or JSON string)")
                else:
                    entries, version, k3 = _architecture_entries(architecture, keras_version)
                    listed = _layer_entries(entries)
                    if "layers" in h5:
                        weights = _keras3_weight_lists(h5, listed, path)
                    else:
                        names = _h5_names(_h5_text_attr(h5, "layer_names", [], names=True), "layer_names")
                        weights = _legacy_weight_lists(
                            h5, listed, names if len(names) == len(listed)
                            else [cfg.get("name") for _, cfg in listed])
                    v2 = _h5_text_attr(h5, "keras_version")
                    if v2 is not None and version is None:
                        version = v2.decode() if isinstance(v2, bytes) else v2
        if keras_version is not None:
            version = keras_version
        major = _major(version)
        if major is None and k3:
            major = 3
        if architecture is not None and not isinstance(architecture, (str, bytes, dict)):
            return assemble(_load_into_copies(architecture, weights, dt),
                            model=is_sequential(architecture))
        ctx = _Context(major, dt, drop_training_options)
        if isinstance(entries, _functional.Parsed):
            return _build_functional(entries, weights, ctx)
        return assemble(_build(entries, weights, ctx), model=True)

    # a user's subclass of a Keras class counts as Keras (and is refused below by name)
    keras_mod = next((c.__module__.split(".")[0] for c in type(obj).__mro__
                      if c.__module__.split(".")[0] in ("keras", "tf_keras", "tensorflow")),
                     None)
    if keras_mod is None:
        raise TypeError(f"from_keras: expected a Keras layer or model, or a path "
                        f"to a .keras/.h5 file, got {type(obj).__name__}")
    version = keras_version or getattr(sys.modules.get(keras_mod), "__version__", None)
    if keras_mod == "tensorflow":
        version = keras_version or "2"
    ctx = _Context(_major(version), dt, drop_training_options)
    cls = type(obj).__name__
    if hasattr(obj, "layers") and cls != "Bidirectional":
        if cls in _functional.FUNCTIONAL:
            parsed = _functional.Parsed({"class_name": "Functional", "config": obj.get_config()})
            by_name = {l.name: l for l in obj.layers}
            weights = []
            for lcls, lcfg in parsed.entries:
                if lcfg["name"] not in by_name:
                    raise ConversionError(f"from_keras: {lcls} {lcfg['name']!r} of the config "
                                          "is not among the model's layers")
                weights.append([np.asarray(w) for w in by_name[lcfg["name"]].get_weights()])
            return _build_functional(parsed, weights, ctx)
        if cls != "Sequential":
            raise ConversionError(f"from_keras: a {cls} model is not supported; from_keras "
                                  "reads functional and Sequential models and single layers")
        entries = [(type(l).__name__, l.get_config()) for l in obj.layers
                   if type(l).__name__ != "InputLayer"]
        weights = [[np.asarray(w) for w in l.get_weights()] for l in obj.layers
                   if type(l).__name__ != "InputLayer"]
        return assemble(_build(entries, weights, ctx), name=obj.name, model=True)
    return _build([(cls, obj.get_config())], [[np.asarray(w) for w in obj.get_weights()]],
                  ctx)[0]


# -- fastlstm -> Keras ----------------------------------------------------------------------
def _keras_activation(act, where, allow_softmax=False):
    from .. import activations
    if getattr(act, "name", None) == "softmax" and allow_softmax:
        return "softmax"
    if act.code == activations.HARD_SIGMOID:
        if is_keras3_hard_sigmoid(act):
            return "hard_sigmoid"
        raise ConversionError(f"to_keras: {where} uses HardSigmoid(alpha={act.alpha}, "
                              f"beta={act.beta}); Keras 3 has only hard_sigmoid = "
                              "clip(x/6 + 0.5, 0, 1)")
    return act.name


def _keras_spec(keras, kind, spec, where):
    if spec is None:
        return None
    module = getattr(keras, kind)
    try:
        return module.deserialize(spec)
    except Exception as exc:
        raise ConversionError(f"to_keras: {where}: {spec!r} has no Keras equivalent "
                              f"({exc})") from None


def _to_keras_layer(keras, layer):
    from .. import initializers, regularizers
    cls = type(layer).__name__
    where = f"{cls} {layer.name!r}"
    kind = rnn_kind(layer)
    policy = getattr(layer, "dtype_policy", None)
    dtype = policy.name if policy is not None and policy.mixed else layer.dtype.name
    if kind is not None:
        if layer.stateful:
            raise ConversionError(f"to_keras: {where} has stateful=True: stateful layers are "
                                  "not converted (Keras's need a batch size fixed in the "
                                  "model's input, and the carried states would not come "
                                  "along); convert a stateful=False copy")
        if getattr(layer, "layer_norm", False):
            raise ConversionError(f"to_keras: {where} has layer_norm=True; Keras has no "
                                  f"layer-normalized {kind} layer")
        if getattr(layer, "zoneout", 0):
            raise ConversionError(f"to_keras: {where} has zoneout={layer.zoneout}; Keras has no "
                                  "zoneout, and it changes inference too (h_t = (1-p) h~_t + "
                                  "p h_{t-1})")
        if kind == "LSTM":
            if layer.use_peepholes:
                raise ConversionError(f"to_keras: {where} has use_peepholes=True; Keras's LSTM "
                                      "has no peephole connections")
            if layer.coupled_input_forget:
                raise ConversionError(f"to_keras: {where} has coupled_input_forget=True; "
                                      "Keras's LSTM has no coupled input-forget gate")
            if getattr(layer, "proj_size", 0):
                raise ConversionError(f"to_keras: {where} has proj_size={layer.proj_size}; "
                                      "Keras's LSTM has no projection")
        kw = dict(units=layer.units, activation=_keras_activation(layer.activation, where),
                  use_bias=layer.use_bias, dropout=layer.dropout,
                  recurrent_dropout=layer.recurrent_dropout, seed=layer.seed,
                  return_sequences=layer.return_sequences, return_state=layer.return_state,
                  go_backwards=layer.go_backwards, stateful=layer.stateful, unroll=layer.unroll,
                  zero_output_for_mask=layer.zero_output_for_mask,
                  name=layer.name, trainable=layer.trainable, dtype=dtype)
        if kind in ("LSTM", "GRU"):
            kw["recurrent_activation"] = _keras_activation(layer.recurrent_activation, where)
        if kind == "LSTM":
            kw["unit_forget_bias"] = layer.unit_forget_bias
        if kind == "GRU":
            kw["reset_after"] = layer.reset_after
        for key, module, kname in (
                ("kernel_initializer", initializers, "initializers"),
                ("recurrent_initializer", initializers, "initializers"),
                ("bias_initializer", initializers, "initializers"),
                ("kernel_regularizer", regularizers, "regularizers"),
                ("recurrent_regularizer", regularizers, "regularizers"),
                ("bias_regularizer", regularizers, "regularizers"),
                ("activity_regularizer", regularizers, "regularizers")):
            value = getattr(layer, key, None)
            if value is not None:
                kw[key] = _keras_spec(keras, kname, module.serialize(value), f"{where} {key}")
        out = getattr(keras.layers, kind)(**kw)
        shape = (None, None, layer.input_dim)
    elif cls == "Bidirectional":
        fwd = _to_keras_layer(keras, layer.forward_layer)[0]
        bwd = _to_keras_layer(keras, layer.backward_layer)[0]
        out = keras.layers.Bidirectional(fwd, merge_mode=layer.merge_mode, backward_layer=bwd,
                                         name=layer.name)
        shape = (None, None, layer.forward_layer.input_dim)
    elif cls == "Dense":
        kw = dict(units=layer.units, use_bias=layer.use_bias, name=layer.name,
                  trainable=layer.trainable, dtype=dtype,
                  activation=_keras_activation(layer.activation, where, allow_softmax=True))
        for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            value = getattr(layer, key, None)
            if value is not None:
                kw[key] = _keras_spec(keras, "regularizers", regularizers.serialize(value),
                                      f"{where} {key}")
        out = keras.layers.Dense(**kw)
        shape = (None, layer.input_dim)
    elif cls == "Embedding":
        kw = dict(input_dim=layer.input_dim, output_dim=layer.output_dim,
                  mask_zero=layer.mask_zero, name=layer.name, trainable=layer.trainable,
                  dtype=dtype)
        for key in ("embeddings_regularizer", "activity_regularizer"):
            value = getattr(layer, key, None)
            if value is not None:
                kw[key] = _keras_spec(keras, "regularizers", regularizers.serialize(value),
                                      f"{where} {key}")
        out = keras.layers.Embedding(**kw)
        shape = (None, None)
    elif cls == "Masking":
        out = keras.layers.Masking(mask_value=layer.mask_value, name=layer.name, dtype=dtype)
        shape = None
    elif cls in ATTENTION:
        # built here with its weights: it takes several inputs, so never sits in a Sequential
        out = _to_keras_attention(keras, layer, lambda kind, spec, key: _keras_spec(
            keras, kind, spec, f"{where} {key}"))
        shape = None
    elif cls == "Dropout":
        out = keras.layers.Dropout(layer.rate, noise_shape=layer.noise_shape, seed=layer.seed,
                                   name=layer.name, dtype=dtype)
        shape = None
    elif cls in _functional.MERGE:
        if layer.activity_regularizer is not None:
            raise ConversionError(f"to_keras: {where} has an activity_regularizer; Keras's "
                                  f"{cls} takes none")
        out, shape = _functional.merge_to_keras(keras, layer), None
    elif cls in _keras_layers.NAMES:
        out, shape = _keras_layers.to_keras_layer(
            keras, layer, activation=lambda act, w: _keras_activation(act, w, allow_softmax=True),
            regularizer=lambda value, w: _keras_spec(keras, "regularizers",
                                                     regularizers.serialize(value), w),
            convert=lambda inner: _to_keras_layer(keras, inner))
    else:
        raise ConversionError(f"to_keras: {where} has no Keras equivalent")
    return out, shape


def to_keras(obj):
    """A Keras 3 layer, ``keras.Sequential`` or functional ``keras.Model`` with the
    configuration and weights of a fastlstm layer, ``fl.Sequential`` or ``fl.Model`` (LSTM
    without peepholes/CIFG, GRU, SimpleRNN, Bidirectional, Dense, Embedding, Masking,
    Dropout, the layers of ``_keras_layers.NAMES``; the attention and merge layers as single
    layers or in a functional model, whose graph is rebuilt with Keras's functional API).
    Built layers get their weights; a Sequential model also gets a ``keras.Input`` of the
    first layer's input shape.

    Raises ``ConversionError`` for what Keras cannot express (peepholes, CIFG, a hard sigmoid
    other than Keras 3's ``clip(x/6 + 0.5)``, other layers) and for stateful layers.
    """
    keras = require("keras", "fastlstm.convert.to_keras")
    if _is_functional(obj):
        for layer in obj.layers:
            if not layer.built and layer.weight_names:
                raise ValueError(f"to_keras: {layer.name} is not built")
        return _functional.to_keras_model(keras, obj, lambda l: _to_keras_layer(keras, l))
    layers = layers_of(obj, "to_keras")
    for layer in layers:
        if type(layer).__name__ not in ("Masking", "Dropout") + _keras_layers.WEIGHTLESS \
                and not layer.built:
            raise ValueError(f"to_keras: {layer.name} is not built; call the model once or "
                             "build(input_shape) first")
    _check_masks(_fl_steps(layers), "to_keras")
    converted = [_to_keras_layer(keras, layer) for layer in layers]
    if not is_sequential(obj) and len(layers) == 1:
        out, shape = converted[0]
        if shape is not None:
            out.build(shape)
            out.set_weights(layers[0].get_weights())
        return out
    first, shape = layers[0], converted[0][1]
    if type(first).__name__ == "Embedding":
        inp = keras.Input(shape=(None,), dtype="int64")
    else:
        weighted = [l for l, (_, s) in zip(layers, converted) if s is not None]
        in_shape = getattr(obj, "input_shape", None)
        if weighted:
            first_w, shape_w = weighted[0], converted[layers.index(weighted[0])][1]
            rank = len(shape_w) if in_shape is None else len(in_shape)
            # time stays dynamic: (None, features) for sequences
            in_shape = (None,) * (rank - 1) + (_input_dim(first_w),)
        elif in_shape is None:
            raise ValueError("to_keras: cannot tell the model's input shape; call it once")
        inp = keras.Input(shape=tuple(in_shape[1:]), dtype=first.dtype.name)
    model = keras.Sequential([inp] + [k for k, _ in converted], name=getattr(obj, "name", None))
    for layer, klayer in zip(layers, model.layers):
        if layer.get_weights():
            klayer.set_weights(layer.get_weights())
    return model


def _is_functional(obj):
    from ..functional import Model
    return isinstance(obj, Model) and not is_sequential(obj)


def _input_dim(layer):
    if type(layer).__name__ == "Bidirectional":
        return layer.forward_layer.input_dim
    return layer.input_dim
