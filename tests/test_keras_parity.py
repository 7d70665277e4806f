"""Keras 3 (torch backend) on the same weights: recurrent layers with every call option,
stateful sequences, Bidirectional, Dense, Embedding and Masking feeding an LSTM; training
gradients of LSTM (and GRU/SimpleRNN), Bidirectional and Dense through torch autograd.

Everything is compared in float32: Keras 3.15's type promotion maps float64 to float32
(``result_type("float64", "float64") == "float32"``, following JAX), so its ``ops.matmul``
computes even a ``dtype="float64"`` layer's products in float32."""
import numpy as np
import pytest

from fastlstm import layers
from fastlstm.layers import LSTM, Bidirectional, Dense, Embedding, Masking

from conftest import PEER_TOL, assert_close

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
if keras.backend.backend() != "torch":
    pytest.skip("Keras runs on another backend than torch", allow_module_level=True)

pytestmark = [pytest.mark.peers,
              # Keras's torch backend converts tensors with np.array(x): NumPy 2 warns
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

RNN_CLASSES = [getattr(layers, n) for n in ("LSTM", "GRU", "SimpleRNN") if hasattr(layers, n)]
rnn_classes = pytest.mark.parametrize("cls", RNN_CLASSES, ids=lambda c: c.__name__)


def peer_close(actual, expected, dtype, name=""):
    assert_close(actual, expected, dtype, name=name, table=PEER_TOL)


def np_(t):
    return keras.ops.convert_to_numpy(t)


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def pair(cls, units, x_shape, dtype="float32", seed=0, **kw):
    """Our layer and the Keras layer of the same name, both built, with the same weights."""
    ours = cls(units, dtype=dtype, **kw)
    ours.build(x_shape)
    rng = np.random.default_rng(seed)
    ours.set_weights([rng.standard_normal(w.shape) * 0.4 for w in ours.get_weights()])
    theirs = getattr(keras.layers, cls.__name__)(units, dtype=dtype, **kw)
    theirs.build(x_shape)
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def test_weight_layouts_interchange_directly():
    for cls in RNN_CLASSES:
        ours, theirs = pair(cls, 3, (2, 4, 5))
        assert [w.shape for w in ours.get_weights()] == [tuple(w.shape) for w in theirs.weights]
    d = Dense(3)
    d.build((2, 5))
    kd = keras.layers.Dense(3)
    kd.build((2, 5))
    assert [w.shape for w in d.get_weights()] == [tuple(w.shape) for w in kd.weights]


def masks(B, T, seed=3):
    m = np.random.default_rng(seed).random((B, T)) > 0.3
    m[0] = False                                  # a fully masked row
    m[1, :2] = False                              # left padding
    m[2, -2:] = False                             # right padding
    m[3] = True
    return m


CALL_OPTIONS = {
    "seq": dict(return_sequences=True),
    "last_state": dict(return_state=True),
    "seq_state_backwards": dict(return_sequences=True, return_state=True, go_backwards=True),
    "last_backwards": dict(go_backwards=True),
}


@rnn_classes
@pytest.mark.parametrize("opts", list(CALL_OPTIONS), ids=list(CALL_OPTIONS))
@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero", "init"])
def test_recurrent_layer_call_matches_keras(cls, opts, with_mask, with_state):
    B, T, I, H = 5, 6, 4, 3
    x = np.random.default_rng(1).standard_normal((B, T, I)).astype(np.float32)
    ours, theirs = pair(cls, H, x.shape, **CALL_OPTIONS[opts])
    mask = masks(B, T) if with_mask else None
    state = None
    if with_state:
        rng = np.random.default_rng(2)
        state = [rng.standard_normal((B, H)).astype(np.float32) for _ in ours.state_names]
    got = as_list(ours(x, mask=mask, initial_state=state))
    want = as_list(theirs(x, mask=mask, initial_state=state))
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        peer_close(g, np_(w), np.float32, name=f"output {k}")


@rnn_classes
def test_stateful_sequence_of_calls_matches_keras(cls):
    B, I, H = 3, 4, 5
    rng = np.random.default_rng(4)
    ours, theirs = pair(cls, H, (B, 4, I), stateful=True, return_sequences=True)
    for k, T in enumerate((4, 2, 5)):
        x = rng.standard_normal((B, T, I)).astype(np.float32)
        peer_close(ours(x), np_(theirs(x)), np.float32, name=f"call {k}")
        for s, ks in zip(ours.states, theirs.states):
            peer_close(s, np_(ks), np.float32, name=f"state after call {k}")
    ours.reset_states()
    theirs.reset_states()
    x = rng.standard_normal((B, 3, I)).astype(np.float32)
    peer_close(ours(x), np_(theirs(x)), np.float32, name="after reset")


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
def test_bidirectional_matches_keras(merge_mode, return_sequences):
    B, T, I, H = 4, 5, 3, 4
    rng = np.random.default_rng(5)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    mask = masks(B, T)
    for cls in RNN_CLASSES:
        kw = dict(return_sequences=return_sequences, return_state=True)
        ours = Bidirectional(cls(H, **kw), merge_mode=merge_mode)
        ours.build(x.shape)
        ours.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4
                          for w in ours.get_weights()])
        theirs = keras.layers.Bidirectional(getattr(keras.layers, cls.__name__)(H, **kw),
                                            merge_mode=merge_mode)
        theirs.build(x.shape)
        theirs.set_weights(ours.get_weights())
        n = 2 * len(ours.forward_layer.state_names)
        state = [rng.standard_normal((B, H)).astype(np.float32) for _ in range(n)]
        for m, s in [(None, None), (mask, None), (mask, state)]:
            got = as_list(ours(x, mask=m, initial_state=s))
            want = as_list(theirs(x, mask=m, initial_state=s))
            assert len(got) == len(want)
            for k, (g, w) in enumerate(zip(got, want)):
                peer_close(g, np_(w), np.float32, name=f"{cls.__name__} output {k}")


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "hard_sigmoid", "relu", "linear",
                                 "softsign", "softmax", None])
def test_dense_matches_keras(act):
    rng = np.random.default_rng(6)
    for shape in [(4, 5), (3, 4, 5)]:
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        ours = Dense(6, activation=act)
        ours.build(x.shape)
        ours.set_weights([rng.standard_normal(w.shape) for w in ours.get_weights()])
        theirs = keras.layers.Dense(6, activation=act)
        theirs.build(x.shape)
        theirs.set_weights(ours.get_weights())
        peer_close(ours(x), np_(theirs(x)), np.float32, name=str(shape))


def test_embedding_with_mask_zero_feeding_an_lstm_matches_keras():
    rng = np.random.default_rng(7)
    idx = rng.integers(1, 9, size=(4, 6))
    idx[0, 3:] = 0
    idx[1, :2] = 0
    idx[2, 2] = 0
    emb = Embedding(9, 3, mask_zero=True)
    lstm = LSTM(4, return_sequences=True)
    lstm.build((4, 6, 3))
    emb.build()
    emb.set_weights([rng.standard_normal((9, 3))])
    lstm.set_weights([rng.standard_normal(w.shape) * 0.5 for w in lstm.get_weights()])
    model = keras.Sequential([keras.Input((6,), dtype="int32"),
                              keras.layers.Embedding(9, 3, mask_zero=True),
                              keras.layers.LSTM(4, return_sequences=True)])
    model.layers[0].set_weights(emb.get_weights())
    model.layers[1].set_weights(lstm.get_weights())
    got = lstm(emb(idx), mask=emb.compute_mask(idx))
    peer_close(got, np_(model(idx)), np.float32)
    peer_close(emb(idx), np_(model.layers[0](idx)), np.float32)


def test_masking_feeding_an_lstm_matches_keras():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 6, 2)).astype(np.float32)
    x[0, 2] = 0.5
    x[1, 4:] = 0.5
    x[2, 0, 1] = 0.5                          # one feature equal to mask_value: not masked
    masking = Masking(0.5)
    lstm = LSTM(3)
    lstm.build(x.shape)
    lstm.set_weights([rng.standard_normal(w.shape) * 0.5 for w in lstm.get_weights()])
    model = keras.Sequential([keras.Input((6, 2)), keras.layers.Masking(0.5),
                              keras.layers.LSTM(3)])
    model.layers[1].set_weights(lstm.get_weights())
    got = lstm(masking(x), mask=masking.compute_mask(x))
    peer_close(got, np_(model(x)), np.float32)
    peer_close(masking(x), np_(model.layers[0](x)), np.float32)


# ------------------------------------------------------------------------------ gradients
def torch_grads(theirs, x, d_out, mask=None, state=None):
    """Gradients of sum(out * d_out) in Keras/torch: (dx, [d state], [d weights])."""
    xt = torch.tensor(x, requires_grad=True)
    st = None if state is None else [torch.tensor(s, requires_grad=True) for s in state]
    kw = {} if mask is None else dict(mask=torch.tensor(mask))
    if st is not None:
        kw["initial_state"] = st
    for w in theirs.weights:
        w.value.grad = None
    outs = as_list(theirs(xt, **kw))
    loss = sum((o * torch.tensor(d)).sum() for o, d in zip(outs, d_out) if d is not None)
    loss.backward()
    return (xt.grad.numpy(), None if st is None else [s.grad.numpy() for s in st],
            [w.value.grad.numpy() for w in theirs.weights])


@rnn_classes
@pytest.mark.parametrize("opts", ["seq_state_backwards", "last_state"])
def test_recurrent_training_gradients_match_keras(cls, opts):
    B, T, I, H = 4, 5, 3, 4
    rng = np.random.default_rng(9)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    ours, theirs = pair(cls, H, x.shape, **CALL_OPTIONS[opts])
    mask = masks(B, T)
    state = [rng.standard_normal((B, H)).astype(np.float32) for _ in ours.state_names]
    outs, backprop = ours.forward_train(x, mask=mask, initial_state=state)
    d_out = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
    g = backprop(d_out)
    dx, dstate, dw = torch_grads(theirs, x, d_out, mask, state)
    peer_close(g.inputs, dx, np.float32, name="inputs")
    for k, (a, b) in enumerate(zip(g.initial_state, dstate)):
        peer_close(a, b, np.float32, name=f"state {k}")
    for name, a, b in zip(ours.weight_names, g.weights, dw):
        peer_close(a, b, np.float32, name=name)


@pytest.mark.parametrize("merge_mode", ["concat", "mul", None])
def test_bidirectional_training_gradients_match_keras(merge_mode):
    B, T, I, H = 3, 4, 3, 2
    rng = np.random.default_rng(10)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    mask = masks(4, T)[1:]
    ours = Bidirectional(LSTM(H, return_sequences=True, return_state=True),
                         merge_mode=merge_mode)
    ours.build(x.shape)
    ours.set_weights([rng.standard_normal(w.shape) * 0.4 for w in ours.get_weights()])
    theirs = keras.layers.Bidirectional(
        keras.layers.LSTM(H, return_sequences=True, return_state=True),
        merge_mode=merge_mode)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    outs, backprop = ours.forward_train(x, mask=mask)
    d_out = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
    g = backprop(d_out)
    dx, _, dw = torch_grads(theirs, x, d_out, mask)
    peer_close(g.inputs, dx, np.float32, name="inputs")
    for k, (a, b) in enumerate(zip(g.weights, dw)):
        peer_close(a, b, np.float32, name=f"weight {k}")


@pytest.mark.parametrize("act", ["tanh", "relu", "softmax", "hard_sigmoid"])
def test_dense_training_gradients_match_keras(act):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 4, 5)) * 2).astype(np.float32)
    ours = Dense(6, activation=act)
    ours.build(x.shape)
    ours.set_weights([rng.standard_normal(w.shape) for w in ours.get_weights()])
    theirs = keras.layers.Dense(6, activation=act)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    y, backprop = ours.forward_train(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    g = backprop(dy)
    dx, _, dw = torch_grads(theirs, x, [dy])
    peer_close(g.inputs, dx, np.float32, name="inputs")
    for name, a, b in zip(ours.weight_names, g.weights, dw):
        peer_close(a, b, np.float32, name=name)


def test_keras_reads_our_configs_for_the_shared_arguments():
    """Our config keys are Keras's: Keras builds the same layer from them."""
    for ours in [LSTM(3, return_sequences=True, go_backwards=True, dropout=0.1, seed=2),
                 Dense(4, activation="softmax", use_bias=False), Embedding(5, 2, mask_zero=True)]:
        cfg = ours.get_config()
        cfg.pop("use_peepholes", None)
        cfg.pop("coupled_input_forget", None)
        cfg.pop("peephole_initializer", None)
        theirs = getattr(keras.layers, type(ours).__name__).from_config(cfg)
        kcfg = theirs.get_config()
        for key in ("units", "return_sequences", "go_backwards", "dropout", "seed",
                    "activation", "use_bias", "input_dim", "output_dim", "mask_zero"):
            if key in cfg:
                assert kcfg[key] == cfg[key], key
