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

#define FC_CHECK_FLOATING(x)                                                            \
  TORCH_CHECK((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kDouble,      \
              #x " must be float32 or float64 for the cpu backend, got ", (x).scalar_type())

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
