"""Keras <-> fastlstm for the attention layers (Attention, AdditiveAttention,
MultiHeadAttention): configs mapped key by key, weights in the same order and layouts.

These layers take several inputs, so they convert one layer at a time (``from_keras(layer)``,
``to_keras(layer)``), never inside a Sequential model. A layer is built for the input
shapes its weights imply: feature sizes from the kernels (MultiHeadAttention) or the scale
(AdditiveAttention), unknown elsewhere.
"""
from __future__ import annotations

import numpy as np

from ._common import ConversionError, flag, new_layer, set_built_weights

ATTENTION = ("Attention", "AdditiveAttention", "MultiHeadAttention")


def from_keras_layer(class_name, config, weights, ctx, options, real, dtype_name):
    """The fastlstm layer for a Keras attention layer's config and weights; ``options``
    walks the config (``_keras._Options``), ``real`` reads a number option and
    ``dtype_name`` picks the dtype (helpers of fastlstm.convert._keras)."""
    o = options(class_name, config, ctx)
    kw = dict(dropout=real(o.take("dropout", 0.0), f"from_keras: {o.where} dropout"))
    seed = o.take("seed")
    if isinstance(seed, int):
        kw["seed"] = seed
    if class_name == "MultiHeadAttention":
        kw.update(num_heads=o.take("num_heads"), key_dim=o.take("key_dim"),
                  value_dim=o.take("value_dim"), use_bias=o.take_flag("use_bias", True),
                  output_shape=o.take("output_shape"),
                  attention_axes=o.take("attention_axes"),
                  sliding_window=o.take("sliding_window"))
        kw["use_gate"] = o.take_flag("use_gate", False)
        o.require("flash_attention", None, "fastlstm computes attention explicitly")
        for key in ("kernel_initializer", "bias_initializer"):
            o.initializer(key, kw)
        for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            o.regularizer(key, kw)
        o.constraints()
    else:
        kw["use_scale"] = o.take_flag("use_scale", class_name == "AdditiveAttention")
        if class_name == "Attention":
            kw["score_mode"] = o.take("score_mode", "dot")
        if o.take("activity_regularizer") is not None and not ctx.drop:
            raise ConversionError(f"from_keras: {o.where} has an activity_regularizer; "
                                  "fastlstm's attention layers take none; pass "
                                  "drop_training_options=True to leave it out (inference is "
                                  "unchanged)")
    o.finish()
    kw.update(name=config.get("name"), dtype=dtype_name(weights, ctx),
              trainable=flag(config.get("trainable", True), f"from_keras: {o.where} trainable"))
    layer = new_layer(class_name, "from_keras", **kw)
    weights = [np.asarray(w, kw["dtype"]) for w in weights]
    if class_name == "MultiHeadAttention":
        if not weights:
            return layer                   # an unbuilt Keras layer: built on first call
        step = 2 if layer.use_bias else 1
        parts = 5 if layer.use_gate else 4
        value = (parts - 2) * step                 # the value kernel's index
        if len(weights) != parts * step or any(np.ndim(weights[i]) != 3
                                               for i in (0, step, value)):
            raise ConversionError(f"from_keras: {o.where}: expected {parts * step} weight "
                                  f"arrays ({', '.join(layer.weight_names)}); got shapes "
                                  f"{[np.shape(w) for w in weights]}")
        dq, dk, dv = (np.shape(weights[i])[0] for i in (0, step, value))
        return set_built_weights(layer, [(None, None, dq), (None, None, dv), (None, None, dk)],
                                 weights)
    if not weights and layer.weight_names:
        return layer
    dim = np.shape(weights[0])[0] if class_name == "AdditiveAttention" and weights and \
        np.ndim(weights[0]) == 1 else None
    return set_built_weights(layer, [(None, None, dim), (None, None, dim)], weights)


def to_keras_layer(keras, layer, spec):
    """A built Keras layer with the configuration and weights of a built fastlstm attention
    layer; ``spec(kind, value, key)`` turns a fastlstm initializer/regularizer into Keras's
    (``None`` for none)."""
    from .. import initializers, regularizers
    cls = type(layer).__name__
    common = dict(name=layer.name, dtype=layer.dtype.name, trainable=layer.trainable,
                  dropout=layer.dropout, seed=layer.seed)
    if cls == "MultiHeadAttention":
        kw = dict(common, num_heads=layer.num_heads, key_dim=layer.key_dim,
                  value_dim=layer.value_dim, use_bias=layer.use_bias,
                  output_shape=layer.output_shape, attention_axes=layer.attention_axes,
                  sliding_window=layer.sliding_window, use_gate=layer.use_gate,
                  kernel_initializer=spec("initializers",
                                          initializers.serialize(layer.kernel_initializer),
                                          "kernel_initializer"),
                  bias_initializer=spec("initializers",
                                        initializers.serialize(layer.bias_initializer),
                                        "bias_initializer"))
        for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            value = getattr(layer, key)
            if value is not None:
                kw[key] = spec("regularizers", regularizers.serialize(value), key)
        out = keras.layers.MultiHeadAttention(**kw)
        out.build(*layer.input_shape)
    else:
        kw = dict(common, use_scale=layer.use_scale)
        if cls == "Attention":
            kw["score_mode"] = layer.score_mode
        out = getattr(keras.layers, cls)(**kw)
        shapes = [tuple(s) for s in layer.input_shape]
        if cls == "AdditiveAttention" and layer.use_scale:
            dim = layer.scale.shape[0]
            shapes = [s[:-1] + (dim,) for s in shapes]
        out.build(shapes)
    out.set_weights(layer.get_weights())
    return out
