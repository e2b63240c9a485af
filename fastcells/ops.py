"""Fake (meta) implementations and autograd of the layer ops, and the fakes of the step ops.

Two families of layer ops share the schemas and the saved layouts: the compiled ops of fastcells._C
(``torch.ops.fastcells.lstm_layer_fwd``, ...; schemas in csrc/ops.cpp, CPU implementations in
csrc/cpu, CUDA ones in csrc/cuda) and the triton backend's ``triton_lstm_layer_fwd``, ...
(fastcells/kernels/{lstm,gru,rnn}.py), which keep their saved activations in float32 for
low-precision tensors. A fake gives the output shapes without computing (what lets
``torch.compile(fullgraph=True)`` trace a fastcells model) and checks the shapes it reads with
``torch._check``; an autograd formula routes a layer op's gradient to its backward op, which never
re-runs the forward, except where autograd records the backward itself (``create_graph=True``):
the backward ops are not differentiable, so the gradients are then those of the reference backend's
layer run again (``_recorded_grads``); and where the caller changed a CPU GRU's or RNN's output in
place before backward, which reads the states from it (``_kept_output``).

Shapes as in csrc/ops.cpp: N rows, I input features, B batch, H hidden, P = proj_size or H.
"""

import torch

from .saved_layout import gru_saved_width, lstm_saved_width, rnn_saved_width


def same_dtype(dtype):
    """The saved dtype of the compiled ops: that of the input."""
    return dtype


def _check_shape(tensor, shape, name):
    torch._check(tuple(tensor.shape) == tuple(shape),
                 lambda: f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")


def _check_input_side(x, w_ih, b_ih, b_hh, gates):
    """x (N, I), w_ih (G, I), biases (G) or None, with G = ``gates``."""
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    _check_shape(w_ih, (gates, x.shape[1]), "w_ih")
    for bias, name in ((b_ih, "b_ih"), (b_hh, "b_hh")):
        if bias is not None:
            _check_shape(bias, (gates,), name)


def _saved(x, width, training, saved_dtype):
    return x.new_empty((x.shape[0], width) if training else (0,), dtype=saved_dtype(x.dtype))


def _grad_or_absent(tensor, like, present=True):
    """An empty tensor like ``like`` for the gradient of ``tensor``, or the (0,) stand-in of an absent
    one."""
    return torch.empty_like(tensor) if tensor is not None and present else like.new_empty((0,))


def _setup_saved(ctx, saved, training):
    """What every layer op's setup_context does with its ``saved`` output: marks it as an output with
    no gradient, has autograd pass None (not zeros) for the gradient of any output that got none (zeros
    the size of ``saved``, N x 7H for an LSTM, cost 9.6 of ~115 ms in an LSTM T=100 B=32 H=256 training
    step here; the backward formulas handle None), and remembers whether it holds anything."""
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


def _or_zeros(grad, like, shape):
    """A gradient autograd passed as None (the output got none) counts as zeros."""
    return grad if grad is not None else like.new_zeros(shape)


def _present(grad, tensor):
    return grad if tensor is not None else None


def _recorded_grads(ctx, reference_layer, inputs, flags, output_grads):
    """The gradients of a layer op's inputs, recorded by autograd: for a backward under
    ``create_graph=True`` (a double backward, a gradient penalty, Hessian-vector products), as torch.nn's
    CPU layers allow. The backward ops' formulas are not differentiable, so ``reference_layer`` (the
    reference backend's: torch ops, one step at a time) runs again on the saved inputs, autograd
    recording it, and its gradients are taken with ``create_graph``: slow, but only on this path.
    ``inputs``: the op's tensor inputs up to batch_sizes (None for an absent one), ``flags``: batch_sizes
    and the flags after it, ``output_grads``: the gradients of the op's outputs but ``saved``. Returns
    a gradient (or None) per input."""
    wanted = [t for t, needed in zip(inputs, ctx.needs_input_grad) if t is not None and needed]
    outputs = reference_layer(*inputs, *flags)
    grads = iter(torch.autograd.grad(outputs, wanted, output_grads, create_graph=True, allow_unused=True))
    return [next(grads) if t is not None and needed else None
            for t, needed in zip(inputs, ctx.needs_input_grad)]


def _reference(name):
    """The reference backend's layer function ``name`` (imported late: the backends import this module)."""
    from .backends import reference

    return getattr(reference, name)


# ---- LSTM ---------------------------------------------------------------------------------------


def lstm_fwd_fake(saved_dtype):
    """The fake of an LSTM layer forward op whose saved activations have dtype saved_dtype(x dtype)."""

    def fake(x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr, batch_sizes, reverse, training):
        H, P = c0.shape[1], h0.shape[1]
        _check_input_side(x, w_ih, b_ih, b_hh, 4 * H)
        _check_shape(w_hh, (4 * H, P), "w_hh")
        if w_hr is not None:
            _check_shape(w_hr, (P, H), "w_hr")
        width = lstm_saved_width(H, P, w_hr is not None)
        return (x.new_empty((x.shape[0], P)), torch.empty_like(h0), torch.empty_like(c0),
                _saved(x, width, training, saved_dtype))

    return fake


def lstm_bwd_fake(dy, dhn, dcn, saved, x, w_ih, b_ih, b_hh, w_hh, w_hr, batch_sizes, reverse,
                  need_dx):
    _check_shape(saved, (dy.shape[0], lstm_saved_width(dcn.shape[1], dhn.shape[1], w_hr is not None)),
                 "saved")
    return (_grad_or_absent(x, dy, need_dx), torch.empty_like(dhn), torch.empty_like(dcn),
            torch.empty_like(w_ih), _grad_or_absent(b_ih, dy), _grad_or_absent(b_hh, dy),
            torch.empty_like(w_hh), _grad_or_absent(w_hr, dy))


def lstm_autograd(fwd_op, bwd_op, reads_output):
    """(backward, setup_context) of an LSTM layer forward op whose backward op is ``bwd_op`` (its saved
    rows keep the states on every device: ``fwd_op`` and ``reads_output`` go unused)."""

    def setup(ctx, inputs, output):
        x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr, batch_sizes, reverse, training = inputs
        _setup_saved(ctx, output[3], training)
        ctx.save_for_backward(output[3], x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr, batch_sizes)
        ctx.reverse, ctx.batch = reverse, h0.shape[0]

    def backward(ctx, dy, dhn, dcn, _dsaved):
        _require_saved(ctx)
        saved, x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr, batch_sizes = ctx.saved_tensors
        H, P = w_hh.shape[0] // 4, w_hh.shape[1]
        dy = _or_zeros(dy, w_hh, (saved.shape[0], P))
        dhn = _or_zeros(dhn, w_hh, (ctx.batch, P))
        dcn = _or_zeros(dcn, w_hh, (ctx.batch, H))
        if torch.is_grad_enabled():
            return (*_recorded_grads(ctx, _reference("lstm_layer"), (x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr),
                                     (batch_sizes, ctx.reverse), (dy, dhn, dcn)), None, None, None)
        need_dx = ctx.needs_input_grad[0]
        dx, dh0, dc0, dw_ih, db_ih, db_hh, dw_hh, dw_hr = bwd_op(
            dy, dhn, dcn, saved, x, w_ih, b_ih, b_hh, w_hh, w_hr, batch_sizes, ctx.reverse, need_dx)
        return (dx if need_dx else None, dw_ih, _present(db_ih, b_ih), _present(db_hh, b_hh), dh0, dc0,
                dw_hh, _present(dw_hr, w_hr), None, None, None)

    return backward, setup


# ---- GRU and RNN: one state; RNN has a ``relu`` flag between batch_sizes and reverse ---------------
#
# Their backward ops also take the forward's output y and h0: the CPU ops read the states from them,
# which their saved rows leave out (saved_layout.py), where the others get an empty y and read saved.


def reads_output_on_cpu(device):
    """Whether a GRU or RNN op of fastcells._C on ``device`` reads the states from y and h0 in backward:
    the CPU's (a copy of y in saved made an RNN's training call hold 1.7 times torch.nn's memory)."""
    return device.type == "cpu"


def never_reads_output(device):
    """The Triton ops, on any device (the interpreter's included), keep the states in saved."""
    return False


def single_state_fwd_fake(gates, saved_width, saved_dtype, reads_output):
    """The fake of a GRU (gates 3) or RNN (1) layer forward op; ``saved_width(H, reads_output)`` its
    saved width, ``reads_output(device)`` whether its backward reads the states from y and h0."""

    def fake(x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, *flags_and_training):
        H = h0.shape[1]
        _check_input_side(x, w_ih, b_ih, b_hh, gates * H)
        _check_shape(w_hh, (gates * H, H), "w_hh")
        return (x.new_empty((x.shape[0], H)), torch.empty_like(h0),
                _saved(x, saved_width(H, reads_output(x.device)), flags_and_training[-1], saved_dtype))

    return fake


def single_state_bwd_fake(saved_width, reads_output):
    def fake(dy, dhn, saved, y, h0, x, w_ih, b_ih, b_hh, w_hh, batch_sizes, *flags_and_need_dx):
        reads = reads_output(dy.device)
        _check_shape(saved, (dy.shape[0], saved_width(dhn.shape[1], reads)), "saved")
        if reads:
            _check_shape(y, dy.shape, "y")
            _check_shape(h0, dhn.shape, "h0")
        return (_grad_or_absent(x, dy, flags_and_need_dx[-1]), torch.empty_like(dhn),
                torch.empty_like(w_ih), _grad_or_absent(b_ih, dy), _grad_or_absent(b_hh, dy),
                torch.empty_like(w_hh))

    return fake


def _keep_output(ctx, y):
    """Keeps the forward's output y for a backward that reads the states from it. Not through
    save_for_backward: autograd would then raise where the caller changed y in place before backward,
    which torch.nn's GRU and RNN on the CPU allow (their output is a copy). A detached y shares y's data
    and its version counter, and makes no reference cycle through y's grad_fn; where the version moved,
    backward computes y again (_kept_output)."""
    ctx.output, ctx.output_version = y.detach(), y._version


def _kept_output(ctx, forward_again):
    """The y _keep_output kept, or ``forward_again()``'s where it was changed in place since."""
    if ctx.output._version == ctx.output_version:
        return ctx.output
    return forward_again()


def single_state_autograd(fwd_op, bwd_op, reference_name, reads_output):
    """(backward, setup_context) of a GRU or RNN layer forward op ``fwd_op`` whose backward op is
    ``bwd_op``: the flags after batch_sizes (RNN's relu, reverse) pass through to it.
    ``reference_name``: the reference backend's layer function of the op; ``reads_output(device)``:
    whether the backward op reads the states from y and h0."""

    def setup(ctx, inputs, output):
        x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, *flags, training = inputs
        _setup_saved(ctx, output[2], training)
        ctx.save_for_backward(output[2], x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes)
        ctx.flags, ctx.batch = tuple(flags), h0.shape[0]
        ctx.reads_output = training and reads_output(x.device)
        if ctx.reads_output:
            _keep_output(ctx, output[0])

    def backward(ctx, dy, dhn, _dsaved):
        _require_saved(ctx)
        saved, x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes = ctx.saved_tensors
        H = w_hh.shape[1]
        dy = _or_zeros(dy, w_hh, (saved.shape[0], H))
        dhn = _or_zeros(dhn, w_hh, (ctx.batch, H))
        if torch.is_grad_enabled():
            grads = _recorded_grads(ctx, _reference(reference_name), (x, w_ih, b_ih, b_hh, h0, w_hh),
                                    (batch_sizes, *ctx.flags), (dy, dhn))
            return (*grads, None) + (None,) * len(ctx.flags) + (None,)
        inputs = (x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, *ctx.flags)
        y = (_kept_output(ctx, lambda: fwd_op(*inputs, True)[0]) if ctx.reads_output
             else dy.new_empty((0,)))
        need_dx = ctx.needs_input_grad[0]
        dx, dh0, dw_ih, db_ih, db_hh, dw_hh = bwd_op(dy, dhn, saved, y, h0, x, w_ih, b_ih, b_hh, w_hh,
                                                     batch_sizes, *ctx.flags, need_dx)
        return ((dx if need_dx else None, dw_ih, _present(db_ih, b_ih), _present(db_hh, b_hh), dh0,
                 dw_hh, None) + (None,) * len(ctx.flags) + (None,))

    return backward, setup


def gru_autograd(fwd_op, bwd_op, reads_output):
    return single_state_autograd(fwd_op, bwd_op, "gru_layer", reads_output)


def rnn_autograd(fwd_op, bwd_op, reads_output):
    return single_state_autograd(fwd_op, bwd_op, "rnn_layer", reads_output)


def register_layer_op(fwd_name, bwd_name, fwd_fake, bwd_fake, autograd,
                      reads_output=never_reads_output):
    """Registers the fakes of a layer op pair ``fastcells::{fwd_name}`` / ``{bwd_name}`` and the
    forward's autograd; ``autograd(fwd_op, bwd_op, reads_output)`` gives (backward, setup_context)."""
    torch.library.register_fake("fastcells::" + fwd_name)(fwd_fake)
    torch.library.register_fake("fastcells::" + bwd_name)(bwd_fake)
    ops = torch.ops.fastcells
    backward, setup = autograd(getattr(ops, fwd_name), getattr(ops, bwd_name), reads_output)
    torch.library.register_autograd("fastcells::" + fwd_name, backward, setup_context=setup)


def register():
    """Registers fakes and autograd of the ops of fastcells._C (once, after loading it)."""
    register_layer_op("lstm_layer_fwd", "lstm_layer_bwd", lstm_fwd_fake(same_dtype), lstm_bwd_fake,
                      lstm_autograd)
    register_layer_op("gru_layer_fwd", "gru_layer_bwd",
                      single_state_fwd_fake(3, gru_saved_width, same_dtype, reads_output_on_cpu),
                      single_state_bwd_fake(gru_saved_width, reads_output_on_cpu), gru_autograd,
                      reads_output_on_cpu)
    register_layer_op("rnn_layer_fwd", "rnn_layer_bwd",
                      single_state_fwd_fake(1, rnn_saved_width, same_dtype, reads_output_on_cpu),
                      single_state_bwd_fake(rnn_saved_width, reads_output_on_cpu), rnn_autograd,
                      reads_output_on_cpu)

    # The step ops: inference only (a step that needs gradients runs as a one-step layer op).
    @torch.library.register_fake("fastcells::lstm_step_fwd")
    def _(x, h, c, w_ih, w_hh, b_ih, b_hh):
        return torch.empty_like(h), torch.empty_like(c)

    @torch.library.register_fake("fastcells::gru_step_fwd")
    def _(x, h, w_ih, w_hh, b_ih, b_hh):
        return torch.empty_like(h)

    @torch.library.register_fake("fastcells::rnn_step_fwd")
    def _(x, h, w_ih, w_hh, b_ih, b_hh, relu):
        return torch.empty_like(h)
