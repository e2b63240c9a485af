// Splitting a layer's batch rows between threads, for the time loops of the CPU layer ops.
//
// The rows of the batch are independent through the whole recurrence. So rather than splitting each
// time step's work between the threads (a fork and a join per step, each thread waiting for the
// slowest at every step), each thread can run the whole sequence on its own rows with no barrier at
// all. The price: every thread reads the whole recurrent weight at every step, where the per-step
// split reads half of it per core, and a thread's product has fewer rows to reuse each weight load
// on. Measured on the 2-core AMD EPYC (Zen 3, 512 KiB L2 per core), float32 LSTM inference, median
// time per step with / without the split (a noisy machine: ratios, not absolute values, carry over):
//   H = 64 (64 KiB of W_hh): B = 8: 8.1 / 9.2 µs, B = 16: 18 / 27, B = 64: 52 / 88;
//   H = 128 (256 KiB): B = 12: 40 / 52 µs, B = 32: 80 / 116;
//   H = 256 (1 MiB): B = 8 (4 rows a group): 88-99 / 61-65 µs, B = 12: 119 / 124, B = 16: 157 / 184,
//   B = 32: 227 / 253;
//   H = 512 (4 MiB): B = 16: 383 / 330 µs.
// So a group needs 6 rows (a full row tile of the packed GEMM), or 4 where the weights are small
// enough to stay in a core's L1/L2, and the weights must stay under 2 MiB.
#pragma once

#include "isa_namespace.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../schedule.h"

namespace fastcells::cpu::FASTCELLS_ISA {

// The fewest rows a group may have, and the weight size below which 4 rows suffice.
constexpr int64_t kMinRowsPerGroup = 6;
constexpr int64_t kMinRowsPerGroupSmallWeights = 4;
constexpr int64_t kSmallWeightBytes = 128 << 10;
// Above this many bytes of weights read per step, the per-step split of the weight wins (see above).
constexpr int64_t kMaxGroupedWeightBytes = 2 << 20;

// Group q owns batch rows [bounds[q], bounds[q + 1]) for the whole sequence.
struct RowGroups {
  std::vector<int64_t> bounds;
  int64_t count() const { return static_cast<int64_t>(bounds.size()) - 1; }
};

// The fewest rows a group may have, for weights of `weight_bytes` read per step.
inline int64_t min_rows_per_group(int64_t weight_bytes) {
  return weight_bytes <= kSmallWeightBytes ? kMinRowsPerGroupSmallWeights : kMinRowsPerGroup;
}

// One group per thread when the batch and the weights allow it (see above), else one group of all
// rows (whose steps then split their work between threads themselves). With a shrinking (packed)
// batch, row b takes part in as many steps as its sequence is long; the bounds split the total of
// those lengths evenly, so no thread idles while another finishes the long sequences. How many groups
// there are changes no result: every output element is summed the same way in any group
// (gemm_cpu.h's StepProduct, step_input.h).
inline RowGroups split_rows(const Schedule& sched, int64_t weight_bytes) {
  const int64_t B = sched.steps ? sched.sizes[0] : 0;  // the most rows any step has
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  int64_t groups = std::min<int64_t>(threads, B / min_rows_per_group(weight_bytes));
  if (weight_bytes > kMaxGroupedWeightBytes) groups = 1;
  RowGroups split;
  if (groups <= 1) {
    split.bounds = {0, B};
    return split;
  }
  // length[b]: the number of steps in which row b takes part (sizes are non-increasing).
  std::vector<int64_t> steps_with(B + 1, 0);  // steps_with[n]: steps that have exactly n rows
  for (int64_t t = 0; t < sched.steps; ++t) steps_with[sched.sizes[t]] += 1;
  std::vector<int64_t> length(B);
  int64_t longer = 0, total = 0;
  for (int64_t b = B - 1; b >= 0; --b) {
    longer += steps_with[b + 1];
    length[b] = longer;
    total += longer;
  }
  // Boundary k goes after the first rows holding k / groups of the total; the first rows are the
  // longest, so no group is left empty.
  split.bounds.push_back(0);
  int64_t done = 0;
  for (int64_t b = 0; b < B - 1 && split.count() < groups - 1; ++b) {
    done += length[b];
    const int64_t k = split.count() + 1;
    if (done * groups >= total * k) split.bounds.push_back(b + 1);
  }
  split.bounds.push_back(B);
  return split;
}

// A step of a group: its active rows at that step, and the first of them in the flattened sequence.
struct GroupStep {
  int64_t rows, row0;
};

// Runs the time loop of each group, each group on its own thread, `chunk` steps at a time:
// steps(g0, group_steps, count) for each run of up to `chunk` consecutive steps in which the group has
// active rows, in time order, or reversed for backward. g0: the group's first batch row; a step's
// `rows` are rows g0 .. g0 + rows of the state buffers. One group runs on the calling thread directly:
// inside at::parallel_for, even on one thread, ATen marks the code as in a parallel region, and the
// step's own parallel loops would then run on one thread.
template <typename F>
void for_each_group_chunk(const RowGroups& split, const Schedule& sched, bool reverse, bool backward,
                          int64_t chunk, const F& steps) {
  auto run_group = [&](int64_t g0, int64_t g1) {
    std::vector<GroupStep> group_steps;
    group_steps.reserve(sched.steps);
    for_each_step(sched, reverse, backward, [&](int64_t bs, int64_t row0) {
      const int64_t group_rows = std::min(bs, g1) - g0;
      if (group_rows > 0) group_steps.push_back({group_rows, row0 + g0});
    });
    const int64_t n = static_cast<int64_t>(group_steps.size());
    for (int64_t s = 0; s < n; s += chunk) steps(g0, group_steps.data() + s, std::min(chunk, n - s));
  };
  if (split.count() == 1) {
    run_group(split.bounds[0], split.bounds[1]);
    return;
  }
  at::parallel_for(0, split.count(), 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) run_group(split.bounds[q], split.bounds[q + 1]);
  });
}

// for_each_group_chunk one step at a time: step(g0, rows, row0) for each step of each group.
template <typename F>
void for_each_group_step(const RowGroups& split, const Schedule& sched, bool reverse, bool backward,
                         const F& step) {
  for_each_group_chunk(split, sched, reverse, backward, 1, [&](int64_t g0, const GroupStep* s, int64_t) {
    step(g0, s->rows, s->row0);
  });
}

}  // namespace fastcells::cpu::FASTCELLS_ISA
