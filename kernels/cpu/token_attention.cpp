// Decoding's cross-attention over keys grouped by token (core/ops.h, TokenAttentionShape).
//
// For one head, rotary pair (a, b) of band k rotates a key by the angle of its position:
// q . R(p) k = cos(p) (q_a k_a + q_b k_b) + sin(p) (q_b k_a - q_a k_b), and the unrotated
// dimensions add q . k. So with per-token coefficients of each query and head
//   c[t] = (sum of unrotated q.k, then q_a k_a + q_b k_b per band, then q_b k_a - q_a k_b)
// a key's score is c[token] . (1, cos(p), sin(p)): 1 + 2*bands multiply-adds instead of
// head_dim, reading only the position's rotary row. With the keys grouped by token, the
// coefficients of one token stay put while the kernel runs over its keys 16 at a time (one
// vector per rotary row), and the softmax weights of a token's keys only need summing: the
// values are the token's table row, applied once per token at the end. Same arithmetic as
// attending over materialized keys, in another order: equal up to rounding.
//
// Scores are in base 2 (log2(e) folded into the coefficients). The work is split into items
// (a token's keys, up to kItemKeys of them, for up to kTile query-heads); each item hands
// back one (reference, sum of 2^(score - reference)) per query-head, combined per token in
// double in the items' order, so the result is the same at any thread count. The reference
// is a bound of the token's scores where one is tight enough (bounded_references: then the
// scan has no maximum to track), else a running maximum per vector lane.
//
// Queries' own keys (TokenAttentionShape::own_group: decoding's samples' generated keys)
// go with the token's first item: after its shared keys, each query's own keys of the
// token (up to kItemKeys; items of their own take the rest) are scanned with the same
// coefficients and references, for that query's heads, and their partials added to the
// item's. A sample's few keys of a token would otherwise cost it the token's coefficients,
// and their combination, in a call of their own.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/exp2_avx2.h"
#include "kernels/cpu/exp2_avx512.h"

namespace par::cpu {

namespace {

constexpr double kLog2e = 1.4426950408889634;
constexpr int64_t kTile = 128;       // query-heads per pass over the keys: their state in L1
constexpr int64_t kItemKeys = 2048;  // keys per work item

// A softmax over one item's keys: a reference score (base 2, at least their maximum up to
// rounding) and the sum of 2^(score - reference).
struct Partial {
  double ref, sum;
};

struct Item {
  int64_t token, begin, end;
  int64_t stride;  // of the keys' cos and sin rows
  // Own keys (TokenAttentionShape::own_group): the token's first item also scans each
  // query's first kItemKeys own keys of the token, query i's [begin, end) at own_ranges[
  // own_at + i] (-1: none); an item of query `own_query`'s own keys alone scans [begin,
  // end) of them.
  int64_t own_at = -1;
  int64_t own_query = -1;
};


// The part of the call one tile of query-heads [qh0, qh0 + count) needs; query-head
// qh = h * nq + i (lse's layout).
template <typename T>
struct Tile {
  const TokenAttentionShape& s;
  const T* key_table;
  int64_t qh0, count;
  // Each query-head's query in double, [count][head_dim], and the same with each rotary
  // pair (a, b) turned into (b, -a), for the products of the sine coefficients.
  std::vector<double> qd, qs;

  Tile(const TokenAttentionShape& shape, const T* q, const T* keys, int64_t first, int64_t n)
      : s(shape), key_table(keys), qh0(first), count(n) {
    const int64_t D = s.head_dim, width = s.heads * D;
    qd.resize(size_t(count * D));
    qs.resize(size_t(count * D));
    for (int64_t u = 0; u < count; ++u) {
      const int64_t qh = qh0 + u, h = qh / s.nq, i = qh % s.nq;
      const T* qv = q + i * width + h * D;
      for (int64_t x = 0; x < D; ++x) qd[size_t(u * D + x)] = qv[x];
      for (int64_t b = 0; b < s.bands; ++b) {
        qs[size_t(u * D + 2 * b)] = qv[2 * b + 1];
        qs[size_t(u * D + 2 * b + 1)] = -double(qv[2 * b]);
      }
    }
  }

  // coef[u][r], r in [0, 1 + 2*bands), of token t, scaled by scale * log2(e), and amp[u],
  // the sum over the bands of sqrt(c_cos^2 + c_sin^2) of the rounded coefficients
  // (bounded_references). The products of a query and a key row go in vectors; scratch
  // holds 3 * head_dim doubles.
  void coefficients(int64_t t, T* coef, double* amp, double* scratch) const {
    const int64_t D = s.head_dim, B = s.bands, R = 1 + 2 * B, width = s.heads * D;
    const double f = s.scale * kLog2e;
    double* kd = scratch;
    double* prod = scratch + D;
    double* swapped = scratch + 2 * D;
    int64_t loaded = -1;
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4)
      if (D % 8 == 0 && B % 4 == 0) return coefficients_avx512(t, coef, amp, kd);
#endif
    for (int64_t u = 0; u < count; ++u) {
      const int64_t h = (qh0 + u) / s.nq;
      if (h != loaded) {  // the query-heads of one head share its key row
        const T* kv = key_table + t * width + h * D;
        for (int64_t x = 0; x < D; ++x) kd[x] = kv[x];
        loaded = h;
      }
      const double* qa = qd.data() + u * D;
      const double* qb = qs.data() + u * D;
      for (int64_t x = 0; x < D; ++x) {
        prod[x] = qa[x] * kd[x];
        swapped[x] = qb[x] * kd[x];
      }
      double plain = 0;
      for (int64_t x = 2 * B; x < D; ++x) plain += prod[x];
      T* c = coef + u * R;
      c[0] = T(plain * f);
      float a = 0;
      for (int64_t b = 0; b < B; ++b) {
        const T cc = T((prod[2 * b] + prod[2 * b + 1]) * f);
        const T cs = T((swapped[2 * b] + swapped[2 * b + 1]) * f);
        c[1 + b] = cc;
        c[1 + B + b] = cs;
        // In float: a bound within a few ulp does as well as an exact one.
        a += std::sqrt(float(cc) * float(cc) + float(cs) * float(cs));
      }
      amp[u] = a;
    }
  }

  // Any element type and instruction set: one key and one query-head at a time.
  void scan_portable(const Item& it, int64_t n, const T* coef, const T* cos, const T* sin,
                     Partial* out) const {
    const int64_t B = s.bands, R = 1 + 2 * B;
    for (int64_t u = 0; u < n; ++u) {
      const T* c = coef + u * R;
      T m = -std::numeric_limits<T>::infinity(), sum = 0;
      for (int64_t j = it.begin; j < it.end; ++j) {
        T score = c[0];
        for (int64_t b = 0; b < B; ++b)
          score += c[1 + b] * cos[b * it.stride + j] + c[1 + B + b] * sin[b * it.stride + j];
        if (score > m) {
          sum = sum * std::exp2(m - score) + T(1);
          m = score;
        } else {
          sum += std::exp2(score - m);
        }
      }
      out[u] = Partial{double(m), double(sum)};
    }
  }

#if defined(__AVX512F__)
  // The rotary rows of keys [j, j + 16): in registers where the band count kB is known at
  // compile time (0: read again for each query-head, from L1).
  template <int kB>
  struct Rows {
    __m512 c[kB > 0 ? kB : 1], s[kB > 0 ? kB : 1];
  };
  template <int kB>
  void load_rows(Rows<kB>& r, const float* cos, const float* sin, int64_t stride,
                 int64_t j) const {
    if constexpr (kB > 0)
      for (int b = 0; b < kB; ++b) {
        r.c[b] = _mm512_loadu_ps(cos + b * stride + j);
        r.s[b] = _mm512_loadu_ps(sin + b * stride + j);
      }
  }
  // The scores of keys [j, j + 16) for one query-head's coefficients c, in four chains
  // of multiply-adds: the even and the odd bands' cosine terms (c[0] with the even ones),
  // the same for the sines. Four chains instead of two (of 9 and 8) shorten the way from
  // a block's rows to its exp: 4 samples' 32 query-heads over cpu-131k's 131,072 keys took
  // 0.734 ms instead of 0.833 on 2 threads of a Zen 5.
  template <int kB>
  __m512 score16(const Rows<kB>& r, const float* c, const float* cos, const float* sin,
                 int64_t stride, int64_t j) const {
    const int64_t B = kB > 0 ? kB : s.bands;
    auto row_c = [&](int64_t b) { return kB > 0 ? r.c[b] : _mm512_loadu_ps(cos + b * stride + j); };
    auto row_s = [&](int64_t b) { return kB > 0 ? r.s[b] : _mm512_loadu_ps(sin + b * stride + j); };
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
  // f(u, scores, lanes) for each vector of the item's keys and each query-head u, lanes
  // masking the keys past the item's end.
  template <int kB, typename F>
  void each_score(const Item& it, int64_t n, const float* coef, const float* cos,
                  const float* sin, F&& f) const {
    const int64_t R = 1 + 2 * (kB > 0 ? kB : s.bands);
    for (int64_t j = it.begin; j < it.end; j += 16) {
      const int64_t keys = std::min<int64_t>(16, it.end - j);
      const __mmask16 lanes = keys == 16 ? __mmask16(0xFFFF) : __mmask16((1u << keys) - 1);
      Rows<kB> rows;
      load_rows(rows, cos, sin, it.stride, j);
      for (int64_t u = 0; u < n; ++u)
        f(u, score16(rows, coef + u * R, cos, sin, it.stride, j), lanes);
    }
  }
#endif

#if defined(__AVX512F__)
  // float: 16 keys to a vector, every lane with its own running reference (at least its
  // maximum score) and sum, raised only when a score exceeds it. kB: the band
  // count known at compile time (the rotary rows of a block stay in registers), or 0.
  template <int kB>
  void scan_avx512(const Item& it, int64_t n, const float* coef, const float* cos,
                   const float* sin, float* state, Partial* out) const {
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
    each_score<kB>(it, n, coef, cos, sin, [&](int64_t u, __m512 score, __mmask16 lanes) {
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
#endif

#if defined(__AVX512DQ__)
  // float, at least one band, and every query-head's score bounded (bounded_references):
  // the sums of 2^(score - reference), no maximum to track, so no compare, no branch and
  // no rescaling: about 25 vector operations per query-head and 16 keys with 8 bands.
  template <int kB>
  void scan_bounded_avx512(const Item& it, int64_t n, const float* coef, const float* cos,
                           const float* sin, const double* refs, float* sums,
                           Partial* out) const {
    for (int64_t u = 0; u < n; ++u) _mm512_storeu_ps(sums + u * 16, _mm512_setzero_ps());
    each_score<kB>(it, n, coef, cos, sin, [&](int64_t u, __m512 score, __mmask16 lanes) {
      const __m512 sum = _mm512_loadu_ps(sums + u * 16);
      _mm512_storeu_ps(sums + u * 16, _mm512_mask_add_ps(sum, lanes, sum, exp2_16_floor(score)));
    });
    for (int64_t u = 0; u < n; ++u)
      out[u] = Partial{refs[u], double(_mm512_reduce_add_ps(_mm512_loadu_ps(sums + u * 16)))};
  }
#endif

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512DQ__)
  // The AVX-512 scans for CPUs with AVX2 but no AVX-512, lane for lane: each 16 keys as
  // two halves of 8 (the 512-bit vector's lanes 0-7 and 8-15), with score16's chains, the
  // same exponentials (exp2_avx2.h), the same per-lane state, and _mm512_reduce_add_ps's
  // order at the end. So the partials have the same bits, except that the bounded scan's
  // exponential may differ in its last bit for scores within 1/2 below the reference. The
  // rotary rows are read from L1 for each query-head (16 vector registers hold no more
  // than the chains and the broadcasts); the two halves share each broadcast coefficient.
  struct Halves {
    __m256 lo, hi;
  };
  // The lanes of the first n keys of 16: all ones, else zeros (x & 0 = +0, and sum + 0 =
  // sum, as AVX-512's masked add leaves it).
  static Halves lanes_before(int64_t n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int k = int(std::min<int64_t>(16, n));
    return Halves{_mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(k), lane)),
                  _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(k - 8), lane))};
  }
  // The sum of 16 lanes in _mm512_reduce_add_ps's order (GCC's): the halves, then the
  // 128-bit halves, then pairs.
  static float sum16(const Halves& x) {
    const __m256 h = _mm256_add_ps(x.hi, x.lo);
    const __m128 q = _mm_add_ps(_mm256_extractf128_ps(h, 1), _mm256_castps256_ps128(h));
    const __m128 p = _mm_add_ps(q, _mm_shuffle_ps(q, q, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(p) + _mm_cvtss_f32(_mm_shuffle_ps(p, p, 1));
  }
  Halves score16_avx2(const float* c, const float* cos, const float* sin, int64_t stride,
                      int64_t j) const {
    const int64_t B = s.bands;
    auto row_c = [&](int64_t b, int h) { return _mm256_loadu_ps(cos + b * stride + j + 8 * h); };
    auto row_s = [&](int64_t b, int h) { return _mm256_loadu_ps(sin + b * stride + j + 8 * h); };
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
  // scan_avx512's running references per lane, the same way.
  void scan_avx2(const Item& it, int64_t n, const float* coef, const float* cos,
                 const float* sin, float* state, Partial* out) const {
    const int64_t R = 1 + 2 * s.bands;
    const __m256 kNone = _mm256_set1_ps(-1e30f), kHeadroom = _mm256_set1_ps(16.0f);
    float* ms = state;
    float* ss = state + n * 16;
    for (int64_t x = 0; x < 16 * n; x += 8) {
      _mm256_storeu_ps(ms + x, kNone);
      _mm256_storeu_ps(ss + x, _mm256_setzero_ps());
    }
    for (int64_t j = it.begin; j < it.end; j += 16) {
      const Halves lanes = lanes_before(it.end - j);
      for (int64_t u = 0; u < n; ++u) {
        const Halves score = score16_avx2(coef + u * R, cos, sin, it.stride, j);
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
  void scan_bounded_avx2(const Item& it, int64_t n, const float* coef, const float* cos,
                         const float* sin, const double* refs, float* sums,
                         Partial* out) const {
    const int64_t R = 1 + 2 * s.bands;
    for (int64_t u = 0; u < 16 * n; u += 8) _mm256_storeu_ps(sums + u, _mm256_setzero_ps());
    for (int64_t j = it.begin; j < it.end; j += 16) {
      const Halves lanes = lanes_before(it.end - j);
      for (int64_t u = 0; u < n; ++u) {
        const Halves score = score16_avx2(coef + u * R, cos, sin, it.stride, j);
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
#endif

#if defined(__AVX512F__)
  // The same for float with whole vectors of 8 doubles: each group of 16 rotary dimensions
  // gives 8 bands (8 dimensions, 4), its products' adjacent pairs summed (the same sums as
  // above) and packed.
  void coefficients_avx512(int64_t t, float* coef, double* amp, double* kd) const {
    const int64_t D = s.head_dim, B = s.bands, R = 1 + 2 * B, width = s.heads * D;
    const __m512d f = _mm512_set1_pd(s.scale * kLog2e);
    int64_t loaded = -1;
    for (int64_t u = 0; u < count; ++u) {
      const int64_t h = (qh0 + u) / s.nq;
      if (h != loaded) {
        const T* kv = key_table + t * width + h * D;
        for (int64_t x = 0; x < D; x += 8)
          _mm512_storeu_pd(kd + x, _mm512_cvtps_pd(_mm256_loadu_ps(kv + x)));
        loaded = h;
      }
      const double* qa = qd.data() + u * D;
      const double* qb = qs.data() + u * D;
      float* c = coef + u * R;
      __m512d plain = _mm512_setzero_pd();
      for (int64_t x = 2 * B; x < D; x += 8)
        plain = _mm512_add_pd(plain, _mm512_mul_pd(_mm512_loadu_pd(qa + x), _mm512_loadu_pd(kd + x)));
      c[0] = float(_mm512_reduce_add_pd(plain) * (s.scale * kLog2e));
      __m256 amplitude = _mm256_setzero_ps();
      int64_t x = 0;
      // 16 rotary dimensions at a time: 8 bands, each pair's sum from the even and the odd
      // products of two vectors.
      const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
      const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
      auto pair_sums = [&](const double* qv, __m512d k0, __m512d k1) {
        const __m512d p0 = _mm512_mul_pd(_mm512_loadu_pd(qv + x), k0);
        const __m512d p1 = _mm512_mul_pd(_mm512_loadu_pd(qv + x + 8), k1);
        return _mm512_cvtpd_ps(_mm512_mul_pd(
            _mm512_add_pd(_mm512_permutex2var_pd(p0, even, p1), _mm512_permutex2var_pd(p0, odd, p1)), f));
      };
      for (; x + 16 <= 2 * B; x += 16) {
        const __m512d k0 = _mm512_loadu_pd(kd + x), k1 = _mm512_loadu_pd(kd + x + 8);
        const __m256 cc = pair_sums(qa, k0, k1), cs = pair_sums(qb, k0, k1);
        _mm256_storeu_ps(c + 1 + x / 2, cc);
        _mm256_storeu_ps(c + 1 + B + x / 2, cs);
        amplitude = _mm256_add_ps(amplitude,
                                  _mm256_sqrt_ps(_mm256_fmadd_ps(cc, cc, _mm256_mul_ps(cs, cs))));
      }
      if (x < 2 * B) {  // 4 bands left: lanes 0, 2, 4, 6 hold the pairs' sums, packed
        const __m512d k = _mm512_loadu_pd(kd + x);
        const __m512d pc = _mm512_mul_pd(_mm512_loadu_pd(qa + x), k);
        const __m512d ps = _mm512_mul_pd(_mm512_loadu_pd(qb + x), k);
        const __m512d sc = _mm512_add_pd(pc, _mm512_permute_pd(pc, 0x55));
        const __m512d ss = _mm512_add_pd(ps, _mm512_permute_pd(ps, 0x55));
        const __m256 cc = _mm512_cvtpd_ps(_mm512_maskz_compress_pd(0x55, _mm512_mul_pd(sc, f)));
        const __m256 cs = _mm512_cvtpd_ps(_mm512_maskz_compress_pd(0x55, _mm512_mul_pd(ss, f)));
        _mm256_mask_storeu_ps(c + 1 + x / 2, 0x0F, cc);
        _mm256_mask_storeu_ps(c + 1 + B + x / 2, 0x0F, cs);
        amplitude = _mm256_add_ps(amplitude,
                                  _mm256_sqrt_ps(_mm256_fmadd_ps(cc, cc, _mm256_mul_ps(cs, cs))));
      }
      amp[u] = _mm512_reduce_add_ps(_mm512_zextps256_ps512(amplitude));
    }
  }
#endif

  // A bound of each query-head's scores over the token's keys, from |a cos + b sin| <=
  // sqrt(a^2 + b^2): c[0] plus the amplitude. Replaces each c[0] by c[0] - bound =
  // -amplitude (rounded to float), and sets refs[u] = c[0] - c'[0] exactly, the reference
  // that stands for, so that 2^(score - reference) <= 1 (up to rounding) for every key.
  // False (coef unchanged) where some amplitude exceeds kMaxBoundGap: terms down to
  // 2^-(2 * kMaxBoundGap) stay normal floats, but a looser bound could leave a token's
  // whole sum among the subnormals.
  bool bounded_references(T* coef, const double* amp, double* refs) const {
    constexpr double kMaxBoundGap = 48;
    const int64_t R = 1 + 2 * s.bands;
    for (int64_t u = 0; u < count; ++u)
      if (!(amp[u] <= kMaxBoundGap)) return false;
    for (int64_t u = 0; u < count; ++u) {
      const T shifted = T(-amp[u]);
      refs[u] = double(coef[u * R]) - double(shifted);
      coef[u * R] = shifted;
    }
    return true;
  }

  // Whether the scans of a token's keys take bounded references (the vector scans of
  // float, where every amplitude allows it). If so, bounded_references has shifted each
  // c[0] of coef and written the references after the amplitudes. bounds: [2 * count]
  // doubles, the amplitudes (from coefficients) and then the references.
  bool bounded(T* coef, double* bounds) const {
#if defined(__AVX512DQ__) || (defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__))
    if constexpr (sizeof(T) == 4)
      return s.bands > 0 && bounded_references(coef, bounds, bounds + count);
#endif
    (void)coef;
    (void)bounds;
    return false;
  }

  // The partials of n query-heads (coef's n rows; refs: their references where bounded,
  // else null) over the keys [it.begin, it.end) of the rows cos and sin. state: [2 * 16 * n].
  void scan(const Item& it, int64_t n, const T* cos, const T* sin, const T* coef,
            const double* refs, T* state, Partial* out) const {
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4) {
#if defined(__AVX512DQ__)
      if (refs) {
        if (s.bands == 8) return scan_bounded_avx512<8>(it, n, coef, cos, sin, refs, state, out);
        if (s.bands == 4) return scan_bounded_avx512<4>(it, n, coef, cos, sin, refs, state, out);
        return scan_bounded_avx512<0>(it, n, coef, cos, sin, refs, state, out);
      }
#endif
      if (s.bands == 8) return scan_avx512<8>(it, n, coef, cos, sin, state, out);
      if (s.bands == 4) return scan_avx512<4>(it, n, coef, cos, sin, state, out);
      return scan_avx512<0>(it, n, coef, cos, sin, state, out);
    }
#elif defined(__AVX2__) && defined(__FMA__)
    if constexpr (sizeof(T) == 4) {
      if (refs) return scan_bounded_avx2(it, n, coef, cos, sin, refs, state, out);
      return scan_avx2(it, n, coef, cos, sin, state, out);
    }
#endif
    (void)state;
    (void)refs;
    scan_portable(it, n, coef, cos, sin, out);
  }

  // Adds to out (the tile's partials of token t) the partials of query i's own keys
  // [begin, end) of t (TokenAttentionShape::own_group), scanned for the query's heads with
  // the coefficients and references of the token's scan (coef, refs): so the own keys cost
  // their scan alone. own: the query-heads of query i, their coefficient rows, references
  // and partials.
  struct OwnScratch {
    std::vector<int64_t> u;
    std::vector<T> coef;
    std::vector<double> refs;
    std::vector<Partial> parts;
  };
  void add_own_keys(int64_t t, int64_t i, int64_t begin, int64_t end, const T* coef,
                    const double* refs, T* state, OwnScratch& own, Partial* out) const {
    const int64_t R = 1 + 2 * s.bands;
    own.u.clear();
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t u = h * s.nq + i - qh0;
      if (u >= 0 && u < count) own.u.push_back(u);
    }
    const int64_t n = int64_t(own.u.size());
    if (n == 0 || begin == end) return;
    own.coef.resize(size_t(n * R));
    own.refs.resize(size_t(n));
    own.parts.resize(size_t(n));
    for (int64_t k = 0; k < n; ++k) {
      const int64_t u = own.u[size_t(k)];
      std::copy(coef + u * R, coef + (u + 1) * R, own.coef.begin() + k * R);
      if (refs) own.refs[size_t(k)] = refs[u];
    }
    const int64_t rows = s.bands * s.own_stride;
    scan(Item{t, begin, end, s.own_stride}, n, static_cast<const T*>(s.own_cos) + i * rows,
         static_cast<const T*>(s.own_sin) + i * rows, own.coef.data(),
         refs ? own.refs.data() : nullptr, state, own.parts.data());
    for (int64_t k = 0; k < n; ++k) add_partial(out[own.u[size_t(k)]], own.parts[size_t(k)]);
  }

  // a becomes the partial of a's keys and b's together.
  static void add_partial(Partial& a, const Partial& b) {
    if (!(b.sum > 0)) return;
    if (!(a.sum > 0)) {
      a = b;
      return;
    }
    if (a.ref == b.ref) {  // both bounded references: no exp2, which costs more than the scan
      a.sum += b.sum;
      return;
    }
    const double ref = std::max(a.ref, b.ref);
    a.sum = a.sum * std::exp2(a.ref - ref) + b.sum * std::exp2(b.ref - ref);
    a.ref = ref;
  }
};

// The first of keys [begin, end) (positions in increasing order) at a position >= first;
// end if none. Before the context's end every key is, which needs no search.
int64_t first_visible(const int64_t* pos, int64_t begin, int64_t end, int64_t first) {
  if (begin == end || pos[begin] >= first) return begin;
  return std::lower_bound(pos + begin, pos + end, first) - pos;
}

// The query-heads [qh0, qh0 + count) of example `example` (TokenAttentionShape::batch).
struct TileSpan {
  int64_t example, qh0, count;
};

// The spans of one pass over the keys: up to kTile query-heads in all, so that several
// examples' few query-heads (decoding's samples, one query each) share a pass: one
// parallel region for all of them, not one per example.
std::vector<std::vector<TileSpan>> passes(int64_t batch, int64_t per_example) {
  std::vector<std::vector<TileSpan>> out;
  int64_t b = 0, qh = 0;
  while (b < batch && per_example > 0) {
    std::vector<TileSpan> pass;
    int64_t total = 0;
    while (b < batch && total < kTile) {
      const int64_t n = std::min(kTile - total, per_example - qh);
      pass.push_back(TileSpan{b, qh, n});
      total += n;
      qh += n;
      if (qh == per_example) {
        ++b;
        qh = 0;
      }
    }
    out.push_back(std::move(pass));
  }
  return out;
}

}  // namespace

template <typename T>
bool CpuOps<T>::token_attention_forward(const TokenAttentionShape& s, const T* q,
                                        const T* key_table, const T* value_table,
                                        const T* cos, const T* sin, T* o, T* lse) {
  const int64_t H = s.heads, D = s.head_dim, V = s.vocab, width = H * D, R = 1 + 2 * s.bands;
  const int64_t QH = s.nq * H, rows = s.bands * s.stride;  // rows: an example's cos (or sin)
  if (s.own_group && s.batch != 1) return false;
  // Each example's tokens' visible keys, in items: the shared ones, then each query's own
  // ones (a token's first item takes the first kItemKeys of each, and items of their own
  // the rest), all of a token's items consecutive. A token that only the own keys have
  // gets an empty first item.
  std::vector<std::vector<Item>> items(static_cast<size_t>(s.batch));
  std::vector<std::pair<int64_t, int64_t>> own_ranges;  // batch 1: Item::own_at
  const int64_t first = s.first_position_at ? *s.first_position_at : s.first_position;
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t* group = s.group + b * (V + 1);
    const int64_t* pos = s.pos + b * s.stride;
    std::vector<Item>& its = items[size_t(b)];
    for (int64_t t = 0; t < V; ++t) {
      const int64_t* lo = pos + first_visible(pos, group[t], group[t + 1], first);
      const size_t before = its.size();
      for (int64_t k = lo - pos; k < group[t + 1]; k += kItemKeys)
        its.push_back(Item{t, k, std::min(k + kItemKeys, group[t + 1]), s.stride});
      if (!s.own_group) continue;
      const int64_t own_at = int64_t(own_ranges.size());
      bool any_own = false;
      for (int64_t i = 0; i < s.nq; ++i) {
        const int64_t* og = s.own_group + i * (V + 1);
        const int64_t* op = s.own_pos + i * s.own_stride;
        const int64_t begin = first_visible(op, og[t], og[t + 1], first);
        own_ranges.emplace_back(begin, std::min(begin + kItemKeys, og[t + 1]));
        any_own = any_own || begin < og[t + 1];
      }
      if (!any_own) {
        own_ranges.resize(size_t(own_at));
        continue;
      }
      if (its.size() == before) its.push_back(Item{t, group[t + 1], group[t + 1], s.stride});
      its[before].own_at = own_at;
      for (int64_t i = 0; i < s.nq; ++i) {
        const int64_t end = s.own_group[i * (V + 1) + t + 1];
        for (int64_t k = own_ranges[size_t(own_at + i)].second; k < end; k += kItemKeys) {
          its.push_back(Item{t, k, std::min(k + kItemKeys, end), s.own_stride});
          its.back().own_query = i;
        }
      }
    }
  }
  const int threads = omp_get_max_threads();
  for (const std::vector<TileSpan>& pass : passes(s.batch, QH)) {
    std::vector<Tile<T>> tiles;
    for (const TileSpan& sp : pass)
      tiles.emplace_back(s, q + sp.example * s.nq * width, key_table, sp.qh0, sp.count);
    // The work: each tile with each item of its example. Each unit's partial softmax per
    // query-head of its tile from part_at[unit]: every one written by its unit, none to be
    // cleared, and the units combined in their order whatever thread scanned them (the
    // same bits at any thread count).
    struct Unit {
      int64_t tile, item;
    };
    std::vector<Unit> units;
    std::vector<int64_t> part_at{0}, units_of_tile{0};
    int64_t widest = 0;  // of the pass's tiles
    for (size_t x = 0; x < pass.size(); ++x) {
      widest = std::max(widest, pass[x].count);
      for (size_t i = 0; i < items[size_t(pass[x].example)].size(); ++i) {
        units.push_back(Unit{int64_t(x), int64_t(i)});
        part_at.push_back(part_at.back() + pass[x].count);
      }
      units_of_tile.push_back(int64_t(units.size()));
    }
    const int64_t U = int64_t(units.size());
    // Kept from call to call: on a VM a fresh page can cost 10 us at first touch, and
    // several samples' steps need more than malloc keeps off mmap.
    ws_.prepare(1);
    Partial* const parts = reinterpret_cast<Partial*>(
        ws_.get(ScratchSlot::kTokenParts, 0, double(part_at.back()) * sizeof(Partial)));
#pragma omp parallel num_threads(threads)
    {
      std::vector<T> coef(size_t(widest * R)), state(size_t(2 * 16 * widest));
      std::vector<double> bounds(size_t(2 * widest)), scratch(size_t(3 * D));
      typename Tile<T>::OwnScratch own;
#pragma omp for schedule(dynamic, 1)
      for (int64_t x = 0; x < U; ++x) {
        const Tile<T>& tile = tiles[size_t(units[size_t(x)].tile)];
        const int64_t b = pass[size_t(units[size_t(x)].tile)].example;
        const Item& it = items[size_t(b)][size_t(units[size_t(x)].item)];
        Partial* out = parts + part_at[size_t(x)];
        tile.coefficients(it.token, coef.data(), bounds.data(), scratch.data());
        const double* refs =
            tile.bounded(coef.data(), bounds.data()) ? bounds.data() + tile.count : nullptr;
        if (it.own_query >= 0) {  // one query's own keys alone
          std::fill(out, out + tile.count, Partial{0, 0});
          tile.add_own_keys(it.token, it.own_query, it.begin, it.end, coef.data(), refs,
                            state.data(), own, out);
          continue;
        }
        tile.scan(it, tile.count, cos + b * rows, sin + b * rows, coef.data(), refs,
                  state.data(), out);
        for (int64_t i = 0; it.own_at >= 0 && i < s.nq; ++i) {
          const auto& [begin, end] = own_ranges[size_t(it.own_at + i)];
          tile.add_own_keys(it.token, i, begin, end, coef.data(), refs, state.data(), own, out);
        }
      }
    }
    // Per query-head: the tokens' weights against the overall maximum, summed over their
    // items (consecutive, in key order), then the values.
    std::vector<int64_t> span_at{0};  // the pass's query-heads: span x's from span_at[x]
    for (const TileSpan& sp : pass) span_at.push_back(span_at.back() + sp.count);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t xu = 0; xu < span_at.back(); ++xu) {
      const int64_t x = std::upper_bound(span_at.begin(), span_at.end(), xu) - span_at.begin() - 1;
      const TileSpan& sp = pass[size_t(x)];
      const int64_t u = xu - span_at[size_t(x)], qh = sp.qh0 + u, h = qh / s.nq, i = qh % s.nq;
      const std::vector<Item>& its = items[size_t(sp.example)];
      const int64_t u0 = units_of_tile[size_t(x)], u1 = units_of_tile[size_t(x) + 1];
      auto part = [&](int64_t unit) -> const Partial& {
        return parts[size_t(part_at[size_t(unit)] + u)];
      };
      double top = -std::numeric_limits<double>::infinity();
      for (int64_t y = u0; y < u1; ++y)
        if (part(y).sum > 0) top = std::max(top, part(y).ref);
      std::vector<double> out(size_t(D), 0.0);
      double total = 0;
      if (top > -std::numeric_limits<double>::infinity())
        for (int64_t y = u0; y < u1;) {
          const int64_t t = its[size_t(y - u0)].token;
          double w = 0;
          for (; y < u1 && its[size_t(y - u0)].token == t; ++y)
            if (part(y).sum > 0) w += part(y).sum * std::exp2(part(y).ref - top);
          if (w == 0) continue;
          total += w;
          const T* vt = value_table + t * width + h * D;
          for (int64_t c = 0; c < D; ++c) out[size_t(c)] += w * double(vt[c]);
        }
      T* oq = o + (sp.example * s.nq + i) * width + h * D;
      for (int64_t c = 0; c < D; ++c) oq[c] = total > 0 ? T(out[size_t(c)] / total) : T(0);
      lse[(sp.example * H + h) * s.nq + i] =
          total > 0 ? T(top / kLog2e + std::log(total)) : -std::numeric_limits<T>::infinity();
    }
  }
  return true;
}

#define PAR_INSTANTIATE(T)                                                                  \
  template bool CpuOps<T>::token_attention_forward(const TokenAttentionShape&, const T*,    \
                                                   const T*, const T*, const T*, const T*, \
                                                   T*, T*);
PAR_INSTANTIATE(float)
PAR_INSTANTIATE(double)
#undef PAR_INSTANTIATE

}  // namespace par::cpu
