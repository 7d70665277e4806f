"""mixed_bfloat16 training against PyTorch's autocast bf16, side by side in one process.

    python bench/mixed_training.py [--quick] [--threads 2] [--cells lstm,gru]
                                   [--configs TxBxH,...] [--json PATH]

One training step (forward + backward to the inputs and every weight; I = H, float32 in
and out, dy = ones) of four implementations of the same weights: torch float32; torch under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (oneDNN's bf16 RNN; the loss in float32);
fastlstm float32; fastlstm ``dtype="mixed_bfloat16"``. Medians of alternating blocks
(fastlstm.benchmarking.timed_blocks). Prints the CPU, its bf16 instructions (AVX512_BF16,
AMX) and which product variant fastlstm ran, ms per step and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from fastlstm.benchmarking import (environment, peer_pair, quiet_numpy_blas, timed_blocks,
                                   training_step)

LSTM_CONFIGS = [(100, 1, 128), (100, 16, 128), (100, 32, 256), (50, 64, 512), (25, 128, 1024)]
GRU_CONFIGS = LSTM_CONFIGS[1:4]


def cpu_flags():
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def step_fns(cell, T, B, H):
    import torch
    import fastlstm as fl
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, H)).astype(np.float32)
    tm, layer = peer_pair(cell, H, x.shape)
    cls = fl.layers.GRU if cell == "gru" else fl.layers.LSTM
    mixed = cls(H, return_sequences=True, dtype="mixed_bfloat16")
    mixed.build(x.shape)
    mixed.set_weights(layer.get_weights())
    dy = np.ones((B, T, H), np.float32)
    xg = torch.from_numpy(x).clone().requires_grad_(True)

    def torch_f32():
        tm.zero_grad(set_to_none=True)
        y, _ = tm(xg)
        y.sum().backward()

    def torch_bf16():
        tm.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = tm(xg)
        y.float().sum().backward()

    y32 = layer(x)
    err = float(np.abs(mixed(x) - y32).max())
    return {"torch f32": torch_f32, "torch bf16": torch_bf16,
            "fastlstm f32": training_step(layer, x, dy),
            "fastlstm mixed": training_step(mixed, x, dy)}, err


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--configs", default=None, help="TxBxH,... (default: compare_peers's)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import torch
    import fastlstm as fl
    from fastlstm import _lowp
    torch.set_num_threads(a.threads)
    fl.set_num_threads(a.threads)
    reps, per_block = (3, 2) if a.quick else (7, 3)
    for line in environment(torch):
        print(line)
    flags = cpu_flags()
    print(f"bf16 instructions: AVX512_BF16 {'yes' if flags['avx512_bf16'] else 'no'}, AMX-BF16 "
          f"{'yes' if flags['amx_bf16'] else 'no'}; fastlstm's bf16 products: "
          f"{_lowp.level_name(2)}; load average {os.getloadavg()[0]:.2f}")
    rows = []
    print("| cell | T | B | H | torch f32 | torch bf16 | fastlstm f32 | fastlstm mixed | "
          "mixed / torch bf16 | mixed / fastlstm f32 | max abs diff mixed vs f32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in a.cells.split(","):
        configs = (LSTM_CONFIGS if cell == "lstm" else GRU_CONFIGS) if a.configs is None else [
            tuple(int(v) for v in c.split("x")) for c in a.configs.split(",")]
        for T, B, H in configs:
            fns, err = step_fns(cell, T, B, H)
            with quiet_numpy_blas():
                t = timed_blocks(fns, reps=reps, per_block=per_block)
            ms = {k: v * 1e3 for k, v in t.items()}
            row = dict(cell=cell, T=T, B=B, H=H, err=err, **ms)
            rows.append(row)
            print(f"| {cell} | {T} | {B} | {H} | {ms['torch f32']:.2f} | {ms['torch bf16']:.2f} | "
                  f"{ms['fastlstm f32']:.2f} | {ms['fastlstm mixed']:.2f} | "
                  f"{ms['fastlstm mixed'] / ms['torch bf16']:.2f} | "
                  f"{ms['fastlstm mixed'] / ms['fastlstm f32']:.2f} | {err:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
