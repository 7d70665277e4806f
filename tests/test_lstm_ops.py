"""LSTM ops: every compiled backend against the NumPy oracle, for every kernel option and
both dtypes, forward and every gradient; finite differences in float64; property tests."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastlstm as fl
from fastlstm import ops
from fastlstm.activations import HardSigmoid

from conftest import DTYPES, assert_close, compiled_backends, seed_of

ACTS = ["tanh", "sigmoid", "hard_sigmoid", HardSigmoid(0.2, 0.5), "relu", "linear", "softsign"]

# Kernel option sets: each is compared cpu-vs-oracle in both dtypes.
OPTION_SETS = {
    "plain": {},
    "no_bias": dict(bias=False),
    "initial_state": dict(h0=True, c0=True),
    "mask_gaps": dict(mask="gaps"),
    "mask_full_rows": dict(mask="full_rows"),
    "go_backwards": dict(go_backwards=True),
    "last_output": dict(return_sequences=False),
    "recurrent_dropout": dict(recurrent_dropout_mask=True),
    "input_dropout": dict(input_dropout_mask=True),
    "peepholes": dict(peephole=True),
    "cifg": dict(coupled_input_forget=True),
    "cifg_peepholes": dict(coupled_input_forget=True, peephole=True),
    "everything": dict(h0=True, c0=True, mask="full_rows", go_backwards=True, peephole=True,
                       recurrent_dropout_mask=True, input_dropout_mask=True),
    "everything_cifg_last": dict(h0=True, c0=True, mask="gaps", go_backwards=True,
                                 peephole=True, coupled_input_forget=True, bias=False,
                                 return_sequences=False, recurrent_dropout_mask=True),
}
for _a in ACTS:
    _n = _a if isinstance(_a, str) else "hard_sigmoid_0.2"
    OPTION_SETS[f"act_{_n}"] = dict(activation=_a)
    OPTION_SETS[f"ract_{_n}"] = dict(recurrent_activation=_a)


def make_problem(rng, dtype, T, B, I, H, opts):
    coupled = opts.get("coupled_input_forget", False)
    G = (3 if coupled else 4) * H
    sc = 1.0 / np.sqrt(I + H)
    kw = dict(
        x=rng.standard_normal((T, B, I)).astype(dtype),
        kernel=(rng.standard_normal((I, G)) * sc).astype(dtype),
        recurrent_kernel=(rng.standard_normal((H, G)) * sc).astype(dtype),
        bias=(rng.standard_normal(G) * 0.5).astype(dtype) if opts.get("bias", True) else None,
        h0=rng.standard_normal((B, H)).astype(dtype) if opts.get("h0") else None,
        c0=rng.standard_normal((B, H)).astype(dtype) if opts.get("c0") else None,
        peephole=(rng.standard_normal((3, H)) * 0.5).astype(dtype) if opts.get("peephole") else None,
        coupled_input_forget=coupled,
        go_backwards=opts.get("go_backwards", False),
        return_sequences=opts.get("return_sequences", True),
        activation=opts.get("activation", "tanh"),
        recurrent_activation=opts.get("recurrent_activation", "sigmoid"),
    )
    m = opts.get("mask")
    if m is not None:
        mask = rng.random((T, B)) > 0.35
        if m == "full_rows" and B > 1:
            mask[:, 0] = False          # a fully masked row
            mask[:, -1] = True
        kw["mask"] = mask
    if opts.get("recurrent_dropout_mask"):
        kw["recurrent_dropout_mask"] = ((rng.random((B, H)) > 0.3) / 0.7).astype(dtype)
    if opts.get("input_dropout_mask"):
        kw["input_dropout_mask"] = ((rng.random((B, I)) > 0.3) / 0.7).astype(dtype)
    return kw


def output_grads(rng, dtype, T, B, H, return_sequences):
    dy = rng.standard_normal((T, B, H) if return_sequences else (B, H)).astype(dtype)
    return dy, rng.standard_normal((B, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)


def run(backend, kw, grads):
    with fl.use_backend(backend):
        y, h, c, cache = ops.lstm_forward(training=True, **kw)
        y_inf, h_inf, c_inf, none = ops.lstm_forward(training=False, **kw)
        g = ops.lstm_backward(cache, *grads)
    assert none is None
    return (y, h, c), (y_inf, h_inf, c_inf), g


GRAD_FIELDS = ["inputs", "h0", "c0", "kernel", "recurrent_kernel", "bias", "peephole"]


def compare_backend(backend, kw, grads, dtype):
    (y, h, c), inf, g = run(backend, kw, grads)
    (ry, rh, rc), _, rg = run("numpy", kw, grads)
    for name, a, b in [("y", y, ry), ("h", h, rh), ("c", c, rc)]:
        assert a.dtype == dtype, name
        assert_close(a, b, dtype, name)
    for name, a, b in zip(["y", "h", "c"], inf, (y, h, c)):   # inference == training forward
        assert_close(a, b, dtype, "inference " + name)
    for f in GRAD_FIELDS:
        a, b = getattr(g, f), getattr(rg, f)
        assert (a is None) == (b is None), f
        if a is not None:
            assert a.dtype == dtype, f
            assert_close(a, b, dtype, "d" + f)


@pytest.mark.parametrize("backend", compiled_backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("opt_name", list(OPTION_SETS))
def test_backend_matches_oracle(backend, dtype, opt_name):
    opts = OPTION_SETS[opt_name]
    rng = np.random.default_rng(seed_of(opt_name, np.dtype(dtype).name))
    T, B, I, H = 7, 4, 5, 6
    kw = make_problem(rng, dtype, T, B, I, H, opts)
    grads = output_grads(rng, dtype, T, B, H, kw["return_sequences"])
    compare_backend(backend, kw, grads, np.dtype(dtype))


@pytest.mark.parametrize("backend", compiled_backends())
@pytest.mark.parametrize("B", [1, 2, 33])
def test_batch_sizes_and_gemv_path(backend, B):
    """B=1 takes the GEMV path; odd batch sizes exercise vector remainders."""
    rng = np.random.default_rng(B)
    kw = make_problem(rng, np.float32, 5, B, 19, 37, dict(peephole=True, mask="gaps"))
    grads = output_grads(rng, np.float32, 5, B, 37, True)
    compare_backend(backend, kw, grads, np.dtype(np.float32))


@pytest.mark.parametrize("backend", compiled_backends())
@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_isa_variant_matches_oracle(backend, level):
    from fastlstm import _gates
    _gates.force_isa_level(level)
    try:
        rng = np.random.default_rng(level)
        # The general cell, and the default one (whose backward step is one fused pass).
        for opts in (dict(peephole=True, mask="gaps"), dict(mask="gaps", h0=True, c0=True)):
            for dtype in DTYPES:
                kw = make_problem(rng, dtype, 4, 3, 5, 17, opts)
                grads = output_grads(rng, dtype, 4, 3, 17, True)
                compare_backend(backend, kw, grads, np.dtype(dtype))
    finally:
        _gates.force_isa_level(-1)


# -- finite differences (float64) --------------------------------------------------------

FD_OPTIONS = {
    "plain": dict(h0=True, c0=True),
    "peep_mask_back": dict(h0=True, c0=True, peephole=True, mask="full_rows", go_backwards=True),
    "cifg_dropout": dict(h0=True, c0=True, coupled_input_forget=True, peephole=True,
                         recurrent_dropout_mask=True, input_dropout_mask=True),
    "last_softsign": dict(h0=True, c0=True, return_sequences=False, activation="softsign",
                          recurrent_activation="hard_sigmoid", mask="gaps"),
}


@pytest.mark.parametrize("backend", ["numpy"] + compiled_backends())
@pytest.mark.parametrize("opt_name", list(FD_OPTIONS))
def test_gradients_by_finite_differences(backend, opt_name):
    rng = np.random.default_rng(7)
    T, B, I, H = 4, 3, 3, 2
    kw = make_problem(rng, np.float64, T, B, I, H, FD_OPTIONS[opt_name])
    dy, dh, dc = output_grads(rng, np.float64, T, B, H, kw["return_sequences"])

    def loss(**over):
        with fl.use_backend(backend):
            y, h, c, _ = ops.lstm_forward(**{**kw, **over})
        return float((y * dy).sum() + (h * dh).sum() + (c * dc).sum())

    with fl.use_backend(backend):
        _, _, _, cache = ops.lstm_forward(training=True, **kw)
        g = ops.lstm_backward(cache, dy, dh, dc)
    arg_of = dict(inputs="x", h0="h0", c0="c0", kernel="kernel",
                  recurrent_kernel="recurrent_kernel", bias="bias", peephole="peephole")
    eps = 1e-6
    for field, arg in arg_of.items():
        base = kw[arg]
        if base is None:
            continue
        num = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[idx] += eps
            minus[idx] -= eps
            num[idx] = (loss(**{arg: plus}) - loss(**{arg: minus})) / (2 * eps)
        np.testing.assert_allclose(getattr(g, field), num, rtol=1e-5, atol=1e-7,
                                   err_msg=f"{backend} d{field}")


# -- property tests ----------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 6), B=st.integers(1, 4), I=st.integers(1, 5), H=st.integers(1, 5),
       dtype=st.sampled_from(DTYPES), mask=st.sampled_from([None, "gaps", "full_rows", "none_set"]),
       peephole=st.booleans(), coupled=st.booleans(), go_backwards=st.booleans(),
       return_sequences=st.booleans(), bias=st.booleans(), h0=st.booleans(),
       rdrop=st.booleans(), seed=st.integers(0, 2**31))
def test_property_backends_agree(T, B, I, H, dtype, mask, peephole, coupled, go_backwards,
                                 return_sequences, bias, h0, rdrop, seed):
    rng = np.random.default_rng(seed)
    opts = dict(mask=None if mask in (None, "none_set") else mask, peephole=peephole,
                coupled_input_forget=coupled, go_backwards=go_backwards,
                return_sequences=return_sequences, bias=bias, h0=h0, c0=h0,
                recurrent_dropout_mask=rdrop)
    kw = make_problem(rng, dtype, T, B, I, H, opts)
    if mask == "none_set":
        kw["mask"] = np.zeros((T, B), bool)           # every step of every row masked
    grads = output_grads(rng, dtype, T, B, H, return_sequences)
    for backend in compiled_backends():
        compare_backend(backend, kw, grads, np.dtype(dtype))


def test_fully_masked_rows_keep_initial_state_and_output_zero():
    rng = np.random.default_rng(3)
    kw = make_problem(rng, np.float64, 5, 3, 4, 3, dict(h0=True, c0=True))
    kw["mask"] = np.zeros((5, 3), bool)
    kw["mask"][2:, 1] = True
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, c, _ = ops.lstm_forward(**kw)
        for row in (0, 2):
            np.testing.assert_array_equal(h[row], kw["h0"][row])
            np.testing.assert_array_equal(c[row], kw["c0"][row])
            np.testing.assert_array_equal(y[:, row], 0)
        np.testing.assert_array_equal(y[:2, 1], 0)     # before the row's first unmasked step
        assert np.all(y[2:, 1] != 0)


def test_empty_batch():
    rng = np.random.default_rng(0)
    kw = make_problem(rng, np.float32, 3, 0, 2, 4, {})
    y, h, c, cache = ops.lstm_forward(training=True, **kw)
    assert y.shape == (3, 0, 4) and h.shape == (0, 4)
    g = ops.lstm_backward(cache, np.zeros_like(y))
    assert g.inputs.shape == (3, 0, 2) and np.all(g.kernel == 0)


def test_cache_says_who_made_it():
    """A compiled backend hands some cases to the oracle; its backward goes by the cache's
    made_by, not by the names of the saved arrays."""
    rng = np.random.default_rng(0)
    cases = [("numpy", 2, "oracle"), ("numpy", 0, "oracle")]
    if "cpu" in compiled_backends():
        cases += [("cpu", 2, "cython"), ("cpu", 0, "oracle")]
    for backend, B, made_by in cases:
        with fl.use_backend(backend):
            kw = make_problem(rng, np.float32, 3, B, 2, 4, {})
            y, h, c, cache = ops.lstm_forward(training=True, **kw)
            assert (cache.backend, cache.made_by) == (backend, made_by), B
            g = ops.lstm_backward(cache, y)
            assert g.inputs.shape == (3, B, 2)


def test_cache_serves_one_backward():
    rng = np.random.default_rng(0)
    kw = make_problem(rng, np.float32, 3, 2, 2, 4, {})
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, c, cache = ops.lstm_forward(training=True, **kw)
            ops.lstm_backward(cache, y)
            with pytest.raises(RuntimeError, match="already"):
                ops.lstm_backward(cache, y)


# -- bad input --------------------------------------------------------------------------

def _good(dtype=np.float32):
    return make_problem(np.random.default_rng(0), dtype, 3, 2, 4, 5, {})


@pytest.mark.parametrize("arg, value, exc, words", [
    ("x", np.zeros((3, 2)), ValueError, "x: expected a 3-D"),
    ("x", np.zeros((0, 2, 4)), ValueError, "at least one timestep"),
    ("x", np.zeros((3, 2, 5)), ValueError, "kernel: expected shape (5, 20), got (4, 20)"),
    ("x", np.full((3, 2, 4), "a"), TypeError, "x: expected a real numeric array"),
    ("kernel", np.zeros((4, 19), np.float32), ValueError, "kernel: expected shape (4, 20), got (4, 19)"),
    ("recurrent_kernel", np.zeros((5, 5), np.float32), ValueError, "recurrent_kernel"),
    ("bias", np.zeros(19), ValueError, "bias: expected shape (20)"),
    ("h0", np.zeros((2, 4)), ValueError, "h0: expected shape (2, 5), got (2, 4)"),
    ("c0", np.zeros((3, 5)), ValueError, "c0: expected shape (2, 5)"),
    ("peephole", np.zeros((2, 5)), ValueError, "peephole: expected shape (3, 5)"),
    ("mask", np.ones((2, 3), bool), ValueError, "mask: expected shape (3, 2)"),
    ("mask", np.ones((3, 2), np.float32), TypeError, "mask: expected a boolean"),
    ("recurrent_dropout_mask", np.ones((2, 4)), ValueError, "recurrent_dropout_mask"),
    ("input_dropout_mask", np.ones((2, 5)), ValueError, "input_dropout_mask"),
    ("activation", "swish", ValueError, "activation: unknown activation 'swish'"),
    ("recurrent_activation", 3, TypeError, "recurrent_activation"),
    ("kernel", np.zeros((4, 20), np.int32), TypeError, "kernel: expected float32 or float64"),
    ("x", np.array([["a"]]), ValueError, "x: expected a 3-D"),
    ("x", [[[1.0]], [[1.0, 2.0]]], ValueError, "x: expected a 3-D"),     # ragged
    ("go_backwards", "False", TypeError, "go_backwards: expected True or False"),
    ("return_sequences", 2, TypeError, "return_sequences: expected True or False"),
    ("coupled_input_forget", "yes", TypeError, "coupled_input_forget: expected True or False"),
])
def test_bad_input_names_the_argument(arg, value, exc, words):
    kw = _good()
    kw[arg] = value
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            with pytest.raises(exc) as info:
                ops.lstm_forward(**kw)
        assert words in str(info.value)


def test_bad_output_gradient_shape():
    y, h, c, cache = ops.lstm_forward(training=True, **_good())
    with pytest.raises(ValueError, match=r"dy: expected shape \(3, 2, 5\)"):
        ops.lstm_backward(cache, np.zeros((2, 3, 5)))
    with pytest.raises(TypeError, match="cache"):
        ops.lstm_backward("not a cache")


def test_layouts_and_dtypes_give_the_same_answer():
    """Fortran-ordered, strided and float64-into-float32 inputs match contiguous ones."""
    kw = _good()
    ref = ops.lstm_forward(**kw)[0]
    big = np.zeros((6, 2, 8), np.float32)
    big[::2, :, ::2] = kw["x"]
    for x in (np.asfortranarray(kw["x"]), big[::2, :, ::2], kw["x"].astype(np.float64)):
        out = ops.lstm_forward(**{**kw, "x": x})[0]
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, ref)
    out = ops.lstm_forward(**{**kw, "recurrent_kernel": np.asfortranarray(kw["recurrent_kernel"])})[0]
    np.testing.assert_array_equal(out, ref)


def test_nan_input_propagates_without_crashing():
    kw = _good()
    kw["x"] = kw["x"].copy()
    kw["x"][1, 0, 2] = np.nan
    kw["x"][2, 1, 0] = np.inf
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, c, cache = ops.lstm_forward(training=True, **kw)
            ops.lstm_backward(cache, np.ones_like(y))
        assert np.isnan(y[1:, 0]).any()
        assert np.isfinite(y[0]).all()


@pytest.mark.parametrize("policy", ["blas", "own"])
@pytest.mark.parametrize("B", [1, 5, 16])
def test_both_recurrent_product_paths_match_oracle(policy, B):
    """The per-step product runs on our register-blocked kernel or on BLAS; both are exact.
    One row over 32 steps or more takes U^T packed in backward."""
    from fastlstm import _lstm
    _lstm.set_recurrent_matmul(policy)
    T = 40 if B == 1 else 4
    try:
        rng = np.random.default_rng(B)
        for dtype in DTYPES:
            kw = make_problem(rng, dtype, T, B, 7, 37, dict(peephole=True, mask="gaps",
                                                            recurrent_dropout_mask=True))
            grads = output_grads(rng, dtype, T, B, 37, True)
            compare_backend("cpu", kw, grads, np.dtype(dtype))
    finally:
        _lstm.set_recurrent_matmul("auto")


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("M, K, N", [(1, 1, 1), (1, 128, 512), (1, 13, 37), (1, 8, 16),
                                     (1, 21, 130), (4, 3, 64), (5, 17, 130), (9, 5, 200),
                                     (7, 6, 72), (600, 9, 70),
                                     (16, 128, 512), (3, 64, 37),
                                     # one row a pass (rows from 1 KiB), with each tail
                                     (1, 9, 300), (1, 3, 272), (1, 5, 256), (1, 2, 255)])
def test_matmul_kernel_every_isa(level, M, K, N):
    from fastlstm import _gates
    rng = np.random.default_rng(M * 1000 + N)
    _gates.force_isa_level(level)
    try:
        for dtype in DTYPES:
            a = rng.standard_normal((M, K)).astype(dtype)
            w = rng.standard_normal((K, N)).astype(dtype)
            c0 = rng.standard_normal((M, N)).astype(dtype)
            c = c0.copy()
            _gates.matmul_accumulate(a, w, c)
            assert_close(c, c0 + a.astype(np.float64) @ w.astype(np.float64), dtype)
            c = c0.copy()
            _gates.matmul_packed_accumulate(a, w, c)       # over column panels of w
            assert_close(c, c0 + a.astype(np.float64) @ w.astype(np.float64), dtype, "packed")
    finally:
        _gates.force_isa_level(-1)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("opt_name", ["everything", "everything_cifg_last", "plain"])
def test_threaded_time_loop_matches_oracle(threads, opt_name):
    """Batch rows are split across threads for the whole sequence; uneven splits too."""
    from fastlstm import _lstm
    before, min_macs = _lstm.get_threads(), _lstm.get_parallel_min_macs()
    _lstm.set_threads(threads, 0)            # split even these small problems
    try:
        rng = np.random.default_rng(seed_of(threads, opt_name))
        for dtype in DTYPES:
            kw = make_problem(rng, dtype, 6, 13, 5, 9, OPTION_SETS[opt_name])
            grads = output_grads(rng, dtype, 6, 13, 9, kw["return_sequences"])
            compare_backend("cpu", kw, grads, np.dtype(dtype))
    finally:
        _lstm.set_threads(before, min_macs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("opt_name", ["plain", "everything", "everything_cifg_last", "mask_gaps",
                                      "last_output", "go_backwards"])
def test_projection_in_time_chunks_equals_one_pass(opt_name, threads):
    """Inference projects the input a few steps at a time, just before those steps run,
    reusing one chunk's buffer (with two threads, each running 4-5 batch rows); the results
    are the same, bit for bit, as in one pass, and training (one pass: chunks measured slower
    there) is unaffected by the setting."""
    from fastlstm import _lstm
    before, min_macs = _lstm.get_threads(), _lstm.get_parallel_min_macs()
    rng = np.random.default_rng(seed_of("chunks", opt_name))
    B = 9
    _lstm.set_threads(threads, 0)
    try:
        for dtype in DTYPES:
            kw = make_problem(rng, dtype, 11, B, 5, 7, OPTION_SETS[opt_name])
            grads = output_grads(rng, dtype, 11, B, 7, kw["return_sequences"])
            ref_train, ref_inf, ref_g = run("cpu", kw, grads)
            _lstm.set_inference_chunk_bytes(3 * B * 28 * np.dtype(dtype).itemsize, 1)  # 3 steps
            try:
                got_train, got_inf, got_g = run("cpu", kw, grads)
            finally:
                _lstm.set_inference_chunk_bytes(2 << 20, 512)
            check_chunked(dtype, kw, grads, ref_train, ref_inf, ref_g, got_train, got_inf, got_g)
    finally:
        _lstm.set_threads(before, min_macs)


def check_chunked(dtype, kw, grads, ref_train, ref_inf, ref_g, got_train, got_inf, got_g):
    """Chunked results equal the one-pass ones bit for bit, and the oracle's within tolerance."""
    for a, b in zip(got_train + got_inf, ref_train + ref_inf):
        np.testing.assert_array_equal(a, b)
    for f in GRAD_FIELDS:
        a, b = getattr(got_g, f), getattr(ref_g, f)
        assert (a is None) == (b is None), f
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=f)
    _, oracle_inf, oracle_g = run("numpy", kw, grads)
    for a, b in zip(got_inf, oracle_inf):
        assert_close(a, b, dtype, "inference")
    assert_close(got_g.kernel, oracle_g.kernel, dtype, "dkernel")


def test_inference_memory_does_not_grow_with_sequence_length():
    import tracemalloc
    rng = np.random.default_rng(0)
    B, I, H = 8, 16, 64
    kw = make_problem(rng, np.float32, 2, B, I, H, {})
    peaks = {}
    for T in (500, 8000):
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        tracemalloc.start()
        ops.lstm_forward(**{**kw, "x": x, "return_sequences": False})
        peaks[T] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    z_bytes = 8000 * B * 4 * H * 4                    # what a full projection would take
    assert peaks[8000] < z_bytes / 4
    assert peaks[8000] < 2 * peaks[500] + (1 << 20)


def test_threads_calling_at_once_get_their_own_workspace():
    """The kernels keep their internal buffers per calling thread between calls (the chunk
    of gates, the packed kernels): Python threads running sequences of one shape at once
    (the same buffer sizes) each get their own results, and so do other shapes and dtypes."""
    import threading
    rng = np.random.default_rng(seed_of("workspace threads"))
    shapes = [(np.float32, 80, 16, 48)] * 4 + [(np.float64, 25, 8, 40), (np.float32, 7, 33, 64)]
    problems = [make_problem(rng, dtype, T, B, 9, H, OPTION_SETS["plain"])
                for dtype, T, B, H in shapes]
    refs = [ops.lstm_forward(**kw)[0] for kw in problems]
    failures = []

    def worker(i):
        for _ in range(40):
            got = ops.lstm_forward(**problems[i])[0]
            if not np.array_equal(got, refs[i]):
                failures.append(i)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
