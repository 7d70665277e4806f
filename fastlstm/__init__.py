"""fastlstm: fast LSTM, GRU and RNN layers for the CPU, with a small Keras-like API.

    import fastlstm as fl
    model = fl.Sequential([fl.layers.LSTM(64), fl.layers.Dense(1)])

Layers (``fl.layers``) sit on functional ops (``fl.ops``) that run on a backend: the
compiled ``cpu`` kernels (default), the ``numpy`` oracle, or ``cupy`` on a GPU.
"""
from ._version import __version__
from . import activations
from .backends import available as available_backends, current_backend, set_backend, use_backend
from . import ops
from . import initializers, regularizers, layers
from .threads import get_num_threads, init_threads as _init_threads, set_loop_threads, set_num_threads
from .backends.workspace import get_workspace_limit, set_workspace_limit

__all__ = ["__version__", "activations", "ops", "initializers", "regularizers", "layers", "set_backend", "use_backend", "current_backend",
           "available_backends", "set_num_threads", "get_num_threads", "set_loop_threads",
           "set_workspace_limit", "get_workspace_limit"]
from .models import Sequential
from .functional import Input, Model
from .saving import load_model
from .quantization import quantize
from . import utils

from . import mixed_precision
__all__ += ["Sequential", "Input", "Model", "load_model", "quantize", "utils", "mixed_precision"]

# Imported on first use (PEP 562), so that ``import fastlstm`` stays light.
_LAZY_SUBMODULES = ("convert", "datasets", "dask", "distributed")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


_init_threads()
