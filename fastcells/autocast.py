"""torch.autocast for fastcells modules: compute in, and return, the dtype torch.nn's twin would.

Measured with torch 2.13 (CPU) and read from torch's autocast op lists (CUDA):
- CUDA: the cells' ops (lstm_cell, gru_cell, rnn_tanh_cell, rnn_relu_cell) are on autocast's
  lower-precision list, so the cells compute in the autocast dtype. cuDNN's layers are cast by their own
  autocast rule, which casts to float16 whatever the autocast dtype: measured with torch 2.11 on an
  H200, an nn.LSTM, GRU or RNN under bfloat16 autocast returns float16. The layers follow that.
- CPU: oneDNN's LSTM layer (mkldnn_rnn_layer) is on the list; RNN and RNNCell run decomposed ops whose
  products are on it and return the autocast dtype; GRU, LSTMCell and GRUCell mix those products with
  float32 states and return float32, which fastcells computes in throughout.
A module under autocast checks its arguments as torch.nn does under autocast (no dtype agreement
asked), then computes with autocast switched off, on its inputs, states and weights cast to that dtype
(the casts are differentiable: gradients reach the float32 parameters, as with autocast).
"""

import torch

# Module kinds (RNNBase modes and cell class names) that torch.nn computes in the autocast dtype on CPU.
_CPU_LOW_PRECISION = frozenset({"LSTM", "RNN_TANH", "RNN_RELU", "RNNCell"})
_LAYERS = frozenset({"LSTM", "GRU", "RNN_TANH", "RNN_RELU"})


# One cheap call to skip all autocast work when it is off everywhere (a streaming cell step feels the
# ~0.5 µs of asking per device); torch.nn.RNNBase asks the same. If a torch lacks it, ask per device.
any_enabled = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


def is_enabled(device_type):
    return any_enabled() and torch.is_autocast_enabled(device_type)


def off(device_type):
    """The context in which a module under autocast computes."""
    return torch.autocast(device_type, enabled=False)


def compute_dtype(kind, device_type, weight_dtype):
    """The dtype a ``kind`` module computes in under autocast on ``device_type``: the autocast dtype
    where torch.nn uses it, else the weights' dtype. None when autocast is off there."""
    if not is_enabled(device_type):
        return None
    if device_type == "cuda":
        return torch.float16 if kind in _LAYERS else torch.get_autocast_dtype(device_type)
    if device_type == "cpu" and kind in _CPU_LOW_PRECISION:
        return torch.get_autocast_dtype(device_type)
    return weight_dtype


def cast(value, dtype):
    """``value`` (a tensor, a tuple of tensors or None) with floating-point tensors cast to ``dtype``."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(cast(v, dtype) for v in value)
    return value.to(dtype) if value.is_floating_point() else value
