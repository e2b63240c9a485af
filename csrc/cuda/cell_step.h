// Launcher of the fused cell step kernel of cell_step.cu: one inference step of an LSTM, GRU or Elman RNN
// cell on CUDA tensors in one launch, both products (x W_ih^T and h W_hh^T) and the gates together
// (torch.nn's cells launch two GEMMs and a pointwise kernel). Any of the four dtypes, math in float32
// (float64 for float64). Made for the small batches of streaming inference: each block reads its weight
// rows once per 8 batch rows. Framework-free like pointwise.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "persistent.h"
#include "pointwise.h"

namespace fastcells::cuda {

struct CellStep {
  Cell cell;
  const void* x;     // (B, I)
  const void* h;     // (B, H)
  const void* c;     // (B, H) LSTM only
  const void* w_ih;  // (G * H, I)
  const void* w_hh;  // (G * H, H)
  const void* b_ih;  // (G * H,) or null
  const void* b_hh;  // (G * H,) or null
  void* h_out;       // (B, H), not aliasing h
  void* c_out;       // (B, H) LSTM only
  int64_t batch, I, H;
  bool relu;
};

cudaError_t cell_step(DType dtype, const CellStep& args, cudaStream_t stream);

}  // namespace fastcells::cuda
