// The persistent tensor-core backward kernels: the sequential part of backpropagation through time,
// dh_{t-1} = dG_t W_hh (shapes in persistent.h, the partition in fastcells/persistent_plan.h with
// backward = true, whose functions give every index below).
//
// Block j owns units [j * U, (j + 1) * U) and holds their columns of W_hh, transposed, as A fragments in
// registers. Backward step s runs the forward's time steps in the opposite order. Per step:
//   1. load the step's dy and saved values of the block's (unit, batch) slots into registers; they do
//      not depend on the recurrence, so their latency hides behind the wait;
//   2. wait until every block has written dG of the step before (flags, or that step's grid.sync());
//   3. each warp multiplies its k tiles of W_hh^T by dG^T of the step before, its B fragments loaded
//      straight from the gradient rows in global memory (bypassing L1, which is not coherent across SMs;
//      each element goes to one warp only, so staging in shared memory would buy no reuse); fp32
//      accumulators, partial sums to shared memory. In a cluster launch (sm_90), the blocks of a
//      cluster stage dG of the step before in shared memory together instead, as the forward stages
//      h_{t-1} (persistent.cu, persistent_plan.h): each element leaves L2 once a cluster, not once a
//      block, and the fragments come from shared memory;
//   4. one thread a slot: dh = the part carried from the step before (dhn at first; GRU's direct
//      z * dh) + the warps' partials + dy; the cell's backward (fastcells/gate_math.h, as every backend);
//      writes the unit's gate gradients (dgx, and GRU's dgh, which the next step reads) and keeps dc;
//   5. publish: release the block's flag, or grid.sync().
// An entry's dh0 (and dc0) is written in the phase after its first forward step: after the loop for the
// whole batch, or (packed sequences, reverse direction) as soon as a sequence that started late is done.
#include "fastcells/gate_math.h"
#include "fastcells/persistent_plan.h"
#include "fastcells/saved_layout.h"
#include "persistent.h"
#include "persistent_common.cuh"
#include "types.cuh"

namespace fastcells::cuda {
namespace {

using namespace persistent_detail;
using persistent::b_n;
using persistent::kMaxBatch;
using persistent::kThreads;
using persistent::kTileM;
using persistent::kTileN;
using persistent::kWarps;
using persistent::Plan;

// Saved values a slot reads per step: LSTM i, f, g, o, c_prev, tanh(c); GRU r, z, n, h_n, h_prev; RNN h.
// k tiles of B fragments a warp loads at once (warp_partial_products): 8, or fewer where a thread holds
// 128 fragment registers (32 k tiles), which spill with 8: LSTM and RNN 4, GRU one at a time (it
// spills 16 bytes with 2; make cuda-check).
template <int kGates, int kFragments>
constexpr int kBwdLoadBatch = kFragments < 128 ? 8 : kGates == 3 ? 1 : 4;

// Loads a thread issues at once when it stages dG in a cluster (copy_in_batches): 8, or 2 where a thread
// holds 128 fragment registers (with 8, 16 units a block spill 36-40 bytes in 16 bits: make cuda-check).
template <int kFragments>
constexpr int kStageBatch = kFragments < 128 ? 8 : 2;

template <int kGates>
constexpr int kSavedPerSlot = kGates == 4 ? 6 : kGates == 3 ? 5 : 1;

// Column offsets of those values in a saved row, before adding the unit.
template <int kGates>
__device__ __forceinline__ int64_t saved_column(int i, int64_t H) {
  if constexpr (kGates == 4) {
    const LstmLayout L{H, H, false};
    return i < 4 ? i * H : (i == 4 ? L.c_prev() : L.tanh_c());
  } else if constexpr (kGates == 3) {
    const GruLayout L{H};
    return i < 3 ? i * H : (i == 3 ? L.h_n() : L.h_prev());
  } else {
    return RnnLayout{H}.h();
  }
}

template <int kGates>
__device__ __forceinline__ int64_t saved_width(int64_t H) {
  if constexpr (kGates == 4) return LstmLayout{H, H, false}.width();
  else if constexpr (kGates == 3) return GruLayout{H}.width();
  else return RnnLayout{H}.width();
}

template <typename T, int kGates, int kUnits, int kKTiles>
__device__ __forceinline__ void sequence_bwd_body(SequenceBwd a, bool flag_sync) {
  constexpr int kMTiles = (kUnits + kTileM - 1) / kTileM;
  constexpr int kMaxSlots = (kUnits * kMaxBatch + kThreads - 1) / kThreads;
  constexpr int kSaved = kSavedPerSlot<kGates>;
  constexpr int kLoadBatch = kBwdLoadBatch<kGates, kMTiles * kKTiles * 4>;
  using Bits = std::conditional_t<kTf32<T>, unsigned int, unsigned short>;  // an element's raw bits
  constexpr int64_t kPerChunk = 16 / sizeof(Bits);                           // elements in 16 bytes
  const ClusterPlace cluster = cluster_place();
  const Plan plan{kGates, kUnits, a.H, a.batch, /*backward=*/true, kTf32<T>, /*staged=*/cluster.size > 1};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t block = blockIdx.x, H = a.H, K = plan.depth(), steps = a.steps, B = a.batch;
  const int64_t n_tiles = plan.n_tiles(), slots = plan.slots(), stride = plan.h_stride();
  const int64_t width = saved_width<kGates>(H);

  extern __shared__ __align__(16) unsigned char shared[];
  Bits* stage = reinterpret_cast<Bits*>(shared);  // dG of the step before, in a cluster launch only
  float* partial = reinterpret_cast<float*>(shared + plan.h_stage_bytes());
  float* dc_state = reinterpret_cast<float*>(shared + plan.h_stage_bytes() + plan.partial_bytes());
  float* carried = dc_state + slots;  // both indexed by slot

  // The block's columns of W_hh, transposed, as A fragments, for the whole sequence.
  uint32_t w[kMTiles][kKTiles][4];
  load_weight_fragments<T>(w, a.w_hh, plan, block, warp, lane);
  for (int64_t slot = threadIdx.x; slot < slots; slot += kThreads) {
    const int64_t b = plan.slot_batch(slot), unit = plan.unit(block, plan.slot_unit(slot));
    if (unit >= H) continue;
    carried[slot] = load<T>(a.dh, b * H + unit);
    if constexpr (kGates == 4) dc_state[slot] = load<T>(a.dc, b * H + unit);
  }
  for (int64_t i = threadIdx.x; i < plan.h_stage_bytes() / int64_t{sizeof(Bits)}; i += kThreads) stage[i] = 0;
  if (cluster.size > 1) cluster_sync();  // no block stores into another's stage before it is zeroed
  __syncthreads();

  // The gradients the next step multiplies: GRU's of W_hh h + b_hh, the others' of the pre-activations.
  const void* exchange = kGates == 3 ? a.dgh : a.dgx;
  // 16-bit B fragments pair elements 2i and 2i + 1, neighbours in k: one 32-bit load reads both where
  // rows (K long) start at even elements and the tensor is 4-byte aligned, half the loads of a step.
  const bool paired_loads = K % 2 == 0 && reinterpret_cast<uintptr_t>(exchange) % 4 == 0;
  // Staged in 16-byte chunks where the rows and the gradient tensor allow.
  const bool vector_copy = H % kPerChunk == 0 && reinterpret_cast<uintptr_t>(exchange) % 16 == 0;
  for (int64_t s = 0; s <= steps; ++s) {
    const bool last = s == steps;  // the phase after the loop: dh0 only
    const int64_t t = last ? -1 : plan.time(s, steps, !a.reverse);
    const int64_t t_before = plan.prev_time(s, steps, !a.reverse);  // -1 at s = 0: no dG yet
    const int64_t bs = last ? 0 : plan.step_batch(t, a.sizes);
    const int64_t bs_before = t_before < 0 ? 0 : plan.step_batch(t_before, a.sizes);

    // 1. This step's dy and saved values.
    float dy[kMaxSlots], saved[kMaxSlots][kSaved];
#pragma unroll
    for (int q = 0; q < kMaxSlots; ++q) {
      const int64_t slot = threadIdx.x + int64_t{q} * kThreads;
      const int64_t b = plan.slot_batch(slot), unit = plan.unit(block, plan.slot_unit(slot));
      const bool live = slot < slots && unit < H && b < bs;
      const int64_t row = live ? plan.row(t, b, a.offsets) : 0;
      dy[q] = live ? load<T>(a.dy, row * H + unit) : 0.0f;
#pragma unroll
      for (int i = 0; i < kSaved; ++i) {
        saved[q][i] = live ? load<T>(a.saved, row * width + saved_column<kGates>(i, H) + unit) : 0.0f;
      }
    }

    // 2. Wait for every block's dG of the step before. In a cluster: for the blocks whose units this
    //    rank stages, and until every block of the cluster has read the stage of the step before; then
    //    stage dG of the step before (zero past its batch) in every block of the cluster.
    if (cluster.size > 1 && t_before >= 0) {
      wait_for_step(a.flags, s, flag_sync, cluster.rank, cluster.size);
      if (s > 1) cluster_wait();
      const Bits* dg = static_cast<const Bits*>(exchange);
      const auto source = [&](int64_t n) {
        return n < bs_before ? dg + plan.row(t_before, n, a.offsets) * K : nullptr;
      };
      constexpr int kBatch = kStageBatch<kMTiles * kKTiles * 4>;
      if (vector_copy) {
        stage_in_cluster<kPerChunk, kBatch>(plan, cluster, B, source, stage, stride);
      } else {
        stage_in_cluster<1, kBatch>(plan, cluster, B, source, stage, stride);
      }
      cluster_sync();
    } else {
      wait_for_step(a.flags, s, flag_sync);
    }

    // 3. Partial products dG_before W_hh of this warp's k tiles, one batch tile at a time.
    if (t_before >= 0 && cluster.size > 1) {  // B fragments from the stage
      staged_partial_products<T, kLoadBatch>(w, plan, warp, lane, stage, stride, partial);
      __syncthreads();
      if (s < steps) cluster_arrive();  // done reading the stage (the next step's staging waits)
    } else if (t_before >= 0) {
      for (int64_t nt = 0; nt < n_tiles; ++nt) {
        const int64_t n = nt * kTileN + b_n(lane);  // entries past the step before's batch add nothing
        const int64_t dg_row = plan.row(t_before, n < bs_before ? n : 0, a.offsets) * K;
        // Element e of k tile kt's B fragment (its bits; zero past the batch or K), and elements e and
        // e + 1 (even e) in one 32-bit load: k is even, and so is K where paired_loads, so both are in K
        // or both past it.
        const auto element = [&](int64_t kt, int e) -> uint32_t {
          const int64_t k = kt * plan.tile_k() + plan.b_k(lane, e);
          if (n >= bs_before || k >= K) return 0u;
          if constexpr (kTf32<T>) {
            return to_tf32(__ldcg(static_cast<const float*>(exchange) + dg_row + k));
          } else {
            return __ldcg(static_cast<const unsigned short*>(exchange) + dg_row + k);
          }
        };
        const auto pair = [&](int64_t kt, int e) -> uint32_t {
          const int64_t k = kt * plan.tile_k() + plan.b_k(lane, e);
          if (n >= bs_before || k >= K) return 0u;
          return __ldcg(reinterpret_cast<const unsigned*>(static_cast<const unsigned short*>(exchange) + dg_row + k));
        };
        // One loop or the other, not a choice per k tile: mixed in one loop, the two kinds of load kept
        // the compiler from issuing a batch's loads together (sm_90 SASS). The variants that load one k
        // tile at a time (GRU's largest) keep one loop: a second spills there.
        if constexpr (kLoadBatch > 1 && !kTf32<T>) {
          if (paired_loads) {
            warp_partial_products<T, kLoadBatch>(w, plan, warp, lane, nt, partial, [&](int64_t kt, uint32_t(&bf)[2]) {
              bf[0] = pair(kt, 0);
              bf[1] = pair(kt, 2);
            });
            continue;
          }
        }
        warp_partial_products<T, kLoadBatch>(w, plan, warp, lane, nt, partial, [&](int64_t kt, uint32_t(&bf)[2]) {
          if constexpr (kTf32<T>) {
            bf[0] = element(kt, 0);
            bf[1] = element(kt, 1);
          } else {
            bf[0] = element(kt, 0) | (element(kt, 1) << 16);
            bf[1] = element(kt, 2) | (element(kt, 3) << 16);
          }
        });
      }
      __syncthreads();
    }

    // 4. The cell's backward, one (unit, batch entry) slot a thread.
#pragma unroll
    for (int q = 0; q < kMaxSlots; ++q) {
      const int64_t slot = threadIdx.x + int64_t{q} * kThreads;
      const int u = plan.slot_unit(slot);
      const int64_t b = plan.slot_batch(slot), unit = plan.unit(block, u);
      if (slot >= slots || unit >= H || (b >= bs && b >= bs_before)) continue;  // idle in both steps
      float dh = carried[slot];
      if (t_before >= 0) {
        for (int v = 0; v < kWarps; ++v) dh += partial[plan.partial_index(v, plan.local_row(0, u), b)];
      }
      if (b >= bs) {  // the entry's first forward step was the step before: dh is its dh0
        store<T>(a.dh, b * H + unit, dh);
        if constexpr (kGates == 4) store<T>(a.dc, b * H + unit, dc_state[slot]);
        continue;
      }
      dh += dy[q];
      const int64_t at = plan.row(t, b, a.offsets) * K;
      const float* v = saved[q];
      if constexpr (kGates == 4) {
        const LstmUnitGrad<float> d = lstm_unit_bwd<float>(v[0], v[1], v[2], v[3], v[4], v[5], dh, dc_state[slot]);
        store<T>(a.dgx, at + plan.gate_column(0, unit), d.d_i);
        store<T>(a.dgx, at + plan.gate_column(1, unit), d.d_f);
        store<T>(a.dgx, at + plan.gate_column(2, unit), d.d_g);
        store<T>(a.dgx, at + plan.gate_column(3, unit), d.d_o);
        dc_state[slot] = d.d_c_prev;
        carried[slot] = 0.0f;
      } else if constexpr (kGates == 3) {
        const GruUnitGrad<float> d = gru_unit_bwd<float>(v[0], v[1], v[2], v[3], v[4], dh);
        store<T>(a.dgx, at + plan.gate_column(0, unit), d.d_r);
        store<T>(a.dgx, at + plan.gate_column(1, unit), d.d_z);
        store<T>(a.dgx, at + plan.gate_column(2, unit), d.d_n);
        store<T>(a.dgh, at + plan.gate_column(0, unit), d.d_r);
        store<T>(a.dgh, at + plan.gate_column(1, unit), d.d_z);
        store<T>(a.dgh, at + plan.gate_column(2, unit), d.d_hn);
        carried[slot] = d.d_h_prev;
      } else {
        store<T>(a.dgx, at + plan.gate_column(0, unit), rnn_unit_bwd<float>(v[0], dh, a.relu));
        carried[slot] = 0.0f;
      }
    }

    // 5. Publish dG of this step.
    if (!last) publish_step(a.flags, s, flag_sync);
  }
}

template <typename T, int G, int U, int K>
struct BackwardKernel;

// The kernel: the body where this architecture holds the variant's fragments without spilling, else a
// trap (never launched there: with_kernel asks what the device runs).
template <typename T, int kGates, int kUnits, int kKTiles>
__global__ void __launch_bounds__(kThreads, 1) sequence_bwd_kernel(SequenceBwd a, bool flag_sync) {
  if constexpr (compiled_for_this_arch(BackwardKernel<T, kGates, kUnits, kKTiles>::kFragments)) {
    sequence_bwd_body<T, kGates, kUnits, kKTiles>(a, flag_sync);
  } else {
    __trap();  // never launched where this variant spills (runs_here): fail loudly if it ever is
  }
}

template <typename T, int G, int U, int K>
struct BackwardKernel {
  static constexpr int kFragments = (U + kTileM - 1) / kTileM * K * 4;  // A-fragment registers a thread holds
  // sm_90's ptxas keeps up to 128 without spilling, but for float32 with 16 units and 32 k tiles (80
  // bytes of spills: make cuda-check).
  static constexpr bool kCompiled =
      kFragments <= 128 && useful_k_choice<T>(K, G) && !(kTf32<T> && U == 16 && K == 32);
  static constexpr auto kernel() { return &sequence_bwd_kernel<T, G, U, K>; }
};

Plan plan_of(DType dtype, Cell cell, int64_t batch, int64_t H, const PersistentConfig& config) {
  return Plan{gates_of(cell), config.units, H, batch, /*backward=*/true, dtype == DType::kFloat32,
              /*staged=*/config.cluster > 1};
}

// K = gates * H <= 8 warps * 32 k tiles * 16 = 4096: LSTM H <= 1024 (tf32, 8 a tile: LSTM H <= 512).
template <typename Body>
bool with_backward_kernel(DType dtype, Cell cell, int64_t batch, int64_t H, const PersistentConfig& config,
                          Body body) {
  if (H > kMaxHidden) return false;
  return with_kernel<BackwardKernel, 4, 8, 16, 32>(dtype, cell, config.units,
                                                        plan_of(dtype, cell, batch, H, config).k_tiles_per_warp(), body);
}

}  // namespace

bool sequence_bwd_fits(DType dtype, Cell cell, int64_t batch, int64_t H, const PersistentConfig& config) {
  return family_fits([&](auto body) { return with_backward_kernel(dtype, cell, batch, H, config, body); },
                     plan_of(dtype, cell, batch, H, config), config.cluster);
}

cudaError_t sequence_bwd(DType dtype, const SequenceBwd& args, const PersistentConfig& config,
                         cudaStream_t stream) {
  return family_launch(
      [&](auto body) { return with_backward_kernel(dtype, args.cell, args.batch, args.H, config, body); },
      plan_of(dtype, args.cell, args.batch, args.H, config), args, config, stream);
}

}  // namespace fastcells::cuda
