// Launcher of the persistent LSTM forward kernel of persistent.cu: one cooperative launch runs all T
// steps of one layer and direction (inference, no projection, the same batch at every step).
//
// Each block owns a slice of the hidden units, keeps the four gates' rows of W_hh for that slice in
// shared memory for the whole sequence, and meets the other blocks at a grid-wide barrier once per step
// (the new h of every unit is needed by every block). State is kept in float32 (float64 for float64).
// Framework-free like pointwise.h.
//
// Run on an NVIDIA H200 (bench/results/nvidia-h200/): it matches torch.nn
// (test_persistent_lstm_inference, float32 and float64) and compute-sanitizer finds no error or race
// in it, but it pays only at tiny batches. In LSTM inference (persistent/report.md) it beats cuDNN at
// B <= 4 (T=100, H=256: B=1 2.15x in float32 and 3.21x in bfloat16, B=4 1.25x and 1.45x) and runs at
// 0.01-0.22x cuDNN wherever B >= 16: each block computes its 32 x B dot products per step with scalar
// FMAs, one warp per dot product, no tensor cores. So the glue uses it only when asked
// (FASTCELLS_CUDA_PERSISTENT=1).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "pointwise.h"

namespace fastcells::cuda {

struct LstmSequenceFwd {
  const void* gx;    // (T * B, 4H) input projections with both biases, rows of step t at t * B
  const void* w_hh;  // (4H, H)
  const void* h0;    // (B, H)
  const void* c0;    // (B, H)
  void* y;           // (T * B, H) out
  void* hn;          // (B, H) out
  void* cn;          // (B, H) out
  void* h_buffers;   // (2, B, H) scratch in the math type (float64 for float64, else float32): h of
                     // the previous and of the current step
  int64_t steps, batch, H;
  bool reverse;
};

// Whether the persistent kernel can run this shape in `dtype` on the current device: 1 <= batch <= 64,
// a device with cooperative launch, enough shared memory for a block's W_hh slice, and every block
// resident at once, as a grid barrier needs.
bool lstm_sequence_fwd_fits(DType dtype, int64_t batch, int64_t H);

// Launches the kernel; returns the launch's error (cudaSuccess without a launch when steps is 0).
cudaError_t lstm_sequence_fwd(DType dtype, const LstmSequenceFwd& args, cudaStream_t stream);

}  // namespace fastcells::cuda
