"""Poisoned memory: the ops must write every element of what they return and never read memory they did
not write. Every tensor the ops allocate (at::empty, in C++ too) comes filled with NaN: torch's
deterministic mode with fill_uninitialized_memory does that for each allocation, so an unwritten or
uninitialized element shows up as NaN or as a difference from a clean run. (Freed NaN buffers handed
back by malloc, the earlier method, reached some sizes only: the premise test skipped, and the tests
passed vacuously.)"""

import pytest
import torch

from fastcells import _extension

pytestmark = pytest.mark.skipif(_extension.load_error is not None,
                                reason=f"fastcells._C not loaded: {_extension.load_error}")

ops = torch.ops.fastcells
# Sizes such that every output is >= 1 KiB: smaller freed blocks are rarely handed back intact.
B, H, P, I = 32, 16, 8, 5
PACKED = [32, 32, 29, 20, 20, 11, 6, 3, 1]
PADDED = [32] * 9


def _randn(*shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(autouse=True)
def _nan_filled_allocations():
    """torch.empty (and at::empty in the ops) hands out NaN-filled memory while a test runs."""
    import torch.utils.deterministic as deterministic

    was_on, was_filling = torch.are_deterministic_algorithms_enabled(), deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(was_on)
    deterministic.fill_uninitialized_memory = was_filling


def _poisoned_call(op, args, numels, dtype):
    """Also fills and frees NaN buffers of each size in ``numels`` (several of each), for memory the
    ops take other than through torch's allocator, then calls the op."""
    buffers = [torch.full((n,), float("nan"), dtype=dtype) for n in numels for _ in range(3)]
    del buffers
    return op(*args)


def _numels(outputs, extra=()):
    return sorted({t.numel() for t in outputs if t.numel() > 0} | set(extra), reverse=True)


def _assert_identical(poisoned, clean):
    for index, (a, b) in enumerate(zip(poisoned, clean, strict=True)):
        assert not a.isnan().any(), f"output {index} holds NaN: an element was never written"
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_poisoning_reaches_new_tensors(dtype):
    """The premise, asserted (not skipped: these tests would pass vacuously without it): every new
    tensor holds NaN, through torch.empty and through the aten op the C++ at::empty calls."""
    for numel in (1, 2464, 9856, 1 << 20):
        assert torch.empty(numel, dtype=dtype).isnan().all()
        assert torch.ops.aten.empty.memory_format([numel], dtype=dtype).isnan().all()


def _layer_args(family, dtype, sizes):
    """(forward op, its arguments up to batch_sizes, backward op, shapes of the output gradients)."""
    n = sum(sizes)
    size_tensor = torch.tensor(sizes, dtype=torch.long)
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[family.split("_")[0]]
    input_side = (_randn(n, I, dtype=dtype, seed=1), _randn(gates * H, I, dtype=dtype, seed=6),
                  _randn(gates * H, dtype=dtype, seed=7), _randn(gates * H, dtype=dtype, seed=8))
    if family.startswith("lstm"):
        p = P if family == "lstm_proj" else H
        w_hr = _randn(p, H, dtype=dtype, seed=5) if family == "lstm_proj" else None
        fwd = input_side + (_randn(B, p, dtype=dtype, seed=2), _randn(B, H, dtype=dtype, seed=3),
                            _randn(4 * H, p, dtype=dtype, seed=4) * 0.3, w_hr, size_tensor)
        return ops.lstm_layer_fwd, fwd, ops.lstm_layer_bwd, [(n, p), (B, p), (B, H)]
    fwd = input_side + (_randn(B, H, dtype=dtype, seed=2),
                        _randn(gates * H, H, dtype=dtype, seed=4) * 0.3, size_tensor)
    if family == "gru":
        return ops.gru_layer_fwd, fwd, ops.gru_layer_bwd, [(n, H), (B, H)]
    return ops.rnn_layer_fwd, fwd + (family == "rnn_relu",), ops.rnn_layer_bwd, [(n, H), (B, H)]


FAMILIES = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("sizes", [PACKED, PADDED], ids=["packed", "padded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_layer_ops(family, dtype, sizes, reverse):
    fwd_op, fwd_args, bwd_op, grad_shapes = _layer_args(family, dtype, sizes)
    extra = [4 * H * B, 3 * H * B, H * B, sum(sizes) * 4 * H, sum(sizes) * 3 * H]  # internal buffers
    for training in (True, False):
        args = fwd_args + (reverse, training)
        clean = fwd_op(*args)
        poisoned = _poisoned_call(fwd_op, args, _numels(clean, extra), dtype)
        _assert_identical(poisoned, clean)

    y, *_, saved = fwd_op(*fwd_args, reverse, True)
    grads = tuple(_randn(*shape, dtype=dtype, seed=20 + k) for k, shape in enumerate(grad_shapes))
    x, w_ih, b_ih, b_hh = fwd_args[:4]
    if family.startswith("lstm"):
        w_hh, w_hr, batch_sizes = fwd_args[6:9]
        bwd_args = grads + (saved, x, w_ih, b_ih, b_hh, w_hh, w_hr, batch_sizes, reverse, True)
    else:
        h0, w_hh, batch_sizes, *relu = fwd_args[4:]
        bwd_args = grads + (saved, y, h0, x, w_ih, b_ih, b_hh, w_hh, batch_sizes, *relu, reverse, True)
    clean = bwd_op(*bwd_args)
    _assert_identical(_poisoned_call(bwd_op, bwd_args, _numels(clean, extra), dtype), clean)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("family", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_step_ops(family, dtype, bias):
    batch = 64  # outputs large enough for malloc to reuse the poisoned blocks
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[family.split("_")[0]]
    x, h = _randn(batch, I, dtype=dtype, seed=1), _randn(batch, H, dtype=dtype, seed=2)
    w_ih, w_hh = _randn(gates * H, I, dtype=dtype, seed=3), _randn(gates * H, H, dtype=dtype, seed=4)
    b_ih = _randn(gates * H, dtype=dtype, seed=5) if bias else None
    b_hh = _randn(gates * H, dtype=dtype, seed=6) if bias else None
    if family == "lstm":
        op, args = ops.lstm_step_fwd, (x, h, _randn(batch, H, dtype=dtype, seed=7), w_ih, w_hh, b_ih, b_hh)
    elif family == "gru":
        op, args = ops.gru_step_fwd, (x, h, w_ih, w_hh, b_ih, b_hh)
    else:
        op, args = ops.rnn_step_fwd, (x, h, w_ih, w_hh, b_ih, b_hh, family == "rnn_relu")
    clean = op(*args)
    clean = clean if isinstance(clean, tuple) else (clean,)
    poisoned = _poisoned_call(op, args, _numels(clean, [2 * batch * gates * H]), dtype)
    _assert_identical(poisoned if isinstance(poisoned, tuple) else (poisoned,), clean)
