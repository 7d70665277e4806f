"""Write the valid files that tests/test_fuzz.py mutates. Run from the repository root when a
file format changes: ``KERAS_BACKEND=torch python tests/fuzz_seeds/make_seeds.py``. Needs
Keras 3 and onnx; the fuzz tests themselves need neither Keras nor TensorFlow."""
import os
import sys
import warnings

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.getcwd())

import fastlstm as fl                       # noqa: E402
from fastlstm.convert import to_onnx        # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 5, 3)).astype(np.float32)

model = fl.Sequential([fl.layers.LSTM(4, seed=0, return_sequences=True),
                       fl.layers.GRU(3, seed=1), fl.layers.Dense(2)])
model.compile("adam", "mse")
model.train_on_batch(x, rng.standard_normal((4, 2)).astype(np.float32))
model.save(os.path.join(HERE, "lstm_gru.npz"))

model = fl.Sequential([fl.layers.Bidirectional(fl.layers.SimpleRNN(3, seed=2)),
                       fl.layers.Dense(1)])
model(x)
model.save(os.path.join(HERE, "bidir_rnn.npz"))

# Quantized layers (format version 2): int8 values with scales, bfloat16 bit patterns.
tokens = rng.integers(0, 9, (4, 5))
qmodel = fl.Sequential([fl.layers.Embedding(9, 3), fl.layers.LSTM(4, seed=0,
                                                                  return_sequences=True),
                        fl.layers.GRU(3, seed=1, reset_after=False), fl.layers.Dense(2)])
qmodel(tokens)
fl.quantize(qmodel, "int8").save(os.path.join(HERE, "quantized_int8.npz"))
fl.quantize(qmodel, "bfloat16").save(os.path.join(HERE, "quantized_bf16.npz"))

lstm = fl.Sequential([fl.layers.LSTM(4, seed=0, use_peepholes=True), fl.layers.Dense(2)])
lstm(x)
to_onnx(lstm, os.path.join(HERE, "lstm.onnx"))
gru = fl.layers.GRU(3, seed=1, return_sequences=True, go_backwards=True)
gru(x)
to_onnx(gru, os.path.join(HERE, "gru.onnx"))

import keras                                # noqa: E402
km = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4),
                       keras.layers.Dense(2)])
km.save(os.path.join(HERE, "lstm.keras"))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(3, return_sequences=True),
                      keras.layers.SimpleRNN(2)]).save(os.path.join(HERE, "gru_rnn.h5"))
