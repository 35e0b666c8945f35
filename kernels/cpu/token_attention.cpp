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
// scan has no maximum to track), else a running maximum per vector lane. The scans of
// floats, per instruction set, are in token_scan_*.cpp (token_scan.h); scan_portable below
// does any element type one key at a time.
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
#include "kernels/cpu/token_scan.h"

namespace par::cpu {

namespace {

constexpr double kLog2e = 1.4426950408889634;
constexpr int64_t kTile = 128;       // query-heads per pass over the keys: their state in L1
constexpr int64_t kItemKeys = 2048;  // keys per work item

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
#if defined(__AVX512F__) && defined(__AVX512VL__)
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

#if defined(__AVX512F__) && defined(__AVX512VL__)  // VL: its 256-bit masked stores
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
    if constexpr (sizeof(T) == 4 && kScanTakesBoundedReferences)
      return s.bands > 0 && bounded_references(coef, bounds, bounds + count);
    (void)coef;
    (void)bounds;
    return false;
  }

  // The partials of n query-heads (coef's n rows; refs: their references where bounded,
  // else null) over the keys [it.begin, it.end) of the rows cos and sin. state: [2 * 16 * n].
  void scan(const Item& it, int64_t n, const T* cos, const T* sin, const T* coef,
            const double* refs, T* state, Partial* out) const {
    if constexpr (sizeof(T) == 4)
      if (scan_token_keys(s.bands, ScanKeys{cos, sin, it.stride, it.begin, it.end}, n, coef,
                          refs, state, out))
        return;
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

// The scan takes a query's own keys with the coefficients of its shared ones.
template <typename T>
bool CpuOps<T>::token_attention_takes_own_keys() {
  return true;
}

#define PAR_INSTANTIATE(T)                                                                  \
  template bool CpuOps<T>::token_attention_takes_own_keys();                                \
  template bool CpuOps<T>::token_attention_forward(const TokenAttentionShape&, const T*,    \
                                                   const T*, const T*, const T*, const T*, \
                                                   T*, T*);
PAR_INSTANTIATE(float)
PAR_INSTANTIATE(double)
#undef PAR_INSTANTIATE

}  // namespace par::cpu
