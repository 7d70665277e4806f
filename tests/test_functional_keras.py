"""Functional models against Keras 3 (torch backend): the same graph built in both, weights
copied by layer name, then ``predict`` and three Adam ``train_on_batch`` steps (losses,
per-output logs and weights) compared, and ``fit`` epochs. Graphs: Keras's seq2seq
encoder-decoder (states through ``initial_state``; small, and at the example's own size), a
model with two inputs (one tensor feeding two state slots), models with two outputs,
``loss_weights`` and metrics per output, a shared layer, and masks from an Embedding.

The random weights of most tests are large (std 0.3): with Adam, whose first steps move a
weight by about the learning rate whatever the size of its gradient, float32 rounding can
flip the direction of weights with near-zero gradients in a large model, so the full-size
test starts from the initializers' weights as a user's model does."""
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


def close(actual, expected, name=""):
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, list) and len(actual) == len(expected), name
        for k, (a, b) in enumerate(zip(actual, expected)):
            close(a, b, f"{name}[{k}]")
        return
    assert_close(np.asarray(actual, np.float64), np.asarray(expected, np.float64), F32,
                 name=name, table=PEER_TOL)


def copy_weights(ours, theirs, seed=0):
    """Random weights into our model, copied to Keras's layer by layer (by name)."""
    rng = np.random.default_rng(seed)
    for layer in ours.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        new = [(rng.standard_normal(w.shape) * 0.3).astype(np.float32) for w in ws]
        layer.set_weights(new)
        theirs.get_layer(layer.name).set_weights(new)


def compare_steps(ours, theirs, x, y, steps=3, sample_weight=None):
    close(ours.predict(x),
          theirs.predict(x, verbose=0), "predict")
    for step in range(steps):
        a = ours.train_on_batch(x, y, sample_weight=sample_weight, return_dict=True)
        b = theirs.train_on_batch(x, y, sample_weight=sample_weight, return_dict=True)
        assert set(a) == set(b), (sorted(a), sorted(b))
        for k in b:
            close(a[k], b[k], f"step {step} {k}")
        for layer in ours.layers:
            for i, (wa, wb) in enumerate(zip(layer.get_weights(),
                                             theirs.get_layer(layer.name).get_weights())):
                close(wa, wb, f"step {step} {layer.name} weight {i}")


def seq2seq(lib, units=32, n_in=7, n_out=9):
    """Keras's character-level seq2seq translation model (keras.io lstm_seq2seq)."""
    enc_in = lib.Input(shape=(None, n_in), name="encoder_inputs")
    _, h, c = lib.layers.LSTM(units, return_state=True, name="encoder")(enc_in)
    dec_in = lib.Input(shape=(None, n_out), name="decoder_inputs")
    seq, _, _ = lib.layers.LSTM(units, return_sequences=True, return_state=True,
                                name="decoder")(dec_in, initial_state=[h, c])
    out = lib.layers.Dense(n_out, activation="softmax", name="dense")(seq)
    return lib.Model([enc_in, dec_in], out)


def one_hot(rng, n, t, k):
    return np.eye(k, dtype=np.float32)[rng.integers(0, k, (n, t))]


def test_seq2seq_translation_model_matches_keras():
    ours, theirs = seq2seq(fl), seq2seq(keras)
    copy_weights(ours, theirs)
    rng = np.random.default_rng(1)
    x = [one_hot(rng, 16, 6, 7), one_hot(rng, 16, 5, 9)]
    y = one_hot(rng, 16, 5, 9)
    ours.compile(fl.optimizers.Adam(0.01), "categorical_crossentropy", metrics=["accuracy"])
    theirs.compile(keras.optimizers.Adam(0.01), "categorical_crossentropy",
                   metrics=["accuracy"])
    compare_steps(ours, theirs, x, y)


def test_two_inputs_one_tensor_in_two_state_slots_matches_keras():
    def build(lib):
        seq = lib.Input(shape=(6, 3), name="seq")
        ctx = lib.Input(shape=(4,), name="ctx")
        s = lib.layers.Dense(8, activation="tanh", name="init")(ctx)
        h = lib.layers.LSTM(8, name="lstm")(seq, initial_state=[s, s])
        return lib.Model(inputs=[seq, ctx], outputs=lib.layers.Dense(2, name="head")(h))

    ours, theirs = build(fl), build(keras)
    copy_weights(ours, theirs)
    rng = np.random.default_rng(2)
    x = {"seq": rng.standard_normal((12, 6, 3)).astype(np.float32),
         "ctx": rng.standard_normal((12, 4)).astype(np.float32)}
    y = rng.standard_normal((12, 2)).astype(np.float32)
    ours.compile(fl.optimizers.Adam(0.01), "mse", metrics=["mae"])
    theirs.compile(keras.optimizers.Adam(0.01), "mse", metrics=["mae"])
    compare_steps(ours, theirs, x, y)


def test_two_outputs_with_loss_weights_and_metrics_match_keras():
    def build(lib):
        inp = lib.Input(shape=(5, 3), name="x")
        h = lib.layers.GRU(8, return_sequences=True, name="gru")(inp)
        last = lib.layers.LSTM(6, name="lstm")(h)
        o1 = lib.layers.Dense(3, activation="softmax", name="cls")(last)
        o2 = lib.layers.Dense(1, name="reg")(last)
        return lib.Model(inp, [o1, o2])

    ours, theirs = build(fl), build(keras)
    copy_weights(ours, theirs)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 5, 3)).astype(np.float32)
    y = [np.eye(3, dtype=np.float32)[rng.integers(0, 3, 10)],
         rng.standard_normal((10, 1)).astype(np.float32)]
    for lib, model in ((fl, ours), (keras, theirs)):
        model.compile(lib.optimizers.Adam(0.01),
                      loss={"cls": "categorical_crossentropy", "reg": "mse"},
                      loss_weights={"cls": 1.0, "reg": 0.5},
                      metrics={"cls": ["accuracy"], "reg": ["mae"]})
    compare_steps(ours, theirs, x, y)
    a = ours.evaluate(x, y, return_dict=True)
    b = theirs.evaluate(x, y, return_dict=True, verbose=0)
    assert set(a) == set(b) == {"loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mae"}
    for k in b:
        close(a[k], b[k], k)
    # the flat order of evaluate's list, as Keras's
    close(ours.evaluate(x, y), theirs.evaluate(x, y, verbose=0), "evaluate list")


def test_shared_layer_matches_keras():
    def build(lib):
        a = lib.Input(shape=(5, 3), name="a")
        b = lib.Input(shape=(7, 3), name="b")
        shared = lib.layers.LSTM(8, name="shared")
        ha, hb = shared(a), shared(b)
        head = lib.layers.Dense(2, name="head")
        return lib.Model([a, b], [head(ha), lib.layers.Dense(1, name="other")(hb)])

    ours, theirs = build(fl), build(keras)
    copy_weights(ours, theirs)
    rng = np.random.default_rng(4)
    x = [rng.standard_normal((8, 5, 3)).astype(np.float32),
         rng.standard_normal((8, 7, 3)).astype(np.float32)]
    y = [rng.standard_normal((8, 2)).astype(np.float32),
         rng.standard_normal((8, 1)).astype(np.float32)]
    ours.compile(fl.optimizers.Adam(0.01), ["mse", "mae"])
    theirs.compile(keras.optimizers.Adam(0.01), ["mse", "mae"])
    compare_steps(ours, theirs, x, y)


def test_masks_from_an_embedding_match_keras():
    def build(lib):
        tokens = lib.Input(shape=(None,), dtype="int32", name="tokens")
        e = lib.layers.Embedding(12, 5, mask_zero=True, name="emb")(tokens)
        h = lib.layers.LSTM(8, return_sequences=True, name="lstm")(e)
        return lib.Model(tokens, lib.layers.Dense(3, activation="softmax", name="out")(h))

    ours, theirs = build(fl), build(keras)
    copy_weights(ours, theirs)
    rng = np.random.default_rng(5)
    x = rng.integers(1, 12, (9, 6)).astype(np.int32)
    for i, n in enumerate([6, 4, 2, 5, 1, 6, 3, 3, 2]):
        x[i, n:] = 0
    y = rng.integers(0, 3, (9, 6, 1)).astype(np.float32)
    ours.compile(fl.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                 metrics=["sparse_categorical_accuracy"])
    theirs.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                   metrics=["sparse_categorical_accuracy"])
    compare_steps(ours, theirs, x, y)


def test_keras_config_form():
    """get_config has Keras 3's functional layout: layers with inbound_nodes whose tensors
    carry keras_history, input_layers and output_layers."""
    ours, theirs = seq2seq(fl, units=4), seq2seq(keras, units=4)
    a, b = ours.get_config(), theirs.get_config()
    assert [l["name"] for l in a["layers"]] == [l["name"] for l in b["layers"]]
    assert a["input_layers"] == [list(r) for r in b["input_layers"]]
    assert a["output_layers"] == list(b["output_layers"])

    def histories(cfg):
        out = []
        for layer in cfg["layers"]:
            for node in layer["inbound_nodes"]:
                text = repr((node["args"], node["kwargs"]))
                out.append((layer["name"], text.count("keras_history")))
        return out

    assert histories(a) == histories(b)
    decoder = [l for l in a["layers"] if l["name"] == "decoder"][0]
    states = decoder["inbound_nodes"][0]["kwargs"]["initial_state"]
    assert [s["config"]["keras_history"] for s in states] == [["encoder", 0, 1],
                                                                ["encoder", 0, 2]]


def test_metric_lists_per_output_and_weighted_metrics_match_keras():
    def build(lib):
        inp = lib.Input(shape=(4,), name="a")
        return lib.Model(inp, [lib.layers.Dense(2, name="out1")(inp),
                               lib.layers.Dense(1, name="out2")(inp)])

    ours, theirs = build(fl), build(keras)
    copy_weights(ours, theirs)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = [rng.standard_normal((8, 2)).astype(np.float32),
         rng.standard_normal((8, 1)).astype(np.float32)]
    sw = rng.uniform(0.1, 1.0, 8).astype(np.float32)
    for lib, model in ((fl, ours), (keras, theirs)):
        model.compile(lib.optimizers.Adam(0.01), ["mse", "mae"], loss_weights=[1.0, 2.0],
                      metrics=["mae", "mse"], weighted_metrics=[["mse"], ["mae"]])
    a = ours.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    b = theirs.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    assert set(a) == set(b)
    for k in b:
        close(a[k], b[k], k)
    with pytest.raises(ValueError, match="one entry"):
        ours.compile("adam", "mse", metrics=["mae"])


def test_fit_epochs_and_layers_match_keras():
    ours, theirs = seq2seq(fl, units=8), seq2seq(keras, units=8)
    assert [l.name for l in ours.layers] == [l.name for l in theirs.layers]
    copy_weights(ours, theirs)
    rng = np.random.default_rng(7)
    x = [one_hot(rng, 20, 6, 7), one_hot(rng, 20, 5, 9)]
    y = one_hot(rng, 20, 5, 9)
    for lib, model in ((fl, ours), (keras, theirs)):
        model.compile(lib.optimizers.Adam(0.01), "categorical_crossentropy",
                      metrics=["accuracy"])
    a = ours.fit(x, y, batch_size=6, epochs=2, shuffle=False, verbose=0,
                 validation_data=(x, y)).history
    b = theirs.fit(x, y, batch_size=6, epochs=2, shuffle=False, verbose=0,
                   validation_data=(x, y)).history
    assert set(a) == set(b)
    for k in b:
        close(a[k], b[k], k)
    for layer in ours.layers:
        for wa, wb in zip(layer.get_weights(), theirs.get_layer(layer.name).get_weights()):
            close(wa, wb, layer.name)


def test_fit_epochs_of_a_two_output_model_match_keras():
    def build(lib):
        inp = lib.Input(shape=(5, 3), name="x")
        last = lib.layers.LSTM(6, name="lstm")(inp)
        return lib.Model(inp, [lib.layers.Dense(3, activation="softmax", name="cls")(last),
                               lib.layers.Dense(1, name="reg")(last)])

    ours, theirs = build(fl), build(keras)
    copy_weights(ours, theirs)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((14, 5, 3)).astype(np.float32)
    y = {"cls": np.eye(3, dtype=np.float32)[rng.integers(0, 3, 14)],
         "reg": rng.standard_normal((14, 1)).astype(np.float32)}
    for lib, model in ((fl, ours), (keras, theirs)):
        model.compile(lib.optimizers.Adam(0.01), ["categorical_crossentropy", "mse"],
                      loss_weights=[0.5, 2.0], metrics=[["accuracy"], ["mae"]])
    a = ours.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0).history
    b = theirs.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0).history
    assert set(a) == set(b)
    for k in b:
        close(a[k], b[k], k)


def test_full_size_seq2seq_with_default_initial_weights_matches_keras():
    """Keras's example at its size (256 units; 71 and 93 characters), from fastlstm's own
    initial weights (Keras's initializers): predict and three Adam steps agree."""
    ours, theirs = seq2seq(fl, 256, 71, 93), seq2seq(keras, 256, 71, 93)
    for layer in ours.layers:
        if layer.get_weights():
            theirs.get_layer(layer.name).set_weights(layer.get_weights())
    rng = np.random.default_rng(9)
    x = [one_hot(rng, 16, 12, 71), one_hot(rng, 16, 10, 93)]
    y = one_hot(rng, 16, 10, 93)
    ours.compile(fl.optimizers.Adam(0.001), "categorical_crossentropy", metrics=["accuracy"])
    theirs.compile(keras.optimizers.Adam(0.001), "categorical_crossentropy",
                   metrics=["accuracy"])
    compare_steps(ours, theirs, x, y)
