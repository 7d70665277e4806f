"""fastlstm.benchmarking: the one timing method of `python -m fastlstm bench` and
bench/compare_peers.py. What is checked here is the method (alternation, quiet BLAS, what
gets reported), never a speed."""
import importlib.util
import os
import sys

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import benchmarking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_timed_blocks_alternates_and_returns_a_median_per_function():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    got = benchmarking.timed_blocks(fns, reps=3, per_block=2, pause=0.0, warm=0.0,
                                    min_block=0.0)
    assert set(got) == {"a", "b"} and all(v >= 0 for v in got.values())
    # warm-up (two calls each), then blocks a, b, a, b, a, b: one untimed call and the block
    runs = [calls[0]]
    for c in calls[1:]:
        if c != runs[-1]:
            runs.append(c)
    assert runs == ["a", "b"] * 4


def test_numpy_blas_is_quiet_while_timing_and_restored_after():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    a = np.ones((64, 64))
    a @ a                                                # NumPy's BLAS is loaded
    before = {c.filepath: c.num_threads for c in
              threadpoolctl.ThreadpoolController().lib_controllers if c.user_api == "blas"}
    with benchmarking.quiet_numpy_blas():
        inside = [c.num_threads for c in threadpoolctl.ThreadpoolController().lib_controllers
                  if c.user_api == "blas"]
        assert inside and all(n == 1 for n in inside)
    after = {c.filepath: c.num_threads for c in
             threadpoolctl.ThreadpoolController().lib_controllers if c.user_api == "blas"}
    assert after == before


def test_environment_names_the_cpu_and_what_ran():
    lines = benchmarking.environment()
    assert lines[0].startswith("CPU: ") and benchmarking.cpu_model() in lines[0]
    assert f"fastlstm {fl.__version__}" in lines[1] and "threads" in lines[1]
    assert any("BLAS" in line for line in lines)


def _bench(monkeypatch, without_torch):
    if without_torch:
        monkeypatch.setitem(sys.modules, "torch", None)        # import torch -> ImportError
    out = []
    res = benchmarking.run_bench(print_fn=out.append, configs=((3, 2, 4),), reps=1,
                                 per_block=1)
    return res, "\n".join(out)


def test_bench_without_pytorch_times_fastlstm_and_says_so(monkeypatch):
    res, out = _bench(monkeypatch, without_torch=True)
    assert set(res) == {(3, 2, 4)} and set(res[(3, 2, 4)]) == {"infer", "train"}
    assert all(set(t) == {"fastlstm"} for t in res[(3, 2, 4)].values())
    assert "PyTorch is not installed" in out and out.startswith("CPU: ")


def test_bench_with_pytorch_times_both_on_the_same_weights(monkeypatch):
    pytest.importorskip("torch")
    res, out = _bench(monkeypatch, without_torch=False)
    assert all(set(t) == {"fastlstm", "torch"} for t in res[(3, 2, 4)].values())
    assert "WARNING" not in out                         # same weights: same outputs
    assert "torch 2" in out and "fl/torch" in out


def test_compare_peers_uses_the_same_method():
    spec = importlib.util.spec_from_file_location(
        "compare_peers", os.path.join(ROOT, "bench", "compare_peers.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in ("timed_blocks", "peer_pair", "problem", "oracle_time", "quiet_numpy_blas"):
        assert getattr(mod, name) is getattr(benchmarking, name)
    # bench's configurations are ones compare_peers runs too, so their ratios can be compared
    import inspect
    bench_configs = inspect.signature(benchmarking.run_bench).parameters["configs"].default
    assert set(bench_configs) <= set(mod.LSTM_CONFIGS)


def _load_bench(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_peers_lowp_quick_prints_every_column(tmp_path):
    """--lowp --quick on the smallest configuration, without streaming: the three tables
    have every column, the int8 ONNX graph is checked, and the fastlstm low-precision
    columns are filled exactly when fastlstm has quantize. The times are not looked at."""
    for name in ("torch", "onnx", "onnxruntime"):
        pytest.importorskip(name)
    import json
    import subprocess
    mod = _load_bench("compare_peers")
    out_json = tmp_path / "lowp.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "compare_peers.py"),
                          "--lowp", "--quick", "--configs", "100x1x128", "--no-stream",
                          "--json", str(out_json)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("CPU: ") and "onnxruntime" in out and "fl.quantize:" in out
    header = [line for line in out.splitlines() if line.startswith("| T | B | I=H |")]
    assert len(header) == 3                                  # ms, errors, GFLOP/s
    cols = [c.strip() for c in header[0].strip("|").split("|")]
    assert cols == (["T", "B", "I=H"] + mod.LOWP_COLUMNS
                    + ["fastlstm int8 / ORT int8", "fastlstm bf16 / torch bf16"])
    rows = [line for line in out.splitlines() if line.startswith("| 100 | 1 | 128 |")]
    assert len(rows) == 3
    ms = dict(zip(cols, (c.strip() for c in rows[0].strip("|").split("|"))))
    for peer in ("torch f32", "torch bf16", "ORT f32", "ORT int8", "fastlstm f32"):
        assert float(ms[peer]) > 0
    quant = hasattr(fl, "quantize")
    for col in ("fastlstm bf16", "fastlstm int8", "fastlstm int8 / ORT int8",
                "fastlstm bf16 / torch bf16"):
        assert (ms[col] == mod.NA) != quant
    assert "contains DynamicQuantizeLSTM" in out
    doc = json.loads(out_json.read_text())
    assert [(r["T"], r["B"], r["H"]) for r in doc["rows"]] == [(100, 1, 128)]
    assert doc["rows"][0]["torch f32"]["err"] == 0.0
    assert doc["rows"][0]["fastlstm f32"]["err"] < 1e-4     # the same weights


def test_deepbench_runs_deepbenchs_inference_lstm_problems():
    mod = _load_bench("deepbench")
    probs = mod.DEEPBENCH_LSTM_INFERENCE
    assert len(probs) == len(set(probs)) == 15
    want = {(h, b, 25) for h in (512, 1024, 2048) for b in (1, 2, 4)}
    want |= {(1536, b, 50) for b in (1, 2, 4)} | {(256, b, 150) for b in (1, 2, 4)}
    assert set(probs) == want and set(mod.QUICK) <= want
