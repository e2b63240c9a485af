"""``fastcells.convert(model)``: swap torch.nn recurrent modules for their fastcells twins in place."""

from . import backends
from .cells import TWINS

# The constructor arguments of the torch.nn recurrent modules, read back from their attributes (each
# class has the ones its constructor takes, except that every layer has proj_size).
_ARGUMENTS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
              "bidirectional", "proj_size", "nonlinearity")


def _twin_of(module, backend):
    """A fastcells module configured like ``module`` and sharing its parameter tensors, or None."""
    twin_cls = TWINS.get(type(module))
    if twin_cls is None:
        return None
    kwargs = {name: getattr(module, name) for name in _ARGUMENTS if hasattr(module, name)}
    if not kwargs.get("proj_size"):
        kwargs.pop("proj_size", None)  # GRU and RNN take none
    # built without memory; the real parameters come next
    twin = twin_cls(**kwargs, backend=backend, device="meta", dtype=None)
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

