"""The projected LSTM (``proj_size``, PyTorch's LSTMP): the ops on every backend against the
oracle's definition (backends/oracle/lstm_projection.py) and finite differences in float64,
the layer, its streaming step, saving, and PyTorch's ``nn.LSTM(proj_size=P)`` both ways."""
import itertools

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.backends.oracle import lstm_projection as oracle
from conftest import DTYPES, PEER_TOL, assert_close, compiled_backends, seed_of

BACKENDS = ["numpy"] + compiled_backends()
ACT, RACT = fl.activations.get("tanh"), fl.activations.get("sigmoid")


def problem(dtype, T, B, I, H, P, seed, coupled=False, peephole=False, h0=True):
    rng = np.random.default_rng(seed)
    G = (3 if coupled else 4) * H
    kw = dict(x=rng.standard_normal((T, B, I)), kernel=rng.standard_normal((I, G)) * 0.4,
              recurrent_kernel=rng.standard_normal((P, G)) * 0.4,
              bias=rng.standard_normal(G) * 0.3, projection=rng.standard_normal((H, P)) * 0.4,
              h0=rng.standard_normal((B, P)) if h0 else None,
              c0=rng.standard_normal((B, H)))
    if peephole:
        kw["peephole"] = rng.standard_normal((3, H)) * 0.3
    return {k: (None if v is None else v.astype(dtype)) for k, v in kw.items()}


def masks(kind, T, B, seed):
    if kind == "none":
        return None
    rng = np.random.default_rng(seed)
    if kind == "prefix":
        return np.arange(T)[:, None] < rng.integers(0, T + 1, B)[None, :]
    m = rng.random((T, B)) > 0.3          # gaps anywhere
    m[:, 0] = False                       # a row that never runs
    return m


def reference(kw, mask, coupled, go_backwards, return_sequences, idm=None):
    return oracle.forward(np, kw["x"], kw["kernel"], kw["recurrent_kernel"], kw["bias"],
                          kw["projection"],
                          np.zeros((kw["x"].shape[1], kw["projection"].shape[1]),
                                   kw["x"].dtype) if kw["h0"] is None else kw["h0"],
                          kw["c0"], peephole=kw.get("peephole"), mask=mask,
                          input_dropout_mask=idm, activation=ACT, recurrent_activation=RACT,
                          coupled=coupled, go_backwards=go_backwards,
                          return_sequences=return_sequences)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mask_kind", ["none", "prefix", "gaps"])
def test_forward_matches_oracle(backend, dtype, mask_kind):
    for coupled, peephole, gb, rs, h0 in itertools.product([False, True], [False, True],
                                                          [False, True], [True, False],
                                                          [True, False]):
        seed = seed_of(backend, dtype, mask_kind, coupled, peephole, gb, rs, h0)
        kw = problem(dtype, 6, 5, 3, 7, 4, seed, coupled, peephole, h0)
        mask = masks(mask_kind, 6, 5, seed)
        with fl.use_backend(backend):
            y, h, c, _ = fl.ops.lstm_forward(**kw, mask=mask, coupled_input_forget=coupled,
                                             go_backwards=gb, return_sequences=rs)
        ry, rh, rc = reference(kw, mask, coupled, gb, rs)
        for a, e, n in ((y, ry, "y"), (h, rh, "h"), (c, rc, "c")):
            assert_close(a, e, dtype, name=n)


def _loss(kw, mask, coupled, gb, w, idm=None):
    y, h, c = reference(kw, mask, coupled, gb, True, idm)
    return float(np.sum(y * w[0]) + np.sum(h * w[1]) + np.sum(c * w[2]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_kind", ["none", "prefix", "gaps"])
@pytest.mark.parametrize("coupled,peephole", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_gradients_by_finite_differences(backend, mask_kind, coupled, peephole, go_backwards):
    seed = seed_of(backend, mask_kind, coupled, peephole, go_backwards, "fd")
    kw = problem(np.float64, 5, 4, 3, 6, 3, seed, coupled, peephole)
    mask = masks(mask_kind, 5, 4, seed)
    rng = np.random.default_rng(seed)
    idm = ((rng.random((4, 3)) > 0.3) / 0.7) if mask_kind == "gaps" else None
    w = [rng.standard_normal((5, 4, 3)), rng.standard_normal((4, 3)),
         rng.standard_normal((4, 6))]
    with fl.use_backend(backend):
        _, _, _, cache = fl.ops.lstm_forward(**kw, mask=mask, input_dropout_mask=idm,
                                             coupled_input_forget=coupled,
                                             go_backwards=go_backwards, training=True)
        g = fl.ops.lstm_backward(cache, *w)
    grads = dict(x=g.inputs, kernel=g.kernel, recurrent_kernel=g.recurrent_kernel,
                 bias=g.bias, projection=g.projection, h0=g.h0, c0=g.c0, peephole=g.peephole)
    eps = 1e-6
    for name, a in kw.items():
        ga = grads[name]
        assert ga.shape == a.shape, name
        for idx in list(np.ndindex(a.shape))[::max(1, a.size // 10)]:
            saved = a[idx]
            a[idx] = saved + eps
            up = _loss(kw, mask, coupled, go_backwards, w, idm)
            a[idx] = saved - eps
            down = _loss(kw, mask, coupled, go_backwards, w, idm)
            a[idx] = saved
            assert abs((up - down) / (2 * eps) - ga[idx]) < 1e-6 * (1 + abs(ga[idx])), \
                (name, idx)


def test_op_errors():
    kw = problem(np.float64, 3, 2, 3, 4, 2, 0)
    with pytest.raises(ValueError, match="recurrent_dropout_mask"):
        fl.ops.lstm_forward(**kw, recurrent_dropout_mask=np.ones((2, 2)))
    bad = dict(kw, recurrent_kernel=np.zeros((4, 16)))
    with pytest.raises(ValueError, match="recurrent_kernel"):
        fl.ops.lstm_forward(**bad)
    with pytest.raises(ValueError, match="h0"):
        fl.ops.lstm_forward(**dict(kw, h0=np.zeros((2, 4))))


# -- the layer ---------------------------------------------------------------------------

def test_layer_weights_states_step_and_config(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 5))
    layer = fl.layers.LSTM(8, proj_size=3, return_sequences=True, return_state=True,
                           use_peepholes=True, dtype="float64")
    y, h, c = layer(x)
    assert (y.shape, h.shape, c.shape) == ((3, 6, 3), (3, 3), (3, 8))
    assert [w.shape for w in layer.get_weights()] == [(5, 32), (3, 32), (32,), (3, 8),
                                                      (8, 3)]
    assert layer.compute_output_shape((3, 6, 5)) == [(3, 6, 3), (3, 3), (3, 8)]
    # The streaming step gives the sequence's outputs.
    states = layer.get_initial_state(3)
    assert [s.shape for s in states] == [(3, 3), (3, 8)]
    steps = []
    for t in range(6):
        yt, states = layer.step(x[:, t], states)
        steps.append(yt)
    assert_close(np.stack(steps, 1), y, np.float64)
    # Initial states, on every backend.
    h0, c0 = rng.standard_normal((3, 3)), rng.standard_normal((3, 8))
    for backend in BACKENDS:
        with fl.use_backend(backend):
            got = layer(x, initial_state=[h0, c0])
        with fl.use_backend("numpy"):
            ref = layer(x, initial_state=[h0, c0])
        for a, e in zip(got, ref):
            assert_close(a, e, np.float64)
    # Training: one gradient per weight, the projection's last.
    outs, back = layer.forward_train(x, initial_state=[h0, c0])
    g = back([np.ones_like(outs[0]), None, None])
    assert [w.shape for w in g.weights] == [w.shape for w in layer.get_weights()]
    assert [s.shape for s in g.initial_state] == [(3, 3), (3, 8)]
    # Config and saving.
    again = fl.layers.LSTM.from_config(layer.get_config())
    assert again.proj_size == 3
    model = fl.Sequential([fl.layers.LSTM(8, proj_size=3, dtype="float64")])
    model.build((None, 6, 5))
    path = str(tmp_path / "m.fl")
    fl.save_model(model, path) if hasattr(fl, "save_model") else model.save(path)
    loaded = fl.load_model(path)
    assert_close(loaded.predict(x), model.predict(x), np.float64)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="proj_size"):
        fl.layers.LSTM(4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size"):
        fl.layers.LSTM(4, proj_size=-1)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        fl.layers.LSTM(4, proj_size=2, recurrent_dropout=0.2)


def test_sequence_lengths_with_a_projection():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 7, 3))
    lengths = np.array([7, 0, 3, 5])
    layer = fl.layers.LSTM(6, proj_size=2, return_sequences=True, dtype="float64")
    a = layer(x, sequence_lengths=lengths)
    with fl.use_backend("numpy"):
        b = layer(x, mask=np.arange(7)[None, :] < lengths[:, None])
    assert_close(a, b, np.float64)


# -- PyTorch --------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True), (3, False)])
def test_from_torch_equals_pytorch_outputs_and_gradients(num_layers, bidirectional):
    torch = pytest.importorskip("torch")
    from fastlstm.convert import from_torch, to_torch
    torch.manual_seed(num_layers)
    net = torch.nn.LSTM(5, 8, num_layers=num_layers, bidirectional=bidirectional,
                        proj_size=3, batch_first=True).double()
    model = from_torch(net)
    x = torch.randn(4, 7, 5, dtype=torch.float64, requires_grad=True)
    y, _ = net(x)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    xn = x.detach().numpy()
    run = model.predict if hasattr(model, "predict") else model
    assert_close(run(xn), y.detach().numpy(), np.float64, table=PEER_TOL)
    if num_layers == 1 and not bidirectional:
        outs, back = model.forward_train(xn)
        g = back(w.numpy())
        assert_close(g.inputs, x.grad.numpy(), np.float64, table=PEER_TOL)
        kernel, rec, bias, proj = g.weights
        assert_close(kernel, net.weight_ih_l0.grad.numpy().T, np.float64, table=PEER_TOL)
        assert_close(rec, net.weight_hh_l0.grad.numpy().T, np.float64, table=PEER_TOL)
        assert_close(bias, net.bias_ih_l0.grad.numpy(), np.float64, table=PEER_TOL)
        assert_close(proj, net.weight_hr_l0.grad.numpy().T, np.float64, table=PEER_TOL)
    back_net = to_torch(model)
    assert back_net.proj_size == 3
    assert_close(back_net(x)[0].detach().numpy(), y.detach().numpy(), np.float64,
                 table=PEER_TOL)
    config = dict(type="LSTM", num_layers=num_layers, bidirectional=bidirectional,
                  proj_size=3, batch_first=True)
    from_sd = from_torch(net.state_dict(), config=config)
    run = from_sd.predict if hasattr(from_sd, "predict") else from_sd
    assert_close(run(xn), y.detach().numpy(), np.float64, table=PEER_TOL)


def test_onnx_export_refuses_a_projection():
    pytest.importorskip("onnx")
    from fastlstm.convert import ConversionError, to_onnx
    layer = fl.layers.LSTM(4, proj_size=2)
    layer.build((None, 3, 2))
    with pytest.raises(ConversionError, match="proj_size"):
        to_onnx(layer)


def test_stateful_bidirectional_and_keras_refusal():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 6, 5))
    layer = fl.layers.LSTM(8, proj_size=3, stateful=True, return_sequences=True,
                           dtype="float64")
    halves = np.concatenate([layer(x[:, :3]), layer(x[:, 3:])], 1)
    plain = fl.layers.LSTM(8, proj_size=3, return_sequences=True, dtype="float64")
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    assert_close(halves, plain(x), np.float64)
    bi = fl.layers.Bidirectional(fl.layers.LSTM(8, proj_size=3, return_sequences=True,
                                                dtype="float64"))
    assert bi(x, sequence_lengths=[6, 2, 4]).shape == (3, 6, 6)
    pytest.importorskip("keras")
    from fastlstm.convert import ConversionError, to_keras
    with pytest.raises(ConversionError, match="proj_size"):
        to_keras(plain)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_isa_variant(level):
    from fastlstm import _gates
    _gates.force_isa_level(level)
    try:
        for dtype in DTYPES:
            seed = seed_of(level, dtype, "isa")
            kw = problem(dtype, 5, 6, 3, 17, 5, seed, peephole=True)
            mask = masks("prefix", 5, 6, seed)
            with fl.use_backend("cpu"):
                y, h, c, _ = fl.ops.lstm_forward(**kw, mask=mask)
            for a, e in zip((y, h, c), reference(kw, mask, False, False, True)):
                assert_close(a, e, dtype)
    finally:
        _gates.force_isa_level(-1)
