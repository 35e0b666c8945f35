// Ops::token_attention_forward on the GPU (core/ops.h, TokenAttentionShape). The arithmetic
// is the CPU's (kernels/cpu/token_attention.cpp): per token and query-head the coefficients
// c = (unrotated q.k, then q_a k_a + q_b k_b per band, then q_b k_a - q_a k_b per band),
// scaled by scale * log2(e), so that a key's score is c . (1, cos, sin) in base 2; per token
// the sum of its keys' softmax weights, and the token's value row applied once.
//
// Three kernels on the stream, no atomics, no host synchronization (a decoding step may be
// recorded into a CUDA graph):
//   1. plan (one block): per token t its first visible key (a binary search of its
//      positions for first_position), its items (pieces of up to kTokenItemKeys visible
//      keys) numbered by a prefix sum over the tokens, and each item's (token, keys);
//   2. scan: one block per (item, tile of kTokenTile query-heads). The grid is an upper
//      bound on the items known on the host (vocab + stride / kTokenItemKeys + 1); blocks
//      past the actual count exit. The block computes its token's coefficients for the tile
//      into shared memory, each thread runs over every blockDim-th key of the item with an
//      online (max, sum) per query-head, and the block combines them in a fixed order into
//      partials[qh][item];
//   3. finish: one block per query-head: the maximum over the items, each token's weight
//      (the sum over its items, which are consecutive), o = sum_t w_t value_t / sum_t w_t
//      and lse = max * ln 2 + ln(sum_t w_t); 0 and -inf where no key is visible.
// Float32 throughout, whatever the matrix-product precision (no products round here).
#include <cub/cub.cuh>

#include <cmath>

#include "core/error.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kernels.h"

namespace par::cuda::kern {

namespace {

constexpr int kPlanThreads = 256;
constexpr int kScanThreads = 256;
constexpr int kFinishThreads = 256;
constexpr int kTile = int(kTokenTile);
static_assert(kTokenMaxHeadDim <= kFinishThreads, "finish: one thread per dimension at least");

// One work item: keys [begin, begin + count) of token `token` (-1: past the last item).
struct Item {
  int64_t begin;
  int32_t token, count;
};

size_t round_up(size_t x) { return (x + 255) / 256 * 256; }

// Coefficient rows in shared memory, padded to whole float4s.
__host__ __device__ inline int coef_stride(int64_t bands) { return int((1 + 2 * bands + 3) / 4 * 4); }

struct PlanArgs {
  const int64_t *group, *pos;
  const int64_t* first_at;  // when set, first_position is read there
  int64_t vocab, first_position, bound;
  int64_t* prefix;  // [vocab + 1]
  Item* items;      // [bound]
};

__global__ void __launch_bounds__(kPlanThreads) token_plan(PlanArgs a) {
  using Scan = cub::BlockScan<int64_t, kPlanThreads>;
  __shared__ typename Scan::TempStorage scan;
  int64_t carry = 0;
  const int64_t first_position = a.first_at ? *a.first_at : a.first_position;
  for (int64_t t0 = 0; t0 < a.vocab; t0 += kPlanThreads) {
    const int64_t t = t0 + threadIdx.x;
    int64_t first = 0, end = 0, pieces = 0;
    if (t < a.vocab) {
      int64_t lo = a.group[t], hi = a.group[t + 1];
      end = hi;
      while (lo < hi) {  // the first key at or after first_position
        const int64_t mid = lo + (hi - lo) / 2;
        if (a.pos[mid] < first_position) lo = mid + 1;
        else hi = mid;
      }
      first = lo;
      pieces = (end - first + kTokenItemKeys - 1) / kTokenItemKeys;
    }
    int64_t before = 0, tile = 0;
    Scan(scan).ExclusiveSum(pieces, before, tile);
    if (t < a.vocab) {
      a.prefix[t] = carry + before;
      for (int64_t p = 0; p < pieces; ++p) {
        const int64_t x = carry + before + p;
        const int64_t b = first + p * kTokenItemKeys;
        if (x < a.bound)  // always, for keys that fit the rows (stride >= keys)
          a.items[x] = Item{b, int32_t(t), int32_t(min(kTokenItemKeys, end - b))};
      }
    }
    carry += tile;
    __syncthreads();  // the scan's storage is reused by the next tile
  }
  if (threadIdx.x == 0) a.prefix[a.vocab] = carry;
  for (int64_t x = carry + threadIdx.x; x < a.bound; x += kPlanThreads) a.items[x] = Item{0, -1, 0};
}

// (m, s) += (m2, s2): two softmax sums of base-2 scores, each against its maximum; s == 0
// is the empty sum. Commutative bit for bit (a product and a sum of two terms each).
__device__ __forceinline__ void combine(float& m, float& s, float m2, float s2) {
  if (s2 == 0) return;
  if (s == 0) {
    m = m2;
    s = s2;
    return;
  }
  const float top = fmaxf(m, m2);
  s = s * exp2f(m - top) + s2 * exp2f(m2 - top);
  m = top;
}

struct ScanArgs {
  const Item* items;
  const float *q, *key_table, *cos, *sin;
  int64_t nq, heads, head_dim, bands, stride, bound;
  float factor;      // scale * log2(e)
  float2* partials;  // [nq * heads, bound]: (max, sum)
};

// kB: the band count known at compile time (each thread's rotary rows in registers), or 0.
template <int kB>
__global__ void __launch_bounds__(kScanThreads) token_scan(ScanArgs a) {
  extern __shared__ float4 coef4[];  // [kTile, coef_stride(bands) / 4]
  __shared__ float2 red[kScanThreads / 32][kTile];
  const Item it = a.items[blockIdx.x];
  if (it.token < 0) return;  // the whole block: past the last item
  const int64_t B = kB > 0 ? kB : a.bands, D = a.head_dim, width = a.heads * D;
  const int R = coef_stride(B);
  const int64_t QH = a.nq * a.heads, qh0 = int64_t(blockIdx.y) * kTile;
  const int count = int(QH - qh0 < kTile ? QH - qh0 : kTile);
  float* coef = reinterpret_cast<float*>(coef4);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int idx = tid; idx < count * R; idx += blockDim.x) {
    const int u = idx / R, r = idx % R;
    const int64_t qh = qh0 + u, h = qh / a.nq, i = qh % a.nq;
    const float* qv = a.q + i * width + h * D;
    const float* kv = a.key_table + int64_t(it.token) * width + h * D;
    float c = 0;
    if (r == 0) {
      for (int64_t x = 2 * B; x < D; ++x) c = fmaf(qv[x], kv[x], c);
    } else if (r <= B) {
      const int64_t b = r - 1;
      c = qv[2 * b] * kv[2 * b] + qv[2 * b + 1] * kv[2 * b + 1];
    } else if (r <= 2 * B) {
      const int64_t b = r - 1 - B;
      c = qv[2 * b + 1] * kv[2 * b] - qv[2 * b] * kv[2 * b + 1];
    }  // else padding: 0
    coef[idx] = c * a.factor;
  }
  __syncthreads();

  float m[kTile], s[kTile];
#pragma unroll
  for (int u = 0; u < kTile; ++u) {
    m[u] = -INFINITY;
    s[u] = 0;
  }
  constexpr int kRegs = kB > 0 ? kB : 1;
  for (int64_t j = it.begin + tid; j < it.begin + it.count; j += blockDim.x) {
    float rc[kRegs], rs[kRegs];
    if constexpr (kB > 0) {
#pragma unroll
      for (int b = 0; b < kB; ++b) {
        rc[b] = a.cos[b * a.stride + j];
        rs[b] = a.sin[b * a.stride + j];
      }
    }
#pragma unroll
    for (int u = 0; u < kTile; ++u) {
      if (u >= count) break;
      float score;
      if constexpr (kB > 0) {
        constexpr int kR = (1 + 2 * kB + 3) / 4 * 4;
        float c[kR];
#pragma unroll
        for (int v = 0; v < kR / 4; ++v) {
          const float4 w = coef4[u * (kR / 4) + v];
          c[4 * v] = w.x;
          c[4 * v + 1] = w.y;
          c[4 * v + 2] = w.z;
          c[4 * v + 3] = w.w;
        }
        score = c[0];
#pragma unroll
        for (int b = 0; b < kB; ++b) {
          score = fmaf(c[1 + b], rc[b], score);
          score = fmaf(c[1 + kB + b], rs[b], score);
        }
      } else {
        const float* c = coef + u * R;
        score = c[0];
        for (int64_t b = 0; b < B; ++b) {
          score = fmaf(c[1 + b], a.cos[b * a.stride + j], score);
          score = fmaf(c[1 + B + b], a.sin[b * a.stride + j], score);
        }
      }
      if (score > m[u]) {
        s[u] = s[u] * exp2f(m[u] - score) + 1.0f;
        m[u] = score;
      } else {
        s[u] += exp2f(score - m[u]);
      }
    }
  }
  // The threads' sums per query-head: over each warp by a butterfly, then over the warps
  // in order.
#pragma unroll
  for (int u = 0; u < kTile; ++u) {
    if (u >= count) break;
    float mu = m[u], su = s[u];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, mu, o);
      const float s2 = __shfl_xor_sync(0xffffffffu, su, o);
      combine(mu, su, m2, s2);
    }
    if (lane == 0) red[warp][u] = make_float2(mu, su);
  }
  __syncthreads();
  if (tid < count) {
    float mu = -INFINITY, su = 0;
    for (int w = 0; w < int(blockDim.x >> 5); ++w) combine(mu, su, red[w][tid].x, red[w][tid].y);
    a.partials[(qh0 + tid) * a.bound + blockIdx.x] = make_float2(mu, su);
  }
}

struct FinishArgs {
  const int64_t* prefix;
  const float2* partials;
  const float* value_table;
  int64_t nq, heads, head_dim, vocab, bound;
  float *o, *lse;
};

__global__ void __launch_bounds__(kFinishThreads) token_finish(FinishArgs a) {
  __shared__ float reduce[kBlockReduceSlots];
  __shared__ float w_s[kFinishThreads];
  __shared__ float o_s[kFinishThreads];    // [groups, head_dim]
  __shared__ float tot_s[kFinishThreads];  // [groups]
  const int64_t qh = blockIdx.x, h = qh / a.nq, i = qh % a.nq, D = a.head_dim;
  const int64_t width = a.heads * D;
  const float2* part = a.partials + qh * a.bound;
  const int64_t items = min(a.prefix[a.vocab], a.bound);
  const int tid = threadIdx.x;
  float top = -INFINITY;
  for (int64_t x = tid; x < items; x += blockDim.x)
    if (part[x].y > 0) top = fmaxf(top, part[x].x);
  top = block_max(top, reduce, -INFINITY);
  float* oq = a.o + i * width + h * D;
  if (top == -INFINITY) {  // no visible key (the same for the whole block)
    for (int64_t d = tid; d < D; d += blockDim.x) oq[d] = 0;
    if (tid == 0) a.lse[qh] = -INFINITY;
    return;
  }
  // `groups` groups of D threads, each over every groups-th token of a tile.
  const int64_t groups = blockDim.x / D, g = tid / D, d = tid % D;
  const bool active = g < groups;
  float acc = 0, tot = 0;
  for (int64_t t0 = 0; t0 < a.vocab; t0 += blockDim.x) {
    const int64_t t = t0 + tid;
    float w = 0;
    if (t < a.vocab) {
      const int64_t x1 = min(a.prefix[t + 1], a.bound);
      for (int64_t x = a.prefix[t]; x < x1; ++x) {
        const float2 p = part[x];
        if (p.y > 0) w += p.y * exp2f(p.x - top);
      }
    }
    w_s[tid] = w;
    __syncthreads();
    const int64_t n = min(int64_t(blockDim.x), a.vocab - t0);
    if (active)
      for (int64_t k = g; k < n; k += groups) {
        const float wk = w_s[k];
        if (wk > 0) {
          acc = fmaf(wk, a.value_table[(t0 + k) * width + h * D + d], acc);
          tot += wk;
        }
      }
    __syncthreads();  // w_s is written again by the next tile
  }
  if (active) {
    o_s[g * D + d] = acc;
    if (d == 0) tot_s[g] = tot;
  }
  __syncthreads();
  float total = 0;
  for (int64_t k = 0; k < groups; ++k) total += tot_s[k];
  for (int64_t e = tid; e < D; e += blockDim.x) {
    float sum = 0;
    for (int64_t k = 0; k < groups; ++k) sum += o_s[k * D + e];
    oq[e] = sum / total;
  }
  if (tid == 0) a.lse[qh] = top * 0.69314718055994531f + logf(total);
}

}  // namespace

TokenAttentionPlan token_attention_plan(const TokenAttentionShape& s) {
  TokenAttentionPlan p;
  const int64_t QH = s.nq * s.heads;
  if (s.nq < 0 || s.heads < 0 || s.vocab < 0 || s.stride < 0 || s.bands < 0) return p;
  if (s.head_dim < 1 || s.head_dim > kTokenMaxHeadDim || 2 * s.bands > s.head_dim) return p;
  if (QH > kTokenMaxQueryHeads) return p;
  // Several examples with keys of their own (decoding's samples over their generated keys):
  // not taken here yet; the decoder attends those keys as cache rows instead, which on a GPU
  // cost little next to a call per sample.
  if (s.batch != 1) return p;
  p.items = s.vocab + s.stride / kTokenItemKeys + 1;
  if (p.items > INT32_MAX) return p;
  p.covered = true;
  p.tiles = (QH + kTokenTile - 1) / kTokenTile;
  p.shared_bytes = size_t(kTokenTile) * size_t(coef_stride(s.bands)) * sizeof(float);
  p.prefix_offset = 0;
  p.items_offset = round_up(size_t(s.vocab + 1) * sizeof(int64_t));
  p.partials_offset = p.items_offset + round_up(size_t(p.items) * sizeof(Item));
  p.bytes = QH == 0 ? 0 : p.partials_offset + round_up(size_t(QH * p.items) * sizeof(float2));
  return p;
}

void token_attention_forward(cudaStream_t st, const TokenAttentionShape& s,
                             const TokenAttentionPlan& p, const float* q,
                             const float* key_table, const float* value_table,
                             const float* cos, const float* sin, float* o, float* lse,
                             void* scratch) {
  PAR_ASSERT(p.covered, "token_attention_forward: a shape its plan does not cover");
  if (s.nq * s.heads == 0) return;
  char* base = static_cast<char*>(scratch);
  auto* prefix = reinterpret_cast<int64_t*>(base + p.prefix_offset);
  auto* items = reinterpret_cast<Item*>(base + p.items_offset);
  auto* partials = reinterpret_cast<float2*>(base + p.partials_offset);
  token_plan<<<1, kPlanThreads, 0, st>>>(
      PlanArgs{s.group, s.pos, s.first_position_at, s.vocab, s.first_position, p.items, prefix,
               items});
  PAR_CUDA_CHECK(cudaGetLastError());
  const ScanArgs a{items,      q,       key_table, cos,      sin,     s.nq,
                   s.heads,    s.head_dim, s.bands, s.stride, p.items,
                   float(s.scale * 1.4426950408889634), partials};
  const dim3 grid(unsigned(p.items), unsigned(p.tiles));
  switch (s.bands) {
    case 4: token_scan<4><<<grid, kScanThreads, p.shared_bytes, st>>>(a); break;
    case 8: token_scan<8><<<grid, kScanThreads, p.shared_bytes, st>>>(a); break;
    case 16: token_scan<16><<<grid, kScanThreads, p.shared_bytes, st>>>(a); break;
    default: token_scan<0><<<grid, kScanThreads, p.shared_bytes, st>>>(a); break;
  }
  PAR_CUDA_CHECK(cudaGetLastError());
  token_finish<<<unsigned(s.nq * s.heads), kFinishThreads, 0, st>>>(
      FinishArgs{prefix, partials, value_table, s.nq, s.heads, s.head_dim, s.vocab, p.items, o, lse});
  PAR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace par::cuda::kern
