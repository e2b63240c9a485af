"""torch.export.export of a model containing fastcells layers and cells: the export succeeds on every
backend, the exported program keeps our ops (no graph break, no Python fallback), and it gives the same
outputs as the eager model, also on a new input of another batch and length."""

import pytest
import torch
from torch import nn

import fastcells

from conftest import make_cell_twins, make_layer_twins


class Tagger(nn.Module):
    """A user's model: embedding-like projection, a recurrent layer, a head."""

    def __init__(self, recurrent):
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.recurrent = recurrent
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        out, _ = self.recurrent(self.proj(x))
        return self.head(out)


class StreamingCell(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x, h):
        return self.cell(x, h)


def _flat(value):
    return list(value) if isinstance(value, tuple) else [value]


def _fastcells_ops(program):
    return {node.target.name() for node in program.graph.nodes
            if node.op == "call_function" and hasattr(node.target, "name")
            and node.target.name().startswith("fastcells::")}


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_export_layer_model(kind, device_backend):
    device, backend = device_backend
    layer = make_layer_twins(kind, 3, 4, 1, bidirectional=True, dtype=torch.float32,
                             backend=backend, device=device)[1]
    model = Tagger(layer).to(device).eval()
    x = torch.randn(5, 2, 3, device=device)
    program = torch.export.export(model, (x,))
    if backend != "reference":
        assert _fastcells_ops(program), "the exported graph lost the fastcells ops"
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-6, rtol=1e-6)


def test_export_with_dynamic_batch_and_length(device_backend):
    """The fused backends run the time loop inside one op per layer, so the exported program takes any
    length; the reference backend's loop is Python, unrolled by export, so its length stays fixed."""
    device, backend = device_backend
    layer = make_layer_twins("lstm", 3, 4, 2, bidirectional=True, dtype=torch.float32,
                             backend=backend, device=device)[1]
    model = Tagger(layer).to(device).eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    steps = torch.export.Dim("steps", min=2, max=64) if backend != "reference" else None
    program = torch.export.export(model, (torch.randn(5, 3, 3, device=device),),
                                  dynamic_shapes=({0: steps, 1: batch},))
    x = torch.randn(9 if steps is not None else 5, 4, 3, device=device)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_export_cell_model(kind, device_backend):
    device, backend = device_backend
    cell = make_cell_twins(kind, 3, 4, dtype=torch.float32, backend=backend, device=device)[1]
    model = StreamingCell(cell).eval()
    x = torch.randn(2, 3, device=device)
    state = lambda: torch.randn(2, 4, device=device)  # noqa: E731
    h = (state(), state()) if kind == "lstm" else state()
    program = torch.export.export(model, (x, h))
    with torch.no_grad():
        for got, expected in zip(_flat(program.module()(x, h)), _flat(model(x, h)), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: fastcells.LSTM(3, 4), lambda: fastcells.GRUCell(3, 4)])
def test_torchscript_refusal_says_what_to_do(make):
    """TorchScript cannot parse our forward; its refusal names the exporters that work."""
    module = make()
    with pytest.raises(RuntimeError, match="torch.export.export or torch.compile") as error:
        torch.jit.script(module)
    assert type(module).__name__ in str(error.value)
