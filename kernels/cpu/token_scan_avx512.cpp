// The token-table scan (token_scan.h) with AVX-512: 16 keys to a vector, the rotary rows of
// a block of keys held in registers while each query-head's coefficients are broadcast.
#include "kernels/cpu/token_scan.h"

#if defined(__AVX512F__)

#include <algorithm>

#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/exp2_avx512.h"

namespace par::cpu {

namespace {

// The rotary rows of keys [j, j + 16): in registers where the band count kB is known at
// compile time (0: read again for each query-head, from L1).
template <int kB>
struct Rows {
  __m512 c[kB > 0 ? kB : 1], s[kB > 0 ? kB : 1];
};

template <int kB>
void load_rows(Rows<kB>& r, const ScanKeys& k, int64_t j) {
  if constexpr (kB > 0)
    for (int b = 0; b < kB; ++b) {
      r.c[b] = _mm512_loadu_ps(k.cos + b * k.stride + j);
      r.s[b] = _mm512_loadu_ps(k.sin + b * k.stride + j);
    }
}

// The scores of keys [j, j + 16) for one query-head's coefficients c, in four chains of
// multiply-adds: the even and the odd bands' cosine terms (c[0] with the even ones), the
// same for the sines. Four chains instead of two (of 9 and 8) shorten the way from a
// block's rows to its exp: 4 samples' 32 query-heads over cpu-131k's 131,072 keys took
// 0.734 ms instead of 0.833 on 2 threads of a Zen 5.
template <int kB>
__m512 score16(int64_t bands, const Rows<kB>& r, const float* c, const ScanKeys& k, int64_t j) {
  const int64_t B = kB > 0 ? kB : bands;
  auto row_c = [&](int64_t b) {
    return kB > 0 ? r.c[b] : _mm512_loadu_ps(k.cos + b * k.stride + j);
  };
  auto row_s = [&](int64_t b) {
    return kB > 0 ? r.s[b] : _mm512_loadu_ps(k.sin + b * k.stride + j);
  };
  if (B < 2) {
    __m512 a = _mm512_set1_ps(c[0]);
    for (int64_t b = 0; b < B; ++b) {
      a = _mm512_fmadd_ps(row_c(b), _mm512_set1_ps(c[1 + b]), a);
      a = _mm512_fmadd_ps(row_s(b), _mm512_set1_ps(c[1 + B + b]), a);
    }
    return a;
  }
  __m512 a0 = _mm512_set1_ps(c[0]);
  __m512 a1 = _mm512_mul_ps(row_c(1), _mm512_set1_ps(c[2]));
  __m512 a2 = _mm512_mul_ps(row_s(0), _mm512_set1_ps(c[1 + B]));
  __m512 a3 = _mm512_mul_ps(row_s(1), _mm512_set1_ps(c[2 + B]));
  a0 = _mm512_fmadd_ps(row_c(0), _mm512_set1_ps(c[1]), a0);
  for (int64_t b = 2; b + 1 < B; b += 2) {
    a0 = _mm512_fmadd_ps(row_c(b), _mm512_set1_ps(c[1 + b]), a0);
    a1 = _mm512_fmadd_ps(row_c(b + 1), _mm512_set1_ps(c[2 + b]), a1);
    a2 = _mm512_fmadd_ps(row_s(b), _mm512_set1_ps(c[1 + B + b]), a2);
    a3 = _mm512_fmadd_ps(row_s(b + 1), _mm512_set1_ps(c[2 + B + b]), a3);
  }
  if (B % 2) {
    a0 = _mm512_fmadd_ps(row_c(B - 1), _mm512_set1_ps(c[B]), a0);
    a2 = _mm512_fmadd_ps(row_s(B - 1), _mm512_set1_ps(c[2 * B]), a2);
  }
  return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
}

// f(u, scores, lanes) for each vector of the keys and each query-head u, lanes masking the
// keys past the end.
template <int kB, typename F>
void each_score(int64_t bands, const ScanKeys& k, int64_t n, const float* coef, F&& f) {
  const int64_t R = 1 + 2 * (kB > 0 ? kB : bands);
  for (int64_t j = k.begin; j < k.end; j += 16) {
    const int64_t keys = std::min<int64_t>(16, k.end - j);
    const __mmask16 lanes = keys == 16 ? __mmask16(0xFFFF) : __mmask16((1u << keys) - 1);
    Rows<kB> rows;
    load_rows(rows, k, j);
    for (int64_t u = 0; u < n; ++u) f(u, score16(bands, rows, coef + u * R, k, j), lanes);
  }
}

// Every lane with its own running reference (at least its maximum score) and sum, raised
// only when a score exceeds it.
template <int kB>
void scan(int64_t bands, const ScanKeys& k, int64_t n, const float* coef, float* state,
          Partial* out) {
  const __m512 kNone = _mm512_set1_ps(-1e30f);  // 2^(x - -1e30) is never taken
  // A raised maximum goes this far above the score that raised it (a factor 2^16): later
  // scores rarely exceed it, so the branch is rarely taken and rarely mispredicted, and
  // terms 2^(score - max) stay far from float's underflow.
  const __m512 kHeadroom = _mm512_set1_ps(16.0f);
  float* ms = state;
  float* ss = state + n * 16;
  for (int64_t u = 0; u < n; ++u) {
    _mm512_storeu_ps(ms + u * 16, kNone);
    _mm512_storeu_ps(ss + u * 16, _mm512_setzero_ps());
  }
  each_score<kB>(bands, k, n, coef, [&](int64_t u, __m512 score, __mmask16 lanes) {
    __m512 m = _mm512_loadu_ps(ms + u * 16);
    __m512 sum = _mm512_loadu_ps(ss + u * 16);
    const __mmask16 up = _mm512_mask_cmp_ps_mask(lanes, score, m, _CMP_GT_OQ);
    if (up) {
      const __m512 raised = _mm512_mask_add_ps(m, up, score, kHeadroom);
      sum = _mm512_mul_ps(sum, exp2_16(_mm512_sub_ps(m, raised)));
      m = raised;
      _mm512_storeu_ps(ms + u * 16, m);
    }
    sum = _mm512_mask_add_ps(sum, lanes, sum, exp2_16_short(_mm512_sub_ps(score, m)));
    _mm512_storeu_ps(ss + u * 16, sum);
  });
  for (int64_t u = 0; u < n; ++u) {
    const __m512 m = _mm512_loadu_ps(ms + u * 16);
    const float top = _mm512_reduce_max_ps(m);
    const __m512 w = exp2_16(_mm512_sub_ps(m, _mm512_set1_ps(top)));
    const __m512 weighted = _mm512_mul_ps(_mm512_loadu_ps(ss + u * 16), w);
    out[u] = Partial{double(top), double(_mm512_reduce_add_ps(weighted))};
  }
}

#if defined(__AVX512DQ__)
// At least one band, and every query-head's score bounded: the sums of 2^(score -
// reference), no maximum to track, so no compare, no branch and no rescaling: about 25
// vector operations per query-head and 16 keys with 8 bands.
template <int kB>
void scan_bounded(int64_t bands, const ScanKeys& k, int64_t n, const float* coef,
                  const double* refs, float* sums, Partial* out) {
  for (int64_t u = 0; u < n; ++u) _mm512_storeu_ps(sums + u * 16, _mm512_setzero_ps());
  each_score<kB>(bands, k, n, coef, [&](int64_t u, __m512 score, __mmask16 lanes) {
    const __m512 sum = _mm512_loadu_ps(sums + u * 16);
    _mm512_storeu_ps(sums + u * 16, _mm512_mask_add_ps(sum, lanes, sum, exp2_16_floor(score)));
  });
  for (int64_t u = 0; u < n; ++u)
    out[u] = Partial{refs[u], double(_mm512_reduce_add_ps(_mm512_loadu_ps(sums + u * 16)))};
}
#endif

}  // namespace

bool scan_token_keys(int64_t bands, const ScanKeys& k, int64_t n, const float* coef,
                     [[maybe_unused]] const double* refs, float* state, Partial* out) {
#if defined(__AVX512DQ__)
  if (refs) {
    if (bands == 8) scan_bounded<8>(bands, k, n, coef, refs, state, out);
    else if (bands == 4) scan_bounded<4>(bands, k, n, coef, refs, state, out);
    else scan_bounded<0>(bands, k, n, coef, refs, state, out);
    return true;
  }
#endif
  if (bands == 8) scan<8>(bands, k, n, coef, state, out);
  else if (bands == 4) scan<4>(bands, k, n, coef, state, out);
  else scan<0>(bands, k, n, coef, state, out);
  return true;
}

}  // namespace par::cpu

#endif
