// The GEMM that multiplies the bfloat16 operands of a bfloat16 layer's backward (its weight gradients
// and dx: layers.h's weight_grad_into and dx_product) into float32 sums, rounded nowhere: MKL's
// (mkl_bf16.h) where the CPU has AMX tiles, which MKL uses; ours on VDPBF16PS (bf16_gemm.h) where the
// kernels have the bfloat16 products without them (MKL's bfloat16 kernels ran at float32 speed on an
// AMD EPYC, a third of ours); MKL's again on CPUs with neither (or under FASTCELLS_CPU_ISA=avx2), where
// libtorch has it. Otherwise none, and the backward takes at::mm (oneDNN's, which copies both operands
// and rounds its result to bfloat16; without the products, float32 copies: gemm_cpu.h's gemm_operands).
// A float16 layer's backward multiplies its operands widened to float32 (f16_backward_gemm): as our packed
// GEMM packs them where packed_float_gemm(), else blocks of them for at::mm.
// A float32 layer's backward takes at::mm (MKL's SGEMM), except on CPUs where our packed GEMM is faster
// (packed_float_gemm).
#pragma once

#include <ATen/ATen.h>

namespace fastcells::cpu {

enum class Bf16BackwardGemm { none, mkl, vdpbf16ps };

// The choice above, or FASTCELLS_CPU_BF16_GEMM's (mkl, vdpbf16ps, or aten for none) where the CPU and
// libtorch allow it. Read once.
Bf16BackwardGemm bf16_backward_gemm();

// Its name, as FASTCELLS_CPU_BF16_GEMM spells it: "mkl", "vdpbf16ps" or "aten".
const char* bf16_backward_gemm_name();

// Whether float16 operands go to backward_gemm below (float32 sums: our packed GEMM, widening them as it
// packs them, where packed_float_gemm(), else blocks of k widened to float32 for at::mm), unless
// FASTCELLS_CPU_BF16_GEMM=aten, which sends both dtypes to at::mm (float16: on float32 copies of the
// whole operands).
bool f16_backward_gemm();

// Its name: "packed" (float_gemm.h's, where packed_float_gemm()), "widened" (blocks for at::mm) or "aten".
const char* f16_backward_gemm_name();

// Whether float32 operands go to backward_gemm below (float_gemm.h, in the copy of the kernels this
// process runs) rather than at::mm, and the input projections of small batches made up front
// (step_input.h) to float_gemm.h too: on AMD CPUs from Zen 5 on (family 0x1A) with the AVX-512 copy, whose
// two 512-bit multiply-add pipes MKL leaves half idle (it takes its AVX2 kernels on AMD: ~200 GFLOP/s on
// 2 Zen 5 cores, ours ~430, the peak 519); elsewhere at::mm, which ran faster than our per-step GEMM on
// a Zen 4 (122 against ~60 GFLOP/s at 6400 x 512 x 2048) and takes AVX-512 kernels on Intel CPUs. A choice
// of the CPU alone, never timed: results must not depend on a run's timings. FASTCELLS_CPU_FLOAT_GEMM
// (packed or aten) overrides it. Read once.
bool packed_float_gemm();

// Its name, as FASTCELLS_CPU_FLOAT_GEMM spells it: "packed" or "aten".
const char* float_gemm_name();

// out (m, n) = a (m, k) @ b (k, n), or out += it where `accumulate`, on the chosen GEMM of a's dtype: a
// and b CPU matrices (either may be a transposed view), out float32 with unit column stride and no
// overlap with them. bfloat16 a and b on bf16_backward_gemm() (not none), out on ours (vdpbf16ps) also
// bfloat16, written with each float32 sum rounded once (bf16_gemm.h); float16 ones where
// f16_backward_gemm(); float32 ones where packed_float_gemm().
void backward_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate);

}  // namespace fastcells::cpu
