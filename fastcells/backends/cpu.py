"""The cpu backend: fused C++ kernels (csrc/cpu) behind ``torch.ops.fastcells``.

Layer functions run a whole sequence of one layer and direction in one op call; step functions run one
cell step (see layer_ops.step_functions). The same ops run CUDA tensors in the cuda backend.

Shapes as in ``backends/reference.py``.
"""

import torch

from .. import _extension
from .layer_ops import layer_functions, needs_grad, step_functions

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


# name -> fastcells._C's pybind11 function for that step op, looked up once (a streaming step feels
# the ~0.5 µs of a getattr on a built name).
_DIRECT_STEP_OPS = ({} if _extension.C is None else
                    {name: getattr(_extension.C, name + "_cpu")
                     for name in ("lstm_step_fwd", "gru_step_fwd", "rnn_step_fwd")})


def direct_step_op(name):
    """fastcells._C's pybind11 function for the inference step op ``name`` ("lstm_step_fwd", ...), or
    None when the extension did not load."""
    return _DIRECT_STEP_OPS.get(name)


def _step_op(name):
    """The fused inference step op ``name``: fastcells._C's function called through pybind11 (it skips
    the dispatcher's ~5 µs), or the torch.ops op under torch.compile, which traces torch.ops only."""
    if torch.compiler.is_compiling():
        return getattr(ops, name)
    return _DIRECT_STEP_OPS[name]


# Layer functions (shapes in backends/reference.py): one op call per layer and direction.
lstm_layer, gru_layer, rnn_layer = layer_functions("")


def lstm_layer_from_input(x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes, reverse):
    """lstm_layer(x @ w_ih^T + bias, ...) with the input projection inside the op, where each thread
    computes its own rows step by step (csrc/cpu/lstm_cpu.cpp, StepInput). x (N, I), bias (4H) or
    None; the rest as lstm_layer."""
    training = needs_grad(x, w_ih, bias, h0, c0, w_hh, w_hr)
    y, hn, cn, _ = ops.lstm_layer_from_input_fwd(x, w_ih, bias, h0, c0, w_hh, w_hr, batch_sizes,
                                                 reverse, training)
    return y, hn, cn


lstm_step, gru_step, rnn_step = step_functions(_step_op)
