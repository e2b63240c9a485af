// bf16_backward_gemm.h's choice between MKL's bfloat16 GEMM and ours (and MKL's float16 one).
#include "bf16_backward_gemm.h"

#include <cstdlib>
#include <string>

#include "bf16_gemm.h"
#include "bf16_products.h"
#include "mkl_bf16.h"
#include "ops_cpu.h"

namespace fastcells::cpu {

Bf16BackwardGemm bf16_backward_gemm() {
  static const Bf16BackwardGemm choice = [] {
    const bool mkl = has_mkl_bf16_gemm(), ours = cpu_bf16_products();  // not under FASTCELLS_CPU_ISA=avx2
    const char* env = std::getenv("FASTCELLS_CPU_BF16_GEMM");
    const std::string asked = env ? env : "";
    if (asked == "aten") return Bf16BackwardGemm::none;
    if (asked == "mkl" && mkl) return Bf16BackwardGemm::mkl;
    if (asked == "vdpbf16ps" && ours) return Bf16BackwardGemm::vdpbf16ps;
    TORCH_CHECK(asked.empty() || asked == "mkl" || asked == "vdpbf16ps",
                "FASTCELLS_CPU_BF16_GEMM must be mkl, vdpbf16ps or aten, not '", asked, "'");
    if (ours && !bf16::cpu_has_amx()) return Bf16BackwardGemm::vdpbf16ps;
    return mkl ? Bf16BackwardGemm::mkl : Bf16BackwardGemm::none;
  }();
  return choice;
}

bool f16_backward_gemm() {
  static const bool chosen = [] {
    const char* env = std::getenv("FASTCELLS_CPU_BF16_GEMM");
    return has_mkl_f16_gemm() && !(env && std::string(env) == "aten");
  }();
  return chosen;
}

const char* bf16_backward_gemm_name() {
  switch (bf16_backward_gemm()) {
    case Bf16BackwardGemm::mkl: return "mkl";
    case Bf16BackwardGemm::vdpbf16ps: return "vdpbf16ps";
    default: return "aten";
  }
}

void bf16_backward_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  if (a.scalar_type() == at::kHalf) {
    TORCH_CHECK(f16_backward_gemm(), "bf16_backward_gemm: no float16 GEMM in this process");
    return mkl_bf16_gemm(a, b, out, accumulate);
  }
  switch (bf16_backward_gemm()) {
    case Bf16BackwardGemm::mkl: return mkl_bf16_gemm(a, b, out, accumulate);
    case Bf16BackwardGemm::vdpbf16ps: return bf16::gemm_matrices(a, b, out, accumulate);
    default:
      TORCH_CHECK(false, "bf16_backward_gemm: none in this process (FASTCELLS_CPU_BF16_GEMM=aten, or none built)");
  }
}

}  // namespace fastcells::cpu
