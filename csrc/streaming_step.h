// A cell's streaming step called from Python in one go (csrc/streaming_step.cpp).
#pragma once

#include <torch/extension.h>

namespace fastcells {

// The cells' step kinds, as fastcells/modules.py's cells name them (_STREAMING_KIND).
enum class StepKind : int { kLstm = 0, kGru = 1, kRnnTanh = 2, kRnnRelu = 3 };

// One inference step of a cell, `input` (B, I) and `hx` ((h, c) for an LSTM, else h, each (B, H)) as the
// cell's forward got them, its weights read from `parameters` (the module's parameter dict): the new
// state, or None where the call must take the cell's full forward (anything but plain CPU tensors of
// the cpu backend's dtypes in a tuple-free inference call nothing records, or an argument the step op
// refuses: the full forward then raises torch.nn's exception).
pybind11::object streaming_step(int kind, pybind11::handle input, pybind11::handle hx,
                                pybind11::handle parameters);

// A cell's whole call, `module(input, hx)` (fastcells/modules.py's _FusedCellMixin.__call__ when
// `whole_call`, its forward otherwise): streaming_step's result where the call may skip nn.Module.__call__
// and forward's Python, else None. A whole call may where nn.Module.__call__ would only call the cells'
// forward (no hook on the module or global, no compiled call, forward not replaced on the instance or in
// a subclass); either call where the module's backend is the cpu backend (set_up_cell_calls). The step
// kind is the class's _STREAMING_KIND, an RNN cell's (kRnnTanh) by its nonlinearity.
pybind11::object cell_streaming_call(pybind11::handle module, pybind11::handle input, pybind11::handle hx,
                                     bool whole_call);

// What cell_streaming_call compares a call against, given once by fastcells/modules.py: the cells' own
// forward (the function), whether "auto" picks the cpu backend for CPU tensors, and how
// fastcells/backends reads FASTCELLS_BACKEND (the os module, the variable's key in os.environ's dict, and
// backends.env_token). Until then cell_streaming_call returns None.
void set_up_cell_calls(pybind11::object cells_forward, bool auto_is_cpu, pybind11::object os_module,
                       pybind11::object env_key, pybind11::object env_token);

// Whether fastcells._C's functions may run in place of torch.ops calls on this thread: no autograd, no
// autocast, and nothing that records or transforms the calls (see streaming_step.cpp).
bool streaming_allowed();

}  // namespace fastcells
