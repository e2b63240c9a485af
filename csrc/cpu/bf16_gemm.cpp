// bf16_gemm.h's GEMM: (blocks of a's rows) x (groups of b's panels) split between threads, each job
// running over k-blocks: it pairs up its rows of a and each panel of b for the block, then runs
// bf16_tiles.h's kernel, which carries every sum on from the block before (in out, or for a bfloat16 out
// in the thread's float32 sums of a few panels, rounded into out after the last block).
#include "bf16_gemm.h"
#include "bf16_products.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16")
#include "bf16_tiles.h"

namespace fastcells::cpu::bf16 {
namespace {

// k-blocks of 128 pairs: a panel's block (16 KiB) and a tile's rows of a (4 KiB) stay in a 32 KiB L1;
// each block after the first reads and writes out once more.
constexpr int64_t kBlockPairs = 128;
constexpr int64_t kRowBlock = 64;  // rows of a per job
constexpr int64_t kSumsPanels = 4;  // panels of a bfloat16 result summed at once (32 KiB of float32 sums)

// rows x cols float32 sums (ld apart) rounded to nearest even into bfloat16 rows (ldo apart).
void round_rows(const float* sums, int64_t ld, int64_t rows, int64_t cols, uint16_t* out, int64_t ldo) {
  for (int64_t i = 0; i < rows; ++i) round_row(sums + i * ld, cols, cols, out + i * ldo);
}

// A bfloat16 matrix operand as pairs along k: `k_major` where k runs along its storage's rows (element
// (kk, j) at data[kk * ld + j]: a pair interleaves two rows), else along each row (data[j * ld + kk]: a
// pair is two neighbours). j indexes the other dimension: a's rows, b's columns.
struct PairSource {
  const uint16_t* data;
  int64_t ld, k;
  bool k_major;
};

// `t` (rows, cols), whose k is dimension k_dim (0 for b, 1 for a), with `keep` holding a copy where
// neither dimension has unit stride. Either reading is exact where its dimension has unit stride.
PairSource pair_source(const at::Tensor& t, int k_dim, at::Tensor& keep) {
  keep = (t.stride(0) == 1 || t.stride(1) == 1) ? t : t.contiguous();
  const auto* data = reinterpret_cast<const uint16_t*>(keep.data_ptr<at::BFloat16>());
  const int other = 1 - k_dim;
  const bool k_major = keep.stride(other) == 1;
  return {data, k_major ? keep.stride(k_dim) : keep.stride(other), keep.size(k_dim), k_major};
}

// Pairs [q0, q0 + pairs) of the source's entries j in [j0, j0 + width) into dst: pair q of entry j at
// dst[q * q_stride + (j - j0) * j_stride]; zero past k. From k-major storage j_stride must be 1 (the
// pairs of 16 entries are stored at once).
void fill_pairs(const PairSource& s, int64_t q0, int64_t pairs, int64_t j0, int64_t width, uint32_t* dst,
                int64_t q_stride, int64_t j_stride) {
  if (s.k_major) {
    TORCH_CHECK(j_stride == 1, "fill_pairs: k-major pairs are stored 16 entries at a time");
    for (int64_t q = 0; q < pairs; ++q) {
      const int64_t even = 2 * (q0 + q);
      const bool odd = even + 1 < s.k;
      const uint16_t* e = s.data + even * s.ld + j0;
      for (int64_t j = 0; j < width; j += 16) {
        const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(16, width - j)) - 1);
        const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, e + j));
        const __m512i hi =
            odd ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, e + s.ld + j)) : _mm512_setzero_si512();
        _mm512_mask_storeu_epi32(dst + q * q_stride + j, mask, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
    return;
  }
  const int64_t whole = std::clamp<int64_t>(s.k / 2 - q0, 0, pairs);  // pairs with both halves in k
  for (int64_t j = 0; j < width; ++j) {  // along entry j's row: its pairs are 32-bit neighbours
    const uint16_t* row = s.data + (j0 + j) * s.ld + 2 * q0;
    uint32_t* d = dst + j * j_stride;
    if (q_stride == 1) {
      std::memcpy(d, row, whole * sizeof(uint32_t));
    } else {
      for (int64_t q = 0; q < whole; ++q) d[q * q_stride] = row[2 * q] | uint32_t{row[2 * q + 1]} << 16;
    }
    if (whole < pairs) d[whole * q_stride] = row[2 * whole];  // k odd: the last pair's second half is zero
  }
}

}  // namespace

void gemm_matrices(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  TORCH_CHECK(cpu_has_products(), "bf16::gemm_matrices: this CPU has no AVX-512 BF16");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "bf16::gemm_matrices: matrices expected");
  const bool rounded = out.scalar_type() == at::kBFloat16;  // the float32 sums rounded into out
  TORCH_CHECK(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 &&
                  (out.scalar_type() == at::kFloat || rounded) && a.is_cpu() && b.is_cpu() && out.is_cpu(),
              "bf16::gemm_matrices: bfloat16 operands and a float32 or bfloat16 result on the CPU expected");
  TORCH_CHECK(!(rounded && accumulate), "bf16::gemm_matrices: a bfloat16 result is written, not added to");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_CHECK(b.size(0) == k && out.size(0) == m && out.size(1) == n, "bf16::gemm_matrices: shapes ", a.sizes(),
              " @ ", b.sizes(), " into ", out.sizes());
  TORCH_CHECK(out.stride(1) == 1 || n <= 1, "bf16::gemm_matrices: out needs unit column stride");
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum
    if (!accumulate) out.zero_();
    return;
  }
  at::Tensor a_kept, b_kept;
  const PairSource as = pair_source(a, 1, a_kept), bs = pair_source(b, 0, b_kept);
  const int64_t kp = (k + 1) / 2, panels = (n + kPanel - 1) / kPanel, ldo = std::max<int64_t>(n, out.stride(0));
  float* o = rounded ? nullptr : out.data_ptr<float>();
  uint16_t* o16 = rounded ? reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()) : nullptr;
  // a's rows of a job: pair rows (a_row 1) from k-major storage (a = dg.t()), else rows of pairs.
  const int64_t a_row = as.k_major ? 1 : kBlockPairs, a_pair = as.k_major ? kRowBlock : 1;
  const int64_t row_blocks = (m + kRowBlock - 1) / kRowBlock;
  // Enough jobs for every thread where there are few blocks of rows (dx of a short sequence): the
  // panels then split into groups, each job pairing up its rows again.
  const int64_t groups = std::clamp<int64_t>((2 * at::get_num_threads() + row_blocks - 1) / row_blocks, 1, panels);
  const int64_t group_panels = (panels + groups - 1) / groups;
  at::parallel_for(0, row_blocks * groups, 1, [&](int64_t job0, int64_t job1) {
    // Per thread: a k-block of its rows of a, and of one panel of b (paired up again for each block of
    // rows: 2-3% of the products' time, for a scratch of fixed size rather than all of b's pairs); for a
    // bfloat16 result, the float32 sums of up to kSumsPanels panels, rounded into out once complete.
    thread_local std::vector<uint32_t> a_pairs, b_panel;
    thread_local std::vector<float> sums;
    a_pairs.resize(std::max<size_t>(a_pairs.size(), kRowBlock * kBlockPairs));
    b_panel.resize(std::max<size_t>(b_panel.size(), kBlockPairs * kPanel));
    if (rounded) sums.resize(std::max<size_t>(sums.size(), kRowBlock * kSumsPanels * kPanel));
    for (int64_t job = job0; job < job1; ++job) {
      const int64_t r0 = job / groups * kRowBlock, rows = std::min(kRowBlock, m - r0);
      const int64_t first = job % groups * group_panels, last = std::min(panels, first + group_panels);
      // The panels a pass over k takes: all of the job's into a float32 out, kSumsPanels into the sums.
      for (int64_t g0 = first; g0 < last; g0 += rounded ? kSumsPanels : last - first) {
        const int64_t g1 = rounded ? std::min(last, g0 + kSumsPanels) : last;
        float* dst = rounded ? sums.data() : o + r0 * ldo + g0 * kPanel;
        const int64_t ldd = rounded ? kSumsPanels * kPanel : ldo;
        for (int64_t q0 = 0; q0 < kp; q0 += kBlockPairs) {
          const int64_t pairs = std::min(kBlockPairs, kp - q0);
          fill_pairs(as, q0, pairs, r0, rows, a_pairs.data(), a_pair, a_row);
          for (int64_t p = g0; p < g1; ++p) {
            const int64_t cols = std::min<int64_t>(kPanel, n - p * kPanel);
            if (cols < kPanel) std::fill(b_panel.begin(), b_panel.begin() + pairs * kPanel, 0u);
            fill_pairs(bs, q0, pairs, p * kPanel, cols, b_panel.data(), kPanel, 1);
            gemm_panel(a_pairs.data(), a_row, a_pair, b_panel.data(), pairs, dst + (p - g0) * kPanel, ldd, rows,
                       cols, (q0 > 0 || accumulate) ? Into::continue_from : Into::write);
          }
        }
        if (rounded) {
          round_rows(dst, ldd, rows, std::min(n, g1 * kPanel) - g0 * kPanel, o16 + r0 * ldo + g0 * kPanel, ldo);
        }
      }
    }
  });
}

}  // namespace fastcells::cpu::bf16

#else  // no x86-64: cpu_has_products() is false and this is never called

namespace fastcells::cpu::bf16 {
void gemm_matrices(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool) {
  TORCH_CHECK(false, "no bfloat16 products in this build");
}
}  // namespace fastcells::cpu::bf16

#endif
