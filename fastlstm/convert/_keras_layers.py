"""Keras <-> fastlstm for the layers around the recurrent ones: Conv1D,
LayerNormalization, GlobalAveragePooling1D, GlobalMaxPooling1D, RepeatVector, Flatten,
Activation and TimeDistributed. Called from ``_keras`` (one entry point each way)."""
from __future__ import annotations

import numpy as np

from ._common import ConversionError, flag, new_layer, resolve_dtype, set_built_weights

NAMES = ("Conv1D", "LayerNormalization", "GlobalAveragePooling1D", "GlobalMaxPooling1D",
         "RepeatVector", "Flatten", "Activation", "TimeDistributed")
# Layers Keras saves without variables (an empty group, or none in older files).
WEIGHTLESS = ("GlobalAveragePooling1D", "GlobalMaxPooling1D", "RepeatVector", "Flatten",
              "Activation")


def weights_of_group(class_name, group, read_vars):
    """A layer's arrays in a Keras 3 weights file: TimeDistributed keeps its layer's
    variables one group down."""
    if class_name == "TimeDistributed":
        return read_vars(group["layer"]) if "layer" in group else []
    return read_vars(group)


def _common(o, config, ctx, weights):
    dtype = resolve_dtype(ctx.dtype, weights[0].dtype if weights else None).name
    return dict(name=config.get("name"), dtype=dtype,
                trainable=flag(config.get("trainable", True), f"from_keras: {o.where} trainable"))


def _norm_build_shape(layer, config, gamma_shape):
    """A build shape for a converted LayerNormalization: the saved one (build_config) when
    the source has it, else the smallest rank its axes need, with the weights' sizes."""
    saved = (config.get("build_config") or {}).get("input_shape")
    if isinstance(saved, (list, tuple)):
        return tuple(saved)
    axes = layer.axis if isinstance(layer.axis, list) else [layer.axis]
    rank = max([3] + [a + 1 for a in axes if a >= 0] + [-a + 1 for a in axes if a < 0])
    shape = [None] * rank
    for a, n in zip(sorted(a % rank for a in axes), gamma_shape):
        shape[a] = int(n)
    return tuple(shape)


def from_keras_layer(class_name, config, weights, ctx, options, activation, convert):
    """The fastlstm layer for one Keras layer of ``NAMES``. ``options(cls, cfg)`` walks a
    config (``_keras._Options``), ``activation`` maps an activation, ``convert`` converts a
    wrapped layer entry (class_name, config, weights)."""
    o = options(class_name, config)
    if class_name == "Conv1D":
        kw = dict(filters=o.take("filters"), kernel_size=o.take("kernel_size"),
                  strides=o.take("strides", 1), padding=o.take("padding", "valid"),
                  data_format=o.take("data_format"), dilation_rate=o.take("dilation_rate", 1),
                  groups=o.take("groups", 1), use_bias=o.take_flag("use_bias", True))
        kw["activation"] = activation(o.take("activation"), o.where + " activation")
        for key in ("kernel_initializer", "bias_initializer"):
            o.initializer(key, kw)
        for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            o.regularizer(key, kw)
        o.constraints()
        o.finish()
        if len(weights) != 1 + bool(kw["use_bias"]) or np.ndim(weights[0]) != 3:
            raise ConversionError(f"from_keras: {o.where}: expected a 3-D kernel"
                                  f"{' and a bias' if kw['use_bias'] else ''}; got shapes "
                                  f"{[np.shape(w) for w in weights]}")
        kw.update(_common(o, config, ctx, weights))
        layer = new_layer("Conv1D", "from_keras", **kw)
        return set_built_weights(layer, (None, None, np.shape(weights[0])[1]),
                                 [np.asarray(w, kw["dtype"]) for w in weights])
    if class_name == "LayerNormalization":
        kw = dict(axis=o.take("axis", -1), epsilon=o.take("epsilon", 1e-3),
                  center=o.take_flag("center", True), scale=o.take_flag("scale", True))
        if o.take_flag("rms_scaling", False):
            raise ConversionError(f"from_keras: {o.where} has rms_scaling=True (deprecated in "
                                  "Keras); fastlstm's LayerNormalization has no such mode")
        for key in ("beta_initializer", "gamma_initializer"):
            o.initializer(key, kw)
        for key in ("beta_regularizer", "gamma_regularizer"):
            o.regularizer(key, kw)
        for key in ("beta_constraint", "gamma_constraint"):
            if o.take(key) is not None and not ctx.drop:
                raise ConversionError(f"from_keras: {o.where} has {key}; fastlstm has no "
                                      "weight constraints; pass drop_training_options=True to "
                                      "leave it out (inference is unchanged)")
        o.finish()
        kw.update(_common(o, config, ctx, weights))
        layer = new_layer("LayerNormalization", "from_keras", **kw)
        if len(weights) != len(layer.weight_names):
            raise ConversionError(f"from_keras: {o.where}: expected {len(layer.weight_names)} "
                                  f"weight arrays, got {len(weights)}")
        if not weights:
            return layer
        return set_built_weights(layer, _norm_build_shape(layer, config, np.shape(weights[0])),
                                 [np.asarray(w, kw["dtype"]) for w in weights])
    if class_name == "TimeDistributed":
        inner = o.take("layer")
        o.finish()
        if not isinstance(inner, dict) or not isinstance(inner.get("class_name"), str):
            raise ConversionError(f"from_keras: {o.where} has no layer entry")
        wrapped = convert(inner["class_name"], inner.get("config", {}), weights)
        layer = new_layer("TimeDistributed", "from_keras", layer=wrapped,
                          **{k: v for k, v in _common(o, config, ctx, weights).items()
                             if k != "dtype"})
        if wrapped.built and wrapped.input_shape is not None:
            layer.build((None, None) + tuple(wrapped.input_shape[1:]))
        return layer
    # weightless layers
    if weights:
        raise ConversionError(f"from_keras: {o.where}: expected no weights, got "
                              f"{len(weights)} arrays")
    if class_name in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
        kw = dict(data_format=o.take("data_format"), keepdims=o.take_flag("keepdims", False))
    elif class_name == "RepeatVector":
        kw = dict(n=o.take("n"))
    elif class_name == "Flatten":
        kw = dict(data_format=o.take("data_format"))
    else:
        kw = dict(activation=activation(o.take("activation"), o.where + " activation"))
    o.finish()
    kw.update(_common(o, config, ctx, weights))
    return new_layer(class_name, "from_keras", **kw)


def to_keras_layer(keras, layer, activation, regularizer, convert):
    """(Keras layer, build shape or None) for a fastlstm layer of ``NAMES``.
    ``activation(act, where)`` and ``regularizer(spec, where)`` map options; ``convert``
    converts a wrapped layer the same way."""
    cls = type(layer).__name__
    where = f"{cls} {layer.name!r}"
    common = dict(name=layer.name, trainable=layer.trainable, dtype=layer.dtype.name)
    if cls == "Conv1D":
        kw = dict(filters=layer.filters, kernel_size=layer.kernel_size, strides=layer.strides,
                  padding=layer.padding, dilation_rate=layer.dilation_rate,
                  use_bias=layer.use_bias, activation=activation(layer.activation, where),
                  **common)
        for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            if getattr(layer, key) is not None:
                kw[key] = regularizer(getattr(layer, key), f"{where} {key}")
        return keras.layers.Conv1D(**kw), (None, None, layer.input_dim)
    if cls == "LayerNormalization":
        kw = dict(axis=layer.axis, epsilon=layer.epsilon, center=layer.center,
                  scale=layer.scale, **common)
        for key in ("beta_regularizer", "gamma_regularizer"):
            if getattr(layer, key) is not None:
                kw[key] = regularizer(getattr(layer, key), f"{where} {key}")
        out = keras.layers.LayerNormalization(**kw)
        return out, (layer.input_shape if layer.built and layer.weight_names else None)
    if cls == "TimeDistributed":
        inner, inner_shape = convert(layer.layer)
        out = keras.layers.TimeDistributed(inner, **common)
        shape = None if inner_shape is None else (None, None) + tuple(inner_shape[1:])
        return out, shape
    if layer.activity_regularizer is not None:
        raise ConversionError(f"to_keras: {where} has an activity_regularizer; Keras's "
                              f"{cls} takes none")
    if cls in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
        out = getattr(keras.layers, cls)(data_format=layer.data_format,
                                         keepdims=layer.keepdims, **common)
    elif cls == "RepeatVector":
        out = keras.layers.RepeatVector(layer.n, **common)
    elif cls == "Flatten":
        out = keras.layers.Flatten(data_format=layer.data_format, **common)
    else:
        out = keras.layers.Activation(activation(layer.activation, where), **common)
    return out, None
