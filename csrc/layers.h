// What the layer ops of every device share: saved-activation layouts, argument checks, weight gradients.
//
// Shapes: N rows of the flattened sequence (see schedule.h), B batch, H hidden, P = proj_size or H.
// The checks cover shapes, and dtype and device agreement between arguments; which dtypes a device
// computes in is checked by its own implementation (FC_CHECK_FLOATING on the CPU).
#pragma once

#include <ATen/ATen.h>

#include <utility>

#include "checks.h"

namespace fastcells {

// LSTM saved (N, width()), one row per sequence row, G = 4H gates in torch's order i, f, g, o:
//   [gates i f g o (4H) | c_prev (H) | tanh(c) (H) | h_prev (P) | h before projection (H, proj only)]
struct LstmLayout {
  int64_t H, P;
  bool proj;
  int64_t c_prev() const { return 4 * H; }
  int64_t tanh_c() const { return 5 * H; }
  int64_t h_prev() const { return 6 * H; }
  int64_t h_raw() const { return 6 * H + P; }
  int64_t width() const { return 6 * H + P + (proj ? H : 0); }
};

// GRU saved (N, 5H): [r z n (3H) | h_n = W_hn h + b_hn (H) | h_prev (H)].
constexpr int64_t kGruSavedPerUnit = 5;
// RNN saved (N, 2H): [h (H) | h_prev (H)].
constexpr int64_t kRnnSavedPerUnit = 2;

// gx (N, 4H), h0 (B, P), c0 (B, H), w_hh (4H, P), w_hr (P, H) or none.
inline void check_lstm_layer_fwd_args(const at::Tensor& gx, const at::Tensor& h0,
                                      const at::Tensor& c0, const at::Tensor& w_hh,
                                      const c10::optional<at::Tensor>& w_hr) {
  FC_CHECK_DIM(gx, 2);
  FC_CHECK_DIM(c0, 2);
  const int64_t H = c0.size(1);
  if (w_hr.has_value()) FC_CHECK_DIM((*w_hr), 2);
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  TORCH_CHECK(gx.size(1) == 4 * H, "gx must have 4 * hidden_size = ", 4 * H, " columns, got ",
              gx.size(1));
  FC_CHECK_SHAPE(h0, c0.size(0), P);
  FC_CHECK_SHAPE(w_hh, 4 * H, P);
  FC_CHECK_LIKE(h0, gx);
  FC_CHECK_LIKE(c0, gx);
  FC_CHECK_LIKE(w_hh, gx);
  if (w_hr.has_value()) {
    FC_CHECK_SHAPE((*w_hr), P, H);  // (P was read from it: this checks its dims and H)
    FC_CHECK_LIKE((*w_hr), gx);
  }
}

// The input side of lstm_layer_from_input_fwd: x (N, I), w_ih (4H, I), bias (4H) or none, with H
// from c0 (B, H). The rest is checked by check_lstm_layer_fwd_args.
inline void check_lstm_input_args(const at::Tensor& x, const at::Tensor& w_ih,
                                  const c10::optional<at::Tensor>& bias, const at::Tensor& c0) {
  FC_CHECK_DIM(x, 2);
  FC_CHECK_DIM(c0, 2);
  FC_CHECK_SHAPE(w_ih, 4 * c0.size(1), x.size(1));
  FC_CHECK_LIKE(w_ih, x);
  check_bias(bias, "bias", 4 * c0.size(1), x);
}

// dy (N, P), dhn (B, P), dcn (B, H), saved (N, width), w_hh (4H, P), w_hr (P, H) or none.
inline LstmLayout check_lstm_layer_bwd_args(const at::Tensor& dy, const at::Tensor& dhn,
                                            const at::Tensor& dcn, const at::Tensor& saved,
                                            const at::Tensor& w_hh,
                                            const c10::optional<at::Tensor>& w_hr) {
  FC_CHECK_DIM(dy, 2);
  FC_CHECK_DIM(dhn, 2);
  FC_CHECK_DIM(dcn, 2);
  const LstmLayout L{dcn.size(1), dhn.size(1), w_hr.has_value()};
  const int64_t N = dy.size(0);
  FC_CHECK_SHAPE(dy, N, L.P);
  FC_CHECK_SHAPE(dhn, dcn.size(0), L.P);
  FC_CHECK_SHAPE(saved, N, L.width());
  FC_CHECK_SHAPE(w_hh, 4 * L.H, L.P);
  FC_CHECK_LIKE(dhn, dy);
  FC_CHECK_LIKE(dcn, dy);
  FC_CHECK_LIKE(saved, dy);
  FC_CHECK_LIKE(w_hh, dy);
  if (L.proj) {
    FC_CHECK_SHAPE((*w_hr), L.P, L.H);
    FC_CHECK_LIKE((*w_hr), dy);
  }
  return L;
}

// GRU (gates_per_unit 3, b_hh (3H) or none) and RNN (1, no bias): gx (N, G), h0 (B, H), w_hh (G, H).
inline void check_layer_fwd_args(const at::Tensor& gx, const at::Tensor& h0,
                                 const at::Tensor& w_hh, int64_t gates_per_unit) {
  FC_CHECK_DIM(gx, 2);
  FC_CHECK_DIM(h0, 2);
  const int64_t H = h0.size(1), G = gates_per_unit * H;
  FC_CHECK_SHAPE(gx, gx.size(0), G);
  FC_CHECK_SHAPE(w_hh, G, H);
  FC_CHECK_LIKE(h0, gx);
  FC_CHECK_LIKE(w_hh, gx);
}

// GRU and RNN backward: dy (N, H), dhn (B, H), saved (N, saved_per_unit * H), w_hh (G, H).
inline void check_layer_bwd_args(const at::Tensor& dy, const at::Tensor& dhn,
                                 const at::Tensor& saved, const at::Tensor& w_hh,
                                 int64_t gates_per_unit, int64_t saved_per_unit) {
  FC_CHECK_DIM(dy, 2);
  FC_CHECK_DIM(dhn, 2);
  const int64_t H = dhn.size(1), N = dy.size(0);
  FC_CHECK_SHAPE(dy, N, H);
  FC_CHECK_SHAPE(saved, N, saved_per_unit * H);
  FC_CHECK_SHAPE(w_hh, gates_per_unit * H, H);
  FC_CHECK_LIKE(dhn, dy);
  FC_CHECK_LIKE(saved, dy);
  FC_CHECK_LIKE(w_hh, dy);
}

// The LSTM weight gradients, one GEMM each over all rows after the time loop: dw_hh (4H, P) from the
// gate gradients dgx (N, 4H), and dw_hr (P, H) from dh_rows (N, P), the gradients of the projected
// outputs (empty without a projection).
inline std::pair<at::Tensor, at::Tensor> lstm_weight_grads(const at::Tensor& dgx,
                                                           const at::Tensor& saved,
                                                           const at::Tensor& dh_rows,
                                                           const LstmLayout& L) {
  at::Tensor dw_hh = at::mm(dgx.t(), saved.narrow(1, L.h_prev(), L.P));
  at::Tensor dw_hr = L.proj ? at::mm(dh_rows.t(), saved.narrow(1, L.h_raw(), L.H))
                            : at::empty({0}, dgx.options());
  return {dw_hh, dw_hr};
}

}  // namespace fastcells
