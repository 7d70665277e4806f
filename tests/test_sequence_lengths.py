"""Rows of different lengths without compute on padding (``sequence_lengths``, prefix masks).

The compiled backend packs the rows (fastlstm/backends/packing.py, src_c/packed.pxi); its
results must be the masked path's: held to the oracle run with the prefix mask, to the
compiled masked path, to finite differences (float64), to Keras 3 and to PyTorch's
PackedSequence (Bidirectional).
"""
import itertools

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _gru, _lstm, _simple_rnn
from fastlstm.backends import get_ops
from fastlstm.backends.packing import Packing, prefix_lengths
from conftest import DTYPES, PEER_TOL, assert_close, seed_of

CELLS = ["lstm", "gru", "gru_reset_before", "simple_rnn"]


@pytest.fixture(autouse=True)
def pack_every_size(monkeypatch):
    """The packed pass at these small sizes too (fastlstm packs from PACK_MIN_MACS)."""
    from fastlstm.backends import packing
    monkeypatch.setattr(packing, "PACK_MIN_MACS", 0.0)
MODULES = {"lstm": _lstm, "gru": _gru, "gru_reset_before": _gru, "simple_rnn": _simple_rnn}


def widths(cell, H, coupled=False):
    return {"lstm": (3 if coupled else 4) * H, "gru": 3 * H, "gru_reset_before": 3 * H,
            "simple_rnn": H}[cell]


def problem(cell, dtype, T, B, I, H, seed, options=(), lengths=None):
    """Arguments of the cell's forward (time-major), with a prefix mask of random lengths
    (some 0, some T) unless lengths are given."""
    rng = np.random.default_rng(seed)
    coupled = "coupled" in options
    G = widths(cell, H, coupled)
    if lengths is None:
        lengths = rng.integers(0, T + 1, B)
        lengths[0] = T
        if B > 2:
            lengths[1] = 0
    kw = dict(x=rng.standard_normal((T, B, I)).astype(dtype),
              kernel=(rng.standard_normal((I, G)) / np.sqrt(I)).astype(dtype),
              recurrent_kernel=(rng.standard_normal((H, G)) / np.sqrt(H)).astype(dtype),
              h0=rng.standard_normal((B, H)).astype(dtype),
              mask=np.arange(T)[:, None] < np.asarray(lengths)[None, :])
    if cell == "gru":
        kw["bias"] = rng.standard_normal((2, G)).astype(dtype)
    else:
        kw["bias"] = rng.standard_normal(G).astype(dtype)
    if cell == "gru_reset_before":
        kw["reset_after"] = False
    if cell == "lstm":
        kw["c0"] = rng.standard_normal((B, H)).astype(dtype)
        if coupled:
            kw["coupled_input_forget"] = True
        if "peephole" in options:
            kw["peephole"] = (0.5 * rng.standard_normal((3, H))).astype(dtype)
    if "dropout" in options:
        kw["input_dropout_mask"] = ((rng.random((B, I)) > 0.3) / 0.7).astype(dtype)
        kw["recurrent_dropout_mask"] = ((rng.random((B, H)) > 0.3) / 0.7).astype(dtype)
    if "activations" in options:
        kw["activation"] = "softsign"
        if cell != "simple_rnn":
            kw["recurrent_activation"] = "hard_sigmoid"
    return kw, np.asarray(lengths)


def run(cell, kw, training, dy=None, dh=None, dc=None, **flags):
    """(outputs, gradients, cache kind) of the cell's op under the active backend."""
    if cell == "lstm":
        y, h, c, cache = fl.ops.lstm_forward(**kw, training=training, **flags)
        out = [y, h, c]
    else:
        fwd = fl.ops.gru_forward if cell.startswith("gru") else fl.ops.simple_rnn_forward
        y, h, cache = fwd(**kw, training=training, **flags)
        out = [y, h]
    if not training:
        return out, [], None
    kind = cache.made_by
    if cell == "lstm":
        g = fl.ops.lstm_backward(cache, dy, dh, dc)
        grads = [g.inputs, g.h0, g.c0, g.kernel, g.recurrent_kernel, g.bias, g.peephole]
    else:
        bwd = fl.ops.gru_backward if cell.startswith("gru") else fl.ops.simple_rnn_backward
        g = bwd(cache, dy, dh)
        grads = [g.inputs, g.h0, g.kernel, g.recurrent_kernel, g.bias]
    return out, [a for a in grads if a is not None], kind


def output_grads(seed, dtype, T, B, H, return_sequences):
    rng = np.random.default_rng(seed + 1)
    dy = rng.standard_normal((T, B, H) if return_sequences else (B, H)).astype(dtype)
    return dy, rng.standard_normal((B, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)


def compare(cell, kw, dtype, training, go_backwards, return_sequences, seed,
            expect_packed=True):
    T, B, _ = kw["x"].shape
    H = kw["recurrent_kernel"].shape[0]
    dy, dh, dc = output_grads(seed, dtype, T, B, H, return_sequences)
    extra = dict(dc=dc) if cell == "lstm" else {}
    flags = dict(go_backwards=go_backwards, return_sequences=return_sequences)
    with fl.use_backend("numpy"):
        ref_out, ref_grads, _ = run(cell, kw, training, dy, dh, **extra, **flags)
    with fl.use_backend("cpu"):
        out, grads, kind = run(cell, kw, training, dy, dh, **extra, **flags)
    if training and expect_packed:
        assert kind == "packed"
    for i, (a, e) in enumerate(zip(out + grads, ref_out + ref_grads)):
        assert_close(a, e, dtype, name=f"{cell} result {i}")


@pytest.fixture(params=[1, 3], ids=["one-group", "three-groups"])
def groups(request):
    """The packed loop on one thread, or its rows dealt to 3 groups (threads)."""
    saved = (fl.get_num_threads(), _lstm.get_parallel_min_macs())
    _lstm.set_threads(request.param, 0)
    yield request.param
    _lstm.set_threads(*saved)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("go_backwards,return_sequences",
                         list(itertools.product([False, True], [True, False])))
def test_packed_pass_matches_oracle(cell, dtype, go_backwards, return_sequences, groups):
    seed = seed_of(cell, dtype, go_backwards, return_sequences, groups)
    for training in (False, True):
        kw, _ = problem(cell, dtype, 7, 13, 5, 6, seed)
        compare(cell, kw, dtype, training, go_backwards, return_sequences, seed)


@pytest.mark.parametrize("cell,options", [
    ("lstm", ("peephole", "dropout")), ("lstm", ("coupled", "dropout")),
    ("lstm", ("peephole", "coupled", "activations")), ("gru", ("dropout", "activations")),
    ("gru_reset_before", ("dropout",)), ("simple_rnn", ("dropout", "activations"))])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_packed_pass_with_cell_options(cell, options, go_backwards, groups):
    for dtype in DTYPES:
        seed = seed_of(cell, options, go_backwards, dtype)
        kw, _ = problem(cell, dtype, 6, 9, 4, 5, seed, options)
        compare(cell, kw, dtype, True, go_backwards, True, seed)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_isa_variant(level):
    from fastlstm import _gates
    _gates.force_isa_level(level)
    try:
        for cell, dtype in itertools.product(CELLS, DTYPES):
            seed = seed_of(cell, level, dtype)
            kw, _ = problem(cell, dtype, 5, 6, 3, 17, seed, ("dropout",))
            compare(cell, kw, dtype, True, level == 1, True, seed)
    finally:
        _gates.force_isa_level(-1)


@pytest.mark.parametrize("cell", CELLS)
def test_sequence_lengths_is_the_prefix_mask(cell):
    """ops: sequence_lengths=... gives what mask=... gives, on every backend; on the cpu
    backend both equal its masked (unpacked) kernels' results."""
    kw, lengths = problem(cell, np.float64, 8, 7, 4, 5, seed_of(cell, "lengths"))
    mask = kw.pop("mask")
    for backend in ("numpy", "cpu"):
        with fl.use_backend(backend):
            a, _, _ = run(cell, dict(kw, mask=mask), False)
            b, _, _ = run(cell, dict(kw, sequence_lengths=lengths), False)
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v)
    # The compiled masked path, called below the packing decision.
    ops = get_ops("cpu")
    act = fl.activations.get("tanh")
    ract = fl.activations.get("sigmoid")
    with fl.use_backend("cpu"):
        packed, _, _ = run(cell, dict(kw, sequence_lengths=lengths), False)
    if cell == "lstm":
        ref = ops.lstm_forward(kw["x"], kw["kernel"], kw["recurrent_kernel"], kw["bias"],
                               kw["h0"], kw["c0"], mask=mask, activation=act,
                               recurrent_activation=ract)[:3]
    elif cell.startswith("gru"):
        ref = ops.gru_forward(kw["x"], kw["kernel"], kw["recurrent_kernel"], kw["bias"],
                              kw["h0"], reset_after=kw.get("reset_after", True), mask=mask,
                              activation=act, recurrent_activation=ract)[:2]
    else:
        ref = ops.simple_rnn_forward(kw["x"], kw["kernel"], kw["recurrent_kernel"],
                                     kw["bias"], kw["h0"], mask=mask, activation=act)[:2]
    for u, v in zip(packed, ref):
        assert_close(u, v, np.float64)


def test_edge_lengths():
    """All rows empty (the masked path), all full (no mask at all), one row, one step."""
    for lengths, T in (([0, 0, 0], 4), ([4, 4, 4], 4), ([3], 5), ([1, 0, 1], 1)):
        kw, _ = problem("lstm", np.float64, T, len(lengths), 3, 4, 1, lengths=lengths)
        for gb in (False, True):
            compare("lstm", kw, np.float64, True, gb, True, 2,
                    expect_packed=len(lengths) > 1 and 0 < sum(lengths) < T * len(lengths))


def test_small_problems_and_single_rows_run_the_masked_path(monkeypatch):
    from fastlstm.backends import packing
    monkeypatch.setattr(packing, "PACK_MIN_MACS", float(1 << 21))
    assert not packing.worth_packing(np.array([5, 3]), 5, 4, 8, 32)      # 2*12*32 MACs
    assert packing.worth_packing(np.array([100, 10] * 32), 100, 512, 512, 2048)
    assert not packing.worth_packing(np.array([10]), 100, 512, 512, 2048)   # one row
    kw, _ = problem("lstm", np.float64, 5, 3, 2, 4, 0)
    with fl.use_backend("cpu"):
        assert run("lstm", kw, True)[2] == "cython"


def test_prefix_detection():
    m = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
    assert prefix_lengths(m).tolist() == [2, 1, 0]
    assert prefix_lengths(np.array([[1, 0], [1, 1]], bool)) is None     # a gap: not a prefix
    pk = Packing(np.array([3, 1, 0, 2]), 3, 2, _lstm.Packed)
    assert pk.N == 6
    # Longest first, dealt to the groups: each group's running rows a prefix at every step.
    assert sorted(pk.perm.tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("bad,err", [
    (np.array([1, 2]), ValueError), (np.array([1, 2, 9]), ValueError),
    (np.array([1, -1, 2]), ValueError), (np.array([1.5, 2, 3]), TypeError),
    ("abc", TypeError)])
def test_bad_sequence_lengths(bad, err):
    kw, _ = problem("simple_rnn", np.float64, 4, 3, 2, 3, 0)
    kw.pop("mask")
    with pytest.raises(err, match="sequence_lengths"):
        fl.ops.simple_rnn_forward(**kw, sequence_lengths=bad)
    with pytest.raises(ValueError, match="sequence_lengths"):
        fl.ops.simple_rnn_forward(**kw, mask=np.ones((4, 3), bool), sequence_lengths=[1, 2, 3])


# -- finite differences (float64) -------------------------------------------------------

def _loss(cell, kw, flags, wy, wh):
    with fl.use_backend("cpu"):
        out, _, _ = run(cell, kw, False, **flags)
    return float(np.sum(out[0] * wy) + np.sum(out[1] * wh))


@pytest.mark.parametrize("cell,options", [("lstm", ("peephole",)), ("lstm", ("coupled",)),
                                          ("gru", ()), ("gru_reset_before", ()),
                                          ("simple_rnn", ())])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_gradients_by_finite_differences(cell, options, go_backwards):
    seed = seed_of(cell, options, go_backwards, "fd")
    kw, _ = problem(cell, np.float64, 5, 4, 3, 4, seed, options, lengths=[5, 2, 0, 3])
    H = kw["recurrent_kernel"].shape[0]
    rng = np.random.default_rng(seed)
    wy, wh = rng.standard_normal((5, 4, H)), rng.standard_normal((4, H))
    flags = dict(go_backwards=go_backwards)
    with fl.use_backend("cpu"):
        _, grads, kind = run(cell, kw, True, wy, wh, **(dict(dc=np.zeros((4, H)))
                                                         if cell == "lstm" else {}), **flags)
    assert kind == "packed"
    names = ["x", "h0"] + (["c0"] if cell == "lstm" else []) + ["kernel", "recurrent_kernel",
                                                                 "bias"]
    if "peephole" in options:
        names.append("peephole")
    eps = 1e-6
    for name, g in zip(names, grads):
        a = kw[name]
        for idx in list(np.ndindex(a.shape))[::max(1, a.size // 12)]:
            saved = a[idx]
            a[idx] = saved + eps
            up = _loss(cell, kw, flags, wy, wh)
            a[idx] = saved - eps
            down = _loss(cell, kw, flags, wy, wh)
            a[idx] = saved
            assert abs((up - down) / (2 * eps) - g[idx]) < 1e-6 * (1 + abs(g[idx])), (name, idx)


# -- layers -------------------------------------------------------------------------------

def _layer(kind, **kw):
    return {"lstm": fl.layers.LSTM, "gru": fl.layers.GRU,
            "simple_rnn": fl.layers.SimpleRNN}[kind](**kw)


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_layer_sequence_lengths_equals_mask(kind, go_backwards):
    rng = np.random.default_rng(seed_of(kind, go_backwards))
    B, T, I, H = 6, 9, 4, 5
    x = rng.standard_normal((B, T, I))
    lengths = np.array([9, 0, 4, 1, 7, 9])
    mask = np.arange(T)[None, :] < lengths[:, None]
    layer = _layer(kind, units=H, return_sequences=True, return_state=True,
                   go_backwards=go_backwards, dtype="float64", seed=3)
    a = layer(x, mask=mask)
    b = layer(x, sequence_lengths=lengths)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    with fl.use_backend("numpy"):
        ref = layer(x, mask=mask)
    for u, v in zip(b, ref):
        assert_close(u, v, np.float64)
    # Training: BPTT over each row's own length.
    outs, back = layer.forward_train(x, sequence_lengths=lengths)
    d = [rng.standard_normal(np.shape(o)) for o in outs]
    g = back(d)
    with fl.use_backend("numpy"):
        outs_ref, back_ref = layer.forward_train(x, mask=mask)
        g_ref = back_ref(d)
    assert_close(g.inputs, g_ref.inputs, np.float64)
    for u, v in zip(g.weights, g_ref.weights):
        assert_close(u, v, np.float64)
    assert not np.any(g.inputs[1]) and not np.any(g.inputs[2, 4:])    # padding: no gradient


def test_layer_matches_keras_masked_lstm():
    """A post-padded batch through Masking semantics: Keras 3's LSTM with that mask."""
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(7)
    B, T, I, H = 5, 8, 3, 4
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = np.array([8, 3, 5, 1, 6])
    mask = np.arange(T)[None, :] < lengths[:, None]
    ours = fl.layers.LSTM(H, return_sequences=True, seed=1)
    y = ours(x, sequence_lengths=lengths)
    k = keras.layers.LSTM(H, return_sequences=True)
    k.build((B, T, I))
    k.set_weights(ours.get_weights())
    ky = np.asarray(k(x, mask=mask).detach().cpu().numpy())
    assert_close(y, ky, np.float32, table=PEER_TOL)


def test_bidirectional_matches_pytorch_packed_sequence():
    """The backward direction starts at each row's last valid step: PyTorch's
    PackedSequence, which Keras's mask semantics equal."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    B, T, I, H = 5, 9, 3, 4
    lengths = np.array([9, 2, 6, 1, 9])
    net = torch.nn.LSTM(I, H, batch_first=True, bidirectional=True).double()
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=True,
                                  enforce_sorted=False)
    out, (hn, cn) = net(packed)
    y_t, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    w = torch.randn(B, T, 2 * H, dtype=torch.float64)
    (y_t * w).sum().backward()

    layer = fl.layers.Bidirectional(fl.layers.LSTM(H, return_sequences=True, dtype="float64"))
    layer.build((B, T, I))
    for sub, sfx in ((layer.forward_layer, ""), (layer.backward_layer, "_reverse")):
        wi = getattr(net, "weight_ih_l0" + sfx).detach().numpy()
        wh = getattr(net, "weight_hh_l0" + sfx).detach().numpy()
        b = (getattr(net, "bias_ih_l0" + sfx) + getattr(net, "bias_hh_l0" + sfx)).detach().numpy()
        sub.set_weights([wi.T, wh.T, b])          # [i|f|g|o] in both
    xn = x.detach().numpy()
    y = layer(xn, sequence_lengths=lengths)
    assert_close(y, y_t.detach().numpy(), np.float64, table=PEER_TOL)
    outs, back = layer.forward_train(xn, sequence_lengths=lengths)
    g = back(w.numpy())
    assert_close(g.inputs, x.grad.numpy(), np.float64, table=PEER_TOL)


def test_embedding_mask_zero_runs_packed(monkeypatch):
    """Post-padded ids through Embedding(mask_zero=True) give a prefix mask: the LSTM after
    it takes the packed pass (and gives the oracle's results)."""
    from fastlstm.backends import cpu_packed
    calls = []
    real = cpu_packed.lstm_forward
    monkeypatch.setattr(cpu_packed, "lstm_forward",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(3)
    lengths = np.array([6, 2, 4, 1])
    ids = rng.integers(1, 10, (4, 6)) * (np.arange(6)[None, :] < lengths[:, None])
    model = fl.models.Sequential([fl.layers.Embedding(10, 3, mask_zero=True),
                                  fl.layers.LSTM(5, dtype="float32")])
    y = model.predict(ids)
    assert calls, "the prefix mask did not take the packed pass"
    with fl.use_backend("numpy"):
        ref = model.predict(ids)
    assert_close(y, ref, np.float32)


def test_bidirectional_gru_matches_pytorch_packed_sequence():
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    from fastlstm.convert import from_torch
    torch.manual_seed(1)
    B, T, I, H = 6, 8, 3, 5
    lengths = np.array([8, 1, 5, 3, 8, 6])
    net = torch.nn.GRU(I, H, batch_first=True, bidirectional=True).double()
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    out, hn = net(pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=True,
                                       enforce_sorted=False))
    y_t, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    w = torch.randn(B, T, 2 * H, dtype=torch.float64)
    (y_t * w).sum().backward()
    layer = from_torch(net)
    xn = x.detach().numpy()
    assert_close(layer(xn, sequence_lengths=lengths), y_t.detach().numpy(), np.float64,
                 table=PEER_TOL)
    outs, back = layer.forward_train(xn, sequence_lengths=lengths)
    g = back(w.numpy())
    assert_close(g.inputs, x.grad.numpy(), np.float64, table=PEER_TOL)
    fwd_grads = g.weights[:3]
    assert_close(fwd_grads[0], net.weight_ih_l0.grad.numpy()[[5, 6, 7, 8, 9, 0, 1, 2, 3, 4,
                                                             10, 11, 12, 13, 14]].T,
                 np.float64, table=PEER_TOL)
