// The kernels of attention_cudnn_kernels.h. Element-wise over 64-bit counts with grid-
// stride loops, like the rest of the backend's kernels.
#include <cuda_bf16.h>

#include <cfloat>
#include <cub/device/device_scan.cuh>

#include "core/error.h"
#include "kernels/cuda/attention_cudnn_kernels.h"
#include "kernels/cuda/cudnn_key_splits.h"
#include "kernels/cuda/device_util.cuh"

namespace par::cuda::kern {

namespace {

__device__ __forceinline__ uint16_t to_bf16(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
__device__ __forceinline__ float from_bf16(uint16_t u) {
  return __bfloat162float(__ushort_as_bfloat16(u));
}

__global__ void rows_to_bf16_kernel(uint16_t* dst, const float* src, int64_t batch,
                                    int64_t total, int64_t row0, int64_t rows, int64_t width) {
  const int64_t per = rows * width, n = batch * per;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t b = t / per, r = (t % per) / width, e = t % width;
    dst[t] = to_bf16(src[(b * total + row0 + r) * width + e]);
  }
}

__global__ void rows_from_bf16_kernel(float* dst, const uint16_t* src, int64_t batch,
                                      int64_t total, int64_t row0, int64_t rows,
                                      int64_t width) {
  const int64_t per = rows * width, n = batch * per;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t b = t / per, r = (t % per) / width, e = t % width;
    dst[(b * total + row0 + r) * width + e] = from_bf16(src[t]);
  }
}

__global__ void fill_int32_kernel(int32_t* x, int64_t n, int32_t value) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) x[i] = value;
}

__global__ void key_flags_kernel(int32_t* flags, const uint8_t* keep, int64_t batch,
                                 int64_t nk, int64_t prefix) {
  const int64_t n = batch * prefix;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t b = t / prefix, j = t % prefix;
    flags[t] = keep ? (keep[b * nk + j] != 0) : 1;
  }
}

__global__ void key_count_kernel(int32_t* count, const int32_t* flags, const int32_t* pos,
                                 int64_t batch, int64_t prefix) {
  for (int64_t b = global_thread(); b < batch; b += grid_threads()) {
    const int64_t last = b * prefix + prefix - 1;
    count[b] = pos[last] + flags[last] - pos[b * prefix];
  }
}

template <typename S>
__global__ void gather_keys_kernel(uint16_t* kd, uint16_t* vd, const S* k, const S* v,
                                   const int32_t* flags, const int32_t* pos, int64_t batch,
                                   int64_t nk, int64_t prefix, int64_t width) {
  const int64_t per = prefix * width, n = batch * per;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t b = t / per, j = (t % per) / width, e = t % width;
    const int64_t at = b * prefix + j;
    if (!flags[at]) continue;
    const int64_t row = pos[at] - pos[b * prefix];
    const int64_t dst = (b * prefix + row) * width + e, src = (b * nk + j) * width + e;
    kd[dst] = to_bf16(stored_value(k[src]));
    vd[dst] = to_bf16(stored_value(v[src]));
  }
}

__global__ void zero_tail_kernel(uint16_t* kd, uint16_t* vd, const int32_t* count,
                                 int64_t batch, int64_t prefix, int64_t width) {
  const int64_t per = prefix * width, n = batch * per;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t b = t / per, r = (t % per) / width;
    if (r < count[b]) continue;
    kd[t] = 0;
    vd[t] = 0;
  }
}

template <typename S>
__global__ void scatter_key_grads_kernel(S* dk, S* dv, const uint16_t* dkd,
                                         const uint16_t* dvd, const int32_t* flags,
                                         const int32_t* pos, int64_t batch, int64_t nk,
                                         int64_t prefix, int64_t width) {
  const int64_t per = prefix * width, n = batch * per;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t b = t / per, j = (t % per) / width, e = t % width;
    const int64_t at = b * prefix + j, dst = (b * nk + j) * width + e;
    if (!flags[at]) {
      store_value(dk + dst, 0.0f);
      store_value(dv + dst, 0.0f);
      continue;
    }
    const int64_t src = (b * prefix + pos[at] - pos[b * prefix]) * width + e;
    store_value(dk + dst, from_bf16(dkd[src]));
    store_value(dv + dst, from_bf16(dvd[src]));
  }
}

// Rows [row0, nq) of example b come from the dense [batch, nq - row0, width] src unless
// the row or the example saw no key.
__global__ void rows_or_zero_kernel(float* dst, const uint16_t* src, const int32_t* count,
                                    int64_t batch, int64_t nq, int64_t row0, int64_t width) {
  const int64_t per = nq * width, n = batch * per, rows = nq - row0;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t b = t / per, i = (t % per) / width, e = t % width;
    const bool empty = i < row0 || (count && count[b] == 0);
    dst[t] = empty ? 0.0f : from_bf16(src[(b * rows + i - row0) * width + e]);
  }
}

__global__ void stats_or_empty_kernel(float* lse, const float* stats, const int32_t* count,
                                      int64_t batch, int64_t heads, int64_t nq, int64_t row0) {
  const int64_t n = batch * heads * nq, rows = nq - row0;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t bh = t / nq, i = t % nq, b = bh / heads;
    const bool empty = i < row0 || (count && count[b] == 0);
    lse[t] = empty ? -INFINITY : stats[bh * rows + i - row0];
  }
}

__global__ void backward_stats_kernel(float* stats, const float* lse, int64_t batch,
                                      int64_t heads, int64_t nq, int64_t row0, int64_t rows) {
  const int64_t n = batch * heads * rows;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t bh = t / rows, r = t % rows;
    const float l = lse[bh * nq + row0 + r];
    stats[t] = l == -INFINITY ? FLT_MAX : l;
  }
}

__global__ void merge_rows_kernel(float* o, float* lse, const float* o2, const float* lse2,
                                  int64_t batch, int64_t nq, int64_t row0, int64_t rows,
                                  int64_t heads, int64_t head_dim) {
  const int64_t n = batch * heads * rows, ld = heads * head_dim;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t bh = t / rows, r = t % rows, b = bh / heads, h = bh % heads;
    float& l1 = lse[bh * nq + row0 + r];
    const float l2 = lse2[t];
    const float m = fmaxf(l1, l2);
    if (m == -INFINITY) continue;  // empty in both: o = 0 and lse = -inf already
    const float w1 = l1 == -INFINITY ? 0.0f : expf(l1 - m);
    const float w2 = l2 == -INFINITY ? 0.0f : expf(l2 - m);
    const float inv = 1.0f / (w1 + w2);
    float* a = o + (b * nq + row0 + r) * ld + h * head_dim;
    const float* c = o2 + (b * rows + r) * ld + h * head_dim;
    for (int64_t d = 0; d < head_dim; ++d) a[d] = (w1 * a[d] + w2 * c[d]) * inv;
    l1 = m + logf(w1 + w2);
  }
}

constexpr int kMaxSplits = int(kMaxKeySplits);  // checked at the launch

// A thread per element of o (consecutive threads, consecutive elements of a row); the
// element of head dimension 0 writes the row's lse.
__global__ void merge_key_splits_kernel(float* o, float* lse, const uint16_t* ob,
                                        const float* stats, int64_t batch, int64_t splits,
                                        int64_t nq, int64_t row0, int64_t heads,
                                        int64_t head_dim) {
  const int64_t ld = heads * head_dim, n = batch * nq * ld, rows = nq - row0;
  for (int64_t t = global_thread(); t < n; t += grid_threads()) {
    const int64_t b = t / (nq * ld), i = (t / ld) % nq, e = t % ld, h = e / head_dim;
    const int64_t at = (b * heads + h) * nq + i;  // the row's lse
    float l[kMaxSplits];
    float m = -INFINITY;
    bool nan = false;
    for (int64_t c = 0; c < splits; ++c) {
      l[c] = i < row0 ? -INFINITY : stats[((b * splits + c) * heads + h) * rows + i - row0];
      nan |= isnan(l[c]);
      m = fmaxf(m, l[c]);
    }
    if (nan) {  // carried on, as one piece's would be (fmaxf would drop it)
      o[t] = NAN;
      if (e % head_dim == 0) lse[at] = NAN;
      continue;
    }
    if (m == -INFINITY) {  // no key seen: empty
      o[t] = 0.0f;
      if (e % head_dim == 0) lse[at] = -INFINITY;
      continue;
    }
    const uint16_t* x = ob + (b * splits * rows + i - row0) * ld + e;
    float sum = 0.0f, acc = 0.0f;
    for (int64_t c = 0; c < splits; ++c) {
      const float w = l[c] == -INFINITY ? 0.0f : expf(l[c] - m);
      sum += w;
      acc += w * from_bf16(x[c * rows * ld]);
    }
    o[t] = acc / sum;
    if (e % head_dim == 0) lse[at] = m + logf(sum);
  }
}

__global__ void key_split_counts_kernel(int32_t* counts, int64_t batch, int64_t splits,
                                        int64_t chunk, int64_t keys) {
  for (int64_t t = global_thread(); t < batch * splits; t += grid_threads()) {
    const int64_t left = keys - (t % splits) * chunk;
    counts[t] = int32_t(left < 0 ? 0 : left < chunk ? left : chunk);
  }
}

// Launches `kernel` over n elements (grid-stride: blocks_for(n)) and checks the launch.
template <typename... Params, typename... Args>
void launch(cudaStream_t st, int64_t n, void (*kernel)(Params...), const char* name,
            Args... args) {
  if (n <= 0) return;
  kernel<<<blocks_for(n), kThreads, 0, st>>>(args...);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail_cuda(e, name, __FILE__, __LINE__);
}

}  // namespace

void rows_to_bf16(cudaStream_t st, uint16_t* dst, const float* src, int64_t batch,
                  int64_t total, int64_t row0, int64_t rows, int64_t width) {
  launch(st, batch * rows * width, rows_to_bf16_kernel, "rows_to_bf16_kernel", dst, src, batch,
         total, row0, rows, width);
}

void rows_from_bf16(cudaStream_t st, float* dst, const uint16_t* src, int64_t batch,
                    int64_t total, int64_t row0, int64_t rows, int64_t width) {
  launch(st, batch * rows * width, rows_from_bf16_kernel, "rows_from_bf16_kernel", dst, src,
         batch, total, row0, rows, width);
}

void fill_int32(cudaStream_t st, int32_t* x, int64_t n, int32_t value) {
  launch(st, n, fill_int32_kernel, "fill_int32_kernel", x, n, value);
}

size_t key_scan_scratch_bytes(int64_t n) {
  size_t bytes = 0;
  PAR_ASSERT(n >= 0 && n <= INT32_MAX, "key scan of ", n, " entries exceeds CUB's int range");
  PAR_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                               static_cast<int32_t*>(nullptr), int(n)));
  return bytes;
}

void scan_visible_keys(cudaStream_t st, int32_t* flags, int32_t* pos, int32_t* count,
                       const uint8_t* keep, int64_t batch, int64_t nk, int64_t prefix,
                       void* scratch, size_t scratch_bytes) {
  const int64_t n = batch * prefix;
  if (n <= 0) return;
  launch(st, n, key_flags_kernel, "key_flags_kernel", flags, keep, batch, nk, prefix);
  size_t bytes = scratch_bytes;
  PAR_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scratch, bytes, flags, pos, int(n), st));
  launch(st, batch, key_count_kernel, "key_count_kernel", count, flags, pos, batch, prefix);
}

template <typename S>
void gather_keys(cudaStream_t st, uint16_t* kd, uint16_t* vd, const S* k, const S* v,
                 const int32_t* flags, const int32_t* pos, const int32_t* count,
                 int64_t batch, int64_t nk, int64_t prefix, int64_t width) {
  const int64_t n = batch * prefix * width;
  launch(st, n, gather_keys_kernel<S>, "gather_keys_kernel", kd, vd, k, v, flags, pos, batch,
         nk, prefix, width);
  launch(st, n, zero_tail_kernel, "zero_tail_kernel", kd, vd, count, batch, prefix, width);
}

template <typename S>
void scatter_key_grads(cudaStream_t st, S* dk, S* dv, const uint16_t* dkd,
                       const uint16_t* dvd, const int32_t* flags, const int32_t* pos,
                       int64_t batch, int64_t nk, int64_t prefix, int64_t width) {
  launch(st, batch * prefix * width, scatter_key_grads_kernel<S>, "scatter_key_grads_kernel",
         dk, dv, dkd, dvd, flags, pos, batch, nk, prefix, width);
}

#define PAR_KEY_KERNELS(S)                                                                       \
  template void gather_keys(cudaStream_t, uint16_t*, uint16_t*, const S*, const S*,             \
                            const int32_t*, const int32_t*, const int32_t*, int64_t, int64_t,   \
                            int64_t, int64_t);                                                   \
  template void scatter_key_grads(cudaStream_t, S*, S*, const uint16_t*, const uint16_t*,       \
                                  const int32_t*, const int32_t*, int64_t, int64_t, int64_t,    \
                                  int64_t);
PAR_KEY_KERNELS(float)
PAR_KEY_KERNELS(uint16_t)
#undef PAR_KEY_KERNELS

void attention_results(cudaStream_t st, float* o, float* lse, const uint16_t* ob,
                       const float* stats, const int32_t* count, int64_t batch, int64_t nq,
                       int64_t row0, int64_t heads, int64_t head_dim) {
  launch(st, batch * nq * heads * head_dim, rows_or_zero_kernel, "rows_or_zero_kernel", o, ob,
         count, batch, nq, row0, heads * head_dim);
  launch(st, batch * heads * nq, stats_or_empty_kernel, "stats_or_empty_kernel", lse, stats,
         count, batch, heads, nq, row0);
}

void merge_key_splits(cudaStream_t st, float* o, float* lse, const uint16_t* ob,
                      const float* stats, int64_t batch, int64_t splits, int64_t nq,
                      int64_t row0, int64_t heads, int64_t head_dim) {
  PAR_ASSERT(splits >= 1 && splits <= kMaxSplits, "merge_key_splits: ", splits, " chunks");
  launch(st, batch * nq * heads * head_dim, merge_key_splits_kernel, "merge_key_splits_kernel",
         o, lse, ob, stats, batch, splits, nq, row0, heads, head_dim);
}

void key_split_counts(cudaStream_t st, int32_t* counts, int64_t batch, int64_t splits,
                      int64_t chunk, int64_t keys) {
  launch(st, batch * splits, key_split_counts_kernel, "key_split_counts_kernel", counts, batch,
         splits, chunk, keys);
}

void query_grads(cudaStream_t st, float* dq, const uint16_t* dqb, const int32_t* count,
                 int64_t batch, int64_t nq, int64_t row0, int64_t width) {
  launch(st, batch * nq * width, rows_or_zero_kernel, "rows_or_zero_kernel", dq, dqb, count,
         batch, nq, row0, width);
}

void backward_stats(cudaStream_t st, float* stats, const float* lse, int64_t batch,
                    int64_t heads, int64_t nq, int64_t row0, int64_t rows) {
  launch(st, batch * heads * rows, backward_stats_kernel, "backward_stats_kernel", stats, lse,
         batch, heads, nq, row0, rows);
}

void merge_attention_rows(cudaStream_t st, float* o, float* lse, const float* o2,
                          const float* lse2, int64_t batch, int64_t nq, int64_t row0,
                          int64_t rows, int64_t heads, int64_t head_dim) {
  launch(st, batch * heads * rows, merge_rows_kernel, "merge_rows_kernel", o, lse, o2, lse2,
         batch, nq, row0, rows, heads, head_dim);
}

}  // namespace par::cuda::kern
