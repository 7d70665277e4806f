"""What ``fit``, ``evaluate`` and ``predict`` read their batches from (Keras 3's data adapters
and epoch iterator, for NumPy arrays, Python generators and ``PyDataset``s), and
``class_weight``.

A source yields, epoch after epoch, batches ``(x, y, sample_weight)`` (``y`` and
``sample_weight`` may be None):

- arrays: ``batch_size`` rows at a time, a new order every epoch with ``shuffle``
  (NumPy's global generator), the last batch possibly short;
- a Python generator (or any iterator) yielding ``(x, y)`` or ``(x, y, sample_weight)``: with
  ``steps`` the next ``steps`` batches every epoch (the generator continues across epochs);
  without, until it is exhausted, which is one epoch. ``shuffle`` does not apply;
- a ``PyDataset`` (``__len__``, ``__getitem__(index)``): ``len(ds)`` batches an epoch, or
  ``steps`` batches continuing through the dataset until a pass ends (then the next epoch
  starts a new pass), in index order or, with ``shuffle``, in an order drawn for each pass
  (as Keras 3 shuffles a PyDataset's batches); ``on_epoch_begin``/``on_epoch_end`` around
  every epoch of ``fit``.
"""
from __future__ import annotations

import collections.abc
import math
import numbers
import warnings

import numpy as np

__all__ = ["is_generator", "is_py_dataset", "class_weight_to_sample_weights"]


def _array_like(x):
    return isinstance(x, (np.ndarray, list, tuple, str, bytes, dict)) or hasattr(x, "__array__") \
        or hasattr(x, "__cuda_array_interface__") or hasattr(x, "shape")


def is_generator(x):
    """A Python generator or another iterator (not an array)."""
    return isinstance(x, collections.abc.Iterator) and not _array_like(x)


def is_py_dataset(x):
    """A ``fl.utils.PyDataset`` or an object with its protocol (``__getitem__`` and a number
    of batches, ``__len__`` or ``num_batches``) that is not an array."""
    from .utils import PyDataset
    if isinstance(x, PyDataset):
        return True
    return (not _array_like(x) and not is_generator(x) and hasattr(x, "__getitem__")
            and (hasattr(x, "__len__") or hasattr(x, "num_batches")))


def check_steps(value, argument):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{argument}: expected a positive integer or None, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------ class_weight
def _check_class_weight(class_weight):
    if not isinstance(class_weight, collections.abc.Mapping):
        raise TypeError("class_weight: expected a dict mapping class indices to weights, "
                        f"got {type(class_weight).__name__} {class_weight!r:.100}")
    cleaned = {}
    for key, value in class_weight.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (numbers.Integral, str)):
            raise ValueError(f"class_weight: expected integer class indices as keys, got "
                             f"{key!r} of type {type(key).__name__}")
        try:
            index = int(key)
        except ValueError:
            raise ValueError(f"class_weight: expected integer class indices as keys, got "
                             f"{key!r}") from None
        if index < 0:
            raise ValueError(f"class_weight: class indices start at 0, got key {key!r}")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"class_weight: expected a finite non-negative weight for class "
                             f"{index}, got {value!r}")
        cleaned[index] = float(value)
    return cleaned


def class_weight_to_sample_weights(y, class_weight, num_classes=None):
    """Per-sample weights from ``class_weight`` (Keras 3's ``class_weight_to_sample_weights``):
    the class of a sample is ``argmax(y, -1)`` for one-hot targets (last axis > 1), else the
    target itself (a trailing axis of 1 squeezed); classes missing from the dict weigh 1.

    Targets with more axes (a class per timestep, ``(N, T, 1)`` or one-hot ``(N, T, C)``)
    give per-timestep weights ``(N, T)`` (Keras 3 takes one class per sample only).
    ``num_classes`` (the model's output width, when known) bounds the class indices.
    Raises ValueError for targets that are not classes (fractional or negative values) and
    for keys or targets out of range."""
    class_weight = _check_class_weight(class_weight)
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"class_weight: the targets y must be numeric class indices or one-hot "
                        f"rows, got dtype {y.dtype}")
    if y.ndim == 0:
        raise ValueError("class_weight: the targets y must have a batch axis, got a scalar")
    one_hot = y.ndim > 1 and y.shape[-1] != 1
    if one_hot:
        classes = np.argmax(y, axis=-1)
        num_classes = y.shape[-1]
        what = f"one-hot targets with {num_classes} classes"
    else:
        labels = y[..., 0] if y.ndim > 1 else y
        if labels.dtype.kind == "f":
            bad = labels[(labels != np.round(labels)) | ~np.isfinite(labels)]
            if bad.size:
                raise ValueError(f"class_weight: the targets y must be class indices "
                                 f"(integers) or one-hot rows; got y of shape {y.shape} with "
                                 f"non-integer values such as {bad.flat[0]!r}: class_weight "
                                 "does not apply to regression targets")
        classes = labels.astype(np.int64)
        if classes.size and classes.min() < 0:
            raise ValueError(f"class_weight: the targets y must be class indices from 0, got "
                             f"{int(classes.min())}")
        if num_classes is not None:
            num_classes = max(int(num_classes), 2)      # one sigmoid output: classes 0 and 1
            what = f"a model with {num_classes} classes"
            if classes.size and classes.max() >= num_classes:
                raise ValueError(f"class_weight: the target class {int(classes.max())} is out "
                                 f"of range for {what} (0 to {num_classes - 1})")
    if num_classes is not None:
        out_of_range = sorted(k for k in class_weight if k >= num_classes)
        if out_of_range:
            raise ValueError(f"class_weight: the keys {out_of_range} are out of range for "
                             f"{what} (0 to {num_classes - 1})")
    size = max(max(class_weight, default=0), int(classes.max()) if classes.size else 0) + 1
    table = np.ones(size, np.float64)
    for k, w in class_weight.items():
        table[k] = w
    return table[classes]


def combine_weights(sample_weight, class_weights):
    """``sample_weight * class_weights`` (either may be None); per-sample weights broadcast
    over per-timestep class weights."""
    if class_weights is None:
        return sample_weight
    if sample_weight is None:
        return class_weights
    sw = np.asarray(sample_weight, np.float64)
    if sw.ndim == 2 and class_weights.ndim == 1 and sw.shape[1] == 1:
        sw = sw[:, 0]
    if 0 < sw.ndim < class_weights.ndim:
        sw = sw.reshape(sw.shape + (1,) * (class_weights.ndim - sw.ndim))
    try:
        return sw * class_weights
    except ValueError:
        raise ValueError(f"sample_weight: shape {np.shape(sample_weight)} does not combine with "
                         f"the class weights of shape {class_weights.shape} (from y)") from None


# ------------------------------------------------------------------------------ structures
def flat_arrays(value):
    """The arrays of ``value``: an array, a list/tuple/dict of them, or None (none)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [a for v in value.values() for a in flat_arrays(v)]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in flat_arrays(v)]
    return [value]


def num_samples(value):
    """The first axis of the first array of ``value``."""
    arrays = flat_arrays(value)
    return arrays[0].shape[0] if arrays else 0


def take(value, index):
    """``value[index]`` for every array of a structure (None stays None)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: take(v, index) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [take(v, index) for v in value]
    return value[index]


# ---------------------------------------------------------------------------------- batches
def unpack_batch(batch, what, need_y):
    """``(x, y, sample_weight)`` from a generator's or PyDataset's batch."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if not isinstance(batch, tuple):
        if need_y:
            raise ValueError(f"{what}: expected batches (x, y) or (x, y, sample_weight), got "
                             f"one {type(batch).__name__}"
                             + (f" of shape {batch.shape}" if hasattr(batch, "shape") else ""))
        return batch, None, None
    if len(batch) not in (1, 2, 3) or (need_y and len(batch) == 1):
        expected = ("(x, y) or (x, y, sample_weight)" if need_y
                    else "x, (x,), (x, y) or (x, y, sample_weight)")
        raise ValueError(f"{what}: expected batches {expected}, got a tuple of {len(batch)}")
    x = batch[0]
    y = batch[1] if len(batch) > 1 else None
    sw = batch[2] if len(batch) > 2 else None
    if need_y and y is None:
        raise ValueError(f"{what}: expected batches (x, y) or (x, y, sample_weight), got y=None")
    return x, y, sw


class ArraySource:
    """Batches of NumPy arrays (``x``, ``y`` and ``sample_weight`` already checked; each an
    array or, for a model with several inputs or outputs, a list of arrays)."""

    def __init__(self, x, y, sample_weight, batch_size, shuffle=False, steps=None):
        self.x, self.y, self.sw = x, y, sample_weight
        self.n = num_samples(x)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.steps = max(1, math.ceil(self.n / batch_size))
        if steps is not None:          # the first `steps` batches of each epoch's order
            self.steps = min(self.steps, steps)
        self.ran_out = False

    def epoch(self):
        order = np.random.permutation(self.n) if self.shuffle else None
        bs = self.batch_size
        for step in range(self.steps):
            sl = slice(step * bs, (step + 1) * bs) if order is None else order[step * bs:(step + 1) * bs]
            yield take(self.x, sl), take(self.y, sl), take(self.sw, sl)

    def on_epoch_begin(self):
        pass

    def on_epoch_end(self):
        pass


def _ran_out_warning(what):
    warnings.warn(f"{what}: your input ran out of data; interrupting training. Make sure that "
                  "your generator can generate at least `steps_per_epoch * epochs` batches.",
                  stacklevel=4)


class GeneratorSource:
    """The batches of an iterator: ``steps`` per epoch, or until it is exhausted."""

    def __init__(self, iterator, steps, what, need_y):
        self.iterator = iterator
        self.steps = steps
        self.what = what
        self.need_y = need_y
        self.ran_out = False

    def epoch(self):
        k = 0
        while self.steps is None or k < self.steps:
            try:
                batch = next(self.iterator)
            except StopIteration:
                if self.steps is not None or k == 0:
                    self.ran_out = True
                return
            k += 1
            yield unpack_batch(batch, self.what, self.need_y)

    def on_epoch_begin(self):
        pass

    def on_epoch_end(self):
        pass


class PyDatasetSource:
    """The batches of a PyDataset: a pass of ``len(ds)`` batches is an epoch, or ``steps``
    batches an epoch continue through the pass."""

    def __init__(self, dataset, steps, shuffle, what, need_y, argument):
        self.ds = dataset
        n = getattr(dataset, "num_batches", None) if not hasattr(dataset, "__len__") \
            else len(dataset)
        if n is None:
            if steps is None:
                raise ValueError(f"{argument}: {what} has no length (an infinite PyDataset); "
                                 f"give {argument}")
        elif isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"{what}: len() must be a non-negative integer, got {n!r}")
        elif n == 0:
            raise ValueError(f"{what}: the PyDataset is empty (len() == 0)")
        elif steps is not None and steps > n:
            raise ValueError(f"{argument}: expected at most {n} batches, the length of {what} "
                             f"(one pass), got {steps}")
        self.n = None if n is None else int(n)
        self.steps = steps if steps is not None else self.n
        self.shuffle = shuffle
        self.what = what
        self.need_y = need_y
        self.pos = 0
        self.order = None
        self.ran_out = False

    def epoch(self):
        for _ in range(self.steps):
            if self.n is None:
                index = self.pos
            else:
                if self.pos == 0:
                    self.order = np.random.permutation(self.n) if self.shuffle else None
                index = self.pos if self.order is None else int(self.order[self.pos])
            self.pos += 1
            yield unpack_batch(self.ds[index], self.what, self.need_y)
            if self.n is not None and self.pos >= self.n:
                self.pos = 0
                return

    def on_epoch_begin(self):
        hook = getattr(self.ds, "on_epoch_begin", None)
        if callable(hook):
            hook()

    def on_epoch_end(self):
        hook = getattr(self.ds, "on_epoch_end", None)
        if callable(hook):
            hook()
