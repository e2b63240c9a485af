// Gate math of the LSTM, GRU and Elman RNN cells, one hidden unit at a time, forward and backward.
//
// Shared by the CPU kernels (csrc/cpu/) and the CUDA kernels (csrc/cuda/pointwise.cu and
// persistent.cu), so the gate formulas are written once for both; only exp_ differs: the polynomial
// below on the host, the CUDA math library's expf/exp on the device. (The Triton kernels have their
// own copy, kernels/gate_math.py.) Functions have no data-dependent branches (clamps and relu are
// selects) and call no library function on the host, so the CPU loops over hidden units that use them
// auto-vectorize, given -fno-trapping-math (setup.py passes it) and a vector floor (SSE4.1 or later:
// the default -march=native build, not the FASTCELLS_PORTABLE=1 baseline x86-64 one). A scalar libm
// exp costs ~5 ns a call; the pointwise pass of an LSTM step at B=32, H=256 makes ~40k of them.
//
// Gate order is torch's: LSTM i, f, g, o; GRU r, z, n with n = tanh(x_n + r * (W_hn h + b_hn)).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FC_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace fastcells {

// Bit-level reinterpretation that compiles on host and device.
template <typename To, typename From>
FC_HOST_DEVICE To bit_cast_(From from) {
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// exp(x) by range reduction x = n ln2 + r, |r| <= ln2/2, and a Taylor polynomial for e^r.
// Degree 7 (float) and 13 (double) keep the truncation error below half an ulp of the type. The
// float polynomial is evaluated in Estrin's scheme (pairs, then pairs of pairs) rather than Horner's:
// the same operation count in half the dependency chain. The float LSTM pointwise pass is
// latency-bound (exp sits twice on each unit's critical path); this made it ~12% faster here.
// Inputs are clamped to the range where 2^n is a normal number; the callers (sigmoid, tanh)
// saturate long before that.
FC_HOST_DEVICE float exp_(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f - n * -2.12194440e-4f;  // ln2 split in two for an exact n*ln2_hi
  const float r2 = r * r, r4 = r2 * r2;
  const float p01 = 1.0f + r, p23 = 0.5f + r * (1.0f / 6.0f);
  const float p45 = 1.0f / 24.0f + r * (1.0f / 120.0f), p67 = 1.0f / 720.0f + r * (1.0f / 5040.0f);
  const float p = (p01 + r2 * p23) + r4 * (p45 + r2 * p67);
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * bit_cast_<float>(bits);
#endif
}

FC_HOST_DEVICE double exp_(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  double n = __builtin_floor(x * 1.44269504088896340736 + 0.5);
  double r = x - n * 6.93147180369123816490e-01 - n * 1.90821492927058770002e-10;
  // Horner over 1/k! for k = 13 .. 0.
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int64_t bits = (static_cast<int64_t>(n) + 1023) << 52;
  return p * bit_cast_<double>(bits);
#endif
}

template <typename T>
FC_HOST_DEVICE T sigmoid_(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// tanh(x) = 1 - 2 / (e^{2x} + 1): exact limits at both ends, absolute error of a few ulp near 0.
template <typename T>
FC_HOST_DEVICE T tanh_(T x) {
  return T(1) - T(2) / (exp_(T(2) * x) + T(1));
}

// ---------------------------------------------------------------------------------------------
// LSTM. Pre-activations a_i, a_f, a_g, a_o (input and hidden projections and both biases summed).
template <typename T>
struct LstmUnit {
  T i, f, g, o;  // gate activations
  T c;           // new cell state
  T tanh_c;      // tanh(c), reused by backward
  T h;           // new hidden state (before any projection)
};

template <typename T>
FC_HOST_DEVICE LstmUnit<T> lstm_unit_fwd(T a_i, T a_f, T a_g, T a_o, T c_prev) {
  LstmUnit<T> u;
  u.i = sigmoid_(a_i);
  u.f = sigmoid_(a_f);
  u.g = tanh_(a_g);
  u.o = sigmoid_(a_o);
  u.c = u.f * c_prev + u.i * u.g;
  u.tanh_c = tanh_(u.c);
  u.h = u.o * u.tanh_c;
  return u;
}

template <typename T>
struct LstmUnitGrad {
  T d_i, d_f, d_g, d_o;  // gradients of the pre-activations
  T d_c_prev;
};

// dh, dc: gradients flowing into this step's h and c from above and from the next step.
template <typename T>
FC_HOST_DEVICE LstmUnitGrad<T> lstm_unit_bwd(T i, T f, T g, T o, T c_prev, T tanh_c, T dh, T dc) {
  LstmUnitGrad<T> d;
  T dc_total = dc + dh * o * (T(1) - tanh_c * tanh_c);
  d.d_i = dc_total * g * i * (T(1) - i);
  d.d_f = dc_total * c_prev * f * (T(1) - f);
  d.d_g = dc_total * i * (T(1) - g * g);
  d.d_o = dh * tanh_c * o * (T(1) - o);
  d.d_c_prev = dc_total * f;
  return d;
}

// ---------------------------------------------------------------------------------------------
// GRU. x_*: input projections with b_ih; h_*: hidden projections with b_hh (kept apart because
// n = tanh(x_n + r * h_n)).
template <typename T>
struct GruUnit {
  T r, z, n, h;
};

template <typename T>
FC_HOST_DEVICE GruUnit<T> gru_unit_fwd(T x_r, T x_z, T x_n, T h_r, T h_z, T h_n, T h_prev) {
  GruUnit<T> u;
  u.r = sigmoid_(x_r + h_r);
  u.z = sigmoid_(x_z + h_z);
  u.n = tanh_(x_n + u.r * h_n);
  u.h = (T(1) - u.z) * u.n + u.z * h_prev;
  return u;
}

template <typename T>
struct GruUnitGrad {
  T d_r, d_z, d_n;  // gradients of the input projections (x_r, x_z, x_n)
  T d_hn;           // gradient of the hidden projection h_n (those of h_r, h_z equal d_r, d_z)
  T d_h_prev;       // the direct part of dh_prev (the part through W_hh is a matmul)
};

template <typename T>
FC_HOST_DEVICE GruUnitGrad<T> gru_unit_bwd(T r, T z, T n, T h_n, T h_prev, T dh) {
  GruUnitGrad<T> d;
  T dn_pre = dh * (T(1) - z) * (T(1) - n * n);
  d.d_n = dn_pre;
  d.d_hn = dn_pre * r;
  d.d_r = dn_pre * h_n * r * (T(1) - r);
  d.d_z = dh * (h_prev - n) * z * (T(1) - z);
  d.d_h_prev = dh * z;
  return d;
}

// ---------------------------------------------------------------------------------------------
// Elman RNN: h = tanh(a) or relu(a).
// relu keeps NaN, as torch.relu does: !(a <= 0) holds for NaN.
template <typename T>
FC_HOST_DEVICE T rnn_unit_fwd(T a, bool relu) {
  return relu ? (!(a <= T(0)) ? a : T(0)) : tanh_(a);
}

// Gradient of the pre-activation from the output h (as torch does for relu: zero where h <= 0).
template <typename T>
FC_HOST_DEVICE T rnn_unit_bwd(T h, T dh, bool relu) {
  return relu ? (h > T(0) ? dh : T(0)) : dh * (T(1) - h * h);
}

}  // namespace fastcells
