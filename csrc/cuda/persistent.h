// Launchers of the persistent tensor-core kernels of persistent.cu (forward) and persistent_bwd.cu
// (backward): one cooperative launch runs all T steps of one layer and direction of an LSTM, GRU or
// Elman RNN, in float16 or bfloat16 (mma.sync m16n8k16), or float32 on tf32 tensor cores (m16n8k8), with
// fp32 accumulation and fp32 states. Forward: inference or training
// (then it also writes the saved rows, layouts in fastcells/saved_layout.h). Backward: the sequential
// part of backpropagation through time (the gate gradients of every step, dh0 and dc0); the weight and
// input gradients are GEMMs after it, in the glue. Padded or packed sequences (per-step batch sizes), no
// projection. The partition is fastcells/persistent_plan.h.
//
// Synchronization between blocks, once per step, in one of two ways (PersistentConfig::flag_sync):
//   - grid: cooperative groups' grid.sync() after every block has written its h_t;
//   - flags: block j publishes "step s done" in flags[j] with a release store after writing its h_t, and
//     each block waits (acquire loads) until every flag says the previous step is done. h_t is read from y
//     itself, written once per step, so no buffer is reused and no second barrier is needed.
// Which one is faster is measured on the GPU (bench/persistent_variants.py); both launch cooperatively,
// so every block is resident or the launch fails. Both kernels may also run in thread-block clusters
// (PersistentConfig::cluster, sm_90): the blocks of a cluster share the copy of each step's B operand
// (forward h_{t-1}, backward dG of the step before) through distributed shared memory, each waiting for
// the flags of the blocks whose units it copies.
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
  const int64_t* sizes;    // (T,) device: batch size of each step (packed), or null: B at every step
  const int64_t* offsets;  // (T + 1,) device: first row of each step, with sizes
  int64_t steps, batch, H;
  bool reverse, relu;
};

struct PersistentConfig {
  int units = 8;          // hidden units per block: 8 or 16
  bool flag_sync = true;  // per-block step flags; false: grid.sync()
  int cluster = 1;        // blocks a thread-block cluster (2, 4 or 8 share the copy of each step's B
                          // operand, sm_90 and later; fastcells/persistent_plan.h); 1: none
};

struct SequenceBwd {
  Cell cell;
  const void* dy;     // (T * B, H) gradient of y
  const void* saved;  // (T * B, saved width) of the training forward
  const void* w_hh;   // (G * H, H)
  void* dh;           // (B, H) in: dhn, out: dh0 (a block reads and writes only its own units)
  void* dc;           // (B, H) in: dcn, out: dc0; LSTM only
  void* dgx;          // (T * B, G * H) out: gradients of the input projections (with b_ih)
  void* dgh;          // (T * B, G * H) out, GRU only: gradients of W_hh h + b_hh (r, z as in dgx, then n's)
  unsigned* flags;    // (sequence_fwd_blocks,) scratch for flag synchronization (zeroed by the launcher)
  const int64_t* sizes;    // as in SequenceFwd
  const int64_t* offsets;
  int64_t steps, batch, H;
  bool reverse, relu;  // reverse: the forward ran backwards in time
};

// Blocks of a launch (the length of the flags), forward and backward alike.
int64_t sequence_fwd_blocks(Cell cell, int64_t H, const PersistentConfig& config);

// Whether the kernel can run this shape on the current device: dtype float16, bfloat16 or float32 (tf32;
// the caller decides whether tf32 is allowed), 1 <= batch <= 64, H <= 1024 (LSTM with 16 units, and
// float32 LSTM and GRU: H <= 512), units 8 or 16, a device with
// cooperative launch, the block's shared memory within the device's limit, and every block resident
// at once.
bool sequence_fwd_fits(DType dtype, Cell cell, int64_t batch, int64_t H, const PersistentConfig& config);

// Launches the kernel (call only where sequence_fwd_fits); returns the launch's error (cudaSuccess
// without a launch when steps is 0).
cudaError_t sequence_fwd(DType dtype, const SequenceFwd& args, const PersistentConfig& config,
                         cudaStream_t stream);

// The same for the backward kernel: dtype float16, bfloat16 or float32 (tf32), 1 <= batch <= 64,
// H <= 1024 (float32 LSTM: 512), units 8 or 16, and every block resident at once.
bool sequence_bwd_fits(DType dtype, Cell cell, int64_t batch, int64_t H, const PersistentConfig& config);
cudaError_t sequence_bwd(DType dtype, const SequenceBwd& args, const PersistentConfig& config,
                         cudaStream_t stream);

}  // namespace fastcells::cuda
