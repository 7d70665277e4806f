"""Layers and models moved to a device: layer.to / model.to, the cupy backend under the layers.

The "cuda" device needs CuPy and a GPU; everywhere else the same tests run on "cuda_host": a
device whose arrays are NumPy arrays and whose backend is "cupy_host" (the cupy backend's code
over its CUDA kernels compiled for the host, see conftest.py), so the layer, model and
optimizer code paths of a GPU run, and the kernels under them, are exercised on every machine.
Each result is compared with a twin that runs on the CPU from the same weights.
"""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm import backends, devices

from conftest import CUPY, HAVE_CUDA_HOST, assert_close


DEVICES = (["cuda_host"] if HAVE_CUDA_HOST else []) + (["cuda"] if CUPY is not None else [])


@pytest.fixture(autouse=True, scope="module")
def _cuda_host_device():
    if HAVE_CUDA_HOST:
        devices._DEVICES["cuda_host"] = (np, "cupy_host")
    yield
    devices._DEVICES.pop("cuda_host", None)


def _launches():
    return sum(backends.get_ops("cupy_host").kernels.launches.values()) if HAVE_CUDA_HOST else 0


def _host(a):
    return devices.to_host(a)


def _on_device(a, device):
    return isinstance(a, CUPY.ndarray) if device == "cuda" else isinstance(a, np.ndarray)


def _twins(make, device, input_shape):
    cpu = make()
    cpu.build(input_shape)
    dev = make()
    dev.build(input_shape)
    dev.set_weights(cpu.get_weights())
    dev.to(device)
    return cpu, dev


LAYERS = {
    "lstm": lambda: fl.layers.LSTM(5, return_sequences=True, dropout=0.2, recurrent_dropout=0.3,
                                   seed=3),
    "lstm_peephole_cifg_back": lambda: fl.layers.LSTM(5, use_peepholes=True,
                                                      coupled_input_forget=True,
                                                      go_backwards=True, seed=1),
    "gru": lambda: fl.layers.GRU(4, return_sequences=True, recurrent_dropout=0.25, seed=2),
    "gru_reset_before": lambda: fl.layers.GRU(4, reset_after=False, return_state=True, seed=2),
    "simple_rnn": lambda: fl.layers.SimpleRNN(3, activation="relu", return_sequences=True,
                                              dropout=0.1, seed=5),
    "bidirectional_concat": lambda: fl.layers.Bidirectional(
        fl.layers.LSTM(3, return_sequences=True, seed=1)),
    "bidirectional_ave_state": lambda: fl.layers.Bidirectional(
        fl.layers.GRU(3, return_state=True, seed=1), merge_mode="ave"),
    "bidirectional_none": lambda: fl.layers.Bidirectional(
        fl.layers.SimpleRNN(3, return_sequences=True), merge_mode=None),
}


@pytest.mark.skipif(not DEVICES, reason="no device to move to")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_on_device_matches_cpu(device, name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    mask = rng.random((3, 6)) > 0.3
    cpu, dev = _twins(LAYERS[name], device, x.shape)
    assert dev.device == device
    assert all(_on_device(w, device) for w in dev.weights)
    assert all(isinstance(w, np.ndarray) for w in dev.get_weights())
    before = _launches()
    y_dev = dev(x, mask=mask)
    y_cpu = cpu(x, mask=mask)
    for a, b in zip(*(v if isinstance(v, list) else [v] for v in (y_dev, y_cpu))):
        assert _on_device(a, device)
        assert_close(_host(a), b, np.float32, "inference")
    # training: the same dropout draws on both (same seeds), the same gradients
    out_d, bp_d = dev.forward_train(x, mask=mask)
    out_c, bp_c = cpu.forward_train(x, mask=mask)
    first_d = out_d[0] if isinstance(out_d, list) else out_d
    first_c = out_c[0] if isinstance(out_c, list) else out_c
    assert_close(_host(first_d), first_c, np.float32, "training output")
    dy = rng.standard_normal(first_c.shape).astype(np.float32)
    d_out = [dy] + [None] * (len(out_c) - 1) if isinstance(out_c, list) else dy
    if name == "bidirectional_none":
        d_out = [dy, 2 * dy]
    g_d, g_c = bp_d(d_out), bp_c(d_out)
    assert _on_device(g_d.inputs, device)
    assert_close(_host(g_d.inputs), g_c.inputs, np.float32, "d inputs")
    for a, b in zip(g_d.weights, g_c.weights):
        assert_close(_host(a), b, np.float32, "d weights")
    if device == "cuda_host":
        assert _launches() > before       # the device's kernels ran, not the CPU's


@pytest.mark.skipif(not DEVICES, reason="no device to move to")
@pytest.mark.parametrize("device", DEVICES)
def test_stateful_layer_and_step_on_device(device):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)

    def make():
        return fl.layers.LSTM(4, stateful=True, return_sequences=True)
    cpu, dev = _twins(make, device, x.shape)
    for _ in range(2):               # states carried across calls, on the device
        assert_close(_host(dev(x)), cpu(x), np.float32, "stateful call")
    assert all(_on_device(s, device) for s in dev.states)
    dev.reset_states([1])
    cpu.reset_states([1])
    assert_close(_host(dev(x)), cpu(x), np.float32, "after reset_states([1])")
    dev.to("cpu")                    # states come back with the weights
    assert all(isinstance(s, np.ndarray) for s in dev.states)
    assert_close(dev(x), cpu(x), np.float32, "back on the CPU")
    dev.to(device)
    state_d, state_c = dev.get_initial_state(2), cpu.get_initial_state(2)
    assert all(_on_device(s, device) for s in state_d)
    for t in range(3):
        y_d, state_d = dev.step(x[:, t], state_d)
        y_c, state_c = cpu.step(x[:, t], state_c)
        assert _on_device(y_d, device)
        assert_close(_host(y_d), y_c, np.float32, f"step {t}")


@pytest.mark.skipif(not DEVICES, reason="no device to move to")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "sgd"])
def test_sequential_fit_on_device_matches_cpu(device, optimizer):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 7, 3)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)

    def make():
        m = fl.Sequential([fl.layers.GRU(6, return_sequences=True, seed=0),
                           fl.layers.LSTM(5, kernel_regularizer=fl.regularizers.L2(0.01)),
                           fl.layers.Dropout(0.2, seed=4),
                           fl.layers.Dense(2, activity_regularizer=fl.regularizers.L1(0.001))])
        m.build((None, 7, 3))
        m.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
        return m
    cpu, dev = make(), make()
    for lc, ld in zip(cpu.layers, dev.layers):
        ld.set_weights(lc.get_weights())
    assert dev.to(device) is dev and dev.device == device
    h_c = cpu.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    h_d = dev.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for k in h_c.history:
        np.testing.assert_allclose(h_d.history[k], h_c.history[k], rtol=1e-4, err_msg=k)
    for lc, ld in zip(cpu.layers, dev.layers):
        assert all(_on_device(w, device) for w in ld.weights)
        for a, b in zip(ld.get_weights(), lc.get_weights()):
            assert_close(a, b, np.float32, ld.name)
    p_d = dev.predict(x, batch_size=5)
    assert isinstance(p_d, np.ndarray)            # predict returns host arrays, as Keras
    assert_close(p_d, cpu.predict(x, batch_size=5), np.float32, "predict")
    assert _on_device(dev(x), device)             # a call returns device arrays
    assert_close(dev.evaluate(x, y, verbose=0)[0], cpu.evaluate(x, y, verbose=0)[0], np.float32)
    dev.to("cpu")                                 # optimizer state follows at the next step
    dev.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    cpu.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for lc, ld in zip(cpu.layers, dev.layers):
        for a, b in zip(ld.get_weights(), lc.get_weights()):
            assert_close(a, b, np.float32, "after moving back")


@pytest.mark.skipif(not HAVE_CUDA_HOST, reason="needs a C++ compiler")
def test_moving_what_cannot_move_is_a_clear_error():
    cells = fl.layers.RNN(fl.layers.LSTMCell(3))
    with pytest.raises(NotImplementedError, match="runs on the CPU only"):
        cells.to("cuda_host")
    lstm = fl.layers.LSTM(3)
    model = fl.Sequential([lstm, fl.layers.Embedding(5, 2)])
    with pytest.raises(NotImplementedError, match="embedding.*runs on the CPU only"):
        model.to("cuda_host")
    assert lstm.device == "cpu" and model.device == "cpu"     # nothing moved
    with pytest.raises(ValueError, match=r"device: expected one of \['cpu', 'cuda'\], got 'tpu'"):
        lstm.to("tpu")


def test_cuda_without_cupy_or_gpu_is_a_clear_error():
    if CUPY is not None:
        pytest.skip("a GPU is present")
    layer = fl.layers.LSTM(3)
    with pytest.raises(RuntimeError, match="CuPy"):
        layer.to("cuda")
    assert layer.device == "cpu"
    with pytest.raises(RuntimeError, match="CuPy"):
        fl.Sequential([fl.layers.Dense(2)]).to("cuda")
