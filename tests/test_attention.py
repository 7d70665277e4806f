"""Attention, AdditiveAttention and MultiHeadAttention: values and gradients against Keras 3
(torch backend, gradients by torch autograd) on the same weights, against a float64 NumPy
oracle written from the formulas, and by finite differences in float64; masks (query,
value, key, attention, causal, sliding window), dropout, regularizers, configuration
round-trips, and clear errors.

Keras 3.15 computes a ``dtype="float64"`` layer's products in float32 (its type promotion
maps float64 to float32), so the Keras comparisons use float32 tolerances in both dtypes;
float64 exactness is checked against the oracle and by finite differences."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastlstm as fl
from fastlstm import layers
from fastlstm.layers import AdditiveAttention, Attention, MultiHeadAttention
from fastlstm.regularizers import L1L2

from conftest import PEER_TOL, TOL, assert_close, seed_of


@pytest.fixture(scope="module")
def keras():
    k = pytest.importorskip("keras")
    pytest.importorskip("torch")
    if k.backend.backend() != "torch":
        pytest.skip("Keras runs on another backend than torch")
    return k


def peer_test(f):
    """A test that runs Keras (skipped without it)."""
    # Keras's torch backend converts tensors with np.array(x): NumPy 2 warns
    return pytest.mark.peers(pytest.mark.filterwarnings(
        "ignore:__array__ implementation:DeprecationWarning")(f))


def peer_close(actual, expected, name=""):
    # Keras computes in float32 whatever the layer's dtype (see the module docstring)
    assert_close(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                 np.float32, name=name, table=PEER_TOL)


def exact_close(actual, expected, name=""):
    assert_close(actual, expected, np.float64, name=name, table=TOL)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def causal(tq, tv):
    return np.tril(np.ones((tq, tv), bool))[None]


def masks(rng, B, Tq, Tv, full_row=False):
    """A query mask and a value mask with some False entries (value step 0 always kept,
    unless ``full_row``: then batch row 0 masks every value step)."""
    qm = rng.random((B, Tq)) > 0.3
    qm[:, 0] = True
    qm[-1, -1] = False
    vm = rng.random((B, Tv)) > 0.3
    vm[:, 0] = True
    vm[-1, -1] = False
    if full_row:
        vm[0] = False
    return qm, vm


# ------------------------------------------------------------------------------ oracles
def ref_list_attention(kind, q, v, k, qm, vm, use_causal, scale=None, csw=None):
    """Keras's Attention / AdditiveAttention, written from its formulas in float64."""
    q, v, k = (np.asarray(a, np.float64) for a in (q, v, k))
    if kind == "dot":
        s = np.einsum("bqd,bvd->bqv", q, k)
        if scale is not None:
            s = s * scale
    elif kind == "concat":
        u = q[:, :, None, :] + k[:, None, :, :]
        s = csw * np.tanh(u * (1.0 if scale is None else scale)).sum(-1)
    else:
        t = np.tanh(q[:, :, None, :] + k[:, None, :, :])
        s = (t * (1.0 if scale is None else scale)).sum(-1)
    m = None if vm is None else vm[:, None, :]
    if use_causal:
        m = causal(q.shape[1], k.shape[1]) if m is None else m & causal(q.shape[1], k.shape[1])
    if m is not None:
        s = np.where(m, s, s - 1e9)
    w = softmax(s)
    out = np.einsum("bqv,bvd->bqd", w, v)
    if qm is not None:
        out = out * qm[:, :, None]
    return out, w


def ref_mha(ws, num_heads, key_dim, q, v, k, use_bias=True, mask=None, use_gate=False):
    """Keras's MultiHeadAttention (einsum equations of its EinsumDense projections) in
    float64; ``mask`` broadcastable to (B, N, T, S)."""
    ws = [np.asarray(w, np.float64) for w in ws]
    it = iter(ws)

    def proj(x, eq):
        kern = next(it)
        y = np.einsum(eq, x, kern)
        return y + next(it) if use_bias else y

    q, v, k = (np.asarray(a, np.float64) for a in (q, v, k))
    Q = proj(q, "btd,dnh->btnh")
    K = proj(k, "bsd,dnh->bsnh")
    gate = 1 / (1 + np.exp(-proj(q, "btd,dnh->btnh"))) if use_gate else 1.0
    V = proj(v, "bsd,dnh->bsnh")
    s = np.einsum("bsnh,btnh->bnts", K, Q / np.sqrt(key_dim))
    if mask is not None:
        p = np.where(mask, softmax(np.where(mask, s, -1e9)), 0.0)
    else:
        p = softmax(s)
    O = np.einsum("bnts,bsnh->btnh", p, V) * gate
    kern = next(it)
    y = np.einsum("btnh,nh...->bt...", O, kern)
    if use_bias:
        y = y + next(it)
    return y, p


def mha_mask(B, N, T, S, qm=None, vm=None, km=None, am=None, use_causal=False, window=None):
    m = np.ones((B, 1, T, S), bool)
    if qm is not None:
        m = m & qm[:, None, :, None]
    if vm is not None:
        m = m & vm[:, None, None, :]
    if km is not None:
        m = m & km[:, None, None, :]
    if am is not None:
        m = m & am[:, None]
    if use_causal:
        m = m & causal(T, S)[None]
    if window is not None:
        i, j = np.arange(T)[:, None], np.arange(S)[None, :]
        m = m & (np.abs(i - j) < window)
    return m


# ------------------------------------------------------------------------------ Keras runs
def keras_list_run(keras, klayer, inputs, mask, use_causal, gy, gs, training=False):
    """Keras on torch tensors: outputs, scores, input gradients, weight gradients."""
    import torch
    ts = [torch.tensor(a, requires_grad=True) for a in inputs]
    kmask = None if mask is None else [None if m is None else torch.tensor(m) for m in mask]
    out, sc = klayer(ts, mask=kmask, return_attention_scores=True, use_causal_mask=use_causal,
                     training=training)
    loss = (out * torch.tensor(gy)).sum() + (sc * torch.tensor(gs)).sum()
    loss.backward()
    return (out.detach().numpy(), sc.detach().numpy(), [t.grad.numpy() for t in ts],
            [w.value.grad.numpy() for w in klayer.trainable_weights])


def keras_mha_run(keras, kl, q, v, k, gy, gs, query_mask=None, ret=True, **kw):
    """Keras's MultiHeadAttention on torch tensors. Keras 3.15 reads the query mask from the
    query tensor (an explicit query_mask= is ignored), so it is attached there."""
    import torch
    from keras.src import backend
    tq, tv = torch.tensor(q, requires_grad=True), torch.tensor(v, requires_grad=True)
    tk = None if k is None else torch.tensor(k, requires_grad=True)
    if query_mask is not None:
        backend.set_keras_mask(tq, torch.tensor(query_mask))
    kw = {n: (torch.tensor(m) if isinstance(m, np.ndarray) else m) for n, m in kw.items()}
    res = kl(tq, tv, tk, return_attention_scores=ret, **kw)
    out, sc = res if ret else (res, None)
    loss = (out * torch.tensor(gy)).sum()
    if ret:
        loss = loss + (sc * torch.tensor(gs)).sum()
    loss.backward()
    grads = [tq.grad.numpy(), tv.grad.numpy(), None if tk is None else tk.grad.numpy()]
    return (out.detach().numpy(), None if sc is None else sc.detach().numpy(), grads,
            [w.value.grad.numpy() for w in kl.trainable_weights])


# ------------------------------------------------------------------------------ Attention family
LIST_CASES = [
    ("Attention", dict()), ("Attention", dict(use_scale=True)),
    ("Attention", dict(score_mode="concat")),
    ("Attention", dict(use_scale=True, score_mode="concat")),
    ("AdditiveAttention", dict()), ("AdditiveAttention", dict(use_scale=False)),
]


def kind_of(cls_name, kw):
    return "additive" if cls_name == "AdditiveAttention" else kw.get("score_mode", "dot")


def list_pair(keras, cls_name, kw, shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    ours = getattr(layers, cls_name)(dtype=dtype, **kw)
    ours.build(shapes)
    ours.set_weights([np.asarray(rng.uniform(0.5, 1.5, w.shape)) for w in ours.get_weights()])
    theirs = getattr(keras.layers, cls_name)(dtype=dtype, **kw)
    theirs.build(shapes)
    theirs.set_weights(ours.get_weights())
    return ours, theirs


@peer_test
@pytest.mark.parametrize("cls_name,kw", LIST_CASES)
@pytest.mark.parametrize("with_key", [False, True], ids=["kv", "k"])
@pytest.mark.parametrize("masked,use_causal", [(False, False), (True, False), (False, True),
                                               (True, True)])
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_list_attention_matches_keras(keras, cls_name, kw, with_key, masked, use_causal, dt):
    rng = np.random.default_rng(seed_of(cls_name, kw, with_key, masked, use_causal))
    B, Tq, Tv, D, Dv = 2, 4, 5, 3, 3 if not with_key else 6
    q = rng.standard_normal((B, Tq, D)).astype(dt)
    v = rng.standard_normal((B, Tv, Dv)).astype(dt)
    k = rng.standard_normal((B, Tv, D)).astype(dt)
    inputs = [q, v, k] if with_key else [q, v]
    mask = list(masks(rng, B, Tq, Tv)) if masked else None
    ours, theirs = list_pair(keras, cls_name, kw, [a.shape for a in inputs], dt)
    gy = rng.standard_normal((B, Tq, Dv)).astype(dt)
    gs = rng.standard_normal((B, Tq, Tv)).astype(dt)
    kout, ksc, kgin, kgw = keras_list_run(keras, theirs, inputs, mask, use_causal, gy, gs)
    out, sc = ours(inputs, mask=mask, return_attention_scores=True, use_causal_mask=use_causal)
    assert out.dtype == np.dtype(dt) and sc.dtype == np.dtype(dt)
    peer_close(out, kout, "output")
    peer_close(sc, ksc, "scores")
    assert_close(ours(inputs, mask=mask, use_causal_mask=use_causal), out, dt)
    (out2, sc2), backprop = ours.forward_train(inputs, mask=mask, return_attention_scores=True,
                                               use_causal_mask=use_causal)
    assert_close(out2, out, dt)
    g = backprop([gy, gs])
    assert len(g.inputs) == len(inputs) and g.initial_state is None
    for name, a, b in zip(("d query", "d value", "d key"), g.inputs, kgin):
        peer_close(a, b, name)
    assert len(g.weights) == len(kgw) == len(ours.get_weights())
    for name, a, b in zip(ours.weight_names, g.weights, kgw):
        assert a.shape == b.shape
        peer_close(a, b, "d " + name)
    # float64 and float32 against the oracle written from the formulas
    ws = dict(zip(ours.weight_names, ours.get_weights()))
    rout, rsc = ref_list_attention(kind_of(cls_name, kw), q, v, k if with_key else v,
                                   None if mask is None else mask[0],
                                   None if mask is None else mask[1], use_causal,
                                   ws.get("scale"), ws.get("concat_score_weight"))
    assert_close(out, rout.astype(dt), dt, "oracle output")
    assert_close(sc, rsc.astype(dt), dt, "oracle scores")



@pytest.mark.parametrize("cls_name,kw", LIST_CASES)
@pytest.mark.parametrize("with_key", [False, True], ids=["kv", "k"])
def test_list_attention_finite_differences(cls_name, kw, with_key):
    """float64 backprop against central differences of sum(out * gy) + sum(scores * gs),
    with query and value masks, the causal mask and dropout (the same draw each time)."""
    rng = np.random.default_rng(3)
    B, Tq, Tv, D = 2, 3, 4, 3
    Dv = D + 1 if with_key else D
    q = rng.standard_normal((B, Tq, D))
    v = rng.standard_normal((B, Tv, Dv))
    k = rng.standard_normal((B, Tv, D))
    inputs = [q, v, k] if with_key else [q, v]
    mask = list(masks(rng, B, Tq, Tv))
    layer = getattr(layers, cls_name)(dtype="float64", dropout=0.3, seed=5, **kw)
    layer.build([a.shape for a in inputs])
    layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])
    gy = rng.standard_normal((B, Tq, Dv))
    gs = rng.standard_normal((B, Tq, Tv))

    def run():
        layer._rng = np.random.default_rng(11)       # the same dropout draw every time
        return layer.forward_train(inputs, mask=mask, return_attention_scores=True,
                                   use_causal_mask=True)

    def loss():
        (o, s), _ = run()
        return float((o * gy).sum() + (s * gs).sum())

    (_, sc), backprop = run()
    assert (sc == 0).any(), "dropout should zero some probabilities"
    g = backprop([gy, gs])
    arrays = inputs + layer.weights
    grads = list(g.inputs) + list(g.weights)
    for arr, grad in zip(arrays, grads):
        num = np.zeros(arr.size)
        flat = arr.reshape(-1)
        for i in range(arr.size):
            old = flat[i]
            flat[i] = old + 1e-6
            up = loss()
            flat[i] = old - 1e-6
            down = loss()
            flat[i] = old
            num[i] = (up - down) / 2e-6
        np.testing.assert_allclose(np.asarray(grad).reshape(-1), num, rtol=1e-6, atol=1e-7)


@peer_test
def test_attention_fully_masked_row_matches_keras(keras):
    """A batch row whose value steps are all masked: Keras subtracts 1e9 from every score,
    which leaves (in float32) a uniform distribution; fastlstm computes the same."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 3, 4)).astype("float32")
    v = rng.standard_normal((2, 5, 4)).astype("float32")
    qm, vm = masks(rng, 2, 3, 5, full_row=True)
    for cls_name, kw in LIST_CASES:
        ours, theirs = list_pair(keras, cls_name, kw, [q.shape, v.shape], "float32")
        ko, ks = theirs([q, v], mask=[qm, vm], return_attention_scores=True)
        o, s = ours([q, v], mask=[qm, vm], return_attention_scores=True)
        peer_close(o, keras.ops.convert_to_numpy(ko))
        peer_close(s, keras.ops.convert_to_numpy(ks))



@peer_test
def test_list_attention_weights_and_shapes(keras):
    q, v = np.zeros((2, 3, 4), "float32"), np.zeros((2, 5, 6), "float32")
    for cls_name, kw in LIST_CASES:
        ours = getattr(layers, cls_name)(**kw)
        theirs = getattr(keras.layers, cls_name)(**kw)
        theirs.build([q.shape, v.shape, (2, 5, 4)])
        ours.build([q.shape, v.shape, (2, 5, 4)])
        kshapes = [tuple(w.shape) for w in theirs.weights]
        assert [w.shape for w in ours.get_weights()] == kshapes
        assert ours.weight_shapes([q.shape, v.shape, (2, 5, 4)]) == kshapes
        assert [w.path.split("/")[-1] for w in theirs.weights] == ours.weight_names
        three = [(None, 3, 4), (None, 5, 6), (None, 5, 4)]
        assert ours.compute_output_shape(three) == (None, 3, 6)
        assert tuple(theirs.compute_output_shape(three)) == (None, 3, 6)
    # Keras's initial values: scalars of one; AdditiveAttention's Glorot-uniform scale
    a = AdditiveAttention()
    a.build([(None, 3, 50), (None, 5, 50)])
    limit = np.sqrt(6 / 100)
    assert a.scale.shape == (50,) and np.abs(a.scale).max() <= limit
    assert np.abs(a.scale).max() > 0.5 * limit
    b = Attention(use_scale=True, score_mode="concat")
    b.build([(None, 3, 4), (None, 5, 4)])
    assert [float(w) for w in b.get_weights()] == [1.0, 1.0]



def test_list_attention_compute_mask():
    qm = np.array([[1, 1, 0]], bool)
    vm = np.array([[1, 0]], bool)
    for layer in (Attention(), AdditiveAttention()):
        x = [np.zeros((1, 3, 2)), np.zeros((1, 2, 2))]
        assert layer.compute_mask(x, None) is None
        assert layer.compute_mask(x, [None, vm]) is None
        np.testing.assert_array_equal(layer.compute_mask(x, [qm, vm]), qm)


def test_list_attention_query_mask_zeroes_output_and_gradients():
    rng = np.random.default_rng(6)
    q, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    qm = np.array([[1, 0, 1], [0, 1, 1]], bool)
    layer = Attention(dtype="float64")
    out, backprop = layer.forward_train([q, v], mask=[qm, None])
    assert np.all(out[~qm] == 0) and np.all(out[qm] != 0)
    g = backprop(np.ones_like(out))
    assert np.all(g.inputs[0][~qm] == 0)


def test_list_attention_returns_probabilities_after_dropout():
    """Keras returns the attention probabilities after dropout; inference has no dropout
    and equals a dropout-free layer; training differs from it and is reproducible."""
    rng = np.random.default_rng(7)
    q, v = rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 7, 4))
    for cls in (Attention, AdditiveAttention):
        plain = cls(dtype="float64")
        drop = cls(dtype="float64", dropout=0.4, seed=3)
        plain.build([q.shape, v.shape])
        drop.build([q.shape, v.shape])
        drop.set_weights(plain.get_weights())
        p_out, p_sc = plain([q, v], return_attention_scores=True)
        i_out, i_sc = drop([q, v], return_attention_scores=True)
        exact_close(i_out, p_out)
        exact_close(i_sc, p_sc)
        t_out, t_sc = drop([q, v], return_attention_scores=True, training=True)
        assert not np.allclose(t_out, p_out)
        kept = t_sc != 0
        assert 0.27 < 1 - kept.mean() < 0.53          # rate 0.4
        exact_close(t_sc[kept], p_sc[kept] / 0.6)
        exact_close(t_out, t_sc @ v)
        again = cls(dtype="float64", dropout=0.4, seed=3)
        again.build([q.shape, v.shape])
        again.set_weights(plain.get_weights())
        exact_close(again([q, v], training=True), t_out)
        (f_out, f_sc), _ = again.forward_train([q, v], return_attention_scores=True)
        assert not np.allclose(f_sc, p_sc)


def test_list_attention_backprop_output_forms():
    rng = np.random.default_rng(8)
    q, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    layer = AdditiveAttention(dtype="float64")
    out, bp = layer.forward_train([q, v])
    g1 = bp(np.ones_like(out))
    (out2, sc), bp2 = layer.forward_train([q, v], return_attention_scores=True)
    g2 = bp2([np.ones_like(out2), None])
    for a, b in zip(g1.inputs + g1.weights, g2.inputs + g2.weights):
        exact_close(a, b)
    (_, _), bp3 = layer.forward_train([q, v], return_attention_scores=True)
    g3 = bp3([None, None])
    assert all(np.all(a == 0) for a in g3.inputs)
    with pytest.raises(RuntimeError, match="already run"):
        bp(np.ones_like(out))
    _, bp4 = layer.forward_train([q, v], return_attention_scores=True)
    with pytest.raises(ValueError, match="list of 2 gradients"):
        bp4(np.ones_like(out))
    _, bp5 = layer.forward_train([q, v])
    with pytest.raises(ValueError, match=r"d_out: expected shape \(2, 3, 4\)"):
        bp5(np.ones((2, 3, 5)))


def test_list_attention_errors():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="score_mode"):
        Attention(score_mode="add")
    with pytest.raises(ValueError, match="dropout"):
        Attention(dropout=1.0)
    with pytest.raises(TypeError, match="use_scale"):
        AdditiveAttention(use_scale="yes")
    with pytest.raises(TypeError, match="seed"):
        Attention(seed="s")
    with pytest.raises(TypeError):
        AdditiveAttention(score_mode="concat")
    layer = Attention()
    with pytest.raises(TypeError, match="expects a list"):
        layer(x)
    with pytest.raises(ValueError, match="2 or 3 arrays"):
        layer([x])
    with pytest.raises(ValueError, match="query: expected a 3-D"):
        layer([np.zeros((2, 4)), x])
    with pytest.raises(ValueError, match="one batch size"):
        layer([x, np.zeros((3, 3, 4))])
    with pytest.raises(ValueError, match="same number of steps"):
        layer([x, np.zeros((2, 5, 4)), np.zeros((2, 6, 4))])
    with pytest.raises(ValueError, match="same feature size"):
        layer([x, np.zeros((2, 5, 3))])
    with pytest.raises(ValueError, match="at least one step"):
        layer([x, np.zeros((2, 0, 4))])
    with pytest.raises(ValueError, match=r"mask\[1\] \(value_mask\): expected shape \(2, 5\)"):
        layer([x, np.zeros((2, 5, 4))], mask=[None, np.ones((2, 4), bool)])
    with pytest.raises(ValueError, match="mask: Attention expects None or a list"):
        layer([x, x], mask=np.ones((2, 3), bool))
    with pytest.raises(TypeError, match="training"):
        layer([x, x], training="yes")
    with pytest.raises(TypeError, match="use_causal_mask"):
        layer([x, x], use_causal_mask="no")
    with pytest.raises(TypeError, match="query: expected a real numeric array"):
        layer([np.array([[["a"]]]), x])
    add = AdditiveAttention()
    add([x, x])
    with pytest.raises(ValueError, match="was built for 4 features"):
        add([np.zeros((2, 3, 5)), np.zeros((2, 3, 5))])
    with pytest.raises(ValueError, match="input_shape"):
        AdditiveAttention().build((2, 3, 4))
    with pytest.raises(ValueError, match="input_shape"):
        Attention().build([(2, 3), (2, 3)])


@peer_test
def test_list_attention_config_round_trip(keras):
    rng = np.random.default_rng(9)
    q, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    for cls_name, kw in LIST_CASES:
        kw = dict(kw, dropout=0.25, seed=4)
        layer = getattr(layers, cls_name)(name="att", dtype="float64", **kw)
        layer([q, v])
        cfg = layer.get_config()
        json.dumps(cfg)
        kcfg = getattr(keras.layers, cls_name)(**kw).get_config()
        assert set(cfg) - {"dtype", "name", "trainable"} == set(kcfg) - {"dtype", "name",
                                                                         "trainable"}
        for key in set(kcfg) - {"dtype", "name", "trainable"}:
            assert cfg[key] == kcfg[key], key
        again = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
        assert type(again) is type(layer) and again.get_config() == cfg
        again.build([q.shape, v.shape])
        again.set_weights(layer.get_weights())
        exact_close(again([q, v]), layer([q, v]))



# ------------------------------------------------------------------------------ seq2seq shape
@peer_test
def test_additive_attention_on_seq2seq_encoder_decoder_matches_keras(keras):
    """Bahdanau attention as a seq2seq model uses it: decoder outputs (B, Tq, H) attend over
    encoder outputs (B, Tv, H), masks from Embedding(mask_zero=True). A Keras functional model
    of the same layers (its masks propagated automatically) computes the same."""
    rng = np.random.default_rng(10)
    B, Tv, Tq, V, E, H = 3, 6, 4, 9, 5, 7
    src = rng.integers(1, V, (B, Tv))
    tgt = rng.integers(1, V, (B, Tq))
    src[0, 4:] = 0
    src[2, 2:] = 0
    tgt[1, 3:] = 0
    emb_s, emb_t = layers.Embedding(V, E, mask_zero=True), layers.Embedding(V, E, mask_zero=True)
    enc = layers.LSTM(H, return_sequences=True)
    dec = layers.LSTM(H, return_sequences=True)
    att = AdditiveAttention()
    s_mask, t_mask = emb_s.compute_mask(src), emb_t.compute_mask(tgt)
    enc_out = enc(emb_s(src), mask=s_mask)
    dec_out = dec(emb_t(tgt), mask=t_mask)
    out, sc = att([dec_out, enc_out], mask=[t_mask, s_mask], return_attention_scores=True)
    assert out.shape == (B, Tq, H) and sc.shape == (B, Tq, Tv)
    assert np.all(sc[0][:, 4:] == 0) and np.all(sc[2][:, 2:] == 0)
    assert np.all(out[1, 3:] == 0)

    ks, kt = keras.Input((Tv,), dtype="int64"), keras.Input((Tq,), dtype="int64")
    kes = keras.layers.Embedding(V, E, mask_zero=True)
    ket = keras.layers.Embedding(V, E, mask_zero=True)
    kenc = keras.layers.LSTM(H, return_sequences=True)
    kdec = keras.layers.LSTM(H, return_sequences=True)
    katt = keras.layers.AdditiveAttention()
    kout, ksc = katt([kdec(ket(kt)), kenc(kes(ks))], return_attention_scores=True)
    model = keras.Model([ks, kt], [kout, ksc])
    for ours, theirs in ((emb_s, kes), (emb_t, ket), (enc, kenc), (dec, kdec), (att, katt)):
        theirs.set_weights(ours.get_weights())
    ko, ksc_ = model([src, tgt])
    peer_close(out, keras.ops.convert_to_numpy(ko), "output")
    peer_close(sc, keras.ops.convert_to_numpy(ksc_), "scores")

    # training through the attention into both recurrent layers
    (o2, _), bp = att.forward_train([dec_out, enc_out], mask=[t_mask, s_mask],
                                    return_attention_scores=True)
    g = bp([np.ones_like(o2), None])
    assert g.inputs[0].shape == dec_out.shape and g.inputs[1].shape == enc_out.shape
    assert np.all(g.inputs[1][0, 4:] == 0)      # masked encoder steps receive nothing



# ------------------------------------------------------------------------------ MultiHeadAttention
MHA_CASES = [
    dict(num_heads=2, key_dim=3),
    dict(num_heads=3, key_dim=2, value_dim=4),
    dict(num_heads=1, key_dim=4, use_bias=False, output_shape=7),
    dict(num_heads=2, key_dim=3, value_dim=2, output_shape=(2, 3)),
    dict(num_heads=2, key_dim=3, value_dim=4, use_gate=True),
    dict(num_heads=3, key_dim=2, use_gate=True, use_bias=False),
]


def mha_pair(keras, kw, q_shape, v_shape, k_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    ours = MultiHeadAttention(dtype=dtype, **kw)
    ours.build(q_shape, v_shape, k_shape)
    ours.set_weights([rng.standard_normal(w.shape) * 0.5 for w in ours.get_weights()])
    theirs = keras.layers.MultiHeadAttention(dtype=dtype, **kw)
    theirs.build(q_shape, v_shape, k_shape)
    theirs.set_weights(ours.get_weights())
    return ours, theirs


@peer_test
@pytest.mark.parametrize("kw", MHA_CASES, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
@pytest.mark.parametrize("with_key", [False, True], ids=["kv", "k"])
@pytest.mark.parametrize("masking", ["none", "query-value", "all", "causal"])
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_mha_matches_keras(keras, kw, with_key, masking, dt):
    rng = np.random.default_rng(seed_of(kw, with_key, masking))
    B, T, S, Dq, Dv, Dk = 2, 4, 5, 6, 5, 3
    q = rng.standard_normal((B, T, Dq)).astype(dt)
    v = rng.standard_normal((B, S, Dv)).astype(dt)
    k = rng.standard_normal((B, S, Dk)).astype(dt) if with_key else None
    ours, theirs = mha_pair(keras, kw, q.shape, v.shape, None if k is None else k.shape, dt)
    call = {}
    qm = None
    if masking in ("query-value", "all"):
        qm, call["value_mask"] = masks(rng, B, T, S)
        qm[0] = False                          # a fully masked query row
    if masking == "all":
        call["attention_mask"] = rng.random((B, T, S)) > 0.2
        call["use_causal_mask"] = True
        if with_key:
            call["key_mask"] = rng.random((B, S)) > 0.2
    if masking == "causal":
        call["use_causal_mask"] = True
    out_shape = (B, T) + tuple(np.atleast_1d(kw.get("output_shape", Dq)))
    gy = rng.standard_normal(out_shape).astype(dt)
    gs = rng.standard_normal((B, kw["num_heads"], T, S)).astype(dt)
    kout, ksc, kgin, kgw = keras_mha_run(keras, theirs, q, v, k, gy, gs, query_mask=qm, **call)
    out, sc = ours(q, v, k, query_mask=qm, return_attention_scores=True, **call)
    assert out.shape == out_shape and out.dtype == np.dtype(dt) and sc.dtype == np.dtype(dt)
    peer_close(out, kout, "output")
    peer_close(sc, ksc, "scores")
    exact_close(ours(q, v, k, query_mask=qm, **call), out)
    (out2, _), backprop = ours.forward_train(q, v, k, query_mask=qm,
                                             return_attention_scores=True, **call)
    exact_close(out2, out)
    g = backprop([gy, gs])
    assert len(g.inputs) == 3 and (g.inputs[2] is None) == (k is None)
    for name, a, b in zip(("d query", "d value", "d key"), g.inputs, kgin):
        if b is not None:
            peer_close(a, b, name)
    assert len(g.weights) == len(kgw)
    for name, a, b in zip(ours.weight_names, g.weights, kgw):
        peer_close(a, b, "d " + name)
    # the oracle, exact in float64
    m = None
    if masking != "none":
        m = mha_mask(B, kw["num_heads"], T, S, qm, call.get("value_mask"), call.get("key_mask"),
                     call.get("attention_mask"), call.get("use_causal_mask", False))
    rout, rsc = ref_mha(ours.get_weights(), kw["num_heads"], kw["key_dim"], q, v,
                        v if k is None else k, kw.get("use_bias", True), m,
                        kw.get("use_gate", False))
    assert_close(out, rout.astype(dt), dt, "oracle output")
    assert_close(sc, rsc.astype(dt), dt, "oracle scores")



@peer_test
def test_mha_without_scores_matches_keras_fused_path(keras):
    """Without return_attention_scores Keras runs torch's fused attention; it agrees with
    fastlstm except on fully masked query rows (see test_mha_fully_masked_query_rows)."""
    rng = np.random.default_rng(12)
    q, v = rng.standard_normal((2, 4, 6)).astype("f4"), rng.standard_normal((2, 5, 6)).astype("f4")
    qm, vm = masks(rng, 2, 4, 5)
    ours, theirs = mha_pair(keras, dict(num_heads=2, key_dim=3), q.shape, v.shape, None, "float32")
    gy = rng.standard_normal((2, 4, 6)).astype("f4")
    kout, _, kgin, kgw = keras_mha_run(keras, theirs, q, v, None, gy, None, ret=False,
                                       value_mask=vm, use_causal_mask=True)
    out, bp = ours.forward_train(q, v, value_mask=vm, use_causal_mask=True)
    peer_close(out, kout)
    g = bp(gy)
    peer_close(g.inputs[0], kgin[0])
    peer_close(g.inputs[1], kgin[1])
    for a, b in zip(g.weights, kgw):
        peer_close(a, b)
    # with a query mask, the steps it keeps agree too
    kout = keras_mha_run(keras, theirs, q, v, None, gy, None, query_mask=qm, ret=False,
                         value_mask=vm)[0]
    peer_close(ours(q, v, query_mask=qm, value_mask=vm)[qm], kout[qm])



def test_mha_fully_masked_query_rows():
    """A query step with nothing to attend to gets all-zero probabilities, so its output is
    the output bias alone (Keras's explicit masked softmax; Keras's fused path, used when
    scores are not returned, would average the values instead)."""
    rng = np.random.default_rng(13)
    layer = MultiHeadAttention(2, 3, dtype="float64", bias_initializer="ones")
    q, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    qm = np.array([[1, 0, 1], [1, 1, 0]], bool)
    out, sc = layer(q, v, query_mask=qm, return_attention_scores=True)
    assert np.all(sc[0, :, 1] == 0) and np.all(sc[1, :, 2] == 0)
    exact_close(out[0, 1], layer.output_bias)
    exact_close(out[1, 2], layer.output_bias)
    np.testing.assert_array_equal(layer.compute_mask([q, v], [qm, None]), qm)
    np.testing.assert_array_equal(layer.compute_mask(query_mask=qm), qm)
    assert layer.compute_mask([q, v], None) is None


@pytest.mark.parametrize("kw", MHA_CASES[:2] + [
    dict(num_heads=2, key_dim=2, output_shape=(2, 2)),
    dict(num_heads=2, key_dim=2, value_dim=3, use_gate=True)])
@pytest.mark.parametrize("with_key", [False, True], ids=["kv", "k"])
def test_mha_finite_differences(kw, with_key):
    rng = np.random.default_rng(14)
    B, T, S = 2, 3, 4
    q, v = rng.standard_normal((B, T, 3)), rng.standard_normal((B, S, 2))
    k = rng.standard_normal((B, S, 3)) if with_key else None
    layer = MultiHeadAttention(dtype="float64", dropout=0.3, seed=2,
                               activity_regularizer=L1L2(0.01, 0.02), **kw)
    layer.build(q.shape, v.shape, None if k is None else k.shape)
    layer.set_weights([rng.standard_normal(w.shape) * 0.5 for w in layer.get_weights()])
    qm, vm = masks(rng, B, T, S)
    am = rng.random((B, T, S)) > 0.2
    call = dict(query_mask=qm, value_mask=vm, attention_mask=am, use_causal_mask=True,
                return_attention_scores=True)
    out_shape = layer.compute_output_shape(q.shape, v.shape)
    gy = rng.standard_normal(out_shape)
    gs = rng.standard_normal((B, kw["num_heads"], T, S))

    def run():
        layer._rng = np.random.default_rng(21)
        return layer.forward_train(q, v, k, **call)

    def loss():
        (o, s), _ = run()
        return float((o * gy).sum() + (s * gs).sum()) + layer.last_activity_loss

    _, backprop = run()
    assert layer.last_activity_loss > 0
    g = backprop([gy, gs])
    arrays = [q, v] + ([k] if with_key else []) + layer.weights
    grads = list(g.inputs[:2]) + ([g.inputs[2]] if with_key else []) + list(g.weights)
    for arr, grad in zip(arrays, grads):
        flat = arr.reshape(-1)
        num = np.zeros(arr.size)
        for i in range(arr.size):
            old = flat[i]
            flat[i] = old + 1e-6
            up = loss()
            flat[i] = old - 1e-6
            down = loss()
            flat[i] = old
            num[i] = (up - down) / 2e-6
        np.testing.assert_allclose(np.asarray(grad).reshape(-1), num, rtol=1e-6, atol=1e-7)


@peer_test
def test_mha_sliding_window_and_attention_mask_forms(keras):
    rng = np.random.default_rng(15)
    B, T, S = 2, 5, 5
    q, v = rng.standard_normal((B, T, 4)).astype("f4"), rng.standard_normal((B, S, 4)).astype("f4")
    kw = dict(num_heads=2, key_dim=2, sliding_window=2)
    ours, theirs = mha_pair(keras, kw, q.shape, v.shape, None, "float32")
    gy = rng.standard_normal((B, T, 4)).astype("f4")
    gs = rng.standard_normal((B, 2, T, S)).astype("f4")
    for call in (dict(), dict(use_causal_mask=True),
                 dict(attention_mask=rng.random((B, 2, T, S)) > 0.3)):
        kout, ksc, _, _ = keras_mha_run(keras, theirs, q, v, None, gy, gs, **call)
        out, sc = ours(q, v, return_attention_scores=True, **call)
        peer_close(out, kout)
        peer_close(sc, ksc)
    band = np.abs(np.arange(T)[:, None] - np.arange(S)) < 2
    assert np.all(sc[..., ~band] == 0)
    # a (T, S) attention mask broadcasts over batch and heads, as in Keras
    plain = MultiHeadAttention(2, 2, dtype="float64")
    am = np.tril(np.ones((T, S), bool))
    a = plain(q, v, attention_mask=am)
    exact_close(a, plain(q, v, use_causal_mask=True))
    exact_close(plain(q, v, attention_mask=np.broadcast_to(am, (B, T, S))), a)



@peer_test
def test_mha_weights_initializers_and_shapes(keras):
    kw = dict(num_heads=3, key_dim=4, value_dim=5, output_shape=(2, 3))
    ours = MultiHeadAttention(**kw)
    ours.build((None, 7, 6), (None, 8, 5), (None, 8, 9))
    theirs = keras.layers.MultiHeadAttention(**kw)
    theirs.build((None, 7, 6), (None, 8, 5), (None, 8, 9))
    kshapes = [tuple(w.shape) for w in theirs.get_weights()]
    assert [w.shape for w in ours.get_weights()] == kshapes
    assert ours.weight_shapes((None, 7, 6), (None, 8, 5), (None, 8, 9)) == kshapes
    assert ours.weight_shapes([(None, 7, 6), (None, 8, 5), (None, 8, 9)]) == kshapes
    assert ours.compute_output_shape((None, 7, 6), (None, 8, 5)) == (None, 7, 2, 3)
    assert tuple(theirs.compute_output_shape((None, 7, 6), (None, 8, 5))) == (None, 7, 2, 3)
    # Keras's EinsumDense fans: the query kernel (6, 3, 4) has fan_in 6 and fan_out 12
    big = MultiHeadAttention(num_heads=8, key_dim=16)
    big.build((None, 3, 64), (None, 3, 64))
    for name, fan_in, fan_out in (("query_kernel", 64, 128), ("output_kernel", 128, 64)):
        w = getattr(big, name)
        limit = np.sqrt(6 / (fan_in + fan_out))
        assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit, name
    assert np.all(big.query_bias == 0)
    no_bias = MultiHeadAttention(2, 3, use_bias=False)
    no_bias.build([(None, 3, 4), (None, 5, 4)])
    assert no_bias.weight_names == ["query_kernel", "key_kernel", "value_kernel",
                                    "output_kernel"]
    assert no_bias.count_params() == 4 * 6 + 4 * 6 + 4 * 6 + 6 * 4



@peer_test
@pytest.mark.parametrize("use_gate", [False, True])
def test_mha_regularizers_match_keras(keras, use_gate):
    rng = np.random.default_rng(16)
    q, v = rng.standard_normal((3, 4, 5)).astype("f4"), rng.standard_normal((3, 6, 5)).astype("f4")
    kw = dict(num_heads=2, key_dim=3, use_gate=use_gate)
    ours, theirs = mha_pair(keras, kw, q.shape, v.shape, None, "float32")
    regs = dict(kernel_regularizer=L1L2(0.01, 0.02), bias_regularizer=L1L2(0.03, 0.0),
                activity_regularizer=L1L2(0.0, 0.05))
    ours = MultiHeadAttention(**kw, **regs)
    ours.build(q.shape, v.shape)
    ours.set_weights(theirs.get_weights())
    kregs = {n: keras.regularizers.L1L2(r.l1, r.l2) for n, r in regs.items()}
    theirs2 = keras.layers.MultiHeadAttention(**kw, **kregs)
    theirs2.build(q.shape, v.shape)
    theirs2.set_weights(theirs.get_weights())
    theirs2(q, v)
    ours.forward_train(q, v)
    total = sum(float(keras.ops.convert_to_numpy(x)) for x in theirs2.losses)
    np.testing.assert_allclose(ours.regularization_loss() + ours.last_activity_loss, total,
                               rtol=1e-5)
    # regularization_grads: aligned with get_weights, the penalty's gradient
    grads = ours.regularization_grads()
    assert len(grads) == (10 if use_gate else 8)
    k = ours.query_kernel
    np.testing.assert_allclose(grads[0], 0.01 * np.sign(k) + 2 * 0.02 * k, rtol=1e-5)
    np.testing.assert_allclose(grads[1], 0.03 * np.sign(ours.query_bias), rtol=1e-5)
    assert MultiHeadAttention(2, 3).regularization_loss() == 0.0



def test_mha_dropout():
    rng = np.random.default_rng(17)
    q, v = rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 7, 4))
    plain = MultiHeadAttention(2, 3, dtype="float64")
    drop = MultiHeadAttention(2, 3, dtype="float64", dropout=0.5, seed=1)
    plain.build(q.shape, v.shape)
    drop.build(q.shape, v.shape)
    drop.set_weights(plain.get_weights())
    p, ps = plain(q, v, return_attention_scores=True)
    i, is_ = drop(q, v, return_attention_scores=True)
    exact_close(i, p)
    t, ts = drop(q, v, return_attention_scores=True, training=True)
    assert not np.allclose(t, p)
    exact_close(ts, ps)              # Keras returns the scores before dropout
    (f, fs), _ = drop.forward_train(q, v, return_attention_scores=True)
    assert not np.allclose(f, p) and not np.allclose(f, t)
    exact_close(fs, ps)
    again = MultiHeadAttention(2, 3, dtype="float64", dropout=0.5, seed=1)
    again.build(q.shape, v.shape)
    again.set_weights(plain.get_weights())
    exact_close(again(q, v, training=True), t)


def test_mha_key_defaults_to_value_and_gradients_add():
    rng = np.random.default_rng(18)
    q, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    layer = MultiHeadAttention(2, 3, dtype="float64")
    a, bp_a = layer.forward_train(q, v)
    b, bp_b = layer.forward_train(q, v, v)
    exact_close(a, b)
    gy = rng.standard_normal(a.shape)
    ga, gb = bp_a(gy), bp_b(gy)
    assert ga.inputs[2] is None
    exact_close(ga.inputs[1], gb.inputs[1] + gb.inputs[2])
    for x, y in zip(ga.weights, gb.weights):
        exact_close(x, y)
    assert MultiHeadAttention.tensor_arguments == ("query", "value", "key")
    assert MultiHeadAttention.mask_arguments == {"query": "query_mask", "value": "value_mask",
                                                 "key": "key_mask"}
    assert MultiHeadAttention.multiple_inputs and Attention.multiple_inputs


def test_mha_errors():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(0, 3)
    with pytest.raises(TypeError, match="key_dim"):
        MultiHeadAttention(2, 2.5)
    with pytest.raises(ValueError, match="value_dim"):
        MultiHeadAttention(2, 3, value_dim=-1)
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadAttention(2, 3, dropout=-0.1)
    with pytest.raises(ValueError, match=r"attention_axes: .* None or \(1,\)"):
        MultiHeadAttention(2, 3, attention_axes=(1, 2))
    with pytest.raises(TypeError, match="attention_axes"):
        MultiHeadAttention(2, 3, attention_axes="time")
    with pytest.raises(TypeError, match="use_gate"):
        MultiHeadAttention(2, 3, use_gate=1.0)
    with pytest.raises(TypeError, match="output_shape"):
        MultiHeadAttention(2, 3, output_shape="wide")
    with pytest.raises(ValueError, match="output_shape"):
        MultiHeadAttention(2, 3, output_shape=(2, -1))
    with pytest.raises(ValueError, match="sliding_window"):
        MultiHeadAttention(2, 3, sliding_window=0)
    for ok in (None, 1, (1,), [-2]):
        assert MultiHeadAttention(2, 3, attention_axes=ok).attention_axes in (None, (1,), (-2,))
    layer = MultiHeadAttention(2, 3)
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="query: expected a 3-D"):
        layer(np.zeros((2, 3, 4, 5)), x)
    with pytest.raises(ValueError, match="one batch size"):
        layer(x, np.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="as many steps"):
        layer(x, x, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="at least one step"):
        layer(x, np.zeros((2, 0, 4)))
    layer(x, x)
    with pytest.raises(ValueError, match="value: .* built for 4 features"):
        layer(x, np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"query_mask: expected shape \(2, 3\)"):
        layer(x, x, query_mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"value_mask: expected shape \(2, 3\)"):
        layer(x, x, value_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="attention_mask: expected a mask that broadcasts"):
        layer(x, x, attention_mask=np.ones((2, 3, 4), bool))
    with pytest.raises(ValueError, match="attention_mask: expected a boolean array"):
        layer(x, x, attention_mask=np.ones(3, bool))
    with pytest.raises(TypeError, match="return_attention_scores"):
        layer(x, x, return_attention_scores="yes")
    with pytest.raises(ValueError, match="input_shape"):
        MultiHeadAttention(2, 3).build((None, 3, 4))
    with pytest.raises(ValueError, match="value and key"):
        MultiHeadAttention(2, 3).build((None, 3, 4), (None, 5, 4), (None, 6, 4))
    _, bp = layer.forward_train(x, x)
    with pytest.raises(ValueError, match="d_out: expected shape"):
        bp(np.zeros((2, 3, 5)))
    _, bp = layer.forward_train(x, x)
    bp(np.zeros((2, 3, 4)))
    with pytest.raises(RuntimeError, match="already run"):
        bp(np.zeros((2, 3, 4)))


def test_mha_config_round_trip(keras):
    rng = np.random.default_rng(19)
    q, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 6))
    kw = dict(num_heads=2, key_dim=3, value_dim=4, dropout=0.1, use_bias=False, use_gate=True,
              output_shape=(2, 3), attention_axes=(1,), sliding_window=3, seed=7,
              kernel_initializer="he_normal", bias_initializer="ones",
              kernel_regularizer=L1L2(0.0, 0.01))
    layer = MultiHeadAttention(name="mha", dtype="float64", **kw)
    layer(q, v)
    cfg = layer.get_config()
    json.dumps(cfg)
    kkw = dict(kw, kernel_regularizer=keras.regularizers.L2(0.01))
    kcfg = keras.layers.MultiHeadAttention(**kkw).get_config()
    skip = {"dtype", "name", "trainable", "kernel_constraint", "bias_constraint",
            "kernel_initializer", "bias_initializer", "kernel_regularizer"}
    assert set(kcfg) - set(cfg) == {"kernel_constraint", "bias_constraint"}
    for key in set(kcfg) - skip:
        expected = list(kcfg[key]) if isinstance(kcfg[key], tuple) else kcfg[key]
        assert cfg[key] == expected, key
    assert cfg["kernel_initializer"]["class_name"] == "HeNormal"
    again = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
    assert type(again) is MultiHeadAttention and again.get_config() == cfg
    again.build(layer.input_shape)
    again.set_weights(layer.get_weights())
    exact_close(again(q, v), layer(q, v))
    assert MultiHeadAttention.from_config(cfg).get_config() == cfg


def test_empty_batch():
    q, v = np.zeros((0, 3, 4)), np.zeros((0, 5, 4))
    for layer in (Attention(score_mode="concat"), AdditiveAttention()):
        (out, sc), bp = layer.forward_train([q, v], return_attention_scores=True)
        assert out.shape == (0, 3, 4) and sc.shape == (0, 3, 5)
        g = bp([np.zeros(out.shape), None])
        assert [a.shape for a in g.inputs] == [q.shape, v.shape]
        assert all(np.all(w == 0) for w in g.weights)
    mha = MultiHeadAttention(2, 3, output_shape=(2, 2))
    out, bp = mha.forward_train(q, v)
    assert out.shape == (0, 3, 2, 2)
    g = bp(np.zeros(out.shape))
    assert g.inputs[0].shape == q.shape and all(np.all(w == 0) for w in g.weights)


# ------------------------------------------------------------------------------ properties
@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 5), S=st.integers(1, 5),
       N=st.integers(1, 3), Hk=st.integers(1, 4), Hv=st.integers(1, 4),
       use_bias=st.booleans(), use_gate=st.booleans(), use_causal=st.booleans(),
       masked=st.booleans(), seed=st.integers(0, 2**16))
def test_mha_property_against_oracle(B, T, S, N, Hk, Hv, use_bias, use_gate, use_causal,
                                     masked, seed):
    """Any sizes, masks and options: the float64 oracle's output and probabilities; and the
    probabilities are a distribution over the steps the mask allows (or all 0)."""
    rng = np.random.default_rng(seed)
    q, v = rng.standard_normal((B, T, 3)), rng.standard_normal((B, S, 2))
    layer = MultiHeadAttention(N, Hk, value_dim=Hv, use_bias=use_bias, use_gate=use_gate,
                               dtype="float64")
    layer.build(q.shape, v.shape)
    layer.set_weights([rng.standard_normal(w.shape) for w in layer.get_weights()])
    qm = rng.random((B, T)) > 0.3 if masked else None
    vm = rng.random((B, S)) > 0.3 if masked else None
    out, sc = layer(q, v, query_mask=qm, value_mask=vm, use_causal_mask=use_causal,
                    return_attention_scores=True)
    m = None
    if masked or use_causal:
        m = mha_mask(B, N, T, S, qm, vm, use_causal=use_causal)
    rout, rsc = ref_mha(layer.get_weights(), N, Hk, q, v, v, use_bias, m, use_gate)
    exact_close(out, rout)
    exact_close(sc, rsc)
    sums = sc.sum(-1)
    assert np.all((np.abs(sums - 1) < 1e-12) | (sums == 0))
    if m is not None:
        assert np.all(sc[~np.broadcast_to(m, sc.shape)] == 0)
