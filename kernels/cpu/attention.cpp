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
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/attention_claims.h"
#include "kernels/cpu/attention_blocks.h"
#include "kernels/cpu/attention_fused.h"
#include "kernels/cpu/attention_one_query.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/fast_exp.h"
#include "kernels/cpu/parallel_for.h"

namespace par::cpu {

using namespace attention_detail;

namespace {

// Each working thread's buffers in the forward: a key block, a tile's scores and its
// running output, max and sum.
template <typename T>
struct ForwardBuffers {
  KeyBlock<T> blk;
  T *scores, *acc, *run_max, *run_sum;
  void carve(Carver& c, const AttentionShape& s, const AttentionBlocking& b) {
    const int64_t bq = std::min(b.q_block, s.nq);
    blk.carve(c, b.k_block, s.head_dim);
    scores = c.take<T>(bq * b.k_block);
    acc = c.take<T>(bq * s.head_dim);
    run_max = c.take<T>(bq);
    run_sum = c.take<T>(bq);
  }
};

// ... in the backward: a key block, the queries' row corrections, a tile's probabilities and
// their gradients, and the gradients of a gathered key block.
template <typename T>
struct BackwardBuffers {
  KeyBlock<T> blk;
  T *delta, *p, *dp, *dk_buf, *dv_buf;
  void carve(Carver& c, const AttentionShape& s, const AttentionBlocking& b) {
    const int64_t bq = std::min(b.q_block, s.nq), KB = b.k_block, D = s.head_dim;
    blk.carve(c, KB, D);
    delta = c.take<T>(s.nq);
    p = c.take<T>(bq * KB);
    dp = c.take<T>(bq * KB);
    dk_buf = c.take<T>(KB * D);
    dv_buf = c.take<T>(KB * D);
  }
};

}  // namespace

template <typename T>
AttentionScratch attention_scratch_bytes(const AttentionShape& s, const AttentionBlocking& b) {
  AttentionScratch r;
  r.kept = KeptKeys::bytes(s);
  if constexpr (std::is_same_v<T, float>)
    if (b.fused && fused_attention_supported(s)) {
      r.per_thread = fused_attention_scratch_bytes(s, b);
      return r;
    }
  r.per_thread = std::max(layout_bytes([&](Carver& c) { ForwardBuffers<T>().carve(c, s, b); }),
                          layout_bytes([&](Carver& c) { BackwardBuffers<T>().carve(c, s, b); }));
  if (b.one_query && one_query_attention_supported(s))
    r.per_thread = std::max(r.per_thread, one_query_attention_scratch_bytes<T>(s));
  return r;
}


template <typename T>
void attention_forward_blocked(const AttentionShape& s, const T* q, const T* k, const T* v,
                               T* o, T* lse, const AttentionBlocking& blocking, Workspace& ws) {
  check_attention_claims(s);  // the CPU reads the arrays: every CPU test checks its callers'
  if (blocking.one_query && one_query_attention_supported(s))
    return one_query_attention_forward(s, q, k, v, o, lse, ws);
  if constexpr (std::is_same_v<T, float>)
    if (blocking.fused && fused_attention_supported(s))
      return attention_forward_fused(s, q, k, v, o, lse, blocking, ws);
  const int64_t D = s.head_dim, ld = s.heads * D;
  const int64_t QB = blocking.q_block, KB = blocking.k_block;
  const KeptKeys kept = kept_keys(s, ws);
  ws.prepare(omp_get_max_threads());
  const int64_t q_tiles = (s.nq + QB - 1) / QB;
  const int64_t tasks = s.batch * s.heads * q_tiles;
  const T scale = T(s.scale);
  const T neg_inf = -std::numeric_limits<T>::infinity();

  parallel_for_dynamic(tasks, tasks > 1 && worth_threads(s), [&](int64_t task) {
    const QueryTile tile(s, task, QB);
    const int64_t b = tile.b, h = tile.h, i0 = tile.i0, bq = tile.bq;
    const int64_t *q_pos = tile.q_pos, q_pos_max = tile.q_pos_max;
    const T* q_tile = q + (b * s.nq + i0) * ld + h * D;
    const KeptList list = kept[b];

    ForwardBuffers<T> w;
    ws.carve(ScratchSlot::kAttention, omp_get_thread_num(),
             [&](Carver& c) { w.carve(c, s, blocking); });
    T *scores = w.scores, *acc = w.acc, *run_max = w.run_max, *run_sum = w.run_sum;
    KeyBlock<T>& blk = w.blk;
    std::fill(acc, acc + bq * D, T(0));
    std::fill(run_max, run_max + bq, neg_inf);
    std::fill(run_sum, run_sum + bq, T(0));
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
  });
}

template <typename T>
void attention_backward_blocked(const AttentionShape& s, const T* q, const T* k, const T* v,
                                const T* o, const T* d_o, const T* lse, T* dq, T* dk, T* dv,
                                const AttentionBlocking& blocking, Workspace& ws) {
  check_attention_claims(s);  // the CPU reads the arrays: every CPU test checks its callers'
  if constexpr (std::is_same_v<T, float>)
    if (blocking.fused && fused_attention_supported(s))
      return attention_backward_fused(s, q, k, v, o, d_o, lse, dq, dk, dv, blocking, ws);
  const int64_t D = s.head_dim, ld = s.heads * D;
  const int64_t QB = blocking.q_block, KB = blocking.k_block;
  const KeptKeys kept = kept_keys(s, ws);
  ws.prepare(omp_get_max_threads());
  const int64_t tasks = s.batch * s.heads;
  const T scale = T(s.scale);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t q_tiles = (s.nq + QB - 1) / QB;

  parallel_for_dynamic(tasks, tasks > 1 && worth_threads(s), [&](int64_t task) {
    const int64_t h = task % s.heads, b = task / s.heads;
    const KeptList list = kept[b];
    const T* lse_bh = lse + (b * s.heads + h) * s.nq;
    BackwardBuffers<T> w;
    ws.carve(ScratchSlot::kAttention, omp_get_thread_num(),
             [&](Carver& c) { w.carve(c, s, blocking); });
    KeyBlock<T>& blk = w.blk;

    // delta_i = dO_i . O_i: the softmax backward's row correction.
    T* delta = w.delta;
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

    T *p = w.p, *dp = w.dp, *dk_buf = w.dk_buf, *dv_buf = w.dv_buf;
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
  });
}

#define PAR_INSTANTIATE_ATTENTION(T)                                                          \
  template void attention_forward_blocked<T>(const AttentionShape&, const T*, const T*,        \
                                             const T*, T*, T*, const AttentionBlocking&,       \
                                             Workspace&);                                      \
  template void attention_backward_blocked<T>(const AttentionShape&, const T*, const T*,       \
                                              const T*, const T*, const T*, const T*, T*, T*,  \
                                              T*, const AttentionBlocking&, Workspace&);       \
  template AttentionScratch attention_scratch_bytes<T>(const AttentionShape&,                  \
                                                       const AttentionBlocking&);
PAR_INSTANTIATE_ATTENTION(float)
PAR_INSTANTIATE_ATTENTION(double)

}  // namespace par::cpu
