"""Wrappers (Keras 3): ``Bidirectional``, a recurrent layer run over the sequence in both
directions, and ``TimeDistributed``, a layer applied to every timestep.

``Bidirectional``:

Keras semantics, kept exactly:

- the forward copy is rebuilt from the layer's config (named ``forward_<name>``), the backward
  copy from the same config with ``go_backwards`` flipped (named ``backward_<name>``), so the
  wrapped instance's weights are not reused; weights are ordered forward then backward;
- with ``return_sequences`` the backward copy's output (in its own step order, i.e. reversed)
  is flipped back to input order before merging, and masked timesteps of both directions are
  zeros: as Keras, the wrapper sets both copies' ``zero_output_for_mask`` to their
  ``return_sequences`` (whatever the wrapped layer had); without it the last outputs merge;
- ``merge_mode``: ``"concat"`` (last axis), ``"sum"``, ``"mul"``, ``"ave"``, or ``None``
  (a list ``[forward, backward]``);
- ``return_state``: ``[output(s)..., forward states..., backward states...]``;
- ``initial_state``: the forward states then the backward states (half each).
"""
from __future__ import annotations

import numpy as np

from .. import devices
from .base import Gradients, Layer, as_float_array, check_dtype
from .recurrent import RecurrentLayer

__all__ = ["Bidirectional", "TimeDistributed"]

_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _removeprefix(name, prefix):
    return name[len(prefix):] if name.startswith(prefix) else name


def _copy_layer(layer, name, **changes):
    cfg = dict(layer.get_config())
    cfg.update(changes, name=name)
    return type(layer).from_config(cfg)


class Bidirectional(Layer):
    """Runs ``layer`` forwards and a copy of it backwards and merges their outputs.

    ``layer`` and ``backward_layer`` are recurrent layers (LSTM, GRU, SimpleRNN). A given
    ``backward_layer`` is used as it is and must have the opposite ``go_backwards`` and the
    same ``stateful``, ``return_sequences`` and ``return_state`` as ``layer``.
    """

    runs_on_gpu = True

    def __init__(self, layer, merge_mode="concat", backward_layer=None, name=None, dtype=None,
                 trainable=True):
        if not isinstance(layer, RecurrentLayer):
            raise TypeError(f"layer: expected a recurrent layer (LSTM, GRU, SimpleRNN), "
                            f"got {type(layer).__name__}")
        if backward_layer is not None and not isinstance(backward_layer, RecurrentLayer):
            raise TypeError(f"backward_layer: expected a recurrent layer or None, "
                            f"got {type(backward_layer).__name__}")
        if not (merge_mode is None or (isinstance(merge_mode, str) and merge_mode in _MERGE_MODES)):
            raise ValueError(f"merge_mode: expected one of {list(_MERGE_MODES)}, "
                             f"got {merge_mode!r}")
        if dtype is not None and check_dtype(dtype) != layer.dtype:
            raise ValueError(f"dtype: Bidirectional takes the dtype of its layer "
                             f"({layer.dtype.name}), got {dtype!r}")
        super().__init__(name=name, dtype=layer.dtype, trainable=trainable)
        if getattr(layer, "_input_shape_arg", None) is not None:    # LSTM(..., input_shape=)
            self._input_shape_arg = layer._input_shape_arg
        self.forward_layer = _copy_layer(layer, "forward_" + _removeprefix(layer.name, "forward_"))
        if backward_layer is None:
            self.backward_layer = _copy_layer(
                layer, "backward_" + _removeprefix(layer.name, "backward_"),
                go_backwards=not layer.go_backwards)
        else:
            self.backward_layer = backward_layer
        self._verify()
        for sub in (self.forward_layer, self.backward_layer):      # Keras forces it so
            sub.zero_output_for_mask = sub.return_sequences
        self.merge_mode = merge_mode
        self.last_activity_loss = 0.0
        if self.backward_layer.device != self.forward_layer.device:
            self.backward_layer.to(self.forward_layer.device)
        self.device = self.forward_layer.device

    def to(self, device):
        """Move both directions to ``device`` ("cpu" or "cuda"); returns the layer."""
        device = devices.check_device(device)
        self.forward_layer.to(device)
        self.backward_layer.to(device)
        self.device = device
        return self

    def _verify(self):
        f, b = self.forward_layer, self.backward_layer
        if f.go_backwards == b.go_backwards:
            raise ValueError(f"backward_layer: expected go_backwards={not f.go_backwards} "
                             f"(the opposite of the forward layer's), got {b.go_backwards}")
        for attr in ("stateful", "return_sequences", "return_state"):
            if getattr(f, attr) != getattr(b, attr):
                raise ValueError(f"backward_layer: expected {attr}={getattr(f, attr)} as the "
                                 f"forward layer, got {getattr(b, attr)}")
        if f.dtype != b.dtype:
            raise ValueError(f"backward_layer: expected dtype {f.dtype.name} as the forward "
                             f"layer, got {b.dtype.name}")
        if len(f.state_names) != len(b.state_names):
            raise ValueError(f"backward_layer: expected {len(f.state_names)} states as the "
                             f"forward layer, got {len(b.state_names)}")

    # -- attributes of the wrapped pair --------------------------------------------------
    @property
    def return_sequences(self):
        return self.forward_layer.return_sequences

    @property
    def return_state(self):
        return self.forward_layer.return_state

    @property
    def stateful(self):
        return self.forward_layer.stateful

    @property
    def states(self):
        f, b = self.forward_layer.states, self.backward_layer.states
        if f is None or b is None:
            return None
        return list(f) + list(b)

    @property
    def built(self):
        return self.forward_layer.built and self.backward_layer.built

    @built.setter
    def built(self, value):       # the base __init__ sets it; the pair decides
        pass

    @property
    def weights(self):
        return self.forward_layer.weights + self.backward_layer.weights

    @property
    def weight_names(self):
        return ([f"forward/{n}" for n in self.forward_layer.weight_names]
                + [f"backward/{n}" for n in self.backward_layer.weight_names])

    def get_weights(self):
        return self.forward_layer.get_weights() + self.backward_layer.get_weights()

    def set_weights(self, weights):
        if not self.built:
            raise ValueError(f"{self.name}: set_weights before the layer is built; call it once "
                             "or call build(input_shape) first")
        weights = list(weights)
        nf = len(self.forward_layer.weight_names)
        nb = len(self.backward_layer.weight_names)
        if len(weights) != nf + nb:
            raise ValueError(f"weights: {self.name} expects {nf + nb} arrays ({nf} forward then "
                             f"{nb} backward), got {len(weights)}")
        self.forward_layer.set_weights(weights[:nf])
        self.backward_layer.set_weights(weights[nf:])

    def weight_shapes(self, input_shape):
        fwd = self.forward_layer.weight_shapes(input_shape)
        bwd = self.backward_layer.weight_shapes(input_shape)
        return None if fwd is None or bwd is None else fwd + bwd

    def build(self, input_shape):
        if not self.forward_layer.built:
            self.forward_layer.build(input_shape)
        if not self.backward_layer.built:
            self.backward_layer.build(input_shape)
        self.input_shape = tuple(input_shape)

    def _record_shape(self):
        if self.input_shape is None:           # built lazily by the sublayers' first call
            self.input_shape = self.forward_layer.input_shape

    # -- states --------------------------------------------------------------------------
    def get_initial_state(self, batch_size):
        """Zero states: the forward layer's, then the backward layer's."""
        return (self.forward_layer.get_initial_state(batch_size)
                + self.backward_layer.get_initial_state(batch_size))

    def reset_states(self, rows=None):
        """Reset the carried states of both directions (all rows, or only ``rows``)."""
        if not self.stateful:
            raise ValueError(f"{self.name}: reset_states needs stateful=True")
        self.forward_layer.reset_states(rows)
        self.backward_layer.reset_states(rows)

    # -- shapes and masks ----------------------------------------------------------------
    def compute_output_shape(self, input_shape):
        out = self.forward_layer.compute_output_shape(input_shape)
        states = []
        if self.return_state:
            out, states = out[0], list(out[1:])
        if self.merge_mode == "concat":
            out = tuple(out[:-1]) + (2 * out[-1],)
        outs = [out, out] if self.merge_mode is None else [out]
        if self.return_state:
            return outs + states + states
        return outs if self.merge_mode is None else out

    def compute_mask(self, inputs, mask=None):
        if not self.return_sequences or mask is None:
            return [None, None] if self.merge_mode is None else None
        mask = mask if devices.is_device_array(mask) else np.asarray(mask)
        return [mask, mask] if self.merge_mode is None else mask

    # -- calls ---------------------------------------------------------------------------
    def _split_state(self, initial_state):
        if initial_state is None:
            return None, None
        n = len(self.forward_layer.state_names)
        if not isinstance(initial_state, (list, tuple)) or len(initial_state) != 2 * n:
            got = len(initial_state) if isinstance(initial_state, (list, tuple)) else 1
            raise ValueError(f"initial_state: {self.name} expects {2 * n} arrays (the forward "
                             f"layer's {n} states, then the backward layer's {n}), got {got}")
        return list(initial_state[:n]), list(initial_state[n:])

    def _merge(self, y, y_rev):
        mode = self.merge_mode
        if mode == "concat":
            return self.xp.concatenate([y, y_rev], axis=-1)
        if mode == "sum":
            return y + y_rev
        if mode == "ave":
            return (y + y_rev) / self.dtype.type(2)
        if mode == "mul":
            return y * y_rev
        return [y, y_rev]

    def _assemble(self, of, ob):
        """Outputs of the two layers -> (outputs, y, y_rev) as Keras returns them."""
        if self.return_state:
            y, sf = of[0], list(of[1:])
            yb, sb = ob[0], list(ob[1:])
        else:
            y, yb, sf, sb = of, ob, [], []
        y_rev = self.xp.ascontiguousarray(yb[:, ::-1]) if self.return_sequences else yb
        merged = self._merge(y, y_rev)
        if self.return_state:
            head = merged if self.merge_mode is None else [merged]
            return head + sf + sb, y, y_rev
        return merged, y, y_rev

    def __call__(self, x, mask=None, initial_state=None, training=False, sequence_lengths=None):
        """sequence_lengths: as the recurrent layers' (the backward direction then starts at
        each row's last valid step, as PyTorch's PackedSequence)."""
        fs, bs = self._split_state(initial_state)
        of = self.forward_layer(x, mask=mask, initial_state=fs, training=training,
                                sequence_lengths=sequence_lengths)
        ob = self.backward_layer(x, mask=mask, initial_state=bs, training=training,
                                 sequence_lengths=sequence_lengths)
        self._record_shape()
        return self._assemble(of, ob)[0]

    def forward_train(self, x, mask=None, initial_state=None, sequence_lengths=None):
        """Training forward. ``backprop(d_out)`` takes gradients mirroring the outputs (None
        entries = zero); ``Gradients.weights`` are forward then backward, and
        ``initial_state`` gradients forward then backward (None if none was given)."""
        fs, bs = self._split_state(initial_state)
        of, back_f = self.forward_layer.forward_train(x, mask=mask, initial_state=fs,
                                                      sequence_lengths=sequence_lengths)
        ob, back_b = self.backward_layer.forward_train(x, mask=mask, initial_state=bs,
                                                       sequence_lengths=sequence_lengths)
        self._record_shape()
        self.last_activity_loss = (self.forward_layer.last_activity_loss
                                   + self.backward_layer.last_activity_loss)
        outputs, y, y_rev = self._assemble(of, ob)
        n_states = len(self.forward_layer.state_names)
        n_out = 2 if self.merge_mode is None else 1

        def backprop(d_out):
            if self.return_state or self.merge_mode is None:
                n = n_out + (2 * n_states if self.return_state else 0)
                if not isinstance(d_out, (list, tuple)) or len(d_out) != n:
                    raise ValueError(f"d_out: expected a list of {n} gradients mirroring the "
                                     f"outputs, got {type(d_out).__name__}")
                d_out = list(d_out)
                d_head, d_sf = d_out[:n_out], d_out[n_out:n_out + n_states]
                d_sb = d_out[n_out + n_states:]
            else:
                d_head, d_sf, d_sb = [d_out], [], []
            if self.merge_mode is None:
                dy, dy_rev = d_head
            else:
                dy, dy_rev = self._unmerge(d_head[0], y, y_rev)
            if dy_rev is not None and self.return_sequences:
                dy_rev = dy_rev[:, ::-1]
            gf = back_f([dy] + d_sf if self.return_state else dy)
            gb = back_b([dy_rev] + d_sb if self.return_state else dy_rev)
            init = None
            if initial_state is not None:
                init = list(gf.initial_state) + list(gb.initial_state)
            return Gradients(inputs=gf.inputs + gb.inputs, initial_state=init,
                             weights=list(gf.weights) + list(gb.weights))

        return outputs, backprop

    def _unmerge(self, d, y, y_rev):
        if d is None:
            return None, None
        d = as_float_array("d_out", d, self.dtype, device=self.device)
        expected = (y.shape[:-1] + (2 * y.shape[-1],) if self.merge_mode == "concat"
                    else y.shape)
        if d.shape != expected:
            raise ValueError(f"d_out: expected shape {expected}, got {d.shape}")
        mode = self.merge_mode
        if mode == "concat":
            H = y.shape[-1]
            return d[..., :H], d[..., H:]
        if mode == "sum":
            return d, d
        if mode == "ave":
            half = d / self.dtype.type(2)
            return half, half
        return d * y_rev, d * y      # mul

    # -- regularization -------------------------------------------------------------------
    def regularization_loss(self) -> float:
        return self.forward_layer.regularization_loss() + self.backward_layer.regularization_loss()

    def regularization_grads(self):
        return (self.forward_layer.regularization_grads()
                + self.backward_layer.regularization_grads())

    # -- configuration --------------------------------------------------------------------
    def get_config(self):
        from .serialization import serialize
        cfg = super().get_config()
        cfg.update(merge_mode=self.merge_mode, layer=serialize(self.forward_layer),
                   backward_layer=serialize(self.backward_layer))
        return cfg

    @classmethod
    def from_config(cls, config):
        from .serialization import deserialize
        config = dict(config)
        config["layer"] = deserialize(config["layer"])
        if config.get("backward_layer") is not None:
            config["backward_layer"] = deserialize(config["backward_layer"])
        return cls(**config)


class TimeDistributed(Layer):
    """Applies ``layer`` to every timestep: ``(batch, steps, ...)`` is folded to
    ``(batch * steps, ...)``, run through ``layer`` once, and unfolded.

    As Keras 3: the weights are the wrapped layer's (one set shared by all steps, same names
    and order); the input mask passes through to the output unchanged; a mask of more than
    two axes ``(batch, steps, ...)`` reaches the wrapped layer folded as its input (a
    ``(batch, steps)`` mask does not reach it: it has no axis left once the steps are
    folded). Keras 3 does not apply the wrapped layer's ``activity_regularizer`` inside a
    TimeDistributed, so a layer with one is refused rather than silently trained otherwise.
    """

    def __init__(self, layer, name=None, dtype=None, trainable=True):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer: expected a fastlstm layer, got {type(layer).__name__}")
        if getattr(layer, "multiple_inputs", False):
            raise ValueError(f"layer: TimeDistributed wraps layers with one input; "
                             f"{layer.name} ({type(layer).__name__}) takes a list")
        if layer.return_state or layer.stateful:
            raise ValueError(f"layer: TimeDistributed cannot wrap {layer.name} with "
                             "return_state=True or stateful=True")
        if layer.activity_regularizer is not None:
            raise ValueError(f"layer: {layer.name} has an activity_regularizer, which Keras 3's "
                             "TimeDistributed does not apply; give it to a layer outside")
        if dtype is not None and check_dtype(dtype) != layer.dtype:
            raise ValueError(f"dtype: TimeDistributed takes the dtype of its layer "
                             f"({layer.dtype.name}), got {dtype!r}")
        self.layer = layer
        super().__init__(name=name, dtype=layer.dtype, trainable=trainable)
        self.device = layer.device

    # -- the wrapped layer's weights -----------------------------------------------------
    @property
    def built(self):
        return self._built and self.layer.built

    @built.setter
    def built(self, value):
        self._built = value

    @property
    def weight_names(self):
        return self.layer.weight_names

    @property
    def weights(self):
        return self.layer.weights

    def get_weights(self):
        return self.layer.get_weights()

    def set_weights(self, weights):
        if not self.built:
            raise ValueError(f"{self.name}: set_weights before the layer is built; call it once "
                             "or call build(input_shape) first")
        self.layer.set_weights(weights)

    def regularization_loss(self) -> float:
        return self.layer.regularization_loss()

    def regularization_grads(self):
        return self.layer.regularization_grads()

    def to(self, device):
        self.layer.to(device)
        self.device = self.layer.device
        return self

    @property
    def runs_on_gpu(self):
        return self.layer.runs_on_gpu

    @property
    def input_dim(self):
        """The size of the input's last axis (None before the layer is built)."""
        return self.input_shape[-1] if self.built and self.input_shape else None

    # -- shapes --------------------------------------------------------------------------
    def _child_shape(self, input_shape):
        if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__") or \
                len(input_shape) < 3:
            raise ValueError(f"input_shape: {self.name} (TimeDistributed) expects at least 3 "
                             f"dimensions (batch, steps, ...), got {input_shape!r}")
        b, t = input_shape[0], input_shape[1]
        return (None if b is None or t is None else b * t,) + tuple(input_shape[2:])

    def weight_shapes(self, input_shape):
        return self.layer.weight_shapes(self._child_shape(input_shape))

    def build(self, input_shape):
        child = self._child_shape(tuple(input_shape))
        if not self.layer.built:
            self.layer.build(child)
        self.input_shape = tuple(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        out = self.layer.compute_output_shape(self._child_shape(tuple(input_shape)))
        if out is None:
            return None
        return (input_shape[0], input_shape[1]) + tuple(out[1:])

    def compute_mask(self, inputs, mask=None):
        return mask

    # -- calls ---------------------------------------------------------------------------
    def _fold(self, x, mask):
        x = as_float_array("x", x, self.dtype, device=self.device)
        self._child_shape(x.shape)
        inner_mask = None
        if mask is not None:
            mask = np.asarray(devices.to_host(mask), dtype=bool)
            if mask.ndim < 2 or mask.shape[:2] != x.shape[:2]:
                raise ValueError(f"mask: {self.name} expects a mask whose first axes are "
                                 f"(batch, steps) = {x.shape[:2]}, got shape {mask.shape}")
            if mask.ndim > 2:
                inner_mask = mask.reshape((-1,) + mask.shape[2:])
        if not self.built:
            self.build(x.shape)
        return x.reshape((-1,) + x.shape[2:]), inner_mask

    def _unfold(self, y, x):
        return y.reshape(x.shape[:2] + y.shape[1:])

    def __call__(self, x, mask=None, training=False):
        xf, inner_mask = self._fold(x, mask)
        return self._unfold(self.layer(xf, mask=inner_mask, training=training), x)

    def forward_train(self, x, mask=None):
        """Training forward; ``backprop(dy)`` gives the wrapped layer's weight gradients
        and the input gradient of ``x``'s shape."""
        xf, inner_mask = self._fold(x, mask)
        yf, inner_back = self.layer.forward_train(xf, mask=inner_mask)
        y = self._unfold(yf, x)
        shape = np.shape(x)

        def backprop(dy):
            if dy is not None:
                dy = as_float_array("d_out", dy, self.dtype, device=self.device)
                if dy.shape != y.shape:
                    raise ValueError(f"d_out: expected shape {y.shape}, got {dy.shape}")
                dy = dy.reshape(yf.shape)
            g = inner_back(dy)
            dx = None if g.inputs is None else g.inputs.reshape(shape)
            return Gradients(inputs=dx, initial_state=None, weights=list(g.weights))

        return y, backprop

    def get_config(self):
        from .serialization import serialize
        cfg = super().get_config()
        cfg.update(layer=serialize(self.layer))
        return cfg

    @classmethod
    def from_config(cls, config):
        from .serialization import deserialize
        config = dict(config)
        config["layer"] = deserialize(config["layer"])
        return cls(**config)
