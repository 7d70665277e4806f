"""fl.quantize: int8 and bfloat16 inference copies, against the oracle that performs the same
roundings (fastlstm/backends/oracle/lowp.py), on every reduced-precision code path this CPU
runs; the layer surface (predict, step, stateful, Bidirectional, RNN, Dense, Embedding);
save/load; the clear errors."""
import contextlib
import json

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import layers as L
from fastlstm import ops
from fastlstm.backends.oracle import lowp as oracle
from fastlstm.quantization import QuantizedMatrix, QuantizedTable, quantize

from conftest import seed_of

PRECISIONS = ["int8", "bfloat16"]
_KIND = {"int8": 1, "bfloat16": 2}


def lowp_levels(precision):
    """The reduced-precision code paths (ISA levels) this machine can run, best first."""
    from fastlstm import _lowp
    best = _lowp.level(_KIND[precision])
    return list(range(best, -1, -1))


@contextlib.contextmanager
def forced_level(level):
    from fastlstm import _lowp
    _lowp.force_level(level)
    try:
        yield
    finally:
        _lowp.force_level(-1)


@contextlib.contextmanager
def backend(name):
    prev = fl.current_backend()
    fl.use_backend(name)
    try:
        yield
    finally:
        fl.use_backend(prev)


def assert_quantized_close(actual, expected, precision, name=""):
    """The compiled path against the oracle of the same roundings. Both quantize their
    states at every step, and the compiled gate math differs from NumPy's by float32 ulps:
    once in a while an element lands on the other side of a rounding boundary and moves by
    one quantization step (a bfloat16 ulp, or an int8 step of max|h|/127), which the
    recurrence then carries. So nearly every element agrees to float32 accuracy, and none is
    further off than a few such steps."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, name
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), name
    diff = np.abs(actual - expected)
    diff = diff[~np.isnan(diff)]
    if not diff.size:
        return
    tight = diff <= 2e-5 + 2e-5 * np.abs(expected[~np.isnan(expected)])
    assert tight.mean() >= 0.98, f"{name}: only {tight.mean():.3f} of the elements agree"
    assert diff.max() <= (2e-2 if precision == "int8" else 1e-2), f"{name}: {diff.max()}"


CASES = [
    ("lstm", dict()),
    ("lstm", dict(peephole=True)),
    ("lstm", dict(coupled_input_forget=True)),
    ("lstm", dict(activation="relu", recurrent_activation="hard_sigmoid")),
    ("gru", dict(reset_after=True)),
    ("gru", dict(reset_after=False)),
    ("rnn", dict()),
    ("rnn", dict(activation="relu")),
]


def _problem(cell, opts, precision, T=6, B=5, I=13, H=20, seed=0):
    rng = np.random.default_rng(seed_of(cell, sorted(opts.items()), precision, T, B, I, H, seed))
    blocks = {"lstm": 3 if opts.get("coupled_input_forget") else 4, "gru": 3, "rnn": 1}[cell]
    W = (rng.standard_normal((I, blocks * H)) * 0.3).astype(np.float32)
    U = (rng.standard_normal((H, blocks * H)) * 0.3).astype(np.float32)
    split_w = split_u = 0
    if cell == "gru":
        split_w, split_u = (2 * H, 0) if opts.get("reset_after", True) else (0, 2 * H)
    args = dict(
        x=rng.standard_normal((T, B, I)).astype(np.float32),
        kernel=QuantizedMatrix.from_float(W, precision, split_w),
        recurrent_kernel=QuantizedMatrix.from_float(U, precision, split_u),
        h0=(rng.standard_normal((B, H)) * 0.5).astype(np.float32),
        mask=rng.random((T, B)) > 0.3,
    )
    if cell == "gru":
        args["bias"] = rng.standard_normal((2, 3 * H) if opts.get("reset_after", True)
                                           else (3 * H,)).astype(np.float32)
    else:
        args["bias"] = rng.standard_normal(blocks * H).astype(np.float32)
    if cell == "lstm":
        args["c0"] = rng.standard_normal((B, H)).astype(np.float32)
        if opts.get("peephole"):
            args["peephole"] = (rng.standard_normal((3, H)) * 0.2).astype(np.float32)
    return args, (W, U)


def _run(cell, opts, args, **call):
    kw = {k: v for k, v in opts.items() if k != "peephole"}
    kw.update(call)
    if cell == "lstm":
        return ops.lstm_forward(args["x"], args["kernel"], args["recurrent_kernel"],
                                args["bias"], args["h0"], args["c0"],
                                peephole=args.get("peephole"), mask=args.get("mask"), **kw)[:3]
    fn = ops.gru_forward if cell == "gru" else ops.simple_rnn_forward
    return fn(args["x"], args["kernel"], args["recurrent_kernel"], args["bias"], args["h0"],
              mask=args.get("mask"), **kw)[:2]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell,opts", CASES)
def test_sequence_kernels_match_the_oracle_on_every_code_path(cell, opts, precision):
    args, _ = _problem(cell, opts, precision)
    for call in (dict(), dict(go_backwards=True, return_sequences=False)):
        for masked in (False, True):
            a = dict(args) if masked else {k: v for k, v in args.items() if k != "mask"}
            with backend("numpy"):
                want = _run(cell, opts, a, **call)
            for level in lowp_levels(precision):
                with forced_level(level):
                    got = _run(cell, opts, a, **call)
                for g, w in zip(got, want):
                    assert g.dtype == np.float32
                    assert_quantized_close(g, w, precision,
                                           f"{cell} {opts} {call} mask={masked} level={level}")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("B,T", [(1, 40), (4, 9), (33, 3)])
def test_batch_shapes_and_threads(precision, B, T):
    """One row (the streaming shapes), a few rows, and a batch split over threads."""
    args, _ = _problem("lstm", {}, precision, T=T, B=B, I=64, H=48)
    args.pop("mask")
    with backend("numpy"):
        want = _run("lstm", {}, args)
    for threads in (1, 2):
        prev = fl.get_num_threads()
        fl.set_num_threads(threads)
        try:
            got = _run("lstm", {}, args)
        finally:
            fl.set_num_threads(prev)
        for g, w in zip(got, want):
            assert_quantized_close(g, w, precision, f"B={B} threads={threads}")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell,opts", [("lstm", {}), ("gru", dict(reset_after=False)),
                                       ("gru", dict(reset_after=True)), ("rnn", {})])
def test_column_split_of_the_step_products_is_bitwise_the_same(cell, opts, precision):
    """A large U at a few rows: both threads stream their columns of it at every step
    (forced here from 0 bytes); the same numbers as on one thread."""
    from fastlstm import threads
    args, _ = _problem(cell, opts, precision, T=7, B=3, I=24, H=40)
    prev_n, prev_min = fl.get_num_threads(), threads.kernel_settings().q_split_min_bytes
    try:
        fl.set_num_threads(1)
        one = _run(cell, opts, args)
        fl.set_num_threads(2)
        threads.set_q_split_min_bytes(0)
        split = _run(cell, opts, args)
    finally:
        fl.set_num_threads(prev_n)
        threads.set_q_split_min_bytes(prev_min)
    for a, b in zip(one, split):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("opts", [dict(), dict(peephole=True), dict(coupled_input_forget=True)])
def test_one_row_lstm_split_over_the_units_is_bitwise_the_same(opts, precision):
    """One row: the threads split the units (a barrier per step), each product writing its
    16-column blocks of Z; the same numbers as one thread, with and without a mask."""
    from fastlstm import threads
    args, _ = _problem("lstm", opts, precision, T=9, B=1, I=20, H=48)
    prev = fl.get_num_threads()
    try:
        for masked in (False, True):
            a = dict(args) if masked else {k: v for k, v in args.items() if k != "mask"}
            for call in (dict(), dict(go_backwards=True, return_sequences=False)):
                fl.set_num_threads(1)
                one = _run("lstm", opts, a, **call)
                fl.set_num_threads(2)
                threads.set_q_cols_min_bytes(0)
                split = _run("lstm", opts, a, **call)
                for x, y in zip(one, split):
                    np.testing.assert_array_equal(x, y)
    finally:
        fl.set_num_threads(prev)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_quantized_sequence_stays_near_the_float_one(precision):
    """What the roundings cost against float32 weights and products (weights of a
    Glorot-initialized layer's scale)."""
    args, (W, U) = _problem("lstm", {}, precision, T=30, B=8, I=32, H=64)
    args.pop("mask")
    W, U = W / 3, U / 3
    args.update(kernel=QuantizedMatrix.from_float(W, precision),
                recurrent_kernel=QuantizedMatrix.from_float(U, precision))
    y = _run("lstm", {}, args)[0]
    yf = _run("lstm", {}, dict(args, kernel=W, recurrent_kernel=U))[0]
    err = np.abs(y - yf).max()
    assert 0 < err < (0.02 if precision == "int8" else 5e-3)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_training_a_quantized_op_is_refused(precision):
    args, _ = _problem("rnn", {}, precision)
    with pytest.raises(ValueError, match="quantize it again"):
        _run("rnn", {}, args, training=True)


def test_weight_pairs_must_match():
    W = np.ones((3, 4), np.float32)
    qW = QuantizedMatrix.from_float(W, "int8")
    x = np.ones((2, 1, 3), np.float32)
    with pytest.raises(TypeError, match="pairs of one precision"):
        ops.simple_rnn_forward(x, qW, np.eye(4, dtype=np.float32))
    with pytest.raises(TypeError, match="pairs of one precision"):
        ops.simple_rnn_forward(x, qW, QuantizedMatrix.from_float(np.eye(4), "bfloat16"))


# ------------------------------------------------------------------- the matrices
def test_quantized_matrix_rounding_rules():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((17, 9)).astype(np.float32)
    W[:, 4] = 0                                        # a zero column: scale 0, values 0
    q = QuantizedMatrix.from_float(W, "int8")
    assert q.values.dtype == np.int8 and q.scale.dtype == np.float32
    assert np.abs(q.values).max() == 127 and q.scale[4] == 0 and not q.values[:, 4].any()
    np.testing.assert_allclose(q.dequantize(), W, atol=float(q.scale.max()) / 2 + 1e-7)
    b = QuantizedMatrix.from_float(W, "bfloat16")
    assert b.values.dtype == np.uint16
    np.testing.assert_allclose(np.asarray(b), W, rtol=2 ** -8)
    # Round to nearest even: 1 + 2^-8 is halfway between two bfloat16 values.
    assert oracle.bf16_round(np.float32(1 + 2 ** -8)) == 1.0
    assert oracle.bf16_round(np.float32(1 + 3 * 2 ** -8)) == np.float32(1 + 2 ** -6)
    assert np.isnan(oracle.bf16_round(np.float32(np.nan)))
    with pytest.raises(ValueError, match="NaN"):
        QuantizedMatrix.from_float(np.array([[np.nan]]), "int8")
    with pytest.raises(ValueError, match="precision"):
        QuantizedMatrix.from_float(W, "int4")
    with pytest.raises(TypeError, match="column blocks"):
        q[1:3]
    with pytest.raises(ValueError, match="at most 131072 rows"):
        QuantizedMatrix("int8", np.zeros((131073, 1), np.int8), np.ones(1, np.float32))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_compiled_matmul_matches_the_oracle(precision):
    rng = np.random.default_rng(5)
    W = rng.standard_normal((70, 50)).astype(np.float32)
    a = rng.standard_normal((3, 7, 70)).astype(np.float32)
    for split in (0, 32):
        q = QuantizedMatrix.from_float(W, precision, split)
        np.testing.assert_allclose(q.matmul(a), a @ q, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- layers
def _model(seed=0):
    rng = np.random.default_rng(seed)
    m = fl.Sequential([
        L.Embedding(40, 12, mask_zero=True),
        L.LSTM(24, return_sequences=True, use_peepholes=True),
        L.Bidirectional(L.GRU(16, return_sequences=True, reset_after=False)),
        L.RNN([L.LSTMCell(10), L.SimpleRNNCell(8)], return_sequences=True),
        L.LSTM(12, coupled_input_forget=True),
        L.Dropout(0.2),
        L.Dense(4, activation="softmax"),
    ])
    x = rng.integers(1, 40, (7, 9))
    x[:2, 6:] = 0                                      # padded rows: masks propagate
    m.predict(x)
    return m, x


@pytest.mark.parametrize("precision", PRECISIONS)
def test_quantize_a_model(precision):
    m, x = _model()
    y = m.predict(x)
    before = [w.copy() for w in m.get_weights()]
    q = quantize(m, precision)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), before))  # a copy
    yq = q.predict(x)
    assert yq.dtype == np.float32
    assert np.abs(yq - y).max() < (2e-2 if precision == "int8" else 5e-3)
    with backend("numpy"):
        want = q.predict(x)
    assert_quantized_close(yq, want, precision)
    assert q.count_params() == m.count_params()
    kinds = {type(w).__name__ for layer in q.layers for w in getattr(layer, "weights", [])}
    assert {"QuantizedMatrix", "QuantizedTable"} <= kinds
    assert q.layers[1].quantization == precision and q.layers[2].quantization == precision
    assert m.layers[1].quantization is None
    # get_weights gives the dequantized float32 values, in Keras order.
    for a, b in zip(q.layers[1].get_weights(), m.layers[1].get_weights()):
        assert a.shape == b.shape and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=0.02)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_step_stateful_and_initial_state(precision):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 8, 6)).astype(np.float32)
    for make in (lambda: L.LSTM(16, return_sequences=True),
                 lambda: L.GRU(16, return_sequences=True),
                 lambda: L.SimpleRNN(16, return_sequences=True)):
        layer = make()
        layer(x)
        q = quantize(layer, precision)
        seq = q(x)
        states = q.get_initial_state(3)
        for t in range(8):
            y_t, states = q.step(x[:, t], states)
            np.testing.assert_allclose(y_t, seq[:, t], rtol=1e-6, atol=1e-6)
        assert q._step_plan is not None and q._step_plan.qb is not None   # the compiled step
        # stateful: two halves carry the state as the whole sequence does
        sf = make()
        sf.stateful = True
        sf(x)
        sf.set_weights(layer.get_weights())
        qs = quantize(sf, precision)
        qs.reset_states()
        first, second = qs(x[:, :4]), qs(x[:, 4:])
        np.testing.assert_allclose(np.concatenate([first, second], 1), seq, rtol=1e-6,
                                   atol=1e-6)
        init = [s + 0.1 for s in q.get_initial_state(3)]
        with backend("numpy"):
            want = q(x, initial_state=init)
        assert_quantized_close(q(x, initial_state=init), want, precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_dense_and_embedding(precision):
    rng = np.random.default_rng(8)
    d = L.Dense(9, activation="tanh")
    x = rng.standard_normal((4, 5, 33)).astype(np.float32)
    d(x)
    qd = quantize(d, precision)
    with backend("numpy"):
        want = np.tanh((x @ qd.kernel) + qd.bias)
    np.testing.assert_allclose(qd(x), want, rtol=1e-5, atol=1e-5)
    e = L.Embedding(20, 6)
    idx = rng.integers(0, 20, (3, 4))
    e(idx)
    qe = quantize(e, precision)
    assert isinstance(qe.embeddings, QuantizedTable)
    np.testing.assert_allclose(qe(idx), e(idx), rtol=2 ** -7, atol=np.abs(e.embeddings).max() / 254)
    assert qe.embeddings.nbytes < e.embeddings.nbytes


def test_clear_errors():
    m, x = _model()
    q = quantize(m, "int8")
    q.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="train the float model and quantize it again"):
        q.fit(x, np.zeros(7), verbose=0)
    with pytest.raises(ValueError, match="train the float model and quantize it again"):
        q.train_on_batch(x, np.zeros(7))
    with pytest.raises(ValueError, match="quantize it again"):
        q.layers[1].forward_train(q.layers[0](x))
    with pytest.raises(ValueError, match="quantize it again"):
        q.layers[-1].forward_train(np.ones((2, 12), np.float32))
    with pytest.raises(ValueError, match="quantize it again"):
        q.layers[1].set_weights(m.layers[1].get_weights())
    with pytest.raises(ValueError, match="already quantized"):
        quantize(q, "bfloat16")
    with pytest.raises(ValueError, match="precision"):
        quantize(m, "fp8")
    with pytest.raises(TypeError, match="model_or_layer"):
        quantize(object(), "int8")
    with pytest.raises(ValueError, match="not built"):
        quantize(L.LSTM(4), "int8")
    with pytest.raises(NotImplementedError, match="CPU only"):
        q.layers[1].to("cuda")

    class Custom(L.Layer):
        @property
        def weight_names(self):
            return ["w"]

    c = Custom()
    c.w = np.ones((2, 2), np.float32)
    c.built = True
    with pytest.raises(ValueError, match="cannot quantize"):
        quantize(c, "int8")
    # evaluate and predict work on a compiled quantized model
    assert np.isfinite(q.evaluate(x, np.zeros(7), verbose=0))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_save_load_round_trip(tmp_path, precision):
    m, x = _model()
    q = quantize(m, precision)
    path = tmp_path / "q.npz"
    q.save(path)
    r = fl.load_model(path)
    np.testing.assert_array_equal(r.predict(x), q.predict(x))
    doc = json.loads(np.load(path)[fl.saving.DOC_KEY].tobytes())
    assert doc["version"] == 2
    entry = doc["model"]["layers"][1]
    assert entry["quantization"] == precision
    names = [w["name"] for w in entry["weights"]]
    if precision == "int8":
        assert names[:4] == ["kernel", "kernel_scale", "recurrent_kernel",
                             "recurrent_kernel_scale"]
        assert entry["weights"][0]["dtype"] == "int8"
    else:
        assert names[:2] == ["kernel", "recurrent_kernel"]
        assert entry["weights"][0]["dtype"] == "uint16"
    # the compact file is smaller than the float one
    m.save(tmp_path / "f.npz")
    assert (path.stat().st_size < 0.75 * (tmp_path / "f.npz").stat().st_size)
    # and the float model's file is still version 1
    assert json.loads(np.load(tmp_path / "f.npz")[fl.saving.DOC_KEY].tobytes())["version"] == 1


def _rewrite(path, out, change):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(arrays[fl.saving.DOC_KEY].tobytes())
    change(arrays, doc)
    arrays[fl.saving.DOC_KEY] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    np.savez(out, **arrays)
    return out


def test_load_refuses_inconsistent_quantized_files(tmp_path):
    m, x = _model()
    path = tmp_path / "q.npz"
    quantize(m, "int8").save(path)
    bad = {
        "a float kernel": lambda a, d: a.update({"layers/1/kernel":
                                                 a["layers/1/kernel"].astype(np.float32)}),
        "a missing scale": lambda a, d: d["model"]["layers"][1]["weights"].pop(1),
        "a wrong scale shape": lambda a, d: a.update({"layers/1/kernel_scale":
                                                      a["layers/1/kernel_scale"][:-1]}),
        "an unknown precision": lambda a, d: d["model"]["layers"][1].update(
            quantization="int4"),
        "an old version": lambda a, d: d.update(version=1),
        "a negative scale": lambda a, d: a.update({"layers/1/kernel_scale":
                                                   -a["layers/1/kernel_scale"]}),
    }
    for what, change in bad.items():
        with pytest.raises(ValueError):
            fl.load_model(_rewrite(path, tmp_path / "bad.npz", change))
        print("refused:", what)
