"""Realistic arguments for the fastcells ops (shapes in csrc/ops.cpp), shared by the opcheck and the
bad-argument tests. Small sizes, a packed batch (batch_sizes non-increasing), fresh seeded values."""

import torch

ops = torch.ops.fastcells

B, H, P, I = 3, 5, 3, 4
BATCH_SIZES = [3, 3, 2, 1]  # packed: non-increasing, sums to N rows
N = sum(BATCH_SIZES)

# LSTM without and with projection, GRU with and without b_hh (an op argument there), RNN tanh/relu.
FAMILIES = ["lstm", "lstm_proj", "gru", "gru_no_bias", "rnn_tanh", "rnn_relu"]


def _randn(*shape, dtype, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(requires_grad)


def _batch_sizes(padded):
    sizes = [B] * len(BATCH_SIZES) if padded else BATCH_SIZES
    return torch.tensor(sizes, dtype=torch.long)


def layer_fwd_args(family, dtype, reverse, training, padded=False, prefix=""):
    """(op, args) for the family's layer forward op (``prefix`` "triton_": the triton backend's);
    tensors require grad when training."""
    rg = training
    sizes = _batch_sizes(padded)
    rows = int(sizes.sum())
    if family.startswith("lstm"):
        proj = family == "lstm_proj"
        p = P if proj else H
        w_hr = _randn(p, H, dtype=dtype, seed=5, requires_grad=rg) if proj else None
        args = (_randn(rows, 4 * H, dtype=dtype, seed=1, requires_grad=rg),
                _randn(B, p, dtype=dtype, seed=2, requires_grad=rg),
                _randn(B, H, dtype=dtype, seed=3, requires_grad=rg),
                _randn(4 * H, p, dtype=dtype, seed=4, requires_grad=rg) * 0.5,
                w_hr, sizes, reverse, training)
        return getattr(ops, prefix + "lstm_layer_fwd"), _fix_leaves(args)
    if family.startswith("gru"):
        b_hh = None if family == "gru_no_bias" else _randn(3 * H, dtype=dtype, seed=5, requires_grad=rg)
        args = (_randn(rows, 3 * H, dtype=dtype, seed=1, requires_grad=rg),
                _randn(B, H, dtype=dtype, seed=2, requires_grad=rg),
                _randn(3 * H, H, dtype=dtype, seed=4, requires_grad=rg),
                b_hh, sizes, reverse, training)
        return getattr(ops, prefix + "gru_layer_fwd"), _fix_leaves(args)
    relu = family == "rnn_relu"
    args = (_randn(rows, H, dtype=dtype, seed=1, requires_grad=rg),
            _randn(B, H, dtype=dtype, seed=2, requires_grad=rg),
            _randn(H, H, dtype=dtype, seed=4, requires_grad=rg),
            sizes, relu, reverse, training)
    return getattr(ops, prefix + "rnn_layer_fwd"), _fix_leaves(args)


def _fix_leaves(args):
    """Scaled tensors are no longer leaves: make every grad-requiring tensor a leaf again."""
    return tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.requires_grad
                 else a for a in args)


def layer_bwd_args(family, dtype, reverse, prefix=""):
    """(op, args) for the family's layer backward op, with ``saved`` from a real training forward."""
    fwd, fargs = layer_fwd_args(family, dtype, reverse, training=True, prefix=prefix)
    fargs = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in fargs)
    outputs = fwd(*fargs)
    saved = outputs[-1]
    if family.startswith("lstm"):
        gx, h0, c0, w_hh, w_hr, sizes = fargs[:6]
        args = (_randn(N, h0.shape[1], dtype=dtype, seed=11), _randn(B, h0.shape[1], dtype=dtype, seed=12),
                _randn(B, H, dtype=dtype, seed=13), saved, w_hh, w_hr, sizes, reverse)
        return getattr(ops, prefix + "lstm_layer_bwd"), args
    if family.startswith("gru"):
        gx, h0, w_hh, b_hh, sizes = fargs[:5]
        args = (_randn(N, H, dtype=dtype, seed=11), _randn(B, H, dtype=dtype, seed=12), saved, w_hh,
                sizes, reverse, b_hh is not None)
        return getattr(ops, prefix + "gru_layer_bwd"), args
    gx, h0, w_hh, sizes, relu = fargs[:5]
    args = (_randn(N, H, dtype=dtype, seed=11), _randn(B, H, dtype=dtype, seed=12), saved, w_hh,
            sizes, relu, reverse)
    return getattr(ops, prefix + "rnn_layer_bwd"), args


def step_fwd_args(family, dtype, bias):
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[family.split("_")[0]]
    x = _randn(B, I, dtype=dtype, seed=1)
    h = _randn(B, H, dtype=dtype, seed=2)
    w_ih = _randn(gates * H, I, dtype=dtype, seed=3)
    w_hh = _randn(gates * H, H, dtype=dtype, seed=4)
    b_ih = _randn(gates * H, dtype=dtype, seed=5) if bias else None
    b_hh = _randn(gates * H, dtype=dtype, seed=6) if bias else None
    if family == "lstm":
        return ops.lstm_step_fwd, (x, h, _randn(B, H, dtype=dtype, seed=7), w_ih, w_hh, b_ih, b_hh)
    if family == "gru":
        return ops.gru_step_fwd, (x, h, w_ih, w_hh, b_ih, b_hh)
    return ops.rnn_step_fwd, (x, h, w_ih, w_hh, b_ih, b_hh, family == "rnn_relu")


