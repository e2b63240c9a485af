"""Realistic arguments for the fastcells ops (shapes in csrc/ops.cpp), shared by the opcheck and the
bad-argument tests. Small sizes, a packed batch (batch_sizes non-increasing), fresh seeded values."""

import torch

ops = torch.ops.fastcells

B, H, P, I = 3, 5, 3, 4
BATCH_SIZES = [3, 3, 2, 1]  # packed: non-increasing, sums to N rows
N = sum(BATCH_SIZES)

# LSTM without and with projection, GRU with and without biases, RNN tanh/relu.
FAMILIES = ["lstm", "lstm_proj", "gru", "gru_no_bias", "rnn_tanh", "rnn_relu"]


def _randn(*shape, dtype, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(requires_grad)


def _batch_sizes(padded):
    sizes = [B] * len(BATCH_SIZES) if padded else BATCH_SIZES
    return torch.tensor(sizes, dtype=torch.long)


def _input_side(gates, rows, dtype, rg, bias):
    """x (rows, I), w_ih (G, I), b_ih, b_hh (G) for G = gates * H; ``bias``: "both", "ih", "hh" or
    "none" (the op takes either bias alone, as torch.nn's modules never pass them)."""
    G = gates * H
    b_ih = _randn(G, dtype=dtype, seed=6, requires_grad=rg) if bias in ("both", "ih") else None
    b_hh = _randn(G, dtype=dtype, seed=7, requires_grad=rg) if bias in ("both", "hh") else None
    return (_randn(rows, I, dtype=dtype, seed=1, requires_grad=rg),
            _randn(G, I, dtype=dtype, seed=8, requires_grad=rg) * 0.5, b_ih, b_hh)


def layer_fwd_args(family, dtype, reverse, training, padded=False, triton=False, bias=None):
    """(op, args) for the family's layer forward op (``triton``: the triton backend's); tensors
    require grad when training. ``bias`` as _input_side, by default as the family says."""
    rg = training
    sizes = _batch_sizes(padded)
    rows = int(sizes.sum())
    bias = bias or ("none" if family == "gru_no_bias" else "both")
    if family.startswith("lstm"):
        proj = family == "lstm_proj"
        p = P if proj else H
        w_hr = _randn(p, H, dtype=dtype, seed=5, requires_grad=rg) if proj else None
        args = (*_input_side(4, rows, dtype, rg, bias),
                _randn(B, p, dtype=dtype, seed=2, requires_grad=rg),
                _randn(B, H, dtype=dtype, seed=3, requires_grad=rg),
                _randn(4 * H, p, dtype=dtype, seed=4, requires_grad=rg) * 0.5,
                w_hr, sizes, reverse, training)
        op = ops.triton_lstm_layer_fwd if triton else ops.lstm_layer_fwd
        return op, _fix_leaves(args)
    if family.startswith("gru"):
        args = (*_input_side(3, rows, dtype, rg, bias),
                _randn(B, H, dtype=dtype, seed=2, requires_grad=rg),
                _randn(3 * H, H, dtype=dtype, seed=4, requires_grad=rg) * 0.5,
                sizes, reverse, training)
        op = ops.triton_gru_layer_fwd if triton else ops.gru_layer_fwd
        return op, _fix_leaves(args)
    relu = family == "rnn_relu"
    args = (*_input_side(1, rows, dtype, rg, bias),
            _randn(B, H, dtype=dtype, seed=2, requires_grad=rg),
            _randn(H, H, dtype=dtype, seed=4, requires_grad=rg) * 0.5,
            sizes, relu, reverse, training)
    op = ops.triton_rnn_layer_fwd if triton else ops.rnn_layer_fwd
    return op, _fix_leaves(args)


def _fix_leaves(args):
    """Scaled tensors are no longer leaves: make every grad-requiring tensor a leaf again."""
    return tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.requires_grad
                 else a for a in args)


def layer_bwd_args(family, dtype, reverse, triton=False, need_dx=True, bias=None):
    """(op, args) for the family's layer backward op, with ``saved`` (and y, for GRU and RNN) from a real
    training forward."""
    fwd, fargs = layer_fwd_args(family, dtype, reverse, training=True, triton=triton, bias=bias)
    fargs = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in fargs)
    y, *_, saved = fwd(*fargs)
    x, w_ih, b_ih, b_hh = fargs[:4]
    if family.startswith("lstm"):
        h0, c0, w_hh, w_hr, sizes = fargs[4:9]
        p = h0.shape[1]
        args = (_randn(N, p, dtype=dtype, seed=11), _randn(B, p, dtype=dtype, seed=12),
                _randn(B, H, dtype=dtype, seed=13), saved, x, w_ih, b_ih, b_hh, w_hh, w_hr, sizes,
                reverse, need_dx)
        return (ops.triton_lstm_layer_bwd if triton else ops.lstm_layer_bwd), args
    h0, w_hh, sizes = fargs[4:7]
    head = (_randn(N, H, dtype=dtype, seed=11), _randn(B, H, dtype=dtype, seed=12), saved, y, h0, x,
            w_ih, b_ih, b_hh, w_hh, sizes)
    if family.startswith("gru"):
        return (ops.triton_gru_layer_bwd if triton else ops.gru_layer_bwd), (*head, reverse, need_dx)
    relu = family == "rnn_relu"
    return (ops.triton_rnn_layer_bwd if triton else ops.rnn_layer_bwd), (*head, relu, reverse, need_dx)


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


