"""Tests of fastlstm.initializers: formulas, determinism, orthogonality, Keras parity."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from fastlstm import initializers as I

TRUNC = 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]

# Large enough that the sample std has ~0.2% relative error; the 3% tolerances below are
# >10 sigma, while a factor-2 error in a variance moves the std by 41% (and a wrong fan by
# far more than 3% for the asymmetric shapes used).
BIG = (300, 400)


def draw(init, shape=BIG, dtype="float64"):
    return init(shape, dtype)


def check_mean_std(x, mean, std, rtol=0.03):
    n = x.size
    assert abs(x.mean() - mean) < 6 * std / math.sqrt(n) + 1e-12
    assert x.std() == pytest.approx(std, rel=rtol)


# ------------------------------------------------------------------ fans and variance scaling


def test_compute_fans():
    assert I.compute_fans(()) == (1, 1)
    assert I.compute_fans((7,)) == (7, 7)
    assert I.compute_fans((3, 5)) == (3, 5)
    assert I.compute_fans((2, 3, 4, 5)) == (4 * 6, 5 * 6)  # receptive field 2*3
    assert I.compute_fans((2, 3, 4), input_axes=[0, 1], output_axes=[2]) == (6, 4)


# (initializer, expected distribution, variance as a function of (fan_in, fan_out))
VS_CASES = [
    ("glorot_uniform", "uniform", lambda i, o: 2.0 / (i + o)),
    ("glorot_normal", "truncated", lambda i, o: 2.0 / (i + o)),
    ("he_uniform", "uniform", lambda i, o: 2.0 / i),
    ("he_normal", "truncated", lambda i, o: 2.0 / i),
    ("lecun_uniform", "uniform", lambda i, o: 1.0 / i),
    ("lecun_normal", "truncated", lambda i, o: 1.0 / i),
]


@pytest.mark.parametrize("name,dist,variance", VS_CASES)
@pytest.mark.parametrize("shape", [(200, 800), (3, 3, 32, 64)])
def test_variance_scaling_presets(name, dist, variance, shape):
    x = draw(I.get(name), shape)
    fan_in, fan_out = I.compute_fans(shape)
    std = math.sqrt(variance(fan_in, fan_out))
    check_mean_std(x, 0.0, std)
    if dist == "uniform":
        limit = math.sqrt(3.0) * std
        assert np.abs(x).max() <= limit
        assert np.abs(x).max() > 0.999 * limit
    else:
        bound = 2.0 * std / TRUNC  # truncation at 2 raw stddevs
        assert np.abs(x).max() <= bound
        assert np.abs(x).max() > 0.99 * bound


@pytest.mark.parametrize("mode,n", [("fan_in", 200), ("fan_out", 800), ("fan_avg", 500)])
@pytest.mark.parametrize("distribution", ["truncated_normal", "untruncated_normal", "uniform"])
def test_variance_scaling_modes(mode, n, distribution):
    init = I.VarianceScaling(scale=3.0, mode=mode, distribution=distribution, seed=1)
    x = draw(init, (200, 800))
    std = math.sqrt(3.0 / n)
    check_mean_std(x, 0.0, std)
    if distribution == "untruncated_normal":
        assert np.abs(x).max() > 3.5 * std  # not truncated: 160k draws reach past 4 sigma


def test_variance_scaling_normal_alias_and_axes():
    assert I.VarianceScaling(distribution="Normal").distribution == "truncated_normal"
    init = I.VarianceScaling(scale=1.0, mode="fan_in", distribution="untruncated_normal",
                             input_axes=[1], output_axes=[0], seed=0)
    x = draw(init, (100, 2500))  # fan_in taken from axis 1: 2500, not 100
    check_mean_std(x, 0.0, math.sqrt(1.0 / 2500))


# ------------------------------------------------------------------ simple distributions


def test_random_normal():
    check_mean_std(draw(I.RandomNormal(mean=0.3, stddev=0.2, seed=0)), 0.3, 0.2)
    check_mean_std(draw(I.get("random_normal")), 0.0, 0.05)


def test_random_uniform():
    x = draw(I.RandomUniform(minval=-0.1, maxval=0.3, seed=0))
    assert x.min() >= -0.1 and x.max() < 0.3
    assert x.min() < -0.0999 and x.max() > 0.2999
    check_mean_std(x, 0.1, 0.4 / math.sqrt(12.0))
    y = draw(I.get("random_uniform"))
    assert np.abs(y).max() <= 0.05
    check_mean_std(y, 0.0, 0.1 / math.sqrt(12.0))


def test_truncated_normal_bounds_and_std():
    x = draw(I.TruncatedNormal(mean=1.0, stddev=0.5, seed=3))
    assert x.min() >= 0.0 and x.max() <= 2.0  # mean +- 2 stddev
    assert x.min() < 0.01 and x.max() > 1.99  # re-drawn, not clipped: no pile-up at the edge
    assert np.mean(np.abs(x - 1.0) > 0.99) < 0.005
    check_mean_std(x, 1.0, 0.5 * TRUNC)  # Keras does not correct the std here


def test_constants_and_identity():
    assert np.array_equal(I.get("zeros")((2, 3)), np.zeros((2, 3), np.float32))
    assert np.array_equal(I.get("ones")((4,), "float64"), np.ones(4))
    assert np.array_equal(I.Constant(2.5)((2, 2)), np.full((2, 2), 2.5, np.float32))
    assert np.array_equal(I.get("identity")((3, 3)), np.eye(3, dtype=np.float32))
    assert np.array_equal(I.Identity(gain=2.0)((2, 4), "float64"), 2.0 * np.eye(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        I.Identity()((2, 2, 2))
    with pytest.raises(ValueError, match="finite"):
        I.Constant(float("nan"))
    with pytest.raises(TypeError):
        I.Constant([1.0, 2.0])


@pytest.mark.parametrize("name", ["zeros", "glorot_uniform", "orthogonal", "truncated_normal"])
@pytest.mark.parametrize("dtype", ["float32", "float64", np.float32, None])
def test_dtype_and_shape(name, dtype):
    x = I.get(name)((6, 4), dtype)
    assert x.shape == (6, 4)
    assert x.dtype == np.dtype(dtype if dtype is not None else "float32")


# ------------------------------------------------------------------ determinism


SEEDED = ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform",
          "lecun_normal", "orthogonal", "random_normal", "random_uniform", "truncated_normal",
          "variance_scaling"]


@pytest.mark.parametrize("name", SEEDED)
def test_seed_determinism(name):
    cls = type(I.get(name))
    a = cls(seed=42)
    x = a((20, 30), "float64")
    # Same instance twice (Keras 3 behaviour with an integer seed), a new instance, a clone.
    assert np.array_equal(x, a((20, 30), "float64"))
    assert np.array_equal(x, cls(seed=42)((20, 30), "float64"))
    assert np.array_equal(x, a.clone()((20, 30), "float64"))
    assert not np.array_equal(x, cls(seed=43)((20, 30), "float64"))
    # One float64 draw, cast: float32 weights equal the rounded float64 ones.
    assert np.array_equal(a((20, 30), "float32"), x.astype(np.float32))
    # Unseeded: fresh randomness on every call.
    b = cls()
    assert not np.array_equal(b((20, 30)), b((20, 30)))


def test_seeded_values_are_stable():
    # Fixed values for seed 0: a change here silently changes every seeded model.
    np.testing.assert_allclose(
        I.RandomUniform(seed=0)((4,), "float64"),
        [0.013696168732145436, -0.02302132862361297, -0.045902647606380534,
         -0.04834723644714709], rtol=0, atol=1e-15)
    np.testing.assert_allclose(
        I.GlorotNormal(seed=0)((2, 3), "float64"),
        [[0.09040069815702938, -0.09498409982594189, 0.46046729427639616],
         [0.07542374255704912, -0.38514913036804715, 0.25998876904595264]],
        rtol=0, atol=1e-14)
    np.testing.assert_allclose(
        I.Orthogonal(seed=0)((2, 3), "float64"),
        [[0.14891146369604535, 0.7584992170718539, -0.6344322766704784],
         [-0.2958464187298021, 0.6463718479044211, 0.7033337264495242]],
        rtol=0, atol=1e-10)


def test_bad_seeds():
    for bad in (-1, -100):
        with pytest.raises(ValueError, match="seed"):
            I.GlorotUniform(seed=bad)
    for bad in (1.5, "1", True, [1]):
        with pytest.raises(TypeError, match="seed"):
            I.RandomNormal(seed=bad)
    assert I.Orthogonal(seed=np.int64(5)).seed == 5


# ------------------------------------------------------------------ orthogonal


@pytest.mark.parametrize("shape", [(50, 50), (80, 30), (30, 80), (4, 5, 30), (2, 3, 4)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal(shape, gain):
    q = I.Orthogonal(gain=gain, seed=7)(shape, "float64")
    assert q.shape == shape
    m = q.reshape(-1, shape[-1])
    rows, cols = m.shape
    gram = m.T @ m if rows >= cols else m @ m.T  # orthonormal columns, else rows
    np.testing.assert_allclose(gram, gain ** 2 * np.eye(min(rows, cols)), atol=1e-6 * gain ** 2)


@pytest.mark.parametrize("shape", [(40, 15), (15, 40)])
def test_orthogonal_is_sign_corrected_qr_of_the_seeded_draw(shape):
    # Q must come from the QR of the seed's normal matrix with diag(R) > 0.
    q = I.Orthogonal(seed=11)(shape, "float64")
    tall = q if shape[0] >= shape[1] else q.T
    a = np.random.default_rng(11).standard_normal(tall.shape)
    r = tall.T @ a
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-10)
    assert np.all(np.diag(r) > 0)


def test_orthogonal_needs_rank_2():
    with pytest.raises(ValueError, match="rank"):
        I.Orthogonal()((5,))


def test_orthogonal_runs_its_qr_on_one_blas_thread(monkeypatch):
    # NumPy's BLAS on one thread during the QR (its idle workers would spin against the
    # kernels' first calls), the caller's thread counts restored afterwards, same values.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fastlstm.threads import _blas

    libs = _blas(numpy=True)
    if not any("numpy" in c.filepath.replace(os.sep, "/") for c in libs):
        pytest.skip("threadpoolctl does not see NumPy's BLAS here")
    seen = []
    qr = np.linalg.qr

    def spy(a, *args, **kwargs):
        seen.append([c.num_threads for c in libs])
        return qr(a, *args, **kwargs)

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = [c.num_threads for c in libs]
        q, r = qr(np.random.default_rng(5).standard_normal((96, 64)))   # as many threads as given
        expected = (q * np.where(np.diag(r) < 0.0, -1.0, 1.0)).T
        monkeypatch.setattr(np.linalg, "qr", spy)
        got = I.Orthogonal(seed=5)((64, 96), "float64")
        after = [c.num_threads for c in libs]
    assert seen == [[1] * len(libs)]
    assert after == before
    assert np.array_equal(got, expected)


# ------------------------------------------------------------------ recurrent helpers


@pytest.mark.parametrize("blocks", [1, 3, 4])
def test_recurrent_kernel_is_one_orthogonal_matrix(blocks):
    h = 16
    k = I.recurrent_kernel(I.Orthogonal(seed=3), h, blocks, "float64")
    assert k.shape == (h, blocks * h)
    # Keras calls the initializer once on (H, blocks*H): identical to a direct call ...
    assert np.array_equal(k, I.Orthogonal(seed=3)((h, blocks * h), "float64"))
    # ... so the whole matrix has orthonormal rows,
    np.testing.assert_allclose(k @ k.T, np.eye(h), atol=1e-6)
    # and the gate blocks are orthogonal only when there is a single block.
    block = k[:, :h]
    assert np.allclose(block.T @ block, np.eye(h), atol=1e-6) == (blocks == 1)


def test_recurrent_kernel_spec_and_dtype():
    k = I.recurrent_kernel("orthogonal", 5, 4, "float32")
    assert k.shape == (5, 20) and k.dtype == np.float32 and k.flags.c_contiguous
    with pytest.raises(ValueError, match="units"):
        I.recurrent_kernel("orthogonal", 0, 4)
    with pytest.raises(ValueError, match="recurrent_initializer"):
        I.recurrent_kernel(lambda shape, dtype: np.zeros((2, 2)), 3, 4)


def test_lstm_bias():
    h = 3
    z = I.lstm_bias("zeros", h, 4, True, 1, "float64")
    np.testing.assert_array_equal(z, np.r_[np.zeros(h), np.ones(h), np.zeros(2 * h)])
    # The bias initializer still applies to the other blocks (Keras 3 does not force zeros).
    c = I.lstm_bias(I.Constant(0.5), h, dtype="float32")
    assert c.dtype == np.float32
    np.testing.assert_array_equal(c, np.r_[np.full(h, 0.5), np.ones(h), np.full(2 * h, 0.5)])
    np.testing.assert_array_equal(I.lstm_bias(I.Constant(0.5), h, 4, False, 1),
                                  np.full(4 * h, 0.5, np.float32))
    # CIFG layout [f|c|o]: forget block first.
    np.testing.assert_array_equal(I.lstm_bias(I.Constant(0.5), h, 3, True, 0),
                                  np.r_[np.ones(h), np.full(2 * h, 0.5)].astype(np.float32))


def test_lstm_bias_calls_the_initializer_twice_like_keras():
    # Keras calls bias_initializer on (H,) then (2H,): with a seeded initializer the c block
    # repeats the i block (a Keras quirk we reproduce for weight-for-weight parity).
    h = 4
    init = I.RandomNormal(seed=9)
    b = I.lstm_bias(init, h, dtype="float64")
    np.testing.assert_array_equal(b[:h], init((h,), "float64"))
    np.testing.assert_array_equal(b[h:2 * h], np.ones(h))
    np.testing.assert_array_equal(b[2 * h:], init((2 * h,), "float64"))
    np.testing.assert_array_equal(b[2 * h:3 * h], b[:h])
    calls = []
    I.lstm_bias(lambda shape, dtype: calls.append(shape) or np.zeros(shape), h)
    assert calls == [(h,), (2 * h,)]
    with pytest.raises(ValueError, match="forget_block_index"):
        I.lstm_bias("zeros", h, 4, True, 4)


# ------------------------------------------------------------------ get / config


@pytest.mark.parametrize("name", I._KNOWN)
def test_config_round_trip(name):
    init = I.get(name)
    cfg = I.serialize(init)
    back = I.get(json.loads(json.dumps(cfg)))
    assert type(back) is type(init) and back.get_config() == init.get_config()


def test_config_round_trip_with_values():
    init = I.VarianceScaling(2.0, "fan_out", "uniform", seed=5, input_axes=[0],
                             output_axes=[1])
    back = I.VarianceScaling.from_config(json.loads(json.dumps(init.get_config())))
    assert np.array_equal(back((5, 6)), init((5, 6)))
    assert I.serialize(None) is None
    with pytest.raises(TypeError, match="Initializer"):
        I.serialize(lambda shape, dtype: np.zeros(shape))
    keras_style = {"module": "keras.initializers", "class_name": "TruncatedNormal",
                   "config": {"seed": 1, "mean": 0.0, "stddev": 0.1}, "registered_name": None}
    t = I.get(keras_style)
    assert isinstance(t, I.TruncatedNormal) and t.stddev == 0.1 and t.seed == 1


def test_get_accepts_names_instances_classes_callables_arrays():
    assert isinstance(I.get("GlorotUniform"), I.GlorotUniform)
    assert isinstance(I.get("normal"), I.RandomNormal)
    assert isinstance(I.get(I.HeNormal), I.HeNormal)
    inst = I.Orthogonal(seed=1)
    assert I.get(inst) is inst

    def fn(shape, dtype):
        return np.full(shape, 3.0, dtype)

    assert I.get(fn) is fn
    np.testing.assert_array_equal(I.initialize(fn, (2, 2), "float64"), np.full((2, 2), 3.0))
    arr = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(I.get(arr)((2, 3)), arr.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        I.get(arr)((3, 2))


def test_get_errors_name_the_argument():
    with pytest.raises(ValueError) as err:
        I.get("glorot", argument="recurrent_initializer")
    msg = str(err.value)
    assert "recurrent_initializer" in msg and "'glorot'" in msg and "glorot_uniform" in msg
    for bad in (None, 3, [1, 2], object()):
        with pytest.raises(TypeError, match="kernel_initializer"):
            I.get(bad)
    with pytest.raises(TypeError, match="bias_initializer"):
        I.get({"class_name": "RandomNormal", "config": {"sigma": 1}},
              argument="bias_initializer")
    with pytest.raises(ValueError, match="kernel_initializer.*scale"):
        I.get({"class_name": "VarianceScaling", "config": {"scale": -1.0}})
    with pytest.raises(ValueError, match="mode"):
        I.VarianceScaling(mode="fan_sum")
    with pytest.raises(ValueError, match="distribution"):
        I.VarianceScaling(distribution="laplace")


def test_bad_shape_and_dtype():
    with pytest.raises(ValueError, match="shape"):
        I.Zeros()((2, -1))
    with pytest.raises(TypeError, match="shape"):
        I.Zeros()((2, 1.5))
    with pytest.raises(ValueError, match="dtype"):
        I.Ones()((2,), "int32")
    with pytest.raises(TypeError, match="dtype"):
        I.Ones()((2,), "floaty")


# ------------------------------------------------------------------ Keras 3 peers


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def _keras_np(x):
    import keras as k

    return np.asarray(k.ops.convert_to_numpy(x), dtype=np.float64)


@pytest.mark.peers
@pytest.mark.parametrize("name", ["glorot_uniform", "glorot_normal", "he_uniform",
                                  "he_normal", "lecun_uniform", "lecun_normal",
                                  "random_normal", "random_uniform", "truncated_normal"])
def test_statistics_match_keras(keras, name):
    ours = I.get(name)((300, 400), "float64")
    theirs = _keras_np(keras.initializers.get(name)((300, 400), "float32"))
    # Sample stds have ~0.2-0.3% relative error each; 2% is far outside sampling error but
    # far inside any formula difference (a variance off by 2 moves the std 41%).
    assert ours.std() == pytest.approx(theirs.std(), rel=0.02)
    # Compare the tails by a high quantile, not the max: Keras's torch backend truncates by
    # picking the first of 4 candidates inside +-2 stddev and keeps an untruncated value when
    # all 4 fall outside (probability ~4e-6 per element), so its max can exceed the bound.
    q = 0.99  # at 0.999 the untruncated normal's quantile is too noisy for 3%
    assert np.quantile(np.abs(ours), q) == pytest.approx(np.quantile(np.abs(theirs), q),
                                                         rel=0.03)


@pytest.mark.peers
@pytest.mark.parametrize("name", I._KNOWN)
def test_configs_match_keras(keras, name):
    # Same class names and config keys: configs interchange in both directions.
    ours = I.get(name)
    # keras.initializers.get("constant") raises KeyError in Keras 3 (Constant.from_config
    # needs "value"), so build that one directly.
    theirs = (keras.initializers.Constant() if name == "constant"
              else keras.initializers.get(name))
    assert type(ours).__name__ == type(theirs).__name__
    # Keras 3's Identity.get_config() omits `gain` (a non-default gain is lost); ours keeps it,
    # and Keras reads it back since `gain` is a constructor argument.
    extra = {"gain"} if name == "identity" else set()
    assert {k: v for k, v in ours.get_config().items() if k not in extra} == theirs.get_config()
    assert type(keras.initializers.get(I.serialize(ours))) is type(theirs)
    if name == "identity":
        back = keras.initializers.get(I.serialize(I.Identity(gain=2.0)))
        np.testing.assert_array_equal(_keras_np(back((2, 2))), 2.0 * np.eye(2))


@pytest.mark.peers
def test_recurrent_kernel_and_bias_match_keras_layers(keras):
    h = 6
    for layer_cls, blocks in ((keras.layers.LSTM, 4), (keras.layers.GRU, 3),
                              (keras.layers.SimpleRNN, 1)):
        layer = layer_cls(h, bias_initializer=keras.initializers.Constant(0.5))
        layer.build((None, 2, 3))
        k = _keras_np(layer.cell.recurrent_kernel.value)
        ours = I.recurrent_kernel("orthogonal", h, blocks, "float64")
        assert k.shape == ours.shape
        for m in (k, ours):  # the same structure: one orthogonal (H, blocks*H) matrix
            np.testing.assert_allclose(m @ m.T, np.eye(h), atol=1e-5)
            blk = m[:, :h]
            assert np.allclose(blk.T @ blk, np.eye(h), atol=1e-3) == (blocks == 1)
        if layer_cls is keras.layers.LSTM:
            np.testing.assert_array_equal(_keras_np(layer.cell.bias.value),
                                          I.lstm_bias(I.Constant(0.5), h, dtype="float64"))
    layer = keras.layers.LSTM(h, unit_forget_bias=False, bias_initializer="ones")
    layer.build((None, 2, 3))
    np.testing.assert_array_equal(_keras_np(layer.cell.bias.value),
                                  I.lstm_bias("ones", h, 4, False, 1, "float64"))
