// A bfloat16 GEMM with float32 sums on VDPBF16PS, for the backward of bfloat16 layers (their weight
// gradients and dx: layers.h's weight_grad_into and dx_product), on CPUs where MKL's bfloat16 GEMM is slow:
// on an AMD EPYC (Zen 4, AVX-512 BF16) MKL's ran at its float32 GEMM's speed (176 GFLOP/s on 2 cores,
// m=1024 n=256 k=800), oneDNN's at::mm at 2.4 times that, but rounding its result to bfloat16 and copying
// both operands first. This one takes the operands as they lie (either may be a transposed view, as
// dg.t() is) and packs k-blocks of them as it goes.
#pragma once

#include <ATen/ATen.h>

namespace fastcells::cpu::bf16 {

// out (m, n) = a (m, k) @ b (k, n), or out += it where `accumulate`: a and b bfloat16 CPU matrices,
// each with unit stride in one of its dimensions (else copied), out float32 with unit column stride, or
// bfloat16 (written, not added to: each float32 sum rounded once into it, no float32 copy of out made).
// Each output element is one chain of float32 additions of pair products in k order, begun from out's
// value where `accumulate`: the result does not depend on the number of threads. Scratch: a fixed 48 KiB
// per thread (k-blocks of 64 rows of a and of 32 columns of b), 32 more for a bfloat16 out (the sums of
// 64 x 128 of it), none per call but where a or b has unit stride in neither dimension (a contiguous
// copy). Requires cpu_has_products().
void gemm_matrices(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate);

}  // namespace fastcells::cpu::bf16
