"""How the compiled kernels take and keep their arrays, and that no layout changes a bit:
- dy [T,B,H] is read where it lies (a layer's batch-major gradient, transposed, is not
  copied), x at inference too, a chunk at a time; any layout gives a contiguous array's bits;
- a plain training run saves the states entering its steps in the buffer of its outputs,
  returned read-only;
- read-only inputs, weights and states are read in place;
- the input gradient is written over the backend's own copy of x, never over the caller's."""
import importlib

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import ops
from fastlstm.backends.grad_buffers import row_strides

from conftest import DTYPES, seed_of

T, B, I, H = 6, 9, 5, 11

CELLS = [("lstm", {}), ("lstm", {"coupled_input_forget": True, "peephole": True}),
         ("gru", {"reset_after": True}), ("gru", {"reset_after": False}),
         ("simple_rnn", {})]


def _layouts(dy):
    """dy [T,B,H] laid out in other ways, each with the same values."""
    Tn, Bn, Hn = dy.shape
    batch_major = np.ascontiguousarray(dy.transpose(1, 0, 2)).transpose(1, 0, 2)
    wide = np.zeros((Tn, Bn, 2 * Hn + 3), dy.dtype)
    wide[..., 3:3 + Hn] = dy
    backwards = np.ascontiguousarray(dy[::-1])[::-1]
    every_other = np.zeros((Tn, Bn, 2 * Hn), dy.dtype)
    every_other[..., ::2] = dy
    return {"batch_major": batch_major, "column_slice": wide[..., 3:3 + Hn],
            "negative_time_stride": backwards, "last_axis_strided": every_other[..., ::2]}


def _weights_and_states(cell, kw, rng, dtype):
    """((x, kernel, recurrent_kernel, bias), initial states) of a small problem of the cell
    with the options kw."""
    G = {"lstm": 3 if kw.get("coupled_input_forget") else 4, "gru": 3,
         "simple_rnn": 1}[cell] * H
    x = rng.standard_normal((T, B, I)).astype(dtype)
    W = (rng.standard_normal((I, G)) / 3).astype(dtype)
    U = (rng.standard_normal((H, G)) / 3).astype(dtype)
    b = rng.standard_normal((2, G) if kw.get("reset_after") else (G,)).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in range(2 if cell == "lstm" else 1)]
    return (x, W, U, b), states


def _grads(cell, kw, args, states, dy, dtype):
    extra = dict(kw)
    if extra.pop("peephole", False):
        extra["peephole"] = np.full((3, H), 0.2, dtype)
    out = getattr(ops, f"{cell}_forward")(*args, *states, training=True, **extra)
    return getattr(ops, f"{cell}_backward")(out[-1], dy)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("cell, kw", CELLS, ids=[c + str(sorted(k)) for c, k in CELLS])
def test_backward_reads_dy_in_any_layout(cell, kw, masked, threads):
    mod = importlib.import_module(f"fastlstm._{cell}")
    min_macs = mod.get_parallel_min_macs()
    mod.set_threads(threads, 0)               # batch rows over the threads even here
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(seed_of("layouts", cell, sorted(kw), masked, threads))
            (x, W, U, b), states = _weights_and_states(cell, kw, rng, dtype)
            if masked:
                kw = dict(kw, mask=rng.random((T, B)) > 0.3, go_backwards=True)
            dy = rng.standard_normal((T, B, H)).astype(dtype)
            with fl.use_backend("cpu"):
                want = _grads(cell, kw, (x, W, U, b), states, dy, dtype)
                for name, view in _layouts(dy).items():
                    assert np.array_equal(view, dy)
                    got = _grads(cell, kw, (x, W, U, b), states, view, dtype)
                    for f in ("inputs", "h0", "kernel", "recurrent_kernel", "bias"):
                        assert np.array_equal(getattr(got, f), getattr(want, f)), (name, f)
                # One gradient row broadcast over every step and row (strides 0), read-only.
                row = rng.standard_normal(H).astype(dtype)
                got = _grads(cell, kw, (x, W, U, b), states, np.broadcast_to(row, dy.shape),
                             dtype)
                want = _grads(cell, kw, (x, W, U, b), states,
                              np.ascontiguousarray(np.broadcast_to(row, dy.shape)), dtype)
                assert np.array_equal(got.inputs, want.inputs)
                assert np.array_equal(got.recurrent_kernel, want.recurrent_kernel)
    finally:
        mod.set_threads(fl.get_num_threads(), min_macs)
        from fastlstm.threads import init_threads
        init_threads()


def test_backward_args_keep_dy_where_it_lies():
    """The checks pass a view with contiguous rows on to the compiled backend as it is (no
    copy), and copy one whose last axis is strided, or of another dtype."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    W = rng.standard_normal((I, 4 * H)).astype(np.float32)
    U = rng.standard_normal((H, 4 * H)).astype(np.float32)
    dy_bt = rng.standard_normal((B, T, H)).astype(np.float32)
    view = dy_bt.transpose(1, 0, 2)
    for backend, kept in (("cpu", True), ("numpy", False)):
        with fl.use_backend(backend):
            _, _, _, cache = ops.lstm_forward(x, W, U, training=True)
        _, got, _ = ops._backward_args(cache, "lstm", "lstm_forward", view, [])
        assert np.shares_memory(got, dy_bt) == kept
        for other in (view.astype(np.float64), np.repeat(view, 2, axis=2)[..., ::2]):
            _, got, _ = ops._backward_args(cache, "lstm", "lstm_forward", other, [])
            assert got.flags.c_contiguous and got.dtype == np.float32
            np.testing.assert_array_equal(got, view.astype(np.float32))


def test_row_strides():
    assert row_strides("dy", 3, 4, 5, 80, 20, 4, 4) == (20, 5)
    assert row_strides("dy", 3, 4, 5, -80, 0, 4, 4) == (-20, 0)
    # Axes of length 1: their strides are never used, whatever numpy reports.
    assert row_strides("dy", 1, 1, 1, 3, 7, 9, 8) == (0, 0)
    with pytest.raises(ValueError, match="dy: expected its last axis contiguous"):
        row_strides("dy", 3, 4, 5, 160, 40, 8, 4)
    with pytest.raises(ValueError, match="strides of whole 8-byte elements"):
        row_strides("dy", 3, 4, 5, 164, 40, 8, 8)


def _cell_args(cell, rng, dtype, Bn=B, kw=None):
    kw = kw or {}
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell] * H
    args = [rng.standard_normal((T, Bn, I)).astype(dtype),
            (rng.standard_normal((I, G)) / 3).astype(dtype),
            (rng.standard_normal((H, G)) / 3).astype(dtype),
            rng.standard_normal((2, G) if kw.get("reset_after", cell == "gru") else (G,))
            .astype(dtype)]
    states = [rng.standard_normal((Bn, H)).astype(dtype)
              for _ in range(2 if cell == "lstm" else 1)]
    return args, states


SAVED_H = {"lstm": "hin", "gru": "h_prev", "simple_rnn": "hin"}


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
@pytest.mark.parametrize("option", ["plain", "mask", "go_backwards", "recurrent_dropout",
                                    "last_output"])
@pytest.mark.parametrize("Bn", [1, 9])
def test_training_output_shares_the_saved_states(cell, option, Bn):
    """A plain training run forward in time saves no copy of its outputs: the states entering
    each step are the outputs of the step before, one buffer (as PyTorch keeps an output it
    needs), returned read-only. With a mask, backwards or with recurrent dropout (but for
    the GRU, which saves h_{t-1} itself) the saved states are their own. The gradients are
    the oracle's either way."""
    rng = np.random.default_rng(seed_of("shared", cell, option, Bn))
    args, states = _cell_args(cell, rng, np.float64, Bn)
    kw = {"mask": rng.random((T, Bn)) > 0.3, "go_backwards": True,
          "recurrent_dropout_mask": ((rng.random((Bn, H)) > 0.3) / 0.7),
          "return_sequences": False}
    kw = {k: v for k, v in kw.items() if option in k or (option == "last_output"
                                                         and k == "return_sequences")}
    fwd, bwd = getattr(ops, f"{cell}_forward"), getattr(ops, f"{cell}_backward")
    with fl.use_backend("cpu"):
        out = fwd(*args, *states, training=True, **kw)
    y, cache = out[0], out[-1]
    saved = cache.data[SAVED_H[cell]]
    shared = option == "plain" or (option == "recurrent_dropout" and cell == "gru")
    assert np.shares_memory(y, saved) == shared
    if option != "last_output":
        assert not y.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            y[0, 0, 0] = 1.0
    if shared:     # step t's output is the state entering step t+1; the first is h0
        np.testing.assert_array_equal(saved[1:], y[:-1])
        np.testing.assert_array_equal(saved[0], states[0])
    dy = rng.standard_normal(y.shape)
    g = bwd(cache, dy)
    with fl.use_backend("numpy"):
        ref = bwd(fwd(*args, *states, training=True, **kw)[-1], dy)
    for f in ("inputs", "h0", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_allclose(getattr(g, f), getattr(ref, f), rtol=1e-10, atol=1e-11,
                                   err_msg=f)


def _read_only(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("layer_cls", [fl.layers.LSTM, fl.layers.GRU, fl.layers.SimpleRNN])
@pytest.mark.parametrize("Bn", [1, 3])
def test_read_only_inputs_weights_and_states(layer_cls, Bn, backend):
    """Read-only arrays (memory-mapped weights, a broadcast input, an earlier layer's
    training output) are read where they are, with the results of writable ones: a batch of
    one reaches the kernels without a copy."""
    rng = np.random.default_rng(seed_of("read_only", layer_cls.__name__, Bn))
    x = rng.standard_normal((Bn, T, I)).astype(np.float32)
    dy = rng.standard_normal((Bn, T, H)).astype(np.float32)
    first = layer_cls(H, return_sequences=True)
    first.build(x.shape)
    weights = first.get_weights()
    results = []
    for frozen in (False, True):
        layer = layer_cls(H, return_sequences=True)
        layer.build(x.shape)
        layer.set_weights([w.copy() for w in weights])
        if frozen:
            for n in layer.weight_names:
                getattr(layer, n).flags.writeable = False
        h0 = [s + 0.5 for s in layer.get_initial_state(Bn)]
        wrap = _read_only if frozen else np.array
        xs, hs = wrap(x), [wrap(s) for s in h0]
        with fl.use_backend(backend):
            y_inf = layer(xs, initial_state=hs)
            y, backprop = layer.forward_train(xs, initial_state=hs)
            g = backprop(wrap(dy))
            y_t, st = layer.step(xs[:, 0], hs)
        assert not y.flags.writeable
        results.append([y_inf, y, g.inputs, *g.weights, *g.initial_state, y_t, *st])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
@pytest.mark.parametrize("layout", ["time_major", "batch_major", "input_dropout"])
def test_input_gradient_reuses_only_a_private_copy_of_x(cell, layout):
    """A batch-major input (a transposed view) is copied time-major by the backend, which
    then writes the input gradient over that copy once the weight gradient has read it; the
    caller's x is never written, and the gradients are the oracle's."""
    rng = np.random.default_rng(seed_of("dx_into", cell, layout))
    args, states = _cell_args(cell, rng, np.float64)
    x_bt = np.ascontiguousarray(args[0].transpose(1, 0, 2))
    x = x_bt.transpose(1, 0, 2) if layout == "batch_major" else args[0]
    x_before = x.copy()
    kw = {}
    if layout == "input_dropout":
        kw["input_dropout_mask"] = (rng.random((B, I)) > 0.3) / 0.7
    fwd, bwd = getattr(ops, f"{cell}_forward"), getattr(ops, f"{cell}_backward")
    with fl.use_backend("cpu"):
        out = fwd(x, *args[1:], *states, training=True, **kw)
    cache = out[-1]
    into = cache.data["dx_into"]
    assert (into is None) == (layout == "time_major")
    if into is not None:
        assert not np.shares_memory(into, x)
    dy = rng.standard_normal(out[0].shape)
    g = bwd(cache, dy)
    if into is not None:
        assert np.shares_memory(g.inputs, into)
    np.testing.assert_array_equal(x, x_before)
    with fl.use_backend("numpy"):
        ref = bwd(fwd(x, *args[1:], *states, training=True, **kw)[-1], dy)
    for f in ("inputs", "h0", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_allclose(getattr(g, f), getattr(ref, f), rtol=1e-10, atol=1e-11,
                                   err_msg=f)


def test_dx_buffer_takes_only_a_matching_writable_array():
    from fastlstm.backends.grad_buffers import dx_buffer
    assert dx_buffer(None, 2, 3, 4, np.float32).shape == (2, 3, 4)
    good = np.zeros((2, 3, 4), np.float32)
    assert dx_buffer(good, 2, 3, 4, np.float32) is good
    ro = good.copy()
    ro.flags.writeable = False
    for bad in (good.astype(np.float64), good[:, :2], np.zeros((4, 3, 2), np.float32).T, ro):
        with pytest.raises(ValueError, match="dx_into: expected a writable C-contiguous"):
            dx_buffer(bad, 2, 3, 4, np.float32)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("cell, kw", CELLS, ids=[c + str(sorted(k)) for c, k in CELLS])
def test_x_in_any_layout_gives_the_same_bits(cell, kw, training):
    """x [T,B,I] as a batch-major view, a column slice, backwards in time, strided along its
    last axis (copied by the checks) or broadcast (strides 0): the backend's own time-major
    copy, or x itself, gives the outputs and gradients of a contiguous x, bit for bit."""
    rng = np.random.default_rng(seed_of("x layouts", cell, sorted(kw), training))
    for dtype in DTYPES:
        (x, W, U, b), states = _weights_and_states(cell, kw, rng, dtype)
        dy = rng.standard_normal((T, B, H)).astype(dtype)
        extra = dict(kw)
        if extra.pop("peephole", False):
            extra["peephole"] = np.full((3, H), 0.2, dtype)
        fwd, bwd = getattr(ops, f"{cell}_forward"), getattr(ops, f"{cell}_backward")

        def run(xv):
            with fl.use_backend("cpu"):
                out = fwd(xv, W, U, b, *states, training=training, **extra)
                if not training:
                    return [out[0]]
                g = bwd(out[-1], dy)
                return [out[0], g.inputs, g.kernel, g.recurrent_kernel, g.bias, g.h0]

        want = run(x)
        views = dict(_layouts(x))
        views["broadcast"] = np.broadcast_to(x[:1, :1], x.shape)
        for name, xv in views.items():
            np.testing.assert_array_equal(xv, x if name != "broadcast" else views[name])
            base = want if name != "broadcast" else run(np.ascontiguousarray(xv))
            for k, (a, c) in enumerate(zip(run(xv), base)):
                np.testing.assert_array_equal(a, c, err_msg=f"{name} {k}")
