// MKL's bfloat16 GEMM with float32 sums and a float32 result, where the libtorch this extension runs
// on carries MKL (the x86 builds): one of the GEMMs bf16_backward_gemm.h chooses between for the weight
// and input gradients of bfloat16 layers. Found at load time, not required.
#pragma once

#include <ATen/ATen.h>

namespace fastcells::cpu {

// Whether the running libtorch exports MKL's cblas_gemm_bf16bf16f32.
bool has_mkl_bf16_gemm();

// out (m, n) = a (m, k) @ b (k, n), or out += it where `accumulate`: a and b bfloat16 CPU matrices (either
// may be a transposed view, as dg.t() is), out float32 with unit column stride (a block of rows of a
// larger result will do). Each output is summed in float32 and rounded nowhere: at::mm of bfloat16
// operands (oneDNN's) rounds its result to bfloat16, and first copies both operands into its own
// layouts (a GRU's dw_ih at T=50 B=16 H=128: 1 MiB of scratch for a 96 KiB result, and 145 against
// MKL's 71 µs on the Intel Xeon). Requires has_mkl_bf16_gemm().
void mkl_bf16_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate);

}  // namespace fastcells::cpu
