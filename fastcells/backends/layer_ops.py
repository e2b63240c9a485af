"""Layer functions over a family of layer ops ``torch.ops.fastcells.{prefix}{lstm,gru,rnn}_layer_fwd``
(the cpu backend's compiled ops, prefix "", and the triton backend's, prefix "triton_"): each asks
its op to save what backward needs only when a gradient will be asked for.

Shapes as in ``backends/reference.py``.
"""

import torch


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
