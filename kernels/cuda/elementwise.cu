// Element-wise kernels of the CUDA backend: each output element depends on a fixed set of
// inputs, so there is nothing to order. The arithmetic follows kernels/cpu/cpu_ops.cpp
// expression by expression (same rounding of constants on the host), so dropout masks
// and most values agree with the CPU backend bit for bit.
#include <cmath>

#include "core/constants.h"
#include "core/philox.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kernels.h"

namespace par::cuda::kern {

namespace {

__global__ void fill_kernel(float* x, int64_t n, float value) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) x[i] = value;
}

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) y[i] += x[i];
}

__global__ void scale_kernel(float* x, int64_t n, float s) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) x[i] *= s;
}

__global__ void copy_blocks_kernel(float* dst, int64_t dst_stride, const float* src,
                                   int64_t src_stride, int64_t batch, int64_t count,
                                   bool accumulate) {
  const int64_t total = batch * count;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t b = t / count, i = t % count;
    float& out = dst[b * dst_stride + i];
    const float in = src[b * src_stride + i];
    out = accumulate ? out + in : in;
  }
}

// The row is read on the device, so that a recorded step writes where the replay says.
__global__ void copy_blocks_to_row_kernel(float* dst, int64_t dst_stride, const int64_t* row,
                                          int64_t row_width, const float* src,
                                          int64_t src_stride, int64_t batch, int64_t count) {
  const int64_t total = batch * count, offset = row[0] * row_width;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t b = t / count, i = t % count;
    dst[b * dst_stride + offset + i] = src[b * src_stride + i];
  }
}

__global__ void scale_matrices_kernel(float* c, int64_t rows, int64_t cols, int64_t ld,
                                      int64_t stride, int64_t batch, float beta) {
  const int64_t per = rows * cols, total = batch * per;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t m = t / per, r = (t % per) / cols, j = t % cols;
    float& x = c[m * stride + r * ld + j];
    x = beta == 0.0f ? 0.0f : beta * x;
  }
}

__global__ void broadcast_rows_kernel(float* y, const float* bias, int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) y[t] = bias[t % cols];
}

__global__ void embedding_forward_kernel(float* h, const int32_t* ids, const float* table,
                                         int64_t rows, int64_t d) {
  const int64_t total = rows * d;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t r = t / d, c = t % d;
    h[t] = table[int64_t(ids[r]) * d + c];
  }
}

// One pair (a, b) rotated by the angle of cosine c and sine s, with no fused multiply-add,
// so that both rotary kernels give the same bits.
__device__ __forceinline__ void rotate_pair(float a, float b, float c, float s, float& x,
                                            float& y) {
  x = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  y = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

// One thread per rotated pair (row, head, band).
template <typename S>
__global__ void rotary_kernel(S* x, int64_t rows, int64_t n, int64_t heads,
                              int64_t head_dim, int64_t bands, const float* cos_table,
                              const float* sin_table, float sign) {
  const int64_t total = rows * heads * bands;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t k = t % bands, h = (t / bands) % heads, r = t / (bands * heads);
    const int64_t i = r % n;
    const float c = cos_table[i * bands + k], s = sign * sin_table[i * bands + k];
    S* u = x + r * heads * head_dim + h * head_dim;
    const float a = stored_value(u[2 * k]), b = stored_value(u[2 * k + 1]);
    float first, second;
    rotate_pair(a, b, c, s, first, second);
    store_value(u + 2 * k, first);
    store_value(u + 2 * k + 1, second);
  }
}

__global__ void sqrelu_forward_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const float r = x[i] > 0.0f ? x[i] : 0.0f;
    y[i] = r * r;
  }
}

__global__ void sqrelu_backward_kernel(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    dx[i] = x[i] > 0.0f ? 2.0f * x[i] * dy[i] : 0.0f;
}

// One Philox call per group of four consecutive elements of an example, as on the CPU.
__global__ void dropout_kernel(float* y, const float* x, int64_t batch, int64_t per_example,
                               float p_threshold, float keep_scale, DropoutKey key,
                               uint64_t example_base) {
  const int64_t groups = (per_example + 3) / 4, total = batch * groups;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t b = t / groups, g = t % groups;
    const Philox4 r = dropout_bits(key, example_base + uint64_t(b), uint64_t(g));
    const int64_t i0 = b * per_example + 4 * g;
    const int64_t n = per_example - 4 * g < 4 ? per_example - 4 * g : 4;
#pragma unroll
    for (int lane = 0; lane < 4; ++lane)
      if (lane < n)
        y[i0 + lane] = uniform_from_bits(r.v[lane]) >= p_threshold ? x[i0 + lane] * keep_scale
                                                                   : 0.0f;
  }
}

__global__ void key_keep_mask_kernel(uint8_t* keep, const int32_t* tokens, int64_t batch,
                                     int64_t n, int64_t token_stride, bool use_p,
                                     float p_threshold, DropoutKey key, uint64_t example_base,
                                     int64_t position_base) {
  const int64_t total = batch * n;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t b = t / n, j = t % n;
    const bool kept =
        tokens[b * token_stride + j] != kPadToken &&
        (!use_p ||
         dropout_keep(key, example_base + uint64_t(b), uint64_t(position_base + j), p_threshold));
    keep[t] = kept ? 1 : 0;
  }
}

// One thread per (example, head, query) row: the weight is read and rewritten in place.
__global__ void merge_scale_kernel(float* o, float* lse, const float* lse_max, int64_t batch,
                                   int64_t nq, int64_t heads, int64_t head_dim) {
  const int64_t total = batch * heads * nq;
  for (int64_t s = global_thread(); s < total; s += grid_threads()) {
    const int64_t i = s % nq, h = (s / nq) % heads, b = s / (nq * heads);
    const float l = lse[s];
    const float w = l == -INFINITY ? 0.0f : expf(l - lse_max[s]);
    lse[s] = w;
    float* row = o + (b * nq + i) * heads * head_dim + h * head_dim;
    for (int64_t d = 0; d < head_dim; ++d) row[d] *= w;
  }
}

__global__ void merge_finish_kernel(float* o, float* lse, const float* lse_max, int64_t batch,
                                    int64_t nq, int64_t heads, int64_t head_dim) {
  const int64_t total = batch * heads * nq;
  for (int64_t s = global_thread(); s < total; s += grid_threads()) {
    const int64_t i = s % nq, h = (s / nq) % heads, b = s / (nq * heads);
    const float w = lse[s];
    float* row = o + (b * nq + i) * heads * head_dim + h * head_dim;
    const float inv = w > 0.0f ? 1.0f / w : 0.0f;
    for (int64_t d = 0; d < head_dim; ++d) row[d] *= inv;
    lse[s] = w > 0.0f ? lse_max[s] + logf(w) : -INFINITY;
  }
}

// One thread per (row, head) of the merged attention (Ops::attention_merge_pair).
__global__ void merge_pair_kernel(float* o, float* lse, int64_t batch, int64_t nq,
                                  const float* o2, const float* lse2, int64_t nq2,
                                  int64_t heads, int64_t head_dim) {
  const int64_t total = batch * nq * heads;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t r = t / heads, h = t % heads;
    const int64_t s = ((r / nq) * heads + h) * nq + r % nq;
    const int64_t s2 = ((r / nq2) * heads + h) * nq2 + r % nq2;
    const float l = lse[s], l2 = lse2[s2], m = fmaxf(l, l2);
    const float w = l == -INFINITY ? 0.0f : expf(l - m);
    const float w2 = l2 == -INFINITY ? 0.0f : expf(l2 - m);
    const float sum = w + w2, inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    float* row = o + r * heads * head_dim + h * head_dim;
    const float* row2 = o2 + r * heads * head_dim + h * head_dim;
    for (int64_t d = 0; d < head_dim; ++d)
      row[d] = __fmul_rn(__fadd_rn(__fmul_rn(row[d], w), __fmul_rn(row2[d], w2)), inv);
    lse[s] = sum > 0.0f ? m + logf(sum) : -INFINITY;
  }
}

__device__ __forceinline__ void adam_element(float* param, float* m, float* v,
                                             const float* grad, int64_t i,
                                             const AdamConstants& c, float decay) {
  const float g = grad[i] * c.grad_scale;
  const float mi = c.b1 * m[i] + (1.0f - c.b1) * g;
  const float vi = c.b2 * v[i] + (1.0f - c.b2) * g * g;
  m[i] = mi;
  v[i] = vi;
  param[i] = param[i] * decay - c.step_size * mi / (sqrtf(vi) * c.inv_sqrt_bc2 + c.eps);
}

__global__ void adam_kernel(float* param, float* m, float* v, const float* grad, int64_t n,
                            AdamConstants c) {
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    adam_element(param, m, v, grad, i, c, c.decay);
}

// Up to kAdamSpansPerLaunch spans, passed by value (2.6 KB of kernel parameters).
struct AdamSpanTable {
  int64_t begin[kAdamSpansPerLaunch];
  int64_t end[kAdamSpansPerLaunch];
  float decay[kAdamSpansPerLaunch];
  int count;
};

__global__ void adam_spans_kernel(float* param, float* m, float* v, const float* grad,
                                  AdamSpanTable t, AdamConstants c) {
  const int64_t lo = t.begin[0], hi = t.end[t.count - 1];
  for (int64_t i = lo + global_thread(); i < hi; i += grid_threads()) {
    // The last span that begins at or before i (the spans are ordered).
    int a = 0, b = t.count - 1;
    while (a < b) {
      const int mid = (a + b + 1) / 2;
      if (t.begin[mid] <= i) a = mid; else b = mid - 1;
    }
    if (i >= t.end[a]) continue;  // between spans
    adam_element(param, m, v, grad, i, c, t.decay[a]);
  }
}

}  // namespace

void fill(cudaStream_t st, float* x, int64_t n, float value) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, st>>>(x, n, value);
  PAR_CUDA_CHECK_LAUNCH("fill_kernel");
}

void add(cudaStream_t st, float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  add_kernel<<<blocks_for(n), kThreads, 0, st>>>(y, x, n);
  PAR_CUDA_CHECK_LAUNCH("add_kernel");
}

void scale(cudaStream_t st, float* x, int64_t n, float s) {
  if (n <= 0) return;
  scale_kernel<<<blocks_for(n), kThreads, 0, st>>>(x, n, s);
  PAR_CUDA_CHECK_LAUNCH("scale_kernel");
}

void copy_blocks(cudaStream_t st, float* dst, int64_t dst_stride, const float* src,
                 int64_t src_stride, int64_t batch, int64_t count, bool accumulate) {
  if (batch <= 0 || count <= 0) return;
  copy_blocks_kernel<<<blocks_for(batch * count), kThreads, 0, st>>>(
      dst, dst_stride, src, src_stride, batch, count, accumulate);
  PAR_CUDA_CHECK_LAUNCH("copy_blocks_kernel");
}

void copy_blocks_to_row(cudaStream_t st, float* dst, int64_t dst_stride, const int64_t* row,
                        int64_t row_width, const float* src, int64_t src_stride, int64_t batch,
                        int64_t count) {
  if (batch <= 0 || count <= 0) return;
  copy_blocks_to_row_kernel<<<blocks_for(batch * count), kThreads, 0, st>>>(
      dst, dst_stride, row, row_width, src, src_stride, batch, count);
  PAR_CUDA_CHECK_LAUNCH("copy_blocks_to_row_kernel");
}

void scale_matrices(cudaStream_t st, float* c, int64_t rows, int64_t cols, int64_t ld,
                    int64_t stride, int64_t batch, float beta) {
  if (rows <= 0 || cols <= 0 || batch <= 0 || beta == 1.0f) return;
  scale_matrices_kernel<<<blocks_for(batch * rows * cols), kThreads, 0, st>>>(
      c, rows, cols, ld, stride, batch, beta);
  PAR_CUDA_CHECK_LAUNCH("scale_matrices_kernel");
}

void broadcast_rows(cudaStream_t st, float* y, const float* bias, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  broadcast_rows_kernel<<<blocks_for(rows * cols), kThreads, 0, st>>>(y, bias, rows, cols);
  PAR_CUDA_CHECK_LAUNCH("broadcast_rows_kernel");
}

void embedding_forward(cudaStream_t st, float* h, const int32_t* ids, const float* table,
                       int64_t rows, int64_t d) {
  if (rows <= 0 || d <= 0) return;
  embedding_forward_kernel<<<blocks_for(rows * d), kThreads, 0, st>>>(h, ids, table, rows, d);
  PAR_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

// dst = round(rotary(src)) element by element: the rotated pairs as rotary_kernel computes
// them, the other dimensions copied (rounded).
__global__ void rotary_to_bf16_kernel(uint16_t* dst, const float* src, int64_t rows, int64_t n,
                                      int64_t heads, int64_t head_dim, int64_t bands,
                                      const float* cos_table, const float* sin_table) {
  const int64_t width = heads * head_dim, total = rows * width;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t e = t % head_dim, r = t / width, i = r % n;
    float y;
    if (e < 2 * bands) {
      const int64_t k = e / 2;
      const float c = cos_table[i * bands + k], s = sin_table[i * bands + k];
      float first, second;
      rotate_pair(src[t - (e & 1)], src[t - (e & 1) + 1], c, s, first, second);
      y = (e & 1) ? second : first;
    } else {
      y = src[t];
    }
    store_value(dst + t, y);
  }
}

namespace {

template <typename S>
void rotary_of(cudaStream_t st, S* x, int64_t batch, int64_t n, int64_t heads,
               int64_t head_dim, int64_t bands, const float* cos_table, const float* sin_table,
               bool inverse) {
  const int64_t rows = batch * n;
  if (bands <= 0 || rows <= 0 || heads <= 0) return;
  rotary_kernel<<<blocks_for(rows * heads * bands), kThreads, 0, st>>>(
      x, rows, n, heads, head_dim, bands, cos_table, sin_table, inverse ? -1.0f : 1.0f);
  PAR_CUDA_CHECK_LAUNCH("rotary_kernel");
}

}  // namespace

void rotary(cudaStream_t st, float* x, int64_t batch, int64_t n, int64_t heads,
            int64_t head_dim, int64_t bands, const float* cos_table, const float* sin_table,
            bool inverse) {
  rotary_of(st, x, batch, n, heads, head_dim, bands, cos_table, sin_table, inverse);
}

void rotary_to_bf16(cudaStream_t st, uint16_t* dst, const float* src, int64_t batch, int64_t n,
                    int64_t heads, int64_t head_dim, int64_t bands, const float* cos_table,
                    const float* sin_table) {
  const int64_t rows = batch * n;
  if (rows <= 0 || heads <= 0 || head_dim <= 0) return;
  rotary_to_bf16_kernel<<<blocks_for(rows * heads * head_dim), kThreads, 0, st>>>(
      dst, src, rows, n, heads, head_dim, bands, cos_table, sin_table);
  PAR_CUDA_CHECK_LAUNCH("rotary_to_bf16_kernel");
}

void rotary_bf16(cudaStream_t st, uint16_t* x, int64_t batch, int64_t n, int64_t heads,
                 int64_t head_dim, int64_t bands, const float* cos_table,
                 const float* sin_table, bool inverse) {
  rotary_of(st, x, batch, n, heads, head_dim, bands, cos_table, sin_table, inverse);
}

void sqrelu_forward(cudaStream_t st, float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  sqrelu_forward_kernel<<<blocks_for(n), kThreads, 0, st>>>(y, x, n);
  PAR_CUDA_CHECK_LAUNCH("sqrelu_forward_kernel");
}

void sqrelu_backward(cudaStream_t st, float* dx, const float* dy, const float* x, int64_t n) {
  if (n <= 0) return;
  sqrelu_backward_kernel<<<blocks_for(n), kThreads, 0, st>>>(dx, dy, x, n);
  PAR_CUDA_CHECK_LAUNCH("sqrelu_backward_kernel");
}

void dropout(cudaStream_t st, float* y, const float* x, int64_t batch, int64_t per_example,
             float p_threshold, float keep_scale, const DropoutKey& key,
             uint64_t example_base) {
  if (batch <= 0 || per_example <= 0) return;
  const int64_t groups = (per_example + 3) / 4;
  dropout_kernel<<<blocks_for(batch * groups), kThreads, 0, st>>>(
      y, x, batch, per_example, p_threshold, keep_scale, key, example_base);
  PAR_CUDA_CHECK_LAUNCH("dropout_kernel");
}

void key_keep_mask(cudaStream_t st, uint8_t* keep, const int32_t* tokens, int64_t batch,
                   int64_t n, int64_t token_stride, bool use_p, float p_threshold,
                   const DropoutKey& key, uint64_t example_base, int64_t position_base) {
  if (batch <= 0 || n <= 0) return;
  key_keep_mask_kernel<<<blocks_for(batch * n), kThreads, 0, st>>>(
      keep, tokens, batch, n, token_stride, use_p, p_threshold, key, example_base,
      position_base);
  PAR_CUDA_CHECK_LAUNCH("key_keep_mask_kernel");
}

void attention_merge_scale(cudaStream_t st, float* o, float* lse, const float* lse_max,
                           int64_t batch, int64_t nq, int64_t heads, int64_t head_dim) {
  const int64_t rows = batch * heads * nq;
  if (rows <= 0) return;
  merge_scale_kernel<<<blocks_for(rows), kThreads, 0, st>>>(o, lse, lse_max, batch, nq, heads,
                                                            head_dim);
  PAR_CUDA_CHECK_LAUNCH("merge_scale_kernel");
}

void attention_merge_finish(cudaStream_t st, float* o, float* lse, const float* lse_max,
                            int64_t batch, int64_t nq, int64_t heads, int64_t head_dim) {
  const int64_t rows = batch * heads * nq;
  if (rows <= 0) return;
  merge_finish_kernel<<<blocks_for(rows), kThreads, 0, st>>>(o, lse, lse_max, batch, nq, heads,
                                                             head_dim);
  PAR_CUDA_CHECK_LAUNCH("merge_finish_kernel");
}

void attention_merge_pair(cudaStream_t st, float* o, float* lse, int64_t batch, int64_t nq,
                          const float* o2, const float* lse2, int64_t nq2, int64_t heads,
                          int64_t head_dim) {
  const int64_t n = batch * nq * heads;
  if (n <= 0) return;
  merge_pair_kernel<<<blocks_for(n), kThreads, 0, st>>>(o, lse, batch, nq, o2, lse2, nq2, heads,
                                                        head_dim);
  PAR_CUDA_CHECK_LAUNCH("merge_pair_kernel");
}

void adam_update(cudaStream_t st, float* param, float* m, float* v, const float* grad,
                 int64_t n, const AdamConstants& c) {
  if (n <= 0) return;
  adam_kernel<<<blocks_for(n), kThreads, 0, st>>>(param, m, v, grad, n, c);
  PAR_CUDA_CHECK_LAUNCH("adam_kernel");
}

void adam_update_spans(cudaStream_t st, float* param, float* m, float* v, const float* grad,
                       const int64_t* begin, const int64_t* end, const float* decay,
                       int64_t count, const AdamConstants& c) {
  for (int64_t k0 = 0; k0 < count; k0 += kAdamSpansPerLaunch) {
    AdamSpanTable t{};
    t.count = int(std::min<int64_t>(kAdamSpansPerLaunch, count - k0));
    for (int k = 0; k < t.count; ++k) {
      t.begin[k] = begin[k0 + k];
      t.end[k] = end[k0 + k];
      t.decay[k] = decay[k0 + k];
    }
    const int64_t n = t.end[t.count - 1] - t.begin[0];
    if (n <= 0) continue;
    adam_spans_kernel<<<blocks_for(n), kThreads, 0, st>>>(param, m, v, grad, t, c);
    PAR_CUDA_CHECK_LAUNCH("adam_spans_kernel");
  }
}

}  // namespace par::cuda::kern
