"""The cupy backend and its CUDA kernels.

Three layers of checks:
- everywhere: the kernel source compiled for the host runs under the backend's own code as
  backend "cupy_host" (conftest.py), inside every oracle comparison of test_lstm_ops,
  test_gru_ops and test_simple_rnn_ops (options, dtypes, gradients, finite differences,
  property tests); here, its launcher and the import guards;
- where nvcc is installed: the source compiles for the device (NVRTC-compatible: no system
  headers), so a CUDA-only error cannot wait for someone with a GPU;
- where CuPy and a GPU are present: the backend on CuPy arrays against the oracle on CuPy
  arrays, every cell, option and dtype, forward and gradients.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import backends, ops
from fastlstm.backends import cuda_kernels
from fastlstm.backends.numpy_ops import NumpyOps

from conftest import CUPY, DTYPES, HAVE_CUDA_HOST, assert_close, seed_of
import test_gru_ops
import test_lstm_ops
import test_simple_rnn_ops

KERNELS = ["lstm_fwd_step", "lstm_bwd_step", "merge_dh", "gru_fwd_step", "gru_fwd_gates",
           "gru_fwd_step0", "gru_bwd_step", "gru_bwd_reset0", "rnn_fwd_step", "rnn_bwd_step",
           "small_gemm"]


gpu = pytest.mark.skipif(CUPY is None, reason="needs CuPy and an NVIDIA GPU")
host = pytest.mark.skipif(not HAVE_CUDA_HOST, reason="needs a C++ compiler")


# -- the source and its launcher ---------------------------------------------------------

def test_every_kernel_has_a_signature_the_launcher_converts():
    sigs = cuda_kernels.parse_signatures(cuda_kernels.kernel_source(cuda_kernels.BODY_SOURCE))
    assert sorted(sigs) == sorted(KERNELS)
    for name, sig in sigs.items():
        assert sig[0] == "l", name                         # n comes first, as long long
        assert set(sig) <= set("lidpm"), name


def test_parser_refuses_a_type_it_cannot_convert():
    src = 'extern "C" __global__ void FN(k)(long long n, float x, REAL *y) {'
    with pytest.raises(ValueError, match="float x"):
        cuda_kernels.parse_signatures(src)


@host
def test_launcher_checks_arguments():
    ks = backends.get_ops("cupy_host").kernels
    a = np.zeros((2, 3), np.float32)
    args = dict(n=6, H=3, has_mask=0, has_dy=0, a_kind=0, a_alpha=0.0)
    base = list(args.values())[1:]
    with pytest.raises(TypeError, match="expected 12 arguments, got 6"):
        ks("rnn_bwd_step", np.float32, 6, *base)
    with pytest.raises(KeyError, match="no CUDA kernel named"):
        ks("lstm_fwd", np.float32, 6)
    with pytest.raises(TypeError, match="float32 or float64"):
        ks("rnn_bwd_step", np.int32, 6, *base, a, a, a, a, a, a)
    u8 = np.zeros(2, np.uint8)
    with pytest.raises(TypeError, match="argument 6 must be a C-contiguous float32"):
        ks("rnn_bwd_step", np.float32, 6, *base, a.astype(np.float64), u8, a, a, a, a)
    with pytest.raises(TypeError, match="argument 6 must be a C-contiguous"):
        ks("rnn_bwd_step", np.float32, 6, *base, np.zeros((3, 2), np.float32).T, u8, a, a, a, a)
    with pytest.raises(TypeError, match="argument 7 must be a C-contiguous uint8"):
        ks("rnn_bwd_step", np.float32, 6, *base, a, a, a, a, a, a)
    with pytest.raises(TypeError, match="must be an array, got list"):
        ks("rnn_bwd_step", np.float32, 6, *base, [0.0], u8, a, a, a, a)
    ks("rnn_bwd_step", np.float32, 0, *base, a, u8, a, a, a, a)     # n=0: nothing to launch


@host
def test_the_kernels_do_the_work():
    """The backend's results come from the kernels (not a fallback): count the launches."""
    o = backends.get_ops("cupy_host")
    rng = np.random.default_rng(0)
    T = 5
    kw = test_lstm_ops.make_problem(rng, np.float64, T, 3, 4, 2, dict(mask="gaps"))
    before = dict(o.kernels.launches)
    with fl.use_backend("cupy_host"):
        _, _, _, cache = ops.lstm_forward(training=True, **kw)
        ops.lstm_backward(cache, np.ones((T, 3, 2)))
    ran = {k: v - before.get(k, 0) for k, v in o.kernels.launches.items()}
    assert ran["lstm_fwd_step_d"] == T and ran["lstm_bwd_step_d"] == T
    assert ran["merge_dh_d"] == T          # with a mask, dh merges rows after each product


@host
def test_step_launches_check_their_rows_once_and_refuse_a_step_out_of_range():
    """``steps`` checks each per-step array once (dtype, contiguous rows) and each launch
    only its row index: a wrong index must be an error, never a stray address."""
    ks = backends.get_ops("cupy_host").kernels
    At = cuda_kernels.At
    T, B, H = 3, 2, 4
    hs, dz = np.zeros((T, B, H)), np.zeros((T, B, H))
    dh, dout, u8 = np.zeros((B, H)), np.zeros((B, H)), np.zeros(1, np.uint8)
    args = (0, 0, 0, 0.0, At(hs, "t"), u8, np.zeros(1), dh, dout)
    with pytest.raises(TypeError, match="argument 11 must have C-contiguous float64 rows"):
        ks.steps("rnn_bwd_step", np.float64, B * H, H, *args, At(dz[:, :, ::2], "t"))
    with pytest.raises(TypeError, match="argument 6 must have C-contiguous float32 rows"):
        ks.steps("rnn_bwd_step", np.float32, B * H, H, *args, At(dz, "t"))
    with pytest.raises(TypeError, match="argument 11 must be an array of rows"):
        ks.steps("rnn_bwd_step", np.float64, B * H, H, *args, At(1.0, "t"))
    with pytest.raises(ValueError, match="by must be 's' or 't'"):
        At(dz, "x")
    gapped = np.zeros((T, 2, B, H))[:, 0]              # contiguous rows, gaps between them
    run = ks.steps("rnn_bwd_step", np.float64, B * H, H, *args, At(gapped, "t"))
    run(0, T - 1)
    for bad in (T, -1):
        with pytest.raises(IndexError, match="out of range"):
            run(0, bad)


def test_packed_arguments_are_laid_out_as_the_kernel_reads_them():
    """cuLaunchKernel reads each parameter from the start of its 8-byte slot, as many bytes
    as its C type has (little-endian x86-64 and NVIDIA GPUs)."""
    vals = np.full(4, 0xFFFFFFFFFFFFFFFF, np.uint64)
    for k, code, v in ((0, "i", -5), (1, "l", -7), (2, "d", 0.25), (3, "p", 2**40 + 3)):
        vals[k] = 0
        cuda_kernels.KernelSet._pack(vals, k, code, v)
        assert cuda_kernels.KernelSet.unpack(vals, k, code) == v
    raw = vals.tobytes()
    assert raw[0:4] == np.int32(-5).tobytes() and raw[4:8] == bytes(4)
    assert raw[8:16] == np.int64(-7).tobytes()
    assert raw[16:24] == np.float64(0.25).tobytes()
    assert raw[24:32] == np.uint64(2**40 + 3).tobytes()


@host
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_row_major_products_through_the_column_major_gemm(dtype):
    """The recurrent products reach cuBLAS as C^T = B^T A^T; the host stand-in has cuBLAS's
    contract (column-major, leading dimensions checked), so the mapping is tested here."""
    ks = backends.get_ops("cupy_host").kernels
    gemm, A = ks.gemm(dtype), ks.address
    rng = np.random.default_rng(1)
    big = rng.standard_normal((5, 3, 12)).astype(dtype)       # A: [3, 4] rows 12 apart
    b = rng.standard_normal((4, 7)).astype(dtype)
    c = np.full((3, 7), np.nan, dtype)                        # beta = 0: C is not read
    gemm(3, 7, 4, A(big[2, :, 8:]), 12, A(b), 7, A(c), 7)
    assert_close(c, big[2, :, 8:] @ b, dtype, "C")
    with pytest.raises(ValueError, match="leading dimensions"):
        gemm(3, 7, 4, A(big[2, :, 8:]), 2, A(b), 7, A(c), 7)


@host
@pytest.mark.parametrize("macs", [0, 1 << 40], ids=["cublas", "small_gemm"])
@pytest.mark.parametrize("cell", ["lstm", "gru_after", "gru_before", "simple_rnn"])
def test_both_recurrent_product_paths_match_oracle(monkeypatch, macs, cell):
    """Each step's products go to cuBLAS (the column-major stand-in here) or, when small,
    to the small_gemm kernel: both, every option set, forward and gradients."""
    from fastlstm.backends.cupy_ops import CupyOps
    monkeypatch.setattr(CupyOps, "small_product_macs", macs)
    monkeypatch.setattr(CupyOps, "small_product_depth", 1 << 20)
    module = {"lstm": test_lstm_ops, "simple_rnn": test_simple_rnn_ops}.get(cell, test_gru_ops)
    name = cell.split("_")[0] if cell.startswith("gru") else cell
    fwd, bwd = getattr(ops, name + "_forward"), getattr(ops, name + "_backward")
    ks = backends.get_ops("cupy_host").kernels
    before = ks.launches.get("small_gemm_d", 0)
    for opt_name, opts in module.OPTION_SETS.items():
        rng = np.random.default_rng(seed_of(opt_name, cell))
        extra = (cell == "gru_after",) if name == "gru" else ()
        kw = module.make_problem(rng, np.float64, 7, 4, 5, 6, opts, *extra)
        grads = module.output_grads(rng, np.float64, 7, 4, 6, kw["return_sequences"])
        res = []
        for backend in ("cupy_host", "numpy"):
            with fl.use_backend(backend):
                *outs, cache = fwd(training=True, **kw)
                res.append((outs, bwd(cache, *grads)))
        (outs, g), (routs, rg) = res
        for i, (a, b) in enumerate(zip(outs, routs)):
            assert_close(a, b, np.float64, f"{opt_name} output {i}")
        for f in module.GRAD_FIELDS:
            a, b = getattr(g, f), getattr(rg, f)
            assert (a is None) == (b is None), f
            if a is not None:
                assert_close(a, b, np.float64, f"{opt_name} d{f}")
    ran = ks.launches.get("small_gemm_d", 0) - before
    assert (ran > 0) == (macs > 0), ran


def test_cupy_backend_without_a_gpu_is_a_clear_error():
    if CUPY is not None:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CuPy"):
        fl.use_backend("cupy").__enter__()
    with pytest.raises(RuntimeError, match="CuPy"):
        fl.set_backend("cupy")
    assert fl.current_backend() == "cpu"
    assert "cupy" not in fl.backends.available()
    assert {"numpy", "cpu"} <= set(fl.backends.available())


# -- nvcc: the device build --------------------------------------------------------------

def _nvcc():
    for cand in [shutil.which("nvcc")] + [os.path.join(os.environ.get(v, ""), "bin", "nvcc")
                                          for v in ("CUDA_HOME", "CUDA_PATH")]:
        if cand and os.path.isfile(cand):
            return cand
    return None


@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    """The exact text CuPy compiles (headers written in), for the device."""
    src, out = tmp_path / "rnn_kernels.cu", tmp_path / "rnn_kernels.ptx"
    src.write_text(cuda_kernels.expanded_source())
    cmd = [_nvcc(), "--ptx", "-arch=compute_75", "--std=c++14", "-Werror", "all-warnings",
           str(src), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)\(", out.read_text()))
    assert entries == {k + s for k in KERNELS for s in ("_f", "_d")}


def test_cuda_source_includes_no_system_header():
    """NVRTC (what CuPy compiles with) has no system headers: under __CUDACC__ the sources
    may include only each other, and those includes are written into the compiled text."""
    assert '#include "' not in cuda_kernels.expanded_source()
    for path in [os.path.join(cuda_kernels.SOURCE_DIR, f) for f in os.listdir(cuda_kernels.SOURCE_DIR)]:
        assert not re.search(r"#include\s*<", open(path).read()), path
    shared = open(os.path.join(cuda_kernels.INCLUDE_DIR, "gates_math.h")).read()
    cuda_part = shared.split("#if defined(__CUDACC__)")[1].split("#else")[0]
    assert "#include" not in cuda_part


# -- on the GPU ----------------------------------------------------------------------------

class _CupyOracle(NumpyOps):
    """The oracle on CuPy arrays: the reference for the GPU kernels."""
    name = "numpy"

    def __init__(self):
        self.xp = CUPY


def _to_gpu(kw):
    return {k: CUPY.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}


def _gpu_compare(fwd, bwd, kw, grads, dtype, fields):
    gpu_ops, oracle = backends.get_ops("cupy"), _CupyOracle()
    kw, grads = _to_gpu(kw), [CUPY.asarray(g) for g in grads]
    res = {}
    for name, o in (("gpu", gpu_ops), ("oracle", oracle)):
        fwd_out = fwd(o, kw)
        *outs, cache = fwd_out
        res[name] = [CUPY.asnumpy(a) for a in outs], bwd(o, cache, grads)
    (outs, g), (routs, rg) = res["gpu"], res["oracle"]
    for i, (a, b) in enumerate(zip(outs, routs)):
        assert a.dtype == dtype
        assert_close(a, b, dtype, f"output {i}")
    for f in fields:
        a, b = getattr(g, f), getattr(rg, f)
        assert (a is None) == (b is None), f
        if a is not None:
            assert isinstance(a, CUPY.ndarray), f
            assert_close(CUPY.asnumpy(a), CUPY.asnumpy(b), dtype, "d" + f)


def _lstm_fwd(o, kw):
    kw = dict(kw)
    coupled = kw.pop("coupled_input_forget")
    act = fl.activations.get(kw.pop("activation"))
    ract = fl.activations.get(kw.pop("recurrent_activation"))
    B, H = kw["x"].shape[1], kw["recurrent_kernel"].shape[0]
    for s in ("h0", "c0"):
        if kw[s] is None:
            kw[s] = o.xp.zeros((B, H), kw["x"].dtype)
    return o.lstm_forward(training=True, coupled=coupled, activation=act,
                          recurrent_activation=ract, **kw)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("opt_name", list(test_lstm_ops.OPTION_SETS))
def test_gpu_lstm_matches_oracle_on_cupy(dtype, opt_name):
    rng = np.random.default_rng(seed_of(opt_name, np.dtype(dtype).name))
    kw = test_lstm_ops.make_problem(rng, dtype, 7, 4, 5, 6, test_lstm_ops.OPTION_SETS[opt_name])
    grads = test_lstm_ops.output_grads(rng, dtype, 7, 4, 6, kw["return_sequences"])
    _gpu_compare(_lstm_fwd, lambda o, c, g: o.lstm_backward(c, *g), kw, grads,
                 np.dtype(dtype), test_lstm_ops.GRAD_FIELDS)


@gpu
@pytest.mark.parametrize("module", [test_gru_ops, test_simple_rnn_ops], ids=["gru", "simple_rnn"])
@pytest.mark.parametrize("variant", ["reset_after", "reset_before"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gpu_gru_and_simple_rnn_match_oracle_on_cupy(module, variant, dtype):
    """Through the public ops (CuPy inputs select the cupy backend) against the oracle."""
    if module is test_simple_rnn_ops and variant == "reset_before":
        pytest.skip("one form only")
    cell = "gru" if module is test_gru_ops else "simple_rnn"
    fwd, bwd = getattr(ops, cell + "_forward"), getattr(ops, cell + "_backward")
    for opt_name, opts in module.OPTION_SETS.items():
        rng = np.random.default_rng(seed_of(opt_name, variant, np.dtype(dtype).name))
        args = (rng, dtype, 7, 4, 5, 6, opts) + ((variant == "reset_after",) if cell == "gru" else ())
        kw = module.make_problem(*args)
        grads = module.output_grads(rng, dtype, 7, 4, 6, kw["return_sequences"])
        y, h, cache = fwd(training=True, **_to_gpu(kw))
        assert isinstance(y, CUPY.ndarray)
        g = bwd(cache, *[CUPY.asarray(a) for a in grads])
        with fl.use_backend("numpy"):
            ry, rh, rcache = fwd(training=True, **kw)
            rg = bwd(rcache, *grads)
        assert_close(CUPY.asnumpy(y), ry, dtype, f"{opt_name} y")
        assert_close(CUPY.asnumpy(h), rh, dtype, f"{opt_name} h")
        for f in module.GRAD_FIELDS:
            a, b = getattr(g, f), getattr(rg, f)
            assert (a is None) == (b is None), f
            if a is not None:
                assert_close(CUPY.asnumpy(a), b, dtype, f"{opt_name} d{f}")
