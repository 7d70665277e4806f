"""The run-time calibration (fastlstm.calibration): every path it may choose gives the same
bits, and its cache (write, reuse, corrupted, unwritable, disabled). Nothing here times
anything or depends on what a calibration would choose: the timings are stubbed and the
settings forced."""
import json
import os

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import calibration, ops
from fastlstm import threads as th

from conftest import seed_of

# The calibrated paths, forced: (pipe_min_macs, cols_min_bytes).
PATHS = {"serial": (1e300, 1 << 62), "pipe": (0.0, 1 << 62), "cols": (1e300, 0),
         "both": (0.0, 0)}


@pytest.fixture
def settings():
    """The process's KernelSettings, restored after the test (calibration off inside)."""
    s = th.kernel_settings()
    saved = {k: getattr(s, k) for k in s.__slots__ if k != "fixed"}
    fixed = set(s.fixed)
    try:
        yield s
    finally:
        for k, v in saved.items():
            setattr(s, k, v)
        s.fixed.clear()
        s.fixed.update(fixed)
        calibration.forget()


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """Calibration on, its cache under tmp_path, nothing memoised."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(calibration.ENV, "1")
    calibration.forget()
    yield tmp_path
    calibration.forget()


def _force(s, path, threads=2):
    s.threads = threads
    s.pipe_min_macs, s.cols_min_bytes = PATHS[path]
    s.calibrated_for = threads              # no calibration over the forced values


LSTM_OPTIONS = [dict(), dict(peephole=True), dict(coupled_input_forget=True),
                dict(go_backwards=True, return_sequences=False), dict(mask=True)]


@pytest.mark.parametrize("H", [64, 128, 256])
@pytest.mark.parametrize("opts", range(len(LSTM_OPTIONS)))
def test_lstm_one_row_paths_give_the_same_bits(settings, H, opts):
    """One-row LSTM inference (T = 40, several blocks of the pipeline) on every path the
    calibration chooses between: the same y, h and c to the bit."""
    o = dict(LSTM_OPTIONS[opts])
    rng = np.random.default_rng(seed_of("calib lstm", H, opts))
    T, I = 40, 48
    G = (3 if o.get("coupled_input_forget") else 4) * H
    x = rng.standard_normal((T, 1, I)).astype(np.float32)
    W = (rng.standard_normal((I, G)) / 7).astype(np.float32)
    U = (rng.standard_normal((H, G)) / np.sqrt(H)).astype(np.float32)
    b = (rng.standard_normal(G) * 0.3).astype(np.float32)
    kw = dict(h0=rng.standard_normal((1, H)).astype(np.float32),
              c0=rng.standard_normal((1, H)).astype(np.float32),
              coupled_input_forget=o.get("coupled_input_forget", False),
              go_backwards=o.get("go_backwards", False),
              return_sequences=o.get("return_sequences", True))
    if o.get("peephole"):
        kw["peephole"] = (rng.standard_normal((3, H)) * 0.3).astype(np.float32)
    if o.get("mask"):
        m = rng.random((T, 1)) > 0.3
        m[0] = True
        kw["mask"] = m
    settings.pipe_steps = 8
    got = {}
    for path in PATHS:
        _force(settings, path)
        got[path] = [np.array(a) for a in ops.lstm_forward(x, W, U, b, **kw)[:3]]
    for path in PATHS:
        for k, (a, ref) in enumerate(zip(got[path], got["serial"])):
            np.testing.assert_array_equal(a, ref, err_msg=f"{path} {k}")


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("H", [64, 256])
def test_gru_one_row_paths_give_the_same_bits(settings, H, reset_after):
    """One-row GRU inference with and without the projection beside the loop (the GRU has
    no split over the units: cols changes nothing): the same bits."""
    rng = np.random.default_rng(seed_of("calib gru", H, reset_after))
    T, I = 40, 32
    x = rng.standard_normal((T, 1, I)).astype(np.float32)
    W = (rng.standard_normal((I, 3 * H)) / 6).astype(np.float32)
    U = (rng.standard_normal((H, 3 * H)) / np.sqrt(H)).astype(np.float32)
    b = (rng.standard_normal((2, 3 * H) if reset_after else 3 * H) * 0.3).astype(np.float32)
    h0 = rng.standard_normal((1, H)).astype(np.float32)
    settings.pipe_steps = 8
    got = {}
    for path in PATHS:
        _force(settings, path)
        got[path] = [np.array(a) for a in
                     ops.gru_forward(x, W, U, b, h0=h0, reset_after=reset_after)[:2]]
    for path in PATHS:
        for k, (a, ref) in enumerate(zip(got[path], got["serial"])):
            np.testing.assert_array_equal(a, ref, err_msg=f"{path} {k}")


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_layers_at_batch_one_give_the_same_bits_on_every_path(settings, cell):
    """A layer's batch-1 inference (batch-major x, read a chunk at a time) at 128 units on
    every path, also with the thread count of a one-core machine: the same bits."""
    layer = getattr(fl.layers, cell)(128, return_sequences=True, seed=3)
    x = np.random.default_rng(5).standard_normal((1, 70, 128)).astype(np.float32)
    layer.build(x.shape)
    outs = []
    for threads in (1, 2):
        for path in PATHS:
            _force(settings, path, threads)
            outs.append(np.array(layer(x)))
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


def test_calibration_problems_give_the_same_bits_on_every_path():
    """The shapes the calibration times: each of its paths computes the same outputs (it
    also checks this itself before timing a path)."""
    from fastlstm import _lstm
    for H, T in calibration.SHAPES + calibration.GEMV_SHAPES:
        args = calibration._problem(H, T)
        ys = [_lstm.forward(*args, settings=s)[0]
              for gemv in (False, True) for s in calibration._variants(2, gemv).values()]
        for y in ys[1:]:
            np.testing.assert_array_equal(y, ys[0])


def _fake_times(pipe, cols, rows8=False):
    """Timings where the pipeline, the split and eight rows a pass win (True) or lose at
    every shape."""
    t = {H: {"serial": 1.0, "pipe": 0.5 if pipe else 1.2, "cols": 0.4 if cols else 1.3}
         for H, _ in calibration.SHAPES}
    t.update({f"gemv {H}": {"serial": 1.0, "rows8": 0.7 if rows8 else 1.0}
              for H, _ in calibration.GEMV_SHAPES})
    return t


def test_choose():
    """The thresholds from timings: from the smallest shape whose path wins at every larger
    one, never where the largest loses, a tie to the one-thread path."""
    default = th.KernelSettings()
    assert calibration.choose(_fake_times(True, True, True)) == {
        "pipe_min_macs": default.pipe_min_macs, "cols_min_bytes": 128 * 512 * 4,
        "gemv_rows": 8}
    assert calibration.choose(_fake_times(False, False)) == {
        "pipe_min_macs": None, "cols_min_bytes": None, "gemv_rows": 1}
    t = _fake_times(True, True)
    t[128] = {"serial": 1.0, "pipe": 0.97, "cols": 1.0}     # within the margin: a tie
    H, T = calibration.SHAPES[1]
    assert calibration.choose(t) == {"pipe_min_macs": float(T * H * 4 * H),
                                     "cols_min_bytes": H * 4 * H * 4, "gemv_rows": 1}
    t = _fake_times(True, True)
    t[512] = {"serial": 1.0, "pipe": 1.1, "cols": 1.1}       # one shape loses: outvoted
    assert calibration.choose(t) == {"pipe_min_macs": default.pipe_min_macs,
                                     "cols_min_bytes": 128 * 512 * 4, "gemv_rows": 1}
    t[256] = {"serial": 1.0, "pipe": 1.1, "cols": 1.1}       # two lose, the largest too
    assert calibration.choose(t) == {"pipe_min_macs": None, "cols_min_bytes": None,
                                     "gemv_rows": 1}
    t = _fake_times(True, True)
    del t[512]["cols"]                                        # dropped early: lost
    t[256]["cols"] = 2.0
    assert calibration.choose(t)["cols_min_bytes"] is None
    one = {k: v for k, v in _fake_times(True, True, True).items() if isinstance(k, str)}
    assert calibration.choose(one) == {"pipe_min_macs": None, "cols_min_bytes": None,
                                       "gemv_rows": 8}          # one thread


def _stub_measure(monkeypatch, times, steady=True):
    calls = []

    def measure(threads, budget=None):
        calls.append(threads)
        return times, steady
    monkeypatch.setattr(calibration, "measure", measure)
    return calls


def test_cache_written_then_reused(cache_home, monkeypatch):
    calls = _stub_measure(monkeypatch, _fake_times(False, True))
    choice = calibration.choices(2)
    assert calls == [2] and choice["cols_min_bytes"] == 128 * 512 * 4
    path = cache_home / "fastlstm" / "calibration.json"
    data = json.loads(path.read_text())
    assert data["format"] == calibration.FORMAT
    entry = data["machines"][calibration.machine_key(2)]
    assert entry["cols_min_bytes"] == 128 * 512 * 4 and entry["pipe_min_macs"] is None
    calibration.forget()                      # a new process: read from the file
    _stub_measure(monkeypatch, _fake_times(True, False))
    assert calibration.choices(2) == choice
    assert calibration.choices(3) != choice   # another thread count: its own entry
    data = json.loads(path.read_text())
    assert set(data["machines"]) == {calibration.machine_key(2), calibration.machine_key(3)}


def test_unsteady_timings_are_measured_again_a_few_times(cache_home, monkeypatch):
    calls = _stub_measure(monkeypatch, _fake_times(True, True), steady=False)
    for _ in range(calibration.UNSTEADY_TRIES + 2):
        calibration.forget()                  # a new process each time
        assert calibration.choices(2)["cols_min_bytes"] is not None
    assert calls == [2] * calibration.UNSTEADY_TRIES
    entry = calibration.read_cache()[calibration.machine_key(2)]
    assert entry["steady"] is False and entry["tries"] == calibration.UNSTEADY_TRIES


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[]", b'{"format": 99}',
                                     b'{"format": 1, "machines": []}',
                                     b'{"format": 1, "machines": {"K": {"cols_min_bytes": "x"}}}'])
def test_corrupted_cache_is_measured_again_and_replaced(cache_home, monkeypatch, content):
    path = cache_home / "fastlstm" / "calibration.json"
    path.parent.mkdir()
    path.write_bytes(content)
    calls = _stub_measure(monkeypatch, _fake_times(True, False))
    assert calibration.choices(2) == {"pipe_min_macs": th.KernelSettings().pipe_min_macs,
                                      "cols_min_bytes": None, "gemv_rows": 1}
    assert calls == [2]
    assert calibration.machine_key(2) in json.loads(path.read_text())["machines"]


def test_cache_entry_of_the_wrong_type_is_measured_again(cache_home, monkeypatch):
    path = cache_home / "fastlstm" / "calibration.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"format": 1, "machines": {
        calibration.machine_key(2): {"pipe_min_macs": -5, "cols_min_bytes": True}}}))
    calls = _stub_measure(monkeypatch, _fake_times(False, False))
    calibration.choices(2)
    assert calls == [2]


def test_unwritable_cache_dir_never_fails(cache_home, monkeypatch, settings):
    """A cache folder this process may not write (for root, which writes through
    permissions, one under /proc): the measured choice holds for this process, nothing
    raised."""
    folder = cache_home / "fastlstm"
    folder.mkdir()
    folder.chmod(0o500)
    if hasattr(os, "geteuid") and os.geteuid() == 0 and os.path.isdir("/proc/self"):
        monkeypatch.setenv("XDG_CACHE_HOME", "/proc/self")
    try:
        _stub_measure(monkeypatch, _fake_times(False, True))
        assert calibration.choices(2)["cols_min_bytes"] == 128 * 512 * 4
        assert not os.path.exists(calibration.cache_path())
        calibration.forget()
        assert calibration.choices(2)["cols_min_bytes"] == 128 * 512 * 4
    finally:
        folder.chmod(0o700)


def test_cache_path_that_cannot_be_a_folder_never_fails(tmp_path, monkeypatch, settings):
    """XDG_CACHE_HOME a file (no folder can be made under it): the call goes on, with the
    measured choice for this process."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setenv(calibration.ENV, "1")
    calibration.forget()
    _stub_measure(monkeypatch, _fake_times(False, True))
    assert not calibration.write_cache("k", {"pipe_min_macs": None})
    settings.threads, settings.calibrated_for = 2, -1
    settings.fixed.clear()
    th.kernel_settings()
    assert settings.cols_min_bytes == 128 * 512 * 4 and settings.calibrated_for == 2
    y = fl.layers.LSTM(8)(np.zeros((1, 3, 4), np.float32))
    assert y.shape == (1, 8)


def test_a_failing_measurement_leaves_the_defaults(cache_home, monkeypatch, settings):
    def measure(threads, budget=None):
        raise RuntimeError("no")
    monkeypatch.setattr(calibration, "measure", measure)
    settings.threads, settings.calibrated_for = 2, -1
    settings.fixed.clear()
    settings.cols_min_bytes = 7
    th.kernel_settings()
    assert settings.cols_min_bytes == th.KernelSettings().cols_min_bytes


def test_disabled(cache_home, monkeypatch, settings):
    """FASTLSTM_CALIBRATE=0: the defaults, nothing measured or written."""
    monkeypatch.setenv(calibration.ENV, "0")
    calls = _stub_measure(monkeypatch, _fake_times(False, False))
    settings.threads, settings.calibrated_for = 2, -1
    settings.fixed.clear()
    settings.pipe_min_macs = 3.0
    th.kernel_settings()
    default = th.KernelSettings()
    assert calls == [] and settings.calibrated_for == 2
    assert (settings.pipe_min_macs, settings.cols_min_bytes) == (default.pipe_min_macs,
                                                                 default.cols_min_bytes)
    assert not (cache_home / "fastlstm").exists()


def test_applied_per_thread_count_and_not_over_a_setter(cache_home, monkeypatch, settings):
    """The choices follow the thread count (one thread: nothing to choose, the defaults);
    a threshold a setter fixed stays as set."""
    calls = _stub_measure(monkeypatch, _fake_times(False, False, True))
    settings.fixed.clear()
    settings.threads, settings.calibrated_for = 2, -1
    th.kernel_settings()
    assert settings.pipe_min_macs == 1e300 and settings.cols_min_bytes == 1 << 62
    assert settings.gemv_rows == 8
    settings.threads = 1
    th.kernel_settings()
    default = th.KernelSettings()
    assert settings.pipe_min_macs == default.pipe_min_macs and settings.gemv_rows == 8
    th.set_cols_min_bytes(12345)
    th.set_gemv_rows(1)
    settings.threads = 3
    th.kernel_settings()
    assert calls == [2, 1, 3]
    assert settings.cols_min_bytes == 12345 and settings.pipe_min_macs == 1e300
    assert settings.gemv_rows == 1
    with pytest.raises(ValueError, match="rows"):
        th.set_gemv_rows(4)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("units,inputs", [(64, 64), (70, 13), (128, 128), (256, 100), (300, 7)])
def test_one_row_products_same_bits_one_or_eight_rows_a_pass(settings, cell, units, inputs):
    """gemv_rows 1 or 8 (rows of 1 KiB and more of the weights one or eight a pass): the
    streaming step (on one thread, and split over two threads from 768 KiB of weights) and a
    short one-row sequence (fewer than 32 steps: U read in place) give the same bits; rows
    whose width is no multiple of a vector and depths no multiple of 8 included."""
    layer = getattr(fl.layers, cell)(units, return_sequences=True, seed=7)
    layer.build((1, 1, inputs))
    rng = np.random.default_rng(seed_of("gemv", cell, units, inputs))
    x = rng.standard_normal((1, inputs)).astype(np.float32)
    state = [rng.standard_normal((1, units)).astype(np.float32) for _ in layer.state_names]
    xs = rng.standard_normal((1, 20, inputs)).astype(np.float32)
    for threads in (1, 2):      # (a split step adds its partial sums in another order)
        got = []
        for rows in (1, 8):
            _force(settings, "serial", threads)
            settings.gemv_rows = rows
            y, st = layer.step(x, state)
            y2, _ = layer.step(x, st)
            got.append([np.array(y), np.array(y2)] + [np.array(s) for s in st]
                       + [np.array(layer(xs))])
        for k, (a, ref) in enumerate(zip(got[1], got[0])):
            np.testing.assert_array_equal(a, ref, err_msg=f"{threads} {k}")
