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
