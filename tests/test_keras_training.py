"""Training steps against Keras 3 (torch backend) from the same initial weights: one and two
``train_on_batch`` steps of Sequential([LSTM, Dense]) with SGD, Adam and RMSprop, a masked
sequence model, and one ``fit`` epoch (shuffle off) whose loss is Keras's batch-size weighted
mean. Everything in float32 (Keras 3 computes in float32)."""
import numpy as np
import pytest

import fastlstm as fl

from conftest import PEER_TOL, assert_close

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
if keras.backend.backend() != "torch":
    pytest.skip("Keras runs on another backend than torch", allow_module_level=True)

pytestmark = [pytest.mark.peers,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

F32 = np.dtype(np.float32)

OPTIMIZERS = {
    "sgd": (lambda: fl.optimizers.SGD(0.1, momentum=0.9),
            lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
    "adam": (lambda: fl.optimizers.Adam(0.01), lambda: keras.optimizers.Adam(0.01)),
    "rmsprop": (lambda: fl.optimizers.RMSprop(0.01), lambda: keras.optimizers.RMSprop(0.01)),
}


def peer_close(actual, expected, name=""):
    assert_close(np.asarray(actual, np.float64), np.asarray(expected, np.float64), F32,
                 name=name, table=PEER_TOL)


def twins(optimizer, T=7, I=3, H=8, metrics=()):
    """Our model and Keras's, with the same random initial weights."""
    ours = fl.Sequential([fl.layers.LSTM(H), fl.layers.Dense(1)])
    ours.build((None, T, I))
    rng = np.random.default_rng(0)
    ours.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.3
                      for w in ours.get_weights()])
    theirs = keras.Sequential([keras.Input((T, I)), keras.layers.LSTM(H), keras.layers.Dense(1)])
    theirs.set_weights(ours.get_weights())
    make_ours, make_theirs = OPTIMIZERS[optimizer]
    ours.compile(make_ours(), "mse", metrics=list(metrics))
    theirs.compile(make_theirs(), "mse", metrics=list(metrics))
    return ours, theirs


def batch(n=16, T=7, I=3, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, T, I)).astype(np.float32),
            rng.standard_normal((n, 1)).astype(np.float32))


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_train_on_batch_matches_keras(optimizer):
    ours, theirs = twins(optimizer, metrics=["mae"])
    x, y = batch()
    for step in range(2):               # the second step uses the optimizer's slots
        got = ours.train_on_batch(x, y)
        expected = theirs.train_on_batch(x, y)
        peer_close(got, expected, name=f"{optimizer} step {step} [loss, mae]")
        for i, (a, b) in enumerate(zip(ours.get_weights(), theirs.get_weights())):
            peer_close(a, b, name=f"{optimizer} step {step} weight {i}")
    peer_close(ours.predict(x), theirs.predict(x, verbose=0), name="predictions")


def test_fit_epoch_loss_and_weights_match_keras():
    ours, theirs = twins("adam", metrics=["mae"])
    x, y = batch(n=20)
    h_ours = ours.fit(x, y, batch_size=8, epochs=2, shuffle=False, validation_split=0.2,
                      verbose=0)
    h_theirs = theirs.fit(x, y, batch_size=8, epochs=2, shuffle=False, validation_split=0.2,
                          verbose=0)
    assert set(h_ours.history) == set(h_theirs.history)
    for key in h_theirs.history:
        peer_close(h_ours.history[key], h_theirs.history[key], name=key)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        peer_close(a, b)
    peer_close(ours.evaluate(x, y, batch_size=8), theirs.evaluate(x, y, batch_size=8, verbose=0))


def test_masked_sequence_loss_matches_keras():
    """Embedding(mask_zero) -> LSTM(return_sequences) -> Dense: Keras folds the output mask
    into the loss weights (mean over valid timesteps) and the metric weights."""
    V, E, H, T = 9, 4, 5, 6
    rng = np.random.default_rng(2)
    tokens = rng.integers(1, V, size=(8, T))
    tokens[:3, 4:] = 0
    tokens[3:5, :2] = 0
    y = rng.standard_normal((8, T, 1)).astype(np.float32)
    ours = fl.Sequential([fl.layers.Embedding(V, E, mask_zero=True),
                          fl.layers.LSTM(H, return_sequences=True), fl.layers.Dense(1)])
    ours.build((None, T))
    ours.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.3
                      for w in ours.get_weights()])
    theirs = keras.Sequential([keras.Input((T,), dtype="int32"),
                               keras.layers.Embedding(V, E, mask_zero=True),
                               keras.layers.LSTM(H, return_sequences=True),
                               keras.layers.Dense(1)])
    theirs.set_weights(ours.get_weights())
    ours.compile(fl.optimizers.SGD(0.1), "mse", metrics=["mae"])
    theirs.compile(keras.optimizers.SGD(0.1), "mse", metrics=["mae"])
    peer_close(ours.evaluate(tokens, y), theirs.evaluate(tokens, y, verbose=0), name="evaluate")
    peer_close(ours.train_on_batch(tokens, y), theirs.train_on_batch(tokens, y), name="train")
    for i, (a, b) in enumerate(zip(ours.get_weights(), theirs.get_weights())):
        peer_close(a, b, name=f"weight {i}")


def test_class_weight_and_generator_fit_match_keras():
    """class_weight on integer labels (metrics unweighted, weighted_metrics weighted), and fit from a generator with steps_per_epoch (plus
    a PyDataset on our side), against Keras 3 on the same weights and batches."""
    T, I, H, C, n = 6, 3, 5, 3, 24
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, T, I)).astype(np.float32)
    labels = rng.integers(0, C, size=(n, 1))
    ours = fl.Sequential([fl.layers.GRU(H), fl.layers.Dense(C, activation="softmax")])
    ours.build((None, T, I))
    ours.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.3
                      for w in ours.get_weights()])
    theirs = keras.Sequential([keras.Input((T, I)), keras.layers.GRU(H),
                               keras.layers.Dense(C, activation="softmax")])
    theirs.set_weights(ours.get_weights())
    start = ours.get_weights()
    ours.compile(fl.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"],
                 weighted_metrics=["accuracy"])
    theirs.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                   metrics=["accuracy"], weighted_metrics=["accuracy"])
    cw = {0: 0.5, 1: 2.0, 2: 1.0}
    h_ours = ours.fit(x, labels, batch_size=8, epochs=2, shuffle=False, class_weight=cw,
                      verbose=0)
    h_theirs = theirs.fit(x, labels, batch_size=8, epochs=2, shuffle=False, class_weight=cw,
                          verbose=0)
    assert set(h_ours.history) == set(h_theirs.history) == {"loss", "accuracy",
                                                            "weighted_accuracy"}
    for key in h_theirs.history:
        peer_close(h_ours.history[key], h_theirs.history[key], name=f"class_weight {key}")
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        peer_close(a, b, name="class_weight weights")

    def batches():
        while True:
            for i in range(0, n, 8):
                yield x[i:i + 8], labels[i:i + 8]

    class Batches(fl.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[i * 8:(i + 1) * 8], labels[i * 8:(i + 1) * 8]

    ours.set_weights(start)
    theirs.set_weights(start)
    h_ours = ours.fit(batches(), steps_per_epoch=3, epochs=2, shuffle=False, verbose=0)
    h_theirs = theirs.fit(batches(), steps_per_epoch=3, epochs=2, shuffle=False, verbose=0)
    for key in h_theirs.history:
        peer_close(h_ours.history[key], h_theirs.history[key], name=f"generator {key}")
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        peer_close(a, b, name="generator weights")
    ours.set_weights(start)
    h_pyd = ours.fit(Batches(), epochs=2, shuffle=False, verbose=0)
    for key in h_theirs.history:
        peer_close(h_pyd.history[key], h_theirs.history[key], name=f"PyDataset {key}")
