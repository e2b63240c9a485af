// Fused per-step pointwise kernels (declarations and shapes in pointwise.h): biases, gate
// nonlinearities, the state update and what backward needs, in one kernel per step, with the gate
// math of fastcells/gate_math.h (the same definitions the CPU backend runs).
#include <algorithm>

#include "fastcells/gate_math.h"
#include "fastcells/saved_layout.h"
#include "pointwise.h"
#include "types.cuh"

namespace fastcells::cuda {
namespace {

// Grid-stride loop over the (row, unit) pairs of a step: calls body(row, unit).
template <typename Body>
__device__ __forceinline__ void for_each_unit(int64_t rows, int64_t H, Body body) {
  const int64_t n = rows * H;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    const int64_t row = idx / H;
    body(row, idx - row * H);
  }
}

template <typename T, bool kSave>
__global__ void lstm_fwd_kernel(LstmStepFwd a) {
  using M = typename MathType<T>::type;
  const int64_t H = a.H, G = 4 * H;
  for_each_unit(a.rows, H, [&](int64_t b, int64_t j) {
    const int64_t gate = b * G + j, unit = b * H + j;
    const M c_prev = load<T>(a.c, unit);
    const LstmUnit<M> u = lstm_unit_fwd<M>(
        load<T>(a.gx, gate) + load<T>(a.gh, gate), load<T>(a.gx, gate + H) + load<T>(a.gh, gate + H),
        load<T>(a.gx, gate + 2 * H) + load<T>(a.gh, gate + 2 * H),
        load<T>(a.gx, gate + 3 * H) + load<T>(a.gh, gate + 3 * H), c_prev);
    if (kSave) {
      const int64_t s = b * a.saved_ld + j;
      store<T>(a.saved, s, u.i);
      store<T>(a.saved, s + H, u.f);
      store<T>(a.saved, s + 2 * H, u.g);
      store<T>(a.saved, s + 3 * H, u.o);
      const LstmLayout L{H, H, false};  // the columns up to h_prev do not depend on P
      store<T>(a.saved, s + L.c_prev(), c_prev);
      store<T>(a.saved, s + L.tanh_c(), u.tanh_c);
      if (a.y != nullptr) store<T>(a.saved, s + L.h_prev(), load<T>(a.h, unit));  // before overwrite
    }
    store<T>(a.c, unit, u.c);
    store<T>(a.h, unit, u.h);
    if (a.y != nullptr) store<T>(a.y, unit, u.h);
  });
}

template <typename T>
__global__ void lstm_bwd_kernel(LstmStepBwd a) {
  using M = typename MathType<T>::type;
  const int64_t H = a.H, G = 4 * H;
  for_each_unit(a.rows, H, [&](int64_t b, int64_t j) {
    const int64_t s = b * a.saved_ld + j, unit = b * H + j, gate = b * G + j;
    const LstmUnitGrad<M> d = lstm_unit_bwd<M>(
        load<T>(a.saved, s), load<T>(a.saved, s + H), load<T>(a.saved, s + 2 * H),
        load<T>(a.saved, s + 3 * H), load<T>(a.saved, s + LstmLayout{H, H, false}.c_prev()),
        load<T>(a.saved, s + LstmLayout{H, H, false}.tanh_c()),
        load<T>(a.dh, unit), load<T>(a.dc, unit));
    store<T>(a.dgates, gate, d.d_i);
    store<T>(a.dgates, gate + H, d.d_f);
    store<T>(a.dgates, gate + 2 * H, d.d_g);
    store<T>(a.dgates, gate + 3 * H, d.d_o);
    store<T>(a.dc, unit, d.d_c_prev);
  });
}

template <typename T, bool kSave>
__global__ void gru_fwd_kernel(GruStepFwd a) {
  using M = typename MathType<T>::type;
  const int64_t H = a.H, G = 3 * H;
  for_each_unit(a.rows, H, [&](int64_t b, int64_t j) {
    const int64_t gate = b * G + j, unit = b * H + j;
    M h_r = load<T>(a.gh, gate), h_z = load<T>(a.gh, gate + H), h_n = load<T>(a.gh, gate + 2 * H);
    if (a.b_hh != nullptr) {
      h_r += load<T>(a.b_hh, j);
      h_z += load<T>(a.b_hh, j + H);
      h_n += load<T>(a.b_hh, j + 2 * H);
    }
    const M h_prev = load<T>(a.h, unit);
    const GruUnit<M> u = gru_unit_fwd<M>(load<T>(a.gx, gate), load<T>(a.gx, gate + H),
                                         load<T>(a.gx, gate + 2 * H), h_r, h_z, h_n, h_prev);
    if (kSave) {
      const GruLayout L{H};
      const int64_t s = b * L.width() + j;
      store<T>(a.saved, s, u.r);
      store<T>(a.saved, s + H, u.z);
      store<T>(a.saved, s + 2 * H, u.n);
      store<T>(a.saved, s + L.h_n(), h_n);
      store<T>(a.saved, s + L.h_prev(), h_prev);
    }
    store<T>(a.h, unit, u.h);
    store<T>(a.y, unit, u.h);
  });
}

template <typename T>
__global__ void gru_bwd_kernel(GruStepBwd a) {
  using M = typename MathType<T>::type;
  const int64_t H = a.H, G = 3 * H;
  for_each_unit(a.rows, H, [&](int64_t b, int64_t j) {
    const GruLayout L{H};
    const int64_t s = b * L.width() + j, unit = b * H + j, gate = b * G + j;
    const GruUnitGrad<M> d = gru_unit_bwd<M>(
        load<T>(a.saved, s), load<T>(a.saved, s + H), load<T>(a.saved, s + 2 * H),
        load<T>(a.saved, s + L.h_n()), load<T>(a.saved, s + L.h_prev()),
        load<T>(a.dy, unit) + load<T>(a.dh, unit));
    store<T>(a.dgx, gate, d.d_r);
    store<T>(a.dgx, gate + H, d.d_z);
    store<T>(a.dgx, gate + 2 * H, d.d_n);
    store<T>(a.dgh, gate, d.d_r);
    store<T>(a.dgh, gate + H, d.d_z);
    store<T>(a.dgh, gate + 2 * H, d.d_hn);
    store<T>(a.dh, unit, d.d_h_prev);
  });
}

template <typename T, bool kSave>
__global__ void rnn_fwd_kernel(RnnStepFwd a) {
  using M = typename MathType<T>::type;
  const int64_t H = a.H;
  for_each_unit(a.rows, H, [&](int64_t b, int64_t j) {
    const int64_t unit = b * H + j;
    const M h_prev = load<T>(a.h, unit);
    const M h = rnn_unit_fwd<M>(load<T>(a.gx, unit) + load<T>(a.gh, unit), a.relu);
    if (kSave) {
      const RnnLayout L{H};
      store<T>(a.saved, b * L.width() + L.h() + j, h);
      store<T>(a.saved, b * L.width() + L.h_prev() + j, h_prev);
    }
    store<T>(a.h, unit, h);
    store<T>(a.y, unit, h);
  });
}

template <typename T>
__global__ void rnn_bwd_kernel(RnnStepBwd a) {
  const int64_t H = a.H;
  for_each_unit(a.rows, H, [&](int64_t b, int64_t j) {
    const int64_t unit = b * H + j;
    store<T>(a.dgates, unit,
             rnn_unit_bwd(load<T>(a.saved, b * RnnLayout{H}.width() + RnnLayout{H}.h() + j), load<T>(a.dy, unit) + load<T>(a.dh, unit),
                          a.relu));
  });
}

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // the grid-stride loop covers the rest

// Calls launch(T{}, blocks) with T the C++ type of dtype, then returns the launch's error.
template <typename Launch>
cudaError_t dispatch(DType dtype, int64_t rows, int64_t H, Launch launch) {
  const int64_t n = rows * H;
  if (n == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
  switch (dtype) {
    case DType::kFloat32: launch(float{}, blocks); break;
    case DType::kFloat64: launch(double{}, blocks); break;
    case DType::kFloat16: launch(__half{}, blocks); break;
    case DType::kBFloat16: launch(__nv_bfloat16{}, blocks); break;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t lstm_step_fwd(DType dtype, const LstmStepFwd& a, cudaStream_t stream) {
  return dispatch(dtype, a.rows, a.H, [&](auto tag, unsigned blocks) {
    using T = decltype(tag);
    if (a.saved != nullptr) {
      lstm_fwd_kernel<T, true><<<blocks, kThreads, 0, stream>>>(a);
    } else {
      lstm_fwd_kernel<T, false><<<blocks, kThreads, 0, stream>>>(a);
    }
  });
}

cudaError_t lstm_step_bwd(DType dtype, const LstmStepBwd& a, cudaStream_t stream) {
  return dispatch(dtype, a.rows, a.H, [&](auto tag, unsigned blocks) {
    lstm_bwd_kernel<decltype(tag)><<<blocks, kThreads, 0, stream>>>(a);
  });
}

cudaError_t gru_step_fwd(DType dtype, const GruStepFwd& a, cudaStream_t stream) {
  return dispatch(dtype, a.rows, a.H, [&](auto tag, unsigned blocks) {
    using T = decltype(tag);
    if (a.saved != nullptr) {
      gru_fwd_kernel<T, true><<<blocks, kThreads, 0, stream>>>(a);
    } else {
      gru_fwd_kernel<T, false><<<blocks, kThreads, 0, stream>>>(a);
    }
  });
}

cudaError_t gru_step_bwd(DType dtype, const GruStepBwd& a, cudaStream_t stream) {
  return dispatch(dtype, a.rows, a.H, [&](auto tag, unsigned blocks) {
    gru_bwd_kernel<decltype(tag)><<<blocks, kThreads, 0, stream>>>(a);
  });
}

cudaError_t rnn_step_fwd(DType dtype, const RnnStepFwd& a, cudaStream_t stream) {
  return dispatch(dtype, a.rows, a.H, [&](auto tag, unsigned blocks) {
    using T = decltype(tag);
    if (a.saved != nullptr) {
      rnn_fwd_kernel<T, true><<<blocks, kThreads, 0, stream>>>(a);
    } else {
      rnn_fwd_kernel<T, false><<<blocks, kThreads, 0, stream>>>(a);
    }
  });
}

cudaError_t rnn_step_bwd(DType dtype, const RnnStepBwd& a, cudaStream_t stream) {
  return dispatch(dtype, a.rows, a.H, [&](auto tag, unsigned blocks) {
    rnn_bwd_kernel<decltype(tag)><<<blocks, kThreads, 0, stream>>>(a);
  });
}

}  // namespace fastcells::cuda
