"""SimpleRNN ops: every compiled backend against the NumPy oracle, for every kernel option and
both dtypes, forward and every gradient; finite differences in float64 of every backend;
property tests; PyTorch (``torch.nn.RNN``, tanh and relu) and Keras 3 on the same weights;
bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastlstm as fl
from fastlstm import ops
from fastlstm.activations import HardSigmoid

from conftest import DTYPES, PEER_TOL, assert_close, compiled_backends, seed_of

ACTS = ["tanh", "sigmoid", "hard_sigmoid", HardSigmoid(0.2, 0.5), "relu", "linear", "softsign"]

OPTION_SETS = {
    "plain": {},
    "no_bias": dict(bias=False),
    "initial_state": dict(h0=True),
    "mask_gaps": dict(mask="gaps"),
    "mask_full_rows": dict(mask="full_rows"),
    "go_backwards": dict(go_backwards=True),
    "last_output": dict(return_sequences=False),
    "last_output_mask": dict(return_sequences=False, mask="full_rows", h0=True),
    "recurrent_dropout": dict(recurrent_dropout_mask=True, h0=True),
    "input_dropout": dict(input_dropout_mask=True),
    "recurrent_dropout_mask": dict(recurrent_dropout_mask=True, mask="full_rows", h0=True),
    "everything": dict(h0=True, mask="full_rows", go_backwards=True,
                       recurrent_dropout_mask=True, input_dropout_mask=True),
    "everything_last_no_bias": dict(h0=True, mask="gaps", go_backwards=True, bias=False,
                                    return_sequences=False, recurrent_dropout_mask=True,
                                    input_dropout_mask=True),
}
for _a in ACTS:
    _n = _a if isinstance(_a, str) else "hard_sigmoid_0.2"
    OPTION_SETS[f"act_{_n}"] = dict(activation=_a)
    OPTION_SETS[f"act_{_n}_masked"] = dict(activation=_a, mask="full_rows", h0=True)


def make_problem(rng, dtype, T, B, I, H, opts):
    sc = 1.0 / np.sqrt(I + H)
    kw = dict(
        x=rng.standard_normal((T, B, I)).astype(dtype),
        kernel=(rng.standard_normal((I, H)) * sc).astype(dtype),
        recurrent_kernel=(rng.standard_normal((H, H)) * sc).astype(dtype),
        bias=(rng.standard_normal(H) * 0.5).astype(dtype) if opts.get("bias", True) else None,
        h0=rng.standard_normal((B, H)).astype(dtype) if opts.get("h0") else None,
        go_backwards=opts.get("go_backwards", False),
        return_sequences=opts.get("return_sequences", True),
        activation=opts.get("activation", "tanh"),
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
    return dy, rng.standard_normal((B, H)).astype(dtype)


def run(backend, kw, grads):
    with fl.use_backend(backend):
        y, h, cache = ops.simple_rnn_forward(training=True, **kw)
        y_inf, h_inf, none = ops.simple_rnn_forward(training=False, **kw)
        g = ops.simple_rnn_backward(cache, *grads)
    assert none is None
    return (y, h), (y_inf, h_inf), g


GRAD_FIELDS = ["inputs", "h0", "kernel", "recurrent_kernel", "bias"]


def compare_backend(backend, kw, grads, dtype):
    (y, h), inf, g = run(backend, kw, grads)
    (ry, rh), _, rg = run("numpy", kw, grads)
    for name, a, b in [("y", y, ry), ("h", h, rh)]:
        assert a.dtype == dtype, name
        assert_close(a, b, dtype, name)
    for name, a, b in zip(["y", "h"], inf, (y, h)):   # inference == training forward
        assert_close(a, b, dtype, "inference " + name)
    for f in GRAD_FIELDS:
        a, b = getattr(g, f), getattr(rg, f)
        assert (a is None) == (b is None), f
        if a is not None:
            assert a.dtype == dtype, f
            assert_close(a, b, dtype, "d" + f)
    assert g.c0 is None and g.peephole is None


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
    """B=1 takes the GEMV path; odd sizes exercise vector remainders."""
    rng = np.random.default_rng(B)
    for opts in (dict(mask="gaps", h0=True), dict(recurrent_dropout_mask=True, h0=True)):
        kw = make_problem(rng, np.float32, 5, B, 19, 37, opts)
        grads = output_grads(rng, np.float32, 5, B, 37, True)
        compare_backend(backend, kw, grads, np.dtype(np.float32))


@pytest.mark.parametrize("backend", compiled_backends())
@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_isa_variant_matches_oracle(backend, level):
    from fastlstm import _gates
    _gates.force_isa_level(level)
    try:
        rng = np.random.default_rng(level)
        for dtype in DTYPES:
            for act in ("tanh", "softsign"):
                kw = make_problem(rng, dtype, 4, 3, 5, 17,
                                  dict(mask="gaps", h0=True, activation=act))
                grads = output_grads(rng, dtype, 4, 3, 17, True)
                compare_backend(backend, kw, grads, np.dtype(dtype))
    finally:
        _gates.force_isa_level(-1)


# -- finite differences (float64) --------------------------------------------------------

FD_OPTIONS = {
    "plain": dict(h0=True),
    "mask_back": dict(h0=True, mask="full_rows", go_backwards=True),
    "dropout": dict(h0=True, recurrent_dropout_mask=True, input_dropout_mask=True),
    "last_softsign": dict(h0=True, return_sequences=False, activation="softsign",
                          mask="gaps"),
    "sigmoid": dict(h0=True, activation="sigmoid"),
}


@pytest.mark.parametrize("backend", ["numpy"] + compiled_backends())
@pytest.mark.parametrize("opt_name", list(FD_OPTIONS))
def test_gradients_by_finite_differences(backend, opt_name):
    rng = np.random.default_rng(7)
    T, B, I, H = 4, 3, 3, 2
    kw = make_problem(rng, np.float64, T, B, I, H, FD_OPTIONS[opt_name])
    dy, dh = output_grads(rng, np.float64, T, B, H, kw["return_sequences"])

    def loss(**over):
        with fl.use_backend(backend):
            y, h, _ = ops.simple_rnn_forward(**{**kw, **over})
        return float((y * dy).sum() + (h * dh).sum())

    with fl.use_backend(backend):
        _, _, cache = ops.simple_rnn_forward(training=True, **kw)
        g = ops.simple_rnn_backward(cache, dy, dh)
    arg_of = dict(inputs="x", h0="h0", kernel="kernel", recurrent_kernel="recurrent_kernel",
                  bias="bias")
    eps = 1e-6
    for field, arg in arg_of.items():
        base = kw[arg]
        num = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[idx] += eps
            minus[idx] -= eps
            num[idx] = (loss(**{arg: plus}) - loss(**{arg: minus})) / (2 * eps)
        assert np.abs(num).max() > 0, f"{field}: the loss does not depend on it"
        np.testing.assert_allclose(getattr(g, field), num, rtol=1e-5, atol=1e-7,
                                   err_msg=f"{backend} d{field}")


# -- property tests ----------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 6), B=st.integers(1, 4), I=st.integers(1, 5), H=st.integers(1, 5),
       dtype=st.sampled_from(DTYPES), mask=st.sampled_from([None, "gaps", "full_rows", "none_set"]),
       go_backwards=st.booleans(), return_sequences=st.booleans(), bias=st.booleans(),
       h0=st.booleans(), rdrop=st.booleans(), idrop=st.booleans(), act=st.sampled_from(ACTS),
       seed=st.integers(0, 2**31))
def test_property_backends_agree(T, B, I, H, dtype, mask, go_backwards, return_sequences, bias,
                                 h0, rdrop, idrop, act, seed):
    rng = np.random.default_rng(seed)
    opts = dict(mask=None if mask in (None, "none_set") else mask, go_backwards=go_backwards,
                return_sequences=return_sequences, bias=bias, h0=h0,
                recurrent_dropout_mask=rdrop, input_dropout_mask=idrop, activation=act)
    kw = make_problem(rng, dtype, T, B, I, H, opts)
    if mask == "none_set":
        kw["mask"] = np.zeros((T, B), bool)           # every step of every row masked
    grads = output_grads(rng, dtype, T, B, H, return_sequences)
    for backend in compiled_backends():
        compare_backend(backend, kw, grads, np.dtype(dtype))


def test_fully_masked_rows_keep_initial_state_and_output_zero():
    rng = np.random.default_rng(3)
    kw = make_problem(rng, np.float64, 5, 3, 4, 3, dict(h0=True))
    kw["mask"] = np.zeros((5, 3), bool)
    kw["mask"][2:, 1] = True
    dy, dh = output_grads(rng, np.float64, 5, 3, 3, True)
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, cache = ops.simple_rnn_forward(training=True, **kw)
            g = ops.simple_rnn_backward(cache, dy, dh)
        for row in (0, 2):
            np.testing.assert_array_equal(h[row], kw["h0"][row])
            np.testing.assert_array_equal(y[:, row], 0)
            np.testing.assert_array_equal(g.h0[row], dh[row])
            np.testing.assert_array_equal(g.inputs[:, row], 0)
        np.testing.assert_array_equal(y[:2, 1], 0)     # before the row's first unmasked step
        assert np.all(y[2:, 1] != 0)


def test_matches_the_equation():
    """h_t = act(x_t W + h_{t-1} U + b), written out for three steps."""
    rng = np.random.default_rng(4)
    kw = make_problem(rng, np.float64, 3, 2, 3, 4, dict(h0=True, activation="relu"))
    h = kw["h0"]
    expect = []
    for t in range(3):
        h = np.maximum(kw["x"][t] @ kw["kernel"] + h @ kw["recurrent_kernel"] + kw["bias"], 0)
        expect.append(h)
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, hT, _ = ops.simple_rnn_forward(**kw)
        np.testing.assert_allclose(y, np.stack(expect), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(hT, expect[-1], rtol=1e-12, atol=1e-13)


def test_empty_batch_and_no_features():
    kw = make_problem(np.random.default_rng(0), np.float32, 3, 0, 2, 4, {})
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, cache = ops.simple_rnn_forward(training=True, **kw)
            assert y.shape == (3, 0, 4) and h.shape == (0, 4)
            g = ops.simple_rnn_backward(cache, np.zeros_like(y))
        assert g.inputs.shape == (3, 0, 2) and np.all(g.kernel == 0)
    rng = np.random.default_rng(1)
    kw = make_problem(rng, np.float64, 3, 2, 0, 4, dict(h0=True))
    grads = output_grads(rng, np.float64, 3, 2, 4, True)
    for backend in compiled_backends():
        compare_backend(backend, kw, grads, np.dtype(np.float64))


def test_cache_serves_one_backward():
    kw = make_problem(np.random.default_rng(0), np.float32, 3, 2, 2, 4, {})
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, cache = ops.simple_rnn_forward(training=True, **kw)
            ops.simple_rnn_backward(cache, y)
            with pytest.raises(RuntimeError, match="already"):
                ops.simple_rnn_backward(cache, y)


# -- peers: PyTorch and Keras 3 on the same weights --------------------------------------

@pytest.mark.peers
@pytest.mark.parametrize("backend", ["numpy"] + compiled_backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("B, T, I, H", [(3, 7, 5, 4), (1, 12, 3, 16), (8, 2, 16, 9)])
def test_matches_torch_rnn(backend, dtype, nonlinearity, B, T, I, H):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(B * 100 + H)
    torch.manual_seed(T + H)
    m = torch.nn.RNN(I, H, nonlinearity=nonlinearity)
    m = m.to(torch.float64 if dtype == np.float64 else torch.float32)
    W = m.weight_ih_l0.detach().numpy().T.copy()
    U = m.weight_hh_l0.detach().numpy().T.copy()
    b = (m.bias_ih_l0 + m.bias_hh_l0).detach().numpy()
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh = rng.standard_normal((B, H)).astype(dtype)

    xt = torch.from_numpy(x).requires_grad_(True)
    h0t = torch.from_numpy(h0[None].copy()).requires_grad_(True)
    yt, ht = m(xt, h0t)
    ((yt * torch.from_numpy(dy)).sum() + (ht[0] * torch.from_numpy(dh)).sum()).backward()

    with fl.use_backend(backend):
        y, h, cache = ops.simple_rnn_forward(x, W, U, b, h0, activation=nonlinearity,
                                             training=True)
        g = ops.simple_rnn_backward(cache, dy, dh)
    tol = PEER_TOL
    assert_close(y, yt.detach().numpy(), dtype, "y", tol)
    assert_close(h, ht[0].detach().numpy(), dtype, "h", tol)
    assert_close(g.inputs, xt.grad.numpy(), dtype, "dx", tol)
    assert_close(g.h0, h0t.grad[0].numpy(), dtype, "dh0", tol)
    assert_close(g.kernel, m.weight_ih_l0.grad.numpy().T, dtype, "dkernel", tol)
    assert_close(g.recurrent_kernel, m.weight_hh_l0.grad.numpy().T, dtype, "drecurrent_kernel", tol)
    assert_close(g.bias, m.bias_ih_l0.grad.numpy(), dtype, "dbias", tol)
    assert (np.asarray(y) == 0).any() == (nonlinearity == "relu")


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("go_backwards", [False, True])
def test_matches_keras_simple_rnn_forward(go_backwards):
    pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(12)
    B, T, I, H = 3, 6, 4, 5
    layer = keras.layers.SimpleRNN(H, return_sequences=True, return_state=True,
                                   go_backwards=go_backwards)
    layer.build((B, T, I))
    ws = [(w + rng.standard_normal(w.shape) * 0.3).astype(np.float32)
          for w in layer.get_weights()]
    layer.set_weights(ws)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    mask = rng.random((B, T)) > 0.3
    out, hT = layer(x, mask=mask, initial_state=[h0])
    out = keras.ops.convert_to_numpy(out)
    hT = keras.ops.convert_to_numpy(hT)
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, _ = ops.simple_rnn_forward(x.transpose(1, 0, 2), *ws, h0, mask=mask.T,
                                             go_backwards=go_backwards)
        assert_close(y.transpose(1, 0, 2), out, np.float32, f"{backend} y", PEER_TOL)
        assert_close(h, hT, np.float32, f"{backend} h", PEER_TOL)


# -- bad input --------------------------------------------------------------------------

def _good(dtype=np.float32):
    return make_problem(np.random.default_rng(0), dtype, 3, 2, 4, 5, {})


@pytest.mark.parametrize("arg, value, exc, words", [
    ("x", np.zeros((3, 2)), ValueError, "x: expected a 3-D"),
    ("x", np.zeros((0, 2, 4)), ValueError, "at least one timestep"),
    ("x", np.zeros((3, 2, 5)), ValueError, "kernel: expected shape (5, 5), got (4, 5)"),
    ("x", np.full((3, 2, 4), "a"), TypeError, "x: expected a real numeric array"),
    ("kernel", np.zeros((4, 4), np.float32), ValueError, "kernel: expected shape (4, 5), got (4, 4)"),
    ("recurrent_kernel", np.zeros((5, 6), np.float32), ValueError,
     "recurrent_kernel: expected shape (H, H), got (5, 6)"),
    ("recurrent_kernel", np.zeros((0, 0), np.float32), ValueError,
     "recurrent_kernel: expected shape (H, H), got (0, 0)"),
    ("bias", np.zeros(4), ValueError, "bias: expected shape (5), got (4)"),
    ("bias", np.zeros((2, 5)), ValueError, "bias: expected shape (5), got (2, 5)"),
    ("h0", np.zeros((2, 4)), ValueError, "h0: expected shape (2, 5), got (2, 4)"),
    ("mask", np.ones((2, 3), bool), ValueError, "mask: expected shape (3, 2), got (2, 3)"),
    ("mask", np.ones((3, 2), np.float32), TypeError, "mask: expected a boolean"),
    ("recurrent_dropout_mask", np.ones((2, 4)), ValueError,
     "recurrent_dropout_mask: expected shape (2, 5), got (2, 4)"),
    ("input_dropout_mask", np.ones((2, 5)), ValueError,
     "input_dropout_mask: expected shape (2, 4), got (2, 5)"),
    ("activation", "swish", ValueError, "activation: unknown activation 'swish'"),
    ("activation", 3, TypeError, "activation"),
    ("kernel", np.zeros((4, 5), np.int32), TypeError, "kernel: expected float32 or float64"),
])
def test_bad_input_names_the_argument(arg, value, exc, words):
    kw = _good()
    kw[arg] = value
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            with pytest.raises(exc) as info:
                ops.simple_rnn_forward(**kw)
        assert words in str(info.value)


def test_bad_backward_arguments():
    y, h, cache = ops.simple_rnn_forward(training=True, **_good())
    with pytest.raises(ValueError, match=r"dy: expected shape \(3, 2, 5\), got \(2, 3, 5\)"):
        ops.simple_rnn_backward(cache, np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"dh: expected shape \(2, 5\)"):
        ops.simple_rnn_backward(cache, None, np.zeros((5, 2)))
    with pytest.raises(TypeError, match="cache"):
        ops.simple_rnn_backward(None)
    kw = _good()
    _, _, gru_cache = ops.gru_forward(kw["x"], np.zeros((4, 15)), np.zeros((5, 15)),
                                      training=True)
    with pytest.raises(ValueError, match="cache: expected the cache of simple_rnn_forward"):
        ops.simple_rnn_backward(gru_cache)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_nan_input_propagates_without_crashing():
    kw = _good()
    kw["x"] = kw["x"].copy()
    kw["x"][1, 0, 2] = np.nan
    kw["x"][2, 1, 0] = np.inf
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, cache = ops.simple_rnn_forward(training=True, **kw)
            ops.simple_rnn_backward(cache, np.ones_like(y))
        assert np.isnan(y[1:, 0]).any()
        assert np.isfinite(y[0]).all()
