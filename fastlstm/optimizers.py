"""Optimizers that update NumPy weights in place, step for step as Keras 3 does.

One call ``opt.apply(grads, params)`` does what ``keras.optimizers.Optimizer.apply`` does:

1. drop parameters whose gradient is ``None``;
2. clip the gradients: ``clipnorm`` (each gradient scaled to norm <= clipnorm), or
   ``global_clipnorm`` (all scaled together), or ``clipvalue`` (elementwise);
3. decoupled weight decay, if ``weight_decay`` is set: ``p <- p * (1 - weight_decay * lr)``;
4. the optimizer's own update rule with ``lr = learning_rate(iterations)``;
5. ``iterations += 1``.

Slot arrays (moments, accumulators) are created on the first ``apply`` in each parameter's
dtype and are identified by the parameter's position in the list, so pass the parameters
in the same order every step. ``get_state()``/``set_state()`` carry the iteration count
and every slot, so a restored optimizer continues exactly.
"""
from __future__ import annotations

import inspect
import math
import numbers
import warnings

import numpy as np

from . import devices
from . import schedules as _schedules
from .schedules import LearningRateSchedule

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "get", "serialize",
           "deserialize"]


def _check(value, name, low=None, high=None, low_open=False, high_open=False, allow_none=False):
    """``value`` as a float after checking it is a finite number in the given range."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            rng = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            rng = f" {'>' if low_open else '>='} {low}"
        else:
            rng = ""
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a finite number{rng}"
            f"{' or None' if allow_none else ''}. Received: {name}={value!r}."
        )
    return float(value)


def _takes_positional(fn):
    """Whether ``fn`` can be called with one positional argument (the iteration)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.VAR_POSITIONAL)
    return any(p.kind in kinds for p in params)


class Optimizer:
    """Base class. Subclasses define ``_slot_specs()`` and ``_update_step``."""

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        self.name = name or type(self).__name__.lower()
        self._set_learning_rate(learning_rate)
        self.weight_decay = _check(weight_decay, "weight_decay", 0, allow_none=True)
        self.clipnorm = _check(clipnorm, "clipnorm", 0, low_open=True, allow_none=True)
        self.clipvalue = _check(clipvalue, "clipvalue", 0, low_open=True, allow_none=True)
        self.global_clipnorm = _check(global_clipnorm, "global_clipnorm", 0, low_open=True,
                                      allow_none=True)
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}."
            )
        self.iterations = 0
        self._slots = None  # list (one per parameter) of {slot name: array}

    # ------------------------------------------------------------------ learning rate

    def _set_learning_rate(self, learning_rate):
        if isinstance(learning_rate, LearningRateSchedule):
            self._learning_rate = learning_rate
        elif callable(learning_rate):
            self._learning_rate = learning_rate
            self._lr_fn_takes_step = _takes_positional(learning_rate)
        else:
            self._learning_rate = _check(learning_rate, "learning_rate", 0)

    @property
    def learning_rate(self) -> float:
        """The rate the next step uses: the schedule or callable at ``iterations``."""
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            value = lr(self.iterations)
        elif callable(lr):
            value = lr(self.iterations) if self._lr_fn_takes_step else lr()
        else:
            return lr
        return _check(float(value), "learning_rate (value returned by the schedule)", 0)

    @learning_rate.setter
    def learning_rate(self, value):
        if callable(self._learning_rate):
            raise TypeError(
                "This optimizer was created with a schedule or callable as its "
                "`learning_rate`, so its learning rate cannot be set to a number. "
                f"Received: learning_rate={value!r}."
            )
        self._learning_rate = _check(value, "learning_rate", 0)

    # ------------------------------------------------------------------------- update

    def _slot_specs(self):
        """``[(slot name, initial value), ...]`` for every parameter."""
        return []

    def _update_step(self, grad, param, lr, slots):
        raise NotImplementedError

    def _build(self, params):
        if self._slots is None:
            self._slots = [{name: devices.module_of(p).full(p.shape, init, dtype=p.dtype)
                            for name, init in self._slot_specs()} for p in params]
            return
        if len(self._slots) != len(params):
            raise ValueError(
                f"This optimizer holds state for {len(self._slots)} parameters but received "
                f"{len(params)}; pass the same parameters, in the same order, every step "
                "(after changing a layer's trainable flag, compile the model again with a "
                "new optimizer)."
            )
        for i, (slots, p) in enumerate(zip(self._slots, params)):
            for name, arr in slots.items():
                if arr.shape != p.shape:
                    raise ValueError(
                        f"Optimizer slot {name!r} for params[{i}] has shape {arr.shape} but "
                        f"params[{i}] has shape {p.shape}."
                    )
                if arr.dtype != p.dtype:
                    arr = slots[name] = arr.astype(p.dtype)
                if devices.is_device_array(arr) != devices.is_device_array(p):
                    # restored state, or a model moved between devices: follow the weights
                    slots[name] = (devices.module_of(p).asarray(arr) if devices.is_device_array(p)
                                   else devices.to_host(arr))

    def _clip(self, grads):
        if self.clipnorm is not None:
            out = []
            for g in grads:
                norm = float(np.sqrt(np.sum(np.square(g, dtype=np.float64))))
                out.append(g * g.dtype.type(self.clipnorm / max(norm, self.clipnorm)))
            return out
        if self.global_clipnorm is not None:
            norm = float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads)))
            # c * min(1/norm, 1/c); a non-finite norm poisons every gradient, as in Keras.
            scale = self.global_clipnorm / max(norm, self.global_clipnorm) if math.isfinite(norm) \
                else float("nan")
            return [g * g.dtype.type(scale) for g in grads]
        if self.clipvalue is not None:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def apply(self, grads, params):
        """One optimisation step: update ``params`` (float32/float64 arrays) in place."""
        grads, params = list(grads), list(params)
        if len(grads) != len(params):
            raise ValueError(
                "Arguments `grads` and `params` must have the same length. Received: "
                f"len(grads)={len(grads)}, len(params)={len(params)}."
            )
        for i, p in enumerate(params):
            if not (isinstance(p, np.ndarray) or devices.is_device_array(p)) \
                    or p.dtype not in (np.float32, np.float64):
                raise TypeError(
                    f"params[{i}] must be a float32 or float64 NumPy or CuPy array (it is updated in "
                    f"place). Received: {type(p).__name__} of dtype {getattr(p, 'dtype', None)}."
                )
            if isinstance(p, np.ndarray) and not p.flags.writeable:
                raise ValueError(f"params[{i}] is read-only; it must be writeable.")
        self._build(params)
        live = []
        for i, (g, p) in enumerate(zip(grads, params)):
            if g is None:  # Keras skips parameters without a gradient
                continue
            g = devices.module_of(p).asarray(g)
            if g.shape != p.shape:
                raise ValueError(
                    f"grads[{i}] has shape {g.shape} but params[{i}] has shape {p.shape}."
                )
            live.append((i, g.astype(p.dtype, copy=False), p))
        if not live:
            raise ValueError("No gradients provided for any parameter (all grads are None).")
        clipped = self._clip([g for _, g, _ in live])
        lr = self.learning_rate
        if self.weight_decay is not None:
            for _, _, p in live:
                p *= p.dtype.type(1.0 - self.weight_decay * lr)
        for (i, _, p), g in zip(live, clipped):
            self._update_step(g, p, lr, self._slots[i])
        self.iterations += 1

    # ------------------------------------------------------------------ serialisation

    def get_config(self):
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            lr = _schedules.serialize(lr)
        elif callable(lr):
            warnings.warn(
                "A plain callable learning rate cannot be serialised; the config records "
                "its current value. Use a fastlstm.schedules schedule to keep it.",
                stacklevel=2,
            )
            lr = self.learning_rate
        return {"name": self.name, "learning_rate": lr, "weight_decay": self.weight_decay,
                "clipnorm": self.clipnorm, "global_clipnorm": self.global_clipnorm,
                "clipvalue": self.clipvalue}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = _schedules.deserialize(config["learning_rate"])
        return cls(**config)

    def get_state(self):
        """``{"iterations", "learning_rate" (numeric rates only), "<slot>/<index>"}``."""
        state = {"iterations": np.asarray(self.iterations, dtype=np.int64)}
        if not callable(self._learning_rate):
            state["learning_rate"] = np.asarray(self._learning_rate, dtype=np.float64)
        for i, slots in enumerate(self._slots or []):
            for name, arr in slots.items():
                state[f"{name}/{i}"] = np.array(devices.to_host(arr), copy=True)
        return state

    def set_state(self, state):
        """Restore what :meth:`get_state` returned (before or after the first ``apply``)."""
        state = dict(state)
        if "iterations" not in state:
            raise ValueError("Argument `state` must contain 'iterations'.")
        iterations = int(np.asarray(state.pop("iterations")))
        if iterations < 0:
            raise ValueError(f"Invalid optimizer state: iterations={iterations} is negative.")
        lr = state.pop("learning_rate", None)
        names = [name for name, _ in self._slot_specs()]
        by_index = {}
        for key, arr in state.items():
            name, sep, idx = key.rpartition("/")
            if not sep or name not in names or not idx.isdigit():
                raise ValueError(
                    f"Unknown entry {key!r} in the state of {type(self).__name__}: expected "
                    f"'iterations', 'learning_rate' or '<slot>/<index>' with slot in {names}."
                )
            by_index.setdefault(int(idx), {})[name] = np.array(arr, copy=True)
        n = len(by_index)
        if set(by_index) != set(range(n)) or any(set(s) != set(names) for s in by_index.values()):
            raise ValueError(
                f"Incomplete optimizer state: every parameter index 0..{n - 1} needs the "
                f"slots {names}; received {sorted(state)}."
            )
        self.iterations = iterations
        if lr is not None and not callable(self._learning_rate):
            self.learning_rate = float(np.asarray(lr))
        self._slots = [by_index[i] for i in range(n)] if n else None

    def __repr__(self):
        return f"{type(self).__name__}(learning_rate={self._learning_rate!r})"


class SGD(Optimizer):
    """Gradient descent, optionally with momentum (Keras form, velocity ``m``)::

        m <- momentum * m - lr * g
        p <- p + m                                  (plain momentum)
        p <- p + momentum * m - lr * g              (nesterov, with the new m)
        p <- p - lr * g                             (momentum == 0)
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        self.momentum = _check(momentum, "momentum", 0, 1)
        self.nesterov = bool(nesterov)

    def _slot_specs(self):
        return [("momentum", 0.0)] if self.momentum != 0 else []

    def _update_step(self, g, p, lr, slots):
        t = p.dtype.type
        lr = t(lr)
        if self.momentum == 0:
            p -= g * lr
            return
        mom = t(self.momentum)
        m = slots["momentum"]
        m *= mom
        m -= g * lr
        if self.nesterov:
            p += m * mom - g * lr
        else:
            p += m

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba) in Keras' form, with ``t = iterations + 1``::

        m <- m + (g - m) * (1 - beta_1)
        v <- v + (g**2 - v) * (1 - beta_2)
        v_hat <- max(v_hat, v); use v_hat for v          (amsgrad)
        p <- p - lr * sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (sqrt(v) + epsilon)

    Note epsilon is added to ``sqrt(v)`` uncorrected (the paper adds it to sqrt(v_hat_t)).
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        self.beta_1 = _check(beta_1, "beta_1", 0, 1, high_open=True)
        self.beta_2 = _check(beta_2, "beta_2", 0, 1, high_open=True)
        self.epsilon = _check(epsilon, "epsilon", 0)
        self.amsgrad = bool(amsgrad)

    def _slot_specs(self):
        specs = [("momentum", 0.0), ("velocity", 0.0)]
        return specs + [("velocity_hat", 0.0)] if self.amsgrad else specs

    def _update_step(self, g, p, lr, slots):
        t = p.dtype.type
        step = t(self.iterations + 1)
        alpha = t(lr) * np.sqrt(t(1) - t(self.beta_2) ** step) / (t(1) - t(self.beta_1) ** step)
        m, v = slots["momentum"], slots["velocity"]
        m += (g - m) * t(1 - self.beta_1)
        v += (g * g - v) * t(1 - self.beta_2)
        if self.amsgrad:
            np.maximum(slots["velocity_hat"], v, out=slots["velocity_hat"])
            v = slots["velocity_hat"]
        p -= (m * alpha) / (np.sqrt(v) + t(self.epsilon))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): before each Adam step
    ``p <- p * (1 - weight_decay * lr)``. Same as ``Adam(weight_decay=...)``, but
    ``weight_decay`` defaults to 0.004 and is required."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        if weight_decay is None:
            raise ValueError(
                "Argument `weight_decay` of AdamW must be a number. Received: weight_decay=None."
            )
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay,
                         clipnorm, clipvalue, global_clipnorm, name)


class RMSprop(Optimizer):
    """RMSprop (Hinton) in Keras' form::

        v <- rho * v + (1 - rho) * g**2
        a <- rho * a + (1 - rho) * g                       (centered)
        d  = v - a**2 + epsilon   (centered)   or   v + epsilon
        inc = lr * g / sqrt(d)
        mom <- momentum * mom + inc;  p <- p - mom         (momentum > 0)
        p <- p - inc                                       (otherwise)
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        self.rho = _check(rho, "rho", 0, 1, high_open=True)
        self.momentum = _check(momentum, "momentum", 0, 1)
        self.epsilon = _check(epsilon, "epsilon", 0)
        self.centered = bool(centered)

    def _slot_specs(self):
        specs = [("velocity", 0.0)]
        if self.momentum > 0:
            specs.append(("momentum", 0.0))
        if self.centered:
            specs.append(("average_gradient", 0.0))
        return specs

    def _update_step(self, g, p, lr, slots):
        t = p.dtype.type
        rho, one_minus_rho = t(self.rho), t(1 - self.rho)
        v = slots["velocity"]
        v[...] = rho * v + one_minus_rho * (g * g)
        if self.centered:
            a = slots["average_gradient"]
            a[...] = rho * a + one_minus_rho * g
            denominator = v - a * a + t(self.epsilon)
        else:
            denominator = v + t(self.epsilon)
        increment = (t(lr) * g) / np.sqrt(denominator)
        if self.momentum > 0:
            mom = slots["momentum"]
            mom[...] = t(self.momentum) * mom + increment
            p -= mom
        else:
            p -= increment

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.)::

        acc <- acc + g**2            (acc starts at initial_accumulator_value)
        p   <- p - lr * g / sqrt(acc + epsilon)
    """

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        self.initial_accumulator_value = _check(initial_accumulator_value,
                                                "initial_accumulator_value", 0)
        self.epsilon = _check(epsilon, "epsilon", 0)

    def _slot_specs(self):
        return [("accumulator", self.initial_accumulator_value)]

    def _update_step(self, g, p, lr, slots):
        t = p.dtype.type
        acc = slots["accumulator"]
        acc += g * g
        p -= (t(lr) * g) / np.sqrt(acc + t(self.epsilon))

    def get_config(self):
        return {**super().get_config(),
                "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


_CLASSES = {cls.__name__.lower(): cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad)}


def serialize(optimizer):
    """``{"class_name": ..., "config": ...}``, JSON-serialisable."""
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(config):
    """Inverse of :func:`serialize` (class names are case-insensitive, as in Keras)."""
    name = config.get("class_name") if isinstance(config, dict) else None
    if not isinstance(name, str) or name.lower() not in _CLASSES:
        raise ValueError(
            "Argument `optimizer` as a dict must be {'class_name': one of "
            f"{sorted(_CLASSES)}, 'config': {{...}}}}. Received: optimizer={config!r}."
        )
    return _CLASSES[name.lower()].from_config(dict(config.get("config") or {}))


def get(identifier):
    """An :class:`Optimizer` from a name (``"sgd"``, ``"adam"``, ``"adamw"``,
    ``"rmsprop"``, ``"adagrad"``; any case) with default arguments, a config dict, or an
    Optimizer instance (returned as is)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        cls = _CLASSES.get(identifier.lower())
        if cls is None:
            raise ValueError(
                f"Invalid value for argument `optimizer`: unknown optimizer name {identifier!r}. "
                f"Known names: {sorted(_CLASSES)}."
            )
        return cls()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise TypeError(
        "Argument `optimizer` must be an optimizer name, a config dict or a "
        f"fastlstm.optimizers.Optimizer. Received: optimizer={identifier!r} "
        f"of type {type(identifier).__name__}."
    )
