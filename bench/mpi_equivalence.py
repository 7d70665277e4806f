"""How close 2 ranks x batch 32 come to one process with batch 64 after 20 steps.

    python bench/mpi_equivalence.py

Runs ``tests/mpi_train.py`` under ``mpiexec -n 2`` (float32 and float64; Adam and SGD with
momentum), trains the same model from rank 0's starting weights in this process with batch
64 on the same rows in the same order, and prints the largest relative difference of the
weights (|a - b| / max|b| per weight array); tests/test_distributed.py asserts 1e-5 (float32)
and 1e-12 (float64).
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import mpi_train  # noqa: E402


def weights(path, which):
    with np.load(path) as f:
        keys = sorted((k for k in f.files if k.startswith(which + "/")),
                      key=lambda k: int(k.split("/")[1]))
        return [f[k] for k in keys]


def main():
    import fastlstm as fl
    fl.set_loop_threads(1)
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    for dtype in ("float32", "float64"):
        for opt in ("adam", "sgd"):
            with tempfile.TemporaryDirectory() as out:
                subprocess.run([mpiexec, "-n", "2", sys.executable,
                                os.path.join(ROOT, "tests", "mpi_train.py"), out, dtype, opt],
                               env=dict(os.environ, PYTHONPATH=ROOT), check=True,
                               capture_output=True, timeout=300)
                rank0 = os.path.join(out, "rank0.npz")
                x, y = mpi_train.data(dtype)
                model = mpi_train.build_model(dtype)
                model.set_weights(weights(rank0, "initial"))
                model.compile(optimizer=mpi_train.optimizer(opt), loss="mse")
                model.fit(x, y, batch_size=2 * mpi_train.BATCH, epochs=mpi_train.EPOCHS,
                          shuffle=False, verbose=0)      # on 1 thread, as each rank
                rel = max(float(np.abs(a - b).max() / np.abs(b).max())
                          for a, b in zip(weights(rank0, "final"), model.get_weights()))
                moved = max(float(np.abs(a - b).max())
                            for a, b in zip(weights(rank0, "initial"), model.get_weights()))
                print(f"{dtype} {opt}: after {model.optimizer.iterations} steps, largest "
                      f"relative difference {rel:.2e} (largest change of a weight over the "
                      f"steps: {moved:.3f})")


if __name__ == "__main__":
    main()
