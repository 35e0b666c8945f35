// 2^y for 16 floats at once, the exp of the fused AVX-512 attention.
//
// The fused kernels fold log2(e) into the query scale, so their scores come out in base-2
// units and the softmax needs 2^y, not e^x: the argument reduction is then exact
// (y - round(y) loses nothing), with no ln2 split into two constants and no multiply by
// log2(e). That is 10 vector operations against 14 for the Cephes expf, and the exp is a
// large share of the attention forward (one per visible query-key pair).
//
// Accuracy: within 1.1 ulp of exp2 for y in [-126, 0] (tests/cpu_exp_test.cpp checks it);
// scalef turns the huge negative exponents of far-below-max scores into exact zeros.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include "kernels/cpu/exp2_polynomials.h"

namespace par::cpu {

// sum of c[i] f^(N-1-i) by Horner's rule: the coefficients from the highest degree down.
template <int N>
inline __m512 polynomial_16(__m512 f, const float (&c)[N]) {
  __m512 p = _mm512_set1_ps(c[0]);
  for (int i = 1; i < N; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c[i]));
  return p;
}

inline __m512 exp2_16(__m512 y) {
  // round(y) by adding and subtracting 1.5 * 2^23, whose float spacing is 1. For |y| of
  // 2^23 and more, y is already an integer and f is 0.
  const __m512 round = _mm512_set1_ps(12582912.0f);
  const __m512 n = _mm512_sub_ps(_mm512_add_ps(y, round), round);
  const __m512 f = _mm512_sub_ps(y, n);  // in [-1/2, 1/2]
  return _mm512_scalef_ps(polynomial_16(f, kExp2Polynomial), n);
}

// The same with 8 vector operations instead of 10, for the token-table attention of
// decoding (kernels/cpu/token_scan_avx512.cpp), which takes one 2^y per key, query and head
// and is bound by the vector ports: the rounding by roundscale, and a polynomial one
// degree lower (relative error 1.0e-7 with its float coefficients: within 2.5 ulp,
// tests/cpu_exp_test.cpp). exp2_16 and exp2_16_short have AVX2 twins too (exp2_avx2.h).
inline __m512 exp2_16_short(__m512 y) {
  const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(y, n);  // in [-1/2, 1/2]
  return _mm512_scalef_ps(polynomial_16(f, kExp2ShortPolynomial), n);
}

// 2^y for y <= 0 with 7 vector operations: f = y - floor(y) in [0, 1) in one (reduce), and
// scalef's own floor of y for the power of two, so that no rounded copy of y is needed. The
// polynomial (kernels/cpu/exp2_polynomials.h) keeps it within 2.6 ulp of exp2 for y in
// [-126, 0] in float (tests/cpu_exp_test.cpp). For the bounded scan of the token-table
// attention; exp2_8_floor (kernels/cpu/exp2_avx2.h) is the same on 8 lanes.
#if defined(__AVX512DQ__)
inline __m512 exp2_16_floor(__m512 y) {
  const __m512 f = _mm512_reduce_ps(y, _MM_FROUND_TO_NEG_INF);
  return _mm512_scalef_ps(polynomial_16(f, kExp2FloorPolynomial), y);
}
#endif

}  // namespace par::cpu

#endif
