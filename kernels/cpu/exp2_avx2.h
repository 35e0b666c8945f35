// 2^y for 8 floats at once, for CPUs with AVX2 and FMA but no AVX-512 (AMD before Zen 4,
// Intel's client cores): the token-table attention's scans there
// (kernels/cpu/token_scan_avx2.cpp).
//
// exp2_8, exp2_8_short and exp2_8_floor are exp2_16, exp2_16_short and exp2_16_floor
// (kernels/cpu/exp2_avx512.h) on 8 lanes: the integer n and f = y - n found the same way,
// the same polynomials (exp2_polynomials.h) and Horner steps, and where AVX-512 scales by
// 2^n with scalef, which AVX2 lacks, the power of two built in the exponent field:
// p * 2^(n + 64), exact while it stays a normal float, then * 2^-64, which rounds once
// where the result is subnormal, as scalef does. So exp2_8 and exp2_8_short give the
// 16-lane ones' bits for every finite y below 63 (the scans' are at most 0, up to
// rounding). exp2_8_floor gives exp2_16_floor's bits too except for y in (-1/2, 0) where
// f = 1 + y is not a float: AVX-512's reduce rounds it down (its subtraction takes the
// floor's rounding mode) and this one to nearest, so the two may differ in the last bit.
// tests/cpu_exp_test.cpp checks them, and against the 16-lane ones where both build.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "kernels/cpu/exp2_polynomials.h"

namespace par::cpu {

namespace exp2_avx2_detail {

// Below -160 every result of the three rounds to 0 (the smallest subnormal is 2^-149, and
// p < 2), and n + 64 stays a normal float's exponent.
inline __m256 clamp(__m256 y) { return _mm256_max_ps(y, _mm256_set1_ps(-160.0f)); }

template <int N>
inline __m256 polynomial(__m256 f, const float (&c)[N]) {
  __m256 p = _mm256_set1_ps(c[0]);
  for (int i = 1; i < N; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c[i]));
  return p;
}

// p * 2^n, n an integer in [-160, 63] held as a float.
inline __m256 scale(__m256 p, __m256 n) {
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127 + 64));
  const __m256 power = _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, power), _mm256_set1_ps(0x1p-64f));
}

}  // namespace exp2_avx2_detail

// exp2_16's: y - round(y) by adding and subtracting 1.5 * 2^23, within 1.1 ulp.
inline __m256 exp2_8(__m256 y) {
  using namespace exp2_avx2_detail;
  const __m256 x = clamp(y);
  const __m256 round = _mm256_set1_ps(12582912.0f);
  const __m256 n = _mm256_sub_ps(_mm256_add_ps(x, round), round);
  return scale(polynomial(_mm256_sub_ps(x, n), kExp2Polynomial), n);
}

// exp2_16_short's: rounded by the rounding instruction, a polynomial one degree lower.
inline __m256 exp2_8_short(__m256 y) {
  using namespace exp2_avx2_detail;
  const __m256 x = clamp(y);
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return scale(polynomial(_mm256_sub_ps(x, n), kExp2ShortPolynomial), n);
}

// exp2_16_floor's, for y <= 0: f = y - floor(y) in [0, 1).
inline __m256 exp2_8_floor(__m256 y) {
  using namespace exp2_avx2_detail;
  const __m256 x = clamp(y);
  const __m256 n = _mm256_floor_ps(x);
  return scale(polynomial(_mm256_sub_ps(x, n), kExp2FloorPolynomial), n);
}

}  // namespace par::cpu

#endif
