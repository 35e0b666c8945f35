// The token-table scan (token_scan.h) for CPUs with AVX2 but no AVX-512, lane for lane the
// AVX-512 one (token_scan_avx512.cpp): each 16 keys as two halves of 8 (the 512-bit
// vector's lanes 0-7 and 8-15), with its score chains, the same exponentials
// (exp2_avx2.h), the same per-lane state, and _mm512_reduce_add_ps's order at the end. So
// the partials have the same bits, except that the bounded scan's exponential may differ
// in its last bit for scores within 1/2 below the reference (tests/token_scan_test.cpp,
// which is why AVX-512 builds compile this file too; both files are compiled without
// fusing a multiply and an add that the code writes apart). The rotary rows are read from
// L1 for each query-head (16 vector registers hold no more than the chains and the
// broadcasts); the two halves share each broadcast coefficient.
#include "kernels/cpu/token_scan.h"

#if defined(__AVX2__) && defined(__FMA__)

#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/exp2_avx2.h"

namespace par::cpu {

namespace {

struct Halves {
  __m256 lo, hi;
};

// The lanes of the first n keys of 16: all ones, else zeros (x & 0 = +0, and sum + 0 =
// sum, as AVX-512's masked add leaves it).
Halves lanes_before(int64_t n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int k = int(std::min<int64_t>(16, n));
  return Halves{_mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(k), lane)),
                _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(k - 8), lane))};
}

// The sum of 16 lanes in _mm512_reduce_add_ps's order (GCC's): the halves, then the
// 128-bit halves, then pairs.
float sum16(const Halves& x) {
  const __m256 h = _mm256_add_ps(x.hi, x.lo);
  const __m128 q = _mm_add_ps(_mm256_extractf128_ps(h, 1), _mm256_castps256_ps128(h));
  const __m128 p = _mm_add_ps(q, _mm_shuffle_ps(q, q, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(p) + _mm_cvtss_f32(_mm_shuffle_ps(p, p, 1));
}

// The AVX-512 scan's score16, in its four chains.
Halves score16(int64_t B, const float* c, const ScanKeys& k, int64_t j) {
  auto row_c = [&](int64_t b, int h) { return _mm256_loadu_ps(k.cos + b * k.stride + j + 8 * h); };
  auto row_s = [&](int64_t b, int h) { return _mm256_loadu_ps(k.sin + b * k.stride + j + 8 * h); };
  auto bc = [&](int64_t i) { return _mm256_set1_ps(c[i]); };
  __m256 out[2];
  if (B < 2) {
    for (int h = 0; h < 2; ++h) {
      __m256 a = bc(0);
      for (int64_t b = 0; b < B; ++b) {
        a = _mm256_fmadd_ps(row_c(b, h), bc(1 + b), a);
        a = _mm256_fmadd_ps(row_s(b, h), bc(1 + B + b), a);
      }
      out[h] = a;
    }
    return Halves{out[0], out[1]};
  }
  __m256 a0[2], a1[2], a2[2], a3[2];
  for (int h = 0; h < 2; ++h) {
    a0[h] = bc(0);
    a1[h] = _mm256_mul_ps(row_c(1, h), bc(2));
    a2[h] = _mm256_mul_ps(row_s(0, h), bc(1 + B));
    a3[h] = _mm256_mul_ps(row_s(1, h), bc(2 + B));
    a0[h] = _mm256_fmadd_ps(row_c(0, h), bc(1), a0[h]);
  }
  for (int64_t b = 2; b + 1 < B; b += 2) {
    const __m256 cc0 = bc(1 + b), cc1 = bc(2 + b), cs0 = bc(1 + B + b), cs1 = bc(2 + B + b);
    for (int h = 0; h < 2; ++h) {
      a0[h] = _mm256_fmadd_ps(row_c(b, h), cc0, a0[h]);
      a1[h] = _mm256_fmadd_ps(row_c(b + 1, h), cc1, a1[h]);
      a2[h] = _mm256_fmadd_ps(row_s(b, h), cs0, a2[h]);
      a3[h] = _mm256_fmadd_ps(row_s(b + 1, h), cs1, a3[h]);
    }
  }
  for (int h = 0; h < 2; ++h) {
    if (B % 2) {
      a0[h] = _mm256_fmadd_ps(row_c(B - 1, h), bc(B), a0[h]);
      a2[h] = _mm256_fmadd_ps(row_s(B - 1, h), bc(2 * B), a2[h]);
    }
    out[h] = _mm256_add_ps(_mm256_add_ps(a0[h], a1[h]), _mm256_add_ps(a2[h], a3[h]));
  }
  return Halves{out[0], out[1]};
}

// The AVX-512 scan's running references per lane, the same way.
void scan(int64_t bands, const ScanKeys& k, int64_t n, const float* coef, float* state,
          Partial* out) {
  const int64_t R = 1 + 2 * bands;
  const __m256 kNone = _mm256_set1_ps(-1e30f), kHeadroom = _mm256_set1_ps(16.0f);
  float* ms = state;
  float* ss = state + n * 16;
  for (int64_t x = 0; x < 16 * n; x += 8) {
    _mm256_storeu_ps(ms + x, kNone);
    _mm256_storeu_ps(ss + x, _mm256_setzero_ps());
  }
  for (int64_t j = k.begin; j < k.end; j += 16) {
    const Halves lanes = lanes_before(k.end - j);
    for (int64_t u = 0; u < n; ++u) {
      const Halves score = score16(bands, coef + u * R, k, j);
      for (int h = 0; h < 2; ++h) {
        const __m256 sc = h ? score.hi : score.lo, in = h ? lanes.hi : lanes.lo;
        float* mp = ms + u * 16 + 8 * h;
        float* sp = ss + u * 16 + 8 * h;
        __m256 m = _mm256_loadu_ps(mp);
        __m256 sum = _mm256_loadu_ps(sp);
        const __m256 up = _mm256_and_ps(_mm256_cmp_ps(sc, m, _CMP_GT_OQ), in);
        if (_mm256_movemask_ps(up)) {
          const __m256 raised = _mm256_blendv_ps(m, _mm256_add_ps(sc, kHeadroom), up);
          sum = _mm256_mul_ps(sum, exp2_8(_mm256_sub_ps(m, raised)));
          m = raised;
          _mm256_storeu_ps(mp, m);
        }
        sum = _mm256_add_ps(sum, _mm256_and_ps(exp2_8_short(_mm256_sub_ps(sc, m)), in));
        _mm256_storeu_ps(sp, sum);
      }
    }
  }
  for (int64_t u = 0; u < n; ++u) {
    const __m256 lo = _mm256_loadu_ps(ms + u * 16), hi = _mm256_loadu_ps(ms + u * 16 + 8);
    const __m256 m8 = _mm256_max_ps(lo, hi);
    const __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m8, 1), _mm256_castps256_ps128(m8));
    const __m128 m2 = _mm_max_ps(m4, _mm_shuffle_ps(m4, m4, _MM_SHUFFLE(1, 0, 3, 2)));
    const float top = std::max(_mm_cvtss_f32(m2), _mm_cvtss_f32(_mm_shuffle_ps(m2, m2, 1)));
    const __m256 t = _mm256_set1_ps(top);
    const Halves weighted{
        _mm256_mul_ps(_mm256_loadu_ps(ss + u * 16), exp2_8(_mm256_sub_ps(lo, t))),
        _mm256_mul_ps(_mm256_loadu_ps(ss + u * 16 + 8), exp2_8(_mm256_sub_ps(hi, t)))};
    out[u] = Partial{double(top), double(sum16(weighted))};
  }
}

// The AVX-512 bounded scan.
void scan_bounded(int64_t bands, const ScanKeys& k, int64_t n, const float* coef,
                  const double* refs, float* sums, Partial* out) {
  const int64_t R = 1 + 2 * bands;
  for (int64_t u = 0; u < 16 * n; u += 8) _mm256_storeu_ps(sums + u, _mm256_setzero_ps());
  for (int64_t j = k.begin; j < k.end; j += 16) {
    const Halves lanes = lanes_before(k.end - j);
    for (int64_t u = 0; u < n; ++u) {
      const Halves score = score16(bands, coef + u * R, k, j);
      float* sum = sums + u * 16;
      _mm256_storeu_ps(sum, _mm256_add_ps(_mm256_loadu_ps(sum),
                                          _mm256_and_ps(exp2_8_floor(score.lo), lanes.lo)));
      _mm256_storeu_ps(sum + 8, _mm256_add_ps(_mm256_loadu_ps(sum + 8),
                                              _mm256_and_ps(exp2_8_floor(score.hi), lanes.hi)));
    }
  }
  for (int64_t u = 0; u < n; ++u) {
    const Halves sum{_mm256_loadu_ps(sums + u * 16), _mm256_loadu_ps(sums + u * 16 + 8)};
    out[u] = Partial{refs[u], double(sum16(sum))};
  }
}

}  // namespace

void scan_token_keys_avx2(int64_t bands, const ScanKeys& k, int64_t n, const float* coef,
                          const double* refs, float* state, Partial* out) {
  if (refs) scan_bounded(bands, k, n, coef, refs, state, out);
  else scan(bands, k, n, coef, state, out);
}

#if !defined(__AVX512F__)
bool scan_token_keys(int64_t bands, const ScanKeys& k, int64_t n, const float* coef,
                     const double* refs, float* state, Partial* out) {
  scan_token_keys_avx2(bands, k, n, coef, refs, state, out);
  return true;
}
#endif

}  // namespace par::cpu

#else  // no vector scan: token_attention.cpp scans key by key

namespace par::cpu {

bool scan_token_keys(int64_t, const ScanKeys&, int64_t, const float*, const double*, float*,
                     Partial*) {
  return false;
}

}  // namespace par::cpu

#endif
