// Elman RNN (tanh or relu) on the CPU: a whole layer (forward and backward through time) and one
// inference step.
//
// Shapes: N rows of the flattened sequence (see ../schedule.h), B batch, H hidden.
// The pre-activation is x W_ih^T + b_ih + b_hh + h W_hh^T. saved (N, 2H) as RnnLayout in
// fastcells/saved_layout.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <tuple>

#include "../checks.h"
#include "../layers.h"
#include "fastcells/gate_math.h"
#include "gemm_cpu.h"
#include "matmul_cpu.h"
#include "ops_cpu.h"
#include "row_groups.h"
#include "step_input.h"
#include "../schedule.h"

namespace fastcells::cpu {
namespace {

// One row: h = act(gx + gh). kSave and kRelu are template arguments so the loop has no branch.
template <typename T, bool kSave, bool kRelu>
inline void rnn_row_fwd(const T* gx, const T* gh, const T* h_prev, T* h_out, T* saved, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T h = rnn_unit_fwd(gx[j] + gh[j], kRelu);
    if (kSave) {
      saved[RnnLayout{H}.h() + j] = h;
      saved[RnnLayout{H}.h_prev() + j] = h_prev[j];
    }
    h_out[j] = h;
  }
}

template <typename T>
inline void rnn_row_fwd(const T* gx, const T* gh, const T* h_prev, T* h_out, T* saved, int64_t H,
                        bool relu) {
  if (saved) {
    relu ? rnn_row_fwd<T, true, true>(gx, gh, h_prev, h_out, saved, H)
         : rnn_row_fwd<T, true, false>(gx, gh, h_prev, h_out, saved, H);
  } else {
    relu ? rnn_row_fwd<T, false, true>(gx, gh, h_prev, h_out, saved, H)
         : rnn_row_fwd<T, false, false>(gx, gh, h_prev, h_out, saved, H);
  }
}

template <typename T>
void rnn_layer_fwd_impl(const StepInput<T>& in, at::Tensor& h_state, const at::Tensor& w_hh,
                        const Schedule& sched, const RowGroups& groups, bool relu, bool reverse,
                        at::Tensor& y, T* saved, int64_t H) {
  const int64_t S = RnnLayout{H}.width();
  at::Tensor gh = at::empty({sched.batch, H}, y.options());
  const StepProduct<T> recurrent(w_hh, /*transposed=*/true, sched.batch);
  T* y_p = y.data_ptr<T>();
  for_each_group_step(groups, sched, reverse, /*backward=*/false,
                      [&](int64_t g0, int64_t bs, int64_t row0) {
    T* gh_p = gh.data_ptr<T>() + g0 * H;
    T* h_p = h_state.data_ptr<T>() + g0 * H;
    if (in.per_step()) in.project(bs, row0, gh_p, H, /*accumulate=*/false);
    recurrent.run(h_p, H, gh_p, H, bs, /*accumulate=*/in.per_step());
    at::parallel_for(0, bs, pointwise_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        rnn_row_fwd<T>(in.row(row0 + b), gh_p + b * H, h_p + b * H, h_p + b * H,
                       saved ? saved + (row0 + b) * S : nullptr, H, relu);
      }
    });
    std::memcpy(y_p + row0 * H, h_p, bs * H * sizeof(T));
  });
}

template <typename T>
void rnn_layer_bwd_impl(const at::Tensor& dy, at::Tensor& dh_state, const at::Tensor& saved,
                        const at::Tensor& w_hh, const Schedule& sched, bool relu, bool reverse,
                        at::Tensor& dgx, int64_t H) {
  const RowGroups groups = split_rows(sched, w_hh.numel() * sizeof(T));
  const StepProduct<T> recurrent(w_hh, /*transposed=*/false, sched.batch);
  const T* dy_p = dy.data_ptr<T>();
  const T* s_p = saved.data_ptr<T>();
  T* dg_p = dgx.data_ptr<T>();
  for_each_group_step(groups, sched, reverse, /*backward=*/true,
                      [&](int64_t g0, int64_t bs, int64_t row0) {
    T* dh_p = dh_state.data_ptr<T>() + g0 * H;
    at::parallel_for(0, bs, pointwise_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = row0 + b;
        const T* h = s_p + row * RnnLayout{H}.width() + RnnLayout{H}.h();
        const T* dyr = dy_p + row * H;
        const T* dhb = dh_p + b * H;
        T* dgr = dg_p + row * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) dgr[j] = rnn_unit_bwd(h[j], dyr[j] + dhb[j], relu);
      }
    });
    recurrent.run(dg_p + row0 * H, H, dh_p, H, bs, false);
  });
}

}  // namespace

LayerOutputs rnn_layer_fwd_cpu(const at::Tensor& x_in, const at::Tensor& w_ih_in,
                               const c10::optional<at::Tensor>& b_ih,
                               const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                               const at::Tensor& w_hh_in, const at::Tensor& batch_sizes, bool relu,
                               bool reverse, bool training) {
  const int64_t H = check_layer_fwd_args(x_in, w_ih_in, b_ih, b_hh, h0, w_hh_in, 1);
  FC_CHECK_FLOATING(x_in);
  const int64_t N = x_in.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, h0.size(0));
  const RowGroups groups = split_rows(sched, w_hh_in.numel() * w_hh_in.element_size());
  at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor h_state = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty({N, H}, x.options());
  at::Tensor saved = training ? at::empty({N, RnnLayout{H}.width()}, x.options())
                              : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_layer_fwd_cpu", [&] {
    const StepInput<scalar_t> in(x, w_ih, input_bias(b_ih, b_hh, /*adds_b_hh=*/true),
                                    sched.batch, project_per_step(sched, w_hh.numel() * w_hh.element_size(),
                                                                  /*lstm=*/false, training));
    rnn_layer_fwd_impl<scalar_t>(in, h_state, w_hh, sched, groups, relu, reverse, y,
                                 training ? saved.data_ptr<scalar_t>() : nullptr, H);
  });
  return {y, h_state, saved};
}

LayerGrads rnn_layer_bwd_cpu(const at::Tensor& dy_in, const at::Tensor& dhn,
                             const at::Tensor& saved_in, const at::Tensor& x,
                             const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
                             const c10::optional<at::Tensor>& b_hh, const at::Tensor& w_hh_in,
                             const at::Tensor& batch_sizes, bool relu, bool reverse,
                             bool need_dx) {
  const int64_t H = check_layer_bwd_args(dy_in, dhn, saved_in, x, w_ih, b_ih, b_hh, w_hh_in, 1,
                                         RnnLayout{1}.width());
  FC_CHECK_FLOATING(dy_in);
  const int64_t N = dy_in.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, dhn.size(0));
  at::Tensor dy = dy_in.contiguous(), saved = saved_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor dh_state = dhn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dgx = at::empty({N, H}, dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "rnn_layer_bwd_cpu", [&] {
    rnn_layer_bwd_impl<scalar_t>(dy, dh_state, saved, w_hh, sched, relu, reverse, dgx, H);
  });
  at::Tensor dw_hh = at::mm(dgx.t(), saved.narrow(1, RnnLayout{H}.h_prev(), H));
  const InputGrads in = input_grads(dgx, x, w_ih, b_ih, b_hh, at::Tensor(), need_dx);
  return {in.dx, dh_state, in.dw_ih, in.db_ih, in.db_hh, dw_hh};
}

at::Tensor rnn_step_fwd_cpu(const at::Tensor& x_in, const at::Tensor& h, const at::Tensor& w_ih_in,
                            const at::Tensor& w_hh_in, const c10::optional<at::Tensor>& b_ih,
                            const c10::optional<at::Tensor>& b_hh, bool relu) {
  FC_CHECK_FLOATING(x_in);
  const int64_t H = check_step_args(x_in, h, w_ih_in, w_hh_in, b_ih, b_hh, 1);
  const int64_t B = x_in.size(0), I = x_in.size(1);
  at::Tensor x = x_in.contiguous(), hc = h.contiguous();
  at::Tensor w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor bi = b_ih.has_value() ? b_ih->contiguous() : at::Tensor();
  at::Tensor bh = b_hh.has_value() ? b_hh->contiguous() : at::Tensor();
  at::Tensor gates = at::empty({2, B, H}, x.options());
  at::Tensor h_new = at::empty({B, H}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_step_fwd_cpu", [&] {
    scalar_t* gx = gates.data_ptr<scalar_t>();
    scalar_t* gh = gx + B * H;
    step_projections(x.data_ptr<scalar_t>(), I, w_ih.data_ptr<scalar_t>(),
                     bi.defined() ? bi.data_ptr<scalar_t>() : nullptr, hc.data_ptr<scalar_t>(), H,
                     w_hh.data_ptr<scalar_t>(), bh.defined() ? bh.data_ptr<scalar_t>() : nullptr,
                     gx, gh, B, H);
    for (int64_t b = 0; b < B; ++b) {
      rnn_row_fwd<scalar_t>(gx + b * H, gh + b * H, hc.data_ptr<scalar_t>() + b * H,
                            h_new.data_ptr<scalar_t>() + b * H, nullptr, H, relu);
    }
  });
  return h_new;
}

}  // namespace fastcells::cpu
