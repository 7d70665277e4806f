"""The embedded data sets, the demos on a short budget, and the command line."""
from __future__ import annotations

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import __main__ as cli
from fastlstm import demos
from fastlstm.datasets import adding_problem, load_airline


def test_airline_series_is_the_box_jenkins_one():
    months, passengers = load_airline()
    assert len(months) == len(passengers) == 144
    assert months[0] == "1949-01" and months[-1] == "1960-12"
    assert passengers[0] == 112 and passengers[-1] == 432 and passengers.sum() == 40363
    yearly = passengers.reshape(12, 12).sum(axis=1)
    assert yearly[0] == 1520 and yearly[-1] == 5714
    assert passengers.min() == 104 and passengers.max() == 622
    assert passengers[passengers.argmax()] == 622 and months[passengers.argmax()] == "1960-07"


def test_adding_problem_data():
    x, y = adding_problem(500, 30, seed=3)
    assert x.shape == (500, 30, 2) and y.shape == (500, 1) and x.dtype == np.float32
    markers = x[:, :, 1]
    assert np.all(markers.sum(axis=1) == 2)
    assert np.all(markers[:, :15].sum(axis=1) == 1) and np.all(markers[:, 15:].sum(axis=1) == 1)
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * markers).sum(axis=1), rtol=1e-6)
    assert 0 <= x[:, :, 0].min() and x[:, :, 0].max() < 1
    np.testing.assert_array_equal(adding_problem(500, 30, seed=3)[0], x)
    _, y_big = adding_problem(20000, 10, seed=0)
    assert np.mean((y_big - 1) ** 2) == pytest.approx(1 / 6, abs=0.01)
    with pytest.raises(ValueError, match="timesteps"):
        adding_problem(3, 1)


def test_adding_demo_short_budget_lstm_learns():
    lines = []
    result = demos.run_adding(timesteps=20, units=16, epochs=6, n_train=1000, n_test=300,
                              learning_rate=1e-2, print_fn=lines.append)
    lstm = result["curves"]["LSTM"]
    assert len(lstm) == 6
    assert lstm[-1] < 0.6 * lstm[0] and lstm[-1] < 0.6 * result["baseline"]
    assert result["train_loss"]["LSTM"][-1] < 0.6 * result["train_loss"]["LSTM"][0]
    text = "\n".join(lines)
    assert "Baseline (always predict 1)" in text and "LSTM: final test MSE" in text
    if "SimpleRNN" in result["curves"]:
        assert len(result["curves"]["SimpleRNN"]) == 6 and "SimpleRNN test MSE" in text


def test_adding_demo_scores_the_quantized_models():
    lines = []
    result = demos.run_adding(timesteps=20, units=16, epochs=6, n_train=1000, n_test=300,
                              learning_rate=1e-2, cells=("LSTM",), quantize=("int8", "bf16"),
                              print_fn=lines.append)
    final = result["final"]["LSTM"]
    q = result["quantized"]["LSTM"]
    assert set(q) == {"int8", "bfloat16"}
    # The rounding moves a trained model's test error a little, not to the baseline.
    assert abs(q["int8"] - final) < 0.1 * final and abs(q["bfloat16"] - final) < 0.05 * final
    assert "LSTM quantized to int8: test MSE" in "\n".join(lines)


def test_text_chart_marks_each_curve_and_the_baseline():
    lines = demos.text_chart({"LSTM": [0.17, 0.05, 0.001], "Simple": [0.17, 0.16, 0.17]},
                             baseline=0.167, height=6)
    body = [l.split("|", 1)[1] for l in lines[:6]]
    assert body[0] == "*SS  <- baseline 0.167" and body[-1] == "  L"
    assert "L = LSTM, S = Simple, - = baseline, * = both" in lines[-1]


def test_cli_airline_short_budget(capsys):
    assert cli.main(["demo", "airline", "--epochs", "20", "--ensemble", "1"]) == 0
    out = capsys.readouterr().out
    assert "Airline passengers" in out and "1960-12" in out
    assert "seasonal naive, 1958 repeated" in out and "MAPE" in out
    assert ("beats the seasonal-naive baseline" in out
            or "does NOT beat the seasonal-naive baseline" in out)


def test_airline_demo_scores():
    result = demos.run_airline(epochs=40, ensemble=1, print_fn=lambda *a: None)
    actual = result["actual"]
    assert actual[0] == 360 and actual[-1] == 432 and len(actual) == 24
    base = result["one_step"]["baseline"]
    snaive = np.array([340, 318, 362, 348, 363, 435, 491, 505, 404, 359, 310, 337,
                       360, 342, 406, 396, 420, 472, 548, 559, 463, 407, 362, 405])
    assert base["MAE"] == pytest.approx(np.mean(np.abs(actual - snaive)))
    assert result["recursive"]["forecast"].shape == (24,)
    assert np.all(np.isfinite(result["recursive"]["forecast"]))


def test_airline_demo_quantized_forecasts(capsys):
    assert cli.main(["demo", "airline", "--epochs", "20", "--ensemble", "1",
                     "--quantize", "int8,bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "quantized to int8: MAPE" in out and "quantized to bfloat16: MAPE" in out
    with pytest.raises(SystemExit):
        cli.main(["demo", "airline", "--quantize", "int4"])


def test_cli_info_and_plot_hint(capsys, tmp_path):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fastlstm {fl.__version__}") and "backends available" in out
    png = tmp_path / "curves.png"
    argv = ["demo", "adding", "--timesteps", "8", "--epochs", "1", "--train", "64",
            "--test", "32", "--units", "4", "--plot", str(png)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit):      # refused before the demo runs
            cli.main(argv)
        assert "pip install matplotlib" in capsys.readouterr().err and not png.exists()
        return
    assert cli.main(argv) == 0
    assert png.exists() and "plot saved" in capsys.readouterr().out


def test_cli_default_runs_info_then_the_adding_demo(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(demos, "run_adding", lambda **kw: calls.append(kw))
    assert cli.main([]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"fastlstm {fl.__version__}")
    assert len(calls) == 1 and calls[0]["timesteps"] == 100
    assert calls[0]["epochs"] == cli.DEFAULT_ADDING_EPOCHS


def test_cli_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "adding", "--epochs", "0"])
    assert "--epochs" in capsys.readouterr().err
