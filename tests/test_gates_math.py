"""The vectorized activations of the compiled kernels (fastlstm/include/gates_math.h) against NumPy,
on every ISA variant: exp-based ones within a few ulp, the others exact."""
import numpy as np
import pytest

from fastlstm import activations as A

from conftest import DTYPES

LEVELS = [0, 1, 2]


def _points(dtype):
    x = np.concatenate([np.linspace(-30, 30, 20001), np.linspace(-1e-3, 1e-3, 1001),
                        np.geomspace(1e-30, 20, 500), -np.geomspace(1e-30, 20, 500),
                        [0.0, -0.0, 0.5499, 0.5501, 0.2499, 0.2501, 87.9, -86.9, 100, -100]])
    return x.astype(dtype)


def _reference(name, x):
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        return {"tanh": np.tanh(x64), "sigmoid": 1 / (1 + np.exp(-x64))}[name]


@pytest.fixture(params=LEVELS, ids=["baseline", "avx2", "avx512"])
def level(request):
    from fastlstm import _gates
    _gates.force_isa_level(request.param)
    yield request.param
    _gates.force_isa_level(-1)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_exp_based_activations_within_a_few_ulp(level, dtype, name):
    from fastlstm import _gates
    x = _points(dtype)
    z = x.copy()
    _gates.activation_forward(z, A.get(name))
    ref = _reference(name, x)
    eps = np.finfo(dtype).eps
    big = np.abs(ref) > np.finfo(dtype).tiny * 1e6       # relative error where it means something
    rel = np.abs(z[big] - ref[big]) / np.abs(ref[big])
    assert rel.max() < 4 * eps, f"{name} {np.dtype(dtype).name}: {rel.max() / eps:.2f} ulp"
    assert np.abs(z - ref).max() < 2 * eps                  # and tiny absolutely everywhere
    nan = np.array([np.nan], dtype)
    _gates.activation_forward(nan, A.get(name))
    assert np.isnan(nan[0])
    if name == "tanh":              # exact at the ends, and a zero keeps its sign
        ends = np.array([-np.inf, np.inf, -0.0, 0.0], dtype)
        _gates.activation_forward(ends, A.get(name))
        np.testing.assert_array_equal(ends, np.array([-1.0, 1.0, 0.0, 0.0], dtype))
        assert np.signbit(ends[2]) and not np.signbit(ends[3])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act", ["hard_sigmoid", A.HardSigmoid(0.2, 0.5), "relu", "linear",
                                 "softsign"])
def test_other_activations_and_every_gradient(level, dtype, act):
    from fastlstm import _gates
    act = A.get(act)
    x = _points(dtype)
    z = x.copy()
    _gates.activation_forward(z, act)
    eps = np.finfo(dtype).eps     # C may fuse alpha*x + beta into one FMA: absolute slack too
    np.testing.assert_allclose(z, act(x), rtol=2 * eps, atol=2 * eps)
    for a in (act, A.get("tanh"), A.get("sigmoid")):
        y = a(x)
        g = np.linspace(-2, 2, x.size).astype(dtype)
        out = np.empty_like(y)
        _gates.activation_grad(y, g, out, a)
        np.testing.assert_allclose(out, g * a.grad_from_output(y), rtol=4 * eps, atol=4 * eps)


def test_forcing_a_variant_reaches_every_extension():
    """Each extension compiles its own copy of the ISA dispatch; forcing a variant must reach
    all of them, or the LSTM/GRU/SimpleRNN tests "per ISA variant" would run AVX-512 only."""
    from fastlstm import _gates, _gru, _lstm, _simple_rnn, _step
    best = _gates.isa_level()
    try:
        for level in range(best + 1):
            _gates.force_isa_level(level)
            assert [m.isa_level_here() for m in (_lstm, _gru, _simple_rnn, _step)] == [level] * 4
    finally:
        _gates.force_isa_level(-1)
    assert [m.isa_level_here() for m in (_lstm, _gru, _simple_rnn, _step)] == [best] * 4


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_relu_propagates_nan_and_keeps_numpys_zeros(level, dtype):
    """As NumPy's maximum(z, 0), PyTorch and Keras: NaN stays NaN (it was turned into 0),
    -0.0 becomes +0.0."""
    from fastlstm import _gates
    x = np.array([np.nan, -np.nan, -0.0, 0.0, -1.0, 2.0, np.inf, -np.inf], dtype)
    z = x.copy()
    _gates.activation_forward(z, A.get("relu"))
    ref = A.get("relu")(x)
    np.testing.assert_array_equal(z, ref)
    assert np.array_equal(np.signbit(z), np.signbit(ref))


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
def test_relu_layers_propagate_nan_like_the_oracle(cell):
    """A NaN in one row's input reaches that row's outputs on every backend, in the sequence
    call and in step; the other rows stay finite."""
    import fastlstm as fl
    from conftest import compiled_backends
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    x[1, 2, 0] = np.nan
    layer = getattr(fl.layers, cell)(6, activation="relu", return_sequences=True, seed=0)
    with fl.use_backend("numpy"):
        ref = layer(x)
    assert np.isnan(ref[1, 2:]).all() and np.isfinite(ref[[0, 2]]).all()
    for backend in compiled_backends():
        with fl.use_backend(backend):
            np.testing.assert_array_equal(np.isnan(layer(x)), np.isnan(ref), err_msg=backend)
    state = layer.get_initial_state(3)
    for t in range(4):
        y, state = layer.step(x[:, t], state)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref[:, -1]))
