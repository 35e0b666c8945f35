// Kernels that reduce: bias gradients (column sums), LayerNorm forward and backward, the
// cross-entropy, and the sum of squares for the gradient norm.
//
// Every reduction is deterministic: a sum over many rows is done in passes with a fixed
// chunking (chunk partial sums; the partials added in fixed groups of chunks, in double;
// the groups added in order by one thread per column), and a sum along a row is a fixed
// tree over a fixed number of threads. No atomics. Long sums accumulate in double where the CPU backend does.
#include <cmath>

#include "core/constants.h"
#include "core/error.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kernels.h"

namespace par::cuda::kern {

namespace {

// Columns per block of the column sums (one thread per column: coalesced row reads).
constexpr int kColsPerBlock = 256;
// Elements per block of the sum of squares' first pass.
constexpr int64_t kSquaresChunk = int64_t(1) << 16;

double* group_sums_of(float* partial, int64_t chunks, int64_t cols) {
  return reinterpret_cast<double*>(partial + (chunks * cols + 1) / 2 * 2);
}

// groups[g, c] = sum of partial[k, c] over the chunks k of group g, in double, in order.
__global__ void group_sums_kernel(double* groups, const float* partial, int64_t chunks,
                                  int64_t cols) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t g = blockIdx.y;
  if (c >= cols) return;
  const int64_t k0 = g * kChunksPerGroup;
  const int64_t k1 = k0 + kChunksPerGroup < chunks ? k0 + kChunksPerGroup : chunks;
  double s = 0.0;
  for (int64_t k = k0; k < k1; ++k) s += double(partial[k * cols + c]);
  groups[g * cols + c] = s;
}

// Adds the chunk partials into groups_of(chunks) double sums per column.
void sum_groups(cudaStream_t st, double* groups, const float* partial, int64_t chunks,
                int64_t cols) {
  PAR_ASSERT(groups_of(chunks) <= 65535, "column sums of ", chunks, " chunks exceed the grid");
  const dim3 grid(unsigned((cols + kThreads - 1) / kThreads), unsigned(groups_of(chunks)));
  group_sums_kernel<<<grid, kThreads, 0, st>>>(groups, partial, chunks, cols);
  PAR_CUDA_CHECK_LAUNCH("group_sums_kernel");
}

// partial[chunk, c] = sum of x[r, c] over the chunk's rows, in row order.
template <typename S>
__global__ void column_partial_kernel(float* partial, const S* x, int64_t rows,
                                      int64_t cols) {
  // Chunks along x (up to 2^31 - 1 of them: y would stop at 65535, 4.2M rows, which a
  // bias gradient over B x N inputs passes at N = 1,048,576 and B = 4).
  const int64_t c = int64_t(blockIdx.y) * kColsPerBlock + threadIdx.x;
  const int64_t chunk = blockIdx.x;
  if (c >= cols) return;
  const int64_t r0 = chunk * kRowsPerChunk;
  const int64_t r1 = r0 + kRowsPerChunk < rows ? r0 + kRowsPerChunk : rows;
  float s = 0.0f;
  for (int64_t r = r0; r < r1; ++r) s += stored_value(x[r * cols + c]);
  partial[chunk * cols + c] = s;
}

// out[c] += sum over groups of groups[g, c], in group order, in double.
__global__ void column_finish_kernel(float* out, const double* groups, int64_t count,
                                     int64_t cols) {
  for (int64_t c = global_thread(); c < cols; c += grid_threads()) {
    double s = 0.0;
    for (int64_t g = 0; g < count; ++g) s += groups[g * cols + c];
    out[c] += float(s);
  }
}

// Where a LayerNorm's input rows lie: a dense [rows, d] tensor, or the embedding rows
// table[ids[b * id_stride + j]] of row b * n + j (LN_kv of the embeddings, not stored).
struct DenseRows {
  const float* x;
  int64_t d;
  __device__ const float* row(int64_t r) const { return x + r * d; }
};
struct EmbeddingRows {
  const int32_t* ids;
  int64_t n, id_stride;
  const float* table;
  int64_t d;
  __device__ const float* row(int64_t r) const {
    return table + int64_t(ids[(r / n) * id_stride + r % n]) * d;
  }
};

// One block per row: mean, then the centred sum of squares (two passes, as on the CPU).
template <typename S, typename Rows>
__global__ void layernorm_forward_kernel(S* y, float* mean, float* rstd, Rows x,
                                         const float* w, const float* b, int64_t rows,
                                         int64_t d, float eps) {
  __shared__ float shared[kBlockReduceSlots];
  const float inv_d = 1.0f / float(d);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x.row(r);
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) s += xr[c];
    const float mu = block_sum(s, shared) * inv_d;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      const float t = xr[c] - mu;
      ss += t * t;
    }
    const float rs = 1.0f / sqrtf(block_sum(ss, shared) * inv_d + eps);
    if (threadIdx.x == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
    S* yr = y + r * d;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x)
      store_value(yr + c, (xr[c] - mu) * rs * w[c] + b[c]);
  }
}

// One block per chunk of rows_per_chunk rows. dx row by row (two row sums each); the
// parameter gradients' per-chunk sums in shared memory, each column owned by one thread
// (column c by thread c mod blockDim), written to partial[chunk, 0..2d) at the end.
template <typename Rows>
__global__ void layernorm_backward_kernel(float* dx, bool accumulate_dx, float* partial,
                                          const float* dy, Rows x, const float* mean,
                                          const float* rstd, const float* w, int64_t rows,
                                          int64_t d, int64_t rows_per_chunk) {
  extern __shared__ float acc[];  // [2d]: dw sums, then db sums
  __shared__ float shared[kBlockReduceSlots];
  const float inv_d = 1.0f / float(d);
  // acc[c] and acc[d + c] belong to the thread of column c, but the zeroing and the final
  // copy go by index, so they are fenced off from the row loop.
  for (int64_t c = threadIdx.x; c < 2 * d; c += blockDim.x) acc[c] = 0.0f;
  __syncthreads();
  const int64_t chunk = blockIdx.x;
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x.row(r);
    const float* g = dy + r * d;
    const float mu = mean[r], rs = rstd[r];
    float sum_gw = 0.0f, sum_gw_xhat = 0.0f;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      const float xhat = (xr[c] - mu) * rs;
      const float gw = g[c] * w[c];
      sum_gw += gw;
      sum_gw_xhat += gw * xhat;
    }
    const float m1 = block_sum(sum_gw, shared) * inv_d;
    const float m2 = block_sum(sum_gw_xhat, shared) * inv_d;
    float* out = dx + r * d;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      const float xhat = (xr[c] - mu) * rs;
      const float v = rs * (g[c] * w[c] - m1 - (xr[c] - mu) * rs * m2);
      out[c] = accumulate_dx ? out[c] + v : v;
      acc[c] += g[c] * xhat;
      acc[d + c] += g[c];
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < 2 * d; c += blockDim.x) partial[chunk * 2 * d + c] = acc[c];
}

// dw[c] += sum of groups[g, c], db[c] += sum of groups[g, d + c], groups in order.
__global__ void layernorm_params_kernel(float* dw, float* db, const double* groups,
                                        int64_t count, int64_t d) {
  for (int64_t c = global_thread(); c < 2 * d; c += grid_threads()) {
    double s = 0.0;
    for (int64_t g = 0; g < count; ++g) s += groups[g * 2 * d + c];
    if (c < d) dw[c] += float(s);
    else db[c - d] += float(s);
  }
}

// One block per row, in double like the CPU backend.
__global__ void cross_entropy_forward_kernel(float* ce, float* lse, const float* logits,
                                             const int32_t* targets, int64_t rows,
                                             int64_t vocab) {
  __shared__ double shared[kBlockReduceSlots];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* z = logits + r * vocab;
    double mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmax(mx, double(z[j]));
    mx = block_max(mx, shared, double(-INFINITY));
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) s += exp(double(z[j]) - mx);
    s = block_sum(s, shared);
    if (threadIdx.x == 0) {
      const double l = mx + log(s);
      lse[r] = float(l);
      const int32_t t = targets[r];
      ce[r] = t == kPadToken ? 0.0f : float(l - double(z[t]));
    }
  }
}

__global__ void cross_entropy_backward_kernel(float* dlogits, const float* logits,
                                              const float* lse, const int32_t* targets,
                                              int64_t rows, int64_t vocab, double scale,
                                              double z_loss) {
  const int64_t total = rows * vocab;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t r = t / vocab, j = t % vocab;
    const int32_t y = targets[r];
    if (y == kPadToken) {
      dlogits[t] = 0.0f;
      continue;
    }
    const double l = lse[r];
    const double f = scale * (1.0 + 2.0 * z_loss * l);
    float g = float(f * exp(double(logits[t]) - l));
    if (j == y) g -= float(scale);
    dlogits[t] = g;
  }
}

// partial[block] = sum of squares of the block's chunk of kSquaresChunk elements.
__global__ void squares_partial_kernel(double* partial, const float* x, int64_t n) {
  __shared__ double shared[kBlockReduceSlots];
  const int64_t i0 = int64_t(blockIdx.x) * kSquaresChunk;
  const int64_t i1 = i0 + kSquaresChunk < n ? i0 + kSquaresChunk : n;
  double s = 0.0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += double(x[i]) * double(x[i]);
  s = block_sum(s, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// One block: thread t adds partials t, t + blockDim, ... in order, then a block tree.
__global__ void squares_finish_kernel(double* result, const double* partial, int64_t chunks) {
  __shared__ double shared[kBlockReduceSlots];
  double s = 0.0;
  for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) s += partial[k];
  s = block_sum(s, shared);
  if (threadIdx.x == 0) *result = s;
}

}  // namespace

namespace {

template <typename S>
void column_sums_of(cudaStream_t st, float* out, const S* x, int64_t rows, int64_t cols,
                    float* partial) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t chunks = chunks_of(rows);
  const int64_t col_blocks = (cols + kColsPerBlock - 1) / kColsPerBlock;
  PAR_ASSERT(chunks <= (int64_t(1) << 31) - 1 && col_blocks <= 65535,
             "column_sums: ", rows, " x ", cols, " exceeds the kernel's grid");
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(col_blocks));
  column_partial_kernel<<<grid, kColsPerBlock, 0, st>>>(partial, x, rows, cols);
  PAR_CUDA_CHECK_LAUNCH("column_partial_kernel");
  double* groups = group_sums_of(partial, chunks, cols);
  sum_groups(st, groups, partial, chunks, cols);
  column_finish_kernel<<<blocks_for(cols), kThreads, 0, st>>>(out, groups, groups_of(chunks),
                                                              cols);
  PAR_CUDA_CHECK_LAUNCH("column_finish_kernel");
}

}  // namespace

void column_sums(cudaStream_t st, float* out, const float* x, int64_t rows, int64_t cols,
                 float* partial) {
  column_sums_of(st, out, x, rows, cols, partial);
}

void column_sums_bf16(cudaStream_t st, float* out, const uint16_t* x, int64_t rows,
                      int64_t cols, float* partial) {
  column_sums_of(st, out, x, rows, cols, partial);
}

namespace {

template <typename S, typename Rows>
void layernorm_forward_of(cudaStream_t st, S* y, float* mean, float* rstd, Rows x,
                          const float* w, const float* b, int64_t rows, int64_t d, float eps) {
  if (rows <= 0 || d <= 0) return;
  const unsigned grid = unsigned(std::min<int64_t>(rows, int64_t(1) << 20));
  layernorm_forward_kernel<S, Rows><<<grid, threads_for_row(d), 0, st>>>(y, mean, rstd, x, w,
                                                                         b, rows, d, eps);
  PAR_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

template <typename Rows>
void layernorm_backward_of(cudaStream_t st, float* dx, bool accumulate_dx, float* dw,
                           float* db, const float* dy, Rows x, const float* mean,
                           const float* rstd, const float* w, int64_t rows, int64_t d,
                           float* partial) {
  if (rows <= 0 || d <= 0) return;
  const int64_t chunks = norm_chunks_of(rows);
  PAR_ASSERT(chunks <= (int64_t(1) << 31) - 1);
  const size_t smem = size_t(2 * d) * sizeof(float);
  // The default limit of 48 KiB counts the kernel's static shared[] too.
  if (smem + kBlockReduceSlots * sizeof(float) > 48 * 1024) {
    // Beyond the default limit: opt in (up to the device's maximum; d <= ~28000 on H100).
    PAR_CUDA_CHECK(cudaFuncSetAttribute(layernorm_backward_kernel<Rows>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(smem)));
  }
  layernorm_backward_kernel<Rows><<<unsigned(chunks), threads_for_row(d), smem, st>>>(
      dx, accumulate_dx, partial, dy, x, mean, rstd, w, rows, d, norm_rows_per_chunk(rows));
  PAR_CUDA_CHECK_LAUNCH("layernorm_backward_kernel");
  double* groups = group_sums_of(partial, chunks, 2 * d);
  sum_groups(st, groups, partial, chunks, 2 * d);
  layernorm_params_kernel<<<blocks_for(2 * d), kThreads, 0, st>>>(dw, db, groups,
                                                                  groups_of(chunks), d);
  PAR_CUDA_CHECK_LAUNCH("layernorm_params_kernel");
}

}  // namespace

void layernorm_forward(cudaStream_t st, float* y, float* mean, float* rstd, const float* x,
                       const float* w, const float* b, int64_t rows, int64_t d, float eps) {
  layernorm_forward_of(st, y, mean, rstd, DenseRows{x, d}, w, b, rows, d, eps);
}

void layernorm_forward_bf16(cudaStream_t st, uint16_t* y, float* mean, float* rstd,
                            const float* x, const float* w, const float* b, int64_t rows,
                            int64_t d, float eps) {
  layernorm_forward_of(st, y, mean, rstd, DenseRows{x, d}, w, b, rows, d, eps);
}

void embedding_layernorm_forward_bf16(cudaStream_t st, uint16_t* y, float* mean, float* rstd,
                                      const int32_t* ids, int64_t batch, int64_t n,
                                      int64_t id_stride, const float* table, const float* w,
                                      const float* b, int64_t d, float eps) {
  if (n <= 0) return;
  layernorm_forward_of(st, y, mean, rstd, EmbeddingRows{ids, n, id_stride, table, d}, w, b,
                       batch * n, d, eps);
}

void embedding_layernorm_backward(cudaStream_t st, float* dx, float* dw, float* db,
                                  const float* dy, const int32_t* ids, int64_t batch, int64_t n,
                                  int64_t id_stride, const float* table, const float* mean,
                                  const float* rstd, const float* w, int64_t d, float* partial) {
  if (n <= 0) return;
  layernorm_backward_of(st, dx, false, dw, db, dy, EmbeddingRows{ids, n, id_stride, table, d},
                        mean, rstd, w, batch * n, d, partial);
}

void layernorm_backward(cudaStream_t st, float* dx, bool accumulate_dx, float* dw, float* db,
                        const float* dy, const float* x, const float* mean, const float* rstd,
                        const float* w, int64_t rows, int64_t d, float* partial) {
  layernorm_backward_of(st, dx, accumulate_dx, dw, db, dy, DenseRows{x, d}, mean, rstd, w, rows,
                        d, partial);
}

void cross_entropy_forward(cudaStream_t st, float* ce, float* lse, const float* logits,
                           const int32_t* targets, int64_t rows, int64_t vocab) {
  if (rows <= 0 || vocab <= 0) return;
  const unsigned grid = unsigned(std::min<int64_t>(rows, int64_t(1) << 20));
  cross_entropy_forward_kernel<<<grid, threads_for_row(vocab), 0, st>>>(ce, lse, logits,
                                                                        targets, rows, vocab);
  PAR_CUDA_CHECK_LAUNCH("cross_entropy_forward_kernel");
}

void cross_entropy_backward(cudaStream_t st, float* dlogits, const float* logits,
                            const float* lse, const int32_t* targets, int64_t rows,
                            int64_t vocab, double scale, double z_loss) {
  if (rows <= 0 || vocab <= 0) return;
  cross_entropy_backward_kernel<<<blocks_for(rows * vocab), kThreads, 0, st>>>(
      dlogits, logits, lse, targets, rows, vocab, scale, z_loss);
  PAR_CUDA_CHECK_LAUNCH("cross_entropy_backward_kernel");
}

int64_t sum_squares_partial_doubles(int64_t n) {
  return std::max<int64_t>(1, (n + kSquaresChunk - 1) / kSquaresChunk);
}

void sum_squares(cudaStream_t st, double* result, const float* x, int64_t n, double* partial) {
  if (n <= 0) {
    PAR_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), st));
    return;
  }
  const int64_t chunks = sum_squares_partial_doubles(n);
  PAR_ASSERT(chunks <= (int64_t(1) << 31) - 1);
  squares_partial_kernel<<<unsigned(chunks), kThreads, 0, st>>>(partial, x, n);
  PAR_CUDA_CHECK_LAUNCH("squares_partial_kernel");
  squares_finish_kernel<<<1, 1024, 0, st>>>(result, partial, chunks);
  PAR_CUDA_CHECK_LAUNCH("squares_finish_kernel");
}

}  // namespace par::cuda::kern
