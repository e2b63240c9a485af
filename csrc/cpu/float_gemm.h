// The float32 GEMM over all of a layer's rows: the products its backward makes after the time loop
// (layers.h: the weight gradients dG^T @ X, and dx = dG @ W_ih) and a small batch's input projections up
// front (step_input.h), on the register tiles of gemm_cpu.h, for CPUs where it is faster than at::mm
// (bf16_backward_gemm.h: packed_float_gemm says which).
//
// out (m, n) (+)= a (m, k) @ b (k, n). Threads split a's row tiles and run them against b one block at a
// time (kc rows of k by nc columns, at most kBlockBytes: it stays in the core's L2 while all the thread's
// tiles run against it). Where b's rows are rows in memory (X in dG^T @ X, W_ih in dG @ W_ih), the tiles
// read them where they are, and only a last, partial panel is copied (zero-padded); a transposed b
// (W_ih^T, the input projections) is packed a block at a time into the thread's own scratch. So no
// more than a block per thread is held beside the operands (a packed copy of the whole of b, 0.75 MiB
// for a GRU's dx at T=50 B=16 H=256, took its training call over torch.nn's peak memory; so did a block
// of 128 KiB per thread), and threads never wait for each other. Rows of a are read where they are too;
// a transposed view (dG^T) is first copied a tile at a time into a few KiB of columns (each a run of
// adjacent values). Each output element is summed in the same order for any split: block by block of k
// in order, each block's chain of multiply-adds added to the sums before it. So results do not depend
// on the number of threads (at::mm's did, for small shapes: step_input.h).
#pragma once

#include "isa_namespace.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "gemm_cpu.h"
#include "row_tiles.h"

namespace fastcells::cpu::FASTCELLS_ISA {

// A block of b: at most kBlockPanels panels (256 columns with AVX-512, 128 with AVX2) and kBlockBytes.
constexpr int64_t kBlockPanels = 8;
constexpr int64_t kBlockBytes = int64_t{128} << 10;

// The rows of k in each block for `panels` panels a block: as even as they can be, within kBlockBytes.
inline int64_t k_block(int64_t k, int64_t panels) {
  const int64_t most =
      std::max<int64_t>(16, kBlockBytes / (panels * Vec<float>::kPanel * int64_t(sizeof(float))));
  const int64_t blocks = (k + most - 1) / most;
  return (k + blocks - 1) / std::max<int64_t>(1, blocks);
}

// Rows [k0, k0 + kc) and columns [n0, n0 + cols) of b (elements row_stride and col_stride apart) packed as
// gemm_cpu.h's panels (kc x kPanel each, zero-padded past `cols`) into `panels`.
inline void pack_block(const float* b, int64_t row_stride, int64_t col_stride, int64_t k0, int64_t kc, int64_t n0,
                       int64_t cols, float* panels) {
  constexpr int64_t P = Vec<float>::kPanel;
  for (int64_t c0 = 0; c0 < cols; c0 += P) {
    const int64_t width = std::min(P, cols - c0);
    float* out = panels + (c0 / P) * kc * P;
    const float* first = b + k0 * row_stride + (n0 + c0) * col_stride;
    int64_t c = 0;
    if (col_stride == 1) {  // rows of b
      for (int64_t p = 0; p < kc; ++p) std::memcpy(out + p * P, first + p * row_stride, width * sizeof(float));
      c = width;
    } else if (row_stride == 1) {  // b^T's rows: 8 at a time transposed into the panel
      for (; c + 8 <= width; c += 8) pack_8_rows(first + c * col_stride, col_stride, kc, out + c, P);
    }
    for (; c < width; ++c) {
      for (int64_t p = 0; p < kc; ++p) out[p * P + c] = first[p * row_stride + c * col_stride];
    }
    if (width < P) {
      for (int64_t p = 0; p < kc; ++p) std::fill(out + p * P + width, out + (p + 1) * P, 0.0f);
    }
  }
}

// Rows [i, i + rows) and columns [k0, k0 + kc) of a (elements row_stride and k_stride apart) into
// packed, column by column: packed[p * rows + r] = a[i + r][k0 + p].
inline void pack_tile(const float* a, int64_t row_stride, int64_t k_stride, int64_t i, int64_t rows, int64_t k0,
                      int64_t kc, float* packed) {
  const float* first = a + i * row_stride + k0 * k_stride;
  for (int64_t p = 0; p < kc; ++p) {
    const float* column = first + p * k_stride;
    if (row_stride == 1 && rows == kGemmRows) {  // a full tile: a copy of known length, inlined
      std::memcpy(packed + p * rows, column, kGemmRows * sizeof(float));
    } else if (row_stride == 1) {
      for (int64_t r = 0; r < rows; ++r) packed[p * rows + r] = column[r];
    } else {
      for (int64_t r = 0; r < rows; ++r) packed[p * rows + r] = column[r * row_stride];
    }
  }
}

// out (m, n) = a (m, k) @ b (k, n), or out += it where `accumulate`: a and b float32 CPU matrices with
// any strides (a transposed view too), out float32 with adjacent columns and no overlap with a or b.
inline void float_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "float_gemm: matrices only");
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "float_gemm: float32 operands and result");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_CHECK(b.size(0) == k && out.size(0) == m && out.size(1) == n, "float_gemm: shapes do not match: a ",
              a.sizes(), ", b ", b.sizes(), ", out ", out.sizes());
  TORCH_CHECK(out.stride(1) == 1 || n <= 1, "float_gemm: out's columns must be adjacent");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) out.zero_();
    return;
  }
  constexpr int64_t P = Vec<float>::kPanel;
  const int64_t panels = (n + P - 1) / P, block_panels = std::min(panels, kBlockPanels);
  const int64_t kc = k_block(k, block_panels), nc = block_panels * P, ldo = out.stride(0);
  // a's and b's rows read where they are (unit stride along the row, or a single column), else packed.
  const bool a_rows = a.stride(1) == 1 || k <= 1, b_rows = b.stride(1) == 1 || n <= 1;
  const int64_t lda = a.stride(0), ldb = b.stride(0);
  const float* a_data = a.data_ptr<float>();
  const float* b_data = b.data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  // Tiles of a's rows as for_row_tiles cuts them, listed so that threads can split them.
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for_row_tiles<kGemmRows>(m, [&](int64_t i, int64_t rows) { tiles.emplace_back(i, rows); });
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, kGemmRows * k * n));
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), grain, [&](int64_t t0, int64_t t1) {
    // This thread's packed block of b: all of it, or only a partial last panel of b's rows.
    const at::Tensor block = at::empty({kc * (b_rows ? (n % P ? P : 0) : nc)}, out.options());
    std::vector<float> a_tile(a_rows ? 0 : kc * kGemmRows);
    for (int64_t n0 = 0; n0 < n; n0 += nc) {
      const int64_t cols = std::min(nc, n - n0), full = b_rows ? cols / P * P : 0;
      for (int64_t k0 = 0; k0 < k; k0 += kc) {
        const int64_t kb = std::min(kc, k - k0);
        if (full < cols) {
          pack_block(b_data, ldb, b.stride(1), k0, kb, n0 + full, cols - full, block.data_ptr<float>());
        }
        for (int64_t t = t0; t < t1; ++t) {
          const auto [i, rows] = tiles[t];
          if (!a_rows) pack_tile(a_data, a.stride(0), a.stride(1), i, rows, k0, kb, a_tile.data());
          for (int64_t c0 = 0; c0 < cols; c0 += P) {
            const bool in_place = c0 < full;
            const float* panel =
                in_place ? b_data + k0 * ldb + n0 + c0 : block.data_ptr<float>() + (c0 - full) / P * kb * P;
            const int64_t ldp = in_place ? ldb : P, width = std::min(P, cols - c0);
            float* o = out_data + i * ldo + n0 + c0;
            const bool into = accumulate || k0 > 0;
            if (a_rows) {
              gemm_rows<float>(a_data + i * lda + k0, lda, panel, kb, o, ldo, rows, width, into, ldp);
            } else {
              gemm_rows<float, kGemmRows, /*kPackedA=*/true>(a_tile.data(), 0, panel, kb, o, ldo, rows, width,
                                                             into, ldp);
            }
          }
        }
      }
    }
  });
}

}  // namespace fastcells::cpu::FASTCELLS_ISA
