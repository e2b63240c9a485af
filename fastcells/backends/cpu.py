"""The cpu backend: fused C++ kernels (csrc/cpu) behind ``torch.ops.fastcells``.

Layer functions run a whole sequence of one layer and direction in one op call; inference steps run
the fused step ops. Shapes as in ``backends/reference.py``.
"""

import torch

from .. import _extension
from .layer_ops import LayerOps

NAME = "cpu"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def unusable_reason(device_type, dtype=None):
    """Why this backend cannot run on ``device_type`` tensors of ``dtype`` (None: any), or None."""
    if _extension.load_error is not None:
        return f"the compiled extension fastcells._C did not load ({_extension.load_error})"
    if device_type != "cpu":
        return f"it runs on CPU tensors only, got {device_type} tensors"
    if dtype is not None and dtype not in DTYPES:
        return f"it computes in float16, bfloat16, float32 or float64 only, got {dtype}"
    return None


def _step_ops():
    """The fused inference step ops: fastcells._C's functions called through pybind11 (they skip the
    dispatcher's ~5 µs), or the torch.ops ones under torch.compile and torch.jit.trace, which record
    torch.ops only."""
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
    return torch.ops.fastcells if tracing else _extension.C


_FUNCTIONS = None


def functions():
    """The backend's layer and step functions (call only when unusable_reason says it can run). Its
    ``streaming_steps`` are fastcells._C's step functions, which the cells' streaming path calls
    straight from forward (modules.py)."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        ops = torch.ops.fastcells
        _FUNCTIONS = LayerOps(NAME, ops.lstm_layer_fwd, ops.gru_layer_fwd, ops.rnn_layer_fwd, _step_ops,
                              streaming_steps=_extension.C)
    return _FUNCTIONS
