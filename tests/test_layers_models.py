"""The layers around the recurrent ones inside models: a Conv1D -> LSTM ->
GlobalMaxPooling1D -> Dense classifier against the same Keras 3 model (predict and three
Adam train_on_batch steps), fit/save/load, and conversion of Sequential models with these
layers from and to Keras."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm.convert import from_keras, to_keras
from fastlstm.layers import (LSTM, Activation, Conv1D, Dense, Flatten, GlobalAveragePooling1D,
                             GlobalMaxPooling1D, LayerNormalization, RepeatVector,
                             TimeDistributed)

from conftest import PEER_TOL, assert_close

keras = pytest.importorskip("keras")
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")]

F32 = np.dtype(np.float32)
T, C, K = 12, 3, 4


def peer_close(actual, expected, name=""):
    assert_close(np.asarray(actual, np.float64), np.asarray(expected, np.float64), F32,
                 name=name, table=PEER_TOL)


def classifier():
    return fl.Sequential([Conv1D(8, 3, padding="causal", dilation_rate=2, activation="relu"),
                          LSTM(6, return_sequences=True), GlobalMaxPooling1D(),
                          Dense(K, activation="softmax")])


def keras_classifier():
    return keras.Sequential([keras.Input((T, C)),
                             keras.layers.Conv1D(8, 3, padding="causal", dilation_rate=2,
                                                 activation="relu"),
                             keras.layers.LSTM(6, return_sequences=True),
                             keras.layers.GlobalMaxPooling1D(),
                             keras.layers.Dense(K, activation="softmax")])


def data(n=16, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, T, C)).astype(np.float32),
            rng.integers(0, K, size=n))


def test_classifier_matches_keras_in_predict_and_three_adam_steps():
    ours, theirs = classifier(), keras_classifier()
    ours.build((None, T, C))
    rng = np.random.default_rng(0)
    ours.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4
                      for w in ours.get_weights()])
    theirs.set_weights(ours.get_weights())
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in theirs.get_weights()]
    x, y = data()
    peer_close(ours.predict(x), theirs.predict(x, verbose=0), "predict")
    ours.compile(fl.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    theirs.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    for step in range(3):
        peer_close(ours.train_on_batch(x, y), theirs.train_on_batch(x, y), f"loss {step}")
        for i, (a, b) in enumerate(zip(ours.get_weights(), theirs.get_weights())):
            peer_close(a, b, f"step {step} weight {i}")
    peer_close(ours.predict(x), theirs.predict(x, verbose=0), "predict after")


def test_classifier_fits_saves_and_loads(tmp_path):
    model = classifier()
    model.compile(fl.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    x, y = data(n=32)
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    path = tmp_path / "clf.npz"
    model.save(path)
    loaded = fl.load_model(path)
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # training goes on from the saved optimizer state exactly as in the original
    np.testing.assert_allclose(loaded.train_on_batch(x[:8], y[:8]),
                               model.train_on_batch(x[:8], y[:8]), rtol=1e-6)


def test_other_layers_save_and_load(tmp_path):
    model = fl.Sequential([TimeDistributed(Dense(5, activation="tanh")),
                           LayerNormalization(),
                           Conv1D(4, 2, strides=2, padding="same"),
                           GlobalAveragePooling1D(keepdims=True), Flatten(),
                           RepeatVector(3), Activation("softmax")])
    x = np.random.default_rng(2).standard_normal((4, 7, 3)).astype(np.float32)
    y = model.predict(x)
    assert y.shape == (4, 3, 4) == (4,) + model.output_shape[1:]
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(fl.load_model(tmp_path / "m.npz").predict(x), y)


def test_load_refuses_weights_that_do_not_fit_the_config(tmp_path):
    import json

    from fastlstm.saving import DOC_KEY
    model = fl.Sequential([Conv1D(4, 3), LayerNormalization(), GlobalMaxPooling1D()])
    model.build((None, 6, 2))
    model.save(tmp_path / "m.npz")
    for layer, key, value, text in ((0, "kernel_size", [2], "kernel"),
                                    (1, "center", False, "LayerNormalization|weights")):
        with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        doc = json.loads(arrays[DOC_KEY].tobytes().decode())
        doc["model"]["layers"][layer]["config"][key] = value
        arrays[DOC_KEY] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
        with open(tmp_path / "bad.npz", "wb") as fh:
            np.savez(fh, **arrays)
        with pytest.raises(ValueError, match=text):
            fl.load_model(tmp_path / "bad.npz")


# ------------------------------------------------------------------ converters
def keras_mixed():
    return keras.Sequential([
        keras.Input((T, C)),
        keras.layers.Conv1D(6, 3, padding="same", activation="relu"),
        keras.layers.LayerNormalization(epsilon=1e-4),
        keras.layers.TimeDistributed(keras.layers.Dense(5, activation="tanh")),
        keras.layers.Activation("sigmoid"),
        keras.layers.LSTM(4, return_sequences=True),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.RepeatVector(2),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax")])


def _randomize(model, seed=3):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.standard_normal(w.shape).astype(w.dtype) * 0.5
                       for w in model.get_weights()])


def test_from_keras_and_back_compute_the_same():
    kmodel = keras_mixed()
    _randomize(kmodel)
    x, _ = data(n=5)
    model = from_keras(kmodel)
    assert [type(l).__name__ for l in model.layers] == [
        "Conv1D", "LayerNormalization", "TimeDistributed", "Activation", "LSTM",
        "GlobalAveragePooling1D", "RepeatVector", "Flatten", "Dense"]
    expected = kmodel.predict(x, verbose=0)
    peer_close(model.predict(x), expected, "from_keras")
    back = to_keras(model)
    assert [type(l).__name__ for l in back.layers] == [type(l).__name__ for l in kmodel.layers]
    peer_close(back.predict(x, verbose=0), expected, "to_keras")
    for a, b in zip(back.get_weights(), kmodel.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_from_keras_reads_a_keras_file_with_these_layers(tmp_path):
    kmodel = keras_mixed()
    _randomize(kmodel, seed=4)
    path = tmp_path / "mixed.keras"
    kmodel.save(path)
    x, _ = data(n=4)
    peer_close(from_keras(str(path)).predict(x), kmodel.predict(x, verbose=0), "file")


def test_to_keras_of_a_trained_classifier():
    model = classifier()
    model.compile(fl.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    x, y = data()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    peer_close(to_keras(model).predict(x, verbose=0), model.predict(x), "classifier")


def test_converters_refuse_what_they_cannot_map():
    from fastlstm.convert import ConversionError
    with pytest.raises(ConversionError, match="groups"):
        from_keras(keras.Sequential([keras.Input((T, 4)), keras.layers.Conv1D(4, 3, groups=2)]))
    with pytest.raises(ConversionError):
        from_keras(keras.Sequential([keras.Input((T, C)),
                                     keras.layers.Conv1D(4, 3, data_format="channels_first")]))
    with pytest.raises(ConversionError, match="constraint"):
        from_keras(keras.Sequential([keras.Input((T, C)), keras.layers.LayerNormalization(
            gamma_constraint="non_neg")]))
    converted = from_keras(keras.Sequential([keras.Input((T, C)), keras.layers.LayerNormalization(
        gamma_constraint="non_neg")]), drop_training_options=True)
    assert isinstance(converted.layers[0], LayerNormalization)


@pytest.mark.parametrize("pool", ["GlobalAveragePooling1D", "GlobalMaxPooling1D"])
def test_masked_sequence_pooling_model_matches_keras(pool):
    """Embedding(mask_zero) -> LSTM(return_sequences) -> pooling -> Dense: the mask reaches
    the pooling layer (averaged over the valid steps; ignored by the max), as in Keras."""
    rng = np.random.default_rng(5)
    ids = rng.integers(1, 20, size=(6, 9))
    ids[0, 5:] = 0
    ids[3, 2:] = 0
    ours = fl.Sequential([fl.layers.Embedding(20, 4, mask_zero=True),
                          LSTM(5, return_sequences=True),
                          getattr(fl.layers, pool)(), Dense(2)])
    theirs = keras.Sequential([keras.Input((9,), dtype="int64"),
                               keras.layers.Embedding(20, 4, mask_zero=True),
                               keras.layers.LSTM(5, return_sequences=True),
                               getattr(keras.layers, pool)(), keras.layers.Dense(2)])
    ours.build((None, 9))
    _randomize(theirs, seed=6)
    ours.set_weights(theirs.get_weights())
    peer_close(ours.predict(ids), theirs.predict(ids, verbose=0), pool)
    ours.compile(fl.optimizers.SGD(0.5), "mse")
    theirs.compile(keras.optimizers.SGD(0.5), "mse")
    target = rng.standard_normal((6, 2)).astype(np.float32)
    for step in range(2):
        peer_close(ours.train_on_batch(ids, target), theirs.train_on_batch(ids, target),
                   f"loss {step}")
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        peer_close(a, b, "weights")


def test_regularizers_train_as_in_keras():
    """Conv1D's kernel and activity regularizers and LayerNormalization's gamma regularizer
    enter the loss and the gradients as in Keras."""
    from fastlstm.regularizers import L1L2
    ours = fl.Sequential([Conv1D(4, 3, kernel_regularizer=L1L2(0.01, 0.02),
                                 activity_regularizer=L1L2(0.0, 0.05)),
                          LayerNormalization(gamma_regularizer=L1L2(0.0, 0.1)),
                          GlobalAveragePooling1D(), Dense(1)])
    theirs = keras.Sequential([
        keras.Input((T, C)),
        keras.layers.Conv1D(4, 3, kernel_regularizer=keras.regularizers.L1L2(0.01, 0.02),
                            activity_regularizer=keras.regularizers.L1L2(0.0, 0.05)),
        keras.layers.LayerNormalization(gamma_regularizer=keras.regularizers.L2(0.1)),
        keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    ours.build((None, T, C))
    _randomize(theirs, seed=7)
    ours.set_weights(theirs.get_weights())
    ours.compile(fl.optimizers.SGD(0.1), "mse")
    theirs.compile(keras.optimizers.SGD(0.1), "mse")
    x, _ = data(n=8)
    y = np.random.default_rng(8).standard_normal((8, 1)).astype(np.float32)
    for step in range(2):
        peer_close(ours.train_on_batch(x, y), theirs.train_on_batch(x, y), f"loss {step}")
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        peer_close(a, b, "weights")


def test_from_keras_reads_a_weights_file_with_a_fastlstm_architecture(tmp_path):
    kmodel = keras_mixed()
    _randomize(kmodel, seed=9)
    kmodel.save_weights(tmp_path / "mixed.weights.h5")
    architecture = from_keras(keras_mixed())          # other weights, same structure
    model = from_keras(str(tmp_path / "mixed.weights.h5"), architecture=architecture)
    x, _ = data(n=3)
    peer_close(model.predict(x), kmodel.predict(x, verbose=0), "weights file")


@pytest.mark.parametrize("make", [
    lambda: keras.layers.Conv1D(4, 2, strides=2, padding="same", activation="tanh"),
    lambda: keras.layers.LayerNormalization(axis=[1, 2], epsilon=1e-2),
    lambda: keras.layers.TimeDistributed(keras.layers.Dense(3)),
    lambda: keras.layers.GlobalMaxPooling1D(keepdims=True),
    lambda: keras.layers.Activation("softsign")],
    ids=["conv", "layer_norm", "time_distributed", "max_pool", "activation"])
def test_single_layers_convert_both_ways(make):
    x, _ = data(n=3)
    klayer = make()
    klayer.build(x.shape)
    if klayer.get_weights():
        _randomize(klayer, seed=10)
    expected = np.asarray(klayer(x).detach().cpu())
    layer = from_keras(klayer)
    assert type(layer).__name__ == type(klayer).__name__
    peer_close(layer(x), expected, "from_keras")
    back = to_keras(layer)
    assert type(back).__name__ == type(klayer).__name__
    peer_close(np.asarray(back(x).detach().cpu()), expected, "to_keras")
