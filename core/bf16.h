// bfloat16 storage on the host: the bits of the bfloat16 nearest a number (ties to even, as
// CUDA's __float2bfloat16_rn), and the number a bfloat16 holds. Ops that keep a tensor in
// bfloat16 (core/ops.h, the `_bf16` operations) take and give `uint16_t` buffers of these
// bits; the CPU backend computes them with these functions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace par {

inline uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// Straight from double, not through float: rounding twice could land on the other
// neighbour of a number near a midpoint.
inline uint16_t bf16_bits(double x) {
  if (std::isnan(x)) return bf16_bits(float(x));
  const double a = std::fabs(x);
  // Below float's normal range bfloat16 has fewer bits; through float (already rounded
  // there) such tiny numbers differ by at most one bfloat16 subnormal step.
  if (a < 0x1p-126 || std::isinf(x)) return bf16_bits(float(x));
  const int e = std::ilogb(a);
  // 8 significant bits: nearbyint rounds ties to even in the default rounding mode.
  const double r = std::ldexp(std::nearbyint(std::ldexp(a, 7 - e)), e - 7);
  if (r > 0x1.fep127) return x < 0 ? 0xFF80 : 0x7F80;  // past bfloat16's largest: infinity
  // r has 8 bits and is in range, so float holds it exactly.
  const float f = float(std::copysign(r, x));
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t(u >> 16);
}

inline float bf16_float(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace par
