"""Learning-rate schedules: ``schedule(step) -> float``, defined as in Keras 3.

An optimizer evaluates its schedule at ``optimizer.iterations`` *before* incrementing it,
so the first update uses ``schedule(0)``.
"""
from __future__ import annotations

import math
import numbers

__all__ = ["LearningRateSchedule", "ExponentialDecay", "CosineDecay", "serialize", "deserialize"]


def _number(value, name, low=None, low_open=False, high=None, high_open=False):
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high}")
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a finite number "
            f"{' and '.join(bounds)}. Received: {name}={value!r}."
        )
    return value


class LearningRateSchedule:
    """Base class: subclasses implement ``__call__(step) -> float`` and ``get_config``."""

    def __call__(self, step) -> float:
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """``lr(step) = initial_learning_rate * decay_rate ** (step / decay_steps)``;
    with ``staircase=True`` the exponent is ``floor(step / decay_steps)``."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        self.initial_learning_rate = float(
            _number(initial_learning_rate, "initial_learning_rate", 0))
        self.decay_steps = _number(decay_steps, "decay_steps", 0, low_open=True)
        self.decay_rate = float(_number(decay_rate, "decay_rate", 0, low_open=True))
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step) -> float:
        p = float(step) / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay with optional linear warmup (Loshchilov & Hutter, SGDR).

    Without warmup (``warmup_target=None``), with ``s = min(step, decay_steps)``::

        lr = initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)

    With ``warmup_target``: for ``step < warmup_steps`` the rate rises linearly from
    ``initial_learning_rate`` to ``warmup_target``; afterwards the formula above runs on
    ``min(step, warmup_steps + decay_steps) - warmup_steps`` starting from ``warmup_target``.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        self.initial_learning_rate = float(
            _number(initial_learning_rate, "initial_learning_rate", 0))
        self.decay_steps = _number(decay_steps, "decay_steps", 0, low_open=True)
        self.alpha = float(_number(alpha, "alpha", 0, high=1))
        self.name = name
        self.warmup_target = (None if warmup_target is None
                              else float(_number(warmup_target, "warmup_target", 0)))
        self.warmup_steps = _number(warmup_steps, "warmup_steps", 0)

    def _decay(self, step, from_lr):
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return from_lr * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step) -> float:
        step = float(step)
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            start = self.initial_learning_rate
            return (self.warmup_target - start) * frac + start
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


_CLASSES = {cls.__name__: cls for cls in (ExponentialDecay, CosineDecay)}


def serialize(schedule):
    """``{"class_name": ..., "config": ...}``, JSON-serialisable."""
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config):
    """Inverse of :func:`serialize`."""
    if not isinstance(config, dict) or config.get("class_name") not in _CLASSES:
        raise ValueError(
            "Argument `learning_rate` as a dict must be {'class_name': one of "
            f"{sorted(_CLASSES)}, 'config': {{...}}}}. Received: learning_rate={config!r}."
        )
    return _CLASSES[config["class_name"]].from_config(dict(config.get("config") or {}))
