"""fastlstm.convert.from_torch(module, example_input): whole PyTorch models (recurrent layers
under the usual heads) by way of ONNX, checked against the module's own outputs."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
nn = torch.nn

import fastlstm as fl  # noqa: E402
from fastlstm.convert import ConversionError, from_torch  # noqa: E402


class LastStep(nn.Module):
    def __init__(self, cell=nn.LSTM, dtype=torch.float32):
        super().__init__()
        self.rnn = cell(8, 16, batch_first=True, dtype=dtype)
        self.fc = nn.Linear(16, 3, dtype=dtype)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1, :])


class FinalState(nn.Module):
    """h_n of a stack: h_n[index] (a layer and direction) or both directions of the last."""

    def __init__(self, cell=nn.LSTM, num_layers=2, bidirectional=False, index=-1, both=False):
        super().__init__()
        self.rnn = cell(8, 16, num_layers=num_layers, batch_first=True,
                        bidirectional=bidirectional)
        self.index, self.both = index, both
        self.fc = nn.Linear(32 if both else 16, 2)

    def forward(self, x):
        _, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h
        last = torch.cat([h[-2], h[-1]], dim=1) if self.both else h[self.index]
        return torch.sigmoid(self.fc(last))


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.rnn = nn.GRU(8, 16, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Linear(32, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 5))

    def forward(self, tokens):
        out, _ = self.rnn(self.emb(tokens))
        return torch.softmax(self.head(out), dim=-1)


def _check(module, x, dtype=None, rtol=1e-5):
    torch.manual_seed(0)
    converted = from_torch(module, x, dtype=dtype)
    with torch.no_grad():
        want = module.eval()(x).numpy()
    # a new batch and length: the conversion holds for other shapes than the example's
    x2 = torch.randint(0, 50, (5, 7)) if x.dtype == torch.int64 else \
        torch.randn(5, 7, x.shape[2], dtype=x.dtype)
    with torch.no_grad():
        want2 = module(x2).numpy()
    run = converted.predict if hasattr(converted, "predict") else converted
    np.testing.assert_allclose(run(x.numpy()), want, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(run(x2.numpy()), want2, rtol=rtol, atol=rtol)
    return converted


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_last_time_step_under_a_linear_head(cell):
    torch.manual_seed(1)
    model = _check(LastStep(cell), torch.randn(4, 10, 8))
    assert isinstance(model, fl.Sequential)
    rnn, dense = model.layers
    assert not rnn.return_sequences and dense.units == 3


def test_float64_module_converts_in_float64():
    torch.manual_seed(2)
    model = _check(LastStep(dtype=torch.float64), torch.randn(3, 6, 8, dtype=torch.float64),
                   rtol=1e-10)
    assert model.layers[0].dtype == np.float64


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("index", [-1, 0])
def test_final_state_of_a_stack(cell, index):
    torch.manual_seed(3)
    model = _check(FinalState(cell, num_layers=2, index=index), torch.randn(4, 9, 8))
    recurrent = [layer for layer in model.layers if isinstance(layer, fl.layers.RecurrentLayer)]
    # h_n[0] is the first layer's final state: the second layer is not needed
    assert len(recurrent) == (2 if index == -1 else 1)
    assert not recurrent[-1].return_sequences


def test_both_final_states_of_a_bidirectional_stack():
    torch.manual_seed(4)
    model = _check(FinalState(nn.LSTM, num_layers=2, bidirectional=True, both=True),
                   torch.randn(4, 9, 8))
    last = [layer for layer in model.layers if isinstance(layer, fl.layers.Bidirectional)][-1]
    assert last.merge_mode == "concat" and not last.return_sequences


def test_backward_final_state_alone():
    torch.manual_seed(5)
    model = _check(FinalState(nn.GRU, num_layers=1, bidirectional=True, index=-1),
                   torch.randn(4, 9, 8))
    assert model.layers[0].go_backwards and not model.layers[0].return_sequences


def test_embedding_bidirectional_tagger_with_a_relu_head():
    torch.manual_seed(6)
    model = _check(Tagger(), torch.randint(0, 50, (4, 11)))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Embedding", "Bidirectional", "Dense", "Dense"], kinds
    assert model.layers[2].activation.name == "relu"


def test_the_module_is_left_in_its_mode():
    module = Tagger().train()
    from_torch(module, torch.randint(0, 50, (2, 5)))
    assert module.training


class _FirstStep(LastStep):
    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, 0, :])


class _BidirectionalLastStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 4, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.rnn(x)[0][:, -1]


class _Norm(LastStep):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(3)

    def forward(self, x):
        return self.norm(super().forward(x))


class _Pair(LastStep):
    def forward(self, x):
        out, _ = self.rnn(x)
        return out, self.fc(out)


class _ExportOnly(LastStep):
    def forward(self, x):
        y = super().forward(x)
        return y if torch.onnx.is_in_onnx_export() else 2 * y


@pytest.mark.parametrize("module,match", [
    (_FirstStep(), "only the last time step"),
    (_BidirectionalLastStep(), "bidirectional output"),
    (_Norm(), "ReduceMean|LayerNormalization|not supported"),
    (_Pair(), "one tensor output"),
    (_ExportOnly(), "does not reproduce"),
])
def test_what_cannot_convert_is_refused_by_name(module, match):
    with pytest.raises(ConversionError, match=match):
        from_torch(module, torch.randn(2, 5, 8))


def test_argument_errors():
    with pytest.raises(TypeError, match="example_input"):
        from_torch(LastStep())
    with pytest.raises(TypeError, match="example_input: expected a torch.Tensor"):
        from_torch(LastStep(), np.zeros((2, 5, 8), np.float32))
    with pytest.raises(ValueError, match="example_input"):
        from_torch(LastStep(), torch.randn(8))
    with pytest.raises(TypeError, match="converts without it"):
        from_torch(nn.LSTM(3, 4), torch.randn(2, 5, 3))
    with pytest.raises(TypeError, match="nn.Module"):
        from_torch(object(), torch.randn(2, 5, 3))
