"""Keras-like layers. Recurrent layers take batch-major input (batch, timesteps, features)."""
from .base import Gradients, Layer
from .recurrent import GRU, LSTM, RecurrentLayer, SimpleRNN
from .cells import RNN, GRUCell, LSTMCell, SimpleRNNCell
from .core import Dense, Dropout, Embedding, Masking
from .activation import Activation
from .convolutional import Conv1D
from .merging import Add, Average, Concatenate, Multiply
from .normalization import LayerNormalization
from .pooling import GlobalAveragePooling1D, GlobalMaxPooling1D
from .reshaping import Flatten, RepeatVector
from .wrappers import Bidirectional, TimeDistributed
from .attention import AdditiveAttention, Attention, MultiHeadAttention
from .serialization import deserialize, serialize

__all__ = ["Layer", "Gradients", "RecurrentLayer", "LSTM", "GRU", "SimpleRNN", "RNN",
           "LSTMCell", "GRUCell", "SimpleRNNCell"]
__all__ += ["Dense", "Embedding", "Masking", "Dropout", "Bidirectional", "serialize",
            "deserialize"]
__all__ += ["Activation", "Conv1D", "LayerNormalization", "GlobalAveragePooling1D",
            "GlobalMaxPooling1D", "RepeatVector", "Flatten", "TimeDistributed", "Concatenate",
            "Add", "Multiply", "Average",
            "Attention", "AdditiveAttention", "MultiHeadAttention"]
