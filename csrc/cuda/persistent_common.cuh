// What the persistent kernels (persistent.cu forward, persistent_bwd.cu backward) share: the tensor-core
// product, the per-step synchronization between blocks, and the choice of the kernel's instantiation.
#pragma once

#include <cooperative_groups.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "fastcells/persistent_plan.h"
#include "persistent.h"
#include "types.cuh"

namespace fastcells::cuda::persistent_detail {

// Where a forward step's time goes (bench/persistent_probe.cu, which compiles persistent.cu with
// FASTCELLS_PHASE_PROBE; the extension never does): thread 0 of each block adds the clock cycles since
// its previous mark to the phase it marks, and at the end adds its block's sums to phase_cycles.
#ifdef FASTCELLS_PHASE_PROBE
inline constexpr int kPhases = 5;  // wait, copy h, products, cell, publish
__device__ unsigned long long phase_cycles[kPhases];

__device__ __forceinline__ unsigned long long clock_cycles() {
  unsigned long long cycles;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(cycles));
  return cycles;
}

struct PhaseProbe {
  unsigned long long last;
  unsigned long long sums[kPhases] = {};
  __device__ PhaseProbe() : last(clock_cycles()) {}
  __device__ __forceinline__ void mark(int phase) {
    if (threadIdx.x != 0) return;
    const unsigned long long now = clock_cycles();
    sums[phase] += now - last;
    last = now;
  }
  __device__ __forceinline__ void flush() {
    if (threadIdx.x != 0) return;
    for (int i = 0; i < kPhases; ++i) atomicAdd(&phase_cycles[i], sums[i]);
  }
};
#else
struct PhaseProbe {
  __device__ __forceinline__ void mark(int) {}
  __device__ __forceinline__ void flush() {}
};
#endif

// A-fragment registers a thread may hold before sm_90: sm_80's ptxas spills the variants above 32 (make
// cuda-check), where sm_90's keeps up to 96 (forward) and 128 (backward) without spilling. So for sm_80
// the larger variants compile to a kernel that traps, and the launchers never pick them where the code
// the device runs was compiled for an older architecture (also sm_80 PTX JIT-compiled on an H100).
constexpr int kMaxFragmentsBeforeSm90 = 32;

__host__ __device__ constexpr bool compiled_for_this_arch(int fragments) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  return fragments <= kMaxFragmentsBeforeSm90;
#else
  return fragments >= 0;
#endif
}

// Whether `kernel`'s code for the current device holds `fragments` registers: the architecture its PTX
// was written for (ptxVersion, 90 for sm_90 code) decides what compiled_for_this_arch kept.
template <typename KernelPtr>
bool runs_here(KernelPtr kernel, int fragments) {
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess) {
    cudaGetLastError();  // no code for this device: not an error, an answer
    return false;
  }
  return attributes.ptxVersion >= 90 || fragments <= kMaxFragmentsBeforeSm90;
}

// Whether T's kernels run tf32 tensor cores (float32), else 16-bit ones.
template <typename T>
constexpr bool kTf32 = std::is_same_v<T, float>;

// float32 to tf32 (round to nearest, ties away: what cuDNN and cuBLAS do), in a 32-bit register.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(x));
  return bits;
}

// D += A B on tensor cores, fp32 C and D; fragment layouts in fastcells/persistent_plan.h. 16-bit T:
// mma.sync.m16n8k16 (A 16 x 16, B 16 x 8, two elements a register); float: m16n8k8 tf32 (A 16 x 8,
// B 8 x 8, one element a register).
template <typename T>
__device__ __forceinline__ void mma_tile(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if __CUDA_ARCH__ >= 800
  if constexpr (kTf32<T>) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
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

// Element `index` of a tensor as an operand register's bits (16-bit: the raw bits, float: tf32), zero
// for -1 (padding).
template <typename T>
__device__ __forceinline__ uint32_t operand_or_zero(const void* p, int64_t index) {
  if (index < 0) return 0u;
  if constexpr (kTf32<T>) {
    return to_tf32(static_cast<const float*>(p)[index]);
  } else {
    return static_cast<const uint16_t*>(p)[index];
  }
}

// The block's A fragments (rows of W_hh forward, its columns backward) for the whole sequence:
// w[m tile][j][register] of warp `warp`'s j-th k tile. A register holds elements 2i and 2i + 1 (16-bit,
// the lower one in the low half) or element i (tf32).
template <typename T, int kMTiles, int kKTiles>
__device__ __forceinline__ void load_weight_fragments(uint32_t (&w)[kMTiles][kKTiles][4], const void* w_hh,
                                                      const persistent::Plan& plan, int64_t block, int warp,
                                                      int lane) {
  using namespace persistent;
  constexpr int kPerRegister = kTf32<T> ? 1 : 2;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int j = 0; j < kKTiles; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        uint32_t bits = 0;
#pragma unroll
        for (int half = 0; half < kPerRegister; ++half) {
          const int e = kPerRegister * i + half;
          const int r = mt * kTileM + plan.a_row(lane, e);
          const int64_t k = plan.k_tile(warp, j) * plan.tile_k() + plan.a_k(lane, e);
          bits |= operand_or_zero<T>(w_hh, plan.weight_index(block, r, k)) << (16 * half);
        }
        w[mt][j][i] = bits;
      }
    }
  }
}

// One warp's partial products for batch tile nt, stored to `partial` (the plan's partial_index): for every
// m tile, the sum over the warp's k tiles of its A fragments times the B fragment that load_b(kt, bf)
// fills for k tile kt. The warp loads kLoadBatch k tiles' B fragments before it issues their MMAs: the
// backward's B loads are round trips to L2 (other SMs wrote dG), and loaded one k tile at a time each
// waited for the MMA before it (asm volatile keeps their order), so an LSTM backward step at H=768 made
// 24 round trips one after another (sm_90 SASS).
template <typename T, int kLoadBatch, int kMTiles, int kKTiles, typename LoadB>
__device__ __forceinline__ void warp_partial_products(const uint32_t (&w)[kMTiles][kKTiles][4],
                                                      const persistent::Plan& plan, int warp, int lane,
                                                      int64_t nt, float* partial, LoadB load_b) {
  using namespace persistent;
  constexpr int kBatch = kKTiles < kLoadBatch ? kKTiles : kLoadBatch;
  float acc[kMTiles][4] = {};
#pragma unroll
  for (int j0 = 0; j0 < kKTiles; j0 += kBatch) {
    uint32_t bf[kBatch][2];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int64_t kt = plan.k_tile(warp, j0 + j);
      if (j0 + j < kKTiles && kt < plan.k_tiles()) load_b(kt, bf[j]);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      if (j0 + j >= kKTiles || plan.k_tile(warp, j0 + j) >= plan.k_tiles()) break;
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) mma_tile<T>(acc[mt], w[mt][j0 + j], bf[j]);
    }
  }
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      partial[plan.partial_index(warp, mt * kTileM + c_row(lane, e), nt * kTileN + c_n(lane, e))] = acc[mt][e];
    }
  }
}

// warp_partial_products of every batch tile with the B fragments read from `stage` (shared memory: the
// product's B operand, batch rows `stride` elements apart, as raw bits; forward h_{t-1}, backward dG in
// a cluster launch).
template <typename T, int kLoadBatch, int kMTiles, int kKTiles, typename Bits>
__device__ __forceinline__ void staged_partial_products(const uint32_t (&w)[kMTiles][kKTiles][4],
                                                        const persistent::Plan& plan, int warp, int lane,
                                                        const Bits* stage, int64_t stride, float* partial) {
  using namespace persistent;
  for (int64_t nt = 0; nt < plan.n_tiles(); ++nt) {
    const Bits* row = stage + (nt * kTileN + b_n(lane)) * stride;  // the lane's batch entry
    warp_partial_products<T, kLoadBatch>(w, plan, warp, lane, nt, partial, [&](int64_t kt, uint32_t(&bf)[2]) {
      const Bits* tile = row + kt * plan.tile_k();
      if constexpr (kTf32<T>) {  // one element a register
        bf[0] = to_tf32(__uint_as_float(tile[plan.b_k(lane, 0)]));
        bf[1] = to_tf32(__uint_as_float(tile[plan.b_k(lane, 1)]));
      } else {  // elements 2i and 2i + 1, neighbours in k, in one 32-bit load
        bf[0] = *reinterpret_cast<const uint32_t*>(tile + plan.b_k(lane, 0));
        bf[1] = *reinterpret_cast<const uint32_t*>(tile + plan.b_k(lane, 2));
      }
    });
  }
}

// A strong (L1-bypassing) load with no ordering of its own: a flag poll. What it observed orders the
// loads after it once the poller runs fence_acquire (a relaxed read then a fence is an acquire pattern of
// the PTX memory model), so several flags can be polled at once instead of one acquire load at a time.
__device__ __forceinline__ unsigned load_relaxed(const unsigned* p) {
  unsigned value;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(value) : "l"(p) : "memory");
  return value;
}

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

__device__ __forceinline__ void fence_acquire() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

__device__ __forceinline__ void store_release(unsigned* p, unsigned value) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(value) : "memory");
}

__device__ __forceinline__ uint64_t global_time_ns() {
  uint64_t ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  return ns;
}

// How long a block waits for the others before it calls it a bug: every block is resident and a step
// takes microseconds, so a wait of 10 s (even under compute-sanitizer) means a block will never
// publish. Then the kernel traps: the launch fails with an error instead of hanging the GPU (and the
// rented GPU time with it).
constexpr uint64_t kWaitLimitNs = 10'000'000'000ull;

// Flags a lane of the polling warp reads at once (4 cover 128 blocks, H = 1024 at 8 units a block).
constexpr int kFlagsPerPoll = 4;

// Waits until blocks first, first + stride, first + stride * 2, ... (all of them by default) have
// published step s - 1 (flag synchronization; with grid synchronization the previous step's
// publish_step already waited). Warp 0 polls the flags, each lane kFlagsPerPoll blocks at a time with
// independent relaxed loads (one acquire load after another cost a round trip to L2 each, and
// invalidated L1 each), then one acquire fence; the barrier passes the order to the block.
__device__ __forceinline__ void wait_for_step(const unsigned* flags, int64_t s, bool flag_sync, int first = 0,
                                              int stride = 1) {
  if (s == 0 || !flag_sync) return;
  if (threadIdx.x < 32) {
    const uint64_t start = global_time_ns();
    const int count = (static_cast<int>(gridDim.x) - first + stride - 1) / stride;  // blocks to wait for
    for (int i0 = static_cast<int>(threadIdx.x); i0 < count; i0 += 32 * kFlagsPerPoll) {
      for (;;) {
        unsigned seen[kFlagsPerPoll];
#pragma unroll
        for (int q = 0; q < kFlagsPerPoll; ++q) {
          const int i = i0 + 32 * q;
          seen[q] = i < count ? load_relaxed(flags + first + i * stride) : ~0u;
        }
        bool ready = true;
#pragma unroll
        for (int q = 0; q < kFlagsPerPoll; ++q) ready = ready && seen[q] >= static_cast<unsigned>(s);
        if (ready) break;
        if (global_time_ns() - start > kWaitLimitNs) __trap();
      }
    }
    fence_acquire();
  }
  __syncthreads();
}

// Thread-block clusters (sm_90; the cluster staging of persistent_plan.h). Outside a cluster launch, and
// in code for older architectures, a block is a cluster of one.
struct ClusterPlace {
  int size;  // blocks in the cluster
  int rank;  // this block's rank in it
};

__device__ __forceinline__ ClusterPlace cluster_place() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned size, rank;
  asm("mov.u32 %0, %%cluster_nctarank;" : "=r"(size));
  asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return {static_cast<int>(size), static_cast<int>(rank)};
#else
  return {1, 0};
#endif
}

// The cluster barrier, split: arrive (release: this thread's earlier shared-memory accesses, its stores
// into other blocks' included, happen before what other blocks do after their wait) and wait (acquire).
// Every thread of every block of the cluster arrives, then waits, in turn.
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release;" ::: "memory");
#endif
}

__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
#endif
}

// The whole cluster barrier: every block of the cluster (and every thread of this one) has come here.
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}

// Stores `value` at `local`'s place in the shared memory of block `rank` of this cluster (the same
// dynamic shared-memory layout in every block).
template <typename V>
__device__ __forceinline__ void store_in_block(V* local, unsigned rank, V value) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const auto own = static_cast<uint32_t>(__cvta_generic_to_shared(local));
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(own), "r"(rank));
  if constexpr (sizeof(V) == 16) {
    const int4 v = value;
    asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(remote), "r"(v.x), "r"(v.y),
                 "r"(v.z), "r"(v.w)
                 : "memory");
  } else if constexpr (sizeof(V) == 4) {
    asm volatile("st.shared::cluster.u32 [%0], %1;" ::"r"(remote), "r"(value) : "memory");
  } else {
    static_assert(sizeof(V) == 2);
    asm volatile("st.shared::cluster.u16 [%0], %1;" ::"r"(remote), "h"(value) : "memory");
  }
#else
  *local = value;  // a cluster of one
#endif
}

// Loads a thread issues before it stores any of them in copy_in_batches, by default.
constexpr int kCopyBatch = 8;

// Copies elements 0..n-1, the block's threads taking every kThreads-th: load(i) reads element i, store(i,
// value) writes it. Each load is a round trip to L2 (other SMs wrote what it copies), and __ldcg is asm volatile:
// copied one at a time, a step's loads at B=16 H=768 waited one after another (7 round trips, sm_90 SASS).
// A thread now issues kBatch loads before its first store.
template <int kBatch = kCopyBatch, typename Load, typename Store>
__device__ __forceinline__ void copy_in_batches(int64_t n, Load load, Store store) {
  using Value = decltype(load(int64_t{0}));
  using persistent::kThreads;
  for (int64_t first = threadIdx.x; first < n; first += int64_t{kThreads} * kBatch) {
    Value values[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      const int64_t i = first + int64_t{q} * kThreads;
      if (i < n) values[q] = load(i);
    }
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      const int64_t i = first + int64_t{q} * kThreads;
      if (i < n) store(i, values[q]);
    }
  }
}

// Stages a product's B operand in a cluster launch (persistent_plan.h's cluster staging): this block's
// rank loads its columns of `rows` rows, kPer elements at a time (a 16-byte chunk, or 1), row b from
// source(b) (its first element; null: a row of zeros), and stores them into the stage of every block of
// the cluster (rows `stride` apart), kBatch loads a thread at a time (copy_in_batches).
template <int kPer, int kBatch = kCopyBatch, typename Bits, typename Source>
__device__ __forceinline__ void stage_in_cluster(const persistent::Plan& plan, ClusterPlace cluster, int64_t rows,
                                                 Source source, Bits* stage, int64_t stride) {
  using Value = std::conditional_t<kPer == 1, Bits, int4>;
  static_assert(kPer == 1 || kPer * sizeof(Bits) == 16);
  const int64_t groups = plan.staged_groups(cluster.size, cluster.rank, kPer);
  copy_in_batches<kBatch>(rows * groups, [&](int64_t i) {
    const int64_t b = i / groups, column = plan.staged_column(cluster.size, cluster.rank, i - b * groups, kPer);
    const Bits* row = source(b);
    if (column < 0 || row == nullptr) return Value{};
    return __ldcg(reinterpret_cast<const Value*>(row + column));
  }, [&](int64_t i, Value value) {
    const int64_t b = i / groups, column = plan.staged_column(cluster.size, cluster.rank, i - b * groups, kPer);
    if (column < 0) return;
    Value* to = reinterpret_cast<Value*>(stage + b * stride + column);
    for (int rank = 0; rank < cluster.size; ++rank) store_in_block(to, static_cast<unsigned>(rank), value);
  });
}

// Publishes that this block finished step s: the barrier orders every thread's stores of the step before
// thread 0's release store (cumulative, as CUTLASS's GenericBarrier relies on), so every block that then
// waits for step s + 1 sees them. No separate fence: it was a second, sequentially consistent one.
__device__ __forceinline__ void publish_step(unsigned* flags, int64_t s, bool flag_sync) {
  if (flag_sync) {
    __syncthreads();
    if (threadIdx.x == 0) store_release(flags + blockIdx.x, static_cast<unsigned>(s + 1));
  } else {
    cooperative_groups::this_grid().sync();
  }
}

// Calls body(kernel) with Kernel<T, gates, units, k tiles a warp> for (dtype, cell, units, k tiles a
// warp needed), the k tiles rounded up to one of kKTileChoices; false where none is instantiated:
// a dtype other than float16/bfloat16/float32 (tf32), units other than 8 and 16, too many k tiles, a
// variant the kernel's traits leave out (Kernel::kCompiled), or one that holds more A-fragment registers
// than kMaxFragmentsBeforeSm90 in code for an older architecture (make cuda-check shows what spills).
template <template <typename, int, int, int> class Kernel, int... kKTileChoices, typename Body>
bool with_kernel(DType dtype, Cell cell, int units, int64_t k_tiles_per_warp, Body body) {
  auto by_k = [&](auto type, auto gates, auto units_c) {
    using T = typename std::remove_cvref_t<decltype(type)>::type;
    constexpr int G = std::remove_cvref_t<decltype(gates)>::value;
    constexpr int U = std::remove_cvref_t<decltype(units_c)>::value;
    bool found = false;
    auto try_one = [&](auto k) {
      constexpr int K = std::remove_cvref_t<decltype(k)>::value;
      if constexpr (Kernel<T, G, U, K>::kCompiled) {
        if (!found && k_tiles_per_warp <= K &&
            runs_here(Kernel<T, G, U, K>::kernel(), Kernel<T, G, U, K>::kFragments)) {
          body(Kernel<T, G, U, K>::kernel());
          found = true;
        }
      }
    };
    (try_one(std::integral_constant<int, kKTileChoices>{}), ...);
    return found;
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
    case DType::kFloat32: return by_cell(std::type_identity<float>{});  // tf32
    default: return false;
  }
}

inline int gates_of(Cell cell) { return cell == Cell::kLstm ? 4 : cell == Cell::kGru ? 3 : 1; }

// The MMA's k per tile for T, and the k tiles a warp holds for a product of depth K (8 warps).
template <typename T>
constexpr int kTileKOf = kTf32<T> ? 8 : 16;
constexpr int k_tiles_per_warp_for(int depth, int tile_k) { return (depth + 8 * tile_k - 1) / (8 * tile_k); }

// Whether the k-tile choice K (a power of two) is the one some H <= kMaxHidden rounds up to, for a
// product of depth depth_per_unit * H.
inline constexpr int kMaxHidden = 1024;
template <typename T>
constexpr bool useful_k_choice(int K, int depth_per_unit) {
  return K / 2 < k_tiles_per_warp_for(depth_per_unit * kMaxHidden, kTileKOf<T>);
}

// The launch configuration of a persistent kernel over `plan` in clusters of `cluster` blocks (1: no
// cluster attribute), cooperative or not; `attributes` holds the launch attributes it points to.
inline cudaLaunchConfig_t launch_config(const persistent::Plan& plan, int cluster, bool cooperative,
                                        cudaStream_t stream, cudaLaunchAttribute (&attributes)[2]) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(plan.blocks()));
  config.blockDim = dim3(persistent::kThreads);
  config.dynamicSmemBytes = static_cast<size_t>(plan.shared_bytes());
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = 0;
  if (cluster > 1) {
    attributes[config.numAttrs].id = cudaLaunchAttributeClusterDimension;
    attributes[config.numAttrs].val.clusterDim.x = static_cast<unsigned>(cluster);
    attributes[config.numAttrs].val.clusterDim.y = 1;
    attributes[config.numAttrs].val.clusterDim.z = 1;
    ++config.numAttrs;
  }
  if (cooperative) {
    attributes[config.numAttrs].id = cudaLaunchAttributeCooperative;
    attributes[config.numAttrs].val.cooperative = 1;
    ++config.numAttrs;
  }
  return config;
}

// co_resident's answer, asked of the device. In clusters (sm_90 and later), the grid must split into
// whole clusters and the occupancy API must place that many clusters at once.
template <typename KernelPtr>
bool co_resident_on(KernelPtr kernel, const persistent::Plan& plan, int cluster, int device) {
  int sms = 0, cooperative = 0, shared_optin = 0, per_sm = 0, major = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  const int64_t bytes = plan.shared_bytes();
  if (!cooperative || bytes > shared_optin) return false;
  if (cluster > 1 && (major < 9 || plan.blocks() % cluster != 0)) return false;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) !=
          cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, persistent::kThreads, bytes) !=
          cudaSuccess) {
    cudaGetLastError();  // clear the error: not fitting is an answer, not a failure
    return false;
  }
  if (int64_t{per_sm} * sms < plan.blocks()) return false;
  if (cluster == 1) return true;
  // Code for an older architecture (PTX JIT-compiled for this GPU) has no cluster staging in it.
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess || attributes.ptxVersion < 90) {
    cudaGetLastError();
    return false;
  }
  cudaLaunchAttribute launch_attributes[2];
  const cudaLaunchConfig_t config = launch_config(plan, cluster, /*cooperative=*/false, nullptr, launch_attributes);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, reinterpret_cast<const void*>(kernel), &config) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return int64_t{clusters} * cluster >= plan.blocks();
}

// Whether `kernel` can run `plan` in clusters of `cluster` blocks with every block resident at once. The
// answer is kept per (kernel, device, shared memory, blocks, cluster): the device queries behind it take
// microseconds, which a short sequence's call would feel at every call.
template <typename KernelPtr>
bool co_resident(KernelPtr kernel, const persistent::Plan& plan, int cluster) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  using Key = std::tuple<const void*, int, int64_t, int64_t, int>;
  static std::mutex mutex;
  static std::map<Key, bool> known;
  const Key key{reinterpret_cast<const void*>(kernel), device, plan.shared_bytes(), plan.blocks(), cluster};
  {
    std::lock_guard lock(mutex);
    if (const auto found = known.find(key); found != known.end()) return found->second;
  }
  const bool fits = co_resident_on(kernel, plan, cluster, device);
  std::lock_guard lock(mutex);
  known[key] = fits;
  return fits;
}

// sequence_fwd_fits and sequence_bwd_fits: whether the instantiation that `with_family(body)` picks (none:
// false) runs `plan` in clusters of `cluster` blocks with every block resident.
template <typename WithFamily>
bool family_fits(WithFamily with_family, const persistent::Plan& plan, int cluster = 1) {
  if (plan.batch < 1 || plan.batch > persistent::kMaxBatch || plan.H < 1) return false;
  bool fits = false;
  with_family([&](auto kernel) { fits = co_resident(kernel, plan, cluster); });
  return fits;
}

// Zeroes the flags (flag synchronization) and launches `kernel` over plan.blocks() blocks, cooperatively
// (every block resident, or the launch fails), in clusters of `cluster` blocks where cluster > 1 (a
// launch the driver refuses returns its error: the caller runs without clusters then).
template <typename KernelPtr, typename Args>
cudaError_t launch(KernelPtr kernel, const persistent::Plan& plan, const Args& args, unsigned* flags,
                   bool flag_sync, int cluster, cudaStream_t stream) {
  const int64_t bytes = plan.shared_bytes();
  cudaError_t error = cudaSuccess;
  if (flag_sync) error = cudaMemsetAsync(flags, 0, plan.blocks() * sizeof(unsigned), stream);
  if (error == cudaSuccess) {
    error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  }
  if (error != cudaSuccess) return error;
  Args copy = args;
  bool flags_on = flag_sync;
  void* params[] = {&copy, &flags_on};
  if (cluster == 1) {
    return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel),
                                       dim3(static_cast<unsigned>(plan.blocks())), dim3(persistent::kThreads),
                                       params, static_cast<size_t>(bytes), stream);
  }
  cudaLaunchAttribute attributes[2];
  const cudaLaunchConfig_t config = launch_config(plan, cluster, /*cooperative=*/true, stream, attributes);
  return cudaLaunchKernelExC(&config, reinterpret_cast<const void*>(kernel), params);
}

// sequence_fwd and sequence_bwd: launches the instantiation that `with_family(body)` picks over `args`
// (cudaErrorInvalidValue where there is none; cudaSuccess without a launch for an empty sequence).
template <typename WithFamily, typename Args>
cudaError_t family_launch(WithFamily with_family, const persistent::Plan& plan, const Args& args,
                          const PersistentConfig& config, cudaStream_t stream) {
  if (args.steps == 0) return cudaSuccess;
  cudaError_t error = cudaErrorInvalidValue;
  with_family([&](auto kernel) {
    error = launch(kernel, plan, args, args.flags, config.flag_sync, config.cluster, stream);
  });
  return error;
}

}  // namespace fastcells::cuda::persistent_detail
