"""The process in which tests/test_fuzz.py runs each fuzzed input, so that a crash, a hang or a
memory spike is seen from outside instead of taking the test run down with it.

Protocol: one JSON request per line on stdin, one JSON answer per line on stdout.
  {"op": "load", "loader": "npz" | "onnx" | "keras", "path": ...}
  {"op": "call", "spec": {...}}          (see ``run_call``)
  {"op": "selftest", "what": "abort" | "alloc", "bytes": n}   (the harness's own test)
Answer: {"outcome": "ok" | "raised", "type": ..., "bases": [...], "message": ...,
         "peak_rss": bytes above the resident size before the request, "problem": ...}
``problem`` is set when a call returned, but what it returned is wrong (compiled kernels
against the NumPy oracle). The address space is capped (RLIMIT_AS) once the imports are done,
so that an allocation the size a hostile header declares fails here instead of swapping the
machine.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import traceback
import warnings

import numpy as np

sys.path.insert(0, os.getcwd())

import fastlstm as fl                                   # noqa: E402
from fastlstm.convert import from_keras, from_onnx     # noqa: E402

try:                                                     # optional: imported before the cap
    import h5py  # noqa: F401
    import onnx  # noqa: F401
except ImportError:
    pass

LOADERS = {"npz": fl.load_model, "onnx": from_onnx, "keras": from_keras}


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    """Reset VmHWM (the peak resident size) where the kernel allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_load(req):
    model = LOADERS[req["loader"]](req["path"])
    # A model that loaded must also run, or refuse its input within the contract.
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    first = model.layers[0] if isinstance(model, fl.Sequential) and model.layers else model
    if isinstance(first, fl.layers.Embedding):          # token ids, not features
        x = np.arange(10).reshape(2, 5) % max(1, int(first.input_dim))
    if isinstance(model, fl.Sequential):
        model.predict(x, verbose=0)
    else:
        model(x)


# ------------------------------------------------------------------------------- layer calls

def _array(rng, a):
    """An argument array from its JSON description: shape, dtype, values, memory layout."""
    if a is None:
        return None
    if a.get("kind") == "list":
        return [_array(rng, e) for e in a["items"]]
    if a.get("kind") == "scalar":
        return a["value"]
    shape = tuple(a["shape"])
    dtype = np.dtype(a["dtype"])
    values = a.get("values", "normal")
    n = int(np.prod(shape, dtype=np.int64))
    if values == "normal":
        data = rng.standard_normal(n)
    elif values == "bool":
        data = rng.random(n) < 0.6
    elif values == "special":
        data = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 1e-40]), n)
    else:
        data = np.full(n, float(values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = data.astype(dtype).reshape(shape)
    layout = a.get("layout", "c")
    if layout == "f":
        data = np.asfortranarray(data)
    elif layout == "reversed":                     # negative strides on every axis
        data = np.ascontiguousarray(data[tuple(slice(None, None, -1) for _ in shape)])
        data = data[tuple(slice(None, None, -1) for _ in shape)]
    elif layout == "strided":                      # every other element of a larger array
        big = np.zeros(tuple(2 * s for s in shape), dtype)
        big[tuple(slice(None, None, 2) for _ in shape)] = data
        data = big[tuple(slice(None, None, 2) for _ in shape)]
    elif layout == "broadcast" and data.ndim:      # a zero stride on the first axis
        data = np.broadcast_to(data[:1], data.shape)
    elif layout == "unaligned" and data.size:      # data at an odd byte offset
        raw = np.zeros(data.nbytes + 1, np.uint8)
        view = raw[1:].view(dtype).reshape(shape)
        view[...] = data
        data = view
    elif layout == "readonly":
        data.flags.writeable = False
    elif layout == "list":
        data = data.tolist()
    return data


def _make_layer(spec):
    kind = spec["layer"]
    opts = dict(spec.get("options", {}))
    units = spec["units"]
    if kind == "Bidirectional":
        inner = getattr(fl.layers, spec["inner"])(units, seed=3, **opts)
        return fl.layers.Bidirectional(inner, merge_mode=spec.get("merge_mode", "concat"))
    return getattr(fl.layers, kind)(units, seed=3, **opts)


def _compare(got, want, dtype):
    """None when `got` (compiled) matches `want` (oracle), else a description."""
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            return f"structure differs: {type(got).__name__} vs {type(want).__name__}"
        for g, w in zip(got, want):
            p = _compare(g, w, dtype)
            if p:
                return p
        return None
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"shape/dtype {got.shape} {got.dtype} vs oracle {want.shape} {want.dtype}"
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return "NaN positions differ from the oracle"
    fin = np.isfinite(want)
    if not np.array_equal(fin, np.isfinite(got)):
        return "inf positions differ from the oracle"
    tol = 1e-3 if np.dtype(dtype) == np.float32 else 1e-9
    if fin.any():
        scale = max(1.0, float(np.abs(want[fin]).max()))
        err = float(np.abs(got[fin].astype(np.float64) - want[fin]).max())
        if err > tol * scale:
            return f"max error {err:.3g} against the oracle (scale {scale:.3g})"
    return None


def _invoke(layer, spec, args):
    if spec["method"] == "call":
        return layer(args["x"], mask=args["mask"], initial_state=args["initial_state"],
                     training=spec.get("training", False))
    if spec["method"] == "forward_train":
        out, backprop = layer.forward_train(args["x"], mask=args["mask"],
                                            initial_state=args["initial_state"])
        d = out[0] if isinstance(out, list) else out
        g = backprop(np.ones_like(np.asarray(d)))
        return [out, g.inputs] + list(g.weights)
    # "step": a sequence of steps from the layer's own initial state or the given one
    states = args["initial_state"]
    outs = []
    for _ in range(spec.get("steps", 1)):
        if states is None:
            B = np.shape(args["x"])[0] if np.ndim(args["x"]) >= 1 else 1
            states = layer.get_initial_state(B)
        y, states = layer.step(args["x"], states)
        outs.append(np.array(y, copy=True))
    return outs + list(states)


def run_call(req):
    """Build the layer from its options, run one public call with the described arguments on
    the compiled backend; if it returns, run it again on the NumPy oracle and compare."""
    spec = req["spec"]
    rng = np.random.default_rng(spec["seed"])
    args = {k: _array(rng, spec.get(k)) for k in ("x", "mask", "initial_state")}
    layer = _make_layer(spec)
    if spec.get("prebuild"):
        layer.build(tuple(spec["prebuild"]))
    got = _invoke(layer, spec, args)
    if not spec.get("compare", True):
        return None
    oracle = _make_layer(spec)              # the same seed: the same initial weights
    if spec.get("prebuild"):
        oracle.build(tuple(spec["prebuild"]))
    with fl.use_backend("numpy"):
        want = _invoke(oracle, spec, args)
        mine, theirs = layer.get_weights(), oracle.get_weights()
        if len(mine) != len(theirs) or any(not np.array_equal(a, b) for a, b in zip(mine, theirs)):
            oracle.set_weights(mine)
            want = _invoke(oracle, spec, args)
    return _compare(got, want, layer.dtype)


def main():
    limit = int(os.environ.get("FASTLSTM_FUZZ_MEMORY", str(1 << 30)))
    can_reset = _reset_peak()
    base_vm = _status("VmSize")
    resource.setrlimit(resource.RLIMIT_AS, (base_vm + limit, base_vm + limit))
    print(json.dumps({"ready": True, "peak_reset": can_reset}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        base = _status("VmRSS")
        _reset_peak()
        answer = {"outcome": "ok", "problem": None}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if req["op"] == "load":
                    run_load(req)
                elif req["op"] == "selftest":         # the harness's own test
                    if req["what"] == "abort":
                        os.abort()
                    np.ones(req["bytes"], np.uint8)
                else:
                    answer["problem"] = run_call(req)
        except BaseException as exc:           # reported to the test, which judges it
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            answer = {"outcome": "raised", "type": type(exc).__name__,
                      "bases": [c.__name__ for c in type(exc).__mro__],
                      "message": str(exc)[:2000],
                      "traceback": traceback.format_exc()[-4000:], "problem": None}
        answer["peak_rss"] = (_status("VmHWM") - base) if can_reset else 0
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
