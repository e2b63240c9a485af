// Products of a few rows with a weight matrix, read in place (no packing), on the CPU.
//
// Each time step multiplies the state (m rows) by a weight matrix. For a few rows, at::mm costs a
// few µs of dispatch and packing before any arithmetic, more than the arithmetic itself at small H,
// so up to kSmallRows rows we use vectorized dot products and axpys. Layers with more rows use the
// packed GEMM of gemm_cpu.h; the cell step ops, which cannot amortize packing, hand them to at::mm.
#pragma once

#include "isa_namespace.h"
#include "ops_cpu.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if FASTCELLS_ISA_AVX2
#include <immintrin.h>
#endif

namespace fastcells::cpu::FASTCELLS_ISA {

// kSmallRows (ops_cpu.h): the most rows multiplied by these mat-vecs.

// Vectors as wide as the copy's registers (isa.h): 64 bytes where it may use AVX-512, else 32 (AVX2
// registers; two SSE registers each in the baseline copy).
#if FASTCELLS_ISA_AVX512
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int kLanes = kVecBytes / sizeof(T);
  static constexpr int kPanel = 2 * kLanes;  // panel width in columns
};


// Work (multiply-adds) below which a loop stays on one thread: waking the other core costs ~1-2 µs.
constexpr int64_t kParallelWork = 1 << 16;

// Weights W are T, or bfloat16 or float16 in a call in that dtype of at most kSmallRows rows (a cell
// step: step_projections below; a layer: gemm_cpu.h's StepProduct), each element widened to T exactly as
// it is read: the products are those of a float32 copy of the weights, which is never made (for
// bfloat16, the dot products of dot8 and dot8x2 add them in another order: widen16). On CPUs with
// AVX-512 BF16 the mat-vecs of bfloat16 weights multiply in bfloat16 instead (bf16_matvecs below).

// A bfloat16 value as float: its 16 bits on top of a float's 32 (exact; what c10::BFloat16 does, in a
// form the loops below vectorize).
inline float widen(c10::BFloat16 w) {
  uint32_t bits = uint32_t{w.x} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
// A float16 value as float (exact), in a form the loops vectorize (no branch; c10::Half's conversion,
// one F16C instruction per value at best, keeps them scalar): normal numbers rebias the exponent
// (127 - 15 = 112), subnormals are their 10 bits times 2^-24 (0.5 + m 2^-24 exactly, less 0.5), and
// infinities and NaNs keep their payload under an all-ones exponent.
inline float widen(c10::Half w) {
  const uint32_t bits = w.x, sign = (bits & 0x8000u) << 16, magnitude = bits & 0x7FFFu;
  const uint32_t normal = (magnitude << 13) + (112u << 23);
  const uint32_t special = (magnitude << 13) | 0x7F800000u;
  const uint32_t subnormal_bits = 0x3F000000u + magnitude;
  float subnormal;
  std::memcpy(&subnormal, &subnormal_bits, sizeof(subnormal));
  subnormal -= 0.5f;
  uint32_t subnormal_out;
  std::memcpy(&subnormal_out, &subnormal, sizeof(subnormal_out));
  const uint32_t out = sign | (magnitude < 0x0400u ? subnormal_out : magnitude >= 0x7C00u ? special : normal);
  float f;
  std::memcpy(&f, &out, sizeof(f));
  return f;
}
template <typename T>
inline T widen(T w) {
  return w;
}

// m rows of k bfloat16 or float16 values (S), a row every lda, widened into dst, a row every ldd (exact):
// the rows of a layer stored in 16 bits (storage.h) for the mat-vecs, which take rows in T.
template <typename S>
inline void widen_rows(const S* a, int64_t lda, float* dst, int64_t ldd, int64_t m, int64_t k) {
  for (int64_t i = 0; i < m; ++i) {
#pragma omp simd
    for (int64_t p = 0; p < k; ++p) dst[i * ldd + p] = widen(a[i * lda + p]);
  }
}

// A vector V (of T) loaded from w: the values as they are, or widened from bfloat16 or float16.
template <typename V, typename W>
inline V load_widened(const W* w) {
  using T = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;
  V v;
  if constexpr (std::is_same_v<W, T>) {
    std::memcpy(&v, w, sizeof(V));
  } else if constexpr (std::is_same_v<W, c10::Half>) {
    static_assert(std::is_same_v<T, float> && sizeof(V) == kVecBytes);
#if FASTCELLS_ISA_AVX512
    const __m512 wide = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
#elif FASTCELLS_ISA_AVX2
    const __m256 wide = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
#else
    float wide[kVecBytes / sizeof(float)];
    for (size_t q = 0; q < kVecBytes / sizeof(float); ++q) wide[q] = widen(w[q]);
#endif
    std::memcpy(&v, &wide, sizeof(V));
  } else {
    static_assert(std::is_same_v<W, c10::BFloat16> && std::is_same_v<T, float> && sizeof(V) == kVecBytes);
    typedef uint16_t Bits __attribute__((vector_size(kVecBytes / 2)));
    typedef uint32_t Words __attribute__((vector_size(kVecBytes)));
    Bits bits;
    std::memcpy(&bits, w, sizeof(bits));
    const Words wide = __builtin_convertvector(bits, Words) << 16;
    std::memcpy(&v, &wide, sizeof(V));
  }
  return v;
}

// body(w) with the data of the weight tensor w as the mat-vecs below read it: const T*, or const
// c10::BFloat16* or c10::Half* where T is float and w in that dtype.
template <typename T, typename F>
inline void with_weights(const at::Tensor& w, const F& body) {
  if constexpr (std::is_same_v<T, float>) {
    if (w.scalar_type() == at::kBFloat16) return body(w.data_ptr<c10::BFloat16>());
    if (w.scalar_type() == at::kHalf) return body(w.data_ptr<c10::Half>());
  }
  body(w.data_ptr<T>());
}

template <typename T, typename W>
inline T dot(const W* w, const T* a, int64_t k) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t p = 0; p < k; ++p) acc += widen(w[p]) * a[p];
  return acc;
}

// Four dot products against the same vector: four independent accumulator chains, so the FMA latency
// is hidden (one chain per row left the mat-vec latency-bound at ~4x the arithmetic time).
template <typename T, typename W>
inline void dot4(const W* w, int64_t ldw, const T* a, int64_t k, T* out) {
  const W* w0 = w;
  const W* w1 = w + ldw;
  const W* w2 = w + 2 * ldw;
  const W* w3 = w + 3 * ldw;
  T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t p = 0; p < k; ++p) {
    const T x = a[p];
    s0 += widen(w0[p]) * x;
    s1 += widen(w1[p]) * x;
    s2 += widen(w2[p]) * x;
    s3 += widen(w3[p]) * x;
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

#if FASTCELLS_ISA_AVX2
// Eight float dot products against the same vector, reduced together: the eight accumulators are
// summed with one hadd/permute tree instead of eight horizontal sums, which at k = 64 cost more than
// the multiply-adds (a B=1, H=64 LSTM step spent ~5 µs in reductions).
inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
inline __m256 load8(const c10::BFloat16* w) {  // 8 bfloat16 widened to float
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
inline __m256 load8(const c10::Half* w) {  // 8 float16 widened to float (F16C: every AVX2 CPU has it)
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
}

// hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7]: two rounds give each row's
// sum over each 128-bit half; the permutes line the halves up so one add finishes all eight rows.
inline void store_sums8(const __m256* acc, float* out) {
  const __m256 r01 = _mm256_hadd_ps(acc[0], acc[1]), r23 = _mm256_hadd_ps(acc[2], acc[3]);
  const __m256 r45 = _mm256_hadd_ps(acc[4], acc[5]), r67 = _mm256_hadd_ps(acc[6], acc[7]);
  const __m256 r0123 = _mm256_hadd_ps(r01, r23), r4567 = _mm256_hadd_ps(r45, r67);
  const __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(r0123, r4567, 0x20),
                                    _mm256_permute2f128_ps(r0123, r4567, 0x31));
  _mm256_storeu_ps(out, sums);
}

// bfloat16 weights 16 at a time, without widening each one (load8's zero-extension and shift, twice the
// instructions of a float32 load and a bottleneck of the bfloat16 mat-vecs): their 256 bits read as 8
// 32-bit words hold the even elements in the high halves and the odd ones in the low halves, so the words
// shifted left by 16 are the even elements as floats and the words with the low half cleared the odd
// ones. a's 16 values are split the same way (split16), once for all the rows that share them. The
// products are the same (exact); the order of their sums is not that of a float32 copy's.
inline void widen16(const c10::BFloat16* w, __m256& even, __m256& odd) {
  const __m256i words = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  even = _mm256_castsi256_ps(_mm256_slli_epi32(words, 16));
  odd = _mm256_castsi256_ps(_mm256_and_si256(words, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
inline void split16(const float* a, __m256& even, __m256& odd) {
  const __m256 x0 = _mm256_loadu_ps(a), x1 = _mm256_loadu_ps(a + 8);
  // shuffle_ps pairs x0's and x1's 128-bit lanes ([a0 a2 a8 a10 | a4 a6 a12 a14]); the permute of
  // 64-bit pairs puts them in order.
  const auto in_order = [](__m256 v) {
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
  };
  even = in_order(_mm256_shuffle_ps(x0, x1, _MM_SHUFFLE(2, 0, 2, 0)));
  odd = in_order(_mm256_shuffle_ps(x0, x1, _MM_SHUFFLE(3, 1, 3, 1)));
}

template <typename W>
inline void dot8(const W* w, int64_t ldw, const float* a, int64_t k, float* out) {
  __m256 acc[8];
  for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
  int64_t p = 0;
  if constexpr (std::is_same_v<W, c10::BFloat16>) {
    for (; p + 16 <= k; p += 16) {
      __m256 a_even, a_odd;
      split16(a + p, a_even, a_odd);
      for (int r = 0; r < 8; ++r) {
        __m256 w_even, w_odd;
        widen16(w + r * ldw + p, w_even, w_odd);
        acc[r] = _mm256_fmadd_ps(w_odd, a_odd, _mm256_fmadd_ps(w_even, a_even, acc[r]));
      }
    }
  }
  for (; p + 8 <= k; p += 8) {
    const __m256 av = _mm256_loadu_ps(a + p);
    for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(load8(w + r * ldw + p), av, acc[r]);
  }
  store_sums8(acc, out);
  for (; p < k; ++p) {
    for (int r = 0; r < 8; ++r) out[r] += widen(w[r * ldw + p]) * a[p];
  }
}

#if FASTCELLS_ISA_AVX512
// dot8 for two vectors a0 and a1 at once, each weight vector loaded once for both: the mat-vecs of 2-4
// rows read the weight (from L2, at these sizes) half as often. Each sum is dot8's, operation for
// operation. 16 accumulators: AVX-512's 32 registers only (AVX2's 16 would spill).
template <typename W>
inline void dot8x2(const W* w, int64_t ldw, const float* a0, const float* a1, int64_t k, float* out0,
                   float* out1) {
  __m256 acc0[8], acc1[8];
  for (int r = 0; r < 8; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  int64_t p = 0;
  if constexpr (std::is_same_v<W, c10::BFloat16>) {  // as dot8
    for (; p + 16 <= k; p += 16) {
      __m256 a0_even, a0_odd, a1_even, a1_odd;
      split16(a0 + p, a0_even, a0_odd);
      split16(a1 + p, a1_even, a1_odd);
      for (int r = 0; r < 8; ++r) {
        __m256 w_even, w_odd;
        widen16(w + r * ldw + p, w_even, w_odd);
        acc0[r] = _mm256_fmadd_ps(w_odd, a0_odd, _mm256_fmadd_ps(w_even, a0_even, acc0[r]));
        acc1[r] = _mm256_fmadd_ps(w_odd, a1_odd, _mm256_fmadd_ps(w_even, a1_even, acc1[r]));
      }
    }
  }
  for (; p + 8 <= k; p += 8) {
    const __m256 av0 = _mm256_loadu_ps(a0 + p), av1 = _mm256_loadu_ps(a1 + p);
    for (int r = 0; r < 8; ++r) {
      const __m256 wv = load8(w + r * ldw + p);
      acc0[r] = _mm256_fmadd_ps(wv, av0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(wv, av1, acc1[r]);
    }
  }
  store_sums8(acc0, out0);
  store_sums8(acc1, out1);
  for (; p < k; ++p) {
    for (int r = 0; r < 8; ++r) {
      out0[r] += widen(w[r * ldw + p]) * a0[p];
      out1[r] += widen(w[r * ldw + p]) * a1[p];
    }
  }
}

// dot8 for four vectors a[0..3] (float32 weights), each weight vector loaded once for all four: a
// mat-vec of 4 rows reads the weight (from L2) half as often as two dot8x2 passes (LSTM T=100 B=4 H=256
// inference on the Intel Xeon: 3.0 to 2.5 ms). The 8 weight rows go as two halves of 4 (16
// accumulators), each sum made as dot8 makes it: every accumulator gets the same fused multiply-adds in
// the same order, store_sums8 reduces each one alone, and the tail adds the same products in the same
// order. (A row's sum does not depend on the number of threads: they split rows, never vectors.)
inline void dot8x4(const float* w, int64_t ldw, const float* const* a, int64_t k, float (*out)[8]) {
  for (int half = 0; half < 2; ++half) {
    const float* wh = w + half * 4 * ldw;
    __m256 acc[4][4];  // [vector][row of the half]
    for (int v = 0; v < 4; ++v) {
      for (int r = 0; r < 4; ++r) acc[v][r] = _mm256_setzero_ps();
    }
    int64_t p = 0;
    for (; p + 8 <= k; p += 8) {
      __m256 av[4];
      for (int v = 0; v < 4; ++v) av[v] = _mm256_loadu_ps(a[v] + p);
      for (int r = 0; r < 4; ++r) {
        const __m256 wv = _mm256_loadu_ps(wh + r * ldw + p);
        for (int v = 0; v < 4; ++v) acc[v][r] = _mm256_fmadd_ps(wv, av[v], acc[v][r]);
      }
    }
    for (int v = 0; v < 4; v += 2) {  // store_sums8 of 8 accumulators: rows of the half, two vectors
      const __m256 pair[8] = {acc[v][0], acc[v][1], acc[v][2], acc[v][3],
                              acc[v + 1][0], acc[v + 1][1], acc[v + 1][2], acc[v + 1][3]};
      float sums[8];
      store_sums8(pair, sums);
      for (int r = 0; r < 4; ++r) {
        out[v][half * 4 + r] = sums[r];
        out[v + 1][half * 4 + r] = sums[4 + r];
      }
    }
    for (; p < k; ++p) {
      for (int r = 0; r < 4; ++r) {
        for (int v = 0; v < 4; ++v) out[v][half * 4 + r] += wh[r * ldw + p] * a[v][p];
      }
    }
  }
}
#endif
#endif

// out[j] = dot(w row j, a) for j in [begin, end), or += when accumulate. Rows go by 8, then 4, then 1,
// each summed its own way: callers split [0, n) between threads at multiples of 8 (for_row_blocks), so
// that which way a row takes, and so its result, does not depend on the split.
template <typename T, typename W>
inline void matvec_rows(const W* w, int64_t ldw, const T* a, int64_t k, T* out, int64_t begin,
                        int64_t end, bool accumulate) {
  int64_t j = begin;
  T v[8];
#if FASTCELLS_ISA_AVX2
  if constexpr (std::is_same_v<T, float>) {
    for (; j + 8 <= end; j += 8) {
      dot8(w + j * ldw, ldw, a, k, v);
      for (int q = 0; q < 8; ++q) out[j + q] = accumulate ? out[j + q] + v[q] : v[q];
    }
  }
#endif
  for (; j + 4 <= end; j += 4) {
    dot4(w + j * ldw, ldw, a, k, v);
    for (int q = 0; q < 4; ++q) out[j + q] = accumulate ? out[j + q] + v[q] : v[q];
  }
  for (; j < end; ++j) {
    const T d = dot(w + j * ldw, a, k);
    out[j] = accumulate ? out[j] + d : d;
  }
}

// Whether the mat-vecs of bfloat16 weights multiply in bfloat16 (bf16_products.h's matvec_rows, on
// VDPBF16PS) rather than widen each weight to float32: in the AVX-512 copy, on a CPU with AVX-512 BF16.
// A choice of the CPU alone, the same in every thread. The products then take a rounded to bfloat16:
// exact for a cell step's x and h and a layer's x (bfloat16 tensors), and for a layer's h what
// torch.nn keeps between steps.
inline bool bf16_matvecs() {
#if FASTCELLS_ISA_AVX512
  return bf16::cpu_has_products();
#else
  return false;
#endif
}

// matvec_rows for m vectors: out row i (stride ldo) gets w rows [begin, end) times a row i (stride lda).
// Where AVX-512 allows, four vectors (float32 weights: dot8x4) or pairs (dot8x2) share each load of w
// in the 8-row blocks, with every sum as matvec_rows makes it; bfloat16 weights go to bf16_matvecs()
// where it is on.
template <typename T, typename W>
inline void matvec_rows_multi(const W* w, int64_t ldw, const T* a, int64_t lda, int64_t m, int64_t k, T* out,
                              int64_t ldo, int64_t begin, int64_t end, bool accumulate) {
  int64_t i = 0;
#if FASTCELLS_ISA_AVX512
  if constexpr (std::is_same_v<T, float> && std::is_same_v<W, c10::BFloat16>) {
    if (bf16_matvecs()) return bf16::matvec_rows(w, ldw, a, lda, m, k, out, ldo, begin, end, accumulate);
  }
  if constexpr (std::is_same_v<T, float> && std::is_same_v<W, float>) {
    for (; i + 4 <= m; i += 4) {
      const T* a4[4] = {a + i * lda, a + (i + 1) * lda, a + (i + 2) * lda, a + (i + 3) * lda};
      T* o4[4] = {out + i * ldo, out + (i + 1) * ldo, out + (i + 2) * ldo, out + (i + 3) * ldo};
      int64_t j = begin;
      T v[4][8];
      for (; j + 8 <= end; j += 8) {
        dot8x4(w + j * ldw, ldw, a4, k, v);
        for (int r = 0; r < 4; ++r) {
          for (int q = 0; q < 8; ++q) o4[r][j + q] = accumulate ? o4[r][j + q] + v[r][q] : v[r][q];
        }
      }
      for (int r = 0; j < end && r < 4; ++r) {  // the 4-row and 1-row tails, as matvec_rows takes them
        matvec_rows(w + j * ldw, ldw, a4[r], k, o4[r] + j, 0, end - j, accumulate);
      }
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    for (; i + 2 <= m; i += 2) {
      const T* a0 = a + i * lda;
      T* o0 = out + i * ldo;
      T* o1 = o0 + ldo;
      int64_t j = begin;
      T v0[8], v1[8];
      for (; j + 8 <= end; j += 8) {
        dot8x2(w + j * ldw, ldw, a0, a0 + lda, k, v0, v1);
        for (int q = 0; q < 8; ++q) {
          o0[j + q] = accumulate ? o0[j + q] + v0[q] : v0[q];
          o1[j + q] = accumulate ? o1[j + q] + v1[q] : v1[q];
        }
      }
      if (j < end) {  // the 4-row and 1-row tails, one vector at a time as matvec_rows takes them
        matvec_rows(w + j * ldw, ldw, a0, k, o0 + j, 0, end - j, accumulate);
        matvec_rows(w + j * ldw, ldw, a0 + lda, k, o1 + j, 0, end - j, accumulate);
      }
    }
  }
#endif
  for (; i < m; ++i) matvec_rows(w, ldw, a + i * lda, k, out + i * ldo, begin, end, accumulate);
}

// out (m, n) += bias (n), broadcast over rows; with bias2, += (bias + bias2), each sum rounded as a tensor
// of them would be. The biases in T, or in 16 bits for T float (widened exactly, as float32 copies of them
// would be).
template <typename T, typename B>
inline void add_bias_rows(T* out, int64_t ldo, int64_t m, int64_t n, const B* bias, const B* bias2 = nullptr) {
  for (int64_t i = 0; i < m; ++i) {
    T* row = out + i * ldo;
    if (bias2) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) row[j] += widen(bias[j]) + widen(bias2[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) row[j] += widen(bias[j]);
    }
  }
}

// Grain (in batch rows) of the pointwise pass over rows of H units: one thread below 4096 units.
inline int64_t pointwise_grain(int64_t H) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, H)); }

// Grain (in rows of the weight) so that each thread gets at least kParallelWork multiply-adds.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kParallelWork / std::max<int64_t>(1, work_per_item));
}

// body(begin, end) over [0, n) split between threads at multiples of 8 (see matvec_rows), each
// thread getting at least `grain` rows.
template <typename F>
inline void for_row_blocks(int64_t n, int64_t grain, const F& body) {
  constexpr int64_t kBlock = 8;
  at::parallel_for(0, (n + kBlock - 1) / kBlock, std::max<int64_t>(1, grain / kBlock),
                   [&](int64_t b0, int64_t b1) { body(b0 * kBlock, std::min(b1 * kBlock, n)); });
}

template <typename T>
at::Tensor wrap(const T* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// out (m, n) = a (m, k) @ w (n, k)^T, or += when accumulate, as mat-vecs reading w in place, its rows
// split between threads. Row-major, leading dims given.
template <typename T, typename W>
void matvecs_nt(const T* a, int64_t lda, const W* w, int64_t ldw, T* out, int64_t ldo, int64_t m,
                int64_t n, int64_t k, bool accumulate) {
  if (m == 0 || n == 0) return;
  for_row_blocks(n, grain_for(m * k), [&](int64_t begin, int64_t end) {
    matvec_rows_multi(w, ldw, a, lda, m, k, out, ldo, begin, end, accumulate);
  });
}

// out (m, n) = a (m, k) @ w (n, k)^T, or += when accumulate. Row-major, leading dims given.
// More than kSmallRows rows go to at::mm (the cell step ops with a batch; w in T).
template <typename T, typename W>
void matmul_nt(const T* a, int64_t lda, const W* w, int64_t ldw, T* out, int64_t ldo, int64_t m,
               int64_t n, int64_t k, bool accumulate) {
  if (m == 0 || n == 0) return;
  if constexpr (std::is_same_v<T, W>) {
    if (m > kSmallRows) {
      at::Tensor o = wrap(out, m, n, ldo);
      if (accumulate) {
        o.addmm_(wrap(a, m, k, lda), wrap(w, n, k, ldw).t());
      } else {
        at::mm_out(o, wrap(a, m, k, lda), wrap(w, n, k, ldw).t());
      }
      return;
    }
  }
  matvecs_nt(a, lda, w, ldw, out, ldo, m, n, k, accumulate);
}

// Columns [begin, end) of matmul_nn's product, each output element one chain of multiply-adds over w's
// rows in order, starting from 0 (or from out when accumulating): the same sums however the columns
// are split. Each row of w an axpy over the columns into every output row (read once for all m rows).
template <typename T, typename W>
inline void matmul_nn_axpy(const T* a, int64_t lda, const W* w, int64_t ldw, T* out, int64_t ldo, int64_t m,
                           int64_t k, int64_t begin, int64_t end, bool accumulate) {
  if (!accumulate) {
    for (int64_t i = 0; i < m; ++i) std::fill(out + i * ldo + begin, out + i * ldo + end, T(0));
  }
  for (int64_t r = 0; r < k; ++r) {
    const W* w_row = w + r * ldw;
    for (int64_t i = 0; i < m; ++i) {
      const T coef = a[i * lda + r];
      T* o_row = out + i * ldo;
#pragma omp simd
      for (int64_t j = begin; j < end; ++j) o_row[j] += coef * widen(w_row[j]);
    }
  }
}

#if FASTCELLS_ISA_AVX2
// The chains of matmul_nn_axpy for M rows and kNnVecs vectors of columns from j, kept in registers
// through all k rows of w (the axpy form loads and stores every output at every row of w: store-bound,
// ~40 µs a step for B=4, H=256), each the same multiply-adds in the same order.
constexpr int kNnVecs = FASTCELLS_ISA_AVX512 ? 4 : 2;  // 16 or 8 sums + the loads in the registers

template <typename T, int M, typename W>
inline void matmul_nn_block(const T* a, int64_t lda, const W* w, int64_t ldw, T* out, int64_t ldo, int64_t k,
                            int64_t j, bool accumulate) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[M][kNnVecs];
  for (int i = 0; i < M; ++i) {
    for (int q = 0; q < kNnVecs; ++q) {
      if (accumulate) {
        std::memcpy(&acc[i][q], out + i * ldo + j + q * L, sizeof(V));
      } else {
        acc[i][q] = V{};
      }
    }
  }
  for (int64_t r = 0; r < k; ++r) {
    V wv[kNnVecs];
    for (int q = 0; q < kNnVecs; ++q) wv[q] = load_widened<V>(w + r * ldw + j + q * L);
    for (int i = 0; i < M; ++i) {
      const V coef = a[i * lda + r] - V{};  // a broadcast (x - 0 is x, -0.0 included)
      for (int q = 0; q < kNnVecs; ++q) acc[i][q] += coef * wv[q];
    }
  }
  for (int i = 0; i < M; ++i) {
    for (int q = 0; q < kNnVecs; ++q) std::memcpy(out + i * ldo + j + q * L, &acc[i][q], sizeof(V));
  }
}
#endif

// matmul_nn's product for columns [begin, end): register blocks of columns where the copy has the
// vectors for them, the axpy form for the rest.
template <typename T, typename W>
inline void matmul_nn_columns(const T* a, int64_t lda, const W* w, int64_t ldw, T* out, int64_t ldo,
                              int64_t m, int64_t k, int64_t begin, int64_t end, bool accumulate) {
  int64_t j = begin;
#if FASTCELLS_ISA_AVX2
  constexpr int64_t kBlock = kNnVecs * Vec<T>::kLanes;
  for (int64_t i = 0; i < m; i += 4) {
    const int64_t rows = std::min<int64_t>(4, m - i);
    const T* a_i = a + i * lda;
    T* out_i = out + i * ldo;
    for (j = begin; j + kBlock <= end; j += kBlock) {
      switch (rows) {
        case 4: matmul_nn_block<T, 4, W>(a_i, lda, w, ldw, out_i, ldo, k, j, accumulate); break;
        case 3: matmul_nn_block<T, 3, W>(a_i, lda, w, ldw, out_i, ldo, k, j, accumulate); break;
        case 2: matmul_nn_block<T, 2, W>(a_i, lda, w, ldw, out_i, ldo, k, j, accumulate); break;
        default: matmul_nn_block<T, 1, W>(a_i, lda, w, ldw, out_i, ldo, k, j, accumulate); break;
      }
    }
  }
#endif
  if (j < end) matmul_nn_axpy(a, lda, w, ldw, out, ldo, m, k, j, end, accumulate);
}

// out (m, n) = a (m, k) @ w (k, n), or += when accumulate, for a few rows (the backward of a step;
// more rows take the packed GEMM of gemm_cpu.h). Row-major, leading dims given.
template <typename T, typename W>
void matmul_nn(const T* a, int64_t lda, const W* w, int64_t ldw, T* out, int64_t ldo, int64_t m,
               int64_t n, int64_t k, bool accumulate) {
  if (m == 0 || n == 0) return;
  // Columns split across threads; each row of w is an axpy over the thread's columns.
  at::parallel_for(0, n, grain_for(m * k), [&](int64_t begin, int64_t end) {
    matmul_nn_columns(a, lda, w, ldw, out, ldo, m, k, begin, end, accumulate);
  });
}

// The two projections of a cell step, with their biases (nullptr: none), in one pass over the rows
// of both weights: gx (m, n) = x (m, kx) @ w_ih (n, kx)^T + b_ih and gh (m, n) = h (m, kh) @
// w_hh (n, kh)^T + b_hh. One parallel region instead of two, and each thread keeps the same weight
// rows on every call. Weights in bfloat16 (W) only up to kSmallRows rows (the at::mm path takes T).
template <typename T, typename W>
void step_projections(const T* x, int64_t kx, const W* w_ih, const T* b_ih, const T* h, int64_t kh,
                      const W* w_hh, const T* b_hh, T* gx, T* gh, int64_t m, int64_t n) {
  if (m > kSmallRows) {
    if constexpr (std::is_same_v<T, W>) {
      matmul_nt(x, kx, w_ih, kx, gx, n, m, n, kx, false);
      matmul_nt(h, kh, w_hh, kh, gh, n, m, n, kh, false);
    } else {
      TORCH_CHECK(false, "step_projections: weights in another dtype take at most ", kSmallRows, " rows");
    }
  } else if (m > 0 && n > 0) {
    for_row_blocks(n, grain_for(m * (kx + kh)), [&](int64_t begin, int64_t end) {
      matvec_rows_multi(w_ih, kx, x, kx, m, kx, gx, n, begin, end, false);
      matvec_rows_multi(w_hh, kh, h, kh, m, kh, gh, n, begin, end, false);
    });
  }
  if (b_ih) add_bias_rows(gx, n, m, n, b_ih);
  if (b_hh) add_bias_rows(gh, n, m, n, b_hh);
}

// The pre-activations of a cell step, gx and gh (2 * m * n values), and a bfloat16 step's tensors
// widened to float (storage.h's StepTensors): in a buffer of the calling thread's, reused from call to
// call, where they take at most kMaxBytes (a fresh tensor cost a step an allocation and was most of a
// B=1 step's memory: 2 of its 2.5 KiB at H=64), else in a fresh tensor. Also a bfloat16 layer's rows
// of a few rows widened for one product (gemm_cpu.h's StepProduct, lstm_cpu.inc).
// The ops never call back into Python, and each user holds the buffer for one step's or one product's
// work, calling no other user meanwhile: so a thread uses its buffer for one thing at a time.
template <typename T>
class StepScratch {
 public:
  StepScratch(int64_t count, const at::TensorOptions& options) {
    if (count * static_cast<int64_t>(sizeof(T)) <= kMaxBytes) {
      static thread_local at::Tensor buffer;  // a tensor: no std:: template instantiated in this copy
      if (!buffer.defined() || buffer.numel() < count) buffer = at::empty({count}, options);
      data_ = buffer.template data_ptr<T>();
    } else {
      tensor_ = at::empty({count}, options);
      data_ = tensor_.template data_ptr<T>();
    }
  }
  T* data() const { return data_; }

 private:
  static constexpr int64_t kMaxBytes = 64 << 10;
  at::Tensor tensor_;
  T* data_ = nullptr;
};

// Asks Linux to back the 2 MiB-aligned part of [data, data + bytes) with huge pages, before it is first
// written. glibc maps each allocation of more than 32 MiB afresh (and smaller ones at times), and every
// 4 KiB page of it then faults on its first write; transparent huge pages in "madvise" mode (a common
// default) take 2 MiB a fault where asked. An LSTM's training call at T=100 B=64 H=512 (92 MB of saved
// activations, 52 MB of gate gradients) took 255-257 ms with fresh 4 KiB pages, 204-209 with huge pages
// (forward and backward, 2 Zen 5 cores); smaller calls, whose tensors glibc mostly reuses, were unchanged.
// Tensors of at least kHugePagesFrom bytes only.
constexpr size_t kHugePagesFrom = size_t{4} << 20;
inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t first = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (first + kHuge - 1) & ~(kHuge - 1), end = (first + bytes) & ~(kHuge - 1);
  if (bytes >= kHugePagesFrom && end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// A fresh tensor straight from the CPU allocator: at::empty goes through the dispatcher, ~0.1-0.2 µs a
// tensor of a ~4 µs LSTMCell step at B=1 H=64, or of a ~20 µs one-step call of a 2-layer stack. Large
// ones are advised huge pages (advise_huge_pages).
inline at::Tensor cpu_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  at::Tensor t(at::detail::empty_cpu(sizes, dtype));
  advise_huge_pages(t.data_ptr(), t.nbytes());
  return t;
}

// A step op's output (rows, H), x's dtype.
inline at::Tensor step_output(int64_t rows, int64_t H, const at::Tensor& x) {
  return cpu_empty({rows, H}, x.scalar_type());
}

// The dtype a layer op's weights must have (checks.h's check_weight): x's, or bfloat16 for a bfloat16
// call's float32 arguments (a batch of at most kSmallRows rows: StepProduct; register_cpu.cpp checks the
// call's dtypes before converting). A cell step op gets a bfloat16 call's tensors all in bfloat16.
inline c10::optional<at::ScalarType> weights_dtype(const at::Tensor& x, const at::Tensor& w_ih) {
  if (x.scalar_type() == at::kFloat && w_ih.scalar_type() == at::kBFloat16) return at::kBFloat16;
  return c10::nullopt;
}

// step_projections of a step op's x (m, kx), h (m, kh) and biases (nullptr: none) in T, and its weight
// tensors; gx and gh (m, n). The weights are T or, in a bfloat16 or float16 step (T float), in that dtype:
// register_cpu.cpp passes those unconverted, and up to kSmallRows rows the mat-vecs read each element as
// it is. A cell
// step is one call, so converting the weights whole to float32 at every call was a copy per step,
// bigger than the step's work: 2 MiB for an LSTMCell at H=256, whose fresh allocation could page-fault
// on every call (0.1-0.5 ms a step, against 25 µs in float32).
template <typename T>
void step_projections(const T* x, int64_t kx, const at::Tensor& w_ih_in, const T* bi, const T* h, int64_t kh,
                      const at::Tensor& w_hh_in, const T* bh, T* gx, T* gh, int64_t m) {
  const int64_t n = w_ih_in.size(0);
  const at::Tensor w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  if constexpr (std::is_same_v<T, float>) {
    if (w_ih.scalar_type() == at::kBFloat16 && m <= kSmallRows) {
      step_projections(x, kx, w_ih.data_ptr<c10::BFloat16>(), bi, h, kh, w_hh.data_ptr<c10::BFloat16>(), bh, gx,
                       gh, m, n);
      return;
    }
    if (w_ih.scalar_type() == at::kHalf && m <= kSmallRows) {
      step_projections(x, kx, w_ih.data_ptr<c10::Half>(), bi, h, kh, w_hh.data_ptr<c10::Half>(), bh, gx, gh, m, n);
      return;
    }
  }
  const at::ScalarType t = c10::CppTypeToScalarType<T>::value;
  // (Weights in T already, as they are: Tensor.to goes through the dispatcher even where it does nothing.)
  const at::Tensor wi = w_ih.scalar_type() == t ? w_ih : w_ih.to(t), wh = w_hh.scalar_type() == t ? w_hh : w_hh.to(t);
  step_projections(x, kx, wi.data_ptr<T>(), bi, h, kh, wh.data_ptr<T>(), bh, gx, gh, m, n);
}

}  // namespace fastcells::cpu::FASTCELLS_ISA
