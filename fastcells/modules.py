"""Drop-in twins of torch.nn.LSTM, GRU, RNN, LSTMCell, GRUCell and RNNCell.

Same constructor arguments (plus keyword-only ``backend``), same parameters and state_dict keys, same
forward contract and the same exceptions as torch.nn; the work is done by a fastcells backend.

The layers subclass ``nn.RNNBase`` (which owns the parameter layout, ``all_weights`` and repr), not
``nn.LSTM``/``GRU``/``RNN``: Dynamo refuses to trace instances of those three classes, so subclassing
them would bring their graph breaks under torch.compile along.
"""

import contextlib
import os

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import _extension, autocast, backends, dispatch, functional
from .backends import cpu as cpu_backend

_NOT_SCRIPTABLE = (
    "torch.jit.script cannot compile fastcells.{name}: its forward picks a backend and calls "
    "torch.library ops, which TorchScript does not parse. Use torch.export.export or torch.compile "
    "(both keep the fused ops), or script torch.nn.{name} with this module's state_dict loaded.")


def _refuse_scripting(module):
    """torch.jit.script calls this first: a message that says what to do, instead of TorchScript's."""
    raise RuntimeError(_NOT_SCRIPTABLE.format(name=type(module).__name__))


_INPUT_DIM_MESSAGE = {
    "LSTM": "LSTM: Expected input to be 2D or 3D, got {}D instead",
    "GRU": "GRU: Expected input to be 2D or 3D, got {}D instead",
    "RNN_TANH": "RNN: Expected input to be 2D or 3D, got {}D tensor instead",
    "RNN_RELU": "RNN: Expected input to be 2D or 3D, got {}D tensor instead",
}


def _check_state_like_input(name, state, input):
    """torch.nn raises RuntimeError deep in its kernels for these; we say what is wrong. (Under autocast
    dtypes may differ: both are cast to the dtype the module computes in.)"""
    if state.dtype != input.dtype and not autocast.is_enabled(input.device.type):
        raise RuntimeError(f"{name} dtype ({state.dtype}) does not match input dtype ({input.dtype})")
    if state.device != input.device:
        raise RuntimeError(
            f"Input and hidden tensors are not at the same device, found input tensor at "
            f"{input.device} and {name} tensor at {state.device}"
        )


def _exporting_to_onnx():
    """Whether torch.onnx.export (either exporter) is tracing this call. Both trace (torch.jit.trace, or
    torch.export), which is cheap to ask first: is_in_onnx_export takes a microsecond, which a streaming
    cell step would feel."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling()) and torch.onnx.is_in_onnx_export()


_is_compiling = torch.compiler.is_compiling
_functorch_transforms = torch._C._are_functorch_transforms_active


def _backend_for_call(requested, device_type, dtype):
    """The backend functions of a module's call: its backend's (backends.resolve), or the reference
    backend's torch operations, which every transform handles, under a torch.func transform (grad, vjp,
    jacrev, jvp, vmap) or where forward-mode AD may be at work (torch.autograd.forward_ad): the fused
    ops' autograd (torch.library.register_autograd) supports neither the transforms that differentiate
    nor forward mode, and torch.nn's layers and cells run under both. (Not while Dynamo traces: it sees
    the transforms' own functions, not this state.)"""
    if not _is_compiling() and (_functorch_transforms() or cpu_backend.dual_level_open()):
        requested = "reference"
    return backends.resolve(requested, device_type, dtype)


class _FusedRNNBase(nn.RNNBase):
    """Forward shared by LSTM, GRU and RNN: argument checks as torch.nn, then functional.rnn."""

    def __init__(self, mode, *args, backend="auto", **kwargs):
        super().__init__(mode, *args, **kwargs)
        self.backend = backends.check_name(backend)

    def extra_repr(self):
        text = super().extra_repr()
        return text if self.backend == "auto" else f"{text}, backend={self.backend!r}"

    __prepare_scriptable__ = _refuse_scripting

    # flatten_parameters is torch.nn's: on CUDA the weights become views into one cuDNN weight buffer, so
    # torch's own path (fastcells/dispatch.py) runs without copying them at every call, as torch.nn
    # does; elsewhere it does nothing. fastcells' kernels read the parameters where they are either way.

    def _direct_inference_allowed(self, input):
        """Whether this call may take the direct path: a plain batched CPU tensor (not packed), no
        gradient, no autocast, no projection or dropout, the cpu backend, and calls that may skip the
        dispatcher (backends/cpu.py)."""
        return (type(input) is torch.Tensor and input.dim() == 3 and input.is_cpu
                and input.dtype in cpu_backend.DTYPES and not torch.is_grad_enabled()
                and not autocast.any_enabled() and self.proj_size == 0
                and (self.dropout == 0 or not self.training or self.num_layers == 1)
                and self.backend in ("auto", "cpu") and cpu_backend.unusable_reason("cpu") is None
                and cpu_backend.direct_calls_allowed())

    def _weights_now(self):
        """The layer's weights as its forward reads them: ``self._flat_weights``, or the weights' getters
        where one is no longer the tensor that list holds (a parametrization, torch.nn.utils.parametrize,
        computes its weight at every access), as torch.nn's forward refreshes them
        (RNNBase._update_flat_weights): a dict lookup per weight, for a generation loop's call."""
        params, flat = self._parameters, self._flat_weights
        for name, weight in zip(self._flat_weights_names, flat):
            if params.get(name) is not weight:
                return [getattr(self, name, None) for name in self._flat_weights_names]
        return flat

    def _direct_inference(self, input, hx, flat_weights):
        """The forward of an inference call (a generation loop's, T steps, often 1, or a whole sequence's
        without states) without the full path's Python: the same layer ops as the full path, in one call
        of fastcells._C (csrc/cpu/stack_inference.h). The ops check every shape, dtype and device they
        see; the states' shapes are checked here, and any error sends the call the full way, which
        raises torch.nn's exception. Without hx the states start at zeros, as on the full path."""
        is_lstm = self.mode == "LSTM"
        data = input.transpose(0, 1) if self.batch_first else input
        steps, batch, _ = data.shape
        states = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        if hx is None:
            hx = torch.zeros(states, dtype=data.dtype, device=data.device)
            hx = (hx, torch.zeros_like(hx)) if is_lstm else hx
        h, c = hx if is_lstm else (hx, None)
        if steps == 0 or h.shape != states or (is_lstm and c.shape != states):
            raise ValueError("not a shape the direct path takes")
        output, hn, cn = _extension.C.stack_inference(
            self.mode, data, cpu_backend.padded_batch_sizes(steps, batch), h, c, flat_weights,
            self.num_layers, self.bidirectional, self.bias)
        return (output.transpose(0, 1) if self.batch_first else output), ((hn, cn) if is_lstm else hn)

    def _check_states(self, input, batch_sizes, mini_batch, hx, cx):
        """torch.nn's checks, with the batch size given (``int(batch_sizes[0])`` would be data-dependent
        under torch.compile)."""
        self.check_input(input, batch_sizes)
        states = self.num_layers * (2 if self.bidirectional else 1)
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        if cx is None:
            self.check_hidden_size(hx, (states, mini_batch, out_size))
        else:
            self.check_hidden_size(hx, (states, mini_batch, out_size), "Expected hidden[0] size {}, got {}")
            self.check_hidden_size(cx, (states, mini_batch, self.hidden_size),
                                   "Expected hidden[1] size {}, got {}")
            _check_state_like_input("cx", cx, input)
        _check_state_like_input("hx", hx, input)

    def forward(self, input, hx=None):
        flat_weights = self._weights_now()
        if self._direct_inference_allowed(input):
            try:
                return self._direct_inference(input, hx, flat_weights)
            except (RuntimeError, TypeError, ValueError, IndexError, AttributeError):
                pass  # the full path below raises torch.nn's exception for this call
        # Under torch.onnx.export (either exporter) fastcells' ops, which have no ONNX translation, stay
        # out of the graph: torch.nn's own forward runs (a twin sharing the parameters), which both
        # exporters write as ONNX's LSTM/GRU/RNN operators or their decomposition, with the dynamic batch
        # and sequence length torch.nn's export keeps. Where torch.nn's export fails (proj_size: ONNX's
        # LSTM has no projection) the reference backend's torch operations run instead, unrolled over
        # the traced sequence length.
        exporting = _exporting_to_onnx()
        if exporting and self.proj_size == 0:
            from .convert import unconvert  # convert imports this module

            return unconvert(self)(input, hx)
        is_lstm = self.mode == "LSTM"
        states = self.num_layers * (2 if self.bidirectional else 1)
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch_first, is_batched = False, True
            # The batch is known without reading batch_sizes when the sequence was sorted for us.
            mini_batch = sorted_indices.numel() if sorted_indices is not None else int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise ValueError(_INPUT_DIM_MESSAGE[self.mode].format(input.dim()))
            is_batched = input.dim() == 3
            batch_first = self.batch_first and is_batched
            data = input if is_batched else input.unsqueeze(1)
            if batch_first:
                data = data.transpose(0, 1)
            sorted_indices = unsorted_indices = None
            batch_sizes = None
            mini_batch = data.size(1)

        hx, cx = self._initial_states(hx, data, is_batched, states, mini_batch, out_size)
        self._check_states(data, batch_sizes, mini_batch, hx, cx)
        if sorted_indices is not None:
            hx = hx.index_select(1, sorted_indices)
            cx = cx.index_select(1, sorted_indices) if cx is not None else None

        if packed:
            rows = data
        else:
            if data.size(0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            steps = data.size(0)
            rows = data.reshape(steps * mini_batch, data.size(2))
            batch_sizes = torch.full((steps,), mini_batch, dtype=torch.long)

        device_type = data.device.type
        dtype = autocast.compute_dtype(self.mode, device_type, flat_weights[0].dtype)
        if dtype is not None:  # under autocast: compute in the dtype torch.nn would, autocast off inside
            rows, hx, cx = (autocast.cast(t, dtype) for t in (rows, hx, cx))
            flat_weights = [autocast.cast(w, dtype) for w in flat_weights]
        with autocast.off(device_type) if dtype is not None else contextlib.nullcontext():
            backend = _backend_for_call("reference" if exporting else self.backend, device_type, rows.dtype)
            if dispatch.runs_torch(self, backend, rows, flat_weights, mini_batch):
                y, hn, cn = functional.torch_rnn(
                    self.mode, rows, batch_sizes, hx, cx, flat_weights, padded=not packed,
                    num_layers=self.num_layers, bidirectional=self.bidirectional, bias=self.bias,
                    dropout=self.dropout, training=self.training,
                )
            else:
                y, hn, cn = functional.rnn(
                    backend, self.mode, rows, batch_sizes, hx, cx, flat_weights,
                    num_layers=self.num_layers, bidirectional=self.bidirectional, bias=self.bias,
                    proj=self.proj_size > 0, dropout=self.dropout, training=self.training,
                )

        if unsorted_indices is not None:
            hn = hn.index_select(1, unsorted_indices)
            cn = cn.index_select(1, unsorted_indices) if cn is not None else None
        if packed:
            output = PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices)
        else:
            output = y.view(data.size(0), mini_batch, y.size(1))
            if batch_first:
                output = output.transpose(0, 1)
            if not is_batched:
                output = output.squeeze(1)
                hn = hn.squeeze(1)
                cn = cn.squeeze(1) if cn is not None else None
        return output, ((hn, cn) if is_lstm else hn)

    def _initial_states(self, hx, data, is_batched, states, mini_batch, out_size):
        """(hx, cx) as (L * D, B, P) and (L * D, B, H) tensors (cx None unless LSTM), zeros by default."""
        is_lstm = self.mode == "LSTM"
        if hx is None:
            h = torch.zeros(states, mini_batch, out_size, dtype=data.dtype, device=data.device)
            c = None
            if is_lstm:
                c = torch.zeros(states, mini_batch, self.hidden_size, dtype=data.dtype,
                                device=data.device)
            return h, c
        dims = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if is_lstm:
            if isinstance(hx, torch.Tensor) and hx.dim() > 0 and hx.size(0) < 2:
                # torch.nn reads hx[1] of a lone tensor here and fails with IndexError.
                raise IndexError("LSTM expects hx as a tuple (h_0, c_0), got one tensor of shape "
                                 f"{tuple(hx.shape)}")
            h, c = hx
            if h.dim() != dims or c.dim() != dims:
                raise RuntimeError(f"For {kind} input, hx and cx should also be {dims}-D but got "
                                   f"({h.dim()}-D, {c.dim()}-D) tensors")
        else:
            h, c = hx, None
            if h.dim() != dims:
                raise RuntimeError(f"For {kind} input, hx should also be {dims}-D but got "
                                   f"{h.dim()}-D tensor")
        if not is_batched:
            h = h.unsqueeze(1)
            c = c.unsqueeze(1) if c is not None else None
        return h, c


class LSTM(_FusedRNNBase):
    """Drop-in ``torch.nn.LSTM``: ``LSTM(input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
    backend="auto")``."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__("LSTM", *args, backend=backend, **kwargs)


class GRU(_FusedRNNBase):
    """Drop-in ``torch.nn.GRU``: same arguments as torch's, plus keyword-only ``backend``."""

    def __init__(self, *args, backend="auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, backend=backend, **kwargs)


class RNN(_FusedRNNBase):
    """Drop-in ``torch.nn.RNN`` (tanh or relu): same arguments as torch's, plus keyword-only ``backend``."""

    def __init__(self, *args, backend="auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:  # nonlinearity is the fourth positional argument, as in torch.nn.RNN
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        mode = "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(mode, *args, backend=backend, **kwargs)


# ------------------------------------------------------------------------------------------------
# Cells


def _check_cell_args(input, states, input_size, hidden_size, weight):
    """The checks torch's cell kernels make (same messages), dtype against the weights (torch only says
    "mat1 and mat2 must have the same dtype") and states' devices against the input's (a state on the
    meta device would otherwise send the op to its fake implementation). One ``shape`` read per
    tensor: this runs on every streaming step."""
    batch, features = input.shape
    if features != input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {features} expected {input_size}")
    dtype, on_cpu = weight.dtype, input.is_cpu
    if input.dtype != dtype:
        raise RuntimeError(f"input dtype ({input.dtype}) does not match weight dtype ({dtype})")
    for index, state in enumerate(states):
        shape = state.shape
        if shape != (batch, hidden_size):
            if shape[0] != batch:
                raise RuntimeError(f"Input batch size {batch} doesn't match hidden{index} batch size "
                                   f"{shape[0]}")
            raise RuntimeError(f"hidden{index} has inconsistent hidden_size: got {shape[1]}, "
                               f"expected {hidden_size}")
        if state.dtype != dtype:
            raise RuntimeError(f"hidden{index} dtype ({state.dtype}) does not match weight dtype ({dtype})")
        # is_cpu first: reading .device costs a streaming step more than the two flags.
        if state.is_cpu != on_cpu or (not on_cpu and state.device != input.device):
            raise RuntimeError(f"Input and hidden tensors are not at the same device, found input tensor "
                               f"at {input.device} and hidden{index} tensor at {state.device}")


# fastcells._C.streaming_step's kinds of step (csrc/streaming_step.h's StepKind): the cells' _STREAMING_KIND
_STEP_KINDS = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}


def _no_streaming_call(module, input, hx, whole_call):
    return None


# fastcells._C.cell_streaming_call(module, input, hx, whole_call): the step's output, or None where the
# call takes the full path (csrc/streaming_step.h says when). Without the extension: always the full path.
_cell_streaming_call = getattr(_extension.C, "cell_streaming_call", _no_streaming_call)


class _FusedCellMixin:
    """What the three cells share. Each defines ``_KIND`` (its torch.nn class name), ``_forward(input,
    hx, weights)`` and ``_STREAMING_KIND`` (fastcells._C's StepKind of its streaming step)."""

    __prepare_scriptable__ = _refuse_scripting

    def _init_backend(self, backend):
        self.backend = backends.check_name(backend)

    def __call__(self, *args, **kwargs):
        """nn.Module.__call__, which a streaming step skips where it would only call forward: its two
        Python frames, forward's and the checks made in Python took ~1.7 µs of a ~4.8 µs LSTMCell step
        at B=1 H=64 on the Intel Xeon of bench/results/cpu-intel-xeon. fastcells._C.cell_streaming_call
        makes every check in C++ (hooks, a replaced forward, the backend, gradients, autocast, modes,
        tracing) and runs the step. Calls with keywords take nn.Module.__call__: they are rarer, and hooks
        with kwargs must see them as given. Dynamo traces the full path (fastcells._C is opaque to it)."""
        if len(args) == 2 and not kwargs and not _is_compiling():
            output = _cell_streaming_call(self, args[0], args[1], True)
            if output is not None:
                return output
        return super().__call__(*args, **kwargs)

    def forward(self, input, hx=None):
        # Dynamo traces the full path (fastcells._C is opaque). A call with gradients (training) got here
        # from __call__, whose C++ call refused it already: asking again would cost it ~0.2 µs.
        if hx is not None and not _is_compiling() and not torch.is_grad_enabled():
            output = _cell_streaming_call(self, input, hx, False)
            if output is not None:
                return output
        if _exporting_to_onnx():
            # torch.nn's step, which both ONNX exporters write as Gemm and pointwise operators
            # (_FusedRNNBase.forward says why)
            return super().forward(input, hx)
        weights = self._weights()
        if dispatch.cell_runs_torch(self, input, weights):
            return super().forward(input, hx)  # torch.nn's own step: no faster one measured on this GPU
        if not (autocast.any_enabled() and isinstance(input, torch.Tensor)
                and autocast.is_enabled(input.device.type)):
            return self._forward(input, hx, weights)
        # Under autocast: compute in the dtype torch.nn's cell would, autocast off inside.
        device_type = input.device.type
        dtype = autocast.compute_dtype(self._KIND, device_type, weights[0].dtype)
        with autocast.off(device_type):
            return self._forward(autocast.cast(input, dtype), autocast.cast(hx, dtype),
                                 tuple(autocast.cast(w, dtype) for w in weights))

    def extra_repr(self):
        text = super().extra_repr()
        return text if self.backend == "auto" else f"{text}, backend={self.backend!r}"

    def _weights(self):
        """(weight_ih, weight_hh, bias_ih, bias_hh), read from the parameter dict in one go (each
        ``self.weight_ih`` goes through nn.Module.__getattr__, ~1 µs), or through their getters where a
        parametrization (torch.nn.utils.parametrize) or pruning has taken them out of it."""
        params = self._parameters
        try:
            return params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"]
        except KeyError:
            return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def _batched(self, name, input, hx, count, weight_ih):
        """Checks dims as torch.nn and returns (input (B, I), states [(B, H)] * count, is_batched)."""
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            if count == 2 and not isinstance(hx, (tuple, list)):
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of Tensors, not "
                                f"{type(hx).__name__}")
            for index, value in enumerate(hx if count == 2 else (hx,)):
                if value.dim() not in (1, 2):
                    label = f"hx[{index}]" if count == 2 else "hidden"
                    raise ValueError(
                        f"{name}: Expected {label} to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            states = [zeros] * count
        else:
            states = list(hx) if count == 2 else [hx]
            if not is_batched:
                states = [s.unsqueeze(0) for s in states]
        _check_cell_args(input, states, self.input_size, self.hidden_size, weight_ih)
        return input, states, is_batched


class LSTMCell(_FusedCellMixin, nn.LSTMCell):
    """Drop-in ``torch.nn.LSTMCell``: ``LSTMCell(input_size, hidden_size, bias=True, device=None,
    dtype=None, *, backend="auto")``. input (B, I) or (I); hx (h, c) each (B, H) or (H)."""

    _KIND = "LSTMCell"
    _STREAMING_KIND = _STEP_KINDS["lstm"]

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self._init_backend(backend)

    def _forward(self, input, hx, weights):
        x, (h, c), is_batched = self._batched("LSTMCell", input, hx, 2, weights[0])
        backend = _backend_for_call(self.backend, x.device.type, x.dtype)
        h, c = backend.lstm_step(x, h, c, *weights)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_FusedCellMixin, nn.GRUCell):
    """Drop-in ``torch.nn.GRUCell``: input (B, I) or (I); hx (B, H) or (H)."""

    _KIND = "GRUCell"
    _STREAMING_KIND = _STEP_KINDS["gru"]

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self._init_backend(backend)

    def _forward(self, input, hx, weights):
        x, (h,), is_batched = self._batched("GRUCell", input, hx, 1, weights[0])
        backend = _backend_for_call(self.backend, x.device.type, x.dtype)
        h = backend.gru_step(x, h, *weights)
        return h if is_batched else h.squeeze(0)


class RNNCell(_FusedCellMixin, nn.RNNCell):
    """Drop-in ``torch.nn.RNNCell`` (tanh or relu): input (B, I) or (I); hx (B, H) or (H)."""

    _KIND = "RNNCell"
    _STREAMING_KIND = _STEP_KINDS["rnn_tanh"]  # rnn_relu by its nonlinearity (csrc/streaming_step.cpp)

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None, *, backend="auto"):
        super().__init__(input_size, hidden_size, bias, nonlinearity, device, dtype)
        self._init_backend(backend)

    def _relu(self):
        """Whether the nonlinearity is relu (else tanh); torch.nn's error for any other."""
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return self.nonlinearity == "relu"

    def _forward(self, input, hx, weights):
        x, (h,), is_batched = self._batched("RNNCell", input, hx, 1, weights[0])
        relu = self._relu()
        backend = _backend_for_call(self.backend, x.device.type, x.dtype)
        h = backend.rnn_step(x, h, *weights, relu)
        return h if is_batched else h.squeeze(0)


_set_up_cell_calls = getattr(_extension.C, "set_up_cell_calls", None)
if _set_up_cell_calls is not None:
    # What fastcells._C.cell_streaming_call checks a call against: the cells' own forward (a call whose
    # forward is another takes nn.Module.__call__), whether "auto" means the cpu backend (the choice
    # resolve makes for CPU tensors, float32 as any dtype), and FASTCELLS_BACKEND as backends reads it.
    _set_up_cell_calls(_FusedCellMixin.forward, backends.auto_picks("cpu", "cpu", torch.float32), os,
                       backends.ENV_KEY, backends.env_token)
