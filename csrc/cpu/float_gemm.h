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
// float16 a and b (a float16 layer's backward) are widened (exactly) as they are copied: b's panels and
// a's tiles always, a tile of a's rows into rows of float32. So the float32 sums of a float16 product take
// no float32 copy of its operands, nor blocks of them (bf16_backward_gemm.cpp's widened_f16_gemm, which
// held ~1 MiB of them at T=50 B=16 H=256 and took a float16 LSTM's training call to 1.6 times torch.nn's
// float16 peak).
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

// The rows of k in each block for `panels` panels a block: as even as they can be, within `bytes`.
inline int64_t k_block(int64_t k, int64_t panels, int64_t bytes) {
  const int64_t most = std::max<int64_t>(16, bytes / (panels * Vec<float>::kPanel * int64_t(sizeof(float))));
  const int64_t blocks = (k + most - 1) / most;
  return (k + blocks - 1) / std::max<int64_t>(1, blocks);
}

// n values of src into dst, float16 ones widened (exactly): 8 and 4 at a time by F16C where the copy has
// it (the vectorized bit arithmetic of widen() took a float16 LSTM's packing to ~13% of its training call).
template <typename S>
inline void widen_run(const S* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<S, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    int64_t j = 0;
#if FASTCELLS_ISA_AVX2
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(dst + j, load8(src + j));
    if (j + 4 <= n) {
      _mm_storeu_ps(dst + j, _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + j))));
      j += 4;
    }
#endif
    for (; j < n; ++j) dst[j] = widen(src[j]);
  }
}

// Rows [k0, k0 + kc) and columns [n0, n0 + cols) of b (elements row_stride and col_stride apart; float32
// or float16, S) packed as gemm_cpu.h's float32 panels (kc x kPanel each, zero-padded past `cols`) into
// `panels`.
template <typename S>
inline void pack_block(const S* b, int64_t row_stride, int64_t col_stride, int64_t k0, int64_t kc, int64_t n0,
                       int64_t cols, float* panels) {
  constexpr int64_t P = Vec<float>::kPanel;
  for (int64_t c0 = 0; c0 < cols; c0 += P) {
    const int64_t width = std::min(P, cols - c0);
    float* out = panels + (c0 / P) * kc * P;
    const S* first = b + k0 * row_stride + (n0 + c0) * col_stride;
    int64_t c = 0;
    if (col_stride == 1) {  // rows of b
      for (int64_t p = 0; p < kc; ++p) widen_run(first + p * row_stride, out + p * P, width);
      c = width;
    } else if (row_stride == 1) {  // b^T's rows: float32 ones 8 at a time transposed into the panel
      if constexpr (std::is_same_v<S, float>) {
        for (; c + 8 <= width; c += 8) pack_8_rows(first + c * col_stride, col_stride, kc, out + c, P);
      }
    }
    for (; c < width; ++c) {
      for (int64_t p = 0; p < kc; ++p) out[p * P + c] = widen(first[p * row_stride + c * col_stride]);
    }
    if (width < P) {
      for (int64_t p = 0; p < kc; ++p) std::fill(out + p * P + width, out + (p + 1) * P, 0.0f);
    }
  }
}

// Rows [i, i + rows) and columns [k0, k0 + kc) of a (elements row_stride and k_stride apart; float32 or
// float16, S) into float32 `packed`, column by column: packed[p * rows + r] = a[i + r][k0 + p].
template <typename S>
inline void pack_tile(const S* a, int64_t row_stride, int64_t k_stride, int64_t i, int64_t rows, int64_t k0,
                      int64_t kc, float* packed) {
  const S* first = a + i * row_stride + k0 * k_stride;
  for (int64_t p = 0; p < kc; ++p) {
    const S* column = first + p * k_stride;
    if (std::is_same_v<S, float> && row_stride == 1 && rows == kGemmRows) {  // a copy of known length, inlined
      std::memcpy(packed + p * rows, column, kGemmRows * sizeof(float));
    } else if (row_stride == 1) {
      widen_run(column, packed + p * rows, rows);
    } else {
      for (int64_t r = 0; r < rows; ++r) packed[p * rows + r] = widen(column[r * row_stride]);
    }
  }
}

// float_gemm below for operands in S (float32 or float16).
template <typename S>
inline void float_gemm_of(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  constexpr int64_t P = Vec<float>::kPanel;
  constexpr bool kWide = std::is_same_v<S, float>;  // operands the tiles can read where they are
  const int64_t panels = (n + P - 1) / P, block_panels = std::min(panels, kBlockPanels);
  // A float16 b is packed whole, widened, a block at a time: blocks of at most a quarter of b's own size
  // (an eighth of it widened), as widened_f16_gemm's were. With blocks of kBlockBytes, small calls held
  // more than on those: training at T=50 B=1 H=128, an RNN 0.87 of its float32 twin's peak (0.78; a block
  // of 64 KiB for its dx, whose W_ih takes 32), an LSTM 0.547 MiB (0.510).
  const int64_t block_bytes = kWide ? kBlockBytes : std::min<int64_t>(kBlockBytes, k * n / 2);
  const int64_t kc = k_block(k, block_panels, block_bytes), nc = block_panels * P, ldo = out.stride(0);
  // a's and b's rows read where they are (unit stride along the row, or a single column), else packed;
  // float16 rows are widened into a tile of rows (a) or panels (b).
  const bool a_rows = a.stride(1) == 1 || k <= 1, b_rows = kWide && (b.stride(1) == 1 || n <= 1);
  const bool a_in_place = kWide && a_rows;
  const int64_t lda = a.stride(0), ldb = b.stride(0);
  const S* a_data = a.data_ptr<S>();
  const S* b_data = b.data_ptr<S>();
  // The same as float32 values, which the tiles read in place (float32 operands only: a_in_place, b_rows).
  const float* a_floats = reinterpret_cast<const float*>(a_data);
  const float* b_floats = reinterpret_cast<const float*>(b_data);
  float* out_data = out.data_ptr<float>();
  // Tiles of a's rows as for_row_tiles cuts them, listed so that threads can split them.
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for_row_tiles<kGemmRows>(m, [&](int64_t i, int64_t rows) { tiles.emplace_back(i, rows); });
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, kGemmRows * k * n));
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), grain, [&](int64_t t0, int64_t t1) {
    // This thread's packed block of b: all of it, or only a partial last panel of b's rows.
    const at::Tensor block = at::empty({kc * (b_rows ? (n % P ? P : 0) : nc)}, out.options());
    std::vector<float> a_tile(a_in_place ? 0 : kc * kGemmRows);
    for (int64_t n0 = 0; n0 < n; n0 += nc) {
      const int64_t cols = std::min(nc, n - n0), full = b_rows ? cols / P * P : 0;
      for (int64_t k0 = 0; k0 < k; k0 += kc) {
        const int64_t kb = std::min(kc, k - k0);
        if (full < cols) {
          pack_block(b_data, ldb, b.stride(1), k0, kb, n0 + full, cols - full, block.data_ptr<float>());
        }
        for (int64_t t = t0; t < t1; ++t) {
          const auto [i, rows] = tiles[t];
          if (!a_rows) {
            pack_tile(a_data, a.stride(0), a.stride(1), i, rows, k0, kb, a_tile.data());
          } else if (!a_in_place) {
            for (int64_t r = 0; r < rows; ++r) {
              widen_run(a_data + (i + r) * lda + k0, a_tile.data() + r * kb, kb);
            }
          }
          for (int64_t c0 = 0; c0 < cols; c0 += P) {
            const bool in_place = c0 < full;
            const float* panel =
                in_place ? b_floats + k0 * ldb + n0 + c0 : block.data_ptr<float>() + (c0 - full) / P * kb * P;
            const int64_t ldp = in_place ? ldb : P, width = std::min(P, cols - c0);
            float* o = out_data + i * ldo + n0 + c0;
            const bool into = accumulate || k0 > 0;
            if (a_in_place) {
              gemm_rows<float>(a_floats + i * lda + k0, lda, panel, kb, o, ldo, rows, width, into, ldp);
            } else if (a_rows) {  // float16 rows widened into a_tile, kb apart
              gemm_rows<float>(a_tile.data(), kb, panel, kb, o, ldo, rows, width, into, ldp);
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

// out (m, n) = a (m, k) @ b (k, n), or out += it where `accumulate`: a and b float32 (or both float16) CPU
// matrices with any strides (a transposed view too), out float32 with adjacent columns and no overlap with
// a or b.
inline void float_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "float_gemm: matrices only");
  const bool half = a.scalar_type() == at::kHalf && b.scalar_type() == at::kHalf;
  TORCH_CHECK((half || (a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat)) &&
                  out.scalar_type() == at::kFloat,
              "float_gemm: float32 (or float16) operands and a float32 result");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_CHECK(b.size(0) == k && out.size(0) == m && out.size(1) == n, "float_gemm: shapes do not match: a ",
              a.sizes(), ", b ", b.sizes(), ", out ", out.sizes());
  TORCH_CHECK(out.stride(1) == 1 || n <= 1, "float_gemm: out's columns must be adjacent");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) out.zero_();
    return;
  }
  if (half) return float_gemm_of<c10::Half>(a, b, out, accumulate);
  float_gemm_of<float>(a, b, out, accumulate);
}

}  // namespace fastcells::cpu::FASTCELLS_ISA
