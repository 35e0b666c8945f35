// exp() for the softmax loops of the CPU attention.
//
// The attention evaluates one exp per visible (query, key) pair: at N = 131072 that is
// hundreds of millions per step, as much time as the matrix products if done with
// libm's scalar expf. This version is branch-free so the compiler vectorizes the loops
// that call it (AVX2/AVX-512). Accuracy: within 2 ulp of expf on [-87, 88]
// (tests/cpu_exp_test.cpp checks it), 0 below -87.3 (where exp underflows anyway).
// Double precision keeps std::exp: it is used for reference and gradient checks.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace par::cpu {

inline float fast_expf(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  const float xc = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = std::nearbyint(xc * kLog2e);
  const float r = xc - n * kLn2Hi - n * kLn2Lo;
  // Cephes expf minimax polynomial on [-ln2/2, ln2/2].
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -87.3f ? 0.0f : e * scale;
}

template <typename T>
inline T exp_t(T x) {
  if constexpr (sizeof(T) == 4) return fast_expf(x);
  else return std::exp(x);
}

}  // namespace par::cpu
