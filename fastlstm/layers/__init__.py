"""Keras-like layers. Recurrent layers take batch-major input (batch, timesteps, features)."""
from .base import Gradients, Layer
from .recurrent import GRU, LSTM, RecurrentLayer, SimpleRNN
from .cells import RNN, GRUCell, LSTMCell, SimpleRNNCell
from .core import Dense, Dropout, Embedding, Masking
from .wrappers import Bidirectional
from .attention import AdditiveAttention, Attention, MultiHeadAttention
from .serialization import deserialize, serialize

__all__ = ["Layer", "Gradients", "RecurrentLayer", "LSTM", "GRU", "SimpleRNN", "RNN",
           "LSTMCell", "GRUCell", "SimpleRNNCell"]
__all__ += ["Dense", "Embedding", "Masking", "Dropout", "Bidirectional", "serialize",
            "deserialize"]
__all__ += ["Attention", "AdditiveAttention", "MultiHeadAttention"]
