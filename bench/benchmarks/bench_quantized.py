"""Inference-ready reduced-precision copies (fl.quantize(model, "int8" | "bfloat16")):
inference over a sequence and the streaming step. Skipped (NotImplementedError in setup,
asv's way) in a fastlstm without ``quantize``."""
import numpy as np

try:
    import fastlstm as fl
except ImportError:  # asv imports benchmarks before checking the environment
    fl = None

from .common import inputs, parse, threads

KINDS = ["int8", "bfloat16"]
# (T, B, I=H): small shapes of bench/compare_peers.py --lowp
QUANT_SIZES = ["100x1x128", "100x16x128", "100x4x512"]


def _require_quantize():
    if fl is None or not hasattr(fl, "quantize"):
        raise NotImplementedError("this fastlstm has no quantize")


def _layer(cell, H, return_sequences=True):
    if cell == "gru":
        return fl.layers.GRU(H, return_sequences=return_sequences)
    return fl.layers.LSTM(H, return_sequences=return_sequences)


class Quantized:
    params = (["lstm", "gru"], KINDS, QUANT_SIZES)
    param_names = ["cell", "kind", "T_B_H"]
    timeout = 120

    def setup(self, cell, kind, size):
        _require_quantize()
        threads(2)
        T, B, I, H = parse(size)
        self.x = inputs(size, "float32")
        layer = _layer(cell, H)
        layer.build(self.x.shape)
        self.model = fl.quantize(layer, kind)
        self.model(self.x)                      # first call: lazy set-up, not timed

    def time_inference(self, cell, kind, size):
        self.model(self.x)


class QuantizedStreaming:
    """One step() at batch 1 of a quantized layer."""
    params = (["lstm", "gru"], KINDS, [128, 256])
    param_names = ["cell", "kind", "units"]

    def setup(self, cell, kind, units):
        _require_quantize()
        threads(2)
        layer = _layer(cell, units, return_sequences=False)
        layer.build((1, 1, units))
        self.state = layer.get_initial_state(1)
        self.model = fl.quantize(layer, kind)
        self.x = np.zeros((1, units), np.float32)
        self.model.step(self.x, self.state)

    def time_step(self, cell, kind, units):
        self.model.step(self.x, self.state)
