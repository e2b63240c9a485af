"""Layer functions over a family of layer ops ``torch.ops.fastcells.{prefix}{lstm,gru,rnn}_layer_fwd``
(the compiled ops of the cpu and cuda backends, prefix "", and the triton backend's, prefix
"triton_"): each asks its op to save what backward needs only when a gradient will be asked for. And
the cell step functions of the compiled backends.

Shapes as in ``backends/reference.py``.
"""

import torch
import torch.nn.functional as F


def needs_grad(*tensors):
    """Whether autograd will want gradients through an op on ``tensors`` (None entries allowed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def one_step(batch):
    """The batch_sizes of a one-step sequence of ``batch`` rows (how a cell step runs as a layer)."""
    return torch.full((1,), batch, dtype=torch.long)


def bias_sum(b_ih, b_hh):
    """The bias folded into the input projection of LSTM and RNN (both biases; None without bias)."""
    return None if b_ih is None else b_ih + b_hh


def layer_functions(prefix):
    """(lstm_layer, gru_layer, rnn_layer) over the ops ``fastcells::{prefix}*_layer_fwd``. The ops are
    looked up at call time: a backend whose ops are not registered (extension not built, no Triton)
    is never selected, so its functions are never called."""
    ops = torch.ops.fastcells

    def lstm_layer(gx, h0, c0, w_hh, w_hr, batch_sizes, reverse):
        training = needs_grad(gx, h0, c0, w_hh, w_hr)
        y, hn, cn, _ = getattr(ops, prefix + "lstm_layer_fwd")(gx, h0, c0, w_hh, w_hr, batch_sizes,
                                                               reverse, training)
        return y, hn, cn

    def gru_layer(gx, h0, w_hh, b_hh, batch_sizes, reverse):
        training = needs_grad(gx, h0, w_hh, b_hh)
        y, hn, _ = getattr(ops, prefix + "gru_layer_fwd")(gx, h0, w_hh, b_hh, batch_sizes, reverse,
                                                          training)
        return y, hn

    def rnn_layer(gx, h0, w_hh, batch_sizes, relu, reverse):
        training = needs_grad(gx, h0, w_hh)
        y, hn, _ = getattr(ops, prefix + "rnn_layer_fwd")(gx, h0, w_hh, batch_sizes, relu, reverse,
                                                          training)
        return y, hn

    return lstm_layer, gru_layer, rnn_layer


def step_functions(step_op):
    """(lstm_step, gru_step, rnn_step) of the compiled backends. ``step_op(name)`` gives the fused
    inference step op ``name`` ("lstm_step_fwd", ...): both products, biases and gates in one call, the
    streaming case. A step that needs gradients runs as a layer op over a one-step sequence, which has
    autograd formulas (fastcells/ops.py)."""
    ops = torch.ops.fastcells

    def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
        if not needs_grad(x, h, c, w_ih, w_hh, b_ih, b_hh):
            return step_op("lstm_step_fwd")(x, h, c, w_ih, w_hh, b_ih, b_hh)
        gx = F.linear(x, w_ih, bias_sum(b_ih, b_hh))
        _, hn, cn, _ = ops.lstm_layer_fwd(gx, h, c, w_hh, None, one_step(x.shape[0]), False, True)
        return hn, cn

    def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
        if not needs_grad(x, h, w_ih, w_hh, b_ih, b_hh):
            return step_op("gru_step_fwd")(x, h, w_ih, w_hh, b_ih, b_hh)
        gx = F.linear(x, w_ih, b_ih)
        _, hn, _ = ops.gru_layer_fwd(gx, h, w_hh, b_hh, one_step(x.shape[0]), False, True)
        return hn

    def rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, relu):
        if not needs_grad(x, h, w_ih, w_hh, b_ih, b_hh):
            return step_op("rnn_step_fwd")(x, h, w_ih, w_hh, b_ih, b_hh, relu)
        gx = F.linear(x, w_ih, bias_sum(b_ih, b_hh))
        _, hn, _ = ops.rnn_layer_fwd(gx, h, w_hh, one_step(x.shape[0]), relu, False, True)
        return hn

    return lstm_step, gru_step, rnn_step
