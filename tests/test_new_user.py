"""What a new user meets first: the licence, messages for the common mistakes (a file that
is not a model, a layer frozen after compile, a Keras file name), the attributes of
``import fastlstm as fl``, and the demos' verdicts and ``--plot``."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import __main__ as cli
from fastlstm import demos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------- licence


def test_license_is_the_bsd_3_clause_text_pyproject_names():
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("BSD 3-Clause License")
    assert "fastlstm developers" in text.splitlines()[2]
    for clause in ("Redistributions of source code must retain the above copyright notice",
                   "Redistributions in binary form must reproduce the above copyright notice",
                   "Neither the name of the copyright holder nor the names of its",
                   'THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"'):
        assert clause in " ".join(text.split()), clause
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        assert 'license = "BSD-3-Clause"' in f.read()
    with open(os.path.join(ROOT, "MANIFEST.in"), encoding="utf-8") as f:
        assert "include LICENSE" in f.read().splitlines()


# ------------------------------------------------------------------ files that are not models


def _not_a_model(path, *what):
    with pytest.raises(ValueError) as info:
        fl.load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a fastlstm model file"), message
    assert "allow_pickle" not in message and "unsafe" not in message, message
    for w in what:
        assert w in message, message
    return message


def test_load_model_says_what_a_foreign_file_is_not(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello, world\n")
    _not_a_model(text, "not a zip/.npz archive", "b'hello, w'")

    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).integers(1, 256, 4096, dtype=np.uint8).tobytes())
    _not_a_model(noise, "not a zip/.npz archive")

    plain = tmp_path / "plain.npz"
    np.savez(plain, weights=np.zeros(3))
    _not_a_model(plain, "no fastlstm header", "'fastlstm.json'")

    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _not_a_model(objects, "a single .npy array")

    pickled = tmp_path / "model.npz"
    with open(pickled, "wb") as f:
        pickle.dump({"model": [1, 2, 3]}, f)
    _not_a_model(pickled, "Python pickle", "never loads")

    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _not_a_model(empty, "an empty file")


def test_an_object_array_inside_an_npz_is_refused_in_our_words(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, **{"fastlstm.json": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="holds Python objects") as info:
        fl.load_model(path)
    assert "allow_pickle" not in str(info.value)


# --------------------------------------------------------------------- trainable after compile


def _model_and_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 5, 3)).astype("float32")
    y = rng.standard_normal((16, 1)).astype("float32")
    model = fl.Sequential([fl.layers.LSTM(4, seed=0), fl.layers.Dense(1)])
    return model, x, y


@pytest.mark.parametrize("frozen_at_compile", [False, True], ids=["freeze", "unfreeze"])
def test_changing_trainable_after_compile_asks_for_compile(frozen_at_compile):
    model, x, y = _model_and_data()
    model.build(x.shape)
    lstm = model.layers[0]
    lstm.trainable = not frozen_at_compile
    model.compile("adam", "mse")
    model.fit(x, y, epochs=1, verbose=0)
    lstm.trainable = frozen_at_compile
    for train in (lambda: model.fit(x, y, epochs=1, verbose=0),
                  lambda: model.train_on_batch(x, y)):
        with pytest.raises(ValueError, match=r"call compile\(\) again after changing trainable") as info:
            train()
        assert "optimizer holds state" not in str(info.value)
        assert lstm.name in str(info.value)
    model.compile("adam", "mse")                       # as asked: then it trains
    before = [w.copy() for w in lstm.get_weights()]
    model.fit(x, y, epochs=1, verbose=0)
    changed = any(not np.array_equal(a, b) for a, b in zip(before, lstm.get_weights()))
    assert changed == lstm.trainable



def test_changing_trainable_after_loading_a_trained_model_asks_for_compile(tmp_path):
    model, x, y = _model_and_data()
    model.compile("adam", "mse")
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = fl.load_model(tmp_path / "m.npz")         # with the optimizer's state
    loaded.layers[0].trainable = False
    with pytest.raises(ValueError, match=r"call compile\(\) again after changing trainable"):
        loaded.fit(x, y, epochs=1, verbose=0)


# ------------------------------------------------------------------------ Keras file names


@pytest.mark.parametrize("name", ["m.keras", "m.h5", "m.weights.h5", "M.HDF5"])
def test_save_under_a_keras_name_is_refused(tmp_path, name):
    model, x, _ = _model_and_data()
    model.build(x.shape)
    with pytest.raises(ValueError, match=r"fastlstm saves a model as a NumPy \.npz") as info:
        model.save(tmp_path / name)
    assert name in str(info.value) and ".npz" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["m.npz", "m", "m.bin", "m.model"])
def test_save_under_other_names_writes_that_file(tmp_path, name):
    model, x, _ = _model_and_data()
    y = model(x)
    model.save(tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    np.testing.assert_array_equal(fl.load_model(tmp_path / name)(x), y)


# ------------------------------------------------------------------------- lazy submodules


def test_convert_and_datasets_are_lazy_attributes():
    code = (
        "import sys\n"
        "import fastlstm as fl\n"
        "assert 'fastlstm.convert' not in sys.modules, 'convert imported eagerly'\n"
        "assert 'fastlstm.datasets' not in sys.modules, 'datasets imported eagerly'\n"
        "assert {'convert', 'datasets'} <= set(dir(fl))\n"
        "from fastlstm.convert import from_torch\n"
        "assert fl.convert.from_torch is from_torch and callable(fl.convert.to_onnx)\n"
        "assert issubclass(fl.convert.ConversionError, ValueError)\n"
        "x, y = fl.datasets.adding_problem(4, 10, seed=0)\n"
        "assert x.shape == (4, 10, 2) and fl.datasets.load_airline()[1].shape == (144,)\n"
        "try:\n"
        "    fl.no_such_thing\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_thing' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('fl.no_such_thing resolved')\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


# -------------------------------------------------------------------------------- the demos


def _short_adding(**kw):
    lines = []
    args = dict(timesteps=10, units=4, epochs=1, n_train=64, n_test=32, learning_rate=1e-4,
                print_fn=lines.append)
    args.update(kw)
    result = demos.run_adding(**args)
    return result, "\n".join(lines)


def test_a_short_adding_run_says_it_was_too_short_not_that_the_lstm_fails():
    result, text = _short_adding()
    assert result["final"]["LSTM"] > 0.8 * result["baseline"]       # it did not get anywhere
    verdict = [line for line in text.splitlines() if line.strip().startswith("LSTM:")][0]
    assert "not trained long enough" in verdict and "2 training steps (1 epochs)" in verdict
    assert "cannot carry" not in text and "did not learn" not in text


def test_a_long_enough_adding_run_that_stays_at_the_baseline_says_so(monkeypatch):
    monkeypatch.setattr(demos, "ADDING_STEPS_NEEDED", 2)
    result, text = _short_adding()
    assert result["final"]["LSTM"] > 0.8 * result["baseline"]
    assert "did not learn: stays near the baseline" in text
    assert "not trained long enough" not in text


def test_plot_without_matplotlib_fails_before_the_demo_runs(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib fails
    calls = []
    monkeypatch.setattr(demos, "run_adding", lambda **kw: calls.append(kw))
    monkeypatch.setattr(demos, "run_airline", lambda **kw: calls.append(kw))
    for demo in ("adding", "airline"):
        with pytest.raises(SystemExit) as info:
            cli.main(["demo", demo, "--plot", str(tmp_path / "p.png")])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "--plot" in err and "pip install matplotlib" in err
    assert calls == []
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    lines = []
    with pytest.raises(ImportError, match="pip install matplotlib"):
        demos.run_adding(timesteps=10, units=4, epochs=1, n_train=64, n_test=32,
                         plot=str(tmp_path / "p.png"), print_fn=lines.append)
    assert lines == []                                          # nothing ran
    with pytest.raises(ImportError, match="pip install matplotlib"):
        demos.run_airline(epochs=1, ensemble=1, plot=str(tmp_path / "p.png"),
                          print_fn=lines.append)
    assert lines == [] and not (tmp_path / "p.png").exists()

