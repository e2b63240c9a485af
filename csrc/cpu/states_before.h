// The state each row of a layer's sequence started from, read from the layer's output y and h0: what
// the CPU's GRU and RNN backward use where their saved rows leave h_prev out (saved_layout.h).
//
// Row b of step t started from y's row b of the step before it in the layer's direction (t - 1, or
// t + 1 in reverse), or from h0's row b where its sequence starts at t: always at t = 0 going forward;
// in reverse, at the last step that has row b (a shorter sequence of a packed batch starts later).
#pragma once

#include "isa_namespace.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "../checks.h"
#include "../layers.h"
#include "../schedule.h"

namespace fastcells::cpu::FASTCELLS_ISA {

// A backward op's y (N, H) and h0 (B, H), checked against its dy (N, H) and dhn (B, H).
inline void check_output_and_h0(const at::Tensor& y, const at::Tensor& h0, const at::Tensor& dy,
                                const at::Tensor& dhn) {
  FC_CHECK_SHAPE(y, dy.size(0), dhn.size(1));
  FC_CHECK_SHAPE(h0, dhn.size(0), dhn.size(1));
  FC_CHECK_LIKE(y, dy);
  FC_CHECK_LIKE(h0, dy);
}

template <typename S>
class StatesBefore {
 public:
  // y (N, H) and h0 (B, H) contiguous, in S; they must outlive this object.
  StatesBefore(const at::Tensor& y, const at::Tensor& h0, const Schedule& sched, bool reverse)
      : y_(y.data_ptr<S>()), h0_(h0.data_ptr<S>()), N_(y.size(0)), H_(y.size(1)), sched_(sched),
        reverse_(reverse) {}

  // The state row `row` of the sequence started from (H values).
  const S* row(int64_t row) const {
    const int64_t t = step_of(row), b = row - sched_.offsets[t];
    const int64_t before = reverse_ ? t + 1 : t - 1;
    if (before < 0 || before >= sched_.steps || b >= sched_.sizes[before]) return h0_ + b * H_;
    return y_ + (sched_.offsets[before] + b) * H_;
  }

  // Every row's starting state, (N, H) in S.
  at::Tensor gathered() const {
    at::Tensor rows = at::empty({N_, H_}, c10::TensorOptions().dtype(c10::CppTypeToScalarType<S>::value));
    S* out = rows.data_ptr<S>();
    for (int64_t r = 0; r < N_; ++r) std::memcpy(out + r * H_, row(r), H_ * sizeof(S));
    return rows;
  }

 private:
  // The step that owns row `row`: the last whose offset is at most `row` (steps without rows come last,
  // at offset N).
  int64_t step_of(int64_t row) const {
    const auto& o = sched_.offsets;
    return std::upper_bound(o.begin(), o.end(), row) - o.begin() - 1;
  }
  const S* y_;
  const S* h0_;
  int64_t N_, H_;
  const Schedule& sched_;
  bool reverse_;
};

// Whether every step of the schedule has all B rows (padded input, as opposed to a packed batch).
inline bool all_steps_full(const Schedule& sched) {
  return std::all_of(sched.sizes.begin(), sched.sizes.end(), [&](int64_t s) { return s == sched.batch; });
}

// dst (G, H) = dg^T h_prev: dg (N, G) a gradient of pre-activations that add W h_prev, h_prev every row's
// starting state (StatesBefore), the operands in dtype `in` (weight_grad_into). Where every step has all B
// rows, h_prev is y shifted by one step with h0 in front, so the product is two GEMMs on y and h0 as they
// are, with no (N, H) copy: that copy would come on top of the backward's peak memory.
template <typename S>
void states_before_product(at::Tensor dst, const at::Tensor& dg, const at::Tensor& y, const at::Tensor& h0,
                           const Schedule& sched, bool reverse, at::ScalarType in) {
  if (sched.steps == 0 || !all_steps_full(sched)) {
    weight_grad_into(dst, {{dg.t(), StatesBefore<S>(y, h0, sched, reverse).gathered()}}, in);
    return;
  }
  const int64_t N = y.size(0), B = sched.batch, rest = N - B;
  // Going forward, rows B.. started from y's rows 0..N-B and rows 0..B from h0; in reverse, rows 0..N-B
  // started from y's rows B.. and the last B rows from h0.
  const int64_t dg_from_y = reverse ? 0 : B, y_first = reverse ? B : 0, dg_from_h0 = reverse ? rest : 0;
  weight_grad_into(dst, {{dg.narrow(0, dg_from_y, rest).t(), y.narrow(0, y_first, rest)},
                         {dg.narrow(0, dg_from_h0, B).t(), h0}}, in);
}

}  // namespace fastcells::cpu::FASTCELLS_ISA
