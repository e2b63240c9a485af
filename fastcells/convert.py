"""``fastcells.convert(model)``: swap torch.nn recurrent modules for their fastcells twins in place."""

from torch import nn

from . import backends, modules


def _twin_of(module, backend):
    """A fastcells module configured like ``module`` and sharing its parameter tensors, or None."""
    meta = {"device": "meta", "dtype": None}  # built without memory; the real parameters come next
    if type(module) is nn.LSTM:
        twin = modules.LSTM(module.input_size, module.hidden_size, module.num_layers, module.bias,
                            module.batch_first, module.dropout, module.bidirectional,
                            module.proj_size, backend=backend, **meta)
    elif type(module) is nn.GRU:
        twin = modules.GRU(module.input_size, module.hidden_size, module.num_layers, module.bias,
                           module.batch_first, module.dropout, module.bidirectional,
                           backend=backend, **meta)
    elif type(module) is nn.RNN:
        twin = modules.RNN(module.input_size, module.hidden_size, module.num_layers,
                           module.nonlinearity, module.bias, module.batch_first, module.dropout,
                           module.bidirectional, backend=backend, **meta)
    elif type(module) is nn.LSTMCell:
        twin = modules.LSTMCell(module.input_size, module.hidden_size, module.bias,
                                backend=backend, **meta)
    elif type(module) is nn.GRUCell:
        twin = modules.GRUCell(module.input_size, module.hidden_size, module.bias,
                               backend=backend, **meta)
    elif type(module) is nn.RNNCell:
        twin = modules.RNNCell(module.input_size, module.hidden_size, module.bias,
                               module.nonlinearity, backend=backend, **meta)
    else:
        return None
    for name, parameter in module.named_parameters(recurse=False):
        setattr(twin, name, parameter)  # RNNBase.__setattr__ keeps _flat_weights in step
    twin.train(module.training)
    return twin


def convert(model, backend="auto"):
    """Replaces every torch.nn LSTM/GRU/RNN/LSTMCell/GRUCell/RNNCell in ``model`` (recursively, ``model``
    itself included) by its fastcells twin sharing the same parameter tensors, and returns the model.

    Only exact torch.nn classes are replaced: a user's subclass may override forward, so it is kept.
    """
    backends.check_name(backend)
    twin = _twin_of(model, backend)
    if twin is not None:
        return twin
    for name, child in model.named_children():
        converted = convert(child, backend)
        if converted is not child:
            setattr(model, name, converted)
    return model

