"""The cpu backend: fused C++ kernels (csrc/cpu) behind ``torch.ops.fastcells``.

Layer functions run a whole sequence of one layer and direction in one op call; step functions run one
cell step. Both are differentiable: the layer ops carry autograd formulas (fastcells/ops.py), and a cell
step that needs gradients runs as a layer of length one. A step without gradients (inference, the
streaming case) is one fused op: both mat-vecs, biases and gates in a single pass.

Shapes as in ``backends/reference.py``.
"""

import torch
import torch.nn.functional as F

from .. import _extension
from .layer_ops import bias_sum, layer_functions, needs_grad, one_step

NAME = "cpu"
ops = torch.ops.fastcells


DTYPES = (torch.float32, torch.float64)


def unusable_reason(device_type, dtype=None):
    """Why this backend cannot run on ``device_type`` tensors of ``dtype`` (None: any), or None."""
    if _extension.load_error is not None:
        return f"the compiled extension fastcells._C did not load ({_extension.load_error})"
    if device_type != "cpu":
        return f"it runs on CPU tensors only, got {device_type} tensors"
    if dtype is not None and dtype not in DTYPES:
        return f"it computes in float32 or float64 only, got {dtype}"
    return None


def _step_op(name):
    """The fused inference step op ``name``: fastcells._C's function called through pybind11 (it skips
    the dispatcher's ~5 µs), or the torch.ops op under torch.compile, which traces torch.ops only."""
    if torch.compiler.is_compiling():
        return getattr(ops, name)
    return getattr(_extension.C, name + "_cpu")


# Layer functions (shapes in backends/reference.py): one op call per layer and direction.
lstm_layer, gru_layer, rnn_layer = layer_functions("")


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    if not needs_grad(x, h, c, w_ih, w_hh, b_ih, b_hh):
        return _step_op("lstm_step_fwd")(x, h, c, w_ih, w_hh, b_ih, b_hh)
    gx = F.linear(x, w_ih, bias_sum(b_ih, b_hh))
    _, hn, cn, _ = ops.lstm_layer_fwd(gx, h, c, w_hh, None, one_step(x.shape[0]), False, True)
    return hn, cn


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    if not needs_grad(x, h, w_ih, w_hh, b_ih, b_hh):
        return _step_op("gru_step_fwd")(x, h, w_ih, w_hh, b_ih, b_hh)
    gx = F.linear(x, w_ih, b_ih)
    _, hn, _ = ops.gru_layer_fwd(gx, h, w_hh, b_hh, one_step(x.shape[0]), False, True)
    return hn


def rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, relu):
    if not needs_grad(x, h, w_ih, w_hh, b_ih, b_hh):
        return _step_op("rnn_step_fwd")(x, h, w_ih, w_hh, b_ih, b_hh, relu)
    gx = F.linear(x, w_ih, bias_sum(b_ih, b_hh))
    _, hn, _ = ops.rnn_layer_fwd(gx, h, w_hh, one_step(x.shape[0]), relu, False, True)
    return hn
