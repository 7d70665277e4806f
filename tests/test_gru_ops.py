"""GRU ops (both forms): every compiled backend against the NumPy oracle, for every kernel
option and both dtypes, forward and every gradient; finite differences in float64 of every
backend; property tests; PyTorch (``torch.nn.GRU``) and Keras 3 on the same weights; bad
input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastlstm as fl
from fastlstm import ops
from fastlstm.activations import HardSigmoid

from conftest import DTYPES, PEER_TOL, assert_close, compiled_backends, seed_of

ACTS = ["tanh", "sigmoid", "hard_sigmoid", HardSigmoid(0.2, 0.5), "relu", "linear", "softsign"]
FORMS = [True, False]
FORM_IDS = ["reset_after", "reset_before"]

# Kernel option sets: each is compared cpu-vs-oracle in both dtypes and both forms.
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
    OPTION_SETS[f"ract_{_n}"] = dict(recurrent_activation=_a)


def make_problem(rng, dtype, T, B, I, H, opts, reset_after=True):
    G = 3 * H
    sc = 1.0 / np.sqrt(I + H)
    if opts.get("recurrent_activation") in ("linear", "relu"):
        sc *= 0.5    # unbounded gates make h grow geometrically; keep float32 meaningful
    bias = None
    if opts.get("bias", True):
        bias = (rng.standard_normal((2, G) if reset_after else G) * 0.5).astype(dtype)
    kw = dict(
        x=rng.standard_normal((T, B, I)).astype(dtype),
        kernel=(rng.standard_normal((I, G)) * sc).astype(dtype),
        recurrent_kernel=(rng.standard_normal((H, G)) * sc).astype(dtype),
        bias=bias,
        h0=rng.standard_normal((B, H)).astype(dtype) if opts.get("h0") else None,
        reset_after=reset_after,
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
    return dy, rng.standard_normal((B, H)).astype(dtype)


def run(backend, kw, grads):
    with fl.use_backend(backend):
        y, h, cache = ops.gru_forward(training=True, **kw)
        y_inf, h_inf, none = ops.gru_forward(training=False, **kw)
        g = ops.gru_backward(cache, *grads)
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
    if kw["bias"] is not None:
        assert g.bias.shape == kw["bias"].shape


@pytest.mark.parametrize("backend", compiled_backends())
@pytest.mark.parametrize("reset_after", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("opt_name", list(OPTION_SETS))
def test_backend_matches_oracle(backend, reset_after, dtype, opt_name):
    opts = OPTION_SETS[opt_name]
    rng = np.random.default_rng(seed_of(opt_name, reset_after, np.dtype(dtype).name))
    T, B, I, H = 7, 4, 5, 6
    kw = make_problem(rng, dtype, T, B, I, H, opts, reset_after)
    grads = output_grads(rng, dtype, T, B, H, kw["return_sequences"])
    compare_backend(backend, kw, grads, np.dtype(dtype))


@pytest.mark.parametrize("backend", compiled_backends())
@pytest.mark.parametrize("reset_after", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("B", [1, 2, 33])
def test_batch_sizes_and_gemv_path(backend, reset_after, B):
    """B=1 takes the GEMV path; odd sizes exercise vector remainders."""
    rng = np.random.default_rng(B)
    for opts in (dict(mask="gaps", h0=True), dict(recurrent_dropout_mask=True, h0=True)):
        kw = make_problem(rng, np.float32, 5, B, 19, 37, opts, reset_after)
        grads = output_grads(rng, np.float32, 5, B, 37, True)
        compare_backend(backend, kw, grads, np.dtype(np.float32))


@pytest.mark.parametrize("backend", compiled_backends())
@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_isa_variant_matches_oracle(backend, level):
    from fastlstm import _gates
    _gates.force_isa_level(level)
    try:
        rng = np.random.default_rng(level)
        # The default cell (its backward step one fused pass) and another one.
        base = dict(mask="gaps", h0=True, recurrent_dropout_mask=True)
        for opts in (base, dict(base, activation="softsign", recurrent_activation="hard_sigmoid")):
            for dtype in DTYPES:
                for reset_after in FORMS:
                    kw = make_problem(rng, dtype, 4, 3, 5, 17, opts, reset_after)
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
                          recurrent_activation=HardSigmoid(0.2, 0.5), mask="gaps"),
}


def finite_difference_check(backend, kw, dy, dh):
    def loss(**over):
        with fl.use_backend(backend):
            y, h, _ = ops.gru_forward(**{**kw, **over})
        return float((y * dy).sum() + (h * dh).sum())

    with fl.use_backend(backend):
        _, _, cache = ops.gru_forward(training=True, **kw)
        g = ops.gru_backward(cache, dy, dh)
    arg_of = dict(inputs="x", h0="h0", kernel="kernel", recurrent_kernel="recurrent_kernel",
                  bias="bias")
    eps = 1e-6
    checked = 0
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
        assert np.abs(num).max() > 0, f"{field}: the loss does not depend on it"
        np.testing.assert_allclose(getattr(g, field), num, rtol=1e-5, atol=1e-7,
                                   err_msg=f"{backend} d{field}")
        checked += 1
    assert checked == 5


@pytest.mark.parametrize("backend", ["numpy"] + compiled_backends())
@pytest.mark.parametrize("reset_after", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("opt_name", list(FD_OPTIONS))
def test_gradients_by_finite_differences(backend, reset_after, opt_name):
    rng = np.random.default_rng(7)
    T, B, I, H = 4, 3, 3, 2
    kw = make_problem(rng, np.float64, T, B, I, H, FD_OPTIONS[opt_name], reset_after)
    dy, dh = output_grads(rng, np.float64, T, B, H, kw["return_sequences"])
    finite_difference_check(backend, kw, dy, dh)


# -- property tests ----------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 6), B=st.integers(1, 4), I=st.integers(1, 5), H=st.integers(1, 5),
       dtype=st.sampled_from(DTYPES), mask=st.sampled_from([None, "gaps", "full_rows", "none_set"]),
       reset_after=st.booleans(), go_backwards=st.booleans(), return_sequences=st.booleans(),
       bias=st.booleans(), h0=st.booleans(), rdrop=st.booleans(), idrop=st.booleans(),
       act=st.sampled_from(ACTS), ract=st.sampled_from(ACTS), seed=st.integers(0, 2**31))
def test_property_backends_agree(T, B, I, H, dtype, mask, reset_after, go_backwards,
                                 return_sequences, bias, h0, rdrop, idrop, act, ract, seed):
    rng = np.random.default_rng(seed)
    opts = dict(mask=None if mask in (None, "none_set") else mask, go_backwards=go_backwards,
                return_sequences=return_sequences, bias=bias, h0=h0,
                recurrent_dropout_mask=rdrop, input_dropout_mask=idrop, activation=act,
                recurrent_activation=ract)
    kw = make_problem(rng, dtype, T, B, I, H, opts, reset_after)
    if mask == "none_set":
        kw["mask"] = np.zeros((T, B), bool)           # every step of every row masked
    grads = output_grads(rng, dtype, T, B, H, return_sequences)
    for backend in compiled_backends():
        compare_backend(backend, kw, grads, np.dtype(dtype))


@pytest.mark.parametrize("reset_after", FORMS, ids=FORM_IDS)
def test_fully_masked_rows_keep_initial_state_and_output_zero(reset_after):
    rng = np.random.default_rng(3)
    kw = make_problem(rng, np.float64, 5, 3, 4, 3, dict(h0=True), reset_after)
    kw["mask"] = np.zeros((5, 3), bool)
    kw["mask"][2:, 1] = True
    dy, dh = output_grads(rng, np.float64, 5, 3, 3, True)
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, cache = ops.gru_forward(training=True, **kw)
            g = ops.gru_backward(cache, dy, dh)
        for row in (0, 2):
            np.testing.assert_array_equal(h[row], kw["h0"][row])
            np.testing.assert_array_equal(y[:, row], 0)
            np.testing.assert_array_equal(g.h0[row], dh[row])   # state passes straight through
            np.testing.assert_array_equal(g.inputs[:, row], 0)
        np.testing.assert_array_equal(y[:2, 1], 0)     # before the row's first unmasked step
        assert np.all(y[2:, 1] != 0)


def test_masked_step_repeats_previous_output_and_state():
    rng = np.random.default_rng(5)
    kw = make_problem(rng, np.float32, 4, 2, 3, 4, dict(h0=True))
    kw["mask"] = np.array([[1, 1], [0, 1], [1, 0], [1, 1]], bool)
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, _ = ops.gru_forward(**kw)
            y_skip, h_skip, _ = ops.gru_forward(**{**kw, "x": kw["x"][[0, 2, 3]][:, :1],
                                                   "mask": None, "h0": kw["h0"][:1]})
        np.testing.assert_array_equal(y[1, 0], y[0, 0])
        np.testing.assert_array_equal(y[2, 1], y[1, 1])
        # Row 0 with its masked step removed is the same sequence.
        np.testing.assert_allclose(y[[0, 2, 3], 0], y_skip[:, 0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(h[0], h_skip[0], rtol=1e-6, atol=1e-7)


def test_go_backwards_is_the_reversed_sequence():
    rng = np.random.default_rng(6)
    for reset_after in FORMS:
        kw = make_problem(rng, np.float64, 6, 2, 3, 4, dict(h0=True), reset_after)
        for backend in ["numpy"] + compiled_backends():
            with fl.use_backend(backend):
                yb, hb, _ = ops.gru_forward(**{**kw, "go_backwards": True})
                yf, hf, _ = ops.gru_forward(**{**kw, "x": kw["x"][::-1]})
            np.testing.assert_allclose(yb, yf, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(hb, hf, rtol=1e-12, atol=1e-13)


def test_recurrent_dropout_skips_the_carry():
    """Keras multiplies the dropout mask into the recurrent products only: an all-zero mask
    leaves h_t = z * h_{t-1} + (1 - z) * n with z, r, n computed as if h_{t-1} were 0."""
    rng = np.random.default_rng(8)
    for reset_after in FORMS:
        kw = make_problem(rng, np.float64, 1, 2, 3, 4, dict(h0=True), reset_after)
        zero = np.zeros((2, 4))
        for backend in ["numpy"] + compiled_backends():
            with fl.use_backend(backend):
                y, h, _ = ops.gru_forward(**{**kw, "recurrent_dropout_mask": zero})
                _, h_cold, _ = ops.gru_forward(**{**kw, "h0": zero})
            # h_cold = (1 - z) n with h_{t-1} = 0; with the mask, h adds z * h0.
            W, b = kw["kernel"], kw["bias"]
            xb = kw["x"][0] @ W + (b[0] if reset_after else b)
            rb = b[1] if reset_after else 0
            z = 1 / (1 + np.exp(-(xb[:, :4] + (rb[:4] if reset_after else 0))))
            np.testing.assert_allclose(h, h_cold + z * kw["h0"], rtol=1e-12, atol=1e-13)


def test_empty_batch():
    for reset_after in FORMS:
        kw = make_problem(np.random.default_rng(0), np.float32, 3, 0, 2, 4, {}, reset_after)
        for backend in ["numpy"] + compiled_backends():
            with fl.use_backend(backend):
                y, h, cache = ops.gru_forward(training=True, **kw)
                assert y.shape == (3, 0, 4) and h.shape == (0, 4)
                g = ops.gru_backward(cache, np.zeros_like(y))
            assert g.inputs.shape == (3, 0, 2) and np.all(g.kernel == 0)
            assert g.bias.shape == kw["bias"].shape


def test_no_input_features():
    """I = 0 is legal (the state still evolves from h0 and the biases)."""
    rng = np.random.default_rng(1)
    kw = make_problem(rng, np.float64, 3, 2, 0, 4, dict(h0=True))
    grads = output_grads(rng, np.float64, 3, 2, 4, True)
    for backend in compiled_backends():
        compare_backend(backend, kw, grads, np.dtype(np.float64))


def test_cache_serves_one_backward():
    kw = make_problem(np.random.default_rng(0), np.float32, 3, 2, 2, 4, {})
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            y, h, cache = ops.gru_forward(training=True, **kw)
            ops.gru_backward(cache, y)
            with pytest.raises(RuntimeError, match="already"):
                ops.gru_backward(cache, y)


# -- peers: PyTorch and Keras 3 on the same weights --------------------------------------

def _torch():
    return pytest.importorskip("torch")


def torch_to_keras_gru(m):
    """PyTorch: W_ih (3H, I), W_hh (3H, H), gates [r|z|n], biases b_ih, b_hh.
    Keras (reset_after=True): kernel (I, 3H), recurrent_kernel (H, 3H), blocks [z|r|h],
    bias (2, 3H) = [b_ih; b_hh] in [z|r|h] order."""
    H = m.hidden_size

    def zrh(a):   # rows [r|z|n] -> [z|r|n]
        return np.concatenate([a[H:2 * H], a[:H], a[2 * H:]], axis=0)

    def get(t):
        return t.detach().numpy()

    return (zrh(get(m.weight_ih_l0)).T.copy(), zrh(get(m.weight_hh_l0)).T.copy(),
            np.stack([zrh(get(m.bias_ih_l0)), zrh(get(m.bias_hh_l0))]))


@pytest.mark.peers
@pytest.mark.parametrize("backend", ["numpy"] + compiled_backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("B, T, I, H, go_backwards", [
    (3, 7, 5, 4, False), (1, 12, 3, 16, False), (8, 2, 16, 9, False), (4, 6, 5, 7, True)])
def test_matches_torch_gru(backend, dtype, B, T, I, H, go_backwards):
    torch = _torch()
    rng = np.random.default_rng(B * 100 + H)
    torch.manual_seed(T + H)
    m = torch.nn.GRU(I, H).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)       # non-trivial biases
    W, U, b = torch_to_keras_gru(m)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh = rng.standard_normal((B, H)).astype(dtype)

    # PyTorch has no go_backwards: feed it the reversed sequence (outputs come by step).
    xt = torch.from_numpy(np.ascontiguousarray(x[::-1] if go_backwards else x))
    xt.requires_grad_(True)
    h0t = torch.from_numpy(h0[None].copy()).requires_grad_(True)
    yt, ht = m(xt, h0t)
    ((yt * torch.from_numpy(dy)).sum() + (ht[0] * torch.from_numpy(dh)).sum()).backward()

    with fl.use_backend(backend):
        y, h, cache = ops.gru_forward(x, W, U, b, h0, go_backwards=go_backwards, training=True)
        g = ops.gru_backward(cache, dy, dh)
    dx_ref = xt.grad.numpy()
    if go_backwards:
        dx_ref = dx_ref[::-1]
    Wt, Ut, bt = torch_to_keras_gru(type("G", (), dict(
        hidden_size=H, weight_ih_l0=m.weight_ih_l0.grad, weight_hh_l0=m.weight_hh_l0.grad,
        bias_ih_l0=m.bias_ih_l0.grad, bias_hh_l0=m.bias_hh_l0.grad)))
    tol = PEER_TOL
    assert_close(y, yt.detach().numpy(), dtype, "y", tol)
    assert_close(h, ht[0].detach().numpy(), dtype, "h", tol)
    assert_close(g.inputs, dx_ref, dtype, "dx", tol)
    assert_close(g.h0, h0t.grad[0].numpy(), dtype, "dh0", tol)
    assert_close(g.kernel, Wt, dtype, "dkernel", tol)
    assert_close(g.recurrent_kernel, Ut, dtype, "drecurrent_kernel", tol)
    assert_close(g.bias, bt, dtype, "dbias", tol)


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("reset_after", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_matches_keras_gru_forward(reset_after, go_backwards):
    """Keras 3 GRU (torch backend) with a mask and an initial state: both forms."""
    pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(11)
    B, T, I, H = 3, 6, 4, 5
    layer = keras.layers.GRU(H, reset_after=reset_after, return_sequences=True,
                             return_state=True, go_backwards=go_backwards)
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
            y, h, _ = ops.gru_forward(x.transpose(1, 0, 2), *ws, h0, reset_after=reset_after,
                                      mask=mask.T, go_backwards=go_backwards)
        assert_close(y.transpose(1, 0, 2), out, np.float32, f"{backend} y", PEER_TOL)
        assert_close(h, hT, np.float32, f"{backend} h", PEER_TOL)


# -- bad input --------------------------------------------------------------------------

def _good(reset_after=True, dtype=np.float32):
    return make_problem(np.random.default_rng(0), dtype, 3, 2, 4, 5, {}, reset_after)


@pytest.mark.parametrize("reset_after, arg, value, exc, words", [
    (True, "x", np.zeros((3, 2)), ValueError, "x: expected a 3-D"),
    (True, "x", np.zeros((0, 2, 4)), ValueError, "at least one timestep"),
    (False, "x", np.zeros((0, 2, 4)), ValueError, "at least one timestep"),
    (True, "x", np.zeros((3, 2, 5)), ValueError, "kernel: expected shape (5, 15), got (4, 15)"),
    (True, "x", np.full((3, 2, 4), "a"), TypeError, "x: expected a real numeric array"),
    (True, "kernel", np.zeros((4, 14), np.float32), ValueError,
     "kernel: expected shape (4, 15), got (4, 14)"),
    (True, "recurrent_kernel", np.zeros((5, 20), np.float32), ValueError,
     "recurrent_kernel: expected shape (H, 3*H), got (5, 20)"),
    (True, "bias", np.zeros(15), ValueError, "bias: expected shape (2, 15), got (15)"),
    (True, "bias", np.zeros((2, 14)), ValueError, "bias: expected shape (2, 15), got (2, 14)"),
    (False, "bias", np.zeros((2, 15)), ValueError, "bias: expected shape (15), got (2, 15)"),
    (False, "bias", np.zeros(14), ValueError, "bias: expected shape (15), got (14)"),
    (True, "h0", np.zeros((2, 4)), ValueError, "h0: expected shape (2, 5), got (2, 4)"),
    (True, "mask", np.ones((2, 3), bool), ValueError, "mask: expected shape (3, 2), got (2, 3)"),
    (False, "mask", np.ones((3,), bool), ValueError, "mask: expected shape (3, 2), got (3)"),
    (True, "mask", np.ones((3, 2), np.float32), TypeError, "mask: expected a boolean"),
    (True, "recurrent_dropout_mask", np.ones((2, 4)), ValueError,
     "recurrent_dropout_mask: expected shape (2, 5), got (2, 4)"),
    (True, "input_dropout_mask", np.ones((2, 5)), ValueError,
     "input_dropout_mask: expected shape (2, 4), got (2, 5)"),
    (True, "activation", "swish", ValueError, "activation: unknown activation 'swish'"),
    (False, "recurrent_activation", 3, TypeError, "recurrent_activation"),
    (True, "kernel", np.zeros((4, 15), np.int32), TypeError, "kernel: expected float32 or float64"),
])
def test_bad_input_names_the_argument(reset_after, arg, value, exc, words):
    kw = _good(reset_after)
    kw[arg] = value
    for backend in ["numpy"] + compiled_backends():
        with fl.use_backend(backend):
            with pytest.raises(exc) as info:
                ops.gru_forward(**kw)
        assert words in str(info.value)


def test_bias_error_explains_the_form():
    kw = _good(True)
    kw["bias"] = np.zeros(15, np.float32)
    with pytest.raises(ValueError, match=r"reset_after=True takes a bias of shape \(2, 3\*H\)"):
        ops.gru_forward(**kw)


def test_bad_backward_arguments():
    y, h, cache = ops.gru_forward(training=True, **_good())
    with pytest.raises(ValueError, match=r"dy: expected shape \(3, 2, 5\), got \(2, 3, 5\)"):
        ops.gru_backward(cache, np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"dh: expected shape \(2, 5\), got \(5\)"):
        ops.gru_backward(cache, None, np.zeros(5))
    with pytest.raises(TypeError, match="cache"):
        ops.gru_backward("not a cache")
    y, h, cache = ops.gru_forward(training=False, **_good())
    with pytest.raises(TypeError, match="cache"):
        ops.gru_backward(cache)
    kw = _good()
    rng = np.random.default_rng(0)
    _, _, _, lstm_cache = ops.lstm_forward(
        kw["x"], rng.standard_normal((4, 20)), rng.standard_normal((5, 20)), training=True)
    with pytest.raises(ValueError, match="cache: expected the cache of gru_forward"):
        ops.gru_backward(lstm_cache)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_nan_input_propagates_without_crashing():
    for reset_after in FORMS:
        kw = _good(reset_after)
        kw["x"] = kw["x"].copy()
        kw["x"][1, 0, 2] = np.nan
        kw["x"][2, 1, 0] = np.inf
        for backend in ["numpy"] + compiled_backends():
            with fl.use_backend(backend):
                y, h, cache = ops.gru_forward(training=True, **kw)
                ops.gru_backward(cache, np.ones_like(y))
            assert np.isnan(y[1:, 0]).any()
            assert np.isfinite(y[0]).all()


def test_layouts_and_dtypes_give_the_same_answer():
    """Fortran-ordered, strided and float64-into-float32 inputs match contiguous ones."""
    kw = _good()
    ref = ops.gru_forward(**kw)[0]
    big = np.zeros((6, 2, 8), np.float32)
    big[::2, :, ::2] = kw["x"]
    for x in (np.asfortranarray(kw["x"]), big[::2, :, ::2], kw["x"].astype(np.float64)):
        out = ops.gru_forward(**{**kw, "x": x})[0]
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, ref)
    out = ops.gru_forward(**{**kw, "bias": np.asfortranarray(kw["bias"])})[0]
    np.testing.assert_array_equal(out, ref)
