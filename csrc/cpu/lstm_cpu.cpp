// LSTM on the CPU: a whole layer (forward and backward through time) and one inference step.
//
// Shapes: N rows of the flattened sequence (see ../schedule.h), B batch, H hidden, P = proj_size or H,
// G = 4H gates in torch's order i, f, g, o; saved (N, S) as LstmLayout in fastcells/saved_layout.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <optional>
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

// One row: pre-activations gx + gh, state update and, when kSave, what backward needs. No branch in
// the loop, so it vectorizes.
template <typename T, bool kSave>
inline void lstm_row_fwd(const T* gx, const T* gh, const T* c_prev, T* c_out, T* h_out, T* saved,
                         const LstmLayout& L) {
  const int64_t H = L.H;
  // simd: each j touches index j only (c_prev may alias c_out: read before write in the same lane).
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T cp = c_prev[j];
    LstmUnit<T> u = lstm_unit_fwd(gx[j] + gh[j], gx[H + j] + gh[H + j],
                                  gx[2 * H + j] + gh[2 * H + j], gx[3 * H + j] + gh[3 * H + j], cp);
    if (kSave) {
      saved[j] = u.i;
      saved[H + j] = u.f;
      saved[2 * H + j] = u.g;
      saved[3 * H + j] = u.o;
      saved[L.c_prev() + j] = cp;
      saved[L.tanh_c() + j] = u.tanh_c;
    }
    c_out[j] = u.c;
    h_out[j] = u.h;
  }
}

// Weights read by each step of an LSTM layer: W_hh and, with a projection, W_hr.
inline int64_t lstm_step_weight_bytes(const LstmLayout& L, int64_t element_size) {
  return (4 * L.H * L.P + (L.proj ? L.P * L.H : 0)) * element_size;
}

template <typename T>
void lstm_layer_fwd_impl(const StepInput<T>& in, at::Tensor& h_state, at::Tensor& c_state,
                         const at::Tensor& w_hh, const at::Tensor* w_hr, const Schedule& sched,
                         const RowGroups& groups, bool reverse, at::Tensor& y, at::Tensor* saved,
                         const LstmLayout& L) {
  const int64_t H = L.H, P = L.P, G = 4 * H, B = sched.batch;
  at::Tensor gh = at::empty({B, G}, y.options());
  at::Tensor h_raw = L.proj ? at::empty({B, H}, y.options()) : at::Tensor();
  const StepProduct<T> recurrent(w_hh, /*transposed=*/true, B);
  std::optional<StepProduct<T>> projection;
  if (L.proj) projection.emplace(*w_hr, /*transposed=*/true, B);
  T* gh_all = gh.data_ptr<T>();
  T* h_all = h_state.data_ptr<T>();
  T* c_all = c_state.data_ptr<T>();
  T* hr_all = L.proj ? h_raw.data_ptr<T>() : nullptr;
  T* y_p = y.data_ptr<T>();
  T* s_p = saved ? saved->data_ptr<T>() : nullptr;
  const int64_t S = L.width();
  for_each_group_step(groups, sched, reverse, /*backward=*/false,
                      [&](int64_t g0, int64_t bs, int64_t row0) {
    T* gh_p = gh_all + g0 * G;
    T* h_p = h_all + g0 * P;
    T* c_p = c_all + g0 * H;
    T* hr_p = L.proj ? hr_all + g0 * H : nullptr;
    if (in.per_step()) in.project(bs, row0, gh_p, G, /*accumulate=*/false);
    recurrent.run(h_p, P, gh_p, G, bs, /*accumulate=*/in.per_step());
    if (s_p) {
      for (int64_t b = 0; b < bs; ++b)
        std::memcpy(s_p + (row0 + b) * S + L.h_prev(), h_p + b * P, P * sizeof(T));
    }
    T* h_dst = L.proj ? hr_p : h_p;
    at::parallel_for(0, bs, pointwise_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* gx_row = in.row(row0 + b);
        if (s_p) {
          lstm_row_fwd<T, true>(gx_row, gh_p + b * G, c_p + b * H, c_p + b * H, h_dst + b * H,
                                s_p + (row0 + b) * S, L);
        } else {
          lstm_row_fwd<T, false>(gx_row, gh_p + b * G, c_p + b * H, c_p + b * H, h_dst + b * H,
                                 nullptr, L);
        }
      }
    });
    if (L.proj) {
      projection->run(hr_p, H, h_p, P, bs, false);
      if (s_p) {
        for (int64_t b = 0; b < bs; ++b)
          std::memcpy(s_p + (row0 + b) * S + L.h_raw(), hr_p + b * H, H * sizeof(T));
      }
    }
    std::memcpy(y_p + row0 * P, h_p, bs * P * sizeof(T));
  });
}

template <typename T>
void lstm_layer_bwd_impl(const at::Tensor& dy, at::Tensor& dh_state, at::Tensor& dc_state,
                         const at::Tensor& saved, const at::Tensor& w_hh, const at::Tensor* w_hr,
                         const Schedule& sched, bool reverse, at::Tensor& dgx, at::Tensor* dh_rows,
                         const LstmLayout& L) {
  const int64_t H = L.H, P = L.P, G = 4 * H, B = sched.batch, S = L.width();
  const RowGroups groups = split_rows(sched, lstm_step_weight_bytes(L, sizeof(T)));
  at::Tensor dh_raw = at::empty({B, H}, dy.options());
  const StepProduct<T> recurrent(w_hh, /*transposed=*/false, B);
  std::optional<StepProduct<T>> projection;
  if (L.proj) projection.emplace(*w_hr, /*transposed=*/false, B);
  const T* dy_p = dy.data_ptr<T>();
  const T* s_p = saved.data_ptr<T>();
  T* dg_p = dgx.data_ptr<T>();
  T* dh_rows_p = L.proj ? dh_rows->data_ptr<T>() : nullptr;
  for_each_group_step(groups, sched, reverse, /*backward=*/true,
                      [&](int64_t g0, int64_t bs, int64_t row0) {
    T* dh_p = dh_state.data_ptr<T>() + g0 * P;
    T* dc_p = dc_state.data_ptr<T>() + g0 * H;
    T* dhr_p = dh_raw.data_ptr<T>() + g0 * H;
    // dh = dy + gradient from the next step; through the projection when there is one.
    for (int64_t b = 0; b < bs; ++b) {
      const T* dyr = dy_p + (row0 + b) * P;
      T* dhb = dh_p + b * P;
#pragma omp simd
      for (int64_t j = 0; j < P; ++j) dhb[j] += dyr[j];
    }
    if (L.proj) {
      std::memcpy(dh_rows_p + row0 * P, dh_p, bs * P * sizeof(T));
      projection->run(dh_p, P, dhr_p, H, bs, false);
    } else {
      std::memcpy(dhr_p, dh_p, bs * H * sizeof(T));
    }
    at::parallel_for(0, bs, pointwise_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* sr = s_p + (row0 + b) * S;
        const T* dhr = dhr_p + b * H;
        T* dcr = dc_p + b * H;
        T* dgr = dg_p + (row0 + b) * G;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          LstmUnitGrad<T> d = lstm_unit_bwd(sr[j], sr[H + j], sr[2 * H + j], sr[3 * H + j],
                                            sr[L.c_prev() + j], sr[L.tanh_c() + j], dhr[j], dcr[j]);
          dgr[j] = d.d_i;
          dgr[H + j] = d.d_f;
          dgr[2 * H + j] = d.d_g;
          dgr[3 * H + j] = d.d_o;
          dcr[j] = d.d_c_prev;
        }
      }
    });
    recurrent.run(dg_p + row0 * G, G, dh_p, P, bs, false);
  });
}

}  // namespace

LstmOutputs lstm_layer_fwd_cpu(
    const at::Tensor& x_in, const at::Tensor& w_ih_in, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_hh_in, const c10::optional<at::Tensor>& w_hr_in,
    const at::Tensor& batch_sizes, bool reverse, bool training) {
  const LstmLayout L = check_lstm_layer_fwd_args(x_in, w_ih_in, b_ih, b_hh, h0, c0, w_hh_in, w_hr_in);
  FC_CHECK_FLOATING(x_in);
  const int64_t N = x_in.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, h0.size(0));
  const RowGroups groups = split_rows(sched, lstm_step_weight_bytes(L, x_in.element_size()));
  at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor w_hr = L.proj ? w_hr_in->contiguous() : at::Tensor();
  at::Tensor h_state = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor c_state = c0.clone(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty({N, L.P}, x.options());
  at::Tensor saved = training ? at::empty({N, L.width()}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_layer_fwd_cpu", [&] {
    const StepInput<scalar_t> in(x, w_ih, input_bias(b_ih, b_hh, /*adds_b_hh=*/true),
                                    sched.batch,
                                    project_per_step(sched, lstm_step_weight_bytes(L, x.element_size()),
                                                     /*lstm=*/true, training));
    lstm_layer_fwd_impl<scalar_t>(in, h_state, c_state, w_hh, L.proj ? &w_hr : nullptr, sched,
                                  groups, reverse, y, training ? &saved : nullptr, L);
  });
  return {y, h_state, c_state, saved};
}

LstmGrads lstm_layer_bwd_cpu(const at::Tensor& dy_in, const at::Tensor& dhn, const at::Tensor& dcn,
                             const at::Tensor& saved_in, const at::Tensor& x,
                             const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
                             const c10::optional<at::Tensor>& b_hh, const at::Tensor& w_hh_in,
                             const c10::optional<at::Tensor>& w_hr_in,
                             const at::Tensor& batch_sizes, bool reverse, bool need_dx) {
  const LstmLayout L = check_lstm_layer_bwd_args(dy_in, dhn, dcn, saved_in, x, w_ih, b_ih, b_hh,
                                                 w_hh_in, w_hr_in);
  FC_CHECK_FLOATING(dy_in);
  const int64_t N = dy_in.size(0), G = 4 * L.H;
  const Schedule sched = make_schedule(batch_sizes, N, dhn.size(0));
  at::Tensor dy = dy_in.contiguous(), saved = saved_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor w_hr = L.proj ? w_hr_in->contiguous() : at::Tensor();
  at::Tensor dh_state = dhn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dc_state = dcn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dgx = at::empty({N, G}, dy.options());
  at::Tensor dh_rows = L.proj ? at::empty({N, L.P}, dy.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "lstm_layer_bwd_cpu", [&] {
    lstm_layer_bwd_impl<scalar_t>(dy, dh_state, dc_state, saved, w_hh, L.proj ? &w_hr : nullptr,
                                  sched, reverse, dgx, L.proj ? &dh_rows : nullptr, L);
  });
  auto [dw_hh, dw_hr] = lstm_weight_grads(dgx, saved, dh_rows, L);
  const InputGrads in = input_grads(dgx, x, w_ih, b_ih, b_hh, at::Tensor(), need_dx);
  return {in.dx, dh_state, dc_state, in.dw_ih, in.db_ih, in.db_hh, dw_hh, dw_hr};
}

std::tuple<at::Tensor, at::Tensor> lstm_step_fwd_cpu(
    const at::Tensor& x_in, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih_in,
    const at::Tensor& w_hh_in, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh) {
  FC_CHECK_FLOATING(x_in);
  const int64_t H = check_step_args(x_in, h, w_ih_in, w_hh_in, b_ih, b_hh, 4);
  const int64_t B = x_in.size(0), I = x_in.size(1);
  FC_CHECK_SHAPE(c, B, H);
  FC_CHECK_LIKE(c, x_in);
  at::Tensor x = x_in.contiguous(), hc = h.contiguous(), cc = c.contiguous();
  at::Tensor w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor bi = b_ih.has_value() ? b_ih->contiguous() : at::Tensor();
  at::Tensor bh = b_hh.has_value() ? b_hh->contiguous() : at::Tensor();
  at::Tensor gates = at::empty({2, B, 4 * H}, x.options());
  at::Tensor h_new = at::empty({B, H}, x.options()), c_new = at::empty({B, H}, x.options());
  const LstmLayout L{H, H, false};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_step_fwd_cpu", [&] {
    scalar_t* gx = gates.data_ptr<scalar_t>();
    scalar_t* gh = gx + B * 4 * H;
    step_projections(x.data_ptr<scalar_t>(), I, w_ih.data_ptr<scalar_t>(),
                     bi.defined() ? bi.data_ptr<scalar_t>() : nullptr, hc.data_ptr<scalar_t>(), H,
                     w_hh.data_ptr<scalar_t>(), bh.defined() ? bh.data_ptr<scalar_t>() : nullptr,
                     gx, gh, B, 4 * H);
    for (int64_t b = 0; b < B; ++b) {
      lstm_row_fwd<scalar_t, false>(gx + b * 4 * H, gh + b * 4 * H, cc.data_ptr<scalar_t>() + b * H,
                                    c_new.data_ptr<scalar_t>() + b * H,
                                    h_new.data_ptr<scalar_t>() + b * H, nullptr, L);
    }
  });
  return {h_new, c_new};
}

}  // namespace fastcells::cpu
