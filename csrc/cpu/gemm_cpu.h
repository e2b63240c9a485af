// A register-blocked GEMM against a pre-packed weight, for the per-step recurrent products on the CPU.
//
// out (m, n) (+)= a (m, k) @ b (k, n), row-major a and out. Each step of a layer multiplies a few dozen
// state rows by the same weight; MKL's sgemm reached ~45-75 GFLOP/s on those shapes on our 2-core AMD
// EPYC (AVX2) machines, and oneDNN (which torch.nn.LSTM uses) is not callable from an extension for
// fp32 there. So the weight is packed once per layer call into panels of 2 vectors' width
// (panel-major, k x 16 floats contiguous with AVX2, 32 with AVX-512: no 4 KiB-stride cache aliasing),
// and a micro-kernel keeps a kGemmRows x 2-vector tile of `out` in registers while it streams one panel
// and broadcasts `a`.
#pragma once

#include "isa_namespace.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "bf16_backward_gemm.h"
#include "bf16_products.h"
#include "matmul_cpu.h"
#include "row_tiles.h"

namespace fastcells::cpu::FASTCELLS_ISA {

// Rows of a tile: 6 rows x 2 vectors = 12 accumulators, + 2 panel loads + 1 broadcast, of AVX2's 16
// registers; 12 rows (24 accumulators) of AVX-512's 32, which halves the panel bytes each multiply-add
// waits for (on an Intel Xeon with two 512-bit FMA units, LSTM T=50 B=16 H=256 float32 inference went
// from 0.67x to 0.79x torch.nn, T=100 B=64 H=512 from 0.84x to 0.89x). Each sum is the same chain in k
// order whatever the tile: no result changes.
#if FASTCELLS_ISA_AVX512
constexpr int kGemmRows = 12;
#else
constexpr int kGemmRows = 6;
#endif

// b (k, n) packed as ceil(n / kPanel) panels of (k, kPanel), zero-padded past column n: the panels of the
// GEMM in T, stored in W (T, or float16 for T float: widened as the tiles load them).
template <typename T, typename W = T>
struct PackedMatrix {
  at::Tensor storage;
  int64_t k = 0, n = 0, panels = 0;
  const W* panel(int64_t index) const {
    return storage.template data_ptr<W>() + index * k * Vec<T>::kPanel;
  }
};

#if FASTCELLS_ISA_AVX2
// out[q * ldo + j] = rows[j * ldr + q] for q, j < 8: an 8 x 8 block of float32 transposed in registers.
inline void transpose8x8(const float* rows, int64_t ldr, float* out, int64_t ldo) {
  __m256 r[8], t[8];
  for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(rows + j * ldr);
  for (int j = 0; j < 8; j += 2) {  // pairs of rows interleaved
    t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
  }
  for (int j = 0; j < 8; j += 4) {  // then 4-row columns in each 128-bit half
    r[j] = _mm256_shuffle_ps(t[j], t[j + 2], 0x44);
    r[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], 0xEE);
    r[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0x44);
    r[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0xEE);
  }
  // r[0..3]: columns 0, 1, 2, 3 of rows 0-3 (low halves) and 4, 5, 6, 7 (high); r[4..7] of rows 4-7.
  for (int q = 0; q < 4; ++q) {
    _mm256_storeu_ps(out + q * ldo, _mm256_permute2f128_ps(r[q], r[q + 4], 0x20));
    _mm256_storeu_ps(out + (q + 4) * ldo, _mm256_permute2f128_ps(r[q], r[q + 4], 0x31));
  }
}
#endif

// out[p * P + j] = rows[j * ld + p] for 8 rows j and all p < k: 8 rows of w (ld floats apart) written
// side by side into a panel (P floats a row).
template <typename T>
inline void pack_8_rows(const T* rows, int64_t ld, int64_t k, T* out, int64_t P) {
  int64_t p = 0;
#if FASTCELLS_ISA_AVX2
  if constexpr (std::is_same_v<T, float>) {  // 8 x 8 blocks: 2-4x faster than the value loop below
    for (; p + 8 <= k; p += 8) transpose8x8(rows + p, ld, out + p * P, P);
  }
#endif
  for (; p < k; ++p) {
    for (int64_t j = 0; j < 8; ++j) out[p * P + j] = rows[j * ld + p];
  }
}

// Packs b = w^T for w (n, k) row-major (the forward product h @ W^T), or b = w for w (k, n) row-major
// (the backward product dG @ W) when `transposed` is false. w in T, or in bfloat16 or float16 with T
// float (a 16-bit layer's weights, bfloat16 on a CPU without the bfloat16 products), widened (exactly)
// as it is packed: no float32 copy of the whole of w is made (it was a third of such a layer's peak
// memory at T=50 B=16 H=256).
template <typename T, typename W = T>
PackedMatrix<T, W> pack_matrix(const at::Tensor& w, bool transposed) {
  constexpr int64_t P = Vec<T>::kPanel;
  constexpr bool kKept = !std::is_same_v<T, W>;  // float16 panels: w's values as they are
  const bool bf16 = w.scalar_type() == at::kBFloat16, f16 = w.scalar_type() == at::kHalf && !kKept;
  static_assert(!kKept || (std::is_same_v<T, float> && std::is_same_v<W, c10::Half>));
  TORCH_CHECK(w.scalar_type() == c10::CppTypeToScalarType<W>::value || ((bf16 || f16) && std::is_same_v<T, float>),
              "pack_matrix: weights must be in the GEMM's dtype or 16 bits for float32, got ", w.scalar_type());
  PackedMatrix<T, W> packed;
  packed.k = transposed ? w.size(1) : w.size(0);
  packed.n = transposed ? w.size(0) : w.size(1);
  packed.panels = (packed.n + P - 1) / P;
  // Every value is written below: only the padding of the last panel needs zeros.
  packed.storage = at::empty({packed.panels * packed.k * P}, w.options().dtype(c10::CppTypeToScalarType<W>::value));
  W* dst = packed.storage.template data_ptr<W>();
  const int64_t k = packed.k, n = packed.n;
  // Loops ordered so that w is read along its rows (a column walk of a 1 MiB w cost ~0.25 ms). In the
  // transposed case 8 rows of w are read side by side, so each packed row is written 8 values at a
  // time: one row at a time wrote one scattered value per cache line.
  constexpr int64_t kRows = 8;
  const int64_t row_length = transposed ? k : n;
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, k * P));
  at::parallel_for(0, packed.panels, grain, [&](int64_t p0, int64_t p1) {
    // `count` rows of w from row `first` on, in W: w's own, or 16-bit ones widened into `widened`.
    std::vector<T> widened((bf16 || f16) && transposed ? kRows * row_length : 0);
    const auto rows_of = [&](int64_t first, int64_t count) -> const W* {
      if constexpr (std::is_same_v<T, float> && !kKept) {
        if (bf16 || f16) {
          with_weights<T>(w, [&](const auto* w16) {
            widen_rows(w16 + first * row_length, row_length, widened.data(), row_length, count, row_length);
          });
          return widened.data();
        }
      }
      return w.template data_ptr<W>() + first * row_length;
    };
    // Columns [col0, col0 + cols) of row `row` of w into `to`, in W.
    const auto row_part = [&](int64_t row, int64_t col0, int64_t cols, W* to) {
      if constexpr (std::is_same_v<T, float> && !kKept) {
        if (bf16 || f16) {
          return with_weights<T>(w, [&](const auto* w16) {
            widen_rows(w16 + row * row_length + col0, row_length, to, cols, 1, cols);
          });
        }
      }
      std::memcpy(to, w.template data_ptr<W>() + row * row_length + col0, cols * sizeof(W));
    };
    for (int64_t panel = p0; panel < p1; ++panel) {
      const int64_t cols = std::min<int64_t>(P, n - panel * P);
      W* out = dst + panel * k * P;
      if (transposed) {
        int64_t c = 0;
        for (; c + kRows <= cols; c += kRows) pack_8_rows(rows_of(panel * P + c, kRows), k, k, out + c, P);
        for (; c < cols; ++c) {
          const W* row = rows_of(panel * P + c, 1);
          for (int64_t p = 0; p < k; ++p) out[p * P + c] = row[p];
        }
      } else {
        for (int64_t p = 0; p < k; ++p) row_part(p, panel * P, cols, out + p * P);
      }
      if (cols < P) {
        for (int64_t p = 0; p < k; ++p) std::fill(out + p * P + cols, out + (p + 1) * P, W(0));
      }
    }
  });
  return packed;
}

// One tile: R rows of `out`, `cols` <= kPanel columns, from one packed panel (or kPanel columns of a
// row-major b, whose rows are ldp apart). a: R rows lda apart, or with kPackedA its R x k values packed
// column by column (a[p * R + r] for row r; lda unused). The panel in W: T, or float16 widened (exactly)
// as it is loaded.
template <typename T, int R, bool kPackedA = false, typename W = T>
inline void gemm_tile(const T* a, int64_t lda, const W* panel, int64_t k, T* out, int64_t ldo,
                      int64_t cols, bool accumulate, int64_t ldp = Vec<T>::kPanel) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = V{};
  for (int64_t p = 0; p < k; ++p) {
    V b0 = load_widened<V>(panel + p * ldp), b1 = load_widened<V>(panel + p * ldp + L);
    // Keep the panel vectors in registers: for tiles of up to 4 rows GCC otherwise folds them into
    // each multiply-add as a memory operand, which made those tiles load-bound (43 against 68
    // GFLOP/s for 4 rows on one Zen 3 core).
#if FASTCELLS_ISA_AVX512  // "v": any of the 32 AVX-512 registers
    asm("" : "+v"(b0), "+v"(b1));
#elif FASTCELLS_ISA_AVX2  // a 32-byte vector fits one register only from AVX on
    asm("" : "+x"(b0), "+x"(b1));
#endif
    for (int r = 0; r < R; ++r) {
      // a broadcast (x - 0 folds to x; 0 + x would not: -0.0)
      const V av = (kPackedA ? a[p * R + r] : a[r * lda + p]) - V{};
      acc[r][0] += av * b0;
      acc[r][1] += av * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    T* o = out + r * ldo;
    if (cols == 2 * L) {
      if (accumulate) {
        V o0, o1;
        std::memcpy(&o0, o, sizeof(V));
        std::memcpy(&o1, o + L, sizeof(V));
        acc[r][0] += o0;
        acc[r][1] += o1;
      }
      std::memcpy(o, &acc[r][0], sizeof(V));
      std::memcpy(o + L, &acc[r][1], sizeof(V));
    } else {  // the last, partial panel
      T tmp[2 * L];
      std::memcpy(tmp, &acc[r][0], sizeof(V));
      std::memcpy(tmp + L, &acc[r][1], sizeof(V));
      for (int64_t c = 0; c < cols; ++c) o[c] = accumulate ? o[c] + tmp[c] : tmp[c];
    }
  }
}

// gemm_tile for rows = R, R - 1, ..., 1 (rows <= R).
template <typename T, int R = kGemmRows, bool kPackedA = false, typename W = T>
inline void gemm_rows(const T* a, int64_t lda, const W* panel, int64_t k, T* out, int64_t ldo,
                      int64_t rows, int64_t cols, bool accumulate, int64_t ldp = Vec<T>::kPanel) {
  if constexpr (R > 0) {
    if (rows == R) return gemm_tile<T, R, kPackedA, W>(a, lda, panel, k, out, ldo, cols, accumulate, ldp);
    gemm_rows<T, R - 1, kPackedA, W>(a, lda, panel, k, out, ldo, rows, cols, accumulate, ldp);
  }
}

// All m rows against one panel (in T, or float16: gemm_tile), in tiles of kGemmRows (row_tiles.h).
template <typename T, typename W>
inline void gemm_panel(const T* a, int64_t lda, const W* panel, int64_t k, T* out, int64_t ldo,
                       int64_t m, int64_t cols, bool accumulate) {
  for_row_tiles<kGemmRows>(m, [&](int64_t i, int64_t rows) {
    gemm_rows(a + i * lda, lda, panel, k, out + i * ldo, ldo, rows, cols, accumulate);
  });
}

// out (m, n) (+)= a (m, k) @ b. Panels are split across threads, so each thread reads the same part of
// b on every time step (it stays in that core's L2).
template <typename T, typename W>
void gemm_packed(const T* a, int64_t lda, const PackedMatrix<T, W>& b, T* out, int64_t ldo, int64_t m,
                 bool accumulate) {
  if (m == 0 || b.n == 0) return;
  constexpr int64_t P = Vec<T>::kPanel;
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, m * b.k * P));
  at::parallel_for(0, b.panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t panel = p0; panel < p1; ++panel) {
      const int64_t cols = std::min<int64_t>(P, b.n - panel * P);
      gemm_panel(a, lda, b.panel(panel), b.k, out + panel * P, ldo, m, cols, accumulate);
    }
  });
}

// gemm_packed's columns [begin, end) of out = a @ b alone, on the calling thread (for loops that split a
// product's columns between threads: unit_split.h). A panel the range cuts is multiplied whole into a
// tile of scratch and only its columns in the range copied, so each element is summed as gemm_packed
// sums it.
template <typename T, typename W>
void gemm_packed_columns(const T* a, int64_t lda, const PackedMatrix<T, W>& b, T* out, int64_t ldo, int64_t m,
                         int64_t begin, int64_t end) {
  constexpr int64_t P = Vec<T>::kPanel;
  for (int64_t panel = begin / P; panel * P < end; ++panel) {
    const int64_t first = panel * P, cols = std::min<int64_t>(P, b.n - first);
    const int64_t lo = std::max(begin, first), hi = std::min(end, first + cols);
    if (lo == first && hi == first + cols) {
      gemm_panel(a, lda, b.panel(panel), b.k, out + first, ldo, m, cols, /*accumulate=*/false);
      continue;
    }
    alignas(64) T tile[kGemmRows * P];
    for_row_tiles<kGemmRows>(m, [&](int64_t i, int64_t rows) {
      gemm_rows(a + i * lda, lda, b.panel(panel), b.k, tile, P, rows, cols, /*accumulate=*/false);
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(out + (i + r) * ldo + lo, tile + r * P + (lo - first), (hi - lo) * sizeof(T));
      }
    });
  }
}

// The per-step product of a layer with one weight: out (m, n) (+)= a (m, k) @ W^T (transposed) or
// a @ W. A layer whose batch has at most kSmallRows rows takes the mat-vec loops of matmul_cpu.h
// straight from W (but not always over kPackedSmallRows rows in all: packs_small_batch); a larger one
// packs W once for the whole sequence and takes the packed GEMM at every step, also those with few rows
// left (the tail of a packed batch, a thread's row group). So how each output element is summed depends
// on the layer's shape alone, never on how its rows were split between threads: results do not depend
// on the number of threads.
//
// In a bfloat16 layer on a CPU with AVX-512 BF16 (bf16_products.h), the packed GEMM is the bfloat16
// one: a choice of the dtype and the CPU, so again the same for any number of threads.
template <typename T>
inline bool bf16_products() {
#if FASTCELLS_ISA_AVX512
  if constexpr (std::is_same_v<T, float>) return bf16::products_on();
#endif
  return false;
}

// The dtype the backward's GEMMs over all rows (layers.h: weight and input gradients) round their
// operands to: bfloat16 where the steps multiply in it (dy in float32 or stored in bfloat16,
// storage.h), float16 or float32 for rows stored in float16, else none (dy's own).
inline c10::optional<at::ScalarType> gemm_operands(const at::Tensor& dy) {
  const at::ScalarType t = dy.scalar_type();
  if ((t == at::kFloat || t == at::kBFloat16) && bf16_products<float>()) return at::kBFloat16;
  // Stored in float16: the float16 operands as they are, widened a block at a time for float32 sums
  // (bf16_backward_gemm.h), else float32 copies for at::mm.
  if (t == at::kHalf) return f16_backward_gemm() ? at::kHalf : at::kFloat;
  // Stored in bfloat16 without the products (storage.h): the bfloat16 operands as they are where a
  // bfloat16 GEMM with float32 sums takes them (MKL's: bf16_backward_gemm.h), else float32 copies for
  // at::mm (whose bfloat16 GEMM, without AVX-512 BF16, is ATen's own loops).
  if (t == at::kBFloat16) return bf16_backward_gemm() != Bf16BackwardGemm::none ? at::kBFloat16 : at::kFloat;
  return c10::nullopt;
}

// The fewest rows in all (N, every step's together) for which a layer of at most kSmallRows rows a step packs
// its weights, as larger batches do, rather than reading them in place with the mat-vecs (float32: only at 3
// or 4 rows a step, packs_small_batch below). In bfloat16, for the bfloat16 products: the packed products
// need no horizontal sums and use each load of the weight for every row (one Zen 4 core, 512 columns x 256
// from L2: 4 rows 111 against 59 GMAC/s, 3 rows 108 against 66, 2 rows 99 against 53, 1 row 54 against 38).
// Packing takes about as long as 15-25 steps' products at B=1, so shorter calls keep the mat-vecs (bfloat16
// LSTM inference, 2 threads, side by side with torch.nn, packed against in place: H=256 B=4 T=100 1.38
// against 1.59 ms, B=1 T=100 0.59 against 0.61, but B=1 T=16 0.146 against 0.121 and B=4 T=4 0.122
// against 0.091; T=50 B=1 even).
constexpr int64_t kPackedSmallRows = 64;

// Whether a product of a layer of at most kSmallRows rows a step (`batch` rows at most), `rows` rows in
// all, with weight w packs w: bfloat16 weights for the bfloat16 products; float32 ones (AVX2 or AVX-512)
// for the packed float32 GEMM where a step has 3 or 4 rows. (One Zen 4 core, AVX-512, k=256, 512 columns
// from L2, packed against the mat-vecs: 4 rows 56 against 41 GMAC/s, 2 rows 29 against 26, 1 row 25
// either way, the rate at which L2 delivers the weight. Whole float32 layers at T=100 H=256, the packing
// included, the fastest of 3-5 processes, mat-vecs against packed: AVX-512 LSTM B=3 2.17 against 1.81
// ms, B=4 2.39 both, GRU B=3 1.73 against 1.43; the AVX2 copy on the same CPU, whose mat-vecs take one
// row at a time, LSTM B=3 2.55 against 2.15, B=4 3.36 against 2.62, GRU B=4 2.79 against 2.22, but B=2
// 1.46 against 1.51 (GRU), B=1 0.95 against 1.75 (LSTM).) A choice of the shape, the dtypes and the CPU
// alone: the layer's inference, its training forward and any number of threads choose alike.
constexpr int64_t kPackedSmallBatch32 = 3;

template <typename T>
inline bool packs_small_batch(const at::Tensor& w, int64_t batch, int64_t rows) {
  if (rows < kPackedSmallRows) return false;
  if (w.scalar_type() == at::kBFloat16) return bf16_products<T>();
#if FASTCELLS_ISA_AVX2
  return std::is_same_v<T, float> && w.scalar_type() == at::kFloat && batch >= kPackedSmallBatch32 &&
         !bf16_products<T>();
#else
  return false;
#endif
}

template <typename T>
class StepProduct {
 public:
  // batch: the most rows any step of the layer has (all groups together); rows: all of the layer's
  // rows, where the product is made at each of its steps (packs_small_batch), else 0.
  // w in T, or in bfloat16 or float16 with T float: a 16-bit layer's weights, which the mat-vecs of
  // batches of at most kSmallRows rows and the bfloat16 products read as they are (a float32 copy of
  // them took more memory than torch.nn's whole call at B=1, and a generation loop's one-step call longer
  // than its arithmetic); for larger batches, float16 w is packed as it is, its panels widened as the
  // GEMM loads them, and bfloat16 w without the bfloat16 products as a float32 copy. w in float32 is
  // packed for larger batches and where packs_small_batch says so.
  StepProduct(const at::Tensor& w, bool transposed, int64_t batch, int64_t rows = 0)
      : transposed_(transposed), rows_(w.size(0)), cols_(w.size(1)) {
    const bool small_packed = packs_small_batch<T>(w, batch, rows);
    if ((batch > kSmallRows && bf16_products<T>()) || (small_packed && w.scalar_type() == at::kBFloat16)) {
      bf16_ = bf16::pack(w, transposed);
      return;
    }
    if (w.scalar_type() != c10::CppTypeToScalarType<T>::value) {
      TORCH_CHECK((std::is_same_v<T, float> && (w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kHalf)),
                  "StepProduct: weights must be float32, bfloat16 or float16 for float32 rows, got ",
                  w.scalar_type());
      if (batch <= kSmallRows) {
        if (w.scalar_type() == at::kHalf) {
          w_f16_ = w.template data_ptr<c10::Half>();
        } else {
          w_bf16_ = w.template data_ptr<c10::BFloat16>();
        }
        return;
      }
      if constexpr (std::is_same_v<T, float>) {
        // Float16 panels: a float32 copy of a float16 layer's W_ih and W_hh took 1 MiB each at H=256, and
        // its inference call at T=50 B=16 to 1.14 times the peak of torch.nn's float16 loop; the tiles'
        // widening (F16C) costs 0-5% in the AVX2 copy. Bfloat16 panels widened by shifts made bfloat16
        // calls 20-35% slower there (LSTM T=50 B=16 H=256 inference 3.96 -> 5.2-5.3 ms): a float32 copy.
        if (w.scalar_type() == at::kHalf) {
          packed_f16_ = pack_matrix<T, c10::Half>(w, transposed);
          return;
        }
      }
      packed_ = pack_matrix<T>(w, transposed);  // widened as it is packed
      return;
    }
    w_ = w.template data_ptr<T>();
    if (batch > kSmallRows || small_packed) packed_ = pack_matrix<T>(w, transposed);
  }

  void run(const T* a, int64_t lda, T* out, int64_t ldo, int64_t m, bool accumulate) const {
    if constexpr (std::is_same_v<T, float>) {
      if (bf16_.storage.defined()) return bf16::gemm(a, lda, bf16_, out, ldo, m, accumulate);
      if (w_bf16_) return run_in_place(w_bf16_, a, lda, out, ldo, m, accumulate);
      if (w_f16_) return run_in_place(w_f16_, a, lda, out, ldo, m, accumulate);
    }
    const bool packed = on_packed([&](const auto& b) { gemm_packed(a, lda, b, out, ldo, m, accumulate); });
    if (!packed) run_in_place(w_, a, lda, out, ldo, m, accumulate);
  }

  // Whether the product packs the weight (the float32 GEMM or the bfloat16 products): then it reads each
  // panel once for all of a call's rows, and gains from more rows a call.
  bool packs_weight() const {
    return on_packed([](const auto&) {}) || bf16_.storage.defined();
  }

  // The same for rows a stored in bfloat16 or float16 (storage.h): the bfloat16 products take bfloat16
  // ones as they are; the mat-vecs (at most kSmallRows rows) and the float32 GEMM (larger batches without
  // the products) take them widened, exactly, into the calling thread's scratch.
  template <typename S, typename = std::enable_if_t<!std::is_same_v<S, T>>>
  void run(const S* a, int64_t lda, T* out, int64_t ldo, int64_t m, bool accumulate) const {
    if constexpr (std::is_same_v<T, float>) {
      if constexpr (std::is_same_v<S, c10::BFloat16>) {
        if (bf16_.storage.defined()) return bf16::gemm(a, lda, bf16_, out, ldo, m, accumulate);
      }
      const int64_t k = transposed_ ? cols_ : rows_;
      const StepScratch<T> widened(m * k, at::TensorOptions().dtype(at::kFloat));
      widen_rows(a, lda, widened.data(), k, m, k);
      return run(widened.data(), k, out, ldo, m, accumulate);
    }
    TORCH_CHECK(false, "StepProduct: 16-bit rows come with float32 math");
  }

  // For a layer of at most kSmallRows rows a step (m may be several steps' rows): columns [begin, end)
  // of run()'s product of W^T, written, on the calling thread; each element summed as run() sums it.
  // Rows a in T, or in 16 bits (bfloat16 taken as they are by the bfloat16 products; for the mat-vecs
  // widened exactly into the calling thread's scratch; not for the float32 GEMM). With repeats, also the
  // columns [begin, end) + r stride for r < repeats (a thread's units in each gate), rows rounded once for
  // the bfloat16 products.
  template <typename A>
  void run_columns(const A* a, int64_t lda, T* out, int64_t ldo, int64_t m, int64_t begin, int64_t end,
                   int64_t repeats = 1, int64_t stride = 0) const {
    TORCH_CHECK(transposed_, "StepProduct: run_columns is for W^T");
    if constexpr (std::is_same_v<T, float> && !std::is_same_v<A, c10::Half>) {
      if (bf16_.storage.defined()) {
        return bf16::gemm_columns(a, lda, bf16_, out, ldo, m, false, begin, end, repeats, stride);
      }
    }
    if constexpr (std::is_same_v<A, T>) {
      const bool packed = on_packed([&](const auto& b) {
        for (int64_t r = 0; r < repeats; ++r) {
          gemm_packed_columns(a, lda, b, out, ldo, m, begin + r * stride, end + r * stride);
        }
      });
      if (packed) return;
    } else {
      TORCH_CHECK(!on_packed([](const auto&) {}), "StepProduct: the float32 GEMM takes rows in float32");
    }
    for (int64_t r = 0; r < repeats; ++r) matvec_columns(a, lda, out, ldo, m, begin + r * stride, end + r * stride);
  }

  // With the bfloat16 products: the panels of 32 columns the product has, and run() for panels [p0, p1)
  // of them on the calling thread (rows a in T or bfloat16), for loops that split them between threads.
  int64_t bf16_panels() const { return bf16_.panels; }
  template <typename A>
  void run_panels(const A* a, int64_t lda, T* out, int64_t ldo, int64_t m, bool accumulate, int64_t p0,
                  int64_t p1) const {
    if constexpr (std::is_same_v<T, float> && !std::is_same_v<A, c10::Half>) {
      if (bf16_.storage.defined()) return bf16::gemm_panels(a, lda, bf16_, out, ldo, m, accumulate, p0, p1);
    }
    TORCH_CHECK(false, "StepProduct: run_panels needs the bfloat16 products");
  }

 private:
  // f(b) for the packed weight b of the GEMM (panels in T or float16), where there is one.
  template <typename F>
  bool on_packed(const F& f) const {
    if constexpr (std::is_same_v<T, float>) {
      if (packed_f16_.storage.defined()) return f(packed_f16_), true;
    }
    if (packed_.storage.defined()) return f(packed_), true;
    return false;
  }

  // run_columns() for one range, on the mat-vecs.
  template <typename A>
  void matvec_columns(const A* a, int64_t lda, T* out, int64_t ldo, int64_t m, int64_t begin, int64_t end) const {
    const int64_t k = cols_;
    if constexpr (std::is_same_v<T, float>) {
      const auto in_place = [&](const auto* w) {  // w as it is, rows a in T or widened
        if constexpr (std::is_same_v<A, T>) {
          matvec_rows_multi(w, k, a, lda, m, k, out, ldo, begin, end, false);
        } else {
          const StepScratch<T> widened(m * k, at::TensorOptions().dtype(at::kFloat));
          widen_rows(a, lda, widened.data(), k, m, k);
          matvec_rows_multi(w, k, widened.data(), k, m, k, out, ldo, begin, end, false);
        }
      };
      if (w_bf16_) return in_place(w_bf16_);
      if (w_f16_) return in_place(w_f16_);
    }
    if constexpr (std::is_same_v<A, T>) {
      matvec_rows_multi(w_, k, a, lda, m, k, out, ldo, begin, end, false);
    } else {
      TORCH_CHECK(false, "StepProduct: rows stored in 16 bits come with 16-bit weights");
    }
  }

  // The mat-vecs (or axpys) of matmul_cpu.h, reading w (T, bfloat16 or float16) in place.
  template <typename W>
  void run_in_place(const W* w, const T* a, int64_t lda, T* out, int64_t ldo, int64_t m, bool accumulate) const {
    if (transposed_) {
      matmul_nt(a, lda, w, cols_, out, ldo, m, rows_, cols_, accumulate);
    } else {
      matmul_nn(a, lda, w, cols_, out, ldo, m, cols_, rows_, accumulate);
    }
  }

  const T* w_ = nullptr;
  const c10::BFloat16* w_bf16_ = nullptr;  // or this: bfloat16 weights for at most kSmallRows rows
  const c10::Half* w_f16_ = nullptr;       // or this: float16 ones
  bool transposed_;
  int64_t rows_, cols_;
  PackedMatrix<T> packed_;
  PackedMatrix<T, c10::Half> packed_f16_;  // or this: a float16 layer's weights, packed as they are
  bf16::PackedWeight bf16_;  // or this, for bf16_products()
};

}  // namespace fastcells::cpu::FASTCELLS_ISA
