// CUDA implementations of the fastcells ops (schemas in ../ops.cpp), registered for the CUDA dispatch
// key under the CPU backend's op names, so device dispatch is automatic.
//
// The time loop runs here in C++: per step one GEMM through ATen (cuBLAS) and one fused pointwise kernel
// (pointwise.cu), all on the current stream. Shapes and saved layouts as in ../layers.h; packed
// sequences shrink the rows of each step as on the CPU (../schedule.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "../checks.h"
#include "../layers.h"
#include "../schedule.h"
#include "persistent.h"
#include "pointwise.h"

namespace fastcells::cuda {
namespace {

// The kernels' dtype tag; other dtypes are refused with a message naming the tensor.
DType dtype_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the cuda backend, got ", t.device());
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " must be float32, float64, float16 or bfloat16 for the cuda backend, got ",
                  t.scalar_type());
  }
}

// Address of row `row` of a row-major contiguous tensor (null for an undefined or empty one).
void* row_ptr(const at::Tensor& t, int64_t row) {
  if (!t.defined() || t.numel() == 0) return nullptr;
  return static_cast<char*>(t.data_ptr()) + row * t.stride(0) * t.element_size();
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor one_step(int64_t batch) { return at::full({1}, batch, at::kLong); }

// The persistent kernel (persistent.cu) is opt-in until it has run on a GPU: FASTCELLS_CUDA_PERSISTENT=1.
bool persistent_requested() {
  const char* value = std::getenv("FASTCELLS_CUDA_PERSISTENT");
  return value != nullptr && std::strcmp(value, "1") == 0;
}

// Whether every step has the whole batch (padded input, or a packed one of equal lengths).
bool full_batch_every_step(const Schedule& sched) {
  return std::all_of(sched.sizes.begin(), sched.sizes.end(),
                     [&](int64_t size) { return size == sched.batch; });
}

// b_ih + b_hh, or whichever is given, or none: the bias of an LSTM or RNN input projection.
c10::optional<at::Tensor> summed_bias(const c10::optional<at::Tensor>& b_ih,
                                      const c10::optional<at::Tensor>& b_hh) {
  if (b_ih.has_value() && b_hh.has_value()) return *b_ih + *b_hh;
  return b_ih.has_value() ? b_ih : b_hh;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd_cuda(
    const at::Tensor& gx_in, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh_in,
    const c10::optional<at::Tensor>& w_hr_in, const at::Tensor& batch_sizes, bool reverse,
    bool training) {
  check_lstm_layer_fwd_args(gx_in, h0, c0, w_hh_in, w_hr_in);
  const DType dtype = dtype_of(gx_in, "gx");
  const c10::cuda::CUDAGuard guard(gx_in.device());
  const LstmLayout L{c0.size(1), h0.size(1), w_hr_in.has_value()};
  const int64_t N = gx_in.size(0), B = h0.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, B);
  at::Tensor gx = gx_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor w_hr = L.proj ? w_hr_in->contiguous() : at::Tensor();
  at::Tensor h_state = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor c_state = c0.clone(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty({N, L.P}, gx.options());
  at::Tensor saved = training ? at::empty({N, L.width()}, gx.options()) : at::empty({0}, gx.options());
  if (!training && !L.proj && sched.steps > 0 && persistent_requested() &&
      full_batch_every_step(sched) && lstm_sequence_fwd_fits(dtype, B, L.H)) {
    // One launch for the whole sequence; h_state and c_state hold h0 and c0 in and hn and cn out.
    at::Tensor buffers = at::empty(
        {2, B, L.H}, gx.options().dtype(gx.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
    const LstmSequenceFwd args{gx.data_ptr(),      w_hh.data_ptr(),    h_state.data_ptr(),
                               c_state.data_ptr(), y.data_ptr(),       h_state.data_ptr(),
                               c_state.data_ptr(), buffers.data_ptr(), sched.steps,
                               B,                  L.H,                reverse};
    C10_CUDA_CHECK(lstm_sequence_fwd(dtype, args, current_stream()));
    return {y, h_state, c_state, saved};
  }
  at::Tensor gh = at::empty({B, 4 * L.H}, gx.options());
  at::Tensor h_raw = L.proj ? at::empty({B, L.H}, gx.options()) : at::Tensor();
  for_each_step(sched, reverse, /*backward=*/false, [&](int64_t bs, int64_t row0) {
    at::Tensor h_rows = h_state.narrow(0, 0, bs), gh_rows = gh.narrow(0, 0, bs);
    at::mm_out(gh_rows, h_rows, w_hh.t());
    // Without a projection the kernel also writes y and saved h_prev; with one, h is P wide: copies.
    if (training && L.proj) saved.narrow(0, row0, bs).narrow(1, L.h_prev(), L.P).copy_(h_rows);
    at::Tensor h_out = L.proj ? h_raw.narrow(0, 0, bs) : h_rows;
    const LstmStepFwd args{row_ptr(gx, row0),
                           gh.data_ptr(),
                           c_state.data_ptr(),
                           h_out.data_ptr(),
                           L.proj ? nullptr : row_ptr(y, row0),
                           training ? row_ptr(saved, row0) : nullptr,
                           L.width(),
                           bs,
                           L.H};
    C10_CUDA_CHECK(lstm_step_fwd(dtype, args, current_stream()));
    if (L.proj) {
      at::mm_out(h_rows, h_out, w_hr.t());
      if (training) saved.narrow(0, row0, bs).narrow(1, L.h_raw(), L.H).copy_(h_out);
      y.narrow(0, row0, bs).copy_(h_rows);
    }
  });
  return {y, h_state, c_state, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_bwd_cuda(
    const at::Tensor& dy_in, const at::Tensor& dhn, const at::Tensor& dcn,
    const at::Tensor& saved_in, const at::Tensor& w_hh_in, const c10::optional<at::Tensor>& w_hr_in,
    const at::Tensor& batch_sizes, bool reverse) {
  const LstmLayout L = check_lstm_layer_bwd_args(dy_in, dhn, dcn, saved_in, w_hh_in, w_hr_in);
  const DType dtype = dtype_of(dy_in, "dy");
  const c10::cuda::CUDAGuard guard(dy_in.device());
  const int64_t N = dy_in.size(0), B = dhn.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, B);
  at::Tensor dy = dy_in.contiguous(), saved = saved_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor w_hr = L.proj ? w_hr_in->contiguous() : at::Tensor();
  at::Tensor dh_state = dhn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dc_state = dcn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dgx = at::empty({N, 4 * L.H}, dy.options());
  at::Tensor dh_rows = L.proj ? at::empty({N, L.P}, dy.options()) : at::Tensor();
  at::Tensor dh_raw = L.proj ? at::empty({B, L.H}, dy.options()) : at::Tensor();
  for_each_step(sched, reverse, /*backward=*/true, [&](int64_t bs, int64_t row0) {
    // dh = dy + the gradient from the next step; through the projection when there is one.
    at::Tensor dh = dh_state.narrow(0, 0, bs);
    dh.add_(dy.narrow(0, row0, bs));
    at::Tensor dh_unit = dh;
    if (L.proj) {
      dh_rows.narrow(0, row0, bs).copy_(dh);
      dh_unit = dh_raw.narrow(0, 0, bs);
      at::mm_out(dh_unit, dh, w_hr);
    }
    const LstmStepBwd args{row_ptr(saved, row0), dh_unit.data_ptr(), dc_state.data_ptr(),
                           row_ptr(dgx, row0), L.width(), bs, L.H};
    C10_CUDA_CHECK(lstm_step_bwd(dtype, args, current_stream()));
    at::mm_out(dh, dgx.narrow(0, row0, bs), w_hh);
  });
  auto [dw_hh, dw_hr] = lstm_weight_grads(dgx, saved, dh_rows, L);
  return {dgx, dh_state, dc_state, dw_hh, dw_hr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_fwd_cuda(
    const at::Tensor& gx_in, const at::Tensor& h0, const at::Tensor& w_hh_in,
    const c10::optional<at::Tensor>& b_hh_in, const at::Tensor& batch_sizes, bool reverse,
    bool training) {
  check_layer_fwd_args(gx_in, h0, w_hh_in, 3);
  const DType dtype = dtype_of(gx_in, "gx");
  const int64_t H = h0.size(1), N = gx_in.size(0), B = h0.size(0);
  check_bias(b_hh_in, "b_hh", 3 * H, gx_in);
  const c10::cuda::CUDAGuard guard(gx_in.device());
  const Schedule sched = make_schedule(batch_sizes, N, B);
  at::Tensor gx = gx_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor b_hh = b_hh_in.has_value() ? b_hh_in->contiguous() : at::Tensor();
  at::Tensor h_state = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty({N, H}, gx.options());
  at::Tensor saved = training ? at::empty({N, kGruSavedPerUnit * H}, gx.options())
                              : at::empty({0}, gx.options());
  at::Tensor gh = at::empty({B, 3 * H}, gx.options());
  for_each_step(sched, reverse, /*backward=*/false, [&](int64_t bs, int64_t row0) {
    at::Tensor h_rows = h_state.narrow(0, 0, bs), gh_rows = gh.narrow(0, 0, bs);
    at::mm_out(gh_rows, h_rows, w_hh.t());
    const GruStepFwd args{row_ptr(gx, row0), gh.data_ptr(),    row_ptr(b_hh, 0),
                          h_state.data_ptr(), row_ptr(y, row0), training ? row_ptr(saved, row0) : nullptr,
                          bs,                 H};
    C10_CUDA_CHECK(gru_step_fwd(dtype, args, current_stream()));
  });
  return {y, h_state, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_bwd_cuda(
    const at::Tensor& dy_in, const at::Tensor& dhn, const at::Tensor& saved_in,
    const at::Tensor& w_hh_in, const at::Tensor& batch_sizes, bool reverse, bool has_bias) {
  check_layer_bwd_args(dy_in, dhn, saved_in, w_hh_in, 3, kGruSavedPerUnit);
  const DType dtype = dtype_of(dy_in, "dy");
  const c10::cuda::CUDAGuard guard(dy_in.device());
  const int64_t H = dhn.size(1), N = dy_in.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, dhn.size(0));
  at::Tensor dy = dy_in.contiguous(), saved = saved_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor dh_state = dhn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dgx = at::empty({N, 3 * H}, dy.options());
  at::Tensor dgh = at::empty({N, 3 * H}, dy.options());
  for_each_step(sched, reverse, /*backward=*/true, [&](int64_t bs, int64_t row0) {
    const GruStepBwd args{row_ptr(saved, row0), row_ptr(dy, row0), dh_state.data_ptr(),
                          row_ptr(dgx, row0), row_ptr(dgh, row0), bs, H};
    C10_CUDA_CHECK(gru_step_bwd(dtype, args, current_stream()));
    dh_state.narrow(0, 0, bs).addmm_(dgh.narrow(0, row0, bs), w_hh);
  });
  at::Tensor dw_hh = at::mm(dgh.t(), saved.narrow(1, 4 * H, H));
  at::Tensor db_hh = has_bias ? dgh.sum(0) : at::empty({0}, dy.options());
  return {dgx, dh_state, dw_hh, db_hh};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_layer_fwd_cuda(
    const at::Tensor& gx_in, const at::Tensor& h0, const at::Tensor& w_hh_in,
    const at::Tensor& batch_sizes, bool relu, bool reverse, bool training) {
  check_layer_fwd_args(gx_in, h0, w_hh_in, 1);
  const DType dtype = dtype_of(gx_in, "gx");
  const c10::cuda::CUDAGuard guard(gx_in.device());
  const int64_t H = h0.size(1), N = gx_in.size(0), B = h0.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, B);
  at::Tensor gx = gx_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor h_state = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty({N, H}, gx.options());
  at::Tensor saved = training ? at::empty({N, kRnnSavedPerUnit * H}, gx.options())
                              : at::empty({0}, gx.options());
  at::Tensor gh = at::empty({B, H}, gx.options());
  for_each_step(sched, reverse, /*backward=*/false, [&](int64_t bs, int64_t row0) {
    at::Tensor h_rows = h_state.narrow(0, 0, bs), gh_rows = gh.narrow(0, 0, bs);
    at::mm_out(gh_rows, h_rows, w_hh.t());
    const RnnStepFwd args{row_ptr(gx, row0), gh.data_ptr(), h_state.data_ptr(), row_ptr(y, row0),
                          training ? row_ptr(saved, row0) : nullptr, bs, H, relu};
    C10_CUDA_CHECK(rnn_step_fwd(dtype, args, current_stream()));
  });
  return {y, h_state, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_layer_bwd_cuda(
    const at::Tensor& dy_in, const at::Tensor& dhn, const at::Tensor& saved_in,
    const at::Tensor& w_hh_in, const at::Tensor& batch_sizes, bool relu, bool reverse) {
  check_layer_bwd_args(dy_in, dhn, saved_in, w_hh_in, 1, kRnnSavedPerUnit);
  const DType dtype = dtype_of(dy_in, "dy");
  const c10::cuda::CUDAGuard guard(dy_in.device());
  const int64_t H = dhn.size(1), N = dy_in.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, dhn.size(0));
  at::Tensor dy = dy_in.contiguous(), saved = saved_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor dh_state = dhn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dgx = at::empty({N, H}, dy.options());
  for_each_step(sched, reverse, /*backward=*/true, [&](int64_t bs, int64_t row0) {
    at::Tensor dh = dh_state.narrow(0, 0, bs);
    const RnnStepBwd args{row_ptr(saved, row0), row_ptr(dy, row0), dh.data_ptr(),
                          row_ptr(dgx, row0), bs, H, relu};
    C10_CUDA_CHECK(rnn_step_bwd(dtype, args, current_stream()));
    at::mm_out(dh, dgx.narrow(0, row0, bs), w_hh);
  });
  at::Tensor dw_hh = at::mm(dgx.t(), saved.narrow(1, H, H));
  return {dgx, dh_state, dw_hh};
}

// Cell steps: the input projection as one GEMM, then the layer op over a one-step sequence.
std::tuple<at::Tensor, at::Tensor> lstm_step_fwd_cuda(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh) {
  const int64_t H = check_step_args(x, h, w_ih, w_hh, b_ih, b_hh, 4);
  dtype_of(x, "x");
  FC_CHECK_SHAPE(c, x.size(0), H);
  FC_CHECK_LIKE(c, x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor gx = at::linear(x, w_ih, summed_bias(b_ih, b_hh));
  auto [y, hn, cn, saved] =
      lstm_layer_fwd_cuda(gx, h, c, w_hh, c10::nullopt, one_step(x.size(0)), false, false);
  return {hn, cn};
}

at::Tensor gru_step_fwd_cuda(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                             const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                             const c10::optional<at::Tensor>& b_hh) {
  check_step_args(x, h, w_ih, w_hh, b_ih, b_hh, 3);
  dtype_of(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor gx = at::linear(x, w_ih, b_ih);
  return std::get<1>(gru_layer_fwd_cuda(gx, h, w_hh, b_hh, one_step(x.size(0)), false, false));
}

at::Tensor rnn_step_fwd_cuda(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                             const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                             const c10::optional<at::Tensor>& b_hh, bool relu) {
  check_step_args(x, h, w_ih, w_hh, b_ih, b_hh, 1);
  dtype_of(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor gx = at::linear(x, w_ih, summed_bias(b_ih, b_hh));
  return std::get<1>(rnn_layer_fwd_cuda(gx, h, w_hh, one_step(x.size(0)), relu, false, false));
}

}  // namespace fastcells::cuda

TORCH_LIBRARY_IMPL(fastcells, CUDA, m) {
  using namespace fastcells::cuda;
  m.impl("lstm_layer_fwd", &lstm_layer_fwd_cuda);
  m.impl("lstm_layer_bwd", &lstm_layer_bwd_cuda);
  m.impl("lstm_step_fwd", &lstm_step_fwd_cuda);
  m.impl("gru_layer_fwd", &gru_layer_fwd_cuda);
  m.impl("gru_layer_bwd", &gru_layer_bwd_cuda);
  m.impl("gru_step_fwd", &gru_step_fwd_cuda);
  m.impl("rnn_layer_fwd", &rnn_layer_fwd_cuda);
  m.impl("rnn_layer_bwd", &rnn_layer_bwd_cuda);
  m.impl("rnn_step_fwd", &rnn_step_fwd_cuda);
}
