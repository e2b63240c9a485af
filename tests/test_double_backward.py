"""Gradients of gradients (a backward under create_graph=True: gradient penalties, Hessian-vector
products, meta-learning), which torch.nn's CPU layers and cells allow: fastcells' backward then takes the
gradients of the reference backend's layer (fastcells/ops.py, _recorded_grads). Second derivatives
against torch.nn in float64, and against finite differences (gradgradcheck)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import CELL_KINDS, make_cell_twins, make_layer_twins, random_cell_states, random_layer_states

DT = torch.float64


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if hasattr(value, "data") and hasattr(value, "batch_sizes"):  # a PackedSequence
        return [value.data]
    return [t for item in value for t in _tensors(item)]


def _second_order(module, x, states, packed):
    """The first-order gradients of a penalty on the outputs (recorded), and the gradients of their
    squared sum with respect to the input, the initial states and every parameter."""
    leaves = [x, *states]
    sequence = pack_padded_sequence(x, torch.tensor([4, 3, 3, 1])) if packed else x
    outputs = _tensors(module(sequence, tuple(states) if len(states) == 2 else states[0]))
    penalty = sum((t * t.detach().sin()).sum() for t in outputs)
    first = torch.autograd.grad(penalty, leaves, create_graph=True)
    second = torch.autograd.grad(sum(g.pow(2).sum() for g in first), [*leaves, *module.parameters()])
    return [*first, *second]


def _assert_second_order_matches(ref, fast, x, states, packed=False):
    """fastcells' first and second derivatives (_second_order) are torch.nn's, on fresh leaves each."""
    states = list(states) if isinstance(states, tuple) else [states]
    results = []
    for module in (ref, fast):
        leaves = [x.clone().requires_grad_(), *(s.clone().requires_grad_() for s in states)]
        results.append(_second_order(module, leaves[0], leaves[1:], packed))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"])
def test_layer_second_derivatives_match_torch(kind, packed, backend):
    ref, fast = make_layer_twins(kind, 3, 5, 2, bidirectional=True, backend=backend)
    x = torch.randn(4, 4, 3, dtype=DT, generator=torch.Generator().manual_seed(7))
    _assert_second_order_matches(ref, fast, x, random_layer_states(ref, 4, DT), packed)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_cell_second_derivatives_match_torch(kind, backend):
    ref, fast = make_cell_twins(kind, 3, 5, backend=backend)
    x = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(7))
    _assert_second_order_matches(ref, fast, x, random_cell_states(ref, 4, DT))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_layer_gradgradcheck(kind, backend):
    """Second derivatives against finite differences of the first, reverse direction included."""
    if backend == "triton":
        pytest.skip("~20 s a case through Triton's interpreter; the triton ops' second derivatives are the "
                    "reference layer's, as the other backends' (compared with torch.nn above)")
    _, fast = make_layer_twins(kind, 2, 3, 1, bidirectional=True, backend=backend)
    x = torch.randn(3, 2, 2, dtype=DT, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=DT, requires_grad=True)
    hx = (h0, torch.randn(2, 2, 3, dtype=DT)) if kind == "lstm" else h0

    def outputs(x, h0):
        y, hn = fast(x, (h0, hx[1]) if kind == "lstm" else h0)
        return y, hn[0] if kind == "lstm" else hn

    assert torch.autograd.gradgradcheck(outputs, (x, h0))
