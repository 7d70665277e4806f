"""Keras-like layers. Recurrent layers take batch-major input (batch, timesteps, features)."""
from .base import Gradients, Layer
from .recurrent import LSTM, RecurrentLayer

__all__ = ["Layer", "Gradients", "RecurrentLayer", "LSTM"]
