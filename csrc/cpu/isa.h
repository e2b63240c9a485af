// The CPU kernels are compiled once per instruction set, each copy in its own namespace
// fastcells::cpu::<isa> (isa_baseline.cpp, isa_avx2.cpp, isa_avx512.cpp include kernels.inc under a
// `#pragma GCC target`), and register_cpu.cpp runs the best copy the running CPU supports. So one
// build runs at full speed on any x86-64 CPU, where `-march=native` tied a build to the machine that
// made it.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "ops_cpu.h"

namespace fastcells::cpu {

// The CPU ops of one copy (signatures as ops_cpu.h's).
struct CpuKernels {
  const char* isa;
  bool bf16_products;  // whether this copy multiplies bfloat16 layers in bfloat16 (bf16_products.h)
  decltype(&lstm_layer_fwd_cpu) lstm_layer_fwd;
  decltype(&lstm_layer_bwd_cpu) lstm_layer_bwd;
  decltype(&lstm_step_fwd_cpu) lstm_step_fwd;
  decltype(&gru_layer_fwd_cpu) gru_layer_fwd;
  decltype(&gru_layer_bwd_cpu) gru_layer_bwd;
  decltype(&gru_step_fwd_cpu) gru_step_fwd;
  decltype(&rnn_layer_fwd_cpu) rnn_layer_fwd;
  decltype(&rnn_layer_bwd_cpu) rnn_layer_bwd;
  decltype(&rnn_step_fwd_cpu) rnn_step_fwd;
  // float_gemm.h's GEMM (bf16_backward_gemm.h's backward_gemm for float32)
  void (*float_gemm)(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate);
};

namespace baseline { extern const CpuKernels kernels; }
namespace avx2 { extern const CpuKernels kernels; }
namespace avx512 { extern const CpuKernels kernels; }

// The copy this process runs: the best the CPU supports, or FASTCELLS_CPU_ISA (baseline, avx2,
// avx512) where set; read once. FASTCELLS_ISA_AVX2 and FASTCELLS_ISA_AVX512: whether a copy may use
// those instructions (a `#pragma GCC target` does not define __AVX2__ or __AVX512F__).
const CpuKernels& chosen_kernels();

}  // namespace fastcells::cpu
