// A fused attention forward for tf32 and bf16 (flash-attention style): one thread block per
// tile of 64 queries of one (example, head) walks the keys in tiles of 64 with the running
// max and sum of attention_plan.h, so scores never leave the SM. Products on the tensor
// cores through WMMA (bf16: 16x16x16, tf32: 16x16x8) with float32 accumulation; the
// softmax in float32 with expf, as the blocked path does.
//
// Each of the 4 warps owns 16 query rows. Its scores, probabilities and output rows live in
// shared memory, because the element order of a WMMA accumulator is unspecified: the
// running rescale (o *= alpha) is done there by two lanes per row, and the accumulator is
// reloaded from it for o += P V. Opt-in (set_attention_kernel) until it has run on a GPU.
#include <cmath>

#include "core/error.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/wmma_traits.cuh"

namespace par::cuda::kern {

namespace {

using namespace fused;

struct FusedArgs {
  const float *q, *k, *v;
  float *o, *lse;
  const int64_t *q_pos, *k_pos;
  const uint8_t* k_keep;  // [batch, nk] or null
  int64_t nq, nk, heads;
  float scale;
};

template <int D, typename P>
size_t fused_smem_bytes() {
  using S = typename P::Storage;
  return sizeof(S) * (kTileQ * D + 2 * kTileK * D + kWarps * 16 * kTileK) +
         sizeof(float) * (kWarps * 16 * kTileK + kWarps * 16 * D) + sizeof(int64_t) * kTileK +
         kTileK;
}

template <int D, typename P>
__global__ void __launch_bounds__(kFusedThreads) fused_forward_kernel(FusedArgs a) {
  static_assert(D % 16 == 0 && D <= 128, "head sizes of the fused kernel");
  using S = typename P::Storage;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, P::kStep, typename P::Elem, wmma::row_major>;
  using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, P::kStep, typename P::Elem, wmma::col_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, P::kStep, typename P::Elem, wmma::row_major>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, P::kStep, float>;

  // Every region starts at a multiple of 32 bytes (WMMA's alignment): the sizes are.
  extern __shared__ __align__(128) unsigned char smem[];
  S* q_s = reinterpret_cast<S*>(smem);            // [kTileQ][D]
  S* k_s = q_s + kTileQ * D;                      // [kTileK][D]
  S* v_s = k_s + kTileK * D;                      // [kTileK][D]
  S* p_s = v_s + kTileK * D;                      // [kWarps][16][kTileK]
  float* s_s = reinterpret_cast<float*>(p_s + kWarps * 16 * kTileK);  // [kWarps][16][kTileK]
  float* o_s = s_s + kWarps * 16 * kTileK;        // [kWarps][16][D]
  int64_t* kp_s = reinterpret_cast<int64_t*>(o_s + kWarps * 16 * D);  // [kTileK]
  uint8_t* vis_s = reinterpret_cast<uint8_t*>(kp_s + kTileK);         // [kTileK]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = int64_t(blockIdx.x) * kTileQ;
  const int64_t ld = a.heads * D;

  for (int t = tid; t < kTileQ * D; t += kFusedThreads) {
    const int64_t qi = q0 + t / D;
    const float x = qi < a.nq ? a.q[(b * a.nq + qi) * ld + h * D + t % D] : 0.0f;
    q_s[t] = P::from_float(x);
  }
  float* o_w = o_s + warp * 16 * D;
  for (int t = lane; t < 16 * D; t += 32) o_w[t] = 0.0f;
  // The tile's latest query position: later keys (k_pos is non-decreasing) are invisible.
  __shared__ int64_t q_last_s[kWarps];
  int64_t q_last = INT64_MIN;
  for (int t = tid; t < kTileQ; t += kFusedThreads)
    if (q0 + t < a.nq) q_last = max(q_last, a.q_pos[q0 + t]);
  for (int off = 16; off > 0; off >>= 1) q_last = max(q_last, __shfl_xor_sync(0xffffffffu, q_last, off));
  if (lane == 0) q_last_s[warp] = q_last;
  __syncthreads();
  q_last = max(max(q_last_s[0], q_last_s[1]), max(q_last_s[2], q_last_s[3]));

  // Two lanes per row: `row` of this warp's 16, columns (keys, then head dims) by halves.
  // Rows are a multiple of 32 words apart in shared memory, so each lane walks its half
  // starting at an offset of its own, which keeps the 32 lanes on different banks.
  const int row = lane >> 1, half = lane & 1;
  const int64_t i = q0 + warp * 16 + row;
  const int64_t qp = i < a.nq ? a.q_pos[i] : INT64_MIN;
  float run_max = -INFINITY, run_sum = 0.0f;
  S* p_w = p_s + warp * 16 * kTileK;
  float* s_w = s_s + warp * 16 * kTileK;

  for (int64_t j0 = 0; j0 < a.nk; j0 += kTileK) {
    if (a.k_pos[j0] > q_last) break;  // uniform over the block
    __syncthreads();  // the previous tile's K and V are no longer read
    for (int t = tid; t < kTileK * D; t += kFusedThreads) {
      const int64_t j = j0 + t / D;
      const int64_t at = (b * a.nk + j) * ld + h * D + t % D;
      k_s[t] = P::from_float(j < a.nk ? a.k[at] : 0.0f);
      v_s[t] = P::from_float(j < a.nk ? a.v[at] : 0.0f);
    }
    for (int t = tid; t < kTileK; t += kFusedThreads) {
      const int64_t j = j0 + t;
      const bool in = j < a.nk && (a.k_keep == nullptr || a.k_keep[b * a.nk + j] != 0);
      kp_s[t] = in ? a.k_pos[j] : INT64_MAX;
      vis_s[t] = in ? 1 : 0;
    }
    __syncthreads();

    // S = Q K^T for this warp's 16 rows and the tile's 64 keys.
    for (int nf = 0; nf < kTileK / 16; ++nf) {
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < D; kk += P::kStep) {
        FragA fa;
        FragBt fb;
        wmma::load_matrix_sync(fa, q_s + warp * 16 * D + kk, D);
        wmma::load_matrix_sync(fb, k_s + nf * 16 * D + kk, D);
        P::round(fa);
        P::round(fb);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(s_w + nf * 16, acc, kTileK, wmma::mem_row_major);
    }
    __syncwarp();

    // The running max and sum of the row, as attention_plan.h's fwd_block.
    const int c0 = half * (kTileK / 2);
    float tile_max = -INFINITY;
    for (int cc = 0; cc < kTileK / 2; ++cc) {
      const int c = c0 + ((cc + lane) & (kTileK / 2 - 1));
      if (vis_s[c] && kp_s[c] <= qp) tile_max = fmaxf(tile_max, s_w[row * kTileK + c] * a.scale);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(run_max, tile_max);
    float sum = 0.0f;
    for (int cc = 0; cc < kTileK / 2; ++cc) {
      const int c = c0 + ((cc + lane) & (kTileK / 2 - 1));
      const bool seen = m_new != -INFINITY && vis_s[c] && kp_s[c] <= qp;
      const float p = seen ? expf(s_w[row * kTileK + c] * a.scale - m_new) : 0.0f;
      sum += p;
      p_w[row * kTileK + c] = P::from_float(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    const float alpha = run_max == -INFINITY ? 0.0f : expf(run_max - m_new);
    if (m_new != -INFINITY) {
      run_sum = run_sum * alpha + sum;
      run_max = m_new;
      if (alpha != 1.0f)
        for (int dd = 0; dd < D / 2; ++dd) o_w[row * D + half * (D / 2) + (dd + lane) % (D / 2)] *= alpha;
    }
    __syncwarp();

    // O += P V for this warp's rows.
    for (int df = 0; df < D / 16; ++df) {
      FragC acc;
      wmma::load_matrix_sync(acc, o_w + df * 16, D, wmma::mem_row_major);
      for (int kk = 0; kk < kTileK; kk += P::kStep) {
        FragA fa;
        FragB fb;
        wmma::load_matrix_sync(fa, p_w + kk, kTileK);
        wmma::load_matrix_sync(fb, v_s + kk * D + df * 16, D);
        P::round(fa);
        P::round(fb);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(o_w + df * 16, acc, D, wmma::mem_row_major);
    }
    __syncwarp();
  }

  if (i < a.nq) {
    const float inv = run_sum > 0.0f ? 1.0f / run_sum : 0.0f;
    float* out = a.o + (b * a.nq + i) * ld + h * D;
    for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d)
      out[d] = run_sum > 0.0f ? o_w[row * D + d] * inv : 0.0f;  // as attention_plan's finish
    if (half == 0)
      a.lse[(b * a.heads + h) * a.nq + i] = run_sum > 0.0f ? run_max + logf(run_sum) : -INFINITY;
  }
}

template <int D, typename P>
void launch(cudaStream_t st, const FusedArgs& a, int64_t batch) {
  const size_t smem = fused_smem_bytes<D, P>();
  PAR_CUDA_CHECK(cudaFuncSetAttribute(fused_forward_kernel<D, P>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(unsigned((a.nq + kTileQ - 1) / kTileQ), unsigned(a.heads), unsigned(batch));
  fused_forward_kernel<D, P><<<grid, kFusedThreads, smem, st>>>(a);
  PAR_CUDA_CHECK_LAUNCH("fused_forward_kernel");
}

template <typename P>
void dispatch(cudaStream_t st, const FusedArgs& a, int64_t batch, int64_t head_dim) {
  switch (head_dim) {
    case 16: return launch<16, P>(st, a, batch);
    case 32: return launch<32, P>(st, a, batch);
    case 64: return launch<64, P>(st, a, batch);
    case 128: return launch<128, P>(st, a, batch);
  }
  PAR_ASSERT(false, "fused attention: head size ", head_dim, " not covered");
}

}  // namespace

bool fused_attention_covers(int64_t head_dim) {
  return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}

void attention_forward_fused(cudaStream_t st, const AttentionShape& s, const float* q,
                             const float* k, const float* v, float* o, float* lse, bool bf16) {
  if (s.batch <= 0 || s.nq <= 0 || s.heads <= 0) return;
  PAR_ASSERT(s.heads <= 65535 && s.batch <= 65535 && (s.nq + kTileQ - 1) / kTileQ <= INT32_MAX,
             "fused attention: grid too large");
  FusedArgs a{q, k, v, o, lse, s.q_pos, s.k_pos, s.k_keep, s.nq, s.nk, s.heads, float(s.scale)};
  if (bf16) dispatch<Bf16>(st, a, s.batch, s.head_dim);
  else dispatch<Tf32>(st, a, s.batch, s.head_dim);
}

}  // namespace par::cuda::kern
