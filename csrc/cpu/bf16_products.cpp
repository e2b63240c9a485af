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

// Panels [p0, p1) of the product, split between threads where `parallel`.
template <typename A>
void gemm_as(const A* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
             bool accumulate, int64_t p0, int64_t p1, bool parallel) {
  if (m == 0 || p0 >= p1) return;
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
    const auto run = [&](int64_t first, int64_t last) {
      for (int64_t p = first; p < last; ++p) {
        const int64_t cols = std::min<int64_t>(kPanel, b.n - p * kPanel);
        gemm_panel(a_p, kp, panels + p * kp * kPanel, kp, out_p + p * kPanel, ldo, rows, cols, accumulate);
      }
    };
    if (parallel) {
      at::parallel_for(p0, p1, grain, run);
    } else {
      run(p0, p1);
    }
  }
}

// Mat-vecs: 8 rows of w against RA rows of a at a time, 32 pairs of k per step, each product chain
// in a register of 16 float32 sums, reduced at the end (sums8).

constexpr int kMatvecRows = 8;  // rows of w in a tile: its block of k stays in L1 for all rows of a

// The 16 lanes of each of v[0..7] summed, in lanes 0-7 of the result: pairs of lanes within each
// 128-bit block, then the two halves of the block, then blocks 0+1 and 2+3, then those two. The same
// additions for each v[r], whatever the others are (a tail tile repeats a row).
__m256 sums8(const __m512* v) {
  const auto pairs = [](__m512 x, __m512 y) {  // per block [x0+x2, y0+y2, x1+x3, y1+y3]
    return _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
  };
  const auto quads = [](__m512 x, __m512 y) {  // per block: the 4 rows' partial sums in order
    const __m512d xd = _mm512_castps_pd(x), yd = _mm512_castps_pd(y);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(xd, yd)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(xd, yd)));
  };
  const __m512 r0123 = quads(pairs(v[0], v[1]), pairs(v[2], v[3]));
  const __m512 r4567 = quads(pairs(v[4], v[5]), pairs(v[6], v[7]));
  // Blocks [r0123 0+1, r0123 2+3, r4567 0+1, r4567 2+3], then [all of r0123, all of r4567].
  const __m512 halves = _mm512_add_ps(_mm512_shuffle_f32x4(r0123, r4567, _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_f32x4(r0123, r4567, _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 total = _mm512_add_ps(_mm512_shuffle_f32x4(halves, halves, _MM_SHUFFLE(3, 1, 2, 0)),
                                     _mm512_shuffle_f32x4(halves, halves, _MM_SHUFFLE(2, 0, 3, 1)));
  return _mm512_castps512_ps256(total);
}

// One tile: `rows` <= 8 rows of w (w_rows[r]; the pointers past `rows` repeat a valid row) against RA
// rows of a, rounded and zero-padded to kp32 elements at a stride of kp32. out (RA, rows) at stride ldo.
template <int RA>
void matvec_tile(const uint16_t* const* w_rows, int rows, const uint16_t* a, int64_t kp32, int64_t k,
                 float* out, int64_t ldo, bool accumulate) {
  __m512 acc[RA][kMatvecRows];
  for (int i = 0; i < RA; ++i) {
    for (int r = 0; r < kMatvecRows; ++r) acc[i][r] = _mm512_setzero_ps();
  }
  const auto step = [&](int64_t p, __mmask32 mask) {
    __m512i av[RA];
    for (int i = 0; i < RA; ++i) av[i] = _mm512_loadu_si512(a + i * kp32 + p);
    for (int r = 0; r < kMatvecRows; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mask, w_rows[r] + p);  // zeros past k
      for (int i = 0; i < RA; ++i) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], (__m512bh)wv, (__m512bh)av[i]);
    }
  };
  int64_t p = 0;
  for (; p + 2 * kLanes <= k; p += 2 * kLanes) step(p, ~__mmask32{0});
  if (p < k) step(p, static_cast<__mmask32>((uint64_t{1} << (k - p)) - 1));
  const __mmask8 valid = static_cast<__mmask8>((1u << rows) - 1);
  for (int i = 0; i < RA; ++i) {
    __m256 sums = sums8(acc[i]);
    float* o = out + i * ldo;
    if (accumulate) sums = _mm256_add_ps(sums, _mm256_maskz_loadu_ps(valid, o));
    _mm256_mask_storeu_ps(o, valid, sums);
  }
}

void matvec_rows_impl(const uint16_t* w, int64_t ldw, const float* a, int64_t lda, int64_t m, int64_t k,
                      float* out, int64_t ldo, int64_t begin, int64_t end, bool accumulate) {
  const int64_t kp32 = std::max<int64_t>(1, (k + 2 * kLanes - 1) / (2 * kLanes)) * (2 * kLanes);
  // a rounded a block of rows at a time (16 KiB, or one row where k is longer: one thread's buffer,
  // kept for its next calls).
  const int64_t block = std::clamp<int64_t>((1 << 13) / kp32, 1, 32);
  thread_local std::vector<uint16_t> a_bf16;
  if (static_cast<int64_t>(a_bf16.size()) < block * kp32) a_bf16.resize(block * kp32);
  for (int64_t i0 = 0; i0 < m; i0 += block) {
    const int64_t rows_a = std::min(block, m - i0);
    for (int64_t i = 0; i < rows_a; ++i) round_row(a + (i0 + i) * lda, k, kp32, a_bf16.data() + i * kp32);
    for (int64_t j = begin; j < end; j += kMatvecRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kMatvecRows, end - j));
      const uint16_t* w_rows[kMatvecRows];
      for (int r = 0; r < kMatvecRows; ++r) w_rows[r] = w + (j + std::min(r, rows - 1)) * ldw;
      int64_t i = 0;
      for (; rows_a - i >= 2; i += rows_a - i == 3 ? 3 : 2) {
        float* o = out + (i0 + i) * ldo + j;
        if (rows_a - i == 3) {
          matvec_tile<3>(w_rows, rows, a_bf16.data() + i * kp32, kp32, k, o, ldo, accumulate);
        } else {
          matvec_tile<2>(w_rows, rows, a_bf16.data() + i * kp32, kp32, k, o, ldo, accumulate);
        }
      }
      if (i < rows_a) {
        matvec_tile<1>(w_rows, rows, a_bf16.data() + i * kp32, kp32, k, out + (i0 + i) * ldo + j, ldo,
                       accumulate);
      }
    }
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
  gemm_as(a, lda, b, out, ldo, m, accumulate, 0, b.panels, /*parallel=*/true);
}
void gemm(const c10::BFloat16* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
          bool accumulate) {
  gemm_as(a, lda, b, out, ldo, m, accumulate, 0, b.panels, /*parallel=*/true);
}
void gemm_panels(const float* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
                 bool accumulate, int64_t p0, int64_t p1) {
  gemm_as(a, lda, b, out, ldo, m, accumulate, p0, p1, /*parallel=*/false);
}
void gemm_panels(const c10::BFloat16* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
                 bool accumulate, int64_t p0, int64_t p1) {
  gemm_as(a, lda, b, out, ldo, m, accumulate, p0, p1, /*parallel=*/false);
}

void matvec_rows(const c10::BFloat16* w, int64_t ldw, const float* a, int64_t lda, int64_t m, int64_t k,
                 float* out, int64_t ldo, int64_t begin, int64_t end, bool accumulate) {
  if (m == 0 || begin >= end) return;
  matvec_rows_impl(reinterpret_cast<const uint16_t*>(w), ldw, a, lda, m, k, out, ldo, begin, end, accumulate);
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
void matvec_rows(const c10::BFloat16*, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t, int64_t,
                 int64_t, bool) {
  TORCH_CHECK(false, "no bfloat16 products in this build");
}
void gemm_panels(const float*, int64_t, const PackedWeight&, float*, int64_t, int64_t, bool, int64_t, int64_t) {
  TORCH_CHECK(false, "no bfloat16 products in this build");
}
void gemm_panels(const c10::BFloat16*, int64_t, const PackedWeight&, float*, int64_t, int64_t, bool, int64_t,
                 int64_t) {
  TORCH_CHECK(false, "no bfloat16 products in this build");
}
}  // namespace fastcells::cpu::bf16

#endif
