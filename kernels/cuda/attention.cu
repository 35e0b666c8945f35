// The element-wise and row steps of the blocked attention (kernels/cuda/attention_plan.h
// states what each does); the matrix products between them are cuBLAS calls.
//
// Visibility of key j of a block to query i: k_pos[j] <= q_pos[i] and k_keep[j] != 0. The
// running statistics per (head, query) row live in [heads, nq] arrays.
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kernels.h"

namespace par::cuda::kern {

namespace {

constexpr int kRowThreads = 128;

__device__ __forceinline__ bool visible(const ScoreBlockArgs& b, int64_t j, int64_t qp) {
  return b.k_pos[j] <= qp && (b.k_keep == nullptr || b.k_keep[j] != 0);
}

__global__ void fwd_init_kernel(float* run_max, float* run_sum, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    run_max[i] = -INFINITY;
    run_sum[i] = 0.0f;
  }
}

// One block per (head, query) row of the block's scores.
__global__ void fwd_block_kernel(ScoreBlockArgs b, float* run_max, float* run_sum, float* acc,
                                 int64_t ld_acc, int64_t head_dim) {
  __shared__ float shared[kBlockReduceSlots];
  const int64_t rows = b.heads * b.nq;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t h = row / b.nq, i = row % b.nq;
    const int64_t qp = b.q_pos[i];
    float* s = b.s + row * b.ld;
    // Read before any thread of the block can write it (thread 0, after the reductions).
    const float m_old = run_max[row];
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < b.keys; j += blockDim.x)
      if (visible(b, j, qp)) mx = fmaxf(mx, s[j]);
    mx = block_max(mx, shared, -INFINITY);
    if (mx == -INFINITY) {  // no visible key in this block: nothing to add
      for (int64_t j = threadIdx.x; j < b.keys; j += blockDim.x) s[j] = 0.0f;
      continue;
    }
    const float m_new = fmaxf(m_old, mx);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < b.keys; j += blockDim.x) {
      const float p = visible(b, j, qp) ? expf(s[j] - m_new) : 0.0f;
      s[j] = p;
      sum += p;
    }
    sum = block_sum(sum, shared);
    const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
    if (threadIdx.x == 0) {
      run_sum[row] = run_sum[row] * alpha + sum;
      run_max[row] = m_new;
    }
    if (alpha != 1.0f) {
      float* a = acc + i * ld_acc + h * head_dim;
      for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) a[d] *= alpha;
    }
  }
}

// One thread per element of o; lse written by the thread of the row's first element.
__global__ void fwd_finish_kernel(float* o, int64_t ld_o, float* lse, const float* run_max,
                                  const float* run_sum, int64_t heads, int64_t nq,
                                  int64_t head_dim) {
  const int64_t total = nq * heads * head_dim;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t d = t % head_dim, h = (t / head_dim) % heads, i = t / (head_dim * heads);
    const int64_t row = h * nq + i;
    const float sum = run_sum[row];
    float& out = o[i * ld_o + h * head_dim + d];
    if (sum > 0.0f) {
      out *= 1.0f / sum;
      if (d == 0) lse[row] = run_max[row] + logf(sum);
    } else {
      out = 0.0f;
      if (d == 0) lse[row] = -INFINITY;
    }
  }
}

// One warp per (example, head, query) row.
__global__ void bwd_delta_kernel(float* delta, const float* o, const float* d_o, int64_t batch,
                                 int64_t nq, int64_t heads, int64_t head_dim) {
  const int64_t rows = batch * heads * nq;
  const int64_t warps = grid_threads() / 32;
  const int lane = threadIdx.x & 31;
  for (int64_t row = global_thread() / 32; row < rows; row += warps) {
    const int64_t i = row % nq, h = (row / nq) % heads, b = row / (nq * heads);
    const int64_t off = (b * nq + i) * heads * head_dim + h * head_dim;
    float t = 0.0f;
    for (int64_t d = lane; d < head_dim; d += 32) t += o[off + d] * d_o[off + d];
    t = warp_sum(t);
    if (lane == 0) delta[row] = t;
  }
}

__global__ void bwd_probs_kernel(ScoreBlockArgs b, const float* lse) {
  const int64_t total = b.heads * b.nq * b.keys;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t j = t % b.keys, row = t / b.keys, i = row % b.nq;
    const float l = lse[row];
    float& s = b.s[row * b.ld + j];
    s = (l != -INFINITY && visible(b, j, b.q_pos[i])) ? expf(s - l) : 0.0f;
  }
}

__global__ void bwd_dscores_kernel(float* dp, int64_t ld, const float* p, int64_t heads,
                                   int64_t nq, int64_t keys, const float* delta) {
  const int64_t total = heads * nq * keys;
  for (int64_t t = global_thread(); t < total; t += grid_threads()) {
    const int64_t j = t % keys, row = t / keys;
    const int64_t at = row * ld + j;
    dp[at] = p[at] * (dp[at] - delta[row]);
  }
}

}  // namespace

void attn_fwd_init(cudaStream_t st, float* run_max, float* run_sum, int64_t n) {
  if (n <= 0) return;
  fwd_init_kernel<<<blocks_for(n), kThreads, 0, st>>>(run_max, run_sum, n);
  PAR_CUDA_CHECK_LAUNCH("fwd_init_kernel");
}

void attn_fwd_block(cudaStream_t st, const ScoreBlockArgs& blk, float* run_max,
                    float* run_sum, float* acc, int64_t ld_acc, int64_t head_dim) {
  const int64_t rows = blk.heads * blk.nq;
  if (rows <= 0 || blk.keys <= 0) return;
  const unsigned grid = unsigned(std::min<int64_t>(rows, int64_t(1) << 20));
  fwd_block_kernel<<<grid, kRowThreads, 0, st>>>(blk, run_max, run_sum, acc, ld_acc, head_dim);
  PAR_CUDA_CHECK_LAUNCH("fwd_block_kernel");
}

void attn_fwd_finish(cudaStream_t st, float* o, int64_t ld_o, float* lse,
                     const float* run_max, const float* run_sum, int64_t heads, int64_t nq,
                     int64_t head_dim) {
  const int64_t total = nq * heads * head_dim;
  if (total > 0) {
    fwd_finish_kernel<<<blocks_for(total), kThreads, 0, st>>>(o, ld_o, lse, run_max, run_sum,
                                                              heads, nq, head_dim);
    PAR_CUDA_CHECK_LAUNCH("fwd_finish_kernel");
  } else if (heads * nq > 0) {
    // head_dim 0: no outputs, but every row attended to nothing.
    fill(st, lse, heads * nq, -INFINITY);
  }
}

void attn_bwd_delta(cudaStream_t st, float* delta, const float* o, const float* d_o,
                    int64_t batch, int64_t nq, int64_t heads, int64_t head_dim) {
  const int64_t rows = batch * heads * nq;
  if (rows <= 0) return;
  bwd_delta_kernel<<<blocks_for(rows * 32), kThreads, 0, st>>>(delta, o, d_o, batch, nq, heads,
                                                               head_dim);
  PAR_CUDA_CHECK_LAUNCH("bwd_delta_kernel");
}

void attn_bwd_probs(cudaStream_t st, const ScoreBlockArgs& blk, const float* lse) {
  const int64_t total = blk.heads * blk.nq * blk.keys;
  if (total <= 0) return;
  bwd_probs_kernel<<<blocks_for(total), kThreads, 0, st>>>(blk, lse);
  PAR_CUDA_CHECK_LAUNCH("bwd_probs_kernel");
}

void attn_bwd_dscores(cudaStream_t st, float* dp, int64_t ld, const float* p, int64_t heads,
                      int64_t nq, int64_t keys, const float* delta) {
  const int64_t total = heads * nq * keys;
  if (total <= 0) return;
  bwd_dscores_kernel<<<blocks_for(total), kThreads, 0, st>>>(dp, ld, p, heads, nq, keys, delta);
  PAR_CUDA_CHECK_LAUNCH("bwd_dscores_kernel");
}

}  // namespace par::cuda::kern
