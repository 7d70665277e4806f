"""Sizes past a C int in the compiled kernels (issue 27, items 2 and 6).

- A sequence of T >= 2^31 steps was truncated to a C int: a broadcast input (no memory
  behind its time axis) of T = 2^32 + 3 ran 3 steps and returned, T = 2^31 returned zeros
  at once. T is 64-bit now, so such a call runs all its steps: it must not come back early.
- layer.step kept x_t's row stride in a C int: rows 2^31..2^32-1 elements apart crashed,
  rows 2^32 + k apart read row 1 from the wrong place. The rows here lie that far apart in a
  sparse memory-mapped file (a (B, T, I) recording sliced at one step), which costs no disk.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fastlstm as fl

from conftest import assert_close

CELLS = ["LSTM", "GRU", "SimpleRNN"]

_LONG_CALL = """
import sys
import numpy as np
import fastlstm as fl
T = int(sys.argv[2])
x = np.broadcast_to(np.ones((1, 1, 2), np.float32), (1, T, 2))
layer = getattr(fl.layers, sys.argv[1])(3, seed=0)
layer.build((None, None, 2))
print("calling", flush=True)
y = layer(x)
print("returned", y.shape, float(np.abs(y).sum()), flush=True)
"""


@pytest.mark.parametrize("T", [2**31, 2**32 + 3])
def test_a_sequence_past_a_c_int_runs_all_its_steps(T):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _LONG_CALL, cell, str(T)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for cell in CELLS]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "calling", p.stderr.read()
        time.sleep(2.0)             # the truncated call returned within milliseconds
        for cell, p in zip(CELLS, procs):
            assert p.poll() is None, (f"{cell}: T={T} returned early: "
                                      f"{p.stdout.read()} {p.stderr.read()}")
    finally:
        for p in procs:
            p.kill()
            p.communicate()


@pytest.mark.parametrize("extra", [2**31 + 5, 2**32 + 5])
@pytest.mark.parametrize("cell", CELLS)
def test_step_reads_rows_far_apart(tmp_path, cell, extra):
    B, I, H = 2, 3, 4
    # (B, row) float32, rows `extra` elements apart: a sparse file, only two pages written
    data = np.memmap(tmp_path / "rec.f32", np.float32, mode="w+", shape=(B, extra))
    rng = np.random.default_rng(0)
    data[:, :I] = rng.standard_normal((B, I)).astype(np.float32)
    x_t = data[:, :I]
    assert x_t.strides[0] == extra * 4
    layer = getattr(fl.layers, cell)(H, seed=1)
    layer.build((None, None, I))
    state = [rng.standard_normal((B, H)).astype(np.float32) for _ in layer.state_names]
    with fl.use_backend("numpy"):
        y_ref, ref_state = layer.step(np.ascontiguousarray(x_t), state)
    for call in range(3):           # the first call may choose its plan; the next reuse it
        y, new_state = layer.step(x_t, state)
        assert_close(y, y_ref, name=f"{cell} step output, call {call + 1}")
        for got, want in zip(new_state, ref_state):
            assert_close(got, want, name=f"{cell} step state, call {call + 1}")
    del data
