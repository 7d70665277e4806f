"""Recurrent layers with Keras semantics over the functional ops: LSTM, GRU, SimpleRNN.

Layers take batch-major input ``(batch, timesteps, features)`` and convert once to the
time-major layout of the kernels. ``RecurrentLayer`` holds everything the three share
(arguments, masks, states, dropout, stateful carry-over, the training protocol); each
subclass states its weights and which op runs it.
"""
from __future__ import annotations

import numpy as np

from .. import activations, devices, initializers, mixed_precision, ops, regularizers
from .. import backends as fl_backends
from ..backends.packing import check_lengths
from .base import (Gradients, Layer, activity_penalty, aligned_weight, as_float_array,
                   check_bool, check_positive_int, check_training, input_features)


def _check_rate(name, p):
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {p!r}")
    return float(p)


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected a non-negative integer or None, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative integer or None, got {seed!r}")
    return int(seed)


def _step_kernels():
    from .. import _step
    return _step


def _serialize_regularizer(reg):
    return None if reg is None else regularizers.serialize(reg)


class RecurrentLayer(Layer, abstract=True):
    """Shared machinery of LSTM, GRU and SimpleRNN layers (not used directly)."""

    #: names of the state tensors, in Keras order (LSTM: h, c)
    state_names = ("h",)
    runs_on_gpu = True
    _step_plan = None               # also for layers unpickled from before there was one
    dtype_policy = None             # fastlstm.mixed_precision; None: unpickled from before it
    layer_norm = False              # also for layers unpickled from before there was one

    def __init__(self, units, activation="tanh", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, dtype=None, name=None, trainable=True,
                 unroll=False, zero_output_for_mask=False, zoneout=0.0, layer_norm=False,
                 gamma_initializer="ones", beta_initializer="zeros"):
        policy = mixed_precision.policy_of(dtype)
        super().__init__(name=name, dtype=policy.variable_dtype, trainable=trainable)
        self.dtype_policy = policy
        self.units = check_positive_int("units", units)
        self.activation = activations.get(activation, "activation")
        self.use_bias = check_bool("use_bias", use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.recurrent_initializer = initializers.get(recurrent_initializer, "recurrent_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.kernel_regularizer = regularizers.get(kernel_regularizer, "kernel_regularizer")
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer, "recurrent_regularizer")
        self.bias_regularizer = regularizers.get(bias_regularizer, "bias_regularizer")
        self.activity_regularizer = regularizers.get(activity_regularizer, "activity_regularizer")
        self.dropout = _check_rate("dropout", dropout)
        self.recurrent_dropout = _check_rate("recurrent_dropout", recurrent_dropout)
        self.seed = _check_seed(seed)
        self._rng = np.random.default_rng(self.seed)
        self.return_sequences = check_bool("return_sequences", return_sequences)
        self.return_state = check_bool("return_state", return_state)
        self.go_backwards = check_bool("go_backwards", go_backwards)
        self.stateful = check_bool("stateful", stateful)
        self.unroll = check_bool("unroll", unroll)   # accepted for Keras parity; no effect
        self.zero_output_for_mask = check_bool("zero_output_for_mask", zero_output_for_mask)
        self.zoneout = _check_rate("zoneout", zoneout)
        self.layer_norm = check_bool("layer_norm", layer_norm)
        self.gamma_initializer = initializers.get(gamma_initializer, "gamma_initializer")
        self.beta_initializer = initializers.get(beta_initializer, "beta_initializer")
        self.states = None
        self.last_activity_loss = 0.0
        self._step_plan = None      # the compiled step() bound to the weights (fastlstm._step)

    def __getstate__(self):
        # The plan points into this object's arrays: a copy or an unpickled layer makes its
        # own at its first step.
        state = self.__dict__.copy()
        state["_step_plan"] = None
        return state

    def __setstate__(self, state):
        # Unpickled and deep-copied arrays land wherever the allocator puts them.
        self.__dict__.update(state)
        if self.__dict__.get("built") and self.__dict__.get("device", "cpu") == "cpu":
            for n in self.weight_names:
                self.__dict__[n] = aligned_weight(self.__dict__[n])

    def __setattr__(self, name, value):
        # The compiled step plan runs the activations it was made with: reassigning one
        # drops it (checked here, not at every step, where the check costs a small step a
        # measurable share: bench/RESULTS.md, "Numbers behind choices").
        if name in ("activation", "recurrent_activation"):
            self.__dict__["_step_plan"] = None
        object.__setattr__(self, name, value)

    @property
    def _mixed(self):
        """mixed_bfloat16: every product takes bf16 operands (float32 weights, states, sums;
        the compiled step plan is float32, so step() runs the sequence path then)."""
        return (self.dtype_policy is not None and self.dtype_policy.mixed
                and self.quantization is None)

    # -- subclass hooks ----------------------------------------------------------------
    def _create_weights(self, input_dim):
        raise NotImplementedError

    def _run(self, x, states, mask, input_dropout_mask, recurrent_dropout_mask, training,
             return_sequences=None):
        """Time-major op call -> (y, final_states, cache); return_sequences None = the layer's."""
        raise NotImplementedError

    def _run_backward(self, cache, dy, dstates):
        """-> ops Grads."""
        raise NotImplementedError

    def _weight_grads(self, grads):
        return self._cell_weight_grads(grads) + [getattr(grads, n)
                                                 for n in self._layer_norm_names]

    def _cell_weight_grads(self, grads):
        return [grads.kernel, grads.recurrent_kernel] + ([grads.bias] if self.use_bias else [])

    def _layer_norm_kw(self):
        """The ops' layer_norm argument: the LN weights (the LSTM's three as a tuple)."""
        if not self.layer_norm:
            return {}
        ws = [getattr(self, n) for n in self._layer_norm_names]
        return dict(layer_norm=tuple(ws) if len(ws) > 1 else ws[0])

    def _zoneout_kw(self, zoneout_mask):
        """The ops' zoneout arguments: the rate, and in training the keep masks."""
        if not self.zoneout:
            return {}
        return dict(zoneout=self.zoneout, zoneout_mask=zoneout_mask)

    def _zoneout_masks(self, T, B):
        """Training's keep masks [T,B,H] by step: m ~ Bernoulli(1 - zoneout), drawn from the
        layer's seed per step, row and unit."""
        if not self.zoneout:
            return None
        keep = self._rng.random((T, B, self.state_sizes[0])) >= self.zoneout
        return devices.to_device(keep.astype(self.dtype), self.device)

    def _new_step_plan(self, B):
        """The cell's compiled step for batch B bound to the current weight arrays
        (fastlstm._step); raises ValueError when they do not suit it."""
        raise ValueError("no compiled step")

    # -- building ----------------------------------------------------------------------
    @property
    def weight_names(self):
        """The cell's own weights, then (layer_norm) the normalization's."""
        return self._cell_weight_names + self._layer_norm_names

    @property
    def _cell_weight_names(self):
        return ["kernel", "recurrent_kernel"] + (["bias"] if self.use_bias else [])

    #: the weights layer_norm adds: gamma (2, G), the scales of LN(x K) and LN(h R)
    _layer_norm_weights = ("gamma",)

    @property
    def _layer_norm_names(self):
        return list(self._layer_norm_weights) if self.layer_norm else []

    def _create_layer_norm_weights(self):
        H, G, dt = self.units, self.gate_blocks * self.units, self.dtype
        shapes = {"gamma": (2, G), "gamma_h": (H,), "beta_h": (H,)}
        for n in self._layer_norm_names:
            init = self.beta_initializer if n.startswith("beta") else self.gamma_initializer
            setattr(self, n, np.ascontiguousarray(initializers.initialize(
                init, shapes[n], dt, argument=n.split("_")[0] + "_initializer"), dt))

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"input_shape: {self.name} expects (batch, timesteps, features), "
                             f"got {input_shape}")
        input_dim = check_positive_int("input_shape[-1]", input_shape[-1])
        self._create_weights(input_dim)
        self._create_layer_norm_weights()
        for n in self.weight_names:
            setattr(self, n, aligned_weight(getattr(self, n)))
        super().build(input_shape)

    #: column blocks of the kernels (gates): LSTM 4 (CIFG 3), GRU 3, SimpleRNN 1
    gate_blocks = 1

    @property
    def state_sizes(self):
        """Features of each state, in state_names' order (the LSTM's h has proj_size)."""
        return (self.units,) * len(self.state_names)

    @property
    def output_size(self):
        """Features of the outputs (the state h)."""
        return self.state_sizes[0]

    def _bias_shape(self):
        return (self.gate_blocks * self.units,)

    def weight_shapes(self, input_shape):
        I = input_features(self.name, input_shape, 3)
        H, G = self.units, self.gate_blocks * self.units
        shapes = {"kernel": (I, G), "recurrent_kernel": (H, G), "bias": self._bias_shape(),
                  "peephole": (3, H), "gamma": (2, G), "gamma_h": (H,), "beta_h": (H,)}
        return [shapes[n] for n in self.weight_names]

    @property
    def input_dim(self):
        return self.kernel.shape[0] if self.built else None

    def compute_output_shape(self, input_shape):
        B, T = input_shape[0], input_shape[1]
        out = (B, T, self.output_size) if self.return_sequences else (B, self.output_size)
        if self.return_state:
            return [out] + [(B, n) for n in self.state_sizes]
        return out

    def compute_mask(self, inputs, mask=None):
        if not self.return_sequences:
            return None
        if mask is not None and self.go_backwards:
            if devices.is_device_array(mask):
                return devices.module_of(mask).ascontiguousarray(mask[:, ::-1])
            return np.ascontiguousarray(np.asarray(mask)[:, ::-1])
        return mask

    # -- states ------------------------------------------------------------------------
    def get_initial_state(self, batch_size):
        """Zero states for ``batch_size`` rows: a list of (batch, units) arrays."""
        batch_size = check_positive_int("batch_size", batch_size)
        return [self.xp.zeros((batch_size, n), self.dtype) for n in self.state_sizes]

    def reset_states(self, rows=None):
        """Zero the carried states of a stateful layer: all rows, or only ``rows``
        (indices or a boolean mask over the batch), e.g. when one stream ends."""
        if not self.stateful:
            raise ValueError(f"{self.name}: reset_states needs stateful=True")
        if self.states is None:
            return
        if rows is None:
            for s in self.states:
                s[...] = 0
            return
        B = self.states[0].shape[0]
        idx = np.asarray(devices.to_host(rows))
        if idx.dtype == bool:
            if idx.shape != (B,):
                raise ValueError(f"rows: expected a boolean mask of shape ({B},), got shape {idx.shape}")
        else:
            if idx.dtype.kind not in "iu":
                raise TypeError(f"rows: expected row indices or a boolean mask, got dtype {idx.dtype}")
            if idx.size and (idx.min() < -B or idx.max() >= B):
                raise ValueError(f"rows: indices must be in [0, {B}) for the stateful batch of "
                                 f"{B}, got {idx.tolist()}")
        idx = devices.to_device(idx, self.device)
        for s in self.states:
            s[idx] = 0

    def _moved(self, device):
        if self.states is not None:
            self.states = [devices.to_device(s, device) for s in self.states]

    # -- input handling ----------------------------------------------------------------------
    def _prepare(self, x, mask, initial_state, training, sequence_lengths=None):
        x = as_float_array("x", x, self.dtype, device=self.device)
        if x.ndim != 3:
            raise ValueError(f"x: {self.name} expects a 3-D array (batch, timesteps, features), "
                             f"got shape {x.shape}")
        B, T, I = x.shape
        if not self.built:
            self.build(x.shape)
        elif I != self.input_dim:
            raise ValueError(f"x: {self.name} was built for {self.input_dim} features, "
                             f"got {I} (shape {x.shape})")
        if T < 1:
            raise ValueError(f"x: expected at least one timestep, got shape {x.shape}")
        xt = x.transpose(1, 0, 2)         # time-major; the ops copy it (once) as they need
        mt = None
        if sequence_lengths is not None:
            # The direct form of a prefix mask: the ops run each row up to its length.
            if mask is not None:
                raise ValueError("sequence_lengths: give either a mask or sequence_lengths, "
                                 "not both")
            lengths = check_lengths("sequence_lengths", devices.to_host(sequence_lengths), T, B)
            mask = np.arange(T)[None, :] < lengths[:, None]
        if mask is not None:
            m = np.asarray(devices.to_host(mask))
            if m.shape != (B, T):
                raise ValueError(f"mask: expected shape ({B}, {T}) (batch, timesteps), got {m.shape}")
            if m.dtype != bool:
                if m.dtype.kind not in "iub":
                    raise TypeError(f"mask: expected a boolean array, got dtype {m.dtype}")
                m = m != 0
            mt = devices.to_device(np.ascontiguousarray(m.T), self.device)
        states = self._initial_states(initial_state, B)
        idm = rdm = None
        if training and self.dropout > 0:
            idm = self._dropout_mask((B, I), self.dropout)
        if training and self.recurrent_dropout > 0:
            rdm = self._dropout_mask((B, self.units), self.recurrent_dropout)
        return xt, mt, states, idm, rdm

    def _dropout_mask(self, shape, rate):
        keep = self._rng.random(shape) >= rate
        return devices.to_device((keep / (1.0 - rate)).astype(self.dtype), self.device)

    def _initial_states(self, initial_state, B, arg="initial_state"):
        n = len(self.state_names)
        if initial_state is None:
            if self.stateful and self.states is not None:
                if self.states[0].shape[0] != B:
                    raise ValueError(f"x: stateful {self.name} carries states for a batch of "
                                     f"{self.states[0].shape[0]}, got a batch of {B}; a "
                                     "stateful layer keeps one batch size (reset_states() keeps "
                                     "it too); set layer.states = None to start over with another")
                return list(self.states)
            return None
        if not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        if len(initial_state) != n:
            raise ValueError(f"{arg}: {self.name} expects {n} arrays "
                             f"({', '.join(self.state_names)}), got {len(initial_state)}")
        out = []
        for name, n, s in zip(self.state_names, self.state_sizes, initial_state):
            s = as_float_array(f"{arg}[{name}]", s, self.dtype, device=self.device)
            if s.shape != (B, n):
                of_x = " (x_t's batch)" if arg == "states" else ""
                raise ValueError(f"{arg}[{name}]: expected shape ({B}, {n}){of_x}, got "
                                 f"{s.shape}")
            out.append(s)
        return out

    def _outputs(self, y, states):
        out = y.transpose(1, 0, 2) if self.return_sequences else y
        if self.return_state:
            return [out] + list(states)
        return out

    def _output_mask(self, mt, y):
        """With ``zero_output_for_mask`` and a mask: the mask of the op's output ``y`` in step
        order as a float array that multiplies it (``(T, B, 1)`` for a sequence, ``(B, 1)``
        for the last output: Keras zeroes that too when the row's last step is masked);
        None otherwise. The states are not touched: they carry through masked steps."""
        if not self.zero_output_for_mask or mt is None:
            return None
        steps = mt[::-1] if self.go_backwards else mt      # (T, B), step order
        m = steps[..., None] if y.ndim == 3 else steps[-1][:, None]
        return m.astype(self.dtype)

    def _remember(self, states):
        if self.stateful:
            self.states = [s.copy() for s in states]

    # -- calls -----------------------------------------------------------------------------
    def __call__(self, x, mask=None, initial_state=None, training=False, sequence_lengths=None):
        """sequence_lengths [B] ints in [0, timesteps] (instead of a mask): row b's first
        lengths[b] steps are its sequence, the rest padding; the same as the mask
        ``arange(timesteps) < lengths[b]`` (each row then runs only up to its length)."""
        training = check_training(training)
        xt, mt, states, idm, rdm = self._prepare(x, mask, initial_state, training,
                                                 sequence_lengths)
        with devices.backend_context(self.device):
            y, final, _ = self._run(xt, states, mt, idm, rdm, training=False)
        om = self._output_mask(mt, y)
        if om is not None:
            y = y * om
        self._remember(final)
        return self._outputs(y, final)

    def forward_train(self, x, mask=None, initial_state=None, sequence_lengths=None):
        """Training forward (dropout active). Returns ``(outputs, backprop)``; ``backprop(d_out)``
        takes gradients mirroring ``outputs`` (None entries = zero) and returns ``Gradients``.
        An output sequence is read-only: the backward pass may read it (as PyTorch's autograd
        refuses an output it saved that was changed in place). sequence_lengths: as
        ``__call__``'s (BPTT then runs over each row's own length)."""
        self.check_float("forward_train")
        given_state = initial_state is not None
        xt, mt, states, idm, rdm = self._prepare(x, mask, initial_state, training=True,
                                                 sequence_lengths=sequence_lengths)
        with devices.backend_context(self.device):
            y, final, cache = self._run(xt, states, mt, idm, rdm, training=True,
                                        zoneout_mask=self._zoneout_masks(*xt.shape[:2]))
        om = self._output_mask(mt, y)
        if om is not None:
            y = y * om              # a new array: the op's own output stays as backward reads it
        self._remember(final)
        outputs = self._outputs(y, final)
        out = outputs[0] if self.return_state else outputs
        if self.return_sequences and isinstance(out, np.ndarray):
            # On the CPU the backward pass reads the output sequence (the saved states share
            # its buffer): read-only on every backend, so code that runs on one runs on all.
            out.flags.writeable = False
        act_grad = None
        self.last_activity_loss = 0.0
        if self.activity_regularizer is not None:
            self.last_activity_loss, act_grad = activity_penalty(self.activity_regularizer, out)
        n_states = len(self.state_names)
        used = [False]

        def backprop(d_out):
            if used[0]:
                raise RuntimeError(f"{self.name}: backprop of this forward_train was already run")
            used[0] = True
            if self.return_state:
                if not isinstance(d_out, (list, tuple)) or len(d_out) != 1 + n_states:
                    raise ValueError(f"d_out: expected a list of {1 + n_states} gradients "
                                     f"(output, {', '.join(self.state_names)}), got {type(d_out).__name__}")
                dy, dstates = d_out[0], list(d_out[1:])
            else:
                dy, dstates = d_out, [None] * n_states
            if dy is not None:
                dy = as_float_array("d_out", dy, self.dtype, device=self.device)
                if dy.shape != out.shape:
                    raise ValueError(f"d_out: expected shape {out.shape}, got {dy.shape}")
            if act_grad is not None:
                dy = act_grad if dy is None else dy + act_grad
            if dy is not None and self.return_sequences:
                dy = dy.transpose(1, 0, 2)        # time-major; the ops copy it if they must
            if dy is not None and om is not None:
                dy = dy * om                      # masked steps' outputs are constants (zero)
            if self.device != "cpu":      # the ops check them; only the device is ours
                dstates = [None if d is None else devices.to_device(d, self.device)
                           for d in dstates]
            with devices.backend_context(self.device):
                g = self._run_backward(cache, dy, dstates)
            init_grads = None
            if given_state:
                init_grads = [g.h0, g.c0] if n_states == 2 else [g.h0]
            return Gradients(inputs=g.inputs.transpose(1, 0, 2), initial_state=init_grads,
                             weights=self._weight_grads(g))

        return outputs, backprop

    def step(self, x_t, states):
        """One timestep for streaming: x_t (batch, features), states as from
        get_initial_state(batch). Returns ``(y_t, new_states)``; no dropout, no mask, and the
        layer's own stateful states are left alone."""
        # The hot path: a plan bound to the current weights takes well-formed arguments as
        # they are (None otherwise); anything else goes through the checks below.
        plan = self._step_plan
        if plan is not None and self.device == "cpu" and fl_backends.current_backend() == "cpu":
            out = plan.call(self, x_t, states)
            if out is not None:
                return out
        if not (isinstance(x_t, np.ndarray) and x_t.dtype == self.dtype and x_t.ndim == 2
                and self.device == "cpu"):
            x_t = as_float_array("x_t", x_t, self.dtype, device=self.device)
            if x_t.ndim != 2:
                raise ValueError(f"x_t: expected a 2-D array (batch, features), got shape {x_t.shape}")
        if not self.built:
            self.build((x_t.shape[0], 1, x_t.shape[1]))
        elif x_t.shape[1] != self.input_dim:
            raise ValueError(f"x_t: {self.name} was built for {self.input_dim} features, "
                             f"got {x_t.shape[1]} (shape {x_t.shape})")
        return self._step(self.xp.ascontiguousarray(x_t), self._step_states(states, x_t.shape[0]))

    def _step_states(self, states, B):
        """Validated states for step(); the common case (right arrays) costs a few checks."""
        n, sizes = len(self.state_names), self.state_sizes
        shape = (B, sizes[0])
        if (isinstance(states, (list, tuple)) and len(states) == n
                and all(isinstance(s, np.ndarray) and s.dtype == self.dtype
                        and s.shape == (B, k) and s.flags.c_contiguous
                        for s, k in zip(states, sizes))):
            return states
        if not isinstance(states, (list, tuple)):
            raise TypeError(f"states: expected a list of {n} arrays ({', '.join(self.state_names)}) "
                            f"of shape {shape}, as from get_initial_state({B}); got "
                            f"{type(states).__name__}")
        return [self.xp.ascontiguousarray(s) for s in self._initial_states(list(states), B, "states")]

    def _step(self, x_t, states):
        if self.device == "cpu" and fl_backends.current_backend() == "cpu":
            plan = self._step_plan
            if plan is None or plan.batch != x_t.shape[0] or not plan.bound_to(self):
                plan = self._step_plan = self._make_step_plan(x_t.shape[0])
            out = plan.call(self, x_t, states) if plan is not None else None
            if out is not None:
                return out
        with devices.backend_context(self.device):
            y, final, _ = self._run(x_t[None], states, None, None, None, training=False,
                                    return_sequences=False)
        return y, final

    def _make_step_plan(self, B):
        """The compiled step bound to the current weight arrays (weights updated in place
        stay bound; set_weights makes a new plan), or None when they do not suit it."""
        if self.zoneout or self._mixed or self.layer_norm:   # not in the compiled step: the op
            return None
        try:
            return self._new_step_plan(B)
        except ValueError:
            return None

    # -- regularization ------------------------------------------------------------------
    def _regularized(self):
        pairs = [(self.kernel_regularizer, "kernel"), (self.recurrent_regularizer, "recurrent_kernel")]
        if self.use_bias:
            pairs.append((self.bias_regularizer, "bias"))
        return pairs

    # -- configuration -----------------------------------------------------------------------
    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            units=self.units, activation=activations.serialize(self.activation),
            use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            recurrent_initializer=initializers.serialize(self.recurrent_initializer),
            bias_initializer=initializers.serialize(self.bias_initializer),
            kernel_regularizer=_serialize_regularizer(self.kernel_regularizer),
            recurrent_regularizer=_serialize_regularizer(self.recurrent_regularizer),
            bias_regularizer=_serialize_regularizer(self.bias_regularizer),
            activity_regularizer=_serialize_regularizer(self.activity_regularizer),
            dropout=self.dropout, recurrent_dropout=self.recurrent_dropout, seed=self.seed,
            return_sequences=self.return_sequences, return_state=self.return_state,
            go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
            zero_output_for_mask=self.zero_output_for_mask)
        if self.zoneout:
            cfg["zoneout"] = self.zoneout
        if self.layer_norm:
            cfg.update(layer_norm=True,
                       gamma_initializer=initializers.serialize(self.gamma_initializer),
                       beta_initializer=initializers.serialize(self.beta_initializer))
        if self.dtype_policy is not None:
            cfg["dtype"] = self.dtype_policy.name
        return cfg


class LSTM(RecurrentLayer):
    """Long short-term memory layer (Hochreiter & Schmidhuber), Keras 3 semantics and weights.

    Weights: ``kernel (I, 4H)``, ``recurrent_kernel (H, 4H)``, ``bias (4H,)`` with column blocks
    ``[i|f|c|o]``; with ``coupled_input_forget=True`` (CIFG: input gate = 1 - forget gate) the
    blocks are ``[f|c|o]``; with ``use_peepholes=True`` a fourth weight ``peephole (3, H)``,
    rows ``[i, f, o]`` (diagonal peepholes: i and f see c_{t-1}, o sees c_t; the i row is
    unused with CIFG). With ``proj_size=P`` (PyTorch's LSTMP) ``h_t = (o * tanh(c_t))
    projection_kernel``: h and the outputs have P features, c has ``units``,
    ``recurrent_kernel`` is ``(P, 4H)`` and a last weight ``projection_kernel (H, P)``
    (fastlstm/projected.py; no recurrent dropout).
    With ``layer_norm=True`` (haste's LayerNormLSTM; not with proj_size)
    ``z = LN(x K) gamma[0] + LN(h_{t-1} R) gamma[1] + b`` and
    ``h_t = o * act(LN(c_t) gamma_h + beta_h)``, LN each row's ``(v - mean) / sqrt(var +
    1e-5)``; three last weights ``gamma (2, G)``, ``gamma_h (H,)``, ``beta_h (H,)``
    (initialized by ``gamma_initializer``, ones, and ``beta_initializer``, zeros).
    """

    state_names = ("h", "c")

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, kernel_regularizer=None,
                 recurrent_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False,
                 return_state=False, go_backwards=False, stateful=False, dtype=None,
                 use_peepholes=False, coupled_input_forget=False, peephole_initializer="zeros",
                 name=None, trainable=True, unroll=False, zero_output_for_mask=False,
                 proj_size=0, projection_initializer="glorot_uniform", zoneout=0.0,
                 layer_norm=False, gamma_initializer="ones", beta_initializer="zeros"):
        super().__init__(
            units, activation=activation, use_bias=use_bias,
            kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer, bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer, dropout=dropout,
            recurrent_dropout=recurrent_dropout, seed=seed, return_sequences=return_sequences,
            return_state=return_state, go_backwards=go_backwards, stateful=stateful, dtype=dtype,
            name=name, trainable=trainable, unroll=unroll,
            zero_output_for_mask=zero_output_for_mask, zoneout=zoneout, layer_norm=layer_norm,
            gamma_initializer=gamma_initializer, beta_initializer=beta_initializer)
        self.recurrent_activation = activations.get(recurrent_activation, "recurrent_activation")
        self.unit_forget_bias = check_bool("unit_forget_bias", unit_forget_bias)
        self.use_peepholes = check_bool("use_peepholes", use_peepholes)
        self.coupled_input_forget = check_bool("coupled_input_forget", coupled_input_forget)
        self.peephole_initializer = initializers.get(peephole_initializer, "peephole_initializer")
        if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)) \
                or not 0 <= proj_size < self.units:
            raise ValueError(f"proj_size: expected an integer in [0, units={self.units}) "
                             f"(0: no projection), got {proj_size!r}")
        self.proj_size = int(proj_size)
        if self.proj_size and self.layer_norm:
            raise ValueError("layer_norm: a projected LSTM (proj_size > 0) takes no layer "
                             "normalization (not supported)")
        if self.proj_size and self.zoneout:
            raise ValueError(f"zoneout: a projected LSTM (proj_size > 0) takes no zoneout, got "
                             f"{self.zoneout}")
        if self.proj_size and self._mixed:
            raise ValueError(f"dtype: a projected LSTM (proj_size > 0) does not run in "
                             f"{self.dtype_policy.name} yet; use float32")
        if self.proj_size and self.recurrent_dropout > 0:
            raise ValueError("recurrent_dropout: a projected LSTM (proj_size > 0) takes no "
                             f"recurrent dropout, got {self.recurrent_dropout}")
        self.projection_initializer = initializers.get(projection_initializer,
                                                       "projection_initializer")

    @property
    def state_sizes(self):
        return (self.proj_size or self.units, self.units)

    @property
    def gate_blocks(self):
        return 3 if self.coupled_input_forget else 4

    @property
    def _cell_weight_names(self):
        return (super()._cell_weight_names + (["peephole"] if self.use_peepholes else [])
                + (["projection_kernel"] if self.proj_size else []))

    # layer_norm: gamma (2, G), then the scale and shift of LN(c_t) inside h_t
    _layer_norm_weights = ("gamma", "gamma_h", "beta_h")

    def weight_shapes(self, input_shape):
        if not self.proj_size:
            return super().weight_shapes(input_shape)
        I = input_features(self.name, input_shape, 3)
        H, P, G = self.units, self.proj_size, self.gate_blocks * self.units
        shapes = {"kernel": (I, G), "recurrent_kernel": (P, G), "bias": self._bias_shape(),
                  "peephole": (3, H), "projection_kernel": (H, P)}
        return [shapes[n] for n in self.weight_names]

    def _create_weights(self, input_dim):
        H, nb, dt = self.units, self.gate_blocks, self.dtype
        self.kernel = np.ascontiguousarray(self.kernel_initializer((input_dim, nb * H), dt), dt)
        if self.proj_size:
            self.recurrent_kernel = np.ascontiguousarray(initializers.initialize(
                self.recurrent_initializer, (self.proj_size, nb * H), dt,
                argument="recurrent_initializer"), dt)
            self.projection_kernel = np.ascontiguousarray(
                self.projection_initializer((H, self.proj_size), dt), dt)
        else:
            self.recurrent_kernel = np.ascontiguousarray(
                initializers.recurrent_kernel(self.recurrent_initializer, H, nb, dt), dt)
        if self.use_bias:
            forget_block = 0 if self.coupled_input_forget else 1
            self.bias = np.ascontiguousarray(initializers.lstm_bias(
                self.bias_initializer, H, nb, self.unit_forget_bias, forget_block, dt), dt)
        if self.use_peepholes:
            self.peephole = np.ascontiguousarray(self.peephole_initializer((3, H), dt), dt)

    def _run(self, x, states, mask, idm, rdm, training, return_sequences=None,
             zoneout_mask=None):
        h0, c0 = states if states is not None else (None, None)
        if return_sequences is None:
            return_sequences = self.return_sequences
        y, h, c, cache = ops.lstm_forward(
            x, self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None, h0, c0,
            peephole=self.peephole if self.use_peepholes else None, mask=mask,
            input_dropout_mask=idm, recurrent_dropout_mask=rdm, activation=self.activation,
            recurrent_activation=self.recurrent_activation,
            coupled_input_forget=self.coupled_input_forget, go_backwards=self.go_backwards,
            return_sequences=return_sequences, training=training,
            projection=self.projection_kernel if self.proj_size else None,
            mixed=self._mixed, **self._zoneout_kw(zoneout_mask), **self._layer_norm_kw())
        return y, [h, c], cache

    def _run_backward(self, cache, dy, dstates):
        return ops.lstm_backward(cache, dy, dstates[0], dstates[1])

    def _new_step_plan(self, B):
        if self.proj_size:      # step() runs the projected op over one step instead
            raise ValueError("no compiled step with a projection")
        return _step_kernels().LSTMStepPlan(
            self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None,
            self.peephole if self.use_peepholes else None, self.activation,
            self.recurrent_activation, self.coupled_input_forget, B)

    def _cell_weight_grads(self, grads):
        return (super()._cell_weight_grads(grads)
                + ([grads.peephole] if self.use_peepholes else [])
                + ([grads.projection] if self.proj_size else []))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(recurrent_activation=activations.serialize(self.recurrent_activation),
                   unit_forget_bias=self.unit_forget_bias, use_peepholes=self.use_peepholes,
                   coupled_input_forget=self.coupled_input_forget,
                   peephole_initializer=initializers.serialize(self.peephole_initializer))
        if self.proj_size:
            cfg.update(proj_size=self.proj_size, projection_initializer=initializers.serialize(
                self.projection_initializer))
        return cfg


class GRU(RecurrentLayer):
    """Gated recurrent unit (Cho et al.), Keras 3 semantics and weights.

    Weights: ``kernel (I, 3H)``, ``recurrent_kernel (H, 3H)``, blocks ``[z|r|h]``.
    ``reset_after=True`` (default; the cuDNN/PyTorch form): ``bias (2, 3H)`` (input row,
    recurrent row) and ``h~ = act(x W_h + b_h + r * (h U_h + b'_h))``.
    ``reset_after=False`` (Keras 2 / original form): ``bias (3H,)`` and
    ``h~ = act(x W_h + b_h + (r * h) U_h)``. Both: ``h_t = z * h_{t-1} + (1 - z) * h~``.
    With ``layer_norm=True`` (haste's LayerNormGRU; reset_after=True only) the products are
    normalized over their 3H rows, ``x_z = LN(x W) gamma[0] + b[0]``, ``h_z = LN(h U)
    gamma[1] + b[1]``, and a last weight ``gamma (2, 3H)`` (``gamma_initializer``, ones).
    """

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, reset_after=True, dtype=None,
                 name=None, trainable=True, unroll=False, zero_output_for_mask=False,
                 zoneout=0.0, layer_norm=False, gamma_initializer="ones",
                 beta_initializer="zeros"):
        super().__init__(
            units, activation=activation, use_bias=use_bias,
            kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer, bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer, dropout=dropout,
            recurrent_dropout=recurrent_dropout, seed=seed, return_sequences=return_sequences,
            return_state=return_state, go_backwards=go_backwards, stateful=stateful, dtype=dtype,
            name=name, trainable=trainable, unroll=unroll,
            zero_output_for_mask=zero_output_for_mask, zoneout=zoneout, layer_norm=layer_norm,
            gamma_initializer=gamma_initializer, beta_initializer=beta_initializer)
        self.recurrent_activation = activations.get(recurrent_activation, "recurrent_activation")
        self.reset_after = check_bool("reset_after", reset_after)
        if self.layer_norm and not self.reset_after:
            raise ValueError("layer_norm: the GRU takes layer normalization with "
                             "reset_after=True only, got reset_after=False")

    gate_blocks = 3

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _create_weights(self, input_dim):
        H, dt = self.units, self.dtype
        self.kernel = np.ascontiguousarray(self.kernel_initializer((input_dim, 3 * H), dt), dt)
        self.recurrent_kernel = np.ascontiguousarray(
            initializers.recurrent_kernel(self.recurrent_initializer, H, 3, dt), dt)
        if self.use_bias:
            shape = (2, 3 * H) if self.reset_after else (3 * H,)
            self.bias = np.ascontiguousarray(self.bias_initializer(shape, dt), dt)

    def _run(self, x, states, mask, idm, rdm, training, return_sequences=None,
             zoneout_mask=None):
        if return_sequences is None:
            return_sequences = self.return_sequences
        y, h, cache = ops.gru_forward(
            x, self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None,
            states[0] if states is not None else None, reset_after=self.reset_after, mask=mask,
            input_dropout_mask=idm, recurrent_dropout_mask=rdm, activation=self.activation,
            recurrent_activation=self.recurrent_activation, go_backwards=self.go_backwards,
            return_sequences=return_sequences, training=training,
            mixed=self._mixed, **self._zoneout_kw(zoneout_mask), **self._layer_norm_kw())
        return y, [h], cache

    def _run_backward(self, cache, dy, dstates):
        return ops.gru_backward(cache, dy, dstates[0])

    def _new_step_plan(self, B):
        return _step_kernels().GRUStepPlan(
            self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None,
            self.activation, self.recurrent_activation, self.reset_after, B)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(recurrent_activation=activations.serialize(self.recurrent_activation),
                   reset_after=self.reset_after)
        return cfg


class SimpleRNN(RecurrentLayer):
    """Fully connected recurrent layer: ``h_t = act(x_t K + h_{t-1} R + b)``, Keras 3 weights
    ``kernel (I, H)``, ``recurrent_kernel (H, H)``, ``bias (H,)``. With ``layer_norm=True``
    ``h_t = act(LN(x_t K) gamma[0] + LN(h_{t-1} R) gamma[1] + b)`` and a last weight
    ``gamma (2, H)`` (``gamma_initializer``, ones)."""

    def _create_weights(self, input_dim):
        H, dt = self.units, self.dtype
        self.kernel = np.ascontiguousarray(self.kernel_initializer((input_dim, H), dt), dt)
        self.recurrent_kernel = np.ascontiguousarray(
            initializers.recurrent_kernel(self.recurrent_initializer, H, 1, dt), dt)
        if self.use_bias:
            self.bias = np.ascontiguousarray(self.bias_initializer((H,), dt), dt)

    def _run(self, x, states, mask, idm, rdm, training, return_sequences=None,
             zoneout_mask=None):
        if return_sequences is None:
            return_sequences = self.return_sequences
        y, h, cache = ops.simple_rnn_forward(
            x, self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None,
            states[0] if states is not None else None, mask=mask, input_dropout_mask=idm,
            recurrent_dropout_mask=rdm, activation=self.activation,
            go_backwards=self.go_backwards, return_sequences=return_sequences,
            training=training, mixed=self._mixed, **self._zoneout_kw(zoneout_mask),
            **self._layer_norm_kw())
        return y, [h], cache

    def _run_backward(self, cache, dy, dstates):
        return ops.simple_rnn_backward(cache, dy, dstates[0])

    def _new_step_plan(self, B):
        return _step_kernels().SimpleRNNStepPlan(
            self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None,
            self.activation, B)
