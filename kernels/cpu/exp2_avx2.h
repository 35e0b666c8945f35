// 2^y for 8 floats at once, for CPUs with AVX2 and FMA but no AVX-512 (AMD before Zen 4,
// Intel's client cores): the token-table attention's bounded scan there
// (kernels/cpu/token_attention.cpp).
//
// exp2_8_floor is exp2_16_floor (kernels/cpu/exp2_avx512.h) on 8 lanes, with the same bits
// for every finite y below 64 (the scan's are at most 0, up to rounding): f = y - floor(y)
// is exact in both, the polynomial and its Horner steps are the same, and AVX2 has no
// scalef, so the power of two is built in the exponent field: p * 2^(n + 64), exact while
// it stays a normal float, then * 2^-64, which rounds once where the result is subnormal,
// as scalef does. tests/cpu_exp_test.cpp checks both.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "kernels/cpu/exp2_floor_polynomial.h"

namespace par::cpu {

inline __m256 exp2_8_floor(__m256 y) {
  // Below -160 every result rounds to 0 (the smallest subnormal is 2^-149), and n + 64
  // stays a normal float's exponent.
  const __m256 x = _mm256_max_ps(y, _mm256_set1_ps(-160.0f));
  const __m256 n = _mm256_floor_ps(x);
  const __m256 f = _mm256_sub_ps(x, n);  // in [0, 1), exact
  __m256 p = _mm256_set1_ps(kExp2FloorPolynomial[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2FloorPolynomial[i]));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127 + 64));
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, scale), _mm256_set1_ps(0x1p-64f));
}

}  // namespace par::cpu

#endif
