"""Layer-normalized cells in the functional ops, without PyTorch (so the sanitizer job runs
them too): the oracle's BPTT by finite differences in float64 with every option at once,
the ``cpu`` backend's compiled kernels against the oracle for every option, both dtypes,
batch sizes, threads, ISA variants and the packed loop, and the ops' argument checks."""
import itertools

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _lstm
from conftest import DTYPES, central_differences, seed_of
from layer_norm_cases import (CELLS, assert_close, output_weights, problem, run_op,
                              split_case)


# -- finite differences, float64, every option at once ---------------------------------

FD_CASES = {
    "gaps_backwards_dropout_zoneout": dict(mask="gaps", go_backwards=True, dropout=True,
                                           zoneout="train"),
    "lengths_dropout_zoneout": dict(mask="lengths", dropout=True, zoneout="train"),
    "prefix_last_softsign": dict(mask="prefix", return_sequences=False,
                                 activation="softsign", go_backwards=True),
}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", list(FD_CASES))
def test_oracle_gradients_by_finite_differences(cell, case):
    opts_kw, flags = split_case(FD_CASES[case])
    seed = seed_of(cell, case, "ln-fd")
    T, B, I, H = 5, 3, 2, 4
    p, opts = problem(cell, np.float64, T, B, I, H, seed, **opts_kw)
    w = output_weights(cell, seed, T, B, H, flags.get("return_sequences", True))

    def loss():
        with fl.use_backend("numpy"):
            outs, _ = run_op(cell, p, opts, training=False if "zoneout_mask" not in opts
                             else True, **flags)
        return sum(float(np.sum(a * wi)) for a, wi in zip(outs, w))

    with fl.use_backend("numpy"):
        _, grads = run_op(cell, p, opts, training=True, grads=w, **flags)
    for name, g in grads.items():
        for idx, num in central_differences(loss, p[name], 12):
            assert abs(num - g[idx]) < 1e-6 * (1 + abs(num)), (name, idx, num, g[idx])


def test_oracle_definition_with_unit_weights():
    """gamma = 1, gamma_h = 1, beta_h = 0 and no bias: the LN cell computes its equations on
    the normalized products (checked here by hand for one SimpleRNN step and one LSTM
    step), and LN makes a product's scale all but irrelevant (eps aside)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 3))
    W, U = rng.standard_normal((3, 5)), rng.standard_normal((5, 5))
    h0 = rng.standard_normal((2, 5))

    def ln(v):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)

    ones = np.ones((2, 5))
    with fl.use_backend("numpy"):
        y, h, _ = fl.ops.simple_rnn_forward(x, W, U, None, h0, layer_norm=ones)
        y10, _, _ = fl.ops.simple_rnn_forward(x, 10 * W, U, None, h0, layer_norm=ones)
    assert_close(h, np.tanh(ln(x[0] @ W) + ln(h0 @ U)), np.float64)
    np.testing.assert_allclose(y10, y, rtol=0, atol=1e-4)     # up to eps = 1e-5 in var
    W4, U4 = rng.standard_normal((3, 20)), rng.standard_normal((5, 20))
    c0 = rng.standard_normal((2, 5))
    with fl.use_backend("numpy"):
        _, h, c, _ = fl.ops.lstm_forward(x, W4, U4, None, h0, c0,
                                         layer_norm=(np.ones((2, 20)), np.ones(5), np.zeros(5)))
    z = ln(x[0] @ W4) + ln(h0 @ U4)
    s = lambda v: 1 / (1 + np.exp(-v))
    c_ref = s(z[:, 5:10]) * c0 + s(z[:, :5]) * np.tanh(z[:, 10:15])
    assert_close(c, c_ref, np.float64)
    assert_close(h, s(z[:, 15:]) * np.tanh(ln(c_ref)), np.float64)


# -- the cpu backend against the oracle ---------------------------------------------------

@pytest.fixture(params=[1, 2], ids=["one-thread", "two-threads"])
def threads(request):
    saved = (fl.get_num_threads(), _lstm.get_parallel_min_macs())
    _lstm.set_threads(request.param, 0)           # rows over the threads even when small
    yield request.param
    _lstm.set_threads(*saved)


def compare_cpu_with_oracle(cell, dtype, T, B, I, H, seed, opts_kw, flags, training):
    p, opts = problem(cell, dtype, T, B, I, H, seed, **opts_kw)
    if not training:
        opts.pop("input_dropout_mask", None)
        opts.pop("recurrent_dropout_mask", None)
        if "zoneout_mask" in opts:
            opts.pop("zoneout_mask")
    w = output_weights(cell, seed, T, B, H, flags.get("return_sequences", True), dtype)
    res = {}
    for backend in ("numpy", "cpu"):
        with fl.use_backend(backend):
            res[backend] = run_op(cell, p, opts, training=training,
                                  grads=w if training else None, **flags)
    (out_c, g_c), (out_n, g_n) = res["cpu"], res["numpy"]
    for a, e, name in zip(out_c, out_n, ["y", "h", "c"]):
        assert a.dtype == np.dtype(dtype)
        assert_close(a, e, dtype, name)
    if training:
        assert set(g_c) == set(g_n) == set(p)
        for name in g_n:
            assert g_c[name] is not None, name
            assert g_c[name].dtype == np.dtype(dtype), name
            assert_close(g_c[name], g_n[name], dtype, name)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mask", ["none", "prefix", "gaps", "lengths"])
def test_cpu_matches_oracle(cell, dtype, mask, threads):
    for training, gb, rs, dropout, zoneout in itertools.product(
            [True, False], [False, True], [True, False], [False, True], [None, "train"]):
        seed = seed_of(cell, dtype, mask, training, gb, rs, dropout, zoneout, "ln-cpu")
        compare_cpu_with_oracle(
            cell, dtype, 6, 7, 3, 5, seed,
            dict(mask=mask, dropout=dropout, zoneout=zoneout if training else
                 (None if zoneout is None else "infer"), states=seed % 2 == 0),
            dict(go_backwards=gb, return_sequences=rs), training)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B", [1, 64])
def test_cpu_matches_oracle_batch_sizes(cell, B, threads):
    """B=1 (the one-row path) and a batch that two threads split."""
    for dtype, mask in itertools.product(DTYPES, ["none", "prefix", "gaps"]):
        seed = seed_of(cell, B, dtype, mask, "ln-batch")
        compare_cpu_with_oracle(cell, dtype, 5, B, 4, 9, seed,
                                dict(mask=mask, dropout=True, zoneout="train"),
                                dict(go_backwards=mask == "gaps"), True)


@pytest.mark.parametrize("cell", CELLS)
def test_cpu_matches_oracle_without_bias_or_states(cell):
    for dtype, training in itertools.product(DTYPES, [True, False]):
        compare_cpu_with_oracle(cell, dtype, 4, 3, 2, 6, seed_of(cell, dtype, "ln-nobias"),
                                dict(use_bias=False, states=False), {}, training)


@pytest.mark.parametrize("level", [0, 1, 2], ids=["baseline", "avx2", "avx512"])
def test_cpu_matches_oracle_on_every_isa_variant(level):
    from fastlstm import _gates
    _gates.force_isa_level(level)                 # capped at what this CPU has
    try:
        for cell, dtype, mask in itertools.product(CELLS, DTYPES, ["none", "lengths", "gaps"]):
            seed = seed_of(cell, dtype, mask, level, "ln-isa")
            compare_cpu_with_oracle(cell, dtype, 5, 4, 3, 17, seed,
                                    dict(mask=mask, dropout=True, zoneout="train"),
                                    dict(go_backwards=mask == "gaps"), True)
    finally:
        _gates.force_isa_level(-1)


@pytest.mark.parametrize("cell", CELLS)
def test_cpu_matches_oracle_under_mixed_bfloat16(cell):
    for mask, training in itertools.product(["none", "lengths", "gaps"], [True, False]):
        seed = seed_of(cell, mask, training, "ln-mixed-cpu")
        p, opts = problem(cell, np.float32, 5, 4, 3, 8, seed, mask=mask, dropout=training)
        w = output_weights(cell, seed, 5, 4, 8, True, np.float32)
        res = {}
        for backend in ("numpy", "cpu"):
            with fl.use_backend(backend):
                res[backend] = run_op(cell, p, opts, training=training,
                                      grads=w if training else None, mixed=True)
        (out_c, g_c), (out_n, g_n) = res["cpu"], res["numpy"]
        for a, e in zip(out_c, out_n):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
        for name in (g_n or {}):
            scale = np.abs(g_n[name]).max()
            np.testing.assert_allclose(g_c[name], g_n[name], rtol=1e-4,
                                       atol=1e-5 * (1 + scale), err_msg=name)


# -- the ops' argument checks --------------------------------------------------------------

def test_op_argument_errors():
    p, _ = problem("lstm", np.float64, 3, 2, 2, 4, 0)
    args = (p["x"], p["kernel"], p["recurrent_kernel"], p["bias"])
    ln = (p["gamma"], p["gamma_h"], p["beta_h"])
    with pytest.raises(TypeError, match=r"layer_norm: expected a tuple \(gamma \(2, 16\)"):
        fl.ops.lstm_forward(*args, layer_norm=p["gamma"])
    with pytest.raises(TypeError, match="layer_norm: .*got a tuple of 2"):
        fl.ops.lstm_forward(*args, layer_norm=ln[:2])
    with pytest.raises(ValueError, match=r"layer_norm\[0\] \(gamma\): expected shape \(2, 16\), "
                                         r"got \(16\)"):
        fl.ops.lstm_forward(*args, layer_norm=(ln[0][0], ln[1], ln[2]))
    with pytest.raises(ValueError, match=r"layer_norm\[2\] \(beta_h\): expected shape \(4\)"):
        fl.ops.lstm_forward(*args, layer_norm=(ln[0], ln[1], np.zeros(5)))
    with pytest.raises(TypeError, match=r"layer_norm\[1\] \(gamma_h\): expected a real "
                                        "numeric array"):
        fl.ops.lstm_forward(*args, layer_norm=(ln[0], ln[1].astype(complex), ln[2]))
    with pytest.raises(ValueError, match="layer_norm: a projected LSTM"):
        fl.ops.lstm_forward(p["x"], p["kernel"], np.zeros((2, 16)), projection=np.eye(4, 2),
                            layer_norm=ln)
    g, _ = problem("gru", np.float64, 3, 2, 2, 4, 0)
    with pytest.raises(ValueError, match=r"layer_norm: expected shape \(2, 12\), got \(12\)"):
        fl.ops.gru_forward(g["x"], g["kernel"], g["recurrent_kernel"], layer_norm=np.ones(12))
    with pytest.raises(ValueError, match="layer_norm: .*reset_after=True only"):
        fl.ops.gru_forward(g["x"], g["kernel"], g["recurrent_kernel"], reset_after=False,
                           layer_norm=np.ones((2, 12)))
    s, _ = problem("simple_rnn", np.float64, 3, 2, 2, 4, 0)
    with pytest.raises(ValueError, match=r"layer_norm: expected shape \(2, 4\), got \(2, 5\)"):
        fl.ops.simple_rnn_forward(s["x"], s["kernel"], s["recurrent_kernel"],
                                  layer_norm=np.ones((2, 5)))
    with pytest.raises(TypeError, match="layer_norm: expected a real numeric array, got dtype object"):
        fl.ops.simple_rnn_forward(s["x"], s["kernel"], s["recurrent_kernel"],
                                  layer_norm=object())


def test_layer_norm_follows_the_weights_dtype_and_is_refused_on_cupy():
    p, _ = problem("simple_rnn", np.float32, 3, 2, 2, 4, 1)
    y, h, cache = fl.ops.simple_rnn_forward(p["x"], p["kernel"], p["recurrent_kernel"],
                                            layer_norm=p["gamma"].astype(np.float64),
                                            training=True)
    assert y.dtype == np.float32
    g = fl.ops.simple_rnn_backward(cache, np.ones_like(y))
    assert g.gamma.dtype == np.float32 and g.gamma.shape == (2, 4)
    assert g.gamma_h is None and g.beta_h is None
    from conftest import HAVE_CUDA_HOST
    if HAVE_CUDA_HOST:                              # the cupy backend's code on the host
        with fl.use_backend("cupy_host"), pytest.raises(ValueError,
                                                        match="layer_norm: not on the cupy"):
            fl.ops.simple_rnn_forward(p["x"], p["kernel"], p["recurrent_kernel"],
                                      layer_norm=p["gamma"])


def test_without_layer_norm_the_grads_have_none():
    p, _ = problem("lstm", np.float64, 3, 2, 2, 4, 2)
    y, h, c, cache = fl.ops.lstm_forward(p["x"], p["kernel"], p["recurrent_kernel"],
                                         p["bias"], training=True)
    g = fl.ops.lstm_backward(cache, np.ones_like(y))
    assert g.gamma is None and g.gamma_h is None and g.beta_h is None


@pytest.mark.parametrize("cell", CELLS)
def test_cpu_packed_loop_matches_oracle(cell, threads, monkeypatch):
    """Rows of different lengths on the packed time loop (src_c/packed.pxi) whatever their
    size (packing is otherwise kept for problems where it pays): the saved LN rows move with
    each step's running rows, and go_backwards starts each row at its own last step."""
    import fastlstm.backends.packing as packing
    monkeypatch.setattr(packing, "worth_packing", lambda *args: True)
    for dtype, mask, training, gb, rs in itertools.product(
            DTYPES, ["prefix", "lengths"], [True, False], [False, True], [True, False]):
        seed = seed_of(cell, dtype, mask, training, gb, rs, "ln-packed")
        compare_cpu_with_oracle(cell, dtype, 7, 9, 3, 6, seed,
                                dict(mask=mask, dropout=training, states=seed % 2 == 0),
                                dict(go_backwards=gb, return_sequences=rs), training)
