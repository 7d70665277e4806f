"""The functional API (fl.Input, fl.Model): gradients through the graph against finite
differences in float64 (an encoder-decoder whose encoder learns only through the decoder's
initial_state, a tensor feeding several layers, a shared layer, layers with several inputs
following the multi-input protocol), masks reaching each layer, data as lists, dicts,
generators and PyDatasets, configs, files, the optimizer's gradients_ready hook, errors, and
the seq2seq example of docs/functional.md."""
import os
import re

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.layers.base import Gradients, Layer

L = fl.layers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- test-only layers that follow the multi-input protocol ---------------------------------
class PairSum(Layer):
    """``a + b`` of a list of two tensors; its mask is the AND of theirs."""

    multiple_inputs = True

    def build(self, input_shape):
        assert isinstance(input_shape, list) and len(input_shape) == 2
        super().build(input_shape[0])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        ms = [np.asarray(m, bool) for m in mask if m is not None]
        return np.logical_and.reduce(ms) if ms else None

    def __call__(self, inputs, mask=None, training=False):
        self.seen_mask = mask
        return np.asarray(inputs[0]) + np.asarray(inputs[1])

    def forward_train(self, inputs, mask=None):
        self.seen_mask = mask
        out = np.asarray(inputs[0]) + np.asarray(inputs[1])
        return out, lambda dy: Gradients(inputs=[dy, dy], initial_state=None,
                                         weights=[])


class QueryPlusValueSum(Layer):
    """``query + sum over time of value * w`` (a weight ``w``), with MultiHeadAttention's
    argument protocol: tensor_arguments and mask_arguments."""

    multiple_inputs = True
    tensor_arguments = ("query", "value")
    mask_arguments = {"query": "query_mask", "value": "value_mask"}

    @property
    def weight_names(self):
        return ["w"]

    def _ensure(self, value):
        if not self.built:
            self.w = np.full((value.shape[-1],), 0.5, self.dtype)
            Layer.build(self, value.shape)

    def _out(self, query, value, value_mask):
        v = np.asarray(value) * self.w
        if value_mask is not None:
            v = v * np.asarray(value_mask, v.dtype)[..., None]
        return np.asarray(query) + v.sum(axis=1, keepdims=True), v

    def __call__(self, query, value, query_mask=None, value_mask=None, training=False):
        self._ensure(value)
        self.seen = (query_mask, value_mask)
        return self._out(query, value, value_mask)[0]

    def forward_train(self, query, value, query_mask=None, value_mask=None):
        self._ensure(value)
        self.seen = (query_mask, value_mask)
        out, _ = self._out(query, value, value_mask)
        keep = 1.0 if value_mask is None else np.asarray(value_mask, self.dtype)[..., None]

        def backprop(dy):
            s = dy.sum(axis=1, keepdims=True)           # (B, 1, F)
            d_value = np.broadcast_to(s * self.w * keep, np.shape(value)).copy()
            d_w = (s * np.asarray(value) * keep).sum(axis=(0, 1))
            return Gradients(inputs=[dy, d_value], initial_state=None, weights=[d_w])

        return out, backprop


# -- helpers ---------------------------------------------------------------------------------
def weight_grads(model, x, y):
    """Each trainable weight's gradient of the training loss, from one SGD step of rate 1."""
    before = [w.copy() for w in model.trainable_weights]
    model.train_on_batch(x, y)
    grads = [b - w for b, w in zip(before, model.trainable_weights)]
    for w, b in zip(model.trainable_weights, before):
        w[...] = b
    return grads


def numeric_grads(model, x, y, which, eps=1e-6):
    out = []
    for k in which:
        w = model.trainable_weights[k]
        g = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            old = w[idx]
            w[idx] = old + eps
            up = model.test_on_batch(x, y, return_dict=True)["loss"]
            w[idx] = old - eps
            down = model.test_on_batch(x, y, return_dict=True)["loss"]
            w[idx] = old
            g[idx] = (up - down) / (2 * eps)
        out.append(g)
    return out


def check_gradients(model, x, y, loss="mse"):
    model.compile(fl.optimizers.SGD(1.0), loss)
    analytic = weight_grads(model, x, y)
    which = range(len(model.trainable_weights))
    numeric = numeric_grads(model, x, y, which)
    for k, (a, n) in enumerate(zip(analytic, numeric)):
        np.testing.assert_allclose(a, n, rtol=1e-5, atol=1e-8, err_msg=f"weight {k}")
    return analytic


def encoder_decoder(units=3, n_in=2, n_out=3, dtype="float64"):
    enc_in = fl.Input(shape=(None, n_in), name="enc", dtype=dtype)
    _, h, c = L.LSTM(units, return_state=True, name="encoder", dtype=dtype)(enc_in)
    dec_in = fl.Input(shape=(None, n_out), name="dec", dtype=dtype)
    seq, _, _ = L.LSTM(units, return_sequences=True, return_state=True, name="decoder",
                       dtype=dtype)(dec_in, initial_state=[h, c])
    out = L.Dense(n_out, name="dense", dtype=dtype)(seq)
    return fl.Model([enc_in, dec_in], out)


# -- gradients ---------------------------------------------------------------------------------
def test_encoder_learns_through_initial_state_finite_differences():
    model = encoder_decoder()
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 3, 3))]
    y = rng.standard_normal((3, 3, 3))
    grads = check_gradients(model, x, y)
    encoder = model.get_layer("encoder")
    n_enc = len(encoder.weights)
    assert model.trainable_weights[:n_enc] == encoder.weights
    assert all(np.abs(g).max() > 1e-4 for g in grads[:n_enc])     # the encoder does learn


def test_shared_layer_and_reused_tensor_finite_differences():
    a = fl.Input(shape=(4, 2), name="a", dtype="float64")
    b = fl.Input(shape=(5, 2), name="b", dtype="float64")
    shared = L.GRU(3, return_sequences=True, name="shared", dtype="float64")
    sa, sb = shared(a), shared(b)
    last_a = L.LSTM(2, name="last_a", dtype="float64")(sa)
    head = L.Dense(2, name="head", dtype="float64")
    s = PairSum(name="pair", dtype="float64")([head(last_a), head(last_a)])   # one tensor twice
    t = L.LSTM(2, name="last_b", dtype="float64")(sb)
    model = fl.Model([a, b], [s, t])
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 5, 2))]
    y = [rng.standard_normal((3, 2)), rng.standard_normal((3, 2))]
    check_gradients(model, x, y)


def test_tensor_arguments_and_mask_arguments_finite_differences():
    q = fl.Input(shape=(3, 2), name="q", dtype="float64")
    v = fl.Input(shape=(4, 2), name="v", dtype="float64")
    mv = L.Masking(0.0, name="mask_v", dtype="float64")(v)
    qq = L.Dense(2, name="qd", dtype="float64")(q)
    mixed = QueryPlusValueSum(name="mix", dtype="float64")(qq, value=mv)
    model = fl.Model([q, v], L.Dense(1, name="out", dtype="float64")(mixed))
    rng = np.random.default_rng(2)
    xv = rng.standard_normal((3, 4, 2))
    xv[0, 2:] = 0.0
    x = [rng.standard_normal((3, 3, 2)), xv]
    y = rng.standard_normal((3, 3, 1))
    check_gradients(model, x, y)
    mix = model.get_layer("mix")
    model.predict(x)
    assert mix.seen[0] is None
    np.testing.assert_array_equal(mix.seen[1], np.any(xv != 0.0, axis=-1))


# -- masks ---------------------------------------------------------------------------------------
def test_masks_flow_through_a_multi_input_layer():
    ta = fl.Input(shape=(None,), dtype="int32", name="ta")
    tb = fl.Input(shape=(None,), dtype="int32", name="tb")
    ea = L.Embedding(9, 4, mask_zero=True, name="ea")(ta)
    eb = L.Embedding(9, 4, mask_zero=True, name="eb")(tb)
    pair = PairSum(name="pair")
    s = pair([ea, eb])
    out = L.LSTM(5, return_sequences=True, name="lstm")(s)
    model = fl.Model([ta, tb], out)
    rng = np.random.default_rng(3)
    xa, xb = rng.integers(1, 9, (4, 6)), rng.integers(1, 9, (4, 6))
    xa[0, 4:] = 0
    xb[1, 2:] = 0
    got = model.predict([xa, xb])
    assert [m.tolist() for m in pair.seen_mask] == [(xa != 0).tolist(), (xb != 0).tolist()]
    mask = (xa != 0) & (xb != 0)
    lstm = model.get_layer("lstm")
    want = lstm(model.get_layer("ea")(xa) + model.get_layer("eb")(xb), mask=mask)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_the_loss_uses_the_output_mask():
    """Masked timesteps do not count: changing their targets changes nothing."""
    tokens = fl.Input(shape=(5,), dtype="int32", name="tokens")
    e = L.Embedding(7, 3, mask_zero=True, name="e")(tokens)
    out = L.Dense(2, name="d")(L.LSTM(4, return_sequences=True, name="l")(e))
    model = fl.Model(tokens, out)
    model.compile("sgd", "mse")
    x = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 1, 0]])
    y = np.zeros((2, 5, 2), np.float32)
    y2 = y.copy()
    y2[0, 3:] = 5.0
    y2[1, 4] = -3.0
    assert model.test_on_batch(x, y) == pytest.approx(model.test_on_batch(x, y2), rel=1e-7)


# -- data --------------------------------------------------------------------------------------
def two_io_model(seed=0):
    a = fl.Input(shape=(4, 3), name="a")
    b = fl.Input(shape=(2,), name="b")
    h = L.LSTM(5, name="lstm", seed=seed)(a, initial_state=[L.Dense(5, name="s")(b)] * 2)
    return fl.Model({"a": a, "b": b}, {"y1": L.Dense(2, name="y1")(h),
                                       "y2": L.Dense(1, name="y2")(h)})


def data(n=12, seed=5):
    rng = np.random.default_rng(seed)
    x = {"a": rng.standard_normal((n, 4, 3)).astype(np.float32),
         "b": rng.standard_normal((n, 2)).astype(np.float32)}
    y = {"y1": rng.standard_normal((n, 2)).astype(np.float32),
         "y2": rng.standard_normal((n, 1)).astype(np.float32)}
    return x, y


def fitted(source_kind):
    model = two_io_model()
    ref = two_io_model()
    model.set_weights(ref.get_weights())
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.3
                       for w in model.get_weights()])
    model.compile(fl.optimizers.Adam(0.01), {"y1": "mse", "y2": "mae"},
                  loss_weights={"y1": 0.7, "y2": 1.3}, metrics={"y1": ["mae"]})
    x, y = data()
    if source_kind == "arrays":
        hist = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    elif source_kind == "generator":
        def gen():
            while True:
                for i in range(0, 12, 4):
                    yield ([x["a"][i:i + 4], x["b"][i:i + 4]],
                           [y["y1"][i:i + 4], y["y2"][i:i + 4]])
        hist = model.fit(gen(), steps_per_epoch=3, epochs=2, verbose=0)
    else:
        class Batches(fl.utils.PyDataset):
            def __len__(self):
                return 3

            def __getitem__(self, i):
                s = slice(4 * i, 4 * i + 4)
                return ({k: v[s] for k, v in x.items()}, {k: v[s] for k, v in y.items()})

        hist = model.fit(Batches(), epochs=2, shuffle=False, verbose=0)
    return model, hist.history


@pytest.mark.parametrize("kind", ["generator", "pydataset"])
def test_fit_from_generators_and_pydatasets_equals_fit_on_arrays(kind):
    ref, ref_hist = fitted("arrays")
    model, hist = fitted(kind)
    assert set(hist) == set(ref_hist) == {"loss", "y1_loss", "y2_loss", "y1_mae"}
    for k in ref_hist:
        np.testing.assert_allclose(hist[k], ref_hist[k], rtol=1e-6)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_lists_dicts_and_validation_split_give_the_same_results():
    model = two_io_model()
    model.compile("adam", ["mse", "mae"], loss_weights=[0.7, 1.3])
    x, y = data()
    by_dict = model.evaluate(x, y, return_dict=True)
    by_list = model.evaluate([x["a"], x["b"]], [y["y1"], y["y2"]], return_dict=True)
    assert by_dict == by_list
    assert by_dict["loss"] == pytest.approx(0.7 * by_dict["y1_loss"] + 1.3 * by_dict["y2_loss"])
    out = model.predict(x, batch_size=5)
    assert set(out) == {"y1", "y2"} and out["y1"].shape == (12, 2)
    whole = model(x)
    assert set(model.predict_on_batch(x)) == {"y1", "y2"}
    np.testing.assert_allclose(out["y2"], whole["y2"], rtol=1e-5, atol=1e-6)   # batching
    hist = model.fit(x, y, validation_split=0.25, epochs=1, verbose=0).history
    assert {"val_loss", "val_y1_loss", "val_y2_loss"} <= set(hist)
    sw = np.linspace(0.1, 1.0, 12)
    one = model.evaluate(x, y, sample_weight=sw, return_dict=True)
    per = model.evaluate(x, y, sample_weight={"y1": sw, "y2": sw}, return_dict=True)
    assert one == per


def test_output_without_a_loss_and_class_weight():
    inp = fl.Input(shape=(3,), name="x")
    h = L.Dense(4, name="h")(inp)
    model = fl.Model(inp, [L.Dense(2, activation="softmax", name="p")(h),
                           L.Dense(1, name="aux")(h)])
    model.compile("adam", ["sparse_categorical_crossentropy", None])
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    aux = [w.copy() for w in model.get_layer("aux").get_weights()]
    for _ in range(2):
        logs = model.train_on_batch(x, [np.array([0, 1, 0, 1, 1, 0]), None], return_dict=True)
    assert set(logs) == {"loss", "p_loss"}
    for a, b in zip(aux, model.get_layer("aux").get_weights()):
        np.testing.assert_array_equal(a, b)          # no loss reaches it: left alone
    with pytest.raises(ValueError, match="class_weight"):
        model.fit(x, [np.zeros(6), None], class_weight={0: 1.0, 1: 2.0}, verbose=0)
    single = fl.Model(inp, L.Dense(2, activation="softmax", name="q")(inp))
    single.compile("sgd", "sparse_categorical_crossentropy")
    y = np.array([0, 1, 0, 1, 1, 0])
    a = single.evaluate(x, y, sample_weight=np.where(y == 1, 3.0, 1.0))
    before = [w.copy() for w in single.get_weights()]
    single.fit(x, y, class_weight={1: 3.0}, batch_size=6, shuffle=False, verbose=0)
    after = single.get_weights()
    single.set_weights(before)
    single.fit(x, y, sample_weight=np.where(y == 1, 3.0, 1.0), batch_size=6, shuffle=False,
               verbose=0)
    for p, q in zip(after, single.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-6)
    assert np.isfinite(a)


# -- structure, configs and files -------------------------------------------------------------
def test_layers_names_get_layer_and_summary(capsys):
    model = encoder_decoder(dtype="float32")
    assert [l.name for l in model.layers] == ["enc", "dec", "encoder", "decoder", "dense"]
    assert model.get_layer("decoder") is model.layers[3]
    assert model.get_layer(index=-1).name == "dense"
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        model.get_layer("nope")
    model.summary()
    text = capsys.readouterr().out
    assert "Connected to" in text
    row = [line for line in text.splitlines() if line.startswith(" decoder (LSTM)")][0]
    assert "dec[0][0]" in row
    assert "encoder[0][1]" in text and "encoder[0][2]" in text
    assert f"Total params: {model.count_params():,}" in text


def test_from_config_and_save_load_keep_graph_weights_and_training(tmp_path):
    model = two_io_model()
    model.compile(fl.optimizers.Adam(0.01), {"y1": "mse", "y2": "mae"},
                  loss_weights={"y1": 0.7, "y2": 1.3}, metrics={"y1": ["mae"], "y2": ["mse"]})
    x, y = data()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    clone = fl.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.predict(x)["y1"], model.predict(x)["y1"])
    path = tmp_path / "functional.npz"
    model.save(path)
    loaded = fl.load_model(path)
    assert type(loaded) is fl.Model
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    for k in ("y1", "y2"):
        np.testing.assert_array_equal(loaded.predict(x)[k], model.predict(x)[k])
    assert loaded.metrics_names == model.metrics_names
    a = model.train_on_batch(x, y, return_dict=True)
    b = loaded.train_on_batch(x, y, return_dict=True)
    assert a == pytest.approx(b, rel=1e-6)
    for p, q in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)     # optimizer state kept
    import json
    doc = json.loads(np.load(path)["fastlstm.json"].tobytes())
    assert doc["version"] == 1 and doc["model"]["class_name"] == "Model"
    assert doc["model"]["graph"]["output_layers"] == {"y1": ["y1", 0, 0], "y2": ["y2", 0, 0]}


def test_a_file_with_a_broken_graph_is_refused(tmp_path):
    import json
    import zipfile
    model = encoder_decoder(dtype="float32")
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    doc = json.loads(arrays["fastlstm.json"].tobytes())
    doc["model"]["graph"]["layers"][3]["inbound_nodes"][0]["kwargs"]["initial_state"][0][
        "config"]["keras_history"] = ["nowhere", 0, 0]
    arrays["fastlstm.json"] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="graph"):
        fl.load_model(bad)
    assert zipfile.is_zipfile(bad)


def test_sequential_is_a_model_and_keeps_working(tmp_path):
    seq = fl.Sequential([L.LSTM(4, name="l"), L.Dense(1, name="d")])
    assert isinstance(seq, fl.Model) and fl.models.Model is fl.Model
    seq.compile("adam", "mse")
    x = np.random.default_rng(0).standard_normal((8, 5, 2)).astype(np.float32)
    seq.fit(x, np.zeros((8, 1)), verbose=0)
    assert seq.get_layer("d") is seq.layers[1]
    seq.save(tmp_path / "s.npz")
    assert type(fl.load_model(tmp_path / "s.npz")) is fl.Sequential


# -- the optimizer's gradients_ready hook --------------------------------------------------------
class Recording(fl.optimizers.SGD):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ready = []

    def gradients_ready(self, params, grads):
        assert not self.applied
        self.ready.append(([id(p) for p in params], [np.array(g) for g in grads]))

    def apply(self, grads, params):
        self.applied_with = ([id(p) for p in params], [np.array(g) for g in grads])
        super().apply(grads, params)

    applied = False


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_gradients_ready_per_layer_last_first_before_apply(kind):
    if kind == "functional":
        a = fl.Input(shape=(4, 2), name="a")
        shared = L.Dense(3, name="shared")
        h = L.LSTM(3, name="l")(shared(a))
        model = fl.Model(a, L.Dense(1, name="out")(shared(L.Dense(2, name="mid")(h))))
        order = ["out", "mid", "l", "shared"]     # shared: once both calls are done
    else:
        model = fl.Sequential([L.LSTM(3, name="l"), L.Dense(3, name="mid"),
                               L.Dense(1, name="out")])
        order = ["out", "mid", "l"]
    opt = Recording(0.1)
    model.compile(opt, "mse")
    x = np.random.default_rng(0).standard_normal((5, 4, 2)).astype(np.float32)
    model.train_on_batch(x, np.ones((5, 1)))
    by_id = {id(w): layer.name for layer in model.layers for w in layer.weights}
    assert [by_id[ids[0]] for ids, _ in opt.ready] == order
    ids, grads = opt.applied_with
    ready = {i: g for r_ids, r_grads in opt.ready for i, g in zip(r_ids, r_grads)}
    assert sorted(ready) == sorted(ids)
    for i, g in zip(ids, grads):
        np.testing.assert_array_equal(ready[i], g)


# -- errors ---------------------------------------------------------------------------------------
def test_clear_errors():
    a = fl.Input(shape=(3,), name="ea")
    b = fl.Input(shape=(3,), name="eb")
    out = L.Dense(2, name="ed")(b)
    with pytest.raises(ValueError, match="disconnected"):
        fl.Model(a, out)
    with pytest.raises(ValueError, match="unique names"):
        fl.Model(b, L.Dense(2, name="ed")(out))
    with pytest.raises(TypeError, match="symbolic tensor"):
        fl.Model(b, np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        fl.Input(shape=(0, 3))
    model = fl.Model([a, b], [L.Dense(1, name="o1")(a), out])
    with pytest.raises(ValueError, match="2 inputs"):
        model.predict([np.zeros((2, 3))] * 3)
    with pytest.raises(ValueError, match="unknown input names"):
        model.predict({"ea": np.zeros((2, 3)), "zz": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="expects shape"):
        model.predict([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match="unknown output names"):
        model.compile("sgd", {"nope": "mse"})
    with pytest.raises(TypeError, match="symbolic"):
        np.asarray(a)
    dense = L.Dense(2, name="once")
    dense(a)
    with pytest.raises(ValueError, match="once: was built for inputs of shape"):
        dense(fl.Input(shape=(5,)))


def test_quantized_copy_of_a_functional_model(tmp_path):
    model = encoder_decoder(units=8, dtype="float32")
    rng = np.random.default_rng(7)
    x = [rng.standard_normal((5, 6, 2)).astype(np.float32),
         rng.standard_normal((5, 4, 3)).astype(np.float32)]
    q = fl.quantize(model, "int8")
    assert type(q) is fl.Model and q.get_layer("decoder") is not model.get_layer("decoder")
    np.testing.assert_allclose(q.predict(x), model.predict(x), atol=0.05)
    q.save(tmp_path / "q.npz")
    np.testing.assert_array_equal(fl.load_model(tmp_path / "q.npz").predict(x), q.predict(x))
    q.compile("adam", "mse")
    with pytest.raises(ValueError, match="quantized"):
        q.fit(x, np.zeros((5, 4, 3)), verbose=0)


# -- the docs' example -------------------------------------------------------------------------
def test_the_docs_seq2seq_example_learns_to_reverse_digit_strings():
    with open(os.path.join(ROOT, "docs", "functional.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    example = [b for b in blocks if "reverse" in b and "decoder_model" in b]
    assert len(example) == 1
    namespace = {"__name__": "docs_example", "np": np, "fl": fl}
    exec(compile(example[0], "docs/functional.md", "exec"), namespace)
    assert namespace["accuracy"] > 0.95


def test_a_file_whose_graph_calls_a_layer_on_other_shapes_is_refused(tmp_path):
    """The graph is rebuilt on layers already built for their checked shapes: an Input
    edited to a huge size is refused, not allocated."""
    import json
    inp = fl.Input(shape=(4,), name="inp")
    model = fl.Model(inp, L.Dense(3, name="d")(inp))
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    doc = json.loads(arrays["fastlstm.json"].tobytes())
    entry = [e for e in doc["model"]["layers"] if e["class_name"] == "InputLayer"][0]
    entry["config"]["batch_shape"] = [None, 10 ** 9]
    arrays["fastlstm.json"] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="d: was built for inputs of shape"):
        fl.load_model(bad)


def test_bidirectional_states_into_a_decoder_finite_differences():
    """Bidirectional with return_state gives [output, forward h, c, backward h, c]; only the
    backward state starts the decoder, so only the backward layer learns from it."""
    e = fl.Input(shape=(None, 2), name="e", dtype="float64")
    outs = L.Bidirectional(L.LSTM(3, return_state=True, dtype="float64"), name="bi",
                           dtype="float64")(e)
    assert [o.shape for o in outs] == [(None, 6)] + [(None, 3)] * 4
    d = fl.Input(shape=(None, 2), name="d", dtype="float64")
    seq = L.GRU(3, return_sequences=True, name="dec", dtype="float64")(d, initial_state=[outs[3]])
    model = fl.Model([e, d], L.Dense(1, name="o", dtype="float64")(seq))
    rng = np.random.default_rng(8)
    x = [rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 3, 2))]
    grads = check_gradients(model, x, rng.standard_normal((2, 3, 1)))
    assert all(np.abs(g).max() == 0.0 for g in grads[:3])        # forward direction: unused
    assert all(np.abs(g).max() > 1e-4 for g in grads[3:6])
