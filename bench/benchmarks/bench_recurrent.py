"""Recurrent layers: inference, training step (forward + backward), streaming step, memory."""
import numpy as np

try:
    import fastlstm as fl
except ImportError:  # asv imports benchmarks before checking the environment
    fl = None

from .common import DTYPES, SIZES, inputs, parse, threads

CELLS = ["lstm", "lstm_peephole", "lstm_cifg", "gru", "simple_rnn"]


def make_layer(cell, H, dtype, return_sequences=True):
    kw = dict(return_sequences=return_sequences, dtype=dtype)
    if cell.endswith("_layer_norm"):        # the same cell with layer_norm=True
        cell = cell[:-len("_layer_norm")]
        kw["layer_norm"] = True
    if cell == "lstm":
        return fl.layers.LSTM(H, **kw)
    if cell == "lstm_peephole":
        return fl.layers.LSTM(H, use_peepholes=True, **kw)
    if cell == "lstm_cifg":
        return fl.layers.LSTM(H, coupled_input_forget=True, **kw)
    if cell == "gru":
        return fl.layers.GRU(H, **kw)
    return fl.layers.SimpleRNN(H, **kw)


class Recurrent:
    params = (CELLS, DTYPES, SIZES)
    param_names = ["cell", "dtype", "T_B_H"]
    timeout = 120

    def setup(self, cell, dtype, size):
        if cell in ("gru", "simple_rnn") and not hasattr(fl.layers, "GRU"):
            raise NotImplementedError
        threads(2)
        T, B, I, H = parse(size)
        self.x = inputs(size, dtype)
        self.layer = make_layer(cell, H, dtype)
        self.layer.build(self.x.shape)
        self.dy = np.ones((B, T, H), dtype)

    def time_inference(self, cell, dtype, size):
        self.layer(self.x)

    def time_train_step(self, cell, dtype, size):
        y, backprop = self.layer.forward_train(self.x)
        backprop(self.dy)

    def peakmem_train_step(self, cell, dtype, size):
        y, backprop = self.layer.forward_train(self.x)
        backprop(self.dy)


class LayerNorm:
    """Each cell with and without layer_norm=True (docs/layers.md), side by side: the cost
    of the normalization (compare_peers.py --layer-norm has the PyTorch composition)."""
    params = (["lstm", "lstm_layer_norm", "gru", "gru_layer_norm", "simple_rnn",
               "simple_rnn_layer_norm"], ["100x32x256"])
    param_names = ["cell", "T_B_H"]
    timeout = 120

    def setup(self, cell, size):
        Recurrent.setup(self, cell, "float32", size)

    def time_inference(self, cell, size):
        self.layer(self.x)

    def time_train_step(self, cell, size):
        y, backprop = self.layer.forward_train(self.x)
        backprop(self.dy)


class Streaming:
    """One step() at batch 1, every cell (the GRU in both forms)."""
    params = (CELLS + ["gru_reset_before"], [64, 128, 256])
    param_names = ["cell", "units"]

    def setup(self, cell, units):
        threads(2)
        if cell == "gru_reset_before":
            self.layer = fl.layers.GRU(units, reset_after=False)
        else:
            self.layer = make_layer(cell, units, "float32", return_sequences=False)
        self.layer.build((1, 1, units))
        self.x = np.zeros((1, units), np.float32)
        self.state = self.layer.get_initial_state(1)

    def time_step(self, cell, units):
        self.layer.step(self.x, self.state)


class LongSequence:
    """Inference over a long sequence, last output only: its memory should stay that of the
    input (the projection runs a chunk of steps at a time, reading the batch-major input
    where it lies)."""
    params = (["lstm", "gru", "simple_rnn"],)
    param_names = ["cell"]
    timeout = 120

    def setup(self, cell):
        threads(2)
        self.x = np.random.default_rng(0).standard_normal((8, 20000, 16)).astype(np.float32)
        self.layer = make_layer(cell, 128, "float32", return_sequences=False)
        self.layer.build(self.x.shape)

    def time_inference(self, cell):
        self.layer(self.x)

    def peakmem_inference(self, cell):
        self.layer(self.x)


class Startup:
    """A new layer's build (its initializers: the recurrent kernel's orthogonal QR) and first
    call, which a serving process pays once: idle BLAS workers left spinning by the build
    would slow the kernels' first calls."""
    params = (["lstm", "gru"], [128, 512])
    param_names = ["cell", "units"]
    timeout = 120

    def setup(self, cell, units):
        threads(2)
        self.x = np.random.default_rng(0).standard_normal((16, 50, 128)).astype(np.float32)

    def time_build_and_first_call(self, cell, units):
        make_layer(cell, units, "float32")(self.x)
