"""fastcells: fused recurrent-cell kernels for PyTorch, as drop-in replacements for torch.nn.

    import fastcells
    model = fastcells.convert(model)       # every nn.LSTM/GRU/RNN/cell inside now runs fused kernels
    lstm = fastcells.LSTM(64, 128, num_layers=2, batch_first=True)   # or use the modules directly
"""

import torch

from .backends import available_backends
from .convert import convert, unconvert
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "unconvert", "available_backends"]

# A model saved whole (torch.save(model)) loads with torch.load's default weights_only=True, as one made
# of torch.nn's modules does: the modules hold only what torch.nn's do (parameters, sizes, flags) plus
# the backend's name, a string.
torch.serialization.add_safe_globals([LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell])
