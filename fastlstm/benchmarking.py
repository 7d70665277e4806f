"""How fastlstm times itself against its peers: one method for ``python -m fastlstm bench``
and ``bench/compare_peers.py``, so that the two agree.

- Same weights and inputs for every implementation (``peer_pair``: a ``torch.nn`` module
  and the fastlstm layer holding its weights).
- Alternating blocks (A*k, B*k, A*k, ...) with a pause before each and untimed calls after
  the pause (``timed_blocks``): PyTorch's, ONNX Runtime's and OpenBLAS's thread pools keep
  spinning after their work and would steal the cores from whatever runs next.
- NumPy's BLAS (the oracle's) is held to one thread while fastlstm and the peers are timed
  (``quiet_numpy_blas``): its idle workers, woken by anything that ran NumPy products
  before, spin on the same cores. The oracle is timed on its own, afterwards.
- ``environment`` says what was measured on: CPU, cores, threads, ISA, BLAS, versions.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time

import numpy as np

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def timed_blocks(fns: dict, reps: int, per_block: int, pause: float = 0.2,
                 warm: float = 0.05, min_block: float = 0.02) -> dict:
    """Median seconds per call of each function, timed in alternating blocks of at least
    `per_block` calls and `min_block` seconds.

    The pause lets the previous library's spinning threads go idle; untimed calls after it,
    for at least `warm` seconds, wake this library's threads again. On virtual machines
    waking an idle vCPU after a pause costs milliseconds (a cost of the host, paid by
    whichever library runs first), and one untimed call is not always enough to absorb it:
    bench/RESULTS.md has the measurements behind `warm`."""
    for f in fns.values():          # warm-up (allocations, thread pools, lazy init)
        f()
        f()
    samples = {k: [] for k in fns}
    for _ in range(reps):
        for name, f in fns.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            f()
            while time.perf_counter() - t0 < warm:
                f()
            t0 = time.perf_counter()
            n = 0
            while n < per_block or time.perf_counter() - t0 < min_block:
                f()
                n += 1
            samples[name].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in samples.items()}


@contextlib.contextmanager
def quiet_numpy_blas():
    """NumPy's and SciPy's BLAS on one thread for the duration (fastlstm's kernels call
    SciPy's single-threaded anyway), so no idle BLAS worker spins beside what is timed."""
    from .threads import single_threaded_blas
    with single_threaded_blas(numpy=True):
        yield


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it, with its family and model numbers (virtual
    machines often name only the vendor) and the ISA extensions the kernels can use."""
    from .calibration import cpuinfo
    info = cpuinfo()
    if info is None:
        return platform.processor() or platform.machine()
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        name += f" (family {info['cpu family']} model {info.get('model', '?')})"
    flags = set(info.get("flags", "").split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
           if f in flags]
    return name + (", " + " ".join(isa) if isa else "")


def environment(torch=None) -> list:
    """Lines that say what a measurement ran on."""
    import numpy
    import scipy
    import fastlstm as fl
    from .threads import _blas, _cores
    lines = [f"CPU: {cpu_model()}, {_cores()} cores available; Python "
             f"{platform.python_version()} on {platform.system()} {platform.machine()}",
             f"fastlstm {fl.__version__}: {fl.get_num_threads()} threads, elementwise code "
             f"{fl.backends.get_ops('cpu').isa()}"]
    blas = []
    for c in _blas(numpy=True):
        owner = "numpy" if "numpy" in c.filepath.replace(os.sep, "/") else "scipy"
        blas.append(f"{owner}: {c.internal_api} {c.version or ''} "
                    f"{getattr(c, 'architecture', '') or ''} {c.num_threads} threads".strip())
    lines.append(f"numpy {numpy.__version__}, scipy {scipy.__version__}; BLAS "
                 + ("; ".join(blas) if blas else "not identified"))
    knobs = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS",
                                        "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    if knobs:
        lines.append("environment: " + ", ".join(f"{k}={v}" for k, v in knobs.items()))
    if torch is not None:
        lines.append(f"torch {torch.__version__}: {torch.get_num_threads()} threads")
    return lines


def torch_gru_weights(tm, suffix="_l0"):
    """PyTorch GRU [r|z|n] with b_ih, b_hh -> Keras reset_after layout [z|r|h], bias (2, 3H);
    suffix "" for a GRUCell."""
    def reorder(name):
        r, z, n = np.split(getattr(tm, name + suffix).detach().numpy(), 3, axis=0)
        return np.concatenate([z, r, n], axis=0)
    return [reorder("weight_ih").T, reorder("weight_hh").T,
            np.stack([reorder("bias_ih"), reorder("bias_hh")])]


def peer_pair(cell, H, x_shape):
    """The torch module (I = H, batch_first) and the fastlstm layer of one cell ("lstm",
    "gru", "rnn": SimpleRNN against nn.RNN), with the same weights."""
    import torch
    import fastlstm as fl
    torch.manual_seed(0)
    if cell == "gru":
        tm = torch.nn.GRU(H, H, batch_first=True)
        layer = fl.layers.GRU(H, return_sequences=True)
        layer.build(x_shape)
        layer.set_weights(torch_gru_weights(tm))
        return tm, layer
    tm = (torch.nn.LSTM if cell == "lstm" else torch.nn.RNN)(H, H, batch_first=True)
    layer = (fl.layers.LSTM if cell == "lstm" else fl.layers.SimpleRNN)(H, return_sequences=True)
    layer.build(x_shape)
    layer.set_weights([tm.weight_ih_l0.detach().numpy().T, tm.weight_hh_l0.detach().numpy().T,
                       (tm.bias_ih_l0 + tm.bias_hh_l0).detach().numpy()])
    return tm, layer


def training_step(layer, x, dy, **call_options):
    """A callable running one fastlstm training step of `layer` (forward_train on x, then
    its backprop of dy), what the benchmarks time against a peer's forward and backward."""
    def run():
        _, backprop = layer.forward_train(x, **call_options)
        backprop(dy)
    return run


def torch_inference(tm, xt):
    import torch
    with torch.inference_mode():
        return tm(xt)


def problem(cell, T, B, H):
    """One configuration (I = H, float32): inference and training callables of fastlstm and
    torch, GEMM FLOPs of a forward pass, the largest output difference, the layer and x."""
    import torch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, H)).astype(np.float32)
    tm, layer = peer_pair(cell, H, x.shape)
    xt = torch.from_numpy(x)
    err = float(np.abs(layer(x) - torch_inference(tm, xt)[0].numpy()).max())
    dy = np.ones((B, T, H), np.float32)
    fl_train = training_step(layer, x, dy)
    xg = xt.clone().requires_grad_(True)

    def torch_train():
        tm.zero_grad(set_to_none=True)
        y, _ = tm(xg)
        y.sum().backward()

    inference = {"fastlstm": lambda: layer(x), "torch": lambda: torch_inference(tm, xt)}
    training = {"fastlstm": fl_train, "torch": torch_train}
    flops = 2.0 * T * B * (H + H) * GATES[cell] * H
    return inference, training, flops, err, layer, x


def oracle_time(layer, x, reps=3):
    """Seconds per inference call of the layer on the NumPy oracle, timed alone."""
    import fastlstm as fl
    with fl.use_backend("numpy"):
        return timed_blocks({"oracle": lambda: layer(x)}, reps=reps, per_block=1)["oracle"]


def _ms(seconds):
    return f"{'-':>9}" if seconds is None else f"{seconds * 1e3:7.2f}ms"


def run_bench(print_fn=print, configs=((100, 1, 128), (100, 16, 128), (100, 32, 256)),
              reps=3, per_block=2):
    """``python -m fastlstm bench``: LSTM inference and training (forward + backward),
    fastlstm against ``torch.nn.LSTM`` when PyTorch is installed, and the oracle's inference
    time, on (T, B, I=H) configurations that bench/compare_peers.py also runs, by the same
    method. Returns ``{(T, B, H): {"infer"|"train": {impl: seconds}}}``."""
    try:
        import torch
    except ImportError:
        torch = None
    for line in environment(torch):
        print_fn(line)
    if torch is None:
        print_fn("PyTorch is not installed (pip install torch, or the README's test set-up): "
                 "fastlstm against the oracle only.")
    print_fn("LSTM, float32, median ms per call of alternating blocks; ratio fl/torch < 1: "
             "fastlstm is faster")
    head = (f"{'T':>4} {'B':>4} {'I=H':>5} | {'mode':5} | {'fastlstm':>9} {'torch':>9} "
            f"{'oracle':>9} | {'fl/torch':>8}")
    print_fn(head)
    print_fn("-" * len(head))
    results = {}
    for T, B, H in configs:
        if torch is not None:
            inference, training, _, err, layer, x = problem("lstm", T, B, H)
        else:
            import fastlstm as fl
            x = np.random.default_rng(0).standard_normal((B, T, H)).astype(np.float32)
            layer = fl.layers.LSTM(H, return_sequences=True)
            dy = np.ones((B, T, H), np.float32)
            inference = {"fastlstm": lambda: layer(x)}
            training = {"fastlstm": lambda: layer.forward_train(x)[1](dy)}
            err = 0.0
        with quiet_numpy_blas():
            got = {"infer": timed_blocks(inference, reps, per_block),
                   "train": timed_blocks(training, reps, max(1, per_block - 1))}
        t_oracle = oracle_time(layer, x)
        results[(T, B, H)] = got
        for mode, t in got.items():
            f, tt = t["fastlstm"], t.get("torch")
            oracle = t_oracle if mode == "infer" else None
            print_fn(f"{T:4d} {B:4d} {H:5d} | {mode:5} | {_ms(f)} {_ms(tt)} {_ms(oracle)} | "
                     + (f"{f / tt:8.2f}" if tt else f"{'-':>8}"))
        if err > 1e-4:
            print_fn(f"  WARNING: fastlstm and torch outputs differ by {err:.1e}")
    print_fn("The machine may be shared: quote ratios, not times. bench/compare_peers.py "
             "runs the full comparison (GRU, SimpleRNN, ONNX Runtime, streaming, memory).")
    return results


if __name__ == "__main__":      # pragma: no cover
    sys.exit(run_bench() and 0)
