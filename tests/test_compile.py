"""torch.compile(fullgraph=True) of fastcells layers, cells and a user's model holding them: no graph
breaks, and forward and backward equal to eager."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastcells
from fastcells import _extension

pytestmark = pytest.mark.skipif(_extension.load_error is not None,
                                reason=f"fastcells._C not loaded: {_extension.load_error}")

BACKEND = "cpu"  # the compiled ops; the reference backend's Python loop is not the point here


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _outputs(result):
    if isinstance(result, torch.Tensor):
        return [result]
    if hasattr(result, "batch_sizes"):
        return [result.data]
    return [t for r in result for t in _outputs(r)]


def _run(function, module, *args):
    """Calls ``function(*args)``, backpropagates a fixed weighting of every output, and returns the
    outputs and the gradients of the tensor arguments and of the module's parameters."""
    leaves = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
              else a for a in args]
    outs = _outputs(function(*leaves))
    gen = torch.Generator().manual_seed(99)
    sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs).backward()
    grads = [a.grad for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
    grads += [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return [o.detach() for o in outs], grads


def _assert_equal_runs(eager, compiled, atol=1e-5, rtol=1e-5):
    for part in range(2):
        assert len(eager[part]) == len(compiled[part])
        for a, b in zip(compiled[part], eager[part]):
            assert b is not None and a is not None
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


LAYERS = {
    "lstm": lambda: fastcells.LSTM(4, 7, 2, bidirectional=True, backend=BACKEND),
    "lstm_proj": lambda: fastcells.LSTM(4, 7, 2, proj_size=3, batch_first=True, backend=BACKEND),
    "gru": lambda: fastcells.GRU(4, 7, 2, bidirectional=True, batch_first=True, backend=BACKEND),
    "rnn_relu": lambda: fastcells.RNN(4, 7, 2, nonlinearity="relu", backend=BACKEND),
}


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_aot_eager(kind):
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    x = _randn(5, 3, 4)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    _assert_equal_runs(_run(layer, layer, x), _run(compiled, layer, x))


def test_layer_with_initial_states_aot_eager():
    torch.manual_seed(0)
    layer = fastcells.LSTM(4, 6, 2, bidirectional=True, backend=BACKEND)
    x, h0, c0 = _randn(5, 3, 4), _randn(4, 3, 6, seed=1), _randn(4, 3, 6, seed=2)
    compiled = torch.compile(lambda x, h, c: layer(x, (h, c)), fullgraph=True, backend="aot_eager")
    _assert_equal_runs(_run(lambda x, h, c: layer(x, (h, c)), layer, x, h0, c0),
                       _run(compiled, layer, x, h0, c0))


class Tagger(nn.Module):
    """A user's model: embedding -> fastcells recurrent layers -> linear head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.lstm = fastcells.LSTM(6, 8, 2, batch_first=True, bidirectional=True, backend=BACKEND)
        self.gru = fastcells.GRU(16, 5, batch_first=True, backend=BACKEND)
        self.head = nn.Linear(5, 4)

    def forward(self, tokens):
        y, _ = self.lstm(self.embed(tokens))
        y, h = self.gru(torch.tanh(y))
        return self.head(y), h


def test_user_model_aot_eager():
    torch.manual_seed(0)
    model = Tagger()
    tokens = torch.randint(0, 20, (3, 6), generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    _assert_equal_runs(_run(model, model, tokens), _run(compiled, model, tokens))


class PackedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fastcells.LSTM(4, 6, 2, bidirectional=True, backend=BACKEND)
        self.head = nn.Linear(12, 2)

    def forward(self, packed):
        out, (h, c) = self.lstm(packed)
        return self.head(out.data), h, c


def test_packed_sequence_into_compiled_model():
    torch.manual_seed(0)
    model = PackedModel()
    lengths = torch.tensor([3, 5, 1, 4])
    x = _randn(5, 4, 4)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")

    def call(fn):
        def inner(x):
            return fn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return inner

    # The sequence is packed outside the compiled function (pack_padded_sequence itself is eager).
    _assert_equal_runs(_run(call(model), model, x), _run(call(compiled), model, x))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_cell_step(kind):
    """A compiled cell step: with autograd (the layer op) and under no_grad (the fused step op)."""
    torch.manual_seed(0)
    cell = {"lstm": fastcells.LSTMCell, "gru": fastcells.GRUCell,
            "rnn_tanh": fastcells.RNNCell}[kind](4, 6, backend=BACKEND)
    x, h = _randn(3, 4), _randn(3, 6, seed=1)
    hx = (h, _randn(3, 6, seed=2)) if kind == "lstm" else h
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    _assert_equal_runs(_run(lambda x: cell(x, hx), cell, x), _run(lambda x: compiled(x, hx), cell, x))
    with torch.no_grad():
        for a, b in zip(_outputs(compiled(x, hx)), _outputs(cell(x, hx)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_cell_loop_compiled():
    """A streaming loop of cell steps inside one compiled function."""
    torch.manual_seed(0)
    cell = fastcells.GRUCell(4, 6, backend=BACKEND)
    xs = _randn(4, 2, 4)

    def unroll(xs):
        h = None
        outs = []
        for t in range(xs.shape[0]):
            h = cell(xs[t], h)
            outs.append(h)
        return torch.stack(outs)

    compiled = torch.compile(unroll, fullgraph=True, backend="aot_eager")
    _assert_equal_runs(_run(unroll, cell, xs), _run(compiled, cell, xs))


def test_inference_compiled():
    """Compiled under inference_mode: the ops run with training=False and still match eager."""
    torch.manual_seed(0)
    model = Tagger().eval()
    tokens = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        for a, b in zip(compiled(tokens), model(tokens), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_user_model_inductor():
    """The default backend (inductor) on the user's model, forward and backward."""
    torch.manual_seed(0)
    model = Tagger()
    tokens = torch.randint(0, 20, (3, 6), generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(model, fullgraph=True)
    _assert_equal_runs(_run(model, model, tokens), _run(compiled, model, tokens), atol=1e-5, rtol=1e-4)
