// How a register-blocked GEMM (gemm_cpu.h, bf16_products.cpp) splits m rows into tiles of at most
// kTile rows. A tile of 1-3 rows has too few independent sums to hide the multiply-add's latency, so
// such a remainder is merged with the last full tile and the two split evenly (kTile = 6, m = 32:
// 6+6+6+6+4+4 rather than 6+6+6+6+6+2). Each output element is summed the same way in any tile, so the
// split changes no result.
#pragma once

#include <cstdint>

namespace fastcells::cpu {

// tile(first_row, rows) for each tile, in row order.
template <int64_t kTile, typename F>
inline void for_row_tiles(int64_t m, const F& tile) {
  int64_t full = m / kTile, rest = m % kTile;
  if (full > 0 && rest > 0 && rest < 4) {
    --full;
    rest += kTile;
  }
  int64_t i = 0;
  for (; i < full * kTile; i += kTile) tile(i, kTile);
  const int64_t first = rest > kTile ? rest / 2 : rest;
  if (first > 0) tile(i, first);
  if (rest > first) tile(i + first, rest - first);
}

}  // namespace fastcells::cpu
