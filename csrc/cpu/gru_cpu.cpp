// GRU on the CPU: a whole layer (forward and backward through time) and one inference step.
//
// Shapes: N rows of the flattened sequence (see ../schedule.h), B batch, H hidden, G = 3H gates in
// torch's order r, z, n. b_hh stays apart from the input projections because
// n = tanh(x_n + r * (W_hn h + b_hn)). saved (N, 5H) as GruLayout in fastcells/saved_layout.h.
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

// One row. gx: input projections with b_ih; gh: hidden projections with b_hh. No branch in the loop
// (kSave is a template argument), so it vectorizes.
template <typename T, bool kSave>
inline void gru_row_fwd(const T* gx, const T* gh, const T* h_prev, T* h_out, T* saved, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T hp = h_prev[j];
    GruUnit<T> u = gru_unit_fwd(gx[j], gx[H + j], gx[2 * H + j], gh[j], gh[H + j], gh[2 * H + j], hp);
    if (kSave) {
      saved[j] = u.r;
      saved[H + j] = u.z;
      saved[2 * H + j] = u.n;
      saved[GruLayout{H}.h_n() + j] = gh[2 * H + j];
      saved[GruLayout{H}.h_prev() + j] = hp;
    }
    h_out[j] = u.h;
  }
}

template <typename T>
void gru_layer_fwd_impl(const StepInput<T>& in, at::Tensor& h_state, const at::Tensor& w_hh,
                        const T* b_hh, const Schedule& sched, const RowGroups& groups,
                        bool reverse, at::Tensor& y, T* saved, int64_t H) {
  const int64_t G = 3 * H, S = GruLayout{H}.width();
  // Per batch row: the hidden projections, and the input ones when each step computes its own.
  at::Tensor gh = at::empty({sched.batch, G}, y.options());
  at::Tensor gx_rows = in.per_step() ? at::empty({sched.batch, G}, y.options()) : at::Tensor();
  const StepProduct<T> recurrent(w_hh, /*transposed=*/true, sched.batch);
  T* y_p = y.data_ptr<T>();
  for_each_group_step(groups, sched, reverse, /*backward=*/false,
                      [&](int64_t g0, int64_t bs, int64_t row0) {
    T* gh_p = gh.data_ptr<T>() + g0 * G;
    T* h_p = h_state.data_ptr<T>() + g0 * H;
    const T* gx_p = in.rows(bs, row0, in.per_step() ? gx_rows.data_ptr<T>() + g0 * G : nullptr);
    recurrent.run(h_p, H, gh_p, G, bs, false);
    if (b_hh) add_bias_rows(gh_p, G, bs, G, b_hh);
    at::parallel_for(0, bs, pointwise_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (saved) {
          gru_row_fwd<T, true>(gx_p + b * G, gh_p + b * G, h_p + b * H, h_p + b * H,
                               saved + (row0 + b) * S, H);
        } else {
          gru_row_fwd<T, false>(gx_p + b * G, gh_p + b * G, h_p + b * H, h_p + b * H, nullptr, H);
        }
      }
    });
    std::memcpy(y_p + row0 * H, h_p, bs * H * sizeof(T));
  });
}

// dgx (N, 3H) gets the gradients of the input projections, dgh (N, 3H) those of W_hh h + b_hh.
template <typename T>
void gru_layer_bwd_impl(const at::Tensor& dy, at::Tensor& dh_state, const at::Tensor& saved,
                        const at::Tensor& w_hh, const Schedule& sched, bool reverse,
                        at::Tensor& dgx, at::Tensor& dgh, int64_t H) {
  const int64_t G = 3 * H;
  const RowGroups groups = split_rows(sched, w_hh.numel() * sizeof(T));
  const StepProduct<T> recurrent(w_hh, /*transposed=*/false, sched.batch);
  const T* dy_p = dy.data_ptr<T>();
  const T* s_p = saved.data_ptr<T>();
  T* dgx_p = dgx.data_ptr<T>();
  T* dgh_p = dgh.data_ptr<T>();
  for_each_group_step(groups, sched, reverse, /*backward=*/true,
                      [&](int64_t g0, int64_t bs, int64_t row0) {
    T* dh_p = dh_state.data_ptr<T>() + g0 * H;
    at::parallel_for(0, bs, pointwise_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = row0 + b;
        const T* sr = s_p + row * GruLayout{H}.width();
        const T* dyr = dy_p + row * H;
        T* dhb = dh_p + b * H;
        T* dxr = dgx_p + row * G;
        T* dhr = dgh_p + row * G;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          GruUnitGrad<T> d =
              gru_unit_bwd(sr[j], sr[H + j], sr[2 * H + j], sr[GruLayout{H}.h_n() + j],
                           sr[GruLayout{H}.h_prev() + j],
                           dyr[j] + dhb[j]);
          dxr[j] = d.d_r;
          dxr[H + j] = d.d_z;
          dxr[2 * H + j] = d.d_n;
          dhr[j] = d.d_r;
          dhr[H + j] = d.d_z;
          dhr[2 * H + j] = d.d_hn;
          dhb[j] = d.d_h_prev;
        }
      }
    });
    recurrent.run(dgh_p + row0 * G, G, dh_p, H, bs, true);
  });
}

}  // namespace

LayerOutputs gru_layer_fwd_cpu(const at::Tensor& x_in, const at::Tensor& w_ih_in,
                               const c10::optional<at::Tensor>& b_ih,
                               const c10::optional<at::Tensor>& b_hh_in, const at::Tensor& h0,
                               const at::Tensor& w_hh_in, const at::Tensor& batch_sizes,
                               bool reverse, bool training) {
  const int64_t H = check_layer_fwd_args(x_in, w_ih_in, b_ih, b_hh_in, h0, w_hh_in, 3);
  FC_CHECK_FLOATING(x_in);
  const int64_t N = x_in.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, h0.size(0));
  const RowGroups groups = split_rows(sched, w_hh_in.numel() * w_hh_in.element_size());
  at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor b_hh = b_hh_in.has_value() ? b_hh_in->contiguous() : at::Tensor();
  at::Tensor h_state = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty({N, H}, x.options());
  at::Tensor saved = training ? at::empty({N, GruLayout{H}.width()}, x.options())
                              : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_layer_fwd_cpu", [&] {
    const StepInput<scalar_t> in(x, w_ih, input_bias(b_ih, b_hh_in, /*adds_b_hh=*/false),
                                    sched.batch, project_per_step(sched, w_hh.numel() * w_hh.element_size(),
                                                                  /*lstm=*/false, training));
    gru_layer_fwd_impl<scalar_t>(in, h_state, w_hh,
                                 b_hh.defined() ? b_hh.data_ptr<scalar_t>() : nullptr, sched, groups,
                                 reverse, y, training ? saved.data_ptr<scalar_t>() : nullptr, H);
  });
  return {y, h_state, saved};
}

LayerGrads gru_layer_bwd_cpu(const at::Tensor& dy_in, const at::Tensor& dhn,
                             const at::Tensor& saved_in, const at::Tensor& x,
                             const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
                             const c10::optional<at::Tensor>& b_hh, const at::Tensor& w_hh_in,
                             const at::Tensor& batch_sizes, bool reverse, bool need_dx) {
  const int64_t H = check_layer_bwd_args(dy_in, dhn, saved_in, x, w_ih, b_ih, b_hh, w_hh_in, 3,
                                         GruLayout{1}.width());
  FC_CHECK_FLOATING(dy_in);
  const int64_t N = dy_in.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, dhn.size(0));
  at::Tensor dy = dy_in.contiguous(), saved = saved_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor dh_state = dhn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dgx = at::empty({N, 3 * H}, dy.options());
  at::Tensor dgh = at::empty({N, 3 * H}, dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "gru_layer_bwd_cpu", [&] {
    gru_layer_bwd_impl<scalar_t>(dy, dh_state, saved, w_hh, sched, reverse, dgx, dgh, H);
  });
  at::Tensor dw_hh = at::mm(dgh.t(), saved.narrow(1, GruLayout{H}.h_prev(), H));
  const InputGrads in = input_grads(dgx, x, w_ih, b_ih, b_hh, dgh, need_dx);
  return {in.dx, dh_state, in.dw_ih, in.db_ih, in.db_hh, dw_hh};
}

at::Tensor gru_step_fwd_cpu(const at::Tensor& x_in, const at::Tensor& h, const at::Tensor& w_ih_in,
                            const at::Tensor& w_hh_in, const c10::optional<at::Tensor>& b_ih,
                            const c10::optional<at::Tensor>& b_hh) {
  FC_CHECK_FLOATING(x_in);
  const int64_t H = check_step_args(x_in, h, w_ih_in, w_hh_in, b_ih, b_hh, 3);
  const int64_t B = x_in.size(0), I = x_in.size(1);
  at::Tensor x = x_in.contiguous(), hc = h.contiguous();
  at::Tensor w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor bi = b_ih.has_value() ? b_ih->contiguous() : at::Tensor();
  at::Tensor bh = b_hh.has_value() ? b_hh->contiguous() : at::Tensor();
  at::Tensor gates = at::empty({2, B, 3 * H}, x.options());
  at::Tensor h_new = at::empty({B, H}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_step_fwd_cpu", [&] {
    scalar_t* gx = gates.data_ptr<scalar_t>();
    scalar_t* gh = gx + B * 3 * H;
    step_projections(x.data_ptr<scalar_t>(), I, w_ih.data_ptr<scalar_t>(),
                     bi.defined() ? bi.data_ptr<scalar_t>() : nullptr, hc.data_ptr<scalar_t>(), H,
                     w_hh.data_ptr<scalar_t>(), bh.defined() ? bh.data_ptr<scalar_t>() : nullptr,
                     gx, gh, B, 3 * H);
    for (int64_t b = 0; b < B; ++b) {
      gru_row_fwd<scalar_t, false>(gx + b * 3 * H, gh + b * 3 * H, hc.data_ptr<scalar_t>() + b * H,
                                   h_new.data_ptr<scalar_t>() + b * H, nullptr, H);
    }
  });
  return h_new;
}

}  // namespace fastcells::cpu
