"""Fake (meta) implementations and autograd for the layer and step ops ``torch.ops.fastcells.*``.

Two families of ops share the schemas and the saved layouts: the compiled ops of fastcells._C
(``lstm_layer_fwd``, ...; schemas in csrc/ops.cpp, CPU implementations in csrc/cpu) and the Triton
backend's ``triton_lstm_layer_fwd``, ... (fastcells/triton_ops.py), which keep their saved activations
in float32 for low-precision tensors. The fake implementations give output shapes without computing,
which is what lets ``torch.compile(fullgraph=True)`` trace a fastcells model; the autograd formulas
route each layer op's gradient to its backward op, which never re-runs the forward.

Shapes: N rows, B batch, H hidden, P = proj_size or H (see csrc/ops.cpp).
"""

import torch


# Width of the per-row ``saved`` tensor of each layer op (mirrors the layouts in csrc/cpu/*_cpu.cpp).
def lstm_saved_width(H, P, has_proj):
    return 6 * H + P + (H if has_proj else 0)


def gru_saved_width(H):
    return 5 * H


def rnn_saved_width(H):
    return 2 * H


def same_dtype(dtype):
    """The saved dtype of the compiled ops: that of the input."""
    return dtype


def _saved(gx, width, training, saved_dtype):
    return gx.new_empty((gx.shape[0], width) if training else (0,), dtype=saved_dtype(gx.dtype))


def _empty_like_absent(t):
    return t.new_empty((0,))


def _setup_saved(ctx, saved, training):
    """What every layer op's setup_context does with its ``saved`` output: marks it as an output with
    no gradient, has autograd pass None (not zeros) for the gradient of any output that got none (zeros
    the size of ``saved``, N x 7H for an LSTM, cost 9.6 of ~115 ms in an LSTM T=100 B=32 H=256 training
    step here; the backward formulas handle None), and remembers whether it holds anything
    (``_require_saved``)."""
    ctx.mark_non_differentiable(saved)
    ctx.set_materialize_grads(False)
    ctx.training = training


def _require_saved(ctx):
    """Backward needs the saved activations, which a layer op called with training=False does not
    keep. Raised here, before any backward op sees an empty ``saved`` (on the H200 that call to the
    CUDA op crashed the process instead of raising; see bench/results/nvidia-h200/README.md)."""
    if not ctx.training:
        raise RuntimeError("fastcells: this layer op ran with training=False and saved nothing for "
                           "backward; call it with training=True where gradients are needed")


def register():
    """Registers fake implementations and autograd for the ops of fastcells._C (once, after loading it)."""
    register_layer_ops("", same_dtype)
    register_lstm_from_input()
    register_step_fakes()


def register_step_fakes():
    """Fakes of the compiled step ops (cells without autograd)."""
    lib = "fastcells::"

    @torch.library.register_fake(lib + "lstm_step_fwd")
    def _(x, h, c, w_ih, w_hh, b_ih, b_hh):
        return torch.empty_like(h), torch.empty_like(c)

    @torch.library.register_fake(lib + "gru_step_fwd")
    def _(x, h, w_ih, w_hh, b_ih, b_hh):
        return torch.empty_like(h)

    @torch.library.register_fake(lib + "rnn_step_fwd")
    def _(x, h, w_ih, w_hh, b_ih, b_hh, relu):
        return torch.empty_like(h)


def lstm_layer_grads(bwd_op, ctx, saved, w_hh, w_hr, batch_sizes, dy, dhn, dcn):
    """(dgx, dh0, dc0, dw_hh, dw_hr or None) of an LSTM layer op from ``bwd_op``; gradients that
    autograd passed as None (outputs that got none) count as zeros."""
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    dy = dy if dy is not None else w_hh.new_zeros((saved.shape[0], P))
    dhn = dhn if dhn is not None else w_hh.new_zeros((ctx.batch, P))
    dcn = dcn if dcn is not None else w_hh.new_zeros((ctx.batch, H))
    dgx, dh0, dc0, dw_hh, dw_hr = bwd_op(dy, dhn, dcn, saved, w_hh, w_hr, batch_sizes, ctx.reverse)
    return dgx, dh0, dc0, dw_hh, (dw_hr if w_hr is not None else None)


def register_lstm_from_input():
    """Fake and autograd of ``fastcells::lstm_layer_from_input_fwd``: lstm_layer_fwd with the input
    projection gx = x @ w_ih^T + bias inside (CPU). Its backward is lstm_layer_bwd's, then the
    products that F.linear's backward would make: dx = dgx @ w_ih, dw_ih = dgx^T @ x, dbias."""
    ops = torch.ops.fastcells
    name = "fastcells::lstm_layer_from_input_fwd"

    @torch.library.register_fake(name)
    def _(x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse, training):
        H, P = c0.shape[1], h0.shape[1]
        width = lstm_saved_width(H, P, w_hr is not None)
        return (x.new_empty((x.shape[0], P)), torch.empty_like(h0), torch.empty_like(c0),
                _saved(x, width, training, same_dtype))

    def setup(ctx, inputs, output):
        x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse, training = inputs
        _setup_saved(ctx, output[3], training)
        ctx.save_for_backward(output[3], x, w_ih, w_hh, w_hr, batch_sizes)
        ctx.reverse, ctx.batch, ctx.has_bias = reverse, h0.shape[0], bias is not None

    def backward(ctx, dy, dhn, dcn, _dsaved):
        _require_saved(ctx)
        saved, x, w_ih, w_hh, w_hr, batch_sizes = ctx.saved_tensors
        dgx, dh0, dc0, dw_hh, dw_hr = lstm_layer_grads(
            ops.lstm_layer_bwd, ctx, saved, w_hh, w_hr, batch_sizes, dy, dhn, dcn)
        need_x, need_w_ih, need_bias = ctx.needs_input_grad[:3]
        dx = dgx.mm(w_ih) if need_x else None
        dw_ih = dgx.t().mm(x) if need_w_ih else None
        dbias = dgx.sum(0) if ctx.has_bias and need_bias else None
        return dx, dw_ih, dbias, dh0, dc0, dw_hh, dw_hr, None, None, None

    torch.library.register_autograd(name, backward, setup_context=setup)


def register_layer_ops(prefix, saved_dtype):
    """Fakes and autograd of the layer ops ``fastcells::{prefix}lstm_layer_fwd``, ... whose saved
    activations have dtype ``saved_dtype(input dtype)``."""
    ops = torch.ops.fastcells
    lib = "fastcells::" + prefix

    # ---- LSTM -----------------------------------------------------------------------------------
    @torch.library.register_fake(lib + "lstm_layer_fwd")
    def _(gx, h0, c0, w_hh, w_hr, batch_sizes, reverse, training):
        H, P = c0.shape[1], h0.shape[1]
        width = lstm_saved_width(H, P, w_hr is not None)
        return (gx.new_empty((gx.shape[0], P)), torch.empty_like(h0), torch.empty_like(c0),
                _saved(gx, width, training, saved_dtype))

    @torch.library.register_fake(lib + "lstm_layer_bwd")
    def _(dy, dhn, dcn, saved, w_hh, w_hr, batch_sizes, reverse):
        H = dcn.shape[1]
        dw_hr = torch.empty_like(w_hr) if w_hr is not None else _empty_like_absent(dy)
        return (dy.new_empty((dy.shape[0], 4 * H)), torch.empty_like(dhn), torch.empty_like(dcn),
                torch.empty_like(w_hh), dw_hr)

    def lstm_setup(ctx, inputs, output):
        gx, h0, c0, w_hh, w_hr, batch_sizes, reverse, training = inputs
        _setup_saved(ctx, output[3], training)
        ctx.save_for_backward(output[3], w_hh, w_hr, batch_sizes)
        ctx.reverse, ctx.batch = reverse, h0.shape[0]

    def lstm_backward(ctx, dy, dhn, dcn, _dsaved):
        _require_saved(ctx)
        saved, w_hh, w_hr, batch_sizes = ctx.saved_tensors
        dgx, dh0, dc0, dw_hh, dw_hr = lstm_layer_grads(
            getattr(ops, prefix + "lstm_layer_bwd"), ctx, saved, w_hh, w_hr, batch_sizes, dy, dhn, dcn)
        return dgx, dh0, dc0, dw_hh, dw_hr, None, None, None

    torch.library.register_autograd(lib + "lstm_layer_fwd", lstm_backward, setup_context=lstm_setup)

    # ---- GRU ------------------------------------------------------------------------------------
    @torch.library.register_fake(lib + "gru_layer_fwd")
    def _(gx, h0, w_hh, b_hh, batch_sizes, reverse, training):
        H = h0.shape[1]
        return (gx.new_empty((gx.shape[0], H)), torch.empty_like(h0),
                _saved(gx, gru_saved_width(H), training, saved_dtype))

    @torch.library.register_fake(lib + "gru_layer_bwd")
    def _(dy, dhn, saved, w_hh, batch_sizes, reverse, has_bias):
        H = dhn.shape[1]
        db_hh = dy.new_empty((3 * H,)) if has_bias else _empty_like_absent(dy)
        return dy.new_empty((dy.shape[0], 3 * H)), torch.empty_like(dhn), torch.empty_like(w_hh), db_hh

    def gru_setup(ctx, inputs, output):
        gx, h0, w_hh, b_hh, batch_sizes, reverse, training = inputs
        _setup_saved(ctx, output[2], training)
        ctx.save_for_backward(output[2], w_hh, batch_sizes)
        ctx.reverse, ctx.has_bias, ctx.batch = reverse, b_hh is not None, h0.shape[0]

    def gru_backward(ctx, dy, dhn, _dsaved):
        _require_saved(ctx)
        saved, w_hh, batch_sizes = ctx.saved_tensors
        H = w_hh.shape[1]
        dy = dy if dy is not None else w_hh.new_zeros((saved.shape[0], H))
        dhn = dhn if dhn is not None else w_hh.new_zeros((ctx.batch, H))
        dgx, dh0, dw_hh, db_hh = getattr(ops, prefix + "gru_layer_bwd")(
            dy, dhn, saved, w_hh, batch_sizes, ctx.reverse, ctx.has_bias)
        return dgx, dh0, dw_hh, (db_hh if ctx.has_bias else None), None, None, None

    torch.library.register_autograd(lib + "gru_layer_fwd", gru_backward, setup_context=gru_setup)

    # ---- RNN ------------------------------------------------------------------------------------
    @torch.library.register_fake(lib + "rnn_layer_fwd")
    def _(gx, h0, w_hh, batch_sizes, relu, reverse, training):
        H = h0.shape[1]
        return (gx.new_empty((gx.shape[0], H)), torch.empty_like(h0),
                _saved(gx, rnn_saved_width(H), training, saved_dtype))

    @torch.library.register_fake(lib + "rnn_layer_bwd")
    def _(dy, dhn, saved, w_hh, batch_sizes, relu, reverse):
        return torch.empty_like(dy), torch.empty_like(dhn), torch.empty_like(w_hh)

    def rnn_setup(ctx, inputs, output):
        gx, h0, w_hh, batch_sizes, relu, reverse, training = inputs
        _setup_saved(ctx, output[2], training)
        ctx.save_for_backward(output[2], w_hh, batch_sizes)
        ctx.relu, ctx.reverse, ctx.batch = relu, reverse, h0.shape[0]

    def rnn_backward(ctx, dy, dhn, _dsaved):
        _require_saved(ctx)
        saved, w_hh, batch_sizes = ctx.saved_tensors
        H = w_hh.shape[1]
        dy = dy if dy is not None else w_hh.new_zeros((saved.shape[0], H))
        dhn = dhn if dhn is not None else w_hh.new_zeros((ctx.batch, H))
        dgx, dh0, dw_hh = getattr(ops, prefix + "rnn_layer_bwd")(
            dy, dhn, saved, w_hh, batch_sizes, ctx.relu, ctx.reverse)
        return dgx, dh0, dw_hh, None, None, None, None

    torch.library.register_autograd(lib + "rnn_layer_fwd", rnn_backward, setup_context=rnn_setup)
