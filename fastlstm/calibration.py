"""Run-time calibration of the kernels' choices that depend on the CPU, at batch 1.

Three choices of the one-row (and few-row) paths run faster one way or the other by CPU
(bench/RESULTS.md, "Kernel thresholds"). Two use a second thread, and whether that pays
depends on how fast two cores hand work to each other and on the speed of one core's own
product, which differ between CPUs, vendors and virtual machines:

- ``pipe_min_macs``: the input projection run beside the time loop on a second thread, a
  block of steps at a time (``driver.pxi: forward_pipelined``), or first;
- ``cols_min_bytes``: one-row LSTM inference with its units split over the threads, one
  barrier per step (``_lstm.forward_cols``), or on one thread;
- ``gemv_rows``: a one-row product (the streaming step; sequences of fewer than 32 steps)
  reads rows of the weights of 1 KiB and more one a pass over its output, or eight
  (``matmul_impl.h: fl_gemv_acc``): one stream against an eighth of the stores, which is
  what a core that stores 512-bit vectors at half rate (AMD Zen 4) runs faster.

Both paths of each choice give the same bits (tests/test_calibration.py runs every path), so
the calibration changes speed, never results. At the first call of the kernels (for each
thread count), ``choices`` times the paths on a few one-row LSTM shapes (about 0.1 s in
all, at most BUDGET_SECONDS; the two-thread paths only with two threads or more) and the
faster one sets each choice; a two-thread path must win by 5% to be chosen (a tie goes to
the path that needs no second core), eight rows a pass by 2%. The choices are kept per machine in a
JSON file, ``$XDG_CACHE_HOME/fastlstm/calibration.json`` (``~/.cache/fastlstm/`` without
it), keyed by the CPU model, fastlstm's version and the thread count; later processes read
them from there. ``FASTLSTM_CALIBRATE=0`` turns it off (the defaults of
``fastlstm.threads.KernelSettings`` then hold). A missing, unreadable, corrupted or read-only
cache never fails a call: the choices are then measured again, or the defaults used.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time

import numpy as np

ENV = "FASTLSTM_CALIBRATE"
FORMAT = 1
FILE = "calibration.json"
# What calibrate sets (the KernelSettings fields); None in a choice means "never".
FIELDS = ("pipe_min_macs", "cols_min_bytes", "gemv_rows")
# (units, steps) of the one-row LSTM inference timed: U of 256 KiB, 1 MiB and 4 MiB.
SHAPES = ((128, 100), (256, 64), (512, 24))
# ... and of the one-row products read in place (fewer than 32 steps: U is not copied into
# panels), rows_per_pass 1 against 8: the streaming step's product.
GEMV_SHAPES = ((128, 24), (256, 12))
# A path on a second thread must take at most this fraction of the time of the other.
MARGIN = 0.95
ROUNDS = 7
BLOCK_SECONDS = 0.002
BUDGET_SECONDS = 0.3
# Timings that varied too much (a busy machine) are measured again by the next processes,
# up to this many times in all; then the last choice stays.
UNSTEADY_TRIES = 3

_lock = threading.Lock()
_memo: dict = {}


def enabled() -> bool:
    """Whether calibration runs (FASTLSTM_CALIBRATE unset, or anything but 0/false/no/off)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_path() -> str:
    """The calibration file: $XDG_CACHE_HOME/fastlstm/calibration.json, else under
    ~/.cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastlstm", FILE)


def cpuinfo():
    """The first CPU's fields in /proc/cpuinfo (lower-case keys), or None where it cannot
    be read."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break                      # the first CPU is enough
                key, _, value = line.partition(":")
                info[key.strip().lower()] = value.strip()
    except OSError:
        return None
    return info


def cpu_name() -> str:
    """The CPU's model name with its family and model numbers (from /proc/cpuinfo where
    there is one), else what the platform module says."""
    info = cpuinfo() or {}
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown"
    if "cpu family" in info:
        name += f" (family {info['cpu family']} model {info.get('model', '?')} " \
                f"stepping {info.get('stepping', '?')})"
    return name


def machine_key(threads: int) -> str:
    """What a calibration is kept under: the CPU, fastlstm's version and the threads."""
    from ._version import __version__
    return f"{cpu_name()} | fastlstm {__version__} | {int(threads)} threads"


def _valid(choice) -> bool:
    if not isinstance(choice, dict):
        return False
    for k in FIELDS:
        v = choice.get(k, 0)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not v >= 0):
            return False
    return choice.get("gemv_rows", 1) in (1, 8)


def read_cache(path: str | None = None) -> dict:
    """The machines' choices in the cache file ({} when it is missing or unreadable, or
    not a calibration file of this format)."""
    try:
        with open(path or cache_path(), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    machines = data.get("machines")
    if not isinstance(machines, dict):
        return {}
    return {k: v for k, v in machines.items() if isinstance(k, str) and _valid(v)}


def write_cache(key: str, choice: dict, path: str | None = None) -> bool:
    """Adds (or replaces) one machine's choices in the cache file, written whole to a
    temporary file that then replaces it. False where that failed (nothing raised)."""
    path = path or cache_path()
    try:
        machines = read_cache(path)
        machines[key] = choice
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".calibration-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "machines": machines}, f, indent=1,
                          sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return True
    except (OSError, ValueError, TypeError):
        return False


def _problem(H, T):
    """The arguments of a one-row LSTM inference of H units (I = H) over T steps."""
    import numpy as np
    from .activations import get
    rng = np.random.default_rng(H)
    f = np.float32
    x = rng.standard_normal((T, 1, H)).astype(f)
    W = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(f)
    U = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(f)
    b = np.zeros(4 * H, f)
    h0 = np.zeros((1, H), f)
    return (x, W, U, b, h0, h0.copy(), None, None, None, None, get("tanh"), get("sigmoid"),
            False, False, True, False)


def _variants(threads, gemv=False):
    """The paths timed: serial (one thread), pipe (the projection beside the loop) and cols
    (the units split over the threads); with gemv, serial with one row of U a pass (serial)
    and eight (rows8)."""
    from .threads import KernelSettings
    out = {}
    paths = ((("serial", False, False, 1), ("rows8", False, False, 8)) if gemv else
             (("serial", False, False, 1), ("pipe", True, False, 1), ("cols", False, True, 1)))
    for name, pipe, cols, rows in paths:
        s = KernelSettings()
        s.threads = threads
        s.pipe_min_macs = 0.0 if pipe else 1e300
        s.cols_min_bytes = 0 if cols else 1 << 62
        s.gemv_rows = rows
        out[name] = s
    return out


def measure(threads: int, budget: float = BUDGET_SECONDS) -> tuple:
    """Seconds per call of each path on each shape of GEMV_SHAPES (keys "gemv H") and, with
    two threads or more, of SHAPES (keys H), ({key: {path: seconds}}, steady):
    medians over ROUNDS alternating blocks of about BLOCK_SECONDS, without a path whose
    outputs differ from the serial path's (then it is not chosen). A path that takes more
    than 3x the serial time (a second core busy elsewhere) is dropped early, and the rounds
    stop when the budget is spent; steady is False then, or when a path's blocks varied by
    more than 1.5x (the timings are not worth keeping)."""
    import numpy as np
    from . import _lstm
    from .threads import single_threaded_blas
    jobs = [(f"gemv {H}", H, T, _variants(threads, True)) for H, T in GEMV_SHAPES]
    if threads >= 2:
        jobs += [(H, H, T, _variants(threads)) for H, T in SHAPES]
    times = {}
    steady = True
    start = time.perf_counter()
    with single_threaded_blas():
        for key, H, T, variants in jobs:
            args = _problem(H, T)
            ref = None
            calls, per = {}, {}
            for name, s in variants.items():
                _lstm.forward(*args, settings=s)             # warm: packing, threads
                t0 = time.perf_counter()
                y = _lstm.forward(*args, settings=s)[0]
                per[name] = max(time.perf_counter() - t0, 1e-7)
                if ref is None:
                    ref = y
                if np.array_equal(y, ref):
                    calls[name] = s
            samples = {k: [] for k in calls}
            for _ in range(ROUNDS):
                for name, s in list(calls.items()):
                    n = max(1, min(20, int(BLOCK_SECONDS / per[name])))
                    t0 = time.perf_counter()
                    for _ in range(n):
                        _lstm.forward(*args, settings=s)
                    samples[name].append((time.perf_counter() - t0) / n)
                    if name != "serial" and samples[name][-1] > 3 * min(samples["serial"]):
                        del calls[name]                  # lost by far: no more rounds
                if time.perf_counter() - start > budget:
                    steady = False
                    break
            times[key] = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
            steady = steady and all(max(v) <= 1.5 * min(v) for v in samples.values())
            if time.perf_counter() - start > budget:
                steady = False
                break
    return times, steady


def _first_win(times: dict, ratio) -> int | None:
    """The smallest shape (units) at which a path wins (ratio <= MARGIN), and wins at most
    of the shapes from it up and over them taken together (the geometric mean of their
    ratios <= MARGIN): one noisy shape does not decide. None where there is none."""
    sizes = sorted(times)
    for i, H in enumerate(sizes):
        rs = [ratio(times[k]) for k in sizes[i:]]
        wins = sum(r <= MARGIN for r in rs)
        if (rs[0] <= MARGIN and 2 * wins > len(rs)
                and float(np.prod(rs)) ** (1.0 / len(rs)) <= MARGIN):
            return H
    return None


def choose(times: dict) -> dict:
    """The choices from measure's timings: each threshold from the smallest shape from
    which its two-thread path wins (_first_win), None where it does not; the pipeline's
    stays the default's where it wins from the smallest shape; eight rows a pass where
    they take at most 0.98 of the time of one row, over GEMV_SHAPES together."""
    from .threads import KernelSettings
    gemv = [t for k, t in times.items() if isinstance(k, str)]
    rows = 1
    if gemv and all("rows8" in t for t in gemv):
        rows = 8 if sum(t["rows8"] for t in gemv) <= 0.98 * sum(t["serial"] for t in gemv) else 1
    times = {k: t for k, t in times.items() if not isinstance(k, str)}
    sizes = sorted(times)
    if not sizes:                     # one thread: nothing else to choose
        return {"pipe_min_macs": None, "cols_min_bytes": None, "gemv_rows": rows}
    lost = 1e9                        # a path dropped or not run: lost
    pipe_from = _first_win(times, lambda t: t.get("pipe", lost) / t["serial"])
    cols_from = _first_win(times, lambda t: t.get("cols", lost)
                           / min(t["serial"], t.get("pipe", t["serial"])))
    steps = dict(SHAPES)
    pipe = None
    if pipe_from is not None:
        pipe = (KernelSettings().pipe_min_macs if pipe_from == sizes[0]
                else float(steps[pipe_from] * pipe_from * 4 * pipe_from))
    cols = None if cols_from is None else int(cols_from * 4 * cols_from * 4)
    return {"pipe_min_macs": pipe, "cols_min_bytes": cols, "gemv_rows": rows}


def choices(threads: int) -> dict | None:
    """The calibrated thresholds for this machine and thread count: from this process's
    memo, the cache file, or measured now (and written to the cache); with one thread only
    gemv_rows (the others stay the defaults). None with calibration off."""
    if not enabled():
        return None
    key = machine_key(threads)
    if key in _memo:
        return _memo[key]
    cached = read_cache().get(key)
    tries = 0
    if cached is not None:
        tries = cached.get("tries", 0) if isinstance(cached.get("tries", 0), int) else 0
        if cached.get("steady", True) is not False or tries >= UNSTEADY_TRIES:
            _memo[key] = {k: cached.get(k) for k in FIELDS}
            return _memo[key]
    t0 = time.perf_counter()
    times, steady = measure(threads)
    choice = choose(times)
    _memo[key] = choice
    record = dict(choice)
    record["seconds"] = round(time.perf_counter() - t0, 4)
    record["steady"] = steady           # unsteady: measured again by the next processes,
    record["tries"] = tries + 1         # up to UNSTEADY_TRIES times
    record["ms"] = {str(k): {p: round(v * 1e3, 4) for p, v in t.items()}
                    for k, t in times.items()}
    write_cache(key, record)
    return choice


def apply(settings) -> None:
    """settings's calibrated fields (those no setter fixed) from choices() for its thread
    count, or back to their defaults. Never raises: the defaults stay on any failure."""
    from .threads import KernelSettings
    with _lock:
        threads = settings.threads
        if settings.calibrated_for == threads:
            return
        settings.calibrated_for = threads       # before measuring: the kernels' calls below
        defaults = KernelSettings()
        free = [k for k in FIELDS if k not in settings.fixed]
        for k in free:
            setattr(settings, k, getattr(defaults, k))
        try:
            choice = choices(threads)
        except Exception:                       # never fail a call over a calibration
            choice = None
        if choice is None:
            return
        never = {"pipe_min_macs": 1e300, "cols_min_bytes": 1 << 62}
        for k in free:
            v = choice.get(k)
            if k == "gemv_rows":
                setattr(settings, k, 8 if v == 8 else 1)
            elif threads >= 2:
                setattr(settings, k, never[k] if v is None else type(getattr(defaults, k))(v))


def forget() -> None:
    """Drops this process's memo (tests; a new calibration or cache read follows)."""
    _memo.clear()
