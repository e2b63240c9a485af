// The persistent tensor-core forward kernels (shapes and synchronization in persistent.h, the partition
// in fastcells/persistent_plan.h, whose functions give every index below).
//
// Per step, in block j (units [j * U, (j + 1) * U), all their gate rows):
//   1. load this step's input projections of the block's (unit, batch) slots into registers; they do not
//      depend on the recurrence, so their latency hides behind the wait;
//   2. wait until every block has written h_{t-1} (flags, or the previous step's grid.sync());
//   3. copy h_{t-1} (B, H) from y (h0 at the first step) into shared memory, bypassing L1 (__ldcg): other
//      SMs wrote it and L1 is not coherent across SMs;
//   4. each warp multiplies its k tiles of the block's W_hh rows (A fragments, in registers since the
//      start) by h_{t-1}^T (B fragments from shared memory) with mma.sync, fp32 accumulators, and writes
//      its partial sums to shared memory;
//   5. one thread a slot sums the warps' partials in order, adds the input projection, runs the cell
//      (fastcells/gate_math.h, the same as every backend), and writes y, the saved row in training, and
//      the fp32 states (c, and h for GRU's z * h_prev and for hn) that stay in shared memory;
//   6. publish: release the block's flag, or grid.sync().
#include <cooperative_groups.h>

#include "fastcells/gate_math.h"
#include "fastcells/persistent_plan.h"
#include "fastcells/saved_layout.h"
#include "persistent.h"
#include "types.cuh"

namespace fastcells::cuda {
namespace {

namespace cg = cooperative_groups;
using persistent::a_k;
using persistent::a_row;
using persistent::b_k;
using persistent::b_n;
using persistent::c_n;
using persistent::c_row;
using persistent::kMaxBatch;
using persistent::kThreads;
using persistent::kTileK;
using persistent::kTileM;
using persistent::kTileN;
using persistent::kWarps;
using persistent::Plan;

constexpr int kMaxKTilesPerWarp = 8;  // H <= 8 warps * 8 tiles * 16 = 1024
// Bound on gate rows * k tiles a warp holds in registers: LSTM with 16 units a block and 8 k tiles
// (512) needs 255 registers and spills (make cuda-check); GRU's 384 needs 235 without spilling. So
// LSTM runs 16 units a block only up to H = 512.
constexpr int kMaxFragmentRows = 384;

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned value;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(value) : "l"(p) : "memory");
  return value;
}

__device__ __forceinline__ void store_release(unsigned* p, unsigned value) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(value) : "memory");
}

// Raw 16-bit weight W[row][k], zero for padding rows and columns past H.
__device__ __forceinline__ uint32_t weight_bits(const uint16_t* w, int64_t row, int64_t k, int64_t H) {
  return (row >= 0 && k < H) ? w[row * H + k] : 0u;
}

template <typename T, int kGates, int kUnits, int kKTiles>
__global__ void __launch_bounds__(kThreads, 1) sequence_fwd_kernel(SequenceFwd a, bool flag_sync) {
  constexpr int kMTiles = (kGates * kUnits + kTileM - 1) / kTileM;
  constexpr int kMaxSlots = (kUnits * kMaxBatch + kThreads - 1) / kThreads;
  const Plan plan{kGates, kUnits, a.H, a.batch};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t block = blockIdx.x, H = a.H, B = a.batch, GH = kGates * H, steps = a.steps;
  const int64_t n_tiles = plan.n_tiles(), k_tiles = plan.k_tiles(), stride = plan.h_stride();
  const int64_t slots = plan.slots();

  extern __shared__ __align__(16) unsigned char shared[];
  uint16_t* h_stage = reinterpret_cast<uint16_t*>(shared);
  float* partial = reinterpret_cast<float*>(shared + plan.h_stage_bytes());
  float* c_state = reinterpret_cast<float*>(shared + plan.h_stage_bytes() + plan.partial_bytes());
  float* h_state = c_state + slots;  // both indexed by slot

  // The block's W_hh rows as A fragments, for the whole sequence.
  const uint16_t* w_hh = static_cast<const uint16_t*>(a.w_hh);
  uint32_t w[kMTiles][kKTiles][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int j = 0; j < kKTiles; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t row = plan.weight_row(block, mt * kTileM + a_row(lane, 2 * i));
        const int64_t k = plan.k_tile(warp, j) * kTileK + a_k(lane, 2 * i);
        w[mt][j][i] = weight_bits(w_hh, row, k, H) | (weight_bits(w_hh, row, k + 1, H) << 16);
      }
    }
  }
  for (int64_t i = threadIdx.x; i < plan.h_stage_bytes() / 2; i += kThreads) h_stage[i] = 0;
  for (int64_t slot = threadIdx.x; slot < slots; slot += kThreads) {
    const int64_t b = plan.slot_batch(slot), unit = plan.unit(block, plan.slot_unit(slot));
    if (unit >= H) continue;
    h_state[slot] = load<T>(a.h0, b * H + unit);
    if constexpr (kGates == 4) c_state[slot] = load<T>(a.c0, b * H + unit);
  }
  __syncthreads();

  const uint16_t* h0 = static_cast<const uint16_t*>(a.h0);
  const uint16_t* y_bits = static_cast<const uint16_t*>(a.y);
  // Rows of 16-byte chunks where the rows and both sources allow (y is a fresh tensor; h0 may be a view).
  const bool vector_copy = H % 8 == 0 && reinterpret_cast<uintptr_t>(h0) % 16 == 0 &&
                           reinterpret_cast<uintptr_t>(y_bits) % 16 == 0;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = plan.time(s, steps, a.reverse), t_prev = plan.prev_time(s, steps, a.reverse);

    // 1. This step's input projections.
    float gx[kMaxSlots][kGates];
#pragma unroll
    for (int q = 0; q < kMaxSlots; ++q) {
      const int64_t slot = threadIdx.x + int64_t{q} * kThreads;
      const int64_t b = plan.slot_batch(slot), unit = plan.unit(block, plan.slot_unit(slot));
#pragma unroll
      for (int g = 0; g < kGates; ++g) {
        gx[q][g] = slot < slots && unit < H ? load<T>(a.gx, plan.row(t, b) * GH + plan.gate_column(g, unit))
                                            : 0.0f;
      }
    }

    // 2. Wait for every block's h_{t-1}.
    if (s > 0 && flag_sync) {
      if (warp == 0) {
        for (int64_t j = lane; j < gridDim.x; j += 32) {
          while (load_acquire(a.flags + j) < static_cast<unsigned>(s)) {
          }
        }
      }
      __syncthreads();
    }

    // 3. Stage h_{t-1} (B, H) as the B operand.
    const uint16_t* h_prev = t_prev < 0 ? h0 : y_bits + plan.row(t_prev, 0) * H;
    if (vector_copy) {
      const int64_t chunks = B * H / 8;
      for (int64_t i = threadIdx.x; i < chunks; i += kThreads) {
        const int64_t b = i * 8 / H, k = i * 8 - b * H;
        const int4 value = __ldcg(reinterpret_cast<const int4*>(h_prev) + i);
        *reinterpret_cast<int4*>(h_stage + b * stride + k) = value;
      }
    } else {
      for (int64_t i = threadIdx.x; i < B * H; i += kThreads) {
        const int64_t b = i / H, k = i - b * H;
        h_stage[b * stride + k] = __ldcg(reinterpret_cast<const unsigned short*>(h_prev) + i);
      }
    }
    __syncthreads();

    // 4. Partial products of this warp's k tiles, one batch tile at a time.
    for (int64_t nt = 0; nt < n_tiles; ++nt) {
      float acc[kMTiles][4] = {};
#pragma unroll
      for (int j = 0; j < kKTiles; ++j) {
        const int64_t kt = plan.k_tile(warp, j);
        if (kt >= k_tiles) break;
        const uint16_t* column = h_stage + (nt * kTileN + b_n(lane)) * stride + kt * kTileK;
        const uint32_t bf[2] = {*reinterpret_cast<const uint32_t*>(column + b_k(lane, 0)),
                                *reinterpret_cast<const uint32_t*>(column + b_k(lane, 2))};
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) mma_m16n8k16<T>(acc[mt], w[mt][j], bf);
      }
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          partial[plan.partial_index(warp, mt * kTileM + c_row(lane, e), nt * kTileN + c_n(lane, e))] =
              acc[mt][e];
        }
      }
    }
    __syncthreads();

    // 5. The cell, one (unit, batch entry) slot a thread.
#pragma unroll
    for (int q = 0; q < kMaxSlots; ++q) {
      const int64_t slot = threadIdx.x + int64_t{q} * kThreads;
      const int u = plan.slot_unit(slot);
      const int64_t b = plan.slot_batch(slot), unit = plan.unit(block, u);
      if (slot >= slots || unit >= H) continue;
      float pre[kGates];
#pragma unroll
      for (int g = 0; g < kGates; ++g) {
        float sum = 0.0f;
        for (int v = 0; v < kWarps; ++v) sum += partial[plan.partial_index(v, plan.local_row(g, u), b)];
        pre[g] = sum;
      }
      const int64_t row = plan.row(t, b);
      const float h_prev_value = h_state[slot];
      float h;
      if constexpr (kGates == 4) {
        const LstmUnit<float> cell = lstm_unit_fwd<float>(gx[q][0] + pre[0], gx[q][1] + pre[1],
                                                          gx[q][2] + pre[2], gx[q][3] + pre[3], c_state[slot]);
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
        const GruUnit<float> cell = gru_unit_fwd<float>(gx[q][0], gx[q][1], gx[q][2], h_r, h_z, h_n, h_prev_value);
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
        h = rnn_unit_fwd<float>(gx[q][0] + pre[0], a.relu);
        if (a.saved != nullptr) {
          const RnnLayout L{H};
          store<T>(a.saved, row * L.width() + L.h() + unit, h);
          store<T>(a.saved, row * L.width() + L.h_prev() + unit, h_prev_value);
        }
      }
      h_state[slot] = h;
      store<T>(a.y, row * H + unit, h);
      if (s == steps - 1) {
        store<T>(a.hn, b * H + unit, h);
        if constexpr (kGates == 4) store<T>(a.cn, b * H + unit, c_state[slot]);
      }
    }

    // 6. Publish h_t.
    if (flag_sync) {
      __syncthreads();  // every thread's y stores precede the release below
      if (threadIdx.x == 0) {
        __threadfence();
        store_release(a.flags + block, static_cast<unsigned>(s + 1));
      }
    } else {
      cg::this_grid().sync();
    }
  }
}

int gates_of(Cell cell) { return cell == Cell::kLstm ? 4 : cell == Cell::kGru ? 3 : 1; }

Plan plan_of(Cell cell, int64_t batch, int64_t H, const PersistentConfig& config) {
  return Plan{gates_of(cell), config.units, H, batch};
}

// Calls body(kernel) with the instantiation for (dtype, cell, units, H); false where none exists.
template <typename Body>
bool with_kernel(DType dtype, Cell cell, int units, int64_t H, Body body) {
  const int64_t k_tiles_per_warp = Plan{1, 1, H, 1}.k_tiles_per_warp();
  auto by_k = [&](auto type, auto gates, auto units_c) {
    using T = typename decltype(type)::type;
    constexpr int G = decltype(gates)::value, U = decltype(units_c)::value;
    if (k_tiles_per_warp <= 2) return body(sequence_fwd_kernel<T, G, U, 2>), true;
    if (k_tiles_per_warp <= 4) return body(sequence_fwd_kernel<T, G, U, 4>), true;
    if constexpr (G * U * kMaxKTilesPerWarp <= kMaxFragmentRows) {
      if (k_tiles_per_warp <= kMaxKTilesPerWarp) return body(sequence_fwd_kernel<T, G, U, 8>), true;
    }
    return false;
  };
  auto by_units = [&](auto type, auto gates) {
    if (units == 8) return by_k(type, gates, std::integral_constant<int, 8>{});
    if (units == 16) return by_k(type, gates, std::integral_constant<int, 16>{});
    return false;
  };
  auto by_cell = [&](auto type) {
    switch (cell) {
      case Cell::kLstm: return by_units(type, std::integral_constant<int, 4>{});
      case Cell::kGru: return by_units(type, std::integral_constant<int, 3>{});
      case Cell::kRnn: return by_units(type, std::integral_constant<int, 1>{});
    }
    return false;
  };
  switch (dtype) {
    case DType::kFloat16: return by_cell(std::type_identity<__half>{});
    case DType::kBFloat16: return by_cell(std::type_identity<__nv_bfloat16>{});
    default: return false;
  }
}

}  // namespace

int64_t sequence_fwd_blocks(Cell cell, int64_t H, const PersistentConfig& config) {
  return plan_of(cell, 1, H, config).blocks();
}

bool sequence_fwd_fits(DType dtype, Cell cell, int64_t batch, int64_t H, const PersistentConfig& config) {
  if (batch < 1 || batch > kMaxBatch || H < 1) return false;
  int device = 0, sms = 0, cooperative = 0, shared_optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  const Plan plan = plan_of(cell, batch, H, config);
  const int64_t bytes = plan.shared_bytes();
  if (!cooperative || bytes > shared_optin) return false;
  int per_sm = 0;
  const bool exists = with_kernel(dtype, cell, config.units, H, [&](auto kernel) {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, bytes) != cudaSuccess) {
      cudaGetLastError();  // clear the error: not fitting is an answer, not a failure
      per_sm = 0;
    }
  });
  return exists && int64_t{per_sm} * sms >= plan.blocks();
}

cudaError_t sequence_fwd(DType dtype, const SequenceFwd& args, const PersistentConfig& config,
                         cudaStream_t stream) {
  if (args.steps == 0) return cudaSuccess;
  const Plan plan = plan_of(args.cell, args.batch, args.H, config);
  const int64_t bytes = plan.shared_bytes();
  if (config.flag_sync) {
    const cudaError_t error = cudaMemsetAsync(args.flags, 0, plan.blocks() * sizeof(unsigned), stream);
    if (error != cudaSuccess) return error;
  }
  cudaError_t error = cudaErrorInvalidValue;
  with_kernel(dtype, args.cell, config.units, args.H, [&](auto kernel) {
    error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (error != cudaSuccess) return;
    SequenceFwd copy = args;
    bool flag_sync = config.flag_sync;
    void* params[] = {&copy, &flag_sync};
    error = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel),
                                        dim3(static_cast<unsigned>(plan.blocks())), dim3(kThreads), params,
                                        static_cast<size_t>(bytes), stream);
  });
  return error;
}

}  // namespace fastcells::cuda
