// Blocked attention for the CPU backend, forward and backward.
//
// Scores are computed for one block of queries against one block of keys at a time, with
// a running max and sum per query (the flash-attention recurrence), so memory stays
// O(block^2) whatever the context length. Each (example, head) is an independent task;
// inside a task the matrix products are single-threaded sgemm calls on [block, head_dim]
// panels read straight out of the [rows, heads*head_dim] activations.
//
// Masking: keys a query may not see come in two kinds. Dropped or PAD keys (k_keep == 0)
// are removed up front: each example gets the list of its kept keys, and a block of that
// list that is not contiguous in memory is gathered into a small buffer -- which is also
// why cross-attend dropout saves work here. Causality (k_pos[j] <= q_pos[i]) then cuts
// each query's row of a block to a prefix, because kept keys are in position order.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/fast_exp.h"

namespace par::cpu {

namespace {

// The kept keys of each example, in position order. The lists live in a per-thread cache
// so that a training step does not allocate (and page-fault in) megabytes per call.
const std::vector<std::vector<int64_t>>& kept_keys(const AttentionShape& s) {
  static thread_local std::vector<std::vector<int64_t>> kept;
  if (int64_t(kept.size()) < s.batch) kept.resize(size_t(s.batch));
  for (int64_t b = 0; b < s.batch; ++b) {
    auto& list = kept[size_t(b)];
    list.resize(size_t(s.nk));
    const uint8_t* keep = s.k_keep ? s.k_keep + b * s.nk : nullptr;
    int64_t n = 0;
    for (int64_t j = 0; j < s.nk; ++j)
      if (!keep || keep[j]) list[size_t(n++)] = j;
    list.resize(size_t(n));
  }
  return kept;
}

// Scratch buffers of one thread, kept between calls (grow-only).
template <typename T>
struct Scratch {
  std::vector<T> a, b, c, d;
  static Scratch& get() {
    static thread_local Scratch s;
    return s;
  }
};

// Max of x[0..n), n >= 1. GCC 12 does not vectorize a float max reduction (even under
// `omp simd`), and in the softmax it costs as much as the exp, so the float version
// uses vector intrinsics where the build targets them.
template <typename T>
T row_max(const T* x, int64_t n) {
  T m = x[0];
  for (int64_t j = 1; j < n; ++j) m = m > x[j] ? m : x[j];
  return m;
}

#if defined(__AVX512F__)
// GCC 12's own _mm512_reduce_max_ps trips -Wmaybe-uninitialized inside its header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <>
float row_max<float>(const float* x, int64_t n) {
  __m512 v = _mm512_set1_ps(x[0]);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) v = _mm512_max_ps(v, _mm512_loadu_ps(x + j));
  float m = _mm512_reduce_max_ps(v);
  for (; j < n; ++j) m = m > x[j] ? m : x[j];
  return m;
}
#pragma GCC diagnostic pop
#elif defined(__AVX2__)
template <>
float row_max<float>(const float* x, int64_t n) {
  __m256 v = _mm256_set1_ps(x[0]);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) v = _mm256_max_ps(v, _mm256_loadu_ps(x + j));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  float m = lanes[0];
  for (int i = 1; i < 8; ++i) m = m > lanes[i] ? m : lanes[i];
  for (; j < n; ++j) m = m > x[j] ? m : x[j];
  return m;
}
#endif

template <typename T>
T* sized(std::vector<T>& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
  return v.data();
}

// One block of kept keys for one (example, head): pointers to its K and V panels (into
// the activations when the keys are contiguous, else into gathered copies) and the keys'
// positions.
template <typename T>
struct KeyBlock {
  const T* k = nullptr;
  const T* v = nullptr;
  int64_t ld = 0;
  int64_t first_row = 0;  // row of the first key in [batch*nk] when contiguous
  bool contiguous = true;
  int64_t size = 0;
  std::vector<int64_t> pos;
  std::vector<T> k_buf, v_buf;

  void load(const AttentionShape& s, const std::vector<int64_t>& kept, int64_t b, int64_t h,
            int64_t begin, int64_t count, const T* k_all, const T* v_all) {
    const int64_t ld_all = s.heads * s.head_dim, D = s.head_dim;
    size = count;
    pos.resize(size_t(count));
    for (int64_t j = 0; j < count; ++j) pos[j] = s.k_pos[kept[begin + j]];
    contiguous = kept[begin + count - 1] - kept[begin] == count - 1;
    first_row = b * s.nk + kept[begin];
    if (contiguous) {
      k = k_all + first_row * ld_all + h * D;
      v = v_all + first_row * ld_all + h * D;
      ld = ld_all;
      return;
    }
    k_buf.resize(size_t(count * D));
    v_buf.resize(size_t(count * D));
    for (int64_t j = 0; j < count; ++j) {
      const int64_t row = b * s.nk + kept[begin + j];
      std::memcpy(&k_buf[j * D], k_all + row * ld_all + h * D, size_t(D) * sizeof(T));
      std::memcpy(&v_buf[j * D], v_all + row * ld_all + h * D, size_t(D) * sizeof(T));
    }
    k = k_buf.data();
    v = v_buf.data();
    ld = D;
  }

  // Number of keys of this block that a query at position p sees (a prefix).
  int64_t visible(int64_t p) const {
    if (pos.back() <= p) return size;
    return std::upper_bound(pos.begin(), pos.end(), p) - pos.begin();
  }
};

// Whether a call has enough work to pay for waking the other threads: a decoding step's
// one latent over a few hundred cached ones does not (a parallel region costs more than it
// saves, and much more when another process holds a core).
bool worth_threads(const AttentionShape& s) {
  return s.batch * s.nq * s.nk * s.heads * s.head_dim >= (int64_t(1) << 20);
}

int64_t max_pos_of(const int64_t* p, int64_t n) {
  return *std::max_element(p, p + n);
}

}  // namespace

template <typename T>
void attention_forward_blocked(const AttentionShape& s, const T* q, const T* k, const T* v,
                               T* o, T* lse, const AttentionBlocking& blocking) {
  const int64_t D = s.head_dim, ld = s.heads * D;
  const int64_t QB = blocking.q_block, KB = blocking.k_block;
  const auto& kept = kept_keys(s);
  const int64_t q_tiles = (s.nq + QB - 1) / QB;
  const int64_t tasks = s.batch * s.heads * q_tiles;
  const T scale = T(s.scale);
  const T neg_inf = -std::numeric_limits<T>::infinity();

#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && worth_threads(s))
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t qt = task % q_tiles;
    const int64_t h = (task / q_tiles) % s.heads;
    const int64_t b = task / (q_tiles * s.heads);
    const int64_t i0 = qt * QB, bq = std::min(QB, s.nq - i0);
    const T* q_tile = q + (b * s.nq + i0) * ld + h * D;
    const int64_t* q_pos = s.q_pos + i0;
    const int64_t q_pos_max = max_pos_of(q_pos, bq);
    const auto& list = kept[size_t(b)];

    Scratch<T>& ws = Scratch<T>::get();
    T* scores = sized(ws.a, bq * KB);
    T* acc = sized(ws.b, bq * D);
    T* run_max = sized(ws.c, bq);
    T* run_sum = sized(ws.d, bq);
    std::fill(acc, acc + bq * D, T(0));
    std::fill(run_max, run_max + bq, neg_inf);
    std::fill(run_sum, run_sum + bq, T(0));
    static thread_local KeyBlock<T> blk;
    for (int64_t k0 = 0; k0 < int64_t(list.size()); k0 += KB) {
      if (s.k_pos[list[k0]] > q_pos_max) break;  // later blocks are later positions
      const int64_t bk = std::min<int64_t>(KB, int64_t(list.size()) - k0);
      blk.load(s, list, b, h, k0, bk, k, v);
      gemm<T>(false, true, bq, bk, D, scale, q_tile, ld, blk.k, blk.ld, T(0), scores, bk);
      for (int64_t r = 0; r < bq; ++r) {
        T* row = scores + r * bk;
        const int64_t c = blk.visible(q_pos[r]);
        if (c == 0) {
          std::fill(row, row + bk, T(0));
          continue;
        }
        const T mx = row_max(row, c);
        const T m_old = run_max[r];
        const T m_new = std::max(m_old, mx);
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < c; ++j) {
          const T p = exp_t<T>(row[j] - m_new);
          row[j] = p;
          sum += p;
        }
        std::fill(row + c, row + bk, T(0));
        const T alpha = m_old == neg_inf ? T(0) : exp_t<T>(m_old - m_new);
        run_sum[r] = run_sum[r] * alpha + sum;
        run_max[r] = m_new;
        if (alpha != T(1)) {
          T* a = acc + r * D;
          for (int64_t d = 0; d < D; ++d) a[d] *= alpha;
        }
      }
      gemm<T>(false, false, bq, D, bk, T(1), scores, bk, blk.v, blk.ld, T(1), acc, D);
    }
    for (int64_t r = 0; r < bq; ++r) {
      T* out = o + (b * s.nq + i0 + r) * ld + h * D;
      T* l_out = lse + (b * s.heads + h) * s.nq + i0 + r;
      if (run_sum[r] > T(0)) {
        const T inv = T(1) / run_sum[r];
        for (int64_t d = 0; d < D; ++d) out[d] = acc[r * D + d] * inv;
        *l_out = run_max[r] + std::log(run_sum[r]);
      } else {
        std::fill(out, out + D, T(0));
        *l_out = neg_inf;
      }
    }
  }
}

template <typename T>
void attention_backward_blocked(const AttentionShape& s, const T* q, const T* k, const T* v,
                                const T* o, const T* d_o, const T* lse, T* dq, T* dk, T* dv,
                                const AttentionBlocking& blocking) {
  const int64_t D = s.head_dim, ld = s.heads * D;
  const int64_t QB = blocking.q_block, KB = blocking.k_block;
  const auto& kept = kept_keys(s);
  const int64_t tasks = s.batch * s.heads;
  const T scale = T(s.scale);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t q_tiles = (s.nq + QB - 1) / QB;

#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && worth_threads(s))
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t h = task % s.heads, b = task / s.heads;
    const auto& list = kept[size_t(b)];
    const T* lse_bh = lse + (b * s.heads + h) * s.nq;
    Scratch<T>& ws = Scratch<T>::get();

    // delta_i = dO_i . O_i: the softmax backward's row correction.
    T* delta = sized(ws.c, s.nq);
    std::vector<int64_t> tile_max(static_cast<size_t>(q_tiles));
    for (int64_t i = 0; i < s.nq; ++i) {
      const T* oi = o + (b * s.nq + i) * ld + h * D;
      const T* gi = d_o + (b * s.nq + i) * ld + h * D;
      T t = 0;
      for (int64_t d = 0; d < D; ++d) t += oi[d] * gi[d];
      delta[i] = t;
      std::fill(dq + (b * s.nq + i) * ld + h * D, dq + (b * s.nq + i) * ld + h * D + D, T(0));
    }
    for (int64_t t = 0; t < q_tiles; ++t)
      tile_max[t] = max_pos_of(s.q_pos + t * QB, std::min(QB, s.nq - t * QB));
    const int64_t q_pos_max = *std::max_element(tile_max.begin(), tile_max.end());

    // Keys that no query sees get zero gradient: the dropped and PAD ones here, those
    // after the last query's position below.
    auto zero_row = [&](int64_t j) {
      std::fill(dk + (b * s.nk + j) * ld + h * D, dk + (b * s.nk + j) * ld + h * D + D, T(0));
      std::fill(dv + (b * s.nk + j) * ld + h * D, dv + (b * s.nk + j) * ld + h * D + D, T(0));
    };
    if (int64_t(list.size()) < s.nk)
      for (int64_t j = 0; j < s.nk; ++j)
        if (!s.k_keep[b * s.nk + j]) zero_row(j);

    T* p = sized(ws.a, QB * KB);
    T* dp = sized(ws.b, QB * KB);
    T* dk_buf = sized(ws.d, 2 * KB * D);
    T* dv_buf = dk_buf + KB * D;
    static thread_local KeyBlock<T> blk;
    int64_t k0 = 0;
    for (; k0 < int64_t(list.size()); k0 += KB) {
      if (s.k_pos[list[k0]] > q_pos_max) break;
      const int64_t bk = std::min<int64_t>(KB, int64_t(list.size()) - k0);
      blk.load(s, list, b, h, k0, bk, k, v);
      // Contiguous keys take their gradients in place; gathered ones go through a buffer.
      T* dk_blk = blk.contiguous ? dk + blk.first_row * ld + h * D : dk_buf;
      T* dv_blk = blk.contiguous ? dv + blk.first_row * ld + h * D : dv_buf;
      const int64_t ld_g = blk.contiguous ? ld : D;
      T beta = T(0);  // the first query tile writes the block's gradients, later ones add
      for (int64_t qt = 0; qt < q_tiles; ++qt) {
        if (blk.pos[0] > tile_max[qt]) continue;
        const int64_t i0 = qt * QB, bq = std::min(QB, s.nq - i0);
        const T* q_tile = q + (b * s.nq + i0) * ld + h * D;
        const T* do_tile = d_o + (b * s.nq + i0) * ld + h * D;
        T* dq_tile = dq + (b * s.nq + i0) * ld + h * D;
        gemm<T>(false, true, bq, bk, D, scale, q_tile, ld, blk.k, blk.ld, T(0), p, bk);
        for (int64_t r = 0; r < bq; ++r) {
          T* row = p + r * bk;
          const T l = lse_bh[i0 + r];
          const int64_t c = l == neg_inf ? 0 : blk.visible(s.q_pos[i0 + r]);
#pragma omp simd
          for (int64_t j = 0; j < c; ++j) row[j] = exp_t<T>(row[j] - l);
          std::fill(row + c, row + bk, T(0));
        }
        gemm<T>(true, false, bk, D, bq, T(1), p, bk, do_tile, ld, beta, dv_blk, ld_g);
        gemm<T>(false, true, bq, bk, D, T(1), do_tile, ld, blk.v, blk.ld, T(0), dp, bk);
        for (int64_t r = 0; r < bq; ++r) {
          const T* pr = p + r * bk;
          T* g = dp + r * bk;
          const T dl = delta[i0 + r];
#pragma omp simd
          for (int64_t j = 0; j < bk; ++j) g[j] = pr[j] * (g[j] - dl);
        }
        gemm<T>(false, false, bq, D, bk, scale, dp, bk, blk.k, blk.ld, T(1), dq_tile, ld);
        gemm<T>(true, false, bk, D, bq, scale, dp, bk, q_tile, ld, beta, dk_blk, ld_g);
        beta = T(1);
      }
      if (!blk.contiguous) {
        for (int64_t j = 0; j < bk; ++j) {
          const int64_t row = b * s.nk + list[k0 + j];
          std::memcpy(dk + row * ld + h * D, &dk_buf[j * D], size_t(D) * sizeof(T));
          std::memcpy(dv + row * ld + h * D, &dv_buf[j * D], size_t(D) * sizeof(T));
        }
      }
    }
    for (int64_t j = k0; j < int64_t(list.size()); ++j) zero_row(list[j]);
  }
}

template void attention_forward_blocked<float>(const AttentionShape&, const float*,
                                               const float*, const float*, float*, float*,
                                               const AttentionBlocking&);
template void attention_forward_blocked<double>(const AttentionShape&, const double*,
                                                const double*, const double*, double*,
                                                double*, const AttentionBlocking&);
template void attention_backward_blocked<float>(const AttentionShape&, const float*,
                                                const float*, const float*, const float*,
                                                const float*, const float*, float*, float*,
                                                float*, const AttentionBlocking&);
template void attention_backward_blocked<double>(const AttentionShape&, const double*,
                                                 const double*, const double*,
                                                 const double*, const double*,
                                                 const double*, double*, double*, double*,
                                                 const AttentionBlocking&);

}  // namespace par::cpu
