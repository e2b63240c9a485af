"""Fake (meta) implementations and autograd for the compiled ops ``torch.ops.fastcells.*``.

The schemas and the device implementations live in C++ (csrc/ops.cpp, csrc/cpu/register_cpu.cpp). The
fake implementations give output shapes without computing, which is what lets
``torch.compile(fullgraph=True)`` trace a fastcells model; the autograd formulas route each layer op's
gradient to its backward op, which never re-runs the forward.

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


def _saved(gx, width, training):
    return gx.new_empty((gx.shape[0], width) if training else (0,))


def _empty_like_absent(t):
    return t.new_empty((0,))


def register():
    """Registers fake implementations and autograd for the ops of fastcells._C (once, after loading it)."""
    ops = torch.ops.fastcells
    lib = "fastcells::"

    # ---- LSTM -----------------------------------------------------------------------------------
    @torch.library.register_fake(lib + "lstm_layer_fwd")
    def _(gx, h0, c0, w_hh, w_hr, batch_sizes, reverse, training):
        H, P = c0.shape[1], h0.shape[1]
        width = lstm_saved_width(H, P, w_hr is not None)
        return (gx.new_empty((gx.shape[0], P)), torch.empty_like(h0), torch.empty_like(c0),
                _saved(gx, width, training))

    @torch.library.register_fake(lib + "lstm_layer_bwd")
    def _(dy, dhn, dcn, saved, w_hh, w_hr, batch_sizes, reverse):
        H = dcn.shape[1]
        dw_hr = torch.empty_like(w_hr) if w_hr is not None else _empty_like_absent(dy)
        return (dy.new_empty((dy.shape[0], 4 * H)), torch.empty_like(dhn), torch.empty_like(dcn),
                torch.empty_like(w_hh), dw_hr)

    @torch.library.register_fake(lib + "lstm_step_fwd")
    def _(x, h, c, w_ih, w_hh, b_ih, b_hh):
        return torch.empty_like(h), torch.empty_like(c)

    def lstm_setup(ctx, inputs, output):
        gx, h0, c0, w_hh, w_hr, batch_sizes, reverse, training = inputs
        ctx.mark_non_differentiable(output[3])
        ctx.save_for_backward(output[3], w_hh, w_hr, batch_sizes)
        ctx.reverse, ctx.batch = reverse, h0.shape[0]

    def lstm_backward(ctx, dy, dhn, dcn, _dsaved):
        saved, w_hh, w_hr, batch_sizes = ctx.saved_tensors
        y_shape = (saved.shape[0], w_hh.shape[1])
        dy = dy if dy is not None else saved.new_zeros(y_shape)
        H = w_hh.shape[0] // 4
        dhn = dhn if dhn is not None else saved.new_zeros((ctx.batch, w_hh.shape[1]))
        dcn = dcn if dcn is not None else saved.new_zeros((ctx.batch, H))
        dgx, dh0, dc0, dw_hh, dw_hr = ops.lstm_layer_bwd(
            dy, dhn, dcn, saved, w_hh, w_hr, batch_sizes, ctx.reverse)
        return dgx, dh0, dc0, dw_hh, (dw_hr if w_hr is not None else None), None, None, None

    torch.library.register_autograd(lib + "lstm_layer_fwd", lstm_backward, setup_context=lstm_setup)

    # ---- GRU ------------------------------------------------------------------------------------
    @torch.library.register_fake(lib + "gru_layer_fwd")
    def _(gx, h0, w_hh, b_hh, batch_sizes, reverse, training):
        H = h0.shape[1]
        return (gx.new_empty((gx.shape[0], H)), torch.empty_like(h0),
                _saved(gx, gru_saved_width(H), training))

    @torch.library.register_fake(lib + "gru_layer_bwd")
    def _(dy, dhn, saved, w_hh, batch_sizes, reverse, has_bias):
        H = dhn.shape[1]
        db_hh = dy.new_empty((3 * H,)) if has_bias else _empty_like_absent(dy)
        return dy.new_empty((dy.shape[0], 3 * H)), torch.empty_like(dhn), torch.empty_like(w_hh), db_hh

    @torch.library.register_fake(lib + "gru_step_fwd")
    def _(x, h, w_ih, w_hh, b_ih, b_hh):
        return torch.empty_like(h)

    def gru_setup(ctx, inputs, output):
        gx, h0, w_hh, b_hh, batch_sizes, reverse, training = inputs
        ctx.mark_non_differentiable(output[2])
        ctx.save_for_backward(output[2], w_hh, batch_sizes)
        ctx.reverse, ctx.has_bias, ctx.batch = reverse, b_hh is not None, h0.shape[0]

    def gru_backward(ctx, dy, dhn, _dsaved):
        saved, w_hh, batch_sizes = ctx.saved_tensors
        H = w_hh.shape[1]
        dy = dy if dy is not None else saved.new_zeros((saved.shape[0], H))
        dhn = dhn if dhn is not None else saved.new_zeros((ctx.batch, H))
        dgx, dh0, dw_hh, db_hh = ops.gru_layer_bwd(
            dy, dhn, saved, w_hh, batch_sizes, ctx.reverse, ctx.has_bias)
        return dgx, dh0, dw_hh, (db_hh if ctx.has_bias else None), None, None, None

    torch.library.register_autograd(lib + "gru_layer_fwd", gru_backward, setup_context=gru_setup)

    # ---- RNN ------------------------------------------------------------------------------------
    @torch.library.register_fake(lib + "rnn_layer_fwd")
    def _(gx, h0, w_hh, batch_sizes, relu, reverse, training):
        H = h0.shape[1]
        return (gx.new_empty((gx.shape[0], H)), torch.empty_like(h0),
                _saved(gx, rnn_saved_width(H), training))

    @torch.library.register_fake(lib + "rnn_layer_bwd")
    def _(dy, dhn, saved, w_hh, batch_sizes, relu, reverse):
        return torch.empty_like(dy), torch.empty_like(dhn), torch.empty_like(w_hh)

    @torch.library.register_fake(lib + "rnn_step_fwd")
    def _(x, h, w_ih, w_hh, b_ih, b_hh, relu):
        return torch.empty_like(h)

    def rnn_setup(ctx, inputs, output):
        gx, h0, w_hh, batch_sizes, relu, reverse, training = inputs
        ctx.mark_non_differentiable(output[2])
        ctx.save_for_backward(output[2], w_hh, batch_sizes)
        ctx.relu, ctx.reverse, ctx.batch = relu, reverse, h0.shape[0]

    def rnn_backward(ctx, dy, dhn, _dsaved):
        saved, w_hh, batch_sizes = ctx.saved_tensors
        H = w_hh.shape[1]
        dy = dy if dy is not None else saved.new_zeros((saved.shape[0], H))
        dhn = dhn if dhn is not None else saved.new_zeros((ctx.batch, H))
        dgx, dh0, dw_hh = ops.rnn_layer_bwd(dy, dhn, saved, w_hh, batch_sizes, ctx.relu, ctx.reverse)
        return dgx, dh0, dw_hh, None, None, None, None

    torch.library.register_autograd(lib + "rnn_layer_fwd", rnn_backward, setup_context=rnn_setup)
