// The persistent LSTM forward kernel (declarations and shapes in persistent.h).
//
// Block j owns hidden units [j * kUnits, (j + 1) * kUnits) and holds their 4 * kUnits rows of W_hh
// (gates i, f, g, o) in shared memory for the whole sequence, so the weights are read from global
// memory once per sequence instead of once per step. Per step:
//   1. every warp takes (row, batch entry) pairs and computes row . h_prev over H, lanes striding over
//      k, then a warp reduction: the block's recurrent pre-activations for all batch entries;
//   2. the block's threads finish their units: gx + pre-activation, gates, the cell update (c stays in
//      shared memory), and write h to a global double buffer and to y;
//   3. a grid barrier: the next step needs every block's h.
// h_prev is read with __ldcg (L2, not L1): other SMs wrote it, and L1 is not coherent across SMs.
#include <cooperative_groups.h>

#include <algorithm>

#include "fastcells/gate_math.h"
#include "persistent.h"
#include "types.cuh"

namespace fastcells::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kUnits = 8;        // hidden units per block: 32 rows of W_hh
constexpr int kRows = 4 * kUnits;
constexpr int kThreads = 256;    // 8 warps
constexpr int64_t kMaxBatch = 64;

template <typename T>
size_t shared_bytes(int64_t batch, int64_t H) {
  using M = typename MathType<T>::type;
  const size_t weights = (static_cast<size_t>(kRows) * H * sizeof(T) + 15) / 16 * 16;
  return weights + static_cast<size_t>(kRows + kUnits) * batch * sizeof(M);
}

int64_t blocks_for(int64_t H) { return (H + kUnits - 1) / kUnits; }

template <typename T>
__global__ void __launch_bounds__(kThreads) lstm_sequence_fwd_kernel(LstmSequenceFwd a) {
  using M = typename MathType<T>::type;
  extern __shared__ __align__(16) unsigned char shared[];
  const int64_t H = a.H, B = a.batch, G = 4 * H, T_ = a.steps;
  const int64_t unit0 = static_cast<int64_t>(blockIdx.x) * kUnits;
  T* w_s = reinterpret_cast<T*>(shared);  // (kRows, H): row r = gate (r / kUnits), unit r % kUnits
  M* pre_s = reinterpret_cast<M*>(shared + (static_cast<size_t>(kRows) * H * sizeof(T) + 15) / 16 * 16);
  M* c_s = pre_s + kRows * B;             // (kUnits, B)
  M* h_buffers = reinterpret_cast<M*>(a.h_buffers);
  const T* w = static_cast<const T*>(a.w_hh);

  for (int64_t i = threadIdx.x; i < kRows * H; i += blockDim.x) {
    const int64_t r = i / H, k = i - r * H, unit = unit0 + r % kUnits;
    w_s[i] = unit < H ? w[((r / kUnits) * H + unit) * H + k] : from_math<T>(M(0));
  }
  for (int64_t i = threadIdx.x; i < kUnits * B; i += blockDim.x) {
    const int64_t u = i / B, b = i - u * B, unit = unit0 + u;
    if (unit < H) {
      c_s[i] = load<T>(a.c0, b * H + unit);
      h_buffers[b * H + unit] = load<T>(a.h0, b * H + unit);
    }
  }
  cg::grid_group grid = cg::this_grid();
  grid.sync();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = a.reverse ? T_ - 1 - s : s;
    const M* h_prev = h_buffers + (s % 2) * B * H;
    M* h_next = h_buffers + ((s + 1) % 2) * B * H;
    for (int64_t p = warp; p < kRows * B; p += warps) {  // p = row * B + b
      const int64_t r = p / B, b = p - r * B;
      const T* w_row = w_s + r * H;
      const M* h_row = h_prev + b * H;
      M acc = 0;
      for (int64_t k = lane; k < H; k += 32) acc += to_math(w_row[k]) * __ldcg(h_row + k);
      for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
      if (lane == 0) pre_s[p] = acc;
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < kUnits * B; i += blockDim.x) {
      const int64_t u = i / B, b = i - u * B, unit = unit0 + u;
      if (unit >= H) continue;
      const int64_t gate = (t * B + b) * G + unit;
      const LstmUnit<M> cell = lstm_unit_fwd<M>(
          load<T>(a.gx, gate) + pre_s[(0 * kUnits + u) * B + b],
          load<T>(a.gx, gate + H) + pre_s[(1 * kUnits + u) * B + b],
          load<T>(a.gx, gate + 2 * H) + pre_s[(2 * kUnits + u) * B + b],
          load<T>(a.gx, gate + 3 * H) + pre_s[(3 * kUnits + u) * B + b], c_s[i]);
      c_s[i] = cell.c;
      h_next[b * H + unit] = cell.h;
      store<T>(a.y, (t * B + b) * H + unit, cell.h);
    }
    grid.sync();  // every block's h_next is written before any block reads it as h_prev
  }

  const M* h_last = h_buffers + (T_ % 2) * B * H;
  for (int64_t i = threadIdx.x; i < kUnits * B; i += blockDim.x) {
    const int64_t u = i / B, b = i - u * B, unit = unit0 + u;
    if (unit < H) {
      store<T>(a.hn, b * H + unit, __ldcg(h_last + b * H + unit));
      store<T>(a.cn, b * H + unit, c_s[i]);
    }
  }
}

template <typename T>
bool fits(int64_t batch, int64_t H) {
  if (batch < 1 || batch > kMaxBatch || H < 1) return false;
  int device = 0, sms = 0, cooperative = 0, shared_optin = 0, per_sm = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  const size_t bytes = shared_bytes<T>(batch, H);
  if (!cooperative || bytes > static_cast<size_t>(shared_optin)) return false;
  if (cudaFuncSetAttribute(lstm_sequence_fwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(bytes)) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, lstm_sequence_fwd_kernel<T>, kThreads,
                                                    bytes) != cudaSuccess) {
    cudaGetLastError();  // clear the error: not fitting is an answer, not a failure
    return false;
  }
  return static_cast<int64_t>(per_sm) * sms >= blocks_for(H);
}

template <typename T>
cudaError_t launch(const LstmSequenceFwd& args, cudaStream_t stream) {
  const size_t bytes = shared_bytes<T>(args.batch, args.H);
  cudaError_t error = cudaFuncSetAttribute(
      lstm_sequence_fwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (error != cudaSuccess) return error;
  LstmSequenceFwd copy = args;
  void* params[] = {&copy};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(lstm_sequence_fwd_kernel<T>),
                                     dim3(static_cast<unsigned>(blocks_for(args.H))), dim3(kThreads),
                                     params, bytes, stream);
}

}  // namespace

bool lstm_sequence_fwd_fits(DType dtype, int64_t batch, int64_t H) {
  switch (dtype) {
    case DType::kFloat32: return fits<float>(batch, H);
    case DType::kFloat64: return fits<double>(batch, H);
    case DType::kFloat16: return fits<__half>(batch, H);
    case DType::kBFloat16: return fits<__nv_bfloat16>(batch, H);
  }
  return false;
}

cudaError_t lstm_sequence_fwd(DType dtype, const LstmSequenceFwd& args, cudaStream_t stream) {
  if (args.steps == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch<float>(args, stream);
    case DType::kFloat64: return launch<double>(args, stream);
    case DType::kFloat16: return launch<__half>(args, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastcells::cuda
