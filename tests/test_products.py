"""The per-step products of every cell run on our register-blocked kernel or on BLAS
(chosen by weight size); both paths must agree with the oracle, forward and backward."""
import importlib

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import ops

from conftest import DTYPES, assert_close, seed_of


def _modules():
    from fastlstm import _gru, _lstm, _simple_rnn
    return [_lstm, _gru, _simple_rnn]


def _problem(cell, rng, dtype, T, B, I, H, reset_after=True):
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell] * H
    x = rng.standard_normal((T, B, I)).astype(dtype)
    W = (rng.standard_normal((I, G)) / np.sqrt(I)).astype(dtype)
    U = (rng.standard_normal((H, G)) / np.sqrt(H)).astype(dtype)
    bshape = (2, G) if (cell == "gru" and reset_after) else (G,)
    b = rng.standard_normal(bshape).astype(dtype) * 0.3
    kw = dict(mask=rng.random((T, B)) > 0.3, go_backwards=True,
              recurrent_dropout_mask=((rng.random((B, H)) > 0.3) / 0.7).astype(dtype),
              h0=rng.standard_normal((B, H)).astype(dtype))
    if cell == "gru":
        kw["reset_after"] = reset_after
    return (x, W, U, b), kw


def _run(cell, backend, args, kw, dy):
    fwd = getattr(ops, f"{cell}_forward")
    bwd = getattr(ops, f"{cell}_backward")
    with fl.use_backend(backend):
        out = fwd(*args, training=True, **kw)
        g = bwd(out[-1], dy)
    return out[0], g


GRAD_FIELDS = ("inputs", "h0", "kernel", "recurrent_kernel", "bias")


def _assert_cpu_matches_oracle(cell, args, kw, dy, dtype, fields=GRAD_FIELDS):
    """The compiled kernels' output and gradients against the NumPy oracle's."""
    y, g = _run(cell, "cpu", args, kw, dy)
    ry, rg = _run(cell, "numpy", args, kw, dy)
    assert_close(y, ry, dtype, "y")
    for f in fields:
        assert_close(getattr(g, f), getattr(rg, f), dtype, f)


@pytest.mark.parametrize("policy", ["blas", "own"])
@pytest.mark.parametrize("cell, reset_after", [("lstm", True), ("gru", True), ("gru", False),
                                               ("simple_rnn", True)])
@pytest.mark.parametrize("B", [1, 6])
@pytest.mark.parametrize("T", [5, 40])     # 40 steps: weights packed at one row too
def test_product_paths_match_oracle(policy, cell, reset_after, B, T):
    for m in _modules():
        m.set_recurrent_matmul(policy)
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of(policy, cell, reset_after, B))
            args, kw = _problem(cell, rng, dtype, T, B, 7, 19, reset_after)
            dy = rng.standard_normal((T, B, 19)).astype(dtype)
            _assert_cpu_matches_oracle(cell, args, kw, dy, dtype)
    finally:
        for m in _modules():
            m.set_recurrent_matmul("auto")


@pytest.mark.parametrize("rows", [0, 1 << 30], ids=["w_packed", "w_in_place"])
@pytest.mark.parametrize("cell, reset_after", [("lstm", True), ("gru", True), ("gru", False),
                                               ("simple_rnn", True)])
@pytest.mark.parametrize("B, T", [(1, 5), (3, 13)])
def test_input_projection_with_w_packed_or_read_in_place_matches_oracle(rows, cell,
                                                                        reset_after, B, T):
    """An input projection of fewer than set_direct_rows rows reads W in place on our kernel
    instead of packing it: both ways against the oracle, with masks, recurrent dropout and
    go_backwards, forward and backward."""
    try:
        for m in _modules():
            m.set_direct_rows(rows)
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("direct", rows, cell, reset_after, B, T,
                                                np.dtype(dtype).name))
            args, kw = _problem(cell, rng, dtype, T, B, 5, 6, reset_after)
            dy = rng.standard_normal((T, B, 6)).astype(dtype)
            _assert_cpu_matches_oracle(cell, args, kw, dy, dtype)
    finally:
        for m in _modules():
            m.set_direct_rows(32)


def test_bad_policy_name():
    from fastlstm import _lstm
    with pytest.raises(ValueError, match="which: expected 'auto', 'blas' or 'own'"):
        _lstm.set_recurrent_matmul("fast")


@pytest.mark.parametrize("on_blas", [False, True])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_projection_paths_match_oracle(on_blas, reset_after, use_bias):
    """The GRU's gradient products run on BLAS or on our packed GEMM (chosen at import from
    the BLAS's core type), its input projection on our kernel over packed weights either
    way; both are exact, with and without bias."""
    from fastlstm import _gru
    _gru.set_projection_blas(on_blas)
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("gru-projection", on_blas, reset_after))
            args, kw = _problem("gru", rng, dtype, 8, 5, 9, 70, reset_after)   # 40 rows: packed
            if not use_bias:
                args = args[:3] + (None,)
            dy = rng.standard_normal((8, 5, 70)).astype(dtype)
            _assert_cpu_matches_oracle("gru", args, kw, dy, dtype,
                                       fields=("inputs", "h0", "kernel", "recurrent_kernel"))
    finally:
        from fastlstm.threads import init_threads
        init_threads()


@pytest.mark.parametrize("on_blas", [False, True])
def test_lstm_projection_paths_match_oracle(on_blas):
    """The LSTM's input and weight gradients run on BLAS or on our packed GEMM (chosen at
    import from the BLAS's core type); both are exact."""
    from fastlstm import _lstm
    _lstm.set_projection_blas(on_blas)
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("projection", on_blas))
            args, kw = _problem("lstm", rng, dtype, 7, 5, 9, 11)    # 35 rows: packed weights
            dy = rng.standard_normal((7, 5, 11)).astype(dtype)
            _assert_cpu_matches_oracle("lstm", args, kw, dy, dtype)
    finally:
        from fastlstm.threads import init_threads
        init_threads()


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_threaded_loops_match_oracle(threads, reset_after):
    """GRU rows split over threads for the whole sequence, products split in slices."""
    from fastlstm import _gru
    min_macs = _gru.get_parallel_min_macs()
    _gru.set_threads(threads, 0)                 # split even this small problem
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("gru-threads", threads, reset_after))
            args, kw = _problem("gru", rng, dtype, 6, 13, 9, 11, reset_after)
            dy = rng.standard_normal((6, 13, 11)).astype(dtype)
            _assert_cpu_matches_oracle("gru", args, kw, dy, dtype)
    finally:
        _gru.set_threads(fl.get_num_threads(), min_macs)


@pytest.mark.parametrize("policy", ["auto", "own", "blas"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("on_blas", [False, True])
@pytest.mark.parametrize("cell, reset_after", [("gru", True), ("gru", False),
                                               ("simple_rnn", True)])
def test_threads_and_product_paths_match_oracle(cell, reset_after, policy, threads, on_blas):
    """The GRU and the SimpleRNN run the LSTM's machinery: batch rows over threads for the
    whole sequence (19 rows: 9-10 per thread of 230 units, past use_packed's threshold, so U
    and U^T packed for the packed GEMM; the GRU's [z r] and h blocks apart), the input
    projection on the packed GEMM (or BLAS under 'blas') split by rows, the gradients' many-
    row products on it or on BLAS (on_blas); with masks, recurrent dropout and go_backwards,
    then without them and without bias."""
    from fastlstm.threads import init_threads
    mod = importlib.import_module(f"fastlstm._{cell}")
    mod.set_recurrent_matmul(policy)
    mod.set_projection_blas(on_blas)
    min_macs = mod.get_parallel_min_macs()
    mod.set_threads(threads, 0)                  # split even these small products
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("paths", cell, reset_after, policy, threads,
                                                on_blas))
            args, kw = _problem(cell, rng, dtype, 7, 19, 70, 230, reset_after)
            dy = rng.standard_normal((7, 19, 230)).astype(dtype)
            _assert_cpu_matches_oracle(cell, args, kw, dy, dtype)
            plain = dict(h0=kw["h0"], **({"reset_after": reset_after} if cell == "gru" else {}))
            _assert_cpu_matches_oracle(cell, args[:3] + (None,), plain, dy, dtype,
                                       fields=GRAD_FIELDS[:4])
    finally:
        mod.set_recurrent_matmul("auto")
        mod.set_threads(fl.get_num_threads(), min_macs)
        init_threads()


class _ThreadsGrowDuringCall:
    """Stands in for a module's numpy: every np.empty (made while the kernel prepares its
    buffers, where it may release the GIL) raises the thread count first, as a
    set_num_threads of another Python thread would meanwhile."""

    def __init__(self, mod):
        self.mod, self.threads = mod, 1
        self.mod.set_threads(1, 0)

    def empty(self, *a, **k):
        self.threads = min(self.threads + 3, 16)
        self.mod.set_threads(self.threads, 0)
        return np.empty(*a, **k)

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.parametrize("cell, reset_after", [("lstm", True), ("gru", True), ("gru", False),
                                               ("simple_rnn", True)])
def test_thread_count_changed_during_a_call(monkeypatch, cell, reset_after):
    """A kernel fixes its threads once per call: buffers sized for the count it read first
    must serve the loops that run. The backward pass sized its scratch for 1-4 threads and
    then ran 16 over these 64 batch rows (heap corruption: "free(): invalid size")."""
    from fastlstm.threads import init_threads
    mod = importlib.import_module(f"fastlstm._{cell}")
    min_macs = mod.get_parallel_min_macs()
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("grow", cell, reset_after))
            args, kw = _problem(cell, rng, dtype, 3, 64, 8, 256, reset_after)
            dy = rng.standard_normal((3, 64, 256)).astype(dtype)
            ry, rg = _run(cell, "numpy", args, kw, dy)
            for phase in ("forward", "backward"):
                mod.set_threads(1, 0)
                with fl.use_backend("cpu"):
                    if phase == "forward":
                        monkeypatch.setattr(mod, "np", _ThreadsGrowDuringCall(mod))
                    out = getattr(ops, f"{cell}_forward")(*args, training=True, **kw)
                    if phase == "backward":
                        monkeypatch.setattr(mod, "np", _ThreadsGrowDuringCall(mod))
                    g = getattr(ops, f"{cell}_backward")(out[-1], dy)
                monkeypatch.undo()
                assert_close(out[0], ry, dtype, "y")
                for f in GRAD_FIELDS:
                    assert_close(getattr(g, f), getattr(rg, f), dtype, f)
    finally:
        monkeypatch.undo()
        mod.set_threads(fl.get_num_threads(), min_macs)
        init_threads()


def _lstm_case(rng, dtype, T, B, I, H, coupled, peep, gob, rs, masked):
    """Arguments of an LSTM forward with the given options (inference)."""
    G = (3 if coupled else 4) * H
    args = (rng.standard_normal((T, B, I)).astype(dtype),
            (rng.standard_normal((I, G)) / 3).astype(dtype),
            (rng.standard_normal((H, G)) / np.sqrt(H)).astype(dtype),
            (rng.standard_normal(G) * 0.3).astype(dtype))
    mask = rng.random((T, B)) > 0.4
    mask[0] = True
    kw = dict(peephole=(rng.standard_normal((3, H)) * 0.3).astype(dtype) if peep else None,
              mask=mask if masked else None, coupled_input_forget=coupled, go_backwards=gob,
              return_sequences=rs, h0=rng.standard_normal((B, H)).astype(dtype),
              c0=rng.standard_normal((B, H)).astype(dtype))
    return args, kw


def _lstm_run(args, kw, dy, training):
    """(y, h, c) of an LSTM forward, and with training every gradient of a backward."""
    out = ops.lstm_forward(*args, training=training, **kw)
    if not training:
        return list(out[:3])
    g = ops.lstm_backward(out[-1], dy if kw["return_sequences"] else dy[-1])
    return list(out[:3]) + [getattr(g, f) for f in GRAD_FIELDS + ("c0", "peephole")
                            if getattr(g, f) is not None]


def _assert_variant_matches(args, kw, dtype, on, off, training=False):
    """An LSTM forward (and with training, its backward) with a kernel variant switched on:
    the same bits as with it off, and the oracle's values."""
    dy = np.random.default_rng(1).standard_normal(
        (args[0].shape[0], args[0].shape[1], args[2].shape[0])).astype(dtype)
    with fl.use_backend("cpu"):
        on()
        got = _lstm_run(args, kw, dy, training)
        off()
        plain = _lstm_run(args, kw, dy, training)
    with fl.use_backend("numpy"):
        ref = _lstm_run(args, kw, dy, training)
    assert len(got) == len(ref)
    for k, (a, b, c) in enumerate(zip(got, plain, ref)):
        np.testing.assert_array_equal(a, b, err_msg=str(k))
        assert_close(a, c, dtype, str(k))


LSTM_OPTIONS = [(False, False, False, True, False), (True, True, True, True, True),
                (False, True, False, False, True), (False, False, True, False, False)]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("H", [64, 128, 192])
def test_one_row_inference_split_over_units_matches_oracle(threads, H):
    """One-row LSTM inference with the units split over the threads (each packs its share of
    U, one barrier per step; here from any size, in whole panels: 64 units a float32 panel,
    32 a float64 one), for every option, against the oracle; several inference chunks, and
    outputs the same to the bit as on one thread (which reads U in the same panels from 32
    steps on)."""
    from fastlstm import _lstm
    from fastlstm.threads import init_threads
    min_macs = _lstm.get_parallel_min_macs()
    _lstm.set_threads(threads, 0)
    _lstm.set_pipeline(16, -1)
    _lstm.set_inference_chunk_bytes(1, 3)                    # chunks of 3 steps
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("cols", threads, H, np.dtype(dtype).name))
            for options in LSTM_OPTIONS:
                args, kw = _lstm_case(rng, dtype, 33, 1, 5, H, *options)
                _assert_variant_matches(args, kw, dtype, lambda: _lstm.set_cols_min_bytes(0),
                                        lambda: _lstm.set_cols_min_bytes(1 << 40))
    finally:
        _lstm.set_cols_min_bytes(512 << 10)
        _lstm.set_pipeline(16, 1 << 20)
        _lstm.set_inference_chunk_bytes(2 << 20, 512)
        _lstm.set_threads(fl.get_num_threads(), min_macs)
        init_threads()


@pytest.mark.parametrize("B", [1, 3])
def test_few_row_inference_with_the_projection_beside_matches_oracle(B):
    """A forward pass of a few rows (one thread's time loop) with the input projection run
    beside it on a second thread, 4 steps at a time: every option against the oracle, at
    inference in one and in several chunks, in training with every gradient of the backward
    pass (resuming the cell state saved before each block), and the same bits as projecting
    first."""
    from fastlstm import _lstm
    from fastlstm.threads import init_threads
    min_macs = _lstm.get_parallel_min_macs()
    _lstm.set_threads(2, 0)
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("pipe", B, np.dtype(dtype).name))
            for chunk_rows, options in zip([512, 7, 7, 512, 5], LSTM_OPTIONS + LSTM_OPTIONS[1:2]):
                _lstm.set_inference_chunk_bytes(1, chunk_rows)
                args, kw = _lstm_case(rng, dtype, 30, B, 6, 24, *options)
                for training in (False, True):
                    _assert_variant_matches(args, kw, dtype, lambda: _lstm.set_pipeline(4, 0),
                                            lambda: _lstm.set_pipeline(4, -1), training)
    finally:
        _lstm.set_pipeline(16, 1 << 20)
        _lstm.set_inference_chunk_bytes(2 << 20, 512)
        _lstm.set_threads(fl.get_num_threads(), min_macs)
        init_threads()


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("B", [1, 3])
def test_few_row_gru_with_the_projection_beside_matches_oracle(B, reset_after):
    """GRU forward passes of a few rows with the input projection run beside the loop, 4
    steps at a time: with masks, both dropouts and go_backwards and without, at inference and
    in training with every gradient; the same bits as projecting first, and the oracle's
    values."""
    from fastlstm import _gru
    from fastlstm.threads import init_threads
    min_macs = _gru.get_parallel_min_macs()
    _gru.set_threads(2, 0)
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("gru pipe", B, reset_after, np.dtype(dtype).name))
            args, full = _problem("gru", rng, dtype, 30, B, 6, 24, reset_after)
            full["input_dropout_mask"] = ((rng.random((B, 6)) > 0.3) / 0.7).astype(dtype)
            plain = dict(h0=full["h0"], reset_after=reset_after)
            dy = rng.standard_normal((30, B, 24)).astype(dtype)
            for kw in (full, plain):
                res = {}
                for name, backend, steps, macs in (("on", "cpu", 4, 0), ("off", "cpu", 4, -1),
                                                   ("ref", "numpy", 4, -1)):
                    _gru.set_pipeline(steps, macs)
                    with fl.use_backend(backend):
                        inference = ops.gru_forward(*args, **kw)[:2]
                    res[name] = list(inference) + list(_run("gru", backend, args, kw, dy))
                for k, (a, b, c) in enumerate(zip(res["on"], res["off"], res["ref"])):
                    if k == 3:                                     # the gradients
                        a, b, c = ([getattr(g, f) for f in GRAD_FIELDS] for g in (a, b, c))
                    else:
                        a, b, c = [a], [b], [c]
                    for aa, bb, cc in zip(a, b, c):
                        np.testing.assert_array_equal(aa, bb, err_msg=str(k))
                        assert_close(aa, cc, dtype, str(k))
    finally:
        _gru.set_pipeline(16, 1 << 20)
        _gru.set_threads(fl.get_num_threads(), min_macs)
        init_threads()


def test_one_row_split_and_pipeline_with_fewer_threads_than_asked():
    """A team smaller than asked (OMP_THREAD_LIMIT=1 here) runs the split loop on the
    threads it has (the shares and their work space follow the team's size), and the
    pipelined projection on its one thread, projecting first."""
    import subprocess
    import sys
    code = (
        "import numpy as np, fastlstm as fl\n"
        "from fastlstm import ops, _lstm\n"
        "_lstm.set_threads(2, 0); _lstm.set_cols_min_bytes(0)\n"
        "r = np.random.default_rng(0)\n"
        "x, W = r.standard_normal((6, 1, 3)), r.standard_normal((3, 512)) / 3\n"
        "U = r.standard_normal((128, 512)) / 12\n"
        "y = ops.lstm_forward(x.astype('f4'), W.astype('f4'), U.astype('f4'))[0]\n"
        "with fl.use_backend('numpy'):\n"
        "    ry = ops.lstm_forward(x.astype('f4'), W.astype('f4'), U.astype('f4'))[0]\n"
        "assert np.abs(y - ry).max() < 1e-5, np.abs(y - ry).max()\n"
        "_lstm.set_cols_min_bytes(1 << 40); _lstm.set_pipeline(4, 0)\n"
        "x = r.standard_normal((40, 2, 3)).astype('f4')\n"
        "y = ops.lstm_forward(x, W.astype('f4'), U.astype('f4'), go_backwards=True)[0]\n"
        "with fl.use_backend('numpy'):\n"
        "    ry = ops.lstm_forward(x, W.astype('f4'), U.astype('f4'), go_backwards=True)[0]\n"
        "assert np.abs(y - ry).max() < 1e-5, np.abs(y - ry).max()\n"
        "from fastlstm import _gru\n"
        "_gru.set_threads(2, 0); _gru.set_pipeline(4, 0)\n"
        "Wg, Ug = W[:, :384].astype('f4'), U[:, :384].astype('f4')\n"
        "y = ops.gru_forward(x, Wg, Ug, go_backwards=True)[0]\n"
        "with fl.use_backend('numpy'):\n"
        "    ry = ops.gru_forward(x, Wg, Ug, go_backwards=True)[0]\n"
        "assert np.abs(y - ry).max() < 1e-5, np.abs(y - ry).max()\n"
        "print('ok')\n")
    import os
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# The packed GEMM of the many-row products: sizes around its register tile (6 rows, 64 or
# 32 columns), its blocks (256 deep, 512 or 256 wide), degenerate sizes and strided views.
GEMM_SHAPES = [(1, 1, 1), (1, 70, 5), (6, 64, 1), (7, 65, 3), (5, 33, 257), (13, 100, 300),
               (37, 600, 70), (12, 530, 513), (8, 130, 40), (15, 66, 600)]


@pytest.fixture(params=[0, 1, 2], ids=["baseline", "avx2", "avx512"])
def isa_level(request):
    from fastlstm import _gates
    _gates.force_isa_level(request.param)       # capped at what the CPU has
    yield request.param
    _gates.force_isa_level(-1)


@pytest.mark.parametrize("mode, overwrite", [(m, o) for m in ("plain", "trans_a", "packed")
                                              for o in (False, True)] + [("packed_bias", True)])
@pytest.mark.parametrize("shape", GEMM_SHAPES + [(9, 70, 1100), (4, 3, 0)])
def test_packed_gemm_matches_numpy(isa_level, mode, shape, overwrite):
    """C += op(A) B, or with overwrite C = op(A) B (+ bias): the overwriting forms (input
    projection with its bias, gradients) never read C, which starts as NaN for them."""
    from fastlstm import _gates
    M, N, K = shape
    for dtype in DTYPES:
        rng = np.random.default_rng(seed_of("gemm", mode, overwrite, *shape))
        trans = mode == "trans_a"
        # views into wider arrays: every leading dimension exceeds its row length
        a_full = rng.standard_normal((K, M + 3) if trans else (M, K + 3)).astype(dtype)
        b_full = rng.standard_normal((K, N + 5)).astype(dtype)
        c_full = rng.standard_normal((M, N + 2)).astype(dtype)
        a = a_full[:, 1:M + 1] if trans else a_full[:, 1:K + 1]
        b, c = b_full[:, 2:N + 2], c_full[:, :N]
        ref = (a.T if trans else a).astype(np.float64) @ b
        if overwrite:
            c[...] = np.nan
        else:
            ref = ref + c
        bias = rng.standard_normal(N).astype(dtype) if mode == "packed_bias" else None
        if bias is not None:
            ref = ref + bias
        before = c_full.copy()
        _gates.gemm_accumulate(a, b, c, trans_a=trans, packed=mode.startswith("packed"),
                               overwrite=overwrite, bias=bias)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(c, ref, rtol=tol, atol=tol * np.sqrt(max(K, 1)) * 4)
        np.testing.assert_array_equal(c_full[:, N:], before[:, N:])   # padding untouched


@pytest.mark.parametrize("transposed", [False, True])
def test_packing_split_over_threads_is_the_same(transposed):
    """From 2^18 elements the panels are packed by several threads (uneven shares of 9 and
    17 panels, the last one partial); the packed kernel, and so every product, is the same
    bit for bit."""
    from fastlstm import _gates
    for dtype in DTYPES:
        for K, N in ((600, 1100), (257, 1045)):
            rng = np.random.default_rng(seed_of("pack_threads", transposed, K, N))
            b_full = rng.standard_normal((K, N + 3)).astype(dtype)
            b = b_full[:, 1:N + 1]
            w = np.ascontiguousarray(b.T) if transposed else None
            a = rng.standard_normal((5, K)).astype(dtype)
            out = []
            for threads in (1, 2, 3):
                c = np.zeros((5, N), dtype)
                _gates.gemm_accumulate(a, b, c, packed=True, b_t=w, pack_threads=threads)
                out.append(c)
            np.testing.assert_array_equal(out[1], out[0])
            np.testing.assert_array_equal(out[2], out[0])
            np.testing.assert_allclose(out[0], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape", GEMM_SHAPES + [(9, 70, 1100), (3, 130, 65)])
def test_packing_a_transposed_weight(isa_level, shape):
    """W^T packed straight from W (the gradients' transposed kernels) equals packing a
    transposed copy: same products, bit for bit."""
    from fastlstm import _gates
    M, N, K = shape
    for dtype in DTYPES:
        rng = np.random.default_rng(seed_of("pack_t", *shape))
        a = rng.standard_normal((M, K)).astype(dtype)
        w_full = rng.standard_normal((N, K + 3)).astype(dtype)     # b = w^T, strided rows
        w = w_full[:, 1:K + 1]
        b = np.ascontiguousarray(w.T)
        c1 = rng.standard_normal((M, N)).astype(dtype)
        c2 = c1.copy()
        _gates.gemm_accumulate(a, b, c1, packed=True)
        _gates.gemm_accumulate(a, b, c2, packed=True, b_t=w)
        np.testing.assert_array_equal(c2, c1)


def test_packed_gemm_empty_and_bad_shapes():
    from fastlstm import _gates
    c = np.ones((3, 0), np.float32)
    _gates.gemm_accumulate(np.ones((3, 4), np.float32), np.ones((4, 0), np.float32), c)
    c = np.ones((3, 2), np.float32)
    _gates.gemm_accumulate(np.ones((3, 0), np.float32), np.ones((0, 2), np.float32), c)
    np.testing.assert_array_equal(c, 1)
    with pytest.raises(ValueError):
        _gates.gemm_accumulate(np.ones((3, 4)), np.ones((5, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError):
        _gates.gemm_accumulate(np.ones((4, 3)), np.ones((4, 2)), np.ones((3, 2)),
                               trans_a=True, packed=True)


@pytest.mark.parametrize("policy", ["auto", "own", "blas"])
@pytest.mark.parametrize("threads", [1, 2])
def test_lstm_packed_products_match_oracle(policy, threads):
    """Sizes where the LSTM runs its many-row products and both per-step products on the
    packed GEMM (auto: with the recurrent kernel packed once per call), split over threads
    or not, against the oracle and against the BLAS path."""
    from fastlstm import _lstm
    from fastlstm.threads import init_threads
    _lstm.set_recurrent_matmul(policy)
    _lstm.set_projection_blas(False)
    min_macs = _lstm.get_parallel_min_macs()
    _lstm.set_threads(threads, 0)
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("lstm-packed", policy, threads))
            # 19 rows in 2 threads of 9-10 rows x 230 units: past use_packed's threshold;
            # 7 * 19 rows: the many-row products split over 2 threads too
            args, kw = _problem("lstm", rng, dtype, 7, 19, 70, 230)
            dy = rng.standard_normal((7, 19, 230)).astype(dtype)
            _assert_cpu_matches_oracle("lstm", args, kw, dy, dtype)
    finally:
        _lstm.set_recurrent_matmul("auto")
        _lstm.set_threads(fl.get_num_threads(), min_macs)
        init_threads()
