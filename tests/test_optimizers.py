"""Optimizers and schedules: the first steps against the Keras 3 update rules written out
here in plain NumPy, state save/restore, validation, and Keras 3 itself where installed."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from fastlstm import optimizers as O
from fastlstm import schedules as S

RNG = np.random.default_rng(2024)
SHAPES = [(3, 4), (4,)]
N_STEPS = 3


def make_problem(scale=1.0, shrinking=False):
    """Initial params and N_STEPS lists of gradients (float64)."""
    params = [RNG.normal(size=s) for s in SHAPES]
    steps = []
    for t in range(N_STEPS):
        factor = scale * (0.1 ** t if shrinking else 1.0)  # shrinking: amsgrad's max matters
        steps.append([factor * RNG.normal(size=s) for s in SHAPES])
    return params, steps


# ----------------------------------------------------------- reference rules (Keras 3)
# Each rule(state, p, g, lr, t) returns the new p; `state` is that parameter's dict,
# t is the 0-based step. Written from the formulas, independently of fastlstm.


def sgd_rule(momentum=0.0, nesterov=False):
    def rule(st, p, g, lr, t):
        if momentum == 0:
            return p - lr * g
        m = momentum * st.get("m", 0.0) - lr * g
        st["m"] = m
        return p + momentum * m - lr * g if nesterov else p + m
    return rule


def adam_rule(b1=0.9, b2=0.999, eps=1e-7, amsgrad=False):
    def rule(st, p, g, lr, t):
        m = b1 * st.get("m", 0.0) + (1 - b1) * g
        v = b2 * st.get("v", 0.0) + (1 - b2) * g * g
        st["m"], st["v"] = m, v
        if amsgrad:
            st["vhat"] = np.maximum(st.get("vhat", 0.0), v)
            v = st["vhat"]
        step = t + 1
        lr_t = lr * math.sqrt(1 - b2 ** step) / (1 - b1 ** step)
        return p - lr_t * m / (np.sqrt(v) + eps)
    return rule


def rmsprop_rule(rho=0.9, momentum=0.0, eps=1e-7, centered=False):
    def rule(st, p, g, lr, t):
        v = rho * st.get("v", 0.0) + (1 - rho) * g * g
        st["v"] = v
        denom = v + eps
        if centered:
            a = rho * st.get("a", 0.0) + (1 - rho) * g
            st["a"] = a
            denom = v - a * a + eps
        inc = lr * g / np.sqrt(denom)
        if momentum > 0:
            st["mom"] = momentum * st.get("mom", 0.0) + inc
            return p - st["mom"]
        return p - inc
    return rule


def adagrad_rule(init=0.1, eps=1e-7):
    def rule(st, p, g, lr, t):
        st["acc"] = st.get("acc", init) + g * g
        return p - lr * g / np.sqrt(st["acc"] + eps)
    return rule


def clip_by_norm(grads, c):
    return [g * c / max(np.linalg.norm(g), c) for g in grads]


def clip_by_global_norm(grads, c):
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    return [g * c / max(norm, c) for g in grads]


def clip_by_value(grads, c):
    return [np.clip(g, -c, c) for g in grads]


def reference(rule, params, steps, lr_fn, weight_decay=None, clip=None):
    """Trajectory after each step: clip -> decoupled weight decay -> update."""
    params = [p.copy() for p in params]
    states = [{} for _ in params]
    trajectory = []
    for t, grads in enumerate(steps):
        lr = lr_fn(t)
        if clip is not None:
            grads = clip(grads)
        new = []
        for p, g, st in zip(params, grads, states):
            if weight_decay is not None:
                p = p - p * weight_decay * lr
            new.append(rule(st, p, g, lr, t))
        params = new
        trajectory.append([p.copy() for p in params])
    return trajectory


def exp_decay(lr0, steps, rate, staircase=False):
    return lambda t: lr0 * rate ** (math.floor(t / steps) if staircase else t / steps)


def cosine(lr0, steps, alpha=0.0, target=None, warmup=0):
    def f(t):
        if target is None:
            s = min(t, steps)
            return lr0 * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / steps)) + alpha)
        s = min(t, steps + warmup)
        if s < warmup:
            return lr0 + (target - lr0) * s / warmup
        s -= warmup
        return target * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / steps)) + alpha)
    return f


const = lambda lr: (lambda t: lr)  # noqa: E731

CASES = [
    # id, factory, rule, lr_fn, weight_decay, clip, problem kwargs
    ("sgd", lambda: O.SGD(), sgd_rule(), const(0.01), None, None, {}),
    ("sgd_momentum", lambda: O.SGD(0.05, momentum=0.9), sgd_rule(0.9), const(0.05), None, None, {}),
    ("sgd_nesterov", lambda: O.SGD(0.05, momentum=0.8, nesterov=True), sgd_rule(0.8, True),
     const(0.05), None, None, {}),
    ("sgd_weight_decay", lambda: O.SGD(0.1, momentum=0.5, weight_decay=0.2), sgd_rule(0.5),
     const(0.1), 0.2, None, {}),
    ("sgd_clipnorm", lambda: O.SGD(0.1, clipnorm=0.5), sgd_rule(), const(0.1), None,
     lambda gs: clip_by_norm(gs, 0.5), {"scale": 3.0}),
    ("sgd_exponential_decay",
     lambda: O.SGD(S.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5), momentum=0.9),
     sgd_rule(0.9), exp_decay(0.1, 2, 0.5), None, None, {}),
    ("sgd_exponential_staircase",
     lambda: O.SGD(S.ExponentialDecay(0.1, 2, 0.5, staircase=True)),
     sgd_rule(), exp_decay(0.1, 2, 0.5, True), None, None, {}),
    ("adam", lambda: O.Adam(), adam_rule(), const(0.001), None, None, {}),
    ("adam_custom", lambda: O.Adam(0.01, beta_1=0.5, beta_2=0.9, epsilon=1e-3), adam_rule(
        0.5, 0.9, 1e-3), const(0.01), None, None, {}),
    ("adam_amsgrad", lambda: O.Adam(0.01, amsgrad=True), adam_rule(amsgrad=True), const(0.01),
     None, None, {"shrinking": True}),
    ("adam_clipvalue", lambda: O.Adam(0.01, clipvalue=0.3), adam_rule(), const(0.01), None,
     lambda gs: clip_by_value(gs, 0.3), {}),
    ("adam_weight_decay", lambda: O.Adam(0.01, weight_decay=0.1), adam_rule(), const(0.01),
     0.1, None, {}),
    ("adamw_default", lambda: O.AdamW(), adam_rule(), const(0.001), 0.004, None, {}),
    ("adamw_cosine_warmup",
     lambda: O.AdamW(S.CosineDecay(0.001, decay_steps=4, warmup_target=0.01, warmup_steps=2),
                     weight_decay=0.5),
     adam_rule(), cosine(0.001, 4, target=0.01, warmup=2), 0.5, None, {}),
    ("rmsprop", lambda: O.RMSprop(), rmsprop_rule(), const(0.001), None, None, {}),
    ("rmsprop_centered", lambda: O.RMSprop(0.01, rho=0.8, centered=True),
     rmsprop_rule(0.8, centered=True), const(0.01), None, None, {}),
    ("rmsprop_momentum", lambda: O.RMSprop(0.01, momentum=0.7), rmsprop_rule(momentum=0.7),
     const(0.01), None, None, {}),
    ("rmsprop_centered_momentum_global_clipnorm",
     lambda: O.RMSprop(0.01, momentum=0.5, centered=True, global_clipnorm=1.0),
     rmsprop_rule(momentum=0.5, centered=True), const(0.01), None,
     lambda gs: clip_by_global_norm(gs, 1.0), {"scale": 2.0}),
    ("adagrad", lambda: O.Adagrad(), adagrad_rule(), const(0.001), None, None, {}),
    ("adagrad_custom_cosine",
     lambda: O.Adagrad(S.CosineDecay(0.1, decay_steps=2, alpha=0.1),
                       initial_accumulator_value=0.5, epsilon=1e-4),
     adagrad_rule(0.5, 1e-4), cosine(0.1, 2, alpha=0.1), None, None, {}),
    ("adagrad_callable_lr", lambda: O.Adagrad(lambda it: 0.1 / (1 + it)), adagrad_rule(),
     lambda t: 0.1 / (1 + t), None, None, {}),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_first_steps_match_keras_rule(case, dtype):
    _, factory, rule, lr_fn, wd, clip, kwargs = case
    params0, steps = make_problem(**kwargs)
    expected = reference(rule, params0, steps, lr_fn, wd, clip)
    opt = factory()
    params = [p.astype(dtype) for p in params0]
    ids = [id(p) for p in params]
    for t, grads in enumerate(steps):
        assert opt.iterations == t
        assert opt.learning_rate == pytest.approx(lr_fn(t), rel=1e-12)
        opt.apply([g.astype(dtype) for g in grads], params)
        for got, want in zip(params, expected[t]):
            assert got.dtype == dtype
            if dtype == np.float64:
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert [id(p) for p in params] == ids  # updated in place
    assert opt.iterations == N_STEPS
    # the updates actually moved the weights (no silent no-op)
    assert not np.allclose(params[0], params0[0].astype(dtype))


def test_slots_follow_param_dtype_and_state_round_trip():
    params0, steps = make_problem()
    a = O.Adam(0.01, amsgrad=True)
    pa = [p.astype(np.float32) for p in params0]
    for grads in steps[:2]:
        a.apply(grads, pa)
    state = a.get_state()
    assert int(state["iterations"]) == 2
    assert state["momentum/0"].dtype == np.float32 and state["velocity_hat/1"].shape == (4,)
    assert set(state) == {"iterations", "learning_rate"} | {
        f"{n}/{i}" for n in ("momentum", "velocity", "velocity_hat") for i in range(2)}
    # restore into a fresh optimizer built from the JSON config (as after loading a model)
    b = O.get(json.loads(json.dumps(O.serialize(a))))
    b.set_state({k: np.array(v) for k, v in state.items()})
    pb = [p.copy() for p in pa]
    a.apply(steps[2], pa)
    b.apply(steps[2], pb)
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)
    assert b.iterations == 3
    # the state is a copy, not a view of the live slots
    assert not np.array_equal(state["momentum/0"], a.get_state()["momentum/0"])


def test_state_round_trip_keeps_a_changed_learning_rate():
    opt = O.SGD(0.1, momentum=0.9)
    p = [np.ones(3)]
    opt.apply([np.ones(3)], p)
    opt.learning_rate = 0.05  # as ReduceLROnPlateau would
    fresh = O.SGD(0.1, momentum=0.9)
    fresh.set_state(opt.get_state())
    assert fresh.learning_rate == 0.05
    assert O.SGD.from_config(opt.get_config()).learning_rate == 0.05


def test_set_state_rejects_foreign_or_partial_state():
    with pytest.raises(ValueError, match="velocity"):
        O.SGD(momentum=0.5).set_state({"iterations": 1, "velocity/0": np.zeros(2)})
    with pytest.raises(ValueError, match="Incomplete"):
        O.Adam().set_state({"iterations": 1, "momentum/0": np.zeros(2)})
    with pytest.raises(ValueError, match="iterations"):
        O.Adam().set_state({})
    opt = O.Adam()
    opt.set_state({"iterations": 4, "momentum/0": np.zeros(2), "velocity/0": np.zeros(2)})
    with pytest.raises(ValueError, match=r"shape \(2,\).*\(3,\)"):
        opt.apply([np.ones(3)], [np.ones(3)])


def test_none_gradients_are_skipped():
    params = [np.ones(2), np.ones(3)]
    opt = O.SGD(0.5)
    opt.apply([None, np.ones(3)], params)
    np.testing.assert_array_equal(params[0], 1.0)
    np.testing.assert_array_equal(params[1], 0.5)
    assert opt.iterations == 1
    with pytest.raises(ValueError, match="No gradients"):
        opt.apply([None, None], params)


def test_bad_arguments_to_apply():
    opt = O.Adam()
    with pytest.raises(ValueError, match="same length"):
        opt.apply([np.ones(2)], [np.ones(2), np.ones(2)])
    with pytest.raises(TypeError, match=r"params\[0\].*float32 or float64"):
        opt.apply([np.ones(2)], [np.ones(2, dtype=int)])
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(3,\)"):
        opt.apply([np.ones(3)], [np.ones(2)])
    opt.apply([np.ones(2)], [np.ones(2)])
    with pytest.raises(ValueError, match="state for 1 parameters but received 2"):
        opt.apply([np.ones(2)] * 2, [np.ones(2), np.ones(2)])


@pytest.mark.parametrize("factory, message", [
    (lambda: O.SGD(learning_rate=-0.1), "learning_rate"),
    (lambda: O.SGD(momentum=1.5), "momentum"),
    (lambda: O.Adam(beta_1=1.0), "beta_1"),
    (lambda: O.Adam(beta_2=-0.1), "beta_2"),
    (lambda: O.Adam(epsilon=-1.0), "epsilon"),
    (lambda: O.RMSprop(rho=1.0), "rho"),
    (lambda: O.Adagrad(initial_accumulator_value=-1), "initial_accumulator_value"),
    (lambda: O.AdamW(weight_decay=None), "weight_decay"),
    (lambda: O.SGD(weight_decay=-1.0), "weight_decay"),
    (lambda: O.SGD(clipnorm=0.0), "clipnorm"),
    (lambda: O.SGD(clipnorm=1.0, clipvalue=1.0), "Only one of"),
    (lambda: O.SGD(learning_rate="fast"), "learning_rate"),
    (lambda: S.ExponentialDecay(0.1, decay_steps=0, decay_rate=0.9), "decay_steps"),
    (lambda: S.CosineDecay(0.1, decay_steps=10, alpha=2.0), "alpha"),
])
def test_hyperparameter_validation(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_learning_rate_property_and_setter():
    opt = O.Adam(0.01)
    opt.learning_rate = 0.5
    assert opt.learning_rate == 0.5 and isinstance(opt.learning_rate, float)
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = -1.0
    sched = O.SGD(S.ExponentialDecay(1.0, 1, 0.5))
    assert sched.learning_rate == 1.0
    sched.apply([np.ones(1)], [np.ones(1)])
    assert sched.learning_rate == 0.5  # reflects the schedule at the current iteration
    with pytest.raises(TypeError, match="schedule"):
        sched.learning_rate = 0.1
    zero_arg = O.SGD(lambda: 0.25)  # Keras 3 calls a callable without arguments
    assert zero_arg.learning_rate == 0.25


def test_schedule_values_by_hand():
    assert S.ExponentialDecay(1.0, 10, 0.5)(10) == pytest.approx(0.5)
    assert S.ExponentialDecay(1.0, 10, 0.5)(5) == pytest.approx(0.5 ** 0.5)
    assert S.ExponentialDecay(1.0, 10, 0.5, staircase=True)(19) == pytest.approx(0.5)
    c = S.CosineDecay(1.0, 10, alpha=0.2)
    assert c(0) == pytest.approx(1.0)
    assert c(5) == pytest.approx(0.2 + 0.8 * 0.5)
    assert c(10) == pytest.approx(0.2) and c(100) == pytest.approx(0.2)
    w = S.CosineDecay(0.0, 10, warmup_target=1.0, warmup_steps=4)
    assert w(2) == pytest.approx(0.5)
    assert w(4) == pytest.approx(1.0)
    assert w(9) == pytest.approx(0.5)
    assert w(1000) == pytest.approx(0.0, abs=1e-15)


def test_config_round_trip_is_json():
    for opt in [O.SGD(0.2, momentum=0.3, nesterov=True, clipvalue=1.0),
                O.Adam(S.CosineDecay(0.1, 100, warmup_target=0.2, warmup_steps=5), amsgrad=True),
                O.AdamW(0.003, weight_decay=0.01, global_clipnorm=2.0),
                O.RMSprop(S.ExponentialDecay(0.1, 3, 0.9, staircase=True), centered=True),
                O.Adagrad(0.05, initial_accumulator_value=0.2)]:
        blob = json.dumps(O.serialize(opt))
        again = O.get(json.loads(blob))
        assert type(again) is type(opt)
        assert again.get_config() == opt.get_config()
        assert again.learning_rate == opt.learning_rate
    with pytest.warns(UserWarning, match="callable"):
        cfg = O.SGD(lambda it: 0.3).get_config()
    assert cfg["learning_rate"] == 0.3


def test_get_by_name():
    assert isinstance(O.get("sgd"), O.SGD)
    assert isinstance(O.get("Adam"), O.Adam)
    assert isinstance(O.get("adamw"), O.AdamW)
    assert isinstance(O.get("rmsprop"), O.RMSprop)
    assert isinstance(O.get("adagrad"), O.Adagrad)
    opt = O.Adam()
    assert O.get(opt) is opt
    assert O.get("adam").learning_rate == 0.001 and O.get("sgd").learning_rate == 0.01
    with pytest.raises(ValueError, match=r"`optimizer`.*'adamax'.*'adam'"):
        O.get("adamax")
    with pytest.raises(TypeError, match="optimizer"):
        O.get(1.0)


# ------------------------------------------------------------------------------ Keras 3


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras/torch
def test_against_keras_optimizers():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    ks = keras.optimizers.schedules
    pairs = [
        (lambda: O.SGD(0.05, momentum=0.9, nesterov=True),
         lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)),
        (lambda: O.SGD(0.1, clipnorm=0.5),
         lambda: keras.optimizers.SGD(0.1, clipnorm=0.5)),
        (lambda: O.Adam(0.01, amsgrad=True, global_clipnorm=1.0),
         lambda: keras.optimizers.Adam(0.01, amsgrad=True, global_clipnorm=1.0)),
        (lambda: O.Adam(0.01, weight_decay=0.1, clipvalue=0.5),
         lambda: keras.optimizers.Adam(0.01, weight_decay=0.1, clipvalue=0.5)),
        (lambda: O.AdamW(S.CosineDecay(0.001, 4, warmup_target=0.01, warmup_steps=2)),
         lambda: keras.optimizers.AdamW(ks.CosineDecay(0.001, 4, warmup_target=0.01,
                                                       warmup_steps=2))),
        (lambda: O.RMSprop(0.01, momentum=0.5, centered=True),
         lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True)),
        (lambda: O.RMSprop(S.ExponentialDecay(0.01, 2, 0.5)),
         lambda: keras.optimizers.RMSprop(ks.ExponentialDecay(0.01, 2, 0.5))),
        (lambda: O.Adagrad(0.1, initial_accumulator_value=0.3),
         lambda: keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.3)),
    ]
    for ours_f, theirs_f in pairs:
        params0, steps = make_problem(scale=2.0, shrinking=True)
        ours, theirs = ours_f(), theirs_f()
        params = [p.astype(np.float32) for p in params0]
        variables = [keras.Variable(p.astype(np.float32)) for p in params0]
        for grads in steps:
            g32 = [g.astype(np.float32) for g in grads]
            ours.apply(g32, params)
            theirs.apply([keras.ops.convert_to_tensor(g) for g in g32], variables)
            for p, v in zip(params, variables):
                np.testing.assert_allclose(p, keras.ops.convert_to_numpy(v), rtol=1e-6,
                                           atol=1e-6, err_msg=type(ours).__name__)
        assert ours.iterations == int(keras.ops.convert_to_numpy(theirs.iterations))
        assert ours.learning_rate == pytest.approx(
            float(keras.ops.convert_to_numpy(theirs.learning_rate)), rel=1e-6)


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras/torch
def test_against_keras_schedules():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    ks = keras.optimizers.schedules
    pairs = [(S.ExponentialDecay(0.1, 3, 0.7), ks.ExponentialDecay(0.1, 3, 0.7)),
             (S.ExponentialDecay(0.1, 3, 0.7, True), ks.ExponentialDecay(0.1, 3, 0.7, True)),
             (S.CosineDecay(0.1, 7, alpha=0.05), ks.CosineDecay(0.1, 7, alpha=0.05)),
             (S.CosineDecay(0.0, 7, warmup_target=0.2, warmup_steps=3),
              ks.CosineDecay(0.0, 7, warmup_target=0.2, warmup_steps=3))]
    for ours, theirs in pairs:
        for step in [0, 1, 2, 3, 5, 9, 10, 20]:
            expected = float(keras.ops.convert_to_numpy(theirs(step)))
            assert ours(step) == pytest.approx(expected, rel=1e-6, abs=1e-9), (ours, step)
