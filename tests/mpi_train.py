"""Data-parallel training under mpiexec, for tests/test_distributed.py.

    mpiexec -n 2 python tests/mpi_train.py OUT_DIR DTYPE OPTIMIZER [fail | unequal]

Each rank trains on its shard (batch 32, no shuffling) for 2 epochs of 10 steps and writes
``OUT_DIR/rank<r>.npz``: its weights before (rank 0's, for the reference run) and after
training, and its history. With ``fail``, rank 1 raises during the 4th step; with
``unequal``, rank 1 gets more rows than rank 0 (so it would take more steps); with
``segments``, the gradients are reduced one layer at a time as backward hands them over
(``bucket_bytes=0``).
"""
import os
import sys

import numpy as np

import fastlstm as fl
import fastlstm.distributed as fld

SAMPLES, TIMESTEPS, FEATURES, BATCH, EPOCHS = 640, 12, 3, 32, 2


def data(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, TIMESTEPS, FEATURES)).astype(dtype)
    y = (x[:, -3:, :2].sum(axis=1) + 0.1 * rng.standard_normal((SAMPLES, 2))).astype(dtype)
    return x, y


def build_model(dtype):
    model = fl.Sequential([fl.layers.LSTM(16, dtype=dtype), fl.layers.Dense(2, dtype=dtype)])
    model.build((None, TIMESTEPS, FEATURES))
    return model


def optimizer(name):
    if name == "adam":
        return fl.optimizers.Adam(0.01)
    return fl.optimizers.SGD(0.05, momentum=0.9)


def main(out, dtype, opt_name, mode=""):
    fld.init(threads=1)         # the reference run uses 1 thread too: the same code paths
    r = fld.rank()
    x, y = data(dtype)
    model = build_model(dtype)
    # Different starting weights on every rank: the broadcast must make them rank 0's.
    model.set_weights([w + r for w in model.get_weights()])
    initial = model.get_weights()
    bucket = {"segments": 0}.get(mode, 1 << 20)
    model.compile(optimizer=fld.DistributedOptimizer(optimizer(opt_name), bucket_bytes=bucket),
                  loss="mse", metrics=["mae"])
    callbacks = [fld.BroadcastGlobalVariablesCallback(0), fld.MetricAverageCallback(),
                 fl.callbacks.ModelCheckpoint(os.path.join(out, f"ckpt-rank{r}", "model.npz"))]
    if mode == "fail":
        def raise_on_rank_1(batch, logs):
            if r == 1 and batch == 3:
                raise RuntimeError("deliberate failure on rank 1 at step 4")
        callbacks.append(fl.callbacks.LambdaCallback(on_train_batch_end=raise_on_rank_1))
    xs, ys = fld.shard(x), fld.shard(y)
    if mode == "unequal":
        xs, ys = x[:len(xs) + 64 * r], y[:len(ys) + 64 * r]
    history = model.fit(xs, ys, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=2,
                        callbacks=callbacks)
    np.savez(os.path.join(out, f"rank{r}.npz"),
             **{f"initial/{i}": w for i, w in enumerate(initial)},
             **{f"final/{i}": w for i, w in enumerate(model.get_weights())},
             loss=np.array(history.history["loss"]),
             allreduce_calls=np.array(model.optimizer.allreduce_calls),
             allreduce_segments=np.array(model.optimizer.allreduce_segments))


if __name__ == "__main__":
    main(*sys.argv[1:5])
