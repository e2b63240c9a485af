// bf16_backward_gemm.h's choice between MKL's bfloat16 GEMM and ours (and the float16 and float32 ones).
#include "bf16_backward_gemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "bf16_gemm.h"
#include "bf16_products.h"
#include "isa.h"
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
    return !(env && std::string(env) == "aten");
  }();
  return chosen;
}

namespace {

// Whether the CPU is an AMD one of family 0x1A (Zen 5) or later.
bool amd_zen5_or_later() {
#if defined(__x86_64__) && defined(__GNUC__)
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
  char vendor[13] = {};
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  if (std::strcmp(vendor, "AuthenticAMD") != 0 || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const unsigned int base = (eax >> 8) & 0xF, family = base == 0xF ? base + ((eax >> 20) & 0xFF) : base;
  return family >= 0x1A;
#else
  return false;
#endif
}

}  // namespace

bool packed_float_gemm() {
  static const bool chosen = [] {
    const char* env = std::getenv("FASTCELLS_CPU_FLOAT_GEMM");
    const std::string asked = env ? env : "";
    TORCH_CHECK(asked.empty() || asked == "packed" || asked == "aten",
                "FASTCELLS_CPU_FLOAT_GEMM must be packed or aten, not '", asked, "'");
    if (!asked.empty()) return asked == "packed";
    return std::strcmp(chosen_kernels().isa, "avx512") == 0 && amd_zen5_or_later();
  }();
  return chosen;
}

const char* float_gemm_name() { return packed_float_gemm() ? "packed" : "aten"; }

const char* f16_backward_gemm_name() {
  if (!f16_backward_gemm()) return "aten";
  return packed_float_gemm() ? "packed" : "widened";
}

namespace {

// out (m, n) (+)= a (m, k) @ b (k, n) for float16 a and b: blocks of k widened to float32 (exactly) and
// multiplied by at::mm (MKL's float32 GEMM), each block's products added to out; where packed_float_gemm(),
// backward_gemm takes float_gemm.h's GEMM instead, which widens the operands as it packs them. MKL's own
// float16 GEMM (cblas_gemm_f16f16f32), without AVX-512 FP16 on the AMD EPYC, made float16 training calls
// 30-50% slower than float32 copies of the whole operands (LSTM T=50 B=16 H=256: 14.4 against 10.9 ms).
// Blocks of at most ~1 MiB of float32, and at most a quarter of k (the copies of a short sequence's
// operands took such a call to 0.85-1.15 of its float32 twin's peak memory, MKL's GEMM 0.52-0.59), take
// about the copies' time without their memory (blocks of 256 KiB were 10-25% slower: more, smaller GEMM
// calls).
void widened_f16_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  constexpr int64_t kWidenedElements = int64_t{1} << 18;
  const int64_t block =
      std::max<int64_t>(64, std::min(kWidenedElements / std::max<int64_t>(1, m + n), (k + 3) / 4));
  at::Tensor sums = out;  // the same tensor (a handle), writable
  if (k == 0 && !accumulate) sums.zero_();
  for (int64_t k0 = 0; k0 < k; k0 += block) {
    const int64_t kb = std::min(block, k - k0);
    const at::Tensor a_block = a.narrow(1, k0, kb).to(at::kFloat), b_block = b.narrow(0, k0, kb).to(at::kFloat);
    if (k0 == 0 && !accumulate) {
      at::mm_out(sums, a_block, b_block);
    } else {
      sums.addmm_(a_block, b_block);
    }
  }
}

}  // namespace

const char* bf16_backward_gemm_name() {
  switch (bf16_backward_gemm()) {
    case Bf16BackwardGemm::mkl: return "mkl";
    case Bf16BackwardGemm::vdpbf16ps: return "vdpbf16ps";
    default: return "aten";
  }
}

void backward_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  if (a.scalar_type() == at::kFloat) {
    TORCH_CHECK(packed_float_gemm(), "backward_gemm: float32 goes to at::mm in this process");
    return chosen_kernels().float_gemm(a, b, out, accumulate);
  }
  if (a.scalar_type() == at::kHalf) {
    TORCH_CHECK(f16_backward_gemm(), "backward_gemm: no float16 GEMM in this process");
    // Ours widens the operands as it packs them; at::mm takes blocks of them widened.
    if (packed_float_gemm()) return chosen_kernels().float_gemm(a, b, out, accumulate);
    return widened_f16_gemm(a, b, out, accumulate);
  }
  switch (bf16_backward_gemm()) {
    case Bf16BackwardGemm::mkl: return mkl_bf16_gemm(a, b, out, accumulate);
    case Bf16BackwardGemm::vdpbf16ps: return bf16::gemm_matrices(a, b, out, accumulate);
    default:
      TORCH_CHECK(false,
                  "backward_gemm: no bfloat16 GEMM in this process (FASTCELLS_CPU_BF16_GEMM=aten, or none built)");
  }
}

}  // namespace fastcells::cpu
