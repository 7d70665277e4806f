"""Attention layers with Keras 3 semantics, configs and weights: ``Attention`` (Luong,
dot-product or concat scores), ``AdditiveAttention`` (Bahdanau) and ``MultiHeadAttention``.

``Attention`` and ``AdditiveAttention`` take a list of inputs, as Keras does:
``layer([query, value] or [query, value, key], mask=None | [query_mask, value_mask],
training=False, return_attention_scores=False, use_causal_mask=False)``.
``MultiHeadAttention`` keeps Keras 3's call signature ``mha(query, value, key=None,
query_mask=None, value_mask=None, key_mask=None, attention_mask=None,
return_attention_scores=False, training=False, use_causal_mask=False)``.

Each has ``forward_train`` with the same arguments (less ``training``) returning ``(output,
backprop)``; with ``return_attention_scores=True`` the output is ``[output, scores]`` and
``backprop`` takes ``[d_output, d_scores]`` (None for an output that received no gradient).
``backprop`` returns ``Gradients(inputs=[d_query, d_value(, d_key)], ...)`` for the list
layers and ``inputs=[d_query, d_value, d_key or None]`` for MultiHeadAttention; without a
key, the value's gradient includes its use as the key. Everything is batched NumPy
(``matmul``), with no loop over time steps or heads.
"""
from __future__ import annotations

import math

import numpy as np

from .. import initializers, regularizers
from .base import (Gradients, Layer, activity_penalty, as_float_array, check_bool,
                   check_positive_int, check_training)
from .recurrent import _check_rate, _check_seed, _serialize_regularizer

__all__ = ["Attention", "AdditiveAttention", "MultiHeadAttention"]

# What Keras subtracts from (Attention) or puts in place of (MultiHeadAttention's masked
# softmax) a masked score, for float32 and float64 alike.
_LARGE = 1.0e9


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_backward(p, dp):
    """dL/dz of p = softmax(z) over the last axis."""
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


def _tanh_backward(t, ds):
    """(1 - t^2) * ds[..., None], for t = tanh(u) of shape (B, Tq, Tv, D) and ds the gradient
    of its sum over D, in one temporary."""
    du = t * t
    np.subtract(1, du, out=du)
    du *= ds[..., None]
    return du


def _causal(tq, tv):
    """Keras's causal mask ``(1, Tq, Tv)``: query step i sees value steps j <= i."""
    return (np.arange(tq)[:, None] >= np.arange(tv)[None, :])[None]


def _as_mask(name, m, shape):
    """A (batch, steps) mask as booleans (non-zero is True, as Keras casts)."""
    try:
        arr = np.asarray(m)
    except Exception as exc:
        raise TypeError(f"{name}: expected a boolean array of shape {shape}, "
                        f"got {type(m).__name__}") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a boolean array of shape {shape}, got dtype "
                        f"{arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    return arr.astype(bool)


def _check_3d_shape(name, shape):
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 3:
        raise ValueError(f"input_shape: {name} expects a shape (batch, time, features), "
                         f"got {shape!r}")
    return tuple(shape)


def _grads_in(d_out, n_outputs):
    """The gradients given to a backprop: ``n_outputs`` entries (None for none)."""
    if n_outputs == 1:
        if isinstance(d_out, (list, tuple)):
            if len(d_out) != 1:
                raise ValueError(f"d_out: expected one gradient, got a list of {len(d_out)}")
            return [d_out[0]]
        return [d_out]
    if not isinstance(d_out, (list, tuple)) or len(d_out) != n_outputs:
        raise ValueError(f"d_out: the layer returned [output, attention_scores]; expected a "
                         f"list of {n_outputs} gradients (None for none), got "
                         f"{type(d_out).__name__}")
    return list(d_out)


class _AttentionLayer(Layer, abstract=True):
    """What the three layers share: the one-backprop check, gradient arguments, dropout."""

    multiple_inputs = True

    def _init_dropout(self, dropout, seed):
        self.dropout = _check_rate("dropout", dropout)
        self.seed = _check_seed(seed)
        self._rng = np.random.default_rng(self.seed)

    def _keep(self, shape):
        """Inverted-dropout multipliers for the attention probabilities."""
        keep = self._rng.random(shape) >= self.dropout
        return (keep / (1.0 - self.dropout)).astype(self.dtype)

    def _check_dy(self, name, dy, shape):
        if dy is None:
            return None
        dy = as_float_array(name, dy, self.dtype)
        if dy.shape != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {dy.shape}")
        return dy


# ------------------------------------------------------------------------------ Attention
class Attention(_AttentionLayer):
    """Dot-product (Luong) attention, Keras 3's ``keras.layers.Attention``.

    Inputs ``[query (B, Tq, D), value (B, Tv, Dv)(, key (B, Tv, D))]`` (key defaults to
    value). Scores ``(B, Tq, Tv)``: ``score_mode="dot"``: ``query @ key^T`` (times ``scale``
    with ``use_scale``); ``"concat"``: ``concat_score_weight * sum(tanh(scale * (q_i +
    k_j)))`` over features. A value mask (and the causal mask) subtracts 1e9 from masked
    scores; the probabilities ``softmax(scores)`` (dropped out in training) weight the
    values; the query mask zeroes the output at masked query steps. ``return_attention_scores``
    also returns the probabilities (after dropout, as Keras).

    Weights (scalars): ``scale`` (``use_scale``), ``concat_score_weight`` (``"concat"``).
    """

    def __init__(self, use_scale=False, score_mode="dot", dropout=0.0, seed=None,
                 dtype="float32", name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.use_scale = check_bool("use_scale", use_scale)
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"score_mode: expected 'dot' or 'concat', got {score_mode!r}")
        self.score_mode = score_mode
        self._init_dropout(dropout, seed)

    # -- weights and shapes ----------------------------------------------------------------
    @property
    def weight_names(self):
        return (["scale"] if self.use_scale else []) + (
            ["concat_score_weight"] if self.score_mode == "concat" else [])

    def _input_shapes(self, input_shape):
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, (list, tuple)) \
                or len(input_shape) not in (2, 3) or not all(
                    isinstance(s, (list, tuple)) for s in input_shape):
            raise ValueError(f"input_shape: {type(self).__name__} expects a list of 2 or 3 "
                             f"shapes [query, value(, key)], got {input_shape!r}")
        shapes = [_check_3d_shape(type(self).__name__, s) for s in input_shape]
        q, v = shapes[0], shapes[1]
        k = shapes[2] if len(shapes) == 3 else v
        if q[-1] is not None and k[-1] is not None and q[-1] != k[-1]:
            raise ValueError(f"input_shape: {type(self).__name__} needs query and key with "
                             f"the same feature size, got query {q} and key {k}")
        return shapes

    def weight_shapes(self, input_shape):
        self._input_shapes(input_shape)
        return [()] * len(self.weight_names)

    def build(self, input_shape):
        shapes = self._input_shapes(input_shape)
        if self.use_scale:
            self.scale = np.ones((), self.dtype)
        if self.score_mode == "concat":
            self.concat_score_weight = np.ones((), self.dtype)
        self.input_shape = [tuple(s) for s in shapes]
        self.built = True

    def compute_output_shape(self, input_shape):
        shapes = self._input_shapes(input_shape)
        return tuple(shapes[0][:-1]) + (shapes[1][-1],)

    def compute_mask(self, inputs, mask=None):
        self._check_mask_list(mask)
        if mask is None or mask[0] is None:
            return None
        return np.asarray(mask[0]).astype(bool)

    # -- inputs ------------------------------------------------------------------------------
    def _check_mask_list(self, mask):
        if mask is not None and (not isinstance(mask, (list, tuple)) or len(mask) not in (2, 3)):
            raise ValueError(f"mask: {type(self).__name__} expects None or a list "
                             f"[query_mask, value_mask], got {mask!r:.200}")

    def _prepare(self, inputs, mask):
        cls = type(self).__name__
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(f"inputs: {cls} expects a list [query, value] or [query, value, "
                            f"key], got {type(inputs).__name__}")
        if len(inputs) not in (2, 3):
            raise ValueError(f"inputs: {cls} expects a list of 2 or 3 arrays [query, value"
                             f"(, key)], got {len(inputs)}")
        names = ("query", "value", "key")
        arrs = [as_float_array(n, a, self.dtype, ndim=3) for n, a in zip(names, inputs)]
        q, v = arrs[0], arrs[1]
        k = arrs[2] if len(arrs) == 3 else v
        if not (q.shape[0] == v.shape[0] == k.shape[0]):
            raise ValueError(f"inputs: {cls} needs one batch size, got query {q.shape}, value "
                             f"{v.shape}, key {k.shape}")
        if k.shape[1] != v.shape[1]:
            raise ValueError(f"inputs: {cls} needs key and value with the same number of "
                             f"steps, got key {k.shape} and value {v.shape}")
        if v.shape[1] == 0:
            raise ValueError(f"value: {cls} needs at least one step to attend to, got shape "
                             f"{v.shape}")
        if q.shape[2] != k.shape[2]:
            raise ValueError(f"inputs: {cls} needs query and key with the same feature size, "
                             f"got query {q.shape} and key {k.shape}")
        if not self.built:
            self.build([a.shape for a in arrs])
        self._check_features(q)
        self._check_mask_list(mask)
        q_mask = v_mask = None
        if mask is not None:
            if mask[0] is not None:
                q_mask = _as_mask("mask[0] (query_mask)", mask[0], q.shape[:2])
            if mask[1] is not None:
                v_mask = _as_mask("mask[1] (value_mask)", mask[1], v.shape[:2])
        return q, v, k, len(arrs) == 3, q_mask, v_mask

    def _check_features(self, q):
        """Hook: refuse a query the built weights do not fit (scalar weights fit all)."""

    # -- scores --------------------------------------------------------------------------------
    def _scores(self, q, k, keep_cache):
        """Scores (B, Tq, Tv) and what their backward needs."""
        if self.score_mode == "dot":
            qk = q @ k.transpose(0, 2, 1)
            return (qk * self.scale if self.use_scale else qk), qk
        u = q[:, :, None, :] + k[:, None, :, :]
        t = np.tanh(self.scale * u if self.use_scale else u)
        st = t.sum(axis=-1)
        return self.concat_score_weight * st, ((u, t, st) if keep_cache else None)

    def _scores_backward(self, ds, q, k, cache):
        """(d query, d key, weight gradients) from d scores."""
        if self.score_mode == "dot":
            qk = cache
            dws = [np.asarray((ds * qk).sum(), self.dtype)] if self.use_scale else []
            dqk = ds * self.scale if self.use_scale else ds
            return dqk @ k, dqk.transpose(0, 2, 1) @ q, dws
        u, t, st = cache
        d_csw = np.asarray((ds * st).sum(), self.dtype)
        dus = _tanh_backward(t, self.concat_score_weight * ds)
        dws = []
        if self.use_scale:
            dws.append(np.asarray(dus.reshape(-1) @ u.reshape(-1), self.dtype))
            dus *= self.scale
        return dus.sum(axis=2), dus.sum(axis=1), dws + [d_csw]

    # -- the call --------------------------------------------------------------------------------
    def _forward(self, inputs, mask, training, use_causal_mask, keep_cache):
        use_causal_mask = check_bool("use_causal_mask", use_causal_mask)
        q, v, k, has_key, q_mask, v_mask = self._prepare(inputs, mask)
        scores, cache = self._scores(q, k, keep_cache)
        smask = None if v_mask is None else v_mask[:, None, :]
        if use_causal_mask:
            causal = _causal(q.shape[1], k.shape[1])
            smask = causal if smask is None else smask & causal
        if smask is not None:
            scores = np.where(smask, scores, scores - self.dtype.type(_LARGE))
        probs = _softmax(scores)
        keep = self._keep(probs.shape) if training and self.dropout > 0 else None
        weights = probs if keep is None else probs * keep
        out = weights @ v
        if q_mask is not None:
            out = np.where(q_mask[:, :, None], out, self.dtype.type(0))
        state = (q, v, k, has_key, q_mask, cache, probs, keep, weights)
        return out, weights, state

    def __call__(self, inputs, mask=None, training=False, return_attention_scores=False,
                 use_causal_mask=False):
        training = check_training(training)
        ret = check_bool("return_attention_scores", return_attention_scores)
        out, weights, _ = self._forward(inputs, mask, training, use_causal_mask, False)
        return [out, weights] if ret else out

    def forward_train(self, inputs, mask=None, return_attention_scores=False,
                      use_causal_mask=False):
        """Training forward (dropout on): ``(output, backprop)``, the output a list
        ``[output, scores]`` with ``return_attention_scores``; ``backprop(d)`` returns
        ``Gradients(inputs=[d query, d value(, d key)], weights=[...])``."""
        ret = check_bool("return_attention_scores", return_attention_scores)
        out, weights, state = self._forward(inputs, mask, True, use_causal_mask, True)
        q, v, k, has_key, q_mask, cache, probs, keep, weights = state
        once = self._once(self.name)

        def backprop(d_out):
            once()
            grads = _grads_in(d_out, 2 if ret else 1)
            dy = self._check_dy("d_out", grads[0], out.shape)
            dw = self._check_dy("d_attention_scores", grads[1], weights.shape) if ret else None
            if dy is None:
                dy = np.zeros(out.shape, self.dtype)
            if q_mask is not None:
                dy = np.where(q_mask[:, :, None], dy, self.dtype.type(0))
            d_weights = dy @ v.transpose(0, 2, 1)
            if dw is not None:
                d_weights = d_weights + dw
            dv = weights.transpose(0, 2, 1) @ dy
            d_probs = d_weights if keep is None else d_weights * keep
            ds = _softmax_backward(probs, d_probs)
            dq, dk, dws = self._scores_backward(ds, q, k, cache)
            ins = [dq, dv, dk] if has_key else [dq, dv + dk]
            return Gradients(inputs=ins, initial_state=None, weights=dws)

        return ([out, weights] if ret else out), backprop

    def get_config(self):
        cfg = super().get_config()
        cfg.update(use_scale=self.use_scale, score_mode=self.score_mode, dropout=self.dropout,
                   seed=self.seed)
        return cfg


class AdditiveAttention(Attention):
    """Additive (Bahdanau) attention, Keras 3's ``keras.layers.AdditiveAttention``.

    As :class:`Attention`, with scores ``sum(scale * tanh(q_i + k_j))`` over the features
    (``scale``, shape ``(D,)``, Glorot-uniform initialised; without ``use_scale`` a plain
    sum). Query and key must have the same feature size ``D``.
    """

    def __init__(self, use_scale=True, dropout=0.0, seed=None, dtype="float32", name=None,
                 trainable=True):
        super().__init__(use_scale=use_scale, score_mode="dot", dropout=dropout, seed=seed,
                         dtype=dtype, name=name, trainable=trainable)

    @property
    def weight_names(self):
        return ["scale"] if self.use_scale else []

    def weight_shapes(self, input_shape):
        shapes = self._input_shapes(input_shape)
        if not self.use_scale:
            return []
        return [(check_positive_int("input_shape[0][-1]", shapes[0][-1]),)]

    def build(self, input_shape):
        shapes = self._input_shapes(input_shape)
        if self.use_scale:
            dim = check_positive_int("input_shape[0][-1]", shapes[0][-1])
            self.scale = initializers.initialize("glorot_uniform", (dim,), self.dtype,
                                                 argument="scale")
        self.input_shape = [tuple(s) for s in shapes]
        self.built = True

    def _check_features(self, q):
        if self.use_scale and q.shape[2] != self.scale.shape[0]:
            raise ValueError(f"query: {self.name} was built for {self.scale.shape[0]} "
                             f"features, got shape {q.shape}")

    def _scores(self, q, k, keep_cache):
        t = q[:, :, None, :] + k[:, None, :, :]
        np.tanh(t, out=t)
        scores = t @ self.scale if self.use_scale else t.sum(axis=-1)
        return scores, (t if keep_cache else None)

    def _scores_backward(self, ds, q, k, t):
        D = t.shape[-1]
        dws = [ds.reshape(-1) @ t.reshape(-1, D)] if self.use_scale else []
        du = _tanh_backward(t, ds)
        if self.use_scale:
            du *= self.scale
        return du.sum(axis=2), du.sum(axis=1), dws

    def get_config(self):
        cfg = super().get_config()
        del cfg["score_mode"]
        return cfg


# ------------------------------------------------------------------------------ MultiHeadAttention
def _einsum_initializer(init, input_axes, output_axes):
    """Keras's EinsumDense gives a variance-scaling initializer without axes the kernel's
    input and output axes, so fan-in/out count the projection's axes, not a convolution's."""
    if isinstance(init, initializers.VarianceScaling) and (
            init.input_axes is None or init.output_axes is None):
        return type(init).from_config(dict(init.get_config(), input_axes=list(input_axes),
                                           output_axes=list(output_axes)))
    return init


def _check_output_shape(output_shape):
    if not output_shape:           # Keras: None, 0 and () mean the query's feature size
        return None
    if isinstance(output_shape, (int, np.integer)) and not isinstance(output_shape, bool):
        output_shape = (output_shape,)
    if isinstance(output_shape, (str, bytes)) or not isinstance(output_shape, (list, tuple)):
        raise TypeError(f"output_shape: expected None, a positive integer or a tuple of them, "
                        f"got {output_shape!r}")
    return tuple(check_positive_int("output_shape", d) for d in output_shape)


def _check_attention_axes(axes):
    """None, or axes that mean the time axis of 3-D inputs (the only case supported)."""
    if axes is None:
        return None
    given = axes
    if isinstance(axes, (int, np.integer)) and not isinstance(axes, bool):
        axes = (int(axes),)
    if not isinstance(axes, (list, tuple)) or not all(
            isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes):
        raise TypeError(f"attention_axes: expected None, an int or a tuple of ints, got "
                        f"{given!r}")
    # Keras counts negative axes on the projected (B, T, heads, dim) tensor: 3 + axis.
    if tuple(a if a >= 0 else 3 + a for a in axes) != (1,):
        raise ValueError(f"attention_axes: fastlstm's MultiHeadAttention attends over the "
                         f"time axis of 3-D inputs (batch, time, features) only: None or "
                         f"(1,); got {given!r}")
    return tuple(int(a) for a in axes)


class MultiHeadAttention(_AttentionLayer):
    """Multi-head attention (Vaswani et al.), Keras 3's ``keras.layers.MultiHeadAttention``
    for 3-D inputs (batch, time, features).

    ``Q = query @ Wq + bq`` (B, T, N, key_dim), ``K = key @ Wk + bk``, ``V = value @ Wv +
    bv`` (B, S, N, value_dim); per head ``P = softmax(Q K^T / sqrt(key_dim))`` (B, N, T, S)
    under the combined mask (masked entries are exactly 0, a fully masked row is all 0);
    the output ``(P V) @ Wo + bo`` has the query's feature size or ``output_shape``.
    ``return_attention_scores`` returns ``P`` before dropout (as Keras). With ``use_gate``
    the heads' outputs are multiplied by ``sigmoid(query @ Wg + bg)`` (B, T, N, value_dim)
    before the output projection.

    Masks (all combined with AND): ``query_mask (B, T)``, ``value_mask``/``key_mask (B, S)``,
    ``attention_mask`` (``(B, T, S)``, or any shape that broadcasts to ``(B, N, T, S)``
    after Keras's expansion before the time axes), ``use_causal_mask``, ``sliding_window``.

    Weights, in Keras's order: ``query_kernel (Dq, N, key_dim)``, ``query_bias (N,
    key_dim)``, ``key_kernel (Dk, N, key_dim)``, ``key_bias``, (with ``use_gate``:
    ``gate_kernel (Dq, N, value_dim)``, ``gate_bias (N, value_dim)``), ``value_kernel (Dv, N,
    value_dim)``, ``value_bias (N, value_dim)``, ``output_kernel (N, value_dim, *out)``,
    ``output_bias (*out)`` (the biases only with ``use_bias``).
    """

    tensor_arguments = ("query", "value", "key")
    mask_arguments = {"query": "query_mask", "value": "value_mask", "key": "key_mask"}

    def __init__(self, num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True,
                 output_shape=None, attention_axes=None, sliding_window=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 use_gate=False, seed=None, dtype="float32", name=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.key_dim = check_positive_int("key_dim", key_dim)
        self.value_dim = self.key_dim if value_dim is None else check_positive_int(
            "value_dim", value_dim)
        self._init_dropout(dropout, seed)
        self.use_bias = check_bool("use_bias", use_bias)
        self.output_shape = _check_output_shape(output_shape)
        self.attention_axes = _check_attention_axes(attention_axes)
        self.sliding_window = None if sliding_window is None else check_positive_int(
            "sliding_window", sliding_window)
        self.use_gate = check_bool("use_gate", use_gate)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.kernel_regularizer = regularizers.get(kernel_regularizer, "kernel_regularizer")
        self.bias_regularizer = regularizers.get(bias_regularizer, "bias_regularizer")
        self.activity_regularizer = regularizers.get(activity_regularizer,
                                                     "activity_regularizer")
        self.last_activity_loss = 0.0

    # -- weights and shapes --------------------------------------------------------------------
    @property
    def _parts(self):
        """The projections, in Keras's weight order."""
        return ("query", "key") + (("gate",) if self.use_gate else ()) + ("value", "output")

    @property
    def weight_names(self):
        return [f"{p}_{w}" for p in self._parts
                for w in (("kernel", "bias") if self.use_bias else ("kernel",))]

    def _regularized(self):
        return [(self.kernel_regularizer if n.endswith("kernel") else self.bias_regularizer, n)
                for n in self.weight_names]

    def _shapes(self, query_shape, value_shape=None, key_shape=None):
        """(query, value, key) shapes, from three arguments or one list of 2 or 3 shapes."""
        if value_shape is None and isinstance(query_shape, (list, tuple)) and \
                len(query_shape) in (2, 3) and all(
                    isinstance(s, (list, tuple)) for s in query_shape):
            query_shape, value_shape, key_shape = (list(query_shape) + [None])[:3]
        if value_shape is None:
            raise ValueError("input_shape: MultiHeadAttention is built for query and value "
                             f"shapes (and a key's); got only {query_shape!r}")
        q = _check_3d_shape("MultiHeadAttention query", query_shape)
        v = _check_3d_shape("MultiHeadAttention value", value_shape)
        k = v if key_shape is None else _check_3d_shape("MultiHeadAttention key", key_shape)
        if v[1:-1] != k[1:-1]:
            raise ValueError("input_shape: all dimensions of value and key but the last must "
                             f"be equal, got value {v} and key {k}")
        return q, v, k

    def _weight_shapes(self, q, v, k):
        dq, dv, dk = (check_positive_int(f"{n} features", s[-1])
                      for n, s in (("query", q), ("value", v), ("key", k)))
        out = self.output_shape or (dq,)
        N = self.num_heads
        shapes = {"query_kernel": (dq, N, self.key_dim), "query_bias": (N, self.key_dim),
                  "key_kernel": (dk, N, self.key_dim), "key_bias": (N, self.key_dim),
                  "gate_kernel": (dq, N, self.value_dim), "gate_bias": (N, self.value_dim),
                  "value_kernel": (dv, N, self.value_dim), "value_bias": (N, self.value_dim),
                  "output_kernel": (N, self.value_dim) + out, "output_bias": out}
        return [shapes[n] for n in self.weight_names]

    def weight_shapes(self, query_shape, value_shape=None, key_shape=None):
        return self._weight_shapes(*self._shapes(query_shape, value_shape, key_shape))

    def build(self, query_shape, value_shape=None, key_shape=None):
        q, v, k = self._shapes(query_shape, value_shape, key_shape)
        for n, shape in zip(self.weight_names, self._weight_shapes(q, v, k)):
            if n.endswith("kernel"):
                init = (_einsum_initializer(self.kernel_initializer, (0, 1), range(2, len(shape)))
                        if n == "output_kernel" else
                        _einsum_initializer(self.kernel_initializer, (0,), (1, 2)))
                arg = "kernel_initializer"
            else:
                init, arg = self.bias_initializer, "bias_initializer"
            setattr(self, n, initializers.initialize(init, shape, self.dtype, argument=arg))
        self.input_shape = [q, v, k]
        self.built = True

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        q, _, _ = self._shapes(query_shape, value_shape, key_shape)
        return tuple(q[:-1]) + (self.output_shape or (q[-1],))

    def compute_mask(self, inputs=None, mask=None, query_mask=None, **_):
        """The query's mask (Keras 3): ``mask`` may be that mask or the list of the inputs'
        masks [query_mask, value_mask(, key_mask)]."""
        if query_mask is None and mask is not None:
            query_mask = mask[0] if isinstance(mask, (list, tuple)) else mask
        return None if query_mask is None else np.asarray(query_mask).astype(bool)

    # -- the call --------------------------------------------------------------------------------
    def _prepare(self, query, value, key):
        q = as_float_array("query", query, self.dtype, ndim=3)
        v = as_float_array("value", value, self.dtype, ndim=3)
        k = v if key is None else as_float_array("key", key, self.dtype, ndim=3)
        if not (q.shape[0] == v.shape[0] == k.shape[0]):
            raise ValueError(f"query: MultiHeadAttention needs one batch size, got query "
                             f"{q.shape}, value {v.shape}, key {k.shape}")
        if k.shape[1] != v.shape[1]:
            raise ValueError(f"key: needs as many steps as value, got key {k.shape} and value "
                             f"{v.shape}")
        if v.shape[1] == 0:
            raise ValueError(f"value: MultiHeadAttention needs at least one step to attend "
                             f"to, got shape {v.shape}")
        if not self.built:
            self.build(q.shape, v.shape, k.shape)
        else:
            for name, arr, w in (("query", q, self.query_kernel), ("value", v, self.value_kernel),
                                 ("key", k, self.key_kernel)):
                if arr.shape[-1] != w.shape[0]:
                    raise ValueError(f"{name}: {self.name} was built for {w.shape[0]} "
                                     f"features, got shape {arr.shape}")
        return q, v, k

    def _mask(self, q, v, query_mask, value_mask, key_mask, attention_mask, use_causal_mask):
        """The combined boolean mask, broadcastable to (B, N, T, S), or None (Keras's
        _compute_attention_mask and _masked_softmax)."""
        B, T, S = q.shape[0], q.shape[1], v.shape[1]
        auto = None

        def add(m):
            nonlocal auto
            auto = m if auto is None else auto & m

        if query_mask is not None:
            add(_as_mask("query_mask", query_mask, (B, T))[:, :, None])
        if value_mask is not None:
            add(_as_mask("value_mask", value_mask, (B, S))[:, None, :])
        if key_mask is not None:
            add(_as_mask("key_mask", key_mask, (B, S))[:, None, :])
        if use_causal_mask:
            add(_causal(T, S))
        if self.sliding_window is not None:
            add((np.abs(np.arange(T)[:, None] - np.arange(S)[None, :]) < self.sliding_window)[None])
        mask = None
        if attention_mask is not None:
            try:
                mask = np.asarray(attention_mask)
            except Exception as exc:
                raise TypeError(f"attention_mask: expected a boolean array such as (batch, "
                                f"{T}, {S}), got {type(attention_mask).__name__}") from exc
            if mask.dtype.kind not in "biuf" or not 2 <= mask.ndim <= 4:
                raise ValueError(f"attention_mask: expected a boolean array of 2 to 4 "
                                 f"dimensions such as (batch, {T}, {S}), got dtype "
                                 f"{mask.dtype} and shape {mask.shape}")
            mask = mask.astype(bool)
        if auto is not None:
            if mask is not None:
                try:
                    np.broadcast_shapes(mask.shape, auto.shape)
                except ValueError:
                    raise ValueError(f"attention_mask: shape {mask.shape} does not broadcast "
                                     f"with the masks of query/value ({auto.shape})") from None
                auto = mask & auto
            mask = auto
        if mask is None:
            return None
        while mask.ndim < 4:               # Keras inserts the missing axes before T
            mask = mask[..., None, :, :]
        target = (B, self.num_heads, T, S)
        if mask.ndim > 4 or any(m not in (1, t) for m, t in zip(mask.shape, target)):
            raise ValueError(f"attention_mask: expected a mask that broadcasts to (batch, "
                             f"num_heads, {T}, {S}) = {target}, got shape {mask.shape}")
        return mask

    def _project(self, x, part):
        """x (B, L, D) @ kernel (D, N, H) + bias -> (B, L, N, H)."""
        kernel = getattr(self, f"{part}_kernel")
        B, L, _ = x.shape
        y = (x.reshape(B * L, x.shape[-1]) @ kernel.reshape(kernel.shape[0], -1)).reshape(
            (B, L) + kernel.shape[1:])
        if self.use_bias:
            y += getattr(self, f"{part}_bias")
        return y

    def _forward(self, query, value, key, query_mask, value_mask, key_mask, attention_mask,
                 training, use_causal_mask, keep):
        use_causal_mask = check_bool("use_causal_mask", use_causal_mask)
        q_in, v_in, k_in = self._prepare(query, value, key)
        mask = self._mask(q_in, v_in, query_mask, value_mask, key_mask, attention_mask,
                          use_causal_mask)
        Q = self._project(q_in, "query")               # (B, T, N, Hk)
        K = self._project(k_in, "key")                 # (B, S, N, Hk)
        V = self._project(v_in, "value")               # (B, S, N, Hv)
        inv = self.dtype.type(1.0 / math.sqrt(float(self.key_dim)))
        Qh = Q.transpose(0, 2, 1, 3) * inv             # (B, N, T, Hk)
        Kh = K.transpose(0, 2, 1, 3)
        Vh = V.transpose(0, 2, 1, 3)
        scores = Qh @ Kh.transpose(0, 1, 3, 2)         # (B, N, T, S)
        if mask is not None:
            probs = np.where(mask, _softmax(np.where(mask, scores, self.dtype.type(-_LARGE))),
                             self.dtype.type(0))
        else:
            probs = _softmax(scores)
        drop = self._keep(probs.shape) if training and self.dropout > 0 else None
        weights = probs if drop is None else probs * drop
        O = (weights @ Vh).transpose(0, 2, 1, 3)       # (B, T, N, Hv)
        G = None
        if self.use_gate:                              # Keras's gated attention
            G = 0.5 * (1.0 + np.tanh(0.5 * self._project(q_in, "gate")))     # sigmoid
            O_ungated, O = O, O * G
        B, T = O.shape[:2]
        out_shape = self.output_kernel.shape[2:]
        Of = O.reshape(B * T, self.num_heads * self.value_dim)
        y = Of @ self.output_kernel.reshape(Of.shape[1], -1)
        if self.use_bias:
            y += self.output_bias.reshape(-1)
        y = y.reshape((B, T) + out_shape)
        state = None
        if keep:
            state = dict(q=q_in, v=v_in, k=k_in, Q=Q, K=K, V=V, Qh=Qh, Kh=Kh, Vh=Vh, mask=mask,
                         probs=probs, drop=drop, weights=weights, Of=Of, key_given=key is not None,
                         G=G, O=O_ungated if G is not None else None)
        return y, probs, state

    def __call__(self, query, value, key=None, query_mask=None, value_mask=None, key_mask=None,
                 attention_mask=None, return_attention_scores=False, training=False,
                 use_causal_mask=False):
        training = check_training(training)
        ret = check_bool("return_attention_scores", return_attention_scores)
        y, probs, _ = self._forward(query, value, key, query_mask, value_mask, key_mask,
                                    attention_mask, training, use_causal_mask, False)
        return [y, probs] if ret else y

    def forward_train(self, query, value, key=None, query_mask=None, value_mask=None,
                      key_mask=None, attention_mask=None, return_attention_scores=False,
                      use_causal_mask=False):
        """Training forward (dropout on): ``(output, backprop)``, the output a list
        ``[output, scores]`` with ``return_attention_scores``; ``backprop(d)`` returns
        ``Gradients(inputs=[d query, d value, d key or None], weights=[...])`` and the
        activity penalty (on the four projections, as Keras's sublayers) is in
        ``last_activity_loss``."""
        self.check_float("forward_train")
        ret = check_bool("return_attention_scores", return_attention_scores)
        y, probs, st = self._forward(query, value, key, query_mask, value_mask, key_mask,
                                     attention_mask, True, use_causal_mask, True)
        act = {}
        self.last_activity_loss = 0.0
        if self.activity_regularizer is not None:
            outs = [("query", st["Q"]), ("key", st["K"]), ("value", st["V"]), ("output", y)]
            if self.use_gate:
                outs.append(("gate", st["G"]))
            for part, arr in outs:
                loss, act[part] = activity_penalty(self.activity_regularizer, arr)
                self.last_activity_loss += loss
        once = self._once(self.name)

        def backprop(d_out):
            once()
            grads = _grads_in(d_out, 2 if ret else 1)
            dy = self._check_dy("d_out", grads[0], y.shape)
            dp_out = self._check_dy("d_attention_scores", grads[1], probs.shape) if ret else None
            if dy is None:
                dy = np.zeros(y.shape, self.dtype)
            if "output" in act:
                dy = dy + act["output"]
            B, T = y.shape[:2]
            dyf = dy.reshape(B * T, int(np.prod(y.shape[2:])))
            Wo = self.output_kernel.reshape(st["Of"].shape[1], -1)
            dws = {"output_kernel": (st["Of"].T @ dyf).reshape(self.output_kernel.shape)}
            if self.use_bias:
                dws["output_bias"] = dyf.sum(axis=0).reshape(self.output_bias.shape)
            dO = (dyf @ Wo.T).reshape(B, T, self.num_heads, self.value_dim)
            d_gate = None
            if self.use_gate:
                G = st["G"]
                dG = dO * st["O"] + act.get("gate", 0)
                dO = dO * G
                d_gate = (dG * G * (1 - G)).transpose(0, 2, 1, 3)     # (B, N, T, Hv)
            dO = dO.transpose(0, 2, 1, 3)
            d_weights = dO @ st["Vh"].transpose(0, 1, 3, 2)          # (B, N, T, S)
            dVh = st["weights"].transpose(0, 1, 3, 2) @ dO          # (B, N, S, Hv)
            d_probs = d_weights if st["drop"] is None else d_weights * st["drop"]
            if dp_out is not None:
                d_probs = d_probs + dp_out
            # Masked entries of probs are 0 and their gradient is cut: P (dP - sum(dP P)).
            if st["mask"] is not None:
                d_probs = np.where(st["mask"], d_probs, self.dtype.type(0))
            d_scores = _softmax_backward(st["probs"], d_probs)
            inv = self.dtype.type(1.0 / math.sqrt(float(self.key_dim)))
            dQh = (d_scores @ st["Kh"]) * inv                        # (B, N, T, Hk)
            dKh = d_scores.transpose(0, 1, 3, 2) @ st["Qh"]          # (B, N, S, Hk)
            d_in = {}
            parts = [("query", dQh, st["q"]), ("key", dKh, st["k"]), ("value", dVh, st["v"])]
            if d_gate is not None:
                parts.append(("gate", d_gate, st["q"]))
            for part, dP, x in parts:
                dP = dP.transpose(0, 2, 1, 3)                        # (B, L, N, H)
                if part in act and part != "gate":       # the gate's is in d_gate already
                    dP = dP + act[part]
                L = x.shape[1]
                dPf = dP.reshape(B * L, dP.shape[2] * dP.shape[3])
                kernel = getattr(self, f"{part}_kernel")
                xf = x.reshape(B * L, x.shape[-1])
                dws[f"{part}_kernel"] = (xf.T @ dPf).reshape(kernel.shape)
                if self.use_bias:
                    dws[f"{part}_bias"] = dPf.sum(axis=0).reshape(kernel.shape[1:])
                d_in[part] = (dPf @ kernel.reshape(kernel.shape[0], -1).T).reshape(x.shape)
            if d_gate is not None:
                d_in["query"] = d_in["query"] + d_in.pop("gate")
            if st["key_given"]:
                inputs = [d_in["query"], d_in["value"], d_in["key"]]
            else:
                inputs = [d_in["query"], d_in["value"] + d_in["key"], None]
            return Gradients(inputs=inputs, initial_state=None,
                             weights=[dws[n] for n in self.weight_names])

        return ([y, probs] if ret else y), backprop

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            num_heads=self.num_heads, key_dim=self.key_dim, value_dim=self.value_dim,
            dropout=self.dropout, use_bias=self.use_bias,
            output_shape=None if self.output_shape is None else list(self.output_shape),
            attention_axes=None if self.attention_axes is None else list(self.attention_axes),
            sliding_window=self.sliding_window, use_gate=self.use_gate,
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            bias_initializer=initializers.serialize(self.bias_initializer),
            kernel_regularizer=_serialize_regularizer(self.kernel_regularizer),
            bias_regularizer=_serialize_regularizer(self.bias_regularizer),
            activity_regularizer=_serialize_regularizer(self.activity_regularizer),
            seed=self.seed)
        return cfg
