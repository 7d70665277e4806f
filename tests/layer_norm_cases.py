"""The problems of the layer-normalized cells' tests (tests/test_layer_norm*.py): the
arrays and options of one op call, the output weights of its loss, and the call itself with
every gradient by name; and the float32 bounds of LN's comparisons."""
import numpy as np

import fastlstm as fl
from conftest import TOL
from conftest import assert_close as _assert_close

# LN divides each row by its standard deviation: on rows of 5 to 20 units whose variance is
# small, float32 rounding is amplified in the gradients. Against float64 (tests here, seeds
# of test_cpu_matches_oracle) the oracle's float32 gradients were off by up to 6e-5 of the
# array's largest value and the kernels' by up to 2.2e-4; float64 keeps TOL's bounds.
LN_TOL = {np.dtype(np.float32): dict(TOL[np.dtype(np.float32)], scale=5e-4),
          np.dtype(np.float64): TOL[np.dtype(np.float64)]}


def assert_close(actual, expected, dtype=None, name="", table=LN_TOL):
    _assert_close(actual, expected, dtype, name, table)


CELLS = ["lstm", "lstm_peephole", "lstm_cifg", "lstm_cifg_peephole", "gru", "simple_rnn"]
#: parameters in the order the gradients are compared (Grads field of each)
FIELDS = {"x": "inputs", "h0": "h0", "c0": "c0", "kernel": "kernel",
          "recurrent_kernel": "recurrent_kernel", "bias": "bias", "peephole": "peephole",
          "gamma": "gamma", "gamma_h": "gamma_h", "beta_h": "beta_h"}


def _is_lstm(cell):
    return cell.startswith("lstm")


def _blocks(cell):
    return {"lstm": 4, "lstm_peephole": 4, "lstm_cifg": 3, "lstm_cifg_peephole": 3,
            "gru": 3, "simple_rnn": 1}[cell]


def problem(cell, dtype, T, B, I, H, seed, mask="none", dropout=False, states=True,
            zoneout=None, use_bias=True):
    """The arrays and options of one op call. mask: none, gaps (any pattern), prefix (a
    prefix mask) or lengths (sequence_lengths); zoneout: None, "train" (keep masks) or
    "infer" (the rate alone)."""
    rng = np.random.default_rng(seed)
    G = _blocks(cell) * H
    p = dict(x=rng.standard_normal((T, B, I)), kernel=rng.standard_normal((I, G)) * 0.6,
             recurrent_kernel=rng.standard_normal((H, G)) * 0.6,
             gamma=1 + 0.5 * rng.standard_normal((2, G)))
    if use_bias:
        p["bias"] = rng.standard_normal((2, G) if cell == "gru" else G) * 0.3
    if states:
        p["h0"] = rng.standard_normal((B, H)) * 0.5
        if _is_lstm(cell):
            p["c0"] = rng.standard_normal((B, H))
    if _is_lstm(cell):
        p["gamma_h"] = 1 + 0.5 * rng.standard_normal(H)
        p["beta_h"] = 0.3 * rng.standard_normal(H)
        if cell.endswith("peephole"):
            p["peephole"] = rng.standard_normal((3, H)) * 0.5
    opts = {}
    if mask == "gaps":
        m = rng.random((T, B)) > 0.3
        m[:, 0] = True                      # one full row beside the gaps
        opts["mask"] = m
    elif mask in ("prefix", "lengths"):
        lengths = rng.integers(0, T + 1, B)
        lengths[0] = T
        if mask == "lengths":
            opts["sequence_lengths"] = lengths
        else:
            opts["mask"] = np.arange(T)[:, None] < lengths[None, :]
    if dropout:
        opts["input_dropout_mask"] = (rng.random((B, I)) > 0.3) / 0.7
        opts["recurrent_dropout_mask"] = (rng.random((B, H)) > 0.3) / 0.7
    if zoneout is not None:
        opts["zoneout"] = 0.3
        if zoneout == "train":
            opts["zoneout_mask"] = (rng.random((T, B, H)) >= 0.3).astype(float)
    cast = lambda v: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
    return {k: cast(v) for k, v in p.items()}, {k: cast(v) for k, v in opts.items()}


def output_weights(cell, seed, T, B, H, return_sequences, dtype=np.float64):
    """Weights of a loss sum(y * wy) + sum(h_T * wh) (+ sum(c_T * wc)): the gradients of the
    outputs given to the backward."""
    rng = np.random.default_rng(seed + 11)
    w = [rng.standard_normal((T, B, H) if return_sequences else (B, H)),
         rng.standard_normal((B, H))]
    if _is_lstm(cell):
        w.append(rng.standard_normal((B, H)))
    return [a.astype(dtype) for a in w]


def run_op(cell, p, opts, *, training, grads=None, **flags):
    """Outputs [y, h_T(, c_T)] and, with ``grads`` (the output weights), the gradients of
    every parameter in ``p`` by name."""
    args = (p["x"], p["kernel"], p["recurrent_kernel"], p.get("bias"), p.get("h0"))
    if _is_lstm(cell):
        y, h, c, cache = fl.ops.lstm_forward(
            *args, p.get("c0"), peephole=p.get("peephole"),
            coupled_input_forget="cifg" in cell,
            layer_norm=(p["gamma"], p["gamma_h"], p["beta_h"]), training=training,
            **opts, **flags)
        outs = [y, h, c]
    else:
        f = fl.ops.gru_forward if cell == "gru" else fl.ops.simple_rnn_forward
        y, h, cache = f(*args, layer_norm=p["gamma"], training=training, **opts, **flags)
        outs = [y, h]
    if grads is None:
        return outs, None
    if _is_lstm(cell):
        g = fl.ops.lstm_backward(cache, *grads)
    else:
        g = (fl.ops.gru_backward if cell == "gru" else fl.ops.simple_rnn_backward)(
            cache, *grads)
    return outs, {name: getattr(g, FIELDS[name]) for name in p}


def split_case(case):
    """(problem's keyword arguments, the op's flags) of a case's options."""
    case = dict(case)
    flags = {k: case.pop(k) for k in ("go_backwards", "return_sequences", "activation")
             if k in case}
    return case, flags
