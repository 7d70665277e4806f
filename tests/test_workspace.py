"""Buffers kept between calls: per thread, all threads together under one limit with the
least recently used dropped first (a server's 64 threads kept 64 sets before)."""
import threading

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.backends import workspace as ws


@pytest.fixture
def limit():
    saved = fl.get_workspace_limit()
    ws.clear_workspace(all_threads=True)
    yield
    fl.set_workspace_limit(saved)
    ws.clear_workspace(all_threads=True)


def test_least_recently_used_buffers_go_first(limit):
    fl.set_workspace_limit(3 * 4096)
    a = ws.workspace("a", 1024, np.float32)         # 4 KiB each
    ws.workspace("b", 1024, np.float32)
    assert ws.workspace("a", 1024, np.float32).base is a.base    # kept, and now most recent
    ws.workspace("c", 1024, np.float32)
    ws.workspace("d", 1024, np.float32)             # over the limit: "b" goes, not "a"
    assert ws.workspace_bytes(all_threads=True) <= 3 * 4096
    assert ws.workspace("a", 1024, np.float32).base is a.base
    kept = {k[1] for k in ws._kept}
    assert kept == {"a", "c", "d"}


def test_lowering_the_limit_drops_buffers_at_once_and_zero_keeps_none(limit):
    ws.workspace("a", 1 << 16, np.float64)
    assert ws.workspace_bytes() >= 8 << 16
    fl.set_workspace_limit(0)
    assert ws.workspace_bytes(all_threads=True) == 0
    buf = ws.workspace("a", 10, np.float64)
    assert buf.shape == (10,) and ws.workspace_bytes(all_threads=True) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "1M", True, None])
def test_a_bad_limit_is_refused(bad, limit):
    with pytest.raises(ValueError, match="nbytes"):
        fl.set_workspace_limit(bad)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
def test_many_threads_keep_at_most_the_limit_and_stay_correct(cell, limit):
    x = np.random.default_rng(0).standard_normal((4, 20, 16)).astype(np.float32)
    layer = getattr(fl.layers, cell)(32, return_sequences=True, seed=0)
    want = layer(x)
    per_call = ws.workspace_bytes()
    assert per_call > 0                              # the kernels keep buffers at all
    cap = int(per_call * 2.5)                        # room for two threads' buffers
    fl.set_workspace_limit(cap)
    out, errors = {}, []

    def run(i):
        try:
            for _ in range(3):
                out[i] = layer(x)
        except Exception as exc:                    # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert ws.workspace_bytes(all_threads=True) <= cap
    for i in range(12):
        np.testing.assert_array_equal(out[i], want)
