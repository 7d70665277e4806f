"""model.save / fl.load_model: round trips, exact resumption, and hostile or broken files."""
from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import callbacks as C
from fastlstm import initializers as I
from fastlstm.saving import DOC_KEY, FORMAT_VERSION


def make_model(seed=0, optimizer=None, metrics=("mae",), dtype="float32"):
    model = fl.Sequential([
        fl.layers.LSTM(6, kernel_initializer=I.GlorotUniform(seed=seed),
                       recurrent_initializer=I.Orthogonal(seed=seed + 1), dtype=dtype,
                       kernel_regularizer=fl.regularizers.L2(1e-3)),
        fl.layers.Dense(2, kernel_initializer=I.GlorotUniform(seed=seed + 2), dtype=dtype)])
    model.compile(optimizer or fl.optimizers.Adam(0.01), "mse", metrics=list(metrics))
    return model


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 5, 3)).astype(np.float32),
            rng.standard_normal((n, 2)).astype(np.float32))


@pytest.fixture
def saved(tmp_path):
    x, y = data()
    model = make_model()
    model.train_on_batch(x, y)
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


def rewrite(path, new_path, change):
    """Copy an npz with ``change(arrays, doc)`` applied (arrays as a dict, doc as JSON)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    doc = json.loads(arrays[DOC_KEY].tobytes().decode())
    change(arrays, doc)
    if doc is not None:
        arrays[DOC_KEY] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    with open(new_path, "wb") as fh:
        np.savez(fh, **arrays)
    return new_path


# ------------------------------------------------------------------------------- round trips


def test_round_trip_predictions_config_and_compile(saved):
    model, path = saved
    x, _ = data(seed=1)
    loaded = fl.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.name == model.name
    assert [l.get_config() for l in loaded.layers] == [l.get_config() for l in model.layers]
    assert type(loaded.optimizer) is fl.optimizers.Adam
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.iterations == 1
    assert loaded.loss.get_config() == model.loss.get_config()
    assert loaded.metrics_names == ["loss", "mae"]
    assert loaded.input_shape == (None, 5, 3)
    bare = fl.load_model(path, compile=False)
    assert not bare.compiled
    np.testing.assert_array_equal(bare.predict(x), model.predict(x))


def test_file_layout_is_the_documented_one(saved):
    _, path = saved
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        doc = json.loads(f[DOC_KEY].tobytes().decode("utf-8"))
        assert f[DOC_KEY].dtype == np.uint8
    assert {"layers/0/kernel", "layers/0/recurrent_kernel", "layers/0/bias", "layers/1/kernel",
            "layers/1/bias", "optimizer/iterations", "optimizer/learning_rate",
            "optimizer/momentum/0", "optimizer/velocity/4"} <= keys
    # A float model is still written as version 1 (older readers read it); quantized
    # layers need version 2 (tests/test_quantization.py).
    assert doc["format"] == "fastlstm" and doc["version"] == 1 and FORMAT_VERSION == 2
    assert doc["model"]["class_name"] == "Sequential"
    assert [l["class_name"] for l in doc["model"]["layers"]] == ["LSTM", "Dense"]
    assert doc["model"]["layers"][0]["weights"][0] == {
        "name": "kernel", "key": "layers/0/kernel", "shape": [3, 24], "dtype": "float32"}
    assert doc["compile"]["loss"]["class_name"] == "MeanSquaredError"
    assert doc["optimizer"]["class_name"] == "Adam"
    assert {"name": "iterations", "key": "optimizer/iterations"} in doc["optimizer"]["state"]
    with zipfile.ZipFile(path) as z:                # plain .npy members only
        assert all(n.endswith(".npy") for n in z.namelist())


@pytest.mark.parametrize("optimizer", [fl.optimizers.Adam(0.01),
                                       fl.optimizers.SGD(0.05, momentum=0.9),
                                       fl.optimizers.RMSprop(0.01, momentum=0.5, centered=True)],
                         ids=["adam", "sgd-momentum", "rmsprop"])
def test_training_resumes_exactly(tmp_path, optimizer):
    x, y = data(n=24)
    cfg = fl.optimizers.serialize(optimizer)
    twin = make_model(optimizer=fl.optimizers.deserialize(cfg))      # never interrupted
    model = make_model(optimizer=fl.optimizers.deserialize(cfg))
    for i in range(3):
        twin.train_on_batch(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8])
        model.train_on_batch(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8])
    model.save(tmp_path / "ckpt.npz")
    resumed = fl.load_model(tmp_path / "ckpt.npz")
    for i in range(3):
        a = twin.train_on_batch(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8])
        b = resumed.train_on_batch(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8])
        assert a == b
    for a, b in zip(twin.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert resumed.optimizer.iterations == twin.optimizer.iterations == 6


def test_uncompiled_float64_and_masked_models(tmp_path):
    x64 = np.random.default_rng(0).standard_normal((3, 4, 3))
    m64 = fl.Sequential([fl.layers.LSTM(3, dtype="float64", use_peepholes=True),
                         fl.layers.Dense(1, dtype="float64")])
    m64(x64)
    m64.save(tmp_path / "f64.npz")
    back = fl.load_model(tmp_path / "f64.npz")
    assert not back.compiled and back.layers[0].kernel.dtype == np.float64
    np.testing.assert_array_equal(back(x64), m64(x64))

    tokens = np.array([[0, 0, 3, 4], [1, 2, 3, 4]])
    masked = fl.Sequential([fl.layers.Embedding(6, 3, mask_zero=True), fl.layers.LSTM(4),
                            fl.layers.Dropout(0.2), fl.layers.Dense(1)])
    masked(tokens)
    masked.save(tmp_path / "masked.npz")
    back = fl.load_model(tmp_path / "masked.npz")
    assert back.layers[0].mask_zero
    np.testing.assert_array_equal(back(tokens), masked(tokens))


def test_bidirectional_round_trip(tmp_path):
    if not hasattr(fl.layers, "Bidirectional"):
        pytest.skip("Bidirectional not available")
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    model = fl.Sequential([fl.layers.Bidirectional(fl.layers.LSTM(4, return_sequences=True)),
                           fl.layers.LSTM(3), fl.layers.Dense(1)])
    model.compile("adam", "mse")
    model.train_on_batch(x, np.ones((2, 1)))
    model.save(tmp_path / "bi.npz")
    back = fl.load_model(tmp_path / "bi.npz")
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    assert back.train_on_batch(x, np.ones((2, 1))) == model.train_on_batch(x, np.ones((2, 1)))


def test_model_checkpoint_writes_loadable_files(tmp_path):
    x, y = data()
    model = make_model()
    ckpt = C.ModelCheckpoint(str(tmp_path / "ep{epoch:02d}.npz"), monitor="loss")
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[ckpt], verbose=0)
    assert sorted(os.listdir(tmp_path)) == ["ep01.npz", "ep02.npz"]
    back = fl.load_model(tmp_path / "ep02.npz")
    np.testing.assert_array_equal(back.predict(x), model.predict(x))


def test_save_unbuilt_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not built"):
        fl.Sequential([fl.layers.Dense(1)]).save(tmp_path / "x.npz")


# ------------------------------------------------------------------------------ hostile files


class Trap:
    """Unpickling this calls os.system, which would create the marker file."""

    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def trap(tmp_path):
    Trap.marker = str(tmp_path / "PWNED")
    yield tmp_path / "PWNED"
    Trap.marker = None


def test_pickled_object_in_place_of_the_description_is_refused(tmp_path, trap):
    path = tmp_path / "evil.npz"
    np.savez(path, **{DOC_KEY: np.array([Trap()], dtype=object)})      # savez pickles it
    with pytest.raises(ValueError, match="pickle"):
        fl.load_model(path)
    assert not trap.exists()


def test_pickled_object_in_place_of_a_weight_is_refused(saved, tmp_path, trap):
    _, path = saved

    def poison(arrays, doc):
        arrays["layers/0/kernel"] = np.array([Trap()], dtype=object)

    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    poison(arrays, None)
    evil = tmp_path / "evil_weights.npz"
    np.savez(evil, **arrays)
    with pytest.raises(ValueError, match=r"layers/0/kernel.*pickle"):
        fl.load_model(evil)
    assert not trap.exists()


def test_a_plain_pickle_file_is_refused(tmp_path, trap):
    path = tmp_path / "model.npz"
    with open(path, "wb") as f:
        pickle.dump({"model": Trap()}, f)
    with pytest.raises(ValueError, match="not a fastlstm model file"):
        fl.load_model(path)
    assert not trap.exists()


# ------------------------------------------------------------------------------- broken files


def test_truncated_and_corrupt_files(saved, tmp_path):
    _, path = saved
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match="truncated|corrupt|not a fastlstm"):
        fl.load_model(truncated)
    # flip bytes inside the kernel's data: the zip CRC check catches it
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("layers/0/kernel.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(raw[:start] + bytes(b ^ 0xFF for b in raw[start:start + 16])
                        + raw[start + 16:])
    with pytest.raises(ValueError, match=r"layers/0/kernel.*corrupt"):
        fl.load_model(corrupt)
    # one byte of the central directory ("version needed to extract"): zipfile's
    # NotImplementedError becomes the same ValueError
    i = raw.index(b"PK\x01\x02") + 6
    version = tmp_path / "version.npz"
    version.write_bytes(raw[:i] + bytes([112]) + raw[i + 1:])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        fl.load_model(version)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a fastlstm model file"):
        fl.load_model(empty)
    with pytest.raises(FileNotFoundError):
        fl.load_model(tmp_path / "missing.npz")


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a fastlstm model file"):
        fl.load_model(text)
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        fl.load_model(npy)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ValueError, match=r"no fastlstm header.*'fastlstm.json'"):
        fl.load_model(other)
    bad_doc = tmp_path / "bad_doc.npz"
    np.savez(bad_doc, **{DOC_KEY: np.frombuffer(b"{not json", np.uint8)})
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        fl.load_model(bad_doc)
    wrong_type = tmp_path / "wrong_type.npz"
    np.savez(wrong_type, **{DOC_KEY: np.zeros(3)})
    with pytest.raises(ValueError, match="uint8"):
        fl.load_model(wrong_type)


def edit(saved, tmp_path, change):
    _, path = saved
    return rewrite(path, tmp_path / "edited.npz", change)


def test_other_format_and_newer_version(saved, tmp_path):
    path = edit(saved, tmp_path, lambda a, d: d.update(format="kerasish"))
    with pytest.raises(ValueError, match="not a fastlstm model file.*'kerasish'"):
        fl.load_model(path)
    path = edit(saved, tmp_path, lambda a, d: d.update(version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=rf"newer fastlstm \(format version {FORMAT_VERSION + 1}.*"
                                        rf"up to {FORMAT_VERSION}"):
        fl.load_model(path)


def test_missing_wrong_shape_and_wrong_dtype_arrays(saved, tmp_path):
    path = edit(saved, tmp_path, lambda a, d: a.pop("layers/1/bias"))
    with pytest.raises(ValueError, match=r"'layers/1/bias' is missing"):
        fl.load_model(path)
    path = edit(saved, tmp_path, lambda a, d: a.update({"layers/0/kernel": np.zeros((3, 7), np.float32)}))
    with pytest.raises(ValueError, match=r"layers/0/kernel.*shape \(3, 7\)"):
        fl.load_model(path)

    def both_shapes(a, d):                         # description and array agree, layer does not
        a["layers/0/kernel"] = np.zeros((3, 7), np.float32)
        d["model"]["layers"][0]["weights"][0]["shape"] = [3, 7]

    path = edit(saved, tmp_path, both_shapes)
    with pytest.raises(ValueError, match=r"do not fit the layer.*kernel"):
        fl.load_model(path)

    def absurd_units(a, d):                        # a layer too large to allocate
        d["model"]["layers"][0]["config"]["units"] = 2 ** 40

    path = edit(saved, tmp_path, absurd_units)
    with pytest.raises(ValueError, match=r"layer 0.*(too large to allocate|do not fit)"):
        fl.load_model(path)
    path = edit(saved, tmp_path, lambda a, d: a.update({"layers/1/bias": np.array(["a", "b"])}))
    with pytest.raises(ValueError, match=r"layers/1/bias.*dtype"):
        fl.load_model(path)
    path = edit(saved, tmp_path,
                lambda a, d: a.update({"optimizer/momentum/0": np.zeros((2, 2), np.float32)}))
    with pytest.raises(ValueError, match=r"optimizer state 'momentum/0'.*shape"):
        fl.load_model(path)


def test_unknown_layer_class_is_refused(saved, tmp_path):
    def rename(a, d):
        d["model"]["layers"][0]["class_name"] = "os.system"

    with pytest.raises(ValueError, match=r"layer 0.*unknown layer class_name 'os.system'"):
        fl.load_model(edit(saved, tmp_path, rename))

    def bad_arg(a, d):
        d["model"]["layers"][0]["config"]["no_such_argument"] = 1

    with pytest.raises(ValueError, match=r"layer 0.*no_such_argument"):
        fl.load_model(edit(saved, tmp_path, bad_arg))
