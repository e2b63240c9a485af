"""fastcells.LSTMCell / GRUCell / RNNCell against torch.nn: with autograd (the cpu backend runs a layer of
length one) and without (the cpu backend runs the fused step op), batched and unbatched."""

import itertools

import pytest
import torch
from torch import nn

from conftest import (CELL_KINDS, assert_same_results, forward_backward, make_cell_twins,
                      random_cell_states, record_fastcells_ops)

I, H = 4, 5

SHAPES = {"batch3": 3, "batch1": 1, "unbatched": None}

GRID = list(itertools.product(CELL_KINDS, SHAPES, (False, True), (False, True)))


def _input(batch, dtype, seed=0):
    shape = (I,) if batch is None else (batch, I)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _flatten(result):
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("kind,shape,bias,with_hx", GRID)
def test_with_grad(kind, shape, bias, with_hx, backend):
    dtype = torch.float64
    batch = SHAPES[shape]
    ref, fast = make_cell_twins(kind, I, H, bias=bias, dtype=dtype, backend=backend)
    x = _input(batch, dtype)
    hx = random_cell_states(ref, batch, dtype) if with_hx else None
    expected = forward_backward(ref, x, hx)
    got = forward_backward(fast, x, hx)
    assert_same_results(got, expected, dtype)


@pytest.mark.parametrize("context", ["inference_mode", "no_grad", "frozen"])
@pytest.mark.parametrize("kind,shape,bias,with_hx", GRID)
def test_without_grad(kind, shape, bias, with_hx, context, backend):
    """No gradient needed: inference_mode, no_grad, or grad mode on with frozen parameters and plain
    inputs. The cpu backend must take its fused step op here."""
    dtype = torch.float64
    batch = SHAPES[shape]
    ref, fast = make_cell_twins(kind, I, H, bias=bias, dtype=dtype, backend=backend)
    x = _input(batch, dtype)
    hx = random_cell_states(ref, batch, dtype) if with_hx else None
    if context == "frozen":
        ref.requires_grad_(False)
        fast.requires_grad_(False)
    manager = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad,
               "frozen": torch.enable_grad}[context]
    with manager():
        expected = ref(x, hx)
        with record_fastcells_ops() as ops:
            got = fast(x, hx)
    # The cpu backend runs its fused step here: through torch.ops (recorded) or, eagerly, straight
    # through pybind11 (not seen by the dispatcher); never the layer op, which exists for autograd.
    # The triton backend runs a step as its layer op over one step (one fused kernel).
    cell = kind.split("_")[0]
    allowed = {"cpu": {f"{cell}_step_fwd"}, "triton": {f"triton_{cell}_layer_fwd"}}
    assert set(ops) <= allowed.get(backend, set()), ops
    for a, b in zip(_flatten(got), _flatten(expected), strict=True):
        assert a.shape == b.shape
        assert not a.requires_grad
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_with_grad_uses_layer_op(kind, backend):
    """With autograd the cpu and triton backends run their layer op (which has a backward), never a
    step op; the reference backend runs no fastcells op at all."""
    ref, fast = make_cell_twins(kind, I, H, dtype=torch.float64, backend=backend)
    with record_fastcells_ops() as ops:
        out = fast(_input(3, torch.float64))
        sum(o.sum() for o in _flatten(out)).backward()
    name = kind.split("_")[0]
    prefix = {"cpu": "", "triton": "triton_"}.get(backend)
    if prefix is None:
        assert ops == []
    else:
        assert ops == [f"{prefix}{name}_layer_fwd", f"{prefix}{name}_layer_bwd"]


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_grad_of_input_only(kind, backend):
    """Parameters frozen but the input requires grad: still differentiable and equal to torch.nn."""
    dtype = torch.float64
    ref, fast = make_cell_twins(kind, I, H, dtype=dtype, backend=backend)
    ref.requires_grad_(False)
    fast.requires_grad_(False)
    x = _input(3, dtype)
    hx = random_cell_states(ref, 3, dtype)
    assert_same_results(forward_backward(fast, x, hx), forward_backward(ref, x, hx), dtype)


@pytest.mark.parametrize("kind,shape,bias,with_hx", [
    ("lstm", "batch3", True, True), ("lstm", "unbatched", False, False),
    ("gru", "batch1", True, True), ("gru", "batch3", False, False),
    ("rnn_tanh", "batch3", True, False), ("rnn_relu", "batch3", True, True),
])
def test_float32(kind, shape, bias, with_hx, backend):
    dtype = torch.float32
    batch = SHAPES[shape]
    ref, fast = make_cell_twins(kind, 6, 16, bias=bias, dtype=dtype, backend=backend)
    x = torch.randn((batch, 6) if batch else (6,), generator=torch.Generator().manual_seed(2))
    hx = random_cell_states(ref, batch, dtype) if with_hx else None
    assert_same_results(forward_backward(fast, x, hx), forward_backward(ref, x, hx), dtype)
    with torch.inference_mode():
        for a, b in zip(_flatten(fast(x, hx)), _flatten(ref(x, hx)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h", [3, 7, 16])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_odd_hidden_sizes(kind, h, backend):
    dtype = torch.float64
    ref, fast = make_cell_twins(kind, 3, h, dtype=dtype, backend=backend)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(4), dtype=dtype)
    hx = random_cell_states(ref, 2, dtype)
    assert_same_results(forward_backward(fast, x, hx), forward_backward(ref, x, hx), dtype)
    with torch.no_grad():
        for a, b in zip(_flatten(fast(x, hx)), _flatten(ref(x, hx)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_non_contiguous(kind, backend):
    """Transposed input and states, with and without autograd."""
    dtype = torch.float64
    ref, fast = make_cell_twins(kind, I, H, dtype=dtype, backend=backend)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(I, 3, generator=gen, dtype=dtype).t()
    states = [torch.randn(H, 3, generator=gen, dtype=dtype).t() for _ in range(2)]
    hx = tuple(states) if kind == "lstm" else states[0]
    assert not x.is_contiguous()
    with torch.inference_mode():
        for a, b in zip(_flatten(fast(x, hx)), _flatten(ref(x, hx)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
    to_view = lambda leaf: leaf.t().contiguous().t()  # noqa: E731  (a differentiable transposed view)
    expected = forward_backward(ref, x, hx, prepare=to_view)
    got = forward_backward(fast, x, hx, prepare=to_view)
    assert_same_results(got, expected, dtype)


class Unrolled(nn.Module):
    """A loop of cell steps feeding the state back (the streaming use); returns all h and the last state."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        state, outs = None, []
        for t in range(x.shape[0]):
            state = self.cell(x[t], state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outs), state


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_sequence_of_steps(kind, backend):
    dtype = torch.float64
    ref, fast = make_cell_twins(kind, I, H, dtype=dtype, backend=backend)
    xs = torch.randn(5, 2, I, generator=torch.Generator().manual_seed(8), dtype=dtype)
    assert_same_results(forward_backward(Unrolled(fast), xs), forward_backward(Unrolled(ref), xs),
                        dtype)
