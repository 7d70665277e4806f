"""The demos behind ``python -m fastlstm demo ...``, on data embedded in the package.

``adding``
    The adding problem (Hochreiter & Schmidhuber 1997) with T=100: an LSTM and a SimpleRNN
    of the same size are trained side by side on the same data; their per-epoch test MSE is
    printed as a table and a text chart, then a verdict against the baseline of always
    predicting 1 (MSE 1/6 ~ 0.167). The LSTM should go near 0, the SimpleRNN stay near the
    baseline: its gradient through 100 steps of ``tanh`` vanishes.
``airline``
    Monthly airline passengers 1949-1960 (Box & Jenkins): an LSTM trained on 1949-1958
    forecasts 1959-1960, scored by MAE, RMSE and MAPE against the seasonal-naive baseline.

Each ``run_*`` function returns its numbers in a dict (the tests use them) and prints
through ``print_fn``. The adding demo runs on fastlstm's threads (its LSTM kernels split the
batch rows over the cores); the airline models are so small that one thread is as fast.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np

__all__ = ["run_adding", "run_airline", "text_chart", "save_plot", "num_threads",
           "require_matplotlib"]

PLOT_HINT = "matplotlib is not installed: `pip install matplotlib` (or fastlstm[plot]) to save plots"


@contextlib.contextmanager
def num_threads(threads):
    """``fl.set_num_threads(threads)`` inside the block (BLAS and the kernels' own threads),
    the previous number restored after it; None leaves them alone."""
    if threads is None:
        yield
        return
    import fastlstm as fl
    previous = fl.get_num_threads()
    fl.set_num_threads(int(threads))
    try:
        yield
    finally:
        fl.set_num_threads(previous)


@contextlib.contextmanager
def dtype_policy(mixed):
    """Models made inside the block under ``mixed_bfloat16`` (fl.mixed_precision) when
    mixed, the previous global policy restored after it."""
    from . import mixed_precision
    previous = mixed_precision.global_policy()
    if mixed:
        mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        mixed_precision.set_global_policy(previous)


# ------------------------------------------------------------------------------ adding problem


def _adding_model(cell, units, seed):
    import fastlstm as fl
    glorot = fl.initializers.GlorotUniform(seed=seed + 1)
    rnn = getattr(fl.layers, cell)(units, seed=seed,
                                   kernel_initializer=fl.initializers.GlorotUniform(seed=seed),
                                   recurrent_initializer=fl.initializers.Orthogonal(seed=seed + 2))
    return fl.Sequential([rnn, fl.layers.Dense(1, kernel_initializer=glorot)],
                         name=f"adding_{cell.lower()}")


def text_chart(curves, baseline=None, height=10, floor=1e-4):
    """A log-scale text chart of per-epoch values: one letter per curve and epoch (the first
    letter of the curve's name; ``*`` where two meet), ``-`` on the baseline's row."""
    names = list(curves)
    n = max(len(v) for v in curves.values())
    values = [max(float(v), floor) for c in curves.values() for v in c]
    top = math.log10(max(values + ([baseline] if baseline else [])))
    bottom = math.log10(min(values))
    if top - bottom < 1:
        bottom = top - 1
    rows = [[" "] * n for _ in range(height)]

    def row_of(v):
        frac = (math.log10(max(v, floor)) - bottom) / (top - bottom)
        return min(height - 1, max(0, int(round((1 - frac) * (height - 1)))))

    if baseline:
        b = row_of(baseline)
        rows[b] = ["-"] * n
    for name in names:
        mark = name[0]
        for epoch, v in enumerate(curves[name]):
            r = row_of(float(v))
            rows[r][epoch] = "*" if rows[r][epoch] not in (" ", "-", mark) else mark
    lines = []
    for i, row in enumerate(rows):
        level = 10 ** (top - (top - bottom) * i / (height - 1))
        mark = f"  <- baseline {baseline:.3f}" if baseline and i == row_of(baseline) else ""
        lines.append(f"{level:9.1e} |" + "".join(row) + mark)
    lines.append(" " * 10 + "+" + "-" * n)
    lines.append(" " * 11 + "epoch 1" + (f"{n:>{max(n - 7, 1)}}" if n > 8 else ""))
    legend = ", ".join(f"{name[0]} = {name}" for name in names)
    if baseline:
        legend += ", - = baseline"
    lines.append(" " * 11 + legend + ", * = both")
    return lines


#: Adam steps the LSTM needs before it leaves the baseline at T=100 with the demo's settings
#: (19 to 24 epochs of 100 steps for seeds 0 to 3); a shorter run cannot judge a cell
ADDING_STEPS_NEEDED = 2500


def require_matplotlib(path):
    """Raise ``ImportError`` with the install hint when matplotlib is missing, so that a
    demo asked to plot fails before it trains, not after."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(f"plot {path}: {PLOT_HINT}") from None


def run_adding(timesteps=100, units=32, epochs=50, n_train=3200, n_test=1000, batch_size=32,
               learning_rate=3e-3, seed=0, cells=("LSTM", "SimpleRNN"), plot=None,
               threads=None, quantize=(), print_fn=print, mixed=False):
    """Train one model per cell on the adding problem; returns a dict with ``curves``
    (cell -> per-epoch test MSE), ``seconds`` (cell -> training time), ``final``,
    ``baseline`` and ``train_loss`` (cell -> per-epoch training loss). ``quantize``: the
    precisions ("int8", "bfloat16") in which the trained models are also scored (fl.quantize);
    ``quantized`` then maps cell -> precision -> test MSE. ``mixed``: the models train in
    mixed_bfloat16 (fl.mixed_precision). ``solved_epoch``: cell -> the first epoch with a
    test MSE below 0.01, or None."""
    if plot:
        require_matplotlib(plot)
    from .quantization import check_precision
    quantize = [check_precision(p) for p in quantize]
    with num_threads(threads), dtype_policy(mixed):
        if mixed:
            print_fn("Precision: mixed_bfloat16 (bf16 products, float32 weights and states).")
        return _run_adding(timesteps, units, epochs, n_train, n_test, batch_size, learning_rate,
                           seed, cells, plot, threads, quantize, print_fn)


def _score_quantized(models, precisions, score, print_fn):
    """{name: {precision: score(quantized model)}} for each trained model, printed."""
    import fastlstm as fl
    out = {}
    for name, model in models.items():
        out[name] = {}
        for p in precisions:
            out[name][p] = score(fl.quantize(model, p))
            print_fn(f"{name:>10} quantized to {p}: test MSE {out[name][p]:.4f}")
    return out


def _run_adding(timesteps, units, epochs, n_train, n_test, batch_size, learning_rate, seed,
                cells, plot, threads, quantize, print_fn):
    import fastlstm as fl
    from .datasets.adding import BASELINE_MSE, adding_problem

    available = [c for c in cells if hasattr(fl.layers, c)]
    missing = [c for c in cells if c not in available]
    x, y = adding_problem(n_train, timesteps, seed=seed)
    x_test, y_test = adding_problem(n_test, timesteps, seed=seed + 1000)
    baseline = float(np.mean((y_test - 1.0) ** 2))
    print_fn(f"Adding problem, T={timesteps}: {n_train} training and {n_test} test sequences "
             f"(seed {seed}); {units} units + Dense(1), Adam(lr={learning_rate}), batch "
             f"{batch_size}, {epochs} epochs of {math.ceil(n_train / batch_size)} steps"
             + f", {threads or fl.get_num_threads()} thread(s).")
    print_fn(f"Baseline (always predict 1): test MSE {baseline:.4f} (in theory 1/6 = "
             f"{BASELINE_MSE:.4f}).")
    for c in missing:
        print_fn(f"({c} is not available in this build: skipped)")
    models = {}
    for c in available:
        m = _adding_model(c, units, seed)
        m.compile(fl.optimizers.Adam(learning_rate), "mse")
        models[c] = m
    curves = {c: [] for c in available}
    train_loss = {c: [] for c in available}
    seconds = {c: 0.0 for c in available}
    header = "epoch " + "".join(f"{c + ' test MSE':>20}" for c in available) + "      seconds"
    print_fn(header)
    rng_state = np.random.get_state()
    for epoch in range(epochs):
        cells_text = ""
        for c in available:
            np.random.seed(seed * 7919 + epoch)   # the same batch order for every cell
            t0 = time.perf_counter()
            hist = models[c].fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
            seconds[c] += time.perf_counter() - t0
            mse = float(models[c].evaluate(x_test, y_test, batch_size=500))
            curves[c].append(mse)
            train_loss[c].append(float(hist.history["loss"][-1]))
            cells_text += f"{mse:20.4f}"
        total = sum(seconds.values())
        print_fn(f"{epoch + 1:5d} {cells_text}{total:13.1f}")
    np.random.set_state(rng_state)
    final = {c: curves[c][-1] for c in available}
    print_fn("")
    print_fn("Test MSE per epoch (log scale):")
    for line in text_chart(curves, baseline=baseline):
        print_fn(line)
    print_fn("")
    steps = epochs * math.ceil(n_train / batch_size)
    too_short = steps < ADDING_STEPS_NEEDED
    for c in available:
        best = min(curves[c])
        if final[c] < 0.01:
            verdict = "solved (test MSE below 0.01: it carries the first value across the sequence)"
        elif final[c] < 0.8 * baseline:
            verdict = "partly learned (below the baseline, not near 0)"
            if too_short:
                verdict += "; more epochs would take it further"
        elif too_short:
            verdict = (f"not trained long enough to tell: {steps} training steps ({epochs} "
                       f"epochs), fewer than the about {ADDING_STEPS_NEEDED} the LSTM needs "
                       f"at T=100 before it leaves the baseline; run more epochs (the demo's "
                       f"default is 50)")
        else:
            verdict = "did not learn: stays near the baseline (it cannot carry information that far)"
        print_fn(f"{c:>10}: final test MSE {final[c]:.4f} (best {best:.4f}), trained in "
                 f"{seconds[c]:.1f} s -> {verdict}")
    quantized = _score_quantized(
        models, quantize, lambda q: float(q.evaluate(x_test, y_test, batch_size=500)), print_fn)
    if plot:
        save_plot(plot, "adding", curves=curves, baseline=baseline, print_fn=print_fn)
    solved = {c: next((e + 1 for e, v in enumerate(curves[c]) if v < 0.01), None)
              for c in available}
    return {"curves": curves, "train_loss": train_loss, "seconds": seconds, "final": final,
            "baseline": baseline, "models": models, "quantized": quantized,
            "solved_epoch": solved}


# ------------------------------------------------------------------------------------- airline


def _airline_windows(z, start, end, window):
    """Inputs ``(n, window, 1)``: the ``window`` log values before each target, minus the
    last of them; targets ``(n, 1)``: the change from the last value to the target."""
    xs, ys = [], []
    for t in range(max(start, window), end):
        w = z[t - window:t]
        xs.append(w - w[-1])
        ys.append(z[t] - w[-1])
    return np.array(xs)[..., None], np.array(ys)[:, None]


def _scores(actual, forecast):
    err = forecast - actual
    return {"MAE": float(np.mean(np.abs(err))), "RMSE": float(np.sqrt(np.mean(err ** 2))),
            "MAPE": float(np.mean(np.abs(err) / actual) * 100)}


def run_airline(units=16, window=12, epochs=300, batch_size=16, learning_rate=3e-3, ensemble=5,
                seed=0, plot=None, threads=1, quantize=(), print_fn=print, mixed=False):
    """Forecast 1959-1960 from 1949-1958. Returns a dict with the forecasts and scores:
    ``recursive`` (24 months ahead from December 1958, each forecast fed back) and
    ``one_step`` (each month from the actual previous months), each against its
    seasonal-naive baseline. ``quantize``: precisions in which the trained ensemble also
    forecasts (fl.quantize); ``quantized`` then maps precision -> {"recursive": scores,
    "one_step": scores}. ``mixed``: the ensemble trains in mixed_bfloat16."""
    if plot:
        require_matplotlib(plot)
    from .quantization import check_precision
    quantize = [check_precision(p) for p in quantize]
    with num_threads(threads), dtype_policy(mixed):
        if mixed:
            print_fn("Precision: mixed_bfloat16 (bf16 products, float32 weights and states).")
        return _run_airline(units, window, epochs, batch_size, learning_rate, ensemble, seed,
                            plot, quantize, print_fn)


def _run_airline(units, window, epochs, batch_size, learning_rate, ensemble, seed, plot,
                 quantize, print_fn):
    import fastlstm as fl
    from .datasets import load_airline

    months, passengers = load_airline()
    y_all = passengers.astype(np.float64)
    z = np.log(y_all)
    n_train, horizon = 120, 24
    x_tr, d_tr = _airline_windows(z, window, n_train, window)
    scale = float(np.std(d_tr))
    print_fn(f"Airline passengers (Box & Jenkins): {months[0]}..{months[-1]}, "
             f"train {months[0]}..{months[n_train - 1]}, test {months[n_train]}..{months[-1]}.")
    print_fn(f"Model: log series, windows of {window} months relative to their last value "
             f"(scaled by {1 / scale:.1f}), LSTM({units}) + Dense(1) predicting the next change; "
             f"{ensemble} seeds averaged, {epochs} epochs each, Adam(lr={learning_rate}).")
    models = []
    t0 = time.perf_counter()
    for k in range(ensemble):
        s = seed * 100 + k
        m = fl.Sequential([
            fl.layers.LSTM(units, seed=s, kernel_initializer=fl.initializers.GlorotUniform(seed=s),
                           recurrent_initializer=fl.initializers.Orthogonal(seed=s + 1)),
            fl.layers.Dense(1, kernel_initializer=fl.initializers.GlorotUniform(seed=s + 2))])
        m.compile(fl.optimizers.Adam(learning_rate), "mse")
        state = np.random.get_state()
        np.random.seed(s)
        m.fit(x_tr / scale, d_tr / scale, batch_size=batch_size, epochs=epochs, verbose=0)
        np.random.set_state(state)
        models.append(m)
    seconds = time.perf_counter() - t0

    def forecasts(ensemble_models):
        def predict_change(windows):
            return np.mean([m.predict(windows / scale, batch_size=256)[:, 0]
                            for m in ensemble_models], axis=0) * scale

        # Recursive: 24 months from the end of 1958, each forecast appended to the history.
        hist = list(z[:n_train])
        for _ in range(horizon):
            w = np.array(hist[-window:])
            hist.append(w[-1] + predict_change((w - w[-1])[None, :, None])[0])
        rec = np.exp(np.array(hist[n_train:]))
        # One step: every test month from the actual months before it.
        x_te, _ = _airline_windows(z, n_train, n_train + horizon, window)
        one = np.exp(z[n_train - 1:n_train + horizon - 1] + predict_change(x_te))
        return rec, one

    rec, one = forecasts(models)
    actual = y_all[n_train:]
    snaive_rec = np.tile(y_all[n_train - 12:n_train], 2)      # 1958 repeated
    snaive_one = y_all[n_train - 12:n_train + horizon - 12]    # the same month a year before
    results = {
        "recursive": {"forecast": rec, "scores": _scores(actual, rec),
                      "baseline": _scores(actual, snaive_rec), "baseline_forecast": snaive_rec},
        "one_step": {"forecast": one, "scores": _scores(actual, one),
                     "baseline": _scores(actual, snaive_one), "baseline_forecast": snaive_one},
        "actual": actual, "months": months[n_train:], "seconds": seconds,
    }
    print_fn(f"Trained in {seconds:.1f} s.")
    print_fn("")
    print_fn("month     actual   LSTM 24-ahead  snaive(1958)   LSTM 1-step  snaive(y-12)")
    for i in range(horizon):
        print_fn(f"{months[n_train + i]}  {actual[i]:7.0f}  {rec[i]:13.0f}  {snaive_rec[i]:12.0f}  "
                 f"{one[i]:12.0f}  {snaive_one[i]:12.0f}")
    print_fn("")
    print_fn(f"{'forecast of 1959-1960':44s}{'MAE':>8}{'RMSE':>8}{'MAPE':>8}")
    rows = [("LSTM, 24 months ahead from Dec 1958", results["recursive"]["scores"]),
            ("seasonal naive, 1958 repeated", results["recursive"]["baseline"]),
            ("LSTM, one month ahead (actual history)", results["one_step"]["scores"]),
            ("seasonal naive, same month last year", results["one_step"]["baseline"])]
    for name, sc in rows:
        print_fn(f"{name:44s}{sc['MAE']:8.1f}{sc['RMSE']:8.1f}{sc['MAPE']:7.1f}%")
    print_fn("")
    for key, label in (("recursive", "24 months ahead"), ("one_step", "one month ahead")):
        ours, base = results[key]["scores"]["MAPE"], results[key]["baseline"]["MAPE"]
        if ours < base:
            print_fn(f"{label}: the LSTM beats the seasonal-naive baseline (MAPE {ours:.1f}% "
                     f"vs {base:.1f}%).")
        else:
            print_fn(f"{label}: the LSTM does NOT beat the seasonal-naive baseline (MAPE "
                     f"{ours:.1f}% vs {base:.1f}%).")
    results["quantized"] = {}
    for p in quantize:
        q_rec, q_one = forecasts([fl.quantize(m, p) for m in models])
        results["quantized"][p] = {"recursive": _scores(actual, q_rec),
                                   "one_step": _scores(actual, q_one)}
        print_fn(f"quantized to {p}: MAPE {results['quantized'][p]['recursive']['MAPE']:.2f}% "
                 f"24 months ahead (float32 {results['recursive']['scores']['MAPE']:.2f}%), "
                 f"{results['quantized'][p]['one_step']['MAPE']:.2f}% one month ahead "
                 f"(float32 {results['one_step']['scores']['MAPE']:.2f}%)")
    if plot:
        save_plot(plot, "airline", months=months, series=y_all, n_train=n_train,
                  forecasts={"LSTM 24 months ahead": rec, "LSTM one month ahead": one,
                             "seasonal naive (1958 repeated)": snaive_rec},
                  print_fn=print_fn)
    return results


# --------------------------------------------------------------------------------------- plots


def save_plot(path, kind, print_fn=print, **data):
    """Save the adding learning curves or the airline forecast as a picture; returns True,
    or False (with a hint) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print_fn(f"--plot {path}: {PLOT_HINT}")
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if kind == "adding":
        for name, curve in data["curves"].items():
            ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
        ax.axhline(data["baseline"], color="gray", linestyle="--", label="baseline (predict 1)")
        ax.set_yscale("log")
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test MSE")
        ax.set_title("Adding problem: test MSE per epoch")
    else:
        months, series, n_train = data["months"], data["series"], data["n_train"]
        t = np.arange(len(series))
        ax.plot(t, series, color="black", label="actual")
        for name, fc in data["forecasts"].items():
            ax.plot(t[n_train:], fc, label=name)
        ticks = t[::12]
        ax.set_xticks(ticks)
        ax.set_xticklabels([m[:4] for m in months[::12]], rotation=45)
        ax.axvline(n_train - 0.5, color="gray", linestyle=":")
        ax.set_ylabel("passengers (thousands)")
        ax.set_title("Airline passengers: forecast of 1959-1960")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print_fn(f"plot saved to {path}")
    return True
