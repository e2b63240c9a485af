"""Poisoned memory: the ops must write every element of what they return and never read memory they did
not write. Freed NaN-filled buffers of the sizes the op allocates are likely to be handed back to it by
malloc (checked below for this allocator), so an unwritten or uninitialized element shows up as NaN or
as a difference from a clean run."""

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


def _poisoned_call(op, args, numels, dtype):
    """Fills and frees NaN buffers of each size in ``numels`` (several of each), then calls the op."""
    buffers = [torch.full((n,), float("nan"), dtype=dtype) for n in numels for _ in range(3)]
    del buffers
    return op(*args)


def _numels(outputs, extra=()):
    return sorted({t.numel() for t in outputs if t.numel() > 0} | set(extra), reverse=True)


def _assert_identical(poisoned, clean):
    for index, (a, b) in enumerate(zip(poisoned, clean, strict=True)):
        assert not a.isnan().any(), f"output {index} holds NaN: an element was never written"
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_poisoning_reaches_new_tensors():
    """The premise: a freed buffer's contents show up in the next allocation of that size."""
    hits = 0
    for _ in range(5):
        poison = torch.full((4096,), float("nan"), dtype=torch.float64)
        del poison
        hits += int(torch.empty(4096, dtype=torch.float64).isnan().any())
    if hits == 0:
        pytest.skip("this allocator does not hand freed memory back: poisoning has no effect here")


def _layer_args(family, dtype, sizes):
    n = sum(sizes)
    size_tensor = torch.tensor(sizes, dtype=torch.long)
    if family.startswith("lstm"):
        p = P if family == "lstm_proj" else H
        w_hr = _randn(p, H, dtype=dtype, seed=5) if family == "lstm_proj" else None
        fwd = (_randn(n, 4 * H, dtype=dtype, seed=1), _randn(B, p, dtype=dtype, seed=2),
               _randn(B, H, dtype=dtype, seed=3), _randn(4 * H, p, dtype=dtype, seed=4) * 0.3, w_hr,
               size_tensor)
        return ops.lstm_layer_fwd, fwd, ops.lstm_layer_bwd, [(n, p), (B, p), (B, H)]
    if family == "gru":
        fwd = (_randn(n, 3 * H, dtype=dtype, seed=1), _randn(B, H, dtype=dtype, seed=2),
               _randn(3 * H, H, dtype=dtype, seed=4) * 0.3, _randn(3 * H, dtype=dtype, seed=5),
               size_tensor)
        return ops.gru_layer_fwd, fwd, ops.gru_layer_bwd, [(n, H), (B, H)]
    fwd = (_randn(n, H, dtype=dtype, seed=1), _randn(B, H, dtype=dtype, seed=2),
           _randn(H, H, dtype=dtype, seed=4) * 0.3, size_tensor, family == "rnn_relu")
    return ops.rnn_layer_fwd, fwd, ops.rnn_layer_bwd, [(n, H), (B, H)]


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

    saved = fwd_op(*fwd_args, reverse, True)[-1]
    grads = tuple(_randn(*shape, dtype=dtype, seed=20 + k) for k, shape in enumerate(grad_shapes))
    if family.startswith("lstm"):
        bwd_args = grads + (saved, fwd_args[3], fwd_args[4], fwd_args[5], reverse)
    elif family == "gru":
        bwd_args = grads + (saved, fwd_args[2], fwd_args[4], reverse, True)
    else:
        bwd_args = grads + (saved, fwd_args[2], fwd_args[3], fwd_args[4], reverse)
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
