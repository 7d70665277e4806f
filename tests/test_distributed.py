"""fastlstm.distributed: 2 ranks under mpiexec take the steps of one process with twice the
batch; a rank that raises ends the job. Skipped where mpi4py or mpiexec is missing."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastlstm as fl
import fastlstm.distributed as fld

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import mpi_train  # noqa: E402

# Weights after 20 steps against one process with the global batch: only the order of the
# floating-point sums differs.
RTOL = {"float32": 1e-5, "float64": 1e-12}


def _mpiexec():
    pytest.importorskip("mpi4py.MPI")
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec (pip install mpich)")
    return found


_REFERENCE = """
import sys
import numpy as np
import fastlstm as fl
import mpi_train
from test_distributed import _weights
rank0, out, dtype, opt = sys.argv[1:5]
x, y = mpi_train.data(dtype)
model = mpi_train.build_model(dtype)
model.set_weights(_weights(rank0, "initial"))
model.compile(optimizer=mpi_train.optimizer(opt), loss="mse", metrics=["mae"])
fl.set_loop_threads(1)                          # as each rank
history = model.fit(x, y, batch_size=2 * mpi_train.BATCH, epochs=mpi_train.EPOCHS,
                    shuffle=False, verbose=0)
np.savez(out, iterations=model.optimizer.iterations, loss=history.history["loss"],
         **{f"w{i}": w for i, w in enumerate(model.get_weights())})
"""


def _launch(out, dtype, optimizer, *extra, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [_mpiexec(), "-n", "2", sys.executable, os.path.join(HERE, "mpi_train.py"),
           str(out), dtype, optimizer, *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _weights(path, which):
    with np.load(path) as f:
        keys = sorted((k for k in f.files if k.startswith(which + "/")),
                      key=lambda k: int(k.split("/")[1]))
        return [f[k] for k in keys]


@pytest.mark.parametrize("dtype,optimizer,mode", [
    ("float32", "adam", ""), ("float64", "adam", ""), ("float32", "sgd", ""),
    ("float64", "adam", "segments")])
def test_two_ranks_equal_one_process_with_the_global_batch(tmp_path, dtype, optimizer, mode):
    run = _launch(tmp_path, dtype, optimizer, *([mode] if mode else []))
    assert run.returncode == 0, run.stdout + run.stderr
    rank0, rank1 = tmp_path / "rank0.npz", tmp_path / "rank1.npz"
    final0, final1 = _weights(rank0, "final"), _weights(rank1, "final")
    for a, b in zip(final0, final1):          # the same averaged step on both ranks
        np.testing.assert_array_equal(a, b)

    # One process, batch 64, the same data in the same order, from rank 0's start; in a
    # fresh process like the ranks, so no kernel setting left by another test differs.
    ref = tmp_path / "reference.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, "-c", _REFERENCE, str(rank0), str(ref), dtype,
                           optimizer], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    with np.load(rank0) as f:
        assert int(f["allreduce_calls"]) == 20
        loss = f["loss"]
        segments = int(f["allreduce_segments"])
    # The small default bucket holds this model's gradients: one reduction a step. With
    # bucket_bytes=0, from the second step on, the Dense layer's gradients are reduced when
    # its backward ends, while the LSTM's runs, and the LSTM's after it: two a step.
    assert segments == (20 if mode == "" else 1 + 2 * 19), segments
    with np.load(ref) as f:
        assert int(f["iterations"]) == 20
        want_weights = [f[f"w{i}"] for i in range(len(final0))]
        history_loss = f["loss"]
    for name, got, want in zip(("kernel", "recurrent_kernel", "bias", "dense kernel",
                                "dense bias"), final0, want_weights):
        np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(want).max(),
                                   err_msg=name)
    # MetricAverageCallback: each rank's epoch loss averaged = the mean over all batches
    np.testing.assert_allclose(loss, history_loss, rtol=1e-3)

    # Rank 0 alone writes checkpoints and prints the progress lines.
    assert (tmp_path / "ckpt-rank0" / "model.npz").exists()
    assert not (tmp_path / "ckpt-rank1").exists()
    assert run.stdout.count("10/10") == mpi_train.EPOCHS, run.stdout
    loaded = fl.load_model(tmp_path / "ckpt-rank0" / "model.npz")
    assert type(loaded.optimizer).__name__ == {"adam": "Adam", "sgd": "SGD"}[optimizer]


def test_the_documented_train_py_runs_under_mpiexec(tmp_path):
    with open(os.path.join(ROOT, "docs", "scaling.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```py\n(.*?)```", f.read(), re.S)
    assert len(blocks) == 1, "docs/scaling.md: expected one ```py block, the train.py example"
    (tmp_path / "train.py").write_text(blocks[0], encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "train.py"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 ranks: loss" in run.stdout and (tmp_path / "checkpoint.npz").exists()
    assert run.stdout.count("Epoch 3/3") == 1         # rank 0's progress lines only


def test_a_rank_that_raises_ends_the_job(tmp_path):
    try:
        run = _launch(tmp_path, "float32", "adam", "fail", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the job hung after one rank raised")
    assert run.returncode != 0
    assert "deliberate failure on rank 1 at step 4" in run.stderr
    assert "rank 1 of 2 raised" in run.stderr
    assert not (tmp_path / "rank0.npz").exists()


def test_ranks_with_different_numbers_of_steps_stop_instead_of_hanging(tmp_path):
    try:
        run = _launch(tmp_path, "float32", "sgd", "unequal", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the job hung with unequal shards")
    assert run.returncode != 0
    assert "steps per epoch and epochs" in run.stderr and "the ranks disagree" in run.stderr


def test_importing_fastlstm_imports_neither_mpi_nor_dask():
    code = ("import sys, fastlstm as fl; "
            "assert 'fastlstm.dask' not in sys.modules and 'fastlstm.distributed' not in sys.modules; "
            "fl.dask.predict, fl.distributed.init, fl.callbacks.ModelCheckpoint; "
            "bad = [m for m in ('mpi4py', 'dask', 'distributed', 'pandas') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


ONE_RANK = """
import numpy as np, fastlstm as fl, fastlstm.distributed as fld
fld.init(threads=None)
assert fld.is_initialized() and fld.size() == 1 and fld.rank() == 0
assert fld.local_rank() == 0 and fld.local_size() == 1
assert fld.allreduce(np.arange(3)).tolist() == [0.0, 1.0, 2.0]
assert fld.broadcast(np.arange(3)).tolist() == [0, 1, 2]
for call, text in ((lambda: fld.allreduce(np.ones(2), op="mean"), "op: expected one of"),
                   (lambda: fld.broadcast(np.ones(2), root_rank=3), "root_rank")):
    try:
        call()
    except ValueError as exc:
        assert text in str(exc), exc
    else:
        raise AssertionError(text)
for kwargs, kind, text in (({"comm": "world"}, TypeError, "comm: expected an mpi4py"),
                           ({"threads": 0}, ValueError, "threads: expected 'auto'")):
    try:
        fld.init(**kwargs)
    except kind as exc:
        assert text in str(exc), exc
    else:
        raise AssertionError(text)
model = fl.Sequential([fl.layers.LSTM(4), fl.layers.Dense(1)])
model.compile(optimizer=fld.DistributedOptimizer("sgd"), loss="mse")
x = np.random.default_rng(0).standard_normal((16, 5, 2)).astype("float32")
h = model.fit(x, x[:, -1, :1], batch_size=8, epochs=2, verbose=0, callbacks=[
    fld.BroadcastGlobalVariablesCallback(0), fld.MetricAverageCallback()])
assert len(h.history["loss"]) == 2 and model.optimizer.iterations == 4
print("ok")
"""


def test_a_job_of_one_rank_without_mpiexec():
    pytest.importorskip("mpi4py.MPI")
    run = subprocess.run([sys.executable, "-c", ONE_RANK], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout + run.stderr


def test_before_init():
    code = ("import fastlstm.distributed as fld\n"
            "try:\n    fld.rank()\nexcept RuntimeError as exc:\n"
            "    assert 'call fastlstm.distributed.init() first' in str(exc); print('ok')")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert "ok" in run.stdout, run.stdout + run.stderr


def test_shard():
    x = np.arange(11)
    assert fld.shard(x, rank=0, size=2).tolist() == [0, 2, 4, 6, 8]
    assert fld.shard(x, rank=1, size=2).tolist() == [1, 3, 5, 7, 9]
    a, b = fld.shard((x, x * 10), rank=2, size=3)
    assert a.tolist() == [2, 5, 8] and b.tolist() == [20, 50, 80]

    class Batches:              # a dataset of batches, as a Keras PyDataset
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return ("batch", i)

    sharded = fld.shard(Batches(), rank=1, size=3)
    assert len(sharded) == 2 and list(sharded) == [("batch", 1), ("batch", 4)]
    with pytest.raises(ValueError, match="rank, size"):
        fld.shard(x, rank=2, size=2)
    with pytest.raises(TypeError, match="data: expected"):
        fld.shard(3.0, rank=0, size=1)


def test_distributed_optimizer_keeps_the_optimizer_and_its_settings():
    opt = fld.DistributedOptimizer(fl.optimizers.Adam(0.003, beta_1=0.8))
    assert isinstance(opt, fl.optimizers.Adam) and type(opt).__name__ == "Adam"
    assert opt.learning_rate == 0.003 and opt.beta_1 == 0.8
    assert fl.optimizers.serialize(opt)["class_name"] == "Adam"
    assert fld.DistributedOptimizer(opt) is opt
    p = np.ones(3, np.float32)
    opt.apply([np.ones(3, np.float32)], [p])      # one rank (or none): a plain step
    assert opt.iterations == 1 and np.all(p < 1)
    with pytest.raises(ValueError, match="unknown optimizer name"):
        fld.DistributedOptimizer("nope")
