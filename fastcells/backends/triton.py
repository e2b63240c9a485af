"""The triton backend: the layer ops of fastcells/kernels/{lstm,gru,rnn}.py (persistent sequence
kernels for small layers, else per step a torch GEMM for ``h @ W_hh^T`` and one fused step kernel).
Cells run as one-step layers.

It runs on CUDA tensors, and on CPU tensors through Triton's interpreter when TRITON_INTERPRET=1 was set
before the kernels were imported (how the CPU test suite checks the kernels; far too slow for real use,
so ``auto`` never picks it for CPU tensors). Triton itself is imported only when this backend is asked
about a device it can run on (``import fastcells`` stays fast). Shapes as in ``backends/reference.py``.
"""

import os

import torch

from .layer_ops import LayerOps

NAME = "triton"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
AUTO_DEVICE_TYPES = ("cuda",)  # device types for which ``auto`` may choose this backend

_import_error = None  # why the kernels could not be imported, once tried
_FUNCTIONS = None


def _import_kernels():
    """Imports the kernels (and Triton) once; returns why that failed, or None."""
    global _import_error, _FUNCTIONS
    if _FUNCTIONS is None and _import_error is None:
        try:
            from ..kernels import gru, lstm, rnn  # defines torch.ops.fastcells.triton_*
        except ImportError as error:  # Triton not installed (or too old)
            _import_error = f"{type(error).__name__}: {error}"
        else:
            _FUNCTIONS = LayerOps(NAME, lstm.lstm_layer_fwd, gru.gru_layer_fwd, rnn.rnn_layer_fwd)
    return _import_error


def interpreted():
    """Whether the kernels run (or will run) in Triton's CPU interpreter: TRITON_INTERPRET=1 before
    they are imported."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def unusable_reason(device_type, dtype=None):
    """Why this backend cannot run on ``device_type`` tensors of ``dtype`` (None: any), or None."""
    if device_type == "cuda":
        if interpreted():
            return "TRITON_INTERPRET=1 is set: the kernels were built for the CPU interpreter"
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
    elif device_type == "cpu":
        if not interpreted():
            return ("on CPU tensors Triton runs only through its interpreter: set TRITON_INTERPRET=1 "
                    "before importing fastcells")
    else:
        return f"it runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device_type}"
    if dtype is not None and dtype not in DTYPES:
        return f"it computes in float16, bfloat16, float32 or float64 only, got {dtype}"
    error = _import_kernels()
    return None if error is None else f"Triton could not be imported ({error})"


def functions():
    """The backend's layer and step functions (call only when unusable_reason says it can run)."""
    _import_kernels()
    return _FUNCTIONS
