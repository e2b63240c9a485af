// The time schedule of one layer: which rows of the flattened (N, ...) sequence each step owns.
//
// Padded and packed input share one layout: rows of step t are offsets[t] .. offsets[t] + sizes[t],
// with sizes non-increasing (a PackedSequence's batch_sizes; all equal to B for padded input). The
// state of batch entry b lives in row b of a (B, ...) buffer; a step touches rows < sizes[t] only, so
// finished sequences keep their final state, and in reverse direction late starters keep h0.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace fastcells {

struct Schedule {
  int64_t steps = 0;  // T
  int64_t batch = 0;  // B: rows of the state buffers
  std::vector<int64_t> sizes;
  std::vector<int64_t> offsets;

  // The time index handled at position s of the forward pass (backward walks it the other way).
  int64_t time_at(int64_t s, bool reverse) const { return reverse ? steps - 1 - s : s; }

  // N: the rows of all steps together.
  int64_t rows() const {
    int64_t n = 0;
    for (int64_t size : sizes) n += size;
    return n;
  }
};

// Calls step(bs, row0) for every step that has rows, in time order, or reversed for backward: bs
// rows (state rows 0 .. bs), the first of them row0 of the flattened (N, ...) sequence.
template <typename F>
void for_each_step(const Schedule& sched, bool reverse, bool backward, const F& step) {
  for (int64_t k = 0; k < sched.steps; ++k) {
    const int64_t t = sched.time_at(backward ? sched.steps - 1 - k : k, reverse);
    if (sched.sizes[t] > 0) step(sched.sizes[t], sched.offsets[t]);
  }
}

inline Schedule make_schedule(const at::Tensor& batch_sizes, int64_t rows, int64_t batch) {
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong &&
                  batch_sizes.device().is_cpu(),
              "batch_sizes must be a 1-D int64 CPU tensor, got ", batch_sizes.dim(), "-D ",
              batch_sizes.scalar_type(), " on ", batch_sizes.device());
  Schedule s;
  s.steps = batch_sizes.size(0);
  s.batch = batch;
  at::Tensor sizes = batch_sizes.contiguous();
  const int64_t* p = sizes.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < s.steps; ++t) {
    TORCH_CHECK(p[t] >= 0 && p[t] <= batch, "batch_sizes[", t, "] = ", p[t],
                " must lie in [0, ", batch, "] (the batch of the initial state)");
    TORCH_CHECK(t == 0 || p[t] <= p[t - 1], "batch_sizes must be non-increasing, got ", p[t - 1],
                " then ", p[t], " at step ", t);
    s.sizes.push_back(p[t]);
    s.offsets.push_back(total);
    total += p[t];
  }
  TORCH_CHECK(total == rows, "batch_sizes sum to ", total, " but the input has ", rows, " rows");
  return s;
}

}  // namespace fastcells
