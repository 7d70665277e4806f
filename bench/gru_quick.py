"""GRU kernels (fastlstm.ops, cpu backend) against torch.nn.GRU, float32, side by side.

    python bench/gru_quick.py [--threads 2] [--reps 7] [--per-block 3]

Time-major inputs and the same weights for both (PyTorch [r|z|n] reordered to Keras [z|r|h]).
Inference: ``ops.gru_forward(training=False)`` vs ``torch.nn.GRU`` under inference_mode.
Training: ``ops.gru_forward(training=True)`` + ``ops.gru_backward`` (dx, dh0 and all weight
gradients) vs PyTorch forward + ``backward`` with ``x.requires_grad``. Medians over
alternating blocks (A*k, B*k, A*k, ...) with a short pause between blocks (PyTorch's pool
keeps spinning after its work). Ratios are fastlstm / torch: < 1 means fastlstm is faster.
The reset_after=False column (no PyTorch equivalent) is fastlstm's Keras-2 form for reference.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

CONFIGS = [(100, 16, 128, 128), (50, 64, 512, 512)]   # (T, B, I, H)


def timed_blocks(fns: dict, reps: int, per_block: int, pause: float = 0.05) -> dict:
    for f in fns.values():          # warm-up
        f()
        f()
    samples = {k: [] for k in fns}
    for _ in range(reps):
        for name, f in fns.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            for _ in range(per_block):
                f()
            samples[name].append((time.perf_counter() - t0) / per_block)
    return {k: statistics.median(v) for k, v in samples.items()}


def torch_to_keras(tm):
    def zrh(a):
        r, z, n = np.split(a.detach().numpy(), 3, axis=0)
        return np.concatenate([z, r, n], axis=0)
    return (np.ascontiguousarray(zrh(tm.weight_ih_l0).T), np.ascontiguousarray(zrh(tm.weight_hh_l0).T),
            np.stack([zrh(tm.bias_ih_l0), zrh(tm.bias_hh_l0)]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--per-block", type=int, default=3)
    args = p.parse_args(argv)

    import torch
    import fastlstm as fl
    from fastlstm import ops
    torch.set_num_threads(args.threads)
    fl.set_num_threads(args.threads)
    fl.set_backend("cpu")
    print(f"torch {torch.__version__}, {args.threads} threads, elementwise "
          f"{fl.backends.get_ops('cpu').isa()}; medians of {args.reps} blocks x {args.per_block}")
    print(f"{'T':>4s} {'B':>4s} {'I':>4s} {'H':>4s} | {'mode':5s} | {'fastlstm':>9s} {'torch':>9s} "
          f"{'fl/torch':>8s} | {'fl GF/s':>7s} | {'reset_before':>12s}")
    for T, B, I, H in CONFIGS:
        torch.manual_seed(0)
        tm = torch.nn.GRU(I, H)
        W, U, b = torch_to_keras(tm)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        dy = np.ones((T, B, H), np.float32)
        b_before = np.ascontiguousarray(b[0] + 0)      # the reset_after=False bias (3H,)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            ref = tm(xt)[0].numpy()
        err = float(np.abs(ops.gru_forward(x, W, U, b)[0] - ref).max())
        assert err < 1e-4, f"fastlstm and torch disagree: {err}"

        def fl_inf():
            ops.gru_forward(x, W, U, b)

        def fl_inf_before():
            ops.gru_forward(x, W, U, b_before, reset_after=False)

        def torch_inf():
            with torch.inference_mode():
                tm(xt)

        def fl_train():
            _, _, cache = ops.gru_forward(x, W, U, b, training=True)
            ops.gru_backward(cache, dy)

        def fl_train_before():
            _, _, cache = ops.gru_forward(x, W, U, b_before, reset_after=False, training=True)
            ops.gru_backward(cache, dy)

        xg = xt.clone().requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def torch_train():
            tm.zero_grad(set_to_none=True)
            xg.grad = None
            y, _ = tm(xg)
            y.backward(dyt)

        flops = 2.0 * T * B * (I + H) * 3 * H
        t_inf = timed_blocks({"fl": fl_inf, "torch": torch_inf, "fl0": fl_inf_before},
                             args.reps, args.per_block)
        t_tr = timed_blocks({"fl": fl_train, "torch": torch_train, "fl0": fl_train_before},
                            args.reps, args.per_block)
        for mode, t, f in (("infer", t_inf, flops), ("train", t_tr, 3 * flops)):
            print(f"{T:4d} {B:4d} {I:4d} {H:4d} | {mode:5s} | {t['fl'] * 1e3:7.2f}ms "
                  f"{t['torch'] * 1e3:7.2f}ms {t['fl'] / t['torch']:8.2f} | "
                  f"{f / t['fl'] / 1e9:7.1f} | {t['fl0'] * 1e3:10.2f}ms")


if __name__ == "__main__":
    main()
