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
#include <type_traits>

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

// One tile: R rows of out, `cols` <= NP * kPanel columns, from NP panels of kp pair rows, panel_stride
// elements apart (their columns side by side in out). Pair q of the tile's row r is
// a[r * a_row + q * a_pair]: rows of pairs (a_pair 1), or pair rows (a_row 1). Each sum is one chain
// over q whatever R and NP: NP > 1 only gives a tile of few rows enough independent chains to hide
// VDPBF16PS's latency.
template <int R, int NP = 1>
void gemm_tile(const uint32_t* a, int64_t a_row, int64_t a_pair, const uint32_t* panel, int64_t kp, float* out,
               int64_t ldo, int64_t cols, Into into, int64_t panel_stride = 0) {
  constexpr int V = 2 * NP;  // registers of sums a row
  __mmask16 mask[V];
  for (int v = 0; v < V; ++v) {
    const int64_t left = std::clamp<int64_t>(cols - v * kLanes, 0, kLanes);
    mask[v] = static_cast<__mmask16>(left == kLanes ? 0xffff : (1u << left) - 1);
  }
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      acc[r][v] = into == Into::continue_from ? _mm512_maskz_loadu_ps(mask[v], out + r * ldo + v * kLanes)
                                              : _mm512_setzero_ps();
    }
  }
  // Each pair of b loaded once and used for all R rows at once: in the other order (b's registers
  // loaded first, then row by row) GCC 12 loaded them again for every row of a 3-row tile (12 loads to
  // 12 VDPBF16PS: 62 against 108 GMAC/s on a Zen 4 core).
  for (int64_t q = 0; q < kp; ++q) {
    const uint32_t* aq = a + q * a_pair;
    __m512i av[R];
    for (int r = 0; r < R; ++r) av[r] = _mm512_set1_epi32(static_cast<int>(aq[r * a_row]));
    for (int v = 0; v < V; ++v) {
      const __m512i bv = _mm512_loadu_si512(panel + v / 2 * panel_stride + q * kPanel + v % 2 * kLanes);
      for (int r = 0; r < R; ++r) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av[r], (__m512bh)bv);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* o = out + r * ldo;
    for (int v = 0; v < V; ++v) {
      if (into == Into::add_after) acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(mask[v], o + v * kLanes));
      _mm512_mask_storeu_ps(o + v * kLanes, mask[v], acc[r][v]);
    }
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

// rows <= 3 rows of a against `count` panels (panel_stride apart, `cols` columns in all), several panels
// a tile: 4 at 1 or 2 rows, 2 at 3 (8-16 chains of sums; one panel's 2-6 left VDPBF16PS waiting on its
// latency: one Zen 4 core, k = 256, 1 row 46 against 54 GMAC/s, 2 rows 82 against 99, 3 rows 81
// against 108).
template <int R, int NP>
void few_rows_panels(const uint32_t* a, int64_t a_row, int64_t a_pair, const uint32_t* panels, int64_t panel_stride,
                     int64_t kp, float* out, int64_t ldo, int64_t count, int64_t cols, Into into) {
  int64_t p = 0;
  for (; p + NP <= count; p += NP) {
    gemm_tile<R, NP>(a, a_row, a_pair, panels + p * panel_stride, kp, out + p * kPanel, ldo,
                     std::min<int64_t>(NP * kPanel, cols - p * kPanel), into, panel_stride);
  }
  const auto tail = [&](auto np) {
    gemm_tile<R, decltype(np)::value>(a, a_row, a_pair, panels + p * panel_stride, kp, out + p * kPanel, ldo,
                                      cols - p * kPanel, into, panel_stride);
  };
  switch (count - p) {
    case 3: tail(std::integral_constant<int, 3>{}); break;
    case 2: tail(std::integral_constant<int, 2>{}); break;
    case 1: tail(std::integral_constant<int, 1>{}); break;
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

// `rows` rows of a against `count` panels, panel_stride apart, `cols` columns in all: panel by panel in
// tiles of kTileRows rows (gemm_panel), or for at most 3 rows several panels a tile.
inline void gemm_panels_of(const uint32_t* a, int64_t a_row, int64_t a_pair, const uint32_t* panels,
                           int64_t panel_stride, int64_t kp, float* out, int64_t ldo, int64_t rows, int64_t count,
                           int64_t cols, Into into) {
  switch (rows) {
    case 1: return few_rows_panels<1, 4>(a, a_row, a_pair, panels, panel_stride, kp, out, ldo, count, cols, into);
    case 2: return few_rows_panels<2, 4>(a, a_row, a_pair, panels, panel_stride, kp, out, ldo, count, cols, into);
    case 3: return few_rows_panels<3, 2>(a, a_row, a_pair, panels, panel_stride, kp, out, ldo, count, cols, into);
    default: break;
  }
  for (int64_t p = 0; p < count; ++p) {
    gemm_panel(a, a_row, a_pair, panels + p * panel_stride, kp, out + p * kPanel, ldo, rows,
               std::min<int64_t>(kPanel, cols - p * kPanel), into);
  }
}

}  // namespace
}  // namespace fastcells::cpu::bf16
