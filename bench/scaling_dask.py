"""Dask batch scoring: equality, streaming memory and throughput of ``fastlstm.dask.predict``.

    python bench/scaling_dask.py [--n 200000] [--check 20000] [--throughput 20000] [--runs 5]

On ``distributed.LocalCluster``s of worker processes (``processes=True``), for
``LSTM(64) -> Dense(1)`` on sequences of T=100, F=8 (float32), batch_size 32:

1. equality: ``predict`` on 2 workers x 1 thread against ``model.predict`` of the same array,
   bit for bit, on ``--check`` sequences;
2. streaming: ``--n`` sequences generated on the workers chunk by chunk
   (``dask.array.random``), scored and stored into an output array on the client, so no
   process ever holds the inputs; reports each worker's peak resident set
   (``VmHWM``) and its resident set before the job;
3. throughput: the same ``--throughput`` sequences on 1 worker x 1 thread and on 2 workers x
   1 thread (chunks of ``--throughput-chunk``: 40 tasks by default, so that one task's
   tail is a small part of a run), alternating (A, B, A, B, ...) with a pause between runs,
   ``--runs`` each;
   medians of sequences per second and of the per-pair ratios. In the same rounds, without
   Dask: one plain process scoring ``--throughput`` sequences on 1 thread against two such
   processes at once, which is what the two cores deliver at that moment (on a shared
   virtual machine, often less than 2x).

Prints the CPU it ran on. Timings are for docs/scaling.md, never for tests.
"""
import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

T, F, UNITS, BATCH, CHUNK = 100, 8, 64, 32, 2048


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return (f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()}, "
                f"model {fields.get('Model', '?').strip()}), {os.cpu_count()} CPUs")
    except OSError:
        return platform.processor() or "unknown CPU"


def peak_rss_mib():
    """This process's peak resident set (VmHWM). Not ru_maxrss: a worker process is forked
    from the client's and ru_maxrss keeps the parent's peak across fork and exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_model():
    import fastlstm as fl
    np.random.seed(0)
    model = fl.Sequential([fl.layers.LSTM(UNITS), fl.layers.Dense(1)])
    model.build((None, T, F))
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(-0.2, 0.2, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


def sequences(n, seed=0, chunk=CHUNK):
    import dask.array as da
    return da.random.default_rng(seed).standard_normal((n, T, F), chunks=(chunk, T, F),
                                                       dtype=np.float32)


def plain_worker(n):
    """One process scoring ``n`` sequences in chunks of CHUNK on one thread; prints its rate."""
    import fastlstm as fl
    fl.set_num_threads(1)
    model = make_model()
    x = np.random.default_rng(0).standard_normal((CHUNK, T, F)).astype(np.float32)
    model.predict(x[:256], batch_size=BATCH)
    t0 = time.perf_counter()
    for start in range(0, n, CHUNK):
        model.predict(x[:min(CHUNK, n - start)], batch_size=BATCH)
    print(n / (time.perf_counter() - t0))


def plain_processes(k, n):
    """Aggregate sequences/s of ``k`` plain processes started together (imports excluded)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--plain-worker", str(n)],
                              stdout=subprocess.PIPE, text=True) for _ in range(k)]
    return sum(float(p.communicate()[0].split()[-1]) for p in procs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plain-worker", type=int, default=0)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--check", type=int, default=20_000)
    parser.add_argument("--throughput", type=int, default=40_000)
    parser.add_argument("--throughput-chunk", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pause", type=float, default=1.0)
    args = parser.parse_args()
    if args.plain_worker:
        return plain_worker(args.plain_worker)

    import dask
    import distributed
    import fastlstm as fl
    import fastlstm.dask as fd

    print(f"CPU: {cpu_name()}; load average {os.getloadavg()}")
    print(f"fastlstm {fl.__version__}, dask {dask.__version__}, distributed "
          f"{distributed.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
    model = make_model()

    def cluster(workers):
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                        processes=True, dashboard_address=None,
                                        memory_limit="4GiB")

    with cluster(2) as c2, distributed.Client(c2) as client:
        # 1. equality
        x = sequences(args.check, seed=1)
        got = fd.predict(model, x, batch_size=BATCH).compute()
        with fd.limited_threads(1):     # the tasks' thread count
            expected = model.predict(x.compute(), batch_size=BATCH)
        equal = np.array_equal(got, expected)
        print(f"equality on {args.check} sequences, 2 workers x 1 thread: "
              f"{'bit for bit' if equal else 'DIFFERENT'} (max |diff| "
              f"{float(np.abs(got - expected).max()):.3g})")

        # 2. streaming
        client.restart()
        before = client.run(rss_mib)
        x = sequences(args.n, seed=2)
        t0 = time.perf_counter()
        out = fd.predict(model, x, batch_size=BATCH).compute()   # only the outputs come back
        seconds = time.perf_counter() - t0
        peaks = client.run(peak_rss_mib)
        print(f"streaming {args.n} x ({T}, {F}) float32 ({args.n * T * F * 4 / 2**20:.0f} MiB "
              f"of input, chunks of {CHUNK}) through LSTM({UNITS}) -> Dense(1): {seconds:.1f} s, "
              f"{args.n / seconds:.0f} sequences/s; resident set per worker before the job "
              + ", ".join(f"{v:.0f}" for v in before.values()) + " MiB, peak "
              + ", ".join(f"{v:.0f}" for v in peaks.values()) + " MiB; client peak "
              f"{peak_rss_mib():.0f} MiB (holds the {out.nbytes / 2**20:.1f} MiB of outputs)")
        assert np.isfinite(out).all()

    # 3. throughput, alternating
    with cluster(1) as c1, cluster(2) as c2:
        # Many tasks per worker, so the last task's tail is a small part of a run.
        x = sequences(args.throughput, seed=3, chunk=args.throughput_chunk)
        clients = {1: distributed.Client(c1, set_as_default=False),
                   2: distributed.Client(c2, set_as_default=False)}
        data = {k: cl.persist(x) for k, cl in clients.items()}   # inputs already on workers
        for cl, d in zip(clients.values(), data.values()):
            cl.compute(d.sum(), sync=True)
        rates = {1: [], 2: []}

        def run(k):
            with clients[k].as_current():
                y = fd.predict(model, data[k], batch_size=BATCH)
                t0 = time.perf_counter()
                clients[k].compute(y.sum(), sync=True)
                return args.throughput / (time.perf_counter() - t0)

        run(1), run(2)                     # warm: models loaded on every worker
        plain = {1: [], 2: []}
        for _ in range(args.runs):
            for k in (1, 2):
                time.sleep(args.pause)
                rates[k].append(run(k))
            for k in (1, 2):
                time.sleep(args.pause)
                plain[k].append(plain_processes(k, args.throughput))
        ratios = [b / a for a, b in zip(rates[1], rates[2])]
        for k in (1, 2):
            print(f"{k} worker(s) x 1 thread: " + ", ".join(f"{r:.0f}" for r in rates[k])
                  + f" sequences/s, median {statistics.median(rates[k]):.0f}")
        print(f"2 x 1 over 1 x 1: per-pair ratios " + ", ".join(f"{r:.2f}" for r in ratios)
              + f"; median ratio {statistics.median(ratios):.2f}, ratio of medians "
              f"{statistics.median(rates[2]) / statistics.median(rates[1]):.2f}")
        plain_ratios = [b / a for a, b in zip(plain[1], plain[2])]
        for k in (1, 2):
            print(f"without Dask, {k} process(es) x 1 thread: " + ", ".join(
                f"{r:.0f}" for r in plain[k]) + f" sequences/s, median "
                f"{statistics.median(plain[k]):.0f}")
        print(f"without Dask, 2 processes over 1: per-round ratios " + ", ".join(
            f"{r:.2f}" for r in plain_ratios) + f"; median {statistics.median(plain_ratios):.2f}")
        for cl in clients.values():
            cl.close()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
