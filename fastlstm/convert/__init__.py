"""Move trained models between fastlstm and PyTorch, Keras 3 and ONNX without changing
what they compute.

    fl_model = fastlstm.convert.from_torch(torch_lstm)        # nn.LSTM / GRU / RNN / cells
    fl_model = fastlstm.convert.from_torch(net, example_x)    # a whole nn.Module, via ONNX
    module = fastlstm.convert.to_torch(fl_model)
    fl_model = fastlstm.convert.from_keras("model.keras")     # or a Keras layer / model object
    keras_model = fastlstm.convert.to_keras(fl_model)
    fastlstm.convert.to_onnx(fl_model, "model.onnx")          # standard LSTM/GRU/RNN operators
    fl_model = fastlstm.convert.from_onnx("model.onnx")       # also torch.onnx.export's graphs

Each peer library is imported only when its function is called; a missing one is an
ImportError naming the pip package. What a target cannot express raises ``ConversionError``
(a ``ValueError``) naming the option, layer or operator; nothing is dropped silently.
"""
from ._common import ConversionError
from ._torch import from_torch, to_torch
from ._keras import from_keras, to_keras
from ._onnx_export import to_onnx
from ._onnx_import import from_onnx

__all__ = ["from_torch", "to_torch", "from_keras", "to_keras", "to_onnx", "from_onnx",
           "ConversionError"]
