"""Shared helpers of the conversion tests (test_convert_*.py)."""
import numpy as np

# Conversion tolerance, keyed by dtype: max |a - b| / max |b| (different summation orders and
# exp/tanh implementations in the peers).
CONVERT_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def assert_same(actual, expected, dtype=np.float32, name=""):
    """``actual`` computes what ``expected`` does: same shape, relative max error within
    ``CONVERT_RTOL[dtype]``."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.abs(expected).max()), 1e-30) if expected.size else 1.0
    err = float(np.abs(actual.astype(np.float64) - expected).max()) / scale if actual.size else 0.0
    tol = CONVERT_RTOL[np.dtype(dtype)]
    assert err < tol, f"{name}: relative error {err:.3g} >= {tol:g}"


def randomize(layer, input_shape, rng, scale=0.5):
    """Build ``layer`` and give it random weights (N(0, scale^2)) of its dtype."""
    layer.build(input_shape)
    layer.set_weights([(rng.standard_normal(np.shape(w)) * scale).astype(np.asarray(w).dtype)
                       for w in layer.get_weights()])
    return layer


def post_padded(x, lengths, value=0.0):
    """A copy of ``x`` (B, T, ...) with steps at or past ``lengths[b]`` set to ``value``."""
    x = np.array(x, copy=True)
    for b, n in enumerate(lengths):
        x[b, n:] = value
    return x
