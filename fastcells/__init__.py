"""fastcells: fused recurrent-cell kernels for PyTorch, as drop-in replacements for torch.nn.

    import fastcells
    model = fastcells.convert(model)       # every nn.LSTM/GRU/RNN/cell inside now runs fused kernels
    lstm = fastcells.LSTM(64, 128, num_layers=2, batch_first=True)   # or use the modules directly
"""

from .backends import available_backends
from .convert import convert
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "available_backends"]
