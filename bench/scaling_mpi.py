"""MPI data-parallel training: scaling efficiency, allreduce share, projection to 64 ranks.

    python bench/scaling_mpi.py [--runs 5] [--steps 30]       # the driver: launches the jobs

The driver alternates ``mpiexec -n 1`` and ``mpiexec -n 2`` jobs of this script (1 thread
per rank) training ``LSTM(64) -> Dense(1)`` on T=100, F=8 float32 with the same global batch
of 64: 1 rank x batch 64 against 2 ranks x batch 32. Each job reports its steps per second
and the share of step time spent in the gradient allreduce (``DistributedOptimizer``'s
counters; on 2 ranks this includes waiting for the slower rank), then times allreduces of
the gradient's size and of 1 and 16 MiB alone (loopback). The driver prints medians, the
scaling efficiency (steps/s on 2 ranks / steps/s on 1 rank / 2... of the same global
batch, i.e. speed-up / 2), and the ring-allreduce projection to 64 ranks over 10 and 25
Gbit/s links. Timings are for docs/scaling.md, never for tests.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
T, F, UNITS, GLOBAL_BATCH = 100, 8, 64, 64


def job(args):
    import fastlstm as fl
    import fastlstm.distributed as fld
    from mpi4py import MPI
    fld.init(threads=1)
    comm, rank, size = fld.comm(), fld.rank(), fld.size()
    batch = args.batch or GLOBAL_BATCH // size
    steps = args.steps + 5
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * size * steps, T, F)).astype(np.float32)
    y = x[:, -1, :1].copy()
    xs, ys = fld.shard(x), fld.shard(y)
    model = fl.Sequential([fl.layers.LSTM(UNITS), fl.layers.Dense(1)])
    model.build((None, T, F))
    model.compile(optimizer=fld.DistributedOptimizer(fl.optimizers.Adam(1e-3)), loss="mse")
    grad_bytes = sum(w.nbytes for w in model.trainable_weights)
    model.fit(xs, ys, batch_size=batch, epochs=1, shuffle=False, verbose=0,
              callbacks=[fld.BroadcastGlobalVariablesCallback(0)])  # compile, warm, equalise
    opt = model.optimizer
    opt.allreduce_seconds, opt.allreduce_calls = 0.0, 0
    comm.Barrier()
    t0 = time.perf_counter()
    for k in range(args.steps):
        model.train_on_batch(xs[k * batch:(k + 1) * batch], ys[k * batch:(k + 1) * batch])
    seconds = time.perf_counter() - t0
    comm.Barrier()
    allreduce = {}
    for nbytes in (8, grad_bytes, 2**20, 16 * 2**20):
        buf = np.ones(max(nbytes // 4, 1), np.float32)
        reps = max(5, min(200, int(2e8 // max(nbytes, 1))))
        comm.Allreduce(MPI.IN_PLACE, buf)
        comm.Barrier()
        t = time.perf_counter()
        for _ in range(reps):
            comm.Allreduce(MPI.IN_PLACE, buf)
        allreduce[nbytes] = (time.perf_counter() - t) / reps
    result = {"ranks": size, "batch": batch, "steps_per_s": args.steps / seconds,
              "allreduce_share": opt.allreduce_seconds / seconds if size > 1 else 0.0,
              "allreduce_per_step_s": opt.allreduce_seconds / max(opt.allreduce_calls, 1),
              "grad_bytes": grad_bytes, "allreduce_alone_s": allreduce}
    results = comm.gather(result, root=0)
    if rank == 0:
        print("RESULT " + json.dumps(results[0] | {
            "allreduce_share": max(r["allreduce_share"] for r in results)}))


def cpu_name():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return (f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()}, "
            f"model {fields.get('Model', '?').strip()})")


def driver(args):
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    env = dict(os.environ, PYTHONPATH=ROOT)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} CPUs; load average {os.getloadavg()}")
    # 1 rank x 64, 2 ranks x 32 (the same global batch), 1 rank x 32 (the same per-rank work)
    configs = {1: (1, GLOBAL_BATCH), 2: (2, GLOBAL_BATCH // 2), "1x32": (1, GLOBAL_BATCH // 2)}
    runs = {k: [] for k in configs}
    for _ in range(args.runs):
        for key, (n, batch) in configs.items():
            time.sleep(args.pause)
            out = subprocess.run([mpiexec, "-n", str(n), sys.executable, __file__, "--job",
                                  "--steps", str(args.steps), "--batch", str(batch)], env=env,
                                 capture_output=True, text=True, timeout=600)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"mpiexec -n {n} failed:\n{out.stdout}\n{out.stderr}")
            runs[key].append(json.loads(line[0][7:]))
    med = {n: statistics.median(r["steps_per_s"] for r in runs[n]) for n in runs}
    pairs = [b["steps_per_s"] / a["steps_per_s"] for a, b in zip(runs[1], runs[2])]
    share = statistics.median(r["allreduce_share"] for r in runs[2])
    per_step = statistics.median(r["allreduce_per_step_s"] for r in runs[2])
    grad_bytes = runs[1][0]["grad_bytes"]
    alone = {int(k): statistics.median(r["allreduce_alone_s"][k] for r in runs[2])
             for k in runs[2][0]["allreduce_alone_s"]}
    for n in (1, 2):
        print(f"{n} rank(s) x batch {GLOBAL_BATCH // n} (1 thread each): steps/s "
              + ", ".join(f"{r['steps_per_s']:.1f}" for r in runs[n]) + f"; median {med[n]:.1f}")
    print(f"1 rank x batch {GLOBAL_BATCH // 2}: steps/s "
          + ", ".join(f"{r['steps_per_s']:.1f}" for r in runs["1x32"])
          + f"; median {med['1x32']:.1f}")
    print(f"speed-up 2 ranks / 1 rank, same global batch {GLOBAL_BATCH}: per pair "
          + ", ".join(f"{p:.2f}" for p in pairs) + f"; median {statistics.median(pairs):.2f}, "
          f"efficiency {statistics.median(pairs) / 2:.0%}")
    weak = [b["steps_per_s"] / a["steps_per_s"] for a, b in zip(runs["1x32"], runs[2])]
    print(f"one rank: a batch-{GLOBAL_BATCH} step {1e3 / med[1]:.1f} ms, a batch-"
          f"{GLOBAL_BATCH // 2} step {1e3 / med['1x32']:.1f} ms: the ideal speed-up of 2 ranks "
          f"x {GLOBAL_BATCH // 2} over 1 rank x {GLOBAL_BATCH} is {med['1x32'] / med[1]:.2f}x, "
          f"not 2x (smaller products run less efficiently)")
    print(f"2 ranks x {GLOBAL_BATCH // 2} over 1 rank x {GLOBAL_BATCH // 2} (the same work per "
          f"rank; ideal 1): per pair " + ", ".join(f"{w:.2f}" for w in weak)
          + f"; median {statistics.median(weak):.2f}")
    print(f"allreduce in the 2-rank steps: {share:.1%} of step time (median), "
          f"{per_step * 1e6:.0f} us per step, gradient {grad_bytes} bytes (includes waiting "
          f"for the slower rank); the same allreduce alone: {alone[grad_bytes] * 1e6:.0f} us, "
          f"{alone[grad_bytes] * med[2]:.1%} of a step")
    for k, v in sorted(alone.items()):
        print(f"allreduce alone, 2 ranks loopback, {k} bytes: {v * 1e6:.1f} us "
              f"({2 * (2 - 1) / 2 * k / v / 1e9:.2f} GB/s ring bus bandwidth)")
    # Projection: each rank of a cluster runs alone on its cores, so its compute per step is
    # that of one rank alone at batch 32 (the 2-rank job here shares 2 vCPUs and is slower);
    # the ring allreduce moves 2 (N - 1) / N x bytes over each link.
    contended = 1 / med[2] - per_step
    compute = 1 / med["1x32"]
    print(f"compute per step at batch {GLOBAL_BATCH // 2} per rank: {compute * 1e3:.1f} ms alone, "
          f"{contended * 1e3:.1f} ms in the 2-rank job (its step less its allreduce)")
    flops = 3 * 8 * (GLOBAL_BATCH // 2) * UNITS * (F + UNITS) * T    # forward + 2x backward
    rate = flops / compute
    print(f"  = {rate / 1e9:.1f} GFLOP/s per rank (LSTM GEMM FLOPs, 3 x forward)")
    for gbit in (10, 25):
        bw = gbit * 1e9 / 8
        for n in (2, 8, 64):
            t_ar = 2 * (n - 1) / n * grad_bytes / bw
            print(f"  {gbit} Gbit/s, {n} ranks: allreduce {t_ar * 1e6:.0f} us/step, "
                  f"efficiency {compute / (compute + t_ar):.1%} (no overlap, bandwidth term)")
        # compute = 24 b T H (I + H) / rate; allreduce = 2 (N - 1) / N x 16 H (I + H) / bw:
        # equal when b T = 2 (N - 1) / N x 16 / 24 x rate / bw
        print(f"  {gbit} Gbit/s, 64 ranks: allreduce time equals compute (50% efficiency) at "
              f"batch x timesteps per rank = {2 * 63 / 64 * 16 / 24 * rate / bw:.0f}, whatever H")
    for alpha in (10e-6, 50e-6):
        # ring latency term 2 (N - 1) alpha; compute must exceed it
        need = 2 * 63 * alpha * rate / 24
        print(f"  latency {alpha * 1e6:.0f} us per message, 64 ranks: {2 * 63 * alpha * 1e3:.2f} ms "
              f"per allreduce; 50% efficiency where b T H (I + H) = {need:.3g} "
              f"(H={UNITS}, I={F}, T={T}: batch {need / (T * UNITS * (F + UNITS)):.1f} per rank; "
              f"H=16: batch {need / (T * 16 * (F + 16)):.0f})")
    print(f"load average after: {os.getloadavg()}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=0)
    parser.add_argument("--pause", type=float, default=1.0)
    args = parser.parse_args()
    job(args) if args.job else driver(args)


if __name__ == "__main__":
    main()
