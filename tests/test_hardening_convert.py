"""Hostile files for the converters: from_keras never reads another local file and checks
declared sizes before reading; from_torch keeps its errors in the contract. See
docs/security.md (tests/test_hardening_onnx.py for from_onnx)."""
from __future__ import annotations

import io
import json
import shutil
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from fastlstm import limits
from fastlstm.convert import ConversionError, from_keras, from_torch

h5py = pytest.importorskip("h5py")

KERNEL_K3 = "layers/lstm/cell/vars/0"                               # .weights.h5 / .keras


def lstm_kernel(f):
    """The path of the LSTM's kernel (3 features, 4 units: shape (3, 16)) in a Keras file;
    legacy files name it after the model and layer names, which Keras numbers globally."""
    found = []
    f.visititems(lambda name, obj: found.append(name)
                 if getattr(obj, "shape", None) == (3, 16) else None)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs on the torch backend here")
    d = tmp_path_factory.mktemp("keras_files")
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4), keras.layers.Dense(2)])
    model.save(d / "m.keras")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(d / "m.h5")
    model.save_weights(d / "m.weights.h5")
    secret = d / "secret.bin"
    secret.write_bytes(bytes(range(256)) * 4)
    return {"keras": d / "m.keras", "h5": d / "m.h5", "weights": d / "m.weights.h5",
            "config": model.to_json(), "secret": secret}


def copy_and_edit(src, dst, change):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        change(f)
    return dst


def keras_archive_with(src, dst, change=None, config=None, method=None):
    """A copy of a .keras archive with its weights file edited by ``change`` (an h5py
    File), its config.json replaced by ``config`` (text), or a member's method patched."""
    with zipfile.ZipFile(src) as z:
        parts = {i.filename: z.read(i) for i in z.infolist()}
    if change is not None:
        buf = io.BytesIO(parts["model.weights.h5"])
        with h5py.File(buf, "r+") as f:
            change(f)
        parts["model.weights.h5"] = buf.getvalue()
    if config is not None:
        parts["config.json"] = config.encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)
    if method is not None:
        data = bytearray(dst.read_bytes())
        with zipfile.ZipFile(dst) as z:
            info = z.getinfo(method)
        struct.pack_into("<H", data, info.header_offset + 8, 99)
        central = data.index(b"PK\x01\x02")
        while not data[central + 46:].startswith(method.encode()):
            central = data.index(b"PK\x01\x02", central + 4)
        struct.pack_into("<H", data, central + 10, 99)
        dst.write_bytes(bytes(data))
    return dst


def external_storage(secret):
    def change(f, name):
        shape, dtype = f[name].shape, f[name].dtype
        del f[name]
        nbytes = int(np.prod(shape)) * dtype.itemsize
        f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(secret), 0, nbytes)])
    return change


def external_link(other):
    def change(f, name):
        del f[name]
        f[name] = h5py.ExternalLink(str(other), "/stolen")
    return change


def soft_link(f, name):
    f["elsewhere"] = f[name][()]
    del f[name]
    f[name] = h5py.SoftLink("/elsewhere")


def virtual(other):
    def change(f, name):
        shape, dtype = f[name].shape, f[name].dtype
        del f[name]
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[...] = h5py.VirtualSource(str(other), "/stolen", shape=shape)
        f.create_virtual_dataset(name, layout)
    return change


def load(kind, files, path):
    if kind == "weights":
        return from_keras(path, architecture=files["config"])
    return from_keras(path)


@pytest.mark.parametrize("kind", ["h5", "weights", "keras"])
@pytest.mark.parametrize("attack", ["external_storage", "external_link", "soft_link",
                                    "virtual"])
def test_from_keras_never_reads_another_file(keras_files, tmp_path, kind, attack):
    """A dataset that keeps its data in another file (external storage: the bytes of any
    local file), a link to another file or path, or a virtual dataset is refused."""
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["stolen"] = np.arange(48, dtype=np.float32).reshape(3, 16)
    make = {"external_storage": external_storage(keras_files["secret"]),
            "external_link": external_link(other), "soft_link": soft_link,
            "virtual": virtual(other)}[attack]
    if kind == "keras":
        path = keras_archive_with(keras_files["keras"], tmp_path / "evil.keras",
                                  change=lambda f: make(f, lstm_kernel(f)))
    else:
        path = copy_and_edit(keras_files[kind], tmp_path / f"evil.{kind}.h5",
                             lambda f: make(f, lstm_kernel(f)))
    with pytest.raises(ConversionError, match=r"refused|Link"):
        load(kind, keras_files, path)


def test_hdf5_dataset_declared_size_is_checked_before_reading(keras_files, tmp_path,
                                                             monkeypatch):
    """An unallocated dataset costs nothing in the file and reads as its fill value: a 15 KB
    file declared 2^31 elements (8.5 GB). Here 4 MiB against a limit lowered to 1 MiB."""
    def change(f):
        del f[KERNEL_K3]
        f.create_dataset(KERNEL_K3, shape=(2**20,), dtype="f4")
    path = copy_and_edit(keras_files["weights"], tmp_path / "big.weights.h5", change)
    assert path.stat().st_size < 64 * 2**10
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match=r"vars/0.*more than the limit"):
            from_keras(path, architecture=keras_files["config"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


def test_compound_dtype_dataset_is_a_conversion_error(keras_files, tmp_path):
    def change(f):
        del f[KERNEL_K3]
        f[KERNEL_K3] = np.zeros((3, 16), dtype=[("a", "<f4"), ("b", "<f4")])
    path = copy_and_edit(keras_files["weights"], tmp_path / "compound.weights.h5", change)
    with pytest.raises(ConversionError, match=r"vars/0 has dtype.*expected real numbers"):
        from_keras(path, architecture=keras_files["config"])


def test_config_units_are_checked_against_the_weights_before_building(keras_files, tmp_path):
    """LSTM units=1000 in a small file: refused by the weight shapes before the layer is
    built (its orthogonal initializer would take a QR of 4000 x 1000)."""
    def change(f):
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"][1]["config"]["units"] = 1000
        f.attrs["model_config"] = json.dumps(cfg)
    path = copy_and_edit(keras_files["h5"], tmp_path / "units.h5", change)
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match=r"weights have shapes.*configuration gives"):
            from_keras(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak


def test_keras_config_json_size_is_checked_from_the_zip_header(keras_files, monkeypatch):
    monkeypatch.setattr(limits, "MAX_JSON_BYTES", 100)
    with pytest.raises(ConversionError, match=r"config.json: declares .* more than the limit"):
        from_keras(keras_files["keras"])


def test_deeply_nested_keras_config_is_a_conversion_error(keras_files, tmp_path):
    cfg = json.loads(keras_files["config"])
    cfg["config"]["layers"][1]["config"]["build_config"] = "@"
    text = json.dumps(cfg).replace('"@"', "[" * 5000 + "]" * 5000)
    path = keras_archive_with(keras_files["keras"], tmp_path / "deep.keras", config=text)
    with pytest.raises(ConversionError, match="config.json"):
        from_keras(path)
    text = json.dumps(cfg).replace('"@"', "[" * 300 + "]" * 300)
    path = keras_archive_with(keras_files["keras"], tmp_path / "deep300.keras", config=text)
    with pytest.raises(ConversionError, match="nested deeper than"):
        from_keras(path)


def test_unknown_zip_method_in_a_keras_archive_is_a_conversion_error(keras_files, tmp_path):
    path = keras_archive_with(keras_files["keras"], tmp_path / "m99.keras",
                              method="model.weights.h5")
    with pytest.raises(ConversionError, match="method 99"):
        from_keras(path)


def test_keras_files_still_convert(keras_files):
    model = from_keras(keras_files["keras"])
    assert [type(layer).__name__ for layer in model.layers] == ["LSTM", "Dense"]
    assert from_keras(keras_files["h5"]).count_params() == model.count_params()
    assert from_keras(keras_files["weights"], architecture=keras_files["config"]).built


# ------------------------------------------------------------------------------ from_torch


@pytest.mark.parametrize("key, value", [("hidden_size", "4"), ("input_size", 2.5),
                                        ("hidden_size", True), ("hidden_size", -3)])
def test_from_torch_config_sizes_must_be_positive_integers(key, value):
    rng = np.random.default_rng(0)
    sd = {"weight_ih_l0": rng.standard_normal((16, 3)), "weight_hh_l0": rng.standard_normal((16, 4)),
          "bias_ih_l0": np.zeros(16), "bias_hh_l0": np.zeros(16)}
    cfg = {"type": "LSTM", "input_size": 3, "hidden_size": 4, key: value}
    with pytest.raises(ValueError, match=rf"config\['{key}'\]: expected a positive integer, "
                                         rf"got {value!r}") as info:
        from_torch(sd, config=cfg)
    assert "4444" not in str(info.value)
