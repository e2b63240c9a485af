// The bfloat16 products of bf16_products.h: weight packing and a register-blocked GEMM on VDPBF16PS.
#include "bf16_products.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTCELLS_BF16_PRODUCTS 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
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

bool cpu_has_amx() {
#if FASTCELLS_BF16_PRODUCTS
  static const bool has = [] {
    const char* env = std::getenv("FASTCELLS_CPU_AMX");
    if (env && std::string(env) == "0") return false;
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!cpu_has_products() || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    constexpr unsigned kAmxBf16 = 1u << 22, kAmxTile = 1u << 24;  // CPUID.(7, 0).EDX
    if ((edx & (kAmxBf16 | kAmxTile)) != (kAmxBf16 | kAmxTile)) return false;
    // Linux hands out the tile registers' state only to processes that ask for it (once per process;
    // torch's oneDNN asks too). Without it, the first tile instruction would kill the process.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
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
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")
#include "bf16_tiles.h"

namespace fastcells::cpu::bf16 {
namespace {

// AMX (Advanced Matrix Extensions): TDPBF16PS multiplies a tile of 16 rows x 16 pairs of a by a tile
// of 16 pairs x 16 columns of b into 16 x 16 float32 sums, 16 times the work of a VDPBF16PS per
// instruction. A panel's 32 columns are two such b tiles side by side (a pair row of the panel is 128
// bytes: the tile loads take that stride), and a's rows two tiles of 16; so 4 tiles of sums, 2 of a and
// 2 of b use the 8 tile registers. k runs in chunks of kAmxPairs pairs, every output element's sums in
// the same chunk order whatever its row's or column's place: results do not depend on the split.
constexpr int64_t kAmxPairs = 16;  // pairs of k in a tile row (64 bytes)
constexpr int64_t kAmxRows = 16;   // rows of a tile

// The tile shapes (palette 1): every tile 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Loads the tile configuration on this thread for its lifetime, then releases the tiles (their state
// then costs the thread nothing at context switches).
class TileScope {
 public:
  TileScope() {
    TileConfig config;
    for (int t = 0; t < 8; ++t) {
      config.bytes_per_row[t] = kAmxPairs * 4;
      config.rows[t] = kAmxRows;
    }
    _tile_loadconfig(&config);
  }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// The tiles' sums (rows x cols of them, at a stride of kPanel) into out: written, or added to out's
// values after the products were summed (as the other kernels add them).
void store_sums(const float* sums, int64_t rows, int64_t cols, float* out, int64_t ldo, bool accumulate) {
  const __mmask16 mask0 = static_cast<__mmask16>(cols >= kLanes ? 0xffff : (1u << cols) - 1);
  const __mmask16 mask1 = static_cast<__mmask16>((1u << std::max<int64_t>(0, cols - kLanes)) - 1);
  for (int64_t r = 0; r < rows; ++r) {
    __m512 s0 = _mm512_loadu_ps(sums + r * kPanel), s1 = _mm512_loadu_ps(sums + r * kPanel + kLanes);
    float* o = out + r * ldo;
    if (accumulate) {
      s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(mask0, o));
      s1 = _mm512_add_ps(s1, _mm512_maskz_loadu_ps(mask1, o + kLanes));
    }
    _mm512_mask_storeu_ps(o, mask0, s0);
    _mm512_mask_storeu_ps(o + kLanes, mask1, s1);
  }
}

// out (rows, columns [32 p0, 32 p1) of n) (+)= a @ panels p0..p1-1; a: rows padded with zeros to a
// multiple of kAmxRows, kp pairs each (a multiple of kAmxPairs, zero past k, as the panels' rows).
void amx_panels(const uint32_t* a, int64_t kp, const uint32_t* panels, float* out, int64_t ldo,
                int64_t rows, int64_t n, bool accumulate, int64_t p0, int64_t p1) {
  const TileScope tiles;
  alignas(64) float sums[2 * kAmxRows * kPanel];
  const int64_t a_stride = kp * 4, panel_stride = kPanel * 4;  // bytes between tile rows
  for (int64_t p = p0; p < p1; ++p) {
    const uint32_t* panel = panels + p * kp * kPanel;
    const int64_t cols = std::min<int64_t>(kPanel, n - p * kPanel);
    for (int64_t r0 = 0; r0 < rows; r0 += 2 * kAmxRows) {
      const uint32_t* a0 = a + r0 * kp;
      const bool two = rows - r0 > kAmxRows;  // a second tile of rows
      _tile_zero(0);
      _tile_zero(1);
      if (two) {
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t q = 0; q < kp; q += kAmxPairs) {
        _tile_loadd(6, panel + q * kPanel, panel_stride);
        _tile_loadd(7, panel + q * kPanel + kLanes, panel_stride);
        _tile_loadd(4, a0 + q, a_stride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (two) {
          _tile_loadd(5, a0 + kAmxRows * kp + q, a_stride);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, sums, panel_stride);
      _tile_stored(1, sums + kLanes, panel_stride);
      if (two) {
        _tile_stored(2, sums + kAmxRows * kPanel, panel_stride);
        _tile_stored(3, sums + kAmxRows * kPanel + kLanes, panel_stride);
      }
      store_sums(sums, std::min<int64_t>(2 * kAmxRows, rows - r0), cols, out + r0 * ldo + p * kPanel, ldo,
                 accumulate);
    }
  }
}

// The 16 x 16 32-bit elements of r[0..15] (one row a register) transposed in place: pairs of rows
// interleaved by 32 bits, then by 64, then 128-bit blocks exchanged twice.
void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8) {
    for (int j = 0; j < 4; ++j) {
      t[h + j] = _mm512_shuffle_i32x4(r[h + j], r[h + j + 4], 0x88);
      t[h + j + 4] = _mm512_shuffle_i32x4(r[h + j], r[h + j + 4], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
}

// A bfloat16 w (n, k), row-major, packed as b = w^T (a forward's weight): a pair is 32 bits of a row of
// w, so each block of 16 columns x 16 pair rows of a panel is 16 rows of w read 64 bytes at a time and
// transposed in registers (copying each pair alone took a tenth of a bfloat16 LSTM call at B=1, H=128,
// T=50, whose weights are packed at every call). Every element of the panels is written: zeros past n
// and past k.
void pack_rows_of(const at::Tensor& w, PackedWeight& packed) {
  const at::Tensor rows = w.contiguous();
  const uint16_t* src = reinterpret_cast<const uint16_t*>(rows.data_ptr<c10::BFloat16>());
  uint32_t* dst = reinterpret_cast<uint32_t*>(packed.storage.data_ptr<int32_t>());
  const int64_t n = packed.n, k = packed.k;
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / (packed.kp * kPanel));
  at::parallel_for(0, packed.panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t panel = p0; panel < p1; ++panel) {
      for (int64_t c0 = panel * kPanel; c0 < (panel + 1) * kPanel; c0 += kLanes) {
        for (int64_t q0 = 0; q0 < packed.kp; q0 += kLanes) {
          const int64_t left = std::clamp<int64_t>(k - 2 * q0, 0, 2 * kLanes);  // elements of k in the block
          const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << left) - 1);
          __m512i r[kLanes];
          for (int i = 0; i < kLanes; ++i) {
            r[i] = c0 + i < n && left > 0 ? _mm512_maskz_loadu_epi16(mask, src + (c0 + i) * k + 2 * q0)
                                           : _mm512_setzero_si512();
          }
          transpose16x16(r);
          uint32_t* out = dst + panel * packed.kp * kPanel + q0 * kPanel + (c0 - panel * kPanel);
          for (int j = 0; j < kLanes; ++j) _mm512_storeu_si512(out + j * kPanel, r[j]);
        }
      }
    }
  });
}

// Each thread that packs weights keeps the buffers it packed them in, up to kKeptPackBytes in all, and
// packs its next calls' weights into those no PackedWeight holds any more: a layer's call then
// allocates no packed copy of its weights (as large as them in bfloat16: more than a whole bfloat16
// call of torch.nn's at B=1, and the pages of a fresh buffer were slower to write: 4-5% of a bfloat16
// LSTM at T=50 B=16 H=256). Larger weights get a buffer of their own, freed with it.
constexpr int64_t kKeptPackBytes = int64_t{8} << 20;

// n int32 elements, their values left as they are (pack() writes every one).
at::Tensor packing_buffer(int64_t n) {
  thread_local std::vector<at::Tensor> kept;
  const auto in_use = [](const at::Tensor& t) {  // a PackedWeight holds a view of it
    return t.unsafeGetTensorImpl()->storage().use_count() > 1;
  };
  const auto options = at::TensorOptions().dtype(at::kInt);
  int64_t kept_bytes = 0;
  for (const at::Tensor& t : kept) kept_bytes += t.nbytes();
  for (at::Tensor& t : kept) {
    if (in_use(t)) continue;
    if (t.numel() < n) {
      if (kept_bytes - static_cast<int64_t>(t.nbytes()) + n * 4 > kKeptPackBytes) continue;
      t = at::empty({n}, options);
    }
    return t.narrow(0, 0, n);
  }
  if (kept_bytes + n * 4 > kKeptPackBytes) return at::empty({n}, options);
  kept.push_back(at::empty({n}, options));
  return kept.back().narrow(0, 0, n);
}

// Zeros into a packed panel (kp_padded pair rows of kPanel) where its weight has no entry: past its
// `cols` columns, and in the pair rows from `pairs` on (k's pairs end there).
void zero_padding(uint32_t* panel, int64_t pairs, int64_t kp_padded, int64_t cols) {
  if (cols < kPanel) {
    for (int64_t q = 0; q < pairs; ++q) std::fill(panel + q * kPanel + cols, panel + (q + 1) * kPanel, 0u);
  }
  std::fill(panel + pairs * kPanel, panel + kp_padded * kPanel, 0u);
}

// A bfloat16 w (k, n), row-major, packed as b = w without a transposed copy of it first (a backward's
// W_hh: the copy was as large as the packed weight, and came on top of a bfloat16 GRU's backward peak):
// pair (w[2q][c], w[2q + 1][c]) at row q, column c of its panel, the bits as they are.
void pack_columns_of(const at::Tensor& w, PackedWeight& packed) {
  const at::Tensor rows = w.contiguous();
  const uint16_t* src = reinterpret_cast<const uint16_t*>(rows.data_ptr<c10::BFloat16>());
  uint32_t* dst = reinterpret_cast<uint32_t*>(packed.storage.data_ptr<int32_t>());
  const int64_t n = packed.n, k = packed.k;
  at::parallel_for(0, packed.panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t panel = p0; panel < p1; ++panel) {
      const int64_t c0 = panel * kPanel, cols = std::min<int64_t>(kPanel, n - c0);
      uint32_t* out = dst + panel * packed.kp * kPanel;
      for (int64_t q = 0; 2 * q < k; ++q) {
        const uint16_t* even = src + 2 * q * n + c0;
        const uint16_t* odd = 2 * q + 1 < k ? even + n : nullptr;
        for (int64_t c = 0; c < cols; ++c) out[q * kPanel + c] = even[c] | (odd ? uint32_t{odd[c]} << 16 : 0u);
      }
      zero_padding(out, (k + 1) / 2, packed.kp, cols);
    }
  });
}

// pack() for w's element type W: float or c10::BFloat16.
template <typename W>
PackedWeight pack_as(const at::Tensor& w_in, bool transposed) {
  PackedWeight packed;
  packed.n = transposed ? w_in.size(0) : w_in.size(1);
  packed.k = transposed ? w_in.size(1) : w_in.size(0);
  packed.panels = (packed.n + kPanel - 1) / kPanel;
  const int64_t kp = (packed.k + 1) / 2;
  packed.kp = (kp + kAmxPairs - 1) / kAmxPairs * kAmxPairs;
  packed.storage = packing_buffer(packed.panels * packed.kp * kPanel);
  packed.pairs = reinterpret_cast<const uint32_t*>(packed.storage.data_ptr<int32_t>());
  if constexpr (std::is_same_v<W, c10::BFloat16>) {
    if (transposed) {
      pack_rows_of(w_in, packed);
    } else {
      pack_columns_of(w_in, packed);
    }
    return packed;
  }
  // b = w^T: a row of w is a column of b. Otherwise its rows are b's columns after one transpose.
  const at::Tensor columns = transposed ? w_in.contiguous() : w_in.t().contiguous();  // (n, k)
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
      uint32_t* out = dst + panel * packed.kp * kPanel;
      for (int64_t q = 0; q < kp; ++q) {
        for (int64_t c = 0; c < cols; ++c) out[q * kPanel + c] = pairs[c * kp + q];
      }
      zero_padding(out, kp, packed.kp, cols);
    }
  });
  return packed;
}

// A block of a's rows at a time (all of a step's rows but for groups of more than 128), rounded once
// before its panels are split between threads, so that each panel reads the block from the core's L2
// rather than all of a from memory.
constexpr int64_t kRowBlock = 128;
static_assert(kRowBlock % kAmxRows == 0);

// Rows [i0, i0 + rows) of a (rows <= kRowBlock) rounded to pairs into `pairs` (b.kp apart, zero past k),
// for the AMX tiles followed by zero rows up to a multiple of kAmxRows (the tiles read whole blocks).
// One buffer per calling thread: row groups (row_groups.h) and the unit-split loops (unit_split.h) call
// the products from several threads at once.
template <typename A>
const uint32_t* round_block(const A* a, int64_t lda, int64_t i0, int64_t rows, const PackedWeight& b, bool amx) {
  thread_local std::vector<uint32_t> pairs;
  const int64_t padded = amx ? (rows + kAmxRows - 1) / kAmxRows * kAmxRows : rows;
  if (static_cast<int64_t>(pairs.size()) < padded * b.kp) pairs.resize(padded * b.kp);
  for (int64_t i = 0; i < rows; ++i)
    round_row(a + (i0 + i) * lda, b.k, 2 * b.kp, reinterpret_cast<uint16_t*>(pairs.data() + i * b.kp));
  std::fill(pairs.begin() + rows * b.kp, pairs.begin() + padded * b.kp, uint32_t{0});
  return pairs.data();
}

// Panels [first, last) of the product for `rows` rows of a's pairs (round_block) into `dst`, the
// column 32 first of a row-major out (ldo apart).
void run_panels(const uint32_t* a_pairs, const PackedWeight& b, float* dst, int64_t ldo, int64_t rows,
                bool accumulate, int64_t first, int64_t last, bool amx) {
  const uint32_t* panels = b.pairs + first * b.kp * kPanel;
  if (amx) return amx_panels(a_pairs, b.kp, panels, dst, ldo, rows, b.n - first * kPanel, accumulate, 0, last - first);
  const int64_t kp = (b.k + 1) / 2;  // pairs in k; a's rows and b's panels have b.kp, zero-padded
  gemm_panels_of(a_pairs, b.kp, 1, panels, b.kp * kPanel, kp, dst, ldo, rows, last - first,
                 std::min(b.n, last * kPanel) - first * kPanel, accumulate ? Into::add_after : Into::write);
}

// Panels [p0, p1) of the product, split between threads where `parallel`.
template <typename A>
void gemm_as(const A* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
             bool accumulate, int64_t p0, int64_t p1, bool parallel) {
  if (m == 0 || p0 >= p1) return;
  const bool amx = cpu_has_amx();
  const int64_t block_rows = std::min(m, kRowBlock);
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, block_rows * b.k * kPanel));
  for (int64_t i0 = 0; i0 < m; i0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, m - i0);
    const uint32_t* a_pairs = round_block(a, lda, i0, rows, b, amx);
    const auto run = [&](int64_t first, int64_t last) {
      run_panels(a_pairs, b, out + i0 * ldo + first * kPanel, ldo, rows, accumulate, first, last, amx);
    };
    if (parallel) {
      at::parallel_for(p0, p1, grain, run);
    } else {
      run(p0, p1);
    }
  }
}

// Columns [c0 + r stride, c1 + r stride) of the product alone, for r < repeats, on the calling thread
// (a's rows rounded once for all the ranges). The panels inside a range write into out; a panel the range
// cuts is made whole into the thread's scratch, and only its columns inside the range go to out: every
// element summed as gemm_as sums it, and no column outside the ranges written (another thread may be
// writing it).
template <typename A>
void gemm_columns_as(const A* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
                     bool accumulate, int64_t c0, int64_t c1, int64_t repeats, int64_t stride) {
  if (m == 0 || c0 >= c1) return;
  const bool amx = cpu_has_amx();
  thread_local std::vector<float> cut;  // a cut panel's sums, kPanel apart
  if (static_cast<int64_t>(cut.size()) < kRowBlock * kPanel) cut.resize(kRowBlock * kPanel);
  for (int64_t i0 = 0; i0 < m; i0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, m - i0);
    const uint32_t* a_pairs = round_block(a, lda, i0, rows, b, amx);
    float* o = out + i0 * ldo;
    for (int64_t r = 0; r < repeats; ++r) {
      const int64_t lo = c0 + r * stride, hi = c1 + r * stride;
      // A panel the range cuts: made whole into `cut`, its columns inside the range copied (or added).
      const auto cut_panel = [&](int64_t p) {
        const int64_t start = p * kPanel;
        run_panels(a_pairs, b, cut.data(), kPanel, rows, /*accumulate=*/false, p, p + 1, amx);
        const int64_t first = std::max(lo, start), last = std::min({hi, start + kPanel, b.n});
        for (int64_t i = 0; i < rows; ++i) {
          const float* sums = cut.data() + i * kPanel;
          float* row = o + i * ldo;
          for (int64_t c = first; c < last; ++c) row[c] = accumulate ? sums[c - start] + row[c] : sums[c - start];
        }
      };
      // Panels [whole0, whole1) lie inside the range (the last one may end at b.n).
      const int64_t whole0 = (lo + kPanel - 1) / kPanel;
      const int64_t whole1 = hi == b.n ? (hi + kPanel - 1) / kPanel : hi / kPanel;
      if (whole0 >= whole1) {  // within one or two panels, neither whole
        for (int64_t p = lo / kPanel; p * kPanel < hi; ++p) cut_panel(p);
        continue;
      }
      if (lo < whole0 * kPanel) cut_panel(whole0 - 1);
      run_panels(a_pairs, b, o + whole0 * kPanel, ldo, rows, accumulate, whole0, whole1, amx);
      if (whole1 * kPanel < hi) cut_panel(whole1);
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
// The RA x 8 sums stay in registers. (A 4 x 4 tile, reading each row of w once for 4 rows of a, was
// slower than two 2 x 8 tiles on the Zen 4 here, LSTM B=4 H=256 1.75 against 1.65 ms: the products, not
// the reads of w, set the pace.)
template <int RA>
void matvec_tile(const uint16_t* const* w_rows, int rows, const uint16_t* a, int64_t kp32, int64_t k,
                 float* out, int64_t ldo, bool accumulate) {
  __m512 acc[RA][kMatvecRows];
  for (int i = 0; i < RA; ++i) {
    for (int r = 0; r < kMatvecRows; ++r) acc[i][r] = _mm512_setzero_ps();
  }
  // 32 pairs of k a step, w's past k masked to zeros.
  const auto step = [&](int64_t p, __mmask32 mask) {
    __m512i av[RA];
    for (int i = 0; i < RA; ++i) av[i] = _mm512_loadu_si512(a + i * kp32 + p);
    for (int r = 0; r < kMatvecRows; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mask, w_rows[r] + p);
      for (int i = 0; i < RA; ++i) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], (__m512bh)wv, (__m512bh)av[i]);
    }
  };
  const __mmask32 tail = static_cast<__mmask32>((uint64_t{1} << (k % (2 * kLanes))) - 1);
  if constexpr (RA == 3) {
    // One loop, the last step's mask chosen in it, and the reduction below unrolled: with the last step
    // as a second call, GCC 12 kept the 3-row tile's 24 sums in memory too and stored them all at every
    // step (3 rows of a took as long as 4). The 1- and 2-row tiles stay in registers either way, and run
    // 5-10% faster with the second call.
    for (int64_t p = 0; p < k; p += 2 * kLanes) step(p, k - p >= 2 * kLanes ? ~__mmask32{0} : tail);
  } else {
    int64_t p = 0;
    for (; p + 2 * kLanes <= k; p += 2 * kLanes) step(p, ~__mmask32{0});
    if (p < k) step(p, tail);
  }
  const __mmask8 valid = static_cast<__mmask8>((1u << rows) - 1);
#pragma GCC unroll 4
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

void gemm_columns(const float* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
                  bool accumulate, int64_t c0, int64_t c1, int64_t repeats, int64_t stride) {
  gemm_columns_as(a, lda, b, out, ldo, m, accumulate, c0, c1, repeats, stride);
}
void gemm_columns(const c10::BFloat16* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
                  bool accumulate, int64_t c0, int64_t c1, int64_t repeats, int64_t stride) {
  gemm_columns_as(a, lda, b, out, ldo, m, accumulate, c0, c1, repeats, stride);
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
void gemm_columns(const float*, int64_t, const PackedWeight&, float*, int64_t, int64_t, bool, int64_t, int64_t,
                  int64_t, int64_t) {
  TORCH_CHECK(false, "no bfloat16 products in this build");
}
void gemm_columns(const c10::BFloat16*, int64_t, const PackedWeight&, float*, int64_t, int64_t, bool, int64_t,
                  int64_t, int64_t, int64_t) {
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

namespace fastcells::cpu::bf16 {

void matvec_matrices(const at::Tensor& w, const at::Tensor& a, at::Tensor& out, int64_t begin, int64_t end,
                     bool accumulate) {
  TORCH_CHECK(cpu_has_products(), "bf16::matvec_matrices: this CPU has no AVX-512 BF16");
  TORCH_CHECK(w.dim() == 2 && a.dim() == 2 && out.dim() == 2, "bf16::matvec_matrices: matrices expected");
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && a.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "bf16::matvec_matrices: w bfloat16, a and out float32");
  TORCH_CHECK(w.size(1) == a.size(1) && out.size(0) == a.size(0) && out.size(1) == w.size(0),
              "bf16::matvec_matrices: shapes ", w.sizes(), ", ", a.sizes(), ", ", out.sizes());
  TORCH_CHECK(w.stride(1) == 1 && a.stride(1) == 1 && out.stride(1) == 1,
              "bf16::matvec_matrices: unit column strides expected");
  TORCH_CHECK(0 <= begin && begin <= end && end <= w.size(0), "bf16::matvec_matrices: rows [", begin, ", ", end,
              ") of w, which has ", w.size(0));
  matvec_rows(w.data_ptr<c10::BFloat16>(), w.stride(0), a.data_ptr<float>(), a.stride(0), a.size(0), a.size(1),
              out.data_ptr<float>(), out.stride(0), begin, end, accumulate);
}

void packed_columns_matrices(const at::Tensor& w, const at::Tensor& a, at::Tensor& out, int64_t c0, int64_t c1,
                             bool accumulate, int64_t repeats, int64_t stride) {
  TORCH_CHECK(cpu_has_products(), "bf16::packed_columns_matrices: this CPU has no AVX-512 BF16");
  TORCH_CHECK(w.dim() == 2 && a.dim() == 2 && out.dim() == 2, "bf16::packed_columns_matrices: matrices expected");
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && a.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "bf16::packed_columns_matrices: w bfloat16, a and out float32");
  TORCH_CHECK(w.size(1) == a.size(1) && out.size(0) == a.size(0) && out.size(1) == w.size(0),
              "bf16::packed_columns_matrices: shapes ", w.sizes(), ", ", a.sizes(), ", ", out.sizes());
  TORCH_CHECK(a.stride(1) == 1 && out.stride(1) == 1, "bf16::packed_columns_matrices: unit column strides expected");
  TORCH_CHECK(repeats >= 1 && (repeats == 1 || stride >= c1 - c0), "bf16::packed_columns_matrices: ", repeats,
              " ranges ", stride, " apart overlap");
  TORCH_CHECK(0 <= c0 && c0 <= c1 && c1 + (repeats - 1) * stride <= w.size(0),
              "bf16::packed_columns_matrices: columns [", c0, ", ", c1, ") + ", repeats - 1, " x ", stride, " of ",
              w.size(0));
  const PackedWeight b = pack(w, /*transposed=*/true);
  gemm_columns(a.data_ptr<float>(), a.stride(0), b, out.data_ptr<float>(), out.stride(0), a.size(0), accumulate,
               c0, c1, repeats, stride);
}

}  // namespace fastcells::cpu::bf16
