// Where a layer's tensors live in another dtype than its math: the storage type S of a layer op's
// sequence tensors (x, y, saved, dy) against the type T it computes in.
//
// A bfloat16 layer reads and writes its sequence tensors and weights in bfloat16 as they are, S =
// c10::BFloat16 and T = float: no float32 copy of x, y or the saved activations is ever made (those
// copies took a bfloat16 layer's peak memory above torch.nn's). On a CPU with the bfloat16 products
// (bf16_products.h), batches of more than kSmallRows rows multiply in bfloat16 (the packed products);
// elsewhere they multiply a packed float32 copy of the weights by rows widened a few steps at a time
// (gemm_cpu.h's StepProduct), and the backward's GEMMs over all rows take the bfloat16 operands as they
// are (MKL's bfloat16 GEMM) or float32 copies (gemm_operands). A few rows take the mat-vecs, which read
// the weights as they are and the rows they multiply widened, a few at a time (x for the up-front
// projection: step_input.h; each step's gate gradients in the backward: gemm_cpu.h's StepProduct,
// lstm_cpu.inc's unit split). The states, the products' sums and the gate math stay float32, and each
// value is rounded once, as it is stored, exactly as the float32 kernels' results were rounded by
// Tensor.to(torch.bfloat16) before.
//
// A float16 layer does the same with S = c10::Half, as a bfloat16 layer on a CPU without the bfloat16
// products does (float16 has no products of its own here: the weights are widened as they are read,
// packed in float16 for more than kSmallRows rows, the rows a few steps at a time), its backward's GEMMs
// over all rows on its operands widened to float32 (bf16_backward_gemm.h). (Converting all its tensors to
// float32 around the float32 kernels held 2.9-3.7x torch.nn's peak memory: LSTM T=50 B=16 H=256,
// inference 6.8 against 2.4 MiB, training 18.6 against 5.0; now 1.7 and 6.9 on Zen 5.) Everywhere else
// S = T.
#pragma once

#include "isa_namespace.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "gemm_cpu.h"
#include "matmul_cpu.h"

namespace fastcells::cpu::FASTCELLS_ISA {

// v rounded to bfloat16 to nearest even, NaN to a quiet NaN: c10::BFloat16(v)'s rounding, in a form
// that vectorizes (no branch).
inline c10::BFloat16 round_to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return c10::BFloat16(static_cast<uint16_t>(v != v ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
}

// v rounded to float16 to nearest even, as c10::Half(v) rounds it (NaN to a quiet NaN), in a form that
// vectorizes (no branch): normal results rebias the exponent (127 - 15 = 112) and round off 13 bits,
// a carry into the exponent included (values from 65520 up become infinity, larger ones are clamped to
// it); subnormal ones (below 2^-14) are rounded by the float addition |v| + 0.5, whose last bit is worth
// 2^-24, float16's smallest subnormal.
inline c10::Half round_to_half(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7FFFFFFFu;
  const uint32_t normal = std::min<uint32_t>(
      (magnitude - (112u << 23) + 0x0FFFu + ((magnitude >> 13) & 1u)) >> 13, 0x7C00u);
  float shifted;
  const uint32_t magnitude_bits = magnitude;
  std::memcpy(&shifted, &magnitude_bits, sizeof(shifted));
  shifted += 0.5f;
  uint32_t subnormal;
  std::memcpy(&subnormal, &shifted, sizeof(subnormal));
  subnormal -= 0x3F000000u;
  const uint32_t rounded = magnitude > 0x7F800000u ? 0x7E00u : magnitude < (113u << 23) ? subnormal : normal;
  return c10::Half(static_cast<uint16_t>(sign | rounded), c10::Half::from_bits());
}

// A computed value as the layer stores it.
template <typename S, typename T>
inline S stored(T v) {
  if constexpr (std::is_same_v<S, T>) {
    return v;
  } else if constexpr (std::is_same_v<S, c10::Half>) {
    static_assert(std::is_same_v<T, float>);
    return round_to_half(v);
  } else {
    static_assert(std::is_same_v<S, c10::BFloat16> && std::is_same_v<T, float>);
    return round_to_bf16(v);
  }
}

// n computed values stored at dst.
template <typename S, typename T>
inline void store_row(S* dst, const T* src, int64_t n) {
  if constexpr (std::is_same_v<S, T>) {
    std::memcpy(dst, src, n * sizeof(T));
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dst[j] = stored<S>(src[j]);
  }
}

// A stored value as the math reads it (exact).
template <typename T, typename S>
inline T loaded(S v) {
  return static_cast<T>(widen(v));
}

// A cell step's tensors (x, h, c, biases, outputs) in T, or in bfloat16 or float16 for a step in those,
// whose math runs in T = float: the step ops take them as they are and widen the inputs into their
// StepScratch (matmul_cpu.h), computing the outputs there too, rounded into their tensors at the end. So
// a 16-bit step allocates its two 16-bit outputs and nothing else: float32 copies of x, h, c and the
// biases, converted before the call and back after it, were most of such a step's memory (RNNCell H=64:
// 1.2 KiB against torch.nn's 0.4) and a microsecond each to allocate.
template <typename T>
class StepTensors {
 public:
  // Scratch enough for every tensor passed to in() and out() that is not in T (undefined ones: none).
  static int64_t scratch_for(std::initializer_list<const at::Tensor*> tensors) {
    int64_t count = 0;
    for (const at::Tensor* t : tensors) {
      if (t->defined() && t->scalar_type() != c10::CppTypeToScalarType<T>::value) count += t->numel();
    }
    return count;
  }

  explicit StepTensors(T* scratch) : cursor_(scratch) {}

  // An input's values in T (contiguous t): its own data, or widened into the scratch; nullptr for none.
  const T* in(const at::Tensor& t) {
    if (!t.defined()) return nullptr;
    if (t.scalar_type() == c10::CppTypeToScalarType<T>::value) return t.data_ptr<T>();
    T* dst = take(t.numel());
    if (t.scalar_type() == at::kHalf) {
      widen_values(t.data_ptr<c10::Half>(), dst, t.numel());
    } else {
      widen_values(t.data_ptr<c10::BFloat16>(), dst, t.numel());
    }
    return dst;
  }

  // Where to compute an output (contiguous t): its data, or the scratch until store(t, values).
  T* out(const at::Tensor& t) {
    return t.scalar_type() == c10::CppTypeToScalarType<T>::value ? t.data_ptr<T>() : take(t.numel());
  }
  static void store(const at::Tensor& t, const T* values) {
    if constexpr (std::is_same_v<T, float>) {  // only float steps take 16-bit tensors
      if (t.scalar_type() == at::kBFloat16) store_row(t.data_ptr<c10::BFloat16>(), values, t.numel());
      if (t.scalar_type() == at::kHalf) store_row(t.data_ptr<c10::Half>(), values, t.numel());
    }
  }

 private:
  template <typename S>
  static void widen_values(const S* src, T* dst, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {  // only float steps take 16-bit tensors
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) dst[j] = loaded<T>(src[j]);
    }
  }
  T* take(int64_t count) {
    T* first = cursor_;
    cursor_ += count;
    return first;
  }
  T* cursor_;
};

// Whether a layer op with tensors of this dtype (x's or dy's) keeps 16-bit storage (see above): every
// bfloat16 and float16 one. register_cpu.cpp passes such calls' tensors unconverted.
inline bool stores_16_bits(at::ScalarType dtype) {
  return dtype == at::kBFloat16 || dtype == at::kHalf;
}

// The dtype a layer op computes in for its tensors' dtype: float32 for 16-bit storage.
inline at::ScalarType compute_dtype(at::ScalarType dtype) {
  return stores_16_bits(dtype) ? at::kFloat : dtype;
}

// A fresh contiguous copy of t in the dtype the op computes in (the states, which the ops update in
// place). A contiguous CPU tensor in that dtype already is copied without the dispatcher (see cpu_empty),
// unless its values are not its bytes: a negative view, or a ZeroTensor (no storage; autograd may pass
// one as a gradient).
inline at::Tensor compute_copy(const at::Tensor& t) {
  const at::ScalarType dtype = compute_dtype(t.scalar_type());
  if (t.scalar_type() == dtype && t.is_cpu() && t.is_contiguous() && !t.is_neg() && !t._is_zerotensor()) {
    at::Tensor copy = cpu_empty(t.sizes(), dtype);
    if (t.numel() > 0) std::memcpy(copy.data_ptr(), t.data_ptr(), t.nbytes());
    return copy;
  }
  return t.to(t.options().dtype(dtype), /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
}

// t in `dtype`: t itself where it is in it already (Tensor.to would say so through the dispatcher).
inline at::Tensor in_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// t converted to the dtype the op computes in (no copy where it is in it already): the biases.
inline c10::optional<at::Tensor> compute_cast(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return in_dtype(*t, compute_dtype(t->scalar_type()));
}

// The backward ops store the gradients of the pre-activations (dgx, GRU's dgh) in S too, as their
// products read them (rounded to bfloat16 either way). The bias gradients, their sums over all rows,
// then add the float32 values as they are computed: each state row b sums its own rows over the steps
// into a (B, G) float32 buffer (one thread owns a row at each step, and the steps run in order), and
// column_sums() adds those B rows in order. So the sums do not depend on the number of threads either.
// Nothing to do where S = T: the rows are summed afterwards (layers.h's input_grads).
template <typename T, typename S>
inline at::Tensor row_sum_buffer(int64_t batch, int64_t G, const at::Tensor& like) {
  if constexpr (std::is_same_v<S, T>) return at::Tensor();
  return at::zeros({batch, G}, like.options().dtype(c10::CppTypeToScalarType<T>::value));
}

// The column sums of rows (B, G), adding row after row (an undefined tensor for undefined rows).
template <typename T>
inline at::Tensor column_sums(const at::Tensor& rows) {
  if (!rows.defined()) return rows;
  const int64_t B = rows.size(0), G = rows.size(1);
  at::Tensor out = at::zeros({G}, rows.options());
  const T* r = rows.data_ptr<T>();
  T* o = out.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {
#pragma omp simd
    for (int64_t j = 0; j < G; ++j) o[j] += r[b * G + j];
  }
  return out;
}

// A layer op's dtype check (x or dy): float32, float64, bfloat16 and float16.
inline void check_layer_dtype(const at::Tensor& x, const char* name) {
  const at::ScalarType dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || stores_16_bits(dtype), name,
              " must be float32, float64, bfloat16 or float16 for the cpu backend's kernels, got ", dtype);
}

// The gradient of a layer's output, dy (N, H), as the backward ops read it: row n's H values contiguous
// at dy.data_ptr() + n * dy.stride(0). Where its rows are contiguous already it is taken as it is: a
// bidirectional layer's dy is a column slice of its output's gradient. Where all rows are one (a loss's
// gradient reaches the layer expanded: sum() and mean() give every stride 0), one row is copied. Copies
// of the whole of dy took GRU and RNN training calls above torch.nn's peak memory.
inline at::Tensor with_contiguous_rows(const at::Tensor& dy) {
  if (dy.size(1) <= 1 || dy.stride(1) == 1) return dy;
  if (dy.size(0) > 0 && dy.stride(0) == 0) return dy.narrow(0, 0, 1).contiguous().expand(dy.sizes());
  return dy.contiguous();
}

// body(T{}) for a cell step op's dtype: T the type it computes in (float for bfloat16 and float16 steps,
// which StepTensors reads and writes as they are).
template <typename F>
void dispatch_step(at::ScalarType dtype, const F& body) {
  if (dtype == at::kBFloat16 || dtype == at::kHalf) {
    body(float{});
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "fastcells cpu step op", [&] { body(scalar_t{}); });
}

// body(T{}, S{}) for a layer op's dtype (checked by check_layer_dtype): T the type it computes in, S the
// one it stores its sequence tensors in.
template <typename F>
void dispatch_storage(at::ScalarType dtype, const F& body) {
  if (dtype == at::kBFloat16) {
    body(float{}, c10::BFloat16{});
    return;
  }
  if (dtype == at::kHalf) {
    body(float{}, c10::Half{});
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "fastcells cpu layer op", [&] { body(scalar_t{}, scalar_t{}); });
}

}  // namespace fastcells::cpu::FASTCELLS_ISA
