"""The cuda backend: the compiled ops of ``torch.ops.fastcells`` on CUDA tensors (csrc/cuda: a layer's
input projection as one GEMM, then either one persistent kernel for all steps or, per step, a cuBLAS
GEMM and one fused pointwise kernel, the time loop in C++). Cell steps in inference run one fused
kernel (both products and the gates); steps that need gradients run as one-step layers. Shapes as in
``backends/reference.py``.
"""

import torch

from .. import _extension
from .layer_ops import LayerOps

NAME = "cuda"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Asked once: modules ask unusable_reason when they resolve a backend, and Dynamo cannot trace a
# pybind function (torch.compile(fullgraph=True) would stop there).
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


def use_persistent(enabled, units=8, flag_sync=True, cluster=1):
    """How layers on CUDA tensors pick the persistent tensor-core kernels (csrc/cuda/persistent.h:
    LSTM, GRU and RNN in float16 or bfloat16, or float32 on tf32 where torch.backends.cudnn.allow_tf32;
    no projection; padded or packed). True runs them wherever they fit, with ``units`` hidden units a
    block (8 or 16) and per-block step flags (``flag_sync``) or a grid barrier between steps, in
    thread-block clusters of ``cluster`` blocks (2, 4 or 8, with flags, on sm_90 and later, where the
    blocks split into whole clusters that fit; elsewhere without); False never; None as
    fastcells/dispatch.py's measured table says (the default, unless FASTCELLS_CUDA_PERSISTENT was set
    when fastcells._C loaded: 1 forces them on, 0 off)."""
    mode = "table" if enabled is None else ("on" if enabled else "off")
    _extension.C.set_cuda_persistent(mode, int(units), bool(flag_sync), int(cluster))


_FUNCTIONS = None


def functions():
    """The backend's layer and step functions (call only when unusable_reason says it can run)."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        ops = torch.ops.fastcells
        _FUNCTIONS = LayerOps(NAME, ops.lstm_layer_fwd, ops.gru_layer_fwd, ops.rnn_layer_fwd,
                              step_ops=lambda: ops)
    return _FUNCTIONS
