"""The triton backend: the fused step kernels of ``fastcells.kernels`` behind the layer ops of
fastcells/triton_ops.py (alternating mode: torch's GEMM for ``h @ W_hh^T``, one fused kernel for the
rest of each step).

It runs on CUDA tensors, and on CPU tensors through Triton's interpreter when TRITON_INTERPRET=1 was set
before fastcells was imported (how the CPU test suite checks the kernels; far too slow for real use, so
``auto`` never picks it for CPU tensors). Cells run as a layer of one step.

Shapes as in ``backends/reference.py``.
"""

import os

import torch
import torch.nn.functional as F

from .layer_ops import bias_sum, layer_functions, one_step

NAME = "triton"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
AUTO_DEVICE_TYPES = ("cuda",)  # device types for which ``auto`` may choose this backend

try:
    from .. import triton_ops  # noqa: F401 - defines torch.ops.fastcells.triton_*
except ImportError as error:  # Triton not installed (or too old)
    import_error = f"{type(error).__name__}: {error}"
else:
    import_error = None
# The kernels were defined for the interpreter iff the variable was set when they were imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

def unusable_reason(device_type, dtype=None):
    """Why this backend cannot run on ``device_type`` tensors of ``dtype`` (None: any), or None."""
    if import_error is not None:
        return f"Triton could not be imported ({import_error})"
    if device_type == "cuda":
        if INTERPRETED:
            return "TRITON_INTERPRET=1 is set: the kernels were built for the CPU interpreter"
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
    elif device_type == "cpu":
        if not INTERPRETED:
            return ("on CPU tensors Triton runs only through its interpreter: set TRITON_INTERPRET=1 "
                    "before importing fastcells")
    else:
        return f"it runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device_type}"
    if dtype is not None and dtype not in DTYPES:
        return f"it computes in float16, bfloat16, float32 or float64 only, got {dtype}"
    return None


# Layer functions (shapes in backends/reference.py): one op call per layer and direction.
lstm_layer, gru_layer, rnn_layer = layer_functions("triton_")


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    gx = F.linear(x, w_ih, bias_sum(b_ih, b_hh))
    return lstm_layer(gx, h, c, w_hh, None, one_step(x.shape[0]), False)[1:]


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    gx = F.linear(x, w_ih, b_ih)
    return gru_layer(gx, h, w_hh, b_hh, one_step(x.shape[0]), False)[1]


def rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, relu):
    gx = F.linear(x, w_ih, bias_sum(b_ih, b_hh))
    return rnn_layer(gx, h, w_hh, one_step(x.shape[0]), relu, False)[1]
