// Argument checks shared by the op implementations. The Python layer checks user input with torch.nn's
// messages first; these guard the ops themselves (they are public through torch.ops), so a bad call
// raises a RuntimeError that names the argument instead of reading out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#define FC_CHECK_SHAPE(x, ...)                                                              \
  TORCH_CHECK((x).sizes() == at::IntArrayRef(std::vector<int64_t>{__VA_ARGS__}), #x         \
              " must have shape ", at::IntArrayRef(std::vector<int64_t>{__VA_ARGS__}), ", got ", \
              (x).sizes())

#define FC_CHECK_DIM(x, d) \
  TORCH_CHECK((x).dim() == (d), #x " must be ", d, "-D, got ", (x).dim(), "-D")

#define FC_CHECK_LIKE(x, ref)                                                                 \
  do {                                                                                        \
    TORCH_CHECK((x).scalar_type() == (ref).scalar_type(), #x " must have dtype ",             \
                (ref).scalar_type(), " like " #ref ", got ", (x).scalar_type());              \
    TORCH_CHECK((x).device() == (ref).device(), #x " must be on ", (ref).device(),            \
                " like " #ref ", got ", (x).device());                                        \
  } while (0)

// (bfloat16 and float16: the cpu step ops compute them in float32.)
#define FC_CHECK_FLOATING(x)                                                                    \
  TORCH_CHECK((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kDouble ||           \
                  (x).scalar_type() == at::kBFloat16 || (x).scalar_type() == at::kHalf,        \
              #x " must be float32, float64, bfloat16 or float16 for the cpu backend, got ",    \
              (x).scalar_type())

// An optional bias: absent, or (size) with the dtype and device of ref.
inline void check_bias(const c10::optional<at::Tensor>& bias, const char* name, int64_t size,
                       const at::Tensor& ref) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == size, name, " must have shape [", size,
              "], got ", bias->sizes());
  TORCH_CHECK(bias->scalar_type() == ref.scalar_type(), name, " must have dtype ",
              ref.scalar_type(), ", got ", bias->scalar_type());
  TORCH_CHECK(bias->device() == ref.device(), name, " must be on ", ref.device(), ", got ",
              bias->device());
}

// A weight w named `name` on x's device, of x's dtype or of `weights` where given: the CPU layer ops of
// a few rows take a bfloat16 call's weights unconverted, with its other tensors in float32
// (csrc/cpu/register_cpu.cpp). x_name names x in the messages (dy for the backward ops).
inline void check_weight(const at::Tensor& w, const char* name, const at::Tensor& x,
                         c10::optional<at::ScalarType> weights, const char* x_name = "x") {
  if (!weights.has_value()) {
    TORCH_CHECK(w.scalar_type() == x.scalar_type(), name, " must have dtype ", x.scalar_type(), " like ", x_name,
                ", got ", w.scalar_type());
  } else {
    TORCH_CHECK(w.scalar_type() == *weights, name, " must have dtype ", *weights, ", got ", w.scalar_type());
  }
  TORCH_CHECK(w.device() == x.device(), name, " must be on ", x.device(), " like ", x_name, ", got ", w.device());
}

// The input side of a layer or step op: x (N, I), w_ih (G, I), b_ih and b_hh (G) or none, all of
// x's dtype and device (which dtypes are allowed is the device's check); the weights of dtype
// `weights` where given (check_weight).
inline void check_input_args(const at::Tensor& x, const at::Tensor& w_ih,
                             const c10::optional<at::Tensor>& b_ih,
                             const c10::optional<at::Tensor>& b_hh, int64_t G,
                             c10::optional<at::ScalarType> weights = c10::nullopt) {
  FC_CHECK_DIM(x, 2);
  FC_CHECK_SHAPE(w_ih, G, x.size(1));
  check_weight(w_ih, "w_ih", x, weights);
  check_bias(b_ih, "b_ih", G, x);
  check_bias(b_hh, "b_hh", G, x);
}

// The arguments of a cell step op: the input side as above, h (B, H), w_hh (G, H), with
// G = gates_per_unit * H. Returns H.
inline int64_t check_step_args(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                               const c10::optional<at::Tensor>& b_hh, int64_t gates_per_unit) {
  FC_CHECK_DIM(x, 2);
  FC_CHECK_DIM(h, 2);
  const int64_t H = h.size(1), G = gates_per_unit * H;
  FC_CHECK_SHAPE(h, x.size(0), H);
  FC_CHECK_LIKE(h, x);
  check_input_args(x, w_ih, b_ih, b_hh, G);
  FC_CHECK_SHAPE(w_hh, G, H);
  check_weight(w_hh, "w_hh", x, c10::nullopt);
  return H;
}
