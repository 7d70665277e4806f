"""mixed_bfloat16: the compiled kernels against the NumPy oracle's roundings (every cell and
option, forward and every gradient), mixed against float32 gradients, small gradients, the
policy API (against Keras's), layers, fit/predict and the save/load round trip."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm import mixed_precision, ops
from fastlstm.backends.oracle.lowp import bf16_round, mixed_matmul

T, B, I, H = 7, 5, 6, 16

CELLS = ["lstm", "lstm_peephole", "lstm_coupled", "gru_reset_after", "gru_reset_before",
         "simple_rnn"]
OPTIONS = ["plain", "go_backwards", "mask", "dropout", "no_bias", "last_output"]


def _problem(cell, option, seed=0):
    rng = np.random.default_rng(seed)
    blocks = {"lstm": 4, "lstm_peephole": 4, "lstm_coupled": 3}.get(cell, 3)
    blocks = 1 if cell == "simple_rnn" else blocks
    G = blocks * H
    p = dict(x=rng.standard_normal((T, B, I)).astype(np.float32),
             W=(rng.standard_normal((I, G)) * 0.4).astype(np.float32),
             U=(rng.standard_normal((H, G)) * 0.3).astype(np.float32),
             h0=rng.standard_normal((B, H)).astype(np.float32) * 0.5,
             c0=rng.standard_normal((B, H)).astype(np.float32) * 0.5,
             dh=rng.standard_normal((B, H)).astype(np.float32),
             dc=rng.standard_normal((B, H)).astype(np.float32))
    if cell == "gru_reset_after":
        p["b"] = rng.standard_normal((2, G)).astype(np.float32) * 0.1
    else:
        p["b"] = rng.standard_normal(G).astype(np.float32) * 0.1
    if option == "no_bias":
        p["b"] = None
    p["P"] = (rng.standard_normal((3, H)) * 0.3).astype(np.float32) if cell == "lstm_peephole" else None
    kw = dict(go_backwards=option == "go_backwards", return_sequences=option != "last_output")
    if option == "mask":
        m = rng.random((T, B)) > 0.3
        m[0, 0] = False
        kw["mask"] = m
    if option == "dropout":
        kw["input_dropout_mask"] = (rng.random((B, I)) > 0.3).astype(np.float32) / 0.7
        kw["recurrent_dropout_mask"] = (rng.random((B, H)) > 0.3).astype(np.float32) / 0.7
    shape = (T, B, H) if kw["return_sequences"] else (B, H)
    p["dy"] = rng.standard_normal(shape).astype(np.float32)
    p["kw"] = kw
    return p


def _run(cell, p, mixed, dy_scale=1.0):
    """(outputs, gradients) of one forward and backward pass as a flat list of arrays."""
    kw = p["kw"]
    dy = p["dy"] * np.float32(dy_scale)
    dh = p["dh"] * np.float32(dy_scale)
    if cell.startswith("lstm"):
        y, h, c, cache = ops.lstm_forward(p["x"], p["W"], p["U"], p["b"], p["h0"], p["c0"],
                                          peephole=p["P"],
                                          coupled_input_forget=cell == "lstm_coupled",
                                          training=True, mixed=mixed, **kw)
        g = ops.lstm_backward(cache, dy, dh, p["dc"] * np.float32(dy_scale))
        grads = [g.inputs, g.h0, g.c0, g.kernel, g.recurrent_kernel, g.bias, g.peephole]
        outs = [y, h, c]
    elif cell.startswith("gru"):
        y, h, cache = ops.gru_forward(p["x"], p["W"], p["U"], p["b"], p["h0"],
                                      reset_after=cell == "gru_reset_after", training=True,
                                      mixed=mixed, **kw)
        g = ops.gru_backward(cache, dy, dh)
        grads = [g.inputs, g.h0, g.kernel, g.recurrent_kernel, g.bias]
        outs = [y, h]
    else:
        y, h, cache = ops.simple_rnn_forward(p["x"], p["W"], p["U"], p["b"], p["h0"],
                                             training=True, mixed=mixed, **kw)
        g = ops.simple_rnn_backward(cache, dy, dh)
        grads = [g.inputs, g.h0, g.kernel, g.recurrent_kernel, g.bias]
        outs = [y, h]
    keep = lambda arrs: [np.array(a) for a in arrs if a is not None]   # noqa: E731
    return keep(outs), keep(grads)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_compiled_matches_the_oracle(cell, option):
    p = _problem(cell, option)
    with fl.use_backend("numpy"):
        ref_out, ref_grads = _run(cell, p, True)
    with fl.use_backend("cpu"):
        out, grads = _run(cell, p, True)
    assert len(out) == len(ref_out) and len(grads) == len(ref_grads)
    # Accumulation order differs; a value that lands on the other side of a bf16 rounding
    # boundary moves one operand by 2^-9 relative, so allow well below bf16's own error.
    for a, r in zip(out + grads, ref_out + ref_grads):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, r, rtol=0, atol=2e-4 * max(1.0, np.abs(r).max()))


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_mixed_gradients_within_1e_2_of_float32(cell, option):
    p = _problem(cell, option, seed=1)
    out32, g32 = _run(cell, p, False)
    outm, gm = _run(cell, p, True)
    for a, r in zip(gm, g32):
        assert _rel(a, r) < 1e-2
    for a, r in zip(outm, out32):
        assert _rel(a, r) < 1e-2
    # ... and the products did run in bf16: the results are not float32's.
    assert max(float(np.abs(a - r).max()) for a, r in zip(gm, g32)) > 1e-6


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_after", "gru_reset_before", "simple_rnn"])
def test_small_gradients_do_not_underflow(cell):
    # bf16 has float32's exponent range: a loss scaled by 1e-30 keeps its gradients (no
    # loss scaling needed, unlike float16, whose smallest normal is 6e-5).
    p = _problem(cell, "plain", seed=2)
    _, g32 = _run(cell, p, False, dy_scale=1e-30)
    _, gm = _run(cell, p, True, dy_scale=1e-30)
    _, gm1 = _run(cell, p, True)
    for small, f32, unit in zip(gm, g32, gm1):
        assert np.count_nonzero(f32) > 0
        assert np.count_nonzero(small) == np.count_nonzero(f32)
        assert _rel(small, f32) < 1e-2
        assert _rel(small * np.float32(1e30), unit) < 1e-2


def test_oracle_product_rounds_both_operands():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 40)).astype(np.float32)
    b = rng.standard_normal((40, 7)).astype(np.float32)
    exact = bf16_round(a).astype(np.float64) @ bf16_round(b).astype(np.float64)
    got = mixed_matmul(a, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)
    # Not float32's product: the operands lost their low 16 bits.
    assert np.abs(got - a @ b).max() > 1e-4
    # bf16 values are exact in float32, ties go to even, denormals to signed zero.
    assert bf16_round(np.float32([1 + 2 ** -8]))[0] == 1.0
    assert bf16_round(np.float32([1 + 3 * 2 ** -8]))[0] == np.float32(1 + 2 ** -6)
    assert bf16_round(np.float32([1e-39]))[0] == 0.0


def test_compiled_products_match_the_oracle():
    from fastlstm.backends import mixed_products
    rng = np.random.default_rng(4)
    for M, K, N in [(1, 5, 3), (70, 33, 50), (300, 64, 130), (16, 3000, 40)]:
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        ref = mixed_matmul(a, b)
        for threads in (1, 2):
            out = np.empty((M, N), np.float32)
            mixed_products.product(a, mixed_products.Packed(b), out, threads=threads)
            np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.sqrt(K) * 4)


def test_mixed_refuses_float64_and_quantized():
    p = _problem("lstm", "plain")
    with pytest.raises(ValueError, match="mixed"):
        ops.lstm_forward(p["x"].astype(np.float64), p["W"].astype(np.float64),
                         p["U"].astype(np.float64), mixed=True)
    with pytest.raises(TypeError, match="mixed"):
        ops.lstm_forward(p["x"], p["W"], p["U"], mixed="yes")


# -- the policy API ----------------------------------------------------------------------
@pytest.fixture
def restore_policy():
    yield
    mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", ["float32", "float64", "mixed_bfloat16"])
def test_policy_matches_keras(name):
    keras = pytest.importorskip("keras")
    ours, theirs = mixed_precision.Policy(name), keras.mixed_precision.Policy(name)
    assert (ours.name, ours.compute_dtype, ours.variable_dtype) == (
        theirs.name, theirs.compute_dtype, theirs.variable_dtype)


def test_policy_rejects_unknown_names(restore_policy):
    with pytest.raises(ValueError, match="mixed_float16"):
        mixed_precision.Policy("mixed_float16")
    with pytest.raises(ValueError, match="dtype"):
        fl.layers.LSTM(4, dtype="bfloat16")
    with pytest.raises(ValueError, match="name"):
        mixed_precision.set_global_policy("int8")
    assert mixed_precision.global_policy().name == "float32"


def test_global_policy_applies_to_new_layers(restore_policy):
    assert mixed_precision.global_policy() == mixed_precision.Policy("float32")
    mixed_precision.set_global_policy("mixed_bfloat16")
    assert mixed_precision.global_policy().name == "mixed_bfloat16"
    made = [fl.layers.LSTM(4), fl.layers.GRU(4), fl.layers.SimpleRNN(4), fl.layers.Dense(3),
            fl.layers.Embedding(10, 3)]
    for layer in made:
        assert layer.dtype_policy.name == "mixed_bfloat16"
        assert layer.dtype == np.float32
        assert layer.get_config()["dtype"] == "mixed_bfloat16"
    assert fl.layers.LSTM(4, dtype="float32").dtype_policy.name == "float32"
    mixed_precision.set_global_policy(mixed_precision.Policy("float32"))
    assert fl.layers.LSTM(4).dtype_policy.name == "float32"


@pytest.mark.parametrize("make, run", [
    (lambda d: fl.layers.LSTM(H, return_sequences=True, use_peepholes=True, dtype=d),
     lambda x, l: ops.lstm_forward(x.transpose(1, 0, 2), l.kernel, l.recurrent_kernel, l.bias,
                                   peephole=l.peephole, mixed=True)[0].transpose(1, 0, 2)),
    (lambda d: fl.layers.GRU(H, return_sequences=True, reset_after=False, dtype=d),
     lambda x, l: ops.gru_forward(x.transpose(1, 0, 2), l.kernel, l.recurrent_kernel, l.bias,
                                  reset_after=False, mixed=True)[0].transpose(1, 0, 2)),
    (lambda d: fl.layers.SimpleRNN(H, return_sequences=True, dtype=d),
     lambda x, l: ops.simple_rnn_forward(x.transpose(1, 0, 2), l.kernel, l.recurrent_kernel,
                                         l.bias, mixed=True)[0].transpose(1, 0, 2)),
])
def test_mixed_layer_runs_the_oracle_products(make, run):
    x = np.random.default_rng(5).standard_normal((B, T, I)).astype(np.float32)
    layer = make("mixed_bfloat16")
    y = layer(x)
    assert y.dtype == np.float32 and all(w.dtype == np.float32 for w in layer.get_weights())
    with fl.use_backend("numpy"):
        ref = run(x, layer)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-4)
    plain = make("float32")
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    assert 1e-5 < np.abs(plain(x) - y).max() < 3e-2
    # step() runs the same bf16 products as the sequence.
    yt, _ = layer.step(x[:, 0], layer.get_initial_state(B))
    np.testing.assert_allclose(yt, y[:, 0], rtol=0, atol=1e-6)


def test_dense_mixed_forward_and_gradients():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 20)).astype(np.float32)
    d = fl.layers.Dense(7, activation="tanh", dtype="mixed_bfloat16")
    y, backprop = d.forward_train(x)
    ref = np.tanh(mixed_matmul(x, d.kernel) + d.bias)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    g = backprop(dy)
    dz = dy * (1 - ref ** 2)
    np.testing.assert_allclose(g.inputs, mixed_matmul(dz, d.kernel.T), rtol=0, atol=1e-4)
    np.testing.assert_allclose(g.weights[0], mixed_matmul(x.reshape(-1, 20).T, dz.reshape(-1, 7)),
                               rtol=0, atol=1e-4)
    f = fl.layers.Dense(7, activation="tanh")
    f.build(x.shape)
    f.set_weights(d.get_weights())
    yf, bf = f.forward_train(x)
    gf = bf(dy)
    assert _rel(g.inputs, gf.inputs) < 1e-2 and _rel(g.weights[0], gf.weights[0]) < 1e-2


def _model(dtype):
    return fl.Sequential([fl.layers.Embedding(20, 8, mask_zero=True, dtype=dtype),
                          fl.layers.LSTM(16, return_sequences=True, dtype=dtype),
                          fl.layers.GRU(8, dtype=dtype), fl.layers.Dense(1, dtype=dtype)])


def test_fit_evaluate_predict_save_load(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 20, (64, 12))
    y = rng.standard_normal((64, 1)).astype(np.float32)
    model = _model("mixed_bfloat16")
    model.compile(optimizer="adam", loss="mse")
    hist = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert all(w.dtype == np.float32 for w in model.get_weights())
    pred = model.predict(x, verbose=0)
    assert pred.dtype == np.float32
    loss = model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss)
    path = tmp_path / "mixed.npz"
    model.save(path)
    with np.load(path) as f:
        # Weights and the optimizer's slots are float32 (its step count and rate scalars).
        arrays = [k for k in f.files if k.startswith("layers/")
                  or k.split("/")[1:2] in (["momentum"], ["velocity"])]
        assert len(arrays) > 8 and all(f[k].dtype == np.float32 for k in arrays)
    again = fl.load_model(path)
    assert [l.dtype_policy.name for l in again.layers] == ["mixed_bfloat16"] * 4
    np.testing.assert_array_equal(again.predict(x, verbose=0), pred)
    # The float32 model of the same weights predicts otherwise (bf16 products here).
    plain = _model("float32")
    plain.build(x.shape)
    plain.set_weights(model.get_weights())
    assert 0 < np.abs(plain.predict(x, verbose=0) - pred).max() < 5e-2


def test_quantizing_a_mixed_model():
    x = np.random.default_rng(8).integers(1, 20, (4, 6))
    model = _model("mixed_bfloat16")
    model.build(x.shape)
    q = fl.quantize(model, "bfloat16")
    assert np.abs(q.predict(x, verbose=0) - model.predict(x, verbose=0)).max() < 2e-2


@pytest.mark.parametrize("level", [None, 0])
def test_pack_from_float_matches_pack_of_rounded_bits(level):
    from fastlstm import _lowp
    rng = np.random.default_rng(9)
    a = rng.standard_normal((37, 45)).astype(np.float32)
    a[0, :3] = [1e-39, -1e-39, np.float32(1 + 2 ** -8)]      # denormals, a tie
    try:
        if level is not None:
            _lowp.force_level(level)
        got = _lowp.pack_float_bf16(a)
        want, _ = _lowp.pack(_lowp.round_bf16(a))
        np.testing.assert_array_equal(got, want)
        strided = np.zeros((37, 64), np.float32)
        strided[:, :45] = a
        np.testing.assert_array_equal(_lowp.pack_float_bf16(strided[:, :45]), want)
    finally:
        _lowp.force_level(-1)


def test_weight_gradients_over_depth_slices_match_the_oracle():
    from fastlstm.backends import mixed_products
    rng = np.random.default_rng(10)
    x = rng.standard_normal((5000, 24)).astype(np.float32)
    h = rng.standard_normal((5000, 8)).astype(np.float32)
    dz = rng.standard_normal((5000, 40)).astype(np.float32)
    for threads in (1, 2):
        dw, du = mixed_products.weight_grads([x, h], dz, threads=threads)
        np.testing.assert_allclose(dw, mixed_matmul(x.T, dz), rtol=0, atol=2e-3)
        np.testing.assert_allclose(du, mixed_matmul(h.T, dz), rtol=0, atol=2e-3)


def test_keras_conversion_keeps_the_policy():
    keras = pytest.importorskip("keras")
    x = np.random.default_rng(11).standard_normal((3, 9, 5)).astype(np.float32)
    model = fl.Sequential([fl.layers.LSTM(8, return_sequences=True, dtype="mixed_bfloat16"),
                           fl.layers.GRU(4, dtype="mixed_bfloat16"),
                           fl.layers.Dense(2, dtype="mixed_bfloat16")])
    y = model.predict(x, verbose=0)
    k = fl.convert.to_keras(model)
    assert [l.dtype_policy.name for l in k.layers] == ["mixed_bfloat16"] * 3
    # Keras rounds its outputs to bf16 too (ours stay float32): bf16's error apart.
    yk = keras.ops.convert_to_numpy(keras.ops.cast(k(x), "float32"))
    assert np.abs(yk - y).max() < 2e-2
    back = fl.convert.from_keras(k)
    assert [l.dtype_policy.name for l in back.layers] == ["mixed_bfloat16"] * 3
    assert all(w.dtype == np.float32 for w in back.get_weights())
    np.testing.assert_array_equal(back.predict(x, verbose=0), y)
