"""PyTorch <-> fastlstm: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (and their cells) as layers.

PyTorch keeps ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)`` and two biases per direction and
layer. LSTM gates ``[i|f|g|o]`` are Keras's ``[i|f|c|o]``: kernel = ``weight_ih.T`` and the
two biases add up. GRU gates ``[r|z|n]`` reorder to ``[z|r|h]``, and PyTorch's GRU is the
reset-after form (``b_hn`` inside the reset product), so its two biases become the rows of
fastlstm's ``bias (2, 3H)``. Vanilla RNN: like the LSTM, one gate.
"""
from __future__ import annotations

import re

import numpy as np

from ._common import (TORCH_GRU, ConversionError, assemble, blocks, fl_layers, flag, layers_of,
                      listing, new_layer, real_array, require, resolve_dtype, rnn_kind,
                      set_built_weights)

__all__ = ["from_torch", "to_torch"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_FL_KIND = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "SimpleRNN"}
_TORCH_KIND = {v: k for k, v in _FL_KIND.items()}
_CONFIG_KEYS = {"type", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                "dropout", "bidirectional", "proj_size", "nonlinearity"}
_TYPES = ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")


# -- PyTorch -> fastlstm -------------------------------------------------------------------
def _to_numpy(t):
    if isinstance(t, np.ndarray):
        return t
    if hasattr(t, "detach"):                      # a torch tensor, without importing torch
        t = t.detach().cpu()
        if str(t.dtype) not in ("torch.float32", "torch.float64") and not t.is_complex():
            t = t.float()                         # half / bfloat16 have no NumPy twin
        return t.numpy()                          # complex stays complex, to be refused
    return np.asarray(t)


def _module_config(module):
    torch = require("torch", "fastlstm.convert.from_torch")
    nn = torch.nn
    for cls in (nn.LSTM, nn.GRU, nn.RNN):
        if isinstance(module, cls):
            # bool(): a module keeps flags as given (nn.GRU(3, 4, bidirectional=1) is accepted)
            cfg = dict(type=cls.__name__, input_size=module.input_size,
                       hidden_size=module.hidden_size, num_layers=module.num_layers,
                       bias=bool(module.bias), batch_first=bool(module.batch_first),
                       dropout=float(module.dropout), bidirectional=bool(module.bidirectional),
                       proj_size=getattr(module, "proj_size", 0))
            if cls is nn.RNN:
                cfg["nonlinearity"] = module.nonlinearity
            return cfg
    for cls in (nn.LSTMCell, nn.GRUCell, nn.RNNCell):
        if isinstance(module, cls):
            cfg = dict(type=cls.__name__, input_size=module.input_size,
                       hidden_size=module.hidden_size, bias=bool(module.bias))
            if cls is nn.RNNCell:
                cfg["nonlinearity"] = module.nonlinearity
            return cfg
    raise TypeError("from_torch: expected nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, "
                    f"nn.RNNCell, or a state_dict with config=..., got {type(module).__name__}")


def _check_config(config):
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    unknown = set(config) - _CONFIG_KEYS
    if unknown:
        raise ConversionError(f"config: unknown keys {sorted(unknown)}; known: "
                              f"{sorted(_CONFIG_KEYS)}")
    kind = config.get("type")
    if kind not in _TYPES:
        raise ValueError(f"config['type']: expected one of {list(_TYPES)}, got {kind!r}")
    cfg = dict(num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False,
               proj_size=0, nonlinearity="tanh")
    cfg.update(config)
    P = cfg["proj_size"]
    if isinstance(P, bool) or not isinstance(P, (int, np.integer)) or P < 0:
        raise ValueError(f"config['proj_size']: expected a non-negative integer, got {P!r}")
    if P and kind != "LSTM":
        raise ConversionError(f"config['proj_size']: nn.{kind} has none (only nn.LSTM "
                              "projects its hidden state)")
    if "nonlinearity" in config and kind not in ("RNN", "RNNCell"):
        raise ConversionError(f"config['nonlinearity']: nn.{kind} has none (only nn.RNN and "
                              "nn.RNNCell take it)")
    if cfg["nonlinearity"] not in ("tanh", "relu"):
        raise ConversionError(f"config['nonlinearity']: expected 'tanh' or 'relu', got "
                              f"{cfg['nonlinearity']!r}")
    for k in ("bias", "batch_first", "bidirectional"):
        flag(cfg[k], f"config[{k!r}]")         # bool("False") would be True
    if kind.endswith("Cell"):
        for k, default in (("num_layers", 1), ("bidirectional", False), ("dropout", 0.0),
                           ("batch_first", False)):
            if config.get(k, default) != default:
                raise ConversionError(f"config[{k!r}]: a {kind} has no {k}")
    for k in ("num_layers", "input_size", "hidden_size"):
        n = cfg.get(k)        # the sizes may be left out: the state_dict's shapes tell them
        if n is None and k != "num_layers":
            continue
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"config[{k!r}]: expected a positive integer, got {n!r}")
    p = cfg["dropout"]
    if not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"config['dropout']: expected a float in [0, 1), got {p!r}")
    return cfg


def _expected_keys(cfg):
    """[(layer, suffix, {name: key})] in PyTorch's naming."""
    if cfg["type"].endswith("Cell"):
        return [(0, "", {n: n for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})]
    out = []
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") + (
        ("weight_hr",) if cfg["proj_size"] else ())
    for k in range(cfg["num_layers"]):
        for sfx in (("", "_reverse") if cfg["bidirectional"] else ("",)):
            out.append((k, sfx, {n: f"{n}_l{k}{sfx}" for n in names}))
    return out


def _direction_weights(kind, sd, names, use_bias, H):
    """fastlstm weights of one direction from PyTorch's four tensors (sums in float64)."""
    w_ih = sd[names["weight_ih"]].astype(np.float64)
    w_hh = sd[names["weight_hh"]].astype(np.float64)
    if kind == "GRU":
        ws = [blocks(w_ih, TORCH_GRU, 3).T, blocks(w_hh, TORCH_GRU, 3).T]
        if use_bias:
            ws.append(np.stack([blocks(sd[names["bias_ih"]], TORCH_GRU, 3),
                                blocks(sd[names["bias_hh"]], TORCH_GRU, 3)]).astype(np.float64))
        return ws
    ws = [w_ih.T, w_hh.T]
    if use_bias:
        ws.append(sd[names["bias_ih"]].astype(np.float64) + sd[names["bias_hh"]])
    if "weight_hr" in names:                 # proj_size: the projection [P,H] -> (H, P)
        ws.append(sd[names["weight_hr"]].astype(np.float64).T)
    return ws


def from_torch(module, example_input=None, dtype=None, config=None):
    """A fastlstm layer or model computing what a PyTorch recurrent module computes.

    ``module``: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` (tanh or relu) with any ``num_layers``,
    ``bidirectional``, ``batch_first``, ``bias`` and ``dropout``; or ``nn.LSTMCell`` /
    ``nn.GRUCell`` / ``nn.RNNCell``; or a ``state_dict`` (tensors or NumPy arrays) together
    with ``config={"type": "LSTM", "input_size": ..., "hidden_size": ..., "num_layers": ...,
    "bidirectional": ..., "bias": ..., "batch_first": ..., "dropout": ..., "nonlinearity":
    ...}`` (PyTorch's constructor arguments; ``type`` one of LSTM, GRU, RNN, LSTMCell,
    GRUCell, RNNCell). A state_dict needs no PyTorch installed.

    Returns the smallest fastlstm object that computes the module's first output, in
    batch-major form whatever ``batch_first`` was: one layer (``return_sequences=True``), a
    ``Bidirectional(..., merge_mode="concat")`` for one bidirectional layer, or an
    ``fl.Sequential`` for a stack (with ``fl.layers.Dropout(dropout)`` between layers, as
    PyTorch applies it in training). A cell becomes the layer over sequences whose ``step``
    is the cell's call: ``y, [h, c] = layer.step(x_t, [h, c])`` equals ``h, c = cell(x_t,
    (h, c))``. ``dtype``: float32 or float64; default the module's (float64 stays float64,
    anything else becomes float32).

    ``nn.LSTM(proj_size=P)`` becomes ``LSTM(units, proj_size=P)`` (``weight_hr`` its
    ``projection_kernel``, transposed). Raises ``ConversionError`` for keys or options it
    cannot map.

    A whole model (any other ``nn.Module``, e.g. an ``nn.LSTM`` under a ``nn.Linear`` head)
    needs ``example_input``, one tensor of the shape and dtype it is called with (float
    ``(batch, time, features)``, or integer token ids for an ``nn.Embedding``). The module is
    exported to ONNX in memory (``torch.onnx.export``, the TorchScript exporter, in
    evaluation mode) and read back by :func:`fastlstm.convert.from_onnx`, which maps
    recurrent layers, ``Linear`` heads with their activations, ``Embedding``, the last time
    step ``out[:, -1]`` of a one-direction layer, and the final states ``h_n[-1]`` (or
    ``torch.cat([h_n[-2], h_n[-1]], 1)`` of a bidirectional one); other operators raise
    ``ConversionError`` naming them. The result is then run on ``example_input`` and
    compared with the module's own output, and a difference beyond rounding raises
    ``ConversionError`` (for example control flow that the export traced one way).
    """
    if example_input is not None or (config is None and not isinstance(module, dict)
                                      and not _is_recurrent_module(module)):
        return _from_torch_module(module, example_input, dtype)
    if config is None:
        if isinstance(module, dict):
            raise TypeError("from_torch: a state_dict needs config={'type': 'LSTM', "
                            "'input_size': ..., 'hidden_size': ..., ...}")
        cfg = _check_config(_module_config(module))
        state = module.state_dict()
    else:
        if not hasattr(module, "keys"):
            raise TypeError(f"from_torch: with config=..., expected a state_dict (a mapping of "
                            f"names to tensors), got {type(module).__name__}")
        cfg = _check_config(config)
        state = module
    sd = {k: real_array(_to_numpy(v), f"from_torch: {k}") for k, v in state.items()}
    kind = cfg["type"].replace("Cell", "")
    G = _GATES[kind]

    if not cfg["type"].endswith("Cell"):
        # Before naming every expected key: a huge num_layers must not exhaust memory.
        held = {m.group(1) for k in sd
                if (m := re.fullmatch(r"(?:weight|bias)_[ih]h_l(\d+)(?:_reverse)?", k))}
        n_held = len(held)
        if cfg["num_layers"] > n_held:
            raise ConversionError(f"from_torch: config num_layers={cfg['num_layers']}, but the "
                                  f"state_dict holds weights of {n_held} layer(s)")
    expected = _expected_keys(cfg)
    wanted = {key for _, _, names in expected for n, key in names.items()
              if cfg["bias"] or not n.startswith("bias")}
    missing = sorted(wanted - set(sd))
    extra = sorted(set(sd) - wanted)
    if extra and any("weight_hr" in k for k in extra):
        raise ConversionError("from_torch: the state_dict has projection weights "
                              f"({listing(k for k in extra if 'weight_hr' in k)}) but the "
                              "config has no proj_size (give config['proj_size'])")
    if missing or extra:
        raise ConversionError(f"from_torch: state_dict keys do not match the config "
                              f"(type={cfg['type']}, num_layers={cfg['num_layers']}, "
                              f"bidirectional={cfg['bidirectional']}, bias={cfg['bias']}): "
                              f"missing {listing(missing)}, unexpected {listing(extra)}")

    first = sd[expected[0][2]["weight_ih"]]
    dt = resolve_dtype(dtype, first.dtype)
    H = cfg.get("hidden_size") or first.shape[0] // G
    P = cfg["proj_size"]
    O = P or H                                    # the features of h and of the outputs
    I = cfg.get("input_size") or first.shape[1]
    D = 2 if cfg["bidirectional"] else 1
    for k, sfx, names in expected:
        in_dim = I if k == 0 else D * O
        shapes = {"weight_ih": (G * H, in_dim), "weight_hh": (G * H, O),
                  "bias_ih": (G * H,), "bias_hh": (G * H,), "weight_hr": (P, H)}
        for n, key in names.items():
            if key in sd and sd[key].shape != shapes[n]:
                raise ConversionError(f"from_torch: {key} has shape {sd[key].shape}, expected "
                                      f"{shapes[n]} for input_size={in_dim}, hidden_size={H}")

    purpose = "from_torch"
    out = []
    for k in range(cfg["num_layers"]):
        dirs = [e for e in expected if e[0] == k]
        in_dim = I if k == 0 else D * O
        ws = []
        for _, _, names in dirs:
            ws += _direction_weights(kind, sd, names, cfg["bias"], H)
        layer = _new_rnn(kind, H, cfg, dt, purpose)
        if D == 2:
            layer = new_layer("Bidirectional", purpose, layer=layer, merge_mode="concat")
        set_built_weights(layer, (None, None, in_dim), [w.astype(dt) for w in ws])
        if k > 0 and cfg["dropout"] > 0:
            out.append(new_layer("Dropout", purpose, rate=float(cfg["dropout"]), dtype=dt.name))
        out.append(layer)
    return assemble(out)


def _is_recurrent_module(module):
    torch = require("torch", "fastlstm.convert.from_torch")
    nn = torch.nn
    return isinstance(module, (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell))


def _from_torch_module(module, example_input, dtype):
    """A whole ``nn.Module`` by way of ONNX (see ``from_torch``)."""
    import io
    import warnings
    torch = require("torch", "fastlstm.convert.from_torch")
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected an nn.Module (or a state_dict with config=...), "
                        f"got {type(module).__name__}")
    if _is_recurrent_module(module):
        raise TypeError(f"from_torch: example_input is for whole models; an "
                        f"{type(module).__name__} converts without it")
    if example_input is None:
        raise TypeError(f"from_torch: converting a whole {type(module).__name__} needs "
                        "example_input, a tensor it is called with (e.g. torch.randn(batch, "
                        "time, features)); a recurrent module alone (nn.LSTM, ...) needs none")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"from_torch: example_input: expected a torch.Tensor, got "
                        f"{type(example_input).__name__}")
    if example_input.ndim not in (2, 3):
        raise ValueError(f"from_torch: example_input: expected (batch, time, features) or "
                         f"integer (batch, time), got shape {tuple(example_input.shape)}")
    from ._onnx_import import from_onnx
    was_training = module.training
    module.eval()
    try:
        buf = io.BytesIO()
        axes = {0: "batch", 1: "time"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(module, (example_input,), buf, dynamo=False,
                                  input_names=["input"], output_names=["output"],
                                  dynamic_axes={"input": axes})
            except Exception as exc:
                raise ConversionError(f"from_torch: {type(module).__name__} could not be "
                                      f"exported to ONNX ({type(exc).__name__}: {exc})") from None
        converted = from_onnx(buf.getvalue(), dtype=dtype)
        with torch.no_grad():
            want = module(example_input)
    finally:
        module.train(was_training)
    if not isinstance(want, torch.Tensor):
        raise ConversionError(f"from_torch: {type(module).__name__} returns "
                              f"{type(want).__name__}; only a module with one tensor output "
                              "converts (its first output would be all that is kept)")
    both64 = want.dtype == torch.float64 and _first_dtype(converted) == np.float64
    want = _to_numpy(want).astype(np.float64)
    x = example_input.detach().cpu()
    x = x.numpy() if not x.is_floating_point() else _to_numpy(x)   # token ids stay integers
    got = np.asarray(converted.predict(x) if hasattr(converted, "predict") else converted(x),
                     dtype=np.float64)
    tol = 1e-9 if both64 else 1e-4
    if got.shape != want.shape or not np.allclose(got, want, rtol=tol, atol=tol * max(
            1.0, float(np.abs(want).max(initial=0.0)))):
        diff = (f"shape {got.shape} against {want.shape}" if got.shape != want.shape else
                f"max |difference| {float(np.abs(got - want).max()):.3g}")
        raise ConversionError(f"from_torch: the converted model does not reproduce "
                              f"{type(module).__name__} on example_input ({diff}); its forward "
                              "may hold what ONNX export traces one way only (control flow, "
                              "state kept between calls)")
    return converted


def _first_dtype(converted):
    layers = getattr(converted, "layers", None) or [converted]
    return np.dtype(layers[0].dtype)


def _new_rnn(kind, H, cfg, dt, purpose):
    common = dict(units=H, use_bias=bool(cfg["bias"]), return_sequences=True, dtype=dt.name)
    if kind == "LSTM":
        if cfg["proj_size"]:
            common["proj_size"] = int(cfg["proj_size"])
        return new_layer("LSTM", purpose, **common)
    if kind == "GRU":
        return new_layer("GRU", purpose, reset_after=True, **common)
    return new_layer("SimpleRNN", purpose, activation=cfg["nonlinearity"], **common)


# -- fastlstm -> PyTorch -------------------------------------------------------------------
def _layer_name(layer):
    return f"{type(layer).__name__} {layer.name!r}"


def _describe(layer, drop_training_options):
    """(kind, units, use_bias, nonlinearity, [direction layers]) of one recurrent stage."""
    L_bidir = getattr(fl_layers(), "Bidirectional", None)
    if L_bidir is not None and isinstance(layer, L_bidir):
        if layer.merge_mode != "concat":
            raise ConversionError(f"to_torch: {_layer_name(layer)} has merge_mode="
                                  f"{layer.merge_mode!r}; a bidirectional nn module concatenates "
                                  "(merge_mode='concat')")
        f, b = layer.forward_layer, layer.backward_layer
        if f.go_backwards or not b.go_backwards:
            raise ConversionError(f"to_torch: {_layer_name(layer)} runs its forward layer "
                                  "backwards; PyTorch's first direction runs forwards")
        df = _describe_rnn(f, drop_training_options, in_bidirectional=True)
        db = _describe_rnn(b, drop_training_options, in_bidirectional=True)
        if df[:4] != db[:4]:
            raise ConversionError(f"to_torch: the two directions of {_layer_name(layer)} "
                                  f"differ ({df[:4]} vs {db[:4]}); PyTorch's are alike")
        return df[:4] + ([f, b],)
    return _describe_rnn(layer, drop_training_options, in_bidirectional=False)


def _describe_rnn(layer, drop_training_options, in_bidirectional):
    kind = rnn_kind(layer)
    if kind is None:
        raise ConversionError(f"to_torch: {_layer_name(layer)} has no PyTorch recurrent "
                              "equivalent; to_torch converts LSTM, GRU, SimpleRNN, their "
                              "Bidirectional wrappers, and Dropout between them")
    name = _layer_name(layer)

    def no(option, value, why):
        raise ConversionError(f"to_torch: {name} has {option}={value!r}: {why}")

    act = layer.activation.name
    if getattr(layer, "layer_norm", False):
        no("layer_norm", True, f"PyTorch has no layer-normalized nn.{_TORCH_KIND[kind]}")
    if getattr(layer, "zoneout", 0):
        no("zoneout", layer.zoneout, f"nn.{_TORCH_KIND[kind]} has no zoneout, and it changes "
           "inference too (h_t = (1-p) h~_t + p h_{t-1})")
    if kind == "LSTM":
        if layer.use_peepholes:
            no("use_peepholes", True, "nn.LSTM has no peephole connections")
        if layer.coupled_input_forget:
            no("coupled_input_forget", True, "nn.LSTM has no coupled input-forget gate")
    if kind in ("LSTM", "GRU"):
        if act != "tanh":
            no("activation", layer.activation, f"nn.{_TORCH_KIND[kind]} uses tanh")
        if layer.recurrent_activation.name != "sigmoid":
            no("recurrent_activation", layer.recurrent_activation,
               f"nn.{_TORCH_KIND[kind]} uses sigmoid")
    if kind == "GRU" and not layer.reset_after:
        no("reset_after", False, "nn.GRU is the reset-after form (reset_after=True)")
    if kind == "SimpleRNN" and act not in ("tanh", "relu"):
        no("activation", layer.activation, "nn.RNN supports nonlinearity 'tanh' or 'relu'")
    if layer.go_backwards and not in_bidirectional:
        no("go_backwards", True, "a one-directional nn module runs forwards only")
    if layer.stateful:
        no("stateful", True, "nn modules take the state as an argument; pass (h, c) yourself")
    if not drop_training_options:
        for opt in ("dropout", "recurrent_dropout"):
            if getattr(layer, opt):
                no(opt, getattr(layer, opt), "PyTorch's modules have no such dropout; pass "
                   "drop_training_options=True to leave it out (inference is unchanged)")
        for opt in ("kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
                    "activity_regularizer"):
            if getattr(layer, opt, None) is not None:
                no(opt, getattr(layer, opt), "nn modules hold no regularizers (use the "
                   "optimizer's weight_decay); pass drop_training_options=True to leave it out")
    if not layer.built:
        raise ValueError(f"to_torch: {name} is not built; call it once or build(input_shape)")
    return (kind, layer.units, layer.use_bias, act, [layer])


def to_torch(obj, drop_training_options=False):
    """A PyTorch module computing what a fastlstm layer or ``fl.Sequential`` computes.

    Converts an ``LSTM`` (no peepholes, no CIFG, tanh/sigmoid), a ``GRU`` (reset_after=True,
    tanh/sigmoid), a ``SimpleRNN`` (tanh or relu), their ``Bidirectional`` (merge_mode
    "concat"), and a Sequential stack of one kind of these with equal units and optional
    ``Dropout`` layers of one rate between them: one ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
    with ``num_layers``, ``bidirectional``, ``dropout``, ``batch_first=True``, in eval mode
    and the layers' dtype. The module's first output is the full output sequence; for a last
    layer with ``return_sequences=False`` the fastlstm output is ``output[:, -1]`` (one
    direction) and the last states are ``h_n``.

    Anything nn modules cannot express raises ``ConversionError`` naming it (go_backwards
    outside Bidirectional, stateful, other merge modes or activations, Dense or Embedding
    layers...). Dropout inside a layer and regularizers only shape training; they raise
    unless ``drop_training_options=True``.
    """
    torch = require("torch", "fastlstm.convert.to_torch")
    layers = layers_of(obj, "to_torch")
    stages, stage_layers, rates = [], [], []
    pending_rate = None
    Dropout = getattr(fl_layers(), "Dropout", None)
    for i, layer in enumerate(layers):
        if Dropout is not None and isinstance(layer, Dropout):
            if not stages or pending_rate is not None:
                raise ConversionError(f"to_torch: {_layer_name(layer)} at position {i}: "
                                      "PyTorch applies dropout only between recurrent layers")
            if layer.noise_shape is not None:
                raise ConversionError(f"to_torch: {_layer_name(layer)} has noise_shape="
                                      f"{layer.noise_shape}; PyTorch's inter-layer dropout has "
                                      "none")
            pending_rate = layer.rate
            continue
        if stages:
            rates.append(pending_rate or 0.0)
        pending_rate = None
        stages.append(_describe(layer, drop_training_options))
        stage_layers.append(layer)
    if pending_rate is not None:
        raise ConversionError("to_torch: a Dropout after the last recurrent layer has no "
                              "place in an nn module (PyTorch drops out only between layers)")
    if not stages:
        raise ConversionError("to_torch: no recurrent layer to convert")
    kind, units, use_bias, act, _ = stages[0]
    for s, layer in zip(stages[1:], stage_layers[1:]):
        if s[:4] != stages[0][:4] or len(s[4]) != len(stages[0][4]):
            raise ConversionError(
                f"to_torch: {_layer_name(layer)} differs from the first layer "
                f"(kind, units, use_bias, activation, directions = {s[:4] + (len(s[4]),)} vs "
                f"{stages[0][:4] + (len(stages[0][4]),)}); one nn module stacks identical "
                "layers")
    if len(set(rates)) > 1:
        raise ConversionError(f"to_torch: the Dropout rates between layers differ ({rates}); "
                              "nn modules take one dropout")
    for s in stages[:-1]:
        if not s[4][0].return_sequences:
            raise ConversionError(f"to_torch: {_layer_name(s[4][0])} feeds another layer but "
                                  "has return_sequences=False")
    bidirectional = len(stages[0][4]) == 2
    first = stages[0][4][0]
    proj = getattr(first, "proj_size", 0)
    for layer in stage_layers[1:]:
        if getattr(layer, "proj_size", getattr(getattr(layer, "forward_layer", None),
                                               "proj_size", 0)) != proj:
            raise ConversionError(f"to_torch: {_layer_name(layer)} has another proj_size than "
                                  f"the first layer ({proj}); one nn.LSTM projects all alike")
    dt = first.dtype
    tdt = torch.float64 if dt == np.float64 else torch.float32
    I = first.input_dim
    tkind = _TORCH_KIND[kind]
    kwargs = dict(input_size=I, hidden_size=units, num_layers=len(stages), bias=use_bias,
                  batch_first=True, dropout=float(rates[0]) if rates else 0.0,
                  bidirectional=bidirectional)
    if tkind == "RNN":
        kwargs["nonlinearity"] = act
    if proj:
        kwargs["proj_size"] = proj
    module = getattr(torch.nn, tkind)(**kwargs).to(tdt)
    G = _GATES[tkind]
    params = {}
    for k, s in enumerate(stages):
        for layer, sfx in zip(s[4], ("", "_reverse")):
            ws = [np.asarray(w, np.float64) for w in layer.get_weights()]
            kernel, rec = ws[0], ws[1]
            if kind == "GRU":
                params[f"weight_ih_l{k}{sfx}"] = blocks(kernel.T, TORCH_GRU, 3)
                params[f"weight_hh_l{k}{sfx}"] = blocks(rec.T, TORCH_GRU, 3)
                if use_bias:
                    params[f"bias_ih_l{k}{sfx}"] = blocks(ws[2][0], TORCH_GRU, 3)
                    params[f"bias_hh_l{k}{sfx}"] = blocks(ws[2][1], TORCH_GRU, 3)
            else:
                params[f"weight_ih_l{k}{sfx}"] = kernel.T
                params[f"weight_hh_l{k}{sfx}"] = rec.T
                if use_bias:
                    params[f"bias_ih_l{k}{sfx}"] = ws[2]
                    params[f"bias_hh_l{k}{sfx}"] = np.zeros(G * units)
                if proj:
                    params[f"weight_hr_l{k}{sfx}"] = ws[-1].T
    with torch.no_grad():
        for name, p in module.named_parameters():
            src = params.pop(name)
            if tuple(src.shape) != tuple(p.shape):
                raise ConversionError(f"to_torch: {name} would have shape {src.shape}, the "
                                      f"module expects {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(src)).to(tdt))
    assert not params, params
    return module.eval()
