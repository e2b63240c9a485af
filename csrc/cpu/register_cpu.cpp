// Binds the CPU implementations to the op schemas of ../ops.cpp: each op runs the copy of the kernels
// compiled for the best instruction set the running CPU has (isa.h), 16-bit tensors through its
// float32 kernels.
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <tuple>
#include <utility>

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
  if (!std::strcmp(feature, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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

// bfloat16 and float16 tensors run the float32 kernels: each argument converted once per call (the
// weights too: never per step), the outputs converted back to the input's dtype, saved activations
// included (kept in 16 bits, as the CUDA ops and torch.nn keep them); the math and the states inside
// stay float32.
bool low_precision(const Tensor& x) {
  return x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf;
}

// The floating-point arguments of a 16-bit call must all have x's dtype, as the float32 kernels
// require of theirs (checked here: converting first would hide a mismatch).
void check_dtypes(const Tensor& x, std::initializer_list<std::pair<const char*, const Tensor*>> args) {
  for (const auto& [name, t] : args) {
    if (t && t->defined()) {
      TORCH_CHECK(t->scalar_type() == x.scalar_type(), name, " must have dtype ", x.scalar_type(),
                  " like x, got ", t->scalar_type());
    }
  }
}

const Tensor* opt(const OptionalTensor& t) { return t.has_value() ? &*t : nullptr; }
Tensor f32(const Tensor& t) { return t.to(at::kFloat); }
OptionalTensor f32(const OptionalTensor& t) { return t.has_value() ? OptionalTensor(t->to(at::kFloat)) : t; }

// Every tensor of a tuple of outputs converted to `dtype`.
template <typename... Ts>
std::tuple<Ts...> to_dtype(std::tuple<Ts...> outputs, at::ScalarType dtype) {
  std::apply([dtype](auto&... t) { ((t = t.to(dtype)), ...); }, outputs);
  return outputs;
}

}  // namespace

const CpuKernels& chosen_kernels() {
  static const CpuKernels& chosen = pick();
  return chosen;
}

const char* cpu_isa() { return chosen_kernels().isa; }

LstmOutputs lstm_layer_fwd_cpu(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const Tensor& h0, const Tensor& c0,
                               const Tensor& w_hh, const OptionalTensor& w_hr,
                               const Tensor& batch_sizes, bool reverse, bool training) {
  const auto& run = chosen_kernels().lstm_layer_fwd;
  if (!low_precision(x)) return run(x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr, batch_sizes, reverse, training);
  check_dtypes(x, {{"w_ih", &w_ih}, {"b_ih", opt(b_ih)}, {"b_hh", opt(b_hh)}, {"h0", &h0}, {"c0", &c0},
                   {"w_hh", &w_hh}, {"w_hr", opt(w_hr)}});
  return to_dtype(run(f32(x), f32(w_ih), f32(b_ih), f32(b_hh), f32(h0), f32(c0), f32(w_hh), f32(w_hr),
                      batch_sizes, reverse, training),
                  x.scalar_type());
}
LstmGrads lstm_layer_bwd_cpu(const Tensor& dy, const Tensor& dhn, const Tensor& dcn,
                             const Tensor& saved, const Tensor& x, const Tensor& w_ih,
                             const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                             const Tensor& w_hh, const OptionalTensor& w_hr,
                             const Tensor& batch_sizes, bool reverse, bool need_dx) {
  const auto& run = chosen_kernels().lstm_layer_bwd;
  if (!low_precision(dy)) {
    return run(dy, dhn, dcn, saved, x, w_ih, b_ih, b_hh, w_hh, w_hr, batch_sizes, reverse, need_dx);
  }
  check_dtypes(dy, {{"dhn", &dhn}, {"dcn", &dcn}, {"saved", &saved}, {"x", &x}, {"w_ih", &w_ih},
                    {"b_ih", opt(b_ih)}, {"b_hh", opt(b_hh)}, {"w_hh", &w_hh}, {"w_hr", opt(w_hr)}});
  return to_dtype(run(f32(dy), f32(dhn), f32(dcn), f32(saved), f32(x), f32(w_ih), f32(b_ih), f32(b_hh),
                      f32(w_hh), f32(w_hr), batch_sizes, reverse, need_dx),
                  dy.scalar_type());
}
std::tuple<Tensor, Tensor> lstm_step_fwd_cpu(const Tensor& x, const Tensor& h, const Tensor& c,
                                             const Tensor& w_ih, const Tensor& w_hh,
                                             const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  const auto& run = chosen_kernels().lstm_step_fwd;
  if (!low_precision(x)) return run(x, h, c, w_ih, w_hh, b_ih, b_hh);
  check_dtypes(x, {{"h", &h}, {"c", &c}, {"w_ih", &w_ih}, {"w_hh", &w_hh}, {"b_ih", opt(b_ih)},
                   {"b_hh", opt(b_hh)}});
  return to_dtype(run(f32(x), f32(h), f32(c), f32(w_ih), f32(w_hh), f32(b_ih), f32(b_hh)), x.scalar_type());
}
LayerOutputs gru_layer_fwd_cpu(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const Tensor& h0, const Tensor& w_hh,
                               const Tensor& batch_sizes, bool reverse, bool training) {
  const auto& run = chosen_kernels().gru_layer_fwd;
  if (!low_precision(x)) return run(x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, reverse, training);
  check_dtypes(x, {{"w_ih", &w_ih}, {"b_ih", opt(b_ih)}, {"b_hh", opt(b_hh)}, {"h0", &h0}, {"w_hh", &w_hh}});
  return to_dtype(run(f32(x), f32(w_ih), f32(b_ih), f32(b_hh), f32(h0), f32(w_hh), batch_sizes, reverse,
                      training),
                  x.scalar_type());
}
LayerGrads gru_layer_bwd_cpu(const Tensor& dy, const Tensor& dhn, const Tensor& saved,
                             const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                             const OptionalTensor& b_hh, const Tensor& w_hh,
                             const Tensor& batch_sizes, bool reverse, bool need_dx) {
  const auto& run = chosen_kernels().gru_layer_bwd;
  if (!low_precision(dy)) return run(dy, dhn, saved, x, w_ih, b_ih, b_hh, w_hh, batch_sizes, reverse, need_dx);
  check_dtypes(dy, {{"dhn", &dhn}, {"saved", &saved}, {"x", &x}, {"w_ih", &w_ih}, {"b_ih", opt(b_ih)},
                    {"b_hh", opt(b_hh)}, {"w_hh", &w_hh}});
  return to_dtype(run(f32(dy), f32(dhn), f32(saved), f32(x), f32(w_ih), f32(b_ih), f32(b_hh), f32(w_hh),
                      batch_sizes, reverse, need_dx),
                  dy.scalar_type());
}
Tensor gru_step_fwd_cpu(const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                        const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  const auto& run = chosen_kernels().gru_step_fwd;
  if (!low_precision(x)) return run(x, h, w_ih, w_hh, b_ih, b_hh);
  check_dtypes(x, {{"h", &h}, {"w_ih", &w_ih}, {"w_hh", &w_hh}, {"b_ih", opt(b_ih)}, {"b_hh", opt(b_hh)}});
  return run(f32(x), f32(h), f32(w_ih), f32(w_hh), f32(b_ih), f32(b_hh)).to(x.scalar_type());
}
LayerOutputs rnn_layer_fwd_cpu(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const Tensor& h0, const Tensor& w_hh,
                               const Tensor& batch_sizes, bool relu, bool reverse, bool training) {
  const auto& run = chosen_kernels().rnn_layer_fwd;
  if (!low_precision(x)) return run(x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, relu, reverse, training);
  check_dtypes(x, {{"w_ih", &w_ih}, {"b_ih", opt(b_ih)}, {"b_hh", opt(b_hh)}, {"h0", &h0}, {"w_hh", &w_hh}});
  return to_dtype(run(f32(x), f32(w_ih), f32(b_ih), f32(b_hh), f32(h0), f32(w_hh), batch_sizes, relu,
                      reverse, training),
                  x.scalar_type());
}
LayerGrads rnn_layer_bwd_cpu(const Tensor& dy, const Tensor& dhn, const Tensor& saved,
                             const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                             const OptionalTensor& b_hh, const Tensor& w_hh,
                             const Tensor& batch_sizes, bool relu, bool reverse, bool need_dx) {
  const auto& run = chosen_kernels().rnn_layer_bwd;
  if (!low_precision(dy)) {
    return run(dy, dhn, saved, x, w_ih, b_ih, b_hh, w_hh, batch_sizes, relu, reverse, need_dx);
  }
  check_dtypes(dy, {{"dhn", &dhn}, {"saved", &saved}, {"x", &x}, {"w_ih", &w_ih}, {"b_ih", opt(b_ih)},
                    {"b_hh", opt(b_hh)}, {"w_hh", &w_hh}});
  return to_dtype(run(f32(dy), f32(dhn), f32(saved), f32(x), f32(w_ih), f32(b_ih), f32(b_hh), f32(w_hh),
                      batch_sizes, relu, reverse, need_dx),
                  dy.scalar_type());
}
Tensor rnn_step_fwd_cpu(const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                        const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool relu) {
  const auto& run = chosen_kernels().rnn_step_fwd;
  if (!low_precision(x)) return run(x, h, w_ih, w_hh, b_ih, b_hh, relu);
  check_dtypes(x, {{"h", &h}, {"w_ih", &w_ih}, {"w_hh", &w_hh}, {"b_ih", opt(b_ih)}, {"b_hh", opt(b_hh)}});
  return run(f32(x), f32(h), f32(w_ih), f32(w_hh), f32(b_ih), f32(b_hh), relu).to(x.scalar_type());
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
