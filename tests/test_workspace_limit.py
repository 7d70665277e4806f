"""The buffers the compiled kernels keep between calls: per calling thread, all threads
together under one limit (fl.set_workspace_limit), the least recently used of any thread
dropped first, and never freed while a call still runs on them."""
import concurrent.futures
import importlib
import threading
import time
import weakref

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import ops
from fastlstm.backends import workspace as ws

MiB = 1 << 20


@pytest.fixture(autouse=True)
def fresh_limit():
    saved = fl.get_workspace_limit()
    ws.clear_workspace(all_threads=True)
    yield
    fl.set_workspace_limit(saved)
    ws.clear_workspace(all_threads=True)


def one_thread(fn, *args):
    """fn(*args) on a thread of its own that stays alive (its buffers stay its own)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.submit(fn, *args).result()
    return pool


def kept_slots():
    return [key[0] for mine in list(ws._threads.values()) for key in mine]


# ---------------------------------------------------------------------------- the setting
def test_default_and_round_trip():
    assert fl.get_workspace_limit() == ws.DEFAULT_LIMIT_BYTES == 256 * MiB
    fl.set_workspace_limit(np.int64(3 * MiB))
    assert fl.get_workspace_limit() == 3 * MiB and type(fl.get_workspace_limit()) is int
    assert "set_workspace_limit" in fl.__all__ and "get_workspace_limit" in fl.__all__


@pytest.mark.parametrize("bad", [1.5, "1M", True, None, [1]])
def test_a_limit_that_is_no_integer_is_refused(bad):
    with pytest.raises(TypeError, match="nbytes"):
        fl.set_workspace_limit(bad)
    assert fl.get_workspace_limit() == ws.DEFAULT_LIMIT_BYTES


def test_a_negative_limit_is_refused():
    with pytest.raises(ValueError, match="nbytes"):
        fl.set_workspace_limit(-1)
    assert fl.get_workspace_limit() == ws.DEFAULT_LIMIT_BYTES


# ---------------------------------------------------------------------------- eviction
def test_least_recently_used_buffers_of_any_thread_go_first():
    fl.set_workspace_limit(3 * 4096)
    a = one_thread(ws.workspace, "a", 1024, np.float32)         # 4 KiB each, three threads
    b = one_thread(ws.workspace, "b", 1024, np.float32)
    a.submit(ws.workspace, "a", 1024, np.float32).result()      # "a" now more recent than "b"
    c = one_thread(ws.workspace, "c", 1024, np.float32)
    assert sorted(kept_slots()) == ["a", "b", "c"]
    ws.workspace("d", 1024, np.float32)                         # over the limit: b's goes
    assert sorted(kept_slots()) == ["a", "c", "d"]
    assert ws.workspace_bytes(all_threads=True) == 3 * 4096
    assert b.submit(ws.workspace_bytes).result() == 0
    assert a.submit(ws.workspace_bytes).result() == 4096
    for pool in (a, b, c):
        pool.shutdown()


def test_a_kept_buffer_is_reused_and_a_larger_one_replaces_it():
    first = ws.workspace("s", 100, np.float32)
    again = ws.workspace("s", 50, np.float32)
    assert again.base is first.base                   # kept: the same memory
    bigger = ws.workspace("s", 200, np.float32)
    assert bigger.base is not first.base
    assert ws.workspace_bytes() == 800                # only the larger one is kept


def test_lowering_the_limit_drops_buffers_at_once_and_zero_keeps_none():
    held = ws.workspace("a", 1 << 16, np.float64)
    assert ws.workspace_bytes() == 8 << 16
    fl.set_workspace_limit(0)
    assert ws.workspace_bytes(all_threads=True) == 0
    held[:] = 1.0                                     # forgotten, not freed: still ours
    assert held.sum() == 1 << 16
    buf = ws.workspace("a", 10, np.float64)
    assert buf.shape == (10,) and ws.workspace_bytes(all_threads=True) == 0


def test_a_buffer_larger_than_the_limit_serves_the_call_and_is_not_kept():
    fl.set_workspace_limit(MiB)
    small = ws.workspace("small", 1024, np.float32)
    big = ws.workspace("big", MiB, np.float32)        # 4 MiB
    assert big.shape == (MiB,) and small.shape == (1024,)
    assert kept_slots() == ["small"]


def test_a_thread_that_ends_drops_its_buffers():
    t = threading.Thread(target=ws.workspace, args=("a", 1 << 16, np.float32))
    t.start()
    t.join()
    ws.workspace("mine", 16, np.float32)
    assert kept_slots() == ["mine"]
    assert ws.workspace_bytes(all_threads=True) == 64


def test_clear_workspace_drops_this_threads_or_every_threads_buffers():
    other = one_thread(ws.workspace, "theirs", 1024, np.float32)
    ws.workspace("mine", 1024, np.float32)
    ws.clear_workspace()
    assert kept_slots() == ["theirs"] and ws.workspace_bytes() == 0
    ws.workspace("mine", 1024, np.float32)
    ws.clear_workspace(all_threads=True)
    assert ws.workspace_bytes(all_threads=True) == 0
    other.shutdown()


# ---------------------------------------------------------------------------- the kernels
def problems():
    """Calls that use every kind of kept buffer: inference on a batch-major input (staged
    rows, the chunk of Z, packed W and U), training steps (packed W^T and U^T, scratch),
    all three cells, float32 and float64, and a single-row LSTM (split over the units where the threads allow)."""
    rng = np.random.default_rng(7)
    out = []

    def layer_call(layer, x):
        return lambda: [layer(x)]

    for cell, units in (("LSTM", 96), ("GRU", 80), ("SimpleRNN", 64)):
        layer = getattr(fl.layers, cell)(units, return_sequences=True, seed=1)
        x = rng.standard_normal((6, 40, 24)).astype(np.float32)      # batch-major: staged
        out.append(layer_call(layer, x))
    lstm64 = fl.layers.LSTM(48, seed=2, dtype="float64")
    out.append(layer_call(lstm64, rng.standard_normal((3, 30, 10))))
    lstm1 = fl.layers.LSTM(384, seed=3)
    out.append(layer_call(lstm1, rng.standard_normal((1, 12, 16)).astype(np.float32)))

    def training(fwd, bwd, x, W, U, b):
        def run():
            res = fwd(x, W, U, b, training=True)
            y, cache = res[0], res[-1]
            g = bwd(cache, dy=np.cos(y))
            return list(res[:-1]) + [g.inputs, g.h0, g.kernel, g.recurrent_kernel, g.bias]
        return run

    for fwd, bwd, G in ((ops.lstm_forward, ops.lstm_backward, 4),
                        (ops.gru_forward, ops.gru_backward, 3),
                        (ops.simple_rnn_forward, ops.simple_rnn_backward, 1)):
        H = 40
        x = rng.standard_normal((25, 5, 12)).astype(np.float32)
        W = (0.3 * rng.standard_normal((12, G * H))).astype(np.float32)
        U = (0.3 * rng.standard_normal((H, G * H))).astype(np.float32)
        b = (0.1 * rng.standard_normal((2, G * H) if G == 3 else G * H)).astype(np.float32)
        out.append(training(fwd, bwd, x, W, U, b))
    return out


def same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


class Tracker:
    """Stands in for `workspace` in the kernel modules: hands out a fresh array at every
    request (as limit 0 does) and checks, at each request, that every array handed out
    earlier in the same kernel call is still held by it."""

    def __init__(self):
        self.handed, self.errors = [], []

    def __call__(self, slot, n, dtype):
        for name, ref in self.handed:
            if ref() is None:
                self.errors.append(f"{name!r} released before the call's request for {slot!r}")
        # A view of memory through a memoryview: views of it and memoryviews over it keep
        # this very array alive, so its death means nothing holds the memory any more.
        arr = np.frombuffer(memoryview(bytearray(max(n, 1) * np.dtype(dtype).itemsize)),
                            dtype, count=n)
        self.handed.append((slot, weakref.ref(arr)))
        return arr


def test_every_call_holds_the_buffers_it_was_given(monkeypatch):
    """The contract that makes dropping a kept buffer safe: a kernel holds each buffer it
    was handed until it is done with it (a kernel that kept only a pointer into a buffer
    nothing else held ran on freed memory once another thread dropped that buffer)."""
    calls = problems()
    wants = [run() for run in calls]
    tracker = Tracker()
    asked = []

    def one_call(kernel):
        def call(*args, **kwargs):
            tracker.handed = []                  # a kernel call of its own from here
            try:
                return kernel(*args, **kwargs)
            finally:
                asked.append(len(tracker.handed))
        return call

    for name in ("_lstm", "_gru", "_simple_rnn"):
        module = importlib.import_module(f"fastlstm.{name}")
        monkeypatch.setattr(module, "workspace", tracker)
        monkeypatch.setattr(module, "forward", one_call(module.forward))
        monkeypatch.setattr(module, "backward", one_call(module.backward))
    for run, want in zip(calls, wants):
        del asked[:]
        got = run()
        assert asked and min(asked) > 0, "the kernels no longer ask for buffers here"
        assert not tracker.errors, tracker.errors
        same(got, want)


def test_limit_zero_keeps_nothing_and_gives_the_same_results():
    calls = problems()
    wants = [run() for run in calls]
    assert ws.workspace_bytes() > 0
    fl.set_workspace_limit(0)
    assert ws.workspace_bytes(all_threads=True) == 0
    for run, want in zip(calls, wants):
        same(run(), want)
    assert ws.workspace_bytes(all_threads=True) == 0


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_many_threads_keep_at_most_the_limit():
    """16 threads, each an LSTM(256) inference and training step: kept buffers of all of
    them together stay under the limit (per thread, as before, they would keep 16 sets)."""
    rng = np.random.default_rng(3)
    layer = fl.layers.LSTM(256, return_sequences=True, seed=0)
    x = rng.standard_normal((8, 50, 64)).astype(np.float32)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))
    layer(x)                                     # builds the weights
    W, U, b = layer.kernel, layer.recurrent_kernel, layer.bias

    def work():
        y = layer(x)
        out = ops.lstm_forward(xt, W, U, b, training=True)
        g = ops.lstm_backward(out[3], dy=np.cos(out[0]))
        return y, g.kernel, g.recurrent_kernel

    want = work()
    per_thread = ws.workspace_bytes()
    assert per_thread > MiB
    limit = 3 * per_thread
    fl.set_workspace_limit(limit)
    n = 16
    done, release = threading.Barrier(n + 1), threading.Event()
    results, errors, peak = {}, [], [0]

    def worker(i):
        try:
            for _ in range(2):
                results[i] = work()
                peak[0] = max(peak[0], ws.workspace_bytes(all_threads=True))
        except BaseException as exc:             # reported below
            errors.append(exc)
        done.wait()
        release.wait()                           # all alive while the totals are read

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    done.wait()
    kept, rss = ws.workspace_bytes(all_threads=True), rss_bytes()
    release.set()
    for t in threads:
        t.join()
    assert not errors, errors
    print(f"\n{n} threads: kept {kept / MiB:.1f} MiB (peak seen {peak[0] / MiB:.1f}, limit "
          f"{limit / MiB:.1f}, one thread's set {per_thread / MiB:.1f}); RSS {rss / MiB:.0f} MiB")
    assert 0 < kept <= limit and peak[0] <= limit
    for i in range(n):
        same(results[i], want)


def test_threads_evicting_each_other_under_load_stay_correct():
    """More threads than the limit has room for, for a few seconds: each thread's buffers
    keep being dropped by others while its calls run, and every result stays that of a
    single thread. (With the buffer of staged rows held by pointer only, this crashed or
    gave wrong results.)"""
    calls = problems()
    wants = [run() for run in calls]
    per_thread = ws.workspace_bytes()
    fl.set_workspace_limit(int(per_thread * 1.5))
    n, seconds = 8, 3.0
    stop = time.monotonic() + seconds
    errors, counts = [], [0] * n

    def worker(i):
        rng = np.random.default_rng(i)
        try:
            while time.monotonic() < stop and not errors:
                k = int(rng.integers(len(calls)))
                same(calls[k](), wants[k])
                counts[i] += 1
        except BaseException as exc:             # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert min(counts) > 0
    assert ws.workspace_bytes(all_threads=True) <= fl.get_workspace_limit()
