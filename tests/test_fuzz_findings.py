"""Inputs found by tests/test_fuzz.py that escaped the documented exceptions
(docs/security.md), each reduced to the smallest file that shows it."""
from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from fastlstm.convert import ConversionError, from_keras

h5py = pytest.importorskip("h5py")

SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_seeds")


def seed_bytes(name):
    with open(os.path.join(SEEDS, name), "rb") as f:
        return f.read()


@pytest.fixture
def legacy_h5(tmp_path):
    path = tmp_path / "m.h5"
    path.write_bytes(seed_bytes("gru_rnn.h5"))
    return path


def set_model_config(path, edit):
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        edit(cfg)
        f.attrs["model_config"] = json.dumps(cfg)


@pytest.mark.parametrize("signature", [b"SNOD", b"TREE", b"HEAP"])
def test_damaged_hdf5_structure_is_a_conversion_error(legacy_h5, signature):
    """h5py reports a damaged symbol table, B-tree or local heap as RuntimeError or KeyError
    while the file is walked or read."""
    data = bytearray(legacy_h5.read_bytes())
    positions = [m.start() for m in re.finditer(signature, bytes(data))]
    assert positions
    data[positions[-1]] ^= 0xFF
    legacy_h5.write_bytes(bytes(data))
    with pytest.raises(ConversionError, match="damaged HDF5"):
        from_keras(legacy_h5)


def test_damaged_dataset_header_inside_keras_archive(tmp_path):
    """The same inside a .keras archive (its weights file opened from memory)."""
    with zipfile.ZipFile(os.path.join(SEEDS, "lstm.keras")) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    weights = bytearray(members["model.weights.h5"])
    pos = [m.start() for m in re.finditer(b"SNOD", bytes(weights))][-1]
    weights[pos] ^= 0xFF
    members["model.weights.h5"] = bytes(weights)
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    with pytest.raises(ConversionError, match="damaged HDF5"):
        from_keras(path)


def test_layer_name_that_is_not_a_string(legacy_h5):
    """A legacy file finds each layer's weights by the name in its config: a number there
    reached h5py, which raised TypeError."""
    set_model_config(legacy_h5, lambda cfg: cfg["config"]["layers"][1]["config"]
                     .__setitem__("name", 7))
    with pytest.raises(ConversionError, match="named 7"):
        from_keras(legacy_h5)


@pytest.mark.parametrize("value", [np.int64(3), np.array([1, 2])])
def test_weight_names_attribute_that_is_not_names(legacy_h5, value):
    """``weight_names`` as a number (TypeError: not iterable) or a list of numbers
    (TypeError from h5py)."""
    with h5py.File(legacy_h5, "r+") as f:
        group = f["model_weights"]
        name = [k for k in group if "weight_names" in group[k].attrs][0]
        group[name].attrs["weight_names"] = value
    with pytest.raises(ConversionError, match="weight_names"):
        from_keras(legacy_h5)


@pytest.mark.parametrize("units", [None, {}, [], "4", 0])
def test_config_option_out_of_range_is_a_conversion_error(legacy_h5, units):
    """A layer constructor's TypeError for a bad option (units=None) left from_keras as a
    TypeError."""
    set_model_config(legacy_h5, lambda cfg: cfg["config"]["layers"][1]["config"]
                     .__setitem__("units", units))
    with pytest.raises(ConversionError):
        from_keras(legacy_h5)


def test_zip_member_declaring_data_past_the_end_of_the_archive(tmp_path):
    """A .keras archive whose central directory declares 2 GB of compressed weights: zipfile
    allocated a buffer of the declared size before finding the data short (a MemoryError
    where memory is capped). Refused from the header now."""
    with zipfile.ZipFile(os.path.join(SEEDS, "lstm.keras")) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    data = bytearray(buf.getvalue())
    cd = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06"))    # the last member's entry
    assert data[cd + 46:cd + 46 + 16] == b"model.weights.h5"
    data[cd + 20:cd + 24] = struct.pack("<I", 0x7FFFFFF0)            # compressed size
    path = tmp_path / "m.keras"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match="past the end"):
            from_keras(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak {peak >> 20} MiB"


def keras_archive_with(tmp_path, edit):
    """tests/fuzz_seeds/lstm.keras with its config.json edited."""
    with zipfile.ZipFile(os.path.join(SEEDS, "lstm.keras")) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    cfg = json.loads(members["config.json"])
    edit(cfg)
    members["config.json"] = json.dumps(cfg).encode()
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    return path


def layer_config(cfg, class_name):
    return next(e["config"] for e in cfg["config"]["layers"] if e["class_name"] == class_name)


@pytest.mark.parametrize("rate", [None, "0.5", [0.1], True])
def test_dropout_rate_that_is_not_a_number(tmp_path, rate):
    """``float(None)`` in the converter: TypeError."""
    path = keras_archive_with(tmp_path, lambda cfg: layer_config(cfg, "LSTM")
                              .__setitem__("recurrent_dropout", rate))
    with pytest.raises(ConversionError, match="recurrent_dropout"):
        from_keras(path)


def test_dropout_rate_that_is_a_number_still_loads(tmp_path):
    path = keras_archive_with(tmp_path, lambda cfg: layer_config(cfg, "LSTM")
                              .__setitem__("dropout", 0.25))
    assert from_keras(path).layers[0].dropout == 0.25


def test_global_heap_object_of_no_size_is_refused_before_reading(tmp_path):
    """A 19 KB legacy file whose global heap collection (where the ``model_config`` string
    lives) ends in a free-space object of size 0: the HDF5 library's reader of the
    collection then never moves on, and ``h5.attrs["model_config"]`` spun for ever. Run in a
    subprocess with a time limit, so that a regression fails instead of hanging the run."""
    data = bytearray(seed_bytes("gru_rnn.h5"))
    start = data.find(b"GCOL\x01")
    size = struct.unpack("<Q", data[start + 8:start + 16])[0]
    p = start + 16
    while struct.unpack("<H", data[p:p + 2])[0] != 0:          # walk to the free space
        p += 16 + (struct.unpack("<Q", data[p + 8:p + 16])[0] + 7) // 8 * 8
    assert p < start + size
    data[p + 8:p + 16] = struct.pack("<Q", 0)
    path = tmp_path / "m.h5"
    path.write_bytes(bytes(data))
    code = ("import sys; from fastlstm.convert import from_keras, ConversionError\n"
            "try:\n    from_keras(sys.argv[1])\nexcept ConversionError as e:\n"
            "    print('refused:', e)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        run = subprocess.run([sys.executable, "-c", code, str(path)], cwd=root, timeout=60,
                             capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail("from_keras did not return within 60 s")
    assert run.returncode == 0, run.stderr
    assert "refused:" in run.stdout and "global heap" in run.stdout, run.stdout


def test_hdf5_in_memory_with_offsets_past_its_end(tmp_path):
    """A .keras archive whose weights file gives its driver information block an address
    near 2^64: h5py's in-memory driver raised OverflowError while opening it."""
    with zipfile.ZipFile(os.path.join(SEEDS, "lstm.keras")) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    weights = bytearray(members["model.weights.h5"])
    assert weights[:8] == b"\x89HDF\r\n\x1a\n"
    assert weights[8] == 0                          # superblock version 0
    weights[48:56] = b"\xfe" * 7 + b"\xff"          # driver information block address
    members["model.weights.h5"] = bytes(weights)
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    with pytest.raises(ConversionError, match="not a readable HDF5"):
        from_keras(path)


def test_attribute_datatype_of_another_class_is_refused_before_reading(tmp_path):
    """One flipped bit (byte 857 of tests/fuzz_seeds/gru_rnn.h5) turns the datatype of the
    file's ``keras_version`` attribute from a variable-length string into a variable-length
    sequence (class 9): reading it crashed the interpreter inside the HDF5 library
    (SIGSEGV). Run in a subprocess, so that a regression fails instead of ending the run."""
    data = bytearray(seed_bytes("gru_rnn.h5"))
    assert data[857] == 1
    data[857] = 3
    path = tmp_path / "m.h5"
    path.write_bytes(bytes(data))
    with h5py.File(path, "r") as f:
        assert f.attrs.get_id("keras_version").get_type().get_class() == 9
    code = ("import sys; from fastlstm.convert import from_keras, ConversionError\n"
            "try:\n    from_keras(sys.argv[1])\nexcept ConversionError as e:\n"
            "    print('refused:', e)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", code, str(path)], cwd=root, timeout=60,
                         capture_output=True, text=True)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert "refused:" in run.stdout and "keras_version" in run.stdout, run.stdout
