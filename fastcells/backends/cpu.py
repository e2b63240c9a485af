"""The cpu backend: fused C++ kernels (csrc/cpu) behind ``torch.ops.fastcells``.

Layer functions run a whole sequence of one layer and direction in one op call; inference steps run
the fused step ops. Inference calls skip the dispatcher where nothing records them
(``direct_calls_allowed``). Shapes as in ``backends/reference.py``.
"""

import functools

import torch
from torch.autograd import forward_ad as _forward_ad

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


# The checks of direct_calls_allowed, bound once: a cell's streaming step makes them all at every call,
# and torch.jit.is_tracing() is torch._C._is_tracing() behind a TorchScript check (never scripted here).
_is_compiling = torch.compiler.is_compiling
_is_tracing = torch._C._is_tracing
_function_mode = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_transforms = torch._C._are_functorch_transforms_active


def dual_level_open():
    """Whether forward-mode AD may be at work (a ``torch.autograd.forward_ad.dual_level`` is open): the
    fused ops have no forward-mode formula, and a direct call would drop the tangents."""
    return getattr(_forward_ad, "_current_level", -1) >= 0


def direct_calls_allowed():
    """Whether an op may be called in fastcells._C straight, through pybind11, past the dispatcher (its
    boxing, and for the layer ops the autograd registration's Python: ~5 µs a step op, ~20 µs a layer
    op): only where nothing records or transforms the calls, all of which see torch.ops calls only:
    not under torch.compile or torch.jit.trace (a traced module would replay no op), a
    ``__torch_function__`` or ``__torch_dispatch__`` mode (FakeTensor, an op recorder) or a functorch
    transform (vmap, grad), nor where forward-mode AD may be at work (dual_level_open). Tensor subclasses
    are the caller's check. (torch.compile's check first: the compiler then sees no other.)"""
    return not (_is_compiling() or _is_tracing() or _function_mode() or _dispatch_modes()
                or _functorch_transforms() or dual_level_open())


def _direct_ops():
    """Where the inference calls go: fastcells._C's functions (the step and layer forward ops under
    the ops' names) where direct calls are allowed, else torch.ops.fastcells."""
    return _extension.C if direct_calls_allowed() else torch.ops.fastcells


_FUNCTIONS = None


def functions():
    """The backend's layer and step functions (call only when unusable_reason says it can run). The
    cells' streaming path calls fastcells._C without them (modules.py, csrc/streaming_step.h)."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        ops = torch.ops.fastcells
        _FUNCTIONS = LayerOps(NAME, ops.lstm_layer_fwd, ops.gru_layer_fwd, ops.rnn_layer_fwd, _direct_ops,
                              inference_ops=_direct_ops)
    return _FUNCTIONS


@functools.lru_cache(maxsize=64)
def padded_batch_sizes(steps, batch):
    """The batch_sizes of a padded (steps, batch) sequence, [batch] * steps, made once per shape (a
    torch.full costs a generation loop's step 2 µs). The ops only read it."""
    return torch.full((steps,), batch, dtype=torch.long)
