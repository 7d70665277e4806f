"""fl.layers.LSTM against torch.nn.LSTM on the same weights: forward and gradients."""
import numpy as np
import pytest

import fastlstm as fl

from conftest import DTYPES, PEER_TOL, assert_close, compiled_backends

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.peers


def torch_lstm(I, H, dtype, seed):
    torch.manual_seed(seed)
    m = torch.nn.LSTM(I, H, batch_first=True)
    return m.to(torch.float64 if dtype == np.float64 else torch.float32)


def copy_weights(layer, m):
    """PyTorch keeps W_ih (4H, I), W_hh (4H, H) and two biases, gates [i|f|g|o] = Keras [i|f|c|o]."""
    layer.set_weights([m.weight_ih_l0.detach().numpy().T, m.weight_hh_l0.detach().numpy().T,
                       (m.bias_ih_l0 + m.bias_hh_l0).detach().numpy()])


@pytest.mark.parametrize("backend", ["numpy"] + compiled_backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("B, T, I, H", [(3, 7, 5, 4), (1, 12, 3, 16), (8, 2, 16, 9)])
def test_matches_torch_forward_and_gradients(backend, dtype, B, T, I, H):
    rng = np.random.default_rng(B * 100 + H)
    m = torch_lstm(I, H, dtype, seed=B + T)
    layer = fl.layers.LSTM(H, return_sequences=True, return_state=True, dtype=np.dtype(dtype).name)
    layer.build((B, T, I))
    copy_weights(layer, m)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype)
    dy = rng.standard_normal((B, T, H)).astype(dtype)
    dh = rng.standard_normal((B, H)).astype(dtype)
    dc = rng.standard_normal((B, H)).astype(dtype)

    xt = torch.from_numpy(x).requires_grad_(True)
    h0t = torch.from_numpy(h0[None]).requires_grad_(True)
    c0t = torch.from_numpy(c0[None]).requires_grad_(True)
    yt, (ht, ct) = m(xt, (h0t, c0t))
    ((yt * torch.from_numpy(dy)).sum() + (ht[0] * torch.from_numpy(dh)).sum()
     + (ct[0] * torch.from_numpy(dc)).sum()).backward()

    with fl.use_backend(backend):
        (y, h, c), backprop = layer.forward_train(x, initial_state=[h0, c0])
        g = backprop([dy, dh, dc])
    tol = PEER_TOL
    assert_close(y, yt.detach().numpy(), dtype, "y", tol)
    assert_close(h, ht[0].detach().numpy(), dtype, "h", tol)
    assert_close(c, ct[0].detach().numpy(), dtype, "c", tol)
    assert_close(g.inputs, xt.grad.numpy(), dtype, "dx", tol)
    assert_close(g.initial_state[0], h0t.grad[0].numpy(), dtype, "dh0", tol)
    assert_close(g.initial_state[1], c0t.grad[0].numpy(), dtype, "dc0", tol)
    assert_close(g.weights[0], m.weight_ih_l0.grad.numpy().T, dtype, "dkernel", tol)
    assert_close(g.weights[1], m.weight_hh_l0.grad.numpy().T, dtype, "drecurrent_kernel", tol)
    assert_close(g.weights[2], m.bias_ih_l0.grad.numpy(), dtype, "dbias", tol)


def test_inference_matches_torch_long_sequence():
    """200 steps in float32: errors must not accumulate beyond float32 noise."""
    rng = np.random.default_rng(0)
    m = torch_lstm(32, 64, np.float32, seed=1)
    layer = fl.layers.LSTM(64, return_sequences=True)
    x = rng.standard_normal((4, 200, 32)).astype(np.float32)
    layer.build(x.shape)
    copy_weights(layer, m)
    with torch.no_grad():
        ref = m(torch.from_numpy(x))[0].numpy()
    assert_close(layer(x), ref, np.float32, "y", PEER_TOL)
