"""fastlstm against PyTorch, ONNX Runtime and the NumPy oracle, side by side in one process.

    python bench/compare_peers.py [--quick] [--cells lstm,gru,rnn] [--threads 2] [--no-stream]
                                  [--memory] [--gpu]
    python bench/compare_peers.py --lowp [--quick] [--threads 2] [--configs TxBxH,...]
                                  [--no-stream] [--json PATH]

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

``--lengths`` times a batch of rows of different lengths (LSTM, 64 rows, I = H = 512,
lengths uniform in [10, 100], T = 100), inference and training (forward + backward to the
inputs and weights, loss = sum of the outputs at valid steps): fastlstm with
``sequence_lengths`` (each row runs only up to its length), the same fastlstm layer on the
batch fully padded to 100 steps (no mask: every row runs every step), and torch.nn.LSTM on
``pack_padded_sequence`` of the same data (unsorted, then ``pad_packed_sequence``) and on the
padded batch. The ratio lengths / padded is what skipping the padding saves (the padding is
45% of the steps on average).

``--projection`` times the projected LSTM (``LSTM(1024, proj_size=256)``, I = 256, T = 50,
B = 32), inference and training, against ``torch.nn.LSTM(256, 1024, proj_size=256)`` with the
same weights (``fastlstm.convert.from_torch``).

``--layer-norm`` times the layer-normalized LSTM (``LSTM(256, layer_norm=True)``, I = 256,
T = 100, B = 32), inference and training, against the same layer without layer norm and a
PyTorch composition of haste's LayerNormLSTM (``nn.Linear`` products, ``nn.LayerNorm``, a loop
over the steps; PyTorch ships no such layer) with the same weights.

``--mixed`` times training steps under ``mixed_bfloat16`` against
``torch.autocast("cpu", dtype=torch.bfloat16)`` instead (bench/mixed_training.py, LSTM and
GRU).

``--lowp`` times LSTM inference in reduced precision instead, by the same method, on one
``torch.nn.LSTM`` (I = H) per hidden size: torch float32; torch bfloat16 (the module's forward
under ``torch.autocast("cpu", dtype=torch.bfloat16)`` and ``torch.inference_mode()``: oneDNN's
bf16 RNN, the weights cast and reordered at every call; its output converted back to
float32); ONNX Runtime on the module's ONNX export, float32 and after
``onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)`` (the graph's LSTM becomes
com.microsoft's DynamicQuantizeLSTM, which the script checks); fastlstm's model of the same
weights (``fastlstm.convert.from_torch``) in float32 and through ``fl.quantize(model,
"bfloat16" | "int8")``, whose columns read "—" in a fastlstm without ``quantize``. Per
column: ms, the largest difference from torch's float32 output on the same input, and
G(FL)OP/s = 8*T*B*H*(I+H) / time (GOP/s for int8), with the ratios fastlstm int8 / ORT int8
and fastlstm bf16 / torch bf16; then one ``layer.step`` at batch 1 of each fastlstm form
against ``torch.nn.LSTMCell`` (float32) at 128 and 256 units. bench/deepbench.py runs the
same columns over DeepBench's inference LSTM problems.
"""
from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import warnings

import numpy as np

from fastlstm.benchmarking import (GATES, environment, oracle_time, peer_pair, problem,
                                   quiet_numpy_blas, timed_blocks, torch_gru_weights,
                                   torch_inference, training_step)

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


# --- reduced precision (--lowp): LSTM inference in bfloat16 and int8 against the peers' ---

LOWP_CONFIGS = [(100, 1, 128), (100, 1, 256), (100, 4, 512), (100, 16, 128), (50, 64, 512)]
LOWP_STREAM_UNITS = [128, 256]
LOWP_COLUMNS = ["torch f32", "torch bf16", "ORT f32", "ORT int8",
                "fastlstm f32", "fastlstm bf16", "fastlstm int8"]
LOWP_RATIOS = [("fastlstm int8", "ORT int8"), ("fastlstm bf16", "torch bf16")]
LOWP_STREAM_COLUMNS = ["torch LSTMCell f32", "fastlstm f32", "fastlstm bf16", "fastlstm int8"]
QUANT_KINDS = {"fastlstm bf16": "bfloat16", "fastlstm int8": "int8"}
NA = "—"          # a column this installation cannot fill (no fl.quantize, no peer)


def lstm_ops(T, B, I, H):
    """GEMM operations of one LSTM forward pass: 8*T*B*H*(I+H) (multiply and add each one)."""
    return 8.0 * T * B * H * (I + H)


def quantized(model, note):
    """fl.quantize(model, kind) for each low-precision fastlstm column, None where fastlstm
    has no quantize (or it fails: the reason goes into `note`)."""
    import fastlstm as fl
    out = {}
    for col, kind in QUANT_KINDS.items():
        out[col] = None
        if not hasattr(fl, "quantize"):
            continue
        try:
            out[col] = fl.quantize(model, kind)
        except Exception as exc:          # noqa: BLE001 - reported beside the table
            note.append(f"fl.quantize(..., {kind!r}) failed: {type(exc).__name__}: {exc}")
    return out


def export_lstm_onnx(tm, I, path):
    """The torch module exported to ONNX at `path`, batch and time dynamic, so that one file
    serves every (T, B) of a hidden size."""
    import torch
    xt = torch.zeros((1, 2, I))
    with warnings.catch_warnings():     # the exporter's notices (legacy exporter, batch size)
        warnings.simplefilter("ignore")
        torch.onnx.export(tm, (xt,), path, input_names=["x"], output_names=["y", "h", "c"],
                          dynamic_axes={"x": {0: "batch", 1: "time"},
                                        "y": {0: "batch", 1: "time"}},
                          dynamo=False)


def quantize_onnx_int8(src, dst):
    """onnxruntime.quantization.quantize_dynamic (weights QInt8) of src into dst; returns the
    op types of the quantized graph (an LSTM becomes com.microsoft's DynamicQuantizeLSTM)."""
    import logging
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)     # its advice to pre-process the model first
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().setLevel(level)
    return sorted({n.op_type for n in onnx.load(dst, load_external_data=False).graph.node})


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class LowpModels:
    """One LSTM (I = H, batch_first) in every form the low-precision table times: the torch
    module (float32, and under bfloat16 autocast), its ONNX export in ONNX Runtime (float32
    and dynamically quantized int8), and fastlstm's model of the same weights
    (fastlstm.convert.from_torch) in float32 and through fl.quantize. ONNX files go to a
    temporary directory that close() removes."""

    def __init__(self, H, threads, onnx=True, seed=0):
        import tempfile
        import torch
        from fastlstm.convert import from_torch
        self.H = self.I = H
        self.note = []
        torch.manual_seed(seed)
        self.tm = torch.nn.LSTM(H, H, batch_first=True).eval()
        self.fl = from_torch(self.tm)
        self.flq = quantized(self.fl, self.note)
        self.ort = {"ORT f32": None, "ORT int8": None}
        self.int8_ops = []
        self.tmp = None
        if not onnx:
            return
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            self.note.append("onnxruntime is not installed: no ORT columns")
            return
        self.tmp = tempfile.mkdtemp(prefix="fastlstm-lowp-")
        f32, i8 = os.path.join(self.tmp, "f32.onnx"), os.path.join(self.tmp, "int8.onnx")
        export_lstm_onnx(self.tm, self.I, f32)
        self.ort["ORT f32"] = ort_session(f32, threads)
        try:
            self.int8_ops = quantize_onnx_int8(f32, i8)
            self.ort["ORT int8"] = ort_session(i8, threads)
        except ImportError as exc:
            self.note.append(f"onnxruntime.quantization unavailable: {exc}")
        if self.ort["ORT int8"] is not None and "DynamicQuantizeLSTM" not in self.int8_ops:
            self.note.append("WARNING: the int8 ONNX graph has no DynamicQuantizeLSTM "
                             f"(ops: {', '.join(self.int8_ops)})")

    def callables(self, x):
        """{column: fn} for input x (B, T, I); each fn returns the output sequence; None for a
        column this installation cannot run."""
        import torch
        xt = torch.from_numpy(x)
        tm = self.tm

        def torch_f32():
            with torch.inference_mode():
                return tm(xt)[0]

        def torch_bf16():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return tm(xt)[0].float()           # float32 out, as the others

        def ort_fn(sess):
            return None if sess is None else (lambda: sess.run(None, {"x": x})[0])

        def fl_fn(model):
            return None if model is None else (lambda: model(x))

        return {"torch f32": torch_f32, "torch bf16": torch_bf16,
                "ORT f32": ort_fn(self.ort["ORT f32"]), "ORT int8": ort_fn(self.ort["ORT int8"]),
                "fastlstm f32": fl_fn(self.fl), "fastlstm bf16": fl_fn(self.flq["fastlstm bf16"]),
                "fastlstm int8": fl_fn(self.flq["fastlstm int8"])}

    def close(self):
        import shutil
        self.ort = {k: None for k in self.ort}
        self.tm = self.fl = self.flq = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _as_numpy(y):
    return y.detach().numpy() if hasattr(y, "detach") else np.asarray(y)


def lowp_row(models, T, B, reps, per_block):
    """One (T, B) of a LowpModels: {column: {"s": median seconds, "err": max |output - torch
    float32 output|, "gops": GEMM G(FL)OP/s} or None}."""
    x = np.random.default_rng(1).standard_normal((B, T, models.I)).astype(np.float32)
    fns = {k: f for k, f in models.callables(x).items() if f is not None}
    ref = _as_numpy(fns["torch f32"]())
    errs = {k: float(np.abs(_as_numpy(f()).reshape(ref.shape) - ref).max())
            for k, f in fns.items()}
    with quiet_numpy_blas():
        t = timed_blocks(fns, reps, per_block)
    ops = lstm_ops(T, B, models.I, models.H)
    return {k: ({"s": t[k], "err": errs[k], "gops": ops / t[k] / 1e9} if k in t else None)
            for k in LOWP_COLUMNS}


def lowp_stream_rows(units, threads, reps, per_block):
    """Per step at batch 1: torch.nn.LSTMCell (float32) against fastlstm's layer.step of the
    same weights (from_torch of the cell) in float32 and through fl.quantize.
    {H: {column: {"s", "err"} or None}}, and notes."""
    import torch
    from fastlstm.convert import from_torch
    rows, note = {}, []
    for H in units:
        torch.manual_seed(0)
        tc = torch.nn.LSTMCell(H, H).eval()
        layer = from_torch(tc)
        q = quantized(layer, note)
        x = np.random.default_rng(0).standard_normal((1, H)).astype(np.float32)
        state = [np.full((1, H), 0.1, np.float32) for _ in range(2)]
        xt = torch.from_numpy(x)
        ts = tuple(torch.from_numpy(s) for s in state)

        def torch_step():
            with torch.inference_mode():
                return tc(xt, ts)[0]

        def step_fn(model):
            return None if model is None else (lambda: model.step(x, state)[0])

        fns = {"torch LSTMCell f32": torch_step, "fastlstm f32": step_fn(layer),
               "fastlstm bf16": step_fn(q["fastlstm bf16"]),
               "fastlstm int8": step_fn(q["fastlstm int8"])}
        fns = {k: f for k, f in fns.items() if f is not None}
        ref = torch_step().numpy()
        errs = {k: float(np.abs(_as_numpy(f()).reshape(ref.shape) - ref).max())
                for k, f in fns.items()}
        with quiet_numpy_blas():
            t = timed_blocks(fns, reps, per_block * 20)
        rows[H] = {k: ({"s": t[k], "err": errs[k]} if k in t else None)
                   for k in LOWP_STREAM_COLUMNS}
    return rows, note


def _cell(v, fmt):
    return NA if v is None else fmt.format(v)


def lowp_tables(rows, label="T | B | I=H"):
    """Markdown tables of lowp rows [((T, B, H), {column: ...})]: ms with the two target
    ratios, max |error| against torch float32, and G(FL)OP/s."""
    keys = label.split(" | ")
    head = lambda cols: "| " + " | ".join(keys + cols) + " |"
    rule = lambda cols: "|" + "|".join("---:" for _ in keys + cols) + "|"
    ratio_cols = [f"{a} / {b}" for a, b in LOWP_RATIOS]
    out = ["ms per call (median of alternating blocks); ratios < 1: fastlstm is faster "
           "(target <= 0.8)", "", head(LOWP_COLUMNS + ratio_cols), rule(LOWP_COLUMNS + ratio_cols)]
    for shape, r in rows:
        cells = [_cell(r[c] and r[c]["s"] * 1e3, "{:.3f}") for c in LOWP_COLUMNS]
        for a, b in LOWP_RATIOS:
            cells.append(NA if not (r[a] and r[b]) else f"{r[a]['s'] / r[b]['s']:.2f}")
        out.append("| " + " | ".join([str(v) for v in shape] + cells) + " |")
    out += ["", "max |output - torch float32 output| on the same input", "",
            head(LOWP_COLUMNS), rule(LOWP_COLUMNS)]
    for shape, r in rows:
        cells = [_cell(r[c] and r[c]["err"], "{:.1e}") for c in LOWP_COLUMNS]
        out.append("| " + " | ".join([str(v) for v in shape] + cells) + " |")
    out += ["", "GFLOP/s (int8 columns: GOP/s) = 8*T*B*H*(I+H) / time", "",
            head(LOWP_COLUMNS), rule(LOWP_COLUMNS)]
    for shape, r in rows:
        cells = [_cell(r[c] and r[c]["gops"], "{:.1f}") for c in LOWP_COLUMNS]
        out.append("| " + " | ".join([str(v) for v in shape] + cells) + " |")
    return out


def lowp_stream_table(rows):
    cols = [f"{c} us" for c in LOWP_STREAM_COLUMNS]
    ratios = [f"{c} / LSTMCell" for c in LOWP_STREAM_COLUMNS[1:]]
    errs = [f"{c} err" for c in LOWP_STREAM_COLUMNS[1:]]
    allc = ["H"] + cols + ratios + errs
    out = ["streaming: one step at batch 1 against torch.nn.LSTMCell (float32), us per step; "
           "target: int8 at 256 units <= 0.12x", "",
           "| " + " | ".join(allc) + " |", "|" + "|".join("---:" for _ in allc) + "|"]
    ref = LOWP_STREAM_COLUMNS[0]
    for H, r in rows.items():
        cells = [_cell(r[c] and r[c]["s"] * 1e6, "{:.1f}") for c in LOWP_STREAM_COLUMNS]
        cells += [NA if not (r[c] and r[ref]) else f"{r[c]['s'] / r[ref]['s']:.2f}"
                  for c in LOWP_STREAM_COLUMNS[1:]]
        cells += [_cell(r[c] and r[c]["err"], "{:.1e}") for c in LOWP_STREAM_COLUMNS[1:]]
        out.append("| " + " | ".join([str(H)] + cells) + " |")
    return out


def lowp_header(torch, threads):
    """The environment lines, plus the peers' versions and whether fl.quantize exists."""
    import fastlstm as fl
    lines = list(environment(torch))
    try:
        import onnxruntime
        lines.append(f"onnxruntime {onnxruntime.__version__}: {threads} intra-op threads")
    except ImportError:
        lines.append("onnxruntime: not installed")
    lines.append("fl.quantize: " + ("present" if hasattr(fl, "quantize") else
                                    f"absent in this fastlstm (its columns are {NA})"))
    return lines


def run_lowp(configs, threads, reps, per_block, stream=True, onnx=True, json_path=None,
             print_fn=print):
    """--lowp: the table over `configs` (T, B, H), then the streaming rows."""
    import datetime
    import torch
    lines = lowp_header(torch, threads)
    for line in lines:
        print_fn(line)
    print_fn("")
    rows, notes, ops = [], [], {}
    by_h = {}
    for T, B, H in configs:
        by_h.setdefault(H, []).append((T, B))
    done = {}
    for H, tbs in by_h.items():
        models = LowpModels(H, threads, onnx=onnx)
        try:
            notes += [f"H={H}: {n}" for n in models.note]
            if models.int8_ops:
                ops[H] = models.int8_ops
            for T, B in tbs:
                done[(T, B, H)] = lowp_row(models, T, B, reps, per_block)
        finally:
            models.close()
            del models
            gc.collect()
    rows = [((T, B, H), done[(T, B, H)]) for T, B, H in configs]
    for line in lowp_tables(rows):
        print_fn(line)
    for H, o in ops.items():
        has = "DynamicQuantizeLSTM" in o
        print_fn(f"\nORT int8 graph (H={H}): {'contains' if has else 'LACKS'} "
                 f"DynamicQuantizeLSTM; ops: {', '.join(o)}")
    stream_rows = {}
    if stream:
        stream_rows, snote = lowp_stream_rows(LOWP_STREAM_UNITS, threads, reps, per_block)
        notes += snote
        print_fn("")
        for line in lowp_stream_table(stream_rows):
            print_fn(line)
    for n in dict.fromkeys(notes):
        print_fn(n)
    if json_path:
        import json
        doc = {"environment": lines, "threads": threads,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "columns": LOWP_COLUMNS, "int8_ops": {str(h): o for h, o in ops.items()},
               "rows": [{"T": s[0], "B": s[1], "H": s[2], "I": s[2], **r} for s, r in rows],
               "stream": {str(h): r for h, r in stream_rows.items()}, "notes": notes}
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1)
    return rows, stream_rows


def lengths_rows(threads, reps, per_block, T=100, B=64, H=512, lo=10, seed=0):
    """``--lengths``: {mode: {implementation: seconds}} and the largest difference between
    fastlstm's and torch's packed outputs."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, T + 1, B)
    x = rng.standard_normal((B, T, H)).astype(np.float32)
    valid = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    tm, layer = peer_pair("lstm", H, x.shape)
    xt = torch.from_numpy(x)
    tl = torch.as_tensor(lengths)
    dy = np.broadcast_to(valid[:, :, None], (B, T, H)).copy()
    dy_full = np.ones((B, T, H), np.float32)
    wt = torch.from_numpy(dy)

    def torch_packed(inp):
        out, _ = tm(pack_padded_sequence(inp, tl, batch_first=True, enforce_sorted=False))
        return pad_packed_sequence(out, batch_first=True, total_length=T)[0]

    with torch.inference_mode():
        ref = torch_packed(xt).numpy()
    err = float(np.abs(layer(x, sequence_lengths=lengths) * valid[:, :, None] - ref).max())

    xg = xt.clone().requires_grad_(True)

    def torch_train_packed():
        tm.zero_grad(set_to_none=True)
        (torch_packed(xg) * wt).sum().backward()

    def torch_train_padded():
        tm.zero_grad(set_to_none=True)
        tm(xg)[0].sum().backward()

    def torch_infer_packed():
        with torch.inference_mode():
            return torch_packed(xt)

    inference = {"fastlstm lengths": lambda: layer(x, sequence_lengths=lengths),
                 "fastlstm padded": lambda: layer(x),
                 "torch packed": torch_infer_packed,
                 "torch padded": lambda: torch_inference(tm, xt)}
    training = {"fastlstm lengths": training_step(layer, x, dy, sequence_lengths=lengths),
                "fastlstm padded": training_step(layer, x, dy_full),
                "torch packed": torch_train_packed, "torch padded": torch_train_padded}
    with quiet_numpy_blas():
        t_inf = timed_blocks(inference, reps, per_block)
        t_tr = timed_blocks(training, reps, max(1, per_block - 1))
    return {"infer": t_inf, "train": t_tr}, err, lengths


def print_mode_table(times, names, ratios):
    """{mode: {name: seconds}} as a table of ms per call, then each ratio (label,
    numerator's name, denominator's name) per mode."""
    w = max(9, *(len(n) for n in names)) + 2
    print(f"{'mode':5s} | " + " ".join(f"{n:>{w}s}" for n in names) + " | "
          + " ".join(f"{label:>{max(8, len(label))}s}" for label, _, _ in ratios))
    for mode, t in times.items():
        print(f"{mode:5s} | " + " ".join(f"{t[n] * 1e3:{w - 2}.2f}ms" for n in names) + " | "
              + " ".join(f"{t[a] / t[b]:{max(8, len(label))}.2f}" for label, a, b in ratios))


def print_lengths(threads, reps, per_block):
    times, err, lengths = lengths_rows(threads, reps, per_block)
    print(f"\nrows of different lengths: LSTM, B=64, I=H=512, T=100, lengths uniform in "
          f"[10, 100] (mean {lengths.mean():.1f}), float32, ms per call")
    print_mode_table(times, ["fastlstm lengths", "fastlstm padded", "torch packed",
                             "torch padded"],
                     [("fl len/padded", "fastlstm lengths", "fastlstm padded"),
                      ("fl len/torch packed", "fastlstm lengths", "torch packed")])
    if err > 1e-4:
        print(f"  WARNING: fastlstm and torch outputs differ by {err:.1e}")


def projection_rows(reps, per_block, T=50, B=32, I=256, H=1024, P=256):
    """``--projection``: {mode: {implementation: seconds}} and the largest output difference."""
    import torch
    from fastlstm.convert import from_torch
    torch.manual_seed(0)
    tm = torch.nn.LSTM(I, H, proj_size=P, batch_first=True)
    layer = from_torch(tm)
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
    xt = torch.from_numpy(x)
    err = float(np.abs(layer(x) - torch_inference(tm, xt)[0].numpy()).max())
    dy = np.ones((B, T, P), np.float32)
    xg = xt.clone().requires_grad_(True)

    def torch_train():
        tm.zero_grad(set_to_none=True)
        tm(xg)[0].sum().backward()

    with quiet_numpy_blas():
        t_inf = timed_blocks({"fastlstm": lambda: layer(x),
                              "torch": lambda: torch_inference(tm, xt)}, reps, per_block)
        t_tr = timed_blocks({"fastlstm": training_step(layer, x, dy), "torch": torch_train},
                            reps, max(1, per_block - 1))
    return {"infer": t_inf, "train": t_tr}, err


def print_projection(reps, per_block):
    times, err = projection_rows(reps, per_block)
    print("\nprojected LSTM: units 1024, proj_size 256, I=256, T=50, B=32, float32, ms per call")
    for mode, t in times.items():
        print(f"{mode:5s} | fastlstm {t['fastlstm'] * 1e3:9.2f}ms  torch {t['torch'] * 1e3:9.2f}ms"
              f" | fl/torch {t['fastlstm'] / t['torch']:5.2f}")
    if err > 1e-4:
        print(f"  WARNING: fastlstm and torch outputs differ by {err:.1e}")


def torch_layer_norm_lstm(I, H):
    """haste's LayerNormLSTM written as PyTorch users compose it: nn.Linear products, three
    nn.LayerNorm and a loop over the steps (the LSTMCell's gate math, each product normalized
    apart). LN(h U) carries no bias, LN(x W) carries the LSTM's b."""
    import torch
    from torch import nn

    class LayerNormLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.wx = nn.Linear(I, 4 * H, bias=False)
            self.wh = nn.Linear(H, 4 * H, bias=False)
            self.ln_x, self.ln_h, self.ln_c = nn.LayerNorm(4 * H), nn.LayerNorm(4 * H), nn.LayerNorm(H)
            with torch.no_grad():
                self.ln_h.bias.zero_()

        def forward(self, x):
            B, T, _ = x.shape
            h = x.new_zeros(B, H)
            c = x.new_zeros(B, H)
            zx = self.ln_x(self.wx(x))
            ys = []
            for t in range(T):
                i, f, g, o = (zx[:, t] + self.ln_h(self.wh(h))).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
                ys.append(h)
            return torch.stack(ys, 1)

    return LayerNormLSTM()


def layer_norm_rows(reps, per_block, T=100, B=32, H=256):
    """``--layer-norm``: {mode: {implementation: seconds}} and the largest difference between
    fastlstm's layer-normalized LSTM and the PyTorch composition with the same weights (both
    in float64)."""
    import torch
    import fastlstm as fl
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((B, T, H)).astype(np.float32)
    tm = torch_layer_norm_lstm(H, H)
    ln = fl.layers.LSTM(H, return_sequences=True, layer_norm=True)
    ln.build(x.shape)
    f32 = lambda t: t.detach().numpy().astype(np.float32)
    ln.set_weights([f32(tm.wx.weight.T), f32(tm.wh.weight.T), f32(tm.ln_x.bias),
                    np.stack([f32(tm.ln_x.weight), f32(tm.ln_h.weight)]), f32(tm.ln_c.weight),
                    f32(tm.ln_c.bias)])
    plain = fl.layers.LSTM(H, return_sequences=True)
    plain.build(x.shape)
    plain.set_weights(ln.get_weights()[:3])
    xt = torch.from_numpy(x)
    # Checked in float64: over 100 steps LN in float32 drifts by about 1e-3 from any other
    # float32 order of operations (the float32 oracle's own drift is larger).
    ln64 = fl.layers.LSTM(H, return_sequences=True, layer_norm=True, dtype="float64")
    ln64.build(x.shape)
    ln64.set_weights([w.astype(np.float64) for w in ln.get_weights()])
    with torch.inference_mode():
        err = float(np.abs(ln64(x.astype(np.float64))
                           - tm.double()(xt.double()).numpy()).max())
    tm.float()
    dy = np.ones((B, T, H), np.float32)
    xg = xt.clone().requires_grad_(True)

    def torch_train():
        tm.zero_grad(set_to_none=True)
        tm(xg).sum().backward()

    def torch_infer():
        with torch.inference_mode():
            return tm(xt)

    with quiet_numpy_blas():
        t_inf = timed_blocks({"fastlstm LN": lambda: ln(x), "fastlstm plain": lambda: plain(x),
                              "torch LN": torch_infer}, reps, per_block)
        t_tr = timed_blocks({"fastlstm LN": training_step(ln, x, dy),
                             "fastlstm plain": training_step(plain, x, dy),
                             "torch LN": torch_train}, reps, max(1, per_block - 1))
    return {"infer": t_inf, "train": t_tr}, err


def print_layer_norm(reps, per_block):
    times, err = layer_norm_rows(reps, per_block)
    print("\nlayer-normalized LSTM (haste's LayerNormLSTM): T=100, B=32, I=H=256, float32, "
          "ms per call")
    print_mode_table(times, ["fastlstm LN", "fastlstm plain", "torch LN"],
                     [("LN/plain", "fastlstm LN", "fastlstm plain"),
                      ("LN/torch LN", "fastlstm LN", "torch LN")])
    print(f"  outputs against the PyTorch composition in float64: max abs difference {err:.1e}")
    if err > 1e-9:
        print("  WARNING: that is more than rounding")


def parse_configs(text):
    """"100x1x128,50x64x512" -> [(100, 1, 128), (50, 64, 512)] (T x B x I=H)."""
    return [tuple(int(v) for v in c.split("x")) for c in text.split(",") if c]


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
    p.add_argument("--lowp", action="store_true",
                   help="LSTM inference in bfloat16 and int8 (fl.quantize) against torch "
                        "autocast and ONNX Runtime's dynamic int8 instead")
    p.add_argument("--mixed", action="store_true",
                   help="training steps in mixed_bfloat16 against torch.autocast bf16 "
                        "instead (bench/mixed_training.py)")
    p.add_argument("--configs", help="--lowp, --mixed: TxBxH,... instead of the default "
                                     "configurations (I = H)")
    p.add_argument("--json", metavar="PATH", help="--lowp: also write the results as JSON")
    p.add_argument("--lengths", action="store_true",
                   help="only the batch of rows of different lengths (sequence_lengths) "
                        "against the same batch padded and torch's pack_padded_sequence")
    p.add_argument("--projection", action="store_true",
                   help="only the projected LSTM (proj_size) against torch's")
    p.add_argument("--layer-norm", action="store_true",
                   help="only the layer-normalized LSTM against the plain one and a PyTorch "
                        "composition (nn.Linear + nn.LayerNorm, a loop over the steps)")
    args = p.parse_args(argv)
    if args.mixed:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import mixed_training
        cells = ",".join(c for c in args.cells.split(",") if c != "rnn") or "lstm,gru"
        return mixed_training.main(
            (["--quick"] if args.quick else []) + ["--threads", str(args.threads), "--cells", cells]
            + (["--configs", args.configs] if args.configs else [])
            + (["--json", args.json] if args.json else []))
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
    if args.lowp:
        configs = parse_configs(args.configs) if args.configs else LOWP_CONFIGS
        run_lowp(configs, args.threads, reps, per_block, stream=not args.no_stream,
                 onnx=not args.no_onnx, json_path=args.json)
        return 0
    if args.lengths or args.projection or args.layer_norm:
        for line in environment(torch):
            print(line)
        if args.lengths:
            print_lengths(args.threads, reps, per_block)
        if args.projection:
            print_projection(reps, per_block)
        if args.layer_norm:
            print_layer_norm(reps, per_block)
        return 0
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
