"""fastlstm.convert <-> Keras 3 for functional models: the seq2seq encoder-decoder (states
through ``initial_state``), a Bahdanau-attention seq2seq with masked source tokens, a
model with two inputs, two outputs and shared layers, MultiHeadAttention with call options
(``key=``, ``return_attention_scores``, ``use_causal_mask``), a Conv1D -> LSTM ->
GlobalMaxPooling1D classifier. Keras -> fastlstm from the live model, a ``.keras`` archive
(read without Keras) and a legacy ``.h5`` file gives Keras's ``predict``; fastlstm -> Keras
gives fastlstm's; round trips keep layer names and connections. Errors name the layer."""
import json
import warnings

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.convert import ConversionError, from_keras, to_keras

from convert_util import assert_same

h5py = pytest.importorskip("h5py")
keras = pytest.importorskip("keras")
pytest.importorskip("torch")
if keras.backend.backend() != "torch":
    pytest.skip("these tests run Keras on the torch backend", allow_module_level=True)

pytestmark = [pytest.mark.peers,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5")]

KL = keras.layers


def knp(t):
    return keras.ops.convert_to_numpy(t)


def randomize(model, seed=0, scale=0.4):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([(rng.standard_normal(w.shape) * scale).astype(w.dtype)
                               for w in ws])
    return model


def as_list(out):
    return [np.asarray(knp(o)) for o in out] if isinstance(out, (list, tuple)) \
        else [np.asarray(knp(out))]


def assert_outputs(got, expected, name):
    got, expected = as_list(got), as_list(expected)
    assert len(got) == len(expected), name
    for k, (g, e) in enumerate(zip(got, expected)):
        assert_same(g, e, np.float32, f"{name} output {k}")


def graph(model):
    """Layer names, classes and connections of a Keras or fastlstm functional model, from
    its config (keras_history of every tensor argument), layers sorted by name."""
    cfg = model.get_config()

    def refs(value):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return [tuple(value["config"]["keras_history"])]
        if isinstance(value, (list, tuple)):
            return [r for v in value for r in refs(v)]
        if isinstance(value, dict):
            return [r for k, v in value.items() if k != "mask" for r in refs(v)]
        return []
    layers = [(e["name"], e["class_name"], [refs(n.get("args")) + refs(n.get("kwargs"))
                                            for n in e["inbound_nodes"]])
              for e in cfg["layers"] if not str(e.get("module", "")).startswith("keras.src.ops")]
    return sorted(layers), json.dumps(cfg["input_layers"]), json.dumps(cfg["output_layers"])


# -- the models ------------------------------------------------------------------------------
def seq2seq():
    enc_in = keras.Input(shape=(None, 5), name="encoder_inputs")
    _, h, c = KL.LSTM(6, return_state=True, name="encoder")(enc_in)
    dec_in = keras.Input(shape=(None, 7), name="decoder_inputs")
    seq, _, _ = KL.LSTM(6, return_sequences=True, return_state=True,
                        name="decoder")(dec_in, initial_state=[h, c])
    out = KL.Dense(7, activation="softmax", name="dense")(seq)
    model = keras.Model([enc_in, dec_in], out, name="seq2seq")
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((3, 6, 5)).astype(np.float32),
         rng.standard_normal((3, 4, 7)).astype(np.float32)]
    return model, x


def bahdanau():
    src = keras.Input(shape=(None,), dtype="int32", name="source")
    tgt = keras.Input(shape=(None,), dtype="int32", name="target")
    e = KL.Embedding(13, 6, mask_zero=True, name="enc_emb")(src)
    enc_seq, h, c = KL.LSTM(8, return_sequences=True, return_state=True, name="encoder")(e)
    d = KL.Embedding(11, 6, name="dec_emb")(tgt)
    dec_seq = KL.LSTM(8, return_sequences=True, name="decoder")(d, initial_state=[h, c])
    context = KL.AdditiveAttention(name="attention")([dec_seq, enc_seq])
    joined = KL.Concatenate(name="join")([dec_seq, context])
    out = KL.Dense(11, activation="softmax", name="out")(joined)
    model = keras.Model([src, tgt], out, name="bahdanau")
    rng = np.random.default_rng(2)
    s = rng.integers(1, 13, (4, 7))
    for b, n in enumerate((7, 3, 5, 1)):           # post-padded sources of several lengths
        s[b, n:] = 0
    x = [s.astype(np.int32), rng.integers(1, 11, (4, 5)).astype(np.int32)]
    return model, x


def two_in_two_out():
    a = keras.Input(shape=(None, 4), name="left")
    b = keras.Input(shape=(None, 4), name="right")
    shared = KL.GRU(5, return_sequences=True, name="shared_gru")
    norm = KL.LayerNormalization(name="norm")                  # shared, weightful
    ha, hb = norm(shared(a)), norm(shared(b))
    pool = KL.GlobalAveragePooling1D(name="pool")
    merged = KL.Add(name="add")([pool(ha), pool(hb)])
    prod = KL.Multiply(name="mul")([pool(ha), pool(hb)])
    avg = KL.Average(name="avg")([merged, prod])
    score = KL.Dense(1, name="score")(avg)
    kind = KL.Dense(3, activation="softmax", name="kind")(KL.Concatenate(name="cat")(
        [ha, hb]))
    model = keras.Model([a, b], [score, kind], name="siamese")
    rng = np.random.default_rng(3)
    x = [rng.standard_normal((3, 6, 4)).astype(np.float32),
         rng.standard_normal((3, 6, 4)).astype(np.float32)]
    return model, x


def mha():
    q = keras.Input(shape=(None, 6), name="query")
    v = keras.Input(shape=(None, 6), name="value")
    out, scores = KL.MultiHeadAttention(2, 3, name="mha")(
        q, v, key=v, return_attention_scores=True, use_causal_mask=True)
    dot = KL.Attention(name="dot")([q, v], use_causal_mask=True)
    model = keras.Model([q, v], [KL.Dense(2, name="head")(out), scores, dot], name="mha_model")
    rng = np.random.default_rng(4)
    x = [rng.standard_normal((2, 5, 6)).astype(np.float32),
         rng.standard_normal((2, 5, 6)).astype(np.float32)]
    return model, x


def conv_classifier():
    x_in = keras.Input(shape=(None, 3), name="signal")
    h = KL.Conv1D(6, 3, padding="causal", activation="relu", name="conv")(x_in)
    h = KL.LSTM(5, return_sequences=True, name="lstm")(h)
    h = KL.GlobalMaxPooling1D(name="pool")(h)
    out = KL.Dense(4, activation="softmax", name="classes")(h)
    model = keras.Model(x_in, out, name="conv_classifier")
    x = np.random.default_rng(5).standard_normal((3, 9, 3)).astype(np.float32)
    return model, x


MODELS = {"seq2seq": seq2seq, "bahdanau": bahdanau, "two_in_two_out": two_in_two_out,
          "mha": mha, "conv_classifier": conv_classifier}


@pytest.fixture(params=list(MODELS))
def keras_model(request):
    model, x = MODELS[request.param]()
    randomize(model)
    return request.param, model, x


# -- Keras -> fastlstm ---------------------------------------------------------------------
def test_from_keras_object_predicts_as_keras(keras_model):
    name, model, x = keras_model
    ours = from_keras(model)
    assert isinstance(ours, fl.Model) and not isinstance(ours, fl.Sequential)
    # fastlstm lists a model's layers in the order its graph first uses them
    assert sorted(l.name for l in ours.layers) == sorted(l.name for l in model.layers)
    assert_outputs(ours.predict(x), model.predict(x, verbose=0), name)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_from_keras_file_predicts_as_keras(keras_model, tmp_path, suffix):
    name, model, x = keras_model
    path = tmp_path / f"model{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    ours = from_keras(path)
    assert ours.name == model.name
    assert_outputs(ours.predict(x), model.predict(x, verbose=0), f"{name}{suffix}")


def test_weights_file_with_a_functional_config(tmp_path):
    model, x = bahdanau()
    randomize(model)
    model.save_weights(tmp_path / "m.weights.h5")
    ours = from_keras(tmp_path / "m.weights.h5", architecture=model.to_json())
    assert_outputs(ours.predict(x), model.predict(x, verbose=0), "weights.h5")


def test_graph_and_shared_layers_carry_over():
    model, x = two_in_two_out()
    ours = from_keras(model)
    assert graph(ours) == graph(model)
    shared = ours.get_layer("shared_gru")
    assert len([n for n in shared._inbound_nodes if n in ours._graph.node_set]) == 2
    # one set of weights, Keras's
    for a, b in zip(shared.get_weights(), model.get_layer("shared_gru").get_weights()):
        np.testing.assert_array_equal(a, knp(b))


def test_return_state_and_initial_state_connections():
    model, _ = seq2seq()
    ours = from_keras(model)
    decoder = ours.get_layer("decoder")
    node = [n for n in decoder._inbound_nodes if n in ours._graph.node_set][0]
    states = node.kwargs["initial_state"]
    assert [(t.node.layer.name, t.index) for t in states] == [("encoder", 1), ("encoder", 2)]


def test_float64(keras_model):
    name, model, x = keras_model
    ours = from_keras(model, dtype="float64")
    assert {l.dtype for l in ours.layers if l.get_weights()} == {np.dtype(np.float64)}
    ours32 = from_keras(model)
    for a, b in zip(as_list(ours.predict(x)), as_list(ours32.predict(x))):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- fastlstm -> Keras --------------------------------------------------------------------------
def test_to_keras_predicts_as_fastlstm_and_round_trips(keras_model):
    name, model, x = keras_model
    ours = from_keras(model)
    back = to_keras(ours)
    assert isinstance(back, keras.Model)
    assert_outputs(back.predict(x, verbose=0), ours.predict(x), name)
    assert graph(back) == graph(model)
    again = from_keras(back)
    assert graph(again) == graph(ours)


def test_to_keras_of_a_model_built_with_fastlstm():
    """A fastlstm graph where a masked sequence starts a decoder with initial_state: Keras
    gets the mask explicitly (it passes none by itself to a call with several tensors)."""
    L = fl.layers
    src = fl.Input(shape=(None,), dtype="int32", name="src")
    e = L.Embedding(9, 4, mask_zero=True, name="emb")(src)
    enc, h = L.GRU(5, return_sequences=True, return_state=True, name="enc")(e)
    dec = L.GRU(5, return_sequences=True, name="dec")(e, initial_state=h)
    out = L.Dense(3, name="out")(L.Concatenate(name="cat")([enc, dec]))
    ours = fl.Model(src, out, name="masked")
    ids = np.array([[3, 4, 5, 0, 0], [1, 2, 0, 0, 0], [6, 7, 8, 1, 2]], np.int32)
    back = to_keras(ours)
    assert_outputs(back.predict(ids, verbose=0), ours.predict(ids), "masked")
    # the same computation is refused from Keras's side only when it would differ
    again = from_keras(back)
    assert_outputs(again.predict(ids), ours.predict(ids), "masked again")


def test_to_keras_refuses_what_keras_cannot_express():
    L = fl.layers
    x = fl.Input(shape=(None, 3), name="x")
    y = L.LSTM(4, use_peepholes=True, name="peep")(x)
    with pytest.raises(ConversionError, match="peep.*peephole"):
        to_keras(fl.Model(x, y))


# -- errors ----------------------------------------------------------------------------------
def test_unsupported_layer_in_a_functional_model_is_named():
    x = keras.Input(shape=(None, 3), name="x")
    h = KL.LSTM(4, return_sequences=True, name="lstm")(x)
    y = KL.BatchNormalization(name="bn")(h)
    with pytest.raises(ConversionError, match="BatchNormalization 'bn'"):
        from_keras(keras.Model(x, y))


def test_nested_model_is_refused():
    inner_in = keras.Input(shape=(None, 3))
    inner = keras.Model(inner_in, KL.LSTM(4, name="il")(inner_in), name="inner")
    x = keras.Input(shape=(None, 3), name="x")
    with pytest.raises(ConversionError, match="Functional 'inner'.*nested"):
        from_keras(keras.Model(x, KL.Dense(2, name="d")(inner(x))))


def test_keras_operation_on_tensors_is_refused():
    x = keras.Input(shape=(None, 3), name="x")
    y = KL.Dense(2, name="d")(keras.ops.abs(x))
    with pytest.raises(ConversionError, match="operation.*absolute|Absolute"):
        from_keras(keras.Model(x, y))


def test_masked_sequence_into_an_initial_state_call_is_refused():
    """Keras 3 gives no mask to an RNN called with initial_state; fastlstm would."""
    tok = keras.Input(shape=(None,), dtype="int32", name="tok")
    e = KL.Embedding(9, 4, mask_zero=True, name="emb")(tok)
    _, h = KL.GRU(4, return_state=True, name="enc")(e)
    y = KL.GRU(4, name="dec")(e, initial_state=h)
    with pytest.raises(ConversionError, match="GRU 'dec'.*initial_state"):
        from_keras(keras.Model(tok, y))


def test_an_explicit_mask_other_than_the_propagated_one_is_refused():
    x = keras.Input(shape=(None, 3), name="x")
    m = keras.Input(shape=(None,), dtype="bool", name="m")
    y = KL.LSTM(4, name="lstm")(x, mask=m)
    with pytest.raises(ConversionError, match="LSTM 'lstm'.*mask"):
        from_keras(keras.Model([x, m], y))


def test_masking_layer_masks_are_converted():
    x = keras.Input(shape=(None, 3), name="x")
    h = KL.Masking(0.0, name="masking")(x)
    y = KL.Dense(2, name="d")(KL.LSTM(4, name="lstm")(h))
    model = randomize(keras.Model(x, y))
    data = np.random.default_rng(0).standard_normal((3, 6, 3)).astype(np.float32)
    data[0, 3:] = 0.0
    data[1, 1:] = 0.0
    ours = from_keras(model)
    assert_outputs(ours.predict(data), model.predict(data, verbose=0), "masking")


def test_keras2_functional_config_is_translated(tmp_path):
    """A tf.keras (Keras 2) functional config: inbound nodes as [layer, node, tensor, kwargs]
    lists, an RNN called on [sequences, *states], input/output lists of lists."""
    model, x = seq2seq()
    randomize(model)
    lstm = {"units": 6, "activation": "tanh", "recurrent_activation": "sigmoid",
            "use_bias": True, "unit_forget_bias": True, "return_sequences": False,
            "return_state": True, "go_backwards": False, "stateful": False,
            "unroll": False, "time_major": False, "dropout": 0.0, "recurrent_dropout": 0.0,
            "implementation": 2, "trainable": True, "dtype": "float32"}
    config = {"class_name": "Functional", "config": {"name": "k2", "layers": [
        {"class_name": "InputLayer", "name": "encoder_inputs", "inbound_nodes": [],
         "config": {"batch_input_shape": [None, None, 5], "dtype": "float32",
                    "sparse": False, "ragged": False, "name": "encoder_inputs"}},
        {"class_name": "InputLayer", "name": "decoder_inputs", "inbound_nodes": [],
         "config": {"batch_input_shape": [None, None, 7], "dtype": "float32",
                    "sparse": False, "ragged": False, "name": "decoder_inputs"}},
        {"class_name": "LSTM", "name": "encoder", "config": dict(lstm, name="encoder"),
         "inbound_nodes": [[["encoder_inputs", 0, 0, {}]]]},
        {"class_name": "LSTM", "name": "decoder",
         "config": dict(lstm, name="decoder", return_sequences=True),
         "inbound_nodes": [[["decoder_inputs", 0, 0, {}], ["encoder", 0, 1, {}],
                            ["encoder", 0, 2, {}]]]},
        {"class_name": "Dense", "name": "dense",
         "config": {"name": "dense", "units": 7, "activation": "softmax", "use_bias": True,
                    "trainable": True, "dtype": "float32"},
         "inbound_nodes": [[["decoder", 0, 0, {}]]]}],
        "input_layers": [["encoder_inputs", 0, 0], ["decoder_inputs", 0, 0]],
        "output_layers": [["dense", 0, 0]]}, "keras_version": "2.15.0"}
    path = tmp_path / "k2.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [n.encode() for n in
                                  ("encoder_inputs", "decoder_inputs", "encoder", "decoder",
                                   "dense")]
        for layer in model.layers:
            lg = g.create_group(layer.name)
            names = [f"{layer.name}/w{k}:0" for k in range(len(layer.get_weights()))]
            lg.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, layer.get_weights()):
                lg[n] = np.asarray(w)
    ours = from_keras(path)
    assert graph(ours) == graph(model)
    assert_outputs(ours.predict(x), model.predict(x, verbose=0), "keras 2")


def test_go_backwards_on_a_masked_sequence_is_refused_both_ways():
    tok = keras.Input(shape=(None,), dtype="int32", name="tok")
    e = KL.Embedding(9, 4, mask_zero=True, name="emb")(tok)
    y = KL.LSTM(3, name="last")(KL.LSTM(3, go_backwards=True, return_sequences=True,
                                        name="back")(e))
    with pytest.raises(ConversionError, match="LSTM 'back'.*go_backwards"):
        from_keras(keras.Model(tok, y))
    L = fl.layers
    tok = fl.Input(shape=(None,), dtype="int32", name="tok")
    e = L.Embedding(9, 4, mask_zero=True, name="emb")(tok)
    y = L.LSTM(3, name="last")(L.LSTM(3, go_backwards=True, return_sequences=True,
                                      name="back")(e))
    with pytest.raises(ConversionError, match="LSTM 'back'.*go_backwards"):
        to_keras(fl.Model(tok, y))


# -- hostile files (the rules of test_hardening_convert.py hold for functional models) ----------
def _rewrite_archive(src, dst, config=None, change=None):
    import io
    import zipfile
    with zipfile.ZipFile(src) as z:
        parts = {i.filename: z.read(i) for i in z.infolist()}
    if config is not None:
        parts["config.json"] = json.dumps(config).encode()
    if change is not None:
        buf = io.BytesIO(parts["model.weights.h5"])
        with h5py.File(buf, "r+") as f:
            change(f)
        parts["model.weights.h5"] = buf.getvalue()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def saved_seq2seq(tmp_path_factory):
    import zipfile
    d = tmp_path_factory.mktemp("functional")
    model, _ = seq2seq()
    model.save(d / "m.keras")
    with zipfile.ZipFile(d / "m.keras") as z:
        config = json.loads(z.read("config.json"))
    return d / "m.keras", config


def test_functional_archive_with_a_link_to_another_file_is_refused(saved_seq2seq, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["stolen"] = np.zeros((5, 24), np.float32)

    def change(f):
        del f["layers/lstm/cell/vars/0"]
        f["layers/lstm/cell/vars/0"] = h5py.ExternalLink(str(other), "/stolen")
    path = _rewrite_archive(saved_seq2seq[0], tmp_path / "evil.keras", change=change)
    with pytest.raises(ConversionError, match="Link"):
        from_keras(path)


def test_functional_archive_with_weights_of_an_unlisted_layer_is_refused(saved_seq2seq,
                                                                          tmp_path):
    def change(f):
        f.create_group("layers/dense_9/vars")["0"] = np.zeros((2, 2), np.float32)
    path = _rewrite_archive(saved_seq2seq[0], tmp_path / "extra.keras", change=change)
    with pytest.raises(ConversionError, match="dense_9"):
        from_keras(path)


def _edit(config, edit):
    config = json.loads(json.dumps(config))
    edit(config["config"])
    return config


def _history(layer_index, node=0, arg=0):
    def edit(cfg, value):
        cfg["layers"][layer_index]["inbound_nodes"][node]["args"][arg]["config"][
            "keras_history"] = value
    return edit


@pytest.mark.parametrize("edit", [
    lambda c: _history(2)(c, ["nowhere", 0, 0]),
    lambda c: _history(2)(c, ["encoder_inputs", 0, 7]),
    lambda c: _history(2)(c, ["encoder_inputs", "0", 0]),
    lambda c: _history(2)(c, "encoder_inputs"),
    lambda c: _history(2)(c, ["dense", 0, 0]),                 # a cycle
    lambda c: _history(3)(c, ["dense", 0, 0]),                 # one through initial_state
    lambda c: c["layers"][2].update(inbound_nodes={"args": []}),
    lambda c: c["layers"][2]["inbound_nodes"][0].update(args="x"),
    lambda c: c["layers"].append(c["layers"][2]),              # a name used twice
    lambda c: c["layers"][0].update(class_name="Lambda"),
    lambda c: c.update(output_layers=["dense", 3, 0]),
    lambda c: c.update(input_layers=None),
    lambda c: c.update(layers={}),
    lambda c: c["layers"][2].update(config=[]),
])
def test_malformed_functional_graphs_are_conversion_errors(saved_seq2seq, tmp_path, edit):
    path = _rewrite_archive(saved_seq2seq[0], tmp_path / "bad.keras",
                            config=_edit(saved_seq2seq[1], edit))
    with pytest.raises(ConversionError):
        from_keras(path)


def test_autoencoder_with_wrappers_and_dropout():
    """Bidirectional, RepeatVector, TimeDistributed, Dropout and Activation in a graph with
    two outputs, one of them an intermediate tensor."""
    x_in = keras.Input(shape=(7, 3), name="series")
    code = KL.Bidirectional(KL.GRU(4), merge_mode="sum", name="bi")(x_in)
    h = KL.Dropout(0.3, name="drop")(KL.RepeatVector(7, name="repeat")(code))
    h = KL.SimpleRNN(5, return_sequences=True, name="rnn")(h)
    recon = KL.TimeDistributed(KL.Dense(3), name="td")(h)
    gate = KL.Activation("sigmoid", name="gate")(code)
    model = randomize(keras.Model(x_in, [recon, gate], name="autoencoder"))
    x = np.random.default_rng(6).standard_normal((3, 7, 3)).astype(np.float32)
    ours = from_keras(model)
    assert ours.get_layer("drop").rate == 0.3
    assert_outputs(ours.predict(x), model.predict(x, verbose=0), "autoencoder")
    back = to_keras(ours)
    assert_outputs(back.predict(x, verbose=0), model.predict(x, verbose=0), "back")
    assert graph(back) == graph(model)


def test_attention_called_with_keywords():
    q = keras.Input(shape=(None, 4), name="q")
    v = keras.Input(shape=(None, 4), name="v")
    self_att = KL.MultiHeadAttention(2, 2, value_dim=3, name="self")(query=q, value=q)
    cross = KL.Attention(use_scale=True, score_mode="concat", name="cross")(
        [self_att, v], return_attention_scores=False)
    model = randomize(keras.Model([q, v], [cross, self_att], name="keywords"))
    rng = np.random.default_rng(7)
    x = [rng.standard_normal((2, 5, 4)).astype(np.float32),
         rng.standard_normal((2, 3, 4)).astype(np.float32)]
    ours = from_keras(model)
    assert_outputs(ours.predict(x), model.predict(x, verbose=0), "keywords")
    back = to_keras(ours)
    assert_outputs(back.predict(x, verbose=0), ours.predict(x), "back")
    assert graph(back) == graph(model)


@pytest.mark.parametrize("cls", ["Attention", "AdditiveAttention"])
def test_attention_scores_of_attention_layers_convert(cls):
    q = keras.Input(shape=(None, 4), name="q")
    v = keras.Input(shape=(None, 4), name="v")
    out, scores = getattr(KL, cls)(name="att")([q, v], return_attention_scores=True)
    model = keras.Model([q, v], [out, scores])
    ours = from_keras(model)
    rng = np.random.default_rng(3)
    x = [rng.standard_normal((2, 5, 4)).astype(np.float32),
         rng.standard_normal((2, 6, 4)).astype(np.float32)]
    assert_outputs(ours.predict(x), model.predict(x, verbose=0), "scores")
    back = to_keras(ours)
    assert_outputs(back.predict(x, verbose=0), ours.predict(x), "back")


def test_dict_inputs_and_outputs_round_trip(tmp_path):
    L = fl.layers
    a = fl.Input(shape=(None, 3), name="a")
    h = L.LSTM(4, name="lstm")(a)
    ours = fl.Model({"a": a}, {"p": L.Dense(2, name="p")(h), "q": L.Dense(1, name="q")(h)})
    x = {"a": np.random.default_rng(8).standard_normal((2, 5, 3)).astype(np.float32)}
    back = to_keras(ours)
    got = back.predict(x, verbose=0)
    assert set(got) == {"p", "q"}
    for k in ("p", "q"):
        assert_same(knp(got[k]), ours.predict(x)[k], np.float32, k)
    back.save(tmp_path / "d.keras")
    again = from_keras(tmp_path / "d.keras")
    assert again.output_names == ["p", "q"]
    for k in ("p", "q"):
        assert_same(again.predict(x)[k], ours.predict(x)[k], np.float32, k)
