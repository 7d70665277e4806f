"""Files of functional models whose layers take several inputs (merges, attention): each
such layer keeps one input shape per input, and the model loads with equal outputs."""
import numpy as np
import pytest

import fastlstm as fl


def _model():
    src, tgt = fl.Input((None, 6), name="src"), fl.Input((None, 5), name="tgt")
    enc, h, c = fl.layers.LSTM(8, return_sequences=True, return_state=True, name="enc")(src)
    dec = fl.layers.LSTM(8, return_sequences=True, name="dec")(tgt, initial_state=[h, c])
    ctx = fl.layers.AdditiveAttention(name="att")([dec, enc])
    mha = fl.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(dec, enc)
    joined = fl.layers.Concatenate(name="join")([dec, ctx, fl.layers.Add(name="add")([dec, mha])])
    return fl.Model([src, tgt], fl.layers.Dense(3, name="out")(joined))


def test_a_model_with_merge_and_attention_layers_saves_and_loads(tmp_path):
    model = _model()
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((4, 7, 6)).astype(np.float32),
         rng.standard_normal((4, 3, 5)).astype(np.float32)]
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, rng.standard_normal((4, 3, 3)), epochs=2, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = fl.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for name in ("mha", "att", "join", "add"):
        shapes = loaded.get_layer(name).input_shape
        assert isinstance(shapes, list) and len(shapes) >= 2, (name, shapes)
        assert [tuple(s)[1:] for s in shapes] == \
            [tuple(s)[1:] for s in model.get_layer(name).input_shape]   # the batch is not kept
    # training goes on from the saved optimizer state as it would have
    a = model.train_on_batch(x, np.ones((4, 3, 3)))
    b = loaded.train_on_batch(x, np.ones((4, 3, 3)))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_an_edited_nested_shape_is_refused(tmp_path):
    import json
    import zipfile
    model = _model()
    x = [np.zeros((2, 4, 6), np.float32), np.zeros((2, 3, 5), np.float32)]
    model.predict(x)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    key = fl.saving.DOC_KEY
    doc = json.loads(arrays[key].tobytes().decode())
    for entry in doc["model"]["layers"]:
        if entry["config"]["name"] == "att":
            entry["input_shape"] = [[None, 3, 8], [None, 7, "x"]]
    arrays[key] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="malformed input_shape"):
        fl.load_model(tmp_path / "bad.npz")


def test_attention_scores_are_outputs_of_a_functional_model(tmp_path):
    q, v = fl.Input((None, 8), name="q"), fl.Input((None, 8), name="v")
    att = fl.layers.Attention(name="att")
    mha = fl.layers.MultiHeadAttention(2, 4, name="mha")
    out, scores = att([q, v], return_attention_scores=True)
    out2, scores2 = mha(q, v, return_attention_scores=True)
    assert scores.shape == (None, None, None) and scores2.shape == (None, 2, None, None)
    model = fl.Model([q, v], [out, scores, out2, scores2])
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((3, 5, 8)).astype(np.float32),
         rng.standard_normal((3, 7, 8)).astype(np.float32)]
    got = model.predict(x)
    want = list(att(x, return_attention_scores=True)) + list(
        mha(x[0], x[1], return_attention_scores=True))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    model.save(tmp_path / "scores.npz")
    for g, w in zip(fl.load_model(tmp_path / "scores.npz").predict(x), want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
