// Launcher of the persistent tensor-core forward kernels of persistent.cu: one cooperative launch runs
// all T steps of one layer and direction of an LSTM, GRU or Elman RNN, in float16 or bfloat16 (fp32
// accumulation, fp32 states), inference or training (then it also writes the saved rows that the
// per-step backward reads, layouts in fastcells/saved_layout.h). The same batch at every step, no
// projection. The partition is fastcells/persistent_plan.h.
//
// Synchronization between blocks, once per step, in one of two ways (PersistentConfig::flag_sync):
//   - grid: cooperative groups' grid.sync() after every block has written its h_t;
//   - flags: block j publishes "step s done" in flags[j] with a release store after writing its h_t, and
//     each block waits (acquire loads) until every flag says the previous step is done. h_t is read from y
//     itself, written once per step, so no buffer is reused and no second barrier is needed.
// Which one is faster is measured on the GPU (bench/persistent_variants.py); both launch cooperatively,
// so every block is resident or the launch fails.
// Framework-free like pointwise.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "pointwise.h"

namespace fastcells::cuda {

enum class Cell { kLstm, kGru, kRnn };

struct SequenceFwd {
  Cell cell;
  const void* gx;    // (T * B, G * H) input projections: with b_ih, plus b_hh for LSTM and RNN
  const void* w_hh;  // (G * H, H)
  const void* b_hh;  // (G * H,) GRU only (kept apart: n = tanh(x_n + r * (W_hn h + b_hn))), or null
  const void* h0;    // (B, H)
  const void* c0;    // (B, H) LSTM only
  void* y;           // (T * B, H) out; also how blocks read each other's h_{t-1}
  void* hn;          // (B, H) out; must not alias h0 (other blocks may still read h0 at T = 1)
  void* cn;          // (B, H) out, LSTM only
  void* saved;       // (T * B, saved width) out in training, null in inference
  unsigned* flags;   // (sequence_fwd_blocks,) scratch for flag synchronization (zeroed by the launcher)
  int64_t steps, batch, H;
  bool reverse, relu;
};

struct PersistentConfig {
  int units = 8;          // hidden units per block: 8 or 16
  bool flag_sync = true;  // per-block step flags; false: grid.sync()
};

// Blocks of the launch (the length of SequenceFwd::flags).
int64_t sequence_fwd_blocks(Cell cell, int64_t H, const PersistentConfig& config);

// Whether the kernel can run this shape on the current device: dtype float16 or bfloat16,
// 1 <= batch <= 64, H <= 1024 (LSTM with 16 units: H <= 512), units 8 or 16, a device with
// cooperative launch, the block's shared memory within the device's limit, and every block resident
// at once.
bool sequence_fwd_fits(DType dtype, Cell cell, int64_t batch, int64_t H, const PersistentConfig& config);

// Launches the kernel (call only where sequence_fwd_fits); returns the launch's error (cudaSuccess
// without a launch when steps is 0).
cudaError_t sequence_fwd(DType dtype, const SequenceFwd& args, const PersistentConfig& config,
                         cudaStream_t stream);

}  // namespace fastcells::cuda
