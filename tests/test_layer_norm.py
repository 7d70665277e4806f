"""Layer-normalized cells (haste's LayerNormLSTM / LayerNormGRU, and the SimpleRNN) in the
functional ops: the oracle against a PyTorch autograd composition of the cell equations
(outputs, final states, every gradient), its BPTT by finite differences in float64 with every
option at once, and the ``cpu`` backend against the oracle for every option, both dtypes,
batch sizes, threads and ISA variants."""
import itertools

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _lstm
from conftest import DTYPES, TOL, central_differences, seed_of
from conftest import assert_close as _assert_close

# LN divides each row by its standard deviation: on rows of 5 to 20 units whose variance is
# small, float32 rounding is amplified in the gradients. Against float64 (tests here, seeds
# of test_cpu_matches_oracle) the oracle's float32 gradients were off by up to 6e-5 of the
# array's largest value and the kernels' by up to 2.2e-4; float64 keeps TOL's bounds.
LN_TOL = {np.dtype(np.float32): dict(TOL[np.dtype(np.float32)], scale=5e-4),
          np.dtype(np.float64): TOL[np.dtype(np.float64)]}


def assert_close(actual, expected, dtype=None, name="", table=LN_TOL):
    _assert_close(actual, expected, dtype, name, table)

torch = pytest.importorskip("torch")
F = torch.nn.functional

#: the cells and their LSTM variants
CELLS = ["lstm", "lstm_peephole", "lstm_cifg", "lstm_cifg_peephole", "gru", "simple_rnn"]
#: parameters in the order the gradients are compared (Grads field of each)
FIELDS = {"x": "inputs", "h0": "h0", "c0": "c0", "kernel": "kernel",
          "recurrent_kernel": "recurrent_kernel", "bias": "bias", "peephole": "peephole",
          "gamma": "gamma", "gamma_h": "gamma_h", "beta_h": "beta_h"}


def _is_lstm(cell):
    return cell.startswith("lstm")


def _blocks(cell):
    return {"lstm": 4, "lstm_peephole": 4, "lstm_cifg": 3, "lstm_cifg_peephole": 3,
            "gru": 3, "simple_rnn": 1}[cell]


def problem(cell, dtype, T, B, I, H, seed, mask="none", dropout=False, states=True,
            zoneout=None, use_bias=True):
    """The arrays and options of one op call. mask: none, gaps (any pattern), prefix (a
    prefix mask) or lengths (sequence_lengths); zoneout: None, "train" (keep masks) or
    "infer" (the rate alone)."""
    rng = np.random.default_rng(seed)
    G = _blocks(cell) * H
    p = dict(x=rng.standard_normal((T, B, I)), kernel=rng.standard_normal((I, G)) * 0.6,
             recurrent_kernel=rng.standard_normal((H, G)) * 0.6,
             gamma=1 + 0.5 * rng.standard_normal((2, G)))
    if use_bias:
        p["bias"] = rng.standard_normal((2, G) if cell == "gru" else G) * 0.3
    if states:
        p["h0"] = rng.standard_normal((B, H)) * 0.5
        if _is_lstm(cell):
            p["c0"] = rng.standard_normal((B, H))
    if _is_lstm(cell):
        p["gamma_h"] = 1 + 0.5 * rng.standard_normal(H)
        p["beta_h"] = 0.3 * rng.standard_normal(H)
        if cell.endswith("peephole"):
            p["peephole"] = rng.standard_normal((3, H)) * 0.5
    opts = {}
    if mask == "gaps":
        m = rng.random((T, B)) > 0.3
        m[:, 0] = True                      # one full row beside the gaps
        opts["mask"] = m
    elif mask in ("prefix", "lengths"):
        lengths = rng.integers(0, T + 1, B)
        lengths[0] = T
        if mask == "lengths":
            opts["sequence_lengths"] = lengths
        else:
            opts["mask"] = np.arange(T)[:, None] < lengths[None, :]
    if dropout:
        opts["input_dropout_mask"] = (rng.random((B, I)) > 0.3) / 0.7
        opts["recurrent_dropout_mask"] = (rng.random((B, H)) > 0.3) / 0.7
    if zoneout is not None:
        opts["zoneout"] = 0.3
        if zoneout == "train":
            opts["zoneout_mask"] = (rng.random((T, B, H)) >= 0.3).astype(float)
    cast = lambda v: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
    return {k: cast(v) for k, v in p.items()}, {k: cast(v) for k, v in opts.items()}


def output_weights(cell, seed, T, B, H, return_sequences, dtype=np.float64):
    """Weights of a loss sum(y * wy) + sum(h_T * wh) (+ sum(c_T * wc)): the gradients of the
    outputs given to the backward."""
    rng = np.random.default_rng(seed + 11)
    w = [rng.standard_normal((T, B, H) if return_sequences else (B, H)),
         rng.standard_normal((B, H))]
    if _is_lstm(cell):
        w.append(rng.standard_normal((B, H)))
    return [a.astype(dtype) for a in w]


def run_op(cell, p, opts, *, training, grads=None, **flags):
    """Outputs [y, h_T(, c_T)] and, with ``grads`` (the output weights), the gradients of
    every parameter in ``p`` by name."""
    args = (p["x"], p["kernel"], p["recurrent_kernel"], p.get("bias"), p.get("h0"))
    if _is_lstm(cell):
        y, h, c, cache = fl.ops.lstm_forward(
            *args, p.get("c0"), peephole=p.get("peephole"),
            coupled_input_forget="cifg" in cell,
            layer_norm=(p["gamma"], p["gamma_h"], p["beta_h"]), training=training,
            **opts, **flags)
        outs = [y, h, c]
    else:
        f = fl.ops.gru_forward if cell == "gru" else fl.ops.simple_rnn_forward
        y, h, cache = f(*args, layer_norm=p["gamma"], training=training, **opts, **flags)
        outs = [y, h]
    if grads is None:
        return outs, None
    if _is_lstm(cell):
        g = fl.ops.lstm_backward(cache, *grads)
    else:
        g = (fl.ops.gru_backward if cell == "gru" else fl.ops.simple_rnn_backward)(
            cache, *grads)
    return outs, {name: getattr(g, FIELDS[name]) for name in p}


# -- the reference: the cell equations in PyTorch, float64, autograd ----------------------

def torch_reference(cell, p, opts, grads, go_backwards=False, return_sequences=True,
                    activation="tanh", bf16=False):
    """The same outputs and gradients from the equations written out per step; ``bf16``
    rounds each product's operands to bfloat16 (straight through for the gradients)."""
    t = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in p.items()}
    o = {k: torch.tensor(np.asarray(v, np.float64) if k != "mask" else v)
         for k, v in opts.items() if k not in ("zoneout", "sequence_lengths")}
    act = {"tanh": torch.tanh, "softsign": F.softsign}[activation]
    sig = torch.sigmoid
    T, B, _ = t["x"].shape
    H = t["recurrent_kernel"].shape[0]
    mask = o.get("mask")
    if "sequence_lengths" in opts:
        mask = torch.tensor(np.arange(T)[:, None] < opts["sequence_lengths"][None, :])

    def rnd(v):
        return v + (v.to(torch.bfloat16).to(torch.float64) - v).detach() if bf16 else v

    def mm(a, b):
        return rnd(a) @ rnd(b)

    def ln(v):
        return F.layer_norm(v, (v.shape[-1],), eps=1e-5)

    x = t["x"] * o["input_dropout_mask"] if "input_dropout_mask" in o else t["x"]
    h = t["h0"] if "h0" in t else torch.zeros(B, H, dtype=torch.float64)
    c = t["c0"] if "c0" in t else torch.zeros(B, H, dtype=torch.float64)
    g, b, P = t["gamma"], t.get("bias"), t.get("peephole")
    out = torch.zeros(B, H, dtype=torch.float64)
    ys = []
    for s in range(T):
        tt = T - 1 - s if go_backwards else s
        hin = h * o["recurrent_dropout_mask"] if "recurrent_dropout_mask" in o else h
        xp, hp = ln(mm(x[tt], t["kernel"])) * g[0], ln(mm(hin, t["recurrent_kernel"])) * g[1]
        c_new = c
        if _is_lstm(cell):
            z = xp + hp + (b if b is not None else 0)
            if "cifg" in cell:
                zf, zc, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:]
                zi = None
            else:
                zi, zf, zc, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            if P is not None:
                zf = zf + P[1] * c
                zi = None if zi is None else zi + P[0] * c
            f = sig(zf)
            i = 1 - f if zi is None else sig(zi)
            c_new = f * c + i * act(zc)
            if P is not None:
                zo = zo + P[2] * c_new
            h_new = sig(zo) * act(ln(c_new) * t["gamma_h"] + t["beta_h"])
        elif cell == "gru":
            xz = xp + (b[0] if b is not None else 0)
            hz = hp + (b[1] if b is not None else 0)
            z = sig(xz[:, :H] + hz[:, :H])
            r = sig(xz[:, H:2 * H] + hz[:, H:2 * H])
            n = act(xz[:, 2 * H:] + r * hz[:, 2 * H:])
            h_new = z * h + (1 - z) * n
        else:
            h_new = act(xp + hp + (b if b is not None else 0))
        if "zoneout" in opts:
            keep = o["zoneout_mask"][s] if "zoneout_mask" in o else 1 - opts["zoneout"]
            h_new = h + keep * (h_new - h)
        if mask is not None:
            m = mask[tt][:, None]
            h_new = torch.where(m, h_new, h)
            c_new = torch.where(m, c_new, c)
            out = torch.where(m, h_new, out)
        else:
            out = h_new
        h, c = h_new, c_new
        ys.append(out)
    y = torch.stack(ys) if return_sequences else out
    outs = [y, h] + ([c] if _is_lstm(cell) else [])
    loss = sum((a * torch.tensor(np.asarray(w, np.float64))).sum()
               for a, w in zip(outs, grads))
    loss.backward()
    return ([a.detach().numpy() for a in outs],
            {k: (v.grad.numpy() if v.grad is not None else np.zeros(v.shape))
             for k, v in t.items()})


REFERENCE_CASES = {
    "plain": dict(),
    "mask_backwards": dict(mask="gaps", go_backwards=True),
    "dropout_states": dict(dropout=True),
    "no_state_no_bias": dict(states=False, use_bias=False),
    "last_output_prefix": dict(mask="prefix", return_sequences=False),
    "lengths_zoneout_backwards": dict(mask="lengths", zoneout="train", go_backwards=True,
                                      dropout=True),
    "softsign_zoneout_inference": dict(zoneout="infer", activation="softsign", mask="gaps"),
}


def _split_case(case):
    case = dict(case)
    flags = {k: case.pop(k) for k in ("go_backwards", "return_sequences", "activation")
             if k in case}
    return case, flags


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_oracle_matches_pytorch(cell, case):
    opts_kw, flags = _split_case(REFERENCE_CASES[case])
    seed = seed_of(cell, case, "ln-torch")
    T, B, I, H = 5, 4, 3, 6
    p, opts = problem(cell, np.float64, T, B, I, H, seed, **opts_kw)
    rs = flags.get("return_sequences", True)
    w = output_weights(cell, seed, T, B, H, rs)
    ref_out, ref_grads = torch_reference(cell, p, opts, w, flags.get("go_backwards", False),
                                         rs, flags.get("activation", "tanh"))
    with fl.use_backend("numpy"):
        outs, grads = run_op(cell, p, opts, training=True, grads=w, **flags)
    for a, e, name in zip(outs, ref_out, ["y", "h", "c"]):
        assert_close(a, e, np.float64, name)
    assert set(grads) == set(ref_grads)
    for name in grads:
        assert grads[name] is not None, name
        assert_close(grads[name], ref_grads[name], np.float64, name)
    if "zoneout_mask" not in opts:              # the inference forward: the same outputs
        with fl.use_backend("numpy"):
            outs_inf, _ = run_op(cell, p, opts, training=False, **flags)
        for a, e in zip(outs_inf, outs):
            assert_close(a, e, np.float64)


@pytest.mark.parametrize("cell", ["lstm_peephole", "gru", "simple_rnn"])
def test_oracle_mixed_bfloat16_matches_pytorch_with_bf16_operands(cell):
    """mixed: the products take bf16 operands (float32 sums), LN and the gates float32."""
    seed = seed_of(cell, "ln-mixed")
    T, B, I, H = 5, 4, 3, 8
    p, opts = problem(cell, np.float32, T, B, I, H, seed, mask="gaps")
    w = output_weights(cell, seed, T, B, H, True, np.float32)
    ref_out, ref_grads = torch_reference(cell, p, opts, w, bf16=True)
    exact_out, _ = torch_reference(cell, p, opts, w)
    with fl.use_backend("numpy"):
        outs, grads = run_op(cell, p, opts, training=True, grads=w, mixed=True)
    for a, e, x in zip(outs, ref_out, exact_out):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, e, rtol=0, atol=2e-3)
        assert np.abs(a - x).max() > 1e-5           # the bf16 rounding took effect
    for name in grads:                              # gradients of bf16 products: bf16 error
        scale = np.abs(ref_grads[name]).max()
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=0,
                                   atol=3e-2 * scale + 1e-4, err_msg=name)


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
    opts_kw, flags = _split_case(FD_CASES[case])
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
