"""The cuda backend: the compiled ops of ``torch.ops.fastcells`` on CUDA tensors (csrc/cuda: per step a
cuBLAS GEMM and one fused pointwise kernel, the time loop in C++).

The ops are the cpu backend's, registered for the CUDA dispatch key, so the layer and step functions are
the same; this module only says where they can run. Shapes as in ``backends/reference.py``.
"""

import torch

from .. import _extension
from .layer_ops import layer_functions, step_functions

NAME = "cuda"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Asked once: modules ask unusable_reason at every forward, and Dynamo cannot trace a pybind function
# (torch.compile(fullgraph=True) would stop there).
_BUILT_WITH_CUDA = _extension.load_error is None and _extension.C.has_cuda()


def unusable_reason(device_type, dtype=None):
    """Why this backend cannot run on ``device_type`` tensors of ``dtype`` (None: any), or None."""
    if _extension.load_error is not None:
        return f"the compiled extension fastcells._C did not load ({_extension.load_error})"
    if not _BUILT_WITH_CUDA:
        return ("fastcells._C was built without its CUDA ops (they are built where torch has CUDA and "
                "nvcc is found at install time)")
    if device_type != "cuda":
        return f"it runs on CUDA tensors only, got {device_type} tensors"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    if dtype is not None and dtype not in DTYPES:
        return f"it computes in float16, bfloat16, float32 or float64 only, got {dtype}"
    return None


lstm_layer, gru_layer, rnn_layer = layer_functions("")
lstm_step, gru_step, rnn_step = step_functions(lambda name: getattr(torch.ops.fastcells, name))
