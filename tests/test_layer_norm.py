"""Layer-normalized cells (haste's LayerNormLSTM / LayerNormGRU, and the SimpleRNN) in the
functional ops: the oracle against a PyTorch autograd composition of the cell equations
(outputs, final states, every gradient). tests/test_layer_norm_ops.py has the rest (finite
differences, the compiled kernels against the oracle), without PyTorch."""
import numpy as np
import pytest

import fastlstm as fl
from conftest import seed_of
from layer_norm_cases import (CELLS, _is_lstm, assert_close, output_weights, problem,
                              run_op, split_case)

torch = pytest.importorskip("torch")
F = torch.nn.functional


# -- the reference: the cell equations in PyTorch, float64, autograd ----------------------

def torch_reference(cell, p, opts, grads, go_backwards=False, return_sequences=True,
                    activation="tanh", bf16=False):
    """The same outputs and gradients from the equations written out per step; ``bf16``
    rounds each product's operands to bfloat16 (straight through for the gradients)."""
    t = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in p.items()}
    o = {k: torch.tensor(np.asarray(v, np.float64) if k != "mask" else v)
         for k, v in opts.items() if k not in ("zoneout", "sequence_lengths")}
    act = {"tanh": torch.tanh, "softsign": F.softsign}[activation]
    sig = torch.sigmoid
    T, B, _ = t["x"].shape
    H = t["recurrent_kernel"].shape[0]
    mask = o.get("mask")
    if "sequence_lengths" in opts:
        mask = torch.tensor(np.arange(T)[:, None] < opts["sequence_lengths"][None, :])

    def rnd(v):
        return v + (v.to(torch.bfloat16).to(torch.float64) - v).detach() if bf16 else v

    def mm(a, b):
        return rnd(a) @ rnd(b)

    def ln(v):
        return F.layer_norm(v, (v.shape[-1],), eps=1e-5)

    x = t["x"] * o["input_dropout_mask"] if "input_dropout_mask" in o else t["x"]
    h = t["h0"] if "h0" in t else torch.zeros(B, H, dtype=torch.float64)
    c = t["c0"] if "c0" in t else torch.zeros(B, H, dtype=torch.float64)
    g, b, P = t["gamma"], t.get("bias"), t.get("peephole")
    out = torch.zeros(B, H, dtype=torch.float64)
    ys = []
    for s in range(T):
        tt = T - 1 - s if go_backwards else s
        hin = h * o["recurrent_dropout_mask"] if "recurrent_dropout_mask" in o else h
        xp, hp = ln(mm(x[tt], t["kernel"])) * g[0], ln(mm(hin, t["recurrent_kernel"])) * g[1]
        c_new = c
        if _is_lstm(cell):
            z = xp + hp + (b if b is not None else 0)
            if "cifg" in cell:
                zf, zc, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:]
                zi = None
            else:
                zi, zf, zc, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            if P is not None:
                zf = zf + P[1] * c
                zi = None if zi is None else zi + P[0] * c
            f = sig(zf)
            i = 1 - f if zi is None else sig(zi)
            c_new = f * c + i * act(zc)
            if P is not None:
                zo = zo + P[2] * c_new
            h_new = sig(zo) * act(ln(c_new) * t["gamma_h"] + t["beta_h"])
        elif cell == "gru":
            xz = xp + (b[0] if b is not None else 0)
            hz = hp + (b[1] if b is not None else 0)
            z = sig(xz[:, :H] + hz[:, :H])
            r = sig(xz[:, H:2 * H] + hz[:, H:2 * H])
            n = act(xz[:, 2 * H:] + r * hz[:, 2 * H:])
            h_new = z * h + (1 - z) * n
        else:
            h_new = act(xp + hp + (b if b is not None else 0))
        if "zoneout" in opts:
            keep = o["zoneout_mask"][s] if "zoneout_mask" in o else 1 - opts["zoneout"]
            h_new = h + keep * (h_new - h)
        if mask is not None:
            m = mask[tt][:, None]
            h_new = torch.where(m, h_new, h)
            c_new = torch.where(m, c_new, c)
            out = torch.where(m, h_new, out)
        else:
            out = h_new
        h, c = h_new, c_new
        ys.append(out)
    y = torch.stack(ys) if return_sequences else out
    outs = [y, h] + ([c] if _is_lstm(cell) else [])
    loss = sum((a * torch.tensor(np.asarray(w, np.float64))).sum()
               for a, w in zip(outs, grads))
    loss.backward()
    return ([a.detach().numpy() for a in outs],
            {k: (v.grad.numpy() if v.grad is not None else np.zeros(v.shape))
             for k, v in t.items()})


REFERENCE_CASES = {
    "plain": dict(),
    "mask_backwards": dict(mask="gaps", go_backwards=True),
    "dropout_states": dict(dropout=True),
    "no_state_no_bias": dict(states=False, use_bias=False),
    "last_output_prefix": dict(mask="prefix", return_sequences=False),
    "lengths_zoneout_backwards": dict(mask="lengths", zoneout="train", go_backwards=True,
                                      dropout=True),
    "softsign_zoneout_inference": dict(zoneout="infer", activation="softsign", mask="gaps"),
}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_oracle_matches_pytorch(cell, case):
    opts_kw, flags = split_case(REFERENCE_CASES[case])
    seed = seed_of(cell, case, "ln-torch")
    T, B, I, H = 5, 4, 3, 6
    p, opts = problem(cell, np.float64, T, B, I, H, seed, **opts_kw)
    rs = flags.get("return_sequences", True)
    w = output_weights(cell, seed, T, B, H, rs)
    ref_out, ref_grads = torch_reference(cell, p, opts, w, flags.get("go_backwards", False),
                                         rs, flags.get("activation", "tanh"))
    with fl.use_backend("numpy"):
        outs, grads = run_op(cell, p, opts, training=True, grads=w, **flags)
    for a, e, name in zip(outs, ref_out, ["y", "h", "c"]):
        assert_close(a, e, np.float64, name)
    assert set(grads) == set(ref_grads)
    for name in grads:
        assert grads[name] is not None, name
        assert_close(grads[name], ref_grads[name], np.float64, name)
    if "zoneout_mask" not in opts:              # the inference forward: the same outputs
        with fl.use_backend("numpy"):
            outs_inf, _ = run_op(cell, p, opts, training=False, **flags)
        for a, e in zip(outs_inf, outs):
            assert_close(a, e, np.float64)


@pytest.mark.parametrize("cell", ["lstm_peephole", "gru", "simple_rnn"])
def test_oracle_mixed_bfloat16_matches_pytorch_with_bf16_operands(cell):
    """mixed: the products take bf16 operands (float32 sums), LN and the gates float32."""
    seed = seed_of(cell, "ln-mixed")
    T, B, I, H = 5, 4, 3, 8
    p, opts = problem(cell, np.float32, T, B, I, H, seed, mask="gaps")
    w = output_weights(cell, seed, T, B, H, True, np.float32)
    ref_out, ref_grads = torch_reference(cell, p, opts, w, bf16=True)
    exact_out, _ = torch_reference(cell, p, opts, w)
    with fl.use_backend("numpy"):
        outs, grads = run_op(cell, p, opts, training=True, grads=w, mixed=True)
    for a, e, x in zip(outs, ref_out, exact_out):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, e, rtol=0, atol=2e-3)
        assert np.abs(a - x).max() > 1e-5           # the bf16 rounding took effect
    for name in grads:                              # gradients of bf16 products: bf16 error
        scale = np.abs(ref_grads[name]).max()
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=0,
                                   atol=3e-2 * scale + 1e-4, err_msg=name)
