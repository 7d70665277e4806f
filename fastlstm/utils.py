"""``fl.utils``: Keras 3's ``PyDataset``, the base class for data that ``fit``, ``evaluate``
and ``predict`` read a batch at a time.

    class Windows(fl.utils.PyDataset):
        def __init__(self, x, y, batch_size):
            super().__init__()
            self.x, self.y, self.batch_size = x, y, batch_size

        def __len__(self):                          # batches per epoch
            return math.ceil(len(self.x) / self.batch_size)

        def __getitem__(self, index):               # one batch: (x, y) or (x, y, sample_weight)
            s = slice(index * self.batch_size, (index + 1) * self.batch_size)
            return self.x[s], self.y[s]

        def on_epoch_end(self):                     # optional: called after every epoch
            ...

    model.fit(Windows(x, y, 32), epochs=10)

Any object with ``__len__`` and ``__getitem__(index)`` that returns a batch works the same
way (a ``keras.utils.PyDataset`` too); this class adds nothing but the protocol, its
defaults and Keras's constructor arguments. ``workers``, ``use_multiprocessing`` and
``max_queue_size`` are accepted for Keras parity and not used: batches are read in the
training thread, in order (the compiled kernels already use the cores).
"""
from __future__ import annotations

__all__ = ["PyDataset"]


class PyDataset:
    """Base class for a dataset of batches: ``__len__()`` (the number of batches, one epoch)
    and ``__getitem__(index)`` returning batch ``index``, as ``(x, y)``,
    ``(x, y, sample_weight)``, or ``x`` / ``(x,)`` for ``predict``; ``on_epoch_begin()`` and
    ``on_epoch_end()`` are called around every epoch of ``fit`` (Keras 3's protocol)."""

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self._workers = workers
        self._use_multiprocessing = use_multiprocessing
        self._max_queue_size = max_queue_size

    @property
    def workers(self):
        return getattr(self, "_workers", 1)

    @property
    def use_multiprocessing(self):
        return getattr(self, "_use_multiprocessing", False)

    @property
    def max_queue_size(self):
        return getattr(self, "_max_queue_size", 10)

    def __getitem__(self, index):
        """Batch ``index`` (0 <= index < len(self))."""
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__(index), "
                                  "returning one batch")

    @property
    def num_batches(self):
        """The number of batches in an epoch: ``len(self)``."""
        if hasattr(self, "__len__"):
            return len(self)
        raise NotImplementedError(f"{type(self).__name__} must implement __len__(), the number "
                                  "of batches in an epoch")

    def on_epoch_begin(self):
        """Called at the beginning of every epoch of ``fit``."""

    def on_epoch_end(self):
        """Called at the end of every epoch of ``fit`` (e.g. to reshuffle the samples)."""

    def __iter__(self):
        for index in range(self.num_batches):
            yield self[index]
