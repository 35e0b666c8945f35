// The fused attention backward for tf32 and bf16, the counterpart of attention_fused.cu:
// scores are recomputed tile by tile from the forward's row statistics (lse) and never
// leave the SM. Two kernels, so that every output element is summed by one thread block in
// a fixed order (no atomics: results stay bitwise reproducible):
// - per tile of 64 keys: dV = P^T dO and dK = scale * dS^T Q over all query tiles;
// - per tile of 64 queries: dQ = scale * dS K over all key tiles;
// with P = exp(scale * Q K^T - lse) where visible, dS = P (dO V^T - delta), delta = o . dO
// per row -- the steps of attention_plan.h's backward. Operands of the products are
// rounded as the blocked path's cuBLAS calls round them (P and dS included).
//
// Each warp owns 16 rows (keys in the first kernel, queries in the second); its tiles of
// scores live in shared memory, and so do its float32 accumulators, reloaded for each
// product (the element order of a WMMA accumulator is unspecified).
#include <cmath>

#include "core/error.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/wmma_traits.cuh"

namespace par::cuda::kern {

namespace {

using namespace fused;

struct BwdArgs {
  const float *q, *k, *v, *d_o, *lse, *delta;  // lse, delta: [batch, heads, nq]
  float *dq, *dk, *dv;
  const int64_t *q_pos, *k_pos;
  const uint8_t* k_keep;  // [batch, nk] or null
  int64_t nq, nk, heads;
  float scale;
};

// Shared memory of both kernels: four [64][D] operand tiles, a warp's score, gradient and
// rounded tiles ([4][16][64] each), two [64][D] float32 accumulators, 64 row values.
template <int D, typename P>
size_t bwd_smem_bytes() {
  using S = typename P::Storage;
  return sizeof(S) * (4 * 64 * D + kWarps * 16 * 64) + sizeof(float) * (2 * kWarps * 16 * 64) +
         sizeof(float) * (2 * 64 * D) + 64 * (sizeof(int64_t) + 2 * sizeof(float));
}

template <typename S>
struct Tiles {
  S *a, *b, *c, *d;     // four [64][D] operand tiles
  S* r;                 // [kWarps][16][64] rounded P or dS
  float *s, *g;         // [kWarps][16][64] float32 P and dP
  float *acc1, *acc2;   // [64][D] float32 accumulators (dK and dV, or dQ)
  int64_t* pos;         // [64]
  float *f1, *f2;       // [64]
};

template <int D, typename S>
__device__ Tiles<S> carve(unsigned char* smem) {
  Tiles<S> t;
  t.a = reinterpret_cast<S*>(smem);
  t.b = t.a + 64 * D;
  t.c = t.b + 64 * D;
  t.d = t.c + 64 * D;
  t.r = t.d + 64 * D;
  t.s = reinterpret_cast<float*>(t.r + kWarps * 16 * 64);
  t.g = t.s + kWarps * 16 * 64;
  t.acc1 = t.g + kWarps * 16 * 64;
  t.acc2 = t.acc1 + 64 * D;
  t.pos = reinterpret_cast<int64_t*>(t.acc2 + 64 * D);
  t.f1 = reinterpret_cast<float*>(t.pos + 64);
  t.f2 = t.f1 + 64;
  return t;
}

// rows of x ([rows, heads*D], head h) from `first`, 64 of them, into tile (zeros past `n`).
template <int D, typename P>
__device__ void load_tile(typename P::Storage* tile, const float* x, int64_t first, int64_t n,
                          int64_t ld, int64_t col) {
  for (int t = threadIdx.x; t < 64 * D; t += kFusedThreads) {
    const int64_t r = first + t / D;
    tile[t] = P::from_float(r < n ? x[r * ld + col + t % D] : 0.0f);
  }
}

// c[16][64] (float, ld 64) = a[16][D] (row-major, ld D) times b[64][D]^T.
template <int D, typename P>
__device__ void product_nt(float* c, const typename P::Storage* a,
                           const typename P::Storage* b) {
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, P::kStep, typename P::Elem, wmma::row_major>;
  using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, P::kStep, typename P::Elem, wmma::col_major>;
  for (int nf = 0; nf < 4; ++nf) {
    wmma::fragment<wmma::accumulator, 16, 16, P::kStep, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < D; kk += P::kStep) {
      FragA fa;
      FragBt fb;
      wmma::load_matrix_sync(fa, a + kk, D);
      wmma::load_matrix_sync(fb, b + nf * 16 * D + kk, D);
      P::round(fa);
      P::round(fb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c + nf * 16, acc, 64, wmma::mem_row_major);
  }
}

// c[16][D] (float, ld D) += a[16][64] (row-major, ld 64) times b[64][D] (row-major, ld D).
template <int D, typename P>
__device__ void product_nn_acc(float* c, const typename P::Storage* a,
                               const typename P::Storage* b) {
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, P::kStep, typename P::Elem, wmma::row_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, P::kStep, typename P::Elem, wmma::row_major>;
  for (int df = 0; df < D / 16; ++df) {
    wmma::fragment<wmma::accumulator, 16, 16, P::kStep, float> acc;
    wmma::load_matrix_sync(acc, c + df * 16, D, wmma::mem_row_major);
    for (int kk = 0; kk < 64; kk += P::kStep) {
      FragA fa;
      FragB fb;
      wmma::load_matrix_sync(fa, a + kk, 64);
      wmma::load_matrix_sync(fb, b + kk * D + df * 16, D);
      P::round(fa);
      P::round(fb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c + df * 16, acc, D, wmma::mem_row_major);
  }
}

// Per tile of 64 keys: dK and dV. Warp w owns keys 16w..16w+15 of the tile; for each query
// tile it computes the [64 queries][16 keys] block of P and dS (queries as rows, so that
// the probabilities are those of the forward's rows) and adds P^T dO and dS^T Q.
template <int D, typename P>
__global__ void __launch_bounds__(kFusedThreads) fused_dkdv_kernel(BwdArgs a) {
  using S = typename P::Storage;
  extern __shared__ __align__(128) unsigned char smem[];
  const Tiles<S> t = carve<D, S>(smem);
  S *q_s = t.a, *do_s = t.b, *k_s = t.c, *v_s = t.d;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t b = blockIdx.z, h = blockIdx.y, j0 = int64_t(blockIdx.x) * 64;
  const int64_t ld = a.heads * D;

  load_tile<D, P>(k_s, a.k + b * a.nk * ld, j0, a.nk, ld, h * D);
  load_tile<D, P>(v_s, a.v + b * a.nk * ld, j0, a.nk, ld, h * D);
  for (int x = tid; x < 64 * D; x += kFusedThreads) t.acc1[x] = t.acc2[x] = 0.0f;
  // The keys' visibility: position, or "never" for PAD, dropped and missing keys.
  __shared__ int64_t kpos_s[64];
  for (int x = tid; x < 64; x += kFusedThreads) {
    const int64_t j = j0 + x;
    const bool in = j < a.nk && (a.k_keep == nullptr || a.k_keep[b * a.nk + j] != 0);
    kpos_s[x] = in ? a.k_pos[j] : INT64_MAX;
  }
  // Each warp works on a [64 queries][16 keys] block, kept as 4 row groups of 16 queries
  // in its [16][64] scratch tiles: element (query q, key kw) at [q % 16][(q / 16) * 16 + kw].
  float* s_w = t.s + warp * 16 * 64;
  float* g_w = t.g + warp * 16 * 64;
  S* r_w = t.r + warp * 16 * 64;

  for (int64_t i0 = 0; i0 < a.nq; i0 += 64) {
    __syncthreads();  // the previous query tile is no longer read
    load_tile<D, P>(q_s, a.q + b * a.nq * ld, i0, a.nq, ld, h * D);
    load_tile<D, P>(do_s, a.d_o + b * a.nq * ld, i0, a.nq, ld, h * D);
    for (int x = tid; x < 64; x += kFusedThreads) {
      const int64_t i = i0 + x;
      t.pos[x] = i < a.nq ? a.q_pos[i] : INT64_MIN;
      t.f1[x] = i < a.nq ? a.lse[(b * a.heads + h) * a.nq + i] : -INFINITY;
      t.f2[x] = i < a.nq ? a.delta[(b * a.heads + h) * a.nq + i] : 0.0f;
    }
    __syncthreads();
    // For each group of 16 queries: S = Q_g K_w^T and dP = dO_g V_w^T ([16][16] each).
    for (int gq = 0; gq < 4; ++gq) {
      using FragA = wmma::fragment<wmma::matrix_a, 16, 16, P::kStep, typename P::Elem, wmma::row_major>;
      using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, P::kStep, typename P::Elem, wmma::col_major>;
      wmma::fragment<wmma::accumulator, 16, 16, P::kStep, float> sc, dp;
      wmma::fill_fragment(sc, 0.0f);
      wmma::fill_fragment(dp, 0.0f);
      for (int kk = 0; kk < D; kk += P::kStep) {
        FragA fa;
        FragBt fb;
        wmma::load_matrix_sync(fa, q_s + gq * 16 * D + kk, D);
        wmma::load_matrix_sync(fb, k_s + warp * 16 * D + kk, D);
        P::round(fa);
        P::round(fb);
        wmma::mma_sync(sc, fa, fb, sc);
        wmma::load_matrix_sync(fa, do_s + gq * 16 * D + kk, D);
        wmma::load_matrix_sync(fb, v_s + warp * 16 * D + kk, D);
        P::round(fa);
        P::round(fb);
        wmma::mma_sync(dp, fa, fb, dp);
      }
      wmma::store_matrix_sync(s_w + gq * 16, sc, 64, wmma::mem_row_major);
      wmma::store_matrix_sync(g_w + gq * 16, dp, 64, wmma::mem_row_major);
    }
    __syncwarp();
    // P and dS, element by element: lane l takes elements l, l + 32, ... of the tile.
    for (int e = lane; e < 16 * 64; e += 32) {
      const int rr = e / 64, cc = e % 64;           // scratch coordinates
      const int q = (cc / 16) * 16 + rr, kw = cc % 16;  // query in the tile, key of the warp
      const float l = t.f1[q];
      const bool seen = l != -INFINITY && kpos_s[warp * 16 + kw] <= t.pos[q];
      const float p = seen ? expf(s_w[e] * a.scale - l) : 0.0f;
      s_w[e] = p;
      g_w[e] = p * (g_w[e] - t.f2[q]);
    }
    __syncwarp();
    // dV_w += P^T dO and dK_w += dS^T Q: the [16 keys][64 queries] transposes of the warp's
    // blocks, laid out as row groups; each group gq contributes its 16 queries.
    for (int pass = 0; pass < 2; ++pass) {
      const float* src = pass == 0 ? s_w : g_w;
      for (int e = lane; e < 16 * 64; e += 32) r_w[e] = P::from_float(src[e]);
      __syncwarp();
      float* acc = (pass == 0 ? t.acc2 : t.acc1) + warp * 16 * D;
      const S* rhs = pass == 0 ? do_s : q_s;
      using FragAt = wmma::fragment<wmma::matrix_a, 16, 16, P::kStep, typename P::Elem, wmma::col_major>;
      using FragB = wmma::fragment<wmma::matrix_b, 16, 16, P::kStep, typename P::Elem, wmma::row_major>;
      for (int df = 0; df < D / 16; ++df) {
        wmma::fragment<wmma::accumulator, 16, 16, P::kStep, float> c;
        wmma::load_matrix_sync(c, acc + df * 16, D, wmma::mem_row_major);
        for (int gq = 0; gq < 4; ++gq)
          for (int kk = 0; kk < 16; kk += P::kStep) {
            // A = (block of group gq)^T: element (key kw, query kk + x) = r_w[(kk + x) * 64
            // + gq * 16 + kw], i.e. column-major with ld 64.
            FragAt fa;
            FragB fb;
            wmma::load_matrix_sync(fa, r_w + kk * 64 + gq * 16, 64);
            wmma::load_matrix_sync(fb, rhs + (gq * 16 + kk) * D + df * 16, D);
            P::round(fa);
            P::round(fb);
            wmma::mma_sync(c, fa, fb, c);
          }
        wmma::store_matrix_sync(acc + df * 16, c, D, wmma::mem_row_major);
      }
      __syncwarp();
    }
  }
  __syncthreads();
  for (int x = tid; x < 64 * D; x += kFusedThreads) {
    const int64_t j = j0 + x / D;
    if (j >= a.nk) continue;
    const int64_t at = (b * a.nk + j) * ld + h * D + x % D;
    a.dk[at] = a.scale * t.acc1[x];
    a.dv[at] = t.acc2[x];
  }
}

// Per tile of 64 queries: dQ. Warp w owns queries 16w..16w+15; for each key tile, S and dP
// of its rows ([16][64]), then dS, then dQ_w += dS K.
template <int D, typename P>
__global__ void __launch_bounds__(kFusedThreads) fused_dq_kernel(BwdArgs a) {
  using S = typename P::Storage;
  extern __shared__ __align__(128) unsigned char smem[];
  const Tiles<S> t = carve<D, S>(smem);
  S *q_s = t.a, *do_s = t.b, *k_s = t.c, *v_s = t.d;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = int64_t(blockIdx.x) * 64;
  const int64_t ld = a.heads * D;

  load_tile<D, P>(q_s, a.q + b * a.nq * ld, i0, a.nq, ld, h * D);
  load_tile<D, P>(do_s, a.d_o + b * a.nq * ld, i0, a.nq, ld, h * D);
  for (int x = tid; x < 64 * D; x += kFusedThreads) t.acc1[x] = 0.0f;
  __shared__ int64_t qpos_s[64];
  __shared__ float lse_s[64], delta_s[64];
  __shared__ int64_t q_last_s;
  for (int x = tid; x < 64; x += kFusedThreads) {
    const int64_t i = i0 + x;
    qpos_s[x] = i < a.nq ? a.q_pos[i] : INT64_MIN;
    lse_s[x] = i < a.nq ? a.lse[(b * a.heads + h) * a.nq + i] : -INFINITY;
    delta_s[x] = i < a.nq ? a.delta[(b * a.heads + h) * a.nq + i] : 0.0f;
  }
  __syncthreads();
  if (tid == 0) {
    int64_t m = INT64_MIN;
    for (int x = 0; x < 64; ++x) m = qpos_s[x] > m ? qpos_s[x] : m;
    q_last_s = m;
  }
  __syncthreads();
  const int64_t q_last = q_last_s;
  float* s_w = t.s + warp * 16 * 64;
  float* g_w = t.g + warp * 16 * 64;
  S* r_w = t.r + warp * 16 * 64;
  float* acc_w = t.acc1 + warp * 16 * D;

  for (int64_t j0 = 0; j0 < a.nk; j0 += 64) {
    if (a.k_pos[j0] > q_last) break;  // later keys are invisible to every query here
    __syncthreads();
    load_tile<D, P>(k_s, a.k + b * a.nk * ld, j0, a.nk, ld, h * D);
    load_tile<D, P>(v_s, a.v + b * a.nk * ld, j0, a.nk, ld, h * D);
    for (int x = tid; x < 64; x += kFusedThreads) {
      const int64_t j = j0 + x;
      const bool in = j < a.nk && (a.k_keep == nullptr || a.k_keep[b * a.nk + j] != 0);
      t.pos[x] = in ? a.k_pos[j] : INT64_MAX;
    }
    __syncthreads();
    product_nt<D, P>(s_w, q_s + warp * 16 * D, k_s);
    product_nt<D, P>(g_w, do_s + warp * 16 * D, v_s);
    __syncwarp();
    for (int e = lane; e < 16 * 64; e += 32) {
      const int q = warp * 16 + e / 64, c = e % 64;
      const float l = lse_s[q];
      const bool seen = l != -INFINITY && t.pos[c] <= qpos_s[q];
      const float p = seen ? expf(s_w[e] * a.scale - l) : 0.0f;
      r_w[e] = P::from_float(p * (g_w[e] - delta_s[q]));
    }
    __syncwarp();
    product_nn_acc<D, P>(acc_w, r_w, k_s);
    __syncwarp();
  }
  __syncthreads();
  for (int x = tid; x < 64 * D; x += kFusedThreads) {
    const int64_t i = i0 + x / D;
    if (i < a.nq) a.dq[(b * a.nq + i) * ld + h * D + x % D] = a.scale * t.acc1[x];
  }
}

template <int D, typename P>
void launch_bwd(cudaStream_t st, const BwdArgs& a, int64_t batch) {
  const size_t smem = bwd_smem_bytes<D, P>();
  PAR_CUDA_CHECK(cudaFuncSetAttribute(fused_dkdv_kernel<D, P>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  PAR_CUDA_CHECK(cudaFuncSetAttribute(fused_dq_kernel<D, P>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  if (a.nk > 0) {
    const dim3 grid(unsigned((a.nk + 63) / 64), unsigned(a.heads), unsigned(batch));
    fused_dkdv_kernel<D, P><<<grid, kFusedThreads, smem, st>>>(a);
    PAR_CUDA_CHECK_LAUNCH("fused_dkdv_kernel");
  }
  const dim3 grid(unsigned((a.nq + 63) / 64), unsigned(a.heads), unsigned(batch));
  fused_dq_kernel<D, P><<<grid, kFusedThreads, smem, st>>>(a);
  PAR_CUDA_CHECK_LAUNCH("fused_dq_kernel");
}

template <typename P>
void dispatch_bwd(cudaStream_t st, const BwdArgs& a, int64_t batch, int64_t head_dim) {
  switch (head_dim) {
    case 16: return launch_bwd<16, P>(st, a, batch);
    case 32: return launch_bwd<32, P>(st, a, batch);
    case 64: return launch_bwd<64, P>(st, a, batch);
  }
  PAR_ASSERT(false, "fused attention backward: head size ", head_dim, " not covered");
}

}  // namespace

bool fused_attention_backward_covers(int64_t head_dim) {
  return head_dim == 16 || head_dim == 32 || head_dim == 64;
}

void attention_backward_fused(cudaStream_t st, const AttentionShape& s, const float* q,
                              const float* k, const float* v, const float* d_o,
                              const float* lse, const float* delta, float* dq, float* dk,
                              float* dv, bool bf16) {
  PAR_ASSERT(s.batch > 0 && s.nq > 0 && s.heads > 0, "fused attention backward: empty shape");
  PAR_ASSERT(s.heads <= 65535 && s.batch <= 65535, "fused attention backward: grid too large");
  BwdArgs a{q,       k,       v,        d_o,     lse,  delta, dq,      dk,
            dv,      s.q_pos, s.k_pos,  s.k_keep, s.nq, s.nk, s.heads, float(s.scale)};
  if (bf16) dispatch_bwd<Bf16>(st, a, s.batch, s.head_dim);
  else dispatch_bwd<Tf32>(st, a, s.batch, s.head_dim);
}

}  // namespace par::cuda::kern
