// Attention of one query per (example, head) over many keys, split across the whole GPU
// ("flash-decoding"): the keys are cut into splits of kDecodeKeys, one thread block per
// (split, head, example) computes its split's scores, their maximum m, the sum l of
// exp(score - m) and the un-normalized output sum_j exp(s_j - m) v_j; a second kernel merges
// the splits by log-sum-exp (weights exp(m_s - M), M the largest m), as the sequence-
// parallel merge of attention_merge_* does across ranks. A decoding step (one new latent
// over 131072 cached keys) then occupies every SM instead of one block per head.
//
// Products follow the MatmulPrecision as cuBLAS's modes do: q, k, the probabilities and v
// are rounded to tf32 or bf16 before they are multiplied, with float32 sums; the softmax is
// float32 with expf, as the blocked path. Deterministic: fixed splits and reduction orders.
// The keys and values may be stored in bfloat16 (a decoder's caches under --precision
// bf16): they are read as they are, which is what rounding float32 ones to bf16 gives, so
// the arithmetic is the same and half the bytes are read.
#include <mma.h>

#include <cmath>

#include "core/error.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kernels.h"

namespace par::cuda::kern {

namespace {

constexpr int kDecodeThreads = 128;

template <int R>  // 0: float32, 1: tf32, 2: bf16
__device__ __forceinline__ float product_input(float x) {
  if constexpr (R == 1) return nvcuda::wmma::__float_to_tf32(x);
  if constexpr (R == 2) return __bfloat162float(__float2bfloat16_rn(x));
  return x;
}

// A stored key or value as a product's input: float32 rounded as R says, bfloat16 bits
// (uint16_t) as they are (rounding them again to bf16 changes nothing).
template <int R>
__device__ __forceinline__ float stored_input(float x) {
  return product_input<R>(x);
}
template <int R>
__device__ __forceinline__ float stored_input(uint16_t x) {
  return __bfloat162float(__ushort_as_bfloat16(x));
}

template <typename KV>
struct SplitArgs {
  const float* q;
  const KV *k, *v;
  const int64_t *q_pos, *k_pos;
  const uint8_t* k_keep;
  int64_t nk, heads, head_dim, splits;
  float scale;
  float *part_o, *part_m, *part_l;  // [batch, heads, splits, head_dim], [.., splits] x 2
};

// Dynamic shared memory: q [head_dim], scores [kDecodeKeys], output partials
// [groups, head_dim] (groups = max(1, threads / head_dim)).
template <int R, typename KV>
__global__ void __launch_bounds__(kDecodeThreads) decode_split(SplitArgs<KV> a) {
  extern __shared__ float smem[];
  __shared__ float reduce[kBlockReduceSlots];
  const int64_t D = a.head_dim, ld = a.heads * D;
  const int64_t b = blockIdx.z, h = blockIdx.y, split = blockIdx.x;
  const int64_t j0 = split * kDecodeKeys;
  const int64_t count = a.nk - j0 < kDecodeKeys ? a.nk - j0 : kDecodeKeys;
  float* q_s = smem;
  float* p_s = q_s + D;
  float* o_s = p_s + kDecodeKeys;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
  for (int64_t d = tid; d < D; d += blockDim.x) q_s[d] = product_input<R>(a.q[b * ld + h * D + d]);
  __syncthreads();
  const int64_t q_pos = a.q_pos[0];
  const KV* k = a.k + (b * a.nk + j0) * ld + h * D;
  for (int64_t j = warp; j < count; j += warps) {
    float s = 0;
    for (int64_t d = lane; d < D; d += 32) s += q_s[d] * stored_input<R>(k[j * ld + d]);
    s = warp_sum(s);
    const bool visible =
        a.k_pos[j0 + j] <= q_pos && (a.k_keep == nullptr || a.k_keep[b * a.nk + j0 + j] != 0);
    if (lane == 0) p_s[j] = visible ? s * a.scale : -INFINITY;
  }
  __syncthreads();
  float m = -INFINITY;
  for (int64_t j = tid; j < count; j += blockDim.x) m = fmaxf(m, p_s[j]);
  m = block_max(m, reduce, -INFINITY);
  float l = 0;
  for (int64_t j = tid; j < count; j += blockDim.x) {
    const float p = m == -INFINITY ? 0.0f : expf(p_s[j] - m);
    p_s[j] = p;
    l += p;
  }
  l = block_sum(l, reduce);  // synchronizes: every p_s is written
  // Output: `groups` groups of head_dim threads, each over every groups-th key, then the
  // groups' sums in order.
  const int64_t groups = D <= blockDim.x ? blockDim.x / D : 1;
  const KV* v = a.v + (b * a.nk + j0) * ld + h * D;
  for (int64_t t = tid; t < groups * D; t += blockDim.x) {
    const int64_t g = t / D, d = t % D;
    float acc = 0;
    for (int64_t j = g; j < count; j += groups)
      acc += product_input<R>(p_s[j]) * stored_input<R>(v[j * ld + d]);
    o_s[g * D + d] = acc;
  }
  __syncthreads();
  const int64_t part = (b * a.heads + h) * a.splits + split;
  for (int64_t d = tid; d < D; d += blockDim.x) {
    float acc = 0;
    for (int64_t g = 0; g < groups; ++g) acc += o_s[g * D + d];
    a.part_o[part * D + d] = acc;
  }
  if (tid == 0) {
    a.part_m[part] = m;
    a.part_l[part] = l;
  }
}

// A few queries per example over the same keys (several samples' newest latents over their
// shared cache): one block per (split, head, example) reads its keys and values once for
// all nq <= kDecodeMaxQueries queries. Each warp scores a key for every query (one load of
// the key, nq dot products); each query's maximum and sum are a warp's; each thread sums
// one dimension of the values for every query (one load of the value) over every
// groups-th key, and the groups' sums are added in order. Dynamic shared memory
// (decode_queries_smem_floats): q [nq, D], scores [nq, kDecodeKeys], the queries' m and l,
// then the groups' sums [groups, nq, D].
template <int R, typename KV>
__global__ void __launch_bounds__(kDecodeThreads) decode_split_queries(SplitArgs<KV> a, int nq) {
  extern __shared__ float smem[];
  const int64_t D = a.head_dim, ld = a.heads * D;
  const int64_t b = blockIdx.z, h = blockIdx.y, split = blockIdx.x;
  const int64_t j0 = split * kDecodeKeys;
  const int64_t count = a.nk - j0 < kDecodeKeys ? a.nk - j0 : kDecodeKeys;
  float* q_s = smem;
  float* p_s = q_s + nq * D;
  float* m_s = p_s + nq * kDecodeKeys;
  float* l_s = m_s + nq;
  float* o_s = l_s + nq;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
  for (int64_t t = tid; t < nq * D; t += blockDim.x) {
    const int64_t i = t / D, d = t % D;
    q_s[t] = product_input<R>(a.q[(b * nq + i) * ld + h * D + d]);
  }
  __syncthreads();
  const KV* k = a.k + (b * a.nk + j0) * ld + h * D;
  for (int64_t j = warp; j < count; j += warps) {
    float s[kDecodeMaxQueries];
    for (int i = 0; i < kDecodeMaxQueries; ++i) s[i] = 0;
    for (int64_t d = lane; d < D; d += 32) {
      const float kd = stored_input<R>(k[j * ld + d]);
      for (int i = 0; i < kDecodeMaxQueries; ++i)
        if (i < nq) s[i] += q_s[i * D + d] * kd;
    }
    const bool kept = a.k_keep == nullptr || a.k_keep[b * a.nk + j0 + j] != 0;
    const int64_t pos = a.k_pos[j0 + j];
    for (int i = 0; i < kDecodeMaxQueries; ++i) {
      if (i >= nq) break;
      const float dot = warp_sum(s[i]);
      if (lane == 0) p_s[i * kDecodeKeys + j] = kept && pos <= a.q_pos[i] ? dot * a.scale : -INFINITY;
    }
  }
  __syncthreads();
  for (int i = warp; i < nq; i += warps) {
    float* p = p_s + i * kDecodeKeys;
    float m = -INFINITY;
    for (int64_t j = lane; j < count; j += 32) m = fmaxf(m, p[j]);
    m = warp_max(m);
    float l = 0;
    for (int64_t j = lane; j < count; j += 32) {
      const float e = m == -INFINITY ? 0.0f : expf(p[j] - m);
      p[j] = e;
      l += e;
    }
    l = warp_sum(l);
    if (lane == 0) {
      m_s[i] = m;
      l_s[i] = l;
    }
  }
  __syncthreads();
  const KV* v = a.v + (b * a.nk + j0) * ld + h * D;
  const int64_t groups = D <= blockDim.x ? blockDim.x / D : 1;
  for (int64_t t = tid; t < groups * D; t += blockDim.x) {
    const int64_t g = t / D, d = t % D;
    float acc[kDecodeMaxQueries];
    for (int i = 0; i < kDecodeMaxQueries; ++i) acc[i] = 0;
    for (int64_t j = g; j < count; j += groups) {
      const float vd = stored_input<R>(v[j * ld + d]);
      for (int i = 0; i < kDecodeMaxQueries; ++i)
        if (i < nq) acc[i] += product_input<R>(p_s[i * kDecodeKeys + j]) * vd;
    }
    for (int i = 0; i < kDecodeMaxQueries; ++i)
      if (i < nq) o_s[(g * nq + i) * D + d] = acc[i];
  }
  __syncthreads();
  for (int64_t t = tid; t < nq * D; t += blockDim.x) {
    const int64_t i = t / D, d = t % D;
    float acc = 0;
    for (int64_t g = 0; g < groups; ++g) acc += o_s[(g * nq + i) * D + d];
    const int64_t part = ((b * a.heads + h) * nq + i) * a.splits + split;
    a.part_o[part * D + d] = acc;
    if (d == 0) {
      a.part_m[part] = m_s[i];
      a.part_l[part] = l_s[i];
    }
  }
}

// The dynamic shared memory of decode_split_queries, in floats.
int64_t decode_queries_smem_floats(int64_t nq, int64_t head_dim) {
  const int64_t groups = head_dim <= kDecodeThreads ? kDecodeThreads / head_dim : 1;
  return nq * (head_dim + kDecodeKeys + 2 + groups * head_dim);
}

// One block per (example, head, query): o = sum_s w_s o_s / sum_s w_s l_s, w_s =
// exp(m_s - M). Partials [batch, heads, nq, splits]; o [batch, nq, heads * D] and lse
// [batch, heads, nq] as attention_forward lays them out.
__global__ void decode_merge(const float* part_o, const float* part_m, const float* part_l,
                             float* o, float* lse, int64_t D, int64_t splits, int64_t heads,
                             int64_t nq) {
  __shared__ float reduce[kBlockReduceSlots];
  const int64_t bh = blockIdx.x;  // (b * heads + h) * nq + i
  const int64_t i = bh % nq, h = (bh / nq) % heads, b = bh / (nq * heads);
  float* out = o + ((b * nq + i) * heads + h) * D;
  const float* m = part_m + bh * splits;
  const float* l = part_l + bh * splits;
  float top = -INFINITY;
  for (int64_t s = threadIdx.x; s < splits; s += blockDim.x) top = fmaxf(top, m[s]);
  top = block_max(top, reduce, -INFINITY);
  auto weight = [&](int64_t s) { return m[s] == -INFINITY ? 0.0f : expf(m[s] - top); };
  float sum = 0;
  for (int64_t s = threadIdx.x; s < splits; s += blockDim.x) sum += weight(s) * l[s];
  sum = block_sum(sum, reduce);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0;
    for (int64_t s = 0; s < splits; ++s) acc += weight(s) * part_o[(bh * splits + s) * D + d];
    out[d] = sum > 0 ? acc / sum : 0.0f;
  }
  if (threadIdx.x == 0) lse[bh] = sum > 0 ? top + logf(sum) : -INFINITY;
}

}  // namespace

int64_t decode_attention_splits(int64_t nk) {
  return nk <= kDecodeKeys ? 1 : (nk + kDecodeKeys - 1) / kDecodeKeys;
}

size_t decode_attention_scratch_floats(const AttentionShape& s) {
  return size_t(s.batch * s.heads * s.nq * decode_attention_splits(s.nk) * (s.head_dim + 2));
}

namespace {

template <typename KV>
void decode(cudaStream_t st, const AttentionShape& s, const float* q, const KV* k, const KV* v,
            float* o, float* lse, int rounding, float* scratch) {
  PAR_ASSERT(s.nq == 1, "the split attention is for one query, not ", s.nq);
  if (s.batch == 0 || s.heads == 0) return;
  const int64_t splits = decode_attention_splits(s.nk);
  const int64_t parts = s.batch * s.heads * splits;
  SplitArgs<KV> a{q,          k,      v,           s.q_pos, s.k_pos,
                  s.k_keep,   s.nk,   s.heads,     s.head_dim, splits,
                  float(s.scale), scratch, scratch + parts * s.head_dim,
                  scratch + parts * (s.head_dim + 1)};
  const int64_t groups = s.head_dim <= kDecodeThreads ? kDecodeThreads / s.head_dim : 1;
  const size_t smem = sizeof(float) * size_t(s.head_dim + kDecodeKeys + groups * s.head_dim);
  // 48 KiB with the kernel's static reduce[].
  PAR_ASSERT(smem + kBlockReduceSlots * sizeof(float) <= 48 * 1024, "head size ", s.head_dim,
             " is too large for the split attention");
  PAR_ASSERT(s.heads <= 65535 && s.batch <= 65535, "the split attention takes at most 65535 "
             "heads and examples (grid y and z)");
  const dim3 grid(unsigned(splits), unsigned(s.heads), unsigned(s.batch));
  switch (rounding) {
    case 0: decode_split<0, KV><<<grid, kDecodeThreads, smem, st>>>(a); break;
    case 1: decode_split<1, KV><<<grid, kDecodeThreads, smem, st>>>(a); break;
    default: decode_split<2, KV><<<grid, kDecodeThreads, smem, st>>>(a); break;
  }
  PAR_CUDA_CHECK(cudaGetLastError());
  decode_merge<<<unsigned(s.batch * s.heads), threads_for_row(s.head_dim), 0, st>>>(
      a.part_o, a.part_m, a.part_l, o, lse, s.head_dim, splits, s.heads, 1);
  PAR_CUDA_CHECK(cudaGetLastError());
}

template <typename KV>
void decode_queries(cudaStream_t st, const AttentionShape& s, const float* q, const KV* k,
                    const KV* v, float* o, float* lse, int rounding, float* scratch) {
  PAR_ASSERT(s.nq >= 1 && s.nq <= kDecodeMaxQueries, "the split attention takes 1 to ",
             kDecodeMaxQueries, " queries, not ", s.nq);
  if (s.batch == 0 || s.heads == 0) return;
  const int64_t splits = decode_attention_splits(s.nk);
  const int64_t parts = s.batch * s.heads * s.nq * splits;
  SplitArgs<KV> a{q,          k,      v,           s.q_pos, s.k_pos,
                  s.k_keep,   s.nk,   s.heads,     s.head_dim, splits,
                  float(s.scale), scratch, scratch + parts * s.head_dim,
                  scratch + parts * (s.head_dim + 1)};
  const size_t smem = sizeof(float) * size_t(decode_queries_smem_floats(s.nq, s.head_dim));
  PAR_ASSERT(smem <= 48 * 1024, "head size ", s.head_dim, " with ", s.nq,
             " queries is too large for the split attention");
  PAR_ASSERT(s.heads <= 65535 && s.batch <= 65535, "the split attention takes at most 65535 "
             "heads and examples (grid y and z)");
  const dim3 grid(unsigned(splits), unsigned(s.heads), unsigned(s.batch));
  const int nq = int(s.nq);
  switch (rounding) {
    case 0: decode_split_queries<0, KV><<<grid, kDecodeThreads, smem, st>>>(a, nq); break;
    case 1: decode_split_queries<1, KV><<<grid, kDecodeThreads, smem, st>>>(a, nq); break;
    default: decode_split_queries<2, KV><<<grid, kDecodeThreads, smem, st>>>(a, nq); break;
  }
  PAR_CUDA_CHECK(cudaGetLastError());
  decode_merge<<<unsigned(s.batch * s.heads * s.nq), threads_for_row(s.head_dim), 0, st>>>(
      a.part_o, a.part_m, a.part_l, o, lse, s.head_dim, splits, s.heads, s.nq);
  PAR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void attention_forward_decode(cudaStream_t st, const AttentionShape& s, const float* q,
                              const float* k, const float* v, float* o, float* lse,
                              int rounding, float* scratch) {
  decode(st, s, q, k, v, o, lse, rounding, scratch);
}

void attention_forward_decode_bf16_kv(cudaStream_t st, const AttentionShape& s, const float* q,
                                      const uint16_t* k, const uint16_t* v, float* o,
                                      float* lse, int rounding, float* scratch) {
  decode(st, s, q, k, v, o, lse, rounding, scratch);
}

bool decode_queries_cover(const AttentionShape& s) {
  return s.nq >= 2 && s.nq <= kDecodeMaxQueries && s.nk >= kDecodeQueriesMinKeys &&
         size_t(decode_queries_smem_floats(s.nq, s.head_dim)) * sizeof(float) <= 48 * 1024;
}

void attention_forward_decode_queries(cudaStream_t st, const AttentionShape& s, const float* q,
                                      const float* k, const float* v, float* o, float* lse,
                                      int rounding, float* scratch) {
  decode_queries(st, s, q, k, v, o, lse, rounding, scratch);
}

void attention_forward_decode_queries_bf16_kv(cudaStream_t st, const AttentionShape& s,
                                              const float* q, const uint16_t* k,
                                              const uint16_t* v, float* o, float* lse,
                                              int rounding, float* scratch) {
  decode_queries(st, s, q, k, v, o, lse, rounding, scratch);
}

}  // namespace par::cuda::kern
