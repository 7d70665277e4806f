"""Keras's cell API: ``fl.layers.RNN(cell)`` with ``LSTMCell``, ``GRUCell``, ``SimpleRNNCell``,
a list of cells (a stack, as Keras ``StackedRNNCells``), or a user-defined cell.

Built-in cells run on the compiled sequence kernels: ``RNN(LSTMCell(64))`` is an ``LSTM(64)``
layer that shares the cell's weights. A stack runs as one compiled layer per cell, which
computes exactly what a per-timestep stack computes (cell k's output at step t is cell k+1's
input at step t) with one kernel call per cell instead of a Python loop.

A user-defined cell is any object with ``state_size`` (an int or a list of ints) and
``__call__(x_t, states) -> (y_t, new_states)`` on NumPy arrays. It runs through a Python loop
over timesteps, which is much slower than the built-in cells. Training it needs
``cell.forward_train(x_t, states) -> (y_t, new_states, backprop_step)`` where
``backprop_step(dy_t, dnew_states) -> (dx_t, dstates, dweights)``; ``cell.get_weights()``
lists the weights that ``dweights`` is aligned with.
"""
from __future__ import annotations

import numpy as np

from .base import Gradients, Layer, as_float_array, check_bool, check_training
from .recurrent import GRU, LSTM, SimpleRNN

_LAYER_ARGS = ("return_sequences", "return_state", "go_backwards", "stateful", "name",
               "trainable", "unroll", "zero_output_for_mask")


class _BuiltinCell:
    """A cell is the configuration of its sequence layer, minus the sequence options."""

    layer_class = None

    def __init__(self, units, **kwargs):
        for k in _LAYER_ARGS:
            if k in kwargs and k not in ("name", "trainable"):
                raise TypeError(f"{type(self).__name__}: {k} is an argument of RNN, not of the cell")
        self._kwargs = dict(kwargs)
        self._layer = self.layer_class(units, return_sequences=True, **kwargs)
        self.units = self._layer.units

    @property
    def state_size(self):
        n = len(self._layer.state_names)
        return [self.units] * n if n > 1 else self.units

    @property
    def built(self):
        return self._layer.built

    def build(self, input_shape):
        self._layer.build((None, None, input_shape[-1]))

    def get_weights(self):
        return self._layer.get_weights()

    def set_weights(self, weights):
        self._layer.set_weights(weights)

    def get_initial_state(self, batch_size):
        return self._layer.get_initial_state(batch_size)

    def __call__(self, x_t, states):
        """One step: ``(y_t, new_states)``."""
        states = states if isinstance(states, (list, tuple)) else [states]
        return self._layer.step(x_t, list(states))

    def get_config(self):
        cfg = {k: v for k, v in self._layer.get_config().items() if k not in _LAYER_ARGS}
        return cfg

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class LSTMCell(_BuiltinCell):
    layer_class = LSTM


class GRUCell(_BuiltinCell):
    layer_class = GRU


class SimpleRNNCell(_BuiltinCell):
    layer_class = SimpleRNN


def _state_sizes(cell):
    s = cell.state_size
    return list(s) if isinstance(s, (list, tuple)) else [int(s)]


class RNN(Layer):
    """``RNN(cell_or_cells, return_sequences=False, return_state=False, go_backwards=False,
    stateful=False)`` with Keras semantics; see the module docstring."""

    def __init__(self, cell, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, dtype=None, name=None, trainable=True, unroll=False,
                 zero_output_for_mask=False):
        cells = list(cell) if isinstance(cell, (list, tuple)) else [cell]
        if not cells:
            raise ValueError("cell: expected a cell or a non-empty list of cells, got []")
        for c in cells:
            if not (hasattr(c, "state_size") and callable(c)):
                raise TypeError(f"cell: expected an object with state_size and __call__(x_t, states), "
                                f"got {type(c).__name__}")
        builtin = [isinstance(c, _BuiltinCell) for c in cells]
        if dtype is None:
            dtype = cells[0]._layer.dtype.name if builtin[0] else "float32"
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.cells = cells
        self.return_sequences = check_bool("return_sequences", return_sequences)
        self.return_state = check_bool("return_state", return_state)
        self.go_backwards = check_bool("go_backwards", go_backwards)
        self.stateful = check_bool("stateful", stateful)
        self.unroll = check_bool("unroll", unroll)
        self.zero_output_for_mask = check_bool("zero_output_for_mask", zero_output_for_mask)
        self.compiled = all(builtin)
        if any(builtin) and not self.compiled:
            raise ValueError("cell: a stack cannot mix built-in and user-defined cells")
        self.states = None
        if self.compiled:
            # One sequence layer per cell, sharing the cell's weights (the cell's own layer).
            self._layers = []
            for k, c in enumerate(cells):
                lay = c._layer
                lay.return_sequences = True
                lay.return_state = True
                lay.go_backwards = self.go_backwards and k == 0
                lay.stateful = False
                self._layers.append(lay)

    # -- weights -------------------------------------------------------------------------
    @property
    def weight_names(self):
        if self.compiled:
            return [f"cell_{k}/{n}" for k, c in enumerate(self.cells) for n in c._layer.weight_names]
        return [f"cell_{k}/weight_{j}" for k, c in enumerate(self.cells)
                for j in range(len(c.get_weights()))]

    @property
    def weights(self):
        return [w for c in self.cells for w in (c._layer.weights if self.compiled else c.get_weights())]

    def get_weights(self):
        return [w for c in self.cells for w in c.get_weights()]

    def set_weights(self, weights):
        weights = list(weights)
        for c in self.cells:
            n = len(c.get_weights())
            c.set_weights(weights[:n])
            weights = weights[n:]
        if weights:
            raise ValueError(f"weights: {len(weights)} arrays too many for {self.name}")

    def regularization_loss(self):
        return float(sum(c._layer.regularization_loss() for c in self.cells)) if self.compiled else 0.0

    def regularization_grads(self):
        if not self.compiled:
            return [None] * len(self.weight_names)
        return [g for c in self.cells for g in c._layer.regularization_grads()]

    @property
    def last_activity_loss(self):
        return float(sum(c._layer.last_activity_loss for c in self.cells)) if self.compiled else 0.0

    def compute_output_shape(self, input_shape):
        B, T = input_shape[0], input_shape[1]
        units = _state_sizes(self.cells[-1])[0]
        out = (B, T, units) if self.return_sequences else (B, units)
        if self.return_state:
            return [out] + [(B, s) for c in self.cells for s in _state_sizes(c)]
        return out

    def get_config(self):
        if not self.compiled:
            raise ValueError(f"{self.name}: a user-defined cell has no configuration to save")
        cfg = super().get_config()
        cfg.update(cell=[{"class_name": type(c).__name__, "config": c.get_config()}
                         for c in self.cells],
                   return_sequences=self.return_sequences, return_state=self.return_state,
                   go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
                   zero_output_for_mask=self.zero_output_for_mask)
        return cfg

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        classes = {"LSTMCell": LSTMCell, "GRUCell": GRUCell, "SimpleRNNCell": SimpleRNNCell}
        cells = []
        for spec in config.pop("cell"):
            if spec.get("class_name") not in classes:
                raise ValueError(f"cell: unknown cell class {spec.get('class_name')!r}; expected "
                                 f"one of {sorted(classes)}")
            cells.append(classes[spec["class_name"]].from_config(spec["config"]))
        return cls(cells, **config)

    def count_params(self):
        return int(sum(w.size for w in self.get_weights()))

    def weight_shapes(self, input_shape):
        if not self.compiled:
            return None
        shapes, dim = [], None
        for c in self.cells:
            shape = input_shape if dim is None else (None, None, dim)
            shapes += c._layer.weight_shapes(shape)
            dim = c._layer.units
        return shapes

    def build(self, input_shape):
        dim = input_shape[-1]
        for c in self.cells:
            if hasattr(c, "build") and not getattr(c, "built", False):
                c.build((None, dim))
            dim = getattr(c, "output_size", _state_sizes(c)[0])
        super().build(input_shape)

    def compute_mask(self, inputs, mask=None):
        if not self.return_sequences:
            return None
        if mask is not None and self.go_backwards:
            return np.ascontiguousarray(np.asarray(mask)[:, ::-1])
        return mask

    def get_initial_state(self, batch_size):
        return [np.zeros((batch_size, s), self.dtype) for c in self.cells for s in _state_sizes(c)]

    def reset_states(self, rows=None):
        if not self.stateful:
            raise ValueError(f"{self.name}: reset_states needs stateful=True")
        if self.states is not None:
            for s in self.states:
                s[slice(None) if rows is None else np.asarray(rows)] = 0

    # -- calls -----------------------------------------------------------------------------
    def _split_states(self, initial_state, B):
        if initial_state is None and self.stateful and self.states is not None:
            initial_state = self.states
        per_cell, pos = [], 0
        flat = None if initial_state is None else list(initial_state)
        total = sum(len(_state_sizes(c)) for c in self.cells)
        if flat is not None and len(flat) != total:
            raise ValueError(f"initial_state: {self.name} expects {total} arrays, got {len(flat)}")
        for c in self.cells:
            n = len(_state_sizes(c))
            per_cell.append(None if flat is None else flat[pos:pos + n])
            pos += n
        return per_cell

    def _outputs(self, y, states):
        out = y if self.return_sequences else y[:, -1] if y.ndim == 3 else y
        if self.return_state:
            return [out] + states
        return out

    def __call__(self, x, mask=None, initial_state=None, training=False):
        training = check_training(training)
        x = as_float_array("x", x, self.dtype, ndim=3)
        if not self.built:
            self.build(x.shape)
        if not self.compiled:
            y, states = self._python_loop(x, mask, initial_state)
        else:
            y, states = self._compiled(x, mask, initial_state, training)
        if self.stateful:
            self.states = [np.array(s) for s in states]
        return self._outputs(y, states)

    def _compiled(self, x, mask, initial_state, training, train=False):
        per_cell = self._split_states(initial_state, x.shape[0])
        h, m, states, backprops = x, mask, [], []
        for k, (lay, st) in enumerate(zip(self._layers, per_cell)):
            if train:
                out, bp = lay.forward_train(h, mask=m, initial_state=st)
                backprops.append((bp, st is not None))
            else:
                out = lay(h, mask=m, initial_state=st, training=training)
            h, fin = out[0], out[1:]
            states += fin
            if k == 0 and self.go_backwards and m is not None:
                m = np.ascontiguousarray(np.asarray(m)[:, ::-1])   # later cells see reversed order
        om = None
        if self.zero_output_for_mask and m is not None:     # m: the mask in step order
            om = (np.asarray(m) != 0)[:, :, None].astype(self.dtype)
            h = h * om
        if train:
            return h, states, backprops, om
        return h, states

    def forward_train(self, x, mask=None, initial_state=None):
        x = as_float_array("x", x, self.dtype, ndim=3)
        if not self.built:
            self.build(x.shape)
        if not self.compiled:
            return self._python_train(x, mask, initial_state)
        y, states, backprops, om = self._compiled(x, mask, initial_state, True, train=True)
        if self.stateful:
            self.states = [np.array(s) for s in states]
        outputs = self._outputs(y, states)
        T = x.shape[1]

        def backprop(d_out):
            if self.return_state:
                dy, dstates = d_out[0], list(d_out[1:])
            else:
                dy, dstates = d_out, [None] * len(states)
            if dy is not None and not self.return_sequences:
                full = np.zeros((x.shape[0], T, y.shape[2]), self.dtype)
                full[:, -1] = dy
                dy = full
            if dy is not None and om is not None:
                dy = dy * om
            weight_grads, init_grads, pos = [], [], len(states)
            for (bp, had_state), c in reversed(list(zip(backprops, self.cells))):
                n = len(_state_sizes(c))
                pos -= n
                g = bp([dy] + dstates[pos:pos + n])
                dy = g.inputs
                weight_grads = g.weights + weight_grads
                init_grads = (g.initial_state or [None] * n) + init_grads
            return Gradients(inputs=dy, initial_state=init_grads if initial_state is not None else None,
                             weights=weight_grads)

        return outputs, backprop

    # -- user-defined cells ------------------------------------------------------------------
    def _loop_setup(self, x, mask, initial_state):
        B, T, _ = x.shape
        if initial_state is None and self.stateful and self.states is not None:
            initial_state = self.states
        states = (list(initial_state) if initial_state is not None else self.get_initial_state(B))
        order = range(T - 1, -1, -1) if self.go_backwards else range(T)
        m = None if mask is None else np.asarray(mask, bool)
        return states, order, m

    def _python_loop(self, x, mask, initial_state):
        """Inference for user-defined cells: a Python loop over timesteps (slow)."""
        states, order, m = self._loop_setup(x, mask, initial_state)
        per_cell = self._split_states(states, x.shape[0])
        ys, prev = [], None
        for t in order:
            h = x[:, t]
            new_cells = []
            for c, st in zip(self.cells, per_cell):
                h, st_new = c(h, st)
                new_cells.append(list(st_new) if isinstance(st_new, (list, tuple)) else [st_new])
            if m is not None:
                keep = m[:, t][:, None]
                new_cells = [[np.where(keep, n, o) for n, o in zip(nc, oc)]
                             for nc, oc in zip(new_cells, per_cell)]
                prev = np.zeros_like(h) if prev is None or self.zero_output_for_mask else prev
                h = np.where(keep, h, prev)
            per_cell, prev = new_cells, h
            ys.append(h)
        return np.stack(ys, axis=1), [s for st in per_cell for s in st]

    def _python_train(self, x, mask, initial_state):
        for c in self.cells:
            if not hasattr(c, "forward_train"):
                raise TypeError(f"{self.name}: the user-defined cell {type(c).__name__} has no "
                                "forward_train(x_t, states) -> (y_t, new_states, backprop_step); "
                                "it can run inference only")
        if len(self.cells) != 1 or mask is not None:
            raise ValueError(f"{self.name}: training a user-defined cell supports one cell and no mask")
        cell = self.cells[0]
        states, order, _ = self._loop_setup(x, mask, initial_state)
        steps, ys = [], []
        for t in order:
            y_t, states, bp = cell.forward_train(x[:, t], states)
            states = list(states) if isinstance(states, (list, tuple)) else [states]
            steps.append((t, bp))
            ys.append(y_t)
        y = np.stack(ys, axis=1)
        outputs = self._outputs(y, states)

        def backprop(d_out):
            if self.return_state:
                dy, dstates = d_out[0], list(d_out[1:])
            else:
                dy, dstates = d_out, [None] * len(states)
            dstates = [np.zeros_like(s) if d is None else d for s, d in zip(states, dstates)]
            dx = np.zeros_like(x)
            dweights = None
            for k, (t, bp) in reversed(list(enumerate(steps))):
                if dy is None:
                    dy_t = np.zeros_like(ys[k])
                elif self.return_sequences:
                    dy_t = dy[:, k]
                else:
                    dy_t = dy if k == len(steps) - 1 else np.zeros_like(ys[k])
                dx[:, t], dstates, dw = bp(dy_t, dstates)
                dstates = list(dstates) if isinstance(dstates, (list, tuple)) else [dstates]
                dweights = dw if dweights is None else [a + b for a, b in zip(dweights, dw)]
            return Gradients(inputs=dx, initial_state=dstates if initial_state is not None else None,
                             weights=list(dweights or []))

        return outputs, backprop
