"""Helpers for the layer tests: a Keras 3 layer's outputs, output mask and gradients
(through PyTorch autograd), and central finite differences of a fastlstm layer's
backprop in float64."""
import numpy as np

from conftest import central_difference


def keras_grads(klayer, inputs, dy, masks=None, call_kwargs=None):
    """Run the Keras layer on ``inputs`` (a list: several for a merge layer, else one) with
    ``masks`` attached to them as Keras masks, and backpropagate ``sum(y * dy)``.
    Returns (y, output mask or None, input gradients, weight gradients in
    trainable_weights order)."""
    import torch
    from keras.src import backend

    ts = [torch.tensor(np.asarray(x), requires_grad=True) for x in inputs]
    if masks is not None:
        for t, m in zip(ts, masks):
            if m is not None:
                backend.set_keras_mask(t, torch.tensor(np.asarray(m, bool)))
    y = klayer(ts if len(ts) > 1 or getattr(klayer, "_merge_function", None) else ts[0],
               **(call_kwargs or {}))
    out_mask = backend.get_keras_mask(y)
    (y * torch.tensor(np.asarray(dy), dtype=y.dtype)).sum().backward()
    dx = [None if t.grad is None else t.grad.numpy() for t in ts]
    dw = [np.zeros(tuple(w.shape)) if w.value.grad is None else w.value.grad.numpy()
          for w in klayer.trainable_weights]
    return (y.detach().numpy(), None if out_mask is None else out_mask.numpy(), dx, dw)


def finite_difference_check(layer, inputs, mask=None, eps=1e-6, rtol=1e-6, atol=1e-8,
                            rng=None, max_entries=40):
    """Compare ``layer.forward_train``'s backprop (float64) with central differences of
    ``sum(layer(x) * dy)`` in the inputs and the weights (up to ``max_entries`` entries of
    each array, drawn at random)."""
    rng = rng or np.random.default_rng(0)
    multi = getattr(layer, "multiple_inputs", False)
    xs = [np.array(x, dtype=np.float64) for x in (inputs if multi else [inputs])]
    arg = (lambda: xs) if multi else (lambda: xs[0])
    y, back = layer.forward_train(arg(), mask=mask)
    dy = rng.standard_normal(np.shape(y))
    g = back(dy)
    d_inputs = g.inputs if multi else [g.inputs]

    def loss():
        return float(np.sum(np.asarray(layer(arg(), mask=mask)) * dy))

    def check(arr, grad, what):
        idx = rng.choice(arr.size, size=min(arr.size, max_entries), replace=False)
        num = [central_difference(loss, arr, i, eps) for i in idx]
        np.testing.assert_allclose(np.asarray(grad).reshape(-1)[idx], num, rtol=rtol,
                                   atol=atol, err_msg=what)

    for k, (x, dx) in enumerate(zip(xs, d_inputs)):
        check(x, dx, f"input {k}")
    for name, w, dw in zip(layer.weight_names, layer.weights, g.weights):
        check(w, dw, f"weight {name}")
