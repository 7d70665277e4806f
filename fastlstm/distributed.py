"""Synchronous data-parallel training over MPI: Horovod's pattern with Keras's names.

    # train.py, launched with:  mpiexec -n 4 python train.py
    import fastlstm as fl
    import fastlstm.distributed as fld

    fld.init()                                          # MPI, and this rank's threads
    x, y = fld.shard(x), fld.shard(y)                   # this rank's rows: x[rank::size]
    model = fl.Sequential([fl.layers.LSTM(64), fl.layers.Dense(1)])
    opt = fl.optimizers.Adam(0.001)
    model.compile(optimizer=fld.DistributedOptimizer(opt), loss="mse")
    model.fit(x, y, batch_size=32, epochs=10, callbacks=[
        fld.BroadcastGlobalVariablesCallback(0),        # everyone starts from rank 0's weights
        fld.MetricAverageCallback(),                    # epoch logs averaged over the ranks
        fl.callbacks.ModelCheckpoint("ckpt.npz")])      # written by rank 0 only

Install with ``pip install "fastlstm[mpi]"`` (mpi4py and the MPICH wheel). ``import fastlstm``
never imports mpi4py; this module imports it in :func:`init`.

One step. Each rank runs forward and backward on its own batch of ``b`` rows. The
:class:`DistributedOptimizer` packs every gradient into one contiguous buffer per dtype,
sums it over the ranks with ``MPI_Iallreduce``, divides by the number of ranks, and hands
the averages to the wrapped optimizer, which takes the same step on every rank. With the
loss averaged over each batch and equal batch sizes, N ranks with batch ``b`` take the step
one process takes with batch ``N·b`` (the rows of a global batch are the same; only the
order of the floating-point sums differs).

Overlap. The training step hands each layer's gradients to the optimizer as soon as that
layer's backward pass is done (``gradients_ready``, the last layer first). From the second
step on, the buffer is reduced in segments of ``bucket_bytes`` (1 MiB by default) started
at those moments, while backward goes on through the earlier layers; the last segment is
started when backward ends. MPICH progresses non-blocking collectives inside MPI calls
(each hand-over tests the reductions in flight) or, with ``MPIR_CVAR_ASYNC_PROGRESS=1`` in
the environment, on a progress thread of its own, which needs a spare core per rank.

Failures. :func:`init` installs a ``sys.excepthook`` that prints the traceback (with the
rank) and calls ``MPI_Abort``: a rank that raises ends the whole job with a nonzero exit
instead of leaving the others waiting in an allreduce.

Ranks other than 0 neither print progress bars nor write ``ModelCheckpoint`` files.
"""
from __future__ import annotations

import collections.abc
import numbers
import os
import sys
import time
import traceback

import numpy as np

from .callbacks import Callback

__all__ = ["init", "is_initialized", "rank", "size", "local_rank", "local_size", "comm",
           "barrier", "allreduce", "broadcast", "shard", "DistributedOptimizer",
           "BroadcastGlobalVariablesCallback", "MetricAverageCallback"]

_comm = None
_local_comm = None
_MPI = None


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("fastlstm.distributed needs mpi4py and an MPI library: pip install "
                          "\"fastlstm[mpi]\" (mpi4py and the mpich wheel)") from None
    return MPI


def init(comm=None, threads="auto", abort_on_exception=True):
    """Set up MPI for this process (call once, on every rank, before the others).

    ``comm``: an mpi4py communicator (default ``MPI.COMM_WORLD``). ``threads``: kernel and
    BLAS threads of this rank: ``"auto"`` (the cores this process may use divided by the
    ranks on this machine, at least 1), a positive integer, or None to leave them.
    ``abort_on_exception``: an uncaught exception on any rank aborts the whole job.
    Without ``mpiexec`` the process is a job of one rank.
    """
    global _comm, _local_comm, _MPI
    MPI = _import_mpi()
    if comm is None:
        comm = MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm: expected an mpi4py communicator (mpi4py.MPI.Comm), got "
                        f"{type(comm).__name__}")
    if threads is not None and threads != "auto" and (
            isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1):
        raise ValueError(f"threads: expected 'auto', a positive integer or None, got {threads!r}")
    if abort_on_exception not in (True, False):
        raise TypeError(f"abort_on_exception: expected True or False, got {abort_on_exception!r}")
    _MPI = MPI
    _comm = comm
    _local_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    if threads is not None:
        from .threads import _cores, set_num_threads
        n = max(1, _cores() // _local_comm.Get_size()) if threads == "auto" else int(threads)
        set_num_threads(n)
    if abort_on_exception:
        _install_abort_hook()


def _install_abort_hook():
    previous = sys.excepthook
    if getattr(previous, "_fastlstm_abort", False):
        return

    def abort_job(kind, value, tb):
        if _comm is None or _comm.Get_size() == 1:
            previous(kind, value, tb)
            return
        try:
            header = (f"fastlstm.distributed: rank {_comm.Get_rank()} of {_comm.Get_size()} "
                      "raised; aborting the job\n")
            sys.stderr.write(header + "".join(traceback.format_exception(kind, value, tb)))
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            _comm.Abort(1)

    abort_job._fastlstm_abort = True
    sys.excepthook = abort_job


def is_initialized():
    """Whether :func:`init` has been called in this process."""
    return _comm is not None


def _require_init(what):
    if _comm is None:
        raise RuntimeError(f"fastlstm.distributed.{what}: call fastlstm.distributed.init() "
                           "first (on every rank)")


def comm():
    """The communicator given to :func:`init`."""
    _require_init("comm")
    return _comm


def rank():
    """This process's rank, 0 ... size() - 1."""
    _require_init("rank")
    return _comm.Get_rank()


def size():
    """The number of ranks."""
    _require_init("size")
    return _comm.Get_size()


def local_rank():
    """This process's rank among the ranks on its machine."""
    _require_init("local_rank")
    return _local_comm.Get_rank()


def local_size():
    """The number of ranks on this machine."""
    _require_init("local_size")
    return _local_comm.Get_size()


def _on_chief():
    return _comm is None or _comm.Get_rank() == 0


def barrier():
    """Wait for every rank."""
    _require_init("barrier")
    _comm.Barrier()


_OPS = ("average", "sum", "min", "max")


def allreduce(array, op="average"):
    """``op`` ("average", "sum", "min", "max") of ``array`` over the ranks: a new array of
    the same shape and dtype (float results for "average")."""
    _require_init("allreduce")
    if op not in _OPS:
        raise ValueError(f"op: expected one of {list(_OPS)}, got {op!r}")
    arr = np.array(array, copy=True, order="C")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"array: expected a numeric array, got dtype {arr.dtype}")
    if op == "average" and arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    mpi_op = {"average": _MPI.SUM, "sum": _MPI.SUM, "min": _MPI.MIN, "max": _MPI.MAX}[op]
    _comm.Allreduce(_MPI.IN_PLACE, arr, op=mpi_op)
    if op == "average":
        arr /= arr.dtype.type(_comm.Get_size())
    return arr


def broadcast(array, root_rank=0):
    """Rank ``root_rank``'s ``array`` on every rank (a new array). Every rank passes an array
    of the same shape and dtype; a mismatch raises ValueError on every rank."""
    _require_init("broadcast")
    _check_root(root_rank)
    arr = np.array(array, copy=True, order="C")
    _agree([(arr.shape, arr.dtype.str)], root_rank, "broadcast: array")
    _comm.Bcast(arr, root=root_rank)
    return arr


def _check_root(root_rank):
    if isinstance(root_rank, bool) or not isinstance(root_rank, numbers.Integral) \
            or not 0 <= root_rank < _comm.Get_size():
        raise ValueError(f"root_rank: expected a rank in [0, {_comm.Get_size() - 1}], got "
                         f"{root_rank!r}")


def _agree(description, root_rank, what):
    """Raise on every rank unless ``description`` (a small picklable value) is the same as
    rank ``root_rank``'s: collectives with mismatched buffers would hang or corrupt."""
    everyone = _comm.allgather(description)
    differ = [r for r, d in enumerate(everyone) if d != everyone[root_rank]]
    if differ:
        shown = ", ".join(f"rank {r} has {everyone[r]}" for r in [root_rank] + differ[:3])
        raise ValueError(f"{what}: the ranks disagree; {shown}")


# -- data -------------------------------------------------------------------------------------
class _ShardedDataset(collections.abc.Sequence):
    """Batches ``rank, rank + size, ...`` of a dataset of batches (``len`` and
    ``__getitem__``, as a Keras ``PyDataset``), the same number on every rank."""

    def __init__(self, dataset, rank_, size_):
        self.dataset = dataset
        self.rank = rank_
        self.size = size_

    def __len__(self):
        return len(self.dataset) // self.size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not -n <= index < n:
            raise IndexError(f"index: expected an integer in [{-n}, {n - 1}], got {index!r}")
        return self.dataset[(index % n) * self.size + self.rank]

    def __getattr__(self, name):      # on_epoch_end and the like, from the dataset
        if name in ("dataset", "rank", "size"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def shard(data, rank=None, size=None):
    """This rank's part of ``data``: rows ``rank, rank + size, rank + 2·size, ...`` of an
    array (a view), each array of a list or tuple, or batches ``rank, rank + size, ...`` of
    a dataset of batches (``len`` and ``__getitem__``, e.g. a Keras ``PyDataset``).

    Every rank gets the same number of rows (or batches): the last ``len(data) % size`` are
    left out, so that all ranks take the same number of steps. Read in this order, the
    ``k``-th batches of ``b`` rows of all ranks hold exactly the rows of the ``k``-th batch
    of ``size·b`` rows of the unsharded data. ``rank`` and ``size`` default to this
    process's (after :func:`init`).
    """
    if rank is None or size is None:
        _require_init("shard")
    rank_ = _comm.Get_rank() if rank is None else rank
    size_ = _comm.Get_size() if size is None else size
    for name, value in (("size", size_), ("rank", rank_)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    if size_ < 1 or rank_ >= size_:
        raise ValueError(f"rank, size: expected 0 <= rank < size, got rank={rank_}, "
                         f"size={size_}")
    if isinstance(data, (list, tuple)):
        return type(data)(shard(d, rank_, size_) for d in data)
    if isinstance(data, np.ndarray):
        if data.ndim == 0:
            raise ValueError("data: expected an array with a first (sample) axis, got a scalar")
        n = data.shape[0] // size_ * size_
        return data[rank_:n:size_]
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return _ShardedDataset(data, rank_, size_)
    raise TypeError(f"data: expected a NumPy array, a list or tuple of arrays, or a dataset "
                    f"of batches (len and __getitem__), got {type(data).__name__}")


# -- the optimizer ----------------------------------------------------------------------------
class _FusedStep:
    """One step's fused gradient buffer (one per dtype) and its reductions in flight.

    The training step calls ``gradients_ready`` as each layer's gradients become final (the
    last layer first). From the second step on, the buffer's layout is known (the order
    in which the previous step handed the gradients over), so each gradient is copied into
    its place at once, and a segment of the buffer is reduced with a non-blocking
    ``Iallreduce`` as soon as it holds ``bucket_bytes``; the reductions run while backward
    goes on through the earlier layers. ``apply`` copies what the hook did not see, reduces
    the rest, and waits for all.

    Every decision (layout, segment boundaries) depends only on the model's structure and
    the order of the training step, which are the same on every rank, so all ranks start
    the same collectives in the same order, as MPI requires.
    """

    def __init__(self, layout, bucket_bytes):
        # layout: [(shape, dtype str)] in hand-over order; slots follow it within each dtype.
        self.layout = layout
        self.bucket_bytes = bucket_bytes
        self.slots = []                     # per layout entry: (dtype str, start, size)
        sizes = {}
        for shape, dt in layout:
            n = int(np.prod(shape, dtype=np.int64))
            start = sizes.get(dt, 0)
            self.slots.append((dt, start, n))
            sizes[dt] = start + n
        self.buffers = {dt: np.empty(n, np.dtype(dt)) for dt, n in sizes.items()}
        self.start_step()

    def start_step(self):
        self.next = 0                       # the next layout entry the hook should see
        self.seen = {}                      # id(param) -> layout index, this step
        self.requests = []
        self.reduced_to = {dt: 0 for dt in self.buffers}    # started up to, per dtype
        self.filled_to = {dt: 0 for dt in self.buffers}
        self.in_order = True

    def take(self, param, grad):
        """Copy one handed-over gradient into its slot; False when the step does not follow
        the layout (it then finishes in ``apply`` without overlap, on every rank alike)."""
        if not self.in_order or self.next >= len(self.layout):
            self.in_order = False
            return False
        g = np.asarray(grad)
        shape, dt = self.layout[self.next]
        if g.shape != shape or g.dtype.str != dt:
            self.in_order = False
            return False
        _, start, n = self.slots[self.next]
        self.buffers[dt][start:start + n] = g.reshape(-1)
        self.seen[id(param)] = self.next
        self.filled_to[dt] = start + n
        self.next += 1
        return True

    def reduce_ready(self, final=False):
        """Start an Iallreduce on each dtype's filled, unreduced part once it holds
        ``bucket_bytes`` (``final``: whatever is left)."""
        for dt, buf in self.buffers.items():
            lo, hi = self.reduced_to[dt], (buf.size if final else self.filled_to[dt])
            if hi > lo and (final or (hi - lo) * buf.itemsize >= self.bucket_bytes):
                self.requests.append(_comm.Iallreduce(_MPI.IN_PLACE, buf[lo:hi], op=_MPI.SUM))
                self.reduced_to[dt] = hi
        if self.requests and not final:
            _MPI.Request.Testall(self.requests)     # lets MPI progress what is in flight


class _Distributed:
    """Mixed into a copy of an optimizer's class: ``apply`` averages the gradients over the
    ranks first. The class keeps the optimizer's name, so a saved model names the plain
    optimizer and loads without MPI."""

    _fastlstm_distributed = True

    def gradients_ready(self, params, grads):
        """Training-step hook: ``grads`` of ``params`` (one layer's) are final for this step.
        Copies them into the fused buffer and starts reducing full segments, so that the
        reduction overlaps the rest of the backward pass."""
        if _comm is None or _comm.Get_size() == 1:
            return
        t0 = time.perf_counter()
        handed = self.__dict__.setdefault("_handed", [])
        fused = self.__dict__.get("_fused")
        for p, g in zip(params, grads):
            if g is None:
                continue
            handed.append((p, g))
            if fused is not None:
                fused.take(p, g)
        if fused is not None and fused.in_order:
            fused.reduce_ready()
        self.allreduce_seconds += time.perf_counter() - t0

    def apply(self, grads, params):
        grads = list(grads)
        if _comm is not None and _comm.Get_size() > 1:
            grads = self._average(grads, list(params))
        return super().apply(grads, params)

    def _average(self, grads, params):
        t0 = time.perf_counter()
        n = _comm.Get_size()
        handed = self.__dict__.pop("_handed", [])
        for g in grads:
            if g is not None and np.asarray(g).dtype.kind != "f":
                raise TypeError(f"grads: expected float gradients, got dtype {np.asarray(g).dtype}")
        # This step's hand-over order: the hook's first, then the rest in apply's order.
        handed_ids = {id(p) for p, _ in handed}
        order = [i for i, p in enumerate(params) if id(p) in handed_ids]
        position = {id(p): k for k, (p, _) in enumerate(handed)}
        order.sort(key=lambda i: position[id(params[i])])
        order += [i for i, g in enumerate(grads) if g is not None and id(params[i]) not in handed_ids]
        layout = [(np.shape(grads[i]), np.asarray(grads[i]).dtype.str) for i in order]
        fused = self.__dict__.get("_fused")
        if fused is None or fused.layout != layout or not fused.in_order:
            if fused is not None and fused.requests:
                _MPI.Request.Waitall(fused.requests)    # started in order: finish them alike
            fused = _FusedStep(layout, self.bucket_bytes)
            self._fused = fused
            for i in order:
                fused.take(params[i], grads[i])
        else:
            for k, (_, g) in enumerate(handed):
                if grads[order[k]] is not g:        # it may be in flight already
                    raise RuntimeError("gradients_ready: a gradient handed over was replaced "
                                       "before apply; hand over final gradients only")
            for i in order[fused.next:]:
                fused.take(params[i], grads[i])
        fused.reduce_ready(final=True)
        _MPI.Request.Waitall(fused.requests)
        out = list(grads)
        for k, i in enumerate(order):
            dt, start, size = fused.slots[k]
            buf = fused.buffers[dt]
            out[i] = buf[start:start + size].reshape(np.shape(grads[i]))
        for dt, buf in fused.buffers.items():
            buf /= buf.dtype.type(n)
            self.allreduce_bytes += buf.nbytes
        self.allreduce_segments += len(fused.requests)
        fused.start_step()
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1
        return out


_DISTRIBUTED_CLASSES = {}


def DistributedOptimizer(optimizer, bucket_bytes=1 << 20):
    """``optimizer`` (a ``fastlstm.optimizers`` optimizer, instance or name) with its
    gradients averaged over the ranks through one fused buffer per step. Returns an instance
    of the same optimizer class, with the same settings and state, so ``compile``, saving
    and ``fl.load_model`` treat it as that optimizer.

    ``bucket_bytes``: the buffer is reduced in segments of at least this many bytes, each
    started (``MPI_Iallreduce``) as soon as the layers behind it have finished their
    backward pass, so that reduction and backward overlap; a model whose gradients are
    smaller is reduced in one call at the end of backward. ``allreduce_seconds``,
    ``allreduce_bytes``, ``allreduce_calls`` (steps) and ``allreduce_segments`` count the
    time spent in the reduction's calls, the bytes, the steps and the reductions."""
    from . import optimizers
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, numbers.Integral) \
            or bucket_bytes < 0:
        raise ValueError(f"bucket_bytes: expected a non-negative integer, got {bucket_bytes!r}")
    opt = optimizers.get(optimizer)
    if getattr(opt, "_fastlstm_distributed", False):
        opt.bucket_bytes = int(bucket_bytes)
        return opt
    base = type(opt)
    cls = _DISTRIBUTED_CLASSES.get(base)
    if cls is None:
        cls = type(base.__name__, (_Distributed, base), {
            "__module__": base.__module__, "__qualname__": base.__qualname__,
            "__doc__": f"{base.__name__} with gradients averaged over MPI ranks."})
        _DISTRIBUTED_CLASSES[base] = cls
    wrapped = cls.__new__(cls)
    wrapped.__dict__.update(opt.__dict__)
    wrapped.allreduce_seconds = 0.0
    wrapped.allreduce_bytes = 0
    wrapped.allreduce_calls = 0
    wrapped.allreduce_segments = 0
    wrapped.bucket_bytes = int(bucket_bytes)
    return wrapped


# -- callbacks --------------------------------------------------------------------------------
def _broadcast_arrays(arrays, root_rank, what):
    """Rank ``root_rank``'s arrays on every rank, in one broadcast per dtype."""
    arrays = [np.array(a, copy=True, order="C") for a in arrays]   # 0-d stays 0-d
    _agree([(a.shape, a.dtype.str) for a in arrays], root_rank, what)
    out = [np.empty_like(a) for a in arrays]
    by_dtype = {}
    for i, a in enumerate(arrays):
        by_dtype.setdefault(a.dtype.str, []).append(i)
    for dtype_str, indices in sorted(by_dtype.items()):
        fused = np.concatenate([arrays[i].reshape(-1) for i in indices]) if indices else None
        _comm.Bcast(fused, root=root_rank)
        offset = 0
        for i in indices:
            out[i][...] = fused[offset:offset + arrays[i].size].reshape(arrays[i].shape)
            offset += arrays[i].size
    return out


class BroadcastGlobalVariablesCallback(Callback):
    """At the start of ``fit``: every rank takes rank ``root_rank``'s weights and optimizer
    state (iterations and slots), so that all ranks start equal, and the ranks check that
    they will take the same number of steps per epoch (else an allreduce would wait
    forever): a mismatch raises ValueError on every rank."""

    def __init__(self, root_rank=0):
        super().__init__()
        if isinstance(root_rank, bool) or not isinstance(root_rank, numbers.Integral) or root_rank < 0:
            raise ValueError(f"root_rank: expected a non-negative integer, got {root_rank!r}")
        self.root_rank = int(root_rank)

    def on_train_begin(self, logs=None):
        _require_init("BroadcastGlobalVariablesCallback")
        _check_root(self.root_rank)
        model = self.model
        _agree([self.params.get("steps"), self.params.get("epochs")], self.root_rank,
               "fit: steps per epoch and epochs (shard the data with fastlstm.distributed.shard "
               "so that every rank has as many batches)")
        if not model.built:
            if model.input_shape is None:
                raise ValueError("BroadcastGlobalVariablesCallback: the model's input shape is "
                                 "unknown; build(input_shape) it before fit")
            model.build(model.input_shape)
        model.set_weights(_broadcast_arrays(model.get_weights(), self.root_rank,
                                            "model weights"))
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and hasattr(optimizer, "get_state"):
            state = optimizer.get_state()
            names = sorted(state)
            _agree(names, self.root_rank, "optimizer state (build the same model and "
                   "optimizer on every rank)")
            values = _broadcast_arrays([state[k] for k in names], self.root_rank,
                                       "optimizer state")
            optimizer.set_state(dict(zip(names, values)))


class MetricAverageCallback(Callback):
    """At the end of each epoch, every numeric entry of the logs (``loss``, metrics,
    ``val_*``) becomes its average over the ranks, in place, so that callbacks after it
    (History, EarlyStopping, ModelCheckpoint on rank 0) see the job's values."""

    def on_epoch_end(self, epoch, logs=None):
        _require_init("MetricAverageCallback")
        if logs is None or _comm.Get_size() == 1:
            return
        keys = sorted(k for k, v in logs.items()
                      if isinstance(v, numbers.Real) and not isinstance(v, bool))
        _agree(keys, 0, "MetricAverageCallback: the log entries")
        values = allreduce(np.array([float(logs[k]) for k in keys], dtype=np.float64))
        for k, v in zip(keys, values):
            logs[k] = float(v)
