// Splitting a small batch's hidden units between two threads for a layer's whole time loop.
//
// With at most kSmallRows rows, a layer's step is a few mat-vecs reading the whole recurrent weight from
// L2 (256 KiB at H=128 for an LSTM in float32): about 2 µs, too short to fork and join threads for
// (at::parallel_for costs about that), so the second core idled while the first ran the sequence
// (T=200, B=1, H=128 LSTM: 1.1x torch.nn). Here both threads run the whole sequence, each on its half of
// the hidden units, meeting once a step at a spinning barrier (a fraction of a µs): each computes the
// gate rows of its units, updates them, and writes its half of h_t, which the other reads in the next
// step (so h is double-buffered). Backward the same way: each thread its units' gate gradients, then,
// past the barrier, its units' columns of dh_{t-1} = dG_t @ W_hh from all of dG_t.
//
// Results do not change: each gate row is still one mat-vec row (matvec_rows) summed the same way, and
// the units split at a multiple of 8 of a hidden size that is one, so every row keeps the 8-row path
// it takes in one thread's loop; or, where the layer packs its weights (gemm_cpu.h's packs_small_batch),
// each thread multiplies its units' columns, each summed as the whole product sums it (bf16_products.h's
// gemm_columns, gemm_cpu.h's gemm_packed_columns).
#pragma once

#include "isa_namespace.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>
#include <thread>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../schedule.h"
#include "ops_cpu.h"

namespace fastcells::cpu::FASTCELLS_ISA {

// The least multiply-adds of a step (all its rows and gates) worth splitting: B=1, H=64 LSTM.
constexpr int64_t kUnitSplitWork = int64_t{1} << 14;
// The least multiply-adds of a whole call worth splitting: waking the second thread costs about 3 µs
// (a B=1 LSTM on the Intel Xeon, one thread against two, the same results: at H=128, 14.8 against 17.8
// µs for one step, even at two, two threads ahead from four; at H=64 from 16 steps).
constexpr int64_t kUnitSplitCallWork = int64_t{1} << 18;

// Whether a layer's time loop splits its units: batches of at most kSmallRows rows, H a multiple of 8
// (see above), enough work per step and in all (`rows` rows of work_per_row multiply-adds each), two
// threads free (not inside a parallel region), and ATen's OpenMP backend, whose parallel_for runs its
// two parts on two threads at once (a barrier between two parts run one after another by one thread
// would never open).
inline bool splits_units(int64_t batch, int64_t H, int64_t work_per_row, int64_t rows) {
#if AT_PARALLEL_OPENMP
  return batch <= kSmallRows && H % 8 == 0 && H >= 16 && batch * work_per_row >= kUnitSplitWork &&
         rows * work_per_row >= kUnitSplitCallWork && !at::in_parallel_region() && at::get_num_threads() >= 2;
#else
  return false;
#endif
}

// Whether a bfloat16 layer's time loop over one row group of more than kSmallRows rows (row_groups.h:
// fewer than 12 rows, or weights over 2 MiB) keeps two threads for the whole loop, splitting each
// step's products by panels and its pointwise work by units (lstm_cpu.inc), instead of forking and
// joining them at every step's products (LSTM T=50 B=8 H=256: libgomp took 18% of the time). Only with
// the bfloat16 products, whose panels the loop splits (the caller checks that).
inline bool splits_panels(int64_t batch, int64_t H, int64_t work_per_step, int64_t groups) {
#if AT_PARALLEL_OPENMP
  return batch > kSmallRows && groups == 1 && H >= 16 && work_per_step >= kUnitSplitWork &&
         !at::in_parallel_region() && at::get_num_threads() >= 2;
#else
  return false;
#endif
}

// Two threads waiting for each other, once or more a step: a count that only grows.
class StepBarrier {
 public:
  // Called by both threads at their `meeting`-th meeting (1, 2, ...).
  void arrive_and_wait(int64_t meeting) {
    arrived_.fetch_add(1, std::memory_order_acq_rel);
    const int64_t target = 2 * meeting;
    for (int64_t spins = 0; arrived_.load(std::memory_order_acquire) < target; ++spins) {
#if defined(__x86_64__)
      _mm_pause();
#endif
      if (spins > (1 << 14)) std::this_thread::yield();  // the other vCPU may be descheduled
    }
  }

 private:
  std::atomic<int64_t> arrived_{0};
};

// Runs step(u0, u1, bs, row0, index, sync) for every step that has rows, in time order (reversed for
// a reverse layer; the other way for backward), on two threads where they are free: units [u0, u1) of
// the H are one thread's; index (0, 1, 2, ...) counts the steps that have rows; sync() waits
// for the other thread to reach the same point of the same step (as often in each step as the step
// needs; both threads call it equally often). Where only one thread runs the loop, it gets all units
// and sync() returns at once.
template <typename F>
void for_each_step_by_units(const Schedule& sched, bool reverse, bool backward, int64_t H, const F& step) {
  const int64_t mid = (H / 2 + 7) / 8 * 8;  // a multiple of 8, < H for H >= 16
  StepBarrier barrier;
  at::parallel_for(0, 2, 1, [&](int64_t p0, int64_t p1) {
    const bool alone = p1 - p0 == 2;
    const int64_t u0 = p0 == 0 ? 0 : mid, u1 = p1 == 2 ? H : mid;
    int64_t done = 0, meetings = 0;
    for_each_step(sched, reverse, backward, [&](int64_t bs, int64_t row0) {
      const auto sync = [&] {
        if (!alone) barrier.arrive_and_wait(++meetings);
      };
      step(u0, u1, bs, row0, done, sync);
      ++done;
    });
  });
}

}  // namespace fastcells::cpu::FASTCELLS_ISA
