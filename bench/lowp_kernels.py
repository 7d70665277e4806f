"""Timing of the reduced-precision products (fastlstm._lowp) per variant, one thread, against
float32 `A @ W` (NumPy's BLAS, on the threads given by --blas-threads, 1 by default) on the
same shapes. Medians of many runs; the one-row products run `repeat` times per call so that
the Python call does not count.

    python bench/lowp_kernels.py [--quick] [--blas-threads N]
    python bench/lowp_kernels.py --weight-grads [--threads N]

--weight-grads: mixed_bfloat16 training's weight gradients (dW = X^T dZ, dU = H^T dZ,
fastlstm/backends/mixed_products.py) on the LSTM shapes of bench/mixed_training.py, X and H
packed as they lie against the transposed copies, medians of alternating blocks
(fastlstm.benchmarking.timed_blocks), on N kernel threads.

Compare with the instructions' peak and the read rate of one core (bench/lowp_peak.c).
"""
import argparse
import os
import subprocess
import sys

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--blas-threads", type=int, default=1)
parser.add_argument("--quick", action="store_true", help="fewer runs and shapes")
parser.add_argument("--levels", default=None, help="comma-separated levels (default: all)")
parser.add_argument("--weight-grads", action="store_true",
                    help="time the mixed training's weight gradients instead")
parser.add_argument("--threads", type=int, default=1, help="kernel threads (--weight-grads)")
args = parser.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.blas_threads)

import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fastlstm import _lowp  # noqa: E402
from fastlstm.backends.oracle import lowp as O  # noqa: E402


def model_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "?"
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def median_time(fn, runs, inner=1):
    fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) / inner)
    return float(np.median(ts))


def weights(kind, K, N, rng):
    W = rng.standard_normal((K, N)).astype(np.float32)
    if kind == _lowp.INT8:
        Wq, scale = O.quantize_weight_int8(W)
        packed, comp = _lowp.pack(Wq)
    else:
        scale = comp = None
        packed, _ = _lowp.pack(O.bf16_bits(W))
    return W, packed, scale, comp


def main():
    rng = np.random.default_rng(0)
    print(f"CPU: {model_name()}; one thread for our kernels, {args.blas_threads} for BLAS")
    runs_many = 5 if args.quick else 11
    runs_one = 9 if args.quick else 25
    many = [(3200, 512, 2048)] if args.quick else [(3200, 512, 2048), (1024, 256, 1024)]
    one = [(m, 512, 2048) for m in (1, 2, 4)] + [(1, 1024, 1024), (1, 256, 1024)]
    if args.quick:
        one = one[:3]
    for kind, kname in ((_lowp.INT8, "int8"), (_lowp.BF16, "bf16")):
        levels = range(_lowp.best_level(kind), -1, -1)
        if args.levels:
            levels = [int(x) for x in args.levels.split(",") if int(x) <= _lowp.best_level(kind)]
        for M, K, N in many + one:
            W, packed, scale, comp = weights(kind, K, N, rng)
            A = rng.standard_normal((M, K)).astype(np.float32)
            out = np.empty((M, N), np.float32)
            ops = 2.0 * M * K * N
            inner = max(1, int(2e6 // (M * K * N // 64 + 1))) if M <= 4 else 1
            t_blas = median_time(lambda: [np.matmul(A, W, out=out) for _ in range(inner)],
                                 runs_one if M <= 4 else runs_many, inner)
            for level in levels:
                if level == 0 and M * K * N > 1e8:
                    continue                    # the portable C loop: far too slow to time
                _lowp.force_level(level)
                name = _lowp.level_name(kind)
                t = median_time(lambda: _lowp.gemm(A, packed, scale, comp, kind, K, N,
                                                   out=out, repeat=inner),
                                runs_one if M <= 4 else runs_many, inner)
                line = (f"{kname:5s} {name:11s} M={M:5d} K={K:5d} N={N:5d}: "
                        f"{t * 1e6:9.1f} us {ops / t / 1e9:7.1f} GOP/s, "
                        f"x{t_blas / t:5.2f} vs float32 BLAS ({ops / t_blas / 1e9:6.1f} GFLOP/s)")
                if M <= 4:
                    line += f", weights {packed.nbytes / t / 1e9:5.1f} GB/s"
                print(line, flush=True)
            _lowp.force_level(-1)


def weight_grads_main():
    import fastlstm as fl
    from fastlstm.backends import mixed_products as mp
    from fastlstm.benchmarking import timed_blocks
    fl.set_num_threads(args.threads)
    n = args.threads
    print(f"CPU: {model_name()}; {n} kernel thread(s); load average {os.getloadavg()[0]:.2f}")
    if not _lowp.packed_level_ok():
        print("the packed path needs the AVX512_BF16 variant: not this CPU")
        return

    def transposed(inputs, dz):
        ats = [mp._transposed(x, n) for x in inputs]
        outs = [np.empty((x.shape[1], dz.shape[1]), np.float32) for x in inputs]
        return _lowp.weight_grads(ats, outs, dz, mp.WEIGHT_GRAD_DEPTH, n)

    rng = np.random.default_rng(0)
    for T, B, H in [(100, 16, 128), (100, 32, 256), (50, 64, 512)]:
        TB = T * B
        X, Hs = (rng.standard_normal((TB, H)).astype(np.float32) for _ in range(2))
        dz = rng.standard_normal((TB, 4 * H)).astype(np.float32)
        fns = {"packed": lambda: mp.weight_grads([X, Hs], dz, n),
               "transposed": lambda: transposed([X, Hs], dz)}
        # Alternating blocks of several calls (a single call after the other's can pay
        # for waking the idle threads of this virtual machine).
        med = timed_blocks(fns, reps=5 if args.quick else 9, per_block=3)
        ops = 2.0 * TB * 4 * H * 2 * H
        print(f"LSTM ({T},{B},{H}) dW + dU: packed {med['packed'] * 1e3:.2f} ms "
              f"({ops / med['packed'] / 1e9:.0f} GFLOP/s), transposed "
              f"{med['transposed'] * 1e3:.2f} ms ({ops / med['transposed'] / 1e9:.0f} "
              f"GFLOP/s), packed / transposed {med['packed'] / med['transposed']:.2f}",
              flush=True)


if __name__ == "__main__":
    if args.weight_grads:
        weight_grads_main()
    else:
        main()
