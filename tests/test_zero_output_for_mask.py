"""``zero_output_for_mask=True`` (Keras 3): masked steps output zeros, the states carry.

Checked against the layer without the option (the output is the same sequence times the
mask, in step order), through forward_train's gradients (finite differences of the
masked output), save/load and the converters, and against Keras 3 (torch backend) on the
same weights where it is installed."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm.layers import GRU, LSTM, RNN, Bidirectional, LSTMCell, SimpleRNN

CLASSES = [LSTM, GRU, SimpleRNN]


def _mask(B=4, T=6):
    m = np.ones((B, T), bool)
    m[0, 4:] = False          # post-padding
    m[1, :2] = False          # pre-padding
    m[2] = False              # all masked
    m[3, 2] = False           # a hole
    return m


def _twins(cls, **kw):
    a = cls(3, zero_output_for_mask=True, **kw)
    b = cls(3, **kw)
    a.build((None, 6, 2))
    b.build((None, 6, 2))
    ws = [np.random.default_rng(0).standard_normal(w.shape).astype(np.float32) * 0.5
          for w in a.get_weights()]
    a.set_weights(ws)
    b.set_weights(ws)
    return a, b


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_sequence_is_zero_at_masked_steps_and_states_carry(cls, go_backwards):
    x = np.random.default_rng(1).standard_normal((4, 6, 2)).astype(np.float32)
    m = _mask()
    a, b = _twins(cls, return_sequences=True, return_state=True, go_backwards=go_backwards)
    ya, *sa = a(x, mask=m)
    yb, *sb = b(x, mask=m)
    step_mask = m[:, ::-1] if go_backwards else m
    np.testing.assert_array_equal(ya, yb * step_mask[:, :, None])
    assert np.all(ya[~step_mask] == 0) and np.any(yb[~step_mask] != 0)
    for s1, s2 in zip(sa, sb):
        np.testing.assert_array_equal(s1, s2)
    # without a mask the option changes nothing
    np.testing.assert_array_equal(a(x)[0], b(x)[0])


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_last_output_is_zero_when_the_last_step_is_masked(cls):
    """As Keras: the returned last output is zeroed for a row whose last step is masked."""
    x = np.random.default_rng(2).standard_normal((4, 6, 2)).astype(np.float32)
    m = _mask()
    a, b = _twins(cls)
    ya, yb = a(x, mask=m), b(x, mask=m)
    np.testing.assert_array_equal(ya, yb * m[:, -1:])
    assert np.all(ya[0] == 0) and np.any(yb[0] != 0)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_gradients_are_zero_through_masked_outputs(cls, return_sequences):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 2))
    m = _mask()
    a = cls(3, zero_output_for_mask=True, return_sequences=return_sequences, dtype="float64")
    b = cls(3, return_sequences=return_sequences, dtype="float64")
    a.build(x.shape)
    b.build(x.shape)
    b.set_weights(a.get_weights())
    out_a, back_a = a.forward_train(x, mask=m)
    out_b, back_b = b.forward_train(x, mask=m)
    om = m[:, :, None] if return_sequences else m[:, -1:]
    np.testing.assert_allclose(out_a, out_b * om)
    d = rng.standard_normal(out_a.shape)
    ga, gb = back_a(d), back_b(d * om)      # the same as d_out zeroed at the masked outputs
    np.testing.assert_allclose(ga.inputs, gb.inputs, atol=1e-12)
    for wa, wb in zip(ga.weights, gb.weights):
        np.testing.assert_allclose(wa, wb, atol=1e-12)
    # finite differences of sum(out * d) with respect to one input element
    eps, (i, t, f) = 1e-6, (3, 1, 0)
    xp, xm = x.copy(), x.copy()
    xp[i, t, f] += eps
    xm[i, t, f] -= eps
    num = (np.sum(a(xp, mask=m) * d) - np.sum(a(xm, mask=m) * d)) / (2 * eps)
    np.testing.assert_allclose(ga.inputs[i, t, f], num, rtol=1e-5, atol=1e-8)


def test_config_save_load_and_bad_value(tmp_path):
    layer = LSTM(3, return_sequences=True, zero_output_for_mask=True)
    assert layer.get_config()["zero_output_for_mask"] is True
    assert LSTM.from_config(layer.get_config()).zero_output_for_mask is True
    model = fl.Sequential([fl.layers.Masking(), layer, fl.layers.Dense(1)])
    x = np.random.default_rng(4).standard_normal((3, 5, 2)).astype(np.float32)
    x[0, 3:] = 0
    model.build((None, 5, 2))
    expected = model.predict(x)
    model.save(tmp_path / "m.npz")
    loaded = fl.load_model(tmp_path / "m.npz")
    assert loaded.layers[1].zero_output_for_mask is True
    np.testing.assert_array_equal(loaded.predict(x), expected)
    with pytest.raises(TypeError, match="zero_output_for_mask"):
        GRU(2, zero_output_for_mask="yes")
    with pytest.raises(TypeError, match="zero_output_for_mask"):
        LSTMCell(2, zero_output_for_mask=True)      # an argument of RNN, as in Keras


def test_rnn_wrapper_and_stacks():
    x = np.random.default_rng(5).standard_normal((4, 6, 2)).astype(np.float32)
    m = _mask()
    for go_backwards in (False, True):
        cells = [LSTMCell(3), LSTMCell(2)]
        z = RNN(cells, return_sequences=True, zero_output_for_mask=True, go_backwards=go_backwards)
        plain = RNN.from_config({**z.get_config(), "zero_output_for_mask": False})
        z.build(x.shape)
        plain.build(x.shape)
        plain.set_weights(z.get_weights())
        step_mask = m[:, ::-1] if go_backwards else m
        np.testing.assert_array_equal(z(x, mask=m), plain(x, mask=m) * step_mask[:, :, None])
        out, backprop = z.forward_train(x, mask=m)
        d = np.ones_like(out)
        out_p, back_p = plain.forward_train(x, mask=m)
        np.testing.assert_allclose(backprop(d).inputs,
                                   back_p(d * step_mask[:, :, None]).inputs, atol=1e-6)
    assert RNN.from_config(z.get_config()).zero_output_for_mask is True


def test_bidirectional_forces_it_as_keras():
    bi = Bidirectional(LSTM(3, return_sequences=True))
    assert bi.forward_layer.zero_output_for_mask and bi.backward_layer.zero_output_for_mask
    bi = Bidirectional(LSTM(3, zero_output_for_mask=True))          # no sequences: off
    assert not bi.forward_layer.zero_output_for_mask
    bi = Bidirectional(GRU(2, return_sequences=True), merge_mode="sum")
    x = np.random.default_rng(6).standard_normal((4, 6, 2)).astype(np.float32)
    y = bi(x, mask=_mask())
    assert np.all(y[~_mask()] == 0)
    again = Bidirectional.from_config(bi.get_config())
    assert again.backward_layer.zero_output_for_mask


# ------------------------------------------------------------------------ against Keras 3
def _keras():
    keras = pytest.importorskip("keras")
    pytest.importorskip("torch")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs on another backend than torch")
    return keras


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("opts", [dict(return_sequences=True),
                                  dict(return_sequences=True, go_backwards=True),
                                  dict(return_state=True)],
                         ids=["seq", "seq_backwards", "last_state"])
def test_forward_and_gradients_match_keras(cls, opts):
    keras = _keras()
    import torch
    x = np.random.default_rng(7).standard_normal((4, 6, 2)).astype(np.float32)
    m = _mask()
    ours = cls(3, zero_output_for_mask=True, **opts)
    ours.build(x.shape)
    rng = np.random.default_rng(8)
    ours.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4
                      for w in ours.get_weights()])
    theirs = getattr(keras.layers, cls.__name__)(3, zero_output_for_mask=True, **opts)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    outs, backprop = ours.forward_train(x, mask=m)
    outs = outs if isinstance(outs, list) else [outs]
    xt = torch.tensor(x, requires_grad=True)
    k_outs = theirs(xt, mask=torch.tensor(m))
    k_outs = list(k_outs) if isinstance(k_outs, (list, tuple)) else [k_outs]
    for a, b in zip(outs, k_outs):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-5)
    d = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
    g = backprop(d if len(d) > 1 else d[0])
    sum((o * torch.tensor(dd)).sum() for o, dd in zip(k_outs, d)).backward()
    np.testing.assert_allclose(g.inputs, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    for a, w in zip(g.weights, theirs.weights):
        np.testing.assert_allclose(a, w.value.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_train_on_batch_and_converters_match_keras():
    keras = _keras()
    from fastlstm.convert import from_keras, to_keras
    V, E, H, T = 9, 4, 5, 6
    rng = np.random.default_rng(9)
    tokens = rng.integers(1, V, size=(8, T))
    tokens[:3, 4:] = 0
    tokens[3:5, :2] = 0
    y = rng.standard_normal((8, 1)).astype(np.float32)
    theirs = keras.Sequential([keras.Input((T,), dtype="int32"),
                               keras.layers.Embedding(V, E, mask_zero=True),
                               keras.layers.GRU(H, return_sequences=True,
                                                zero_output_for_mask=True),
                               keras.layers.LSTM(H, zero_output_for_mask=True),
                               keras.layers.Dense(1)])
    ours = from_keras(theirs)
    assert [l.zero_output_for_mask for l in ours.layers[1:3]] == [True, True]
    np.testing.assert_allclose(ours.predict(tokens), theirs.predict(tokens, verbose=0),
                               rtol=1e-4, atol=1e-5)
    back = to_keras(ours)
    assert back.layers[1].zero_output_for_mask and back.layers[2].zero_output_for_mask
    ours.compile(fl.optimizers.SGD(0.1), "mse")
    theirs.compile(keras.optimizers.SGD(0.1), "mse")
    np.testing.assert_allclose(ours.train_on_batch(tokens, y), theirs.train_on_batch(tokens, y),
                               rtol=1e-4)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
