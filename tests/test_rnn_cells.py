"""fl.layers.RNN with built-in cells, stacks of cells, and user-defined cells."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm.layers import GRU, LSTM, RNN, SimpleRNN, GRUCell, LSTMCell, SimpleRNNCell

CELLS = [(LSTMCell, LSTM), (GRUCell, GRU), (SimpleRNNCell, SimpleRNN)]


@pytest.mark.parametrize("cell_cls, layer_cls", CELLS)
def test_rnn_of_builtin_cell_equals_layer(cell_cls, layer_cls):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4))
    mask = rng.random((3, 5)) > 0.3
    rnn = RNN(cell_cls(6, dtype="float64"), return_sequences=True, return_state=True,
              go_backwards=True)
    out = rnn(x, mask=mask)
    layer = layer_cls(6, return_sequences=True, return_state=True, go_backwards=True,
                      dtype="float64")
    layer.build(x.shape)
    layer.set_weights(rnn.get_weights())
    ref = layer(x, mask=mask)
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # the cell steps like the layer
    state = rnn.cells[0].get_initial_state(3)
    y0, _ = rnn.cells[0](x[:, 0], state)
    np.testing.assert_allclose(y0, layer_cls(6, dtype="float64").__class__ and
                               layer.step(x[:, 0], layer.get_initial_state(3))[0], rtol=1e-12)


def test_stack_equals_per_timestep_stack_and_trains():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 3))
    cells = [LSTMCell(4, dtype="float64"), GRUCell(5, dtype="float64"),
             SimpleRNNCell(3, dtype="float64")]
    rnn = RNN(cells, return_sequences=True, return_state=True)
    y, *states = rnn(x)
    assert [s.shape for s in states] == [(2, 4), (2, 4), (2, 5), (2, 3)]
    # per-timestep reference: Keras StackedRNNCells semantics with the cells' own step()
    st = [c.get_initial_state(2) for c in cells]
    for t in range(6):
        h = x[:, t]
        for k, c in enumerate(cells):
            h, st[k] = c(h, st[k])
        np.testing.assert_allclose(y[:, t], h, rtol=1e-10, atol=1e-12)
    (y2, *_), backprop = rnn.forward_train(x)
    g = backprop([np.ones_like(y2)] + [None] * 4)
    assert g.inputs.shape == x.shape
    assert [w.shape for w in g.weights] == [w.shape for w in rnn.get_weights()]
    # finite-difference check of one input entry through the whole stack
    eps = 1e-6
    xp, xm = x.copy(), x.copy()
    xp[1, 2, 0] += eps
    xm[1, 2, 0] -= eps
    num = (rnn(xp)[0].sum() - rnn(xm)[0].sum()) / (2 * eps)
    np.testing.assert_allclose(g.inputs[1, 2, 0], num, rtol=1e-6)


class MinimalRNNCell:
    """A user-defined cell as in the Keras guide: h = tanh(x W + h U)."""

    def __init__(self, units, input_dim, seed=0):
        rng = np.random.default_rng(seed)
        self.state_size = units
        self.W = rng.standard_normal((input_dim, units)) * 0.5
        self.U = rng.standard_normal((units, units)) * 0.5

    def get_weights(self):
        return [self.W, self.U]

    def __call__(self, x_t, states):
        h = np.tanh(x_t @ self.W + states[0] @ self.U)
        return h, [h]

    def forward_train(self, x_t, states):
        h_prev = states[0]
        h = np.tanh(x_t @ self.W + h_prev @ self.U)

        def backprop_step(dy, dstates):
            dz = (dy + dstates[0]) * (1 - h * h)
            return dz @ self.W.T, [dz @ self.U.T], [x_t.T @ dz, h_prev.T @ dz]
        return h, [h], backprop_step


def test_user_defined_cell_inference_and_training():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 3))
    cell = MinimalRNNCell(4, 3)
    rnn = RNN(cell, return_sequences=True, dtype="float64")
    y = rnn(x)
    # same math as SimpleRNN without bias
    ref = SimpleRNN(4, use_bias=False, return_sequences=True, dtype="float64")
    ref.build(x.shape)
    ref.set_weights([cell.W, cell.U])
    np.testing.assert_allclose(y, ref(x), rtol=1e-10, atol=1e-12)
    y2, backprop = rnn.forward_train(x)
    g = backprop(np.ones_like(y2))
    _, bp_ref = ref.forward_train(x)
    g_ref = bp_ref(np.ones_like(y2))
    np.testing.assert_allclose(g.inputs, g_ref.inputs, rtol=1e-10, atol=1e-12)
    for a, b in zip(g.weights, g_ref.weights):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_user_cell_without_backward_is_inference_only():
    class Cell:
        state_size = 2

        def __call__(self, x_t, states):
            return x_t[:, :2], [x_t[:, :2]]
    rnn = RNN(Cell())
    assert rnn(np.ones((1, 3, 2))).shape == (1, 2)
    with pytest.raises(TypeError, match="no forward_train"):
        rnn.forward_train(np.ones((1, 3, 2)))


def test_bad_cells():
    with pytest.raises(TypeError, match="cell: expected an object with state_size"):
        RNN(object())
    with pytest.raises(ValueError, match="cell: expected a cell or a non-empty list"):
        RNN([])
    with pytest.raises(TypeError, match="return_sequences is an argument of RNN"):
        LSTMCell(3, return_sequences=True)


def test_rnn_of_cells_trains_saves_and_loads_in_a_model(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 7, 3)).astype(np.float32)
    y = rng.standard_normal((16, 1)).astype(np.float32)
    model = fl.Sequential([RNN([LSTMCell(5, kernel_regularizer="l2"), GRUCell(4)]),
                           fl.layers.Dense(1)])
    model.compile("adam", "mse")
    before = model.predict(x)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = model.predict(x)
    assert not np.allclose(before, after)            # the cells' weights were trained
    assert model.layers[0].weight_names[0] == "cell_0/kernel"
    model.save(tmp_path / "m.npz")
    loaded = fl.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict(x), after)
    cfg = model.layers[0].get_config()
    assert [c["class_name"] for c in cfg["cell"]] == ["LSTMCell", "GRUCell"]
