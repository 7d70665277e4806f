"""Hostile and inconsistent files: what the loaders refuse, and that they refuse it before
spending memory or time (docs/security.md). Memory is measured with tracemalloc (NumPy
reports its allocations to it); no test allocates more than a few megabytes."""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import limits
from fastlstm.saving import DOC_KEY


def small_model(units=6, dense=2, features=3, optimizer="adam"):
    model = fl.Sequential([fl.layers.LSTM(units, seed=0), fl.layers.Dense(dense)])
    model.compile(optimizer, "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, features)).astype(np.float32)
    model.train_on_batch(x, rng.standard_normal((4, dense)).astype(np.float32))
    return model


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.npz"
    small_model().save(path)
    return path


def members(path):
    """{name without .npy: raw .npy bytes} of an npz."""
    with zipfile.ZipFile(path) as z:
        return {i.filename[:-4]: z.read(i) for i in z.infolist()}


def doc_of(raw):
    return json.loads(np.load(io.BytesIO(raw[DOC_KEY])).tobytes())


def npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_npz(path, raw, doc=None, compression=zipfile.ZIP_STORED):
    raw = dict(raw)
    if doc is not None:
        raw[DOC_KEY] = npy(np.frombuffer(json.dumps(doc).encode(), np.uint8))
    with zipfile.ZipFile(path, "w", compression) as z:
        for k, v in raw.items():
            z.writestr(k + ".npy", v)
    return path


def peak_bytes(fn, *args):
    """(exception raised by fn(*args), peak traced bytes while it ran)."""
    tracemalloc.start()
    try:
        fn(*args)
    except Exception as exc:        # the caller asserts on it
        result = exc
    else:
        result = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


# ------------------------------------------------------------- sizes checked from the headers


def test_zip_bomb_member_is_refused_from_its_zip_header(saved, tmp_path):
    """64 MiB of zeros deflate to 64 KiB: refused by the compression ratio in the zip header,
    before anything is inflated."""
    raw = members(saved)
    bomb = tmp_path / "bomb.npz"
    rows = (64 * 2**20) // (24 * 4)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in raw.items():
            if k != "layers/0/kernel":
                z.writestr(k + ".npy", v)
        with z.open("layers/0/kernel.npy", "w", force_zip64=True) as f:
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                buf, {"descr": "<f4", "fortran_order": False, "shape": (rows, 24)})
            f.write(buf.getvalue())
            chunk = bytes(2**20)
            for _ in range(64):
                f.write(chunk)
    assert bomb.stat().st_size < 2**20
    exc, peak = peak_bytes(fl.load_model, bomb)
    assert isinstance(exc, ValueError) and "zip bomb" in str(exc), exc
    assert "layers/0/kernel" in str(exc)
    assert peak < 8 * 2**20, peak


def test_npy_header_declaring_a_huge_array_is_refused_before_reading(saved, tmp_path):
    raw = members(saved)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (2**31, 24)})
    raw["layers/0/kernel"] = buf.getvalue() + bytes(1000)
    path = write_npz(tmp_path / "huge.npz", raw)
    exc, peak = peak_bytes(fl.load_model, path)
    assert isinstance(exc, ValueError) and "more than the limit" in str(exc), exc
    assert "layers/0/kernel" in str(exc) and str(2**31) in str(exc)
    assert peak < 4 * 2**20


def test_truncated_array_is_reported_as_truncated_not_as_pickle(saved, tmp_path):
    raw = members(saved)
    raw["layers/0/kernel"] = raw["layers/0/kernel"][:-40]
    path = write_npz(tmp_path / "short.npz", raw)
    with pytest.raises(ValueError, match=r"'layers/0/kernel' is truncated or corrupt") as info:
        fl.load_model(path)
    assert "pickle" not in str(info.value)


def test_compound_dtype_is_a_value_error(saved, tmp_path):
    raw = members(saved)
    raw["layers/1/bias"] = npy(np.zeros(2, dtype=[("a", "<f4"), ("b", "<f4")]))
    path = write_npz(tmp_path / "compound.npz", raw)
    with pytest.raises(ValueError, match=r"layers/1/bias.*compound dtype"):
        fl.load_model(path)


def test_unknown_zip_compression_is_a_value_error(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as z:
        info = z.getinfo("layers/0/kernel.npy")
    # the method field of the local header (offset 8) and of the central directory entry
    struct.pack_into("<H", data, info.header_offset + 8, 99)
    central = data.index(b"PK\x01\x02")
    while not data[central + 46:].startswith(b"layers/0/kernel.npy"):
        central = data.index(b"PK\x01\x02", central + 4)
    struct.pack_into("<H", data, central + 10, 99)
    path = tmp_path / "method99.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"layers/0/kernel.*method 99"):
        fl.load_model(path)


def test_json_description_size_is_checked_from_its_header(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_JSON_BYTES", 100)
    with pytest.raises(ValueError, match=r"model description.*more than the limit of 100"):
        fl.load_model(saved)


def test_deeply_nested_description_is_a_value_error(saved, tmp_path):
    """Nested Bidirectionals (400 here; 490 in the report) raised RecursionError while the
    layers were rebuilt."""
    raw = members(saved)
    doc = doc_of(raw)
    doc["model"]["layers"][0] = "@"
    inner = json.dumps(doc_of(raw)["model"]["layers"][0])
    nested = '{"class_name": "Bidirectional", "config": {"layer": ' * 400 + inner + "}}" * 400
    text = json.dumps(doc).replace('"@"', nested)
    raw[DOC_KEY] = npy(np.frombuffer(text.encode(), np.uint8))
    path = write_npz(tmp_path / "nested.npz", raw)
    with pytest.raises(ValueError, match="nested deeper than"):
        fl.load_model(path)


def test_abstract_layer_class_is_refused(saved, tmp_path):
    raw = members(saved)
    doc = doc_of(raw)
    doc["model"]["layers"][0]["class_name"] = "RecurrentLayer"
    path = write_npz(tmp_path / "abstract.npz", raw, doc)
    with pytest.raises(ValueError, match="unknown layer class_name 'RecurrentLayer'"):
        fl.load_model(path)


def test_lookups_do_not_scan_the_npz_file_list(saved, monkeypatch):
    """NpzFile's own lookup scans a list per key (80k arrays took 37 s): the loader reads
    members through its own dict."""
    def scan(self, key):
        raise AssertionError("NpzFile.__getitem__ used")

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", scan)
    model = fl.load_model(saved)
    assert model.built


@pytest.mark.parametrize("layer, key, value", [(0, "units", 4000), (1, "units", 32768)])
def test_config_inflated_weights_are_refused_before_building(saved, tmp_path, layer, key, value):
    """A small file whose config says LSTM(4000) (an orthogonal QR of 16000 x 4000) or
    Dense(32768): the saved shapes are compared with the config before anything is built."""
    raw = members(saved)
    doc = doc_of(raw)
    doc["model"]["layers"][layer]["config"][key] = value
    path = write_npz(tmp_path / "inflated.npz", raw, doc)
    exc, peak = peak_bytes(fl.load_model, path)
    assert isinstance(exc, ValueError) and "do not fit the layer" in str(exc), exc
    assert f"layer {layer} " in str(exc)
    assert peak < 4 * 2**20, peak


# ------------------------------------------------------------- inconsistent files


def test_optimizer_state_with_slots_missing_is_refused(saved, tmp_path):
    raw = members(saved)
    doc = doc_of(raw)
    state = doc["optimizer"]["state"]
    last = max(int(e["name"].rpartition("/")[2]) for e in state if "/" in e["name"])
    doc["optimizer"]["state"] = [e for e in state if not e["name"].endswith(f"/{last}")]
    path = write_npz(tmp_path / "slots.npz", raw, doc)
    with pytest.raises(ValueError, match=rf"optimizer: the saved state lacks .*momentum/{last}"):
        fl.load_model(path)
    assert fl.load_model(path, compile=False).built       # the weights alone are fine


def test_input_shape_must_fit_the_layers_build_shapes(saved, tmp_path):
    raw = members(saved)
    doc = doc_of(raw)
    doc["model"]["input_shape"] = [None, 5, 7]         # the LSTM was built for 3 features
    path = write_npz(tmp_path / "shape.npz", raw, doc)
    with pytest.raises(ValueError, match=r"input_shape \[None, 5, 7\] does not fit layer 0"):
        fl.load_model(path)
    doc["model"]["input_shape"] = [None, 3]             # rank 2 for an LSTM
    path = write_npz(tmp_path / "rank.npz", raw, doc)
    with pytest.raises(ValueError, match=r"does not fit layer 0.*expects 3 dimensions"):
        fl.load_model(path)
    doc["model"]["input_shape"] = [None, 9, 3]          # another length: fine
    path = write_npz(tmp_path / "length.npz", raw, doc)
    assert fl.load_model(path).input_shape == (None, 9, 3)

    dense = fl.layers.Dense(2)                          # built for rank 2, called on rank 3
    dense.build((None, 3))
    model = fl.Sequential([dense])
    model(np.zeros((2, 5, 3), np.float32))
    model.save(tmp_path / "dense.npz")
    assert fl.load_model(tmp_path / "dense.npz").input_shape == (None, 5, 3)


def test_layer_weight_shapes_match_build():
    L = fl.layers
    cases = [(L.LSTM(5), (None, 6, 2)),
             (L.LSTM(5, use_peepholes=True, coupled_input_forget=True, use_bias=False),
              (None, 6, 2)),
             (L.GRU(4), (None, 6, 2)), (L.GRU(4, reset_after=False), (None, 6, 2)),
             (L.SimpleRNN(3), (None, 6, 2)), (L.Dense(7), (None, 2)),
             (L.Dense(7, use_bias=False), (None, 4, 2)), (L.Embedding(10, 4), (None, 6)),
             (L.Bidirectional(L.GRU(3)), (None, 6, 2)),
             (L.RNN([L.LSTMCell(3), L.SimpleRNNCell(2)]), (None, 6, 2)),
             (L.Dropout(0.1), (None, 6, 2)), (L.Masking(), (None, 6, 2))]
    for layer, shape in cases:
        expected = layer.weight_shapes(shape)
        layer.build(shape)
        assert [tuple(s) for s in expected] == [w.shape for w in layer.get_weights()], layer
    with pytest.raises(ValueError, match="expects 3 dimensions"):
        L.LSTM(2).weight_shapes((None, 4))


# ------------------------------------------------------------- save: mode and durability


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_save_follows_the_umask_also_over_an_existing_file(tmp_path):
    model = small_model()
    old = os.umask(0o022)
    try:
        path = tmp_path / "m.npz"
        model.save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o002)
        model.save(path)                            # replaces the 0644 file
        assert stat.S_IMODE(path.stat().st_mode) == 0o664
        np.savez(tmp_path / "ref.npz", a=np.zeros(1))
        assert stat.S_IMODE((tmp_path / "ref.npz").stat().st_mode) == 0o664
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fastlstm")] == []


def test_save_syncs_the_file_and_the_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    small_model().save(tmp_path / "m.npz")
    assert synced[0] is False                       # the temporary file, before the rename
    if os.name == "posix":
        assert synced[-1] is True                   # then its directory
