// Device-side dtype helpers shared by the kernels: the type the math runs in, conversions, and
// loads/stores through untyped pointers (the launchers' argument structs are framework-free).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace fastcells::cuda {

// The type the math runs in: fp32 for the 16-bit types, the type itself otherwise.
template <typename T>
struct MathType {
  using type = T;
};
template <>
struct MathType<__half> {
  using type = float;
};
template <>
struct MathType<__nv_bfloat16> {
  using type = float;
};

// Conversions by intrinsics: torch's build defines __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, which remove the implicit ones (make cuda-check does the same).
__device__ __forceinline__ float to_math(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_math(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_math(float x) { return x; }
__device__ __forceinline__ double to_math(double x) { return x; }

template <typename T>
__device__ __forceinline__ T from_math(typename MathType<T>::type x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return x;
  }
}

template <typename T>
__device__ __forceinline__ typename MathType<T>::type load(const void* p, int64_t i) {
  return to_math(static_cast<const T*>(p)[i]);
}

template <typename T>
__device__ __forceinline__ void store(void* p, int64_t i, typename MathType<T>::type value) {
  static_cast<T*>(p)[i] = from_math<T>(value);
}

}  // namespace fastcells::cuda
