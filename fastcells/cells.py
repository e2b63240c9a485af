"""The cell table: each cell family's torch.nn and fastcells classes, in one place. ``check``
(fastcells/numcheck), the benchmarks and ``convert`` read it."""

import dataclasses

from torch import nn

from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell


@dataclasses.dataclass(frozen=True)
class Family:
    torch_layer: type
    layer: type  # the fastcells twin of torch_layer
    torch_cell: type
    cell: type  # the fastcells twin of torch_cell
    kwargs: dict  # constructor arguments that pick the family's nonlinearity

    def classes(self, cell, fast):
        """The cell class (else the layer class), the fastcells one when ``fast``."""
        if cell:
            return self.cell if fast else self.torch_cell
        return self.layer if fast else self.torch_layer


FAMILIES = {
    "lstm": Family(nn.LSTM, LSTM, nn.LSTMCell, LSTMCell, {}),
    "gru": Family(nn.GRU, GRU, nn.GRUCell, GRUCell, {}),
    "rnn_tanh": Family(nn.RNN, RNN, nn.RNNCell, RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": Family(nn.RNN, RNN, nn.RNNCell, RNNCell, {"nonlinearity": "relu"}),
}
FAMILIES["rnn"] = FAMILIES["rnn_tanh"]  # the benchmarks' name for the tanh RNN

# torch.nn class -> its fastcells twin
TWINS = {torch_cls: fast_cls for family in FAMILIES.values()
         for torch_cls, fast_cls in ((family.torch_layer, family.layer),
                                     (family.torch_cell, family.cell))}
