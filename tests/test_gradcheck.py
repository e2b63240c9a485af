"""torch.autograd.gradcheck in float64 through the modules: gradients w.r.t. the input, the initial states
and every weight, checked against finite differences (independently of torch.nn)."""

import os

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import make_cell_twins, make_layer_twins, random_cell_states, random_layer_states

LAYERS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]


def _as_function(module, structure):
    """A function of (input, *states, *parameters) calling ``module`` with those tensors as its
    parameters; ``structure`` rebuilds the module's hx argument from the state tensors."""
    names = [name for name, _ in module.named_parameters()]

    def function(x, *tensors):
        states, params = tensors[: structure.count], tensors[structure.count :]
        result = functional_call(module, dict(zip(names, params)), (x, structure.build(states)))
        out, state = result
        out = out.data if hasattr(out, "batch_sizes") else out
        return (out,) + (tuple(state) if isinstance(state, tuple) else (state,))

    return function


class _States:
    def __init__(self, hx):
        self.is_tuple = isinstance(hx, tuple)
        self.count = len(hx) if self.is_tuple else 1

    def build(self, states):
        return tuple(states) if self.is_tuple else states[0]


def _fast_mode(backend):
    """Triton's interpreter costs ~3.5 ms a kernel launch: there the check compares one random
    projection of the Jacobian (gradcheck's fast mode, 2 evaluations per input instead of 2 per
    input element)."""
    return backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def _gradcheck(module, x, hx, prepare=None, fast_mode=False):
    structure = _States(hx)
    function = _as_function(module, structure)
    if prepare is not None:
        inner = function
        function = lambda x, *rest: inner(prepare(x), *rest)  # noqa: E731
    states = list(hx) if structure.is_tuple else [hx]
    inputs = [x] + states + [p.detach() for p in module.parameters()]
    inputs = tuple(t.detach().clone().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-5,
                                    fast_mode=fast_mode)


@pytest.mark.parametrize("kind", LAYERS)
def test_layers(kind, backend):
    dtype = torch.float64
    kwargs = {"proj_size": 2} if kind == "lstm_proj" else {}
    _, module = make_layer_twins(kind, 2, 3, 2, bidirectional=True, dtype=dtype, backend=backend,
                                 seed=1, **kwargs)
    x = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(2), dtype=dtype)
    _gradcheck(module, x, random_layer_states(module, 2, dtype), fast_mode=_fast_mode(backend))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_cells(kind, backend):
    dtype = torch.float64
    _, module = make_cell_twins(kind, 3, 4, dtype=dtype, backend=backend, seed=1)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=dtype)
    hx = random_cell_states(module, 2, dtype)
    structure = _States(hx)
    names = [name for name, _ in module.named_parameters()]

    def function(x, *tensors):
        states, params = tensors[: structure.count], tensors[structure.count :]
        return functional_call(module, dict(zip(names, params)), (x, structure.build(states)))

    states = list(hx) if structure.is_tuple else [hx]
    inputs = tuple(t.detach().clone().requires_grad_()
                   for t in [x] + states + list(module.parameters()))
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-5,
                                    fast_mode=_fast_mode(backend))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_packed_unsorted(kind, backend):
    dtype = torch.float64
    _, module = make_layer_twins(kind, 2, 3, 1, bidirectional=True, dtype=dtype, backend=backend,
                                 seed=1)
    lengths = torch.tensor([2, 4, 1])
    x = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(2), dtype=dtype)
    pack = lambda x: pack_padded_sequence(x, lengths, enforce_sorted=False)  # noqa: E731
    _gradcheck(module, x, random_layer_states(module, 3, dtype), prepare=pack,
               fast_mode=_fast_mode(backend))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_second_layer_reverse_only_output(kind, backend):
    """Gradients when only some outputs are used (the others get no upstream gradient at all)."""
    dtype = torch.float64
    _, module = make_layer_twins(kind, 2, 3, 2, bidirectional=True, dtype=dtype, backend=backend,
                                 seed=3)
    names = [name for name, _ in module.named_parameters()]

    def function(x, *params):
        out, _ = functional_call(module, dict(zip(names, params)), (x,))
        return out[..., 3:]  # the reverse direction's half of the last layer's output

    x = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(4), dtype=dtype)
    inputs = tuple(t.detach().clone().requires_grad_() for t in [x] + list(module.parameters()))
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-5,
                                    fast_mode=_fast_mode(backend))
