"""fastlstm.convert <-> Keras 3: layer and Sequential objects, .keras / .h5 / .weights.h5
files read without Keras, masks, Keras 2's hard_sigmoid, round trips, errors.

Keras 3.15 computes a float64 layer's products in float32 (its type promotion follows JAX),
so comparisons with Keras outputs use the float32 tolerance; float64 conversions are checked
for exact weights and against fastlstm's own float64 results."""
import io
import json
import sys
import zipfile

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.convert import ConversionError, from_keras, to_keras

from convert_util import assert_same, post_padded, randomize

h5py = pytest.importorskip("h5py")
keras = pytest.importorskip("keras")
pytest.importorskip("torch")
if keras.backend.backend() != "torch":
    pytest.skip("these tests run Keras on the torch backend", allow_module_level=True)

pytestmark = [pytest.mark.peers,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5")]

L = fl.layers
KL = keras.layers


def knp(t):
    return keras.ops.convert_to_numpy(t)


def randomize_keras(model, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    layers = model.layers if hasattr(model, "layers") else [model]
    for layer in layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([(rng.standard_normal(w.shape) * scale).astype(w.dtype) for w in ws])
    return model


def keras_layer(layer, input_dim=3, seed=0):
    layer.build((None, None, input_dim))
    return randomize_keras(layer, seed)


LAYERS = {
    "lstm": lambda: KL.LSTM(5, return_sequences=True),
    "lstm_back_state": lambda: KL.LSTM(5, go_backwards=True, return_state=True),
    "gru_after": lambda: KL.GRU(5, return_sequences=True),
    "gru_before": lambda: KL.GRU(5, reset_after=False, return_sequences=True),
    "gru_hard_sigmoid": lambda: KL.GRU(5, recurrent_activation="hard_sigmoid",
                                       activation="softsign", reset_after=False),
    "simple_rnn": lambda: KL.SimpleRNN(5, activation="relu", return_sequences=True),
    "bi_concat": lambda: KL.Bidirectional(KL.LSTM(4, return_sequences=True)),
    "bi_sum_last": lambda: KL.Bidirectional(KL.GRU(4, reset_after=False), merge_mode="sum"),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_from_keras_layer_object(name):
    k = keras_layer(LAYERS[name]())
    x = np.random.default_rng(1).standard_normal((3, 6, 3)).astype(np.float32)
    layer = from_keras(k)
    expected = [knp(t) for t in k(x)] if isinstance(k(x), (list, tuple)) else [knp(k(x))]
    got = layer(x)
    got = list(got) if isinstance(got, list) else [got]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert_same(g, e, np.float32, name)


def _masked_keras_model():
    model = keras.Sequential([
        keras.Input((None, 3)), KL.Masking(0.0),
        KL.LSTM(5, return_sequences=True),
        KL.Bidirectional(KL.GRU(4, reset_after=False, return_sequences=True)),
        KL.Dropout(0.2),
        KL.SimpleRNN(3, return_sequences=True),
        KL.GRU(4, go_backwards=True),
        KL.Dense(2, activation="softmax")])
    return randomize_keras(model, seed=2)


def _masked_input():
    x = np.random.default_rng(3).standard_normal((4, 7, 3)).astype(np.float32)
    x = post_padded(x, [7, 4, 1, 0])
    x[0, :2] = 0.0          # pre-padding too: fastlstm follows Keras's masks exactly
    return x


def test_from_keras_sequential_with_masking():
    model = _masked_keras_model()
    x = _masked_input()
    fm = from_keras(model)
    assert isinstance(fm, fl.Sequential)
    assert [type(l).__name__ for l in fm.layers] == [
        "Masking", "LSTM", "Bidirectional", "Dropout", "SimpleRNN", "GRU", "Dense"]
    assert fm.layers[3].rate == 0.2
    assert_same(fm(x), knp(model(x)), np.float32)


def test_from_keras_embedding_mask_zero():
    model = randomize_keras(keras.Sequential([
        keras.Input((None,), dtype="int32"), KL.Embedding(10, 4, mask_zero=True),
        KL.Bidirectional(KL.LSTM(3, return_sequences=True), merge_mode="ave"),
        KL.LSTM(5), KL.Dense(2, activation="tanh")]), seed=4)
    idx = np.random.default_rng(5).integers(1, 10, size=(4, 6))
    idx[1, 3:] = 0
    idx[2, :2] = 0
    idx[3, :] = 0
    fm = from_keras(model)
    assert fm.layers[0].mask_zero
    assert_same(fm(idx), knp(model(idx)), np.float32)


def test_from_keras_files(tmp_path):
    model = _masked_keras_model()
    x = _masked_input()
    expected = knp(model(x))
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")                       # the legacy HDF5 format
    model.save_weights(tmp_path / "m.weights.h5")
    assert_same(from_keras(tmp_path / "m.keras")(x), expected, np.float32, ".keras")
    assert_same(from_keras(str(tmp_path / "m.h5"))(x), expected, np.float32, ".h5")
    arch = from_keras(model)
    assert_same(from_keras(tmp_path / "m.weights.h5", architecture=arch)(x), expected,
                np.float32, ".weights.h5 + fastlstm architecture")
    config = json.loads(model.to_json())
    assert_same(from_keras(tmp_path / "m.weights.h5", architecture=config)(x), expected,
                np.float32, ".weights.h5 + Keras config")
    with pytest.raises(ValueError, match="architecture"):
        from_keras(tmp_path / "m.weights.h5")


def test_files_are_read_without_keras(tmp_path, monkeypatch):
    model = randomize_keras(keras.Sequential([keras.Input((None, 3)), KL.GRU(4),
                                              KL.Dense(2)]), seed=6)
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    expected = knp(model(x))
    monkeypatch.setitem(sys.modules, "keras", None)
    assert_same(from_keras(tmp_path / "m.keras")(x), expected, np.float32)


def _keras2_h5(tmp_path, hard_sigmoid_alpha=0.2):
    """A Keras-2-era legacy .h5: the reference model uses Keras 2's hard sigmoid as a
    function; the file says "hard_sigmoid", keras_version 2.x, and has no "module" keys."""
    def k2_hard_sigmoid(z):
        return keras.ops.clip(hard_sigmoid_alpha * z + 0.5, 0.0, 1.0)

    model = randomize_keras(keras.Sequential([
        keras.Input((None, 3)),
        KL.LSTM(4, recurrent_activation=k2_hard_sigmoid, return_sequences=True),
        KL.GRU(3, recurrent_activation=k2_hard_sigmoid, reset_after=False)]), seed=7)
    path = tmp_path / "keras2.h5"
    model.save(path)

    def strip(obj):
        if isinstance(obj, dict):
            obj = {k: strip(v) for k, v in obj.items() if k not in ("module", "registered_name")}
            if isinstance(obj.get("recurrent_activation"), (dict, str)) and \
                    "hard_sigmoid" in json.dumps(obj["recurrent_activation"]):
                obj["recurrent_activation"] = "hard_sigmoid"
            return obj
        return [strip(v) for v in obj] if isinstance(obj, list) else obj

    with h5py.File(path, "r+") as f:
        config = strip(json.loads(f.attrs["model_config"]))
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
    return model, path, config


def test_keras2_hard_sigmoid_maps_to_hard_sigmoid_02_05(tmp_path):
    model, path, config = _keras2_h5(tmp_path)
    x = np.random.default_rng(8).standard_normal((3, 6, 3)).astype(np.float32) * 3
    fm = from_keras(path)
    for layer in fm.layers:
        act = layer.recurrent_activation
        assert (act.alpha, act.beta) == (0.2, 0.5)
    assert_same(fm(x), knp(model(x)), np.float32)
    # A config that does not say which Keras wrote it is ambiguous about "hard_sigmoid".
    model.save_weights(tmp_path / "w.weights.h5")
    with pytest.raises(ConversionError, match="keras_version"):
        from_keras(tmp_path / "w.weights.h5", architecture=config)
    fm2 = from_keras(tmp_path / "w.weights.h5", architecture=config, keras_version="2.4")
    assert_same(fm2(x), knp(model(x)), np.float32)


def test_keras3_hard_sigmoid_is_x_over_6():
    k = keras_layer(KL.LSTM(4, recurrent_activation="hard_sigmoid", return_sequences=True))
    layer = from_keras(k)
    assert layer.recurrent_activation.name == "hard_sigmoid"
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32) * 3
    assert_same(layer(x), knp(k(x)), np.float32)


def test_float64_keras_model():
    model = randomize_keras(keras.Sequential([keras.Input((None, 3), dtype="float64"),
                                              KL.LSTM(4, dtype="float64", return_sequences=True),
                                              KL.Dense(2, dtype="float64")]), seed=9)
    fm = from_keras(model)
    assert all(w.dtype == np.float64 for w in fm.get_weights())
    for a, b in zip(fm.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    assert fm(x).dtype == np.float64
    assert_same(fm(x), knp(model(x)), np.float32)     # Keras computes in float32 (see top)
    # fastlstm float64 -> Keras -> fastlstm keeps every bit
    back = from_keras(to_keras(fm))
    assert back.layers[0].dtype == np.float64
    assert_same(back(x), fm(x), np.float64)


def test_round_trip_fastlstm_keras_fastlstm():
    rng = np.random.default_rng(10)
    fm = fl.Sequential([
        L.Masking(0.0),
        randomize(L.LSTM(5, return_sequences=True, unit_forget_bias=False), (None, None, 3), rng),
        randomize(L.Bidirectional(L.GRU(4, reset_after=False, return_sequences=True),
                                  merge_mode="mul"), (None, None, 5), rng),
        L.Dropout(0.1, seed=3),
        randomize(L.SimpleRNN(3, activation="tanh"), (None, None, 4), rng),
        randomize(L.Dense(2, activation="sigmoid"), (None, 3), rng)])
    x = _masked_input()
    expected = fm(x)
    km = to_keras(fm)
    assert isinstance(km, keras.Sequential)
    assert_same(knp(km(x)), expected, np.float32, "keras")
    back = from_keras(km)
    assert_same(back(x), expected, np.float32, "back")
    assert back.layers[3].rate == 0.1 and back.layers[3].seed == 3
    # a single layer
    lstm = randomize(L.LSTM(4, go_backwards=True, return_sequences=True), (None, None, 3), rng)
    k = to_keras(lstm)
    assert isinstance(k, KL.LSTM) and k.go_backwards
    assert_same(knp(k(x)), lstm(x), np.float32, "layer")


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layer, match", [
    (lambda: L.LSTM(4, use_peepholes=True), "use_peepholes"),
    (lambda: L.LSTM(4, coupled_input_forget=True), "coupled_input_forget"),
    (lambda: L.GRU(4, recurrent_activation=fl.activations.HardSigmoid(0.2, 0.5)),
     "HardSigmoid"),
], ids=["peepholes", "cifg", "keras2_hard_sigmoid"])
def test_to_keras_refuses_what_keras_cannot_express(layer, match):
    layer = layer()
    layer.build((None, None, 3))
    with pytest.raises(ConversionError, match=match):
        to_keras(layer)


def test_from_keras_refuses_what_fastlstm_cannot_express():
    with pytest.raises(ConversionError, match="BatchNormalization"):
        from_keras(keras_layer(KL.BatchNormalization()))
    with pytest.raises(ConversionError, match="gelu"):
        from_keras(keras_layer(KL.LSTM(3, activation="gelu")))
    assert from_keras(keras_layer(KL.LSTM(3, zero_output_for_mask=True))).zero_output_for_mask
    constrained = keras_layer(KL.GRU(3, kernel_constraint=keras.constraints.MaxNorm(2.0)))
    with pytest.raises(ConversionError, match="kernel_constraint"):
        from_keras(constrained)
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    assert_same(from_keras(constrained, drop_training_options=True)(x), knp(constrained(x)))
    masked_backwards = keras.Sequential([keras.Input((None, 3)), KL.Masking(),
                                         KL.LSTM(3, go_backwards=True, return_sequences=True),
                                         KL.LSTM(2)])
    with pytest.raises(ConversionError, match="go_backwards"):
        from_keras(masked_backwards)
    class Subclassed(keras.Model):             # functional models: test_convert_keras_functional
        def __init__(self):
            super().__init__()
            self.dense = KL.Dense(2)

        def call(self, x):
            return self.dense(x)
    with pytest.raises(ConversionError, match="Subclassed model is not supported"):
        from_keras(Subclassed())


def _archive_files(tmp_path):
    """The members of a saved .keras archive (LSTM, Bidirectional GRU, Dense)."""
    model = keras.Sequential([keras.Input((5, 3)),
                              KL.LSTM(4, return_sequences=True, name="lstm"),
                              KL.Bidirectional(KL.GRU(4), name="bi"), KL.Dense(2, name="dense")])
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        return model, {n: z.read(n) for n in z.namelist()}


def _edit_config(edit):
    def apply(files):
        config = json.loads(files["config.json"])
        edit(config)
        return {"config.json": json.dumps(config)}
    return apply


def _edit_h5(edit):
    def apply(files):
        buf = io.BytesIO(files["model.weights.h5"])
        with h5py.File(buf, "r+") as h:
            edit(h)
        return {"model.weights.h5": buf.getvalue()}
    return apply


def _replace(h, name, value):
    del h[name]
    h[name] = value


def _layer_cfg(k, **changes):
    return _edit_config(lambda c: c["config"]["layers"][k]["config"].update(changes))


MALFORMED_ARCHIVES = {
    "no layers": (_edit_config(lambda c: c["config"].pop("layers")), "no list of 'layers'"),
    "no class_name": (_edit_config(lambda c: c["config"]["layers"][1].pop("class_name")),
                      "layer entry 1 .* is not a layer entry"),
    "bidirectional without layer": (
        _edit_config(lambda c: c["config"]["layers"][2]["config"].pop("layer")),
        "Bidirectional 'bi': its 'layer' is not a layer entry"),
    "config is a list": (lambda files: {"config.json": "[1, 2]"},
                         "config.json holds a JSON list"),
    "metadata is a list": (lambda files: {"metadata.json": "[]"},
                           "metadata.json holds a JSON list"),
    "config is not JSON": (lambda files: {"config.json": "{"}, "config.json is not valid JSON"),
    "return_sequences string": (_layer_cfg(1, return_sequences="false"),
                                "return_sequences: expected True or False, got 'false'"),
    "use_bias int": (_layer_cfg(3, use_bias=1), "use_bias: expected True or False, got 1"),
    "empty vars": (_edit_h5(lambda h: [h.__delitem__(f"layers/lstm/cell/vars/{i}")
                                       for i in range(3)]),
                   r"LSTM 'lstm': expected 3 weight arrays, the first 2-D; got shapes \[\]"),
    "scalar kernel": (_edit_h5(lambda h: _replace(h, "layers/lstm/cell/vars/0", 1.0)),
                      r"got shapes \[\(\), \(4, 16\), \(16,\)\]"),
    "complex kernel": (_edit_h5(lambda h: _replace(h, "layers/lstm/cell/vars/0",
                                                   np.ones((3, 16), np.complex64))),
                       "lstm/cell/vars/0 has dtype complex64; expected real numbers"),
    "no backward_layer": (_edit_h5(lambda h: h.__delitem__("layers/bidirectional/"
                                                           "backward_layer")),
                          "no group /layers/bidirectional/backward_layer"),
    "weights of an unlisted layer": (_edit_config(lambda c: c["config"]["layers"].pop(3)),
                                     r"weights for layers .* does not have: \['dense'\]"),
    "truncated h5": (lambda files: {"model.weights.h5": files["model.weights.h5"][:1000]},
                     "model.weights.h5 is not a readable HDF5 file"),
}


@pytest.mark.parametrize("name", list(MALFORMED_ARCHIVES))
def test_from_keras_refuses_malformed_archives(name, tmp_path):
    _, files = _archive_files(tmp_path)
    edit, match = MALFORMED_ARCHIVES[name]
    path = tmp_path / "bad.keras"
    with zipfile.ZipFile(path, "w") as z:
        for member, data in dict(files, **edit(files)).items():
            z.writestr(member, data)
    with pytest.raises(ConversionError, match=match):
        from_keras(path)


def test_from_keras_refuses_weights_the_architecture_lacks(tmp_path):
    model, _ = _archive_files(tmp_path)
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "m.h5")
    arch = from_keras(model)
    fewer = fl.Sequential(arch.layers[:2])
    with pytest.raises(ConversionError, match=r"architecture does not have: \['dense'\]"):
        from_keras(tmp_path / "m.weights.h5", architecture=fewer)
    config = json.loads(model.to_json())
    config["config"]["layers"].pop(1)                  # the LSTM
    with pytest.raises(ConversionError, match=r"does not have: \['lstm'\]"):
        from_keras(tmp_path / "m.weights.h5", architecture=config)
    with h5py.File(tmp_path / "m.h5", "r+") as f:      # legacy format: layers by name
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"].pop(3)
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(ConversionError, match=r"does not have: \['dense"):
        from_keras(tmp_path / "m.h5")
    (tmp_path / "garbage.h5").write_bytes(b"not an HDF5 file" * 10)
    with pytest.raises(ConversionError, match="not a readable HDF5 file"):
        from_keras(tmp_path / "garbage.h5", architecture=arch)


def test_to_keras_refuses_stateful_layers():
    for layer in (L.LSTM(4, stateful=True), L.Bidirectional(L.GRU(3, stateful=True))):
        layer.build((2, None, 3))
        with pytest.raises(ConversionError, match="stateful=True"):
            to_keras(layer)


def test_missing_dependencies_are_clear_import_errors(tmp_path, monkeypatch):
    layer = randomize(L.GRU(3), (None, None, 2), np.random.default_rng(0))
    model = keras.Sequential([keras.Input((None, 2)), KL.GRU(3)])
    model.save(tmp_path / "m.keras")
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(ImportError, match="pip install keras"):
        to_keras(layer)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        from_keras(tmp_path / "m.keras")
