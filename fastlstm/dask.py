"""Batch scoring on Dask: a model's predictions over arrays and dataframes larger than memory.

    import dask.array as da
    import fastlstm.dask
    x = da.from_zarr("sequences.zarr")                 # (N, T, F), chunked along N
    y = fastlstm.dask.predict(model, x)                # a dask array of the outputs, lazy
    y.to_zarr("scores.zarr")                           # streamed: a few chunks in memory at once

Install with ``pip install "fastlstm[dask]"``; this module imports Dask when it is first used,
and ``import fastlstm`` never imports it.

How a model travels. The model is written once, on the client, as its safe ``.npz`` bytes
(:mod:`fastlstm.saving`: no pickle inside) and those bytes go into the task graph as one
piece of data: with a ``distributed`` client it is scattered to every worker
(``client.scatter(..., broadcast=True)``); with Dask's local schedulers it is one key of the
graph. Each task receives the bytes by reference and rebuilds the model once per worker
thread (a cache keyed by the bytes' SHA-256), so nothing is pickled per task.

Threads. A worker runs ``nthreads`` tasks at once; each task runs the kernels on
``threads_per_task`` threads (default 1), with BLAS limited to the same number, so a worker
with ``nthreads`` threads keeps ``nthreads`` cores busy and never oversubscribes them.
The setting is process-wide; concurrent tasks of a process share it and the last one to
finish restores what was set before.

Equality. Each chunk is scored by ``model.predict(chunk, batch_size)``. The last bits of a
row's result depend on the batch it is computed in and on the kernels' thread count (BLAS
takes other code paths for other product sizes), so chunks along N are made multiples of
``batch_size`` (rechunked when they are not): then every batch is the batch
``model.predict(x, batch_size)`` would form, and the result is bit for bit that of
``model.predict(x, batch_size)`` run with ``threads_per_task`` threads (e.g. inside
``limited_threads(1)``). With other thread counts the two agree to rounding.

Dataframes. :func:`predict_groups` scores one sequence per group (``by``), ordered by
``order_by``; :func:`predict_windows` scores fixed windows of consecutive rows, within each
group or over the whole frame.
"""
from __future__ import annotations

import contextlib
import hashlib
import numbers
import os
import tempfile
import threading

import numpy as np

__all__ = ["predict", "predict_groups", "predict_windows", "model_to_bytes",
           "model_from_bytes"]


def _import_dask():
    try:
        import dask
        import dask.array
    except ImportError:
        raise ImportError("fastlstm.dask needs Dask: pip install \"fastlstm[dask]\" "
                          "(dask[array,dataframe] and distributed)") from None
    return dask


def _import_dask_dataframe():
    _import_dask()
    try:
        import dask.dataframe
        import pandas
    except ImportError:
        raise ImportError("fastlstm.dask's dataframe functions need dask.dataframe and "
                          "pandas: pip install \"fastlstm[dask]\"") from None
    return dask.dataframe, pandas


# -- the model as bytes -----------------------------------------------------------------------
def model_to_bytes(model):
    """The model's ``.npz`` file (:func:`fastlstm.saving.save_model`) as bytes."""
    _check_model(model)
    with tempfile.TemporaryDirectory(prefix="fastlstm-") as directory:
        path = os.path.join(directory, "model.npz")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def model_from_bytes(data, compile=False):
    """A model from the bytes of its ``.npz`` file (read with the checks of
    :func:`fastlstm.load_model`: no pickle, clear errors for anything else)."""
    from .saving import load_model
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected the bytes of a fastlstm .npz model file, got "
                        f"{type(data).__name__}")
    with tempfile.TemporaryDirectory(prefix="fastlstm-") as directory:
        path = os.path.join(directory, "model.npz")
        with open(path, "wb") as f:
            f.write(data)
        return load_model(path, compile=compile)


def _check_model(model):
    from .functional import Model
    from .models import Sequential
    if not isinstance(model, Model):
        raise TypeError(f"model: expected a fastlstm model (fl.Sequential or fl.Model), got "
                        f"{type(model).__name__}")
    if not isinstance(model, Sequential) and (len(model.inputs) != 1 or len(model.outputs) != 1):
        raise ValueError(f"model: {model.name} has {len(model.inputs)} inputs and "
                         f"{len(model.outputs)} outputs; Dask scoring takes a model with one "
                         "input (N, T, F) and one output")
    if not model.built:
        raise ValueError(f"model: {model.name} is not built yet, so it has no weights to "
                         "score with; build(input_shape) it, train it or load it first")


_models = {}
_models_lock = threading.Lock()


def _model_for_thread(data, digest):
    """The model in ``data``, rebuilt once per (model, thread): layers keep per-call
    attributes, so threads of one worker never share a model object."""
    key = (digest, threading.get_ident())
    model = _models.get(key)
    if model is None:
        model = model_from_bytes(data)
        with _models_lock:
            _models[key] = model
    return model


# -- threads ----------------------------------------------------------------------------------
_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = None


@contextlib.contextmanager
def limited_threads(n):
    """fastlstm's kernels and BLAS on ``n`` threads for the duration, process-wide; nested
    or concurrent uses (tasks on the threads of one worker) share the setting and the last
    to leave restores the one before."""
    global _threads_users, _threads_saved
    from threadpoolctl import threadpool_limits
    from .threads import get_num_threads, set_loop_threads
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = (get_num_threads(), threadpool_limits(limits=n, user_api="blas"))
            set_loop_threads(n)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                kernel_threads, blas = _threads_saved
                _threads_saved = None
                set_loop_threads(kernel_threads)
                blas.restore_original_limits()


# -- arguments --------------------------------------------------------------------------------
def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive integer, got {type(value).__name__} "
                        f"{value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _model_argument(model, dask, delayed=True):
    """(graph argument holding the model's bytes, their digest). Without a ``distributed``
    client and with ``delayed=False`` (``map_overlap`` does not resolve delayed arguments),
    the bytes themselves: Dask's local schedulers pass them to tasks by reference."""
    data = model_to_bytes(model)
    digest = hashlib.sha256(data).hexdigest()
    client = _current_client()
    if client is not None:
        return client.scatter(data, broadcast=True, hash=False), digest
    if not delayed:
        return data, digest
    return dask.delayed(data, name=f"fastlstm-model-{digest[:16]}", pure=True), digest


def _current_client():
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:          # no client: Dask's local schedulers
        return None


def _aligned_chunks(chunks, batch_size):
    """Chunk sizes along N that are multiples of ``batch_size`` (the last may be short);
    ``chunks`` itself when it already is."""
    if all(c % batch_size == 0 for c in chunks[:-1]):
        return chunks
    n = sum(chunks)
    typical = int(np.median(chunks))
    size = max(batch_size, typical // batch_size * batch_size)
    return (size,) * (n // size) + ((n % size,) if n % size else ())


# -- arrays -----------------------------------------------------------------------------------
def _score_block(block, data, digest, batch_size, threads):
    model = _model_for_thread(data, digest)
    with limited_threads(threads):
        return model.predict(block, batch_size=batch_size)


def predict(model, x, batch_size=32, threads_per_task=1):
    """The outputs of ``model`` for the dask array ``x``, as a dask array (lazy).

    ``x`` has the model's input shape, e.g. ``(N, T, F)``; its chunks along N are the tasks
    (made multiples of ``batch_size``), and chunks along the other axes are merged. The
    result is chunked along N as ``x`` is and equals ``model.predict(x.compute(),
    batch_size)`` on as many threads bit for bit. ``threads_per_task``: kernel and BLAS
    threads of each task.
    """
    dask = _import_dask()
    import dask.array as da
    _check_model(model)
    if not isinstance(x, da.Array):
        raise TypeError(f"x: expected a dask.array.Array of shape (N, timesteps, features), "
                        f"got {type(x).__name__}; wrap NumPy data with "
                        "dask.array.from_array(x, chunks=(n, -1, -1))")
    expected = model.input_shape
    if expected is not None and (x.ndim != len(expected) or any(
            e is not None and e != s for e, s in zip(expected[1:], x.shape[1:]))):
        raise ValueError(f"x: expected shape (N, {', '.join(map(str, expected[1:]))}) for "
                         f"{model.name}, got {x.shape}")
    if x.ndim < 2 or any(np.isnan(s) for s in x.shape):
        raise ValueError(f"x: expected an array with known shape (N, ...), got {x.shape}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"x: expected a numeric array, got dtype {x.dtype}")
    batch_size = _positive_int("batch_size", batch_size)
    threads = _positive_int("threads_per_task", threads_per_task)

    # Output shape and dtype: one sample through the model, here.
    probe = model.predict(np.zeros((1,) + tuple(x.shape[1:]), dtype=x.dtype), batch_size=1)
    x = x.rechunk({axis: -1 for axis in range(1, x.ndim)})
    aligned = _aligned_chunks(x.chunks[0], batch_size)
    if aligned != x.chunks[0]:
        x = x.rechunk({0: aligned})
    arg, digest = _model_argument(model, dask)
    out_chunks = (x.chunks[0],) + tuple((s,) for s in probe.shape[1:])
    extra = {}
    if probe.ndim < x.ndim:
        extra["drop_axis"] = list(range(probe.ndim, x.ndim))
    elif probe.ndim > x.ndim:
        extra["new_axis"] = list(range(x.ndim, probe.ndim))
    return da.map_blocks(_score_block, x, arg, digest, batch_size, threads,
                         chunks=out_chunks, dtype=probe.dtype,
                         meta=np.empty((0,) * probe.ndim, dtype=probe.dtype),
                         name=f"fastlstm-predict-{digest[:16]}", **extra)


# -- dataframes -------------------------------------------------------------------------------
def _columns_argument(df, columns, name="columns"):
    if isinstance(columns, str) or not hasattr(columns, "__iter__"):
        raise TypeError(f"{name}: expected a list of column names, got {columns!r}")
    columns = list(columns)
    missing = [c for c in columns if c not in df.columns]
    if not columns or missing:
        raise ValueError(f"{name}: expected names of columns of the dataframe "
                         f"{list(df.columns)}, got {columns}" +
                         (f" ({missing} not found)" if missing else ""))
    return columns


def _column_argument(df, value, name, allow_none=True):
    if value is None and allow_none:
        return None
    if value not in df.columns:
        raise ValueError(f"{name}: expected a column of the dataframe {list(df.columns)}, "
                         f"got {value!r}")
    return value


def _output_names(model, n_features):
    probe = model.predict(np.zeros((1, 1, n_features), dtype=model.layers[0].dtype
                                   if model.layers[0].dtype is not None else np.float32),
                          batch_size=1)
    if probe.ndim != 2:
        raise ValueError(f"model: the dataframe functions need one output vector per sequence "
                         f"(outputs of shape (N, k)), but {model.name} gives shape "
                         f"{probe.shape[1:]} per sample (return_sequences=True?); use "
                         "fastlstm.dask.predict on an array instead")
    return [f"output_{i}" for i in range(probe.shape[1])], probe.dtype


def _score_sequences(model, sequences, batch_size, threads):
    """Outputs for a list of (T_i, F) arrays, batching sequences of equal length together."""
    out = [None] * len(sequences)
    by_length = {}
    for i, s in enumerate(sequences):
        by_length.setdefault(s.shape[0], []).append(i)
    with limited_threads(threads):
        for length, rows in by_length.items():
            batch = np.stack([sequences[i] for i in rows])
            y = model.predict(batch, batch_size=batch_size)
            for i, row in zip(rows, y):
                out[i] = row
    return out


def _score_groups_partition(part, data, digest, by, columns, order_by, names, dtype,
                            batch_size, threads):
    import pandas as pd
    if len(part) == 0:
        return pd.DataFrame({n: np.empty(0, dtype) for n in names},
                            index=pd.Index(part[by].iloc[:0], name=by))
    model = _model_for_thread(data, digest)
    sort = [by] if order_by is None else [by, order_by]
    part = part.sort_values(sort, kind="stable")
    keys, sequences = [], []
    for key, group in part.groupby(by, sort=True):
        keys.append(key)
        sequences.append(group[columns].to_numpy(dtype=model.layers[0].dtype))
    outputs = np.stack(_score_sequences(model, sequences, batch_size, threads))
    return pd.DataFrame(outputs.astype(dtype, copy=False), columns=names,
                        index=pd.Index(keys, name=by))


def _frame_arguments(model, df, columns, by, order_by, by_required):
    """The checks both dataframe entry points start with: dask and pandas imported, the
    model, df a dask DataFrame, and its column arguments. Returns (dask, pandas, columns,
    by, order_by)."""
    dask = _import_dask()
    dd, pd = _import_dask_dataframe()
    _check_model(model)
    if not isinstance(df, dd.DataFrame):
        raise TypeError(f"df: expected a dask.dataframe.DataFrame, got {type(df).__name__}")
    columns = _columns_argument(df, columns)
    by = _column_argument(df, by, "by", allow_none=not by_required)
    order_by = _column_argument(df, order_by, "order_by")
    return dask, pd, columns, by, order_by


def predict_groups(model, df, by, columns, order_by=None, batch_size=32, threads_per_task=1):
    """One sequence per group of ``df`` (a ``dask.dataframe.DataFrame``): the rows with the
    same ``by`` value, ordered by ``order_by`` (a column; None keeps the rows' order), with
    the feature columns ``columns`` as the features. Returns a dask DataFrame indexed by
    ``by`` with one row per group and columns ``output_0 ... output_{k-1}``.

    Rows of a group are brought together by shuffling on ``by``. Groups may differ in
    length; groups of equal length are scored together in batches of ``batch_size``.
    """
    dask, pd, columns, by, order_by = _frame_arguments(model, df, columns, by, order_by,
                                                       by_required=True)
    batch_size = _positive_int("batch_size", batch_size)
    threads = _positive_int("threads_per_task", threads_per_task)
    names, dtype = _output_names(model, len(columns))
    arg, digest = _model_argument(model, dask)
    meta = pd.DataFrame({n: np.empty(0, dtype) for n in names},
                        index=pd.Index(df._meta[by].iloc[:0], name=by))
    shuffled = df.shuffle(on=by)
    return shuffled.map_partitions(_score_groups_partition, arg, digest, by, columns, order_by,
                                   names, dtype, batch_size, threads, meta=meta,
                                   align_dataframes=False)


def _window_starts(length, window, stride):
    """Starts of the windows of ``window`` rows every ``stride`` rows in ``length`` rows."""
    return np.arange(0, length - window + 1, stride)


def _score_windows_partition(part, data, digest, by, columns, order_by, window, stride, names,
                             dtype, batch_size, threads, position):
    import pandas as pd
    model = _model_for_thread(data, digest)
    key_columns = ([by] if by is not None else []) + ([order_by] if order_by is not None else [])
    if by is not None:
        part = part.sort_values(key_columns, kind="stable")
        groups = [g for _, g in part.groupby(by, sort=True)]
    else:
        groups = [part]
    keys, sequences = [], []
    for group in groups:
        values = group[columns].to_numpy(dtype=model.layers[0].dtype)
        if by is None:
            # map_overlap put the window - 1 rows before this partition in front of it, so
            # each window ends in exactly one partition's own rows; starts are every stride-th
            # row of the frame.
            positions = group[position].to_numpy()
            starts = np.flatnonzero(positions[:max(len(group) - window + 1, 0)] % stride == 0)
        else:
            starts = _window_starts(len(group), window, stride)
        ends = group.iloc[[s + window - 1 for s in starts]] if len(starts) else group.iloc[:0]
        keys.append(ends[key_columns] if key_columns else ends.iloc[:, :0])
        sequences += [values[s:s + window] for s in starts]
    keyframe = pd.concat(keys) if keys else part[key_columns].iloc[:0]
    if sequences:
        outputs = np.stack(_score_sequences(model, sequences, batch_size, threads))
    else:
        outputs = np.empty((0, len(names)), dtype)
    result = pd.DataFrame(outputs.astype(dtype, copy=False), columns=names,
                          index=keyframe.index)
    for c in reversed(key_columns):
        result.insert(0, c, keyframe[c].to_numpy())
    if by is None:
        # map_overlap drops the first window - 1 rows of each result (the borrowed rows), so
        # the result has one row per input row, marked where a window ends.
        full = pd.DataFrame(np.zeros((len(part), len(names)), dtype), columns=names,
                            index=part.index)
        for c in reversed(key_columns):
            full.insert(0, c, part[c].to_numpy())
        ends = np.asarray(starts, dtype=np.intp) + window - 1
        full.iloc[ends, len(key_columns):] = outputs.astype(dtype, copy=False)
        full[position] = False
        full.iloc[ends, full.columns.get_loc(position)] = True
        return full
    return result


def predict_windows(model, df, columns, window, stride=None, by=None, order_by=None,
                    batch_size=32, threads_per_task=1):
    """Fixed windows of ``window`` consecutive rows of ``df`` (a ``dask.dataframe.DataFrame``),
    one every ``stride`` rows (default ``window``: windows side by side), scored as sequences
    of the feature ``columns``. With ``by``, windows run within each group (rows ordered by
    ``order_by``, the time column) and never cross from one group into another; without
    ``by``, they run over the whole frame in its row order (sort it by time first, e.g.
    ``df.set_index("time")``), across partition boundaries, and the windows start at rows
    0, ``stride``, ``2·stride``, ... of the frame; ``order_by`` is then only reported, not
    used to sort.

    Returns a dask DataFrame with one row per window: ``by`` and ``order_by`` of the window's
    last row (where given), then ``output_0 ... output_{k-1}``; without ``by`` its index is
    that of the window's last row.
    """
    dask, pd, columns, by, order_by = _frame_arguments(model, df, columns, by, order_by,
                                                       by_required=False)
    window = _positive_int("window", window)
    stride = window if stride is None else _positive_int("stride", stride)
    batch_size = _positive_int("batch_size", batch_size)
    threads = _positive_int("threads_per_task", threads_per_task)
    names, dtype = _output_names(model, len(columns))
    arg, digest = _model_argument(model, dask, delayed=by is not None)
    key_columns = ([by] if by is not None else []) + ([order_by] if order_by is not None else [])
    meta = pd.DataFrame({**{c: df._meta[c].iloc[:0] for c in key_columns},
                         **{n: np.empty(0, dtype) for n in names}}, index=df._meta.index[:0])
    position = "__fastlstm_position"
    if by is not None:
        return df.shuffle(on=by).map_partitions(
            _score_windows_partition, arg, digest, by, columns, order_by, window, stride, names,
            dtype, batch_size, threads, position, meta=meta, align_dataframes=False)
    # Over the whole frame: each row's position in the frame (a running count), and the
    # window - 1 rows before each partition joined to it so windows cross boundaries.
    frame = df.assign(**{position: 1})
    frame = frame.assign(**{position: frame[position].cumsum() - 1})
    marked = frame.map_overlap(
        _score_windows_partition, window - 1, 0, arg, digest, by, columns, order_by, window,
        stride, names, dtype, batch_size, threads, position,
        meta=meta.assign(**{position: np.empty(0, bool)}), align_dataframes=False)
    return marked.map_partitions(_window_rows, position, meta=meta)


def _window_rows(part, position):
    return part[part[position].to_numpy(dtype=bool)].drop(columns=position)
