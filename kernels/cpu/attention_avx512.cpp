// Fused attention for float32 on AVX-512, head_dim a multiple of 16 (up to 128).
//
// Same algorithm as the sgemm path of attention.cpp (key blocks, running max and sum,
// kept-key lists, causal prefixes), but the products are small register-blocked loops
// over 8 queries at a time instead of sgemm calls. With a head dimension of 32, every
// product of attention has one side 32 wide, a shape on which sgemm spends much of its
// time packing and storing rather than multiplying; here each key block is transposed
// once (Kt, Vt: [head_dim][keys], in panels of 32 keys) and reused by every group of 8
// queries, the scores stay in an L1-sized buffer, and the outputs accumulate in registers.
// Scores are in base 2 (log2(e) is folded into the query scale), so the softmax takes 2^y.
//
// The micro-kernels keep 16 accumulators of 16 lanes: 8 queries x 32 keys for scores,
// 8 queries x 32 dimensions for P.V-shaped products, and 4 keys x 32 dimensions (the 8
// queries' rows held in registers) for the key-side gradients. Wider heads go through
// them in 32-wide slices.
#include "kernels/cpu/attention_fused.h"

#if defined(__AVX512F__)

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/attention_blocks.h"
#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/exp2_avx512.h"
#include "kernels/cpu/fast_exp.h"
#include "kernels/cpu/parallel_for.h"

namespace par::cpu {

using namespace attention_detail;

namespace {

constexpr int64_t kRows = 8;    // queries per micro-tile
constexpr int64_t kLanes = 16;  // floats per vector
constexpr int64_t kMaxHeadDim = 128;
constexpr double kLog2e = 1.4426950408889634074, kLn2 = 0.69314718055994530942;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// r[i] = row i of a 16x16 tile in, column i out.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {  // lane L of t[2i]: rows 2i, 2i+1 of columns 4L, 4L+1
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // lane L of r[4i+k]: rows 4i..4i+3 of column 4L+k
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int k = 0; k < 4; ++k) {  // 128-bit lanes: even ones and odd ones of row groups
    t[k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
    t[4 + k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
    t[8 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
    t[12 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
    r[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
    r[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xdd);
  }
}

// The transposed key block as panels of kPanel keys: element (d, j) of b^T at
// panel(j) + d * kPanel + j % kPanel, panel(j) = bt + (j / kPanel) * D * kPanel. The score
// kernel then reads each panel front to back, where rows of a [D][keys] array would put
// its consecutive loads a whole block row apart (the hardware prefetchers miss those).
constexpr int64_t kPanel = 2 * kLanes;

int64_t panels_size(int64_t keys, int64_t D) { return round_up(keys, kPanel) * D; }

// bt = mult * b^T in panels, for j < n, zero up to the next multiple of 16 (D is one),
// in 16x16 tiles transposed in registers.
void pack_panels(const float* b, int64_t ldb, int64_t n, int64_t D, float* bt,
                 float mult = 1.0f) {
  for (int64_t j = 0; j < n; j += kLanes) {
    const int64_t rows = std::max<int64_t>(0, std::min(kLanes, n - j));
    for (int64_t d = 0; d < D; d += kLanes) {
      __m512 r[kLanes];
      for (int64_t i = 0; i < kLanes; ++i)
        r[i] = i < rows ? _mm512_loadu_ps(b + (j + i) * ldb + d) : _mm512_setzero_ps();
      transpose16(r);
      if (mult != 1.0f)
        for (int64_t i = 0; i < kLanes; ++i) r[i] = _mm512_mul_ps(r[i], _mm512_set1_ps(mult));
      float* panel = bt + (j / kPanel) * D * kPanel + j % kPanel;
      for (int64_t i = 0; i < kLanes; ++i) _mm512_storeu_ps(panel + (d + i) * kPanel, r[i]);
    }
  }
}

// row[j] = 2^(row[j] - m) for j < c and 0 for c <= j < n (n a multiple of 16); returns the
// sum of the powers.
inline float exp_row(float* row, int64_t c, int64_t n, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += kLanes) {
    const int64_t left = std::min<int64_t>(kLanes, std::max<int64_t>(0, c - j));
    const __mmask16 keep = __mmask16((uint32_t(1) << left) - 1);
    const __m512 e = _mm512_maskz_mov_ps(keep, exp2_16(_mm512_sub_ps(_mm512_loadu_ps(row + j), vm)));
    _mm512_storeu_ps(row + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

// s[r][j] = sum_d a[r][d] b[j][d] for r < 8 and j < n (n a multiple of 16), b^T in the
// panels of pack_panels. Callers fold the scale into one side beforehand, outside the loop
// over keys.
void scores8(const float* a, int64_t D, const float* bt, int64_t n, float* s, int64_t lds) {
  int64_t j = 0;
  for (; j + kPanel <= n; j += kPanel) {
    const float* panel = bt + j * D;
    __m512 c[kRows][2];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) c[r][0] = c[r][1] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m512 b0 = _mm512_loadu_ps(panel + d * kPanel);
      const __m512 b1 = _mm512_loadu_ps(panel + d * kPanel + kLanes);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const __m512 ar = _mm512_set1_ps(a[r * D + d]);
        c[r][0] = _mm512_fmadd_ps(ar, b0, c[r][0]);
        c[r][1] = _mm512_fmadd_ps(ar, b1, c[r][1]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      _mm512_storeu_ps(s + r * lds + j, c[r][0]);
      _mm512_storeu_ps(s + r * lds + j + kLanes, c[r][1]);
    }
  }
  if (j < n) {  // the first half of a last panel
    const float* panel = bt + j * D;
    __m512 c[kRows];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) c[r] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m512 b0 = _mm512_loadu_ps(panel + d * kPanel);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r)
        c[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * D + d]), b0, c[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) _mm512_storeu_ps(s + r * lds + j, c[r]);
  }
}

// acc[r][d0 + t] += sum_{j < n} p[r][j] v[j][d0 + t] for r < 8, t < 16 * NV.
template <int NV>
void accumulate_rows8(const float* p, int64_t ldp, int64_t n, const float* v, int64_t ldv,
                      float* acc, int64_t ldacc) {
  __m512 c[kRows][NV];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
    for (int t = 0; t < NV; ++t) c[r][t] = _mm512_loadu_ps(acc + r * ldacc + t * kLanes);
  for (int64_t j = 0; j < n; ++j) {
    __m512 vj[NV];
    for (int t = 0; t < NV; ++t) vj[t] = _mm512_loadu_ps(v + j * ldv + t * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512 pr = _mm512_set1_ps(p[r * ldp + j]);
      for (int t = 0; t < NV; ++t) c[r][t] = _mm512_fmadd_ps(pr, vj[t], c[r][t]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
    for (int t = 0; t < NV; ++t) _mm512_storeu_ps(acc + r * ldacc + t * kLanes, c[r][t]);
}

// out[j][d0 + t] += sum_{r < 8} p[r][j] x[r][d0 + t] for j < n, t < 16 * NV: the 8 rows of
// x stay in registers while 4 keys at a time accumulate.
template <int NV>
void accumulate_cols8(const float* p, int64_t ldp, int64_t n, const float* x, int64_t ldx,
                      float* out, int64_t ldo) {
  __m512 xr[kRows][NV];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
    for (int t = 0; t < NV; ++t) xr[r][t] = _mm512_loadu_ps(x + r * ldx + t * kLanes);
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    __m512 c[4][NV];
    for (int u = 0; u < 4; ++u)
      for (int t = 0; t < NV; ++t) c[u][t] = _mm512_loadu_ps(out + (j + u) * ldo + t * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r)
      for (int u = 0; u < 4; ++u) {
        const __m512 pr = _mm512_set1_ps(p[r * ldp + j + u]);
        for (int t = 0; t < NV; ++t) c[u][t] = _mm512_fmadd_ps(pr, xr[r][t], c[u][t]);
      }
    for (int u = 0; u < 4; ++u)
      for (int t = 0; t < NV; ++t) _mm512_storeu_ps(out + (j + u) * ldo + t * kLanes, c[u][t]);
  }
  for (; j < n; ++j) {
    __m512 c[NV];
    for (int t = 0; t < NV; ++t) c[t] = _mm512_loadu_ps(out + j * ldo + t * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512 pr = _mm512_set1_ps(p[r * ldp + j]);
      for (int t = 0; t < NV; ++t) c[t] = _mm512_fmadd_ps(pr, xr[r][t], c[t]);
    }
    for (int t = 0; t < NV; ++t) _mm512_storeu_ps(out + j * ldo + t * kLanes, c[t]);
  }
}

// The two products above over a whole head, in slices of 32 (and one of 16) dimensions.
void rows_product(const float* p, int64_t ldp, int64_t n, const float* v, int64_t ldv,
                  float* acc, int64_t ldacc, int64_t D) {
  int64_t d = 0;
  for (; d + 2 * kLanes <= D; d += 2 * kLanes)
    accumulate_rows8<2>(p, ldp, n, v + d, ldv, acc + d, ldacc);
  if (d < D) accumulate_rows8<1>(p, ldp, n, v + d, ldv, acc + d, ldacc);
}

void cols_product(const float* p, int64_t ldp, int64_t n, const float* x, int64_t ldx,
                  float* out, int64_t ldo, int64_t D) {
  int64_t d = 0;
  for (; d + 2 * kLanes <= D; d += 2 * kLanes)
    accumulate_cols8<2>(p, ldp, n, x + d, ldx, out + d, ldo);
  if (d < D) accumulate_cols8<1>(p, ldp, n, x + d, ldx, out + d, ldo);
}

// dst[j][0..D) = src[j * ld ..) for j < n. Key rows sit 4*heads*head_dim bytes apart in the
// activations, a power of two for the usual widths: a block of them read in place maps to
// a few L1 sets and misses on every pass, so the kernels work on dense copies.
void copy_rows_in(const float* src, int64_t ld, int64_t n, int64_t D, float* dst) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; d += kLanes)
      _mm512_storeu_ps(dst + j * D + d, _mm512_loadu_ps(src + j * ld + d));
}

// The task's rows of one head as a dense [rows8][D] array, zero rows after `rows`.
void load_rows(const float* src, int64_t ld, int64_t rows, int64_t rows8, int64_t D,
               float* dst) {
  copy_rows_in(src, ld, rows, D, dst);
  std::fill(dst + rows * D, dst + rows8 * D, 0.0f);
}

// The key gradients of a block back into the [batch*nk, heads*head_dim] layout: rows
// `first_row + j` when the block is contiguous, else the block's kept rows.
void copy_rows_out(const float* src, int64_t n, int64_t D, float* dst, int64_t ld,
                   const int64_t* kept_rows, int64_t row_base, int64_t first_row,
                   bool contiguous) {
  for (int64_t j = 0; j < n; ++j) {
    float* out = dst + (contiguous ? first_row + j : row_base + kept_rows[j]) * ld;
    for (int64_t d = 0; d < D; d += kLanes)
      _mm512_storeu_ps(out + d, _mm512_loadu_ps(src + j * D + d));
  }
}

// The query scale with log2(e) folded in: scores of queries multiplied by it are in base-2
// units, the softmax's exp becomes 2^y, and the running max, sums and the backward's
// recomputed probabilities all stay in those units. Only lse leaves the kernels, in nats.
float base2_scale(const AttentionShape& s) { return float(s.scale * kLog2e); }

void scale_rows(float* x, int64_t n, float factor) {
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

// Each working thread's buffers in the forward: a key block, its keys transposed in panels
// and its values dense, the scores of 8 queries, and a query tile's rows, running output,
// max and sum.
struct ForwardBuffers {
  KeyBlock<float> blk;
  float *kt, *vd, *sc, *acc, *q_rows, *run_max, *run_sum;
  void carve(Carver& c, const AttentionShape& s, const AttentionBlocking& b) {
    const int64_t QB = round_up(b.q_block, kRows), KB = b.k_block, D = s.head_dim;
    const int64_t bq8 = round_up(std::min(QB, s.nq), kRows), ldt = round_up(KB, kLanes);
    blk.carve(c, KB, D);
    kt = c.take<float>(panels_size(KB, D));
    vd = c.take<float>(KB * D);
    sc = c.take<float>(kRows * ldt);
    acc = c.take<float>(bq8 * D);
    q_rows = c.take<float>(bq8 * D);
    run_max = c.take<float>(bq8);
    run_sum = c.take<float>(bq8);
  }
};

// ... in the backward: a key block, the head's query-side rows (see below), the block's
// keys and values in panels and its keys dense, 8 queries' probabilities and score
// gradients, and the block's key and value gradients.
struct BackwardBuffers {
  KeyBlock<float> blk;
  float *rows, *kt, *vt, *p, *ds, *kd, *dkv;
  void carve(Carver& c, const AttentionShape& s, const AttentionBlocking& b) {
    const int64_t KB = b.k_block, D = s.head_dim;
    const int64_t nq8 = round_up(s.nq, kRows), ldt = round_up(KB, kLanes);
    blk.carve(c, KB, D);
    rows = c.take<float>(4 * nq8 * D + 2 * nq8);
    kt = c.take<float>(panels_size(KB, D));
    vt = c.take<float>(panels_size(KB, D));
    p = c.take<float>(kRows * ldt);
    ds = c.take<float>(kRows * ldt);
    kd = c.take<float>(KB * D);
    dkv = c.take<float>(2 * KB * D);
  }
};

}  // namespace

double fused_attention_scratch_bytes(const AttentionShape& s, const AttentionBlocking& b) {
  return std::max(layout_bytes([&](Carver& c) { ForwardBuffers().carve(c, s, b); }),
                  layout_bytes([&](Carver& c) { BackwardBuffers().carve(c, s, b); }));
}

// Fewer than 8 queries (decoding's one) would pay for transposing whole key blocks and
// for padding the micro-tile; sgemm serves them better.
bool fused_attention_supported(const AttentionShape& s) {
  return s.head_dim % kLanes == 0 && s.head_dim <= kMaxHeadDim && s.nq >= kRows;
}

void attention_forward_fused(const AttentionShape& s, const float* q, const float* k,
                             const float* v, float* o, float* lse,
                             const AttentionBlocking& blocking, Workspace& ws) {
  const int64_t D = s.head_dim, ld = s.heads * D;
  const int64_t QB = round_up(blocking.q_block, kRows), KB = blocking.k_block;
  const int64_t ldt = round_up(KB, kLanes);
  const KeptKeys kept = kept_keys(s, ws);
  ws.prepare(omp_get_max_threads());
  const int64_t q_tiles = (s.nq + QB - 1) / QB;
  const int64_t tasks = s.batch * s.heads * q_tiles;
  const float scale2 = base2_scale(s);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  parallel_for_dynamic(tasks, tasks > 1 && worth_threads(s), [&](int64_t task) {
    const QueryTile tile(s, task, QB);
    const int64_t b = tile.b, h = tile.h, i0 = tile.i0, bq = tile.bq;
    const int64_t *q_pos = tile.q_pos, q_pos_max = tile.q_pos_max;
    const KeptList list = kept[b];

    ForwardBuffers w;
    ws.carve(ScratchSlot::kAttention, omp_get_thread_num(),
             [&](Carver& c) { w.carve(c, s, blocking); });
    const int64_t bq8 = round_up(bq, kRows);
    float *kt = w.kt, *vd = w.vd, *sc = w.sc, *acc = w.acc, *q_rows = w.q_rows;
    float *run_max = w.run_max, *run_sum = w.run_sum;
    KeyBlock<float>& blk = w.blk;
    std::fill(acc, acc + bq8 * D, 0.0f);
    std::fill(run_max, run_max + bq8, neg_inf);
    std::fill(run_sum, run_sum + bq8, 0.0f);
    load_rows(q + (b * s.nq + i0) * ld + h * D, ld, bq, bq8, D, q_rows);
    scale_rows(q_rows, bq * D, scale2);
    for (int64_t k0 = 0; k0 < int64_t(list.size()); k0 += KB) {
      if (s.k_pos[list[k0]] > q_pos_max) break;  // later blocks are later positions
      const int64_t bk = std::min<int64_t>(KB, int64_t(list.size()) - k0);
      blk.load(s, list, b, h, k0, bk, k, v);
      pack_panels(blk.k, blk.ld, bk, D, kt);
      copy_rows_in(blk.v, blk.ld, bk, D, vd);
      for (int64_t r0 = 0; r0 < bq; r0 += kRows) {
        const int64_t rows = std::min(kRows, bq - r0);
        int64_t vis[kRows] = {0};
        int64_t c_max = 0;
        for (int64_t r = 0; r < rows; ++r) {
          vis[r] = blk.visible(q_pos[r0 + r]);
          c_max = std::max(c_max, vis[r]);
        }
        if (c_max == 0) continue;
        const int64_t n = round_up(c_max, kLanes);
        scores8(q_rows + r0 * D, D, kt, n, sc, ldt);
        for (int64_t r = 0; r < kRows; ++r) {
          float* row = sc + r * ldt;
          const int64_t c = vis[r];
          if (c == 0) {
            std::fill(row, row + n, 0.0f);
            continue;
          }
          const int64_t i = r0 + r;
          const float m_old = run_max[i];
          const float m_new = std::max(m_old, row_max(row, c));
          const float sum = exp_row(row, c, n, m_new);
          const float alpha = m_old == neg_inf ? 0.0f : fast_expf((m_old - m_new) * float(kLn2));
          run_sum[i] = run_sum[i] * alpha + sum;
          run_max[i] = m_new;
          if (alpha != 1.0f)
            for (int64_t d = 0; d < D; ++d) acc[i * D + d] *= alpha;
        }
        rows_product(sc, ldt, c_max, vd, D, acc + r0 * D, D, D);
      }
    }
    for (int64_t r = 0; r < bq; ++r) {
      float* out = o + (b * s.nq + i0 + r) * ld + h * D;
      float* l_out = lse + (b * s.heads + h) * s.nq + i0 + r;
      if (run_sum[r] > 0.0f) {
        const float inv = 1.0f / run_sum[r];
        for (int64_t d = 0; d < D; ++d) out[d] = acc[r * D + d] * inv;
        *l_out = float((double(run_max[r]) + std::log2(double(run_sum[r]))) * kLn2);
      } else {
        std::fill(out, out + D, 0.0f);
        *l_out = neg_inf;
      }
    }
  });
}

void attention_backward_fused(const AttentionShape& s, const float* q, const float* k,
                              const float* v, const float* o, const float* d_o,
                              const float* lse, float* dq, float* dk, float* dv,
                              const AttentionBlocking& blocking, Workspace& ws) {
  const int64_t D = s.head_dim, ld = s.heads * D;
  const int64_t KB = blocking.k_block, ldt = round_up(KB, kLanes);
  const KeptKeys kept = kept_keys(s, ws);
  ws.prepare(omp_get_max_threads());
  const int64_t tasks = s.batch * s.heads;
  const float scale = float(s.scale), scale2 = base2_scale(s);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int64_t nq8 = round_up(s.nq, kRows);

  parallel_for_dynamic(tasks, tasks > 1 && worth_threads(s), [&](int64_t task) {
    const int64_t h = task % s.heads, b = task / s.heads;
    const KeptList list = kept[b];
    const float* lse_bh = lse + (b * s.heads + h) * s.nq;
    BackwardBuffers w;
    ws.carve(ScratchSlot::kAttention, omp_get_thread_num(),
             [&](Carver& c) { w.carve(c, s, blocking); });
    KeyBlock<float>& blk = w.blk;

    // Per query: delta = scale * dO . O (the softmax backward's row correction, scaled
    // like dP below), its dense rows of Q and dO padded to whole micro-tiles, Q once more
    // times the base-2 scale for recomputing the forward's scores bit for bit, and lse in
    // base 2. dq accumulates in a dense buffer.
    float* rows = w.rows;
    float* q_rows = rows;
    float* g_rows = q_rows + nq8 * D;
    float* dq_acc = g_rows + nq8 * D;
    float* delta = dq_acc + nq8 * D;
    float* q_scaled = delta + nq8;
    float* lse2 = q_scaled + nq8 * D;
    const int64_t first = b * s.nq * ld + h * D;  // this head's first query row
    load_rows(q + first, ld, s.nq, nq8, D, q_rows);
    load_rows(d_o + first, ld, s.nq, nq8, D, g_rows);
    std::fill(dq_acc, dq_acc + nq8 * D, 0.0f);
    std::fill(delta, delta + nq8, 0.0f);
    for (int64_t i = 0; i < s.nq; ++i) {
      const float* oi = o + first + i * ld;
      const float* gi = g_rows + i * D;
      float t = 0;
      for (int64_t d = 0; d < D; ++d) t += oi[d] * gi[d];
      delta[i] = t * scale;
    }
    std::copy(q_rows, q_rows + nq8 * D, q_scaled);
    scale_rows(q_scaled, nq8 * D, scale2);
    for (int64_t i = 0; i < s.nq; ++i) lse2[i] = float(double(lse_bh[i]) * kLog2e);
    const int64_t q_pos_max = max_pos_of(s.q_pos, s.nq);

    auto zero_row = [&](int64_t j) {
      std::fill(dk + (b * s.nk + j) * ld + h * D, dk + (b * s.nk + j) * ld + h * D + D, 0.0f);
      std::fill(dv + (b * s.nk + j) * ld + h * D, dv + (b * s.nk + j) * ld + h * D + D, 0.0f);
    };
    if (int64_t(list.size()) < s.nk)
      for (int64_t j = 0; j < s.nk; ++j)
        if (!s.k_keep[b * s.nk + j]) zero_row(j);

    float *kt = w.kt, *vt = w.vt, *p = w.p, *ds = w.ds, *kd = w.kd;
    float* dkb = w.dkv;
    float* dvb = dkb + KB * D;
    int64_t k0 = 0;
    for (; k0 < int64_t(list.size()); k0 += KB) {
      if (s.k_pos[list[k0]] > q_pos_max) break;
      const int64_t bk = std::min<int64_t>(KB, int64_t(list.size()) - k0);
      blk.load(s, list, b, h, k0, bk, k, v);
      pack_panels(blk.k, blk.ld, bk, D, kt);
      pack_panels(blk.v, blk.ld, bk, D, vt, scale);  // dP comes out times scale
      copy_rows_in(blk.k, blk.ld, bk, D, kd);
      std::fill(dkb, dkb + 2 * KB * D, 0.0f);
      for (int64_t r0 = 0; r0 < s.nq; r0 += kRows) {
        const int64_t rows_here = std::min(kRows, s.nq - r0);
        int64_t vis[kRows] = {0};
        int64_t c_max = 0;
        for (int64_t r = 0; r < rows_here; ++r) {
          vis[r] = lse_bh[r0 + r] == neg_inf ? 0 : blk.visible(s.q_pos[r0 + r]);
          c_max = std::max(c_max, vis[r]);
        }
        if (c_max == 0) continue;
        const int64_t n = round_up(c_max, kLanes);
        const float* qt = q_rows + r0 * D;
        const float* gt = g_rows + r0 * D;
        scores8(q_scaled + r0 * D, D, kt, n, p, ldt);
        scores8(gt, D, vt, n, ds, ldt);
        for (int64_t r = 0; r < kRows; ++r) {
          float* pr = p + r * ldt;
          float* g = ds + r * ldt;
          const int64_t c = vis[r];
          exp_row(pr, c, n, c > 0 ? lse2[r0 + r] : 0.0f);
          const __m512 dl = _mm512_set1_ps(delta[r0 + r]);
          for (int64_t j = 0; j < n; j += kLanes) {  // p is 0 where the key is not visible
            const __m512 e = _mm512_loadu_ps(pr + j);
            const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(g + j), dl);
            _mm512_storeu_ps(g + j, _mm512_mul_ps(e, d));
          }
        }
        cols_product(p, ldt, c_max, gt, D, dvb, D, D);
        cols_product(ds, ldt, c_max, qt, D, dkb, D, D);
        rows_product(ds, ldt, c_max, kd, D, dq_acc + r0 * D, D, D);
      }
      copy_rows_out(dkb, bk, D, dk + h * D, ld, list.data() + k0, b * s.nk, blk.first_row,
                    blk.contiguous);
      copy_rows_out(dvb, bk, D, dv + h * D, ld, list.data() + k0, b * s.nk, blk.first_row,
                    blk.contiguous);
    }
    for (int64_t j = k0; j < int64_t(list.size()); ++j) zero_row(list[j]);
    for (int64_t i = 0; i < s.nq; ++i)
      std::memcpy(dq + (b * s.nq + i) * ld + h * D, dq_acc + i * D, size_t(D) * 4);
  });
}

}  // namespace par::cpu

#else  // no AVX-512: the sgemm path serves every shape

namespace par::cpu {
bool fused_attention_supported(const AttentionShape&) { return false; }
void attention_forward_fused(const AttentionShape&, const float*, const float*, const float*,
                             float*, float*, const AttentionBlocking&, Workspace&) {}
void attention_backward_fused(const AttentionShape&, const float*, const float*,
                              const float*, const float*, const float*, const float*, float*,
                              float*, float*, const AttentionBlocking&, Workspace&) {}
double fused_attention_scratch_bytes(const AttentionShape&, const AttentionBlocking&) {
  return 0;
}
}  // namespace par::cpu

#endif
