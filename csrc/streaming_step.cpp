// The cells' streaming step in one call from Python (fastcells/modules.py, _FusedCellMixin.__call__).
//
// A generation or streaming loop calls a cell once per step, B=1, H=64 to 256: at H=64 an LSTMCell's
// products take ~1.5 µs, and nn.Module.__call__, forward's checks and the step op's binding took ~4 µs
// more on the Intel Xeon of bench/results/cpu-intel-xeon. Here the checks that decide whether a call
// may skip them are made in C++, each a read of thread-local state, and the step op runs on the Python
// objects as they are.
#include "streaming_step.h"

#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/forward_grad.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include "cpu/ops_cpu.h"

namespace fastcells {
namespace {

namespace py = pybind11;

// Whether `object` is a plain tensor (or a Parameter), not a subclass that could override torch
// functions; its value otherwise.
const at::Tensor* plain_tensor(PyObject* object) {
  return object != nullptr && THPVariable_CheckExact(object) ? &THPVariable_Unpack(object) : nullptr;
}

// A plain CPU tensor of the cpu backend's dtypes (backends/cpu.py's DTYPES), else nullptr.
const at::Tensor* cpu_tensor(PyObject* object) {
  const at::Tensor* tensor = plain_tensor(object);
  if (tensor == nullptr || !tensor->defined() || !tensor->is_cpu()) return nullptr;
  switch (tensor->scalar_type()) {
    case at::kFloat:
    case at::kDouble:
    case at::kHalf:
    case at::kBFloat16:
      return tensor;
    default:
      return nullptr;
  }
}

// A weight from the module's parameter dict under `name` (an interned string: PyDict_GetItemString
// would build one at every call): absent (a parametrization moved it, its getter computes it) sends the
// call the full way; None is an absent bias.
bool read_weight(PyObject* parameters, PyObject* name, bool optional, c10::optional<at::Tensor>& out) {
  PyObject* value = PyDict_GetItemWithError(parameters, name);  // borrowed
  if (value == nullptr && PyErr_Occurred()) throw py::error_already_set();
  if (value == nullptr) return false;
  if (value == Py_None) return optional;
  const at::Tensor* tensor = plain_tensor(value);
  if (tensor == nullptr) return false;
  out = *tensor;
  return true;
}

PyObject* interned(const char* name) { return PyUnicode_InternFromString(name); }

// Steps of fewer multiply-adds than this keep the GIL: releasing and taking it back costs ~0.3 µs, a
// tenth of a B=1 H=64 LSTMCell step (~1.5 µs of products), which holds it for less time than Python's
// switch interval (5 ms) lets a thread run anyway. Larger steps let other threads run while they compute.
constexpr int64_t kStepProductsHoldingGil = int64_t{1} << 18;

py::object wrap(at::Tensor tensor) { return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(tensor))); }

}  // namespace

bool streaming_allowed() {
  // No gradient, no autocast, and backends/cpu.py's direct_calls_allowed but for torch.compile's check,
  // which the cells make in Python first (Dynamo never sees this function); the Python functions that
  // answer each (tests/test_streaming_call.py checks them against each other):
  // - autocast on any device type: its dispatch key is no longer excluded (at::autocast::is_autocast_enabled);
  // - functorch transforms (vmap, grad) push their dynamic-layer keys onto the included set;
  // - torch_function modes, torch_dispatch modes (FakeTensor, recorders) and torch.jit.trace;
  // - forward-mode AD: a dual level is open (backends/cpu.py's dual_level_open), whose tangents the op
  //   would drop.
  const c10::impl::LocalDispatchKeySet keys = c10::impl::tls_local_dispatch_key_set();
  const bool autocast = !keys.excluded_.isSupersetOf(c10::autocast_dispatch_keyset);
  const bool functorch = keys.included_.has(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) ||
                         keys.included_.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode);
  return !(at::GradMode::is_enabled() || autocast || functorch || at::impl::torch_function_mode_enabled() ||
           c10::impl::TorchDispatchModeTLS::any_modes_set() || torch::jit::tracer::isTracing() ||
           torch::autograd::ForwardADLevel::try_get_by_idx(0) != nullptr);
}

py::object streaming_step(int kind, py::handle input, py::handle hx, py::handle parameters) {
  if (kind < 0 || kind > static_cast<int>(StepKind::kRnnRelu)) throw py::value_error("unknown step kind");
  const StepKind step = static_cast<StepKind>(kind);
  const at::Tensor* x = cpu_tensor(input.ptr());
  if (x == nullptr || x->dim() != 2 || !PyDict_Check(parameters.ptr()) || !streaming_allowed()) return py::none();
  const at::Tensor* h = nullptr;
  const at::Tensor* c = nullptr;
  if (step == StepKind::kLstm) {
    if (!PyTuple_CheckExact(hx.ptr()) || PyTuple_GET_SIZE(hx.ptr()) != 2) return py::none();
    h = cpu_tensor(PyTuple_GET_ITEM(hx.ptr(), 0));
    c = cpu_tensor(PyTuple_GET_ITEM(hx.ptr(), 1));
    if (c == nullptr) return py::none();
  } else {
    h = cpu_tensor(hx.ptr());
  }
  static PyObject* const kWeightIh = interned("weight_ih");
  static PyObject* const kWeightHh = interned("weight_hh");
  static PyObject* const kBiasIh = interned("bias_ih");
  static PyObject* const kBiasHh = interned("bias_hh");
  c10::optional<at::Tensor> w_ih, w_hh, b_ih, b_hh;
  PyObject* dict = parameters.ptr();
  if (h == nullptr || !read_weight(dict, kWeightIh, false, w_ih) || !read_weight(dict, kWeightHh, false, w_hh) ||
      !read_weight(dict, kBiasIh, true, b_ih) || !read_weight(dict, kBiasHh, true, b_hh)) {
    return py::none();
  }
  // x (B, I) by w_ih (G, I) and h (B, H) by w_hh (G, H) (malformed ones, which the op refuses: 0).
  const int64_t hidden = h->dim() == 2 ? h->size(1) : 0, gates = w_hh->dim() == 2 ? w_hh->size(0) : 0;
  const int64_t products = x->size(0) * (x->size(1) + hidden) * gates;
  at::Tensor h_new, c_new;
  try {
    // Other Python threads (an inference server's) go on while a large step runs.
    c10::optional<py::gil_scoped_release> no_gil;
    if (products >= kStepProductsHoldingGil) no_gil.emplace();
    switch (step) {
      case StepKind::kLstm:
        std::tie(h_new, c_new) = cpu::lstm_step_fwd_cpu(*x, *h, *c, *w_ih, *w_hh, b_ih, b_hh);
        break;
      case StepKind::kGru:
        h_new = cpu::gru_step_fwd_cpu(*x, *h, *w_ih, *w_hh, b_ih, b_hh);
        break;
      case StepKind::kRnnTanh:
      case StepKind::kRnnRelu:
        h_new = cpu::rnn_step_fwd_cpu(*x, *h, *w_ih, *w_hh, b_ih, b_hh, step == StepKind::kRnnRelu);
        break;
    }
  } catch (const std::exception&) {
    return py::none();  // a shape, dtype or device the op refuses: torch.nn's exception on the full path
  }
  if (step != StepKind::kLstm) return wrap(std::move(h_new));
  return py::make_tuple(wrap(std::move(h_new)), wrap(std::move(c_new)));
}

}  // namespace fastcells
