"""The compiled streaming step of every cell (fastlstm._step): the same trajectory as a call
over the sequence and as the NumPy oracle, on one thread or split over threads, on every ISA
variant, bound to the weight arrays (updates in place show), and copies of layers that made
one. The LSTM's own variants are also in test_lstm_layer.py."""
import copy
import pickle
import threading

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _step
from fastlstm.layers import GRU, LSTM, SimpleRNN

from conftest import assert_close, seed_of

# (class, options, plan type): every form of each cell the plan runs
CELLS = {
    "lstm": (LSTM, dict(bias_initializer="random_normal"), _step.LSTMStepPlan),
    "lstm_peep_cifg": (LSTM, dict(use_peepholes=True, coupled_input_forget=True,
                                  peephole_initializer="random_normal"), _step.LSTMStepPlan),
    "gru": (GRU, dict(bias_initializer="random_normal"), _step.GRUStepPlan),
    "gru_reset_before": (GRU, dict(reset_after=False, bias_initializer="random_normal"),
                         _step.GRUStepPlan),
    "gru_no_bias": (GRU, dict(use_bias=False), _step.GRUStepPlan),
    "gru_activations": (GRU, dict(activation="softsign", recurrent_activation="hard_sigmoid",
                                  reset_after=False, bias_initializer="random_normal"),
                        _step.GRUStepPlan),
    "rnn": (SimpleRNN, dict(bias_initializer="random_normal"), _step.SimpleRNNStepPlan),
    "rnn_relu_no_bias": (SimpleRNN, dict(activation="relu", use_bias=False),
                         _step.SimpleRNNStepPlan),
}
cells = pytest.mark.parametrize("cell", list(CELLS))
dtypes = pytest.mark.parametrize("dtype", ["float32", "float64"])


def make(cell, units, x_shape, dtype, seed=0, **extra):
    cls, options, _ = CELLS[cell]
    layer = cls(units, return_sequences=True, return_state=True, dtype=dtype,
                **{**options, **extra})
    layer.build(x_shape)
    rng = np.random.default_rng(seed)
    # weights of unit scale over the fan-in: every gate away from saturation
    layer.set_weights([(rng.standard_normal(w.shape) / np.sqrt(max(w.shape[0], 1)))
                       .astype(dtype) for w in layer.get_weights()])
    return layer


def states_of(layer, B, rng, dtype):
    return [rng.standard_normal((B, layer.units)).astype(dtype) for _ in layer.state_names]


def walk(layer, x, state):
    """Outputs and final states of step() over x [B,T,I], x_t strided at odd steps."""
    ys = []
    for t in range(x.shape[1]):
        x_t = x[:, t] if t % 2 else np.ascontiguousarray(x[:, t])
        y_t, state = layer.step(x_t, state)
        ys.append(y_t)
    return np.stack(ys, axis=1), state


@cells
@dtypes
@pytest.mark.parametrize("B, I, H", [(1, 5, 7), (1, 19, 33), (4, 3, 16), (3, 9, 5)])
def test_step_equals_sequence_call_and_oracle(cell, dtype, B, I, H):
    rng = np.random.default_rng(seed_of(cell, dtype, B, I, H))
    x = rng.standard_normal((B, 5, I)).astype(dtype)
    layer = make(cell, H, x.shape, dtype)
    state = states_of(layer, B, rng, dtype)
    ys, *final = layer(x, initial_state=state)
    y, end = walk(layer, x, state)
    assert isinstance(layer._step_plan, CELLS[cell][2]) and layer._step_plan.batch == B
    assert y.dtype == dtype
    assert_close(y, ys, dtype, "outputs")
    for s, ref in zip(end, final):
        assert_close(s, ref, dtype, "state")
    with fl.use_backend("numpy"):
        ry, rend = walk(layer, x, state)
    assert_close(y, ry, dtype, "outputs vs oracle")
    for s, ref in zip(end, rend):
        assert_close(s, ref, dtype, "state vs oracle")


@pytest.mark.parametrize("threads", [2, 3])
@cells
@dtypes
def test_split_step_equals_sequence_call(cell, dtype, threads):
    """From 768 KiB of weights a batch-1 step splits the rows of [W; U] over the threads in
    8-row groups (I = 200: the first thread's rows end inside U, and with three threads two
    partial sums are added to the first); it walks the trajectory of the sequence call."""
    from fastlstm.threads import get_num_threads, set_loop_threads
    rng = np.random.default_rng(seed_of("split", cell, dtype, threads))
    I, H = 200, 520 if CELLS[cell][0] is SimpleRNN else 264
    x = rng.standard_normal((1, 4, I)).astype(dtype)
    layer = make(cell, H, x.shape, dtype)
    assert (I + H) * layer.recurrent_kernel.shape[1] * np.dtype(dtype).itemsize >= 768 << 10
    state = states_of(layer, 1, rng, dtype)
    ys, *final = layer(x, initial_state=state)
    before = get_num_threads()
    set_loop_threads(threads)
    try:
        y, end = walk(layer, x, state)
    finally:
        set_loop_threads(before)
    assert_close(y, ys, dtype, "outputs")
    for s, ref in zip(end, final):
        assert_close(s, ref, dtype, "state")


@pytest.mark.parametrize("level", [0, 1, 2])
@cells
def test_every_isa_variant_matches_oracle(cell, level):
    from fastlstm import _gates
    if level > _gates.isa_level():
        pytest.skip("the CPU lacks this ISA")
    rng = np.random.default_rng(seed_of("isa", cell, level))
    x = rng.standard_normal((3, 4, 21)).astype(np.float32)
    layer = make(cell, 37, x.shape, "float32")
    state = states_of(layer, 3, rng, np.float32)
    with fl.use_backend("numpy"):
        ry, rend = walk(layer, x, state)
    _gates.force_isa_level(level)
    try:
        assert _step.isa_level_here() == level
        y, end = walk(layer, x, state)
        y1, end1 = walk(layer, x[:1], [s[:1] for s in state])
    finally:
        _gates.force_isa_level(-1)
    assert_close(y, ry, np.float32, "outputs")
    assert_close(y1, ry[:1], np.float32, "batch 1")
    for s, s1, ref in zip(end, end1, rend):
        assert_close(s, ref, np.float32, "state")
        assert_close(s1, ref[:1], np.float32, "batch 1 state")


@pytest.mark.parametrize("policy", ["blas", "own"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_reset_before", "rnn"])
def test_product_policies(cell, policy):
    """'blas' keeps a large batch-1 step on one thread and its products on BLAS past our
    kernel's size; 'own' the other way round: the same outputs."""
    rng = np.random.default_rng(seed_of("policy", cell, policy))
    I, H = 300, 700       # 5.6-22 MiB of weights: BLAS under 'blas' (and 'auto' past 8 MiB)
    x = rng.standard_normal((1, 3, I))
    layer = make(cell, H, x.shape, "float64")
    state = states_of(layer, 1, rng, np.float64)
    with fl.use_backend("numpy"):
        ry, rend = walk(layer, x, state)
    _step.set_recurrent_matmul(policy)
    try:
        y, end = walk(layer, x, state)
    finally:
        _step.set_recurrent_matmul("auto")
    assert_close(y, ry, np.float64, "outputs")
    for s, ref in zip(end, rend):
        assert_close(s, ref, np.float64, "state")


@cells
@pytest.mark.parametrize("B", [1, 3])
def test_plan_follows_weight_changes(cell, B):
    """The plan reads the layer's arrays: every weight updated in place shows at the next
    step (the GRU's two bias rows too); set_weights binds a new plan."""
    rng = np.random.default_rng(seed_of("bind", cell, B))
    layer = make(cell, 6, (B, 1, 4), "float64")
    x = rng.standard_normal((B, 4))
    state = states_of(layer, B, rng, np.float64)
    y0, _ = layer.step(x, state)
    plan = layer._step_plan
    for k, name in enumerate(layer.weight_names):
        getattr(layer, name)[...] *= 1.5 + k                 # in place, like an optimizer
        y, new = layer.step(x, state)
        with fl.use_backend("numpy"):
            ry, rnew = layer.step(x, state)
        assert layer._step_plan is plan
        assert_close(y, ry, np.float64, name)
        assert_close(new[-1], rnew[-1], np.float64, name)
        assert not np.allclose(y, y0), name
        y0 = y
    layer.set_weights([w * 0.5 for w in layer.get_weights()])     # new arrays
    y, _ = layer.step(x, state)
    with fl.use_backend("numpy"):
        ry, _ = layer.step(x, state)
    assert layer._step_plan is not plan and layer._step_plan.bound_to(layer)
    assert_close(y, ry, np.float64, "after set_weights")


@cells
def test_plan_follows_a_reassigned_activation(cell):
    """An activation the plan compiled in, reassigned on the layer, makes a new plan (the
    old one ran the old activation)."""
    from fastlstm import activations
    rng = np.random.default_rng(seed_of("act", cell))
    layer = make(cell, 6, (2, 1, 4), "float64")
    x = rng.standard_normal((2, 4))
    state = states_of(layer, 2, rng, np.float64)
    layer.step(x, state)
    for attr, names in (("activation", ("softsign", "tanh")),
                        ("recurrent_activation", ("hard_sigmoid", "sigmoid"))):
        if not hasattr(layer, attr):
            continue
        plan = layer._step_plan
        new_act = next(activations.get(n) for n in names
                       if activations.get(n) != getattr(layer, attr))
        setattr(layer, attr, new_act)
        y, new = layer.step(x, state)
        with fl.use_backend("numpy"):
            ry, rnew = layer.step(x, state)
        assert layer._step_plan is not plan and layer._step_plan.bound_to(layer)
        assert_close(y, ry, np.float64, attr)
        assert_close(new[-1], rnew[-1], np.float64, attr)


@cells
def test_unbindable_weights_and_odd_arguments_take_the_general_path(cell):
    """Fortran-order weights: no plan, the general path's result. Arguments the plan does not
    take as they are (lists, tuples, other dtypes, strided states, a new batch size) give the
    result of well-formed ones."""
    rng = np.random.default_rng(seed_of("general", cell))
    layer = make(cell, 5, (2, 1, 4), "float32")
    x = rng.standard_normal((2, 4)).astype(np.float32)
    state = states_of(layer, 2, rng, np.float32)
    ref, ref_state = layer.step(x, state)
    variants = [
        (x.tolist(), state),
        (x.astype(np.float64), [s.astype(np.float64) for s in state]),
        (x, tuple(state)),
        (np.asfortranarray(x), [np.asfortranarray(s) for s in state]),
        (np.repeat(x, 2, axis=1)[:, ::2], [np.repeat(s, 2, axis=1)[:, ::2] for s in state]),
    ]
    for k, (xv, sv) in enumerate(variants):
        y, new = layer.step(xv, sv)
        assert y.dtype == np.float32
        assert_close(y, ref, np.float32, f"variant {k}")
        assert_close(new[-1], ref_state[-1], np.float32, f"variant {k}")
    y1, _ = layer.step(x[:1], [s[:1] for s in state])             # batch 1: a new plan
    assert_close(y1, ref[:1], np.float32, "batch 1")
    for name in ("kernel", "recurrent_kernel"):
        setattr(layer, name, np.asfortranarray(getattr(layer, name)))
    y, _ = layer.step(x, state)
    assert layer._step_plan is None
    assert_close(y, ref, np.float32, "Fortran-order weights")


@cells
def test_errors_once_the_plan_exists(cell):
    layer = make(cell, 3, (2, 1, 4), "float32")
    state = layer.get_initial_state(2)
    layer.step(np.zeros((2, 4), np.float32), state)
    assert layer._step_plan is not None
    cases = [
        (np.zeros((2, 5), np.float32), state, ValueError, r"x_t.*4 features, got 5"),
        (np.zeros((2, 1, 4), np.float32), state, ValueError, r"x_t.*2-D"),
        (np.zeros((2, 4), np.float32), layer.get_initial_state(3), ValueError,
         r"states\[h\]: expected shape \(2, 3\) \(x_t's batch\), got \(3, 3\)"),
        (np.zeros((2, 4), np.float32), state + state, ValueError,
         r"states: .* expects %d array" % len(state)),
        (np.zeros((2, 4), np.float32), None, TypeError, r"states: expected a list .*NoneType"),
        (np.zeros((2, 4), np.float32), 5, TypeError, r"states: expected a list .*int"),
        (np.full((2, 4), "s"), state, TypeError, r"x_t: expected a real numeric array"),
    ]
    for x, s, exc, words in cases:
        with pytest.raises(exc, match=words):
            layer.step(x, s)


@cells
def test_layers_that_made_a_plan_copy_and_pickle(cell):
    """A plan points into its layer's arrays and is never copied: a deep copy or an unpickled
    layer makes its own, bound to its own arrays."""
    rng = np.random.default_rng(seed_of("copy", cell))
    layer = make(cell, 5, (1, 1, 4), "float32")
    x = rng.standard_normal((1, 4)).astype(np.float32)
    state = states_of(layer, 1, rng, np.float32)
    ref, _ = layer.step(x, state)
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert other._step_plan is None
        y, _ = other.step(x, state)
        assert_close(y, ref, np.float32)
        assert other._step_plan.bound_to(other) and not other._step_plan.bound_to(layer)
        other.kernel[...] = 0                                  # its own arrays, not layer's
        assert not np.allclose(other.step(x, state)[0], ref)
    assert_close(layer.step(x, state)[0], ref, np.float32)
    with pytest.raises(TypeError, match="StepPlan"):
        pickle.dumps(layer._step_plan)


def _offsets(layer):
    return {n: getattr(layer, n).ctypes.data % 64 for n in layer.weight_names}


@cells
def test_weights_start_on_cache_lines(cell):
    """Built, set, copied, unpickled and moved weights start on a 64-byte boundary (the step
    reads them in whole vectors); a user's own misaligned array is bound as it is and gives
    the same bits as an aligned copy."""
    rng = np.random.default_rng(seed_of("align", cell))
    layer = make(cell, 6, (1, 1, 5), "float32")
    aligned = {n: 0 for n in layer.weight_names}
    assert _offsets(layer) == aligned
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), layer.to("cpu")):
        assert _offsets(other) == aligned
    x = rng.standard_normal((1, 5)).astype(np.float32)
    state = states_of(layer, 1, rng, np.float32)
    ref, ref_state = layer.step(x, state)
    for name in layer.weight_names:                  # 4 bytes off a cache line, bound in place
        w = getattr(layer, name)
        buf = np.empty(w.nbytes + 68, np.uint8)
        off = (-buf.ctypes.data) % 64 + 4
        odd = buf[off:off + w.nbytes].view(w.dtype).reshape(w.shape)
        odd[...] = w
        setattr(layer, name, odd)
    y, new = layer.step(x, state)
    assert all(getattr(layer, n).ctypes.data % 64 == 4 for n in layer.weight_names)
    assert layer._step_plan.bound_to(layer)
    np.testing.assert_array_equal(y, ref)
    for a, b in zip(new, ref_state):
        np.testing.assert_array_equal(a, b)
    layer.set_weights(layer.get_weights())
    assert _offsets(layer) == aligned


@cells
@pytest.mark.parametrize("B", [1, 3])
def test_plan_buffers_are_whole_and_aligned(cell, B):
    """Every buffer a plan's kernels write holds all of what they write (z [B, its width],
    the two partial rows [G], the split's partial sums) and starts on a cache line."""
    rng = np.random.default_rng(seed_of("buffers", cell, B))
    layer = make(cell, 7, (B, 1, 5), "float32")
    layer.step(rng.standard_normal((B, 5)).astype(np.float32), states_of(layer, B, rng, np.float32))
    G = layer.recurrent_kernel.shape[1]
    width = 4 * layer.units if cell.startswith("gru") and layer.reset_after else G
    z, zx, zh, *rest = layer._step_plan.buffers
    assert (z.shape, zx.shape, zh.shape) == ((B * width,), (G,), (G,))
    for b in [z, zx, zh] + rest:
        assert b.size >= 1 and b.ctypes.data % 64 == 0


def test_split_step_buffers_are_whole_and_aligned():
    """The partial sums of a step split over two threads: (threads - 1) x 2G, aligned."""
    prev = fl.get_num_threads()
    try:
        fl.set_num_threads(2)
        layer = LSTM(256)                          # 2 MiB of float32 weights: split
        layer.build((1, 1, 256))
        x = np.ones((1, 256), np.float32)
        layer.step(x, layer.get_initial_state(1))
        parts = layer._step_plan.parts_arr
        assert parts is not None and parts.shape == (2 * 1024,)
        assert parts.ctypes.data % 64 == 0
    finally:
        fl.set_num_threads(prev)


def test_aligned_weight():
    """aligned_weight: the array itself when aligned and C-contiguous (or empty), else an
    aligned copy of the same values, shape and dtype; anything else passes through."""
    from fastlstm.layers.base import aligned_weight
    buf = np.empty(8 * 3 * 5 + 64, np.uint8)
    off = (-buf.ctypes.data) % 64
    a = buf[off:off + 120].view(np.float64).reshape(3, 5)
    a[...] = np.arange(15).reshape(3, 5)
    assert aligned_weight(a) is a
    fresh = aligned_weight(a, copy=True)              # set_weights: never the caller's array
    assert fresh is not a and fresh.ctypes.data % 64 == 0
    np.testing.assert_array_equal(fresh, a)
    empty = np.zeros((0, 4), np.float32)                # nothing to read: kept as it is
    assert aligned_weight(empty) is empty
    for odd in (buf[off + 8:off + 8 + 112].view(np.float64).reshape(2, 7), a[:, ::2], a.T):
        out = aligned_weight(odd)
        assert out.ctypes.data % 64 == 0 and out.flags.c_contiguous
        assert out.dtype == odd.dtype and out.shape == odd.shape
        np.testing.assert_array_equal(out, odd)
    assert aligned_weight(None) is None


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_concurrent_steps_on_one_layer(cell):
    """Python threads stepping their own sessions through one shared layer (a server): the
    plan's buffers serve one call at a time, the others take the general way; every session
    gets the trajectory it gets alone. (Without that, most runs here mixed up sessions.)"""
    rng = np.random.default_rng(seed_of("threads", cell))
    layer = make(cell, 96, (1, 1, 32), "float32")
    xs = [rng.standard_normal((300, 1, 32)).astype(np.float32) for _ in range(4)]

    def session(x):
        state, ys = layer.get_initial_state(1), []
        for t in range(x.shape[0]):
            y, state = layer.step(x[t], state)
            ys.append(y)
        return np.concatenate(ys)

    alone = [session(x) for x in xs]
    for _ in range(5):
        got = [None] * len(xs)

        def work(k):
            got[k] = session(xs[k])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(len(xs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for k, (g, ref) in enumerate(zip(got, alone)):
            assert_close(g, ref, np.float32, f"session {k}")


def test_plans_reject_what_they_cannot_run():
    """Construction checks (the layers then take the general path)."""
    rng = np.random.default_rng(5)
    tanh, sigmoid = (fl.activations.get(n, "activation") for n in ("tanh", "sigmoid"))
    W, U = rng.standard_normal((4, 9)), rng.standard_normal((3, 9))
    bias = rng.standard_normal((2, 9))
    _step.GRUStepPlan(W, U, bias, tanh, sigmoid, True, 1)
    bad = [
        lambda: _step.GRUStepPlan(W, U, bias[0], tanh, sigmoid, True, 1),      # bias shape
        lambda: _step.GRUStepPlan(W, U, bias, tanh, sigmoid, False, 1),
        lambda: _step.GRUStepPlan(W, U, np.asfortranarray(bias), tanh, sigmoid, True, 1),
        lambda: _step.GRUStepPlan(W.astype(np.float32), U, None, tanh, sigmoid, True, 1),
        lambda: _step.GRUStepPlan(W, U[:, :6], None, tanh, sigmoid, True, 1),
        lambda: _step.GRUStepPlan(W, U, None, tanh, sigmoid, True, 0),
        lambda: _step.SimpleRNNStepPlan(W, U, None, tanh, 1),                    # 9 != 3
        lambda: _step.SimpleRNNStepPlan(W.astype(np.int64), U, None, tanh, 1),
        lambda: _step.SimpleRNNStepPlan(W[0], U, None, tanh, 1),
        lambda: _step.LSTMStepPlan(W, U, None, None, tanh, sigmoid, False, 1),  # 9 != 12
        lambda: _step.LSTMStepPlan(W[:, :8], U[:2, :8], None, np.zeros((2, 2)), tanh,
                                   sigmoid, False, 1),                            # peephole
    ]
    for k, make_plan in enumerate(bad):
        with pytest.raises(ValueError, match="StepPlan"):
            make_plan()
