// The inner loop of decoding's token-table attention (kernels/cpu/token_attention.cpp): the
// softmax partials of a few query-heads over one token's keys, each key's score
//   c[0] + sum over bands b of c[1 + b] cos_b(p) + c[1 + B + b] sin_b(p)
// from the query-head's coefficients c of the token and the key's rotary rows. Nearly all
// of a step's arithmetic on the CPU is here, once per key, query and head, so it has a
// scan per instruction set (token_scan_avx512.cpp, token_scan_avx2.cpp), the two giving
// the same partials.
#pragma once

#include <cstdint>

namespace par::cpu {

// A softmax over some keys: a reference score (base 2, at least their maximum up to
// rounding) and the sum of 2^(score - reference).
struct Partial {
  double ref, sum;
};

// Keys [begin, end) of rotary rows: band b's cosines at cos[b * stride + j], sines alike.
struct ScanKeys {
  const float* cos;
  const float* sin;
  int64_t stride, begin, end;
};

// Whether this build's vector scans take bounded references (the floor exponential they
// need has a vector form here); else the reference is a running maximum.
#if defined(__AVX512DQ__) || (defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__))
inline constexpr bool kScanTakesBoundedReferences = true;
#else
inline constexpr bool kScanTakesBoundedReferences = false;
#endif

// The partials of n query-heads (coef: n rows of 1 + 2 * bands coefficients, scores in base
// 2) over keys. refs: each query-head's bounded reference, every score at most it up to
// rounding (only where kScanTakesBoundedReferences), else null for a running maximum per
// vector lane. state: 2 * 16 * n floats of scratch. False, with nothing done, where the
// build has no vector scan for floats (then the caller scans key by key).
bool scan_token_keys(int64_t bands, const ScanKeys& keys, int64_t n, const float* coef,
                     const double* refs, float* state, Partial* out);

#if defined(__AVX2__) && defined(__FMA__)
// The AVX2 scan, also in builds with AVX-512 (where scan_token_keys is the AVX-512 one), so
// that a test can hold the two to the same bits.
void scan_token_keys_avx2(int64_t bands, const ScanKeys& keys, int64_t n, const float* coef,
                          const double* refs, float* state, Partial* out);
#endif

}  // namespace par::cpu
