"""Shared set-up of the asv benchmarks: problem sizes and random data.

Run against the installed package (no build):  cd bench && asv run --python=same --quick
"""
import numpy as np

# (T, B, I=H) as in bench/compare_peers.py
SIZES = ["100x1x128", "100x16x128", "100x32x256", "50x64x512"]
DTYPES = ["float32", "float64"]


def parse(size):
    T, B, H = (int(v) for v in size.split("x"))
    return T, B, H, H


def inputs(size, dtype, seed=0):
    T, B, I, H = parse(size)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, I)).astype(dtype)


def threads(n=2):
    import fastlstm as fl
    fl.set_num_threads(n)
