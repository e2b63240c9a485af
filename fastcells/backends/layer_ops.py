"""The layer and step functions of the backends whose work runs in ops (cpu, cuda, triton), written
once over any three layer forward ops. Shapes as in ``backends/reference.py``.

A layer function asks its op to save what backward needs only when a gradient will be asked for. A
cell step that needs gradients, and every step of a backend without step ops, runs as the layer op
over a one-step sequence, which has autograd formulas (fastcells/ops.py): this is the one place that
says so.
"""

import torch


def needs_grad(*tensors):
    """Whether autograd will want gradients through an op on ``tensors`` (None entries allowed).

    While torch.jit.trace records, grad mode is left out: the recorded op must not depend on it, as
    torch.nn's does not (trace's own check traces a second time under no_grad, and a traced training
    model is replayed with grad on), so a trace of tensors that require grad records the op that saves
    what backward needs."""
    wanted = any(t is not None and t.requires_grad for t in tensors)
    return wanted and (torch.is_grad_enabled() or torch.jit.is_tracing())


def one_step(batch):
    """The batch_sizes of a one-step sequence of ``batch`` rows (how a cell step runs as a layer)."""
    return torch.full((1,), batch, dtype=torch.long)


def input_bias(b_ih, b_hh, adds_b_hh):
    """The bias of a layer's input projection x @ w_ih^T + bias (the Python twin of ``input_bias`` in
    csrc/layers.h). LSTM and RNN add b_hh to the same pre-activations (``adds_b_hh``): it is folded in,
    whichever of the two is given. GRU keeps b_hh apart: its input bias is b_ih alone."""
    if not adds_b_hh or b_hh is None:
        return b_ih
    return b_hh if b_ih is None else b_ih + b_hh


class LayerOps:
    """Backend ``NAME``'s six functions over its layer forward ops ``lstm_fwd``, ``gru_fwd``, ``rnn_fwd``
    (schemas in csrc/ops.cpp). ``step_ops()``, when given, returns a namespace with the fused inference
    step ops ``lstm_step_fwd``, ``gru_step_fwd``, ``rnn_step_fwd`` for steps without gradients.
    ``inference_ops()``, when given, returns a namespace with the layer forward
    ops ``lstm_layer_fwd``, ``gru_layer_fwd``, ``rnn_layer_fwd`` for calls without gradients (the cpu
    backend's pybind11 entries, which skip the dispatcher)."""

    def __init__(self, NAME, lstm_fwd, gru_fwd, rnn_fwd, step_ops=None, inference_ops=None):
        self.NAME = NAME
        self._lstm_fwd, self._gru_fwd, self._rnn_fwd = lstm_fwd, gru_fwd, rnn_fwd
        self._step_ops = step_ops
        self._inference_ops = inference_ops

    def _forward_op(self, autograd_op, name, x, training):
        """The layer forward op of this call: ``name`` in the inference namespace for a plain tensor
        without gradients, else ``autograd_op``."""
        if training or self._inference_ops is None or type(x) is not torch.Tensor:
            return autograd_op
        return getattr(self._inference_ops(), name)

    def lstm_layer(self, x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr, batch_sizes, reverse):
        training = needs_grad(x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr)
        fwd = self._forward_op(self._lstm_fwd, "lstm_layer_fwd", x, training)
        y, hn, cn, _ = fwd(x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr, batch_sizes, reverse, training)
        return y, hn, cn

    def gru_layer(self, x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, reverse):
        training = needs_grad(x, w_ih, b_ih, b_hh, h0, w_hh)
        fwd = self._forward_op(self._gru_fwd, "gru_layer_fwd", x, training)
        y, hn, _ = fwd(x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, reverse, training)
        return y, hn

    def rnn_layer(self, x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, relu, reverse):
        training = needs_grad(x, w_ih, b_ih, b_hh, h0, w_hh)
        fwd = self._forward_op(self._rnn_fwd, "rnn_layer_fwd", x, training)
        y, hn, _ = fwd(x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, relu, reverse, training)
        return y, hn

    def _fused_step(self, *tensors):
        return self._step_ops is not None and not needs_grad(*tensors)

    def lstm_step(self, x, h, c, w_ih, w_hh, b_ih, b_hh):
        if self._fused_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
            return self._step_ops().lstm_step_fwd(x, h, c, w_ih, w_hh, b_ih, b_hh)
        _, hn, cn = self.lstm_layer(x, w_ih, b_ih, b_hh, h, c, w_hh, None, one_step(x.shape[0]), False)
        return hn, cn

    def gru_step(self, x, h, w_ih, w_hh, b_ih, b_hh):
        if self._fused_step(x, h, w_ih, w_hh, b_ih, b_hh):
            return self._step_ops().gru_step_fwd(x, h, w_ih, w_hh, b_ih, b_hh)
        return self.gru_layer(x, w_ih, b_ih, b_hh, h, w_hh, one_step(x.shape[0]), False)[1]

    def rnn_step(self, x, h, w_ih, w_hh, b_ih, b_hh, relu):
        if self._fused_step(x, h, w_ih, w_hh, b_ih, b_hh):
            return self._step_ops().rnn_step_fwd(x, h, w_ih, w_hh, b_ih, b_hh, relu)
        return self.rnn_layer(x, w_ih, b_ih, b_hh, h, w_hh, one_step(x.shape[0]), relu, False)[1]
