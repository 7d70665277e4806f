"""fastlstm against PyTorch, ONNX Runtime and the NumPy oracle, side by side in one process.

    python bench/compare_peers.py [--quick] [--cells lstm,gru,rnn] [--threads 2] [--no-stream]
                                  [--memory] [--gpu]

Same weights and inputs for every implementation; float32; timings are medians over
alternating blocks (A*k, B*k, A*k, ...; each block at least 20 ms of calls after 50 ms of
untimed ones) with a short pause between blocks, because PyTorch's and ONNX Runtime's thread
pools keep spinning after their work and would steal the cores from whatever runs next;
NumPy's BLAS is held to one thread meanwhile, and the oracle is timed on its own. The method
lives in fastlstm.benchmarking, which ``python -m fastlstm bench`` uses too. Prints the
machine and libraries measured, ms per call, GEMM GFLOP/s, the fraction of this machine's
measured SGEMM rate (scipy's BLAS, the one fastlstm uses, same threads) and the ratios
fastlstm / peer (< 1 means fastlstm is faster).

FLOPs count the GEMMs only: forward 2*T*B*(I+H)*G with G = 4H (LSTM), 3H (GRU), H (RNN);
training (forward + backward to inputs and all weights) = 3x forward.

``--gpu`` compares instead fastlstm's cupy backend (layers moved with ``.to("cuda")``) with
``torch.nn.LSTM``/``GRU`` on CUDA (cuDNN), both synchronised after every call, on the card it
finds; it needs CuPy, a CUDA build of PyTorch and an NVIDIA GPU.

``--memory`` adds the peak memory of one training step (forward + backward) of fastlstm and
of PyTorch, each measured in a fresh process (Linux): after a warm-up step, the resident-set
high-water mark is reset (/proc/self/clear_refs) and the growth over the resident set before
the step is read from VmHWM. glibc is told to return every block of 64 KiB and more to the
system when freed (MALLOC_MMAP_THRESHOLD_), so memory kept from the warm-up step cannot hide
the step's own allocations; the buffers fastlstm keeps between calls (its packed kernels)
are added to its growth. "saved" is what BPTT has to keep whatever the implementation:
the post-activation gates and the cell and hidden state of every step, T*B*(G+2H) floats
(LSTM, GRU); for the RNN, whose outputs are its states, T*B*H.
"""
from __future__ import annotations

import argparse
import io
import sys
import warnings

import numpy as np

from fastlstm.benchmarking import (GATES, environment, oracle_time, peer_pair, problem,
                                   quiet_numpy_blas, timed_blocks, torch_gru_weights,
                                   torch_inference)

LSTM_CONFIGS = [(100, 1, 128), (100, 16, 128), (100, 32, 256), (50, 64, 512), (25, 128, 1024)]
GRU_CONFIGS = LSTM_CONFIGS[1:4]
STREAM_UNITS = [64, 128, 256]


def sgemm_rate(threads: int) -> float:
    """GFLOP/s of scipy's SGEMM (the BLAS fastlstm calls) on large square products."""
    from scipy.linalg.blas import sgemm
    from threadpoolctl import threadpool_limits
    n = 2048
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
    b = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
    with threadpool_limits(threads, user_api="blas"):
        t = timed_blocks({"sgemm": lambda: sgemm(1.0, a, b)}, reps=5, per_block=2)["sgemm"]
    return 2.0 * n ** 3 / t / 1e9


def build(cell, T, B, H, threads, with_onnx):
    """fastlstm.benchmarking.problem, with ONNX Runtime added to the inference callables."""
    inference, training, flops, err, layer, x = problem(cell, T, B, H)
    if with_onnx:
        import torch
        tm, _ = peer_pair(cell, H, x.shape)
        sess = _onnx_session(tm, torch.from_numpy(x), threads)
        if sess is not None:
            inference["onnxruntime"] = lambda: sess.run(None, {"x": x})
    return inference, training, flops, err, layer, x


def _onnx_session(tm, xt, threads):
    try:
        import onnxruntime as ort
        import torch
    except ImportError:
        return None
    buf = io.BytesIO()
    with warnings.catch_warnings():     # the exporter's notices (legacy exporter, batch size)
        warnings.simplefilter("ignore")
        torch.onnx.export(tm, (xt,), buf, input_names=["x"], output_names=["y", "h"],
                          dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


STREAM_CELLS = [("lstm", "LSTM", "LSTMCell"), ("gru", "GRU", "GRUCell"),
                ("simple_rnn", "SimpleRNN", "RNNCell")]


def _cell_weights(cell, tc):
    """A torch cell's weights in fastlstm's (Keras) layout."""
    if cell == "gru":
        return torch_gru_weights(tc, suffix="")
    return [tc.weight_ih.detach().numpy().T, tc.weight_hh.detach().numpy().T,
            (tc.bias_ih + tc.bias_hh).detach().numpy()]


def streaming(threads, reps, per_block):
    """Per step at batch 1: each cell's layer.step against the torch cell of the same
    weights, H = I in STREAM_UNITS. Rows (cell, H, fastlstm s, torch s, max |difference| of
    one step's output)."""
    import torch
    import fastlstm as fl
    rows = []
    for cell, layer_name, torch_name in STREAM_CELLS:
        for H in STREAM_UNITS:
            I = H
            torch.manual_seed(0)
            tc = getattr(torch.nn, torch_name)(I, H)
            layer = getattr(fl.layers, layer_name)(H)
            layer.build((1, 1, I))
            layer.set_weights(_cell_weights(cell, tc))
            x = np.random.default_rng(0).standard_normal((1, I)).astype(np.float32)
            state = [np.full((1, H), 0.1, np.float32) for _ in layer.state_names]
            xt = torch.from_numpy(x)
            ts = tuple(torch.from_numpy(s) for s in state)
            ts = ts if cell == "lstm" else ts[0]
            with torch.inference_mode():
                ref = tc(xt, ts)
            ref = (ref[0] if cell == "lstm" else ref).numpy()
            err = float(np.abs(layer.step(x, state)[0] - ref).max())

            def fl_step():
                layer.step(x, state)

            def torch_step():
                with torch.inference_mode():
                    tc(xt, ts)

            with quiet_numpy_blas():
                t = timed_blocks({"fastlstm": fl_step, "torch": torch_step}, reps,
                                 per_block * 20)
            rows.append((cell, H, t["fastlstm"], t["torch"], err))
    return rows


def gpu_rows(cells, reps, per_block):
    """(cell, T, B, H, mode, fastlstm s, torch s) per configuration, on the GPU."""
    import cupy
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("--gpu needs a CUDA build of PyTorch and a GPU")
    # float32 against float32: cuDNN's RNNs otherwise round the products to TF32 on Ampere
    # and later (outputs 3e-4 to 1e-3 from fastlstm's, measured on an H100).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for cell in cells:
        configs = LSTM_CONFIGS if cell == "lstm" else GRU_CONFIGS
        for T, B, H in configs:
            x = np.random.default_rng(0).standard_normal((B, T, H)).astype(np.float32)
            tm, layer = peer_pair(cell, H, x.shape)
            layer.to("cuda")
            tm = tm.cuda()
            xg, xt = cupy.asarray(x), torch.from_numpy(x).cuda()
            dy = cupy.ones((B, T, H), cupy.float32)
            xtg = xt.clone().requires_grad_(True)

            def fl_inf():
                layer(xg)
                cupy.cuda.Device().synchronize()

            def torch_inf():
                with torch.inference_mode():
                    tm(xt)
                torch.cuda.synchronize()

            def fl_train():
                _, backprop = layer.forward_train(xg)
                backprop(dy)
                cupy.cuda.Device().synchronize()

            def torch_train():
                tm.zero_grad(set_to_none=True)
                tm(xtg)[0].sum().backward()
                torch.cuda.synchronize()

            err = float(np.abs(cupy.asnumpy(layer(xg))
                               - torch_inference(tm, xt)[0].cpu().numpy()).max())
            if err > 1e-4:
                print(f"  WARNING: {cell} {T} {B} {H}: fastlstm and torch differ by {err:.1e}")
            for mode, fns in (("infer", {"fastlstm": fl_inf, "torch": torch_inf}),
                              ("train", {"fastlstm": fl_train, "torch": torch_train})):
                t = timed_blocks(fns, reps, per_block, pause=0.0)
                rows.append((cell, T, B, H, mode, t["fastlstm"], t["torch"]))
    return rows


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(spec):
    """In a fresh process: peak extra resident memory (bytes) of one training step."""
    import gc
    lib, cell, T, B, H, threads = spec.split(",")
    T, B, H, threads = int(T), int(B), int(H), int(threads)
    import torch
    import fastlstm as fl
    torch.set_num_threads(threads)
    fl.set_num_threads(threads)
    _, train, *_ = build(cell, T, B, H, threads, with_onnx=False)
    step = train["fastlstm" if lib == "fastlstm" else "torch"]
    from fastlstm import _lstm
    _lstm.clear_workspace()                  # only what the training step keeps counts below
    step()                                   # warm-up: lazy init, thread pools, caches
    gc.collect()
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                         # reset VmHWM to the current RSS
    step()
    kept = _lstm.workspace_bytes() if lib == "fastlstm" else 0   # reused from the warm-up
    print((_rss_kib("VmHWM") - base) * 1024 + kept)
    return 0


def memory_rows(cells, threads):
    import os
    import subprocess
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    rows = []
    for cell in cells:
        configs = LSTM_CONFIGS if cell == "lstm" else GRU_CONFIGS
        G = GATES[cell]
        for T, B, H in configs:
            got = {}
            for lib in ("fastlstm", "torch"):
                res = subprocess.run(
                    [sys.executable, os.path.abspath(__file__),
                     f"--memory-child={lib},{cell},{T},{B},{H},{threads}"],
                    capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    raise RuntimeError(f"memory child {lib} {cell} failed:\n{res.stderr}")
                got[lib] = int(res.stdout.strip().splitlines()[-1])
            saved = T * B * ((G + 2) * H if cell != "rnn" else H) * 4
            rows.append((cell, T, B, H, got["fastlstm"], got["torch"], saved))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--cells", default="lstm,gru,rnn",
                   help="lstm, gru, rnn (SimpleRNN against nn.RNN), comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--no-oracle", action="store_true")
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--memory", action="store_true",
                   help="also the peak memory of a training step, vs PyTorch (Linux)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--gpu", action="store_true",
                   help="fastlstm's cupy backend vs PyTorch (cuDNN) on the GPU instead")
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(args.memory_child)
    if args.gpu:
        try:
            import cupy
            from fastlstm.backends.cupy_ops import _import_cupy
            _import_cupy()
        except (ImportError, RuntimeError) as exc:
            print(f"--gpu: {exc}", file=sys.stderr)
            return 2
        import torch
        import fastlstm as fl
        reps, per_block = (3, 2) if args.quick else (7, 3)
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        name = name.decode() if isinstance(name, bytes) else name
        print(f"fastlstm {fl.__version__} (cupy {cupy.__version__}), torch {torch.__version__} "
              f"(cuDNN {torch.backends.cudnn.version()}, TF32 off), {name}, float32")
        print(f"{'cell':4s} {'T':>4s} {'B':>4s} {'I=H':>5s} | {'mode':5s} | {'fastlstm':>9s} "
              f"{'torch':>9s} | {'fl/torch':>8s}")
        for cell, T, B, H, mode, f, t in gpu_rows(args.cells.split(","), reps, per_block):
            print(f"{cell:4s} {T:4d} {B:4d} {H:5d} | {mode:5s} | {f * 1e3:8.2f}ms "
                  f"{t * 1e3:8.2f}ms | {f / t:8.2f}")
        return 0

    import torch
    import fastlstm as fl
    torch.set_num_threads(args.threads)
    fl.set_num_threads(args.threads)
    reps, per_block = (3, 2) if args.quick else (7, 3)
    peak = sgemm_rate(args.threads)
    for line in environment(torch):
        print(line)
    print(f"scipy SGEMM 2048^3 on {args.threads} threads: {peak:.1f} GFLOP/s")
    hdr = (f"{'cell':4s} {'T':>4s} {'B':>4s} {'I=H':>5s} | {'mode':5s} | {'fastlstm':>9s} "
           f"{'torch':>9s} {'onnxrt':>9s} {'oracle':>9s} | {'fl GF/s':>7s} {'%sgemm':>6s} | "
           f"{'fl/torch':>8s} {'fl/ort':>7s} {'fl/best':>7s}")
    print(hdr)
    print("-" * len(hdr))
    for cell in args.cells.split(","):
        configs = LSTM_CONFIGS if cell == "lstm" else GRU_CONFIGS
        for T, B, H in configs:
            inf, train, F, err, layer, x = build(cell, T, B, H, args.threads, not args.no_onnx)
            with quiet_numpy_blas():
                t_inf = timed_blocks(inf, reps, per_block)
                t_tr = timed_blocks(train, reps, max(1, per_block - 1))
            t_or = None if args.no_oracle or H > 512 else oracle_time(layer, x)
            for mode, t, flops in (("infer", t_inf, F), ("train", t_tr, 3 * F)):
                f, tt, to = t["fastlstm"], t["torch"], t.get("onnxruntime")
                best = min(v for k, v in t.items() if k != "fastlstm")
                gf = flops / f / 1e9
                print(f"{cell:4s} {T:4d} {B:4d} {H:5d} | {mode:5s} | {f * 1e3:8.2f}ms "
                      f"{tt * 1e3:8.2f}ms {(to * 1e3 if to else float('nan')):8.2f}ms "
                      f"{(t_or * 1e3 if (t_or and mode == 'infer') else float('nan')):8.2f}ms | "
                      f"{gf:7.1f} {100 * gf / peak:5.0f}% | {f / tt:8.2f} "
                      f"{(f / to if to else float('nan')):7.2f} {f / best:7.2f}")
            if err > 1e-4:
                print(f"  WARNING: fastlstm and torch outputs differ by {err:.1e}")
    if not args.no_stream:
        print("\nstreaming: one step() at batch 1 vs torch.nn.LSTMCell, GRUCell, RNNCell, per step")
        for cell, H, f, t, err in streaming(args.threads, reps, per_block):
            print(f"  {cell:10s} H={H:4d}: fastlstm {f * 1e6:7.1f} us  torch {t * 1e6:7.1f} us  "
                  f"ratio {f / t:.2f}")
            if err > 1e-4:
                print(f"  WARNING: fastlstm and torch outputs differ by {err:.1e}")
    if args.memory:
        print("\nmemory: peak growth of one training step (forward + backward), MiB")
        print(f"{'cell':4s} {'T':>4s} {'B':>4s} {'I=H':>5s} | {'fastlstm':>9s} {'torch':>9s} "
              f"{'fl/torch':>8s} | {'saved':>7s} {'fl/saved':>8s}")
        mib = 1 << 20
        for cell, T, B, H, f, t, saved in memory_rows(args.cells.split(","), args.threads):
            print(f"{cell:4s} {T:4d} {B:4d} {H:5d} | {f / mib:9.1f} {t / mib:9.1f} "
                  f"{f / t:8.2f} | {saved / mib:7.1f} {f / saved:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
