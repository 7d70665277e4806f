"""Inference projects the input a few steps at a time, just before those steps run, in one
reused buffer (every cell; the LSTM's options are in test_lstm_ops), reading a batch-major
input's rows where they lie, a chunk at a time: the same bits as one pass over a
contiguous input, and memory that does not grow with the sequence."""
import importlib

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import ops

from conftest import DTYPES, assert_close, seed_of

CELLS = [("lstm", None), ("gru", True), ("gru", False), ("simple_rnn", None)]
OPTIONS = {
    "plain": {},
    "mask_backwards": dict(mask=True, go_backwards=True),
    "last_output_masked": dict(mask=True, return_sequences=False),
    "recurrent_dropout": dict(recurrent_dropout_mask=True),
}


def _problem(cell, reset_after, rng, dtype, T, B, I, H, opts):
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell] * H
    args = (rng.standard_normal((T, B, I)).astype(dtype),
            (rng.standard_normal((I, G)) / np.sqrt(I)).astype(dtype),
            (rng.standard_normal((H, G)) / np.sqrt(H)).astype(dtype),
            (rng.standard_normal((2, G) if reset_after else (G,)) * 0.3).astype(dtype),
            rng.standard_normal((B, H)).astype(dtype))
    if cell == "lstm":
        args += (rng.standard_normal((B, H)).astype(dtype),)
    kw = {k: v for k, v in opts.items() if k in ("go_backwards", "return_sequences")}
    if opts.get("mask"):
        kw["mask"] = rng.random((T, B)) > 0.3
    if opts.get("recurrent_dropout_mask"):
        kw["recurrent_dropout_mask"] = ((rng.random((B, H)) > 0.3) / 0.7).astype(dtype)
    if cell == "gru":
        kw["reset_after"] = reset_after
    return args, kw


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B", [1, 3, 9])
@pytest.mark.parametrize("chunk_steps", [2, 6])
@pytest.mark.parametrize("x_layout", ["time_major", "batch_major"])
@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("cell, reset_after", CELLS)
def test_inference_in_time_chunks_equals_one_pass(cell, reset_after, opt, x_layout, chunk_steps,
                                                   B, threads):
    """Chunks of 2 and 6 steps over 17 (a shorter last one); one batch row or three (one
    thread's loop, with the projection beside it, 4 steps a block, inside each chunk) or nine
    (rows over the threads); x time-major, or a transposed view of a batch-major array
    (inference copies each chunk's rows); training (one pass) unaffected by the setting."""
    mod = importlib.import_module(f"fastlstm._{cell}")
    fwd = getattr(ops, f"{cell}_forward")
    min_macs = mod.get_parallel_min_macs()
    mod.set_threads(threads, 0)
    if cell != "simple_rnn":
        mod.set_pipeline(4, 0)
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("chunks", cell, reset_after, opt, B, threads))
            args, kw = _problem(cell, reset_after, rng, dtype, 17, B, 5, 24, OPTIONS[opt])
            x = args[0]
            if x_layout == "batch_major":
                x = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
            with fl.use_backend("cpu"):
                one = fwd(*args, **kw)[:2]
                one_train = fwd(*args, training=True, **kw)[:2]
                mod.set_inference_chunk_bytes(1, chunk_steps * B)
                try:
                    chunked = fwd(x, *args[1:], **kw)[:2]
                    chunked_train = fwd(x, *args[1:], training=True, **kw)[:2]
                finally:
                    mod.set_inference_chunk_bytes(2 << 20, 512)
            with fl.use_backend("numpy"):
                ref = fwd(*args, **kw)[:2]
            for a, b, c in zip(chunked + chunked_train, one + one_train, ref + ref):
                np.testing.assert_array_equal(a, b)
                assert_close(a, c, dtype)
    finally:
        if cell != "simple_rnn":
            mod.set_pipeline(16, 1 << 20)
        mod.set_threads(fl.get_num_threads(), min_macs)
        from fastlstm.threads import init_threads
        init_threads()


@pytest.mark.parametrize("cell, reset_after", CELLS)
def test_inference_memory_does_not_grow_with_sequence_length(cell, reset_after):
    import tracemalloc
    rng = np.random.default_rng(0)
    B, I, H = 8, 16, 64
    fwd = getattr(ops, f"{cell}_forward")
    args, kw = _problem(cell, reset_after, rng, np.float32, 2, B, I, H, {})
    peaks = {}
    for T in (500, 8000):
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        tracemalloc.start()
        fwd(x, *args[1:], return_sequences=False, **kw)
        peaks[T] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    z_bytes = 8000 * B * (1 if cell == "simple_rnn" else 4) * H * 4   # a whole projection's
    assert peaks[8000] < z_bytes / 4
    assert peaks[8000] < 2 * peaks[500] + (1 << 20)
    # A batch-major input is read a chunk at a time, not copied whole.
    xb = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    tracemalloc.start()
    fwd(xb, *args[1:], return_sequences=False, **kw)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.nbytes / 4
