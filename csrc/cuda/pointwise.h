// Launchers of the fused per-step pointwise kernels of pointwise.cu, for LSTM, GRU and RNN.
//
// Framework-free on purpose (raw pointers, a dtype tag, a stream): nvcc checks the kernels in seconds
// without torch's headers (make cuda-check), and the glue (layers_cuda.cpp) does the GEMMs through
// ATen/cuBLAS. Each call handles one time step: `rows` rows of the state (the batch entries still
// running at that step), in a grid-stride loop over the (row, hidden unit) pairs: one GPU thread per
// pair, up to 65535 blocks of 256 threads. Pointers point at the step's first row; the stated shapes
// are row-major with the leading dimension their width, except the LSTM's `saved` (leading dimension
// saved_ld). Gate math is fp32 for float16/bfloat16 (values are rounded to the dtype when stored), and
// in the dtype itself for float32/float64. Saved column layouts are those of fastcells/saved_layout.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastcells::cuda {

enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

struct LstmStepFwd {
  const void* gx;  // (rows, 4H): input projections with both biases
  const void* gh;  // (rows, 4H): h_prev @ W_hh^T
  void* c;         // (rows, H): c_prev in, c out
  void* h;         // (rows, H): h out (before any projection); without a projection h_prev in
  void* y;         // (rows, H) or null: h also written here, and when saving, h_prev (read from h
                   // before it is overwritten) to saved column 6H; null with a projection (h is P wide)
  void* saved;     // null (inference), or (rows, saved_ld): gates i f g o | c_prev | tanh(c) | ...
  int64_t saved_ld, rows, H;
};

struct LstmStepBwd {
  const void* saved;  // (rows, saved_ld) as written by the forward step
  const void* dh;     // (rows, H): gradient of h (before any projection)
  void* dc;           // (rows, H): gradient of c in, of c_prev out
  void* dgates;       // (rows, 4H) out: gradients of the four pre-activations
  int64_t saved_ld, rows, H;
};

struct GruStepFwd {
  const void* gx;    // (rows, 3H): input projections with b_ih
  const void* gh;    // (rows, 3H): h_prev @ W_hh^T, without b_hh
  const void* b_hh;  // (3H) or null
  void* h;           // (rows, H): h_prev in, h out
  void* y;           // (rows, H): h out again (the layer's output rows of this step)
  void* saved;       // null, or (rows, 5H): r z n | h_n = W_hn h_prev + b_hn | h_prev
  int64_t rows, H;
};

struct GruStepBwd {
  const void* saved;  // (rows, 5H)
  const void* dy;     // (rows, H): gradient of this step's output
  void* dh;           // (rows, H): gradient from the next step in; the direct part of dh_prev out
  void* dgx;          // (rows, 3H) out: gradients of the input projections
  void* dgh;          // (rows, 3H) out: gradients of h_prev @ W_hh^T + b_hh
  int64_t rows, H;
};

struct RnnStepFwd {
  const void* gx;  // (rows, H): input projections with both biases
  const void* gh;  // (rows, H): h_prev @ W_hh^T
  void* h;         // (rows, H): h_prev in, h out
  void* y;         // (rows, H): h out again (the layer's output rows of this step)
  void* saved;     // null, or (rows, 2H): h | h_prev
  int64_t rows, H;
  bool relu;
};

struct RnnStepBwd {
  const void* saved;  // (rows, 2H)
  const void* dy;     // (rows, H)
  const void* dh;     // (rows, H): gradient from the next step
  void* dgates;       // (rows, H) out: gradient of the pre-activation
  int64_t rows, H;
  bool relu;
};

// Each returns the launch's error (cudaSuccess when rows * H is zero and nothing was launched).
cudaError_t lstm_step_fwd(DType dtype, const LstmStepFwd& args, cudaStream_t stream);
cudaError_t lstm_step_bwd(DType dtype, const LstmStepBwd& args, cudaStream_t stream);
cudaError_t gru_step_fwd(DType dtype, const GruStepFwd& args, cudaStream_t stream);
cudaError_t gru_step_bwd(DType dtype, const GruStepBwd& args, cudaStream_t stream);
cudaError_t rnn_step_fwd(DType dtype, const RnnStepFwd& args, cudaStream_t stream);
cudaError_t rnn_step_bwd(DType dtype, const RnnStepBwd& args, cudaStream_t stream);

}  // namespace fastcells::cuda
