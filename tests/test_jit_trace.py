"""torch.jit.trace of fastcells modules: the traced module must compute what eager does on new inputs.
A cell's inference call on the cpu backend can skip the dispatcher (fastcells._C called straight from
forward, modules.py and backends/cpu.py); the tracer sees only torch.ops, so while tracing those calls
must go through torch.ops, or the trace records no op and its outputs are uninitialised memory."""

import pytest
import torch

import fastcells

if "cpu" not in fastcells.available_backends("cpu"):
    pytest.skip("the cpu backend is not built", allow_module_level=True)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_traced_cell_matches_eager_on_new_inputs_without_grad(name):
    torch.manual_seed(0)
    cell = getattr(fastcells, name)(4, 5, backend="cpu")

    def states():
        return (torch.randn(2, 5), torch.randn(2, 5)) if name == "LSTMCell" else torch.randn(2, 5)

    def flat(out):
        return out if isinstance(out, tuple) else (out,)

    with torch.no_grad():
        traced = torch.jit.trace(cell, (torch.randn(2, 4), states()), check_trace=False)
        x, hx = torch.randn(2, 4), states()
        got, expected = traced(x, hx), cell(x, hx)
    for a, b in zip(flat(got), flat(expected)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_traced_layer_matches_eager_on_new_inputs_without_grad(name):
    torch.manual_seed(0)
    layer = getattr(fastcells, name)(4, 5, 2, backend="cpu")
    with torch.no_grad():
        traced = torch.jit.trace(layer, (torch.randn(3, 2, 4),), check_trace=False)
        x = torch.randn(3, 2, 4)
        got, expected = traced(x)[0], layer(x)[0]
    torch.testing.assert_close(got, expected)


# The trace's own check (check_trace=True, torch.jit.trace's default) traces again under no_grad and
# compares the graphs: the op a module records must not depend on grad mode.
LAYERS = {"LSTM": {}, "GRU": {}, "RNN": {"nonlinearity": "relu"}}
CELLS = {"LSTMCell": {}, "GRUCell": {}, "RNNCell": {"nonlinearity": "tanh"}}


def _flat(out):
    """The tensors of a module's output: a tensor, or tuples of tensors and tuples."""
    return [t for t in (out if isinstance(out, tuple) else (out,))
            for t in (t if isinstance(t, tuple) else (t,))]


def _grads(module, out, inputs):
    """Gradients of a fixed weighting of ``out`` with respect to ``inputs`` and the parameters."""
    loss = sum((t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view_as(t)).sum() for t in _flat(out))
    return torch.autograd.grad(loss, [*inputs, *module.parameters()])


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", [*LAYERS, *CELLS])
def test_trace_passes_its_check_and_matches_eager(name, training, backend):
    """Traced with grad on and the default check_trace=True, in training and in eval mode: the traced
    module gives eager's outputs on new inputs, and eager's gradients (input and parameters)."""
    torch.manual_seed(0)
    is_layer = name in LAYERS
    module = getattr(fastcells, name)(4, 5, *((2,) if is_layer else ()), backend=backend,
                                      **(LAYERS | CELLS)[name]).double().train(training)

    def new_input():
        shape = (3, 2, 4) if is_layer else (2, 4)
        return torch.randn(shape, dtype=torch.float64, requires_grad=True)

    traced = torch.jit.trace(module, (new_input(),))
    x = new_input()
    got, expected = traced(x), module(x)
    for a, b in zip(_flat(got), _flat(expected), strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(_grads(traced, got, [x]), _grads(module, expected, [x]), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["LSTM", "GRUCell"])
def test_trace_under_no_grad_passes_its_check(name):
    torch.manual_seed(0)
    module = getattr(fastcells, name)(4, 5, backend="cpu")
    x = torch.randn((3, 2, 4) if name == "LSTM" else (2, 4))
    with torch.no_grad():
        traced = torch.jit.trace(module, (x,))
        for a, b in zip(_flat(traced(x)), _flat(module(x)), strict=True):
            torch.testing.assert_close(a, b)
