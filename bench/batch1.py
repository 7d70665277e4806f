"""float32 at batch 1: fastlstm's paths against PyTorch and ONNX Runtime, side by side.

    PYTHONPATH=. python bench/batch1.py [--reps 9] [--cells lstm,gru] [--units 128,256,512]
                                        [--step-units 128,256]

Inference at (T,B,H=I) = (100,1,H) and the streaming ``layer.step`` against the torch cell,
in one process, in alternating blocks (each after a short pause and untimed calls), medians
in ms (the step in us) and ratios to the faster peer. fastlstm runs each of the ways the
calibration (fastlstm.calibration) chooses between, all with the same bits (checked here):

    default  KernelSettings' defaults (FASTLSTM_CALIBRATE=0)
    calib    what the calibration chose on this machine (measured now, or from its cache)
    serial   one thread: no projection beside the loop, no split over the units
    pipe     the projection beside the loop on a second thread
    cols     the units split over the threads (LSTM)
    rows1/8  (step) one or eight rows of the weights a pass
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def blocks(fns, reps, pause=0.03, warm=0.01, block=0.006):
    """Median and min seconds per call of each function over alternating blocks."""
    for f in fns.values():
        f()
        f()
    samples = {k: [] for k in fns}
    for _ in range(reps):
        for name, f in fns.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < warm:
                f()
            n, t0 = 0, time.perf_counter()
            while n < 3 or time.perf_counter() - t0 < block:
                f()
                n += 1
            samples[name].append((time.perf_counter() - t0) / n)
    return ({k: statistics.median(v) for k, v in samples.items()},
            {k: min(v) for k, v in samples.items()})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--units", default="128,256,512")
    p.add_argument("--step-units", default="128,256")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    import torch
    import fastlstm as fl
    from fastlstm import calibration, threads as th
    from fastlstm.benchmarking import (environment, peer_pair, quiet_numpy_blas,
                                       torch_inference)
    sys.path.insert(0, "bench")
    from compare_peers import _cell_weights, _onnx_session

    torch.set_num_threads(a.threads)
    fl.set_num_threads(a.threads)
    s = th.kernel_settings()
    calib = calibration.choices(a.threads) or {}
    s.calibrated_for = s.threads
    base = {k: getattr(th.KernelSettings(), k) for k in calibration.FIELDS}
    never = {"pipe_min_macs": 1e300, "cols_min_bytes": 1 << 62}

    def setting(**kw):
        def apply():
            for k, v in base.items():
                setattr(s, k, v)
            for k, v in kw.items():
                setattr(s, k, v)
        return apply

    cal = {k: (never[k] if v is None else v) for k, v in calib.items()
           if k in never}
    cal["gemv_rows"] = calib.get("gemv_rows", 1)
    paths = {"default": setting(), "calib": setting(**cal),
             "serial": setting(**never), "pipe": setting(pipe_min_macs=0.0,
                                                         cols_min_bytes=1 << 62),
             "cols": setting(cols_min_bytes=0, pipe_min_macs=1e300)}
    print("\n".join(environment(torch)))
    print("calibration:", calib)
    print(f"{'cell':5} {'T':>4} {'B':>2} {'H':>4} | " + " ".join(f"{k:>8}" for k in paths)
          + f" {'torch':>8} {'onnxrt':>8} | calib/best default/best")
    with quiet_numpy_blas():
        for cell in a.cells.split(","):
            for H in map(int, a.units.split(",")):
                x = np.random.default_rng(0).standard_normal((1, 100, H)).astype(np.float32)
                tm, layer = peer_pair(cell, H, x.shape)
                fns = {}
                ref = None
                for k, apply in paths.items():
                    def f(apply=apply):
                        apply()
                        return layer(x)
                    y = np.array(f())
                    ref = y if ref is None else ref
                    assert np.array_equal(y, ref), k
                    fns[k] = f
                xt = torch.from_numpy(x)
                sess = _onnx_session(tm, xt, a.threads)
                fns["torch"] = lambda: torch_inference(tm, xt)
                fns["onnxrt"] = lambda: sess.run(None, {"x": x})
                med, _ = blocks(fns, a.reps)
                paths["default"]()
                best = min(med["torch"], med["onnxrt"])
                print(f"{cell:5} {100:4} {1:2} {H:4} | "
                      + " ".join(f"{med[k] * 1e3:7.3f}m" for k in fns)
                      + f" | {med['calib'] / best:9.2f} {med['default'] / best:12.2f}",
                      flush=True)
        for H in map(int, a.step_units.split(",")):
            torch.manual_seed(0)
            tc = torch.nn.LSTMCell(H, H)
            layer = fl.layers.LSTM(H)
            layer.build((1, 1, H))
            layer.set_weights(_cell_weights("lstm", tc))
            x = np.random.default_rng(0).standard_normal((1, H)).astype(np.float32)
            st = [np.full((1, H), 0.1, np.float32) for _ in range(2)]
            xt, ts = torch.from_numpy(x), tuple(torch.from_numpy(v) for v in st)
            fns = {}
            for rows in (1, 8):
                def f(rows=rows):
                    s.gemv_rows = rows
                    return layer.step(x, st)[0]
                fns[f"rows{rows}"] = f
            assert np.array_equal(fns["rows1"](), fns["rows8"]())

            def torch_step():
                with torch.inference_mode():
                    return tc(xt, ts)
            fns["torch"] = torch_step
            med, _ = blocks(fns, a.reps)
            s.gemv_rows = base["gemv_rows"]
            cal_rows = f"rows{cal['gemv_rows']}"
            print(f"step lstm H={H}: rows1 {med['rows1'] * 1e6:.2f} us, rows8 "
                  f"{med['rows8'] * 1e6:.2f} us, torch LSTMCell {med['torch'] * 1e6:.2f} us; "
                  f"default/torch {med['rows1'] / med['torch']:.3f}, calib/torch "
                  f"{med[cal_rows] / med['torch']:.3f}", flush=True)


if __name__ == "__main__":
    main()
