// Decoding's cross-attention for one query over keys that are token-table rows rotated at
// their positions (core/ops.h, TokenAttentionShape).
//
// For one head, rotary pair (a, b) of band k rotates a key by the angle of its position:
// q . R(p) k = cos(p) (q_a k_a + q_b k_b) + sin(p) (q_b k_a - q_a k_b), and the unrotated
// dimensions add q . k. So with per-token coefficients computed once per query
//   coef[t] = (sum of unrotated q.k, then q_a k_a + q_b k_b per band, then q_b k_a - q_a k_b)
// a key's score is coef[tokens[j]] . (1, cos_j, sin_j): 1 + 2*bands multiply-adds per
// head instead of head_dim, reading a token id and the position's cos/sin instead of the
// key row. The values are summed per token first (weights of equal tokens add up) and
// multiplied by the value table once. Same arithmetic as attending over materialized keys,
// in another order: equal up to rounding.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/fast_exp.h"

namespace par::cpu {

namespace {

// One pass over the keys, each thread on a fixed slice, in chunks small enough that their
// scores stay in L1: score the chunk, and when its maximum exceeds the running one, rescale
// the thread's histogram (rare once the maximum has settled); then add exp(score - max) to
// the row of each key's token. kH is the head count, or 0 for any.
template <typename T>
struct TokenScan {
  static constexpr int64_t kChunk = 512;
  const TokenAttentionShape& s;
  const T* coef;      // [vocab, 1 + 2*bands, heads]
  const T* cos;
  const T* sin;
  T* thread_max;      // [threads, heads]: each thread's running maximum
  double* hist;       // [threads, vocab, heads]: sums of exp(score - that thread's maximum)

  template <int kH>
  void run(int threads) const {
    const int64_t H = kH > 0 ? kH : s.heads;
#pragma omp parallel num_threads(threads)
    {
      const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t lo = s.n * tid / nt, hi = s.n * (tid + 1) / nt;
      scan<kH>(lo, hi, thread_max + tid * H, hist + tid * s.vocab * H);
    }
  }

  // Locals (not the member pointers, which the compiler must assume alias) hold a key's
  // heads, so they stay in vector registers.
  template <int kH>
  void scan(int64_t lo, int64_t hi, T* max_out, double* __restrict ht) const {
    const int64_t H = kH > 0 ? kH : s.heads, B = s.bands, R = 1 + 2 * B, V = s.vocab;
    std::vector<T> buffer(size_t(kChunk * H + 2 * H));
    T* __restrict sc = buffer.data();
    T* __restrict mx = sc + kChunk * H;
    T* __restrict cmx = mx + H;
    int32_t tok[kChunk];
    for (int64_t h = 0; h < H; ++h) mx[h] = -std::numeric_limits<T>::infinity();
    const T* __restrict cf = coef;
    for (int64_t c0 = lo; c0 < hi; c0 += kChunk) {
      const int64_t c1 = std::min(hi, c0 + kChunk);
      for (int64_t h = 0; h < H; ++h) cmx[h] = -std::numeric_limits<T>::infinity();
      int64_t count = 0;
      for (int64_t j = c0; j < c1; ++j) {
        if (s.keep && !s.keep[j]) continue;
        const int32_t t = s.tokens[j];
        tok[count] = t;
        const T* __restrict ct = cf + int64_t(t) * R * H;
        const T* __restrict cj = cos + j * B;
        const T* __restrict sj = sin + j * B;
        T* __restrict a = sc + count * H;
        if constexpr (kH > 0) {
          // GCC/Clang vector extensions: one register (or a few) holds all heads, so the
          // compiler cannot vectorize across bands and reduce horizontally instead.
          typedef T Vec __attribute__((vector_size(sizeof(T) * kH)));
          Vec v, ca, cb, m;
          std::memcpy(&v, ct, sizeof v);
          for (int64_t k = 0; k < B; ++k) {
            std::memcpy(&ca, ct + (1 + k) * kH, sizeof ca);
            std::memcpy(&cb, ct + (1 + B + k) * kH, sizeof cb);
            v += cj[k] * ca + sj[k] * cb;
          }
          std::memcpy(a, &v, sizeof v);
          std::memcpy(&m, cmx, sizeof m);
          m = v > m ? v : m;
          std::memcpy(cmx, &m, sizeof m);
        } else {
          for (int64_t h = 0; h < H; ++h) a[h] = ct[h];
          for (int64_t k = 0; k < B; ++k) {
            const T cv = cj[k], sv = sj[k];
            for (int64_t h = 0; h < H; ++h)
              a[h] += cv * ct[(1 + k) * H + h] + sv * ct[(1 + B + k) * H + h];
          }
          for (int64_t h = 0; h < H; ++h) cmx[h] = std::max(cmx[h], a[h]);
        }
        ++count;
      }
      if (count == 0) continue;
      for (int64_t h = 0; h < H; ++h) {
        if (cmx[h] <= mx[h]) continue;
        if (mx[h] > -std::numeric_limits<T>::infinity()) {
          const double f = std::exp(double(mx[h]) - double(cmx[h]));
          for (int64_t t = 0; t < V; ++t) ht[t * H + h] *= f;
        }
        mx[h] = cmx[h];
      }
      for (int64_t i = 0; i < count * H; i += H)
        for (int64_t h = 0; h < H; ++h) sc[i + h] = exp_t<T>(sc[i + h] - mx[h]);
      for (int64_t i = 0; i < count; ++i) {
        double* __restrict row = ht + int64_t(tok[i]) * H;
        const T* __restrict e = sc + i * H;
        if constexpr (kH > 0) {
          typedef T Vec __attribute__((vector_size(sizeof(T) * kH)));
          typedef double VecD __attribute__((vector_size(sizeof(double) * kH)));
          Vec ev;
          VecD rv;
          std::memcpy(&ev, e, sizeof ev);
          std::memcpy(&rv, row, sizeof rv);
          rv += __builtin_convertvector(ev, VecD);
          std::memcpy(row, &rv, sizeof rv);
        } else {
          for (int64_t h = 0; h < H; ++h) row[h] += double(e[h]);
        }
      }
    }
    for (int64_t h = 0; h < H; ++h) max_out[h] = mx[h];
  }
};

}  // namespace

template <typename T>
bool CpuOps<T>::token_attention_forward(const TokenAttentionShape& s, const T* q,
                                        const T* key_table, const T* value_table,
                                        const T* cos, const T* sin, T* o) {
  const int64_t H = s.heads, D = s.head_dim, B = s.bands, V = s.vocab;
  const int64_t width = H * D, R = 1 + 2 * B;
  // coef[t][r][h], scaled.
  std::vector<T> coef(size_t(V * R * H));
  for (int64_t t = 0; t < V; ++t) {
    const T* kt = key_table + t * width;
    T* ct = coef.data() + t * R * H;
    for (int64_t h = 0; h < H; ++h) {
      const T* qh = q + h * D;
      const T* kh = kt + h * D;
      double plain = 0;
      for (int64_t i = 2 * B; i < D; ++i) plain += double(qh[i]) * kh[i];
      ct[h] = T(plain * s.scale);
      for (int64_t k = 0; k < B; ++k) {
        const double qa = qh[2 * k], qb = qh[2 * k + 1], ka = kh[2 * k], kb = kh[2 * k + 1];
        ct[(1 + k) * H + h] = T((qa * ka + qb * kb) * s.scale);
        ct[(1 + B + k) * H + h] = T((qb * ka - qa * kb) * s.scale);
      }
    }
  }

  const int threads = omp_get_max_threads();
  std::vector<T> thread_max(size_t(threads * H), -std::numeric_limits<T>::infinity());
  // Per-thread sums of the weights of each token, per head, relative to the thread's maximum.
  std::vector<double> hist(size_t(threads * V * H), 0.0);
  const TokenScan<T> scan{s, coef.data(), cos, sin, thread_max.data(), hist.data()};
  switch (H) {  // a compile-time head count keeps a key's heads in registers
    case 1: scan.template run<1>(threads); break;
    case 2: scan.template run<2>(threads); break;
    case 4: scan.template run<4>(threads); break;
    case 8: scan.template run<8>(threads); break;
    case 16: scan.template run<16>(threads); break;
    default: scan.template run<0>(threads); break;
  }

  // Bring the threads' histograms to the common maximum and sum them in thread order
  // (deterministic), then apply the value table.
  std::vector<double> sum(size_t(V * H), 0.0), total(size_t(H), 0.0);
  for (int64_t h = 0; h < H; ++h) {
    T m = -std::numeric_limits<T>::infinity();
    for (int u = 0; u < threads; ++u) m = std::max(m, thread_max[size_t(u * H + h)]);
    for (int u = 0; u < threads; ++u) {
      const T mu = thread_max[size_t(u * H + h)];
      if (mu == -std::numeric_limits<T>::infinity()) continue;  // saw no visible key
      const double f = std::exp(double(mu) - double(m));
      const double* ht = hist.data() + u * V * H;
      for (int64_t t = 0; t < V; ++t) sum[size_t(t * H + h)] += f * ht[t * H + h];
    }
  }
  for (int64_t t = 0; t < V; ++t)
    for (int64_t h = 0; h < H; ++h) total[size_t(h)] += sum[size_t(t * H + h)];
  std::vector<double> acc(size_t(width), 0.0);
  for (int64_t t = 0; t < V; ++t) {
    const T* vt = value_table + t * width;
    for (int64_t h = 0; h < H; ++h) {
      const double w = sum[size_t(t * H + h)];
      if (w == 0) continue;
      for (int64_t i = 0; i < D; ++i) acc[size_t(h * D + i)] += w * vt[h * D + i];
    }
  }
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < D; ++i)
      o[h * D + i] = total[size_t(h)] > 0 ? T(acc[size_t(h * D + i)] / total[size_t(h)]) : T(0);
  return true;
}

#define PAR_INSTANTIATE(T)                                                                  \
  template bool CpuOps<T>::token_attention_forward(const TokenAttentionShape&, const T*,    \
                                                   const T*, const T*, const T*, const T*, \
                                                   T*);
PAR_INSTANTIATE(float)
PAR_INSTANTIATE(double)
#undef PAR_INSTANTIATE

}  // namespace par::cpu
