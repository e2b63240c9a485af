// The persistent tensor-core forward kernels (shapes and synchronization in persistent.h, the partition
// in fastcells/persistent_plan.h, whose functions give every index below).
//
// Per step, in block j (units [j * U, (j + 1) * U), all their gate rows):
//   1. prefetch the next step's input projections of the block's (unit, batch) slots into L2; they do
//      not depend on the recurrence, so a step's own arrive during the step before;
//   2. wait until every block has written h_{t-1} (flags, or the previous step's grid.sync());
//   3. copy h_{t-1} (B, H) from y (from h0 at the first step, and for packed sequences that start late
//      in the reverse direction) into shared memory, bypassing L1 (__ldcg): other SMs wrote it and L1
//      is not coherent across SMs. In a cluster launch (sm_90), the blocks of a thread-block cluster
//      share this copy: each waits for the flags of the blocks whose units it copies only, and stores
//      them into every block of its cluster (distributed shared memory), so each element of h_{t-1}
//      leaves L2 once a cluster instead of once a block (the copy was the largest phase of a step:
//      bench/results/nvidia-h200/README.md); cluster barriers order the stores and the reuse of the
//      buffer;
//   4. each warp multiplies its k tiles of the block's W_hh rows (A fragments, in registers since the
//      start) by h_{t-1}^T (B fragments from shared memory) with mma.sync, fp32 accumulators, and writes
//      its partial sums to shared memory;
//   5. one thread a slot sums the warps' partials in order, loads and adds the input projection, runs
//      the cell (fastcells/gate_math.h, the same as every backend), and writes y, the saved row in training, and
//      the fp32 states (c, and h for GRU's z * h_prev and for hn) that stay in shared memory; batch
//      entries past a packed step's batch are idle;
//   6. publish: release the block's flag, or grid.sync().
// After the loop each block writes hn and cn of its units from the states.
#include "fastcells/gate_math.h"
#include "fastcells/persistent_plan.h"
#include "fastcells/saved_layout.h"
#include "persistent.h"
#include "persistent_common.cuh"
#include "types.cuh"

namespace fastcells::cuda {
namespace {

using namespace persistent_detail;
using persistent::kMaxBatch;
using persistent::kThreads;
using persistent::kTileM;
using persistent::kWarps;
using persistent::Plan;

// Step 3: stages h_{t-1} (B, H), kPer elements at a time (a 16-byte chunk, or 1), from y_prev for batch
// entries below bs_prev and from h0 for the others, into the block's h_stage (rows `stride` apart).
template <int kPer, typename Bits>
__device__ __forceinline__ void stage_whole(int64_t B, int64_t H, int64_t bs_prev, const Bits* y_prev,
                                            const Bits* h0, Bits* h_stage, int64_t stride) {
  using Value = std::conditional_t<kPer == 1, Bits, int4>;
  static_assert(kPer == 1 || kPer * sizeof(Bits) == 16);
  copy_in_batches(B * H / kPer, [&](int64_t i) {
    const int64_t b = i * kPer / H;
    return __ldcg(reinterpret_cast<const Value*>(b < bs_prev ? y_prev : h0) + i);
  }, [&](int64_t i, Value value) {
    const int64_t b = i * kPer / H, k = i * kPer - b * H;
    *reinterpret_cast<Value*>(h_stage + b * stride + k) = value;
  });
}

template <typename T, int kGates, int kUnits, int kKTiles>
__device__ __forceinline__ void sequence_fwd_body(SequenceFwd a, bool flag_sync) {
  constexpr int kMTiles = (kGates * kUnits + kTileM - 1) / kTileM;
  constexpr int kMaxSlots = (kUnits * kMaxBatch + kThreads - 1) / kThreads;
  using Bits = std::conditional_t<kTf32<T>, unsigned int, unsigned short>;  // an element's raw bits
  constexpr int64_t kPerChunk = 16 / sizeof(Bits);                           // elements in 16 bytes
  const Plan plan{kGates, kUnits, a.H, a.batch, /*backward=*/false, kTf32<T>};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t block = blockIdx.x, H = a.H, B = a.batch, GH = kGates * H, steps = a.steps;
  const int64_t stride = plan.h_stride();
  const int64_t slots = plan.slots();

  extern __shared__ __align__(16) unsigned char shared[];
  Bits* h_stage = reinterpret_cast<Bits*>(shared);
  float* partial = reinterpret_cast<float*>(shared + plan.h_stage_bytes());
  float* c_state = reinterpret_cast<float*>(shared + plan.h_stage_bytes() + plan.partial_bytes());
  float* h_state = c_state + slots;  // both indexed by slot

  // The block's W_hh rows as A fragments, for the whole sequence.
  uint32_t w[kMTiles][kKTiles][4];
  load_weight_fragments<T>(w, a.w_hh, plan, block, warp, lane);
  for (int64_t i = threadIdx.x; i < plan.h_stage_bytes() / int64_t{sizeof(Bits)}; i += kThreads) h_stage[i] = 0;
  for (int64_t slot = threadIdx.x; slot < slots; slot += kThreads) {
    const int64_t b = plan.slot_batch(slot), unit = plan.unit(block, plan.slot_unit(slot));
    if (unit >= H) continue;
    h_state[slot] = load<T>(a.h0, b * H + unit);
    if constexpr (kGates == 4) c_state[slot] = load<T>(a.c0, b * H + unit);
  }
  // In a cluster launch (cluster staging, flag synchronization only), no block may store into another's
  // h_stage before that block has zeroed it: the first cluster barrier.
  const ClusterPlace cluster = cluster_place();
  if (cluster.size > 1) cluster_sync();
  __syncthreads();

  const Bits* h0 = static_cast<const Bits*>(a.h0);
  const Bits* y_bits = static_cast<const Bits*>(a.y);
  // Rows of 16-byte chunks where the rows and both sources allow (y is a fresh tensor; h0 may be a view).
  const bool vector_copy = H % kPerChunk == 0 && reinterpret_cast<uintptr_t>(h0) % 16 == 0 &&
                           reinterpret_cast<uintptr_t>(y_bits) % 16 == 0;
  // Prefetches into L2 the input projections of step s (none past the last) of this thread's slots.
  const auto prefetch_input_projections = [&](int64_t s) {
    if (s >= steps) return;
    const int64_t t = plan.time(s, steps, a.reverse), bs = plan.step_batch(t, a.sizes);
#pragma unroll
    for (int q = 0; q < kMaxSlots; ++q) {
      const int64_t slot = threadIdx.x + int64_t{q} * kThreads;
      const int64_t b = plan.slot_batch(slot), unit = plan.unit(block, plan.slot_unit(slot));
      if (slot >= slots || unit >= H || b >= bs) continue;
#pragma unroll
      for (int g = 0; g < kGates; ++g) {
        prefetch_l2(static_cast<const T*>(a.gx) + plan.row(t, b, a.offsets) * GH + plan.gate_column(g, unit));
      }
    }
  };
  prefetch_input_projections(0);
  PhaseProbe probe;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = plan.time(s, steps, a.reverse), t_prev = plan.prev_time(s, steps, a.reverse);
    const int64_t bs = plan.step_batch(t, a.sizes), bs_prev = t_prev < 0 ? 0 : plan.step_batch(t_prev, a.sizes);

    // 1. Prefetch the next step's input projections into L2: they do not depend on the recurrence, and
    //    most are in device memory. Loaded into registers here, as before, the compiler issued them one
    //    after another at this register pressure (the LSTM step at H=768: 12% of ncu's stall samples
    //    waited on them); this step reads its own, prefetched a step ago, in phase 5. Not into L1: each
    //    step's acquire invalidates it.
    prefetch_input_projections(s + 1);

    // 2. Wait for every block's h_{t-1} (in a cluster: for the blocks whose units this rank stages, and
    //    until every block of the cluster has read the previous step's h_stage).
    // 3. Stage h_{t-1} (B, H) as the B operand: rows of the previous step's batch from y, the others
    //    (all at the first step; in the reverse direction, sequences starting here) from h0. Both
    //    sources hold batch entry b at b * H from their base. In a cluster, each rank stages its share
    //    into every block of the cluster, and the cluster barrier makes it visible.
    const Bits* y_prev = y_bits + (t_prev < 0 ? 0 : plan.row(t_prev, 0, a.offsets) * H);
    if (cluster.size > 1) {
      wait_for_step(a.flags, s, flag_sync, cluster.rank, cluster.size);
      if (s > 0) cluster_wait();
      probe.mark(0);
      const auto source = [&](int64_t b) { return (b < bs_prev ? y_prev : h0) + b * H; };
      if (vector_copy) {
        stage_in_cluster<kPerChunk>(plan, cluster, B, source, h_stage, stride);
      } else {
        stage_in_cluster<1>(plan, cluster, B, source, h_stage, stride);
      }
      cluster_sync();
    } else {
      wait_for_step(a.flags, s, flag_sync);
      probe.mark(0);
      if (vector_copy) {
        stage_whole<kPerChunk>(B, H, bs_prev, y_prev, h0, h_stage, stride);
      } else {
        stage_whole<1>(B, H, bs_prev, y_prev, h0, h_stage, stride);
      }
      __syncthreads();
    }
    probe.mark(1);

    // 4. Partial products of this warp's k tiles, one batch tile at a time.
    staged_partial_products<T, /*kLoadBatch=*/8>(w, plan, warp, lane, h_stage, stride, partial);
    __syncthreads();
    if (cluster.size > 1 && s + 1 < steps) cluster_arrive();  // done reading h_stage (the next step waits)
    probe.mark(2);

    // 5. The cell, one (unit, batch entry) slot a thread.
#pragma unroll
    for (int q = 0; q < kMaxSlots; ++q) {
      const int64_t slot = threadIdx.x + int64_t{q} * kThreads;
      const int u = plan.slot_unit(slot);
      const int64_t b = plan.slot_batch(slot), unit = plan.unit(block, u);
      if (slot >= slots || unit >= H || b >= bs) continue;  // idle entries keep their state
      float pre[kGates];
#pragma unroll
      for (int g = 0; g < kGates; ++g) {
        float sum = 0.0f;
        for (int v = 0; v < kWarps; ++v) sum += partial[plan.partial_index(v, plan.local_row(g, u), b)];
        pre[g] = sum;
      }
      const int64_t row = plan.row(t, b, a.offsets);
      float gx[kGates];
#pragma unroll
      for (int g = 0; g < kGates; ++g) gx[g] = load<T>(a.gx, row * GH + plan.gate_column(g, unit));
      const float h_prev_value = h_state[slot];
      float h;
      if constexpr (kGates == 4) {
        const LstmUnit<float> cell = lstm_unit_fwd<float>(gx[0] + pre[0], gx[1] + pre[1],
                                                          gx[2] + pre[2], gx[3] + pre[3], c_state[slot]);
        if (a.saved != nullptr) {
          const LstmLayout L{H, H, false};
          const int64_t at = row * L.width() + unit;
          store<T>(a.saved, at, cell.i);
          store<T>(a.saved, at + H, cell.f);
          store<T>(a.saved, at + 2 * H, cell.g);
          store<T>(a.saved, at + 3 * H, cell.o);
          store<T>(a.saved, at + L.c_prev(), c_state[slot]);
          store<T>(a.saved, at + L.tanh_c(), cell.tanh_c);
          store<T>(a.saved, at + L.h_prev(), h_prev_value);
        }
        c_state[slot] = cell.c;
        h = cell.h;
      } else if constexpr (kGates == 3) {
        float h_r = pre[0], h_z = pre[1], h_n = pre[2];
        if (a.b_hh != nullptr) {
          h_r += load<T>(a.b_hh, unit);
          h_z += load<T>(a.b_hh, H + unit);
          h_n += load<T>(a.b_hh, 2 * H + unit);
        }
        const GruUnit<float> cell = gru_unit_fwd<float>(gx[0], gx[1], gx[2], h_r, h_z, h_n, h_prev_value);
        if (a.saved != nullptr) {
          const GruLayout L{H};
          const int64_t at = row * L.width() + unit;
          store<T>(a.saved, at, cell.r);
          store<T>(a.saved, at + H, cell.z);
          store<T>(a.saved, at + 2 * H, cell.n);
          store<T>(a.saved, at + L.h_n(), h_n);
          store<T>(a.saved, at + L.h_prev(), h_prev_value);
        }
        h = cell.h;
      } else {
        h = rnn_unit_fwd<float>(gx[0] + pre[0], a.relu);
        if (a.saved != nullptr) {
          const RnnLayout L{H};
          store<T>(a.saved, row * L.width() + L.h() + unit, h);
          store<T>(a.saved, row * L.width() + L.h_prev() + unit, h_prev_value);
        }
      }
      h_state[slot] = h;
      store<T>(a.y, row * H + unit, h);
    }

    // 6. Publish h_t.
    probe.mark(3);
    publish_step(a.flags, s, flag_sync);
    probe.mark(4);
  }
  probe.flush();

  // Final states: every batch entry's last (packed: each sequence's own last step's).
  for (int64_t slot = threadIdx.x; slot < slots; slot += kThreads) {
    const int64_t b = plan.slot_batch(slot), unit = plan.unit(block, plan.slot_unit(slot));
    if (unit >= H) continue;
    store<T>(a.hn, b * H + unit, h_state[slot]);
    if constexpr (kGates == 4) store<T>(a.cn, b * H + unit, c_state[slot]);
  }
}

template <typename T, int G, int U, int K>
struct ForwardKernel;

// The kernel: the body where this architecture holds the variant's fragments without spilling, else a
// trap (never launched there: with_kernel asks what the device runs).
template <typename T, int kGates, int kUnits, int kKTiles>
__global__ void __launch_bounds__(kThreads, 1) sequence_fwd_kernel(SequenceFwd a, bool flag_sync) {
  if constexpr (compiled_for_this_arch(ForwardKernel<T, kGates, kUnits, kKTiles>::kFragments)) {
    sequence_fwd_body<T, kGates, kUnits, kKTiles>(a, flag_sync);
  } else {
    __trap();  // never launched where this variant spills (runs_here): fail loudly if it ever is
  }
}

template <typename T, int G, int U, int K>
struct ForwardKernel {
  // A-fragment registers a thread holds. LSTM with 16 units a block and 8 k tiles (128) needs 255
  // registers and spills (make cuda-check); GRU's 96 needs 235 without spilling. So LSTM runs 16 units
  // a block only up to H = 512.
  static constexpr int kFragments = (G * U + kTileM - 1) / kTileM * K * 4;
  static constexpr bool kCompiled = kFragments <= 96 && useful_k_choice<T>(K, 1);
  static constexpr auto kernel() { return &sequence_fwd_kernel<T, G, U, K>; }
};

Plan plan_of(DType dtype, Cell cell, int64_t batch, int64_t H, const PersistentConfig& config) {
  return Plan{gates_of(cell), config.units, H, batch, /*backward=*/false, dtype == DType::kFloat32};
}

// H <= 1024: 8 warps * 8 k tiles * 16 (16-bit), * 16 k tiles * 8 (tf32; float32 LSTM and GRU hold
// 16 k tiles only up to H = 512, within the 96 fragment registers).
template <typename Body>
bool with_forward_kernel(DType dtype, Cell cell, int64_t batch, int64_t H, const PersistentConfig& config,
                         Body body) {
  if (H > kMaxHidden) return false;
  return with_kernel<ForwardKernel, 2, 4, 8, 16>(dtype, cell, config.units,
                                                 plan_of(dtype, cell, batch, H, config).k_tiles_per_warp(), body);
}

}  // namespace

int64_t sequence_fwd_blocks(Cell cell, int64_t H, const PersistentConfig& config) {
  return plan_of(DType::kBFloat16, cell, 1, H, config).blocks();
}

bool sequence_fwd_fits(DType dtype, Cell cell, int64_t batch, int64_t H, const PersistentConfig& config) {
  return family_fits([&](auto body) { return with_forward_kernel(dtype, cell, batch, H, config, body); },
                     plan_of(dtype, cell, batch, H, config), config.cluster);
}

cudaError_t sequence_fwd(DType dtype, const SequenceFwd& args, const PersistentConfig& config,
                         cudaStream_t stream) {
  return family_launch(
      [&](auto body) { return with_forward_kernel(dtype, args.cell, args.batch, args.H, config, body); },
      plan_of(dtype, args.cell, args.batch, args.H, config), args, config, stream);
}

}  // namespace fastcells::cuda
