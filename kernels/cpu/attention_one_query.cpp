// One query per example over a few keys (kernels/cpu/attention_one_query.h).
//
// Decoding with K samples attends each sample's new latent over its block of M = 256
// cached latents (rows not filled yet at a far position): batch K, one query, 8 heads of
// 32. The blocked path spends a task per (example, head) on sgemm calls of one row and
// scores whole key blocks, past the causal limit too. Here a task takes a whole example:
// the scores of every head, the softmax of each head's scores, then the sum of the value
// rows. The keys a query sees are a prefix by position (k_pos is non-decreasing), less
// those with k_keep == 0: the rows past the prefix and the unkept ones are not read at
// all. Float heads of whole vectors go through AVX-512 loops over groups of 16 keys, each
// group's rows read for all heads while they sit in L1. Examples are split over the
// threads when there are enough keys, and with fewer examples than threads their heads
// too (one sample's step).
//
// Same results as the blocked path up to rounding: one max per head over each chunk of
// up to 4,096 keys instead of a running one, and the products in another order. The
// blocked path gathers key blocks (a copy per block and head) and took 0.98 ms per step
// on 4 samples' own keys after 4,000 tokens each on cpu-131k, where this kernel reads them
// in place.
#include "kernels/cpu/attention_one_query.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/attention_blocks.h"
#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/fast_exp.h"
#include "kernels/cpu/parallel_for.h"

namespace par::cpu {

using attention_detail::row_max;

namespace {

// Each working thread's buffers: a chunk of the kept visible keys of its example and their
// scores, [heads][keys] (each head's scores contiguous for the softmax); past one chunk, each
// head's running maximum and sum, and a chunk's sum of values.
template <typename T>
struct Buffers {
  int64_t* keys;
  T* scores;
  T *max, *sum;  // [heads]: of the one chunk, or the running ones
  T *chunk_max = nullptr, *chunk_sum = nullptr, *part = nullptr;  // past one chunk
  void carve(Carver& c, const AttentionShape& s) {
    const int64_t n = std::min(s.nk, kOneQueryChunkKeys);
    keys = c.take<int64_t>(n);
    scores = c.take<T>(s.heads * n);
    max = c.take<T>(s.heads);
    sum = c.take<T>(s.heads);
    if (s.nk > kOneQueryChunkKeys) {
      chunk_max = c.take<T>(s.heads);
      chunk_sum = c.take<T>(s.heads);
      part = c.take<T>(s.heads * s.head_dim);
    }
  }
};

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// The two passes over the keys, for any T and head dimension: scores[h * n + t] =
// scale * q_h . k_h of the t-th kept key; o_h = sum over t of p[h * n + t] v_h.
template <typename T>
void score_keys(const AttentionShape& s, int64_t ld, const T* q, const T* k, const int64_t* keys,
                int64_t n, T* scores) {
  const int64_t H = s.heads, D = s.head_dim;
  const T scale = T(s.scale);
  for (int64_t t = 0; t < n; ++t) {
    const T* key = k + keys[t] * ld;
    for (int64_t h = 0; h < H; ++h) scores[h * n + t] = scale * dot(q + h * D, key + h * D, D);
  }
}

template <typename T>
void sum_values(const AttentionShape& s, int64_t ld, const T* v, const int64_t* keys, int64_t n,
                const T* p, T* o) {
  const int64_t H = s.heads, D = s.head_dim;
  std::fill(o, o + H * D, T(0));
  for (int64_t t = 0; t < n; ++t) {
    const T* value = v + keys[t] * ld;
    for (int64_t h = 0; h < H; ++h) {
      const T w = p[h * n + t];
      T* out = o + h * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] += w * value[h * D + d];
    }
  }
}

#if defined(__AVX512F__)
// Overloads for float heads of whole vectors, up to kMaxVectors of them. A dot product of a 32-wide head
// is two multiply-adds and a horizontal sum of 16 lanes; here the sums of 16 keys' products
// are taken together (sum16), so each key costs a few shuffles instead of a dozen.
constexpr int64_t kLanes = 16, kMaxVectors = 8;

bool vector_heads(const AttentionShape& s) {
  return s.head_dim % kLanes == 0 && s.head_dim <= kLanes * kMaxVectors;
}

// Lane i of the result: the sum of the lanes of a[i].
inline __m512 sum16(__m512 a[16]) {
  __m512 b[8], c[4];
  // Within each 128-bit lane: elements 0+2 and 1+3 of a pair of inputs.
  for (int i = 0; i < 8; ++i)
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                         _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  // Each 128-bit lane of c[i] holds the partial sums of inputs 4i .. 4i+3.
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
    c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // Then the four 128-bit lanes of each: pairs, and pairs of pairs.
  const __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88),
                                  _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
  const __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88),
                                  _mm512_shuffle_f32x4(c[2], c[3], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, 0x88), _mm512_shuffle_f32x4(d0, d1, 0xdd));
}

// NV vectors a head, known at compile time: the sums stay in registers. With the count
// known only at run time they went through the stack, and 4 examples' one query over 256
// cached latents (8 heads of 32, cpu-131k's decoding step) took 45 us instead of 29 on 2
// threads of a Zen 5.
template <int NV>
void score_keys_vectors(const AttentionShape& s, int64_t ld, const float* q, const float* k,
                        const int64_t* keys, int64_t n, float* scores) {
  const int64_t H = s.heads, D = s.head_dim;
  const __m512 scale = _mm512_set1_ps(float(s.scale));
  for (int64_t t0 = 0; t0 < n; t0 += kLanes) {
    const int64_t m = std::min(kLanes, n - t0);
    const float* rows[kLanes];  // a partial group repeats its first key, whose sums go unused
    for (int64_t i = 0; i < kLanes; ++i) rows[i] = k + keys[t0 + (i < m ? i : 0)] * ld;
    for (int64_t h = 0; h < H; ++h) {
      __m512 qv[NV], acc[kLanes];
      for (int c = 0; c < NV; ++c) qv[c] = _mm512_loadu_ps(q + h * D + c * kLanes);
      for (int64_t i = 0; i < kLanes; ++i) {
        const float* key = rows[i] + h * D;
        acc[i] = _mm512_mul_ps(qv[0], _mm512_loadu_ps(key));
        for (int c = 1; c < NV; ++c)
          acc[i] = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(key + c * kLanes), acc[i]);
      }
      _mm512_mask_storeu_ps(scores + h * n + t0, __mmask16((1u << m) - 1),
                            _mm512_mul_ps(sum16(acc), scale));
    }
  }
}

// f.template operator()<NV>() for the head's vector count NV = head_dim / 16, 1 to
// kMaxVectors.
template <typename F>
void with_vectors(int64_t nv, F&& f) {
  switch (nv) {
    case 1: return f.template operator()<1>();
    case 2: return f.template operator()<2>();
    case 3: return f.template operator()<3>();
    case 4: return f.template operator()<4>();
    case 5: return f.template operator()<5>();
    case 6: return f.template operator()<6>();
    case 7: return f.template operator()<7>();
    case 8: return f.template operator()<8>();
  }
}

void score_keys(const AttentionShape& s, int64_t ld, const float* q, const float* k,
                const int64_t* keys, int64_t n, float* scores) {
  if (!vector_heads(s)) return score_keys<float>(s, ld, q, k, keys, n, scores);
  with_vectors(s.head_dim / kLanes,
               [&]<int NV>() { score_keys_vectors<NV>(s, ld, q, k, keys, n, scores); });
}

// Groups of 16 value rows, every head of a group before the next one, as the scores. Even
// and odd keys into separate sums: one chain of dependent multiply-adds per head would
// wait out each one's latency. NV as in score_keys_vectors.
template <int NV>
void sum_values_vectors(const AttentionShape& s, int64_t ld, const float* v, const int64_t* keys,
                        int64_t n, const float* p, float* o) {
  const int64_t H = s.heads, D = s.head_dim;
  for (int64_t t0 = 0; t0 < n; t0 += kLanes) {
    const int64_t m = std::min(kLanes, n - t0);
    for (int64_t h = 0; h < H; ++h) {
      const float* ph = p + h * n + t0;
      __m512 even[NV], odd[NV];
      for (int c = 0; c < NV; ++c) {
        even[c] = t0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(o + h * D + c * kLanes);
        odd[c] = _mm512_setzero_ps();
      }
      int64_t i = 0;
      for (; i + 2 <= m; i += 2) {
        const float* a = v + keys[t0 + i] * ld + h * D;
        const float* b = v + keys[t0 + i + 1] * ld + h * D;
        const __m512 wa = _mm512_set1_ps(ph[i]), wb = _mm512_set1_ps(ph[i + 1]);
        for (int c = 0; c < NV; ++c) {
          even[c] = _mm512_fmadd_ps(wa, _mm512_loadu_ps(a + c * kLanes), even[c]);
          odd[c] = _mm512_fmadd_ps(wb, _mm512_loadu_ps(b + c * kLanes), odd[c]);
        }
      }
      if (i < m) {
        const float* a = v + keys[t0 + i] * ld + h * D;
        const __m512 wa = _mm512_set1_ps(ph[i]);
        for (int c = 0; c < NV; ++c)
          even[c] = _mm512_fmadd_ps(wa, _mm512_loadu_ps(a + c * kLanes), even[c]);
      }
      for (int c = 0; c < NV; ++c)
        _mm512_storeu_ps(o + h * D + c * kLanes, _mm512_add_ps(even[c], odd[c]));
    }
  }
}

void sum_values(const AttentionShape& s, int64_t ld, const float* v, const int64_t* keys,
                int64_t n, const float* p, float* o) {
  if (!vector_heads(s)) return sum_values<float>(s, ld, v, keys, n, p, o);
  with_vectors(s.head_dim / kLanes,
               [&]<int NV>() { sum_values_vectors<NV>(s, ld, v, keys, n, p, o); });
}
#endif

// Keys [j, visible) that example b keeps, up to kOneQueryChunkKeys of them, into keys (as rows of
// k); returns how many, and j past the last one taken.
inline int64_t next_chunk(const AttentionShape& s, int64_t b, int64_t visible, int64_t& j,
                          int64_t* keys) {
  const uint8_t* keep = s.k_keep ? s.k_keep + b * s.nk : nullptr;
  int64_t n = 0;
  for (; j < visible && n < kOneQueryChunkKeys; ++j)
    if (!keep || keep[j]) keys[n++] = b * s.nk + j;
  // Past the unkept keys that follow, so that j == visible says no chunk is left.
  while (keep && j < visible && !keep[j]) ++j;
  return n;
}

// Each head's scores [h * n, (h + 1) * n) to exp(score - the head's maximum), in place;
// the maxima into mx and the sums of the exps into sum.
template <typename T>
void exp_scores(int64_t heads, int64_t n, T* scores, T* mx, T* sum) {
  for (int64_t h = 0; h < heads; ++h) {
    T* p = scores + h * n;
    const T m = row_max(p, n);
    T total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < n; ++t) {
      p[t] = exp_t<T>(p[t] - m);
      total += p[t];
    }
    mx[h] = m;
    sum[h] = total;
  }
}

// Example b: o (its [heads * head_dim] row) and lse (its [heads]) from the keys
// [0, visible) that it keeps. s.heads may be some of the heads: q, k, v and o then start
// at the first one's columns, and ld is the rows' width. The keys go in chunks of up to
// kOneQueryChunkKeys, so that the scratch stays small at any key count (a sample's own keys, past
// N). One chunk normalizes its weights before summing the values; more are merged by their
// maxima as flash attention's blocks are, and o is normalized at the end.
template <typename T>
void one_example(const AttentionShape& s, int64_t ld, int64_t b, int64_t visible, const T* q,
                 const T* k, const T* v, T* o, T* lse, const Buffers<T>& w) {
  const int64_t H = s.heads, D = s.head_dim;
  int64_t j = 0;
  int64_t n = next_chunk(s, b, visible, j, w.keys);
  if (n == 0) {
    std::fill(o, o + H * D, T(0));
    std::fill(lse, lse + H, -std::numeric_limits<T>::infinity());
    return;
  }
  score_keys(s, ld, q, k, w.keys, n, w.scores);
  exp_scores<T>(H, n, w.scores, w.max, w.sum);
  if (j == visible) {  // one chunk
    for (int64_t h = 0; h < H; ++h) {
      lse[h] = w.max[h] + std::log(w.sum[h]);
      // The weights normalized here, so that the sum of values is the output.
      T* p = w.scores + h * n;
      const T inv = T(1) / w.sum[h];
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) p[t] *= inv;
    }
    sum_values(s, ld, v, w.keys, n, w.scores, o);
    return;
  }
  sum_values(s, ld, v, w.keys, n, w.scores, o);
  while ((n = next_chunk(s, b, visible, j, w.keys)) > 0) {
    score_keys(s, ld, q, k, w.keys, n, w.scores);
    exp_scores<T>(H, n, w.scores, w.chunk_max, w.chunk_sum);
    sum_values(s, ld, v, w.keys, n, w.scores, w.part);
    for (int64_t h = 0; h < H; ++h) {
      const T m = std::max(w.max[h], w.chunk_max[h]);
      const T before = exp_t<T>(w.max[h] - m), chunk = exp_t<T>(w.chunk_max[h] - m);
      w.max[h] = m;
      w.sum[h] = w.sum[h] * before + w.chunk_sum[h] * chunk;
      T* oh = o + h * D;
      const T* ph = w.part + h * D;
#pragma omp simd
      for (int64_t x = 0; x < D; ++x) oh[x] = oh[x] * before + ph[x] * chunk;
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    lse[h] = w.max[h] + std::log(w.sum[h]);
    const T inv = T(1) / w.sum[h];
    T* oh = o + h * D;
#pragma omp simd
    for (int64_t x = 0; x < D; ++x) oh[x] *= inv;
  }
}

// Below this many visible key elements (rows x width) in all examples together, one
// thread takes the call: 64 KiB of float keys (and as many values) take a few us, about
// a parallel region's cost. With 2^16, one sample's latent self-attention on cpu-131k
// (under 256 rows of 256 visible) mostly stayed on one thread: 0.094 ms per step on 2
// threads, 0.073 with 2^14 (`par bench --decode 1000 --profile`).
constexpr int64_t kParallelKeys = int64_t(1) << 14;

}  // namespace

bool one_query_attention_supported(const AttentionShape& s) { return s.nq == 1; }

template <typename T>
double one_query_attention_scratch_bytes(const AttentionShape& s) {
  return layout_bytes([&](Carver& c) { Buffers<T>().carve(c, s); });
}

template <typename T>
void one_query_attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v,
                                 T* o, T* lse, Workspace& ws) {
  const int64_t ld = s.heads * s.head_dim;
  // Keys at positions up to the query's: a prefix, k_pos being non-decreasing.
  const int64_t visible = std::upper_bound(s.k_pos, s.k_pos + s.nk, s.q_pos[0]) - s.k_pos;
  const int threads = omp_get_max_threads();
  ws.prepare(threads);
  // Tasks of an example's heads, in groups: whole examples when there are enough of them
  // for the threads, else the heads split, so that one sample's decoding step reads its
  // cache rows on every thread. Each head's arithmetic is the same either way.
  const bool parallel = s.batch * visible * ld >= kParallelKeys;
  const int64_t groups =
      parallel && s.batch < threads ? std::min<int64_t>(s.heads, (threads + s.batch - 1) / s.batch) : 1;
  parallel_for(s.batch * groups, parallel && s.batch * groups > 1, [&](int64_t task) {
    const int64_t b = task / groups, g = task % groups;
    const int64_t h0 = g * s.heads / groups, h1 = (g + 1) * s.heads / groups;
    AttentionShape part = s;
    part.heads = h1 - h0;
    Buffers<T> w;
    ws.carve(ScratchSlot::kAttention, omp_get_thread_num(), [&](Carver& c) { w.carve(c, s); });
    one_example(part, ld, b, visible, q + b * ld + h0 * s.head_dim, k + h0 * s.head_dim,
                v + h0 * s.head_dim, o + b * ld + h0 * s.head_dim, lse + b * s.heads + h0, w);
  });
}

#define PAR_INSTANTIATE(T)                                                                     \
  template double one_query_attention_scratch_bytes<T>(const AttentionShape&);                \
  template void one_query_attention_forward<T>(const AttentionShape&, const T*, const T*,     \
                                               const T*, T*, T*, Workspace&);
PAR_INSTANTIATE(float)
PAR_INSTANTIATE(double)
#undef PAR_INSTANTIATE

}  // namespace par::cpu
