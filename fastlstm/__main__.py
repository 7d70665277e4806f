"""Command line: ``python -m fastlstm [info | check]``.

``info`` prints the version, the build, BLAS and threads; ``check`` runs the compiled LSTM
forward and backward against the NumPy oracle on random data and says whether they agree.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def info_lines():
    import scipy

    import fastlstm as fl
    from fastlstm import _gates

    lines = [
        f"fastlstm {fl.__version__}  (package: {os.path.dirname(fl.__file__)})",
        f"python {platform.python_version()}  numpy {np.__version__}  scipy {scipy.__version__}",
        f"machine {platform.machine()}  cores {os.cpu_count()}  elementwise kernels: {_gates.isa()}",
        f"backends available: {', '.join(fl.available_backends())}  (active: {fl.current_backend()})",
    ]
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            if pool.get("user_api") != "blas":
                continue
            path = pool["filepath"].replace(os.sep, "/")
            owner = "numpy" if "numpy" in path else "scipy (used by fastlstm kernels)"
            lines.append(f"BLAS for {owner}: {pool['internal_api']} {pool.get('version')}, "
                         f"{pool['num_threads']} threads, core type {pool.get('architecture')}")
    except ImportError:
        lines.append("BLAS: install threadpoolctl to see the BLAS libraries and threads")
    return lines


def run_check(seed=0, verbose=True):
    """Compiled forward and backward against the oracle; returns True when they agree."""
    import fastlstm as fl
    from fastlstm import ops

    rng = np.random.default_rng(seed)
    T, B, I, H = 20, 8, 16, 32
    ok = True
    for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-10)):
        x = rng.standard_normal((T, B, I)).astype(dtype)
        W = (rng.standard_normal((I, 4 * H)) / np.sqrt(I)).astype(dtype)
        U = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(dtype)
        b = rng.standard_normal(4 * H).astype(dtype) * 0.1
        mask = rng.random((T, B)) > 0.2
        dy = rng.standard_normal((T, B, H)).astype(dtype)
        results = {}
        for backend in ("numpy", "cpu"):
            with fl.use_backend(backend):
                t0 = time.perf_counter()
                y, h, c, cache = ops.lstm_forward(x, W, U, b, mask=mask, training=True)
                g = ops.lstm_backward(cache, dy)
                results[backend] = (time.perf_counter() - t0, [y, h, c, g.inputs, g.kernel,
                                                                g.recurrent_kernel, g.bias])
        (t_ref, ref), (t_cpu, got) = results["numpy"], results["cpu"]
        err = max(float(np.max(np.abs(a - r) / (1 + np.abs(r)))) for a, r in zip(got, ref))
        good = err < tol
        ok &= good
        if verbose:
            print(f"check LSTM {np.dtype(dtype).name}: forward+backward, cpu vs oracle "
                  f"max rel err {err:.1e} ({'ok' if good else 'MISMATCH'}); "
                  f"cpu {t_cpu * 1e3:.2f} ms, oracle {t_ref * 1e3:.2f} ms")
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastlstm",
                                     description="fastlstm: fast recurrent layers for the CPU")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="version, build, BLAS and threads")
    sub.add_parser("check", help="compiled kernels against the NumPy oracle")
    args = parser.parse_args(argv)
    if args.command in (None, "info"):
        print("\n".join(info_lines()))
    if args.command in (None, "check"):
        if not run_check():
            print("fastlstm check FAILED: the compiled kernels disagree with the oracle",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
