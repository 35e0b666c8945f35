// The blocked attention of the CUDA backend as a sequence of steps over key blocks:
// batched matrix products over the heads (each head of a [rows, heads*head_dim] buffer is
// a submatrix with leading dimension heads*head_dim at offset h*head_dim) and small
// element-wise steps with a running max and sum per query (the flash-attention recurrence,
// the same as kernels/cpu/attention.cpp). Memory is one [heads, nq, key_block] score
// buffer (two in backward) whatever the context length.
//
// The plan is written against an Engine so that a test can run the very same sequence
// with host loops on a machine without a GPU (tests/cuda/attention_plan_test.cpp); the
// CUDA engine (kernels/cuda/cuda_ops_attention.cpp) maps the steps to cuBLAS and the
// kernels of kernels/cuda/attention.cu. No CUDA header here.
//
// Engine steps (S: the scores of one block, [heads, nq, ld], head h at h*nq*ld; "stats":
// per-(head, query) arrays [heads, nq], index h*nq + i; o rows: [nq, heads*head_dim]):
//   float* scratch(int slot, int64_t floats)   grow-only buffers, one per slot
//   void gemm(const RowMajorGemm&)             batched over heads
//   void zero(float* x, int64_t n)
//   void fwd_init(float* run_max, float* run_sum, int64_t n)    -inf and 0
//   void fwd_block(const ScoreBlock&, float* run_max, float* run_sum, float* acc,
//                  int64_t ld_acc, int64_t head_dim)
//       for each row (h, i) with at least one visible key j (k_pos[j] <= q_pos[i] and
//       k_keep[j] != 0): m = max(run_max, max of visible s), s_j = visible ? exp(s_j - m)
//       : 0, alpha = run_max == -inf ? 0 : exp(run_max - m), run_sum = run_sum * alpha +
//       sum_j s_j, run_max = m, acc row (i, head h) *= alpha. Rows with no visible key:
//       s = 0, nothing else changes.
//   void fwd_finish(float* o, int64_t ld_o, float* lse, const float* run_max,
//                   const float* run_sum, int64_t heads, int64_t nq, int64_t head_dim)
//       run_sum > 0: o row *= 1 / run_sum, lse = run_max + log(run_sum); else o row = 0,
//       lse = -inf (lse in stats layout).
//   void bwd_delta(float* delta, const float* o, const float* d_o, int64_t batch,
//                  int64_t nq, int64_t heads, int64_t head_dim)
//       delta[(b*heads + h)*nq + i] = o . d_o over that row's head.
//   void bwd_probs(const ScoreBlock&, const float* lse)
//       s = lse != -inf and visible ? exp(s - lse) : 0.
//   void bwd_dscores(float* dp, int64_t ld, const float* p, int64_t heads, int64_t nq,
//                    int64_t keys, const float* delta)   dp = p * (dp - delta[row]).
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/ops.h"
#include "kernels/cuda/gemm_mapping.h"

namespace par::cuda {

// The scores of one block of `keys` keys for all heads and queries of one example.
struct ScoreBlock {
  float* s = nullptr;  // [heads, nq, ld]
  int64_t ld = 0;      // >= keys
  int64_t heads = 0, nq = 0, keys = 0;
  const int64_t* q_pos = nullptr;  // [nq]
  const int64_t* k_pos = nullptr;  // [keys]: the block's own keys
  const uint8_t* k_keep = nullptr; // [keys] or null
};

enum AttentionScratch : int { kScores = 0, kRunMax, kRunSum, kDScores, kDelta };

// Keys per block: the score buffer [heads, nq, block] stays near 2^25 floats (128 MiB),
// a multiple of 256 keys when that large (aligned rows for the tensor cores).
inline int64_t attention_key_block(int64_t heads, int64_t nq, int64_t nk, int64_t forced) {
  const int64_t limit = std::max<int64_t>(nk, 1);
  if (forced > 0) return std::min(forced, limit);
  int64_t kb = (int64_t(1) << 25) / std::max<int64_t>(heads * nq, 1);
  kb = kb >= 256 ? kb / 256 * 256 : std::max<int64_t>(kb, 32);
  return std::min(kb, limit);
}

template <typename Engine>
void attention_forward_plan(Engine& e, const AttentionShape& s, const float* q, const float* k,
                            const float* v, float* o, float* lse, int64_t forced_block) {
  const int64_t H = s.heads, D = s.head_dim, ld = H * D, nq = s.nq, nk = s.nk;
  if (s.batch <= 0 || nq <= 0 || H <= 0) return;
  const int64_t KB = attention_key_block(H, nq, nk, forced_block);
  float* scores = e.scratch(kScores, H * nq * KB);
  float* run_max = e.scratch(kRunMax, H * nq);
  float* run_sum = e.scratch(kRunSum, H * nq);
  for (int64_t b = 0; b < s.batch; ++b) {
    const float* q_b = q + b * nq * ld;
    float* o_b = o + b * nq * ld;
    e.zero(o_b, nq * ld);
    e.fwd_init(run_max, run_sum, H * nq);
    for (int64_t j0 = 0; j0 < nk && D > 0; j0 += KB) {
      const int64_t kb = std::min(KB, nk - j0);
      const float* k_blk = k + (b * nk + j0) * ld;
      const float* v_blk = v + (b * nk + j0) * ld;
      RowMajorGemm qk;  // S_h = scale * Q_h K_h^T
      qk.trans_b = true;
      qk.m = nq, qk.n = kb, qk.k = D;
      qk.a = q_b, qk.lda = ld, qk.stride_a = D;
      qk.b = k_blk, qk.ldb = ld, qk.stride_b = D;
      qk.c = scores, qk.ldc = KB, qk.stride_c = nq * KB;
      qk.alpha = float(s.scale), qk.beta = 0, qk.batch = H;
      e.gemm(qk);
      ScoreBlock blk{scores, KB, H, nq, kb, s.q_pos, s.k_pos + j0,
                     s.k_keep ? s.k_keep + b * nk + j0 : nullptr};
      e.fwd_block(blk, run_max, run_sum, o_b, ld, D);
      RowMajorGemm pv;  // O_h += P_h V_h (O_h already rescaled by fwd_block)
      pv.m = nq, pv.n = D, pv.k = kb;
      pv.a = scores, pv.lda = KB, pv.stride_a = nq * KB;
      pv.b = v_blk, pv.ldb = ld, pv.stride_b = D;
      pv.c = o_b, pv.ldc = ld, pv.stride_c = D;
      pv.alpha = 1, pv.beta = 1, pv.batch = H;
      e.gemm(pv);
    }
    e.fwd_finish(o_b, ld, lse + b * H * nq, run_max, run_sum, H, nq, D);
  }
}

template <typename Engine>
void attention_backward_plan(Engine& e, const AttentionShape& s, const float* q,
                             const float* k, const float* v, const float* o, const float* d_o,
                             const float* lse, float* dq, float* dk, float* dv,
                             int64_t forced_block) {
  const int64_t H = s.heads, D = s.head_dim, ld = H * D, nq = s.nq, nk = s.nk;
  if (s.batch <= 0 || H <= 0 || D <= 0) return;
  e.zero(dq, s.batch * nq * ld);
  if (nq == 0) {  // no query sees any key
    e.zero(dk, s.batch * nk * ld);
    e.zero(dv, s.batch * nk * ld);
    return;
  }
  const int64_t KB = attention_key_block(H, nq, nk, forced_block);
  float* p = e.scratch(kScores, H * nq * KB);
  float* dp = e.scratch(kDScores, H * nq * KB);
  float* delta = e.scratch(kDelta, s.batch * H * nq);
  e.bwd_delta(delta, o, d_o, s.batch, nq, H, D);
  for (int64_t b = 0; b < s.batch; ++b) {
    const float* q_b = q + b * nq * ld;
    const float* do_b = d_o + b * nq * ld;
    float* dq_b = dq + b * nq * ld;
    for (int64_t j0 = 0; j0 < nk; j0 += KB) {
      const int64_t kb = std::min(KB, nk - j0);
      const int64_t row0 = b * nk + j0;
      RowMajorGemm qk;  // S_h = scale * Q_h K_h^T
      qk.trans_b = true;
      qk.m = nq, qk.n = kb, qk.k = D;
      qk.a = q_b, qk.lda = ld, qk.stride_a = D;
      qk.b = k + row0 * ld, qk.ldb = ld, qk.stride_b = D;
      qk.c = p, qk.ldc = KB, qk.stride_c = nq * KB;
      qk.alpha = float(s.scale), qk.beta = 0, qk.batch = H;
      e.gemm(qk);
      ScoreBlock blk{p, KB, H, nq, kb, s.q_pos, s.k_pos + j0,
                     s.k_keep ? s.k_keep + row0 : nullptr};
      e.bwd_probs(blk, lse + b * H * nq);
      RowMajorGemm g_v;  // dV_h = P_h^T dO_h (written: one pass over all queries)
      g_v.trans_a = true;
      g_v.m = kb, g_v.n = D, g_v.k = nq;
      g_v.a = p, g_v.lda = KB, g_v.stride_a = nq * KB;
      g_v.b = do_b, g_v.ldb = ld, g_v.stride_b = D;
      g_v.c = dv + row0 * ld, g_v.ldc = ld, g_v.stride_c = D;
      g_v.alpha = 1, g_v.beta = 0, g_v.batch = H;
      e.gemm(g_v);
      RowMajorGemm g_p;  // dP_h = dO_h V_h^T
      g_p.trans_b = true;
      g_p.m = nq, g_p.n = kb, g_p.k = D;
      g_p.a = do_b, g_p.lda = ld, g_p.stride_a = D;
      g_p.b = v + row0 * ld, g_p.ldb = ld, g_p.stride_b = D;
      g_p.c = dp, g_p.ldc = KB, g_p.stride_c = nq * KB;
      g_p.alpha = 1, g_p.beta = 0, g_p.batch = H;
      e.gemm(g_p);
      e.bwd_dscores(dp, KB, p, H, nq, kb, delta + b * H * nq);
      RowMajorGemm g_q;  // dQ_h += scale * dS_h K_h
      g_q.m = nq, g_q.n = D, g_q.k = kb;
      g_q.a = dp, g_q.lda = KB, g_q.stride_a = nq * KB;
      g_q.b = k + row0 * ld, g_q.ldb = ld, g_q.stride_b = D;
      g_q.c = dq_b, g_q.ldc = ld, g_q.stride_c = D;
      g_q.alpha = float(s.scale), g_q.beta = 1, g_q.batch = H;
      e.gemm(g_q);
      RowMajorGemm g_k;  // dK_h = scale * dS_h^T Q_h
      g_k.trans_a = true;
      g_k.m = kb, g_k.n = D, g_k.k = nq;
      g_k.a = dp, g_k.lda = KB, g_k.stride_a = nq * KB;
      g_k.b = q_b, g_k.ldb = ld, g_k.stride_b = D;
      g_k.c = dk + row0 * ld, g_k.ldc = ld, g_k.stride_c = D;
      g_k.alpha = float(s.scale), g_k.beta = 0, g_k.batch = H;
      e.gemm(g_k);
    }
  }
}

}  // namespace par::cuda
