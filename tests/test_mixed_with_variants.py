"""mixed_bfloat16 together with the cell options of the packed loop: sequence lengths run as
the prefix mask they stand for (the bf16 products live in the sequence driver), zoneout runs
on the oracle, and a projected LSTM is refused."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm import layers


def _data(B=5, T=7, F=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    lengths = np.array([7, 3, 5, 1, 6])[:B]
    return x, lengths


@pytest.mark.parametrize("cls", [layers.LSTM, layers.GRU, layers.SimpleRNN])
def test_sequence_lengths_equal_the_prefix_mask_under_mixed(cls):
    x, lengths = _data()
    layer = cls(6, return_sequences=True, dtype="mixed_bfloat16", seed=1)
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
    want = layer(x, mask=mask)
    got = layer(x, sequence_lengths=lengths)
    np.testing.assert_array_equal(got, want)
    y, backprop = layer.forward_train(x, sequence_lengths=lengths)
    y2, backprop2 = layer.forward_train(x, mask=mask)
    np.testing.assert_array_equal(y, y2)
    dy = np.ones_like(y)
    for a, b in zip(backprop(dy).weights, backprop2(dy).weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", [layers.LSTM, layers.GRU, layers.SimpleRNN])
def test_zoneout_under_mixed_matches_the_oracle(cls):
    x, _ = _data()
    layer = cls(6, return_sequences=True, zoneout=0.3, dtype="mixed_bfloat16", seed=2)
    got = layer(x)
    with fl.use_backend("numpy"):
        want = layer(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    float_layer = cls(6, return_sequences=True, zoneout=0.3, seed=2)
    float_layer.build(x.shape)
    float_layer.set_weights(layer.get_weights())
    # the bf16 products move the result by about bf16's rounding, no more
    np.testing.assert_allclose(got, float_layer(x), rtol=0, atol=3e-2)
    assert not np.array_equal(got, float_layer(x))


def test_a_projected_lstm_is_refused_under_mixed():
    with pytest.raises(ValueError, match="proj_size.*mixed_bfloat16"):
        layers.LSTM(8, proj_size=4, dtype="mixed_bfloat16")
