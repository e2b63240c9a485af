// The fused cell step kernel (shapes in cell_step.h).
//
// Block (j, k) owns hidden units [8j, 8j + 8) and all their gate rows, for batch rows [8k, 8k + 8). Its
// 8 warps take the block's gate rows round robin; a warp's lanes stride over the input and hidden
// features, each weight loaded once and used for the block's 8 batch rows, then a warp reduction. The
// input and hidden parts of every pre-activation go to shared memory apart (GRU's n gate needs them
// apart), then one thread a (unit, batch row) slot adds the biases and runs the cell
// (fastcells/gate_math.h, as every backend).
#include "cell_step.h"
#include "fastcells/gate_math.h"
#include "types.cuh"

namespace fastcells::cuda {
namespace {

constexpr int kUnits = 8, kRowsPerBlock = 8, kWarps = 8, kThreads = 32 * kWarps;

template <typename M>
__device__ __forceinline__ M warp_sum(M value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  return value;
}

// acc[r] += sum_k in[(b0 + r) * K + k] * w[row * K + k] over this lane's k, for the block's batch rows.
template <typename T, typename M>
__device__ __forceinline__ void dot_rows(M (&acc)[kRowsPerBlock], const void* in, const void* w, int64_t row,
                                         int64_t K, int64_t b0, int64_t rows, int lane) {
  for (int64_t k = lane; k < K; k += 32) {
    const M weight = load<T>(w, row * K + k);
#pragma unroll
    for (int r = 0; r < kRowsPerBlock; ++r) {
      if (r < rows) acc[r] += load<T>(in, (b0 + r) * K + k) * weight;
    }
  }
}

template <typename T>
__device__ __forceinline__ typename MathType<T>::type bias(const void* b, int64_t i) {
  return b != nullptr ? load<T>(b, i) : typename MathType<T>::type(0);
}

template <typename T, int kGates>
__global__ void __launch_bounds__(kThreads) cell_step_kernel(CellStep a) {
  using M = typename MathType<T>::type;
  __shared__ M x_part[kGates * kUnits][kRowsPerBlock], h_part[kGates * kUnits][kRowsPerBlock];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t H = a.H, unit0 = int64_t{blockIdx.x} * kUnits, b0 = int64_t{blockIdx.y} * kRowsPerBlock;
  const int64_t rows = a.batch - b0 < kRowsPerBlock ? a.batch - b0 : kRowsPerBlock;

  for (int r = warp; r < kGates * kUnits; r += kWarps) {  // local row r: gate r / kUnits, unit r % kUnits
    const int64_t unit = unit0 + r % kUnits, row = (r / kUnits) * H + unit;
    M from_x[kRowsPerBlock] = {}, from_h[kRowsPerBlock] = {};
    if (unit < H) {
      dot_rows<T>(from_x, a.x, a.w_ih, row, a.I, b0, rows, lane);
      dot_rows<T>(from_h, a.h, a.w_hh, row, H, b0, rows, lane);
    }
#pragma unroll
    for (int b = 0; b < kRowsPerBlock; ++b) {
      const M sx = warp_sum(from_x[b]), sh = warp_sum(from_h[b]);
      if (lane == 0) {
        x_part[r][b] = sx;
        h_part[r][b] = sh;
      }
    }
  }
  __syncthreads();

  for (int i = threadIdx.x; i < kUnits * kRowsPerBlock; i += kThreads) {
    const int u = i % kUnits, r = i / kUnits;
    const int64_t unit = unit0 + u, b = b0 + r;
    if (unit >= H || r >= rows) continue;
    M pre_x[kGates], pre_h[kGates];
#pragma unroll
    for (int g = 0; g < kGates; ++g) {
      pre_x[g] = x_part[g * kUnits + u][r] + bias<T>(a.b_ih, g * H + unit);
      pre_h[g] = h_part[g * kUnits + u][r] + bias<T>(a.b_hh, g * H + unit);
    }
    const int64_t at = b * H + unit;
    if constexpr (kGates == 4) {
      const LstmUnit<M> cell = lstm_unit_fwd<M>(pre_x[0] + pre_h[0], pre_x[1] + pre_h[1], pre_x[2] + pre_h[2],
                                                pre_x[3] + pre_h[3], load<T>(a.c, at));
      store<T>(a.h_out, at, cell.h);
      store<T>(a.c_out, at, cell.c);
    } else if constexpr (kGates == 3) {
      const GruUnit<M> cell = gru_unit_fwd<M>(pre_x[0], pre_x[1], pre_x[2], pre_h[0], pre_h[1], pre_h[2],
                                              load<T>(a.h, at));
      store<T>(a.h_out, at, cell.h);
    } else {
      store<T>(a.h_out, at, rnn_unit_fwd<M>(pre_x[0] + pre_h[0], a.relu));
    }
  }
}

template <typename T>
cudaError_t launch(const CellStep& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((a.H + kUnits - 1) / kUnits),
                  static_cast<unsigned>((a.batch + kRowsPerBlock - 1) / kRowsPerBlock));
  switch (a.cell) {
    case Cell::kLstm: cell_step_kernel<T, 4><<<grid, kThreads, 0, stream>>>(a); break;
    case Cell::kGru: cell_step_kernel<T, 3><<<grid, kThreads, 0, stream>>>(a); break;
    case Cell::kRnn: cell_step_kernel<T, 1><<<grid, kThreads, 0, stream>>>(a); break;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t cell_step(DType dtype, const CellStep& args, cudaStream_t stream) {
  if (args.batch == 0 || args.H == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch<float>(args, stream);
    case DType::kFloat64: return launch<double>(args, stream);
    case DType::kFloat16: return launch<__half>(args, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastcells::cuda
