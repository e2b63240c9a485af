"""Weights computed at every call: a parametrization (torch.nn.utils.parametrize, weight_norm) takes a
weight out of the module's parameter dict and computes it from its own parameters; pruning
(torch.nn.utils.prune) does too, from a forward pre-hook; torch.func's functional_call swaps the
weights for a call. fastcells' layers and cells must read the weights torch.nn
reads, in every path (the streaming step, the layers' direct inference path, the full path), and pass
gradients to the parametrization's own parameters."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from conftest import CELL_KINDS, make_cell_twins, make_layer_twins, random_cell_states


class _Scaled(nn.Module):
    """A parametrization with a parameter of its own: weight * scale."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def forward(self, weight):
        return weight * self.scale


def _outputs(value):
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in _outputs(item)]


def _assert_close(got, expected):
    for a, b in zip(_outputs(got), _outputs(expected), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def _parametrize(module, name, how):
    if how == "scaled":
        parametrize.register_parametrization(module, name, _Scaled())
    elif how == "weight_norm":
        nn.utils.parametrizations.weight_norm(module, name)
    else:  # the same entries of both twins' weights: the masks are drawn from the weights' magnitudes
        prune.l1_unstructured(module, name, amount=0.4)


def _gradients(module):
    return [p.grad for _, p in sorted(module.named_parameters())]


@pytest.mark.parametrize("how", ["scaled", "weight_norm", "pruned"])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_parametrized_cells_match_torch(kind, how, backend):
    ref, fast = make_cell_twins(kind, 4, 5, backend=backend)
    for module in (ref, fast):
        _parametrize(module, "weight_hh", how)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    hx = random_cell_states(ref, 3, torch.float64)
    with torch.no_grad():  # the streaming step
        _assert_close(fast(x, hx), ref(x, hx))
        _assert_close(fast(x), ref(x))
    got, expected = fast(x, hx), ref(x, hx)
    _assert_close(got, expected)
    sum(t.sum() for t in _outputs(got)).backward()
    sum(t.sum() for t in _outputs(expected)).backward()
    _assert_close(_gradients(fast), _gradients(ref))


@pytest.mark.parametrize("how", ["scaled", "weight_norm", "pruned"])
@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_parametrized_layers_match_torch(kind, how, backend):
    ref, fast = make_layer_twins(kind, 4, 5, 2, bidirectional=True, backend=backend)
    for module in (ref, fast):
        _parametrize(module, "weight_hh_l1_reverse", how)
        _parametrize(module, "weight_ih_l0", how)
    x = torch.randn(6, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    states = ref(x)[1]
    with torch.no_grad():  # the direct inference path (states given), and the full path
        _assert_close(fast(x, states), ref(x, states))
        _assert_close(fast(x), ref(x))
    got, expected = fast(x), ref(x)
    _assert_close(got, expected)
    got[0].sum().backward()
    expected[0].sum().backward()
    _assert_close(_gradients(fast), _gradients(ref))


@pytest.mark.parametrize("family", ["cell", "layer"])
def test_functional_call_weights(family, backend):
    """torch.func.functional_call with other weights: those weights' results, the module's unchanged."""
    if family == "cell":
        ref, fast = make_cell_twins("lstm", 4, 5, backend=backend)
        x = torch.randn(3, 4, dtype=torch.float64)
        args = (x, random_cell_states(ref, 3, torch.float64))
    else:
        ref, fast = make_layer_twins("gru", 4, 5, 2, backend=backend)
        x = torch.randn(6, 3, 4, dtype=torch.float64)
        args = (x, torch.randn(2, 3, 5, dtype=torch.float64))
    other = {name: torch.randn_like(p) for name, p in ref.named_parameters()}
    with torch.no_grad():
        _assert_close(torch.func.functional_call(fast, other, args), torch.func.functional_call(ref, other, args))
        _assert_close(fast(*args), ref(*args))
