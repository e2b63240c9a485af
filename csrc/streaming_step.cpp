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

#include <cstring>

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

// What set_up_cell_calls gave, each object owned for the life of the process (never released: Python may
// be gone by then).
struct CellCallSetup {
  PyObject* cells_forward = nullptr;  // _FusedCellMixin.forward
  bool auto_is_cpu = false;
  PyObject* os_module = nullptr;      // os
  PyObject* env_key = nullptr;        // FASTCELLS_BACKEND as os.environ's dict keys it
  PyObject* env_token = nullptr;      // backends.env_token
  PyObject* hook_module = nullptr;    // torch.nn.modules.module, which holds the global hook dicts
};
CellCallSetup g_setup;

// The module's instance attribute `name` (borrowed from `dict`, its __dict__), or nullptr.
PyObject* instance_attribute(PyObject* dict, PyObject* name) {
  PyObject* value = PyDict_GetItemWithError(dict, name);
  if (value == nullptr && PyErr_Occurred()) throw py::error_already_set();
  return value;
}

// Whether a hook dict holds a hook (absent, or not a dict: counted as holding one, so the full path runs).
bool has_hooks(PyObject* hooks) { return hooks == nullptr || !PyDict_Check(hooks) || PyDict_GET_SIZE(hooks) > 0; }

// Whether nn.Module.__call__ on `module` would call the cells' forward and nothing else: the test of
// torch/nn/modules/module.py's _wrapped_call_impl and _call_impl (the global hook dicts are read at every
// call, as torch reads them).
bool only_forward_would_run(PyObject* module, PyObject* dict) {
  static PyObject* const kForwardHooks = interned("_forward_hooks");
  static PyObject* const kForwardPreHooks = interned("_forward_pre_hooks");
  static PyObject* const kBackwardHooks = interned("_backward_hooks");
  static PyObject* const kBackwardPreHooks = interned("_backward_pre_hooks");
  static PyObject* const kCompiledCall = interned("_compiled_call_impl");
  static PyObject* const kForward = interned("forward");
  static PyObject* const kGlobalHooks[] = {interned("_global_forward_hooks"), interned("_global_forward_pre_hooks"),
                                           interned("_global_backward_hooks"), interned("_global_backward_pre_hooks")};
  for (PyObject* name : {kForwardHooks, kForwardPreHooks, kBackwardHooks, kBackwardPreHooks}) {
    if (has_hooks(instance_attribute(dict, name))) return false;
  }
  if (instance_attribute(dict, kForward) != nullptr) return false;
  // Module.compile sets _compiled_call_impl on the instance; nn.Module's class attribute says None.
  const py::object compiled = py::reinterpret_steal<py::object>(PyObject_GetAttr(module, kCompiledCall));
  if (!compiled) throw py::error_already_set();
  if (!compiled.is_none()) return false;
  if (g_setup.cells_forward == nullptr || _PyType_Lookup(Py_TYPE(module), kForward) != g_setup.cells_forward) {
    return false;
  }
  for (PyObject* name : kGlobalHooks) {
    const py::object hooks = py::reinterpret_steal<py::object>(PyObject_GetAttr(g_setup.hook_module, name));
    if (!hooks) {  // gone from torch: the full path's call decides
      PyErr_Clear();
      return false;
    }
    if (has_hooks(hooks.ptr())) return false;
  }
  return true;
}

// FASTCELLS_BACKEND's value as backends.env_token gives it (None where unset, else bytes or str), read
// the way it reads it: from the dict behind os.environ, where os.environ is CPython's own mapping, else
// by calling it. (Not getenv: os.putenv, or a test replacing os.environ, changes one and not the other.)
py::object backend_variable() {
  static PyObject* const kEnviron = interned("environ");
  static PyObject* const kData = interned("_data");
  const py::object environ = py::reinterpret_steal<py::object>(PyObject_GetAttr(g_setup.os_module, kEnviron));
  if (!environ) throw py::error_already_set();
  py::object data = py::reinterpret_steal<py::object>(PyObject_GetAttr(environ.ptr(), kData));
  if (!data) PyErr_Clear();
  if (data && PyDict_CheckExact(data.ptr())) {
    PyObject* value = PyDict_GetItemWithError(data.ptr(), g_setup.env_key);  // borrowed
    if (value == nullptr && PyErr_Occurred()) throw py::error_already_set();
    return value == nullptr ? py::none() : py::reinterpret_borrow<py::object>(value);
  }
  const py::object value = py::reinterpret_steal<py::object>(PyObject_CallNoArgs(g_setup.env_token));
  if (!value) throw py::error_already_set();
  return value;
}

// Whether a FASTCELLS_BACKEND value (bytes or str) is `name`.
bool variable_is(const py::object& value, const char* name) {
  if (PyBytes_Check(value.ptr())) return std::strcmp(PyBytes_AS_STRING(value.ptr()), name) == 0;
  return PyUnicode_Check(value.ptr()) && PyUnicode_CompareWithASCIIString(value.ptr(), name) == 0;
}

// Whether the module's backend (its `backend` attribute, and for "auto" FASTCELLS_BACKEND first) is the
// cpu backend, as fastcells/backends/__init__.py's select picks it. Any other name, valid or not, is
// the full path's to use or refuse. ("auto" picks the cpu backend for CPU tensors wherever fastcells._C
// loaded, which this function needs to run at all: set_up_cell_calls says so.)
bool backend_is_cpu(PyObject* dict) {
  static PyObject* const kBackend = interned("backend");
  PyObject* requested = instance_attribute(dict, kBackend);
  if (requested == nullptr || !PyUnicode_Check(requested)) return false;
  if (PyUnicode_CompareWithASCIIString(requested, "cpu") == 0) return true;
  if (PyUnicode_CompareWithASCIIString(requested, "auto") != 0) return false;
  const py::object variable = backend_variable();
  if (variable.is_none() || variable_is(variable, "") || variable_is(variable, "auto")) return g_setup.auto_is_cpu;
  return variable_is(variable, "cpu");
}

// The step kind of the module's class (_STREAMING_KIND), an RNN cell's by its nonlinearity; -1 if none.
int step_kind(PyObject* module, PyObject* dict) {
  static PyObject* const kStreamingKind = interned("_STREAMING_KIND");
  static PyObject* const kNonlinearity = interned("nonlinearity");
  PyObject* kind = _PyType_Lookup(Py_TYPE(module), kStreamingKind);
  if (kind == nullptr || !PyLong_CheckExact(kind)) return -1;
  int overflow = 0;
  const long value = PyLong_AsLongAndOverflow(kind, &overflow);
  if (overflow != 0 || value < 0 || value > static_cast<long>(StepKind::kRnnRelu)) return -1;
  if (value != static_cast<long>(StepKind::kRnnTanh)) return static_cast<int>(value);
  PyObject* nonlinearity = instance_attribute(dict, kNonlinearity);
  if (nonlinearity == nullptr || !PyUnicode_Check(nonlinearity)) return -1;
  if (PyUnicode_CompareWithASCIIString(nonlinearity, "tanh") == 0) return static_cast<int>(StepKind::kRnnTanh);
  if (PyUnicode_CompareWithASCIIString(nonlinearity, "relu") == 0) return static_cast<int>(StepKind::kRnnRelu);
  return -1;  // an unknown one: the full path raises torch.nn's error
}

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

void set_up_cell_calls(py::object cells_forward, bool auto_is_cpu, py::object os_module, py::object env_key,
                       py::object env_token) {
  if (g_setup.cells_forward != nullptr) throw py::value_error("set_up_cell_calls: already set up");
  py::object hook_module = py::module_::import("torch.nn.modules.module");
  g_setup.cells_forward = cells_forward.release().ptr();
  g_setup.auto_is_cpu = auto_is_cpu;
  g_setup.os_module = os_module.release().ptr();
  g_setup.env_key = env_key.release().ptr();
  g_setup.env_token = env_token.release().ptr();
  g_setup.hook_module = hook_module.release().ptr();
}

py::object cell_streaming_call(py::handle module, py::handle input, py::handle hx, bool whole_call) {
  static PyObject* const kParameters = interned("_parameters");
  // Gradients (a training step) first: the cheapest reason, and the commonest, to take the full path.
  if (at::GradMode::is_enabled()) return py::none();
  const py::object dict = py::reinterpret_steal<py::object>(PyObject_GenericGetDict(module.ptr(), nullptr));
  if (!dict) throw py::error_already_set();
  if (g_setup.cells_forward == nullptr || !PyDict_Check(dict.ptr()) || !backend_is_cpu(dict.ptr())) return py::none();
  if (whole_call && !only_forward_would_run(module.ptr(), dict.ptr())) return py::none();
  const int kind = step_kind(module.ptr(), dict.ptr());
  PyObject* parameters = instance_attribute(dict.ptr(), kParameters);
  if (kind < 0 || parameters == nullptr) return py::none();
  return streaming_step(kind, input, hx, parameters);
}

}  // namespace fastcells
