"""Command line: ``python -m fastlstm [demo adding | demo airline | info | check | bench]``.

With no command: two lines of ``info``, then ``demo adding``.

``demo adding``   the adding problem (T=100): an LSTM and a SimpleRNN of the same size trained
                  side by side; per-epoch test MSE, a text chart and the verdict.
``demo airline``  monthly airline passengers 1949-1960: an LSTM forecasts 1959-1960, scored
                  against the seasonal-naive baseline.
                  Both take ``--plot FILE.png`` (needs matplotlib) and size options
                  (``--epochs``, ...) for a quicker run.
``info``          the version, the build, BLAS and threads.
``check``         the compiled LSTM forward and backward against the NumPy oracle.
``bench``         a quick speed check: the compiled LSTM against PyTorch (when installed) and
                  the oracle, training and inference, by bench/compare_peers.py's method
                  (fastlstm.benchmarking), with the machine it ran on; about 20 s.
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
        f"machine {platform.machine()}  cores {os.cpu_count()}  elementwise kernels: {_gates.isa()}  "
        f"kernel threads: {fl.get_num_threads()}",
        f"backends available: {', '.join(fl.available_backends())}  (active: {fl.current_backend()})",
    ]
    try:
        from fastlstm import _lowp
        lines.append(f"quantized products (fl.quantize): int8 {_lowp.level_name(1)}, "
                     f"bfloat16 {_lowp.level_name(2)}")
    except ImportError:
        pass
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


def _short_info():
    import fastlstm as fl
    return [f"fastlstm {fl.__version__}: backends {', '.join(fl.available_backends())} "
            f"(active: {fl.current_backend()}), threads {fl.get_num_threads()}",
            "(python -m fastlstm info: the full build report; -h: every command)"]


def _add_demo_parsers(sub):
    demo = sub.add_parser("demo", help="run a demo: adding (default) or airline")
    demos = demo.add_subparsers(dest="demo")
    add = demos.add_parser("adding", help="adding problem: LSTM against SimpleRNN")
    add.add_argument("--timesteps", type=int, default=100, help="sequence length T (100)")
    add.add_argument("--units", type=int, default=32, help="hidden units of each model (32)")
    add.add_argument("--epochs", type=int, default=None, help="training epochs")
    add.add_argument("--train", type=int, default=3200, help="training sequences (3200)")
    add.add_argument("--test", type=int, default=1000, help="test sequences (1000)")
    add.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (0.003)")
    add.add_argument("--seed", type=int, default=0)
    add.add_argument("--threads", type=int, default=None,
                     help="threads (default: fastlstm's, all cores)")
    add.add_argument("--plot", metavar="FILE.png", default=None,
                     help="save the learning curves (needs matplotlib)")
    add.add_argument("--quantize", metavar="P[,P]", default="",
                     help="also score the trained models quantized: int8, bfloat16 or both")
    add.add_argument("--mixed", action="store_true",
                     help="train in mixed_bfloat16 (bf16 products, float32 weights)")
    air = demos.add_parser("airline", help="airline passengers: LSTM forecast of 1959-1960")
    air.add_argument("--epochs", type=int, default=300, help="epochs per model (300)")
    air.add_argument("--ensemble", type=int, default=5, help="models averaged (5)")
    air.add_argument("--units", type=int, default=16, help="hidden units (16)")
    air.add_argument("--seed", type=int, default=0)
    air.add_argument("--threads", type=int, default=1,
                     help="threads (1: fastest for these small models)")
    air.add_argument("--plot", metavar="FILE.png", default=None,
                     help="save the forecast (needs matplotlib)")
    air.add_argument("--quantize", metavar="P[,P]", default="",
                     help="also forecast with the trained ensemble quantized: int8, bfloat16 "
                          "or both")
    air.add_argument("--mixed", action="store_true",
                     help="train in mixed_bfloat16 (bf16 products, float32 weights)")


def _positive(parser, name, value):
    if value is not None and value < 1:
        parser.error(f"--{name}: expected a positive integer, got {value}")


def _run_demo(args, parser):
    from fastlstm import demos

    which = args.demo or "adding"
    from fastlstm.quantization import check_precision
    try:
        precisions = [check_precision(p) for p in getattr(args, "quantize", "").split(",") if p]
    except (TypeError, ValueError) as exc:
        parser.error(f"--quantize: {exc}")
    if getattr(args, "plot", None):
        try:                            # before the demo trains, not after
            demos.require_matplotlib(args.plot)
        except ImportError:
            parser.error(f"--plot {args.plot}: {demos.PLOT_HINT}")
    if which == "adding":
        for name in ("timesteps", "units", "epochs", "train", "test", "threads"):
            _positive(parser, name, getattr(args, name, None))
        if args.timesteps < 2:
            parser.error(f"--timesteps: expected at least 2, got {args.timesteps}")
        epochs = args.epochs if args.epochs is not None else DEFAULT_ADDING_EPOCHS
        demos.run_adding(timesteps=args.timesteps, units=args.units, epochs=epochs,
                         n_train=args.train, n_test=args.test, learning_rate=args.lr,
                         seed=args.seed, plot=args.plot, threads=args.threads,
                         quantize=precisions, mixed=args.mixed)
    else:
        for name in ("epochs", "ensemble", "units", "threads"):
            _positive(parser, name, getattr(args, name))
        demos.run_airline(units=args.units, epochs=args.epochs, ensemble=args.ensemble,
                          seed=args.seed, plot=args.plot, threads=args.threads,
                          quantize=precisions, mixed=args.mixed)
    return 0


#: epochs of ``demo adding`` (100 steps each)
DEFAULT_ADDING_EPOCHS = 50


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastlstm",
        description="fastlstm: fast recurrent layers for the CPU. With no command: a short "
                    "info, then the adding-problem demo.")
    sub = parser.add_subparsers(dest="command")
    _add_demo_parsers(sub)
    sub.add_parser("info", help="version, build, BLAS and threads")
    sub.add_parser("check", help="compiled kernels against the NumPy oracle")
    sub.add_parser("bench", help="quick speed check against PyTorch and the oracle (about 20 s)")
    args = parser.parse_args(argv)
    if args.command is None:
        print("\n".join(_short_info()))
        print()
        return _run_default(parser)
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    if args.command == "check":
        if not run_check():
            print("fastlstm check FAILED: the compiled kernels disagree with the oracle",
                  file=sys.stderr)
            return 1
        return 0
    if args.command == "bench":
        from .benchmarking import run_bench
        run_bench()
        return 0
    if args.command == "demo":
        if args.demo is None:
            return _run_default(parser)
        return _run_demo(args, parser)
    return 0


def _run_default(parser):
    args = parser.parse_args(["demo", "adding"])
    return _run_demo(args, parser)


if __name__ == "__main__":
    sys.exit(main())
