// MKL's bfloat16 GEMM (mkl_bf16.h), reached through a weak reference: libtorch_cpu, which this extension
// links, exports MKL's CBLAS where torch was built with MKL; elsewhere the reference stays null.
#include "mkl_bf16.h"

#include <algorithm>
#include <cstdint>
#include <limits>

// MKL's declaration (mkl_cblas.h, LP64 interface: MKL_INT is int; the enums are CBLAS's).
extern "C" void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                       const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                                       float* c, int ldc) __attribute__((weak));

namespace fastcells::cpu {
namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS_LAYOUT, CBLAS_TRANSPOSE

// A row-major operand of `rows` x `cols` as CBLAS takes it: the matrix itself, or its transpose's
// storage (a transposed view); a copy where neither has unit stride.
struct Operand {
  at::Tensor data;
  int trans;
  int64_t ld;
};

Operand operand(const at::Tensor& t) {
  const int64_t rows = t.size(0), cols = t.size(1);
  if (t.stride(1) == 1 && t.stride(0) >= std::max<int64_t>(1, cols)) return {t, kNoTrans, t.stride(0)};
  if (t.stride(0) == 1 && t.stride(1) >= std::max<int64_t>(1, rows)) return {t, kTrans, t.stride(1)};
  const at::Tensor c = t.contiguous();
  return {c, kNoTrans, std::max<int64_t>(1, cols)};
}

int checked_int(int64_t v) {
  TORCH_CHECK(v <= std::numeric_limits<int>::max(), "mkl_bf16_gemm: a size of ", v, " is past MKL's 32-bit sizes");
  return static_cast<int>(v);
}

}  // namespace

bool has_mkl_bf16_gemm() {
  return cblas_gemm_bf16bf16f32 != nullptr;
}

void mkl_bf16_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  TORCH_CHECK(has_mkl_bf16_gemm(), "mkl_bf16_gemm: this libtorch has no MKL");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "mkl_bf16_gemm: matrices expected");
  TORCH_CHECK(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 &&
                  out.scalar_type() == at::kFloat && a.is_cpu() && b.is_cpu() && out.is_cpu(),
              "mkl_bf16_gemm: bfloat16 operands and a float32 result on the CPU expected");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_CHECK(b.size(0) == k && out.size(0) == m && out.size(1) == n, "mkl_bf16_gemm: shapes ", a.sizes(), " @ ",
              b.sizes(), " into ", out.sizes());
  TORCH_CHECK(out.stride(1) == 1 || n <= 1, "mkl_bf16_gemm: out needs unit column stride");
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum
    if (!accumulate) out.zero_();
    return;
  }
  const Operand A = operand(a), B = operand(b);
  const int64_t ldc = std::max<int64_t>(n, out.stride(0));
  cblas_gemm_bf16bf16f32(kRowMajor, A.trans, B.trans, checked_int(m), checked_int(n), checked_int(k), 1.0f,
                         reinterpret_cast<const uint16_t*>(A.data.data_ptr<at::BFloat16>()), checked_int(A.ld),
                         reinterpret_cast<const uint16_t*>(B.data.data_ptr<at::BFloat16>()), checked_int(B.ld),
                         accumulate ? 1.0f : 0.0f, out.data_ptr<float>(), checked_int(ldc));
}

}  // namespace fastcells::cpu
