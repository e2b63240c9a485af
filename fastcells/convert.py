"""``fastcells.convert(model)``: swap torch.nn recurrent modules for their fastcells twins in place;
``fastcells.unconvert(model)``: the way back, to torch.nn modules sharing the same parameters."""

from . import backends
from .cells import TWINS

# The constructor arguments of the torch.nn recurrent modules, read back from their attributes (each
# class has the ones its constructor takes, except that every layer has proj_size).
_ARGUMENTS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
              "bidirectional", "proj_size", "nonlinearity")


def _twin_of(module, twins, **extra):
    """A module of class ``twins[type(module)]`` configured like ``module`` (plus the constructor arguments
    ``extra``) and sharing its parameter tensors, or None where ``module``'s class has no twin."""
    twin_cls = twins.get(type(module))
    if twin_cls is None:
        return None
    kwargs = {name: getattr(module, name) for name in _ARGUMENTS if hasattr(module, name)}
    if not kwargs.get("proj_size"):
        kwargs.pop("proj_size", None)  # GRU and RNN take none
    # built without memory; the real parameters come next
    twin = twin_cls(**kwargs, **extra, device="meta", dtype=None)
    for name, parameter in module.named_parameters(recurse=False):
        setattr(twin, name, parameter)  # RNNBase.__setattr__ keeps _flat_weights in step
    twin.train(module.training)
    return twin


def _swap(model, twin_of):
    """``model`` with every module that ``twin_of`` gives a twin (recursively, ``model`` itself
    included) replaced by that twin."""
    twin = twin_of(model)
    if twin is not None:
        return twin
    for name, child in model.named_children():
        swapped = _swap(child, twin_of)
        if swapped is not child:
            setattr(model, name, swapped)
    return model


def convert(model, backend="auto"):
    """Replaces every torch.nn LSTM/GRU/RNN/LSTMCell/GRUCell/RNNCell in ``model`` (recursively, ``model``
    itself included) by its fastcells twin sharing the same parameter tensors, and returns the model.

    Only exact torch.nn classes are replaced: a user's subclass may override forward, so it is kept.
    """
    backends.check_name(backend)
    return _swap(model, lambda module: _twin_of(module, TWINS, backend=backend))


def unconvert(model):
    """The inverse of :func:`convert`: replaces every fastcells module in ``model`` (recursively, ``model``
    itself included) by its torch.nn twin sharing the same parameter tensors, and returns the model, for
    code or people that expect torch.nn classes (a model saved whole then loads without fastcells).
    """
    return _swap(model, lambda module: _twin_of(module, _TORCH_TWINS))


_TORCH_TWINS = {fast_cls: torch_cls for torch_cls, fast_cls in TWINS.items()}
