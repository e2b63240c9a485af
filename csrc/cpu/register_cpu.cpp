// Binds the CPU implementations to the op schemas of ../ops.cpp: each op runs the copy of the kernels
// compiled for the best instruction set the running CPU has (isa.h), 16-bit tensors through its
// float32 math (storage.h).
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>

#include "bf16_products.h"
#include "isa.h"
#include "ops_cpu.h"

namespace fastcells::cpu {
namespace {

bool cpu_has(const char* feature) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (!std::strcmp(feature, "avx512")) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           cpu_has("avx2");
  }
  if (!std::strcmp(feature, "avx2")) {  // F16C too (every CPU with AVX2 has it): float16 steps widen with it
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }
#endif
  return !std::strcmp(feature, "baseline");
}

const CpuKernels& pick() {
  const CpuKernels* copies[] = {&avx512::kernels, &avx2::kernels, &baseline::kernels};  // best first
  const char* forced = std::getenv("FASTCELLS_CPU_ISA");
  if (forced && *forced) {
    for (const CpuKernels* copy : copies) {
      if (!std::strcmp(forced, copy->isa)) {
        TORCH_CHECK(cpu_has(copy->isa), "FASTCELLS_CPU_ISA=", forced, ": this CPU does not have it");
        return *copy;
      }
    }
    TORCH_CHECK(false, "FASTCELLS_CPU_ISA must be avx512, avx2 or baseline, got ", forced);
  }
  for (const CpuKernels* copy : copies) {
    if (cpu_has(copy->isa)) return *copy;
  }
  return baseline::kernels;
}

// A floating-point argument of a 16-bit call must have x's dtype (the kernels compute in float32 but
// read and write the call's tensors as they are, storage.h). Others (batch_sizes, flags) pass.
void check_dtype(const Tensor& x, const char* name, const Tensor& t) {
  if (t.defined() && t.is_floating_point()) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must have dtype ", x.scalar_type(),
                " like x, got ", t.scalar_type());
  }
}
void check_dtype(const Tensor& x, const char* name, const OptionalTensor& t) {
  if (t.has_value()) check_dtype(x, name, *t);
}
void check_dtype(const Tensor&, const char*, bool) {}

// A layer op's outputs converted to `dtype` (those in it already as they are).
template <typename... Ts>
std::tuple<Ts...> to_dtype(std::tuple<Ts...> outputs, at::ScalarType dtype) {
  std::apply([dtype](auto&... t) { ((t = t.to(dtype)), ...); }, outputs);
  return outputs;
}

// The weights' (named w_*) dtypes in a float32 call, x's: the kernels let bfloat16 weights through
// with float32 x (other mismatches they refuse themselves, with x's dtype checked first).
template <typename... Args>
void check_weights(const std::array<const char*, sizeof...(Args)>& names, const Args&... args) {
  const Tensor& x = std::get<0>(std::tie(args...));
  if (x.scalar_type() != at::kFloat) return;
  size_t i = 0;
  ((names[i][0] == 'w' ? check_dtype(x, names[i], args) : void(), ++i), ...);
}

// Whether a call (x or dy first; `names` are the arguments' names, for errors) is in bfloat16 or float16,
// every floating-point argument checked to be in x's dtype too; a call in another dtype gets its
// weights' dtypes checked (check_weights) instead.
template <typename... Args>
bool sixteen_bit_call(const std::array<const char*, sizeof...(Args)>& names, const Args&... args) {
  const Tensor& x = std::get<0>(std::tie(args...));
  if (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kHalf) {
    check_weights(names, args...);
    return false;
  }
  size_t i = 0;
  (check_dtype(x, names[i++], args), ...);
  return true;
}

// Runs a layer op's `kernel` of the chosen copy on `args`. The kernels take a 16-bit call's arguments
// as they are and keep the layer's tensors in 16 bits (storage.h: multiplying in bfloat16 where the CPU
// has the bfloat16 products, in float32 elsewhere); only the outputs they compute in float32 (states,
// gradients) are converted. (Converting every argument to float32 around the float32 kernels, as
// float16 calls were, took 29 of the 36 bfloat16 rows of the quick benchmark above torch.nn's peak
// memory without the products, up to 3.9x: LSTM T=50 B=16 H=256 training 18.2 against 4.7 MiB on the
// AMD EPYC with every instruction set capped at AVX2, more than its float32 call's 12.3.)
template <typename Kernel, typename... Args>
auto run_layer(Kernel kernel, const std::array<const char*, sizeof...(Args)>& names, const Args&... args) {
  if (!sixteen_bit_call(names, args...)) return kernel(args...);
  const Tensor& x = std::get<0>(std::tie(args...));
  return to_dtype(kernel(args...), x.scalar_type());
}

// As run_layer, for the cell step ops, whose kernels take a 16-bit call's tensors as they are and return
// its outputs in its dtype: the weights (a step is one call: converting them would copy the weights at
// every step; matmul_cpu.h's step_projections) and the rest, which they widen into their own scratch
// (storage.h's StepTensors).
template <typename Kernel, typename... Args>
auto run_step(Kernel kernel, const std::array<const char*, sizeof...(Args)>& names, const Args&... args) {
  sixteen_bit_call(names, args...);
  return kernel(args...);
}

}  // namespace

const CpuKernels& chosen_kernels() {
  static const CpuKernels& chosen = pick();
  return chosen;
}

const char* cpu_isa() { return chosen_kernels().isa; }

bool cpu_bf16_products() { return chosen_kernels().bf16_products && bf16::cpu_has_products(); }
bool cpu_amx_products() { return cpu_bf16_products() && bf16::cpu_has_amx(); }

LstmOutputs lstm_layer_fwd_cpu(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const Tensor& h0, const Tensor& c0,
                               const Tensor& w_hh, const OptionalTensor& w_hr,
                               const Tensor& batch_sizes, bool reverse, bool training) {
  const bf16::ProductsScope products(x.scalar_type() == at::kBFloat16);
  return run_layer(chosen_kernels().lstm_layer_fwd,
             {"x", "w_ih", "b_ih", "b_hh", "h0", "c0", "w_hh", "w_hr", "batch_sizes", "reverse", "training"},
             x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr, batch_sizes, reverse, training);
}
LstmGrads lstm_layer_bwd_cpu(const Tensor& dy, const Tensor& dhn, const Tensor& dcn,
                             const Tensor& saved, const Tensor& x, const Tensor& w_ih,
                             const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                             const Tensor& w_hh, const OptionalTensor& w_hr,
                             const Tensor& batch_sizes, bool reverse, bool need_dx) {
  const bf16::ProductsScope products(dy.scalar_type() == at::kBFloat16);
  return run_layer(chosen_kernels().lstm_layer_bwd,
             {"dy", "dhn", "dcn", "saved", "x", "w_ih", "b_ih", "b_hh", "w_hh", "w_hr", "batch_sizes",
              "reverse", "need_dx"},
             dy, dhn, dcn, saved, x, w_ih, b_ih, b_hh, w_hh, w_hr, batch_sizes, reverse, need_dx);
}
std::tuple<Tensor, Tensor> lstm_step_fwd_cpu(const Tensor& x, const Tensor& h, const Tensor& c,
                                             const Tensor& w_ih, const Tensor& w_hh,
                                             const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  return run_step(chosen_kernels().lstm_step_fwd, {"x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh"}, x, h,
                  c, w_ih, w_hh, b_ih, b_hh);
}
LayerOutputs gru_layer_fwd_cpu(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const Tensor& h0, const Tensor& w_hh,
                               const Tensor& batch_sizes, bool reverse, bool training) {
  const bf16::ProductsScope products(x.scalar_type() == at::kBFloat16);
  return run_layer(chosen_kernels().gru_layer_fwd,
             {"x", "w_ih", "b_ih", "b_hh", "h0", "w_hh", "batch_sizes", "reverse", "training"}, x, w_ih,
             b_ih, b_hh, h0, w_hh, batch_sizes, reverse, training);
}
LayerGrads gru_layer_bwd_cpu(const Tensor& dy, const Tensor& dhn, const Tensor& saved,
                             const Tensor& y, const Tensor& h0, const Tensor& x,
                             const Tensor& w_ih, const OptionalTensor& b_ih,
                             const OptionalTensor& b_hh, const Tensor& w_hh,
                             const Tensor& batch_sizes, bool reverse, bool need_dx) {
  const bf16::ProductsScope products(dy.scalar_type() == at::kBFloat16);
  return run_layer(chosen_kernels().gru_layer_bwd,
             {"dy", "dhn", "saved", "y", "h0", "x", "w_ih", "b_ih", "b_hh", "w_hh", "batch_sizes",
              "reverse", "need_dx"},
             dy, dhn, saved, y, h0, x, w_ih, b_ih, b_hh, w_hh, batch_sizes, reverse, need_dx);
}
Tensor gru_step_fwd_cpu(const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                        const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  return run_step(chosen_kernels().gru_step_fwd, {"x", "h", "w_ih", "w_hh", "b_ih", "b_hh"}, x, h, w_ih,
                  w_hh, b_ih, b_hh);
}
LayerOutputs rnn_layer_fwd_cpu(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const Tensor& h0, const Tensor& w_hh,
                               const Tensor& batch_sizes, bool relu, bool reverse, bool training) {
  const bf16::ProductsScope products(x.scalar_type() == at::kBFloat16);
  return run_layer(chosen_kernels().rnn_layer_fwd,
             {"x", "w_ih", "b_ih", "b_hh", "h0", "w_hh", "batch_sizes", "relu", "reverse", "training"}, x,
             w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, relu, reverse, training);
}
LayerGrads rnn_layer_bwd_cpu(const Tensor& dy, const Tensor& dhn, const Tensor& saved,
                             const Tensor& y, const Tensor& h0, const Tensor& x,
                             const Tensor& w_ih, const OptionalTensor& b_ih,
                             const OptionalTensor& b_hh, const Tensor& w_hh,
                             const Tensor& batch_sizes, bool relu, bool reverse, bool need_dx) {
  const bf16::ProductsScope products(dy.scalar_type() == at::kBFloat16);
  return run_layer(chosen_kernels().rnn_layer_bwd,
             {"dy", "dhn", "saved", "y", "h0", "x", "w_ih", "b_ih", "b_hh", "w_hh", "batch_sizes", "relu",
              "reverse", "need_dx"},
             dy, dhn, saved, y, h0, x, w_ih, b_ih, b_hh, w_hh, batch_sizes, relu, reverse, need_dx);
}
Tensor rnn_step_fwd_cpu(const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                        const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool relu) {
  return run_step(chosen_kernels().rnn_step_fwd, {"x", "h", "w_ih", "w_hh", "b_ih", "b_hh", "relu"}, x, h,
                  w_ih, w_hh, b_ih, b_hh, relu);
}

}  // namespace fastcells::cpu

TORCH_LIBRARY_IMPL(fastcells, CPU, m) {
  using namespace fastcells::cpu;
  m.impl("lstm_layer_fwd", &lstm_layer_fwd_cpu);
  m.impl("lstm_layer_bwd", &lstm_layer_bwd_cpu);
  m.impl("lstm_step_fwd", &lstm_step_fwd_cpu);
  m.impl("gru_layer_fwd", &gru_layer_fwd_cpu);
  m.impl("gru_layer_bwd", &gru_layer_bwd_cpu);
  m.impl("gru_step_fwd", &gru_step_fwd_cpu);
  m.impl("rnn_layer_fwd", &rnn_layer_fwd_cpu);
  m.impl("rnn_layer_bwd", &rnn_layer_bwd_cpu);
  m.impl("rnn_step_fwd", &rnn_step_fwd_cpu);
}
