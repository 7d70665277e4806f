"""Whole architectures against Keras 3 (torch backend) on the same weights: an encoder-decoder
with Bahdanau attention over the encoder's outputs (masked source tokens), built with the
functional API in both libraries. Equal ``predict`` and equal ``train_on_batch`` losses and
weights after 3 Adam steps."""
import numpy as np
import pytest

import fastlstm as fl

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
if keras.backend.backend() != "torch":
    pytest.skip("Keras runs on another backend than torch", allow_module_level=True)

pytestmark = [pytest.mark.peers,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

SRC_VOCAB, TGT_VOCAB, EMB, UNITS = 13, 11, 8, 16


def attention_seq2seq(lib):
    """Keras's names in both libraries: ``lib`` is ``fl`` or ``keras``."""
    L = lib.layers
    src = lib.Input(shape=(None,), dtype="int32", name="source")
    tgt = lib.Input(shape=(None,), dtype="int32", name="target")
    enc_emb = L.Embedding(SRC_VOCAB, EMB, mask_zero=True, name="enc_emb")(src)
    enc_seq, h, c = L.LSTM(UNITS, return_sequences=True, return_state=True, name="encoder")(enc_emb)
    dec_emb = L.Embedding(TGT_VOCAB, EMB, name="dec_emb")(tgt)
    dec_seq = L.LSTM(UNITS, return_sequences=True, name="decoder")(dec_emb, initial_state=[h, c])
    context = L.AdditiveAttention(name="attention")([dec_seq, enc_seq])
    joined = L.Concatenate(name="join")([dec_seq, context])
    out = L.Dense(TGT_VOCAB, activation="softmax", name="out")(joined)
    return lib.Model([src, tgt], out)


def data(seed=0, B=6, Ts=7, Tt=5):
    rng = np.random.default_rng(seed)
    src = rng.integers(1, SRC_VOCAB, (B, Ts))
    for b in range(B):                           # post-padded sources of several lengths
        src[b, rng.integers(3, Ts + 1):] = 0
    tgt_in = rng.integers(1, TGT_VOCAB, (B, Tt))
    tgt_out = rng.integers(1, TGT_VOCAB, (B, Tt))
    return src.astype(np.int32), tgt_in.astype(np.int32), tgt_out


def same_weights(ours, theirs, seed=1):
    rng = np.random.default_rng(seed)
    for layer in ours.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        new = [(rng.standard_normal(w.shape) * 0.3).astype(np.float32) for w in ws]
        layer.set_weights(new)
        theirs.get_layer(layer.name).set_weights(new)


def test_bahdanau_seq2seq_predicts_and_trains_as_keras():
    ours, theirs = attention_seq2seq(fl), attention_seq2seq(keras)
    same_weights(ours, theirs)
    src, tgt_in, tgt_out = data()
    np.testing.assert_allclose(ours.predict([src, tgt_in]),
                               keras.ops.convert_to_numpy(theirs.predict([src, tgt_in], verbose=0)),
                               rtol=2e-5, atol=2e-6)
    ours.compile(optimizer=fl.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    theirs.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    for step in range(3):
        a = ours.train_on_batch([src, tgt_in], tgt_out)
        b = theirs.train_on_batch([src, tgt_in], tgt_out)
        np.testing.assert_allclose(a, float(b), rtol=2e-5, err_msg=f"loss of step {step}")
    for layer in ours.layers:
        for i, (w, v) in enumerate(zip(layer.get_weights(),
                                       theirs.get_layer(layer.name).get_weights())):
            np.testing.assert_allclose(w, v, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{layer.name} weight {i} after 3 steps")
