"""Inference calls of the cpu backend go to fastcells._C straight, past the dispatcher (layers and cell
steps; backends/cpu.py), and only where nothing records or transforms op calls: under an op recorder
(a dispatch mode), torch.jit.trace or with gradients they go through torch.ops. Results are the same
either way."""

import types

import pytest
import torch

import fastcells
from fastcells import _extension
from conftest import OpRecorder

if "cpu" not in fastcells.available_backends("cpu"):
    pytest.skip("the cpu backend is not built", allow_module_level=True)


class _CountingC(types.SimpleNamespace):
    """fastcells._C with its layer forward ops counted."""

    def __init__(self, real):
        super().__init__(calls=[])
        self._real = real

    def __getattr__(self, name):
        function = getattr(self._real, name)
        if not name.endswith("_layer_fwd"):
            return function

        def counted(*args):
            self.calls.append(name)
            return function(*args)
        return counted


@pytest.fixture
def counting_c(monkeypatch):
    counting = _CountingC(_extension.C)
    monkeypatch.setattr(_extension, "C", counting)
    return counting


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_inference_layers_call_the_extension_directly_with_the_same_result(name, counting_c):
    torch.manual_seed(0)
    layer = getattr(fastcells, name)(4, 5, 2, backend="cpu")
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        direct = layer(x)[0]
    assert counting_c.calls == [f"{name.lower()}_layer_fwd"] * 2  # one per layer
    with torch.no_grad(), OpRecorder() as ops:  # a dispatch mode: calls must go where it sees them
        recorded = layer(x)[0]
    assert ops.names == [f"{name.lower()}_layer_fwd"] * 2 and len(counting_c.calls) == 2
    torch.testing.assert_close(direct, recorded, rtol=0, atol=0)


def test_training_calls_go_through_the_autograd_ops(counting_c):
    layer = fastcells.GRU(4, 5, backend="cpu")
    out, _ = layer(torch.randn(3, 2, 4))
    out.sum().backward()
    assert counting_c.calls == [] and layer.weight_hh_l0.grad is not None
