// The register-blocked VDPBF16PS kernel of the bfloat16 products (and the rounding of float32 rows to
// bfloat16 beside it): a tile of up to kTileRows rows of a against one panel of kPanel columns of b,
// both as bfloat16 pairs (32 bits: elements 2q and 2q + 1 of k). Shared by bf16_products.cpp (the
// forward's packed weights) and bf16_gemm.cpp (the backward's GEMMs), and included by them only after
// their `#pragma GCC target` enables AVX-512 BF16: hence the anonymous namespace, so that no copy of
// these functions is shared with code built for another target.
#pragma once

#include <immintrin.h>

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "row_tiles.h"

namespace fastcells::cpu::bf16 {
namespace {

constexpr int64_t kLanes = 16;          // float32 sums in one register
constexpr int64_t kPanel = 2 * kLanes;  // columns in a panel: two registers of sums
constexpr int kTileRows = 8;            // 8 rows x 2 registers = 16 sums, + 2 panel loads + 1 broadcast

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

// What a tile does with the values out holds: overwrites them; adds them after the products are summed
// (as the float32 GEMM adds them); or begins each sum with them, so that a sum over k split into blocks
// (bf16_gemm.cpp) is one chain of additions, as if it had not been split.
enum class Into { write, add_after, continue_from };

// One tile: R rows of out, `cols` <= kPanel columns, from one panel of kp pair rows. Pair q of the
// tile's row r is a[r * a_row + q * a_pair]: rows of pairs (a_pair 1), or pair rows (a_row 1).
template <int R>
void gemm_tile(const uint32_t* a, int64_t a_row, int64_t a_pair, const uint32_t* panel, int64_t kp, float* out,
               int64_t ldo, int64_t cols, Into into) {
  const int64_t cols1 = std::max<int64_t>(0, cols - kLanes);
  const __mmask16 mask0 = static_cast<__mmask16>(cols >= kLanes ? 0xffff : (1u << cols) - 1);
  const __mmask16 mask1 = static_cast<__mmask16>((1u << cols1) - 1);
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) {
    if (into == Into::continue_from) {
      acc[r][0] = _mm512_maskz_loadu_ps(mask0, out + r * ldo);
      acc[r][1] = _mm512_maskz_loadu_ps(mask1, out + r * ldo + kLanes);
    } else {
      acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
  }
  for (int64_t q = 0; q < kp; ++q) {
    const __m512i b0 = _mm512_loadu_si512(panel + q * kPanel);
    const __m512i b1 = _mm512_loadu_si512(panel + q * kPanel + kLanes);
    const uint32_t* aq = a + q * a_pair;
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(aq[r * a_row]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)av, (__m512bh)b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)av, (__m512bh)b1);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* o = out + r * ldo;
    if (into == Into::add_after) {
      acc[r][0] = _mm512_add_ps(acc[r][0], _mm512_maskz_loadu_ps(mask0, o));
      acc[r][1] = _mm512_add_ps(acc[r][1], _mm512_maskz_loadu_ps(mask1, o + kLanes));
    }
    _mm512_mask_storeu_ps(o, mask0, acc[r][0]);
    _mm512_mask_storeu_ps(o + kLanes, mask1, acc[r][1]);
  }
}

void gemm_rows(const uint32_t* a, int64_t a_row, int64_t a_pair, const uint32_t* panel, int64_t kp, float* out,
               int64_t ldo, int64_t rows, int64_t cols, Into into) {
  switch (rows) {
    case 8: gemm_tile<8>(a, a_row, a_pair, panel, kp, out, ldo, cols, into); break;
    case 7: gemm_tile<7>(a, a_row, a_pair, panel, kp, out, ldo, cols, into); break;
    case 6: gemm_tile<6>(a, a_row, a_pair, panel, kp, out, ldo, cols, into); break;
    case 5: gemm_tile<5>(a, a_row, a_pair, panel, kp, out, ldo, cols, into); break;
    case 4: gemm_tile<4>(a, a_row, a_pair, panel, kp, out, ldo, cols, into); break;
    case 3: gemm_tile<3>(a, a_row, a_pair, panel, kp, out, ldo, cols, into); break;
    case 2: gemm_tile<2>(a, a_row, a_pair, panel, kp, out, ldo, cols, into); break;
    case 1: gemm_tile<1>(a, a_row, a_pair, panel, kp, out, ldo, cols, into); break;
    default: break;
  }
}

// All m rows against one panel, in tiles of kTileRows (row_tiles.h).
void gemm_panel(const uint32_t* a, int64_t a_row, int64_t a_pair, const uint32_t* panel, int64_t kp, float* out,
                int64_t ldo, int64_t m, int64_t cols, Into into) {
  for_row_tiles<kTileRows>(m, [&](int64_t i, int64_t rows) {
    gemm_rows(a + i * a_row, a_row, a_pair, panel, kp, out + i * ldo, ldo, rows, cols, into);
  });
}

}  // namespace
}  // namespace fastcells::cpu::bf16
