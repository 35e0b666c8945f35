#include "kernels/cpu/cpu_ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "core/constants.h"
#include "core/error.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/dropout_span.h"
#include "kernels/cpu/linear_few_rows.h"
#include "kernels/cpu/linear_paired.h"
#include "kernels/cpu/linear_tall.h"
#include "kernels/cpu/parallel_for.h"
#include "kernels/cpu/rotary_rows.h"
#include "kernels/cpu/thread_share.h"

namespace par::cpu {

namespace {

// Below this many elements a loop runs on one thread: the fork costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

// Sums the rows of a [rows, cols] matrix into acc (double) with a fixed partition of the
// rows over threads and a fixed order of combining them, so the result is reproducible.
// `elements` (the work of all rows together) decides whether threads pay.
template <typename F>
void reduce_rows(int64_t rows, int64_t cols, int64_t elements, std::vector<double>& acc,
                 F&& row_fn) {
  const int nt = elements >= kParallelMin ? omp_get_max_threads() : 1;
  std::vector<double> part(static_cast<size_t>(nt) * size_t(cols), 0.0);
  parallel_region(nt > 1, [&] {
    const ThreadShare mine(rows);
    double* sums = part.data() + size_t(omp_get_thread_num()) * size_t(cols);
    for (int64_t r = mine.first; r < mine.last; ++r) row_fn(r, sums);
  });
  acc.assign(size_t(cols), 0.0);
  for (int t = 0; t < nt; ++t)
    for (int64_t c = 0; c < cols; ++c) acc[c] += part[size_t(t) * size_t(cols) + c];
}

// Rows per block of the LayerNorm backward: a block's dw and db terms are summed in T,
// then added in double. Converting and adding every row's terms in double cost as much as
// the rest of the row; 8 rows of float sums round no worse than the float gradient itself.
constexpr int64_t kLayerNormBlock = 8;

// Rows [r0, r1) of the LayerNorm backward, at most kLayerNormBlock of them: dx (= or +=),
// and the rows' terms of dw (s[0..d)) and db (s[d..2d)). A plain function: GCC 12 leaves
// the reductions scalar when they sit in the body of the lambda that reduce_rows calls.
// bs: the calling thread's block sums, 2 * d (layernorm_backward_scratch_bytes).
template <typename T>
void layernorm_backward_rows(T* dx, bool accumulate, double* s, T* bs, const T* dy, const T* x,
                             const T* mean, const T* rstd, const T* w, int64_t r0, int64_t r1,
                             int64_t d) {
  std::fill(bs, bs + 2 * d, T(0));
  const T inv_d = T(1) / T(d);
  for (int64_t r = r0; r < r1; ++r) {
    const T* g = dy + r * d;
    const T* xr = x + r * d;
    T* out = dx + r * d;
    const T mu = mean[r], rs = rstd[r];
    T sum_gw = 0, sum_gw_xhat = 0;
#pragma omp simd reduction(+ : sum_gw, sum_gw_xhat)
    for (int64_t c = 0; c < d; ++c) {
      const T xhat = (xr[c] - mu) * rs;
      const T gw = g[c] * w[c];
      sum_gw += gw;
      sum_gw_xhat += gw * xhat;
      bs[c] += g[c] * xhat;
      bs[d + c] += g[c];
    }
    const T m1 = sum_gw * inv_d, m2 = sum_gw_xhat * inv_d;
    if (accumulate) {
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) out[c] += rs * (g[c] * w[c] - m1 - (xr[c] - mu) * rs * m2);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) out[c] = rs * (g[c] * w[c] - m1 - (xr[c] - mu) * rs * m2);
    }
  }
#pragma omp simd
  for (int64_t c = 0; c < 2 * d; ++c) s[c] += double(bs[c]);
}

}  // namespace

template <typename T>
double layernorm_backward_scratch_bytes(int64_t d) {
  return double(2 * d) * sizeof(T);
}

template <typename T>
void* CpuOps<T>::allocate(size_t bytes) {
  return host_allocate(bytes);
}

template <typename T>
void CpuOps<T>::deallocate(void* p) {
  host_free(p);
}

template <typename T>
void CpuOps<T>::upload(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
}

template <typename T>
void CpuOps<T>::download(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
}

template <typename T>
void CpuOps<T>::synchronize() {}  // every op has finished when it returns

// The CPU runs work as it is given: there is nothing to record.
template <typename T>
void CpuOps<T>::begin_capture() {}

template <typename T>
void CpuOps<T>::end_capture(uint64_t) {}

template <typename T>
void CpuOps<T>::abort_capture() {}

template <typename T>
bool CpuOps<T>::replays_captures() {
  return false;
}

template <typename T>
bool CpuOps<T>::replay_capture(uint64_t) {
  return false;
}

template <typename T>
void CpuOps<T>::fill(T* x, int64_t n, T value) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) x[i] = value;
}

template <typename T>
void CpuOps<T>::copy(T* dst, const T* src, int64_t n) {
  if (dst != src) std::memcpy(dst, src, size_t(n) * sizeof(T));
}

template <typename T>
void CpuOps<T>::add(T* y, const T* x, int64_t n) {
  parallel_for(n, n >= kParallelMin, [&](int64_t i) { y[i] += x[i]; });
}

template <typename T>
void CpuOps<T>::scale(T* x, int64_t n, double s) {
  const T st = T(s);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) x[i] *= st;
}

template <typename T>
void CpuOps<T>::copy_blocks(T* dst, int64_t dst_stride, const T* src, int64_t src_stride,
                            int64_t batch, int64_t count, bool accumulate) {
  for (int64_t b = 0; b < batch; ++b) {
    if (accumulate) add(dst + b * dst_stride, src + b * src_stride, count);
    else copy(dst + b * dst_stride, src + b * src_stride, count);
  }
}

template <typename T>
void CpuOps<T>::copy_blocks_to_row(T* dst, int64_t dst_stride, const int64_t* row,
                                   int64_t row_width, const T* src, int64_t src_stride,
                                   int64_t batch, int64_t count) {
  copy_blocks(dst + row[0] * row_width, dst_stride, src, src_stride, batch, count, false);
}

template <typename T>
void CpuOps<T>::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                     const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
                     int64_t ldc) {
  cpu::gemm<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename T>
void CpuOps<T>::linear_forward(T* y, const T* x, const T* w, const T* b, int64_t rows,
                               int64_t in, int64_t out) {
  if (is_tall_linear(rows, in, out)) return tall_linear_forward(y, x, w, b, rows, in, out);
  if (is_few_rows_linear(rows)) return few_rows_linear_forward(y, x, w, b, rows, in, out);
  // Start from the bias rows so the product accumulates onto them (one pass over y).
  if (b) {
    parallel_for(rows, rows * out >= kParallelMin,
                 [&](int64_t r) { std::memcpy(y + r * out, b, size_t(out) * sizeof(T)); });
  }
  cpu::gemm<T>(false, true, rows, out, in, T(1), x, in, w, in, b ? T(1) : T(0), y, out);
}

template <typename T>
void CpuOps<T>::linear_backward(T* dx, bool accumulate_dx, T* dw, T* db, const T* dy,
                                const T* x, const T* w, int64_t rows, int64_t in,
                                int64_t out) {
  if (is_tall_linear(rows, in, out))
    return tall_linear_backward(dx, accumulate_dx, dw, db, dy, x, w, rows, in, out, ws_);
  if (dx && dw)
    return paired_linear_backward(dx, accumulate_dx, dw, db, dy, x, w, rows, in, out, ws_);
  if (dx) cpu::gemm<T>(false, false, rows, in, out, T(1), dy, out, w, in,
                       accumulate_dx ? T(1) : T(0), dx, in);
  if (dw) cpu::gemm<T>(true, false, out, in, rows, T(1), dy, out, x, in, T(1), dw, in);
  if (db) {
    std::vector<double> acc;
    reduce_rows(rows, out, rows * out, acc, [&](int64_t r, double* s) {
      const T* row = dy + r * out;
      for (int64_t c = 0; c < out; ++c) s[c] += row[c];
    });
    for (int64_t c = 0; c < out; ++c) db[c] += T(acc[c]);
  }
}

template <typename T>
void CpuOps<T>::embedding_forward(T* h, const int32_t* ids, const T* table, int64_t rows,
                                  int64_t d) {
  parallel_for(rows, rows * d >= kParallelMin, [&](int64_t r) {
    std::memcpy(h + r * d, table + int64_t(ids[r]) * d, size_t(d) * sizeof(T));
  });
}

template <typename T>
void CpuOps<T>::embedding_backward(T* dtable, const int32_t* ids, const T* dh, int64_t rows,
                                   int64_t d) {
  // Threads own disjoint column ranges, so rows with the same id never race and the
  // order of additions is fixed.
#pragma omp parallel if (rows * d >= kParallelMin)
  {
    const ThreadShare cols(d);
    for (int64_t r = 0; r < rows; ++r) {
      T* dst = dtable + int64_t(ids[r]) * d;
      const T* src = dh + r * d;
      for (int64_t c = cols.first; c < cols.last; ++c) dst[c] += src[c];
    }
  }
}

// LayerNorm rows are short (the model width), so each row is done by one thread with
// vectorized two-pass statistics (mean, then the centred sum of squares).
template <typename T>
void CpuOps<T>::layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b,
                                  int64_t rows, int64_t d, double eps) {
  const T inv_d = T(1) / T(d);
  parallel_for(rows, rows * d >= kParallelMin, [&](int64_t r) {
    const T* xr = x + r * d;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < d; ++c) s += xr[c];
    const T mu = s * inv_d;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < d; ++c) ss += (xr[c] - mu) * (xr[c] - mu);
    const T rs = T(1) / std::sqrt(ss * inv_d + T(eps));
    mean[r] = mu;
    rstd[r] = rs;
    T* yr = y + r * d;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) yr[c] = (xr[c] - mu) * rs * w[c] + b[c];
  });
}

template <typename T>
void CpuOps<T>::layernorm_backward(T* dx, bool accumulate_dx, T* dw, T* db, const T* dy,
                                   const T* x, const T* mean, const T* rstd, const T* w,
                                   int64_t rows, int64_t d) {
  std::vector<double> acc;
  // Per-thread partial sums of dw (first d) and db (last d), a block of rows at a time.
  const int64_t blocks = (rows + kLayerNormBlock - 1) / kLayerNormBlock;
  ws_.prepare(omp_get_max_threads());
  reduce_rows(blocks, 2 * d, rows * 2 * d, acc, [&](int64_t blk, double* s) {
    const int64_t r0 = blk * kLayerNormBlock;
    T* bs = reinterpret_cast<T*>(ws_.get(ScratchSlot::kLayerNorm, omp_get_thread_num(),
                                         layernorm_backward_scratch_bytes<T>(d)));
    layernorm_backward_rows(dx, accumulate_dx, s, bs, dy, x, mean, rstd, w, r0,
                            std::min(rows, r0 + kLayerNormBlock), d);
  });
  for (int64_t c = 0; c < d; ++c) {
    dw[c] += T(acc[size_t(c)]);
    db[c] += T(acc[size_t(d + c)]);
  }
}

template <typename T>
void CpuOps<T>::rotary(T* x, int64_t batch, int64_t n, int64_t heads, int64_t head_dim,
                       int64_t bands, const T* cos_table, const T* sin_table, bool inverse) {
  if (bands == 0) return;
  const int64_t rows = batch * n;
  parallel_region(rows * heads * head_dim >= kParallelMin, [&] {
    const ThreadShare mine(rows);
    rotary_rows(x, mine.first, mine.last, n, heads, head_dim, bands, cos_table, sin_table,
                inverse);
  });
}

template <typename T>
void CpuOps<T>::sqrelu_forward(T* y, const T* x, int64_t n) {
  parallel_for(n, n >= kParallelMin, [&](int64_t i) {
    const T r = x[i] > T(0) ? x[i] : T(0);
    y[i] = r * r;
  });
}

template <typename T>
void CpuOps<T>::sqrelu_backward(T* dx, const T* dy, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > T(0) ? T(2) * x[i] * dy[i] : T(0);
}

template <typename T>
void CpuOps<T>::dropout(T* y, const T* x, int64_t batch, int64_t per_example, double p,
                        const DropoutKey& key, uint64_t example_base) {
  if (p <= 0) {
    copy(y, x, batch * per_example);
    return;
  }
  const T keep_scale = T(1.0 / (1.0 - p));
  const float pf = float(p);
  for (int64_t b = 0; b < batch; ++b) {
    const uint64_t ex = example_base + uint64_t(b);
    // Threads take contiguous spans of whole blocks of the vector kernel.
#pragma omp parallel if (per_example >= kParallelMin)
    {
      const ThreadShare units((per_example + kDropoutBlock - 1) / kDropoutBlock);
      const int64_t begin = std::min(per_example, units.first * kDropoutBlock);
      const int64_t end = std::min(per_example, units.last * kDropoutBlock);
      dropout_span(y + b * per_example, x + b * per_example, begin, end, key, ex, pf,
                   keep_scale);
    }
  }
}

template <typename T>
void CpuOps<T>::key_keep_mask(uint8_t* keep, const int32_t* tokens, int64_t batch, int64_t n,
                              int64_t token_stride, double p, const DropoutKey& key,
                              uint64_t example_base, int64_t position_base) {
  const float pf = float(p);
  for (int64_t b = 0; b < batch; ++b) {
    const uint64_t ex = example_base + uint64_t(b);
    const int32_t* tb = tokens + b * token_stride;
    uint8_t* kb = keep + b * n;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t j = 0; j < n; ++j)
      kb[j] = tb[j] != kPadToken && (p <= 0 || dropout_keep(key, ex, uint64_t(position_base + j), pf));
  }
}

template <typename T>
void CpuOps<T>::attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v,
                                  T* o, T* lse) {
  attention_forward_blocked<T>(s, q, k, v, o, lse, AttentionBlocking{}, ws_);
}

template <typename T>
void CpuOps<T>::attention_backward(const AttentionShape& s, const T* q, const T* k,
                                   const T* v, const T* o, const T* d_o, const T* lse, T* dq,
                                   T* dk, T* dv) {
  attention_backward_blocked<T>(s, q, k, v, o, d_o, lse, dq, dk, dv, AttentionBlocking{}, ws_);
}

template <typename T>
void CpuOps<T>::attention_merge_scale(T* o, T* lse, const T* lse_max, int64_t batch, int64_t nq,
                                      int64_t heads, int64_t head_dim) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t s = (b * heads + h) * nq + i;
        const T w = lse[s] == neg_inf ? T(0) : std::exp(lse[s] - lse_max[s]);
        lse[s] = w;
        T* row = o + (b * nq + i) * heads * head_dim + h * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) row[d] *= w;
      }
}

template <typename T>
void CpuOps<T>::attention_merge_finish(T* o, T* lse, const T* lse_max, int64_t batch, int64_t nq,
                                       int64_t heads, int64_t head_dim) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t s = (b * heads + h) * nq + i;
        const T w = lse[s];
        T* row = o + (b * nq + i) * heads * head_dim + h * head_dim;
        const T inv = w > T(0) ? T(1) / w : T(0);
        for (int64_t d = 0; d < head_dim; ++d) row[d] *= inv;
        lse[s] = w > T(0) ? lse_max[s] + std::log(w) : neg_inf;
      }
}

template <typename T>
void CpuOps<T>::attention_merge_pair(T* o, T* lse, int64_t batch, int64_t nq, const T* o2,
                                     const T* lse2, int64_t batch2, int64_t nq2, int64_t heads,
                                     int64_t head_dim) {
  PAR_ASSERT(batch * nq == batch2 * nq2, "attention_merge_pair: ", batch, "x", nq, " rows vs ",
             batch2, "x", nq2);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < batch * nq; ++r)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t s = ((r / nq) * heads + h) * nq + r % nq;
      const int64_t s2 = ((r / nq2) * heads + h) * nq2 + r % nq2;
      const T l = lse[s], l2 = lse2[s2], m = std::max(l, l2);
      const T w = l == neg_inf ? T(0) : std::exp(l - m);
      const T w2 = l2 == neg_inf ? T(0) : std::exp(l2 - m);
      const T sum = w + w2, inv = sum > T(0) ? T(1) / sum : T(0);
      T* row = o + r * heads * head_dim + h * head_dim;
      const T* row2 = o2 + r * heads * head_dim + h * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) {
        const T a = row[d] * w, b = row2[d] * w2;  // rounded apart, as the two-call merge does
        row[d] = (a + b) * inv;
      }
      lse[s] = sum > T(0) ? m + std::log(sum) : neg_inf;
    }
}

template <typename T>
void CpuOps<T>::cross_entropy_forward(T* ce, T* lse, const T* logits, const int32_t* targets,
                                      int64_t rows, int64_t vocab) {
#pragma omp parallel for schedule(static) if (rows * vocab >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T* z = logits + r * vocab;
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < vocab; ++j) mx = std::max(mx, double(z[j]));
    double sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(double(z[j]) - mx);
    const double l = mx + std::log(sum);
    lse[r] = T(l);
    ce[r] = targets[r] == kPadToken ? T(0) : T(l - double(z[targets[r]]));
  }
}

template <typename T>
void CpuOps<T>::cross_entropy_backward(T* dlogits, const T* logits, const T* lse,
                                       const int32_t* targets, int64_t rows, int64_t vocab,
                                       double scale, double z_loss) {
#pragma omp parallel for schedule(static) if (rows * vocab >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    T* g = dlogits + r * vocab;
    if (targets[r] == kPadToken) {
      std::fill(g, g + vocab, T(0));
      continue;
    }
    const T* z = logits + r * vocab;
    const double l = lse[r];
    const double f = scale * (1.0 + 2.0 * z_loss * l);
    for (int64_t j = 0; j < vocab; ++j) g[j] = T(f * std::exp(double(z[j]) - l));
    g[targets[r]] -= T(scale);
  }
}

namespace {

// A plain function rather than a lambda body: GCC 12 does not vectorize this reduction
// when it reads the array through a lambda's captures.
template <typename T>
double sum_of_squares(const T* x, int64_t n) {
  double t = 0;
#pragma omp simd reduction(+ : t)
  for (int64_t i = 0; i < n; ++i) t += double(x[i]) * double(x[i]);
  return t;
}

}  // namespace

template <typename T>
double CpuOps<T>::sum_squares(const T* x, int64_t n) {
  std::vector<double> acc;
  const int64_t chunk = 1 << 16;
  const int64_t chunks = (n + chunk - 1) / chunk;
  reduce_rows(chunks, 1, n, acc, [&](int64_t c, double* s) {
    s[0] += sum_of_squares(x + c * chunk, std::min(chunk, n - c * chunk));
  });
  return acc[0];
}

template <typename T>
void CpuOps<T>::adam_update(T* param, T* m, T* v, const T* grad, int64_t n,
                            const AdamStep& a) {
  const double bc1 = 1.0 - std::pow(a.beta1, double(a.t));
  const double bc2 = 1.0 - std::pow(a.beta2, double(a.t));
  const T b1 = T(a.beta1), b2 = T(a.beta2), gs = T(a.grad_scale);
  const T step_size = T(a.lr / bc1), inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2));
  const T eps = T(a.eps), decay = T(1.0 - a.lr * a.weight_decay);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i] * gs;
    m[i] = b1 * m[i] + (T(1) - b1) * g;
    v[i] = b2 * v[i] + (T(1) - b2) * g * g;
    param[i] = param[i] * decay - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
  }
}

template <typename T>
void CpuOps<T>::adam_update_spans(T* param, T* m, T* v, const T* grad, const AdamSpan* spans,
                                  int64_t count, const AdamStep& step) {
  adam_update_each_span(*this, param, m, v, grad, spans, count, step);
}

template <typename T>
void CpuOps<T>::sample_tokens(int32_t* ids, const T* logits, int64_t rows, int64_t vocab,
                              const SamplingOptions& opts, const double* u) {
  for (int64_t r = 0; r < rows; ++r) ids[r] = choose_token(logits + r * vocab, vocab, opts, u[r]);
}

template class CpuOps<float>;
template class CpuOps<double>;
template double layernorm_backward_scratch_bytes<float>(int64_t);
template double layernorm_backward_scratch_bytes<double>(int64_t);

}  // namespace par::cpu
