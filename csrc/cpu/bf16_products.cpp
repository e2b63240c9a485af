// The bfloat16 products of bf16_products.h: weight packing and a register-blocked GEMM on VDPBF16PS.
#include "bf16_products.h"
#include "row_tiles.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTCELLS_BF16_PRODUCTS 1
#include <immintrin.h>
#else
#define FASTCELLS_BF16_PRODUCTS 0
#endif

namespace fastcells::cpu::bf16 {
namespace {
thread_local bool products_scope = false;
}  // namespace

bool cpu_has_products() {
#if FASTCELLS_BF16_PRODUCTS
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  }();
  return has;
#else
  return false;
#endif
}

ProductsScope::ProductsScope(bool on) : previous_(products_scope) { products_scope = on; }
ProductsScope::~ProductsScope() { products_scope = previous_; }

bool products_on() { return products_scope && cpu_has_products(); }

}  // namespace fastcells::cpu::bf16

#if FASTCELLS_BF16_PRODUCTS
// Only the code below uses the instructions: the headers above stay baseline (see isa_prelude.h).
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16")

namespace fastcells::cpu::bf16 {
namespace {

constexpr int64_t kLanes = 16;             // float32 sums in one register
constexpr int64_t kPanel = 2 * kLanes;     // columns in a panel: two registers of sums
constexpr int kTileRows = 8;               // 8 rows x 2 registers = 16 sums, + 2 panel loads + 1 broadcast

// n float32 values from src rounded (to nearest even) to bfloat16 in dst, then zeros up to `padded`.
void round_row(const float* src, int64_t n, int64_t padded, uint16_t* dst) {
  int64_t j = 0;
  for (; j < n; j += kLanes) {
    const int64_t left = std::min<int64_t>(kLanes, n - j);
    const __mmask16 mask = static_cast<__mmask16>((1u << left) - 1);
    const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src + j));
    _mm256_mask_storeu_epi16(dst + j, mask, (__m256i)rounded);
  }
  std::fill(dst + n, dst + padded, uint16_t{0});
}

// The same for values in bfloat16 already: copied.
void round_row(const c10::BFloat16* src, int64_t n, int64_t padded, uint16_t* dst) {
  std::memcpy(dst, src, n * sizeof(uint16_t));
  std::fill(dst + n, dst + padded, uint16_t{0});
}

// One tile: R rows of out, `cols` <= kPanel columns, from one panel of kp pair rows; `a` holds R rows
// of kp pairs at a stride of lda pairs.
template <int R>
void gemm_tile(const uint32_t* a, int64_t lda, const uint32_t* panel, int64_t kp, float* out,
               int64_t ldo, int64_t cols, bool accumulate) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t q = 0; q < kp; ++q) {
    const __m512i b0 = _mm512_loadu_si512(panel + q * kPanel);
    const __m512i b1 = _mm512_loadu_si512(panel + q * kPanel + kLanes);
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(a[r * lda + q]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)av, (__m512bh)b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)av, (__m512bh)b1);
    }
  }
  const int64_t cols1 = std::max<int64_t>(0, cols - kLanes);
  const __mmask16 mask0 = static_cast<__mmask16>(cols >= kLanes ? 0xffff : (1u << cols) - 1);
  const __mmask16 mask1 = static_cast<__mmask16>((1u << cols1) - 1);
  for (int r = 0; r < R; ++r) {
    float* o = out + r * ldo;
    if (accumulate) {  // as the float32 GEMM: the products' sum, then the old value added
      acc[r][0] = _mm512_add_ps(acc[r][0], _mm512_maskz_loadu_ps(mask0, o));
      acc[r][1] = _mm512_add_ps(acc[r][1], _mm512_maskz_loadu_ps(mask1, o + kLanes));
    }
    _mm512_mask_storeu_ps(o, mask0, acc[r][0]);
    _mm512_mask_storeu_ps(o + kLanes, mask1, acc[r][1]);
  }
}

void gemm_rows(const uint32_t* a, int64_t lda, const uint32_t* panel, int64_t kp, float* out,
               int64_t ldo, int64_t rows, int64_t cols, bool accumulate) {
  switch (rows) {
    case 8: gemm_tile<8>(a, lda, panel, kp, out, ldo, cols, accumulate); break;
    case 7: gemm_tile<7>(a, lda, panel, kp, out, ldo, cols, accumulate); break;
    case 6: gemm_tile<6>(a, lda, panel, kp, out, ldo, cols, accumulate); break;
    case 5: gemm_tile<5>(a, lda, panel, kp, out, ldo, cols, accumulate); break;
    case 4: gemm_tile<4>(a, lda, panel, kp, out, ldo, cols, accumulate); break;
    case 3: gemm_tile<3>(a, lda, panel, kp, out, ldo, cols, accumulate); break;
    case 2: gemm_tile<2>(a, lda, panel, kp, out, ldo, cols, accumulate); break;
    case 1: gemm_tile<1>(a, lda, panel, kp, out, ldo, cols, accumulate); break;
    default: break;
  }
}

// All m rows against one panel, in tiles of kTileRows (row_tiles.h).
void gemm_panel(const uint32_t* a, int64_t lda, const uint32_t* panel, int64_t kp, float* out,
                int64_t ldo, int64_t m, int64_t cols, bool accumulate) {
  for_row_tiles<kTileRows>(m, [&](int64_t i, int64_t rows) {
    gemm_rows(a + i * lda, lda, panel, kp, out + i * ldo, ldo, rows, cols, accumulate);
  });
}

// pack() for w's element type W: float or c10::BFloat16.
template <typename W>
PackedWeight pack_as(const at::Tensor& w_in, bool transposed) {
  // b = w^T: a row of w is a column of b. Otherwise its rows are b's columns after one transpose.
  const at::Tensor columns = transposed ? w_in.contiguous() : w_in.t().contiguous();  // (n, k)
  PackedWeight packed;
  packed.n = columns.size(0);
  packed.k = columns.size(1);
  packed.panels = (packed.n + kPanel - 1) / kPanel;
  const int64_t kp = (packed.k + 1) / 2;
  packed.storage = at::zeros({packed.panels * kp * kPanel}, w_in.options().dtype(at::kInt));
  const W* src = columns.data_ptr<W>();
  uint32_t* dst = reinterpret_cast<uint32_t*>(packed.storage.data_ptr<int32_t>());
  const int64_t n = packed.n, k = packed.k;
  // Per panel: its columns rounded into `pairs` (one row of kp pairs each, read along w's rows), then
  // written out a packed row at a time (32 consecutive pairs), not one scattered pair per cache line.
  at::parallel_for(0, packed.panels, std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, kp * kPanel)),
                   [&](int64_t p0, int64_t p1) {
    std::vector<uint32_t> pairs(kPanel * kp);
    for (int64_t panel = p0; panel < p1; ++panel) {
      const int64_t cols = std::min<int64_t>(kPanel, n - panel * kPanel);
      for (int64_t c = 0; c < cols; ++c)
        round_row(src + (panel * kPanel + c) * k, k, 2 * kp, reinterpret_cast<uint16_t*>(&pairs[c * kp]));
      uint32_t* out = dst + panel * kp * kPanel;
      for (int64_t q = 0; q < kp; ++q) {
        for (int64_t c = 0; c < cols; ++c) out[q * kPanel + c] = pairs[c * kp + q];
      }
    }
  });
  return packed;
}

template <typename A>
void gemm_as(const A* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
             bool accumulate) {
  if (m == 0 || b.n == 0) return;
  const int64_t kp = (b.k + 1) / 2;
  const uint32_t* panels = reinterpret_cast<const uint32_t*>(b.storage.data_ptr<int32_t>());
  // A block of a's rows at a time (all of a step's rows but for groups of more than 128), rounded once
  // before its panels are split between threads, so that each panel reads the block from the core's
  // L2 rather than all of a from memory. One buffer per calling
  // thread: row groups (row_groups.h) call this from several threads at once.
  constexpr int64_t kRowBlock = 128;
  thread_local std::vector<uint32_t> a_pairs;
  const int64_t block_rows = std::min(m, kRowBlock);
  if (static_cast<int64_t>(a_pairs.size()) < block_rows * kp) a_pairs.resize(block_rows * kp);
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, block_rows * b.k * kPanel));
  for (int64_t i0 = 0; i0 < m; i0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, m - i0);
    for (int64_t i = 0; i < rows; ++i)
      round_row(a + (i0 + i) * lda, b.k, 2 * kp, reinterpret_cast<uint16_t*>(a_pairs.data() + i * kp));
    const uint32_t* a_p = a_pairs.data();
    float* out_p = out + i0 * ldo;
    at::parallel_for(0, b.panels, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t cols = std::min<int64_t>(kPanel, b.n - p * kPanel);
        gemm_panel(a_p, kp, panels + p * kp * kPanel, kp, out_p + p * kPanel, ldo, rows, cols, accumulate);
      }
    });
  }
}

}  // namespace

PackedWeight pack(const at::Tensor& w, bool transposed) {
  TORCH_CHECK(w.dim() == 2, "bf16::pack takes a matrix");
  if (w.scalar_type() == at::kBFloat16) return pack_as<c10::BFloat16>(w, transposed);
  TORCH_CHECK(w.scalar_type() == at::kFloat, "bf16::pack takes a float32 or bfloat16 matrix");
  return pack_as<float>(w, transposed);
}

void gemm(const float* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
          bool accumulate) {
  gemm_as(a, lda, b, out, ldo, m, accumulate);
}
void gemm(const c10::BFloat16* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
          bool accumulate) {
  gemm_as(a, lda, b, out, ldo, m, accumulate);
}

}  // namespace fastcells::cpu::bf16

#else  // no x86-64: cpu_has_products() is false and these are never called

namespace fastcells::cpu::bf16 {
PackedWeight pack(const at::Tensor&, bool) { TORCH_CHECK(false, "no bfloat16 products in this build"); }
void gemm(const float*, int64_t, const PackedWeight&, float*, int64_t, int64_t, bool) {
  TORCH_CHECK(false, "no bfloat16 products in this build");
}
void gemm(const c10::BFloat16*, int64_t, const PackedWeight&, float*, int64_t, int64_t, bool) {
  TORCH_CHECK(false, "no bfloat16 products in this build");
}
}  // namespace fastcells::cpu::bf16

#endif
