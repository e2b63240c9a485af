// The saved-activation layouts of the layer ops: what a training forward keeps, per sequence row, for
// backward. Defined here once for the CPU kernels, the CUDA kernels and their glue; the Python mirror
// (fastcells/saved_layout.py, which the Triton kernels read) is checked against these numbers by
// tests/test_saved_layout.py through fastcells._C.saved_layouts.
//
// Each layout is a row of column blocks; offsets are in elements, for H hidden units and P = proj_size
// or H. Framework-free (no torch header), so nvcc compiles the kernels that include it in seconds.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FC_LAYOUT_FN __host__ __device__ __forceinline__ constexpr
#else
#define FC_LAYOUT_FN inline constexpr
#endif

namespace fastcells {

// LSTM, G = 4H gates in torch's order i, f, g, o:
//   [gates i f g o (4H) | c_prev (H) | tanh(c) (H) | h_prev (P) | h before projection (H, proj only)]
struct LstmLayout {
  int64_t H, P;
  bool proj;
  FC_LAYOUT_FN int64_t c_prev() const { return 4 * H; }
  FC_LAYOUT_FN int64_t tanh_c() const { return 5 * H; }
  FC_LAYOUT_FN int64_t h_prev() const { return 6 * H; }
  FC_LAYOUT_FN int64_t h_raw() const { return 6 * H + P; }
  FC_LAYOUT_FN int64_t width() const { return 6 * H + P + (proj ? H : 0); }
};

// GRU: [r z n (3H) | h_n = W_hn h_prev + b_hn (H) | h_prev (H)].
struct GruLayout {
  int64_t H;
  FC_LAYOUT_FN int64_t h_n() const { return 3 * H; }
  FC_LAYOUT_FN int64_t h_prev() const { return 4 * H; }
  FC_LAYOUT_FN int64_t width() const { return 5 * H; }
};

// Elman RNN: [h (H) | h_prev (H)].
struct RnnLayout {
  int64_t H;
  FC_LAYOUT_FN int64_t h() const { return 0; }
  FC_LAYOUT_FN int64_t h_prev() const { return H; }
  FC_LAYOUT_FN int64_t width() const { return 2 * H; }
};

// The CPU's GRU and RNN layer ops keep no state that the layer's output y holds: their backward reads
// h and h_prev from y and h0 (a copy of y in saved made an RNN's training call hold 1.7 times torch.nn's
// memory). The CUDA kernels keep the layouts above, whose rows they read in place.
//   GRU on the CPU: [r z n (3H) | h_n = W_hn h_prev + b_hn (H)]; RNN on the CPU: nothing.
struct GruCpuLayout {
  int64_t H;
  FC_LAYOUT_FN int64_t h_n() const { return 3 * H; }
  FC_LAYOUT_FN int64_t width() const { return 4 * H; }
};

struct RnnCpuLayout {
  int64_t H;
  FC_LAYOUT_FN int64_t width() const { return 0; }
};

}  // namespace fastcells

#undef FC_LAYOUT_FN
